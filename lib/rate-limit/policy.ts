import { ConfigError } from '../errors';
import { checkOptions } from '../options';
import type { RateLimitAlgorithm, RateLimitPolicy } from '../stores/rate-limit-store';
import { describe, parseDuration } from '../units';

/** One tier of `rateLimit({ tiers })`; unset fields come from the limiter's own options (not `daily`). */
export interface RateLimitTier {
  /** Requests per window. Defaults to the limiter's `limit`. */
  limit?: number;
  /** Window length ('1m' or milliseconds). Defaults to the limiter's `window`. */
  window?: number | string;
  /** Requests per UTC day. Defaults to none (a tier does not inherit the limiter's `daily`). */
  daily?: number | false;
  /** Token-bucket capacity. Defaults to this tier's `limit`. */
  burst?: number;
}

/** A tier compiled at setup: the store policies and every header string that does not change per request. */
export interface CompiledTier {
  name: string;
  /** The policy on the shared store. */
  policy: RateLimitPolicy;
  /** The policy of the local fallback limiter (`onStoreError: 'memory'`): limits divided by `instances`. */
  fallback: RateLimitPolicy;
  headers: TierHeaders;
  fallbackHeaders: TierHeaders;
}

/** Header values of one policy, precomputed so the hot path only formats the changing numbers. */
export interface TierHeaders {
  /** `X-RateLimit-Limit` for the window. */
  limit: string;
  /** `X-RateLimit-Limit` when the daily quota is the tighter one. */
  dailyLimit: string;
  /** `RateLimit-Policy`. */
  policy: string;
  /** The quoted policy name the `RateLimit` field starts with (`"free"`). */
  item: string;
  /** The same for the daily quota (`"free-daily"`). */
  dailyItem: string;
  /** Window length in seconds, for `details.window`. */
  windowSeconds: number;
}

const TIER_KEYS = ['limit', 'window', 'daily', 'burst'] as const;
// burst * windowMs is the token bucket's capacity in integer units; past 2^53 doubles lose units.
const MAX_CAPACITY = Number.MAX_SAFE_INTEGER;

/** Validates one tier (or the limiter's top-level settings) and compiles it. */
export function compileTier(
  name: string,
  tier: RateLimitTier,
  inherited: { limit: number; windowMs: number; algorithm: RateLimitAlgorithm },
  instances: number,
  option: string,
): CompiledTier {
  if (!/^[\x20-\x7e]{1,64}$/.test(name)) {
    throw new ConfigError(option, `tier names become header values: use 1-64 printable ASCII characters, got ${describe(name)}`);
  }
  const limit = tier.limit === undefined ? inherited.limit : positiveInteger(tier.limit, `${option}.limit`);
  const windowMs = tier.window === undefined ? inherited.windowMs : windowOf(tier.window, `${option}.window`);
  const daily = tier.daily === undefined || tier.daily === false || tier.daily === 0 ? 0 : positiveInteger(tier.daily, `${option}.daily`);
  let burst = limit;
  if (tier.burst !== undefined) {
    if (inherited.algorithm !== 'token-bucket') {
      throw new ConfigError(`${option}.burst`, `applies to algorithm 'token-bucket' only (this limiter uses '${inherited.algorithm}'); remove it or set algorithm: 'token-bucket'`);
    }
    burst = positiveInteger(tier.burst, `${option}.burst`);
  }
  if (burst * windowMs > MAX_CAPACITY) {
    throw new ConfigError(option, `burst x window (${burst} x ${windowMs} ms) is too large to count exactly; use a shorter window or a smaller burst`);
  }
  const policy: RateLimitPolicy = { algorithm: inherited.algorithm, limit, windowMs, burst, daily };
  // Each instance admits its share while the shared store is down, so the fleet stays near the limit.
  const share = (n: number): number => (n === 0 ? 0 : Math.max(1, Math.floor(n / instances)));
  const fallback: RateLimitPolicy = { ...policy, limit: share(limit), burst: share(burst), daily: share(daily) };
  return { name, policy, fallback, headers: headersOf(name, policy), fallbackHeaders: headersOf(name, fallback) };
}

/** Validates the `tiers` option's shape (an object of tier objects with known keys). */
export function checkTier(value: unknown, option: string): RateLimitTier {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ConfigError(option, `expected a tier like { limit: 100, window: '1m', daily: 10000 }, got ${describe(value)}`);
  }
  return checkOptions(option, value as RateLimitTier, TIER_KEYS);
}

/** A window option as whole milliseconds (at least 1). */
export function windowOf(value: unknown, option: string): number {
  const ms = Math.ceil(parseDuration(value, option));
  if (ms < 1) throw new ConfigError(option, `expected a window of at least 1 ms like '1m', got ${describe(value)}`);
  return ms;
}

/** A whole number of at least 1. */
export function positiveInteger(value: unknown, option: string): number {
  if (typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= Number.MAX_SAFE_INTEGER) return value;
  throw new ConfigError(option, `expected a whole number of at least 1, got ${describe(value)}`);
}

// Header syntax of draft-ietf-httpapi-ratelimit-headers-10: policy names are sf-strings, and the
// token bucket is described by its capacity and the time it takes to refill it, so q/w is the
// sustained rate and r never exceeds q.
function headersOf(name: string, policy: RateLimitPolicy): TierHeaders {
  const item = sfString(name);
  const dailyItem = sfString(`${name}-daily`);
  const bucket = policy.algorithm === 'token-bucket';
  const q = bucket ? policy.burst : policy.limit;
  const w = Math.max(1, Math.round((bucket ? (policy.burst * policy.windowMs) / policy.limit : policy.windowMs) / 1000));
  let header = `${item};q=${q};w=${w}`;
  if (policy.daily > 0) header += `, ${dailyItem};q=${policy.daily};w=86400`;
  return { limit: String(q), dailyLimit: String(policy.daily), policy: header, item, dailyItem, windowSeconds: policy.windowMs / 1000 };
}

function sfString(value: string): string {
  return `"${value.replace(/[\\"]/g, '\\$&')}"`;
}
