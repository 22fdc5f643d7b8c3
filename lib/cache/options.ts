import type { Request } from 'express';
import type { CacheOptions } from '../../middleware/cache';
import { ConfigError } from '../errors';
import { checkOptions } from '../options';
import type { Stores } from '../stores/types';
import { describe, parseBytes, parseDuration } from '../units';

/** What the response hooks of one cache layer do on every GET/HEAD (with or without a store). */
export interface LayerSettings {
  /** Strong ETag on; undefined leaves an outer layer's choice (default on). */
  etag: boolean | undefined;
  /** Cache-Control for anonymous requests, and for authenticated ones. */
  cacheControl: string | undefined;
  cacheControlAuthenticated: string | undefined;
  /** Whether this layer sets Cache-Control at all (an inner layer's then wins over an outer one's). */
  setsCacheControl: boolean;
  /** Header names added to `Vary`, as written. */
  vary: string[] | undefined;
  /** Tags of stored responses, or of the entries a write drops. */
  tagsOf: ((req: Request) => string[]) | undefined;
}

/** What goes into a server-side cache key besides method, host, path and query. */
export interface KeySettings {
  /** Request headers that select the response, lower case; undefined when the option is not given. */
  vary: string[] | undefined;
  /**
   * Whether an anonymous request's Cookie header joins the key: yes unless the route lists the
   * headers its response depends on (`vary`), which then says whether Cookie is one of them.
   */
  cookie: boolean;
  /** The user's extra part (`key` option). */
  extra: ((req: Request) => string | undefined) | undefined;
}

/** The server-side store's settings: present when `ttl` is. Durations in ms. */
export interface ServerSettings {
  ttlMs: number;
  staleMs: number;
  lockMs: number;
  storeTimeout: number;
  maxBodySize: number;
  honorNoCache: boolean;
  key: KeySettings;
}

/** Everything one `cache()` decided at setup. */
export interface CacheConfig {
  layer: LayerSettings;
  server: ServerSettings | undefined;
  invalidateOnWrite: boolean;
  namespace: string;
  /** Bounds and clock of the store this cache creates when it is the first of its namespace. */
  store: { maxEntries: number; maxBytes: number; localTtlMs: number; now: (() => number) | undefined };
  /** Stores pinned by the user; undefined: the stack's (or memory alone). */
  stores: Stores | undefined;
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const NAMESPACE = /^[A-Za-z0-9._:-]{1,64}$/;
const MS_PER_SECOND = 1000;

// One row per option: its default and its check, in one place. `satisfies` keeps the rows and
// CacheOptions in step (a missing or unknown row fails to compile); the known keys come from here.
const OPTIONS = {
  ttl: (v: unknown) => (v === undefined ? 0 : seconds(v, 'cache.ttl')),
  maxAge: (v: unknown) => (v === undefined ? undefined : wholeSeconds(v, 'cache.maxAge')),
  private: (v: unknown) => flag(v, 'cache.private'),
  noStore: (v: unknown) => flag(v, 'cache.noStore') ?? false,
  vary: (v: unknown) => headerNames(v),
  tags: (v: unknown) => tagsFunction(v),
  staleWhileRevalidate: (v: unknown) => (v === undefined ? 0 : seconds(v, 'cache.staleWhileRevalidate')),
  etag: (v: unknown) => flag(v, 'cache.etag'),
  invalidateOnWrite: (v: unknown) => flag(v, 'cache.invalidateOnWrite') ?? true,
  honorNoCache: (v: unknown) => flag(v, 'cache.honorNoCache') ?? true,
  lockTimeout: (v: unknown) => positiveDuration(v ?? '5s', 'cache.lockTimeout'),
  storeTimeout: (v: unknown) => positiveDuration(v ?? '100ms', 'cache.storeTimeout'),
  maxBodySize: (v: unknown) => parseBytes(v ?? '1mb', 'cache.maxBodySize'),
  maxEntries: (v: unknown) => wholeCount(v ?? 10_000, 'cache.maxEntries'),
  maxBytes: (v: unknown) => parseBytes(v ?? '64mb', 'cache.maxBytes'),
  localTtl: (v: unknown) => (v === undefined ? 1 : seconds(v, 'cache.localTtl')),
  key: (v: unknown) => optionalFunction<(req: Request) => string | undefined>(v, 'cache.key'),
  namespace: (v: unknown) => namespaceName(v ?? 'cache'),
  stores: (v: unknown) => storesObject(v),
  now: (v: unknown) => optionalFunction<() => number>(v, 'cache.now'),
} satisfies { [K in keyof Required<CacheOptions>]: (value: unknown) => unknown };

type Parsed = { [K in keyof typeof OPTIONS]: ReturnType<(typeof OPTIONS)[K]> };

const KNOWN = Object.keys(OPTIONS) as Array<keyof typeof OPTIONS>;

/** Checks every option of `cache()` once and turns it into the settings the middleware runs on. */
export function parseCacheOptions(options: CacheOptions): CacheConfig {
  checkOptions('cache', options, KNOWN);
  const given = options as Record<string, unknown>;
  const o = {} as Record<string, unknown>;
  for (const name of KNOWN) o[name] = OPTIONS[name](given[name]);
  const p = o as Parsed;
  if (p.staleWhileRevalidate > 0 && p.ttl === 0) {
    throw new ConfigError('cache.staleWhileRevalidate', 'serves stored responses past their ttl, so it needs cache.ttl; add ttl (seconds) or drop staleWhileRevalidate');
  }
  if (p.noStore && p.maxAge !== undefined) {
    throw new ConfigError('cache.noStore', `no-store forbids clients to keep the response, which contradicts maxAge ${p.maxAge}; keep one of them`);
  }
  return {
    layer: {
      etag: p.etag,
      ...cacheControlOf(p.maxAge, p.private, p.noStore),
      vary: p.vary !== undefined && p.vary.length > 0 ? p.vary : undefined,
      tagsOf: p.tags,
    },
    server:
      p.ttl > 0
        ? {
            ttlMs: p.ttl * MS_PER_SECOND,
            staleMs: p.staleWhileRevalidate * MS_PER_SECOND,
            lockMs: p.lockTimeout,
            storeTimeout: p.storeTimeout,
            maxBodySize: p.maxBodySize,
            honorNoCache: p.honorNoCache,
            key: {
              vary: p.vary?.map((name) => name.toLowerCase()),
              cookie: p.vary === undefined,
              extra: p.key,
            },
          }
        : undefined,
    invalidateOnWrite: p.invalidateOnWrite,
    namespace: p.namespace,
    store: { maxEntries: p.maxEntries, maxBytes: p.maxBytes, localTtlMs: p.localTtl * MS_PER_SECOND, now: p.now },
    stores: p.stores,
  };
}

/**
 * Seconds, as HTTP counts them: a bare number is seconds, a string is a duration ('90s', '5m',
 * '1h'). A number written as a string ('60') is refused: seconds or milliseconds, it cannot say.
 */
export function seconds(value: unknown, option: string): number {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value;
  if (typeof value === 'string' && !/^\s*\d+(?:\.\d+)?\s*$/.test(value)) {
    try {
      return parseDuration(value, option) / MS_PER_SECOND;
    } catch {
      // Reported below, in this option's units.
    }
  }
  throw new ConfigError(option, `expected a number of seconds (as in HTTP max-age) or a duration like '90s' or '5m', got ${describe(value)}`);
}

function wholeSeconds(value: unknown, option: string): number {
  const s = seconds(value, option);
  if (!Number.isInteger(s)) throw new ConfigError(option, `expected whole seconds (HTTP max-age has no fractions), got ${describe(value)}`);
  return s;
}

function flag(value: unknown, option: string): boolean | undefined {
  if (value === undefined || typeof value === 'boolean') return value;
  throw new ConfigError(option, `expected true or false, got ${describe(value)}`);
}

function positiveDuration(value: unknown, option: string): number {
  const ms = parseDuration(value, option);
  if (ms <= 0) throw new ConfigError(option, `expected a duration above zero like '5s', got ${describe(value)}`);
  return Math.ceil(ms);
}

function wholeCount(value: unknown, option: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new ConfigError(option, `expected a whole number of entries like 10000, got ${describe(value)}`);
  }
  return value;
}

