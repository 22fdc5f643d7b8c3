import type { ErrorRequestHandler, NextFunction, Request, RequestHandler, Response } from 'express';
import { Registry } from 'prom-client';
import { errorNormalizer, type ErrorNormalizerOptions } from '../middleware/error-normalizer';
import type { IdempotencyOptions } from '../middleware/idempotency';
import { notFound } from '../middleware/not-found';
import { createErrorResponder } from './error-response';
import { ConfigError } from './errors';
import { checkForwardedFor } from './forwarded-for';
import { createLogger, type Logger, type LoggerOptions } from './logger';
import { nearest } from './options';
import { attachRuntime, type PerimeterRuntime } from './runtime';
import { STACK_ENTRIES, STACK_ORDER, type StackHandler } from './stack-entries';
import { createStores } from './stores';
import type { RedisOption } from './stores/redis-connection';
import type { Stores } from './stores/types';
import { warnOnce } from './warnings';

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

/** Options of {@link createStack}: each middleware key takes its options, `true` for defaults or `false` to leave it out. */
export interface StackConfig {
  /** Redis URL, ioredis client or Cluster: every store of the stack moves to it. Defaults to bounded memory stores. */
  redis?: RedisOption;
  /** Prefix of every Redis key and channel the stack uses. Defaults to 'perimeter:'. */
  keyPrefix?: string;
  /** A winston logger, or options for the default one. Defaults to JSON on stdout at LOG_LEVEL. */
  logger?: Logger | LoggerOptions;
  /** User middleware placed at named points. */
  insert?: InsertedMiddleware[];
  /** Express `trust proxy` value, applied to the app on the first request. Defaults to leaving the app's setting. */
  trustProxy?: boolean | number | string | string[];
  /** Options of the `notFound` + `errorNormalizer` pair in `errorHandler`. */
  errorNormalizer?: ErrorNormalizerOptions | boolean;
  notFound?: boolean;
  /** Replays the outcome of a request retried with the same `Idempotency-Key`. Defaults to off. */
  idempotency?: IdempotencyOptions | boolean;
  /** Each middleware of the documented order, by name. */
  [middleware: string]: unknown;
}

/**
 * The enabled middleware of a stack by name. A middleware with run-time methods declares its
 * typed entry here by declaration merging, so `stack.middleware.credits.grant()` type-checks.
 */
export interface StackMiddleware {
  [name: string]: StackHandler;
}

/** What `createStack()` returns: a middleware that runs the whole chain, plus its parts. */
export interface Stack extends RequestHandler {
  /** `notFound` and `errorNormalizer`: `app.use(stack.errorHandler)` after the routes. */
  errorHandler: [RequestHandler, ErrorRequestHandler];
  /** Closes timers, flushes queues and closes the Redis connections the stack opened. */
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
}

const TOP_LEVEL_KEYS = ['redis', 'keyPrefix', 'logger', 'insert', 'trustProxy', 'errorNormalizer', 'notFound'];

/** Builds every request-phase middleware in the documented order from one config. */
export function createStack(config: StackConfig = {}): Stack {
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
  const stores = createStores(config.redis, logger, config.keyPrefix);
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
  try {
    for (const name of STACK_ORDER) {
      const value = config[name];
      const entry = STACK_ENTRIES[name];
      if (entry === undefined) {
        if (value !== undefined && value !== false) {
          throw new ConfigError(name, 'is not available in this version of express-perimeter; remove the key or upgrade');
        }
        continue;
      }
      if (value === false || (value === undefined && !entry.defaultOn)) continue;
      if (value !== undefined && value !== true && (typeof value !== 'object' || value === null || Array.isArray(value))) {
        throw new ConfigError(name, `expected an options object, true or false, got ${Array.isArray(value) ? 'an array' : typeof value}`);
      }
      const handler = entry.build(value === true || value === undefined ? {} : (value as Record<string, unknown>), { runtime, config });
      names.push(name);
      handlers.push(handler);
      middleware[name] = handler;
    }
    placeExtras(names, handlers, middleware);
    for (const item of config.insert ?? []) insertAt(names, handlers, middleware, item);
  } catch (err) {
    void stores.close();
    throw err;
  }

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

  const errorHandlers: [RequestHandler, ErrorRequestHandler] = [
    config.notFound === false ? (_req, _res, next) => next() : notFound(),
    config.errorNormalizer === false ? (err, _req, _res, next) => next(err) : errorNormalizer(normalizerOptions),
  ];
  // errorNormalizer sends through the stack's responder, so timeouts and normal errors look alike.
  let closed: Promise<void> | undefined;
  Object.assign(stack, {
    errorHandler: errorHandlers,
    order: names,
    middleware,
    stores,
    metricsRegistry: registry,
    logger,
    close: () =>
      (closed ??= (async () => {
        for (const handler of [...handlers].reverse()) await handler.close?.();
        await stores.close();
      })()),
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
    throw new ConfigError('insert', "each entry needs { name, handler } and one of before/after, e.g. { after: 'cors', name: 'session', handler }");
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

function isLogger(value: unknown): value is Logger {
  return typeof value === 'object' && value !== null && typeof (value as Logger).log === 'function' && typeof (value as Logger).child === 'function';
}
