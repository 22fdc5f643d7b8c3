import type { Express, RequestHandler } from 'express';
import Redis from 'ioredis';
import request from 'supertest';
import {
  circuitBreaker,
  ConfigError,
  createStack,
  errorNormalizer,
  NotFoundError,
  requestId,
  timeout,
  type CircuitBreakerHandler,
  type CircuitBreakerOptions,
  type Stack,
  type StackConfig,
} from '../index';
import { MemoryStores } from '../lib/stores';
import type { BreakerStateStore } from '../lib/stores/breaker-store';
import { describeRedis, eventually, newApp, recordingLogger, redisUrl, stacksClosedAfterEach, uniquePrefix } from './helpers/app';

/** A clock the test moves by hand. */
function manualClock(start = 1_000_000) {
  let t = start;
  return { now: () => t, advance: (ms: number) => void (t += ms) };
}

/** What the guarded route does next, and how often it actually ran. */
function upstream() {
  const state = { mode: 'ok' as 'ok' | 'fail' | 'throw' | 'notFound' | 'gatewayTimeout', calls: 0 };
  const handler: RequestHandler = (_req, res, next) => {
    state.calls++;
    if (state.mode === 'ok') res.json({ ok: true });
    else if (state.mode === 'fail') res.status(500).json({ ok: false });
    else if (state.mode === 'throw') next(new Error('upstream exploded'));
    else if (state.mode === 'notFound') next(new NotFoundError());
    else res.status(504).json({ ok: false });
  };
  return { state, handler };
}

/** An app with one breaker-guarded route at /flaky, on its own memory stores. */
function routeApp(options: CircuitBreakerOptions = {}) {
  const clock = manualClock();
  const breakerHandler = circuitBreaker({ name: 'flaky', stores: new MemoryStores(), now: clock.now, ...options });
  const { state, handler } = upstream();
  const app = newApp();
  app.use(requestId());
  app.get('/flaky', breakerHandler, handler);
  app.use(errorNormalizer());
  return { app, clock, state, breakerHandler, breaker: breakerHandler.breaker() };
}

async function hit(app: Express, times: number, path = '/flaky'): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < times; i++) statuses.push((await request(app).get(path)).status);
  return statuses;
}

function expectCircuitOpen(res: request.Response, retryAfter: string): void {
  expect(res.status).toBe(503);
  expect(res.headers['retry-after']).toBe(retryAfter);
  expect(res.body).toEqual({
    error: { code: 'CIRCUIT_OPEN', message: 'The service is temporarily unavailable; retry after the time in Retry-After.', request_id: res.headers['x-request-id'] },
  });
}

