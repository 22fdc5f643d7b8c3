import type { Request, Response } from 'express';
import { Charge, refuseUnavailable, type ChargePolicy } from '../lib/credits/charge';
import { idOf, parseCreditsOptions, type CreditsSettings } from '../lib/credits/options';
import { PendingSettlements, type CreditsState } from '../lib/credits/settlements';
import { AuthenticationError } from '../lib/errors';
import { defaultLogger } from '../lib/logger';
import { counter } from '../lib/metrics-registry';
import { runtimeOf, standaloneRuntime, type PerimeterRuntime } from '../lib/runtime';
import { creditsStore, type CreditsHistoryEntry, type CreditsHistoryOptions, type CreditsStore } from '../lib/stores/credits-store';
import { StoreOutage } from '../lib/stores/outage';
import { RedisStores } from '../lib/stores/redis';
import type { RedisOption } from '../lib/stores/redis-connection';
import type { Stores } from '../lib/stores/types';
import type { EntryContext } from '../lib/stack-entries';
import { describe } from '../lib/units';
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
  /** Longest a reservation waits for the store (memory, Redis) before `onStoreError` applies; on PostgreSQL the `postgres.statementTimeout` bounds it instead. Defaults to '100ms'. */
  storeTimeout?: number | string;
  /** First wait before a refund (or commit) the store did not take is tried again; the wait doubles up to 5 s, until it is taken or `reservationTtl` passes. Defaults to '250ms'. */
  refundRetryDelay?: number | string;
  /** How long a reservation stays refundable (Redis, PostgreSQL); a request running longer keeps its spend. Defaults to '1h'. */
  reservationTtl?: number | string;
  /** Ledger entries kept per account for `history()` on memory and Redis (0 keeps none); on PostgreSQL the whole ledger is kept and this is the page size of `history()`. Defaults to 20. */
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
  /**
   * Ledger entries of `account`, newest first: on memory and Redis the last `historySize` kept;
   * on PostgreSQL the whole ledger, `limit` (default `historySize`, at most 1000) at a time, and
   * `before: id` (the last entry's `id`) for the next page.
   */
  history(account: string | number, options?: CreditsHistoryOptions): Promise<CreditsHistoryEntry[]>;
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

/**
 * Charges credits per request: reserves `cost` atomically before the handler (402
 * INSUFFICIENT_CREDITS with `required` and `balance` when the balance is short), keeps it when the
 * response finishes with 2xx, and refunds it otherwise (4xx/5xx, timeout, thrown error, client
 * gone). No double spend under concurrency; a refund happens at most once per reservation.
 */
export function credits(options: CreditsOptions = {}): CreditsHandler {
  return buildCredits(options);
}

/** @internal The stack's credits (createStack builds it): without `stores` or `redis`, the stack's own stores, so stack.middleware.credits.grant() credits what its requests spend. */
export function stackCredits(options: CreditsOptions, { runtime }: EntryContext): CreditsHandler {
  return buildCredits(options.stores === undefined && options.redis === undefined ? { ...options, stores: runtime.stores } : options);
}

