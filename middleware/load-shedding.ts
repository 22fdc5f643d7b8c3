import type { NextFunction, Request, Response } from 'express';
import type { Counter } from 'prom-client';
import { getHeapStatistics } from 'node:v8';
import { ConfigError, OverloadedError } from '../lib/errors';
import { LoadSampler, SHED_REASONS, type Readings, type ShedReason } from '../lib/load-shedding/sampler';
import { markShed } from '../lib/load-shedding/shed-mark';
import type { Logger } from '../lib/logger';
import { counter } from '../lib/metrics-registry';
import { defineOptions, loggerOption, option } from '../lib/options';
import { onResponseDone } from '../lib/response-done';
import { perRuntime, type PerimeterRuntime } from '../lib/runtime';
import type { EntryContext } from '../lib/stack-entries';
import { describe, parseBytes, parseDuration } from '../lib/units';
import type { PerimeterHandler } from '../types/express-augment';
import { recordOnSpan } from '../lib/otel';

export type { ShedReason } from '../lib/load-shedding/sampler';

/** Options of {@link loadShedding}. At least one threshold is needed. */
export interface LoadSheddingOptions {
  /** Shed while the mean event-loop delay of the last sample is above this duration ('200ms'). Defaults to none. */
  maxEventLoopDelay?: number | string;
  /** Shed while the event loop was busy more than this share (0..1) of the last sample interval. Defaults to none. */
  maxEventLoopUtilization?: number;
  /** Shed while V8's used heap is above this size (bytes or '1.5gb'). Defaults to none. */
  maxHeapUsedBytes?: number | string;
  /** Shed while the resident set size is above this size (bytes or '2gb'). Defaults to none. */
  maxRssBytes?: number | string;
  /** Shed when this many requests that passed it are still running. Defaults to none. */
  maxInFlight?: number;
  /** `Retry-After` of the 503, rounded up to whole seconds. Defaults to '10s'. */
  retryAfter?: number | string;
  /** How often the process is measured (never per request). Defaults to '1s'. */
  sampleInterval?: number | string;
  /** Receives one line when shedding starts and one when it stops. Defaults to the stack's logger. */
  logger?: Logger;
}

/** One reading of {@link LoadSheddingStatus}. */
export interface LoadReading {
  /** The last sampled value (for `inFlight`, the current count). */
  value: number;
  /** The configured threshold, or null when this reading is not checked. */
  limit: number | null;
  /** Whether a request arriving now is shed for this reading. */
  over: boolean;
}

/** What `status()` returns. */
export interface LoadSheddingStatus {
  /** Whether a request arriving now would be shed. */
  overloaded: boolean;
  /** The reason it would be shed for (the first over, in this order), or null. */
  reason: ShedReason | null;
  /** ISO time of the last sample, or null before the first. */
  sampledAt: string | null;
  /** Mean event-loop delay of the last sample interval, in milliseconds. */
  eventLoopDelay: LoadReading;
  /** Share of the last sample interval the event loop was busy, 0..1. */
  eventLoopUtilization: LoadReading;
  heapUsedBytes: LoadReading;
  rssBytes: LoadReading;
  /** Requests that passed loadShedding and have not finished. */
  inFlight: LoadReading;
}

/** The run-time methods of a {@link loadShedding} handler (also `stack.middleware.loadShedding`). */
export interface LoadSheddingMethods {
  /** The current readings, thresholds and whether each is over. */
  status(): LoadSheddingStatus;
  /** Stops the sampling timer (`stack.close()` calls it); requests then pass unless `maxInFlight` refuses them. */
  close(): void;
}

/** A {@link loadShedding} middleware with its run-time methods. */
// An interface, not an intersection: TypeScript infers a route's params from an intersection as `unknown`.
export interface LoadSheddingHandler extends PerimeterHandler, LoadSheddingMethods {}

declare module '../lib/create-stack' {
  interface StackMiddleware {
    /** Load shedding (present when `loadShedding` is configured). */
    loadShedding: LoadSheddingHandler;
  }
}

const MIN_SAMPLE_INTERVAL_MS = 10;