describe('circuitBreaker state machine on a route', () => {
  it('goes CLOSED → OPEN → HALF_OPEN → CLOSED and → OPEN again, one event per change (issue 6)', async () => {
    const { app, clock, state, breaker, breakerHandler } = routeApp();
    const events: string[] = [];
    for (const name of ['open', 'halfOpen', 'close']) breaker.on(name, (t: { from: string; to: string }) => events.push(`${name}:${t.from}->${t.to}`));

    state.mode = 'fail';
    expect(await hit(app, 5)).toEqual([500, 500, 500, 500, 500]);
    expect(breaker.state).toBe('OPEN');
    expectCircuitOpen(await request(app).get('/flaky'), '30');
    expect(state.calls).toBe(5);

    clock.advance(12_000);
    expectCircuitOpen(await request(app).get('/flaky'), '18');
    clock.advance(18_000);
    state.mode = 'ok';
    await request(app).get('/flaky').expect(200, { ok: true });
    expect(state.calls).toBe(6);
    expect(breaker.state).toBe('CLOSED');
    expect(await hit(app, 3)).toEqual([200, 200, 200]);

    state.mode = 'fail';
    await hit(app, 5);
    expect(breaker.state).toBe('OPEN');
    clock.advance(30_000);
    await request(app).get('/flaky').expect(500);
    expect(breaker.state).toBe('OPEN');
    // A failed probe starts a new, full reset timeout.
    expectCircuitOpen(await request(app).get('/flaky'), '30');

    expect(events).toEqual([
      'open:CLOSED->OPEN',
      'halfOpen:OPEN->HALF_OPEN',
      'close:HALF_OPEN->CLOSED',
      'open:CLOSED->OPEN',
      'halfOpen:OPEN->HALF_OPEN',
      'open:HALF_OPEN->OPEN',
    ]);
    await breakerHandler.close();
  });

  it('does not open below volumeThreshold: 4 failures of 4 calls with the default of 5', async () => {
    const { app, state, breaker } = routeApp();
    state.mode = 'fail';
    expect(await hit(app, 4)).toEqual([500, 500, 500, 500]);
    expect(breaker.state).toBe('CLOSED');
    state.mode = 'ok';
    await request(app).get('/flaky').expect(200);
    expect(state.calls).toBe(5);
  });

  it('opens at errorThresholdPercentage of the calls, not below it', async () => {
    const below = routeApp({ volumeThreshold: 6 });
    await hit(below.app, 4);
    below.state.mode = 'fail';
    await hit(below.app, 2);
    expect(below.breaker.state).toBe('CLOSED');

    const at = routeApp({ volumeThreshold: 6 });
    await hit(at.app, 3);
    at.state.mode = 'fail';
    await hit(at.app, 3);
    expect(at.breaker.state).toBe('OPEN');
    expect(at.breaker.stats).toEqual({ fires: 6, successes: 3, failures: 3, timeouts: 0, rejects: 0 });
  });

  it('forgets failures older than the rolling window', async () => {
    const { app, clock, state, breaker } = routeApp({ rollingWindow: '10s' });
    state.mode = 'fail';
    await hit(app, 4);
    clock.advance(11_000);
    await hit(app, 1);
    // Five failures in all, but only one within the last 10 s.
    expect(breaker.state).toBe('CLOSED');
    expect(breaker.stats.failures).toBe(1);
    clock.advance(2_000);
    await hit(app, 4);
    expect(breaker.state).toBe('OPEN');
  });

  it('starts a closed circuit from a clean window, even when the reset timeout is shorter than the window', async () => {
    const { app, clock, state, breaker } = routeApp({ rollingWindow: '10s', resetTimeout: '2s' });
    state.mode = 'fail';
    await hit(app, 5);
    clock.advance(2_000);
    state.mode = 'ok';
    await request(app).get('/flaky').expect(200);
    expect(breaker.state).toBe('CLOSED');
    // The five failures that opened it are still within 10 s, but no longer count.
    state.mode = 'fail';
    await request(app).get('/flaky').expect(500);
    expect(breaker.state).toBe('CLOSED');
    expect(breaker.stats).toEqual({ fires: 1, successes: 0, failures: 1, timeouts: 0, rejects: 0 });
  });

  it('counts thrown 5xx errors and 504s as failures, and 4xx as successes', async () => {
    const thrown = routeApp();
    thrown.state.mode = 'throw';
    expect(await hit(thrown.app, 5)).toEqual([500, 500, 500, 500, 500]);
    expect(thrown.breaker.state).toBe('OPEN');

    const timeouts = routeApp();
    const seen: unknown[] = [];
    timeouts.breaker.on('timeout', (status) => seen.push(status));
    timeouts.state.mode = 'gatewayTimeout';
    await hit(timeouts.app, 5);
    expect(timeouts.breaker.state).toBe('OPEN');
    expect(timeouts.breaker.stats).toMatchObject({ failures: 5, timeouts: 5 });
    expect(seen).toEqual([504, 504, 504, 504, 504]);

    const clientErrors = routeApp();
    clientErrors.state.mode = 'notFound';
    expect(await hit(clientErrors.app, 8)).toEqual(Array(8).fill(404));
    expect(clientErrors.breaker.state).toBe('CLOSED');
    expect(clientErrors.breaker.stats.successes).toBe(8);
  });

  it('counts requests the timeout middleware cut off (504, req.signal aborted) as timeouts', async () => {
    const breakerHandler = circuitBreaker({ name: 'slow', stores: new MemoryStores(), volumeThreshold: 2 });
    const app = newApp();
    app.use(requestId(), timeout({ ms: 15 }));
    let aborted = 0;
    app.get('/slow', breakerHandler, (req) => {
      // Never answers; the timeout middleware does, and aborts req.signal.
      req.signal.addEventListener('abort', () => aborted++);
    });
    app.use(errorNormalizer());
    expect(await hit(app, 2, '/slow')).toEqual([504, 504]);
    expect(aborted).toBe(2);
    const breaker = breakerHandler.breaker();
    expect(breaker.stats).toMatchObject({ failures: 2, timeouts: 2 });
    expect(breaker.state).toBe('OPEN');
    expectCircuitOpen(await request(app).get('/slow'), '30');
  });

  it('lets halfOpenMax probes through while half-open; a concurrent second request gets the open answer', async () => {
    const clock = manualClock();
    const breakerHandler = circuitBreaker({ name: 'probe', stores: new MemoryStores(), now: clock.now, volumeThreshold: 1 });
    let release: (() => void) | undefined;
    let entered: (() => void) | undefined;
    const probeEntered = new Promise<void>((resolve) => (entered = resolve));
    let mode: 'fail' | 'hold' = 'fail';
    let calls = 0;
    const app = newApp();
    app.use(requestId());
    app.get('/x', breakerHandler, (_req, res) => {
      calls++;
      if (mode === 'fail') {
        res.status(502).end();
        return;
      }
      entered?.();
      release = () => res.json({ probe: true });
    });
    app.use(errorNormalizer());

    await request(app).get('/x').expect(502);
    expectCircuitOpen(await request(app).get('/x'), '30');
    clock.advance(30_000);
    mode = 'hold';
    const probe = request(app).get('/x').then((r) => r);
    await probeEntered;
    expect(breakerHandler.breaker().state).toBe('HALF_OPEN');
    expectCircuitOpen(await request(app).get('/x'), '1');
    expect(calls).toBe(2);
    release?.();
    expect((await probe).status).toBe(200);
    expect(breakerHandler.breaker().state).toBe('CLOSED');
    expect(breakerHandler.breaker().stats.rejects).toBe(0);
  });

  it('gives every route its own breaker when used on routes without a name', async () => {
    const clock = manualClock();
    const perRoute = circuitBreaker({ stores: new MemoryStores(), now: clock.now });
    const a = upstream();
    const b = upstream();
    const app = newApp();
    app.use(requestId());
    const router = loadRouter();
    router.get('/items/:id', perRoute, a.handler);
    app.use('/v1', router);
    app.get('/other', perRoute, b.handler);
    app.use(errorNormalizer());

    a.state.mode = 'fail';
    for (const id of [1, 2, 3, 4, 5]) await request(app).get(`/v1/items/${id}`).expect(500);
    expectCircuitOpen(await request(app).get('/v1/items/99'), '30');
    await request(app).get('/other').expect(200);
    // HEAD is the GET route's own breaker.
    expect((await request(app).head('/v1/items/7')).status).toBe(503);
    expect(perRoute.breaker('GET /v1/items/:id').state).toBe('OPEN');
    expect(perRoute.breaker('GET /other').state).toBe('CLOSED');
  });

  it('shares one breaker between the routes a named handler guards', async () => {
    const payments = circuitBreaker({ name: 'payments', stores: new MemoryStores() });
    const a = upstream();
    const b = upstream();
    const app = newApp();
    app.use(requestId());
    app.get('/charge', payments, a.handler);
    app.get('/refund', payments, b.handler);
    app.use(errorNormalizer());
    a.state.mode = 'fail';
    await hit(app, 5, '/charge');
    expectCircuitOpen(await request(app).get('/refund'), '30');
    expect(b.state.calls).toBe(0);
  });
});