function buildCredits(options: CreditsOptions): CreditsHandler {
  const settings = parseCreditsOptions(options);
  const { namespace, onStoreError } = settings;
  const policy: ChargePolicy = { headers: settings.headers, onStoreError, storeTimeoutMs: settings.storeTimeoutMs };
  const factory = creditsStore({ namespace, historySize: settings.historySize, maxAccounts: settings.maxAccounts, reservationTtlMs: settings.reservationTtlMs });
  const ownStores = settings.redis !== undefined ? new RedisStores(settings.redis, { logger: defaultLogger() }) : undefined;
  const fixedStore = (settings.stores ?? ownStores)?.create(factory);

  // Behind a stack without `stores`, requests use the stack's stores; remember it so run-time
  // methods (which have no request to tell them the stack) can warn that they act elsewhere.
  let servesStack = false;
  const states = new WeakMap<PerimeterRuntime, CreditsState>();
  const allStates = new Set<CreditsState>();
  const stateOf = (rt: PerimeterRuntime): CreditsState => {
    let state = states.get(rt);
    if (state === undefined) {
      if (fixedStore === undefined && rt !== standaloneRuntime()) servesStack = true;
      state = newState(rt, fixedStore ?? rt.stores.create(factory), settings);
      allStates.add(state);
      states.set(rt, state);
    }
    return state;
  };
  const methodsStore = (): CreditsStore => {
    if (fixedStore !== undefined) return fixedStore;
    if (servesStack) warnOnce(standaloneRuntime().logger, 'ERR_CREDITS_DETACHED_METHODS', { namespace });
    return stateOf(standaloneRuntime()).store;
  };

  const creditsMiddleware = function creditsMiddleware(req: Request, res: Response, next: (err?: unknown) => void): void {
    let cost: number;
    let account: string | undefined;
    let initial: number;
    try {
      cost = settings.costOf(req);
      if (cost === 0) return next();
      account = settings.accountOf(req);
      if (account === undefined) {
        if (!settings.required) return next();
        stateOf(runtimeOf(req)).rejections.inc({ reason: 'unauthenticated' });
        return next(new AuthenticationError('This route costs credits: authenticate with a bearer token or an API key so they can be charged to your account.'));
      }
      initial = settings.initialOf(account);
    } catch (err) {
      return next(err);
    }
    const state = stateOf(runtimeOf(req));
    // While the store is down, one request a second tries it; the others take onStoreError at once.
    if (!state.outage.mayTry()) return refuseUnavailable(state, policy, next);
    new Charge(state, policy, account, cost, req, res, next).reserve(initial);
  };

  const methods: CreditsMethods = {
    async grant(account, amount, reason = 'grant') {
      const id = accountId(account, 'grant');
      if (!Number.isSafeInteger(amount) || amount <= 0) throw new RangeError(`credits.grant: expected a whole number of credits > 0, got ${describe(amount)}`);
      if (typeof reason !== 'string' || reason === '') throw new TypeError('credits.grant: reason must be a non-empty string');
      return methodsStore().grant(id, amount, settings.initialOf(id), reason);
    },
    async balance(account) {
      const id = accountId(account, 'balance');
      return methodsStore().balance(id, settings.initialOf(id));
    },
    async set(account, amount) {
      const id = accountId(account, 'set');
      if (!Number.isSafeInteger(amount) || amount < 0) throw new RangeError(`credits.set: expected a whole number of credits ≥ 0, got ${describe(amount)}`);
      return methodsStore().set(id, amount);
    },
    async history(account, historyOptions = {}) {
      return methodsStore().history(accountId(account, 'history'), checkHistoryOptions(historyOptions));
    },
    async close() {
      await Promise.all([...allStates].map((state) => state.settlements.flush(true)));
      await Promise.all([...new Set([...allStates].map((state) => state.store))].map((store) => store.close?.()));
      await ownStores?.close();
    },
  };
  return Object.assign(creditsMiddleware as PerimeterHandler, methods);
}

/** A handler's state for one stack: its store, its metrics, its outage tracking and its pending settlements. */
function newState(rt: PerimeterRuntime, store: CreditsStore, settings: CreditsSettings): CreditsState {
  const { namespace, onStoreError } = settings;
  const base = {
    store,
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
  return { ...base, settlements: new PendingSettlements(base, rt.logger, settings.retryDelayMs, settings.reservationTtlMs) };
}

const STORE_ERROR_TEXT = {
  closed: "paid requests are refused with 503 (onStoreError: 'closed')",
  open: "paid requests are served free (onStoreError: 'open')",
} as const;

function accountId(account: unknown, method: string): string {
  const id = idOf(account);
  if (id === undefined) throw new TypeError(`credits.${method}: expected an account id (a non-empty string or a number), got ${describe(account)}`);
  return id;
}

// At most this many ledger entries per page of history().
const MAX_HISTORY_PAGE = 1000;

function checkHistoryOptions(options: CreditsHistoryOptions): CreditsHistoryOptions {
  if (options === null || typeof options !== 'object') throw new TypeError(`credits.history: expected options like { limit: 20 }, got ${describe(options)}`);
  const { limit, before } = options;
  if (limit !== undefined && (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_HISTORY_PAGE)) {
    throw new RangeError(`credits.history: limit must be a whole number from 1 to ${MAX_HISTORY_PAGE}, got ${describe(limit)}`);
  }
  if (before !== undefined && (!Number.isSafeInteger(before) || before < 1)) {
    throw new RangeError(`credits.history: before must be the id of a ledger entry (a whole number > 0), got ${describe(before)}`);
  }
  return { limit, before };
}
