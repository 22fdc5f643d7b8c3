import { LRUCache } from 'lru-cache';
import type { RedisConnection } from './redis-connection';
import type { StoreFactory } from './types';

/** The three algorithms of `rateLimit`. */
export type RateLimitAlgorithm = 'sliding-window' | 'token-bucket' | 'fixed-window';

/** One tier's limits as the store applies them: compiled and validated once, at setup. */
export interface RateLimitPolicy {
  algorithm: RateLimitAlgorithm;
  /** Units per window (the refill per window for the token bucket). */
  limit: number;
  /** Window length in whole milliseconds. */
  windowMs: number;
  /** Token-bucket capacity; equals `limit` for the other algorithms. */
  burst: number;
  /** Units per UTC day; 0 for no daily quota. */
  daily: number;
}

/** What one decision says. Every number is a whole number. */
export interface RateLimitDecision {
  /** 0 admitted (both quotas taken), 1 refused by the window, 2 refused by the daily quota. */
  outcome: 0 | 1 | 2;
  /** Units left in the window after this decision. */
  remaining: number;
  /** Milliseconds until the window releases quota (the end of the current window; bucket full). */
  resetMs: number;
  /** When refused: milliseconds until a request of the same cost could pass. 0 when admitted. */
  retryAfterMs: number;
  /** Units left today after this decision, or -1 without a daily quota. */
  dailyRemaining: number;
  /** Milliseconds until the next UTC midnight. */
  dailyResetMs: number;
}

/**
 * Rate-limit state per client. `consume` decides and takes the cost in one atomic step: a request
 * counts against both the window and the daily quota, or against neither.
 */
export interface RateLimitStore {
  /** Decides for `id` under `policy`; memory answers synchronously, Redis with one script call. */
  consume(id: string, policy: RateLimitPolicy, cost: number, timeoutMs?: number): RateLimitDecision | Promise<RateLimitDecision>;
  /** Forgets `id`'s window and daily counts. */
  reset(id: string): Promise<void>;
}

/** Options of {@link rateLimitStore}. */
export interface RateLimitStoreOptions {
  /** Namespace of the keys (`<keyPrefix>rl:<namespace>:{<id>}:w`). Defaults to 'default'. */
  namespace?: string;
  /** Memory only: most clients kept before the least recently used is forgotten. Defaults to 100,000. */
  maxKeys?: number;
  /** Memory only: the clock, in epoch milliseconds. Defaults to Date.now. */
  now?: () => number;
  /**
   * Tests only: a clock that replaces Redis's TIME inside the script, so one table of cases can be
   * fed to both backends at the same instants. Never set it in production: it gives up the
   * single server clock that makes instances agree.
   */
  redisClockForTests?: () => number;
}

const DAY_MS = 86_400_000;

/** Builds a rate-limit store on the stack's backend: bounded memory or one Redis (or Cluster). */
export function rateLimitStore(options: RateLimitStoreOptions = {}): StoreFactory<RateLimitStore> {
  const namespace = `rl:${options.namespace ?? 'default'}`;
  const maxKeys = options.maxKeys ?? 100_000;
  const now = options.now ?? Date.now;
  return {
    memory: (stores) => {
      // One state per (memory stores, namespace), so limiters that share a prefix share counts on
      // memory exactly as they do on Redis, where their keys are the same.
      let byNamespace = sharedMemory.get(stores);
      if (byNamespace === undefined) sharedMemory.set(stores, (byNamespace = new Map()));
      let store = byNamespace.get(namespace);
      if (store === undefined) byNamespace.set(namespace, (store = new MemoryRateLimitStore(maxKeys, now)));
      return store;
    },
    redis: (connection) => new RedisRateLimitStore(connection, namespace, options.redisClockForTests),
  };
}

const sharedMemory = new WeakMap<object, Map<string, MemoryRateLimitStore>>();

