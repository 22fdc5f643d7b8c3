import type { Request, Response } from 'express';
import { GENESIS, isHash } from '../lib/audit/chain';
import { AuditQueue, type AuditSinkStats } from '../lib/audit/queue';
import { buildRecord, summarizeBody, type AuditRequestState } from '../lib/audit/record';
import { buildSinks, type AuditSinkOption } from '../lib/audit/sinks';
import { auditStateOf, registerTracker, setAuditState, type AuditTracker } from '../lib/audit/tracking';
import { ConfigError, ServiceUnavailableError } from '../lib/errors';
import { defaultLogger, type Logger } from '../lib/logger';
import { checkCallback, checkOptions, oneOf } from '../lib/options';
import { runtimeOf, standaloneRuntime, type PerimeterRuntime } from '../lib/runtime';
import { describe, parseBytes, parseDuration } from '../lib/units';
import { onResponseDone } from '../lib/response-done';
import type { PerimeterHandler } from '../types/express-augment';

export type { AuditRecord } from '../lib/audit/record';
export type { AuditSinkOption, AuditSinkFunction, FileSinkOptions, RedisStreamSinkOptions } from '../lib/audit/sinks';
export type { AuditSinkStats } from '../lib/audit/queue';

/** Options of {@link auditLog}. */
export interface AuditLogOptions {
  /** Where records go: 'logger', `{ file }`, `{ redisStream, maxLen }`, `{ postgres }`, a function, or an array of several. Defaults to 'logger'. */
  sink?: AuditSinkOption | AuditSinkOption[];
  /** HTTP methods recorded (others pass after one set lookup). Defaults to ['POST', 'PUT', 'PATCH', 'DELETE']. */
  methods?: string[];
  /** Hash-chain the records of each sink (`seq`, `prev_hash`, `hash`) so an edit, a removal or a reordering shows in `verifyAuditChain`. Defaults to false. */
  chain?: boolean;
  /** `prev_hash` of a chain's first record: 64 lowercase hex characters. Defaults to 64 zeros. */
  genesis?: string;
  /** Record only responses with a status below 400. Defaults to false (failed writes are recorded, with their status). */
  onlySuccessful?: boolean;
  /** Add the request body as `changes`, secrets replaced by `[REDACTED]`, shortened to `maxBodySize`. Defaults to false. */
  includeBody?: boolean;
  /** Largest `changes` summary, as bytes or '2kb'. Defaults to '2kb'. */
  maxBodySize?: number | string;
  /** Requests of recorded methods not to record (`audit('EVENT')` on the route still records them). Defaults to none. */
  skip?: (req: Request) => boolean;
  /** Most records waiting per sink before `overflow` applies. Defaults to 10000. */
  maxQueue?: number;
  /** When a sink's queue is full: 'block' holds new recorded requests until there is room (503 SERVICE_UNAVAILABLE after `blockTimeout`), so no write runs unrecorded; 'drop' drops that sink's records, counted in `audit_records_dropped_total` and warned. Defaults to 'block'. */
  overflow?: 'block' | 'drop';
  /** Longest a request waits for room under overflow 'block' before 503. Defaults to '5s'. */
  blockTimeout?: number | string;
  /** Most records one sink write takes. Defaults to 100. */
  batchSize?: number;
  /** First retry delay of a failing sink; it doubles per attempt (with jitter). Defaults to '100ms'. */
  retryDelay?: number | string;
  /** Longest retry delay. Defaults to '30s'. */
  maxRetryDelay?: number | string;
  /** Failed attempts after which a batch is logged at error (ERR_AUDIT_UNDELIVERED, records included) instead of retried. Defaults to Infinity (retry until close). */
  maxRetries?: number;
  /** Longest one sink write may take before it counts as failed and is retried. Defaults to '10s'. */
  writeTimeout?: number | string;
  /** Longest `close()` waits for the queues to drain before logging what is left at error. Defaults to '5s'. */
  closeTimeout?: number | string;
  /** Logger of the 'logger' sink and of the queue's warnings. Defaults to the stack's logger (the default logger alone). */
  logger?: Logger;
}

/** The run-time methods of an {@link auditLog} handler (also `stack.middleware.auditLog`). */
export interface AuditLogMethods {
  /** Resolves true once every record so far is written, false if `timeout` (default `closeTimeout`) passes first. */
  flush(timeout?: number | string): Promise<boolean>;
  /** Flushes (up to `closeTimeout`), logs anything still undelivered at error, and closes the sinks. `stack.close()` calls it. */
  close(): Promise<void>;
  /** Per sink: records queued, written and dropped, and whether it is failing. */
  stats(): AuditSinkStats[];
}