describe('circuitBreaker fallback', () => {
  async function openWith(fallback: CircuitBreakerOptions['fallback']) {
    const setup = routeApp({ fallback, volumeThreshold: 1 });
    setup.state.mode = 'fail';
    await request(setup.app).get('/flaky').expect(500);
    expect(setup.breaker.state).toBe('OPEN');
    return setup;
  }

  it('runs a fallback handler instead of the route', async () => {
    const { app, state, breaker } = await openWith((req, res) => {
      res.set('X-Fallback', 'cache').json({ cached: true, id: req.id });
    });
    const rejects: unknown[] = [];
    breaker.on('reject', (err) => rejects.push(err));
    const res = await request(app).get('/flaky').expect(200);
    expect(res.headers['x-fallback']).toBe('cache');
    expect(res.body).toEqual({ cached: true, id: res.headers['x-request-id'] });
    expect(state.calls).toBe(1);
    expect(rejects).toHaveLength(1);
    expect(rejects[0]).toMatchObject({ status: 503, code: 'CIRCUIT_OPEN' });
    expect(breaker.stats.rejects).toBe(1);
  });

  it("answers 503 CIRCUIT_OPEN when the fallback calls next() with nothing, and forwards the fallback's own errors", async () => {
    const deferring = await openWith((_req, _res, next) => next());
    expectCircuitOpen(await request(deferring.app).get('/flaky'), '30');

    const failing = await openWith(async () => {
      throw new NotFoundError('No cached copy either.');
    });
    const res = await request(failing.app).get('/flaky').expect(404);
    expect(res.body.error).toMatchObject({ code: 'NOT_FOUND', message: 'No cached copy either.' });
  });

  it('sends a static object as a JSON body with 200', async () => {
    const { app } = await openWith({ items: [], degraded: true });
    const res = await request(app).get('/flaky').expect(200);
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(res.body).toEqual({ items: [], degraded: true });
  });

  it('sends a { status, body } response as given', async () => {
    const { app } = await openWith({ status: 203, body: { items: ['stale'] } });
    const res = await request(app).get('/flaky').expect(203);
    expect(res.body).toEqual({ items: ['stale'] });
  });
});

