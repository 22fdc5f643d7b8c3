import type { Logger } from '../logger';
import { RedisConnection, type RedisOption } from './redis-connection';
import type {
  CounterResult,
  CounterStore,
  ExpiringSetStore,
  KeyValueOptions,
  KeyValueStore,
  PubSub,
  StoreFactory,
  StoreReadiness,
  Stores,
} from './types';
import { LUA_ZADD_EXPIRING } from './lua';
import { redisReadiness } from './redis-readiness';

// Every script reads Redis's own TIME (`now`, set by the connection's fence), so instances whose
// clocks disagree still agree on windows. Writes are scripts, so a write that timed out cannot
// land later over a newer one (the fence refuses it); reads are plain commands.

const INCREMENT = `
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl, now}
`;

// ARGV: value, ttl ms (0: none).
const KV_SET = `
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
`;

const DELETE = `return redis.call('DEL', KEYS[1])
`;

const SET_ADD = `
${LUA_ZADD_EXPIRING}return 1
`;

const SET_REMOVE = `return redis.call('ZREM', KEYS[1], ARGV[1])
`;

const SET_HAS = `
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
if score ~= 'inf' and tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
return 1
`;

const SET_MEMBERS = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
`;

class RedisKeyValue<V> implements KeyValueStore<V> {
  private readonly set_;
  private readonly delete_;
  constructor(private readonly conn: RedisConnection, private readonly namespace: string) {
    this.set_ = conn.script(KV_SET, 1);
    this.delete_ = conn.script(DELETE, 1);
  }
  async get(key: string): Promise<V | undefined> {
    const raw = await this.conn.run(() => this.conn.client.get(this.conn.key(this.namespace, key)));
    return raw === null ? undefined : (JSON.parse(raw) as V);
  }
  async set(key: string, value: V, ttlMs?: number): Promise<void> {
    await this.set_([this.conn.key(this.namespace, key)], [JSON.stringify(value), ttlMs ? Math.ceil(ttlMs) : 0]);
  }
  async delete(key: string): Promise<void> {
    await this.delete_([this.conn.key(this.namespace, key)], []);
  }
}

class RedisCounter implements CounterStore {
  private readonly increment_;
  private readonly reset_;
  constructor(private readonly conn: RedisConnection, private readonly namespace: string) {
    this.increment_ = conn.script(INCREMENT, 1);
    this.reset_ = conn.script(DELETE, 1);
  }
  async increment(key: string, windowMs: number, by = 1): Promise<CounterResult> {
    const [count, ttl, now] = (await this.increment_([this.conn.key(this.namespace, key)], [Math.ceil(windowMs), by])) as number[];
    return { count, resetAt: now + ttl };
  }
  async reset(key: string): Promise<void> {
    await this.reset_([this.conn.key(this.namespace, key)], []);
  }
}

class RedisExpiringSet implements ExpiringSetStore {
  private readonly key: string;
  private readonly add_;
  private readonly remove_;
  private readonly has_;
  private readonly members_;
  constructor(conn: RedisConnection, namespace: string) {
    this.key = conn.key(namespace, 'set');
    this.add_ = conn.script(SET_ADD, 1);
    this.remove_ = conn.script(SET_REMOVE, 1);
    this.has_ = conn.script(SET_HAS, 1);
    this.members_ = conn.script(SET_MEMBERS, 1);
  }
  async add(member: string, ttlMs?: number): Promise<void> {
    await this.add_([this.key], [member, ttlMs ? Math.ceil(ttlMs) : 0]);
  }
  async remove(member: string): Promise<void> {
    await this.remove_([this.key], [member]);
  }
  async has(member: string): Promise<boolean> {
    return (await this.has_([this.key], [member])) === 1;
  }
  async members(): Promise<Array<{ member: string; expiresAt: number | null }>> {
    const flat = (await this.members_([this.key], [])) as string[];
    const out: Array<{ member: string; expiresAt: number | null }> = [];
    for (let i = 0; i < flat.length; i += 2) {
      out.push({ member: flat[i], expiresAt: flat[i + 1] === 'inf' ? null : Number(flat[i + 1]) });
    }
    return out;
  }
}

class RedisPubSub implements PubSub {
  private readonly handlers = new Map<string, Set<(message: string) => void>>();
  private listening = false;
  constructor(private readonly conn: RedisConnection) {}
  async publish(channel: string, message: string): Promise<void> {
    await this.conn.run(() => this.conn.client.publish(this.conn.prefix + channel, message));
  }
  async subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>> {
    const sub = this.conn.subscriber();
    const full = this.conn.prefix + channel;
    if (!this.listening) {
      this.listening = true;
      sub.on('message', (ch: string, message: string) => {
        for (const h of this.handlers.get(ch) ?? []) h(message);
      });
    }
    let set = this.handlers.get(full);
    if (set === undefined) {
      // Subscribe first: a failed SUBSCRIBE must not leave an empty entry that makes a retry skip it.
      await sub.subscribe(full);
      set = this.handlers.get(full) ?? new Set();
      this.handlers.set(full, set);
    }
    set.add(handler);
    const handlers = set;
    return async () => {
      handlers.delete(handler);
      if (handlers.size === 0 && this.handlers.get(full) === handlers) {
        this.handlers.delete(full);
        await sub.unsubscribe(full).catch(() => undefined);
      }
    };
  }
}

/** Options of {@link RedisStores}. */
export interface RedisStoresOptions {
  logger: Logger;
  /** Prefix of every key. Defaults to 'perimeter:'. */
  prefix?: string;
  /** Longest a store command may take. Defaults to 1000 ms. */
  commandTimeout?: number;
}

/** Stores shared by every instance through one Redis (or Cluster). */
export class RedisStores implements Stores {
  readonly kind = 'redis' as const;
  readonly connection: RedisConnection;
  readonly pubsub: PubSub;
  readonly readiness: readonly StoreReadiness[];
  constructor(redis: RedisOption, options: RedisStoresOptions) {
    this.connection = new RedisConnection(redis, options);
    this.pubsub = new RedisPubSub(this.connection);
    this.readiness = [redisReadiness(this.connection.client)];
  }
  create<T>(factory: StoreFactory<T>): T {
    return factory.redis(this.connection, this);
  }
  keyValue<V = unknown>(namespace: string, _options?: KeyValueOptions): KeyValueStore<V> {
    return new RedisKeyValue<V>(this.connection, namespace);
  }
  counter(namespace: string): CounterStore {
    return new RedisCounter(this.connection, namespace);
  }
  expiringSet(namespace: string): ExpiringSetStore {
    return new RedisExpiringSet(this.connection, namespace);
  }
  close(): Promise<void> {
    return this.connection.close();
  }
}
