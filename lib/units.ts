import ms from 'ms';
import bytes from 'bytes';
import { ConfigError } from './errors';
import { setupLogger, warnOnce } from './warnings';

/** Parses a duration ('500ms', '30s', '1m', '1h', '1d' or milliseconds) into milliseconds; throws ConfigError naming `option`. */
export function parseDuration(value: unknown, option: string): number {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value;
  if (typeof value === 'string' && value.trim() !== '') {
    const parsed = /^\d+(\.\d+)?$/.test(value.trim()) ? Number(value) : ms(value as ms.StringValue);
    if (typeof parsed === 'number' && Number.isFinite(parsed) && parsed >= 0) return parsed;
  }
  throw new ConfigError(option, `expected a duration like '500ms', '30s' or '1m', or milliseconds, got ${describe(value)}`);
}

/**
 * Warns (ERR_DURATION_UNIT, once per option and value) when a duration that is never that short
 * on purpose, like a rate-limit window or a request timeout, is a bare number under 1000: it counts
 * as milliseconds, and `window: 60` almost surely meant a minute. The message gives the string to
 * write; a string with a unit ('60s', or '60ms' to keep milliseconds) never warns.
 */
export function warnIfSecondsMeant(value: unknown, option: string, what: string): void {
  const n = typeof value === 'string' && /^\s*\d+(\.\d+)?\s*$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !(n > 0 && n < 1000)) return;
  warnOnce(setupLogger(), 'ERR_DURATION_UNIT', { option, value: n, what, suggestion: `'${n}s'` }, `${option}=${n}`);
}

/** Parses a size ('1kb', '1mb' or bytes) into bytes; throws ConfigError naming `option`. */
export function parseBytes(value: unknown, option: string): number {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return Math.floor(value);
  // bytes.parse falls back to parseInt ('1 megabyte' would be 1 byte), so the shape is checked first.
  if (typeof value === 'string' && /^\s*\d+(?:\.\d+)?\s*(?:b|kb|mb|gb|tb|pb)?\s*$/i.test(value)) {
    const parsed = bytes.parse(value);
    if (typeof parsed === 'number' && Number.isFinite(parsed) && parsed >= 0) return parsed;
  }
  throw new ConfigError(option, `expected a size like '100kb' or '1mb', or a number of bytes, got ${describe(value)}`);
}

/** Parses a positive number of seconds (the cache's `ttl` and `maxAge`). */
export function parseSeconds(value: unknown, option: string): number {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value;
  throw new ConfigError(option, `expected a number of seconds (as in HTTP max-age), got ${describe(value)}`);
}

/** Short, safe rendering of a config value for error messages. */
export function describe(value: unknown): string {
  if (typeof value === 'string') return `'${value}'`;
  if (typeof value === 'function') return 'a function';
  if (value === null || typeof value !== 'object') return String(value);
  if (Array.isArray(value)) return 'an array';
  return 'an object';
}
