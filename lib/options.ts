import { ConfigError } from './errors';
import type { Logger } from './logger';
import type { Stores } from './stores/types';
import { describe, parseBytes, parseDuration } from './units';

/**
 * Validates an options object at setup: a plain object (not a request: `app.use(rateLimit)`
 * instead of `app.use(rateLimit())` is a common slip), and no unknown keys (a likely typo,
 * reported with the nearest known key).
 */
export function checkOptions<T extends object>(name: string, options: T | undefined, known: readonly string[]): T {
  if (options === undefined || options === null) return {} as T;
  refuseRequest(name, options);
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError(name, `expected an options object, got ${Array.isArray(options) ? 'an array' : typeof options}`);
  }
  const o = options as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!known.includes(key)) {
      const near = nearest(key, known);
      throw new ConfigError(`${name}.${key}`, `unknown option${near ? `; did you mean '${near}'?` : ''} Known options: ${known.join(', ')}`);
    }
  }
  return options;
}

/**
 * Throws when a factory's first argument is a request: the factory itself was mounted
 * (`app.use(rateLimit)`) where the middleware it makes belongs (`app.use(rateLimit())`), so
 * Express calls it with (req, res, next) on every request. `call` is how the fix is written.
 */
export function refuseRequest(name: string, value: unknown, call = `${name}()`): void {
  if (isRequestLike(value)) {
    throw new ConfigError(name, `was called with a request instead of options: write app.use(${call}) with parentheses, not app.use(${name})`);
  }
}

function isRequestLike(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return false;
  return 'method' in value && 'headers' in value && ('socket' in value || 'url' in value);
}

/**
 * Refuses an Express Router or app, or a middleware `(req, res, next)`, given for an option that
 * takes a plain callback (`skip`, `key`, `lookup`, …): it would be called with the wrong
 * arguments on every request, and its answer read as the option's. `expected` is the callback's
 * shape for the message, like `(req) => boolean`.
 */
export function checkCallback(option: string, value: unknown, expected: string): void {
  if (typeof value !== 'function') return;
  const fn = value as { length: number; handle?: unknown; use?: unknown; stack?: unknown };
  const fix = `the option is called with ${expected.slice(0, expected.indexOf(')') + 1)} and its return value is used; mount middleware with app.use() instead`;
  if (typeof fn.handle === 'function' && typeof fn.use === 'function') {
    throw new ConfigError(option, `expected a function ${expected}, got an Express ${Array.isArray(fn.stack) ? 'Router' : 'app'}: ${fix}`);
  }
  if (fn.length >= 3) {
    throw new ConfigError(option, `expected a function ${expected}, got a function of ${fn.length} parameters, a middleware (req, res, next): ${fix}`);
  }
}

/** The known key closest to `key` (edit distance at most a third of its length), if any. */
export function nearest(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  const k = key.toLowerCase();
  for (const candidate of known) {
    const d = distance(k, candidate.toLowerCase());
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return bestDistance <= Math.max(2, Math.ceil(key.length / 3)) ? best : undefined;
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length];
}

/** Throws ConfigError unless `value` is one of `allowed`. */
export function oneOf<T extends string>(option: string, value: unknown, allowed: readonly T[]): T {
  if (typeof value === 'string' && (allowed as readonly string[]).includes(value)) return value as T;
  throw new ConfigError(option, `expected one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${typeof value === 'string' ? `'${value}'` : String(value)}`);
}

/**
 * One option of a factory's table: how a given value (undefined when the user left it out) becomes
 * the setting the middleware runs on. `parse` throws a ConfigError naming `path` (`rateLimit.window`)
 * and the fix; `accepts` and `default` say the same in words, for messages and for docs.
 */
export interface Option<T> {
  readonly parse: (value: unknown, path: string) => T;
  /** What the option takes, as a docs page would say it: "a duration like '1m'". */
  readonly accepts: string;
  /** The default as a user would write it; undefined: none. */
  readonly default?: string;
}

