import { ConfigError } from '../errors';
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

/** The option keys of {@link BreakerOptions}, for checkOptions. */
export const BREAKER_OPTION_KEYS = [
  'name', 'volumeThreshold', 'errorThresholdPercentage', 'rollingWindow', 'rollingWindowBuckets', 'resetTimeout', 'halfOpenMax', 'now',
] as const;

// setTimeout's largest delay; a longer reset timeout would fire at once.
const MAX_DELAY = 2 ** 31 - 1;
const DEFAULTS = {
  volumeThreshold: 5,
  errorThresholdPercentage: 50,
  rollingWindow: '10s',
  rollingWindowBuckets: 10,
  resetTimeout: '30s',
  halfOpenMax: 1,
} as const;

/** Validates the shared options once, at setup; `scope` prefixes option names in errors ('circuitBreaker'). */
export function breakerSettings(options: BreakerOptions, scope: string): BreakerSettings {
  const volumeThreshold = wholeNumber(options.volumeThreshold ?? DEFAULTS.volumeThreshold, `${scope}.volumeThreshold`, 0, 'a number of calls like 5');
  const pct = options.errorThresholdPercentage ?? DEFAULTS.errorThresholdPercentage;
  if (typeof pct !== 'number' || !(pct > 0 && pct <= 100)) {
    throw new ConfigError(`${scope}.errorThresholdPercentage`, `expected a percentage above 0 and at most 100, like 50, got ${describe(pct)}`);
  }
  const rollingWindowMs = parseDuration(options.rollingWindow ?? DEFAULTS.rollingWindow, `${scope}.rollingWindow`);
  const buckets = wholeNumber(options.rollingWindowBuckets ?? DEFAULTS.rollingWindowBuckets, `${scope}.rollingWindowBuckets`, 1, 'a number of buckets like 10');
  if (buckets > 1000) throw new ConfigError(`${scope}.rollingWindowBuckets`, `expected at most 1000 buckets, got ${buckets}`);
  if (rollingWindowMs < buckets) {
    throw new ConfigError(`${scope}.rollingWindow`, `${rollingWindowMs} ms is shorter than one millisecond per bucket (rollingWindowBuckets: ${buckets}); use a longer window like '10s'`);
  }
  const resetTimeoutMs = parseDuration(options.resetTimeout ?? DEFAULTS.resetTimeout, `${scope}.resetTimeout`);
  if (resetTimeoutMs <= 0 || resetTimeoutMs > MAX_DELAY) {
    throw new ConfigError(`${scope}.resetTimeout`, `expected a duration above 0 and at most ${MAX_DELAY} ms (about 24 days), like '30s', got ${describe(options.resetTimeout)}`);
  }
  const halfOpenMax = wholeNumber(options.halfOpenMax ?? DEFAULTS.halfOpenMax, `${scope}.halfOpenMax`, 1, 'a number of probes like 1');
  const now = options.now ?? Date.now;
  if (typeof now !== 'function') throw new ConfigError(`${scope}.now`, `expected a function returning epoch milliseconds, got ${describe(now)}`);
  return { volumeThreshold, errorThresholdPercentage: pct, rollingWindowMs, buckets, resetTimeoutMs, halfOpenMax, now };
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
