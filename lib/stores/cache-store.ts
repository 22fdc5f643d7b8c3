import { createHash, randomBytes } from 'node:crypto';
import { Cluster } from 'ioredis';
import { LRUCache } from 'lru-cache';
import type { Logger } from '../logger';
import type { RedisStores } from './redis';
import type { RedisConnection } from './redis-connection';
import type { PubSub, StoreFactory } from './types';
import { ROOT_NAME } from '../cache/names';
import { LUA_NOW_MS } from './lua';
import { perStores } from './per-stores';

/** One stored response, as the `cache` middleware replays it. */
export interface CachedResponse {
  /** HTTP status (2xx). */
  status: number;
  /** Headers the handler set, lower-case names (never Set-Cookie, Content-Length or per-request headers). */
  headers: Array<[string, string | string[]]>;
  /** The exact body bytes. */
  body: Buffer;
  /** The ETag header, if any (kept apart so a conditional request needs no header scan). */
  etag?: string;
  /** The Last-Modified header, if any. */
  lastModified?: string;
  /** Request header values the response's own `Vary` named beyond the configured `vary`; a hit needs the same values. */
  varyCheck?: Array<[string, string]>;
  /** Index names the entry is filed under (its path, each ancestor path, its tags), for invalidation. */
  names: string[];
  /** How long it is fresh, in ms. */
  ttlMs: number;
  /** How long after that it may still be served stale while one request refreshes it, in ms. */
  staleMs: number;
  /** When it was stored, on the store's clock (`now()`); on Redis derived from the key's remaining TTL. */
  storedAt: number;
}

/** What a look-up found. */
export interface CacheLookup {
  /** The entry, fresh or stale; undefined on a miss. */
  entry: CachedResponse | undefined;
  /** Whether the entry is past its ttl (only served within `staleMs`). */
  stale: boolean;
  /** Whether this caller now holds the key's fill lock and should run the handler. */
  locked: boolean;
  /** Whether another caller (here or on another instance) holds the lock: wait for its result. */
  contended: boolean;
  /** Whether the store failed or was too slow: act on a miss without a lock, store nothing. */
  failed: boolean;
}

/**
 * Cached responses, shared by every `cache` middleware of one namespace on one backend. Entries
 * are indexed by path prefix and tag, so invalidation never scans the keyspace. A store checks
 * that no invalidation touching an entry happened since its `ticket` before keeping it, so a
 * response computed before a write cannot be stored after the write invalidated it.
 */
export interface CacheStore {
  /** The store's clock, epoch ms. */
  now(): number;
  /** A look-up that answers from this process alone (memory: the whole store; Redis: the local copy). Never locks. */
  peek(key: string): CacheLookup | undefined;
  /**
   * The authoritative look-up; on a miss or a stale entry it also tries to take the key's fill
   * lock for `lockMs` (0: look only). `staleMs` is the caller's stale window, so the store can
   * tell fresh from stale before decoding; `owner` names the lock holder for {@link unlock}.
   */
  acquire(key: string, lockMs: number, timeoutMs: number, staleMs?: number, owner?: string): CacheLookup | Promise<CacheLookup>;
  /** The invalidation generation now: pass it to {@link set} for a response computed from here on. */
  ticket(timeoutMs: number): number | Promise<number>;
  /** Stores `entry` unless an invalidation of one of its names happened after `ticket`; resolves to whether it was kept. */
  set(key: string, entry: CachedResponse, ticket: number, timeoutMs: number): Promise<boolean>;
  /** Releases the fill lock of `key` if `owner` still holds it (a filler that outlived its lock must not free its successor's). */
  unlock(key: string, owner?: string): Promise<void>;
  /** Drops every entry filed under one of `names` (here and, on Redis, on every instance). */
  invalidate(names: string[]): void | Promise<void>;
  /** Unsubscribes and forgets local state. */
  close(): Promise<void>;
}