/** The setting an {@link Option} yields. */
export type OptionValue<O> = O extends Option<infer T> ? T : never;

/** A factory's parsed options: one setting per row of its table. */
export type ParsedOptions<T> = { -readonly [K in keyof T]: OptionValue<T[K]> };

/** One row of {@link describeOptions}: enough for a docs page, or a test that a docs page lists each option. */
export interface OptionDescription {
  factory: string;
  key: string;
  accepts: string;
  default: string | undefined;
}

/**
 * Turns a factory's options into its settings; the table is reachable for docs. `at` names a
 * nested object's place in messages when it differs from the table's name (`ipFilter.paths['/a']`).
 */
export interface OptionsParser<O, T> {
  (options: O | undefined, at?: string): ParsedOptions<T>;
  readonly factory: string;
  readonly table: T;
}

/** Every key of an options type, including each member's of a union (helmet's `hsts` | `strictTransportSecurity`). */
type OptionKey<O> = O extends unknown ? keyof O : never;

const tables = new Map<string, Record<string, Option<unknown>>>();

/**
 * Declares a factory's options once: `defineOptions<RateLimitOptions>()('rateLimit', { limit:
 * positiveInt(100), … })`. The table must have exactly the keys of the options interface (a missing
 * or extra row fails to compile), so the known keys, the defaults and the checks cannot drift from
 * the public type. The parser it returns refuses a request given as options (`app.use(rateLimit)`),
 * a non-object and unknown keys ("did you mean"), then runs every row.
 */
export function defineOptions<O extends object>() {
  return function table<const T extends { readonly [K in OptionKey<O>]-?: Option<unknown> }>(
    factory: string,
    rows: T & Record<Exclude<keyof T, OptionKey<O>>, never>,
  ): OptionsParser<O, T> {
    const entries = Object.entries(rows as Record<string, Option<unknown>>);
    const known = entries.map(([key]) => key);
    tables.set(factory, rows as Record<string, Option<unknown>>);
    const parse = (options: O | undefined, at = factory): ParsedOptions<T> => {
      const given = checkOptions(at, options, known) as Record<string, unknown>;
      const parsed: Record<string, unknown> = {};
      for (const [key, row] of entries) parsed[key] = row.parse(given[key], `${at}.${key}`);
      return parsed as ParsedOptions<T>;
    };
    return Object.assign(parse, { factory, table: rows as T });
  };
}

/** Every declared option (of one factory, or of every factory whose module is loaded), for docs. */
export function describeOptions(factory?: string): OptionDescription[] {
  const rows: OptionDescription[] = [];
  for (const [name, table] of tables) {
    if (factory !== undefined && name !== factory) continue;
    for (const [key, row] of Object.entries(table)) rows.push({ factory: name, key, accepts: row.accepts, default: row.default });
  }
  return rows;
}

/** A row from a parse function: for options whose check is theirs alone. */
export function option<T>(accepts: string, parse: (value: unknown, path: string) => T, defaultText?: string): Option<T> {
  return { parse, accepts, default: defaultText };
}

/** Applies `fallback` when the option is left out, then `check`. */
function withDefault<T>(accepts: string, fallback: unknown, check: (value: unknown, path: string) => T): Option<T> {
  return {
    parse: (value, path) => check(value === undefined ? fallback : value, path),
    accepts,
    default: fallback === undefined ? undefined : typeof fallback === 'string' ? `'${fallback}'` : JSON.stringify(fallback),
  };
}

/** Optional when `fallback` is left out: the setting is then undefined. */
function maybe<T>(accepts: string, fallback: unknown, check: (value: unknown, path: string) => T): Option<T> {
  return withDefault(accepts, fallback, (value, path) => (value === undefined ? (undefined as T) : check(value, path)));
}

type Maybe<T, D> = D extends undefined ? T | undefined : T;

