import type { RequestHandler } from 'express';
import type { StackConfig } from './create-stack';
import type { PerimeterRuntime } from './runtime';
import { stackAuth } from '../middleware/auth';
import { stackAuditLog } from '../middleware/audit-log';
import { stackBodyParser } from '../middleware/body-parser';
import { stackCache } from '../middleware/cache';
import { stackCircuitBreaker } from '../middleware/circuit-breaker';
import { cors } from '../middleware/cors';
import { stackCredits } from '../middleware/credits';
import { stackHealth } from '../middleware/health';
import { stackLoadShedding } from '../middleware/load-shedding';
import { stackFeatureFlags } from '../middleware/feature-flags';
import { stackRateLimit } from '../middleware/rate-limit';
import { stackIdempotency } from '../middleware/idempotency';
import { stackIpFilter } from '../middleware/ip-filter';
import { stackMetrics } from '../middleware/metrics';
import { requestId } from '../middleware/request-id';
import { requestLogger } from '../middleware/request-logger';
import { sanitize } from '../middleware/sanitize';
import { stackSecurityHeaders } from '../middleware/security-headers';
import { stackSizeLimit } from '../middleware/size-limit';
import { tenant } from '../middleware/tenant';
import { timeout } from '../middleware/timeout';

/**
 * A middleware as createStack builds it; run-time methods (block, invalidate…) hang off the
 * handler. `onEntry` runs on every request as it enters the stack, before any middleware can
 * answer (securityHeaders: every answer carries its headers, whichever middleware gives it).
 */
export type StackHandler = RequestHandler & {
  close?: () => Promise<void> | void;
  extra?: StackExtra[];
  onEntry?: (res: import('node:http').ServerResponse) => void;
};

/**
 * A second handler an entry needs further down the chain (sizeLimit's per-tier check must run
 * after auth): createStack places it right after `after` when that middleware is on, else right
 * after the entry itself, and lists it in `order` under `name`.
 */
export interface StackExtra {
  name: string;
  after: string;
  handler: RequestHandler;
}

/** What an entry's builder is given besides its own options. */
export interface EntryContext {
  runtime: PerimeterRuntime;
  /** The whole stack config, for entries that read a neighbour's options (bodyParser reads sizeLimit.max). */
  config: StackConfig;
}

/** One named place of the documented order; `O` is its options type in {@link StackConfig}. */
export interface StackEntry<O = unknown> {
  name: string;
  /** On when the config does not mention it. */
  defaultOn: boolean;
  build(options: O, ctx: EntryContext): StackHandler;
}

/**
 * The documented order, outer to inner; the README gives the reason for each place.
 * requestId → requestLogger → metrics → health → securityHeaders → loadShedding → cors → ipFilter → sizeLimit → timeout →
 * bodyParser → auth → tenant → rateLimit → idempotency → credits → sanitize → auditLog → featureFlags →
 * circuitBreaker → cache.
 */
export const STACK_ORDER = [
  'requestId',
  'requestLogger',
  'metrics',
  'health',
  'securityHeaders',
  'loadShedding',
  'cors',
  'ipFilter',
  'sizeLimit',
  'timeout',
  'bodyParser',
  'auth',
  'tenant',
  'rateLimit',
  'idempotency',
  'credits',
  'sanitize',
  'auditLog',
  'featureFlags',
  'circuitBreaker',
  'cache',
] as const;

/** A middleware name of the documented order. */
export type StackEntryName = (typeof STACK_ORDER)[number];

/** The options object a config key takes (`true` and `false` are settled by createStack). */
export type StackEntryOptions<K extends StackEntryName> = Exclude<NonNullable<StackConfig[K]>, boolean>;

/**
 * The entries this version provides, keyed by name. One convention: an entry is built by its
 * public factory `x(options)` when the stack adds nothing, else by its module's internal
 * `stackX(options, ctx)`, which says what the stack changes (its stores, logger, neighbours'
 * options) beside the code it changes. Route-level factories behind a stack find it per request
 * (`perRuntime`).
 */
