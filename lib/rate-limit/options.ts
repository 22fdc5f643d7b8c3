import type { Request } from 'express';
import type { RateLimitOptions } from '../../middleware/rate-limit';
import { ConfigError } from '../errors';
import { callback, choice, count, defineOptions, duration, option, passThrough } from '../options';
import type { RateLimitAlgorithm } from '../stores/rate-limit-store';
import { describe, warnIfSecondsMeant } from '../units';
import { clientKey, type ClientKey, type RateLimitKey } from './client-key';
import { checkTier, compileTier, windowOf, type CompiledTier, type RateLimitTier } from './policy';

/** What the store does when it fails or is too slow (see `onStoreError`). */
export type FailMode = 'open' | 'closed' | 'memory';

/** Everything one `rateLimit()` decided at setup. */
export interface RateLimitConfig {
  algorithm: RateLimitAlgorithm;
  limit: number;
  windowMs: number;
  /** Tiers by name, and the one for callers without a (known) tier. */
  tiers: Map<string, CompiledTier>;
  defaultTier: CompiledTier;
  key: ClientKey;
  /** Units per request when `cost` is a number; `costOf` when it is a function. */
  fixedCost: number;
  costOf: ((req: Request) => number) | undefined;
  /** Skipped paths (with and without a trailing slash), or the skip function. */
  skipPaths: Set<string> | undefined;
  skipFn: ((req: Request) => boolean) | undefined;
  legacyHeaders: boolean;
  ietfHeaders: boolean;
  failMode: FailMode;
  /**
   * Whether the 'memory' fail mode applies before the shared store ever connected: counting in
   * memory then lets each instance admit the whole limit (#13), so only a user who asked for it gets it.
   */
  memoryBeforeConnect: boolean;
  storeTimeout: number;
  prefix: string;
  maxKeys: number;
  now: () => number;
}

const ALGORITHMS = ['sliding-window', 'token-bucket', 'fixed-window'] as const;
const DEFAULT_SKIP = ['/health', '/health/ready'];
const ALGORITHM_CODES: Record<RateLimitAlgorithm, string> = { 'sliding-window': 'sw', 'token-bucket': 'tb', 'fixed-window': 'fw' };
const autoIds = new Map<string, number>();

// Every option of rateLimit() once: its default and its check (the interface's JSDoc is its doc).
// `burst`, `daily`, `tiers` and `defaultTier` are checked as they compile into tiers, below.
const parseOptions = defineOptions<RateLimitOptions>()('rateLimit', {
  algorithm: choice(ALGORITHMS, 'sliding-window'),
  limit: count(100),
  window: option("a duration like '1m' or milliseconds", (value, path) => windowOf(value ?? '1m', path), "'1m'"),
  burst: passThrough<number>('a whole number of at least 1 (token bucket only)'),
  daily: passThrough<number | false>('a whole number of requests per UTC day, or false'),
  key: option("'ip', 'user', 'apiKey', 'tenant' or (req) => id", (value, path) => clientKeyOption(value, path)),
  tiers: option('an object of tiers like { free: { limit: 60 } }', tiersObject),
  defaultTier: passThrough<string>('the name of a tier in tiers'),
  cost: option('a whole number of units or (req) => units', costOption, '1'),
  skip: option("paths like ['/health'], (req) => boolean, or false", skipOption, "['/health', '/health/ready']"),
  prefix: option("1-64 characters of [A-Za-z0-9._:-] like 'login'", prefixOption),
  headers: option("'legacy', 'ietf', 'both' or false", headersOption, "'both'"),
  onStoreError: choice(['open', 'closed', 'memory']),
  storeTimeout: duration('100ms'),
  instances: count(1),
  maxKeys: count(100_000),
  now: callback<() => number>('() => epoch milliseconds'),
});

/** The table of rateLimit(), for docs. */
export const RATE_LIMIT_OPTIONS = parseOptions.table;

