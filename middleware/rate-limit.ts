import type { NextFunction, Request, RequestHandler, Response } from 'express';
import type { Counter } from 'prom-client';
import { QuotaExceededError, RateLimitError, ServiceUnavailableError } from '../lib/errors';
import { counter } from '../lib/metrics-registry';
import type { RateLimitKey } from '../lib/rate-limit/client-key';
import { parseRateLimitOptions, type FailMode, type RateLimitConfig } from '../lib/rate-limit/options';
import type { CompiledTier, RateLimitTier, TierHeaders } from '../lib/rate-limit/policy';
import { routeTemplate } from '../lib/route-template';
import { perRuntime, standaloneRuntime, type PerimeterRuntime } from '../lib/runtime';
import { sharedStackLogger } from '../lib/shared-stacks';
import { StoreOutage } from '../lib/stores/outage';
import {
  MemoryRateLimitStore,
  rateLimitStore,
  type RateLimitAlgorithm,
  type RateLimitDecision,
  type RateLimitStore,
} from '../lib/stores/rate-limit-store';
import { describe } from '../lib/units';
import { warnOnce } from '../lib/warnings';
import type { PerimeterHandler } from '../types/express-augment';
import { recordOnSpan } from '../lib/otel';

export type { RateLimitKey } from '../lib/rate-limit/client-key';
export type { RateLimitTier } from '../lib/rate-limit/policy';
export type { RateLimitAlgorithm } from '../lib/stores/rate-limit-store';

/** Options of {@link rateLimit}. */
export interface RateLimitOptions {
  /** 'sliding-window' (two-window weighted counter), 'token-bucket' or 'fixed-window'. Defaults to 'sliding-window'. */
  algorithm?: RateLimitAlgorithm;
  /** Requests per window (the refill per window for the token bucket). Defaults to 100. */
  limit?: number;
  /** Window length, '1m' or milliseconds. Defaults to '1m'. */
  window?: number | string;
  /** Token bucket only: how many requests may arrive at once. Defaults to `limit`. */
  burst?: number;
  /** Requests per UTC day; refused with 429 QUOTA_EXCEEDED once spent. Defaults to none. */
  daily?: number | false;
  /** Who is counted: 'ip' (IPv6 by /64), 'user', 'apiKey', 'tenant' or `(req) => id`. Defaults to the API key, else the user, else the IP. */
  key?: RateLimitKey;
  /** Limits per `req.auth.tier`, e.g. `{ free: { limit: 60, daily: 1000 }, pro: { limit: 600 } }`. Defaults to none. */
  tiers?: Record<string, RateLimitTier>;
  /** Tier for callers without a (known) `req.auth.tier`. Defaults to `tiers.default` if given, else the top-level limit/window/daily. */
  defaultTier?: string;
  /** Units a request takes, or `(req) => units` for weighted requests. Defaults to 1. */
  cost?: number | ((req: Request) => number);
  /** Paths not limited (exact, after the mount path), or `(req) => boolean`, or false. Defaults to ['/health', '/health/ready']. */
  skip?: string[] | ((req: Request) => boolean) | false;
  /** Key namespace of this limiter; limiters with the same prefix share counts (on memory, the first one's maxKeys and now apply). Defaults to 'stack' in createStack, else an id from the algorithm, limit, window and creation order. */
  prefix?: string;
  /** Which headers: 'legacy' (X-RateLimit-*), 'ietf' (RateLimit-Policy, RateLimit), 'both', or false. Defaults to 'both'. */
  headers?: 'legacy' | 'ietf' | 'both' | boolean;
  /** When the store fails or is slower than `storeTimeout`: 'open' (let through), 'closed' (503) or 'memory' (a local limiter). Defaults to 'memory', except before the shared store has ever connected, where the default answers 503 (an explicit 'memory' counts locally then too). */
  onStoreError?: 'open' | 'closed' | 'memory';
  /** Longest a store decision may take before it counts as a failure. Defaults to '100ms'. */
  storeTimeout?: number | string;
  /** Instances sharing the limit: the 'memory' fallback admits limit / instances per instance. Defaults to 1. */
  instances?: number;
  /** Most clients a memory limiter remembers (least recently seen are forgotten first). Defaults to 100,000. */
  maxKeys?: number;
  /** Clock of the memory store and of `X-RateLimit-Reset`, in epoch ms (Redis always uses its own). Defaults to Date.now. */
  now?: () => number;
}

/**
 * Limits requests per client on the stack's store (Redis: one atomic script per decision on the
 * server's clock; memory: a bounded LRU). Sets `X-RateLimit-*` and IETF `RateLimit-Policy` /
 * `RateLimit` on every limited response; refuses with 429 RATE_LIMIT_EXCEEDED (or QUOTA_EXCEEDED
 * for the daily quota) and `Retry-After`.
 */