/** Options of {@link cacheStore}. */
export interface CacheStoreOptions {
  /** Key namespace: stores with the same namespace share entries. Defaults to 'cache'. */
  namespace?: string;
  /** Memory: most entries kept (Redis: most kept in the local copy). Defaults to 10,000. */
  maxEntries?: number;
  /** Memory: most bytes of bodies and headers kept (Redis: in the local copy). Defaults to 64 MB. */
  maxBytes?: number;
  /** Redis: how long an instance reuses an entry it read before asking Redis again, in ms; 0 turns the local copy off. Defaults to 1000. */
  localTtlMs?: number;
  /** Clock of the memory store. Defaults to the MemoryStores clock. */
  now?: () => number;
  /** Called once per entry the memory bound evicts (for `cache_evictions_total`). */
  onEvict?: () => void;
  /** Where failures of background work (publish, subscribe) are logged. */
  logger?: Logger;
}

const EMPTY: CacheLookup = Object.freeze({ entry: undefined, stale: false, locked: false, contended: false, failed: false }) as CacheLookup;
const FAILED: CacheLookup = Object.freeze({ entry: undefined, stale: false, locked: false, contended: false, failed: true }) as CacheLookup;
/**
 * Longest a fill may run between its ticket and its store: Redis keeps invalidation markers this
 * long, so a response computed over a longer span is not stored (callers check it).
 */
export const MAX_FILL_MS = 10 * 60_000;
const INVALIDATION_KEEP_MS = MAX_FILL_MS;
// Entry keys an invalidation could not delete yet are kept this long for a later one to delete.
const PENDING_KEEP_MS = 24 * 60 * 60_000;
// While Redis is down, one request a second tries it; the others act on a miss at once.
const PROBE_INTERVAL_MS = 1000;
const noop = (): void => undefined;
// A failed invalidation is tried again after 1 s, then twice as long each time, at most 30 s apart.
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30_000;
// Names of failed invalidations waiting for their retry; past this many, the retry drops everything.
const MAX_RETRY_NAMES = 1000;
// Keys per UNLINK or DRAIN call.
const BATCH = 500;

/** Builds the cache store of a namespace on the stack's backend (memory LRU, or Redis with a short local copy). */
export function cacheStore(options: CacheStoreOptions = {}): StoreFactory<CacheStore> {
  const namespace = options.namespace ?? 'cache';
  return {
    // One store per (backend, namespace): a route-level cache and the stack's cache share entries,
    // in-flight fills and invalidations on memory exactly as they do on Redis.
    memory: (stores): CacheStore => perStores(stores, `cache:${namespace}`, () => new MemoryCacheStore(options.now ?? stores.now, options)),
    redis: (connection, stores): CacheStore => perStores(connection, `cache:${namespace}`, () => new RedisCacheStore(connection, stores, namespace, options)),
  };
}

/** Bytes an entry holds in memory (body, headers, names), for the `maxBytes` bound. */
export function entrySize(entry: CachedResponse): number {
  let size = entry.body.length + 64;
  for (const [name, value] of entry.headers) size += name.length + (typeof value === 'string' ? value.length : value.join('').length) + 8;
  for (const name of entry.names) size += name.length + 8;
  return size;
}

interface Slot {
  entry: CachedResponse;
  /** Past this (store clock) the slot is gone, even if the entry could still be served stale. */
  until: number;
  size: number;
}

/** Memory: an LRU bounded by entries and bytes, an index per name, fill locks and invalidation markers. */
class MemoryCacheStore implements CacheStore {
  private readonly slots: LRUCache<string, Slot>;
  private readonly index = new Map<string, Set<string>>();
  private readonly locks = new Map<string, { until: number; owner: string }>();
  // name → generation of its last invalidation; bounded, since only fills in flight ever read it.
  private readonly invalidated = new LRUCache<string, number>({ max: 10_000 });
  private readonly maxBytes: number;
  private generation = 0;