/** Milliseconds, from a duration ('500ms', '30s', '1m') or a number of milliseconds. */
export function duration<D extends number | string | undefined = undefined>(fallback?: D): Option<Maybe<number, D>> {
  return maybe("a duration like '30s' or milliseconds", fallback, parseDuration) as Option<Maybe<number, D>>;
}

/** Whole milliseconds above zero, from a duration or a number of milliseconds. */
export function positiveDuration<D extends number | string | undefined = undefined>(fallback?: D): Option<Maybe<number, D>> {
  return maybe("a duration above zero like '5s'", fallback, (value, path) => {
    const ms = parseDuration(value, path);
    if (ms <= 0) throw new ConfigError(path, `expected a duration above zero like '5s', got ${describe(value)}`);
    return Math.ceil(ms);
  }) as Option<Maybe<number, D>>;
}

/**
 * Seconds, as HTTP counts them: a bare number is seconds, a string is a duration ('90s', '5m',
 * '1h'). A number written as a string ('60') is refused: seconds or milliseconds, it cannot say.
 */
export function seconds<D extends number | string | undefined = undefined>(fallback?: D): Option<Maybe<number, D>> {
  return maybe("seconds, or a duration like '5m'", fallback, parseSecondsOrDuration) as Option<Maybe<number, D>>;
}

/** {@link seconds} without fractions (HTTP max-age has none). */
export function wholeSeconds(): Option<number | undefined> {
  return maybe("whole seconds, or a duration like '5m'", undefined, (value, path) => {
    const s = parseSecondsOrDuration(value, path);
    if (!Number.isInteger(s)) throw new ConfigError(path, `expected whole seconds (HTTP max-age has no fractions), got ${describe(value)}`);
    return s;
  });
}

function parseSecondsOrDuration(value: unknown, path: string): number {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value;
  if (typeof value === 'string' && !/^\s*\d+(?:\.\d+)?\s*$/.test(value)) {
    try {
      return parseDuration(value, path) / MS_PER_SECOND;
    } catch {
      // Reported below, in this option's units.
    }
  }
  throw new ConfigError(path, `expected a number of seconds (as in HTTP max-age) or a duration like '90s' or '5m', got ${describe(value)}`);
}

/** Bytes, from a size ('100kb', '1mb') or a number of bytes. */
export function bytes<D extends number | string | undefined = undefined>(fallback?: D): Option<Maybe<number, D>> {
  return maybe("a size like '1mb' or bytes", fallback, parseBytes) as Option<Maybe<number, D>>;
}

/** true or false. */
export function flag<D extends boolean | undefined = undefined>(fallback?: D): Option<Maybe<boolean, D>> {
  return maybe('true or false', fallback, (value, path) => {
    if (typeof value === 'boolean') return value;
    throw new ConfigError(path, `expected true or false, got ${describe(value)}`);
  }) as Option<Maybe<boolean, D>>;
}

/** A whole number of at least 1 (`unit` names what is counted, for the message: 'entries'). */
export function count<D extends number | undefined = undefined>(fallback?: D, unit?: string): Option<Maybe<number, D>> {
  const what = unit === undefined ? 'a whole number of at least 1' : `a whole number of ${unit} like ${fallback ?? 100}`;
  return maybe(what, fallback, (value, path) => {
    if (typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= Number.MAX_SAFE_INTEGER) return value;
    throw new ConfigError(path, `expected ${what}, got ${describe(value)}`);
  }) as Option<Maybe<number, D>>;
}

