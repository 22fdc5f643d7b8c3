import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { Registry } from 'prom-client';
import { errorNormalizer, type ErrorNormalizerOptions } from '../middleware/error-normalizer';
import type { HealthHandler, HealthOptions } from '../middleware/health';
import type { IdempotencyOptions } from '../middleware/idempotency';
import type { LoadSheddingOptions } from '../middleware/load-shedding';
import { notFound } from '../middleware/not-found';
import { createErrorResponder } from './error-response';
import { ConfigError } from './errors';
import { checkForwardedFor } from './forwarded-for';
import { GracefulShutdown, type AttachOptions, type ShutdownOptions } from './lifecycle/graceful-shutdown';
import { waitForStores, type ReadyOptions } from './lifecycle/ready';
import { createLogger, type Logger, type LoggerOptions } from './logger';
import { nearest, refuseRequest } from './options';
import { describe } from './units';
import { attachRuntime, type PerimeterRuntime } from './runtime';
import { STACK_ENTRIES, STACK_ORDER, type StackEntry, type StackHandler } from './stack-entries';
import { createStores } from './stores';
import { parsePostgresOption } from './postgres/options';
import type { PostgresOption } from './postgres/types';
import type { RedisOption } from './stores/redis-connection';
import type { Stores } from './stores/types';
import { openSharedStack } from './shared-stacks';
import { warnOnce, withSetupLogger } from './warnings';
import type { AuditLogOptions } from '../middleware/audit-log';
import type { AuthOptions } from '../middleware/auth';
import type { BodyParserOptions } from '../middleware/body-parser';
import type { CacheOptions } from '../middleware/cache';
import type { CircuitBreakerOptions } from '../middleware/circuit-breaker';
import type { PerimeterCorsOptions } from '../middleware/cors';
import type { CreditsOptions } from '../middleware/credits';
import type { FeatureFlagsOptions } from '../middleware/feature-flags';
import type { IpFilterOptions } from '../middleware/ip-filter';
import type { MetricsOptions } from '../middleware/metrics';
import type { RateLimitOptions } from '../middleware/rate-limit';
import type { RequestIdOptions } from '../middleware/request-id';
import type { RequestLoggerOptions } from '../middleware/request-logger';
import type { SanitizeOptions } from '../middleware/sanitize';
import type { SecurityHeadersOptions } from '../middleware/security-headers';
import type { SizeLimitOptions } from '../middleware/size-limit';
import type { TenantOptions } from '../middleware/tenant';
import type { TimeoutOptions } from '../middleware/timeout';
import type { PerimeterErrorHandler, PerimeterHandler } from '../types/express-augment';

/** A user's middleware placed at a named point of the chain. */
export interface InsertedMiddleware {
  /** Name it appears under in `order`. */
  name: string;
  handler: RequestHandler;
  /** Place it just before this middleware. */
  before?: string;
  /** Place it just after this middleware. */
  after?: string;
}

/**
 * Options of {@link createStack}. Each middleware key takes that middleware's options, `true` for
 * its defaults or `false` to leave it out; a key left unset keeps the middleware's default
 * (on or off, as noted). Every key is typed, so a misspelled key or option, or a value of the
 * wrong type, fails to compile (and throws ConfigError at run time for JavaScript users).
 */