  constructor(readonly now: () => number, options: Pick<CacheStoreOptions, 'maxEntries' | 'maxBytes' | 'onEvict'>) {
    this.maxBytes = options.maxBytes ?? 64 * 1024 * 1024;
    const onEvict = options.onEvict;
    this.slots = new LRUCache<string, Slot>({
      max: options.maxEntries ?? 10_000,
      maxSize: this.maxBytes,
      sizeCalculation: (slot) => slot.size,
      dispose: (slot, key, reason) => {
        this.unindex(key, slot.entry.names);
        if (reason === 'evict') onEvict?.();
      },
    });
  }

  peek(key: string): CacheLookup | undefined {
    const slot = this.slots.get(key);
    if (slot === undefined) return undefined;
    const now = this.now();
    if (now >= slot.until) {
      this.slots.delete(key);
      return undefined;
    }
    const entry = slot.entry;
    return { entry, stale: now - entry.storedAt >= entry.ttlMs, locked: false, contended: false, failed: false };
  }

  acquire(key: string, lockMs: number, _timeoutMs?: number, _staleMs?: number, owner = ''): CacheLookup {
    const found = this.peek(key);
    if ((found !== undefined && !found.stale) || lockMs <= 0) return found ?? EMPTY;
    const now = this.now();
    const held = this.locks.get(key);
    const locked = held === undefined || held.until <= now;
    if (locked) {
      if (this.locks.size >= 10_000) this.pruneLocks(now);
      this.locks.set(key, { until: now + lockMs, owner });
    }
    if (found === undefined) return locked ? { ...EMPTY, locked: true } : { ...EMPTY, contended: true };
    return { ...found, locked, contended: !locked };
  }

  ticket(): number {
    return this.generation;
  }

  async set(key: string, entry: CachedResponse, ticket: number): Promise<boolean> {
    return this.put(key, entry, ticket, entry.storedAt + entry.ttlMs + entry.staleMs);
  }

  /** Keeps `entry` until `until` (store clock) unless one of its names was invalidated after `ticket`. */
  put(key: string, entry: CachedResponse, ticket: number, until: number): boolean {
    for (const name of entry.names) {
      const at = this.invalidated.get(name);
      if (at !== undefined && at > ticket) return false;
    }
    const size = entrySize(entry);
    if (size > this.maxBytes || until <= this.now()) return false;
    // Delete first, so the old entry's index is cleaned before the new one is filed under the same key.
    this.slots.delete(key);
    this.slots.set(key, { entry, until, size });
    for (const name of entry.names) {
      let keys = this.index.get(name);
      if (keys === undefined) {
        keys = new Set();
        this.index.set(name, keys);
      }
      keys.add(key);
    }
    return true;
  }

  async unlock(key: string, owner = ''): Promise<void> {
    if (this.locks.get(key)?.owner === owner) this.locks.delete(key);
  }

  invalidate(names: string[]): void {
    const generation = ++this.generation;
    for (const name of names) {
      this.invalidated.set(name, generation);
      const keys = this.index.get(name);
      if (keys === undefined) continue;
      this.index.delete(name);
      for (const key of [...keys]) this.slots.delete(key);
    }
  }

  async close(): Promise<void> {}

  private unindex(key: string, names: string[]): void {
    for (const name of names) {
      const keys = this.index.get(name);
      if (keys === undefined) continue;
      keys.delete(key);
      if (keys.size === 0) this.index.delete(name);
    }
  }

  private pruneLocks(now: number): void {
    for (const [key, lock] of this.locks) if (lock.until <= now) this.locks.delete(key);
  }
}

