import { LRUCache } from 'lru-cache';
import { PostgresCreditsStore } from '../postgres/credits-store';
import type { MemoryStores } from './memory';
import { perStores } from './per-stores';
import type { RedisConnection } from './redis-connection';
import type { StoreFactory } from './types';

/** One line of an account's ledger, newest first in `CreditsStore.history`. */
export interface CreditsHistoryEntry {
  /** Epoch milliseconds (Redis's clock on Redis). */
  at: number;
  /** Change of the balance: negative for a spend, positive for a refund or a grant. */
  delta: number;
  /** 'spend', 'refund', 'grant', 'set', 'initial' (PostgreSQL: the opening balance of a new account), or the reason given to `grant`. */
  reason: string;
  /** The request that spent or was refunded; null for run-time calls. */
  request_id: string | null;
  /** PostgreSQL only: the ledger row's id, to page further with `{ before: id }`. */
  id?: number;
  /** PostgreSQL only: the balance right after this change. */
  balance_after?: number;
}

/** Which ledger entries `CreditsStore.history` returns. */
export interface CreditsHistoryOptions {
  /** At most this many, newest first. Defaults to all kept (memory, Redis) or `historySize` (PostgreSQL). */
  limit?: number;
  /** PostgreSQL only: entries older than the one with this id (the last `id` of the previous page). */
  before?: number;
}

/** Result of {@link CreditsStore.reserve}. */
export interface ReserveResult {
  /** Whether the cost was taken. */
  ok: boolean;
  /** The balance after the reservation, or the (too low) balance when refused. */
  balance: number;
}

/**
 * Credit balances per account. Every change is atomic: a reservation checks and takes in one
 * step, and a refund is guarded by its reservation id so it can happen at most once.
 */
export interface CreditsStore {
  /**
   * Takes `cost` from `account` when its balance covers it, remembering it under `reservation`
   * (unique per request) so {@link refund} can undo it; a repeat of a reservation still held takes
   * nothing more. An unknown account starts at `initial`.
   */
  reserve(account: string, cost: number, initial: number, reservation: string, requestId: string, timeoutMs?: number): Promise<ReserveResult>;
  /** Forgets a reservation: the credits stay spent and a later refund does nothing. */
  commit(account: string, reservation: string, timeoutMs?: number): Promise<void>;
  /** Gives a reservation's credits back; resolves to the amount returned, 0 when it was already settled. */
  refund(account: string, reservation: string, requestId: string, timeoutMs?: number): Promise<number>;
  /** Adds `amount` (an unknown account starts at `initial`); resolves to the new balance. */
  grant(account: string, amount: number, initial: number, reason: string): Promise<number>;
  /** Sets the balance to `amount`; resolves to it. */
  set(account: string, amount: number): Promise<number>;
  /** The current balance, or `initial` for an account never seen. */
  balance(account: string, initial: number): Promise<number>;
  /** The last entries of the account's ledger, newest first. */
  history(account: string, options?: CreditsHistoryOptions): Promise<CreditsHistoryEntry[]>;
  /** Stops the store's timers and finishes its batched writes. */
  close?(): Promise<void>;
}

/** Options of {@link creditsStore}. */
export interface CreditsStoreOptions {
  /** Namespace of the keys: stores with the same namespace share balances. Defaults to 'credits'. */
  namespace?: string;
  /** Ledger entries kept per account; 0 keeps none. Defaults to 20. */
  historySize?: number;
  /** Memory only: most accounts kept before the least recently used is evicted (and its balance lost). Defaults to 100,000. */
  maxAccounts?: number;
  /** Redis only: how long a reservation can still be refunded. Defaults to 3,600,000 ms (1 h). */
  reservationTtlMs?: number;
}

/** Builds the credits store of a namespace on the stack's backend (memory or Redis, or PostgreSQL when the stack has it). */
export function creditsStore(options: CreditsStoreOptions = {}): StoreFactory<CreditsStore> {
  const namespace = options.namespace ?? 'credits';
  const historySize = options.historySize ?? 20;
  const maxAccounts = options.maxAccounts ?? 100_000;
  const reservationTtlMs = Math.max(1, Math.ceil(options.reservationTtlMs ?? 3_600_000));
  return {
    memory: (stores) => memoryState(stores, namespace, maxAccounts, historySize),
    redis: (connection) => new RedisCreditsStore(connection, namespace, historySize, reservationTtlMs),
    // One per (database, namespace), like memory: its commit batches and sweeper are shared.
    // Accounts are the ids themselves in the default namespace (API.md: no prefix), `namespace:id` in others.
    postgres: (db) =>
      perStores(db, `credits:${namespace}`, () => new PostgresCreditsStore(db, namespace === 'credits' ? '' : `${namespace}:`, historySize || 20, reservationTtlMs)),
  };
}