export interface StackConfig {
  /** Redis URL, ioredis client or Cluster: every store of the stack moves to it. Defaults to bounded memory stores. */
  redis?: RedisOption;
  /** Prefix of every Redis key and channel the stack uses. Defaults to 'perimeter:'. */
  keyPrefix?: string;
  /**
   * PostgreSQL for the durable state: a URL, a `pg.Pool` (never closed by the stack), or
   * `{ url | pool, tablePrefix, statementTimeout }`. Credits keep their balances and ledger there
   * (with `redis` too, everything else stays on Redis); the tables are created when missing.
   * Defaults to none.
   */
  postgres?: PostgresOption;
  /** A winston logger, or options for the default one. Defaults to JSON on stdout at LOG_LEVEL. */
  logger?: Logger | LoggerOptions;
  /** User middleware placed at named points. Defaults to none. */
  insert?: InsertedMiddleware[];
  /** Express `trust proxy` value, applied to the app on the first request. Defaults to leaving the app's setting. */
  trustProxy?: boolean | number | string | string[];
  /** Request ids (`X-Request-ID`), `req.id` and `req.context`. On by default. */
  requestId?: RequestIdOptions | boolean;
  /** One JSON log line per request, and `X-Response-Time`. On by default. */
  requestLogger?: RequestLoggerOptions | boolean;
  /** Prometheus metrics and `/metrics`. On by default. */
  metrics?: MetricsOptions | boolean;
  /** helmet with API defaults. On by default. */
  securityHeaders?: SecurityHeadersOptions | boolean;
  /** 503 OVERLOADED while the event loop, heap, RSS or in-flight requests are over a threshold. Off until configured. */
  loadShedding?: LoadSheddingOptions | boolean;
  /** The `cors` package, checked at setup. Off until configured. */
  cors?: PerimeterCorsOptions | boolean;
  /** IP allow and deny lists, run-time blocks, auto-ban. On by default (no rules: only run-time blocks). */
  ipFilter?: IpFilterOptions | boolean;
  /** Largest body accepted, per tier and per route. On by default at '1mb'. */
  sizeLimit?: SizeLimitOptions | boolean;
  /** Deadline of each request, and `req.signal`. On by default at '30s'. */
  timeout?: TimeoutOptions | boolean;
  /** JSON and urlencoded body parsing; its limit follows `sizeLimit`. On by default. */
  bodyParser?: BodyParserOptions | boolean;
  /** JWT and API key authentication. Off until configured. */
  auth?: AuthOptions | boolean;
  /** Tenant resolution. Off until configured. */
  tenant?: TenantOptions | boolean;
  /** Rate limits per client, tier and day. On by default at 100 per minute per client. */
  rateLimit?: RateLimitOptions | boolean;
  /** Credits spent per request. Off until configured. */
  credits?: CreditsOptions | boolean;
  /** Attack detection in query, body and params. On by default. */
  sanitize?: SanitizeOptions | boolean;
  /** Audit records of writes. On by default (to the logger). */
  auditLog?: AuditLogOptions | boolean;
  /** Feature flags (`req.features`). Off until configured. */
  featureFlags?: FeatureFlagsOptions | boolean;
  /** One circuit breaker for the whole stack. Off until configured. */
  circuitBreaker?: CircuitBreakerOptions | boolean;
  /** ETag/304, Cache-Control and the server-side cache. On by default (ETag/304 only). */
  cache?: CacheOptions | boolean;
  /** Options of the `notFound` + `errorNormalizer` pair in `errorHandler`, or `false` for `next(err)`. On by default. */
  errorNormalizer?: ErrorNormalizerOptions | boolean;
  /** `false` leaves 404 NOT_FOUND for unmatched routes out of `errorHandler`. On by default. */
  notFound?: boolean;
  /** Liveness and readiness probes (`/health`, `/health/ready`). On by default. */
  health?: HealthOptions | boolean;
  /** Replays the outcome of a request retried with the same `Idempotency-Key`. Off until configured. */
  idempotency?: IdempotencyOptions | boolean;
}

/**
 * The enabled middleware of a stack by name. A middleware with run-time methods declares its
 * typed entry here by declaration merging, so `stack.middleware.credits.grant()` type-checks.
 */
export interface StackMiddleware {
  [name: string]: StackHandler;
}

/** What `createStack()` returns: a middleware that runs the whole chain, plus its parts. */
export interface Stack extends PerimeterHandler {
  /** `notFound` and `errorNormalizer`: `app.use(stack.errorHandler)` after the routes. */
  errorHandler: [PerimeterHandler, PerimeterErrorHandler];
  /** Closes timers, flushes queues and closes the Redis connections and the PostgreSQL pool the stack opened. */
  close(): Promise<void>;
  /** Names of the enabled middleware, outer to inner. */
  order: string[];
  /** Each enabled middleware by name, with its run-time methods. */
  middleware: StackMiddleware;
  /** The stores every middleware of the stack shares. */
  stores: Stores;
  /** The prom-client registry the stack's metrics live in. */
  metricsRegistry: Registry;
  /** The stack's logger. */
  logger: Logger;
  /** Resolves once the stack's stores are connected (Redis: ready; a Cluster: slots known; PostgreSQL: its tables exist); rejects after `timeout` (default '30s'). Await it before listening. */
  ready(options?: ReadyOptions): Promise<void>;
  /**
   * Sets safe server timeouts where Node's defaults are left, follows the server's connections,
   * and on `signals` runs {@link shutdown}, then exits (0 after a clean drain, 1 otherwise)
   * unless `exit: false`. A repeated SIGTERM is ignored; a second SIGINT exits at once.
   */
  attach(server: import('node:http').Server, options?: AttachOptions): void;
  /**
   * Graceful shutdown, once (later calls return the same promise): readiness 503 draining at
   * once; after `drainDelay` the listener closes; responses carry `Connection: close`; accepted
   * requests finish within `grace` (any left are ended and counted in one log line); then
   * {@link close}.
   */
  shutdown(options?: ShutdownOptions): Promise<void>;
}