// An interface, not an intersection: TypeScript infers a route's params from an intersection as `unknown`.
/** An {@link auditLog} middleware with its run-time methods. */
export interface AuditLogHandler extends PerimeterHandler, AuditLogMethods {}

declare module '../lib/create-stack' {
  interface StackMiddleware {
    /** The stack's audit log, with `flush`, `close` and `stats` (present unless `auditLog: false`). */
    auditLog: AuditLogHandler;
  }
}

const KNOWN = [
  'sink', 'methods', 'chain', 'genesis', 'onlySuccessful', 'includeBody', 'maxBodySize', 'skip', 'maxQueue', 'overflow',
  'blockTimeout', 'batchSize', 'retryDelay', 'maxRetryDelay', 'maxRetries', 'writeTimeout', 'closeTimeout', 'logger',
] as const;

const DEFAULT_METHODS = ['POST', 'PUT', 'PATCH', 'DELETE'];

/**
 * Records writes (POST, PUT, PATCH, DELETE by default) when their response finishes: timestamp,
 * event (`POST /api/games` → `GAME_CREATED`, or `audit('EVENT')` on the route), user_id,
 * tenant_id, action, route, ip, status, resource_id and request_id. Records reach the sinks
 * through a bounded queue off the request path; a failing sink is retried with backoff, and no
 * record is dropped silently.
 */
export function auditLog(options: AuditLogOptions = {}): AuditLogHandler {
  return createAuditLog(options);
}