// Look-up and fill lock in one step, so a waiter can never miss an entry stored between its read
// and its lock. Entries live ttl + stale ms, so one with more than `stale` ms left is fresh.
// KEYS: entry, its lock. ARGV: lock ms (0: look only), lock token, stale ms.
// Reply: {entry or false, PTTL, 1 locked | -1 held by another | 0 not asked}.
const LOOKUP = `
local v = redis.call('GET', KEYS[1])
local pt = -2
if v then
  pt = redis.call('PTTL', KEYS[1])
  if pt > tonumber(ARGV[3]) then return {v, pt, 0} end
end
if tonumber(ARGV[1]) <= 0 then return {v or false, pt, 0} end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[1]) then return {v or false, pt, 1} end
return {v or false, pt, -1}
`;

// The lock part of a LOOKUP reply: taken by this caller (1), held by another (-1), not asked (0).
const LOOKUP_LOCKED = 1;

// Files an entry under its names, unless one of them was invalidated after the fill's ticket.
// KEYS: n invalidation markers, then n index sets (all in the namespace's {index} slot).
// ARGV: ticket, entry key, entry lifetime in ms.
const INDEX = `
local n = #KEYS / 2
local ticket = tonumber(ARGV[1])
for i = 1, n do
  local at = redis.call('GET', KEYS[i])
  if at and tonumber(at) > ticket then return 0 end
end
${LUA_NOW_MS}local life = tonumber(ARGV[3])
for i = n + 1, 2 * n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  redis.call('ZADD', KEYS[i], now + life, ARGV[2])
  if redis.call('PTTL', KEYS[i]) < life then redis.call('PEXPIRE', KEYS[i], life) end
end
return 1
`;

const INDEX_FILED = 1;

// Bumps the generation, marks each name invalidated at it, and moves the entry keys filed under
// them to the namespace's pending set (scored by that generation). Returns the generation and
// every pending key: the caller deletes those (they live in other slots on a Cluster) and then
// drains them. A caller that times out leaves its keys pending for the next invalidation, or its
// own retry, to delete: an entry is never left unindexed and undeleted.
// KEYS: generation, pending set, then pairs (index set, invalidation marker). ARGV: marker ms, pending ms.
const INVALIDATE = `
local gen = redis.call('INCR', KEYS[1])
for i = 3, #KEYS, 2 do
  local members = redis.call('ZRANGE', KEYS[i], 0, -1)
  for _, m in ipairs(members) do redis.call('ZADD', KEYS[2], gen, m) end
  redis.call('DEL', KEYS[i])
  redis.call('SET', KEYS[i + 1], gen, 'PX', ARGV[1])
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return {gen, redis.call('ZRANGE', KEYS[2], 0, -1)}
`;

// Forgets pending keys once deleted, unless a later invalidation queued them again meanwhile
// (its score is then above the caller's generation, and that invalidation deletes them).
// KEYS: pending set. ARGV: the caller's generation, then the deleted keys.
const DRAIN = `
local gen = tonumber(ARGV[1])
for i = 2, #ARGV do
  local at = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if at and tonumber(at) <= gen then redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return 1
`;

const UNLOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

type ScriptCall = (keys: string[], args: Array<string | number>, timeoutMs?: number) => Promise<unknown>;

/**
 * Registers a script with a variable number of keys (RedisConnection.script takes a fixed count)
 * and returns a caller that runs it through EVALSHA (ioredis falls back on NOSCRIPT) with the
 * connection's timeout. `buffer` replies keep binary bulk strings as Buffers.
 */
function defineScript(conn: RedisConnection, name: string, lua: string, buffer = false): ScriptCall {
  const client = conn.client as unknown as Record<string, ((...args: Array<string | number>) => Promise<unknown>) | undefined> & {
    defineCommand(name: string, definition: { lua: string }): void;
  };
  const command = `perimeterCache${name}_${createHash('sha1').update(lua).digest('hex').slice(0, 10)}`;
  if (typeof client[command] !== 'function') client.defineCommand(command, { lua });
  const method = buffer ? `${command}Buffer` : command;
  return (keys, args, timeoutMs) => conn.run(() => (client[method] as (...a: Array<string | number>) => Promise<unknown>)(keys.length, ...keys, ...args), timeoutMs);
}

