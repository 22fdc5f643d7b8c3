import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { Breaker, REJECTED } from '../lib/breaker/breaker';
import { stateGauge } from '../lib/breaker/create-breaker';
import { BREAKER_OPTION_ROWS, breakerName, settingsOf, type BreakerOptions } from '../lib/breaker/settings';
import { shareBreakerState } from '../lib/breaker/shared-state';
import { ConfigError } from '../lib/errors';
import type { Logger } from '../lib/logger';
import { defineOptions, option, storesOption } from '../lib/options';
import { routeTemplate } from '../lib/route-template';
import { runtimeOf, standaloneRuntime, type PerimeterRuntime } from '../lib/runtime';
import { breakerStateStore, type BreakerStateStore } from '../lib/stores/breaker-store';
import type { Stores } from '../lib/stores/types';
import { describe } from '../lib/units';
import { onResponseDone } from '../lib/response-done';
import { abortReasonOf } from './timeout';
import type { EntryContext } from '../lib/stack-entries';
import type { PerimeterHandler } from '../types/express-augment';
import { recordOnSpan } from '../lib/otel';

export { createBreaker, FunctionBreaker, type CreateBreakerOptions, type BreakerCallSignal } from '../lib/breaker/create-breaker';
export { retry, type RetryOptions } from '../lib/retry';
export { Breaker, type BreakerState, type BreakerTransition } from '../lib/breaker/breaker';
export type { BreakerStats } from '../lib/breaker/rolling-window';
export type { BreakerOptions } from '../lib/breaker/settings';

/** A fixed answer of an open circuit: `status` (default 200) and a JSON `body`. */
export interface CircuitBreakerFallbackResponse {
  status: number;
  body: unknown;
}

/** Options of {@link circuitBreaker}. */
export interface CircuitBreakerOptions extends BreakerOptions {
  /** What an open circuit answers instead of 503 CIRCUIT_OPEN: a handler `(req, res, next)` (its `next()` with no error sends the 503), a `{ status, body }` response, or any other object, sent as a JSON body with 200. Defaults to none (503 CIRCUIT_OPEN with Retry-After). */
  fallback?: RequestHandler | CircuitBreakerFallbackResponse | Record<string, unknown>;
  /** Stores the circuit state is shared through, e.g. `stack.stores`. Defaults to the stack's stores behind a stack, else memory. */
  stores?: Stores;
}

/** A {@link circuitBreaker} middleware with its run-time methods (also `stack.middleware.circuitBreaker`). */
export interface CircuitBreakerHandler extends PerimeterHandler {
  /** The breaker called `name` (by default this handler's `name`), for `state`, `stats` and events; made on first use. On the stack's stores for a stack's handler; for a route-level one, on those of the stack it last started serving (standalone memory before its first request). */
  breaker(name?: string): Breaker;
  /** Stops every breaker's timer and leaves the shared state. */
  close(): Promise<void>;
}

declare module '../lib/create-stack' {
  interface StackMiddleware {
    /** The stack's circuit breaker (present when `circuitBreaker` is configured). */
    circuitBreaker: CircuitBreakerHandler;
  }
}

// Every option of circuitBreaker() once: the breaker's rows, shared with createBreaker, and its own.
const parseOptions = defineOptions<CircuitBreakerOptions>()('circuitBreaker', {
  ...BREAKER_OPTION_ROWS,
  fallback: option('a handler (req, res, next), a { status, body } response, or an object to send as JSON', compileFallback),
  stores: storesOption(),
});
// Set on a response an open circuit answered, so an outer breaker (the stack's, around a
// route-level one) does not count the 503 as its own failure and open in cascade.
const OPEN_ANSWER = Symbol('express-perimeter.circuitOpenAnswer');
// The breaker name of middleware used outside a route (app.use) without a `name`.
const DEFAULT_NAME = 'default';

type Fallback = (req: Request, res: Response, next: NextFunction, err: Error) => void;

/** The breakers of one stack (or of standalone use): decided once per runtime. */
interface BreakerGroup {
  stateStore: BreakerStateStore;
  logger: Logger;
  gauge: ReturnType<typeof stateGauge>;
  byName: Map<string, Breaker>;
  /** Per route: template → method → breaker, so the per-request lookup builds no string. */
  byRoute: Map<string, Map<string, Breaker>>;
  unlinks: Array<() => Promise<void>>;
  /** The breaker of the fixed `name`, when there is one. */
  fixed?: Breaker;
}

