import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Express } from 'express';
import request from 'supertest';
import { ConfigError, createStack, loadShedding, type LoadSheddingHandler, type Stack } from '../index';
import { closeStacks, eventually, stackApp } from './helpers/app';

afterEach(() => closeStacks());

/** A listening server, so concurrent requests share one app (supertest would open one per request). */
async function listen(app: Express): Promise<{ server: Server; url: string }> {
  const server = createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

async function shedCount(stack: Stack, reason: string): Promise<number> {
  const metric = (await stack.metricsRegistry.getMetricsAsJSON()).find((m) => m.name === 'perimeter_shed_requests_total');
  return metric?.values.find((v) => v.labels.reason === reason)?.value ?? NaN;
}

function expectOverloaded(res: request.Response, reason: string): void {
  expect(res.status).toBe(503);
  expect(res.headers['retry-after']).toBe('10');
  expect(res.body).toEqual({
    error: {
      code: 'OVERLOADED',
      message: 'The server is overloaded; retry after the time in Retry-After.',
      request_id: res.headers['x-request-id'],
      details: { reason },
    },
  });
}

/**
 * Keeps the event loop busy in 60 ms slices, yielding between them (so requests are still read
 * and answered, as in a process saturated by CPU work), until `stop()`.
 */
function busyLoop(): { stop(): void } {
  let running = true;
  const spin = (): void => {
    if (!running) return;
    const until = performance.now() + 60;
    while (performance.now() < until) {
      // busy
    }
    setImmediate(spin);
  };
  setImmediate(spin);
  return { stop: () => void (running = false) };
}

describe('loadShedding in the stack', () => {
  it('is off until configured, and placed right after health and securityHeaders', () => {
    expect(stackApp({}, () => undefined).stack.order).not.toContain('loadShedding');
    const { stack } = stackApp({ loadShedding: { maxInFlight: 10 } }, () => undefined);
    expect(stack.order.slice(0, 6)).toEqual(['requestId', 'requestLogger', 'metrics', 'health', 'securityHeaders', 'loadShedding']);
    expect(typeof stack.middleware.loadShedding.status).toBe('function');
  });

  it('never lets more than maxInFlight requests into the handler; the rest get 503 OVERLOADED at once', async () => {
    let inside = 0;
    let most = 0;
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const { app, stack } = stackApp({ loadShedding: { maxInFlight: 3 } }, (a) =>
      a.get('/slow', async (_req, res) => {
        inside++;
        most = Math.max(most, inside);
        await gate;
        inside--;
        res.json({ ok: true });
      }),
    );
    const { server, url } = await listen(app);
    try {
      const answers: request.Response[] = [];
      const all = Array.from({ length: 10 }, () => request(url).get('/slow').then((res) => void answers.push(res)));
      // The refusals do not wait for the slow ones: 7 come back while 3 are still held.
      await eventually(() => expect(answers.length).toBe(7));
      expect(inside).toBe(3);
      expect(stack.middleware.loadShedding.status().inFlight).toEqual({ value: 3, limit: 3, over: true });
      for (const res of answers) expectOverloaded(res, 'in_flight');
      open();
      await Promise.all(all);
      expect(answers.slice(7).map((r) => r.status)).toEqual([200, 200, 200]);
      expect(most).toBe(3);
      expect(await shedCount(stack, 'in_flight')).toBe(7);
      // Each finished request gave its slot back.
      expect(stack.middleware.loadShedding.status().inFlight).toEqual({ value: 0, limit: 3, over: false });
      await request(url).get('/slow').expect(200);
    } finally {
      server.close();
    }
  });

  it('gives the slot back when the client hangs up before the answer', async () => {
    let arrived = 0;
    const { app, stack } = stackApp({ loadShedding: { maxInFlight: 1 } }, (a) =>
      a.get('/hang', () => {
        arrived++;
      }),
    );
    const { server, url } = await listen(app);
    try {
      const controller = new AbortController();
      const hung = fetch(`${url}/hang`, { signal: controller.signal }).catch(() => undefined);
      await eventually(() => expect(arrived).toBe(1));
      expect((await request(url).get('/hang').timeout(5000)).status).toBe(503);
      controller.abort();
      await hung;
      await eventually(() => expect(stack.middleware.loadShedding.status().inFlight.value).toBe(0));
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it.each([
    ['event_loop_delay', { maxEventLoopDelay: '30ms' }, 'eventLoopDelay'],
    // 0.9: the busy loop keeps it near 1, and a machine under heavy load keeps an idle test worker well under it.
    ['event_loop_utilization', { maxEventLoopUtilization: 0.9 }, 'eventLoopUtilization'],
  ] as const)('sheds while the event loop is saturated (%s), and stops once it is free', async (reason, limits, readingName) => {
    const { app, stack, lines } = stackApp({ loadShedding: { ...limits, sampleInterval: '250ms' } }, (a) => a.get('/work', (_req, res) => void res.json({ ok: true })));
    await request(app).get('/work').expect(200);
    const busy = busyLoop();
    let refused: request.Response | undefined;
    try {
      await eventually(async () => {
        const res = await request(app).get('/work');
        expect(res.status).toBe(503);
        refused = res;
      }, 15_000);
      expect(stack.middleware.loadShedding.status()[readingName].over).toBe(true);
      // Probes and scrapes are never shed.
      await request(app).get('/health').expect(200);
      await request(app).get('/health/ready').expect(200);
      await request(app).get('/metrics').expect(200);
    } finally {
      busy.stop();
    }
    expectOverloaded(refused as request.Response, reason);
    await eventually(async () => void (await request(app).get('/work').expect(200)), 15_000);
    expect(await shedCount(stack, reason)).toBeGreaterThan(0);
    const changes = lines.filter((l) => l.code === 'PERIMETER_OVERLOADED' || l.code === 'PERIMETER_LOAD_RECOVERED');
    expect(changes[0]).toMatchObject({ level: 'warn', code: 'PERIMETER_OVERLOADED', reason });
    expect(changes.at(-1)).toMatchObject({ level: 'info', code: 'PERIMETER_LOAD_RECOVERED' });
  });

  it.each([
    ['heap', { maxHeapUsedBytes: 1 }, 'heapUsedBytes'],
    ['rss', { maxRssBytes: 1 }, 'rssBytes'],
  ] as const)('sheds on %s over its limit, but never /health, /health/ready or /metrics', async (reason, limits, readingName) => {
    const { app, stack, lines } = stackApp({ loadShedding: { ...limits, sampleInterval: '20ms' } }, (a) => a.get('/work', (_req, res) => void res.json({ ok: true })));
    await eventually(() => expect(stack.middleware.loadShedding.status().overloaded).toBe(true));
    expectOverloaded(await request(app).get('/work'), reason);
    await request(app).post('/work').expect(503);
    await request(app).get('/health').expect(200);
    await request(app).get('/health/ready').expect(200);
    const scrape = await request(app).get('/metrics').expect(200);
    expect(scrape.text).toContain(`perimeter_shed_requests_total{reason="${reason}"} 2`);
    const status = stack.middleware.loadShedding.status();
    expect(status.reason).toBe(reason);
    expect(status[readingName]).toEqual({ value: expect.any(Number), limit: 1, over: true });
    expect(status[readingName].value).toBeGreaterThan(1);
    // A refusal is logged as the request's warn line, not as an error with a stack.
    const requestLine = lines.find((l) => l.message === 'Request completed' && l.path === '/work');
    expect(requestLine).toMatchObject({ level: 'warn', status_code: 503 });
    expect(lines.filter((l) => l.level === 'error')).toEqual([]);
  });

  it('reports every reading with its limit in status()', async () => {
    const { stack } = stackApp({ loadShedding: { maxEventLoopDelay: '5s', maxEventLoopUtilization: 1, maxRssBytes: '64gb', maxInFlight: 50, sampleInterval: '20ms' } }, () => undefined);
    await eventually(() => expect(stack.middleware.loadShedding.status().sampledAt).not.toBeNull());
    expect(stack.middleware.loadShedding.status()).toEqual({
      overloaded: false,
      reason: null,
      sampledAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      eventLoopDelay: { value: expect.any(Number), limit: 5000, over: false },
      eventLoopUtilization: { value: expect.any(Number), limit: 1, over: false },
      heapUsedBytes: { value: expect.any(Number), limit: null, over: false },
      rssBytes: { value: expect.any(Number), limit: 64 * 1024 ** 3, over: false },
      inFlight: { value: 0, limit: 50, over: false },
    });
  });

  it('stops its sampling timer on stack.close(), and stops shedding', async () => {
    jest.useFakeTimers({ doNotFake: ['performance', 'nextTick', 'setImmediate', 'queueMicrotask', 'Date'] });
    try {
      const before = jest.getTimerCount();
      const stack = createStack({ logger: { level: 'silent' }, rateLimit: false, auditLog: false, loadShedding: { maxHeapUsedBytes: 1 } });
      expect(jest.getTimerCount()).toBe(before + 1);
      jest.advanceTimersByTime(1000);
      expect(stack.middleware.loadShedding.status()).toMatchObject({ overloaded: true, reason: 'heap' });
      await stack.close();
      expect(jest.getTimerCount()).toBe(before);
      expect(stack.middleware.loadShedding.status()).toMatchObject({ overloaded: false, reason: null });
    } finally {
      jest.useRealTimers();
    }
  });
});

describe('loadShedding alone', () => {
  it('sheds with the error in next(), for the app\'s error handler', async () => {
    const handler: LoadSheddingHandler = loadShedding({ maxInFlight: 1, retryAfter: '2500ms' });
    try {
      const { newApp } = await import('./helpers/app');
      const app = newApp();
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      app.get('/x', handler, async (_req, res) => {
        await held;
        res.end('ok');
      });
      app.use((err: { status: number; code: string; headers: Record<string, string> }, _req: unknown, res: import('express').Response, _next: unknown) => {
        res.status(err.status).set(err.headers).json({ code: err.code });
      });
      const { server, url } = await listen(app);
      try {
        const first = request(url).get('/x').then((r) => r);
        await eventually(() => expect(handler.status().inFlight.value).toBe(1));
        const refused = await request(url).get('/x');
        expect(refused.status).toBe(503);
        expect(refused.headers['retry-after']).toBe('3');
        expect(refused.body).toEqual({ code: 'OVERLOADED' });
        release();
        expect((await first).status).toBe(200);
      } finally {
        server.close();
      }
    } finally {
      handler.close();
    }
  });
});

describe('loadShedding options', () => {
  it.each([
    [{}, /loadShedding: sets no threshold.*maxEventLoopDelay/],
    [{ maxEventLoopDelay: '0ms' }, /loadShedding.maxEventLoopDelay: expected a duration above zero/],
    [{ maxEventLoopDelay: 'soon' }, /loadShedding.maxEventLoopDelay: expected a duration/],
    [{ maxEventLoopUtilization: 1.5 }, /loadShedding.maxEventLoopUtilization: expected a share of time above 0 and at most 1, like 0.98, got 1.5/],
    [{ maxEventLoopUtilization: '0.9' }, /loadShedding.maxEventLoopUtilization/],
    [{ maxInFlight: 0 }, /loadShedding.maxInFlight: expected a whole number of requests of at least 1/],
    [{ maxInFlight: 2.5 }, /loadShedding.maxInFlight/],
    [{ maxRssBytes: 'lots' }, /loadShedding.maxRssBytes: expected a size like/],
    [{ maxHeapUsedBytes: '1pb' }, /loadShedding.maxHeapUsedBytes: .* at or above V8's heap limit .* --max-old-space-size/],
    [{ maxInFlight: 5, retryAfter: 0 }, /loadShedding.retryAfter: expected a duration above zero/],
    [{ maxInFlight: 5, sampleInterval: '1ms' }, /loadShedding.sampleInterval: expected at least '10ms'/],
    [{ maxInflight: 5 }, /loadShedding.maxInflight: unknown option; did you mean 'maxInFlight'\?/],
  ])('refuses %j at setup', (options, message) => {
    expect(() => createStack({ logger: { level: 'silent' }, loadShedding: options as never })).toThrow(ConfigError);
    expect(() => loadShedding(options as never)).toThrow(message);
  });

  it('refuses loadShedding: true, which would set no threshold', () => {
    expect(() => createStack({ logger: { level: 'silent' }, loadShedding: true })).toThrow(/sets no threshold/);
  });
});
