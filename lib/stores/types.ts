/**
 * The interfaces every piece of shared state goes through. Each has a memory implementation
 * (bounded, for one instance) and a Redis one (shared by every instance). Middleware never asks
 * which one it has.
 */

/** Key-value entries with an optional time to live. */
export interface KeyValueStore<V = unknown> {
  get(key: string): Promise<V | undefined>;
  /** Stores `value`; `ttlMs` makes it expire. */
  set(key: string, value: V, ttlMs?: number): Promise<void>;
  delete(key: string): Promise<void>;
}

/** Result of {@link CounterStore.increment}. */
export interface CounterResult {
  /** The count after this increment, within the current window. */
  count: number;
  /** Epoch milliseconds when the window (and this count) ends. */
  resetAt: number;
}

/** Fixed-window counters: the count restarts when the window that began with the first hit ends. */
export interface CounterStore {
  increment(key: string, windowMs: number, by?: number): Promise<CounterResult>;
  reset(key: string): Promise<void>;
}

/** A set whose members can expire one by one (blocked IPs). */
export interface ExpiringSetStore {
  /** Adds `member`; with `ttlMs` it leaves the set by itself. */
  add(member: string, ttlMs?: number): Promise<void>;
  remove(member: string): Promise<void>;
  has(member: string): Promise<boolean>;
  /** Current members with their expiry (epoch ms, or null for never). */
  members(): Promise<Array<{ member: string; expiresAt: number | null }>>;
}

/** Publish/subscribe between instances (reloads, invalidations, blocks). */
export interface PubSub {
  publish(channel: string, message: string): Promise<void>;
  /** Calls `handler` for each message on `channel`; returns the unsubscribe function. */
  subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>>;
}

/** Options for a key-value namespace. */
export interface KeyValueOptions {
  /** Most entries kept in memory. Defaults to 10,000. */
  maxEntries?: number;
  /** Most bytes kept in memory (needs `sizeOf`). Defaults to no byte bound. */
  maxBytes?: number;
  /** Size of one value in bytes, for `maxBytes`. */
  sizeOf?: (value: unknown) => number;
}

/**
 * How a feature brings its own store (rate-limit windows, credit balances…) without middleware
 * asking which backend it has: one builder per backend, in the feature's own file under lib/stores/.
 */
export interface StoreFactory<T> {
  memory(stores: import('./memory').MemoryStores): T;
  redis(connection: import('./redis-connection').RedisConnection, stores: import('./redis').RedisStores): T;
  /**
   * The durable store, for state that must survive a Redis flush (credit balances, audit records):
   * used instead of the others when the stack has `postgres`. Features without one stay on Redis or memory.
   */
  postgres?(database: import('../postgres/database').PostgresDatabase, stores: Stores): T;
}

/**
 * Whether one backend a stack's stores use (Redis, later PostgreSQL) can serve: what
 * `/health/ready` reports under `name` and what `stack.ready()` waits for. A backend contributes
 * one entry to {@link Stores.readiness}; memory stores contribute none (they are always ready).
 */
export interface StoreReadiness {
  /** Name of the check in `/health/ready` ('redis', 'postgres'). */
  readonly name: string;
  /** True once the backend has been connected at least once (a Cluster: its slots known). */
  readonly connected: boolean;
  /** Resolves once {@link connected} is true; never rejects (`stack.ready()` bounds the wait). */
  whenConnected(): Promise<void>;
  /**
   * Resolves when the backend can serve now; rejects with an Error saying why not. Costs at most
   * one round trip (a PING), and none while the connection is known to be down. The caller
   * bounds it with its timeout and caches the outcome.
   */
  check(timeoutMs: number): Promise<void>;
  /** Why the backend is not connected yet, for `stack.ready()`'s error (no addresses). */
  describe(): string;
}

/** The store factory a stack shares between its middleware: one per stack, memory or Redis. */
export interface Stores {
  /** 'memory' or 'redis'. For logs and diagnostics only: middleware must not branch on it. */
  readonly kind: 'memory' | 'redis';
  keyValue<V = unknown>(namespace: string, options?: KeyValueOptions): KeyValueStore<V>;
  counter(namespace: string, options?: { maxKeys?: number }): CounterStore;
  expiringSet(namespace: string, options?: { maxMembers?: number }): ExpiringSetStore;
  readonly pubsub: PubSub;
  /** Builds a feature's own store on this backend (see {@link StoreFactory}). */
  create<T>(factory: StoreFactory<T>): T;
  /** Closes connections and timers this factory opened (not a Redis client the user passed in). */
  close(): Promise<void>;
  /** One readiness entry per backend these stores depend on; none (or absent) on memory. */
  readonly readiness?: readonly StoreReadiness[];
  /** The stack's PostgreSQL when `postgres` is configured: {@link create} then prefers a factory's `postgres` builder. */
  readonly postgres?: import('../postgres/database').PostgresDatabase;
}
