import { perStores } from './per-stores';
import type { RedisStores } from './redis';
import type { RedisConnection } from './redis-connection';
import type { StoreFactory } from './types';

/** One announced transition of a named breaker, as every instance receives it. */
export interface BreakerAnnouncement {
  name: string;
  state: 'OPEN' | 'CLOSED';
  /** OPEN: milliseconds of the open spell left when it was announced (a duration travels, so instance clocks need not agree). */
  remainingMs: number;
  /** Order of the announcement among all of this name's: later ones win. */
  gen: number;
  /** Which breaker object announced it (instances apply their own announcements only to settle races). */
  origin: string;
}

/** What {@link BreakerStateStore.announce} did. */
export type AnnounceResult =
  /** Recorded and announced as `gen`. */
  | { applied: true; gen: number }
  /** Refused: the record moved past the announcer's knowledge (another instance decided since); `current` is it. */
  | { applied: false; current: BreakerAnnouncement };

/**
 * Shared circuit state: where breakers of the same name on the same stores announce their moves
 * to OPEN and CLOSED, and where a new instance reads the current state. Announcements are ordered
 * (`gen`), so every instance ends in the state of the last one.
 *
 * An announcement is a compare-and-set: it names the last `gen` its announcer knew of, and is
 * refused when another instance recorded a newer one meanwhile, so a decision made on stale
 * knowledge (or one that arrives late) never overrides a newer state.
 */
export interface BreakerStateStore {
  /**
   * Records the state and announces it to every subscriber of `name` (the announcer included),
   * unless the record holds an announcement newer than `basedOn` from another origin.
   */
  announce(name: string, state: 'OPEN' | 'CLOSED', remainingMs: number, origin: string, basedOn: number): Promise<AnnounceResult>;
  /** Calls `handler` with each announcement for `name`; resolves to the unsubscribe function. */
  subscribe(name: string, handler: (announcement: BreakerAnnouncement) => void): Promise<() => Promise<void>>;
  /** The last announcement for `name` still on record, with `remainingMs` counted from now; undefined if none. */
  load(name: string): Promise<BreakerAnnouncement | undefined>;
  /** Calls `listener` whenever announcements may have been missed (a connection came back); returns the remover. */
  onResync(listener: () => void): () => void;
}

// One process, one clock: announcements are delivered synchronously, in order, to every breaker
// of that name built on these stores (a stack-level breaker and route-level ones behind it).
class MemoryBreakerStateStore implements BreakerStateStore {
  private readonly handlers = new Map<string, Set<(announcement: BreakerAnnouncement) => void>>();
  private readonly last = new Map<string, { announcement: BreakerAnnouncement; at: number }>();
  private gen = 0;
  constructor(private readonly now: () => number) {}

  async announce(name: string, state: 'OPEN' | 'CLOSED', remainingMs: number, origin: string, basedOn: number): Promise<AnnounceResult> {
    const recorded = this.last.get(name);
    if (recorded !== undefined && recorded.announcement.gen > basedOn && recorded.announcement.origin !== origin) {
      return { applied: false, current: (await this.load(name)) as BreakerAnnouncement };
    }
    const announcement: BreakerAnnouncement = { name, state, remainingMs, gen: ++this.gen, origin };
    // Bounded by the number of breaker names, which configuration (or route templates) fixes.
    this.last.set(name, { announcement, at: this.now() });
    for (const handler of [...(this.handlers.get(name) ?? [])]) handler(announcement);
    return { applied: true, gen: announcement.gen };
  }

  async subscribe(name: string, handler: (announcement: BreakerAnnouncement) => void): Promise<() => Promise<void>> {
    let set = this.handlers.get(name);
    if (set === undefined) {
      set = new Set();
      this.handlers.set(name, set);
    }
    set.add(handler);
    return async () => {
      set.delete(handler);
      if (set.size === 0 && this.handlers.get(name) === set) this.handlers.delete(name);
    };
  }

  async load(name: string): Promise<BreakerAnnouncement | undefined> {
    const entry = this.last.get(name);
    if (entry === undefined) return undefined;
    return { ...entry.announcement, remainingMs: entry.announcement.remainingMs - (this.now() - entry.at) };
  }

  // Nothing is ever missed in one process.
  onResync(): () => void {
    return () => undefined;
  }
}

// Stores the state and publishes it in one script, so no instance can read one without the other,
// on Redis's clock. `gen` only grows: at least Redis's time in ms, so a key that expired and came
// back still outranks every announcement made before. ARGV: state, remaining ms, channel, name,
// origin, key ttl ms, basedOn (the newest gen the announcer knew). The connection's fence keeps
// an announcement that timed out from landing later; the compare-and-set keeps one made without
// knowing a newer record from overriding it (the reply carries the record instead).
const ANNOUNCE = `
local h = redis.call('HMGET', KEYS[1], 'state', 'until', 'gen', 'origin')
local stored = tonumber(h[3] or '0')
if h[1] and stored > tonumber(ARGV[7]) and h[4] ~= ARGV[5] then
  return {0, h[1], tonumber(h[2]) - now, stored, h[4]}
end
local gen = stored + 1
if gen < now then gen = now end
local remaining = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'gen', gen, 'changedAt', now, 'until', now + remaining, 'origin', ARGV[5])
redis.call('PEXPIRE', KEYS[1], remaining + tonumber(ARGV[6]))
redis.call('PUBLISH', ARGV[3], cjson.encode({name = ARGV[4], state = ARGV[1], remainingMs = remaining, gen = gen, origin = ARGV[5]}))
return {1, gen}
`;