const TOP_LEVEL_KEYS = ['redis', 'keyPrefix', 'postgres', 'logger', 'insert', 'trustProxy', 'errorNormalizer', 'notFound'];

/** Builds every request-phase middleware in the documented order from one config. */
export function createStack(config: StackConfig = {}): Stack {
  refuseRequest('createStack', config, 'createStack(config)');
  if (config === null || typeof config !== 'object' || Array.isArray(config)) {
    throw new ConfigError('createStack', 'expected a config object like { rateLimit: { limit: 100, window: \'1m\' } }');
  }
  const known = [...TOP_LEVEL_KEYS, ...STACK_ORDER];
  for (const key of Object.keys(config)) {
    if (!known.includes(key)) {
      const near = nearest(key, known);
      throw new ConfigError(key, `is not a createStack option${near ? `; did you mean '${near}'?` : ''}`);
    }
  }

  const logger = isLogger(config.logger) ? config.logger : createLogger(config.logger as LoggerOptions | undefined);
  if (config.redis === undefined && process.env.NODE_ENV === 'production') warnOnce(logger, 'ERR_MEMORY_STORE_IN_PRODUCTION');
  const postgres = config.postgres === undefined ? undefined : parsePostgresOption(config.postgres);
  const stores = createStores(config.redis, logger, config.keyPrefix, postgres);
  const registry = new Registry();
  const normalizerOptions = typeof config.errorNormalizer === 'object' ? config.errorNormalizer : {};
  const runtime: PerimeterRuntime = {
    logger,
    stores,
    registry,
    respondError: createErrorResponder(normalizerOptions, (req) => req.context?.log ?? logger),
  };

  const names: string[] = [];
  const handlers: StackHandler[] = [];
  const middleware: Record<string, StackHandler> = {};
  const onEntry: Array<NonNullable<StackHandler['onEntry']>> = [];
  try {
    // The factories' setup warnings (a window of 60 ms…) go to the stack's logger.
    withSetupLogger(logger, () => {
      for (const name of STACK_ORDER) {
        const value: unknown = config[name];
        const entry = STACK_ENTRIES[name] as StackEntry<object>;
        if (value === false || (value === undefined && !entry.defaultOn)) continue;
        const handler = entry.build(value === true || value === undefined ? {} : entryOptions(name, value), { runtime, config });
        names.push(name);
        handlers.push(handler);
        middleware[name] = handler;
        if (handler.onEntry !== undefined) onEntry.push(handler.onEntry);
      }
    });
    placeExtras(names, handlers, middleware);
    for (const item of config.insert ?? []) insertAt(names, handlers, middleware, item);
  } catch (err) {
    void stores.close();
    throw err;
  }

  // While it is open, a route-level rateLimit that no request of a stack reaches says it counts in memory.
  const closeShared = stores.kind === 'redis' ? openSharedStack(logger) : undefined;
  let closed: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closed ??= (async () => {
      lifecycle.detach();
      closeShared?.();
      for (const handler of [...handlers].reverse()) await handler.close?.();
      await stores.close();
    })());
  const lifecycle = new GracefulShutdown({
    logger,
    onDraining: () => (middleware.health as HealthHandler | undefined)?.drain(),
    close,
    refusesMissingHost: middleware.requestId !== undefined,
  });

  let trustProxyApplied = config.trustProxy === undefined;
  const count = handlers.length;
  const stack = function perimeterStack(req: Request, res: Response, out: NextFunction): void {
    // The first thing done to the request: it and its response go to dictionary mode (see
    // toDictionaryMode in lib/request-slots) before the chain adds anything to them.
    attachRuntime(req, runtime);
    if (!trustProxyApplied) {
      req.app.set('trust proxy', config.trustProxy);
      trustProxyApplied = true;
    }
    checkForwardedFor(req, logger);
    lifecycle.markResponse(res);
    for (let i = 0; i < onEntry.length; i++) onEntry[i](res);
    let index = 0;
    // A plain loop over the handlers (no per-layer path matching, as a Router would do).
    const next = (err?: unknown): void => {
      if (err === 'route' || err === 'router') return out();
      if (err !== undefined && err !== null) return out(err);
      if (index >= count) return out();
      const handler = handlers[index++];
      try {
        const result = handler(req, res, next) as unknown;
        if (result instanceof Promise) result.catch(next);
      } catch (thrown) {
        next(thrown ?? new Error('A middleware threw a non-error value'));
      }
    };
    next();
  } as Stack;

  const errorHandlers: [PerimeterHandler, PerimeterErrorHandler] = [
    config.notFound === false ? (_req, _res, next) => next() : notFound(),
    config.errorNormalizer === false ? (err, _req, _res, next) => next(err) : errorNormalizer(normalizerOptions),
  ];
  // errorNormalizer sends through the stack's responder, so timeouts and normal errors look alike.
  Object.assign(stack, {
    errorHandler: errorHandlers,
    order: names,
    middleware,
    stores,
    metricsRegistry: registry,
    logger,
    close,
    ready: (options?: ReadyOptions) => waitForStores(stores.readiness ?? [], options),
    attach: (server: import('node:http').Server, options?: AttachOptions) => lifecycle.attach(server, options),
    shutdown: (options?: ShutdownOptions) => lifecycle.shutdown(options).then(() => undefined),
  });
  return stack;
}