// ---------------------------------------------------------------------------------------------
// The Lua scripts and the memory store below are the same algorithm written twice. They are kept
// line for line alike (same names, same order of arithmetic), because IEEE doubles in Lua 5.1 and
// in JavaScript give bit-identical results only for identical expressions; the tests feed one table
// of cases to both. State is integers only (counts, window numbers, milliseconds, token levels
// scaled by the window length), so nothing is rounded when it is stored.
//
// Each script reads KEYS[1] (window state) and, when ARGV daily > 0, KEYS[2] (daily count). Both
// carry the client's {hash tag}, so they live in one Cluster slot. ARGV: limit, windowMs, burst, cost, daily, clock
// override (0: use Redis TIME). Reply: outcome, remaining, resetMs, retryAfterMs, dailyRemaining,
// dailyResetMs.
//
// Each key holds one string of integers joined by ':' ("slot:curr:prev"), read with GET and written
// with SET ... PX: measured at 20-40% less script time than HMGET + HSET + PEXPIRE on a hash
// (INFO commandstats under redis-benchmark). string.format('%d') writes integers exactly (tostring would round
// past 14 digits).

// replicate_commands: Redis 3.2-4 refuse writes after TIME without it; 5+ do it already.
const PRELUDE = `
if redis.replicate_commands then redis.replicate_commands() end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local daily = tonumber(ARGV[5])
local now = tonumber(ARGV[6])
if now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local day = math.floor(now / ${DAY_MS})
local dailyReset = (day + 1) * ${DAY_MS} - now
local dailyUsed = 0
local dailyLeft = -1
if daily > 0 then
  local dv = redis.call('GET', KEYS[2])
  if dv then
    local d, n = string.match(dv, '^(%d+):(%d+)$')
    if tonumber(d) == day then dailyUsed = tonumber(n) end
  end
  dailyLeft = daily - dailyUsed
end
`;

// Runs only when both quotas admitted the request: the daily count is taken with the window's.
const TAKE_DAILY = `
if daily > 0 then
  redis.call('SET', KEYS[2], string.format('%d:%d', day, dailyUsed + cost), 'PX', dailyReset)
  dailyLeft = dailyLeft - cost
end
`;

// Two-window weighted counter: the previous window's count, weighted by how much of it still
// overlaps the sliding window, plus the current window's count. O(1) state per client.
const SLIDING_WINDOW = `${PRELUDE}
local slot = math.floor(now / window)
local curr = 0
local prev = 0
local v = redis.call('GET', KEYS[1])
if v then
  local s, c, p = string.match(v, '^(%d+):(%d+):(%d+)$')
  local stored = tonumber(s)
  if stored == slot then
    curr = tonumber(c)
    prev = tonumber(p)
  elseif stored == slot - 1 then
    prev = tonumber(c)
  end
end
local elapsed = now - slot * window
local used = prev * (window - elapsed) / window + curr
local reset = window - elapsed
local left = math.floor(math.max(0, limit - used))
if daily > 0 and dailyUsed + cost > daily then
  return {2, left, reset, dailyReset, dailyLeft, dailyReset}
end
if used + cost > limit then
  local retry
  if cost > limit then
    retry = reset + window
  elseif curr + cost <= limit then
    retry = math.max(1, math.ceil((window - elapsed) - (limit - curr - cost) * window / prev))
  else
    retry = reset + math.max(0, math.ceil(window - (limit - cost) * window / curr))
  end
  return {1, left, reset, retry, dailyLeft, dailyReset}
end
curr = curr + cost
redis.call('SET', KEYS[1], string.format('%d:%d:%d', slot, curr, prev), 'PX', reset + window)
${TAKE_DAILY}
return {0, math.floor(limit - used - cost), reset, 0, dailyLeft, dailyReset}
`;