// Every option of loadShedding() once: its default and its check (the interface's JSDoc is its doc).
// A left-out threshold is not checked; at least one is required, below.
const parseOptions = defineOptions<LoadSheddingOptions>()('loadShedding', {
  maxEventLoopDelay: option("a duration above zero like '200ms'", (value, path) => optional(value, (v) => positiveDuration(path, v, "'200ms'"))),
  maxEventLoopUtilization: option('a share of time above 0 and at most 1, like 0.98', (value, path) => optional(value, (v) => utilization(path, v))),
  maxHeapUsedBytes: option("a size below V8's heap limit like '1gb'", (value, path) => optional(value, (v) => heapLimit(path, v))),
  maxRssBytes: option("a size above zero like '2gb'", (value, path) => optional(value, (v) => positiveBytes(path, v, "'2gb'"))),
  maxInFlight: option('a whole number of requests of at least 1, like 100', (value, path) => optional(value, (v) => inFlightLimit(path, v))),
  retryAfter: option("a duration above zero like '10s'", (value, path) => positiveDuration(path, value ?? '10s', "'10s'"), "'10s'"),
  sampleInterval: option(`a duration of at least '${MIN_SAMPLE_INTERVAL_MS}ms' like '1s'`, (value, path) => sampleInterval(path, value ?? '1s'), "'1s'"),
  logger: loggerOption(),
});

/**
 * Refuses requests with 503 OVERLOADED and `Retry-After` while the process is overloaded: the
 * event-loop delay, event-loop utilization, used heap or RSS of the last sample over its
 * threshold, or `maxInFlight` requests already running. The process is measured on an unref'd
 * timer every `sampleInterval`; a request costs a field read, a comparison and a counter. In a
 * stack it runs right after health and metrics, so probes and scrapes are never shed, and before
 * everything that costs (auth, body parsing, Redis). Refusals are counted in
 * `perimeter_shed_requests_total{reason}`.
 */
export function loadShedding(options: LoadSheddingOptions = {}): LoadSheddingHandler {
  return buildLoadShedding(options, undefined);
}

/** @internal The stack's loadShedding (createStack builds it): its logger and registry are the stack's. */
export function stackLoadShedding(options: LoadSheddingOptions, { runtime }: EntryContext): LoadSheddingHandler {
  return buildLoadShedding(options, runtime);
}

function buildLoadShedding(options: LoadSheddingOptions, runtime: PerimeterRuntime | undefined): LoadSheddingHandler {
  const o = parseOptions(options);
  const limits = {
    eventLoopDelayMs: o.maxEventLoopDelay,
    eventLoopUtilization: o.maxEventLoopUtilization,
    heapUsedBytes: o.maxHeapUsedBytes,
    rssBytes: o.maxRssBytes,
  };
  const maxInFlight = o.maxInFlight;
  if (Object.values(limits).every((l) => l === undefined) && maxInFlight === undefined) {
    throw new ConfigError(
      'loadShedding',
      "sets no threshold, so it would never shed; give at least one of maxEventLoopDelay, maxEventLoopUtilization, maxHeapUsedBytes, maxRssBytes or maxInFlight, e.g. { maxEventLoopDelay: '200ms', maxEventLoopUtilization: 0.98 }",
    );
  }
  const retryAfterSeconds = Math.max(1, Math.ceil(o.retryAfter / 1000));
  const intervalMs = o.sampleInterval;
  const logger = o.logger ?? runtime?.logger;

  const sampler = new LoadSampler(limits, intervalMs, (reason, previous, readings) => logChange(logger, reason, previous, readings, limits));
  // In a stack, its registry from the start (the series exist before the first refusal); alone, the
  // registry of the stack serving the request, else prom-client's global one.
  const fixedCounters = runtime === undefined ? undefined : shedCounters(runtime);
  const countersOf = fixedCounters === undefined ? perRuntime(shedCounters) : () => fixedCounters;
  const limit = maxInFlight ?? Infinity;
  let inFlight = 0;
  // One function for every request: nothing is allocated per request to release its slot.
  const release = (): void => {
    inFlight--;
  };

  const handler = function loadSheddingMiddleware(req: Request, res: Response, next: NextFunction) {
    const reason = sampler.reason ?? (inFlight >= limit ? 'in_flight' : undefined);
    if (reason !== undefined) return next(shed(req, reason, countersOf(req), retryAfterSeconds));
    inFlight++;
    onResponseDone(res, release);
    next();
  } as LoadSheddingHandler;

  handler.status = function status(): LoadSheddingStatus {
    const r = sampler.readings;
    const inFlightOver = inFlight >= limit;
    const reason = sampler.reason ?? (inFlightOver ? 'in_flight' : undefined);
    return {
      overloaded: reason !== undefined,
      reason: reason ?? null,
      sampledAt: sampler.sampledAt === undefined ? null : new Date(sampler.sampledAt).toISOString(),
      eventLoopDelay: reading(r.eventLoopDelayMs, limits.eventLoopDelayMs, sampler.isOver('event_loop_delay')),
      eventLoopUtilization: reading(r.eventLoopUtilization, limits.eventLoopUtilization, sampler.isOver('event_loop_utilization')),
      heapUsedBytes: reading(r.heapUsedBytes, limits.heapUsedBytes, sampler.isOver('heap')),
      rssBytes: reading(r.rssBytes, limits.rssBytes, sampler.isOver('rss')),
      inFlight: reading(inFlight, maxInFlight, inFlightOver),
    };
  };
  handler.close = () => {
    sampler.stop();
    // Once stopped, the last sample must not keep shedding for ever.
    sampler.reason = undefined;
  };
  return handler;
}