describe('circuitBreaker in a stack', () => {
  const stacks = stacksClosedAfterEach<Stack>();

  function stackApp(config: StackConfig) {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ logger, rateLimit: false, requestLogger: false, ...config });
    stacks.push(stack);
    const { state, handler } = upstream();
    const app = newApp();
    app.use(stack);
    app.get('/flaky', handler);
    app.use(stack.errorHandler);
    return { app, stack, state, lines, breakerHandler: stack.middleware.circuitBreaker };
  }

  it('is off by default and placed after featureFlags when configured', () => {
    const off = createStack({ logger: recordingLogger().logger });
    stacks.push(off);
    expect(off.order).not.toContain('circuitBreaker');
    const { stack } = stackApp({ circuitBreaker: true });
    const at = stack.order.indexOf('circuitBreaker');
    expect(at).toBeGreaterThan(stack.order.indexOf('sanitize'));
    expect(stack.order[at + 1] ?? 'cache').toBe('cache');
  });

  it("guards the whole stack under the name 'stack', logs each transition once and exports the gauge", async () => {
    const clock = manualClock();
    const { app, stack, state, lines, breakerHandler } = stackApp({ circuitBreaker: { now: clock.now } });
    const gaugeValue = async (): Promise<string> => (await stack.metricsRegistry.getSingleMetricAsString('circuit_breaker_state')).split('\n').find((l) => l.startsWith('circuit_breaker_state{')) ?? '';

    expect(await gaugeValue()).toBe('circuit_breaker_state{name="stack"} 0');
    state.mode = 'fail';
    await hit(app, 5);
    expect(await gaugeValue()).toBe('circuit_breaker_state{name="stack"} 2');
    expectCircuitOpen(await request(app).get('/flaky'), '30');
    // Unknown paths are refused too: the stack's breaker runs before routing.
    expect((await request(app).get('/anything')).status).toBe(503);

    clock.advance(30_000);
    expect(breakerHandler.breaker().state).toBe('HALF_OPEN');
    expect(await gaugeValue()).toBe('circuit_breaker_state{name="stack"} 1');
    state.mode = 'ok';
    await request(app).get('/flaky').expect(200);
    expect(await gaugeValue()).toBe('circuit_breaker_state{name="stack"} 0');

    const transitions = lines.filter((l) => typeof l.code === 'string' && l.code.startsWith('CIRCUIT_') && l.breaker === 'stack');
    expect(transitions.map((l) => [l.level, l.code, l.from, l.to, l.remote])).toEqual([
      ['warn', 'CIRCUIT_OPEN', 'CLOSED', 'OPEN', false],
      ['info', 'CIRCUIT_HALF_OPEN', 'OPEN', 'HALF_OPEN', false],
      ['info', 'CIRCUIT_CLOSED', 'HALF_OPEN', 'CLOSED', false],
    ]);
    expect(transitions[0]).toMatchObject({ message: expect.stringContaining('Circuit breaker opened'), retry_after_ms: 30_000, reason: '5 of 5 calls failed within 10000 ms' });
  });

  it("does not count a route-level breaker's open answers as the stack breaker's failures", async () => {
    const { logger } = recordingLogger();
    const stack = createStack({ logger, rateLimit: false, requestLogger: false, circuitBreaker: { volumeThreshold: 20 } });
    stacks.push(stack);
    const inner = circuitBreaker({ name: 'inner' });
    const { state, handler } = upstream();
    const app = newApp();
    app.use(stack);
    app.get('/guarded', inner, handler);
    app.use(stack.errorHandler);
    state.mode = 'fail';
    await hit(app, 5, '/guarded');
    expect(inner.breaker('inner').state).toBe('OPEN');
    expect((await hit(app, 20, '/guarded')).every((s) => s === 503)).toBe(true);
    // Without the mark, 25 failures of 25 calls would have opened the stack's breaker too.
    expect(stack.middleware.circuitBreaker.breaker().state).toBe('CLOSED');
    expect(stack.middleware.circuitBreaker.breaker().stats).toMatchObject({ failures: 5, successes: 0 });
    await inner.close();
  });

  it('uses the stack stores for a route-level breaker behind it, so a same-named stack breaker moves with it', async () => {
    const { stack } = stackApp({ circuitBreaker: { name: 'payments' } });
    const routeLevel = circuitBreaker({ name: 'payments', volumeThreshold: 1 });
    const { state, handler } = upstream();
    const app = newApp();
    app.use(stack);
    app.get('/pay', routeLevel, handler);
    app.use(stack.errorHandler);
    state.mode = 'fail';
    await request(app).get('/pay').expect(500);
    // The route-level breaker opened on one failure and announced it on the stack's stores.
    expect(routeLevel.breaker('payments').state).toBe('OPEN');
    expect(stack.middleware.circuitBreaker.breaker().state).toBe('OPEN');
    expectCircuitOpen(await request(app).get('/pay'), '30');
    await routeLevel.close();
  });
});

