import type Redis from 'ioredis';
import type { Cluster } from 'ioredis';
import { LUA_ZADD_EXPIRING } from './lua';
import { forgetPerStores, perStores } from './per-stores';
import type { RedisConnection } from './redis-connection';
import type { StoreFactory } from './types';

/** One run-time block: the canonical IP and when the block ends (epoch ms on this instance's clock, or null for never). */
export interface IpBlock {
  ip: string;
  expiresAt: number | null;
}

/**
 * The run-time IP blocks of one stack (`ipFilter.block()`, auto-bans). Every check reads a local
 * mirror, so the request path never waits on the network; with Redis, the mirror follows the
 * shared set through pub/sub and a periodic full reload.
 */
export interface IpBlocklist {
  /** Whether the first load of shared blocks has settled (loaded, failed or timed out). Always true in memory. */
  readonly ready: boolean;
  /** Resolves once {@link ready} is true; never rejects. */
  whenReady(): Promise<void>;
  /** Whether `ip` (canonical text, see `normalizeIp`) is blocked now, from local memory only. */
  isBlocked(ip: string): boolean;
  /** Blocks `ip` for `ttlMs` (or until unblocked). Applies on this instance at once; rejects when the shared store fails. */
  block(ip: string, ttlMs?: number): Promise<void>;
  /** Lifts a block. Applies on this instance at once; rejects when the shared store fails. */
  unblock(ip: string): Promise<void>;
  /** The blocks this instance enforces, reloaded from the shared store first when it answers. */
  list(): Promise<IpBlock[]>;
  /** Stops the reload timer and the subscription. */
  close(): Promise<void>;
}

/** Options of {@link ipBlocklistStore}. */
export interface IpBlocklistOptions {
  /** How often the local mirror is reloaded in full from Redis, so a missed message heals. Defaults to 30 000 ms. */
  syncIntervalMs?: number;
}

// A hard bound on the local mirror: beyond it, expired blocks go first, then the oldest ones.
const MAX_ENTRIES = 100_000;

/** ip → expiry (epoch ms, Infinity for never); a Map, because a miss must cost one hash lookup. */
class BlockMirror {
  private readonly entries = new Map<string, number>();
  constructor(private readonly now: () => number) {}

  has(ip: string): boolean {
    const expiresAt = this.entries.get(ip);
    if (expiresAt === undefined) return false;
    if (expiresAt > this.now()) return true;
    this.entries.delete(ip);
    return false;
  }

  set(ip: string, expiresAt: number): void {
    this.entries.delete(ip);
    if (this.entries.size >= MAX_ENTRIES) this.makeRoom();
    this.entries.set(ip, expiresAt);
  }

  delete(ip: string): void {
    this.entries.delete(ip);
  }

  replace(entries: Array<[string, number]>): void {
    this.entries.clear();
    for (const [ip, expiresAt] of entries) this.set(ip, expiresAt);
  }

  list(): IpBlock[] {
    const now = this.now();
    const out: IpBlock[] = [];
    for (const [ip, expiresAt] of this.entries) {
      if (expiresAt > now) out.push({ ip, expiresAt: expiresAt === Infinity ? null : expiresAt });
      else this.entries.delete(ip);
    }
    return out;
  }

  private makeRoom(): void {
    const now = this.now();
    for (const [ip, expiresAt] of this.entries) if (expiresAt <= now) this.entries.delete(ip);
    if (this.entries.size < MAX_ENTRIES) return;
    const oldest = this.entries.keys().next().value;
    if (oldest !== undefined) this.entries.delete(oldest);
  }
}

class MemoryIpBlocklist implements IpBlocklist {
  readonly ready = true;
  private readonly mirror: BlockMirror;
  constructor(private readonly now: () => number) {
    this.mirror = new BlockMirror(now);
  }
  whenReady(): Promise<void> {
    return Promise.resolve();
  }
  isBlocked(ip: string): boolean {
    return this.mirror.has(ip);
  }
  async block(ip: string, ttlMs?: number): Promise<void> {
    this.mirror.set(ip, ttlMs ? this.now() + ttlMs : Infinity);
  }
  async unblock(ip: string): Promise<void> {
    this.mirror.delete(ip);
  }
  async list(): Promise<IpBlock[]> {
    return this.mirror.list();
  }
  // The blocks live as long as the stores; nothing to stop.
  async close(): Promise<void> {}
}

