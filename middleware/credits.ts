import { randomBytes } from 'node:crypto';
import type { Request, Response } from 'express';
import type { Counter } from 'prom-client';
import { AuthenticationError, ConfigError, InsufficientCreditsError, ServiceUnavailableError } from '../lib/errors';
import { defaultLogger, type Logger } from '../lib/logger';
import { counter } from '../lib/metrics-registry';
import { checkCallback, checkOptions, oneOf } from '../lib/options';
import { loggerOf, runtimeOf, standaloneRuntime, type PerimeterRuntime } from '../lib/runtime';
import { onResponseDone } from '../lib/response-done';
import { creditsStore, type CreditsHistoryEntry, type CreditsStore } from '../lib/stores/credits-store';
import { StoreOutage } from '../lib/stores/outage';
import { RedisStores } from '../lib/stores/redis';
import { StoreUnavailableError, type RedisOption } from '../lib/stores/redis-connection';
import type { Stores } from '../lib/stores/types';
import { describe, parseDuration } from '../lib/units';
import { warnOnce } from '../lib/warnings';
import type { PerimeterHandler } from '../types/express-augment';

/** Options of {@link credits}. */
export interface CreditsOptions {
  /** Credits a request costs: a whole number ≥ 0, or a function of the request returning one (0 makes the request free). Defaults to 1. */
  cost?: number | ((req: Request) => number);
  /** Who pays: 'user' (`req.user.id`), 'apiKey' (`req.apiKey.name`), 'tenant' (`req.tenant.id`) or a function returning an account id. Defaults to the user id, else the API key's `userId`, else its `name`. */
  account?: 'user' | 'apiKey' | 'tenant' | ((req: Request) => string | number | undefined | null);
  /** Whether a request with no account is refused with 401 AUTHENTICATION_REQUIRED; `false` serves it free. Defaults to true. */
  required?: boolean;
  /** Balance of an account never seen, or a function of the account id returning it; applied atomically on first use. Defaults to 0. */
  initialBalance?: number | ((account: string) => number);
  /** Namespace of the balances: credits handlers with the same namespace on the same stores share balances. Defaults to 'credits'. */
  namespace?: string;
  /** When the store fails or is slower than `storeTimeout`: 'closed' answers 503 SERVICE_UNAVAILABLE, 'open' serves the request free. Defaults to 'closed'. */
  onStoreError?: 'closed' | 'open';
  /** Longest a reservation waits for the store before `onStoreError` applies. Defaults to '100ms'. */
  storeTimeout?: number | string;
  /** First wait before a refund (or commit) the store did not take is tried again; the wait doubles up to 5 s, until it is taken or `reservationTtl` passes. Defaults to '250ms'. */
  refundRetryDelay?: number | string;
  /** How long a reservation stays refundable on Redis; a request running longer keeps its spend. Defaults to '1h'. */
  reservationTtl?: number | string;
  /** Ledger entries kept per account for `history()`; 0 keeps none. Defaults to 20. */
  historySize?: number;
  /** Memory stores only: most accounts kept; evicting one loses its balance. Defaults to 100000. */
  maxAccounts?: number;
  /** Send `X-Credits-Cost` and `X-Credits-Remaining` on charged requests and on 402. Defaults to true. */
  headers?: boolean;
  /** Stores holding the balances, for requests and run-time methods alike (e.g. `stack.stores`). Defaults to the stack's stores behind a stack (its own within `createStack`), else memory. */
  stores?: Stores;
  /** Redis URL or ioredis client for the balances of a `credits()` used without a stack; `close()` closes a connection it opened. Defaults to none. */
  redis?: RedisOption;
}

/** The run-time methods of a {@link credits} handler (also `stack.middleware.credits`). */
export interface CreditsMethods {
  /** Adds `amount` (a whole number > 0) to `account`; resolves to the new balance. */
  grant(account: string | number, amount: number, reason?: string): Promise<number>;
  /** The balance of `account` (its initial balance when never seen). */
  balance(account: string | number): Promise<number>;
  /** Sets the balance of `account` to `amount` (a whole number ≥ 0); resolves to it. */
  set(account: string | number, amount: number): Promise<number>;
  /** The last `historySize` ledger entries of `account`, newest first. */
  history(account: string | number): Promise<CreditsHistoryEntry[]>;
  /** Tries the refunds and commits still waiting for the store once more (logging any it cannot make) and closes a Redis connection opened for the `redis` option. */
  close(): Promise<void>;
}

// An interface, not an intersection: TypeScript infers a route's params from an intersection as `unknown`.
/** A {@link credits} middleware with its run-time methods. */
export interface CreditsHandler extends PerimeterHandler, CreditsMethods {}

