import type { NextFunction, Request, Response } from 'express';
import { cacheKeyOf } from '../lib/cache/key';
import { flightsOf, Fill, type CacheState, type Outcome } from '../lib/cache/fill';
import { invalidationNames } from '../lib/cache/names';
import { parseCacheOptions, type ServerSettings } from '../lib/cache/options';
import { hookResponse, replay, watchWrite } from '../lib/cache/response';
import { contextOf } from '../lib/context';
import { counter } from '../lib/metrics-registry';
import { onResponseDone } from '../lib/response-done';
import { slotsOf } from '../lib/request-slots';
import { runtimeOf, standaloneRuntime, type PerimeterRuntime } from '../lib/runtime';
import { cacheStore, type CacheStore } from '../lib/stores/cache-store';
import type { Stores } from '../lib/stores/types';
import type { EntryContext } from '../lib/stack-entries';
import type { PerimeterHandler } from '../types/express-augment';
import { recordOnSpan } from '../lib/otel';

/**
 * Options of {@link cache}. `ttl`, `maxAge`, `staleWhileRevalidate` and `localTtl` are seconds as
 * in HTTP when a bare number, or a duration string (`'5m'`).
 */
export interface CacheOptions {
  /** Seconds (or a duration like '5m') a response is kept server-side and replayed with `X-Cache: HIT`; unset or 0 keeps nothing (ETag/304 and Cache-Control only). Defaults to none. */
  ttl?: number | string;
  /** Whole seconds (or a duration like '5m') clients and proxies may reuse the response (`Cache-Control: max-age`). Defaults to none: no Cache-Control unless `private` or `noStore` is set. */
  maxAge?: number | string;
  /** `Cache-Control: private` (browsers only, never a shared cache): true always, false never. Defaults to private for authenticated requests whenever a Cache-Control is sent. */
  private?: boolean;
  /** `Cache-Control: no-store`, so clients keep nothing (the server-side cache is not affected). Defaults to false. */
  noStore?: boolean;
  /**
   * Request headers that select different responses (`['Accept-Language']`): part of the cache
   * key, and sent in `Vary`. Given, it is the whole list: an anonymous request's Cookie joins the
   * key only if listed (`[]` says the response depends on no request header). Defaults to none,
   * and then the Cookie of a request without a user is part of the key.
   */
  vary?: string[];
  /** Tags of the stored responses for `invalidate(tag)`, or a function of the request; on a write route, tags the write invalidates. Defaults to none. */
  tags?: string[] | ((req: Request) => string | string[] | undefined);
  /** Seconds (or a duration) past `ttl` an entry is still served (`X-Cache: STALE`) while one request refreshes it. Defaults to 0. */
  staleWhileRevalidate?: number | string;
  /** Send a strong ETag on GET/HEAD 2xx responses (instead of Express's weak one, never both). Defaults to true. */
  etag?: boolean;
  /** Drop the entries of a path (and its collection's exact path) after a 2xx POST, PUT, PATCH or DELETE to it. Defaults to true. */
  invalidateOnWrite?: boolean;
  /** A request with `Cache-Control: no-cache` skips the look-up and refreshes the entry; false ignores it, so clients cannot force handler runs. Defaults to true. */
  honorNoCache?: boolean;
  /** Longest concurrent misses of one key wait for the first one's response (and the life of its fill lock) before running the handler themselves. Defaults to '5s'. */
  lockTimeout?: number | string;
  /** Longest a store look-up may take before the request goes on as a miss. Defaults to '100ms'. */
  storeTimeout?: number | string;
  /** Largest body kept; larger responses are served but not stored. Defaults to '1mb'. */
  maxBodySize?: number | string;
  /** Most entries kept in memory (on Redis: in each instance's local copy). Defaults to 10000. */
  maxEntries?: number;
  /** Most bytes kept in memory (on Redis: in each instance's local copy). Defaults to '64mb'. */
  maxBytes?: number | string;
  /** Redis only: seconds (or a duration) an instance reuses an entry it read before asking Redis again (any invalidation drops it at once, on every instance); 0 turns the local copy off. Defaults to 1. */
  localTtl?: number | string;
  /** An extra part of the key, e.g. `(req) => req.cookies.locale`. Defaults to none. */
  key?: (req: Request) => string | undefined;
  /** Key namespace: caches with the same namespace on the same stores share entries and invalidations. Defaults to 'cache'. */
  namespace?: string;
  /** Stores holding the entries (e.g. `stack.stores`). Defaults to the stack's stores behind a stack, else memory. */
  stores?: Stores;
  /** Clock of the memory store in epoch ms, for tests. Defaults to the stores' clock. */
  now?: () => number;
}