export const STACK_ENTRIES: { [K in StackEntryName]: StackEntry<StackEntryOptions<K>> } = {
  requestId: { name: 'requestId', defaultOn: true, build: (o) => requestId(o) },
  requestLogger: { name: 'requestLogger', defaultOn: true, build: (o) => requestLogger(o) },
  // Bound to the stack's registry at setup, so stack.metricsRegistry holds the series before the first request.
  metrics: { name: 'metrics', defaultOn: true, build: stackMetrics },
  // Right after metrics (probes are counted) and before everything that could refuse, delay or record
  // a probe; it answers without calling the rest of the chain. Its readiness includes the stack's stores.
  health: { name: 'health', defaultOn: true, build: stackHealth },
  // Its headers are set as the request enters the stack (onEntry), so the answers of metrics and
  // health, which come before its place, carry them too.
  securityHeaders: { name: 'securityHeaders', defaultOn: true, build: stackSecurityHeaders },
  // Off until configured. Right after health and metrics (probes and scrapes are never shed) and
  // before everything that costs: an overloaded process refuses before parsing, auth or Redis.
  loadShedding: { name: 'loadShedding', defaultOn: false, build: stackLoadShedding },
  cors: { name: 'cors', defaultOn: false, build: (o) => cors(o) },
  // Off until configured.
  auth: { name: 'auth', defaultOn: false, build: stackAuth },
  // On with no rules: it then only enforces run-time blocks, so stack.middleware.ipFilter.block() works out of the box.
  ipFilter: { name: 'ipFilter', defaultOn: true, build: stackIpFilter },
  rateLimit: { name: 'rateLimit', defaultOn: true, build: stackRateLimit },
  // Off until configured. After auth, tenant and the limiters (a replay is a request like any other for
  // them, and the caller who owns the key is known), before credits and everything after (a replay
  // runs none of it, so nothing is charged twice). Its lock outlives the stack's timeout.
  idempotency: { name: 'idempotency', defaultOn: false, build: stackIdempotency },
  // The stack's own stores, so stack.middleware.credits.grant() credits what its requests spend.
  credits: { name: 'credits', defaultOn: false, build: stackCredits },
  // 1 MB by default; with tiers it also places a check right after auth (see StackExtra).
  sizeLimit: { name: 'sizeLimit', defaultOn: true, build: stackSizeLimit },
  // After auth and the limiters (rejected requests are not scanned), before routing: params are scanned by a route-level sanitize().
  sanitize: { name: 'sanitize', defaultOn: true, build: (o) => sanitize(o) },
  // After the limiters and sanitize (a refused request ran no write), before the routes; the logger sink by
  // default, the stack's Redis for { redisStream }; stack.close() flushes its queue.
  auditLog: { name: 'auditLog', defaultOn: true, build: stackAuditLog },
  // 30 s by default; a route-level timeout() replaces the deadline for its route.
  timeout: { name: 'timeout', defaultOn: true, build: (o) => timeout(o) },
  // Off until configured; after auth (the token's tenant claim is known) and before the limiters (keys join the tenant).
  tenant: { name: 'tenant', defaultOn: false, build: (o) => tenant(o) },
  // Off until configured; bound to the stack's stores (source 'redis') and logger, so stack.middleware.featureFlags.set() works at once.
  featureFlags: { name: 'featureFlags', defaultOn: false, build: stackFeatureFlags },
  // On by default with no ttl: ETag/304 only. Bound to the stack, so stack.middleware.cache.invalidate() acts on its stores.
  cache: { name: 'cache', defaultOn: true, build: stackCache },
  // Off until configured: one breaker for the whole stack, named 'stack' (it runs before routing, so it cannot tell routes apart; per-route breakers go on the routes).
  circuitBreaker: { name: 'circuitBreaker', defaultOn: false, build: stackCircuitBreaker },
  bodyParser: { name: 'bodyParser', defaultOn: true, build: stackBodyParser },
};