declare module '../lib/create-stack' {
  interface StackMiddleware {
    /** The stack's credits, with `grant`, `balance`, `set` and `history` (present when `credits` is configured). */
    credits: CreditsHandler;
  }
}

const KNOWN = [
  'cost', 'account', 'required', 'initialBalance', 'namespace', 'onStoreError', 'storeTimeout', 'refundRetryDelay',
  'reservationTtl', 'historySize', 'maxAccounts', 'headers', 'stores', 'redis',
] as const;

// Unique per process and cheap per request: a random prefix plus a counter.
const PROCESS_TAG = randomBytes(6).toString('base64url');
let sequence = 0;

interface RuntimeState {
  store: CreditsStore;
  spent: Counter<string>;
  refunded: Counter<string>;
  rejections: Counter<'reason'>;
  storeErrors: Counter<'operation'>;
  outage: StoreOutage;
  settlements: PendingSettlements;
}

/** A refund or commit of one reservation. */
interface Settlement {
  op: 'refund' | 'commit';
  account: string;
  reservation: string;
  requestId: string;
  cost: number;
  /** The reservation itself timed out: whether the store took it is not known (a refund then returns 0 if it did not). */
  uncertain: boolean;
  /** When the reservation was made (performance.now()); after `reservationTtl` the store has forgotten it. */
  reservedAt: number;
}

// Settlements waiting for the store, per stores: beyond this, a new one is given up at once (and logged).
const MAX_PENDING_SETTLEMENTS = 10_000;
const MAX_RETRY_DELAY_MS = 5_000;
// How many waiting settlements are sent at once once the store answers again.
const DRAIN_BATCH = 100;

/**
 * Refunds and commits the store has not taken yet. Each is tried at once while the store is up;
 * one that fails (or comes while the store is down) waits here and is tried again with backoff:
 * first one alone, as a probe, then the rest, until the store takes them or the reservation
 * expires. The outage itself is logged once (StoreOutage); only a settlement given up is logged,
 * each with its account and amount, since an account is then owed credits.
 */
class PendingSettlements {
  private readonly waiting = new Map<string, Settlement>();
  private timer?: NodeJS.Timeout;
  private delay: number;
  private draining?: Promise<void>;

  constructor(
    private readonly state: Omit<RuntimeState, 'settlements'>,
    private readonly logger: Logger,
    private readonly firstDelay: number,
    private readonly reservationTtlMs: number,
  ) {
    this.delay = firstDelay;
  }

  /** Settlements still waiting for the store. */
  get size(): number {
    return this.waiting.size;
  }

  /** Sends `settlement` now, or keeps it for later while the store is down. */
  settle(settlement: Settlement): void {
    if (this.state.outage.down || this.waiting.size > 0) {
      this.keep(settlement);
      return;
    }
    void this.attempt(settlement).then((done) => {
      if (!done) this.keep(settlement);
    });
  }

  /** Tries every waiting settlement now; with `final`, gives up (logs) whatever the store still refuses. */
  async flush(final: boolean): Promise<void> {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    await this.draining;
    await this.drain();
    if (!final) return;
    for (const settlement of this.waiting.values()) this.giveUp(settlement, 'the credits handler was closed before the store took it');
    this.waiting.clear();
  }

  private attempt(s: Settlement): Promise<boolean> {
    const startedAt = performance.now();
    const call =
      s.op === 'refund'
        ? this.state.store.refund(s.account, s.reservation, s.requestId).then((returned) => {
            if (returned > 0) this.state.refunded.inc(returned);
          })
        : this.state.store.commit(s.account, s.reservation);
    return call.then(
      () => {
        this.state.outage.answered();
        return true;
      },
      (err: unknown) => {
        this.state.storeErrors.inc({ operation: s.op });
        this.state.outage.failed(err, startedAt);
        return false;
      },
    );
  }

  private keep(settlement: Settlement): void {
    if (!this.waiting.has(settlement.reservation) && this.waiting.size >= MAX_PENDING_SETTLEMENTS) {
      this.giveUp(settlement, `more than ${MAX_PENDING_SETTLEMENTS} settlements are waiting for the store`);
      return;
    }
    this.waiting.set(settlement.reservation, settlement);
    this.schedule();
  }