function optionalFunction<F>(value: unknown, option: string): F | undefined {
  if (value === undefined || typeof value === 'function') return value as F | undefined;
  throw new ConfigError(option, `expected a function, got ${describe(value)}`);
}

function namespaceName(value: unknown): string {
  if (typeof value !== 'string' || !NAMESPACE.test(value)) {
    throw new ConfigError('cache.namespace', `expected 1–64 characters of letters, digits and . _ : -, got ${describe(value)}`);
  }
  return value;
}

function storesObject(value: unknown): Stores | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null || typeof (value as Stores).create !== 'function') {
    throw new ConfigError('cache.stores', `expected a Stores object such as stack.stores, got ${describe(value)}`);
  }
  return value as Stores;
}

function headerNames(value: unknown): string[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.some((name) => typeof name !== 'string' || !HEADER_NAME.test(name))) {
    throw new ConfigError('cache.vary', `expected an array of request header names like ['Accept-Language'], got ${describe(value)}`);
  }
  return [...(value as string[])];
}

function tagsFunction(tags: unknown): LayerSettings['tagsOf'] {
  if (tags === undefined) return undefined;
  if (typeof tags === 'function') {
    return (req) => {
      const value = (tags as (req: Request) => unknown)(req);
      if (value === undefined || value === null) return [];
      const list = Array.isArray(value) ? value : [value];
      return list.filter((tag): tag is string => typeof tag === 'string' && tag !== '');
    };
  }
  if (!Array.isArray(tags) || tags.some((tag) => typeof tag !== 'string' || tag === '' || tag.startsWith('/'))) {
    throw new ConfigError('cache.tags', `expected an array of tag names like ['games'] (not starting with /, which invalidate() reads as a path) or a function of the request, got ${describe(tags)}`);
  }
  const fixed = [...(tags as string[])];
  return () => fixed;
}

function cacheControlOf(
  maxAge: number | undefined,
  isPrivate: boolean | undefined,
  noStore: boolean,
): Pick<LayerSettings, 'cacheControl' | 'cacheControlAuthenticated' | 'setsCacheControl'> {
  const directives: string[] = [];
  if (noStore) directives.push('no-store');
  if (maxAge !== undefined) directives.push(`max-age=${maxAge}`);
  if (directives.length === 0 && isPrivate === undefined) return { cacheControl: undefined, cacheControlAuthenticated: undefined, setsCacheControl: false };
  const shared = directives.length > 0 ? directives.join(', ') : undefined;
  const privateValue = ['private', ...directives].join(', ');
  return {
    cacheControl: isPrivate === true ? privateValue : shared,
    // A per-user response must not land in a shared cache (CDN) keyed by URL alone.
    cacheControlAuthenticated: isPrivate === false ? shared : privateValue,
    setsCacheControl: true,
  };
}
