import type Redis from 'ioredis';
import { LRUCache } from 'lru-cache';
import type { MemoryStores } from './memory';
import { perStores } from './per-stores';
import type { RedisConnection } from './redis-connection';
import type { StoreFactory } from './types';

/** A header as kept with a response: lower-case name, value as Node's getHeader gives it. */
export type StoredHeader = [name: string, value: string | string[]];

/**
 * What a finished request left behind for its key: its status, and its headers and body when
 * they could be kept (`body` undefined: the response was larger than `maxBodySize`, so only the
 * fact that the request completed, and with which status, is known).
 */
export interface IdempotencyOutcome {
  status: number;
  headers?: StoredHeader[];
  body?: Buffer;
}

/** What {@link IdempotencyStore.begin} decided for a request. */
export type BeginResult =
  /** The key was free: this request holds its lock and runs. */
  | { outcome: 'acquired' }
  /** Another request with the same key and fingerprint holds the lock. */
  | { outcome: 'in-progress' }
  /** The key belongs to a request with another fingerprint (method, path or body). */
  | { outcome: 'mismatch' }
  /** A request with the same key and fingerprint completed: its outcome. */
  | { outcome: 'done'; result: IdempotencyOutcome };

/**
 * Idempotency records, one per (caller, key) id. Each method is one atomic step: on Redis one Lua
 * script, in memory one synchronous run of JavaScript.
 */
export interface IdempotencyStore {
  /**
   * Looks the id up and, when it is free, locks it for `owner` for `lockTtlMs`. A repeat by the
   * same owner (a command resent after a reconnect) acquires again.
   */
  begin(id: string, fingerprint: string, owner: string, lockTtlMs: number, timeoutMs?: number): Promise<BeginResult>;
  /**
   * Keeps `result` for `ttlMs` when `owner` still holds the lock, or when the id is free (the
   * lock expired, or was released when the client left, and nobody took it since). Resolves to
   * whether it was kept.
   */
  complete(id: string, fingerprint: string, owner: string, result: IdempotencyOutcome, ttlMs: number, timeoutMs?: number): Promise<boolean>;
  /** Frees the id when `owner` holds its lock; resolves to whether it did. */
  release(id: string, owner: string, timeoutMs?: number): Promise<boolean>;
}

/** Options of {@link idempotencyStore}. */
export interface IdempotencyStoreOptions {
  /** Namespace of the keys: stores with the same namespace share records. Defaults to 'idempotency'. */
  namespace?: string;
  /** Memory only: most records kept. Defaults to 10,000. */
  maxEntries?: number;
  /** Memory only: most bytes of kept bodies and headers. Defaults to 64 MiB. */
  maxBytes?: number;
}

/** Builds the idempotency store of a namespace on the stack's backend (memory or Redis). */
export function idempotencyStore(options: IdempotencyStoreOptions = {}): StoreFactory<IdempotencyStore> {
  const namespace = options.namespace ?? 'idempotency';
  const maxEntries = options.maxEntries ?? 10_000;
  const maxBytes = options.maxBytes ?? 64 * 1024 * 1024;
  return {
    memory: (stores) => memoryState(stores, namespace, maxEntries, maxBytes),
    redis: (connection) => new RedisIdempotencyStore(connection, namespace),
  };
}

interface MemoryRecord {
  fingerprint: string;
  owner: string;
  /** Epoch ms (the stores' clock) when the lock or the kept outcome lapses. */
  expiresAt: number;
  /** Undefined while the lock is held. */
  result: IdempotencyOutcome | undefined;
}

// One state per (MemoryStores, namespace): a route-level idempotency() behind a stack sees the
// stack's records on memory exactly as it does on Redis, where the keys are the same.
function memoryState(stores: MemoryStores, namespace: string, maxEntries: number, maxBytes: number): MemoryIdempotencyStore {
  return perStores(stores, `idempotency:${namespace}`, () => new MemoryIdempotencyStore(stores.now, maxEntries, maxBytes));
}

// Rough bytes of a record besides its body and headers: enough that a flood of locks is bounded too.
const RECORD_OVERHEAD = 200;

// Records expire lazily on read against the stores' clock (tests inject one); the LRU bounds count
// and bytes. JavaScript runs each method to completion, so check-and-lock needs no lock here.
class MemoryIdempotencyStore implements IdempotencyStore {
  private readonly records: LRUCache<string, MemoryRecord>;

  constructor(private readonly now: () => number, maxEntries: number, maxBytes: number) {
    this.records = new LRUCache<string, MemoryRecord>({ max: maxEntries, maxSize: maxBytes, sizeCalculation: recordSize });
  }

  async begin(id: string, fingerprint: string, owner: string, lockTtlMs: number): Promise<BeginResult> {
    const record = this.live(id);
    if (record === undefined) {
      this.records.set(id, { fingerprint, owner, expiresAt: this.now() + lockTtlMs, result: undefined });
      return { outcome: 'acquired' };
    }
    if (record.fingerprint !== fingerprint) return { outcome: 'mismatch' };
    if (record.result !== undefined) return { outcome: 'done', result: record.result };
    return record.owner === owner ? { outcome: 'acquired' } : { outcome: 'in-progress' };
  }

