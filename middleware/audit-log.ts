import type { Request, Response } from 'express';
import { GENESIS, isHash } from '../lib/audit/chain';
import { AuditQueue, type AuditSinkStats } from '../lib/audit/queue';
import { buildRecord, summarizeBody, type AuditRequestState } from '../lib/audit/record';
import { buildSinks, type AuditSinkOption } from '../lib/audit/sinks';
import { auditStateOf, registerTracker, setAuditState, type AuditTracker } from '../lib/audit/tracking';
import { ConfigError, ServiceUnavailableError } from '../lib/errors';
import { defaultLogger, type Logger } from '../lib/logger';
import { bytes, callback, choice, count, defineOptions, duration, flag, httpMethods, loggerOption, option, passThrough } from '../lib/options';
import { runtimeOf, standaloneRuntime, type PerimeterRuntime } from '../lib/runtime';
import { describe, parseDuration } from '../lib/units';
import { onResponseDone } from '../lib/response-done';
import type { EntryContext } from '../lib/stack-entries';
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

// Every option of auditLog() once: its default and its check (the interface's JSDoc is its doc).
// `sink` is checked as the sinks are built (buildSinks), with the stack's stores at hand.
const parseOptions = defineOptions<AuditLogOptions>()('auditLog', {
  sink: passThrough<AuditSinkOption | AuditSinkOption[]>("'logger', { file }, { redisStream }, a function, or an array of these"),
  methods: httpMethods(['POST', 'PUT', 'PATCH', 'DELETE']),
  chain: flag(false),
  genesis: option('64 lowercase hex characters', genesisHash, '64 zeros'),
  onlySuccessful: flag(false),
  includeBody: flag(false),
  maxBodySize: bytes('2kb'),
  skip: callback<(req: Request) => boolean>('(req) => boolean'),
  maxQueue: count(10_000, 'records'),
  overflow: choice(['block', 'drop'], 'block'),
  blockTimeout: duration('5s'),
  batchSize: count(100, 'records'),
  retryDelay: duration('100ms'),
  maxRetryDelay: duration('30s'),
  maxRetries: option('a whole number of retries, or Infinity', retries, 'Infinity'),
  writeTimeout: duration('10s'),
  closeTimeout: duration('5s'),
  logger: loggerOption(),
});

/**
 * Records writes (POST, PUT, PATCH, DELETE by default) when their response finishes: timestamp,
 * event (`POST /api/games` → `GAME_CREATED`, or `audit('EVENT')` on the route), user_id,
 * tenant_id, action, route, ip, status, resource_id and request_id. Records reach the sinks
 * through a bounded queue off the request path; a failing sink is retried with backoff, and no
 * record is dropped silently.
 */
export function auditLog(options: AuditLogOptions = {}): AuditLogHandler {
  return buildAuditLog(options, undefined);
}

/** @internal The stack's audit log (createStack builds it): the stack's logger, registry and Redis. */
export function stackAuditLog(options: AuditLogOptions, { runtime }: EntryContext): AuditLogHandler {
  return buildAuditLog(options, runtime);
}

function buildAuditLog(options: AuditLogOptions, stackRuntime: PerimeterRuntime | undefined): AuditLogHandler {
  const o = parseOptions(options);
  const { methods, chain, genesis, onlySuccessful, includeBody, maxBodySize, skip, maxQueue, overflow, blockTimeout, batchSize } = o;
  const { retryDelay, maxRetryDelay, maxRetries, writeTimeout, closeTimeout } = o;
  if (retryDelay <= 0 || maxRetryDelay < retryDelay) {
    throw new ConfigError('auditLog.retryDelay', `expected a delay above 0 and at most maxRetryDelay (${maxRetryDelay} ms), got ${retryDelay} ms`);
  }

  // Alone, the handler learns its runtime (logger, registry) from the first request it records.
  let bound = stackRuntime;
  const runtime = (): PerimeterRuntime => bound ?? standaloneRuntime();
  const own = o.logger;
  const logger = (): Logger => own ?? runtime().logger;
  const { sinks, owned } = buildSinks(o.sink ?? 'logger', {
    stores: stackRuntime?.stores,
    logger,
    setupLogger: own ?? stackRuntime?.logger ?? defaultLogger(),
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

function genesisHash(value: unknown, path: string): string {
  const genesis = value ?? GENESIS;
  if (!isHash(genesis)) throw new ConfigError(path, `expected 64 lowercase hex characters (a SHA-256 digest), got ${describe(genesis)}`);
  return genesis;
}

function retries(value: unknown, path: string): number {
  const n = value ?? Infinity;
  if (n !== Infinity && (typeof n !== 'number' || !Number.isInteger(n) || n < 0)) {
    throw new ConfigError(path, `expected a whole number of retries, or Infinity to retry until close, got ${describe(n)}`);
  }
  return n as number;
}