export function rateLimit(options?: RateLimitOptions): PerimeterHandler;
export function rateLimit(options: RateLimitOptions = {}): RequestHandler {
  const config = parseRateLimitOptions(options);
  const { tiers, defaultTier, key, skipPaths, skipFn, costOf, fixedCost, failMode, storeTimeout, now, prefix, maxKeys } = config;
  const factory = rateLimitStore({ namespace: prefix, maxKeys, now });

  // Built once per stack: a route-level limiter behind a stack counts on that stack's store.
  const stateOf = perRuntime((runtime) => {
    const stackLogger = runtime === standaloneRuntime() ? sharedStackLogger() : undefined;
    if (stackLogger !== undefined) warnOnce(stackLogger, 'ERR_RATE_LIMIT_OUTSIDE_STACK', { limiter: prefix }, prefix);
    return new LimiterState(runtime, runtime.stores.create(factory), () => new MemoryRateLimitStore(maxKeys, now), prefix, failMode);
  });

  return function rateLimitMiddleware(req, res, next) {
    if (skipPaths !== undefined && skipPaths.has(req.baseUrl ? req.baseUrl + req.path : req.path)) return next();
    if (skipFn !== undefined && skipFn(req)) return next();
    const tierName = req.auth?.tier;
    const attempt: Attempt = {
      req,
      res,
      next,
      state: stateOf(req),
      tier: (tierName !== undefined && tiers.get(tierName)) || defaultTier,
      id: key.id(req),
      cost: costOf === undefined ? fixedCost : checkCost(costOf(req)),
    };
    const { state } = attempt;
    // While the store is down, one request a second tries it; the others take the fail mode at once.
    // Once the store connects for the first time, the next request tries it at once.
    if (!state.outage.mayTry() && !(state.beforeConnect && state.connected())) return degrade(attempt, config);

    let pending: RateLimitDecision | Promise<RateLimitDecision>;
    try {
      pending = state.store.consume(attempt.id, attempt.tier.policy, attempt.cost, storeTimeout);
    } catch (err) {
      state.failed(err, performance.now());
      return degrade(attempt, config);
    }
    // The memory store answers synchronously: no promise, no extra tick on the hot path.
    if (!isPromise(pending)) {
      state.answered();
      return respond(attempt, config, pending, false);
    }
    const startedAt = performance.now();
    pending.then(
      (d) => {
        state.answered();
        try {
          respond(attempt, config, d, false);
        } catch (err) {
          next(err);
        }
      },
      (err: unknown) => {
        state.failed(err, startedAt);
        try {
          degrade(attempt, config);
        } catch (thrown) {
          next(thrown);
        }
      },
    );
  };
}

/**
 * @internal The stack's limiter (createStack builds it): 100 per minute per client by default. The
 * fixed 'stack' namespace keeps the stack's counts apart from route-level limiters and shared by
 * every instance, whatever order limiters are created in.
 */
export function stackRateLimit(options: RateLimitOptions): RequestHandler {
  return rateLimit({ prefix: 'stack', ...options });
}

/** One request on its way through a limiter. */
interface Attempt {
  req: Request;
  res: Response;
  next: NextFunction;
  state: LimiterState;
  tier: CompiledTier;
  /** The client id it is counted under, and how many units it takes. */
  id: string;
  cost: number;
}

/** Sets the headers of decision `d` and lets the request through or refuses it. `local`: the fallback limiter decided. */
function respond(a: Attempt, config: RateLimitConfig, d: RateLimitDecision, local: boolean): void {
  const h = local ? a.tier.fallbackHeaders : a.tier.headers;
  // A slow store can answer after the response began (a timeout answered it): no headers then.
  if (!a.res.headersSent) {
    if (config.legacyHeaders) setLegacyHeaders(a.res, h, d, config.now());
    if (config.ietfHeaders) setIetfHeaders(a.res, h, d);
  }
  recordOnSpan(a.req, 'perimeter.rate_limit.remaining', d.remaining);
  if (d.outcome === 'allowed') return a.next();
  // Before routing (the stack's limiter) no route is known yet: routeTemplate says '#unmatched'.
  a.state.rejections.inc({ key_type: config.key.type(a.req), route: routeTemplate(a.req) });
  a.next(rejection(local ? a.tier.fallback : a.tier.policy, h, d));
}

/** The store failed or is down: the configured fail mode decides. */
function degrade(a: Attempt, config: RateLimitConfig): void {
  if (config.failMode === 'open') return a.next();
  if (config.failMode === 'closed') return a.next(new ServiceUnavailableError('Rate limiting is unavailable right now; try again shortly.'));
  if (!config.memoryBeforeConnect && a.state.beforeConnect) {
    return a.next(new ServiceUnavailableError('Rate limiting is not connected to its store yet; try again shortly.').withHeaders({ 'Retry-After': '1' }));
  }
  respond(a, config, a.state.local().consume(a.id, a.tier.fallback, a.cost), true);
}

