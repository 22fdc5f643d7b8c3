import { LRUCache } from 'lru-cache';
import { perStores } from './per-stores';
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

/** What a decision says: admitted (both quotas taken), refused by the window, or refused by the daily quota. */
export type RateLimitOutcome = 'allowed' | 'limited' | 'quota';

/** What one decision says. Every number is a whole number. */
export interface RateLimitDecision {
  /** 'allowed' (the cost was taken from the window and the daily quota), 'limited' (refused by the window) or 'quota' (refused by the daily quota). */
  outcome: RateLimitOutcome;
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
    // One state per (memory stores, namespace), so limiters that share a prefix share counts on
    // memory exactly as they do on Redis, where their keys are the same.
    memory: (stores) => perStores(stores, `rateLimit:${namespace}`, () => new MemoryRateLimitStore(maxKeys, now)),
    redis: (connection) => new RedisRateLimitStore(connection, namespace, options.redisClockForTests),
  };
}

// ---------------------------------------------------------------------------------------------
// The Lua scripts and the memory store below are the same algorithm written twice. They are kept
// line for line alike (same names, same order of arithmetic), because IEEE doubles in Lua 5.1 and
// in JavaScript give bit-identical results only for identical expressions; the tests feed one table
// of cases to both. State is integers only (counts, window numbers, milliseconds, token levels
// scaled by the window length), so nothing is rounded when it is stored.
//
// Each script reads KEYS[1] (window state) and, when ARGV daily > 0, KEYS[2] (daily count). Both
// carry the client's {hash tag}, so they live in one Cluster slot. ARGV: limit, windowMs, burst, cost, daily, clock
// override (0: use Redis TIME). Reply: see REPLY below (the outcome as a number, see OUTCOMES).
// The connection's fence runs first: it sets `now` from Redis's TIME and keeps a decision that
// arrives after its timeout from counting (the request already took the fail mode).
//
// Each key holds one string of integers joined by ':' ("slot:curr:prev"), read with GET and written
// with SET ... PX, which costs less script time than HMGET + HSET + PEXPIRE on a hash (figures in
// docs/stores.md). string.format('%d') writes integers exactly (tostring would round past 14 digits).

// Outcome numbers of the reply, in the order of OUTCOMES.
const PRELUDE = `
local ALLOWED, LIMITED, QUOTA = 0, 1, 2
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local daily = tonumber(ARGV[5])
if tonumber(ARGV[6]) > 0 then now = tonumber(ARGV[6]) end
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
  return {QUOTA, left, reset, dailyReset, dailyLeft, dailyReset}
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
  return {LIMITED, left, reset, retry, dailyLeft, dailyReset}
end
curr = curr + cost
redis.call('SET', KEYS[1], string.format('%d:%d:%d', slot, curr, prev), 'PX', reset + window)
${TAKE_DAILY}
return {ALLOWED, math.floor(limit - used - cost), reset, 0, dailyLeft, dailyReset}
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
  return {QUOTA, left, reset, dailyReset, dailyLeft, dailyReset}
end
if level < need then
  local retry
  if need > cap then
    retry = math.ceil(cap / limit) + window
  else
    retry = math.max(1, math.ceil((need - level) / limit))
  end
  return {LIMITED, left, reset, retry, dailyLeft, dailyReset}
end
level = level - need
reset = math.ceil((cap - level) / limit)
redis.call('SET', KEYS[1], string.format('%d:%d', level, now), 'PX', math.max(1, reset))
${TAKE_DAILY}
return {ALLOWED, math.floor(level / window), reset, 0, dailyLeft, dailyReset}
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
  return {QUOTA, left, reset, dailyReset, dailyLeft, dailyReset}
end
if count + cost > limit then
  local retry = reset
  if cost > limit then retry = reset + window end
  return {LIMITED, left, reset, retry, dailyLeft, dailyReset}
end
count = count + cost
redis.call('SET', KEYS[1], string.format('%d:%d', count, start), 'PX', math.max(1, reset))
${TAKE_DAILY}
return {ALLOWED, limit - count, reset, 0, dailyLeft, dailyReset}
`;