/** One of a fixed list of strings. */
export function choice<const V extends string, D extends V | undefined = undefined>(values: readonly V[], fallback?: D): Option<Maybe<V, D>> {
  return maybe(values.map((v) => `'${v}'`).join(', '), fallback, (value, path) => oneOf(path, value, values)) as Option<Maybe<V, D>>;
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const NAMESPACE = /^[A-Za-z0-9._:-]{1,64}$/;
const MS_PER_SECOND = 1000;

/** An HTTP header name (RFC 9110 token); `example` shows the fix. */
export function headerName<D extends string | undefined = undefined>(fallback?: D, example = fallback ?? 'X-Request-Id'): Option<Maybe<string, D>> {
  return maybe(`a header name like '${example}'`, fallback, (value, path) => {
    if (typeof value === 'string' && HEADER_NAME.test(value)) return value;
    throw new ConfigError(path, `expected a header name like '${example}', got ${describe(value)}`);
  }) as Option<Maybe<string, D>>;
}

/** An array of request header names; `example` shows the fix. */
export function headerNames(example = "['Accept-Language']"): Option<string[] | undefined> {
  return maybe(`an array of header names like ${example}`, undefined, (value, path) => {
    if (!Array.isArray(value) || value.some((name) => typeof name !== 'string' || !HEADER_NAME.test(name))) {
      throw new ConfigError(path, `expected an array of request header names like ${example}, got ${describe(value)}`);
    }
    return [...(value as string[])];
  });
}

/** A key namespace: 1–64 letters, digits and . _ : - (it becomes part of store keys). */
export function namespace<D extends string | undefined = undefined>(fallback?: D): Option<Maybe<string, D>> {
  return maybe('1–64 characters of letters, digits and . _ : -', fallback, (value, path) => {
    if (typeof value === 'string' && NAMESPACE.test(value)) return value;
    throw new ConfigError(path, `expected 1–64 characters of letters, digits and . _ : -, got ${describe(value)}`);
  }) as Option<Maybe<string, D>>;
}

/**
 * A plain callback such as `(req) => boolean`: refuses a non-function, an Express Router or app,
 * and a middleware `(req, res, next)` (see {@link checkCallback}).
 */
export function callback<F extends (...args: never[]) => unknown>(expected: string): Option<F | undefined> {
  return maybe(`a function ${expected}`, undefined, (value, path) => {
    if (typeof value !== 'function') throw new ConfigError(path, `expected a function ${expected}, got ${describe(value)}`);
    checkCallback(path, value, expected);
    return value as F;
  });
}

/** A Stores object such as `stack.stores`. */
export function storesOption(): Option<Stores | undefined> {
  return maybe('a Stores object such as stack.stores', undefined, (value, path) => {
    if (typeof value !== 'object' || value === null || typeof (value as Stores).create !== 'function') {
      throw new ConfigError(path, `expected a Stores object such as stack.stores, got ${describe(value)}`);
    }
    return value as Stores;
  });
}

/** A value the factory checks itself (a logger, a nested object); taken as given here. */
export function passThrough<T>(accepts: string): Option<T | undefined> {
  return option(accepts, (value) => value as T | undefined);
}

/** A non-empty array of HTTP methods, upper-cased into a set. */
export function httpMethods(fallback: readonly string[]): Option<Set<string>> {
  const example = `[${fallback.map((m) => `'${m}'`).join(', ')}]`;
  return withDefault(`HTTP methods like ${example}`, fallback, (value, path) => {
    if (!Array.isArray(value) || value.length === 0 || value.some((m) => typeof m !== 'string' || !/^[A-Za-z]+$/.test(m))) {
      throw new ConfigError(path, `expected a non-empty array of HTTP methods like ${example}, got ${describe(value)}`);
    }
    return new Set((value as string[]).map((m) => m.toUpperCase()));
  });
}

/** A logger (winston, or anything with its debug/info/warn/error methods). */
export function loggerOption(): Option<Logger | undefined> {
  return maybe('a winston logger', undefined, (value, path) => {
    if (typeof value !== 'object' || value === null || typeof (value as Logger).info !== 'function') {
      throw new ConfigError(path, `expected a winston logger, got ${describe(value)}`);
    }
    return value as Logger;
  });
}
