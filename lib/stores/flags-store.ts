import { perStores } from './per-stores';
import type { RedisConnection } from './redis-connection';
import type { PubSub, StoreFactory } from './types';

/**
 * Shared feature-flag definitions: one JSON text per flag name. A write and its announcement go
 * together, so every instance that hears of a change can reload and see it. Evaluation never
 * reads this store: instances hold the flags in memory and reload them on announcements.
 */
export interface FlagsStore {
  /** Where the flags live, for log lines (`Redis hash perimeter:flags`). */
  readonly location: string;
  /** Every flag, as name → JSON text. */
  load(): Promise<Record<string, string>>;
  /** Writes one flag's JSON and announces the change to every instance. */
  set(name: string, json: string): Promise<void>;
  /** Removes one flag and announces the change. */
  delete(name: string): Promise<void>;
  /** Calls `onChange` after each announced change (this instance's too); resolves to the unsubscribe function. */
  subscribe(onChange: () => void): Promise<() => Promise<void>>;
  /** Calls `listener` whenever announcements may have been missed (the subscriber reconnected); returns the remover. */
  onResync(listener: () => void): () => void;
}

const CHANNEL = 'flags:changed';

class MemoryFlagsStore implements FlagsStore {
  readonly location = 'process memory';
  private readonly flags = new Map<string, string>();
  constructor(private readonly pubsub: PubSub) {}
  async load(): Promise<Record<string, string>> {
    return Object.fromEntries(this.flags);
  }
  async set(name: string, json: string): Promise<void> {
    this.flags.set(name, json);
    await this.pubsub.publish(CHANNEL, name);
  }
  async delete(name: string): Promise<void> {
    this.flags.delete(name);
    await this.pubsub.publish(CHANNEL, name);
  }
  subscribe(onChange: () => void): Promise<() => Promise<void>> {
    return this.pubsub.subscribe(CHANNEL, onChange);
  }
  // Nothing is ever missed in one process.
  onResync(): () => void {
    return () => undefined;
  }
}

// Writing and publishing in one script: no instance can see the change without its announcement.
// The connection's fence keeps a write that timed out (its caller saw the rejection) from landing
// later over a newer one made elsewhere.
const SET = `
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
`;

const DELETE = `
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return removed
`;

type Script = (keys: string[], args: Array<string | number>, timeoutMs?: number) => Promise<unknown>;

class RedisFlagsStore implements FlagsStore {
  readonly location: string;
  private readonly key: string;
  private readonly channel: string;
  private readonly set_: Script;
  private readonly delete_: Script;
  constructor(
    private readonly conn: RedisConnection,
    private readonly pubsub: PubSub,
  ) {
    // One hash, one key: no hash tag needed, and `HGETALL <prefix>flags` shows every flag.
    this.key = `${conn.prefix}flags`;
    this.channel = `${conn.prefix}${CHANNEL}`;
    this.location = `Redis hash ${this.key}`;
    this.set_ = conn.script(SET, 1);
    this.delete_ = conn.script(DELETE, 1);
  }
  async load(): Promise<Record<string, string>> {
    return this.conn.run(() => this.conn.client.hgetall(this.key));
  }
  async set(name: string, json: string): Promise<void> {
    await this.set_([this.key], [name, json, this.channel]);
  }
  async delete(name: string): Promise<void> {
    await this.delete_([this.key], [name, this.channel]);
  }
  subscribe(onChange: () => void): Promise<() => Promise<void>> {
    // The stores' pub/sub prefixes the channel exactly as the scripts name it.
    return this.conn.runSubscriber(() => this.pubsub.subscribe(CHANNEL, onChange));
  }
  onResync(listener: () => void): () => void {
    return this.conn.onReconnect(listener);
  }
}

/**
 * The {@link StoreFactory} of shared flags: `stores.create(flagsStore())`. In memory, one map per
 * process; on Redis, the hash `<prefix>flags` (field = flag name, value = its JSON), with changes
 * announced on the channel `<prefix>flags:changed`.
 */
export function flagsStore(): StoreFactory<FlagsStore> {
  // One store per stores object, so every featureFlags on the same stores shares one set of flags.
  return {
    memory: (stores) => perStores(stores, 'flags', () => new MemoryFlagsStore(stores.pubsub)),
    redis: (connection, stores) => perStores(stores, 'flags', () => new RedisFlagsStore(connection, stores.pubsub)),
  };
}