/** Entry bytes on Redis: one line of JSON metadata, then the body as is (binary-safe, no base64). */
function encode(entry: CachedResponse): Buffer {
  const meta = {
    s: entry.status,
    h: entry.headers,
    e: entry.etag,
    l: entry.lastModified,
    v: entry.varyCheck,
    n: entry.names,
    t: entry.ttlMs,
    w: entry.staleMs,
  };
  return Buffer.concat([Buffer.from(`${JSON.stringify(meta)}\n`), entry.body]);
}

function decode(raw: Buffer, storedAt: number): CachedResponse | undefined {
  const newline = raw.indexOf(10);
  if (newline === -1) return undefined;
  try {
    const meta = JSON.parse(raw.toString('utf8', 0, newline)) as {
      s: number;
      h: Array<[string, string | string[]]>;
      e?: string;
      l?: string;
      v?: Array<[string, string]>;
      n: string[];
      t: number;
      w: number;
    };
    if (typeof meta.s !== 'number' || !Array.isArray(meta.h) || !Array.isArray(meta.n)) return undefined;
    const entry: CachedResponse = {
      status: meta.s,
      headers: meta.h,
      body: raw.subarray(newline + 1),
      names: meta.n,
      ttlMs: meta.t,
      staleMs: meta.w,
      storedAt,
    };
    if (meta.e !== undefined) entry.etag = meta.e;
    if (meta.l !== undefined) entry.lastModified = meta.l;
    if (meta.v !== undefined) entry.varyCheck = meta.v;
    return entry;
  } catch {
    return undefined;
  }
}

/**
 * Redis: entries under their own hashed keys (spread over a Cluster, each with its fill lock in
 * the same slot), an index sorted set per name with the namespace's generation and invalidation
 * markers in one `{index}` slot, and a short local copy of entries read, dropped on every
 * instance through pub/sub when an invalidation touches it.
 */
class RedisCacheStore implements CacheStore {
  readonly now = Date.now;
  private readonly lookup: ScriptCall;
  private readonly index: ScriptCall;
  private readonly invalidateScript: ScriptCall;
  private readonly unlockScript: ScriptCall;
  private readonly drainScript: ScriptCall;
  private readonly local: MemoryCacheStore | undefined;
  private readonly localTtlMs: number;
  private readonly token = randomBytes(9).toString('base64url');
  private readonly channel: string;
  private readonly pubsub: PubSub;
  private readonly logger: Logger | undefined;
  private unsubscribe: Promise<(() => Promise<void>) | undefined> | undefined;
  // Bumped by every invalidation seen here: a read that started before one must not refill the local copy.
  private localGeneration = 0;
  private downUntil = 0;
  private retryNames = new Set<string>();
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelay = RETRY_FIRST_MS;
  private closed = false;

  constructor(private readonly conn: RedisConnection, stores: RedisStores, private readonly namespace: string, options: CacheStoreOptions) {
    this.lookup = defineScript(conn, 'Lookup', LOOKUP, true);
    this.index = defineScript(conn, 'Index', INDEX);
    this.invalidateScript = defineScript(conn, 'Invalidate', INVALIDATE);
    this.unlockScript = defineScript(conn, 'Unlock', UNLOCK);
    this.drainScript = defineScript(conn, 'Drain', DRAIN);
    this.pubsub = stores.pubsub;
    this.logger = options.logger;
    this.channel = `${namespace}:invalidate`;
    this.localTtlMs = options.localTtlMs ?? 1000;
    if (this.localTtlMs > 0) {
      this.local = new MemoryCacheStore(this.now, { maxEntries: options.maxEntries, maxBytes: options.maxBytes });
      this.unsubscribe = this.pubsub
        .subscribe(this.channel, (message) => this.dropLocal(message))
        .catch((err: Error) => {
          this.logger?.warn('cache: could not subscribe to invalidations; local copies live at most localTtl', { err: { message: err.message } });
          return undefined;
        });
    }
  }

