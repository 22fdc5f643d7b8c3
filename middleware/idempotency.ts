import { randomBytes } from 'node:crypto';
import type { OutgoingHttpHeaders } from 'node:http';
import type { NextFunction, Request, Response } from 'express';
import type { EntryContext } from '../lib/stack-entries';
import type { PerimeterHandler } from '../types/express-augment';
import type { Counter } from 'prom-client';
import { HttpError, ServiceUnavailableError } from '../lib/errors';
import { captureResponse, type CapturedResponse } from '../lib/idempotency/capture';
import { fingerprintOf } from '../lib/idempotency/fingerprint';
import { isValidKey, recordId, type IdempotencyScope } from '../lib/idempotency/key';
import { DEFAULT_LOCK_TTL_MS, parseIdempotencyOptions } from '../lib/idempotency/options';
import { keptHeaders, replay } from '../lib/idempotency/replay';
import { defaultLogger, type Logger } from '../lib/logger';
import { counter } from '../lib/metrics-registry';
import { onResponseDone } from '../lib/response-done';
import { loggerOf, perRuntime, type PerimeterRuntime } from '../lib/runtime';
import { idempotencyStore, type BeginResult, type IdempotencyStore } from '../lib/stores/idempotency-store';
import { RedisStores } from '../lib/stores/redis';
import type { RedisOption } from '../lib/stores/redis-connection';
import type { Stores } from '../lib/stores/types';
import { parseDuration } from '../lib/units';

export type { IdempotencyScope } from '../lib/idempotency/key';

/** Options of {@link idempotency}. Durations are strings ('30s', '24h') or milliseconds; sizes are bytes or strings ('1mb'). */
export interface IdempotencyOptions {
  /** Request header carrying the key. Defaults to 'Idempotency-Key'. */
  header?: string;
  /** Methods the key applies to; other methods pass untouched, header or not. Defaults to ['POST', 'PATCH']. */
  methods?: string[];
  /** Refuse a listed method that comes without the header (400 IDEMPOTENCY_KEY_REQUIRED). Defaults to false. */
  required?: boolean;
  /** How long the outcome of a completed request is kept and replayed. Defaults to '24h'. */
  ttl?: number | string;
  /** Longest a running request holds its key: a lock left by a crashed instance lapses after it. Make it longer than your slowest request. Defaults to '60s' (in createStack: twice the stack's timeout when that is longer). */
  lockTtl?: number | string;
  /** `Retry-After` of a 409 IDEMPOTENCY_IN_PROGRESS, in whole seconds (rounded up). Defaults to '1s'. */
  retryAfter?: number | string;
  /** Largest response body kept for replay; the key of a larger response answers 422 IDEMPOTENCY_REPLAY_UNAVAILABLE. Defaults to '1mb'. */
  maxBodySize?: number | string;
  /** Whose keys a record belongs to: 'apiKey', 'user', 'ip', 'tenant' or `(req) => callerId` (each joined with the tenant, except 'tenant'). Defaults to the API key, else the user, else the client IP (IPv6 by /64), within the tenant. */
  scope?: IdempotencyScope;
  /** What stands for the payload in the fingerprint instead of the parsed body: `(req) => value` (a string or Buffer is digested as is, anything else as canonical JSON). Method and URL are always part of it. Defaults to the parsed body. */
  fingerprint?: (req: Request) => unknown;
  /** Statuses below 500 whose response is not kept: the key is freed for a retry, as after a 5xx. Defaults to [401, 402, 408, 413, 425, 429, 499]. */
  releaseStatuses?: number[];
  /**
   * Free the key as soon as the client disconnects before the response (the request counts as
   * failed, as credits refunds it), so a retry runs at once. `false` keeps the key until the
   * handler answers or gives up, so a retry never runs beside a handler still working. Defaults to true.
   */
  releaseOnDisconnect?: boolean;
  /**
   * Keep the lock of a request the stack's `timeout` answered 504 until `lockTtl`, instead of
   * freeing the key like any 5xx: a handler that ignores `req.signal` may still be working, and a
   * retry would run beside it. Defaults to false.
   */
  keepLockOnTimeout?: boolean;
  /** When the store fails or is slower than `storeTimeout`: 'open' runs the request without idempotency, 'closed' answers 503 SERVICE_UNAVAILABLE. Defaults to 'open'. */
  onStoreError?: 'open' | 'closed';
  /** Longest the look-up of a key waits for the store before `onStoreError` applies. Defaults to '100ms'. */
  storeTimeout?: number | string;
  /** Namespace of the records: handlers with the same namespace on the same stores share keys. Defaults to 'idempotency'. */
  namespace?: string;
  /** Memory stores only: most records kept (least recently used go first). Defaults to 10000. */
  maxEntries?: number;
  /** Memory stores only: most bytes of kept responses. Defaults to '64mb'. */
  maxBytes?: number | string;
  /** Stores holding the records (e.g. `stack.stores`). Defaults to the stack's stores behind a stack, else memory. */
  stores?: Stores;
  /** Redis URL or ioredis client for an `idempotency()` used without a stack; `close()` closes a connection it opened. Defaults to none. */
  redis?: RedisOption;
}