/** The run-time methods of a {@link cache} handler (also `stack.middleware.cache`). */
export interface CacheMethods {
  /**
   * Drops every entry tagged `tagOrPrefix`, or, when it starts with `/`, every entry whose path is
   * it or lies under it (`'/api/games'` drops `/api/games`, `/api/games/7?x=1`…); on Redis, on
   * every instance. Several at once as an array.
   */
  invalidate(tagOrPrefix: string | string[]): Promise<void>;
  /** Unsubscribes from invalidations and forgets local state. */
  close(): Promise<void>;
}

// An interface, not an intersection: TypeScript infers a route's params from an intersection as `unknown`.
/** A {@link cache} middleware with its run-time methods. */
export interface CacheHandler extends PerimeterHandler, CacheMethods {}

declare module '../lib/create-stack' {
  interface StackMiddleware {
    /** The stack's cache, with `invalidate(tagOrPrefix)` (on by default). */
    cache: CacheHandler;
  }
}

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const REQUEST_NO_STORE = /(?:^|,)\s*no-store\s*(?:,|$)/i;
const REQUEST_NO_CACHE = /(?:^|,)\s*no-cache\s*(?:,|$)/i;
// Marks a request an outer cache chose not to look up: inner caches do not look it up either.
const BYPASSED = 'bypassed';

// Namespaces some cache with a ttl serves in this process: a stack-level cache without ttl still
// invalidates them on writes, since the write rarely passes the route-level cache of the GET.
const ttlNamespaces = new Set<string>();

/**
 * HTTP caching for GET and HEAD: a strong `ETag` (hash of the body) on 2xx responses with
 * `If-None-Match` / `If-Modified-Since` answered by 304, `Cache-Control` from `maxAge` /
 * `private` / `noStore`, and with `ttl` a server-side cache (memory LRU or Redis) that replays
 * responses with `X-Cache: HIT`, runs the handler once for concurrent misses of a key, and drops
 * entries by tag, by path prefix and after writes.
 */
export function cache(options: CacheOptions = {}): CacheHandler {
  return buildCache(options, undefined);
}

/** @internal The stack's cache (createStack builds it): `invalidate()` acts on the stack's stores. */
export function stackCache(options: CacheOptions, { runtime }: EntryContext): CacheHandler {
  return buildCache(options, runtime);
}