/**
 * Stops calling a failing route: counts its responses in a rolling window (failures are 5xx,
 * timeouts and errors passed to `next()` that end as 5xx) and, once at least `volumeThreshold`
 * calls show `errorThresholdPercentage` failures, opens the circuit: requests then get the
 * `fallback` or 503 CIRCUIT_OPEN with `Retry-After`, without reaching the route. After
 * `resetTimeout`, `halfOpenMax` probe requests go through; a successful one closes the circuit,
 * a failed one opens it again.
 *
 * On a route without `name`, each route gets its own breaker (`GET /users/:id`); with `name`,
 * every route the handler guards shares one breaker. Behind a stack on Redis, state changes are
 * shared so every instance opens and closes together.
 */
export function circuitBreaker(options: CircuitBreakerOptions = {}): CircuitBreakerHandler {
  return buildCircuitBreaker(options, undefined);
}

/**
 * @internal The stack's circuit breaker (createStack builds it), named 'stack' unless the config
 * names it: made at setup on the stack's stores, logger and registry.
 */
export function stackCircuitBreaker(options: CircuitBreakerOptions, { runtime }: EntryContext): CircuitBreakerHandler {
  return buildCircuitBreaker({ name: 'stack', ...options }, runtime);
}

function buildCircuitBreaker(options: CircuitBreakerOptions, stackRuntime: PerimeterRuntime | undefined): CircuitBreakerHandler {
  const o = parseOptions(options);
  const settings = settingsOf(o, 'circuitBreaker');
  const { name: fixedName, fallback, stores: ownStores } = o;
  const stateFactory = breakerStateStore();
  const groups: BreakerGroup[] = [];

  const build = (rt: PerimeterRuntime): BreakerGroup => {
    const group: BreakerGroup = {
      stateStore: (ownStores ?? rt.stores).create(stateFactory),
      logger: rt.logger,
      gauge: stateGauge(rt.registry),
      byName: new Map(),
      byRoute: new Map(),
      unlinks: [],
    };
    if (fixedName !== undefined) group.fixed = breakerIn(group, fixedName);
    groups.push(group);
    return group;
  };

  const breakerIn = (group: BreakerGroup, name: string): Breaker => {
    let breaker = group.byName.get(name);
    if (breaker === undefined) {
      breaker = new Breaker({ name, settings, logger: group.logger, gauge: group.gauge.labels({ name }) });
      group.unlinks.push(shareBreakerState(breaker, group.stateStore, group.logger));
      group.byName.set(name, breaker);
    }
    return breaker;
  };

  // Decided before the route runs, so only a route-level handler can be per route: the stack's
  // runs before routing, when no route has matched yet.
  const routeBreaker = (group: BreakerGroup, req: Request): Breaker => {
    if (req.route === undefined) return breakerIn(group, DEFAULT_NAME);
    const template = routeTemplate(req);
    // A GET route answers HEAD too; both are one route to guard.
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    let byMethod = group.byRoute.get(template);
    if (byMethod === undefined) {
      byMethod = new Map();
      group.byRoute.set(template, byMethod);
    }
    let breaker = byMethod.get(method);
    if (breaker === undefined) {
      breaker = breakerIn(group, `${method} ${template}`);
      byMethod.set(method, breaker);
    }
    return breaker;
  };

  // With a stack or stores of its own the breaker exists (and joins the shared state) at setup;
  // otherwise it follows the stack serving each request (memory when alone).
  const home = stackRuntime !== undefined || ownStores !== undefined ? build(stackRuntime ?? standaloneRuntime()) : undefined;
  const groupsByRuntime = new WeakMap<PerimeterRuntime, BreakerGroup>();
  const groupFor = (rt: PerimeterRuntime): BreakerGroup => {
    let group = groupsByRuntime.get(rt);
    if (group === undefined) {
      group = build(rt);
      groupsByRuntime.set(rt, group);
    }
    return group;
  };

  // One symbol pair per handler: a request can pass a stack-level and a route-level breaker.
  const BREAKER = Symbol('circuitBreaker.breaker');
  const TICKET = Symbol('circuitBreaker.ticket');
  type Slots = Record<symbol, unknown>;

  function recordOutcome(res: Response): void {
    const slots = res as unknown as Slots;
    const breaker = slots[BREAKER] as Breaker;
    const ticket = slots[TICKET] as number;
    if (slots[OPEN_ANSWER] === true) return breaker.release(ticket);
    const status = res.statusCode;
    if (timedOut(res, status)) return breaker.failure(ticket, 504, true);
    // The connection closed before the response was complete: the client left; that says nothing of the route.
    if (!res.writableFinished) return breaker.release(ticket);
    if (status >= 500) breaker.failure(ticket, status, false);
    else breaker.success(ticket, status);
  }

  const handler = function circuitBreakerMiddleware(req: Request, res: Response, next: NextFunction): void {
    const group = home ?? groupFor(runtimeOf(req));
    const breaker = group.fixed ?? routeBreaker(group, req);
    const ticket = breaker.admit();
    recordOnSpan(req, 'perimeter.breaker.state', breaker.state);
    if (ticket === REJECTED) {
      (res as unknown as Slots)[OPEN_ANSWER] = true;
      const err = breaker.rejection();
      if (fallback === undefined) return next(err);
      return fallback(req, res, next, err);
    }
    const slots = res as unknown as Slots;
    slots[BREAKER] = breaker;
    slots[TICKET] = ticket;
    onResponseDone(res, recordOutcome);
    next();
  } as CircuitBreakerHandler;

  handler.breaker = (name?: string): Breaker => {
    // Without a stack of its own: the stack it last started serving, else the standalone memory one.
    const group = home ?? groups[groups.length - 1] ?? groupFor(standaloneRuntime());
    const wanted = name ?? fixedName ?? DEFAULT_NAME;
    return breakerIn(group, breakerName(wanted, 'circuitBreaker.breaker(name)'));
  };

  handler.close = async (): Promise<void> => {
    const unlinks: Array<Promise<void>> = [];
    for (const group of groups) {
      for (const breaker of group.byName.values()) breaker.shutdown();
      for (const unlink of group.unlinks.splice(0)) unlinks.push(unlink());
    }
    await Promise.all(unlinks);
  };

  return handler;
}

