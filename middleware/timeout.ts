import type { Request, RequestHandler, Response } from 'express';
import { ConfigError, GatewayTimeoutError, HttpError } from '../lib/errors';
import { answerEarly } from '../lib/late-response';
import { defineOptions, duration } from '../lib/options';
import { runtimeOf } from '../lib/runtime';
import { warnIfSecondsMeant } from '../lib/units';
import { defineOwn, peekSlots, responseSlots, slotsOf } from '../lib/request-slots';
import type { PerimeterHandler } from '../types/express-augment';

/** Options of {@link timeout}. */
export interface TimeoutOptions {
  /** Time the request may take, in milliseconds or as a duration like '30s'; 0 turns the deadline off (downloads, SSE) and keeps `req.signal`. Defaults to 30000. */
  ms?: number | string;
}

/**
 * The reason `req.signal` carries when the client closed the connection before the response was
 * complete (`code` 'CLIENT_CLOSED_REQUEST', status 499 as in nginx). A timeout aborts with the
 * {@link GatewayTimeoutError} (`code` 'GATEWAY_TIMEOUT') that was sent as the 504.
 */
export class ClientClosedRequestError extends HttpError {
  constructor(message = 'The client closed the connection before the response was complete.') {
    super(499, 'CLIENT_CLOSED_REQUEST', message);
  }
}

// setTimeout's largest delay; anything longer fires at once (with a TimeoutOverflowWarning).
const MAX_DELAY = 2 ** 31 - 1;

/** One per request, shared by every timeout() the request passes through. */
interface TimeoutState {
  req: Request;
  res: Response;
  /** Made on the first read of `req.signal` (most requests never read it). */
  controller: AbortController | undefined;
  /** Why the request was aborted, once it was. */
  reason: Error | undefined;
  timer: NodeJS.Timeout | undefined;
  ms: number;
  fired: boolean;
}

function abort(state: TimeoutState, reason: Error): void {
  if (state.reason !== undefined) return;
  state.reason = reason;
  state.controller?.abort(reason);
}

/**
 * Why `req.signal` was (or will read as) aborted: the 504's GatewayTimeoutError or a
 * ClientClosedRequestError; undefined while the request runs, and without timeout().
 */
export function abortReasonOf(req: Request): Error | undefined {
  return (peekSlots(req)?.timeout as TimeoutState | undefined)?.reason;
}

// `req.signal` is an own accessor of each request timeout() sees, which makes the request's
// AbortController on first read: an AbortController costs about as much as the rest of this
// middleware, and most requests never read the signal. Own, so that it shadows any `signal` a
// prototype may have (Node's or Express's own, some day) for this request only.
const SIGNAL: PropertyDescriptor = { get: signalOf, set: setSignal, enumerable: false, configurable: true };

function signalOf(this: Request): AbortSignal | undefined {
  const state = peekSlots(this)?.timeout as TimeoutState | undefined;
  if (state === undefined) return undefined;
  if (state.controller === undefined) {
    state.controller = new AbortController();
    if (state.reason !== undefined) state.controller.abort(state.reason);
  }
  return state.controller.signal;
}

function setSignal(this: Request, value: AbortSignal): void {
  // Someone else's signal (an assignment by user code) replaces the accessor.
  defineOwn(this, 'signal', value);
}

// The option of timeout() once: its default and its check (the interface's JSDoc is its doc).
const parseOptions = defineOptions<TimeoutOptions>()('timeout', {
  ms: duration(30000),
});

/**
 * Answers 504 GATEWAY_TIMEOUT when the response has not started within `ms`, and aborts
 * `req.signal` on timeout and on client disconnect. The innermost timeout() wins: one on a route
 * replaces the stack's deadline for that request, counting from when the route is reached, and
 * the request keeps one signal throughout. After a timeout every late write of the handler is
 * dropped (logged once at debug as ERR_TIMEOUT_LATE_WRITE).
 */
export function timeout(options?: TimeoutOptions): PerimeterHandler;
export function timeout(options: TimeoutOptions = {}): RequestHandler {
  const { ms } = parseOptions(options);
  warnIfSecondsMeant(options.ms, 'timeout.ms', 'request timeout');
  if (ms > MAX_DELAY) {
    throw new ConfigError('timeout.ms', `${ms} ms is longer than the largest timer Node.js supports (${MAX_DELAY} ms, about 24 days); use 0 to turn the deadline off`);
  }

  return function timeoutMiddleware(req, res, next) {
    const slots = slotsOf(req);
    let state = slots.timeout as TimeoutState | undefined;
    if (state === undefined) {
      state = { req, res, controller: undefined, reason: undefined, timer: undefined, ms, fired: false };
      slots.timeout = state;
      Object.defineProperty(req, 'signal', SIGNAL);
      if (res.destroyed) abort(state, new ClientClosedRequestError());
      else res.on('close', onResponseClose);
    } else if (state.fired) {
      // The request was already answered with 504 (a slow middleware called next() late):
      // running the route now would only do work whose response is dropped.
      return;
    } else if (state.timer !== undefined) {
      clearTimeout(state.timer);
      state.timer = undefined;
    }
    state.ms = ms;
    // unref: a pending deadline never keeps the process alive on its own.
    if (ms > 0 && state.reason === undefined) state.timer = setTimeout(onTimeout, ms, state).unref();
    next();
  };
}

function onTimeout(state: TimeoutState): void {
  state.timer = undefined;
  // The handler already called res.end() and the response is still flushing to a slow client:
  // it answered in time, and cutting it now would lose a complete response.
  if (state.res.writableEnded) return;
  state.fired = true;
  const err = new GatewayTimeoutError(`The request did not complete within ${state.ms} ms.`, { timeout_ms: state.ms });
  // Answer before aborting: an abort listener that writes its own response must find it already
  // answered (and dropped), not race the 504 into a cut connection.
  answerEarly(state.req, state.res, err, 'ERR_TIMEOUT_LATE_WRITE', runtimeOf(state.req));
  abort(state, err);
}

function onResponseClose(this: Response): void {
  const state = responseSlots(this).timeout as TimeoutState | undefined;
  if (state === undefined) return;
  if (state.timer !== undefined) clearTimeout(state.timer);
  state.timer = undefined;
  // 'close' without 'finish': the connection went away before the response was complete.
  if (!this.writableFinished) abort(state, new ClientClosedRequestError());
}
