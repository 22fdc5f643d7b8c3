import request from 'supertest';
import { createServer } from 'node:http';
import { createStack, type AuditRecord } from '../index';
import type { HealthHandler } from '../middleware/health';
import { SAFE_SERVER_TIMEOUTS } from '../lib/lifecycle/server-timeouts';
import { closeStacks, describeRedis, eventually, recordingLogger, redisUrl, stackApp, uniquePrefix } from './helpers/app';
import { hasRedisServer, OwnRedisServer } from './helpers/redis-server';

afterEach(() => closeStacks());

const routes = (app: import('express').Express) => {
  app.get('/games', (_req, res) => {
    res.json([]);
  });
};

describe('health probes', () => {
  it('answers liveness with 200 { status: ok } and readiness with 200 ready on a memory stack', async () => {
    const { app } = stackApp({}, routes);
    const live = await request(app).get('/health').expect(200);
    expect(live.body).toEqual({ status: 'ok' });
    expect(live.headers['cache-control']).toBe('no-store');
    const ready = await request(app).get('/health/ready').expect(200);
    expect(ready.body).toEqual({ status: 'ready', checks: {} });
    await request(app).head('/health/ready').expect(200);
  });

  it('answers on the configured paths only', async () => {
    const { app } = stackApp({ health: { path: '/livez', readyPath: '/readyz' } }, routes);
    await request(app).get('/livez').expect(200, { status: 'ok' });
    await request(app).get('/readyz').expect(200);
    await request(app).get('/health').expect(404);
  });

  it('is on by default, right after metrics', () => {
    const { stack } = stackApp({}, routes);
    expect(stack.order.slice(0, 4)).toEqual(['requestId', 'requestLogger', 'metrics', 'health']);
  });

  it('is never rate-limited, authenticated or audited, and logged at debug, not info', async () => {
    const records: AuditRecord[] = [];
    const { app, lines } = stackApp(
      {
        rateLimit: { limit: 1, window: '1m' },
        auth: { apiKeys: [{ key: 'k-123456789012345678901234', name: 'k' }], required: true },
        auditLog: { sink: (r: AuditRecord) => void records.push(r), methods: ['GET'] },
      },
      routes,
    );
    for (let i = 0; i < 5; i++) {
      await request(app).get('/health').expect(200);
      await request(app).get('/health/ready').expect(200);
    }
    await request(app).get('/games').expect(401);
    const probeLines = lines.filter((l) => l.message === 'Request completed' && String(l.path).startsWith('/health'));
    expect(probeLines).toHaveLength(10);
    expect(probeLines.every((l) => l.level === 'debug')).toBe(true);
    expect(lines.find((l) => l.message === 'Request completed' && l.path === '/games')?.level).toBe('warn');
    expect(records).toEqual([]);
  });

  it('counts probes in the metrics', async () => {
    const { app, stack } = stackApp({}, routes);
    await request(app).get('/health').expect(200);
    const total = (await stack.metricsRegistry.getMetricsAsJSON()).find((m) => m.name === 'http_requests_total');
    expect(total?.values.reduce((sum, v) => sum + v.value, 0)).toBe(1);
  });

  it('passes other methods on to the app', async () => {
    const { app } = stackApp({}, (a) => a.post('/health', (_req, res) => void res.status(201).end()));
    await request(app).post('/health').expect(201);
  });
});