type ShedCounters = Record<ShedReason, Counter.Internal>;

function shedCounters(rt: PerimeterRuntime): ShedCounters {
  const series = counter(rt.registry, 'perimeter_shed_requests_total', 'Requests refused by loadShedding (503 OVERLOADED), by reason', ['reason']);
  // Every reason is a series from the start, so rate() has a zero to start from.
  const children = {} as ShedCounters;
  for (const reason of SHED_REASONS) {
    children[reason] = series.labels(reason);
    children[reason].inc(0);
  }
  return children;
}

function shed(req: Request, reason: ShedReason, counters: ShedCounters, retryAfterSeconds: number): OverloadedError {
  counters[reason].inc();
  markShed(req);
  recordOnSpan(req, 'perimeter.shed.reason', reason);
  // Without a stack trace: refusals come in floods, exactly when the process has no time to spare.
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return new OverloadedError(undefined, { reason }, retryAfterSeconds);
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
  }
}

function logChange(
  logger: Logger | undefined,
  reason: ShedReason | undefined,
  previous: ShedReason | undefined,
  readings: Readings,
  limits: object,
): void {
  if (logger === undefined) return;
  if (reason !== undefined) {
    logger.warn(`Load shedding: refusing requests with 503 OVERLOADED (${reason} over its limit)`, { code: 'PERIMETER_OVERLOADED', reason, readings, limits });
  } else {
    logger.info(`Load shedding: accepting requests again (${String(previous)} back under its limit)`, { code: 'PERIMETER_LOAD_RECOVERED', previous, readings });
  }
}

function reading(value: number, limit: number | undefined, over: boolean): LoadReading {
  return { value, limit: limit ?? null, over };
}

function optional<T>(value: unknown, parse: (value: unknown) => T): T | undefined {
  return value === undefined ? undefined : parse(value);
}

function positiveDuration(option: string, value: unknown, example: string): number {
  const ms = parseDuration(value, option);
  if (ms <= 0) throw new ConfigError(option, `expected a duration above zero like ${example}, got ${describe(value)}`);
  return ms;
}

function positiveBytes(option: string, value: unknown, example: string): number {
  const n = parseBytes(value, option);
  if (n <= 0) throw new ConfigError(option, `expected a size above zero like ${example}, got ${describe(value)}`);
  return n;
}

function sampleInterval(option: string, value: unknown): number {
  const ms = parseDuration(value, option);
  if (ms < MIN_SAMPLE_INTERVAL_MS) {
    throw new ConfigError(option, `expected at least '${MIN_SAMPLE_INTERVAL_MS}ms' (it is the period of a timer), got ${describe(value)}`);
  }
  return ms;
}

function utilization(option: string, value: unknown): number {
  if (typeof value !== 'number' || !(value > 0 && value <= 1)) {
    throw new ConfigError(option, `expected a share of time above 0 and at most 1, like 0.98, got ${describe(value)}`);
  }
  return value;
}

function inFlightLimit(option: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new ConfigError(option, `expected a whole number of requests of at least 1, like 100, got ${describe(value)}`);
  }
  return value;
}

// A threshold above V8's own heap limit can never be reached: the process dies of an
// out-of-memory error first, so shedding would never start.
function heapLimit(option: string, value: unknown): number {
  const bytes = positiveBytes(option, value, "'1gb'");
  const ceiling = getHeapStatistics().heap_size_limit;
  if (bytes >= ceiling) {
    throw new ConfigError(
      option,
      `${bytes} bytes is at or above V8's heap limit of ${ceiling} bytes, so it is never reached before an out-of-memory crash; set it below (e.g. ${Math.floor(ceiling * 0.85)}) or raise --max-old-space-size`,
    );
  }
  return bytes;
}
