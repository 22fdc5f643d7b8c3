import type { Request } from 'express';
import { register as globalRegistry, type Registry } from 'prom-client';
import type { RequestContext } from './context';
import { createErrorResponder, type ErrorResponder } from './error-response';
import { defaultLogger, type Logger } from './logger';
import { peekSlots, slotsOf } from './request-slots';
import { MemoryStores } from './stores/memory';
import type { Stores } from './stores/types';

/**
 * What a stack shares with every middleware in it, and with route-level factories used behind it:
 * the logger, the stores (memory or Redis), the metrics registry and the error responder.
 */
export interface PerimeterRuntime {
  logger: Logger;
  stores: Stores;
  registry: Registry;
  respondError: ErrorResponder;
}

let standalone: PerimeterRuntime | undefined;
/** The runtime of middleware used without a stack: default logger, memory stores, prom-client's global registry. */
export function standaloneRuntime(): PerimeterRuntime {
  return (standalone ??= {
    logger: defaultLogger(),
    stores: new MemoryStores(),
    registry: globalRegistry,
    respondError: createErrorResponder(),
  });
}

/** Marks `req` as served by the stack whose runtime is `runtime`. */
export function attachRuntime(req: Request, runtime: PerimeterRuntime): void {
  slotsOf(req).runtime = runtime;
}

/** The runtime of the stack serving `req`, or the standalone one. */
export function runtimeOf(req: Request): PerimeterRuntime {
  return (peekSlots(req)?.runtime as PerimeterRuntime | undefined) ?? standaloneRuntime();
}

/**
 * Builds a per-stack value once and reuses it: a route-level factory used behind a stack gets
 * its state from that stack's stores, alone it gets memory state.
 */
export function perRuntime<T>(build: (runtime: PerimeterRuntime) => T): (req: Request) => T {
  const built = new WeakMap<PerimeterRuntime, T>();
  return (req) => {
    const rt = runtimeOf(req);
    let value = built.get(rt);
    if (value === undefined) {
      value = build(rt);
      built.set(rt, value);
    }
    return value;
  };
}

/** The logger for `req`: its context's child logger, else the stack's, else the default. */
export function loggerOf(req: Request): Logger {
  const ctx = req.context as RequestContext | undefined;
  return ctx?.log ?? runtimeOf(req).logger;
}
