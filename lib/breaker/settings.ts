import { ConfigError } from '../errors';
import { callback, duration, option, type Option, type ParsedOptions } from '../options';
import { describe, parseDuration } from '../units';

/** The options every breaker takes, whether it guards routes (`circuitBreaker`) or a function (`createBreaker`). */
export interface BreakerOptions {
  /** Name of the breaker: its log lines, its `circuit_breaker_state{name}` series and, on shared stores, the state every instance shares. Defaults to the route (middleware on a route), 'stack' (createStack), 'default' (elsewhere) or the function's name (createBreaker). */
  name?: string;
  /** Fewest calls within the rolling window before the error rate can open the circuit. Defaults to 5. */
  volumeThreshold?: number;
  /** Percentage of failed calls within the rolling window (once `volumeThreshold` is reached) that opens the circuit. Defaults to 50. */
  errorThresholdPercentage?: number;
  /** How far back calls are counted, as a duration or milliseconds. Defaults to '10s'. */
  rollingWindow?: number | string;
  /** Buckets the rolling window is kept in: counts leave the window one bucket at a time. Defaults to 10. */
  rollingWindowBuckets?: number;
  /** How long the circuit stays open before it lets probes through (half-open). Defaults to '30s'. */
  resetTimeout?: number | string;
  /** Calls let through at once while half-open; the others get the open answer. Defaults to 1. */
  halfOpenMax?: number;
  /** Clock in epoch milliseconds, for tests. Defaults to `Date.now`. */
  now?: () => number;
}

/** {@link BreakerOptions} checked and with every default applied. */
export interface BreakerSettings {
  volumeThreshold: number;
  errorThresholdPercentage: number;
  rollingWindowMs: number;
  buckets: number;
  resetTimeoutMs: number;
  halfOpenMax: number;
  now: () => number;
}

// setTimeout's largest delay; a longer reset timeout would fire at once.
const MAX_DELAY = 2 ** 31 - 1;

/**
 * The rows of {@link BreakerOptions}, in the tables of `circuitBreaker` and `createBreaker`:
 * each option's default and check once. The rollingWindow/buckets check spans two rows and
 * sits in {@link settingsOf}.
 */
export const BREAKER_OPTION_ROWS = {
  name: option("a name of 1 to 200 characters like 'payments'", (value, path) => (value === undefined ? undefined : breakerName(value, path))),
  volumeThreshold: option('a whole number of calls (0 or more)', (value, path) => wholeNumber(value ?? 5, path, 0, 'a number of calls like 5'), '5'),
  errorThresholdPercentage: option('a percentage above 0 and at most 100', percentage, '50'),
  rollingWindow: duration('10s'),
  rollingWindowBuckets: option('a whole number of buckets from 1 to 1000', buckets, '10'),
  resetTimeout: option("a duration like '30s', at most about 24 days", resetTimeout, "'30s'"),
  halfOpenMax: option('a whole number of probes, at least 1', (value, path) => wholeNumber(value ?? 1, path, 1, 'a number of probes like 1'), '1'),
  now: callback<() => number>('() => epoch milliseconds'),
} satisfies { [K in keyof Required<BreakerOptions>]: Option<unknown> };

/** The option keys of {@link BreakerOptions}. */
export const BREAKER_OPTION_KEYS = Object.keys(BREAKER_OPTION_ROWS) as Array<keyof BreakerOptions>;

/** Validates the shared options once, at setup; `scope` prefixes option names in errors ('createBreaker'). */
export function breakerSettings(options: BreakerOptions, scope: string): BreakerSettings {
  const given = options as Record<string, unknown>;
  const parsed: Record<string, unknown> = {};
  for (const [key, row] of Object.entries(BREAKER_OPTION_ROWS)) parsed[key] = row.parse(given[key], `${scope}.${key}`);
  return settingsOf(parsed as ParsedOptions<typeof BREAKER_OPTION_ROWS>, scope);
}

/** The settings from options parsed through {@link BREAKER_OPTION_ROWS}. */
export function settingsOf(p: ParsedOptions<typeof BREAKER_OPTION_ROWS>, scope: string): BreakerSettings {
  if (p.rollingWindow < p.rollingWindowBuckets) {
    throw new ConfigError(`${scope}.rollingWindow`, `${p.rollingWindow} ms is shorter than one millisecond per bucket (rollingWindowBuckets: ${p.rollingWindowBuckets}); use a longer window like '10s'`);
  }
  return {
    volumeThreshold: p.volumeThreshold,
    errorThresholdPercentage: p.errorThresholdPercentage,
    rollingWindowMs: p.rollingWindow,
    buckets: p.rollingWindowBuckets,
    resetTimeoutMs: p.resetTimeout,
    halfOpenMax: p.halfOpenMax,
    now: p.now ?? Date.now,
  };
}

function percentage(value: unknown, path: string): number {
  const pct = value ?? 50;
  if (typeof pct !== 'number' || !(pct > 0 && pct <= 100)) {
    throw new ConfigError(path, `expected a percentage above 0 and at most 100, like 50, got ${describe(pct)}`);
  }
  return pct;
}

function buckets(value: unknown, path: string): number {
  const n = wholeNumber(value ?? 10, path, 1, 'a number of buckets like 10');
  if (n > 1000) throw new ConfigError(path, `expected at most 1000 buckets, got ${n}`);
  return n;
}

function resetTimeout(value: unknown, path: string): number {
  const ms = parseDuration(value ?? '30s', path);
  if (ms <= 0 || ms > MAX_DELAY) {
    throw new ConfigError(path, `expected a duration above 0 and at most ${MAX_DELAY} ms (about 24 days), like '30s', got ${describe(value)}`);
  }
  return ms;
}

/** Checks a breaker name: it labels a metric and keys shared state, so it must be a short string. */
export function breakerName(value: unknown, option: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 200) {
    throw new ConfigError(option, `expected a name of 1 to 200 characters like 'payments', got ${describe(value)}`);
  }
  return value;
}

function wholeNumber(value: unknown, option: string, min: number, example: string): number {
  if (typeof value === 'number' && Number.isInteger(value) && value >= min) return value;
  throw new ConfigError(option, `expected ${example} (a whole number of at least ${min}), got ${describe(value)}`);
}