interface Account {
  balance: number;
  history: CreditsHistoryEntry[] | undefined;
}

// One state per (MemoryStores, namespace): a route-level credits() and the stack's credits share
// balances on memory exactly as they do on Redis, where the keys are the same.
function memoryState(stores: MemoryStores, namespace: string, maxAccounts: number, historySize: number): MemoryCreditsStore {
  return perStores(stores, `credits:${namespace}`, () => new MemoryCreditsStore(stores.now, maxAccounts, historySize));
}

// JavaScript runs each method to completion, so check-and-take needs no lock here.
class MemoryCreditsStore implements CreditsStore {
  private readonly accounts: LRUCache<string, Account>;
  // Only reservations in flight: each is removed when its request settles.
  private readonly reservations = new Map<string, { account: string; cost: number }>();

  constructor(private readonly now: () => number, maxAccounts: number, private readonly historySize: number) {
    this.accounts = new LRUCache({ max: maxAccounts });
  }

  async reserve(account: string, cost: number, initial: number, reservation: string, requestId: string): Promise<ReserveResult> {
    const existing = this.accounts.get(account);
    if (this.reservations.has(reservation)) return { ok: true, balance: existing?.balance ?? initial };
    const balance = existing === undefined ? initial : existing.balance;
    if (balance < cost) return { ok: false, balance };
    const entry = existing ?? this.open(account, initial);
    entry.balance = balance - cost;
    this.reservations.set(reservation, { account, cost });
    this.record(entry, -cost, 'spend', requestId);
    return { ok: true, balance: entry.balance };
  }

  async commit(_account: string, reservation: string): Promise<void> {
    this.reservations.delete(reservation);
  }

  async refund(account: string, reservation: string, requestId: string): Promise<number> {
    const held = this.reservations.get(reservation);
    if (held === undefined) return 0;
    this.reservations.delete(reservation);
    const entry = this.accounts.get(account) ?? this.open(account, 0);
    entry.balance += held.cost;
    this.record(entry, held.cost, 'refund', requestId);
    return held.cost;
  }

  async grant(account: string, amount: number, initial: number, reason: string): Promise<number> {
    const entry = this.accounts.get(account) ?? this.open(account, initial);
    entry.balance += amount;
    this.record(entry, amount, reason, null);
    return entry.balance;
  }

  async set(account: string, amount: number): Promise<number> {
    const entry = this.accounts.get(account) ?? this.open(account, 0);
    const delta = amount - entry.balance;
    entry.balance = amount;
    this.record(entry, delta, 'set', null);
    return amount;
  }

  async balance(account: string, initial: number): Promise<number> {
    return this.accounts.get(account)?.balance ?? initial;
  }

  async history(account: string, options: CreditsHistoryOptions = {}): Promise<CreditsHistoryEntry[]> {
    const entries = this.accounts.peek(account)?.history;
    return entries === undefined ? [] : entries.slice().reverse().slice(0, options.limit);
  }

  private open(account: string, initial: number): Account {
    const entry: Account = { balance: initial, history: undefined };
    this.accounts.set(account, entry);
    return entry;
  }

  private record(entry: Account, delta: number, reason: string, requestId: string | null): void {
    if (this.historySize === 0) return;
    const history = (entry.history ??= []);
    history.push({ at: this.now(), delta, reason, request_id: requestId || null });
    if (history.length > this.historySize) history.shift();
  }
}

// KEYS: balance, reservation, history — one {hash tag} (the account), so one Cluster slot.
// The ledger uses Redis's own TIME (`now`, set by the connection's fence), so instances with skewed
// clocks agree. The fence also keeps a script that timed out from running later: a reservation
// whose caller gave up (the request took onStoreError) is not taken when Redis comes back.
const LEDGER = `
local function ledger(key, size, delta, reason, requestId)
  if size <= 0 then return end
  redis.call('LPUSH', key, cjson.encode({at = now, delta = delta, reason = reason, request_id = requestId}))
  redis.call('LTRIM', key, 0, size - 1)
end
`;

// ARGV: cost, initial, reservation ttl ms, history size, request id.
// The same reservation id never takes twice: ioredis resends a command whose reply was lost when
// it reconnects, and '-' marks a reservation already undone. An unknown account is not written
// when refused, so probing accounts leaves no keys behind.
const RESERVE = `${LEDGER}
local held = redis.call('GET', KEYS[2])
if held then
  local current = redis.call('GET', KEYS[1])
  return {held == '-' and 0 or 1, tonumber(current or ARGV[2])}
end
local cost = tonumber(ARGV[1])
local raw = redis.call('GET', KEYS[1])
local balance = raw and tonumber(raw) or tonumber(ARGV[2])
if balance < cost then return {0, balance} end
if not raw then redis.call('SET', KEYS[1], balance) end
balance = redis.call('DECRBY', KEYS[1], cost)
redis.call('SET', KEYS[2], cost, 'PX', ARGV[3])
ledger(KEYS[3], tonumber(ARGV[4]), -cost, 'spend', ARGV[5])
return {1, balance}
`;