function buildCache(options: CacheOptions, runtime: PerimeterRuntime | undefined): CacheHandler {
  const config = parseCacheOptions(options);
  const { layer, server, namespace } = config;
  if (server !== undefined) ttlNamespaces.add(namespace);
  const states = cacheStates(config, runtime);

  const handler = function cacheMiddleware(req: Request, res: Response, next: NextFunction): void {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      if (config.invalidateOnWrite && WRITE_METHODS.has(req.method) && (server !== undefined || ttlNamespaces.has(namespace))) {
        watchWrite(req, res, layer.tagsOf?.(req), states.of(req));
      }
      return next();
    }
    if (server === undefined) {
      hookResponse(req, res, layer);
      return next();
    }
    const outer = slotsOf(req).cacheFill as Fill | typeof BYPASSED | undefined;
    if (outer !== undefined) {
      // An outer cache already looked this request up: this (more specific) one amends what is stored.
      if (outer !== BYPASSED) outer.amend(server, layer.tagsOf?.(req));
      hookResponse(req, res, layer);
      return next();
    }
    serveFromStore(req, res, next, server);
  } as CacheHandler;

  /** The server-side path: key the request, look it up, then replay an entry or run the handler. */
  function serveFromStore(req: Request, res: Response, next: NextFunction, settings: ServerSettings): void {
    const state = states.of(req);
    const cacheControl = req.headers['cache-control'];
    const key = cacheControl !== undefined && REQUEST_NO_STORE.test(cacheControl) ? 'no-store' : cacheKeyOf(req, settings.key);
    if (typeof key === 'string') {
      // Nothing shared either way: no look-up, nothing stored, and inner caches do the same.
      slotsOf(req).cacheFill = BYPASSED;
      return runHandler(req, res, next, state, undefined);
    }
    const fill = new Fill(settings, state, key.key, key.keyed, layer.tagsOf?.(req));
    slotsOf(req).cacheFill = fill;
    const refresh = settings.honorNoCache && cacheControl !== undefined && REQUEST_NO_CACHE.test(cacheControl);
    fill
      .lookUp(req, refresh)
      .then((outcome: Outcome) => {
        if (outcome.kind === 'hit') return replay(req, res, state, outcome.entry);
        runHandler(req, res, next, state, outcome.kind === 'fill' ? fill : undefined);
      })
      .catch(next);
  }

  /** A miss: the handler runs; as the key's filler, its answer is captured for the waiting requests and the store. */
  function runHandler(req: Request, res: Response, next: NextFunction, state: CacheState, fill: Fill | undefined): void {
    res.setHeader('X-Cache', 'MISS');
    const ctx = contextOf(req);
    if (ctx !== undefined) ctx.cacheHit = false;
    recordOnSpan(req, 'perimeter.cache.hit', false);
    state.misses.inc();
    const hooks = hookResponse(req, res, layer);
    if (fill !== undefined) {
      fill.snapshot = res.getHeaders();
      hooks.fill = fill;
      // Settles the fill when the response ends without passing the end hook (client gone, timeout answered).
      onResponseDone(res, () => fill.settle(undefined));
    }
    next();
  }

  handler.invalidate = async function invalidate(tagOrPrefix: string | string[]): Promise<void> {
    const names = invalidationNames(tagOrPrefix);
    await Promise.all(states.targets().map((state) => state.store.invalidate(names)));
  };
  handler.close = function close(): Promise<void> {
    return states.close();
  };
  return handler;
}

/** The store and metrics of one cache per stack it serves, made on the stack's first request. */
function cacheStates(config: ReturnType<typeof parseCacheOptions>, runtime: PerimeterRuntime | undefined) {
  const states = new Map<PerimeterRuntime, CacheState>();
  let evictions: ReturnType<typeof counter> | undefined;
  const factory = cacheStore({
    namespace: config.namespace,
    maxEntries: config.store.maxEntries,
    maxBytes: config.store.maxBytes,
    localTtlMs: config.store.localTtlMs,
    now: config.store.now,
    onEvict: () => evictions?.inc(),
  });
  const stateFor = (rt: PerimeterRuntime): CacheState => {
    let state = states.get(rt);
    if (state === undefined) {
      const store: CacheStore = (config.stores ?? rt.stores).create(factory);
      evictions ??= counter(rt.registry, 'cache_evictions_total', 'Cache entries evicted by the memory bound (entries or bytes)', []);
      state = {
        store,
        flights: flightsOf(store),
        hits: counter(rt.registry, 'cache_hits_total', 'Responses served from the server-side cache (fresh or stale)', []),
        misses: counter(rt.registry, 'cache_misses_total', 'Cacheable requests the server-side cache could not answer', []),
        stored: counter(rt.registry, 'cache_stores_total', 'Responses stored by the server-side cache', []),
        logger: rt.logger,
      };
      states.set(rt, state);
    }
    return state;
  };
  return {
    of: (req: Request): CacheState => stateFor(runtimeOf(req)),
    /** Where `invalidate()` acts: the stack's stores, else every stack served so far, else the standalone memory. */
    targets: (): CacheState[] =>
      runtime !== undefined ? [stateFor(runtime)] : states.size > 0 ? [...states.values()] : [stateFor(standaloneRuntime())],
    close: async (): Promise<void> => {
      const stores = new Set([...states.values()].map((s) => s.store));
      states.clear();
      await Promise.all([...stores].map((store) => store.close()));
    },
  };
}