// Token bucket. The level is kept in tokens x windowMs, so a refill of \`limit\` tokens per window is
// exactly \`limit\` units per millisecond: integer arithmetic, no refill lost to rounding.
const TOKEN_BUCKET = `${PRELUDE}
local cap = burst * window
local need = cost * window
local level = cap
local v = redis.call('GET', KEYS[1])
if v then
  local l, t = string.match(v, '^(%d+):(%d+)$')
  local elapsed = math.max(0, now - tonumber(t))
  level = math.min(cap, tonumber(l) + elapsed * limit)
end
local reset = math.ceil((cap - level) / limit)
local left = math.floor(level / window)
if daily > 0 and dailyUsed + cost > daily then
  return {2, left, reset, dailyReset, dailyLeft, dailyReset}
end
if level < need then
  local retry
  if need > cap then
    retry = math.ceil(cap / limit) + window
  else
    retry = math.max(1, math.ceil((need - level) / limit))
  end
  return {1, left, reset, retry, dailyLeft, dailyReset}
end
level = level - need
reset = math.ceil((cap - level) / limit)
redis.call('SET', KEYS[1], string.format('%d:%d', level, now), 'PX', math.max(1, reset))
${TAKE_DAILY}
return {0, math.floor(level / window), reset, 0, dailyLeft, dailyReset}
`;

// Fixed window that starts with the client's first admitted request (not at a clock boundary, so
// clients do not all come back at the same instant).
const FIXED_WINDOW = `${PRELUDE}
local count = 0
local start = now
local v = redis.call('GET', KEYS[1])
if v then
  local c, s = string.match(v, '^(%d+):(%d+)$')
  if now - tonumber(s) < window then
    count = tonumber(c)
    start = tonumber(s)
  end
end
local reset = start + window - now
local left = math.max(0, limit - count)
if daily > 0 and dailyUsed + cost > daily then
  return {2, left, reset, dailyReset, dailyLeft, dailyReset}
end
if count + cost > limit then
  local retry = reset
  if cost > limit then retry = reset + window end
  return {1, left, reset, retry, dailyLeft, dailyReset}
end
count = count + cost
redis.call('SET', KEYS[1], string.format('%d:%d', count, start), 'PX', math.max(1, reset))
${TAKE_DAILY}
return {0, limit - count, reset, 0, dailyLeft, dailyReset}
`;

/** The Lua source of each algorithm (exported for the benchmark and for reading). */
export const RATE_LIMIT_SCRIPTS: Readonly<Record<RateLimitAlgorithm, string>> = {
  'sliding-window': SLIDING_WINDOW,
  'token-bucket': TOKEN_BUCKET,
  'fixed-window': FIXED_WINDOW,
};

type ScriptCall = ReturnType<RedisConnection['script']>;

/** One EVALSHA per decision, on Redis's clock. */
export class RedisRateLimitStore implements RateLimitStore {
  // Without a daily quota the same scripts run with the window key alone (one key less to send).
  private readonly windowOnly: Record<RateLimitAlgorithm, ScriptCall>;
  private readonly withDaily: Record<RateLimitAlgorithm, ScriptCall>;
  constructor(
    private readonly connection: RedisConnection,
    private readonly namespace: string,
    private readonly clockForTests?: () => number,
  ) {
    const define = (keys: number): Record<RateLimitAlgorithm, ScriptCall> => ({
      'sliding-window': connection.script(SLIDING_WINDOW, keys),
      'token-bucket': connection.script(TOKEN_BUCKET, keys),
      'fixed-window': connection.script(FIXED_WINDOW, keys),
    });
    this.windowOnly = define(1);
    this.withDaily = define(2);
  }

  consume(id: string, policy: RateLimitPolicy, cost: number, timeoutMs?: number): Promise<RateLimitDecision> {
    const base = this.connection.key(this.namespace, id);
    const clock = this.clockForTests === undefined ? 0 : Math.floor(this.clockForTests());
    const args = [policy.limit, policy.windowMs, policy.burst, cost, policy.daily, clock];
    return policy.daily > 0
      ? this.withDaily[policy.algorithm]([`${base}:w`, `${base}:d`], args, timeoutMs, toDecision)
      : this.windowOnly[policy.algorithm]([`${base}:w`], args, timeoutMs, toDecision);
  }

  async reset(id: string): Promise<void> {
    const base = this.connection.key(this.namespace, id);
    await this.connection.run(() => this.connection.client.del(`${base}:w`, `${base}:d`));
  }
}