/** An {@link idempotency} middleware; `close()` closes a Redis connection opened for its `redis` option. */
// An interface, not an intersection: TypeScript infers a route's params from an intersection as `unknown`.
export interface IdempotencyHandler extends PerimeterHandler {
  /** Forgets local state and closes the store connections it opened. */
  close(): Promise<void>;
}

declare module '../lib/create-stack' {
  interface StackMiddleware {
    /** The stack's idempotency (present when `idempotency` is configured). */
    idempotency: IdempotencyHandler;
  }
}

// Marks a request whose key an idempotency middleware took, so a route-level one behind the
// stack's does not lock the same key a second time (and answer its own request with 409).
const HANDLED = Symbol('express-perimeter.idempotency');

// Lock owners: unique per process and cheap per request, a random prefix plus a counter.
const PROCESS_TAG = randomBytes(6).toString('base64url');
let sequence = 0;

// While the store is down, one request a second tries it again; the others take the fail mode at
// once instead of each waiting out the store timeout.
const PROBE_INTERVAL_MS = 1000;
// Answered by timeout (or by a gateway the handler called): the handler may still be running, or
// its upstream may have acted. Freeing the key would let a retry run the operation alongside it.
const GATEWAY_TIMEOUT = 504;

type Reason = 'missing_key' | 'invalid_key' | 'in_progress' | 'mismatch' | 'replay_unavailable' | 'store_unavailable';

/** Per stack: the store, the metrics and the outage state. */
class IdempotencyState {
  readonly replays: Counter<string>;
  readonly rejections: Counter<'reason'>;
  private readonly storeErrors: Counter<'operation'>;
  private outage = false;
  private probing = false;
  private nextProbeAt = 0;

  constructor(
    readonly store: IdempotencyStore,
    runtime: PerimeterRuntime,
    private readonly logger: Logger,
    private readonly onStoreError: 'open' | 'closed',
  ) {
    this.replays = counter(runtime.registry, 'idempotency_replays_total', 'Requests answered with the kept response of an earlier request with the same Idempotency-Key', []);
    this.rejections = counter(runtime.registry, 'idempotency_rejections_total', 'Requests refused by idempotency, by reason', ['reason']);
    this.storeErrors = counter(runtime.registry, 'idempotency_store_errors_total', 'Failed or timed-out idempotency store operations, by operation', ['operation']);
  }

  /** Whether this request may use the store: always, except during an outage (one probe a second). */
  mayUseStore(): boolean {
    if (!this.outage) return true;
    if (this.probing || Date.now() < this.nextProbeAt) return false;
    this.probing = true;
    return true;
  }

  answered(): void {
    this.probing = false;
    if (!this.outage) return;
    this.outage = false;
    this.logger.info('Idempotency is back on its store', { code: 'ERR_IDEMPOTENCY_STORE_RECOVERED' });
  }

  /** A store call failed: counted always, logged once per outage. */
  failed(operation: 'begin' | 'complete' | 'release', err: unknown): void {
    this.storeErrors.inc({ operation });
    this.probing = false;
    this.nextProbeAt = Date.now() + PROBE_INTERVAL_MS;
    if (this.outage) return;
    this.outage = true;
    const e = err instanceof Error ? { name: err.name, message: err.message } : { message: String(err) };
    const mode = this.onStoreError === 'open' ? "requests run without idempotency (onStoreError: 'open')" : "requests with a key are refused with 503 (onStoreError: 'closed')";
    this.logger.warn(`Idempotency store failed; ${mode} until it answers again`, { code: 'ERR_IDEMPOTENCY_STORE_UNAVAILABLE', operation, err: e });
  }
}