/** {@link auditLog} bound to a stack's runtime (createStack uses it): the stack's logger, registry and Redis. */
export function createAuditLog(options: AuditLogOptions = {}, stackRuntime?: PerimeterRuntime): AuditLogHandler {
  checkOptions('auditLog', options, KNOWN);
  checkCallback('auditLog.skip', options.skip, '(req) => boolean');
  const methods = methodSet(options.methods ?? DEFAULT_METHODS);
  const chain = flag(options.chain ?? false, 'auditLog.chain');
  const genesis = options.genesis ?? GENESIS;
  if (!isHash(genesis)) throw new ConfigError('auditLog.genesis', `expected 64 lowercase hex characters (a SHA-256 digest), got ${describe(genesis)}`);
  const onlySuccessful = flag(options.onlySuccessful ?? false, 'auditLog.onlySuccessful');
  const includeBody = flag(options.includeBody ?? false, 'auditLog.includeBody');
  const maxBodySize = parseBytes(options.maxBodySize ?? '2kb', 'auditLog.maxBodySize');
  const skip = options.skip;
  if (skip !== undefined && typeof skip !== 'function') throw new ConfigError('auditLog.skip', `expected a function (req) => boolean, got ${describe(skip)}`);
  const maxQueue = count(options.maxQueue ?? 10_000, 'auditLog.maxQueue', 'a number of records like 10000');
  const overflow = oneOf('auditLog.overflow', options.overflow ?? 'block', ['block', 'drop'] as const);
  const blockTimeout = parseDuration(options.blockTimeout ?? '5s', 'auditLog.blockTimeout');
  const batchSize = count(options.batchSize ?? 100, 'auditLog.batchSize', 'a number of records like 100');
  const retryDelay = parseDuration(options.retryDelay ?? '100ms', 'auditLog.retryDelay');
  const maxRetryDelay = parseDuration(options.maxRetryDelay ?? '30s', 'auditLog.maxRetryDelay');
  if (retryDelay <= 0 || maxRetryDelay < retryDelay) {
    throw new ConfigError('auditLog.retryDelay', `expected a delay above 0 and at most maxRetryDelay (${maxRetryDelay} ms), got ${retryDelay} ms`);
  }
  const maxRetries = options.maxRetries ?? Infinity;
  if (maxRetries !== Infinity && (typeof maxRetries !== 'number' || !Number.isInteger(maxRetries) || maxRetries < 0)) {
    throw new ConfigError('auditLog.maxRetries', `expected a whole number of retries, or Infinity to retry until close, got ${describe(maxRetries)}`);
  }
  const writeTimeout = parseDuration(options.writeTimeout ?? '10s', 'auditLog.writeTimeout');
  const closeTimeout = parseDuration(options.closeTimeout ?? '5s', 'auditLog.closeTimeout');
  if (options.logger !== undefined && (typeof options.logger !== 'object' || options.logger === null || typeof options.logger.info !== 'function')) {
    throw new ConfigError('auditLog.logger', `expected a winston logger, got ${describe(options.logger)}`);
  }

  // Alone, the handler learns its runtime (logger, registry) from the first request it records.
  let bound = stackRuntime;
  const runtime = (): PerimeterRuntime => bound ?? standaloneRuntime();
  const logger = (): Logger => options.logger ?? runtime().logger;
  const { sinks, owned } = buildSinks(options.sink ?? 'logger', {
    stores: stackRuntime?.stores,
    logger,
    setupLogger: options.logger ?? stackRuntime?.logger ?? defaultLogger(),
    chain,
    genesis,
    writeTimeout,
  });
  const queue = new AuditQueue(sinks, {
    maxQueue, overflow, batchSize, retryDelay, maxRetryDelay, maxRetries, writeTimeout, chain, genesis,
    logger,
    registry: () => runtime().registry,
  });

  function finish(req: Request, res: Response, state: AuditRequestState): void {
    try {
      if (state.event === false) return;
      if (onlySuccessful && (res.statusCode >= 400 || !res.writableFinished)) return;
      queue.push(buildRecord(req, res, state));
    } catch (err) {
      // A throw here would escape from a socket event and crash the process.
      logger().error('Audit record could not be built', { code: 'ERR_AUDIT_UNDELIVERED', method: req.method, path: req.path, request_id: req.id, err });
    }
  }

  const tracker: AuditTracker = {
    track(req, res) {
      const state: AuditRequestState = {};
      setAuditState(req, state);
      if (includeBody) {
        // Taken now (bodyParser ran before): what the handler does to req.body later is not the request.
        const changes = summarizeBody(req.body, maxBodySize);
        if (changes !== undefined) state.changes = changes;
      }
      // Only recorded requests pay for this: the response's `id` names what a POST created.
      const json = res.json;
      res.json = function auditedJson(this: Response, body?: unknown) {
        if (state.responseBody === undefined) state.responseBody = body;
        return json.call(this, body);
      } as Response['json'];
      onResponseDone(res, () => finish(req, res, state));
      return state;
    },
  };

  let lastApp: unknown;
  const handler = function auditLogMiddleware(req: Request, res: Response, next: (err?: unknown) => void): void {
    if (req.app !== lastApp) {
      // So audit('EVENT') on a route this middleware let pass unrecorded (a GET) finds it.
      lastApp = req.app;
      if (req.app !== undefined) registerTracker(req.app, tracker);
    }
    if (!methods.has(req.method)) return next();
    bound ??= runtimeOf(req);
    // A sub-app under an app that already records this request.
    if (auditStateOf(req) !== undefined) return next();
    try {
      if (skip !== undefined && skip(req)) return next();
    } catch (err) {
      return next(err);
    }
    if (overflow === 'block' && !queue.hasRoom()) {
      // Backpressure at the door: the write waits (or is refused) rather than running unrecorded.
      queue
        .waitForRoom(blockTimeout)
        .then((room) => {
          if (!room) {
            return next(new ServiceUnavailableError('The audit log is not keeping up, so this write was not processed; retry shortly.').withHeaders({ 'Retry-After': '1' }));
          }
          tracker.track(req, res);
          next();
        })
        .catch(next);
      return;
    }
    tracker.track(req, res);
    next();
  } as AuditLogHandler;

  handler.flush = async (timeout) => queue.flush(timeout === undefined ? closeTimeout : parseDuration(timeout, 'auditLog.flush(timeout)'));
  let closing: Promise<void> | undefined;
  handler.close = () =>
    (closing ??= (async () => {
      await queue.close(closeTimeout);
      await Promise.all(owned.map((stores) => stores.close().catch(() => undefined)));
    })());
  handler.stats = () => queue.stats();
  return handler;
}

function methodSet(value: unknown): Set<string> {
  if (!Array.isArray(value) || value.length === 0 || value.some((m) => typeof m !== 'string' || !/^[A-Za-z]+$/.test(m))) {
    throw new ConfigError('auditLog.methods', `expected a non-empty array of HTTP methods like ['POST', 'PUT', 'PATCH', 'DELETE'], got ${describe(value)}`);
  }
  return new Set((value as string[]).map((m) => m.toUpperCase()));
}

function flag(value: unknown, option: string): boolean {
  if (typeof value !== 'boolean') throw new ConfigError(option, `expected true or false, got ${describe(value)}`);
  return value;
}

function count(value: unknown, option: string, hint: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) throw new ConfigError(option, `expected ${hint} (a whole number ≥ 1), got ${describe(value)}`);
  return value;
}