  async complete(id: string, fingerprint: string, owner: string, result: IdempotencyOutcome, ttlMs: number): Promise<boolean> {
    const record = this.live(id);
    if (record !== undefined && (record.result !== undefined || record.owner !== owner)) return false;
    // A new object: lru-cache sizes an entry when it is set.
    this.records.set(id, { fingerprint, owner, expiresAt: this.now() + ttlMs, result });
    return this.records.has(id);
  }

  async release(id: string, owner: string): Promise<boolean> {
    const record = this.live(id);
    if (record === undefined || record.result !== undefined || record.owner !== owner) return false;
    this.records.delete(id);
    return true;
  }

  private live(id: string): MemoryRecord | undefined {
    const record = this.records.get(id);
    if (record !== undefined && record.expiresAt <= this.now()) {
      this.records.delete(id);
      return undefined;
    }
    return record;
  }
}

function recordSize(record: MemoryRecord): number {
  const result = record.result;
  if (result === undefined) return RECORD_OVERHEAD;
  let size = RECORD_OVERHEAD + (result.body?.length ?? 0);
  for (const [name, value] of result.headers ?? []) size += name.length + (Array.isArray(value) ? value.join('').length : value.length);
  return size;
}

// One hash per record: state ('L' locked, 'D' done), fp, owner, and for 'D' the outcome as JSON
// (the body base64: replies come back as strings). One key per script, under its own {hash tag}.

// ARGV: fingerprint, owner, lock ttl ms.
const BEGIN = `
local r = redis.call('HMGET', KEYS[1], 'state', 'fp', 'owner')
if not r[1] then
  redis.call('HSET', KEYS[1], 'state', 'L', 'fp', ARGV[1], 'owner', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'acquired'}
end
if r[2] ~= ARGV[1] then return {'mismatch'} end
if r[1] == 'D' then return {'done', redis.call('HGET', KEYS[1], 'result')} end
if r[3] == ARGV[2] then return {'acquired'} end
return {'in-progress'}
`;

// ARGV: fingerprint, owner, outcome JSON, ttl ms.
const COMPLETE = `
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] == 'D' then return 0 end
if r[1] and r[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'D', 'fp', ARGV[1], 'owner', ARGV[2], 'result', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
`;

// ARGV: owner.
const RELEASE = `
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] == 'L' and r[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`;

interface SerializedOutcome {
  status: number;
  headers?: StoredHeader[];
  /** base64. */
  body?: string;
}

// Storing happens after the handler answered and carries the whole body: a look-up's timeout is too short for it.
const MIN_WRITE_TIMEOUT_MS = 1000;

class RedisIdempotencyStore implements IdempotencyStore {
  private readonly begin_;
  private readonly complete_;
  private readonly release_;

  constructor(private readonly conn: RedisConnection, private readonly namespace: string) {
    this.begin_ = conn.script(BEGIN, 1);
    this.complete_ = conn.script(COMPLETE, 1);
    this.release_ = conn.script(RELEASE, 1);
    // Loaded now, not on first use: a complete or release that met NOSCRIPT would take a second
    // round trip, and a retry sent to another instance meanwhile could find the key still locked.
    for (const lua of [BEGIN, COMPLETE, RELEASE]) {
      conn.run(() => (conn.client as Redis).script('LOAD', lua) as Promise<unknown>).catch(() => undefined);
    }
  }

  async begin(id: string, fingerprint: string, owner: string, lockTtlMs: number, timeoutMs?: number): Promise<BeginResult> {
    const reply = (await this.begin_([this.key(id)], [fingerprint, owner, Math.max(1, Math.ceil(lockTtlMs))], timeoutMs)) as [string, string?];
    if (reply[0] !== 'done') return { outcome: reply[0] as 'acquired' | 'in-progress' | 'mismatch' };
    const parsed = JSON.parse(reply[1] as string) as SerializedOutcome;
    const result: IdempotencyOutcome = { status: parsed.status };
    if (parsed.headers !== undefined) result.headers = parsed.headers;
    if (parsed.body !== undefined) result.body = Buffer.from(parsed.body, 'base64');
    return { outcome: 'done', result };
  }

  async complete(id: string, fingerprint: string, owner: string, result: IdempotencyOutcome, ttlMs: number, timeoutMs?: number): Promise<boolean> {
    const serialized: SerializedOutcome = { status: result.status };
    if (result.headers !== undefined) serialized.headers = result.headers;
    if (result.body !== undefined) serialized.body = result.body.toString('base64');
    const kept = await this.complete_(
      [this.key(id)],
      [fingerprint, owner, JSON.stringify(serialized), Math.max(1, Math.ceil(ttlMs))],
      Math.max(timeoutMs ?? this.conn.commandTimeout, MIN_WRITE_TIMEOUT_MS),
    );
    return kept === 1;
  }

  async release(id: string, owner: string, timeoutMs?: number): Promise<boolean> {
    const released = await this.release_([this.key(id)], [owner], Math.max(timeoutMs ?? this.conn.commandTimeout, MIN_WRITE_TIMEOUT_MS));
    return released === 1;
  }

  private key(id: string): string {
    return this.conn.key(this.namespace, id);
  }
}