/** Checks every option of `rateLimit()` once and compiles the tiers, headers and key. */
export function parseRateLimitOptions(options: RateLimitOptions): RateLimitConfig {
  const p = parseOptions(options);
  warnIfSecondsMeant(options.window, 'rateLimit.window', 'rate-limit window');
  const inherited = { limit: p.limit, windowMs: p.window, algorithm: p.algorithm };
  const base = compileTier('default', { daily: p.daily, burst: p.burst }, inherited, p.instances, 'rateLimit');
  const tiers = new Map<string, CompiledTier>();
  for (const [name, tier] of Object.entries(p.tiers ?? {})) {
    const path = `rateLimit.tiers.${name}`;
    tiers.set(name, compileTier(name, checkTier(tier, path), inherited, p.instances, path));
    warnIfSecondsMeant(tier.window, `${path}.window`, 'rate-limit window');
  }
  const headers = p.headers;
  return {
    algorithm: p.algorithm,
    limit: p.limit,
    windowMs: p.window,
    tiers,
    defaultTier: defaultTierOf(p.defaultTier, tiers, base),
    key: p.key,
    fixedCost: p.cost.fixedCost,
    costOf: p.cost.costOf,
    skipPaths: p.skip.skipPaths,
    skipFn: p.skip.skipFn,
    legacyHeaders: headers === 'legacy' || headers === 'both',
    ietfHeaders: headers === 'ietf' || headers === 'both',
    failMode: p.onStoreError ?? 'memory',
    memoryBeforeConnect: p.onStoreError === 'memory',
    storeTimeout: Math.max(1, Math.ceil(p.storeTimeout)),
    prefix: p.prefix ?? autoPrefix(p.algorithm, p.limit, p.window),
    maxKeys: p.maxKeys,
    now: p.now ?? Date.now,
  };
}

function clientKeyOption(value: unknown, path: string): ClientKey {
  if (typeof value === 'function') callback('(req) => string').parse(value, path);
  return clientKey(value as RateLimitKey | undefined);
}

function tiersObject(value: unknown, path: string): Record<string, RateLimitTier> | undefined {
  if (value === undefined) return undefined;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ConfigError(path, `expected an object like { free: { limit: 60 }, pro: { limit: 600 } }, got ${describe(value)}`);
  }
  return value as Record<string, RateLimitTier>;
}

function defaultTierOf(name: string | undefined, tiers: Map<string, CompiledTier>, base: CompiledTier): CompiledTier {
  if (name === undefined) return tiers.get('default') ?? base;
  const named = typeof name === 'string' ? tiers.get(name) : undefined;
  if (named === undefined) {
    throw new ConfigError('rateLimit.defaultTier', `expected the name of a tier in rateLimit.tiers (${[...tiers.keys()].join(', ') || 'none given'}), got ${describe(name)}`);
  }
  return named;
}

function costOption(cost: unknown, path: string): { fixedCost: number; costOf?: (req: Request) => number } {
  if (cost === undefined) return { fixedCost: 1 };
  if (typeof cost === 'function') return { fixedCost: 1, costOf: callback<(req: Request) => number>('(req) => number').parse(cost, path) };
  if (typeof cost === 'number' && Number.isInteger(cost) && cost >= 0) return { fixedCost: cost };
  throw new ConfigError(path, `expected a whole number of units (0 or more) or a function (req) => units, got ${describe(cost)}`);
}

function skipOption(skip: unknown, path: string): { skipPaths?: Set<string>; skipFn?: (req: Request) => boolean } {
  if (skip === false) return {};
  if (typeof skip === 'function') return { skipFn: callback<(req: Request) => boolean>('(req) => boolean').parse(skip, path) };
  const paths = skip ?? DEFAULT_SKIP;
  if (!Array.isArray(paths) || paths.some((p) => typeof p !== 'string' || !p.startsWith('/'))) {
    throw new ConfigError(path, `expected paths like ['/health'], a function (req) => boolean, or false, got ${describe(skip)}`);
  }
  if (paths.length === 0) return {};
  const set = new Set<string>();
  for (const p of paths as string[]) {
    set.add(p);
    set.add(p.length > 1 && p.endsWith('/') ? p.slice(0, -1) : `${p}/`);
  }
  return { skipPaths: set };
}

function prefixOption(prefix: unknown, path: string): string | undefined {
  if (prefix === undefined || (typeof prefix === 'string' && /^[A-Za-z0-9._:-]{1,64}$/.test(prefix))) return prefix;
  throw new ConfigError(path, `expected 1-64 characters of [A-Za-z0-9._:-] like 'login', got ${describe(prefix)}`);
}

function headersOption(value: unknown, path: string): 'legacy' | 'ietf' | 'both' | false {
  if (value === undefined || value === true) return 'both';
  if (value === false) return false;
  return choice(['legacy', 'ietf', 'both']).parse(value, path) ?? 'both';
}

// Creation order is the same in every instance running the same code, so these ids agree across
// instances; counting per settings keeps them stable when an unrelated limiter is added.
function autoPrefix(algorithm: RateLimitAlgorithm, limit: number, windowMs: number): string {
  const signature = `${ALGORITHM_CODES[algorithm]}-${limit}-${windowMs}`;
  const n = (autoIds.get(signature) ?? 0) + 1;
  autoIds.set(signature, n);
  return n === 1 ? signature : `${signature}-${n}`;
}
