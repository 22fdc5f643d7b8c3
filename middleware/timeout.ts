import type { Request, RequestHandler, Response } from 'express';
import { ConfigError, GatewayTimeoutError, HttpError } from '../lib/errors';
import { answerEarly } from '../lib/late-response';
import { checkOptions } from '../lib/options';
import { runtimeOf } from '../lib/runtime';
import { parseDuration } from '../lib/units';

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
const STATE = Symbol('express-perimeter.timeout');

/** One per request, shared by every timeout() the request passes through. */
interface TimeoutState {
  req: Request;
  res: Response;
  /**
   * Made with the state. `req.signal` is a plain data property: an accessor defined on each
   * request (to make the controller lazily) put req objects on V8's slow path and cost far more
   * in every later property access than the ~0.1 µs an AbortController takes.
   */
  controller: AbortController;
  /** Why the request was aborted, once it was. */
  reason: Error | undefined;
  timer: NodeJS.Timeout | undefined;
  ms: number;
  fired: boolean;
}

type WithState = { [STATE]?: TimeoutState };


function abort(state: TimeoutState, reason: Error): void {
  if (state.reason !== undefined) return;
  state.reason = reason;
  state.controller.abort(reason);
}

/**
 * Answers 504 GATEWAY_TIMEOUT when the response has not started within `ms`, and aborts
 * `req.signal` on timeout and on client disconnect. The innermost timeout() wins: one on a route
 * replaces the stack's deadline for that request, counting from when the route is reached, and
 * the request keeps one signal throughout. After a timeout every late write of the handler is
 * dropped (logged once at debug as ERR_TIMEOUT_LATE_WRITE).
 */
export function timeout(options: TimeoutOptions = {}): RequestHandler {
  checkOptions('timeout', options, ['ms']);
  const ms = parseDuration(options.ms ?? 30000, 'timeout.ms');
  if (ms > MAX_DELAY) {
    throw new ConfigError('timeout.ms', `${ms} ms is longer than the largest timer Node.js supports (${MAX_DELAY} ms, about 24 days); use 0 to turn the deadline off`);
  }

  return function timeoutMiddleware(req, res, next) {
    let state = (req as WithState)[STATE];
    if (state === undefined) {
      state = { req, res, controller: new AbortController(), reason: undefined, timer: undefined, ms, fired: false };
      (req as WithState)[STATE] = state;
      (res as WithState)[STATE] = state;
      req.signal = state.controller.signal;
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
  const state = (this as WithState)[STATE];
  if (state === undefined) return;
  if (state.timer !== undefined) clearTimeout(state.timer);
  state.timer = undefined;
  // 'close' without 'finish': the connection went away before the response was complete.
  if (!this.writableFinished) abort(state, new ClientClosedRequestError());
}
