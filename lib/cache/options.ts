import type { Request } from 'express';
import type { CacheOptions } from '../../middleware/cache';
import { ConfigError } from '../errors';
import { bytes, callback, count, defineOptions, flag, headerNames, namespace, option, positiveDuration, seconds, storesOption, wholeSeconds } from '../options';
import type { Stores } from '../stores/types';
import { describe } from '../units';

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

// Every option of cache() once: its default and its check (the interface's JSDoc is its doc).
const parseOptions = defineOptions<CacheOptions>()('cache', {
  ttl: seconds(0),
  maxAge: wholeSeconds(),
  private: flag(),
  noStore: flag(false),
  vary: headerNames(),
  tags: option('an array of tag names, or (req) => tags', (value, path) => tagsFunction(value, path)),
  staleWhileRevalidate: seconds(0),
  etag: flag(),
  invalidateOnWrite: flag(true),
  honorNoCache: flag(true),
  lockTimeout: positiveDuration('5s'),
  storeTimeout: positiveDuration('100ms'),
  maxBodySize: bytes('1mb'),
  maxEntries: count(10_000, 'entries'),
  maxBytes: bytes('64mb'),
  localTtl: seconds(1),
  key: callback<(req: Request) => string | undefined>('(req) => string | undefined'),
  namespace: namespace('cache'),
  stores: storesOption(),
  now: callback<() => number>('() => epoch milliseconds'),
});

/** The tables of cache(), for docs. */
export const CACHE_OPTIONS = parseOptions.table;

const MS_PER_SECOND = 1000;

/** Checks every option of `cache()` once and turns it into the settings the middleware runs on. */
export function parseCacheOptions(options: CacheOptions): CacheConfig {
  const p = parseOptions(options);
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

function tagsFunction(tags: unknown, path: string): LayerSettings['tagsOf'] {
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
    throw new ConfigError(path, `expected an array of tag names like ['games'] (not starting with /, which invalidate() reads as a path) or a function of the request, got ${describe(tags)}`);
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