/** The Lua body of each algorithm (for reading; it runs behind the connection's LUA_FENCE, which defines `now`). */
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
  private readonly reset_: ScriptCall;
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
    this.reset_ = connection.script(RESET, 2);
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
    // A script, so a reset that times out cannot land later and erase counts taken after it.
    await this.reset_([`${base}:w`, `${base}:d`], []);
  }
}

const RESET = `redis.call('DEL', KEYS[1], KEYS[2])
return 1
`;

/** The outcomes in the order the scripts number them (reply index {@link REPLY.outcome}). */
const OUTCOMES: readonly RateLimitOutcome[] = ['allowed', 'limited', 'quota'];

/** Where each field of a decision sits in a script's reply. */
const REPLY = { outcome: 0, remaining: 1, resetMs: 2, retryAfterMs: 3, dailyRemaining: 4, dailyResetMs: 5 } as const;

function toDecision(reply: unknown): RateLimitDecision {
  const r = reply as number[];
  return {
    outcome: OUTCOMES[r[REPLY.outcome]],
    remaining: r[REPLY.remaining],
    resetMs: r[REPLY.resetMs],
    retryAfterMs: r[REPLY.retryAfterMs],
    dailyRemaining: r[REPLY.dailyRemaining],
    dailyResetMs: r[REPLY.dailyResetMs],
  };
}