// An entry's second half (StackExtra) goes right after the middleware it waits for, or right
// after the entry itself when that one is off: sizeLimit's per-tier check runs after auth.
function placeExtras(names: string[], handlers: StackHandler[], middleware: Record<string, StackHandler>): void {
  for (const owner of [...names]) {
    for (const extra of middleware[owner].extra ?? []) {
      const at = names.indexOf(names.includes(extra.after) ? extra.after : owner) + 1;
      names.splice(at, 0, extra.name);
      handlers.splice(at, 0, extra.handler);
      middleware[extra.name] = extra.handler;
    }
  }
}

function insertAt(names: string[], handlers: StackHandler[], middleware: Record<string, StackHandler>, item: InsertedMiddleware): void {
  if (item === null || typeof item !== 'object' || typeof item.handler !== 'function' || typeof item.name !== 'string') {
    throw new ConfigError('insert', "each entry needs { name, handler } and one of before/after, e.g. { after: 'bodyParser', name: 'session', handler }");
  }
  const target = item.before ?? item.after;
  if ((item.before === undefined) === (item.after === undefined)) {
    throw new ConfigError(`insert.${item.name}`, 'give exactly one of before or after');
  }
  const at = names.indexOf(target as string);
  if (at === -1) {
    const near = nearest(String(target), names);
    throw new ConfigError(`insert.${item.name}`, `'${String(target)}' is not an enabled middleware${near ? `; did you mean '${near}'?` : ''} (enabled: ${names.join(', ')})`);
  }
  const position = item.before !== undefined ? at : at + 1;
  names.splice(position, 0, item.name);
  middleware[item.name] = item.handler;
  handlers.splice(position, 0, item.handler);
}

/** A middleware key's value, checked to be an options object: JavaScript callers get no compile-time check. */
function entryOptions(name: string, value: unknown): object {
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value;
  if (typeof value === 'function') {
    throw new ConfigError(
      name,
      `expected an options object, true or false, got a function: write ${name}: { … } with its options (createStack builds the middleware itself), or mount a middleware of your own with insert: [{ name, handler, after }]`,
    );
  }
  throw new ConfigError(name, `expected an options object, true or false, got ${describe(value)}`);
}

function isLogger(value: unknown): value is Logger {
  return typeof value === 'object' && value !== null && typeof (value as Logger).log === 'function' && typeof (value as Logger).child === 'function';
}