/** One keyed request that holds its key's lock while its handler runs. */
interface Run {
  state: IdempotencyState;
  id: string;
  fingerprint: string;
  owner: string;
  /** The response's headers before the handler ran: the request's own, never kept. */
  before: OutgoingHttpHeaders;
  /** The handler called res.end(). */
  answered: boolean;
  /** The key was freed when the client left (releaseOnDisconnect). */
  freed: boolean;
}

/**
 * Makes retried writes safe: a request that carries an `Idempotency-Key` on a listed method runs
 * once per caller and key; a repeat with the same method, URL and body is answered with the kept
 * response (`Idempotent-Replayed: true`) without running anything after this middleware (credits
 * are not spent twice). A repeat while the first still runs gets 409 IDEMPOTENCY_IN_PROGRESS with
 * `Retry-After`; the same key with another method, URL or body 422 IDEMPOTENCY_KEY_MISMATCH; a
 * malformed key 400 IDEMPOTENCY_KEY_INVALID, and with `required` a missing one 400
 * IDEMPOTENCY_KEY_REQUIRED. 5xx responses (and `releaseStatuses`) are not kept: the key is freed
 * for a retry. Records live in the stack's stores: memory, or Redis shared by every instance.
 */
export function idempotency(options: IdempotencyOptions = {}): IdempotencyHandler {
  const config = parseIdempotencyOptions(options);
  const factory = idempotencyStore({ namespace: config.namespace, maxEntries: config.maxEntries, maxBytes: config.maxBytes });
  const ownStores = config.redis !== undefined ? new RedisStores(config.redis, { logger: defaultLogger() }) : undefined;
  const fixedStores = config.stores ?? ownStores;
  // Built once per stack: a route-level idempotency() behind a stack keeps its records in that stack's stores.
  const stateOf = perRuntime((rt) => new IdempotencyState((fixedStores ?? rt.stores).create(factory), rt, rt.logger, config.onStoreError));
  const missingKey = `This request must carry an ${config.headerName} header: a unique value (a UUID) per operation, sent again unchanged on each retry.`;
  const invalidKey = `The ${config.headerName} header must be 1 to 255 visible ASCII characters (no spaces), such as a UUID.`;

  const handler = function idempotencyMiddleware(req: Request, res: Response, next: NextFunction): void {
    if (!config.methods.has(req.method)) return next();
    const marks = req as unknown as Record<symbol, boolean | undefined>;
    if (marks[HANDLED] === true) return next();
    const key = req.headers[config.header];
    if (key === undefined) {
      if (!config.required) return next();
      stateOf(req).rejections.inc({ reason: 'missing_key' satisfies Reason });
      return next(new HttpError(400, 'IDEMPOTENCY_KEY_REQUIRED', missingKey));
    }
    // Node joins a repeated header with ', ': two keys in one request are refused here too.
    if (typeof key !== 'string' || !isValidKey(key)) {
      stateOf(req).rejections.inc({ reason: 'invalid_key' satisfies Reason });
      return next(new HttpError(400, 'IDEMPOTENCY_KEY_INVALID', invalidKey));
    }
    marks[HANDLED] = true;
    const state = stateOf(req);
    let id: string;
    let fingerprint: string;
    try {
      id = recordId(config.scope(req), key);
      fingerprint = fingerprintOf(req, config.fingerprint);
    } catch (err) {
      return next(err);
    }
    if (!state.mayUseStore()) return degrade(next, state);
    const owner = `${PROCESS_TAG}.${(++sequence).toString(36)}`;
    state.store
      .begin(id, fingerprint, owner, config.lockTtlMs, config.storeTimeout)
      .then(
        function decided(result: BeginResult) {
          state.answered();
          if (res.headersSent || res.destroyed) {
            // Answered meanwhile (timeout) or the client left: nothing runs, and a lock just taken is given back.
            if (result.outcome === 'acquired') release(state, id, owner);
            return;
          }
          switch (result.outcome) {
            case 'acquired':
              return run(req, res, next, { state, id, fingerprint, owner, before: res.getHeaders(), answered: false, freed: false });
            case 'done':
              if (result.result.body === undefined) {
                state.rejections.inc({ reason: 'replay_unavailable' satisfies Reason });
                return next(
                  new HttpError(
                    422,
                    'IDEMPOTENCY_REPLAY_UNAVAILABLE',
                    `A request with this ${config.headerName} already completed with status ${result.result.status}, but its response was too large to keep for replay; send a new key only to perform the operation again.`,
                    { status: result.result.status },
                  ),
                );
              }
              state.replays.inc();
              return replay(res, { ...result.result, body: result.result.body }, req.method === 'HEAD');
            case 'in-progress':
              state.rejections.inc({ reason: 'in_progress' satisfies Reason });
              return next(
                new HttpError(409, 'IDEMPOTENCY_IN_PROGRESS', `A request with this ${config.headerName} is still being processed; retry once it has completed.`).withHeaders({
                  'Retry-After': String(config.retryAfterSeconds),
                }),
              );
            case 'mismatch':
              state.rejections.inc({ reason: 'mismatch' satisfies Reason });
              return next(
                new HttpError(422, 'IDEMPOTENCY_KEY_MISMATCH', `This ${config.headerName} was already used for a request with another method, URL or body; use a new key for a new request.`),
              );
          }
        },
        function storeFailed(err: unknown) {
          state.failed('begin', err);
          // A look-up that timed out may still have locked the key: give it back (a no-op if it never did).
          release(state, id, owner);
          degrade(next, state);
        },
      )
      .catch(function nextThrew(err: unknown) {
        loggerOf(req).error('idempotency: a later middleware threw synchronously', {
          err: err instanceof Error ? { name: err.name, message: err.message, stack: err.stack } : { message: String(err) },
        });
      });
  } as IdempotencyHandler;

  function degrade(next: NextFunction, state: IdempotencyState): void {
    if (config.onStoreError === 'open') return next();
    state.rejections.inc({ reason: 'store_unavailable' satisfies Reason });
    next(new ServiceUnavailableError('Idempotency keys cannot be checked right now; try again shortly.'));
  }

  /** The key is ours: the handler runs, and what it answers settles the key. */
  function run(req: Request, res: Response, next: NextFunction, current: Run): void {
    captureResponse(res, config.maxBodySize, (captured) => settle(current, captured));
    if (config.releaseOnDisconnect) {
      onResponseDone(res, function releaseIfClientLeft() {
        if (current.answered || res.writableFinished) return;
        // The handler may answer later: its outcome is still kept if nobody took the key meanwhile.
        current.freed = true;
        release(current.state, current.id, current.owner);
      });
    }
    next();
  }

  /** Keeps the outcome, frees the key, or (after a 504 with keepLockOnTimeout) leaves the lock to lapse. */
  function settle(current: Run, captured: CapturedResponse): void {
    current.answered = true;
    const { state, id, owner, fingerprint } = current;
    const status = captured.status;
    if (status === GATEWAY_TIMEOUT && config.keepLockOnTimeout) return;
    if (status >= 500 || config.releaseStatuses.has(status)) {
      if (!current.freed) release(state, id, owner);
      return;
    }
    const outcome = captured.body === undefined ? { status } : { status, headers: keptHeaders(captured.headers, current.before), body: captured.body };
    state.store.complete(id, fingerprint, owner, outcome, config.ttlMs, config.storeTimeout).catch((err: unknown) => state.failed('complete', err));
  }

  function release(state: IdempotencyState, id: string, owner: string): void {
    state.store.release(id, owner, config.storeTimeout).catch((err: unknown) => state.failed('release', err));
  }

  handler.close = async function close(): Promise<void> {
    await ownStores?.close();
  };
  return handler;
}

/**
 * @internal {@link idempotency} as createStack builds it: unless `lockTtl` is given, a request
 * holds its key for twice the stack's timeout when that is longer than the default, so a handler
 * still running after its 504 keeps the key.
 */
export function stackIdempotency(options: IdempotencyOptions, { config }: EntryContext): IdempotencyHandler {
  if (options.lockTtl !== undefined) return idempotency(options);
  const timeoutOption: unknown = config.timeout;
  let timeoutMs = 30_000;
  if (timeoutOption === false) timeoutMs = 0;
  else if (typeof timeoutOption === 'object' && timeoutOption !== null && (timeoutOption as { ms?: unknown }).ms !== undefined) {
    try {
      timeoutMs = parseDuration((timeoutOption as { ms?: unknown }).ms, 'timeout.ms');
    } catch {
      // timeout reports its own mistake when the stack builds it.
    }
  }
  return idempotency({ ...options, lockTtl: Math.max(DEFAULT_LOCK_TTL_MS, 2 * timeoutMs) });
}