describe('circuitBreaker when the shared store fails', () => {
  it('keeps deciding locally and logs the failing store once, without delaying the request (#11)', async () => {
    const { logger, lines } = recordingLogger();
    const failing: BreakerStateStore = {
      announce: () => Promise.reject(new Error('READONLY You can\'t write against a read only replica.')),
      subscribe: () => Promise.reject(new Error('Connection is closed.')),
      load: () => Promise.reject(new Error('Connection is closed.')),
      onResync: () => () => undefined,
    };
    const memory = new MemoryStores();
    const stores = Object.assign(Object.create(memory) as MemoryStores, { create: () => failing as never });
    const stack = createStack({ logger, rateLimit: false, requestLogger: false, circuitBreaker: { stores } });
    const { state, handler } = upstream();
    const app = newApp();
    app.use(stack);
    app.get('/flaky', handler);
    app.use(stack.errorHandler);

    state.mode = 'fail';
    expect(await hit(app, 5)).toEqual([500, 500, 500, 500, 500]);
    expectCircuitOpen(await request(app).get('/flaky'), '30');
    await eventually(() => {
      const codes = lines.filter((l) => l.code === 'CIRCUIT_BREAKER_SYNC_ERROR').map((l) => l.message);
      expect(codes).toEqual(['Circuit breaker could not join the shared state; it decides on its own counts']);
    });
    // The announcement the store refused is not logged again: the outage was, once.
    expect(lines.filter((l) => l.code === 'CIRCUIT_BREAKER_SYNC_ERROR')).toHaveLength(1);
    await stack.close();
  });
});

describe('circuitBreaker configuration', () => {
  it.each<[string, unknown, RegExp]>([
    ['an unknown option', { volumeTreshold: 3 }, /circuitBreaker\.volumeTreshold: unknown option; did you mean 'volumeThreshold'/],
    ['a percentage of 0', { errorThresholdPercentage: 0 }, /circuitBreaker\.errorThresholdPercentage: expected a percentage above 0/],
    ['a percentage above 100', { errorThresholdPercentage: 150 }, /errorThresholdPercentage/],
    ['a bad duration', { resetTimeout: 'soon' }, /circuitBreaker\.resetTimeout: expected a duration like '500ms'.*got 'soon'/],
    ['a zero reset timeout', { resetTimeout: 0 }, /circuitBreaker\.resetTimeout: expected a duration above 0/],
    ['a fractional volume', { volumeThreshold: 2.5 }, /circuitBreaker\.volumeThreshold: expected a number of calls like 5/],
    ['no probes', { halfOpenMax: 0 }, /circuitBreaker\.halfOpenMax/],
    ['an empty name', { name: '' }, /circuitBreaker\.name: expected a name of 1 to 200 characters/],
    ['an error handler as fallback', { fallback: (_e: unknown, _q: unknown, _s: unknown, _n: unknown) => undefined }, /circuitBreaker\.fallback: expected a handler \(req, res, next\), got a function of four parameters/],
    ['a string fallback', { fallback: 'sorry' }, /circuitBreaker\.fallback: expected a handler/],
    ['a fallback status out of range', { fallback: { status: 99, body: {} } }, /circuitBreaker\.fallback\.status/],
    ['buckets finer than a millisecond', { rollingWindow: 5, rollingWindowBuckets: 10 }, /circuitBreaker\.rollingWindow: 5 ms is shorter/],
  ])('refuses %s at setup with a ConfigError', (_name, options, message) => {
    expect(() => circuitBreaker(options as CircuitBreakerOptions)).toThrow(ConfigError);
    expect(() => circuitBreaker(options as CircuitBreakerOptions)).toThrow(message);
  });

  it('explains app.use(circuitBreaker) without parentheses', async () => {
    const app = newApp();
    app.use(circuitBreaker as unknown as RequestHandler);
    app.use(((err, _req, res, _next) => {
      res.status(500).json({ message: (err as Error).message });
    }) as import('express').ErrorRequestHandler);
    const res = await request(app).get('/');
    expect(res.body.message).toMatch(/write app\.use\(circuitBreaker\(\)\) with parentheses/);
  });

  it('refuses a bad option inside createStack', () => {
    expect(() => createStack({ logger: recordingLogger().logger, circuitBreaker: { halfOpenMax: -1 } })).toThrow(/circuitBreaker\.halfOpenMax/);
  });
});