// ARGV: history size, request id, tombstone ttl ms. The first refund (or the commit) settles
// the reservation, so a retried or duplicated refund returns nothing; the '-' tombstone also stops
// a late resend of the reservation itself from taking after its undo.
const REFUND = `${LEDGER}
local held = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], '-', 'PX', ARGV[3])
if not held or held == '-' then return 0 end
local cost = tonumber(held)
redis.call('INCRBY', KEYS[1], cost)
ledger(KEYS[3], tonumber(ARGV[1]), cost, 'refund', ARGV[2])
return cost
`;

// KEYS: balance, history. ARGV: amount, initial, history size, reason.
const GRANT = `${LEDGER}
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[2]) end
local balance = redis.call('INCRBY', KEYS[1], ARGV[1])
ledger(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[1]), ARGV[4], false)
return balance
`;

// KEYS: balance, history. ARGV: amount, history size.
const SET = `${LEDGER}
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('SET', KEYS[1], ARGV[1])
ledger(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[1]) - old, 'set', false)
return tonumber(ARGV[1])
`;

class RedisCreditsStore implements CreditsStore {
  private readonly reserve_;
  private readonly refund_;
  private readonly grant_;
  private readonly set_;
  private readonly tombstoneTtlMs: number;

  constructor(
    private readonly conn: RedisConnection,
    private readonly namespace: string,
    private readonly historySize: number,
    private readonly reservationTtlMs: number,
  ) {
    this.reserve_ = conn.script(RESERVE, 3);
    this.refund_ = conn.script(REFUND, 3);
    this.grant_ = conn.script(GRANT, 2);
    this.set_ = conn.script(SET, 2);
    // Long enough to outlive a reconnect's resend, short enough that refunded requests leave few keys.
    this.tombstoneTtlMs = Math.min(reservationTtlMs, 300_000);
  }

  async reserve(account: string, cost: number, initial: number, reservation: string, requestId: string, timeoutMs?: number): Promise<ReserveResult> {
    const [ok, balance] = (await this.reserve_(
      [this.balanceKey(account), this.reservationKey(account, reservation), this.historyKey(account)],
      [cost, initial, this.reservationTtlMs, this.historySize, requestId],
      timeoutMs,
    )) as [number, number];
    return { ok: ok === 1, balance: Number(balance) };
  }

  async commit(account: string, reservation: string, timeoutMs?: number): Promise<void> {
    await this.conn.run(() => this.conn.client.del(this.reservationKey(account, reservation)), timeoutMs);
  }

  async refund(account: string, reservation: string, requestId: string, timeoutMs?: number): Promise<number> {
    const returned = await this.refund_(
      [this.balanceKey(account), this.reservationKey(account, reservation), this.historyKey(account)],
      [this.historySize, requestId, this.tombstoneTtlMs],
      timeoutMs,
    );
    return Number(returned);
  }

  async grant(account: string, amount: number, initial: number, reason: string): Promise<number> {
    return Number(await this.grant_([this.balanceKey(account), this.historyKey(account)], [amount, initial, this.historySize, reason]));
  }

  async set(account: string, amount: number): Promise<number> {
    return Number(await this.set_([this.balanceKey(account), this.historyKey(account)], [amount, this.historySize]));
  }

  async balance(account: string, initial: number): Promise<number> {
    const raw = await this.conn.run(() => this.conn.client.get(this.balanceKey(account)));
    return raw === null ? initial : Number(raw);
  }

  async history(account: string, options: CreditsHistoryOptions = {}): Promise<CreditsHistoryEntry[]> {
    if (this.historySize === 0 || options.limit === 0) return [];
    const raw = await this.conn.run(() => this.conn.client.lrange(this.historyKey(account), 0, options.limit === undefined ? -1 : options.limit - 1));
    return raw.map((line) => {
      const e = JSON.parse(line) as { at: number; delta: number; reason: string; request_id?: string | false };
      return { at: e.at, delta: e.delta, reason: e.reason, request_id: typeof e.request_id === 'string' && e.request_id !== '' ? e.request_id : null };
    });
  }

  private balanceKey(account: string): string {
    return this.conn.key(this.namespace, account);
  }
  private reservationKey(account: string, reservation: string): string {
    return this.conn.key(this.namespace, account, `r:${reservation}`);
  }
  private historyKey(account: string): string {
    return this.conn.key(this.namespace, account, 'history');
  }
}