const LOAD = `
local h = redis.call('HMGET', KEYS[1], 'state', 'until', 'gen', 'origin')
if not h[1] then return false end
return {h[1], tonumber(h[2]) - now, tonumber(h[3]), h[4]}
`;

const CHANNEL = 'circuitBreaker';
// A breaker name nobody uses any more leaves Redis a day after its last change.
const KEY_TTL_MS = 24 * 60 * 60 * 1000;

type Script = (keys: string[], args: Array<string | number>, timeoutMs?: number) => Promise<unknown>;

/** One subscription to the channel per stores, dispatched by breaker name. */
class RedisBreakerStateStore implements BreakerStateStore {
  private readonly announce_: Script;
  private readonly load_: Script;
  private readonly handlers = new Map<string, Set<(announcement: BreakerAnnouncement) => void>>();
  private subscription?: Promise<() => Promise<void>>;

  constructor(private readonly conn: RedisConnection, private readonly stores: RedisStores) {
    this.announce_ = conn.script(ANNOUNCE, 1);
    this.load_ = conn.script(LOAD, 1);
  }

  async announce(name: string, state: 'OPEN' | 'CLOSED', remainingMs: number, origin: string, basedOn: number): Promise<AnnounceResult> {
    const reply = (await this.announce_(
      [this.conn.key(CHANNEL, name)],
      [state, Math.max(0, Math.round(remainingMs)), this.conn.prefix + CHANNEL, name, origin, KEY_TTL_MS, Math.max(0, basedOn)],
    )) as [number, ...unknown[]];
    if (reply[0] === 1) return { applied: true, gen: Number(reply[1]) };
    const [, recorded, remaining, gen, by] = reply as [number, string, number, number, string];
    return { applied: false, current: { name, state: recorded === 'OPEN' ? 'OPEN' : 'CLOSED', remainingMs: Number(remaining), gen: Number(gen), origin: String(by) } };
  }

  async subscribe(name: string, handler: (announcement: BreakerAnnouncement) => void): Promise<() => Promise<void>> {
    let set = this.handlers.get(name);
    if (set === undefined) {
      set = new Set();
      this.handlers.set(name, set);
    }
    set.add(handler);
    try {
      await this.listen();
    } catch (err) {
      set.delete(handler);
      throw err;
    }
    return async () => {
      set.delete(handler);
      if (set.size === 0 && this.handlers.get(name) === set) this.handlers.delete(name);
      if (this.handlers.size === 0 && this.subscription !== undefined) {
        const subscribed = this.subscription;
        this.subscription = undefined;
        await (await subscribed)();
      }
    };
  }

  async load(name: string): Promise<BreakerAnnouncement | undefined> {
    const raw = (await this.load_([this.conn.key(CHANNEL, name)], [])) as [string, number, number, string] | null;
    if (raw === null) return undefined;
    const [state, remainingMs, gen, origin] = raw;
    if (state !== 'OPEN' && state !== 'CLOSED') return undefined;
    return { name, state, remainingMs: Number(remainingMs), gen: Number(gen), origin };
  }

  onResync(listener: () => void): () => void {
    return this.conn.onReconnect(listener);
  }

  private listen(): Promise<() => Promise<void>> {
    if (this.subscription === undefined) {
      const subscribing = this.stores.pubsub.subscribe(CHANNEL, this.onMessage);
      // A failed subscription is retried by the next subscriber instead of being remembered.
      subscribing.catch(() => {
        if (this.subscription === subscribing) this.subscription = undefined;
      });
      this.subscription = subscribing;
    }
    return this.subscription;
  }

  private readonly onMessage = (message: string): void => {
    let parsed: Partial<BreakerAnnouncement>;
    try {
      parsed = JSON.parse(message) as Partial<BreakerAnnouncement>;
    } catch {
      return;
    }
    const { name, state, remainingMs, gen, origin } = parsed;
    if (typeof name !== 'string' || (state !== 'OPEN' && state !== 'CLOSED') || typeof gen !== 'number') return;
    const set = this.handlers.get(name);
    if (set === undefined) return;
    const announcement: BreakerAnnouncement = { name, state, remainingMs: Number(remainingMs) || 0, gen, origin: String(origin) };
    for (const handler of [...set]) handler(announcement);
  };
}

/**
 * The {@link StoreFactory} of shared circuit state: `stores.create(breakerStateStore())`. In
 * memory, one process-local registry per stores. On Redis, a hash `<prefix>circuitBreaker:{name}`
 * (`state`, `gen`, `changedAt`, `until` on Redis's clock, `origin`) written and announced on the
 * channel `<prefix>circuitBreaker` by one script.
 */
export function breakerStateStore(): StoreFactory<BreakerStateStore> {
  // One per stores object: one subscription to the channel, dispatched by breaker name.
  return {
    memory: (stores) => perStores(stores, 'breakerState', () => new MemoryBreakerStateStore(stores.now)),
    redis: (connection, stores) => perStores(stores, 'breakerState', () => new RedisBreakerStateStore(connection, stores)),
  };
}