  peek(key: string): CacheLookup | undefined {
    const found = this.local?.peek(key);
    // The local copy holds fresh entries only; a stale one is judged by Redis.
    return found !== undefined && !found.stale ? found : undefined;
  }

  acquire(key: string, lockMs: number, timeoutMs: number, staleMs = 0, owner = ''): CacheLookup | Promise<CacheLookup> {
    if (this.now() < this.downUntil) return FAILED;
    const entryKey = this.entryKey(key);
    const lockKey = `${entryKey}:lock`;
    const token = this.lockToken(owner);
    const generation = this.localGeneration;
    return this.lookup([entryKey, lockKey], [lockMs, token, staleMs], timeoutMs).then(
      (reply) => {
        this.downUntil = 0;
        const [raw, pttl, lock] = reply as [Buffer | null, number, number];
        let entry: CachedResponse | undefined;
        if (raw !== null && pttl > 0) {
          // Age on Redis's clock: the key was stored for ttl + stale and has `pttl` left.
          entry = decode(raw, 0);
          if (entry !== undefined) entry.storedAt = this.now() - (entry.ttlMs + entry.staleMs - pttl);
        }
        const stale = entry !== undefined && pttl <= entry.staleMs;
        if (entry !== undefined && !stale && this.local !== undefined && generation === this.localGeneration) {
          this.local.put(key, entry, Infinity, Math.min(entry.storedAt + entry.ttlMs, this.now() + this.localTtlMs));
        }
        if (entry !== undefined && !stale) return { entry, stale, locked: false, contended: false, failed: false };
        // A stale entry the script judged fresh (another layer's stale window) was not locked: serve it stale.
        const locked = lock === LOOKUP_LOCKED;
        return { entry, stale, locked, contended: !locked && lockMs > 0, failed: false };
      },
      () => {
        this.downUntil = this.now() + PROBE_INTERVAL_MS;
        // A script that timed out here may still run when Redis answers again and take the lock
        // for nobody: the release queued behind it on the same connection frees it right after.
        if (lockMs > 0) this.unlockScript([lockKey], [token]).catch(noop);
        return FAILED;
      },
    );
  }

  async ticket(timeoutMs: number): Promise<number> {
    const raw = await this.conn.run(() => this.conn.client.get(this.indexKey('gen')), timeoutMs);
    return raw === null ? 0 : Number(raw);
  }

  async set(key: string, entry: CachedResponse, ticket: number, timeoutMs: number): Promise<boolean> {
    const entryKey = this.entryKey(key);
    const life = Math.max(1, Math.ceil(entry.ttlMs + entry.staleMs));
    const generation = this.localGeneration;
    // Stored first, filed second: an invalidation between the two either sees the index entry
    // (and deletes the entry) or bumps a marker the index script sees (and we delete it here).
    // Whatever fails or times out, the delete is queued behind the write, so an entry that
    // reaches Redis late is never left there unfiled, out of invalidation's reach.
    let filed = false;
    try {
      await this.conn.run(() => this.conn.client.set(entryKey, encode(entry), 'PX', life), timeoutMs);
      const keys: string[] = [];
      for (const name of entry.names) keys.push(this.indexKey(`inv:${name}`));
      for (const name of entry.names) keys.push(this.indexKey(`z:${name}`));
      filed = (await this.index(keys, [ticket, entryKey, life], timeoutMs)) === INDEX_FILED;
    } finally {
      if (!filed) await this.conn.run(() => this.conn.client.del(entryKey), timeoutMs).catch(noop);
    }
    if (filed && this.local !== undefined && generation === this.localGeneration) {
      this.local.put(key, entry, Infinity, Math.min(entry.storedAt + entry.ttlMs, this.now() + this.localTtlMs));
    }
    return filed;
  }