function toDecision(reply: unknown): RateLimitDecision {
  const r = reply as number[];
  return {
    outcome: r[0] as 0 | 1 | 2,
    remaining: r[1],
    resetMs: r[2],
    retryAfterMs: r[3],
    dailyRemaining: r[4],
    dailyResetMs: r[5],
  };
}

// Memory layout: per client, three doubles of window state in a growing Float64Array, plus two of
// daily state in a second one made only once a policy has a daily quota; an LRU maps id → slot.
// No object per client, and ids are stored flat (below), so a million clients take about 115 MB
// (130 MB with daily quotas) including the LRU; see bench/rate-limit.bench.ts. NaN marks "never
// set", as a missing key does in Redis.
const W = 3;
const A = 0; // sliding: window number · bucket: level · fixed: count
const B = 1; // sliding: current count · bucket: last refill · fixed: window start
const C = 2; // sliding: previous count
const DW = 2; // daily: day number, then count

/** The same algorithms as the Lua scripts, for one process: synchronous and bounded. */
export class MemoryRateLimitStore implements RateLimitStore {
  private readonly index: LRUCache<string, number>;
  private win: Float64Array;
  private day?: Float64Array;
  private capacity: number;
  private slots = 0;

  constructor(private readonly maxKeys: number, private readonly clock: () => number = Date.now) {
    this.index = new LRUCache<string, number>({ max: maxKeys });
    this.capacity = Math.min(maxKeys, 1024);
    this.win = new Float64Array(this.capacity * W).fill(NaN);
  }

  /** Clients currently remembered (at most `maxKeys`). */
  get size(): number {
    return this.index.size;
  }

  consume(id: string, policy: RateLimitPolicy, cost: number): RateLimitDecision {
    const slot = this.slotOf(id);
    const at = slot * W;
    const now = Math.floor(this.clock());
    const m = this.win;
    const { limit, windowMs: window, burst, daily } = policy;
    const day = Math.floor(now / DAY_MS);
    const dailyReset = (day + 1) * DAY_MS - now;
    let dailyUsed = 0;
    let dailyLeft = -1;
    const dm = daily > 0 ? (this.day ??= new Float64Array(this.capacity * DW).fill(NaN)) : undefined;
    const dat = slot * DW;
    if (dm !== undefined) {
      if (dm[dat] === day) dailyUsed = dm[dat + 1];
      dailyLeft = daily - dailyUsed;
    }

    if (policy.algorithm === 'sliding-window') {
      const slotNow = Math.floor(now / window);
      const stored = m[at + A];
      let curr = 0;
      let prev = 0;
      if (stored === slotNow) {
        curr = m[at + B];
        prev = m[at + C];
      } else if (stored === slotNow - 1) {
        prev = m[at + B];
      }
      const elapsed = now - slotNow * window;
      const used = (prev * (window - elapsed)) / window + curr;
      const reset = window - elapsed;
      const left = Math.floor(Math.max(0, limit - used));
      if (daily > 0 && dailyUsed + cost > daily) return decision(2, left, reset, dailyReset, dailyLeft, dailyReset);
      if (used + cost > limit) {
        let retry: number;
        if (cost > limit) {
          retry = reset + window;
        } else if (curr + cost <= limit) {
          retry = Math.max(1, Math.ceil(window - elapsed - ((limit - curr - cost) * window) / prev));
        } else {
          retry = reset + Math.max(0, Math.ceil(window - ((limit - cost) * window) / curr));
        }
        return decision(1, left, reset, retry, dailyLeft, dailyReset);
      }
      curr = curr + cost;
      m[at + A] = slotNow;
      m[at + B] = curr;
      m[at + C] = prev;
      dailyLeft = takeDaily(dm, dat, daily, day, dailyUsed, cost);
      return decision(0, Math.floor(limit - used - cost), reset, 0, dailyLeft, dailyReset);
    }

    if (policy.algorithm === 'token-bucket') {
      const cap = burst * window;
      const need = cost * window;
      let level = cap;
      if (!Number.isNaN(m[at + A])) {
        const elapsed = Math.max(0, now - m[at + B]);
        level = Math.min(cap, m[at + A] + elapsed * limit);
      }
      let reset = Math.ceil((cap - level) / limit);
      const left = Math.floor(level / window);
      if (daily > 0 && dailyUsed + cost > daily) return decision(2, left, reset, dailyReset, dailyLeft, dailyReset);
      if (level < need) {
        const retry = need > cap ? Math.ceil(cap / limit) + window : Math.max(1, Math.ceil((need - level) / limit));
        return decision(1, left, reset, retry, dailyLeft, dailyReset);
      }
      level = level - need;
      reset = Math.ceil((cap - level) / limit);
      m[at + A] = level;
      m[at + B] = now;
      dailyLeft = takeDaily(dm, dat, daily, day, dailyUsed, cost);
      return decision(0, Math.floor(level / window), reset, 0, dailyLeft, dailyReset);
    }

    let count = 0;
    let start = now;
    if (!Number.isNaN(m[at + A]) && now - m[at + B] < window) {
      count = m[at + A];
      start = m[at + B];
    }
    const reset = start + window - now;
    const left = Math.max(0, limit - count);
    if (daily > 0 && dailyUsed + cost > daily) return decision(2, left, reset, dailyReset, dailyLeft, dailyReset);
    if (count + cost > limit) {
      return decision(1, left, reset, cost > limit ? reset + window : reset, dailyLeft, dailyReset);
    }
    count = count + cost;
    m[at + A] = count;
    m[at + B] = start;
    dailyLeft = takeDaily(dm, dat, daily, day, dailyUsed, cost);
    return decision(0, limit - count, reset, 0, dailyLeft, dailyReset);
  }