  private schedule(): void {
    if (this.timer !== undefined || this.draining !== undefined || this.waiting.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.drain();
    }, this.delay);
    this.timer.unref();
  }

  private drain(): Promise<void> {
    this.draining ??= this.drainOnce().finally(() => {
      this.draining = undefined;
      this.schedule();
    });
    return this.draining;
  }

  private async drainOnce(): Promise<void> {
    const now = performance.now();
    for (const settlement of [...this.waiting.values()]) {
      if (now - settlement.reservedAt <= this.reservationTtlMs) continue;
      this.waiting.delete(settlement.reservation);
      this.giveUp(settlement, 'the reservation expired on the store before the store answered again');
    }
    let batch = [...this.waiting.values()].slice(0, 1);
    while (batch.length > 0) {
      const results = await Promise.all(batch.map((s) => this.attempt(s)));
      batch.forEach((s, i) => {
        if (results[i]) this.waiting.delete(s.reservation);
      });
      if (results.includes(false)) {
        this.delay = Math.min(MAX_RETRY_DELAY_MS, this.delay * 2);
        return;
      }
      batch = [...this.waiting.values()].slice(0, DRAIN_BATCH);
    }
    this.delay = this.firstDelay;
  }

  private giveUp(s: Settlement, reason: string): void {
    // A commit that never happened only leaves the reservation record to expire: the credits stay spent, as they should.
    if (s.op === 'commit') return;
    const meta = { account: s.account, amount: s.cost, reservation: s.reservation, request_id: s.requestId || undefined, reason };
    if (s.uncertain) {
      // Most often the reservation never reached the store (it was down): a warning, not an alarm.
      this.logger.warn('Credits reservation failed and its undo could not be confirmed; if it reached the store, the account is owed credits', { code: 'ERR_CREDITS_RESERVE_UNCERTAIN', ...meta });
    } else {
      this.logger.error('Credits refund could not be made; the account is owed credits', { code: 'ERR_CREDITS_REFUND_FAILED', ...meta });
    }
  }
}

/**
 * Charges credits per request: reserves `cost` atomically before the handler (402
 * INSUFFICIENT_CREDITS with `required` and `balance` when the balance is short), keeps it when the
 * response finishes with 2xx, and refunds it otherwise (4xx/5xx, timeout, thrown error, client
 * gone). No double spend under concurrency; a refund happens at most once per reservation.
 */