/** A 504 answer, or a request whose `req.signal` the timeout middleware aborted (the response may have been cut). */
function timedOut(res: Response, status: number): boolean {
  if (status === 504) return true;
  // The reason itself: reading req.signal would make an AbortController for every request.
  const req = res.req as Request | undefined;
  return req !== undefined && (abortReasonOf(req) as { code?: unknown } | undefined)?.code === 'GATEWAY_TIMEOUT';
}

function compileFallback(fallback: unknown, path: string): Fallback | undefined {
  if (fallback === undefined) return undefined;
  if (typeof fallback === 'function') {
    if (fallback.length >= 4) {
      throw new ConfigError(path, 'expected a handler (req, res, next), got a function of four parameters (an Express error handler); the open-circuit error is not passed to it');
    }
    return function circuitFallback(req, res, next, err) {
      // next() with no error means "no fallback after all": answer the usual 503.
      const done = (e?: unknown): void => next(e === undefined || e === null ? err : e);
      try {
        const result = (fallback as RequestHandler)(req, res, done) as unknown;
        if (result instanceof Promise) result.catch(done);
      } catch (thrown) {
        done(thrown);
      }
    };
  }
  if (fallback === null || typeof fallback !== 'object' || Array.isArray(fallback)) {
    throw new ConfigError(path, `expected a handler (req, res, next), a { status, body } response or an object to send as JSON, got ${describe(fallback)}`);
  }
  const response = fallback as Record<string, unknown>;
  const keys = Object.keys(response);
  const isResponse = typeof response.status === 'number' && 'body' in response && keys.length === 2;
  const status = isResponse ? response.status : 200;
  if (typeof status !== 'number' || !Number.isInteger(status) || status < 200 || status > 599) {
    throw new ConfigError(`${path}.status`, `expected an HTTP status from 200 to 599, got ${describe(status)}`);
  }
  // Serialised once: the open circuit answers many requests with the same bytes.
  const payload = JSON.stringify(isResponse ? response.body : response);
  if (payload === undefined) throw new ConfigError(`${path}.body`, 'expected a value that JSON can represent');
  return function circuitFallbackResponse(_req, res) {
    res.status(status).set('Content-Type', 'application/json; charset=utf-8').send(payload);
  };
}