/** Per stack: the store, the local fallback, the outage state and the metrics. */
class LimiterState {
  readonly store: RateLimitStore;
  readonly rejections: Counter<'key_type' | 'route'>;
  readonly outage: StoreOutage;
  private readonly storeErrors: Counter<string>;
  private fallback?: MemoryRateLimitStore;
  private readonly readiness: PerimeterRuntime['stores']['readiness'];
  /** The store has failed and never connected yet: the default fail mode answers 503 (see degrade). */
  beforeConnect = false;

  constructor(
    runtime: PerimeterRuntime,
    store: RateLimitStore,
    private readonly makeFallback: () => MemoryRateLimitStore,
    prefix: string,
    failMode: FailMode,
  ) {
    this.store = store;
    this.readiness = runtime.stores.readiness;
    this.rejections = counter(runtime.registry, 'rate_limit_rejections_total', 'Requests refused by rateLimit (429)', ['key_type', 'route']);
    this.storeErrors = counter(runtime.registry, 'rate_limit_store_errors_total', 'Rate-limit decisions whose store failed or answered too late', []);
    this.outage = new StoreOutage({
      logger: runtime.logger,
      down: { code: 'ERR_RATE_LIMIT_STORE_UNAVAILABLE', message: `Rate limiting store failed; ${FAIL_MODE_TEXT[failMode]} until it answers again` },
      up: { code: 'ERR_RATE_LIMIT_STORE_RECOVERED', message: 'Rate limiting is back on its shared store' },
      fields: { limiter: prefix, fail_mode: failMode },
    });
  }

  /** Whether the shared store has connected at least once (memory: always). */
  connected(): boolean {
    return this.readiness === undefined || this.readiness.every((r) => r.connected);
  }

  /** The local limiter of `onStoreError: 'memory'`, made on first use. */
  local(): MemoryRateLimitStore {
    return (this.fallback ??= this.makeFallback());
  }

  /** A store call answered. */
  answered(): void {
    this.beforeConnect = false;
    this.outage.answered();
  }

  failed(err: unknown, startedAt: number): void {
    this.storeErrors.inc();
    if (!this.connected()) this.beforeConnect = true;
    this.outage.failed(err, startedAt);
  }
}

const FAIL_MODE_TEXT = {
  open: "requests pass unlimited (onStoreError: 'open')",
  closed: "requests are refused with 503 (onStoreError: 'closed')",
  memory: "each instance limits on its own memory at limit / instances (onStoreError: 'memory')",
} as const;

function setLegacyHeaders(res: Response, h: TierHeaders, d: RateLimitDecision, now: number): void {
  // Legacy fields carry one policy: whichever binds now, the window or the daily quota.
  const daily = d.dailyRemaining >= 0 && (d.outcome === 'quota' || d.dailyRemaining < d.remaining);
  const remaining = daily ? d.dailyRemaining : d.remaining;
  // Refused: the reset is when this request could pass, so it agrees with Retry-After.
  const resetMs = d.outcome === 'allowed' ? (daily ? d.dailyResetMs : d.resetMs) : d.retryAfterMs;
  res.setHeader('X-RateLimit-Limit', daily ? h.dailyLimit : h.limit);
  res.setHeader('X-RateLimit-Remaining', String(remaining));
  res.setHeader('X-RateLimit-Reset', String(Math.ceil((now + resetMs) / 1000)));
}

function setIetfHeaders(res: Response, h: TierHeaders, d: RateLimitDecision): void {
  res.setHeader('RateLimit-Policy', h.policy);
  // A refused request's effective window ends when it could pass (the draft: Retry-After is not earlier).
  const t = Math.ceil((d.outcome === 'limited' ? d.retryAfterMs : d.resetMs) / 1000);
  let value = `${h.item};r=${d.remaining};t=${t}`;
  if (d.dailyRemaining >= 0) value += `, ${h.dailyItem};r=${d.dailyRemaining};t=${Math.ceil(d.dailyResetMs / 1000)}`;
  res.setHeader('RateLimit', value);
}

function rejection(policy: { limit: number; daily: number }, h: TierHeaders, d: RateLimitDecision): RateLimitError {
  const retry = Math.max(1, Math.ceil(d.retryAfterMs / 1000));
  if (d.outcome === 'quota') {
    return new QuotaExceededError(
      `The daily quota of ${policy.daily} requests is used up; it renews at 00:00 UTC, in ${retry} s.`,
      { limit: policy.daily, window: 86400, retry_after: retry },
      retry,
    );
  }
  return new RateLimitError(
    `Too many requests: the limit is ${policy.limit} per ${h.windowSeconds} s; retry in ${retry} s.`,
    { limit: policy.limit, window: h.windowSeconds, retry_after: retry },
    retry,
  );
}

function checkCost(value: unknown): number {
  if (typeof value === 'number' && value >= 0 && Number.isFinite(value)) return Math.ceil(value);
  // A programming error in the user's cost function: surface it as a 500, not as a free request.
  throw new TypeError(`rateLimit.cost function returned ${describe(value)}; it must return a number of units (0 or more)`);
}

function isPromise<T>(value: T | Promise<T>): value is Promise<T> {
  return typeof (value as Promise<T> | undefined)?.then === 'function';
}
