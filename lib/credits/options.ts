import type { Request } from 'express';
import type { CreditsOptions } from '../../middleware/credits';
import { ConfigError } from '../errors';
import { checkCallback, checkOptions, oneOf } from '../options';
import type { RedisOption } from '../stores/redis-connection';
import type { Stores } from '../stores/types';
import { describe, parseDuration } from '../units';

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

const KNOWN = [
  'cost', 'account', 'required', 'initialBalance', 'namespace', 'onStoreError', 'storeTimeout', 'refundRetryDelay',
  'reservationTtl', 'historySize', 'maxAccounts', 'headers', 'stores', 'redis',
] as const;

/** Checks every option once, at setup; a mistake is a ConfigError naming the option and the fix. */
export function parseCreditsOptions(options: CreditsOptions): CreditsSettings {
  checkOptions('credits', options, KNOWN);
  checkCallback('credits.cost', options.cost, '(req) => number');
  checkCallback('credits.account', options.account, '(req) => id');
  const namespace = options.namespace ?? 'credits';
  if (typeof namespace !== 'string' || !/^[A-Za-z0-9._:-]{1,64}$/.test(namespace)) {
    throw new ConfigError('credits.namespace', `expected 1–64 characters of letters, digits and . _ : -, got ${describe(namespace)}`);
  }
  if (options.stores !== undefined && options.redis !== undefined) {
    throw new ConfigError('credits.redis', 'give either stores or redis, not both: stores already says where the balances live');
  }
  if (options.stores !== undefined && (typeof options.stores !== 'object' || typeof options.stores.create !== 'function')) {
    throw new ConfigError('credits.stores', `expected a Stores object such as stack.stores, got ${describe(options.stores)}`);
  }
  return {
    costOf: pickCost(options.cost ?? 1),
    accountOf: pickAccount(options.account),
    required: flag(options.required ?? true, 'credits.required'),
    initialOf: pickInitial(options.initialBalance ?? 0),
    namespace,
    onStoreError: oneOf('credits.onStoreError', options.onStoreError ?? 'closed', ['closed', 'open'] as const),
    storeTimeoutMs: parseDuration(options.storeTimeout ?? '100ms', 'credits.storeTimeout'),
    retryDelayMs: parseDuration(options.refundRetryDelay ?? '250ms', 'credits.refundRetryDelay'),
    reservationTtlMs: parseDuration(options.reservationTtl ?? '1h', 'credits.reservationTtl'),
    historySize: wholeNumber(options.historySize ?? 20, 'credits.historySize', 'a number of ledger entries like 20, or 0 for none'),
    maxAccounts: wholeNumber(options.maxAccounts ?? 100_000, 'credits.maxAccounts', 'a number of accounts like 100000'),
    headers: flag(options.headers ?? true, 'credits.headers'),
    stores: options.stores,
    redis: options.redis,
  };
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

/** An account id from a user id, a key name or a callback's answer: a non-empty string or a finite number. */
export function idOf(value: unknown): string | undefined {
  if (typeof value === 'string') return value === '' ? undefined : value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  return undefined;
}

function flag(value: unknown, option: string): boolean {
  if (typeof value === 'boolean') return value;
  throw new ConfigError(option, `expected true or false, got ${describe(value)}`);
}

function wholeNumber(value: unknown, option: string, expected: string): number {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value;
  throw new ConfigError(option, `expected ${expected}, got ${describe(value)}`);
}
