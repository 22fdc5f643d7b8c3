import { createHash } from 'node:crypto';
import type { OutgoingHttpHeaders } from 'node:http';
import type { NextFunction, Request, Response } from 'express';
import type { Counter } from 'prom-client';
import { ConfigError } from '../lib/errors';
import { isNotModified, strongEtag } from '../lib/etag';
import type { Logger } from '../lib/logger';
import { counter } from '../lib/metrics-registry';
import { checkOptions } from '../lib/options';
import { runtimeOf, standaloneRuntime, type PerimeterRuntime } from '../lib/runtime';
import { cacheStore, MAX_FILL_MS, type CachedResponse, type CacheLookup, type CacheStore } from '../lib/stores/cache-store';
import type { Stores, StoreFactory } from '../lib/stores/types';
import { describe, parseBytes, parseDuration, parseSeconds } from '../lib/units';
import { contextOf } from '../lib/context';
import { onResponseDone } from '../lib/response-done';
import { responseSlots, slotsOf } from '../lib/request-slots';
import type { PerimeterHandler } from '../types/express-augment';

/** Options of {@link cache}. `ttl`, `maxAge`, `staleWhileRevalidate` and `localTtl` are seconds, as in HTTP. */
export interface CacheOptions {
  /** Seconds a response is kept server-side and replayed with `X-Cache: HIT`; unset or 0 keeps nothing (ETag/304 and Cache-Control only). Defaults to none. */
  ttl?: number;
  /** Seconds clients and proxies may reuse the response (`Cache-Control: max-age`). Defaults to none: no Cache-Control unless `private` or `noStore` is set. */
  maxAge?: number;
  /** `Cache-Control: private` (browsers only, never a shared cache): true always, false never. Defaults to private for authenticated requests whenever a Cache-Control is sent. */
  private?: boolean;
  /** `Cache-Control: no-store`, so clients keep nothing (the server-side cache is not affected). Defaults to false. */
  noStore?: boolean;
  /** Request headers that select different responses (`['Accept-Language']`): part of the cache key, and sent in `Vary`. Defaults to none. */
  vary?: string[];
  /** Tags of the stored responses for `invalidate(tag)`, or a function of the request; on a write route, tags the write invalidates. Defaults to none. */
  tags?: string[] | ((req: Request) => string | string[] | undefined);
  /** Seconds past `ttl` an entry is still served (`X-Cache: STALE`) while one request refreshes it. Defaults to 0. */
  staleWhileRevalidate?: number;
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
  /** Redis only: seconds an instance reuses an entry it read before asking Redis again (any invalidation drops it at once, on every instance); 0 turns the local copy off. Defaults to 1. */
  localTtl?: number;
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

const KNOWN = [
  'ttl', 'maxAge', 'private', 'noStore', 'vary', 'tags', 'staleWhileRevalidate', 'etag', 'invalidateOnWrite', 'honorNoCache',
  'lockTimeout', 'storeTimeout', 'maxBodySize', 'maxEntries', 'maxBytes', 'localTtl', 'key', 'namespace', 'stores', 'now',
] as const;

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const REQUEST_NO_STORE = /(?:^|,)\s*no-store\s*(?:,|$)/i;
const REQUEST_NO_CACHE = /(?:^|,)\s*no-cache\s*(?:,|$)/i;
// A handler that says any of these wants no shared copy; `no-cache` would need a revalidation per use.
const UNSTORABLE = /(?:^|,)\s*(?:no-store|private|no-cache)\b/i;
const VARY_ANY = /(?:^|,)\s*\*\s*(?:,|$)/;
// Never replayed: per-connection, per-request, or recomputed on every hit.
const SKIP_HEADERS = new Set(['set-cookie', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'date', 'x-cache', 'age', 'trailer', 'upgrade']);
// Deeper paths are indexed under their first MAX_DEPTH segments (an invalidation there over-reaches, never under-reaches).
const MAX_DEPTH = 32;
const MAX_KEY_LENGTH = 256;
const MAX_NAME_LENGTH = 200;
const noop = (): void => undefined;

// Namespaces some cache with a ttl serves in this process: a stack-level cache without ttl still
// invalidates them on writes, since the write rarely passes the route-level cache of the GET.
const ttlNamespaces = new Set<string>();
let fillSequence = 0;

/** One cache middleware's setup-time decisions. */
interface Layer {
  etag: boolean | undefined;
  cacheControl: string | undefined;
  cacheControlAuthenticated: string | undefined;
  setsCacheControl: boolean;
  vary: string[] | undefined;
  varyKeys: string[] | undefined;
  tagsOf: ((req: Request) => string[]) | undefined;
}

/** Server-side settings, present when `ttl` is. */
interface Server {
  ttlMs: number;
  staleMs: number;
  lockMs: number;
  storeTimeout: number;
  maxBodySize: number;
  honorNoCache: boolean;
  keyFn: ((req: Request) => string | undefined) | undefined;
}

/** Per stack (runtime): the store, in-flight fills and the metrics. */
interface State {
  store: CacheStore;
  flights: Map<string, Flight>;
  hits: Counter<string>;
  misses: Counter<string>;
  stored: Counter<string>;
  logger: Logger;
}

/** A miss being filled: concurrent misses of the key wait for it instead of running the handler. */
interface Flight {
  req: Request;
  promise: Promise<CachedResponse | undefined>;
  settle: (entry: CachedResponse | undefined) => void;
  /** The stale entry being refreshed, served to others meanwhile. */
  stale: CachedResponse | undefined;
}

/** The server-side part of one GET/HEAD request: created by the outermost cache with a ttl, amended by inner ones. */
interface Fill {
  server: Server;
  state: State | undefined;
  key: string;
  ttlMs: number;
  staleMs: number;
  tags: string[] | undefined;
  varyKeys: string[] | undefined;
  flight: Flight | undefined;
  ticket: number | undefined;
  /** When the ticket was taken (Date.now()). */
  ticketAt: number;
  /** Names this fill as the holder of the key's lock. */
  owner: string;
  locked: boolean;
  snapshot: OutgoingHttpHeaders | undefined;
  names: string[] | undefined;
  settled: boolean;
}

/** The response hooks of one GET/HEAD request (one set, whatever the number of cache layers). */
interface Pending {
  req: Request;
  prevSend: (...args: unknown[]) => Response;
  prevEnd: (...args: unknown[]) => Response;
  head: boolean;
  etag: boolean;
  cacheControl: string | undefined;
  cacheControlAuthenticated: string | undefined;
  vary: string[] | undefined;
  body: string | ArrayBufferView | undefined;
  hidden: boolean;
  ifNoneMatch: string | undefined;
  ifModifiedSince: string | undefined;
  fill: Fill | undefined;
  claimed: boolean;
  done: boolean;
}

interface WriteHook {
  prevEnd: (...args: unknown[]) => Response;
  names: string[];
  state: State;
  done: boolean;
}


/**
 * HTTP caching for GET and HEAD: a strong `ETag` (hash of the body) on 2xx responses with
 * `If-None-Match` / `If-Modified-Since` answered by 304, `Cache-Control` from `maxAge` /
 * `private` / `noStore`, and with `ttl` a server-side cache (memory LRU or Redis) that replays
 * responses with `X-Cache: HIT`, runs the handler once for concurrent misses of a key, and drops
 * entries by tag, by path prefix and after writes.
 */
export function cache(options: CacheOptions = {}): CacheHandler {
  return createCache(options);
}

/** {@link cache} bound to a stack's runtime, so `invalidate()` acts on the stack's stores (createStack uses it). */
export function createCache(options: CacheOptions = {}, runtime?: PerimeterRuntime): CacheHandler {
  checkOptions('cache', options, KNOWN);
  const ttl = options.ttl === undefined ? 0 : parseSeconds(options.ttl, 'cache.ttl');
  const maxAge = options.maxAge === undefined ? undefined : wholeSeconds(options.maxAge, 'cache.maxAge');
  const isPrivate = optionalFlag(options.private, 'cache.private');
  const noStore = optionalFlag(options.noStore, 'cache.noStore') ?? false;
  const etag = optionalFlag(options.etag, 'cache.etag');
  const invalidateOnWrite = optionalFlag(options.invalidateOnWrite, 'cache.invalidateOnWrite') ?? true;
  const honorNoCache = optionalFlag(options.honorNoCache, 'cache.honorNoCache') ?? true;
  const stale = options.staleWhileRevalidate === undefined ? 0 : parseSeconds(options.staleWhileRevalidate, 'cache.staleWhileRevalidate');
  if (stale > 0 && ttl === 0) {
    throw new ConfigError('cache.staleWhileRevalidate', 'serves stored responses past their ttl, so it needs cache.ttl; add ttl (seconds) or drop staleWhileRevalidate');
  }
  if (noStore && maxAge !== undefined) {
    throw new ConfigError('cache.noStore', `no-store forbids clients to keep the response, which contradicts maxAge ${maxAge}; keep one of them`);
  }
  const vary = compileVary(options.vary);
  const tagsOf = compileTags(options.tags);
  const lockMs = positiveDuration(options.lockTimeout ?? '5s', 'cache.lockTimeout');
  const storeTimeout = positiveDuration(options.storeTimeout ?? '100ms', 'cache.storeTimeout');
  const maxBodySize = parseBytes(options.maxBodySize ?? '1mb', 'cache.maxBodySize');
  const maxBytes = parseBytes(options.maxBytes ?? '64mb', 'cache.maxBytes');
  const maxEntries = options.maxEntries ?? 10_000;
  if (typeof maxEntries !== 'number' || !Number.isInteger(maxEntries) || maxEntries < 1) {
    throw new ConfigError('cache.maxEntries', `expected a whole number of entries like 10000, got ${describe(maxEntries)}`);
  }
  const localTtl = options.localTtl === undefined ? 1 : parseSeconds(options.localTtl, 'cache.localTtl');
  const namespace = options.namespace ?? 'cache';
  if (typeof namespace !== 'string' || !/^[A-Za-z0-9._:-]{1,64}$/.test(namespace)) {
    throw new ConfigError('cache.namespace', `expected 1–64 characters of letters, digits and . _ : -, got ${describe(namespace)}`);
  }
  for (const name of ['key', 'now'] as const) {
    if (options[name] !== undefined && typeof options[name] !== 'function') {
      throw new ConfigError(`cache.${name}`, `expected a function, got ${describe(options[name])}`);
    }
  }
  if (options.stores !== undefined && (typeof options.stores !== 'object' || options.stores === null || typeof options.stores.create !== 'function')) {
    throw new ConfigError('cache.stores', `expected a Stores object such as stack.stores, got ${describe(options.stores)}`);
  }

  const layer: Layer = {
    etag,
    ...compileCacheControl(maxAge, isPrivate, noStore),
    vary: vary?.names,
    varyKeys: vary?.keys,
    tagsOf,
  };
  const server: Server | undefined =
    ttl > 0
      ? { ttlMs: ttl * 1000, staleMs: stale * 1000, lockMs, storeTimeout, maxBodySize, honorNoCache, keyFn: options.key }
      : undefined;
  if (server !== undefined) ttlNamespaces.add(namespace);

  let evictions: Counter<string> | undefined;
  const factory: StoreFactory<CacheStore> = cacheStore({
    namespace,
    maxEntries,
    maxBytes,
    localTtlMs: localTtl * 1000,
    now: options.now,
    onEvict: () => evictions?.inc(),
  });
  const pinned = options.stores;
  const states = new Map<PerimeterRuntime, State>();
  const stateFor = (rt: PerimeterRuntime): State => {
    let state = states.get(rt);
    if (state === undefined) {
      const store = (pinned ?? rt.stores).create(factory);
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
  const stateOf = (req: Request): State => stateFor(runtimeOf(req));

  function proceed(req: Request, res: Response, next: NextFunction, fill: Fill | undefined): void {
    const p = installHooks(req, res, layer);
    if (fill !== undefined) {
      p.fill = fill;
      // Settles the fill when the response ends without passing cacheEnd (client gone, timeout answered).
      onResponseDone(res, () => settle(fill, undefined));
    }
    next();
  }

  function miss(req: Request, res: Response, next: NextFunction, state: State | undefined, fill: Fill | undefined): void {
    res.setHeader('X-Cache', 'MISS');
    const ctx = contextOf(req);
    if (ctx !== undefined) ctx.cacheHit = false;
    (state ?? stateOf(req)).misses.inc();
    if (fill !== undefined) fill.snapshot = res.getHeaders();
    proceed(req, res, next, fill);
  }

  function hit(req: Request, res: Response, state: State, entry: CachedResponse): void {
    const pending = responseSlots(res).cachePending as Pending | undefined;
    // An outer cache layer's hooks must not hash or rewrite the replayed response.
    if (pending !== undefined) pending.done = true;
    const age = Math.max(0, state.store.now() - entry.storedAt);
    res.statusCode = entry.status;
    const headers = entry.headers;
    for (let i = 0; i < headers.length; i++) res.setHeader(headers[i][0], headers[i][1]);
    res.setHeader('X-Cache', age >= entry.ttlMs ? 'STALE' : 'HIT');
    res.setHeader('Age', String(Math.floor(age / 1000)));
    const ctx = contextOf(req);
    if (ctx !== undefined) ctx.cacheHit = true;
    state.hits.inc();
    const h = req.headers;
    const ifNoneMatch = h['if-none-match'];
    const ifModifiedSince = h['if-modified-since'];
    if (
      (ifNoneMatch !== undefined || ifModifiedSince !== undefined) &&
      isNotModified({ ifNoneMatch, ifModifiedSince, cacheControl: h['cache-control'] }, entry.etag, entry.lastModified)
    ) {
      res.statusCode = 304;
      res.removeHeader('Content-Type');
      res.end();
      return;
    }
    res.setHeader('Content-Length', entry.body.length);
    res.end(req.method === 'HEAD' ? undefined : entry.body);
  }

  /** A look-up answered: serve it, wait for another instance's fill, or run the handler as the filler. */
  function decide(req: Request, res: Response, next: NextFunction, state: State, fill: Fill, found: CacheLookup, deadline: number): void {
    const entry = found.entry !== undefined && varyMatches(found.entry, req) ? found.entry : undefined;
    if (entry !== undefined && (!found.stale || !found.locked)) {
      // Fresh, or stale while someone else refreshes it.
      fill.flight?.settle(entry);
      fill.flight = undefined;
      return hit(req, res, state, entry);
    }
    // Wait only for a filler of a key with nothing stored: an entry for another Vary variant is replaced, not awaited.
    if (found.contended && found.entry === undefined && Date.now() < deadline) return poll(req, res, next, state, fill, deadline);
    if (entry !== undefined && fill.flight !== undefined) fill.flight.stale = entry;
    fill.locked = found.locked;
    fill.ticketAt = Date.now();
    const ticket = found.failed ? undefined : safeTicket(state, fill.server.storeTimeout);
    if (ticket === undefined || typeof ticket === 'number') {
      fill.ticket = ticket;
      return miss(req, res, next, state, fill);
    }
    ticket.then(
      (value) => {
        fill.ticket = value;
        miss(req, res, next, state, fill);
      },
      () => miss(req, res, next, state, fill),
    ).catch(next);
  }

  /** Another instance holds the key's fill lock: look again (with growing pauses) until its entry appears or the wait is over. */
  function poll(req: Request, res: Response, next: NextFunction, state: State, fill: Fill, deadline: number, delay = 10): void {
    const timer = setTimeout(() => {
      const timedOut = Date.now() + delay >= deadline;
      const lockMs = timedOut ? 0 : fill.server.lockMs;
      Promise.resolve(state.store.acquire(fill.key, lockMs, fill.server.storeTimeout, fill.server.staleMs, fill.owner))
        .then((found) => {
          if (found.contended && found.entry === undefined && !timedOut) return poll(req, res, next, state, fill, deadline, Math.min(delay * 2, 100));
          // Out of patience: run the handler without the lock rather than wait on a filler that may be gone.
          decide(req, res, next, state, fill, timedOut && found.entry === undefined ? { ...found, contended: false } : found, deadline);
        })
        .catch(next);
    }, delay);
    timer.unref?.();
  }

  function follow(req: Request, res: Response, next: NextFunction, state: State, flight: Flight): void {
    flight.promise
      .then((entry) => {
        if (entry !== undefined && varyMatches(entry, req)) return hit(req, res, state, entry);
        // The filler's response could not be shared (not 2xx, Set-Cookie, private…): run our own, store nothing.
        miss(req, res, next, state, undefined);
      })
      .catch(next);
  }

  function serve(req: Request, res: Response, next: NextFunction, fill: Fill): void {
    const identity = identityOf(req);
    const h = req.headers;
    // Credentials the key cannot tell apart, or a client asking for no storage: never shared.
    if (identity === null || (identity === '' && (h.authorization !== undefined || h['x-api-key'] !== undefined))) return miss(req, res, next, undefined, undefined);
    const requestCacheControl = h['cache-control'];
    let refresh = false;
    if (requestCacheControl !== undefined) {
      if (REQUEST_NO_STORE.test(requestCacheControl)) return miss(req, res, next, undefined, undefined);
      refresh = fill.server.honorNoCache && REQUEST_NO_CACHE.test(requestCacheControl);
    }
    const state = stateOf(req);
    fill.state = state;
    const key = keyOf(req, identity, fill.server.keyFn, fill.varyKeys);
    fill.key = key;
    // Real time, not the store's (possibly frozen test) clock: it bounds how long a request waits.
    const deadline = Date.now() + fill.server.lockMs;
    if (refresh) {
      // A forced reload: run the handler and store its answer, without joining or leading a fill.
      return decide(req, res, next, state, fill, { entry: undefined, stale: false, locked: false, contended: false, failed: false }, deadline);
    }
    const local = state.store.peek(key);
    if (local !== undefined && !local.stale && local.entry !== undefined && varyMatches(local.entry, req)) return hit(req, res, state, local.entry);
    const flight = state.flights.get(key);
    if (flight !== undefined && flight.req !== req) {
      if (flight.stale !== undefined && varyMatches(flight.stale, req)) return hit(req, res, state, flight.stale);
      return follow(req, res, next, state, flight);
    }
    fill.flight = startFlight(state.flights, key, req, fill.server.lockMs);
    let found: CacheLookup | Promise<CacheLookup>;
    try {
      found = state.store.acquire(key, fill.server.lockMs, fill.server.storeTimeout, fill.server.staleMs, fill.owner);
    } catch {
      found = FAILED_LOOKUP;
    }
    if (!(found instanceof Promise)) return decide(req, res, next, state, fill, found, deadline);
    found.then(
      (value) => decide(req, res, next, state, fill, value, deadline),
      () => decide(req, res, next, state, fill, FAILED_LOOKUP, deadline),
    ).catch(next);
  }

  function hookWrite(req: Request, res: Response): void {
    const tags = layer.tagsOf?.(req);
    const existing = responseSlots(res).cacheWrite as WriteHook | undefined;
    if (existing !== undefined) {
      if (tags !== undefined) for (const tag of tags) existing.names.push(indexName(`t:${tag}`));
      return;
    }
    const w: WriteHook = { prevEnd: res.end as WriteHook['prevEnd'], names: writeNames(req, tags), state: stateOf(req), done: false };
    responseSlots(res).cacheWrite = w;
    res.end = writeEnd as Response['end'];
  }

  const handler = function cacheMiddleware(req: Request, res: Response, next: NextFunction): void {
    const method = req.method;
    if (method !== 'GET' && method !== 'HEAD') {
      if (invalidateOnWrite && WRITE_METHODS.has(method) && (server !== undefined || ttlNamespaces.has(namespace))) hookWrite(req, res);
      return next();
    }
    if (server === undefined) {
      installHooks(req, res, layer);
      return next();
    }
    const outer = slotsOf(req).cacheFill as Fill | undefined;
    if (outer !== undefined) {
      // An outer cache already handles this request server-side: the inner (more specific) one sets ttl and adds tags.
      outer.ttlMs = server.ttlMs;
      outer.staleMs = server.staleMs;
      const tags = layer.tagsOf?.(req);
      if (tags !== undefined) outer.tags = outer.tags === undefined ? tags : [...outer.tags, ...tags];
      installHooks(req, res, layer);
      return next();
    }
    const fill: Fill = {
      server,
      state: undefined,
      key: '',
      ttlMs: server.ttlMs,
      staleMs: server.staleMs,
      tags: layer.tagsOf?.(req),
      varyKeys: layer.varyKeys,
      flight: undefined,
      ticket: undefined,
      ticketAt: 0,
      owner: String(++fillSequence),
      locked: false,
      snapshot: undefined,
      names: undefined,
      settled: false,
    };
    slotsOf(req).cacheFill = fill;
    serve(req, res, next, fill);
  } as CacheHandler;

  handler.invalidate = async function invalidate(tagOrPrefix: string | string[]): Promise<void> {
    const names = invalidationNames(tagOrPrefix);
    const targets = runtime !== undefined ? [stateFor(runtime)] : states.size > 0 ? [...states.values()] : [stateFor(standaloneRuntime())];
    await Promise.all(targets.map((state) => state.store.invalidate(names)));
  };
  handler.close = async function close(): Promise<void> {
    const stores = new Set([...states.values()].map((s) => s.store));
    states.clear();
    await Promise.all([...stores].map((store) => store.close()));
  };
  return handler;
}

const FAILED_LOOKUP: CacheLookup = { entry: undefined, stale: false, locked: false, contended: false, failed: true };

const flightMaps = new WeakMap<CacheStore, Map<string, Flight>>();
function flightsOf(store: CacheStore): Map<string, Flight> {
  let map = flightMaps.get(store);
  if (map === undefined) {
    map = new Map();
    flightMaps.set(store, map);
  }
  return map;
}

function startFlight(flights: Map<string, Flight>, key: string, req: Request, lockMs: number): Flight {
  let resolve!: (entry: CachedResponse | undefined) => void;
  const promise = new Promise<CachedResponse | undefined>((r) => (resolve = r));
  const flight: Flight = { req, promise, settle: noop, stale: undefined };
  // Waiters are released after lockMs even if the filler hangs; the next miss then fills anew.
  const timer = setTimeout(() => flight.settle(undefined), lockMs);
  timer.unref?.();
  flight.settle = (entry) => {
    clearTimeout(timer);
    if (flights.get(key) === flight) flights.delete(key);
    flight.settle = noop;
    resolve(entry);
  };
  flights.set(key, flight);
  return flight;
}

function safeTicket(state: State, timeoutMs: number): number | Promise<number> | undefined {
  try {
    return state.store.ticket(timeoutMs);
  } catch {
    return undefined;
  }
}

/** Ends a fill: hands the entry to waiting requests at once, then stores it and releases the lock. */
function settle(fill: Fill, entry: CachedResponse | undefined): void {
  if (fill.settled) return;
  fill.settled = true;
  fill.flight?.settle(entry);
  const state = fill.state;
  if (state === undefined) return;
  const unlock = (): void => {
    if (fill.locked) state.store.unlock(fill.key, fill.owner).catch(noop);
  };
  // A fill older than the invalidation markers could have missed one: serve it, do not keep it.
  if (entry === undefined || fill.ticket === undefined || Date.now() - fill.ticketAt > MAX_FILL_MS) return unlock();
  state.store
    .set(fill.key, entry, fill.ticket, Math.max(fill.server.storeTimeout, 1000))
    .then(
      (kept) => {
        if (kept) state.stored.inc();
      },
      (err: Error) => state.logger.debug('cache: could not store a response', { err: { name: err.name, message: err.message } }),
    )
    .finally(unlock);
}

function installHooks(req: Request, res: Response, layer: Layer): Pending {
  const slots = responseSlots(res);
  let p = slots.cachePending as Pending | undefined;
  if (p === undefined) {
    p = {
      req,
      prevSend: res.send as Pending['prevSend'],
      prevEnd: res.end as Pending['prevEnd'],
      head: req.method === 'HEAD',
      etag: layer.etag ?? true,
      cacheControl: layer.cacheControl,
      cacheControlAuthenticated: layer.cacheControlAuthenticated,
      vary: layer.vary,
      body: undefined,
      hidden: false,
      ifNoneMatch: undefined,
      ifModifiedSince: undefined,
      fill: undefined,
      claimed: false,
      done: false,
    };
    slots.cachePending = p;
    res.send = cacheSend as Response['send'];
    res.end = cacheEnd as Response['end'];
    return p;
  }
  // A later (inner, more specific) layer on the same request: its settings win.
  if (layer.etag !== undefined) p.etag = layer.etag;
  if (layer.setsCacheControl) {
    p.cacheControl = layer.cacheControl;
    p.cacheControlAuthenticated = layer.cacheControlAuthenticated;
  }
  if (layer.vary !== undefined) p.vary = p.vary === undefined ? layer.vary : [...p.vary, ...layer.vary];
  return p;
}

/**
 * res.send hook: the body is known here, before Express hashes it for its own weak ETag, so the
 * strong ETag is set first and Express skips its hash (one hash per response, never two).
 */
function cacheSend(this: Response, ...args: unknown[]): Response {
  const p = responseSlots(this).cachePending as Pending;
  const body = args[0];
  const status = this.statusCode;
  // Objects come back through res.json → res.send(string); only the final bytes are claimed.
  // Express 4's deprecated res.send(status, body) passes through untouched and returns here the same way.
  if (p.done || p.claimed || args.length !== 1 || status < 200 || status >= 300 || (typeof body !== 'string' && !ArrayBuffer.isView(body))) {
    return p.prevSend.apply(this, args);
  }
  p.claimed = true;
  p.body = body;
  if (p.etag && status !== 204 && this.getHeader('etag') === undefined) this.setHeader('ETag', strongEtag(body));
  const headers = p.req.headers;
  const ifNoneMatch = headers['if-none-match'];
  const ifModifiedSince = headers['if-modified-since'];
  if (ifNoneMatch === undefined && ifModifiedSince === undefined) return p.prevSend.call(this, body);
  // Express would answer 304 inside send() and strip the headers the server-side store must keep:
  // hide the conditionals from it for this synchronous call; cacheEnd decides, by the same rules.
  p.hidden = true;
  p.ifNoneMatch = ifNoneMatch;
  p.ifModifiedSince = ifModifiedSince;
  if (ifNoneMatch !== undefined) headers['if-none-match'] = undefined;
  if (ifModifiedSince !== undefined) headers['if-modified-since'] = undefined;
  try {
    return p.prevSend.call(this, body);
  } finally {
    if (ifNoneMatch !== undefined) headers['if-none-match'] = ifNoneMatch;
    if (ifModifiedSince !== undefined) headers['if-modified-since'] = ifModifiedSince;
  }
}

/** res.end hook: Cache-Control, Vary and ETag for GET/HEAD 2xx with a known body, the server-side capture, then 304 or the body. */
function cacheEnd(this: Response, ...args: unknown[]): Response {
  const p = responseSlots(this).cachePending as Pending;
  if (p.done) return p.prevEnd.apply(this, args);
  p.done = true;
  const status = this.statusCode;
  // Streamed (headers already out): no ETag and nothing stored; bodies are never buffered.
  if (this.headersSent || status < 200 || status >= 300) {
    if (p.fill !== undefined) settle(p.fill, undefined);
    return p.prevEnd.apply(this, args);
  }
  const chunk = typeof args[0] === 'function' ? undefined : (args[0] as string | ArrayBufferView | null | undefined);
  const encoding = typeof args[1] === 'string' ? (args[1] as BufferEncoding) : undefined;
  // HEAD through res.send passes no chunk: the body send() saw is the one a GET gets.
  let body = chunk !== undefined && chunk !== null ? chunk : p.body;
  if (body === undefined && !p.head) body = '';
  const req = p.req;
  const handlerCacheControl = this.getHeader('cache-control');
  if (handlerCacheControl === undefined) {
    const value = isAuthenticated(req) ? p.cacheControlAuthenticated : p.cacheControl;
    if (value !== undefined) this.setHeader('Cache-Control', value);
  }
  if (p.vary !== undefined) (this as Response & { vary(field: string[]): Response }).vary(p.vary);
  if (p.etag && body !== undefined && status !== 204 && this.getHeader('etag') === undefined) this.setHeader('ETag', strongEtag(body, encoding));
  if (p.fill !== undefined) settle(p.fill, capture(this, req, p.fill, status, body, encoding, handlerCacheControl));
  const headers = req.headers;
  const ifNoneMatch = p.hidden ? p.ifNoneMatch : headers['if-none-match'];
  const ifModifiedSince = p.hidden ? p.ifModifiedSince : headers['if-modified-since'];
  if (
    (ifNoneMatch !== undefined || ifModifiedSince !== undefined) &&
    status !== 204 &&
    isNotModified({ ifNoneMatch, ifModifiedSince, cacheControl: headers['cache-control'] }, headerString(this.getHeader('etag')), headerString(this.getHeader('last-modified')))
  ) {
    this.statusCode = 304;
    this.removeHeader('Content-Type');
    this.removeHeader('Content-Length');
    this.removeHeader('Transfer-Encoding');
    const last = args[args.length - 1];
    return p.prevEnd.call(this, typeof last === 'function' ? last : undefined);
  }
  return p.prevEnd.apply(this, args);
}

/** The entry to store for a filler's response, or undefined when it must not be shared. */
function capture(
  res: Response,
  req: Request,
  fill: Fill,
  status: number,
  body: string | ArrayBufferView | undefined,
  encoding: BufferEncoding | undefined,
  handlerCacheControl: unknown,
): CachedResponse | undefined {
  if (status === 206 || body === undefined || fill.state === undefined) return undefined;
  if (res.getHeader('set-cookie') !== undefined) return undefined;
  if (handlerCacheControl !== undefined && UNSTORABLE.test(String(handlerCacheControl))) return undefined;
  const vary = headerString(res.getHeader('vary'));
  if (vary !== undefined && VARY_ANY.test(vary)) return undefined;
  const size = typeof body === 'string' ? Buffer.byteLength(body, encoding ?? 'utf8') : body.byteLength;
  if (size > fill.server.maxBodySize) return undefined;
  // A copy: the handler may reuse its buffer once the response is sent.
  const bytes = typeof body === 'string' ? Buffer.from(body, encoding ?? 'utf8') : Buffer.from(new Uint8Array(body.buffer, body.byteOffset, body.byteLength));
  const snapshot = fill.snapshot ?? {};
  const headers: Array<[string, string | string[]]> = [];
  for (const name of res.getHeaderNames()) {
    if (SKIP_HEADERS.has(name)) continue;
    const value = res.getHeader(name);
    // Headers outer middleware set for this request alone (request id, rate limits) are set again on a hit.
    if (value === undefined || snapshot[name] === value) continue;
    headers.push([name, typeof value === 'number' ? String(value) : value]);
  }
  // Named now, not before the handler: inner cache layers add their tags on the way in.
  fill.names ??= indexNames(req, fill.tags);
  const entry: CachedResponse = {
    status,
    headers,
    body: bytes,
    names: fill.names,
    ttlMs: fill.ttlMs,
    staleMs: fill.staleMs,
    storedAt: fill.state.store.now(),
  };
  const etag = headerString(res.getHeader('etag'));
  if (etag !== undefined) entry.etag = etag;
  const lastModified = headerString(res.getHeader('last-modified'));
  if (lastModified !== undefined) entry.lastModified = lastModified;
  if (vary !== undefined) {
    const check = varyCheckOf(req, vary, fill.varyKeys);
    if (check.length > 0) entry.varyCheck = check;
  }
  return entry;
}

/** Request header values a hit must match: those the response's Vary names that the key does not already hold. */
function varyCheckOf(req: Request, vary: string, keyed: string[] | undefined): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const authenticated = isAuthenticated(req);
  for (const raw of vary.split(',')) {
    const name = raw.trim().toLowerCase();
    if (name === '' || keyed?.includes(name)) continue;
    // The key holds the caller's identity already; its token or cookie may differ between requests.
    if (authenticated && (name === 'authorization' || name === 'cookie' || name === 'x-api-key')) continue;
    out.push([name, headerString(req.headers[name]) ?? '']);
  }
  return out;
}

function varyMatches(entry: CachedResponse, req: Request): boolean {
  const check = entry.varyCheck;
  if (check === undefined) return true;
  for (let i = 0; i < check.length; i++) {
    if ((headerString(req.headers[check[i][0]]) ?? '') !== check[i][1]) return false;
  }
  return true;
}

/** res.end hook of a write: a 2xx answer first drops the entries of its path (and tags), so the writer's next read is fresh. */
function writeEnd(this: Response, ...args: unknown[]): Response {
  const w = responseSlots(this).cacheWrite as WriteHook;
  if (w.done) return w.prevEnd.apply(this, args);
  w.done = true;
  const status = this.statusCode;
  if (status < 200 || status >= 300) return w.prevEnd.apply(this, args);
  let pending: void | Promise<void> = undefined;
  try {
    pending = w.state.store.invalidate(w.names);
  } catch (err) {
    logInvalidationFailure(w.state.logger, err);
  }
  if (!(pending instanceof Promise)) return w.prevEnd.apply(this, args);
  pending
    .catch((err: unknown) => logInvalidationFailure(w.state.logger, err))
    .then(() => w.prevEnd.apply(this, args))
    .catch((err: unknown) => logInvalidationFailure(w.state.logger, err));
  return this;
}

function logInvalidationFailure(logger: Logger, err: unknown): void {
  const e = err instanceof Error ? err : new Error(String(err));
  logger.warn('cache: could not invalidate after a write; entries of the path may be served until their ttl', { err: { name: e.name, message: e.message } });
}

/**
 * The identity a response may depend on: '' for an anonymous request, null for one that is
 * authenticated in a way the cache cannot name (never shared), else user, API key and tenant.
 */
function identityOf(req: Request): string | null {
  const user = req.user;
  const apiKey = req.apiKey;
  const tenant = req.tenant;
  if (user === undefined && apiKey === undefined && tenant === undefined) return '';
  const userId = user?.id;
  const keyName = apiKey?.name ?? apiKey?.userId;
  if ((user !== undefined && (userId === undefined || userId === null)) || (apiKey !== undefined && keyName === undefined)) return null;
  return `${userId ?? ''}\u0001${keyName ?? ''}\u0001${tenant?.id ?? ''}`;
}

function isAuthenticated(req: Request): boolean {
  return req.user !== undefined || req.apiKey !== undefined;
}

/** Host name, path and query: GET and HEAD share an entry; the query is sorted by name (repeated names keep their order), long keys are hashed. */
function keyOf(req: Request, identity: string, keyFn: Server['keyFn'], varyKeys: string[] | undefined): string {
  const url = req.originalUrl || req.url;
  const q = url.indexOf('?');
  // The host name (not the port), as Express reads it: one app may answer for several sites.
  let key = `GET ${req.hostname ?? ''}${q === -1 ? url : url.slice(0, q)}`;
  if (q !== -1 && q + 1 < url.length) key += `?${sortedQuery(url.slice(q + 1))}`;
  if (varyKeys !== undefined) for (const name of varyKeys) key += `\n${headerString(req.headers[name]) ?? ''}`;
  if (identity !== '') key += `\n@${identity}`;
  if (keyFn !== undefined) {
    const extra = keyFn(req);
    if (extra !== undefined && extra !== null) key += `\n#${String(extra)}`;
  }
  return key.length > MAX_KEY_LENGTH ? `sha1:${createHash('sha1').update(key).digest('base64url')}` : key;
}

function sortedQuery(query: string): string {
  const parts = query.split('&').filter((part) => part !== '');
  if (parts.length < 2) return parts.join('&');
  return parts.sort((a, b) => {
    const an = nameOf(a);
    const bn = nameOf(b);
    return an < bn ? -1 : an > bn ? 1 : 0;
  }).join('&');
}

function nameOf(part: string): string {
  const eq = part.indexOf('=');
  return eq === -1 ? part : part.slice(0, eq);
}

/**
 * The path as the index knows it: no query, percent-decoding of unreserved characters,
 * lower case and no trailing slash. Folding case and encoding can only make an invalidation
 * reach more entries than its path, never fewer (the keys themselves stay exact).
 */
function normalizePath(url: string): string {
  const q = url.indexOf('?');
  let path = q === -1 ? url : url.slice(0, q);
  if (path.includes('%')) {
    try {
      path = decodeURI(path);
    } catch {
      // Malformed escapes stay as they are.
    }
  }
  path = path.toLowerCase();
  if (path === '' || path[0] !== '/') path = `/${path}`;
  while (path.length > 1 && path.endsWith('/')) path = path.slice(0, -1);
  return path;
}

/** `/a/b/c` limited to MAX_DEPTH segments. */
function capDepth(path: string): string {
  let depth = 0;
  for (let i = 1; i < path.length; i++) {
    if (path.charCodeAt(i) === 0x2f && ++depth >= MAX_DEPTH) return path.slice(0, i);
  }
  return path;
}

function indexName(name: string): string {
  return name.length > MAX_NAME_LENGTH ? `h:${createHash('sha1').update(name).digest('base64url')}` : name;
}

/** Names an entry is filed under: its exact path, every ancestor prefix (root included), its own prefix, its tags. */
function indexNames(req: Request, tags: string[] | undefined): string[] {
  const path = normalizePath(req.originalUrl || req.url);
  const names = [indexName(`e:${path}`), 'p:/'];
  const capped = capDepth(path);
  for (let i = capped.indexOf('/', 1); i !== -1; i = capped.indexOf('/', i + 1)) names.push(indexName(`p:${capped.slice(0, i)}`));
  if (capped !== '/') names.push(indexName(`p:${capped}`));
  if (tags !== undefined) for (const tag of tags) names.push(indexName(`t:${tag}`));
  return names;
}

/** What a 2xx write to a path drops: everything under the path, and its collection's exact path (`PUT /games/7` → `/games`). */
function writeNames(req: Request, tags: string[] | undefined): string[] {
  const path = normalizePath(req.originalUrl || req.url);
  const names = [indexName(`p:${capDepth(path)}`)];
  if (path !== '/') {
    const slash = path.lastIndexOf('/');
    names.push(indexName(`e:${slash === 0 ? '/' : path.slice(0, slash)}`));
  }
  if (tags !== undefined) for (const tag of tags) names.push(indexName(`t:${tag}`));
  return names;
}

function invalidationNames(tagOrPrefix: string | string[]): string[] {
  const list = Array.isArray(tagOrPrefix) ? tagOrPrefix : [tagOrPrefix];
  if (list.length === 0) throw new TypeError('cache.invalidate: expected a tag, a path prefix starting with /, or an array of them; got an empty array');
  return list.map((item) => {
    if (typeof item !== 'string' || item === '') {
      throw new TypeError(`cache.invalidate: expected a tag or a path prefix starting with / (a non-empty string), got ${describe(item)}`);
    }
    return item.startsWith('/') ? indexName(`p:${capDepth(normalizePath(item))}`) : indexName(`t:${item}`);
  });
}

function headerString(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) return value.join(', ');
  return String(value);
}

function compileCacheControl(maxAge: number | undefined, isPrivate: boolean | undefined, noStore: boolean): Pick<Layer, 'cacheControl' | 'cacheControlAuthenticated' | 'setsCacheControl'> {
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

function compileVary(vary: unknown): { names: string[]; keys: string[] } | undefined {
  if (vary === undefined) return undefined;
  if (!Array.isArray(vary) || vary.some((name) => typeof name !== 'string' || !HEADER_NAME.test(name))) {
    throw new ConfigError('cache.vary', `expected an array of request header names like ['Accept-Language'], got ${describe(vary)}`);
  }
  if (vary.length === 0) return undefined;
  return { names: [...vary] as string[], keys: (vary as string[]).map((name) => name.toLowerCase()) };
}

function compileTags(tags: CacheOptions['tags']): Layer['tagsOf'] {
  if (tags === undefined) return undefined;
  if (typeof tags === 'function') {
    return (req) => {
      const value = tags(req);
      if (value === undefined || value === null) return [];
      const list = Array.isArray(value) ? value : [value];
      return list.filter((tag): tag is string => typeof tag === 'string' && tag !== '');
    };
  }
  if (!Array.isArray(tags) || tags.some((tag) => typeof tag !== 'string' || tag === '' || tag.startsWith('/'))) {
    throw new ConfigError('cache.tags', `expected an array of tag names like ['games'] (not starting with /, which invalidate() reads as a path) or a function of the request, got ${describe(tags)}`);
  }
  const fixed = [...tags];
  return () => fixed;
}

function wholeSeconds(value: unknown, option: string): number {
  const seconds = parseSeconds(value, option);
  if (!Number.isInteger(seconds)) throw new ConfigError(option, `expected whole seconds (HTTP max-age has no fractions), got ${describe(value)}`);
  return seconds;
}

function optionalFlag(value: unknown, option: string): boolean | undefined {
  if (value === undefined || typeof value === 'boolean') return value;
  throw new ConfigError(option, `expected true or false, got ${describe(value)}`);
}

function positiveDuration(value: unknown, option: string): number {
  const ms = parseDuration(value, option);
  if (ms <= 0) throw new ConfigError(option, `expected a duration above zero like '5s', got ${describe(value)}`);
  return Math.ceil(ms);
}