describe('readiness checks', () => {
  it('runs the user checks and reports each with its duration', async () => {
    const { app } = stackApp({ health: { checks: { db: async () => undefined, queue: { check: () => true, timeout: '1s' } } } }, routes);
    const res = await request(app).get('/health/ready').expect(200);
    expect(res.body).toEqual({
      status: 'ready',
      checks: { db: { status: 'up', duration_ms: expect.any(Number) }, queue: { status: 'up', duration_ms: expect.any(Number) } },
    });
  });

  it('answers 503 not_ready when a check fails, with its message outside production', async () => {
    const { app, lines } = stackApp(
      {
        health: {
          exposeErrors: true,
          checks: { db: async () => Promise.reject(new Error('connect ECONNREFUSED 10.0.0.5:5432')), cache: () => undefined },
        },
      },
      routes,
    );
    const res = await request(app).get('/health/ready').expect(503);
    expect(res.body).toEqual({
      status: 'not_ready',
      checks: {
        db: { status: 'down', duration_ms: expect.any(Number), error: 'connect ECONNREFUSED 10.0.0.5:5432' },
        cache: { status: 'up', duration_ms: expect.any(Number) },
      },
    });
    expect(lines.filter((l) => l.code === 'PERIMETER_NOT_READY')).toEqual([
      expect.objectContaining({ level: 'warn', failing: { db: 'connect ECONNREFUSED 10.0.0.5:5432' } }),
    ]);
  });

  it('keeps a failed check\'s message (hosts, addresses) out of the body in production, and logs it', async () => {
    const before = process.env.NODE_ENV;
    process.env.NODE_ENV = 'production';
    try {
      const { app, lines } = stackApp({ health: { checks: { db: () => { throw new Error('connect ECONNREFUSED 10.0.0.5:5432'); } } } }, routes);
      const res = await request(app).get('/health/ready').expect(503);
      expect(res.body.checks.db).toEqual({ status: 'down', duration_ms: expect.any(Number), error: 'check failed' });
      expect(JSON.stringify(res.body)).not.toContain('10.0.0.5');
      expect(lines.find((l) => l.code === 'PERIMETER_NOT_READY')?.failing).toEqual({ db: 'connect ECONNREFUSED 10.0.0.5:5432' });
    } finally {
      process.env.NODE_ENV = before;
    }
  });

  it('fails a check that outlives its timeout and aborts its signal', async () => {
    let signal: AbortSignal | undefined;
    const { app } = stackApp(
      {
        health: {
          checks: {
            slow: {
              timeout: '50ms',
              check: (s) => {
                signal = s;
                return new Promise(() => undefined);
              },
            },
          },
        },
      },
      routes,
    );
    const res = await request(app).get('/health/ready').expect(503);
    expect(res.body.checks.slow).toEqual({ status: 'down', duration_ms: expect.any(Number), error: 'timed out after 50 ms' });
    expect(signal?.aborted).toBe(true);
  });

  it('runs the checks concurrently, each within its own timeout', async () => {
    const started: string[] = [];
    const hang = (name: string) => () => {
      started.push(name);
      return new Promise(() => undefined);
    };
    const { stack } = stackApp({ health: { timeout: '100ms', checks: { a: hang('a'), b: hang('b'), c: hang('c') } } }, routes);
    const report = await (stack.middleware.health as HealthHandler).readiness();
    expect(started).toEqual(['a', 'b', 'c']);
    expect(report.status).toBe('not_ready');
    // Three hanging checks of 100 ms each, run one after another, would take 300 ms or more.
    const durations = Object.values((report as { checks: Record<string, { duration_ms: number }> }).checks).map((c) => c.duration_ms);
    expect(Math.max(...durations)).toBeLessThan(300);
  });

  it('caches the report for at most 1 s and runs one round of checks for concurrent probes', async () => {
    jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
    try {
      let calls = 0;
      const stack = createStack({ logger: recordingLogger().logger, health: { checks: { db: () => void calls++ } } });
      const health = stack.middleware.health as HealthHandler;
      await Promise.all(Array.from({ length: 20 }, () => health.readiness()));
      expect(calls).toBe(1);
      jest.advanceTimersByTime(999);
      await health.readiness();
      expect(calls).toBe(1);
      jest.advanceTimersByTime(1);
      await health.readiness();
      expect(calls).toBe(2);
      await stack.close();
    } finally {
      jest.useRealTimers();
    }
  });

  it('refuses a cache longer than 1 s and a check named like a store check', () => {
    expect(() => createStack({ logger: recordingLogger().logger, health: { cacheFor: '5s' } })).toThrow(/health\.cacheFor: .*at most 1s/);
    expect(() => createStack({ logger: recordingLogger().logger, health: { checks: { db: 'yes' as never } } })).toThrow(/health\.checks\.db/);
  });

  it('answers 503 draining once draining began, while liveness stays 200', async () => {
    const { app, stack } = stackApp({}, routes);
    (stack.middleware.health as HealthHandler).drain();
    await request(app).get('/health/ready').expect(503, { status: 'draining' });
    await request(app).get('/health').expect(200);
  });
});