export function credits(options: CreditsOptions = {}): CreditsHandler {
  checkOptions('credits', options, KNOWN);
  checkCallback('credits.cost', options.cost, '(req) => number');
  checkCallback('credits.account', options.account, '(req) => id');
  const costOf = pickCost(options.cost ?? 1);
  const accountOf = pickAccount(options.account);
  const required = flag(options.required ?? true, 'credits.required');
  const initialOf = pickInitial(options.initialBalance ?? 0);
  const namespace = options.namespace ?? 'credits';
  if (typeof namespace !== 'string' || !/^[A-Za-z0-9._:-]{1,64}$/.test(namespace)) {
    throw new ConfigError('credits.namespace', `expected 1–64 characters of letters, digits and . _ : -, got ${describe(namespace)}`);
  }
  const onStoreError = oneOf('credits.onStoreError', options.onStoreError ?? 'closed', ['closed', 'open'] as const);
  const storeTimeout = parseDuration(options.storeTimeout ?? '100ms', 'credits.storeTimeout');
  const retryDelay = parseDuration(options.refundRetryDelay ?? '250ms', 'credits.refundRetryDelay');
  const reservationTtlMs = parseDuration(options.reservationTtl ?? '1h', 'credits.reservationTtl');
  const historySize = wholeNumber(options.historySize ?? 20, 'credits.historySize', 'a number of ledger entries like 20, or 0 for none');
  const maxAccounts = wholeNumber(options.maxAccounts ?? 100_000, 'credits.maxAccounts', 'a number of accounts like 100000');
  const headers = flag(options.headers ?? true, 'credits.headers');
  if (options.stores !== undefined && options.redis !== undefined) {
    throw new ConfigError('credits.redis', 'give either stores or redis, not both: stores already says where the balances live');
  }
  if (options.stores !== undefined && (typeof options.stores !== 'object' || typeof options.stores.create !== 'function')) {
    throw new ConfigError('credits.stores', `expected a Stores object such as stack.stores, got ${describe(options.stores)}`);
  }

  const factory = creditsStore({ namespace, historySize, maxAccounts, reservationTtlMs });
  const ownStores = options.redis !== undefined ? new RedisStores(options.redis, { logger: defaultLogger() }) : undefined;
  const fixedStore = (options.stores ?? ownStores)?.create(factory);

  // Behind a stack without `stores`, requests use the stack's stores; remember it so run-time
  // methods (which have no request to tell them the stack) can warn that they act elsewhere.
  let servesStack = false;
  const states = new WeakMap<PerimeterRuntime, RuntimeState>();
  const allSettlements = new Set<PendingSettlements>();
  const stateOf = (rt: PerimeterRuntime): RuntimeState => {
    let state = states.get(rt);
    if (state === undefined) {
      if (fixedStore === undefined && rt !== standaloneRuntime()) servesStack = true;
      const base = {
        store: fixedStore ?? rt.stores.create(factory),
        spent: counter(rt.registry, 'credits_spent_total', 'Credits kept by requests that finished with 2xx', []),
        refunded: counter(rt.registry, 'credits_refunded_total', 'Credits given back to requests that did not finish with 2xx', []),
        rejections: counter(rt.registry, 'credits_rejections_total', 'Requests refused by credits, by reason', ['reason']),
        storeErrors: counter(rt.registry, 'credits_store_errors_total', 'Failed or timed-out credit store operations, by operation', ['operation']),
        outage: new StoreOutage({
          logger: rt.logger,
          down: { code: 'ERR_CREDITS_STORE_UNAVAILABLE', message: `Credits store failed; ${STORE_ERROR_TEXT[onStoreError]} and refunds wait until it answers again` },
          up: { code: 'ERR_CREDITS_STORE_RECOVERED', message: 'Credits store answers again' },
          fields: { namespace, on_store_error: onStoreError },
        }),
      };
      const settlements = new PendingSettlements(base, rt.logger, retryDelay, reservationTtlMs);
      allSettlements.add(settlements);
      state = { ...base, settlements };
      states.set(rt, state);
    }
    return state;
  };
  const methodsStore = (): CreditsStore => {
    if (fixedStore !== undefined) return fixedStore;
    if (servesStack) warnOnce(standaloneRuntime().logger, 'ERR_CREDITS_DETACHED_METHODS', { namespace });
    return stateOf(standaloneRuntime()).store;
  };

  function storeUnavailable(state: RuntimeState, next: (err?: unknown) => void): void {
    if (onStoreError === 'open') return next();
    state.rejections.inc({ reason: 'store_unavailable' });
    next(new ServiceUnavailableError('Credits cannot be checked right now; try again shortly.'));
  }

  const creditsMiddleware = function creditsMiddleware(req: Request, res: Response, next: (err?: unknown) => void): void {
    let cost: number;
    let account: string | undefined;
    let initial: number;
    try {
      cost = costOf(req);
      if (cost === 0) return next();
      account = accountOf(req);
      if (account === undefined) {
        if (!required) return next();
        stateOf(runtimeOf(req)).rejections.inc({ reason: 'unauthenticated' });
        return next(new AuthenticationError('This route costs credits: authenticate with a bearer token or an API key so they can be charged to your account.'));
      }
      initial = initialOf(account);
    } catch (err) {
      return next(err);
    }
    const payer = account;
    const state = stateOf(runtimeOf(req));
    // While the store is down, one request a second tries it; the others take onStoreError at once.
    if (!state.outage.mayTry()) return storeUnavailable(state, next);
    const reservation = `${PROCESS_TAG}.${(++sequence).toString(36)}`;
    const requestId = req.id ?? '';
    const reservedAt = performance.now();
    const settlement = (op: Settlement['op'], uncertain: boolean): Settlement => ({ op, account: payer, reservation, requestId, cost, uncertain, reservedAt });
    state.store
      .reserve(payer, cost, initial, reservation, requestId, storeTimeout)
      .then(
        function reserved(result) {
          state.outage.answered();
          if (!result.ok) {
            state.rejections.inc({ reason: 'insufficient' });
            const err = new InsufficientCreditsError(`This request costs ${cost} credits and the balance is ${result.balance}.`, { required: cost, balance: result.balance });
            if (headers) err.withHeaders({ 'X-Credits-Cost': String(cost), 'X-Credits-Remaining': String(result.balance) });
            return next(err);
          }
          if (headers && !res.headersSent) {
            res.setHeader('X-Credits-Cost', String(cost));
            res.setHeader('X-Credits-Remaining', String(result.balance));
          }
          onResponseDone(res, function settleCredits() {
            // Kept only when a 2xx response went out whole; anything else gets its credits back.
            if (res.writableFinished && res.statusCode >= 200 && res.statusCode < 300) {
              state.spent.inc(cost);
              state.settlements.settle(settlement('commit', false));
            } else {
              state.settlements.settle(settlement('refund', false));
            }
          });
          // Answered meanwhile (timeout) or the client left: nothing to run, the listener refunds.
          if (!responseOver(res)) next();
        },
        function storeFailed(err: Error) {
          state.storeErrors.inc({ operation: 'reserve' });
          state.outage.failed(err, reservedAt);
          // A reservation that was sent may have been taken in time with its answer late: undo it
          // under the same id (a no-op if it was not). One never sent needs nothing.
          if (!(err instanceof StoreUnavailableError)) state.settlements.settle(settlement('refund', true));
          storeUnavailable(state, next);
        },
      )
      .catch(function nextThrew(err: unknown) {
        loggerOf(req).error('credits: a later middleware threw synchronously after the reservation', { err: err instanceof Error ? { name: err.name, message: err.message, stack: err.stack } : { message: String(err) } });
      });
  };

  const methods: CreditsMethods = {
    async grant(account, amount, reason = 'grant') {
      const id = accountId(account, 'grant');
      if (!Number.isSafeInteger(amount) || amount <= 0) throw new RangeError(`credits.grant: expected a whole number of credits > 0, got ${describe(amount)}`);
      if (typeof reason !== 'string' || reason === '') throw new TypeError('credits.grant: reason must be a non-empty string');
      return methodsStore().grant(id, amount, initialOf(id), reason);
    },
    async balance(account) {
      const id = accountId(account, 'balance');
      return methodsStore().balance(id, initialOf(id));
    },
    async set(account, amount) {
      const id = accountId(account, 'set');
      if (!Number.isSafeInteger(amount) || amount < 0) throw new RangeError(`credits.set: expected a whole number of credits ≥ 0, got ${describe(amount)}`);
      return methodsStore().set(id, amount);
    },
    async history(account) {
      return methodsStore().history(accountId(account, 'history'));
    },
    async close() {
      await Promise.all([...allSettlements].map((settlements) => settlements.flush(true)));
      await ownStores?.close();
    },
  };
  return Object.assign(creditsMiddleware as PerimeterHandler, methods);
}

