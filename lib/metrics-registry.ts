import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

// Several middleware (and several stacks in one process) ask for the same series; each
// registry holds one instance of each name.

/** The counter `name` in `registry`, created on first use. */
export function counter<L extends string>(registry: Registry, name: string, help: string, labelNames: readonly L[]): Counter<L> {
  return (registry.getSingleMetric(name) as Counter<L> | undefined) ?? new Counter({ name, help, labelNames, registers: [registry] });
}

/** The gauge `name` in `registry`, created on first use. */
export function gauge<L extends string>(registry: Registry, name: string, help: string, labelNames: readonly L[]): Gauge<L> {
  return (registry.getSingleMetric(name) as Gauge<L> | undefined) ?? new Gauge({ name, help, labelNames, registers: [registry] });
}

/** The histogram `name` in `registry`, created on first use. */
export function histogram<L extends string>(registry: Registry, name: string, help: string, labelNames: readonly L[], buckets?: number[]): Histogram<L> {
  return (
    (registry.getSingleMetric(name) as Histogram<L> | undefined) ??
    new Histogram({ name, help, labelNames, registers: [registry], ...(buckets ? { buckets } : {}) })
  );
}