describe('attach', () => {
  it('sets safe server timeouts where Node\'s defaults were left, and keeps the user\'s', async () => {
    const { stack } = stackApp({}, routes);
    const server = createServer();
    stack.attach(server, { signals: [] });
    expect({ keepAliveTimeout: server.keepAliveTimeout, headersTimeout: server.headersTimeout, requestTimeout: server.requestTimeout }).toEqual(
      SAFE_SERVER_TIMEOUTS,
    );
    expect(server.headersTimeout).toBeGreaterThan(server.keepAliveTimeout);

    const own = createServer();
    own.keepAliveTimeout = 90_000;
    own.requestTimeout = 0;
    stack.attach(own, { signals: [] });
    expect(own.keepAliveTimeout).toBe(90_000);
    expect(own.headersTimeout).toBe(91_000);
    expect(own.requestTimeout).toBe(0);
  });

  it('explains a bad option at attach time', () => {
    const { stack } = stackApp({}, routes);
    expect(() => stack.attach(createServer(), { grace: 'soon' })).toThrow(/shutdown\.grace/);
    expect(() => stack.attach({} as never)).toThrow(/attach: expected the http.Server/);
  });
});

describeRedis('readiness with Redis', () => {
  it('reports the stack\'s Redis as a check once ready() resolved', async () => {
    const { app, stack } = stackApp({ redis: redisUrl, keyPrefix: uniquePrefix() }, routes);
    await stack.ready();
    const res = await request(app).get('/health/ready').expect(200);
    expect(res.body).toEqual({ status: 'ready', checks: { redis: { status: 'up', duration_ms: expect.any(Number) } } });
  });

  it('rejects ready() with what is missing when Redis cannot be reached in time, and reports not_ready', async () => {
    const { app, stack } = stackApp({ redis: 'redis://127.0.0.1:1', keyPrefix: uniquePrefix() }, routes);
    await expect(stack.ready({ timeout: '200ms' })).rejects.toThrow(/stack\.ready\(\): not connected after 200 ms: Redis is not connected \(status '\w+'/);
    const res = await request(app).get('/health/ready').expect(503);
    expect(res.body).toEqual({ status: 'not_ready', checks: { redis: { status: 'down', duration_ms: expect.any(Number), error: expect.stringMatching(/^not connected yet/) } } });
  });
});

(hasRedisServer ? describe : describe.skip)('readiness through a Redis outage', () => {
  let server: OwnRedisServer;
  beforeAll(async () => {
    server = await OwnRedisServer.start();
  });
  afterAll(() => server.stop());

  it('turns not_ready while Redis is down and ready again when it is back', async () => {
    const { app, stack } = stackApp({ redis: server.url, health: { cacheFor: 0 } }, routes);
    await stack.ready();
    await request(app).get('/health/ready').expect(200);
    await server.stop();
    await eventually(async () => {
      const res = await request(app).get('/health/ready');
      expect(res.status).toBe(503);
      expect(res.body.checks.redis.status).toBe('down');
    }, 5000);
    await server.restart();
    await eventually(() => request(app).get('/health/ready').expect(200).then(() => undefined), 8000);
  });

  it('does not count requests in memory before Redis is connected: two instances admit the limit, not twice it (#13)', async () => {
    await server.stop();
    const prefix = uniquePrefix();
    const config = { redis: server.url, keyPrefix: prefix, rateLimit: { limit: 3, window: '1m', storeTimeout: '5s' } };
    const a = stackApp(config, routes);
    const b = stackApp(config, routes);
    // Before the first connection the default fail mode refuses with 503 instead of counting locally.
    for (const { app } of [a, b]) {
      const res = await request(app).get('/games').expect(503);
      expect(res.body.error.code).toBe('SERVICE_UNAVAILABLE');
      expect(res.headers['retry-after']).toBe('1');
    }
    await server.restart();
    await Promise.all([a.stack.ready({ timeout: '10s' }), b.stack.ready({ timeout: '10s' })]);
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) for (const { app } of [a, b]) statuses.push((await request(app).get('/games')).status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(3);
    expect(statuses.filter((s) => s === 429)).toHaveLength(7);
  });

  it("counts locally before the first connection when onStoreError: 'memory' is chosen", async () => {
    await server.stop();
    try {
      const { app } = stackApp({ redis: server.url, keyPrefix: uniquePrefix(), rateLimit: { limit: 3, window: '1m', storeTimeout: '50ms', onStoreError: 'memory' } }, routes);
      await request(app).get('/games').expect(200);
    } finally {
      await server.restart();
    }
  });
});