const STORE_ERROR_TEXT = {
  closed: "paid requests are refused with 503 (onStoreError: 'closed')",
  open: "paid requests are served free (onStoreError: 'open')",
} as const;

/** Whether the response already ended (a timeout answered it) or its connection closed (the client left). */
function responseOver(res: Response): boolean {
  return res.writableEnded || res.destroyed;
}

function pickCost(cost: CreditsOptions['cost']): (req: Request) => number {
  if (typeof cost === 'function') {
    return (req) => {
      const value = cost(req);
      if (!Number.isSafeInteger(value) || value < 0) {
        throw new TypeError(`credits.cost returned ${describe(value)}; it must return a whole number of credits ≥ 0 (0 for a free request)`);
      }
      return value;
    };
  }
  const fixed = wholeNumber(cost, 'credits.cost', 'a whole number of credits like 5, or a function (req) => number');
  return () => fixed;
}

function pickAccount(account: CreditsOptions['account']): (req: Request) => string | undefined {
  if (account === undefined) return (req) => idOf(req.user?.id ?? req.apiKey?.userId ?? req.apiKey?.name);
  if (account === 'user') return (req) => idOf(req.user?.id);
  if (account === 'apiKey') return (req) => idOf(req.apiKey?.name);
  if (account === 'tenant') return (req) => idOf(req.tenant?.id);
  if (typeof account === 'function') return (req) => idOf(account(req));
  throw new ConfigError('credits.account', `expected 'user', 'apiKey', 'tenant' or a function (req) => accountId, got ${describe(account)}`);
}

function pickInitial(initial: CreditsOptions['initialBalance']): (account: string) => number {
  if (typeof initial === 'function') {
    return (account) => {
      const value = initial(account);
      if (!Number.isSafeInteger(value) || value < 0) {
        throw new TypeError(`credits.initialBalance returned ${describe(value)} for account '${account}'; it must return a whole number of credits ≥ 0`);
      }
      return value;
    };
  }
  const fixed = wholeNumber(initial, 'credits.initialBalance', 'a whole number of credits like 100, or a function (account) => number');
  return () => fixed;
}

function idOf(value: unknown): string | undefined {
  if (typeof value === 'string') return value === '' ? undefined : value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  return undefined;
}

function accountId(account: unknown, method: string): string {
  const id = idOf(account);
  if (id === undefined) throw new TypeError(`credits.${method}: expected an account id (a non-empty string or a number), got ${describe(account)}`);
  return id;
}

function flag(value: unknown, option: string): boolean {
  if (typeof value === 'boolean') return value;
  throw new ConfigError(option, `expected true or false, got ${describe(value)}`);
}

function wholeNumber(value: unknown, option: string, expected: string): number {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value;
  throw new ConfigError(option, `expected ${expected}, got ${describe(value)}`);
}