// Memory layout: per client, three doubles of window state in a growing Float64Array, plus two of
// daily state in a second one made only once a policy has a daily quota; an LRU maps id → slot.
// No object per client, and ids are stored flat (below), so memory per client stays small (figures
// in docs/stores.md; see bench/rate-limit.bench.ts). NaN marks "never set", as a missing key does
// in Redis. The offsets within a client's window state depend on the algorithm:
const WINDOW_FIELDS = 3;
const SW_SLOT = 0; // sliding window: the current window's number
const SW_CURR = 1; // sliding window: count in the current window
const SW_PREV = 2; // sliding window: count in the previous window
const TB_LEVEL = 0; // token bucket: level, in tokens x windowMs
const TB_LAST = 1; // token bucket: time of the last refill
const FW_COUNT = 0; // fixed window: count
const FW_START = 1; // fixed window: when the window started
const DAY_FIELDS = 2;
const DAY_NUMBER = 0; // daily: the UTC day's number
const DAY_COUNT = 1; // daily: units taken that day

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
    this.win = new Float64Array(this.capacity * WINDOW_FIELDS).fill(NaN);
  }

  /** Clients currently remembered (at most `maxKeys`). */
  get size(): number {
    return this.index.size;
  }

  consume(id: string, policy: RateLimitPolicy, cost: number): RateLimitDecision {
    const slot = this.slotOf(id);
    const at = slot * WINDOW_FIELDS;
    const now = Math.floor(this.clock());
    const m = this.win;
    const { limit, windowMs: window, burst, daily } = policy;
    const day = Math.floor(now / DAY_MS);
    const dailyReset = (day + 1) * DAY_MS - now;
    let dailyUsed = 0;
    let dailyLeft = -1;
    const dm = daily > 0 ? (this.day ??= new Float64Array(this.capacity * DAY_FIELDS).fill(NaN)) : undefined;
    const dat = slot * DAY_FIELDS;
    if (dm !== undefined) {
      if (dm[dat + DAY_NUMBER] === day) dailyUsed = dm[dat + DAY_COUNT];
      dailyLeft = daily - dailyUsed;
    }

    if (policy.algorithm === 'sliding-window') {
      const slotNow = Math.floor(now / window);
      const stored = m[at + SW_SLOT];
      let curr = 0;
      let prev = 0;
      if (stored === slotNow) {
        curr = m[at + SW_CURR];
        prev = m[at + SW_PREV];
      } else if (stored === slotNow - 1) {
        prev = m[at + SW_CURR];
      }
      const elapsed = now - slotNow * window;
      const used = (prev * (window - elapsed)) / window + curr;
      const reset = window - elapsed;
      const left = Math.floor(Math.max(0, limit - used));
      if (daily > 0 && dailyUsed + cost > daily) return decision('quota', left, reset, dailyReset, dailyLeft, dailyReset);
      if (used + cost > limit) {
        let retry: number;
        if (cost > limit) {
          retry = reset + window;
        } else if (curr + cost <= limit) {
          retry = Math.max(1, Math.ceil(window - elapsed - ((limit - curr - cost) * window) / prev));
        } else {
          retry = reset + Math.max(0, Math.ceil(window - ((limit - cost) * window) / curr));
        }
        return decision('limited', left, reset, retry, dailyLeft, dailyReset);
      }
      curr = curr + cost;
      m[at + SW_SLOT] = slotNow;
      m[at + SW_CURR] = curr;
      m[at + SW_PREV] = prev;
      dailyLeft = takeDaily(dm, dat, daily, day, dailyUsed, cost);
      return decision('allowed', Math.floor(limit - used - cost), reset, 0, dailyLeft, dailyReset);
    }

    if (policy.algorithm === 'token-bucket') {
      const cap = burst * window;
      const need = cost * window;
      let level = cap;
      if (!Number.isNaN(m[at + TB_LEVEL])) {
        const elapsed = Math.max(0, now - m[at + TB_LAST]);
        level = Math.min(cap, m[at + TB_LEVEL] + elapsed * limit);
      }
      let reset = Math.ceil((cap - level) / limit);
      const left = Math.floor(level / window);
      if (daily > 0 && dailyUsed + cost > daily) return decision('quota', left, reset, dailyReset, dailyLeft, dailyReset);
      if (level < need) {
        const retry = need > cap ? Math.ceil(cap / limit) + window : Math.max(1, Math.ceil((need - level) / limit));
        return decision('limited', left, reset, retry, dailyLeft, dailyReset);
      }
      level = level - need;
      reset = Math.ceil((cap - level) / limit);
      m[at + TB_LEVEL] = level;
      m[at + TB_LAST] = now;
      dailyLeft = takeDaily(dm, dat, daily, day, dailyUsed, cost);
      return decision('allowed', Math.floor(level / window), reset, 0, dailyLeft, dailyReset);
    }

    let count = 0;
    let start = now;
    if (!Number.isNaN(m[at + FW_COUNT]) && now - m[at + FW_START] < window) {
      count = m[at + FW_COUNT];
      start = m[at + FW_START];
    }
    const reset = start + window - now;
    const left = Math.max(0, limit - count);
    if (daily > 0 && dailyUsed + cost > daily) return decision('quota', left, reset, dailyReset, dailyLeft, dailyReset);
    if (count + cost > limit) {
      return decision('limited', left, reset, cost > limit ? reset + window : reset, dailyLeft, dailyReset);
    }
    count = count + cost;
    m[at + FW_COUNT] = count;
    m[at + FW_START] = start;
    dailyLeft = takeDaily(dm, dat, daily, day, dailyUsed, cost);
    return decision('allowed', limit - count, reset, 0, dailyLeft, dailyReset);
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
    this.win.fill(NaN, slot * WINDOW_FIELDS, slot * WINDOW_FIELDS + WINDOW_FIELDS);
    this.day?.fill(NaN, slot * DAY_FIELDS, slot * DAY_FIELDS + DAY_FIELDS);
  }

  private grow(): void {
    this.capacity = Math.min(this.maxKeys, this.capacity * 2);
    const win = new Float64Array(this.capacity * WINDOW_FIELDS).fill(NaN);
    win.set(this.win);
    this.win = win;
    if (this.day !== undefined) {
      const day = new Float64Array(this.capacity * DAY_FIELDS).fill(NaN);
      day.set(this.day);
      this.day = day;
    }
  }
}

/** TAKE_DAILY of the scripts: runs only when both quotas admitted the request. Returns the daily units left. */
function takeDaily(dm: Float64Array | undefined, dat: number, daily: number, day: number, dailyUsed: number, cost: number): number {
  if (dm === undefined) return -1;
  dm[dat + DAY_NUMBER] = day;
  dm[dat + DAY_COUNT] = dailyUsed + cost;
  return daily - dailyUsed - cost;
}

function decision(outcome: RateLimitOutcome, remaining: number, resetMs: number, retryAfterMs: number, dailyRemaining: number, dailyResetMs: number): RateLimitDecision {
  return { outcome, remaining, resetMs, retryAfterMs, dailyRemaining, dailyResetMs };
}