  async unlock(key: string, owner = ''): Promise<void> {
    await this.unlockScript([`${this.entryKey(key)}:lock`], [this.lockToken(owner)]);
  }

  /**
   * Drops the entries filed under `names` on Redis and in every instance's local copy. If Redis
   * fails or times out on the way, the call rejects and the invalidation is tried again in the
   * background until it goes through; entry keys it had already unfiled wait in the pending set.
   */
  async invalidate(names: string[]): Promise<void> {
    this.dropNames(names);
    try {
      await this.invalidateOnRedis(names);
    } catch (err) {
      this.retryLater(names);
      throw err;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const off = await this.unsubscribe;
    this.unsubscribe = undefined;
    await off?.().catch(() => undefined);
  }

  private async invalidateOnRedis(names: string[]): Promise<void> {
    const pending = this.indexKey('pending');
    const keys = [this.indexKey('gen'), pending];
    for (const name of names) keys.push(this.indexKey(`z:${name}`), this.indexKey(`inv:${name}`));
    const [generation, members] = (await this.invalidateScript(keys, [INVALIDATION_KEEP_MS, PENDING_KEEP_MS])) as [number, string[]];
    await this.deleteEntries(members);
    for (let i = 0; i < members.length; i += BATCH) await this.drainScript([pending], [generation, ...members.slice(i, i + BATCH)]);
    await this.pubsub.publish(this.channel, JSON.stringify(names)).catch((err: Error) => {
      this.logger?.warn('cache: could not publish an invalidation; other instances drop their local copies within localTtl', { err: { message: err.message } });
    });
  }

  /** Tries a failed invalidation again later (one timer for all of them, backing off while Redis fails). */
  private retryLater(names: string[]): void {
    for (const name of names) this.retryNames.add(name);
    // Too many to remember: dropping everything over-reaches, which is safe; forgetting one is not.
    if (this.retryNames.size > MAX_RETRY_NAMES) this.retryNames = new Set([ROOT_NAME]);
    if (this.retryTimer !== undefined || this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      const due = [...this.retryNames];
      this.retryNames.clear();
      // Local copies read from Redis since the failure may hold entries the failed call missed.
      this.dropNames(due);
      this.invalidateOnRedis(due).then(
        () => {
          this.retryDelay = RETRY_FIRST_MS;
        },
        () => {
          this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
          this.retryLater(due);
        },
      );
    }, this.retryDelay);
    this.retryTimer.unref();
  }

  private async deleteEntries(keys: string[]): Promise<void> {
    if (keys.length === 0) return;
    const client = this.conn.client;
    // Entries sit in their own slots on a Cluster, so there each is deleted on its own.
    if (client instanceof Cluster) {
      await Promise.all(keys.map((key) => this.conn.run(() => client.unlink(key))));
      return;
    }
    for (let i = 0; i < keys.length; i += BATCH) {
      const batch = keys.slice(i, i + BATCH);
      await this.conn.run(() => client.unlink(...batch));
    }
  }

  private dropLocal(message: string): void {
    let names: unknown;
    try {
      names = JSON.parse(message);
    } catch {
      return;
    }
    if (Array.isArray(names)) this.dropNames(names.filter((n): n is string => typeof n === 'string'));
  }

  private dropNames(names: string[]): void {
    this.localGeneration++;
    this.local?.invalidate(names);
  }

  // Hashed: a fixed length whatever the URL, no user ids or cookies in key names, and no braces
  // from a query string that would move the Cluster hash tag.
  private entryKey(key: string): string {
    return this.conn.key(this.namespace, createHash('sha256').update(key).digest('base64url'));
  }

  /** The value of a fill lock: this store and the fill, so only its holder releases it. */
  private lockToken(owner: string): string {
    return `${this.token}:${owner}`;
  }

  private indexKey(suffix: string): string {
    return this.conn.key(this.namespace, 'index', suffix);
  }
}