// The sorted set holds ip → expiry on Redis's clock (+inf for never). Writing and publishing in one
// script makes the change and its announcement atomic: no instance can see one without the other.
// The connection's fence keeps a block or unblock that timed out from landing later, over a newer
// change made elsewhere meanwhile.
const BLOCK = `
${LUA_ZADD_EXPIRING}redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
`;

const UNBLOCK = `
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return removed
`;

// Returns Redis's clock with the members, so expiries convert to this instance's clock whatever
// the skew between the two.
const LOAD = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return {now, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
`;

type Script = (keys: string[], args: Array<string | number>, timeoutMs?: number) => Promise<unknown>;

/** A change seen while a full load is in flight: replayed over the loaded snapshot, which may predate it. */
interface Change {
  ip: string;
  /** Local expiry, or undefined for an unblock. */
  expiresAt?: number;
}

class RedisIpBlocklist implements IpBlocklist {
  ready = false;
  private readonly mirror: BlockMirror;
  private readonly key: string;
  private readonly channel: string;
  private readonly block_: Script;
  private readonly unblock_: Script;
  private readonly load_: Script;
  private readonly subscriber: Redis | Cluster;
  private readonly timer: NodeJS.Timeout;
  private readonly firstLoad: Promise<void>;
  private loading?: Promise<void>;
  private loadAgain = false;
  private changesDuringLoad?: Change[];
  private subscribed = false;
  private closed = false;
  private readonly now = Date.now;

  constructor(
    private readonly conn: RedisConnection,
    syncIntervalMs: number,
    private readonly onClose: () => void,
  ) {
    this.mirror = new BlockMirror(this.now);
    this.key = conn.key('ipFilter', 'blocks');
    this.channel = `${conn.prefix}ipFilter:blocks`;
    this.block_ = conn.script(BLOCK, 1);
    this.unblock_ = conn.script(UNBLOCK, 1);
    this.load_ = conn.script(LOAD, 1);
    this.subscriber = conn.subscriber();
    this.subscriber.on('message', this.onMessage);
    // Messages sent while either connection was down are lost: reload in full once it is back.
    this.subscriber.on('ready', this.onSubscriberReady);
    conn.client.on('ready', this.onClientReady);
    this.timer = setInterval(this.onTick, syncIntervalMs);
    this.timer.unref();
    // The first load and the subscription run side by side, so a fresh instance waits at most one
    // command timeout; a change that fell between the snapshot and the subscription is caught by
    // the reload that follows a successful subscription.
    const subscribing = this.subscribe();
    this.firstLoad = this.sync().then(() => {
      this.ready = true;
    });
    void subscribing.then(() => (this.subscribed ? this.sync() : undefined));
  }

  whenReady(): Promise<void> {
    return this.firstLoad;
  }

  isBlocked(ip: string): boolean {
    return this.mirror.has(ip);
  }

  async block(ip: string, ttlMs?: number): Promise<void> {
    this.apply({ ip, expiresAt: ttlMs ? this.now() + ttlMs : Infinity });
    const message = JSON.stringify({ op: 'block', ip, ttl: ttlMs ? Math.ceil(ttlMs) : 0 });
    await this.block_([this.key], [ip, ttlMs ? Math.ceil(ttlMs) : 0, this.channel, message]);
  }

  async unblock(ip: string): Promise<void> {
    this.apply({ ip });
    await this.unblock_([this.key], [ip, this.channel, JSON.stringify({ op: 'unblock', ip })]);
  }

  async list(): Promise<IpBlock[]> {
    await this.sync();
    return this.mirror.list();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.ready = true;
    clearInterval(this.timer);
    this.subscriber.off('message', this.onMessage);
    this.subscriber.off('ready', this.onSubscriberReady);
    this.conn.client.off('ready', this.onClientReady);
    this.onClose();
    if (this.subscribed && this.subscriber.status === 'ready') {
      await this.conn.runSubscriber(() => this.subscriber.unsubscribe(this.channel)).catch(() => undefined);
    }
  }

  /** Reloads the whole set; concurrent calls share one load (and ask for one more after it). Never rejects. */
  sync(): Promise<void> {
    if (this.loading !== undefined) {
      this.loadAgain = true;
      return this.loading;
    }
    this.loading = this.load().finally(() => {
      this.loading = undefined;
      if (this.loadAgain && !this.closed) {
        this.loadAgain = false;
        void this.sync();
      }
    });
    return this.loading;
  }

  private async load(): Promise<void> {
    const changes: Change[] = [];
    this.changesDuringLoad = changes;
    try {
      const [redisNow, flat] = (await this.load_([this.key], [])) as [number, string[]];
      if (this.closed) return;
      const offset = this.now() - Number(redisNow);
      const entries: Array<[string, number]> = [];
      for (let i = 0; i < flat.length; i += 2) {
        const score = flat[i + 1];
        entries.push([flat[i], score === 'inf' || score === '+inf' ? Infinity : Number(score) + offset]);
      }
      this.mirror.replace(entries);
      for (const change of changes) this.applyToMirror(change);
    } catch {
      // Redis is down or slow (the connection logs the outage once): a stale mirror beats an
      // empty one, so it stays as it is until a load succeeds.
    } finally {
      if (this.changesDuringLoad === changes) this.changesDuringLoad = undefined;
    }
  }

  private async subscribe(): Promise<void> {
    if (this.subscribed || this.closed) return;
    try {
      await this.conn.runSubscriber(() => this.subscriber.subscribe(this.channel));
      this.subscribed = true;
      // close() ran while SUBSCRIBE was in flight and found nothing to undo: undo it here.
      if (this.closed) await this.conn.runSubscriber(() => this.subscriber.unsubscribe(this.channel)).catch(() => undefined);
    } catch {
      // Retried when the subscriber connection is (back) up.
    }
  }

  private apply(change: Change): void {
    this.applyToMirror(change);
    this.changesDuringLoad?.push(change);
  }

  private applyToMirror(change: Change): void {
    if (change.expiresAt === undefined) this.mirror.delete(change.ip);
    else this.mirror.set(change.ip, change.expiresAt);
  }

  private readonly onMessage = (channel: string, message: string): void => {
    if (channel !== this.channel || this.closed) return;
    let parsed: { op?: unknown; ip?: unknown; ttl?: unknown };
    try {
      parsed = JSON.parse(message) as typeof parsed;
    } catch {
      return;
    }
    if (typeof parsed.ip !== 'string') return;
    if (parsed.op === 'unblock') this.apply({ ip: parsed.ip });
    else if (parsed.op === 'block') {
      const ttl = typeof parsed.ttl === 'number' && parsed.ttl > 0 ? parsed.ttl : 0;
      // The ttl travels rather than an absolute time, so instance clocks need not agree.
      this.apply({ ip: parsed.ip, expiresAt: ttl ? this.now() + ttl : Infinity });
    }
  };

  private readonly onSubscriberReady = (): void => {
    void this.subscribe().then(() => this.sync());
  };

  private readonly onClientReady = (): void => {
    void this.sync();
  };

  private readonly onTick = (): void => {
    // The stores were closed without this list being closed (a route-level ipFilter): stop.
    if (this.conn.client.status === 'end') {
      void this.close();
      return;
    }
    void this.sync();
  };
}

/**
 * The {@link StoreFactory} of run-time IP blocks: `stores.create(ipBlocklistStore())`. In memory,
 * one process-local list; on Redis, a sorted set `<prefix>ipFilter:{blocks}` shared by every
 * instance, announced on the channel `<prefix>ipFilter:blocks` and mirrored locally.
 */
export function ipBlocklistStore(options: IpBlocklistOptions = {}): StoreFactory<IpBlocklist> {
  const syncIntervalMs = options.syncIntervalMs ?? 30_000;
  // One blocklist per stores (and reload interval), so a stack's ipFilter and a route-level one
  // behind it enforce the same blocks and share one mirror, subscription and timer.
  const key = `ipBlocklist:${syncIntervalMs}`;
  return {
    memory: (stores) => perStores(stores, 'ipBlocklist', () => new MemoryIpBlocklist(stores.now)),
    redis: (connection, stores) =>
      perStores(stores, key, () => {
        const list: RedisIpBlocklist = new RedisIpBlocklist(connection, syncIntervalMs, () => forgetPerStores(stores, key, list));
        return list;
      }),
  };
}