describeRedis('circuitBreaker state shared through Redis', () => {
  const stacks = stacksClosedAfterEach<Stack>();
  let raw: Redis;
  beforeAll(() => {
    raw = new Redis(redisUrl as string);
  });
  afterAll(() => raw.quit());

  function instance(prefix: string, now: () => number, redis: string = redisUrl as string) {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ redis, keyPrefix: prefix, logger, rateLimit: false, requestLogger: false, ipFilter: false, circuitBreaker: { now } });
    stacks.push(stack);
    const { state, handler } = upstream();
    const app = newApp();
    app.use(stack);
    app.get('/flaky', handler);
    app.use(stack.errorHandler);
    return { app, stack, state, lines, breaker: (stack.middleware.circuitBreaker as CircuitBreakerHandler).breaker() };
  }

  it('opens on every instance when one opens, and closes on every instance when a probe closes it', async () => {
    const prefix = uniquePrefix();
    const clockA = manualClock();
    // B's clock never moves: B can only leave OPEN because A tells it to.
    const clockB = manualClock();
    const a = instance(prefix, clockA.now);
    const b = instance(prefix, clockB.now);
    await request(b.app).get('/flaky').expect(200);

    a.state.mode = 'fail';
    await hit(a.app, 5);
    expect(a.breaker.state).toBe('OPEN');
    // B never failed a call: only A's announcement can open it.
    await eventually(() => expect(b.breaker.state).toBe('OPEN'));
    const callsBefore = b.state.calls;
    expectCircuitOpen(await request(b.app).get('/flaky'), '30');
    expect(b.state.calls).toBe(callsBefore);
    const stored = await raw.hgetall(`${prefix}circuitBreaker:{stack}`);
    expect(stored).toMatchObject({ state: 'OPEN', origin: expect.any(String) });
    expect(Number(stored.until) - Number(stored.changedAt)).toBe(30_000);
    expect(b.lines.find((l) => l.code === 'CIRCUIT_OPEN')).toMatchObject({ remote: true, reason: 'another instance opened the circuit' });

    // A new instance joins an open circuit from the stored state.
    const c = instance(prefix, manualClock().now);
    await eventually(() => expect(c.breaker.state).toBe('OPEN'));

    clockA.advance(30_000);
    a.state.mode = 'ok';
    await request(a.app).get('/flaky').expect(200);
    expect(a.breaker.state).toBe('CLOSED');
    await eventually(() => expect(b.breaker.state).toBe('CLOSED'));
    await request(b.app).get('/flaky').expect(200);
    expect(await raw.hget(`${prefix}circuitBreaker:{stack}`, 'state')).toBe('CLOSED');
    // Each instance logged each change once: B went OPEN → CLOSED on A's word, with no half-open of its own.
    expect(b.lines.filter((l) => l.breaker === 'stack').map((l) => l.code)).toEqual(['CIRCUIT_OPEN', 'CIRCUIT_CLOSED']);
    expect(a.lines.filter((l) => l.breaker === 'stack').map((l) => l.code)).toEqual(['CIRCUIT_OPEN', 'CIRCUIT_HALF_OPEN', 'CIRCUIT_CLOSED']);
  });
});

function loadRouter() {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const express = process.env.EXPRESS_MAJOR === '4' ? require('express4') : require('express');
  return express.Router() as import('express').Router;
}