  async reset(id: string): Promise<void> {
    const slot = this.index.peek(id);
    if (slot !== undefined) this.clear(slot);
  }

  private slotOf(id: string): number {
    let slot = this.index.get(id);
    if (slot !== undefined) return slot;
    if (this.index.size >= this.maxKeys) {
      // Full: the least recently seen client gives up its slot (and its counts).
      slot = this.index.pop() as number;
    } else {
      slot = this.slots++;
      if (slot >= this.capacity) this.grow();
    }
    this.clear(slot);
    // Ids are built by concatenation ('ip:' + address), which V8 keeps as a rope holding its parts
    // (about 70 bytes for 'ip:203.0.113.7'). The map keeps a flat copy instead (about 32 bytes):
    // the UTF-16 round trip copies any string exactly, and runs once per new client only.
    this.index.set(id.length < 13 ? id : Buffer.from(id, 'utf16le').toString('utf16le'), slot);
    return slot;
  }

  private clear(slot: number): void {
    this.win.fill(NaN, slot * W, slot * W + W);
    this.day?.fill(NaN, slot * DW, slot * DW + DW);
  }

  private grow(): void {
    this.capacity = Math.min(this.maxKeys, this.capacity * 2);
    const win = new Float64Array(this.capacity * W).fill(NaN);
    win.set(this.win);
    this.win = win;
    if (this.day !== undefined) {
      const day = new Float64Array(this.capacity * DW).fill(NaN);
      day.set(this.day);
      this.day = day;
    }
  }
}

/** TAKE_DAILY of the scripts: runs only when both quotas admitted the request. Returns the daily units left. */
function takeDaily(dm: Float64Array | undefined, dat: number, daily: number, day: number, dailyUsed: number, cost: number): number {
  if (dm === undefined) return -1;
  dm[dat] = day;
  dm[dat + 1] = dailyUsed + cost;
  return daily - dailyUsed - cost;
}

function decision(outcome: 0 | 1 | 2, remaining: number, resetMs: number, retryAfterMs: number, dailyRemaining: number, dailyResetMs: number): RateLimitDecision {
  return { outcome, remaining, resetMs, retryAfterMs, dailyRemaining, dailyResetMs };
}
