import type { Request } from 'express';
import type { CreditsOptions } from '../../middleware/credits';
import { ConfigError } from '../errors';
import { checkCallback, choice, defineOptions, duration, flag, namespace, option, passThrough, storesOption } from '../options';
import type { RedisOption } from '../stores/redis-connection';
import type { Stores } from '../stores/types';
import { describe } from '../units';

/** Everything `credits()` decides at setup: the per-request code only reads these. */
export interface CreditsSettings {
  costOf: (req: Request) => number;
  accountOf: (req: Request) => string | undefined;
  required: boolean;
  initialOf: (account: string) => number;
  namespace: string;
  onStoreError: 'closed' | 'open';
  storeTimeoutMs: number;
  retryDelayMs: number;
  reservationTtlMs: number;
  historySize: number;
  maxAccounts: number;
  headers: boolean;
  stores?: Stores;
  redis?: RedisOption;
}

// Every option of credits() once: its default and its check (the interface's JSDoc is its doc).
const parseOptions = defineOptions<CreditsOptions>()('credits', {
  cost: option('a whole number of credits ≥ 0, or (req) => number', (value, path) => pickCost(value ?? 1, path), '1'),
  account: option("'user', 'apiKey', 'tenant' or (req) => accountId", pickAccount),
  required: flag(true),
  initialBalance: option('a whole number of credits ≥ 0, or (account) => number', (value, path) => pickInitial(value ?? 0, path), '0'),
  namespace: namespace('credits'),
  onStoreError: choice(['closed', 'open'], 'closed'),
  storeTimeout: duration('100ms'),
  refundRetryDelay: duration('250ms'),
  reservationTtl: duration('1h'),
  historySize: option('a number of ledger entries, or 0 for none', (value, path) => wholeNumber(value ?? 20, path, 'a number of ledger entries like 20, or 0 for none'), '20'),
  maxAccounts: option('a number of accounts', (value, path) => wholeNumber(value ?? 100_000, path, 'a number of accounts like 100000'), '100000'),
  headers: flag(true),
  stores: storesOption(),
  redis: passThrough<RedisOption>('a Redis URL or an ioredis client'),
});

/** Checks every option once, at setup; a mistake is a ConfigError naming the option and the fix. */
export function parseCreditsOptions(options: CreditsOptions): CreditsSettings {
  const o = parseOptions(options);
  if (o.stores !== undefined && o.redis !== undefined) {
    throw new ConfigError('credits.redis', 'give either stores or redis, not both: stores already says where the balances live');
  }
  return {
    costOf: o.cost,
    accountOf: o.account,
    required: o.required,
    initialOf: o.initialBalance,
    namespace: o.namespace,
    onStoreError: o.onStoreError,
    storeTimeoutMs: o.storeTimeout,
    retryDelayMs: o.refundRetryDelay,
    reservationTtlMs: o.reservationTtl,
    historySize: o.historySize,
    maxAccounts: o.maxAccounts,
    headers: o.headers,
    stores: o.stores,
    redis: o.redis,
  };
}

function pickCost(cost: unknown, path: string): (req: Request) => number {
  if (typeof cost === 'function') {
    checkCallback(path, cost, '(req) => number');
    const costOf = cost as (req: Request) => number;
    return (req) => {
      const value = costOf(req);
      if (!Number.isSafeInteger(value) || value < 0) {
        throw new TypeError(`credits.cost returned ${describe(value)}; it must return a whole number of credits ≥ 0 (0 for a free request)`);
      }
      return value;
    };
  }
  const fixed = wholeNumber(cost, path, 'a whole number of credits like 5, or a function (req) => number');
  return () => fixed;
}

function pickAccount(account: unknown, path: string): (req: Request) => string | undefined {
  if (account === undefined) return (req) => idOf(req.user?.id ?? req.apiKey?.userId ?? req.apiKey?.name);
  if (account === 'user') return (req) => idOf(req.user?.id);
  if (account === 'apiKey') return (req) => idOf(req.apiKey?.name);
  if (account === 'tenant') return (req) => idOf(req.tenant?.id);
  if (typeof account === 'function') {
    checkCallback(path, account, '(req) => id');
    return (req) => idOf((account as Exclude<CreditsOptions['account'], string | undefined>)(req));
  }
  throw new ConfigError(path, `expected 'user', 'apiKey', 'tenant' or a function (req) => accountId, got ${describe(account)}`);
}

function pickInitial(initial: unknown, path: string): (account: string) => number {
  if (typeof initial === 'function') {
    const initialOf = initial as (account: string) => number;
    return (account) => {
      const value = initialOf(account);
      if (!Number.isSafeInteger(value) || value < 0) {
        throw new TypeError(`credits.initialBalance returned ${describe(value)} for account '${account}'; it must return a whole number of credits ≥ 0`);
      }
      return value;
    };
  }
  const fixed = wholeNumber(initial, path, 'a whole number of credits like 100, or a function (account) => number');
  return () => fixed;
}

/** An account id from a user id, a key name or a callback's answer: a non-empty string or a finite number. */
export function idOf(value: unknown): string | undefined {
  if (typeof value === 'string') return value === '' ? undefined : value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  return undefined;
}

function wholeNumber(value: unknown, option: string, expected: string): number {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value;
  throw new ConfigError(option, `expected ${expected}, got ${describe(value)}`);
}
