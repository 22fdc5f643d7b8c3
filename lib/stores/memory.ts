import { EventEmitter } from 'node:events';
import { LRUCache } from 'lru-cache';
import type {
  CounterResult,
  CounterStore,
  ExpiringSetStore,
  KeyValueOptions,
  KeyValueStore,
  PubSub,
  StoreFactory,
  Stores,
} from './types';

// Entries expire lazily on read (no per-entry timers), and every map is bounded by LRU eviction,
// so memory stays flat however many distinct keys arrive.

class MemoryKeyValue<V> implements KeyValueStore<V> {
  private readonly cache: LRUCache<string, { v: V }>;
  constructor(options: KeyValueOptions = {}) {
    const sizeOf = options.sizeOf;
    this.cache = new LRUCache<string, { v: V }>({
      max: options.maxEntries ?? 10_000,
      ...(options.maxBytes && sizeOf
        ? { maxSize: options.maxBytes, sizeCalculation: (entry: { v: V }) => Math.max(1, sizeOf(entry.v)) }
        : {}),
    });
  }
  async get(key: string): Promise<V | undefined> {
    return this.cache.get(key)?.v;
  }
  async set(key: string, value: V, ttlMs?: number): Promise<void> {
    this.cache.set(key, { v: value }, ttlMs ? { ttl: ttlMs } : undefined);
  }
  async delete(key: string): Promise<void> {
    this.cache.delete(key);
  }
}

class MemoryCounter implements CounterStore {
  private readonly cache: LRUCache<string, { count: number; resetAt: number }>;
  constructor(maxKeys: number, private readonly now: () => number) {
    this.cache = new LRUCache({ max: maxKeys });
  }
  async increment(key: string, windowMs: number, by = 1): Promise<CounterResult> {
    const now = this.now();
    let entry = this.cache.get(key);
    if (entry === undefined || entry.resetAt <= now) {
      entry = { count: 0, resetAt: now + windowMs };
      this.cache.set(key, entry);
    }
    entry.count += by;
    return { count: entry.count, resetAt: entry.resetAt };
  }
  async reset(key: string): Promise<void> {
    this.cache.delete(key);
  }
}

class MemoryExpiringSet implements ExpiringSetStore {
  private readonly cache: LRUCache<string, { expiresAt: number | null }>;
  constructor(maxMembers: number, private readonly now: () => number) {
    this.cache = new LRUCache({ max: maxMembers });
  }
  async add(member: string, ttlMs?: number): Promise<void> {
    this.cache.set(member, { expiresAt: ttlMs ? this.now() + ttlMs : null });
  }
  async remove(member: string): Promise<void> {
    this.cache.delete(member);
  }
  async has(member: string): Promise<boolean> {
    const entry = this.cache.get(member);
    if (entry === undefined) return false;
    if (entry.expiresAt !== null && entry.expiresAt <= this.now()) {
      this.cache.delete(member);
      return false;
    }
    return true;
  }
  async members(): Promise<Array<{ member: string; expiresAt: number | null }>> {
    const now = this.now();
    const out: Array<{ member: string; expiresAt: number | null }> = [];
    for (const [member, entry] of this.cache.entries()) {
      if (entry.expiresAt === null || entry.expiresAt > now) out.push({ member, expiresAt: entry.expiresAt });
    }
    return out;
  }
}

class MemoryPubSub implements PubSub {
  private readonly emitter = new EventEmitter().setMaxListeners(0);
  async publish(channel: string, message: string): Promise<void> {
    // Delivered asynchronously, as Redis would, so publishers never re-enter their own handlers.
    setImmediate(() => this.emitter.emit(channel, message));
  }
  async subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>> {
    this.emitter.on(channel, handler);
    return async () => {
      this.emitter.off(channel, handler);
    };
  }
}

/** Options of {@link MemoryStores}. */
export interface MemoryStoresOptions {
  /** Clock, for tests. Defaults to `Date.now`. */
  now?: () => number;
}

/** In-memory stores for one process: bounded by LRU, with no timers to keep the process alive. */
export class MemoryStores implements Stores {
  readonly kind = 'memory' as const;
  readonly pubsub: PubSub = new MemoryPubSub();
  /** The clock of this backend (injectable for tests). */
  readonly now: () => number;
  constructor(options: MemoryStoresOptions = {}) {
    this.now = options.now ?? Date.now;
  }
  create<T>(factory: StoreFactory<T>): T {
    return factory.memory(this);
  }
  keyValue<V = unknown>(_namespace: string, options?: KeyValueOptions): KeyValueStore<V> {
    return new MemoryKeyValue<V>(options);
  }
  counter(_namespace: string, options: { maxKeys?: number } = {}): CounterStore {
    return new MemoryCounter(options.maxKeys ?? 100_000, this.now);
  }
  expiringSet(_namespace: string, options: { maxMembers?: number } = {}): ExpiringSetStore {
    return new MemoryExpiringSet(options.maxMembers ?? 100_000, this.now);
  }
  async close(): Promise<void> {}
}
