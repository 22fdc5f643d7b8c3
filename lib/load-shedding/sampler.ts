import { monitorEventLoopDelay, performance, type EventLoopUtilization, type IntervalHistogram } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';

/** Why a request was shed: the label of `perimeter_shed_requests_total`. */
export type ShedReason = 'event_loop_delay' | 'event_loop_utilization' | 'heap' | 'rss' | 'in_flight';

/** Every reason, in the order they are checked (the sampled ones first). */
export const SHED_REASONS: readonly ShedReason[] = ['event_loop_delay', 'event_loop_utilization', 'heap', 'rss', 'in_flight'];

/** The sampled thresholds; a missing one is not checked. */
export interface SampledLimits {
  eventLoopDelayMs?: number;
  eventLoopUtilization?: number;
  heapUsedBytes?: number;
  rssBytes?: number;
}

/** What one sample measured. */
export interface Readings {
  /** Mean event-loop delay over the last interval, in ms (how late the sample ran when the loop was blocked all along). */
  eventLoopDelayMs: number;
  /** Share of the last interval the loop was busy, 0..1. */
  eventLoopUtilization: number;
  heapUsedBytes: number;
  rssBytes: number;
}

// monitorEventLoopDelay's timer period: every recorded value includes it, so it is taken off
// the mean (as @fastify/under-pressure does).
export const HISTOGRAM_RESOLUTION_MS = 10;

/**
 * Measures the process on an unref'd timer, never per request, and keeps the outcome as one
 * cached field: `reason` is the first sampled threshold the last sample was over, or undefined.
 * A request then costs one field read. `onChange` hears each change of `reason` (for one log
 * line per episode, not one per request).
 */
export class LoadSampler {
  /** The first threshold the last sample was over, or undefined. */
  reason: ShedReason | undefined;
  /** The last sample's readings (zeros before the first). */
  readings: Readings = { eventLoopDelayMs: 0, eventLoopUtilization: 0, heapUsedBytes: 0, rssBytes: 0 };
  /** `Date.now()` of the last sample, or undefined before the first. */
  sampledAt: number | undefined;

  private readonly histogram: IntervalHistogram;
  private elu: EventLoopUtilization;
  private last: number;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly limits: SampledLimits,
    private readonly intervalMs: number,
    private readonly onChange: (reason: ShedReason | undefined, previous: ShedReason | undefined, readings: Readings) => void,
  ) {
    this.histogram = monitorEventLoopDelay({ resolution: HISTOGRAM_RESOLUTION_MS });
    this.histogram.enable();
    this.elu = performance.eventLoopUtilization();
    this.last = performance.now();
    this.timer = setInterval(() => this.sample(), intervalMs);
    // The sampler must never be what keeps a process alive.
    this.timer.unref();
  }

  /**
   * Takes one sample now (the timer calls it every interval). The first one judges memory only:
   * its event-loop interval covers the application's own startup after createStack (modules
   * loading, routes being built), not load, and would shed the first second of traffic.
   */
  sample(): void {
    const now = performance.now();
    const first = this.sampledAt === undefined;
    const h = this.histogram;
    // The mean, not the maximum: one GC pause or CPU-quota stall is not overload, and shedding a
    // whole interval for it would be. A loop blocked for the whole interval leaves the histogram
    // empty; how late this timer ran is then the delay.
    const delay = h.count > 0 ? Math.max(0, h.mean / 1e6 - HISTOGRAM_RESOLUTION_MS) : Math.max(0, now - this.last - this.intervalMs);
    this.last = now;
    h.reset();
    const elu = performance.eventLoopUtilization();
    const utilization = performance.eventLoopUtilization(elu, this.elu).utilization;
    this.elu = elu;
    const readings: Readings = {
      eventLoopDelayMs: first ? 0 : round(delay),
      eventLoopUtilization: first ? 0 : round(utilization, 1000),
      // Not process.memoryUsage(): that also reads the RSS and fills five fields; each is read on its own.
      heapUsedBytes: getHeapStatistics().used_heap_size,
      rssBytes: process.memoryUsage.rss(),
    };
    this.readings = readings;
    this.sampledAt = Date.now();
    const reason = this.over();
    if (reason !== this.reason) {
      const previous = this.reason;
      this.reason = reason;
      this.onChange(reason, previous, readings);
    }
  }

  /** Whether `reading` of the last sample is over its limit. */
  isOver(reason: Exclude<ShedReason, 'in_flight'>): boolean {
    const { limits, readings } = this;
    switch (reason) {
      case 'event_loop_delay':
        return limits.eventLoopDelayMs !== undefined && readings.eventLoopDelayMs > limits.eventLoopDelayMs;
      case 'event_loop_utilization':
        return limits.eventLoopUtilization !== undefined && readings.eventLoopUtilization > limits.eventLoopUtilization;
      case 'heap':
        return limits.heapUsedBytes !== undefined && readings.heapUsedBytes > limits.heapUsedBytes;
      case 'rss':
        return limits.rssBytes !== undefined && readings.rssBytes > limits.rssBytes;
    }
  }

  /** Stops the timer and the histogram; idempotent. */
  stop(): void {
    if (this.timer === undefined) return;
    clearInterval(this.timer);
    this.timer = undefined;
    this.histogram.disable();
  }

  get running(): boolean {
    return this.timer !== undefined;
  }

  private over(): ShedReason | undefined {
    if (this.isOver('event_loop_delay')) return 'event_loop_delay';
    if (this.isOver('event_loop_utilization')) return 'event_loop_utilization';
    if (this.isOver('heap')) return 'heap';
    if (this.isOver('rss')) return 'rss';
    return undefined;
  }
}

function round(value: number, factor = 100): number {
  return Math.round(value * factor) / factor;
}
