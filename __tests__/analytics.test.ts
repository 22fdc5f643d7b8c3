import { readFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import type { Request, Response } from 'express';
import type { Registry } from 'prom-client';
import request from 'supertest';
import { ConfigError, createStack, metrics, type StackConfig } from '../index';
import {
  Analytics,
  binMidpoint,
  latencyBin,
  OTHER_ENDPOINT,
  parseAnalyticsOptions,
  PERCENTILE_RELATIVE_ERROR,
  type AnalyticsReport,
} from '../lib/analytics';
import { STACK_ENTRIES, STACK_ORDER } from '../lib/stack-entries';
import { newApp, recordingLogger } from './helpers/app';

const MINUTE = 60_000;
// 12:00:00 UTC: bucket boundaries of a 15-minute window in 15 buckets fall on whole minutes.
const NOON = Date.UTC(2024, 0, 1, 12, 0, 0);

function tracker(settings: Partial<ConstructorParameters<typeof Analytics>[0]> & { now: () => number }) {
  return new Analytics({ windowMs: 15 * MINUTE, buckets: 15, maxEndpoints: 1000, ...settings });
}

/** Deterministic uniform numbers in [0, 1) (mulberry32). */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The exact nearest-rank percentile of `sorted`: the smallest sample with at least q of the samples at or below it. */
function exactPercentile(sorted: number[], q: number): number {
  return sorted[Math.max(1, Math.ceil(q * sorted.length)) - 1];
}

describe('analytics: latency histogram', () => {
  it('keeps every value from 32 µs to 35 min within 1/64 of its bin midpoint, with bins in value order', () => {
    expect(PERCENTILE_RELATIVE_ERROR).toBeCloseTo(1 / 64);
    let previous = -1;
    let worst = 0;
    const outOfOrder: number[] = [];
    for (let v = 32; v < 2 ** 31; v = Math.ceil(v * 1.0007)) {
      const bin = latencyBin(v);
      if (bin < previous) outOfOrder.push(v);
      previous = bin;
      worst = Math.max(worst, Math.abs(binMidpoint(bin) - v) / v);
    }
    expect(outOfOrder).toEqual([]);
    expect(worst).toBeLessThanOrEqual(PERCENTILE_RELATIVE_ERROR);
    // The bound is tight, not vacuous: the coarsest bins come close to it.
    expect(worst).toBeGreaterThan(PERCENTILE_RELATIVE_ERROR * 0.9);
  });

  it('counts below 32 µs exactly and clamps nonsense and huge durations', () => {
    for (let v = 0; v < 32; v++) expect(binMidpoint(latencyBin(v))).toBe(v + 0.5);
    expect(latencyBin(Number.NaN)).toBe(0);
    expect(latencyBin(-5)).toBe(0);
    expect(latencyBin(1e15)).toBe(latencyBin(2 ** 31 - 1));
    expect(binMidpoint(latencyBin(1e15))).toBeGreaterThan(2 ** 31 * 0.98);
  });

  const distributions: Array<[string, (r: () => number) => number]> = [
    // Seconds. Log-normal around 40 ms with a long tail, as API latencies usually look.
    ['log-normal (median 40 ms)', (r) => 0.04 * Math.exp(0.8 * Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r()))],
    ['uniform 1 ms – 2 s', (r) => 0.001 + r() * 1.999],
    // 93 % fast, 7 % slow: p50 sits in the fast mode, p95 and p99 in the slow one.
    ['bimodal 5 ms / 800 ms', (r) => (r() < 0.93 ? 0.004 + r() * 0.002 : 0.7 + r() * 0.2)],
  ];

  it.each(distributions)('reports p50, p95 and p99 of a %s sample within the histogram error bound', (_name, draw) => {
    const r = random(42);
    const clock = NOON;
    const a = tracker({ now: () => clock });
    const endpoint = a.endpoint('GET', '/games/:id');
    const samples: number[] = [];
    for (let i = 0; i < 20_000; i++) {
      const seconds = draw(r);
      samples.push(seconds * 1000);
      a.record(endpoint, 200, seconds);
    }
    samples.sort((x, y) => x - y);
    const [row] = a.report(10).slowest;
    expect(row.count).toBe(20_000);
    for (const [field, q] of [
      ['p50_ms', 0.5],
      ['p95_ms', 0.95],
      ['p99_ms', 0.99],
    ] as const) {
      const exact = exactPercentile(samples, q);
      // The bound, plus the 1 µs of flooring to whole microseconds and the report's rounding to 1 µs.
      expect(Math.abs(row[field] - exact)).toBeLessThanOrEqual(exact * PERCENTILE_RELATIVE_ERROR + 0.0015);
    }
    expect(row.p50_ms).toBeLessThanOrEqual(row.p95_ms);
    expect(row.p95_ms).toBeLessThanOrEqual(row.p99_ms);
  });

  it('merges the buckets of the window into one distribution', () => {
    let clock = NOON;
    const a = tracker({ now: () => clock });
    const e = a.endpoint('GET', '/a');
    // 90 fast requests in one minute, 10 slow ones five minutes later: p95 must come from the slow ones.
    for (let i = 0; i < 90; i++) a.record(e, 200, 0.01);
    clock += 5 * MINUTE;
    for (let i = 0; i < 10; i++) a.record(e, 200, 1);
    const [row] = a.report(10).slowest;
    expect(row.count).toBe(100);
    expect(Math.abs(row.p50_ms - 10)).toBeLessThanOrEqual(10 * PERCENTILE_RELATIVE_ERROR);
    expect(Math.abs(row.p95_ms - 1000)).toBeLessThanOrEqual(1000 * PERCENTILE_RELATIVE_ERROR);
  });
});

describe('analytics: lists, window and cap', () => {
  function seeded(now: () => number) {
    const a = tracker({ now });
    const add = (method: string, route: string, n: number, status = 200, seconds = 0.01) => {
      const e = a.endpoint(method, route);
      for (let i = 0; i < n; i++) a.record(e, status, seconds);
    };
    return { a, add };
  }

  it('orders top endpoints by count, slowest by p95 and error_rates by 5xx rate, then 4xx rate', () => {
    const { a, add } = seeded(() => NOON + 30_000);
    add('GET', '/games/:id', 50, 200, 0.005);
    add('POST', '/games', 20, 201, 0.05);
    add('POST', '/games', 5, 500, 0.05);
    add('GET', '/reports/:day', 3, 200, 2);
    add('GET', '/games/:id', 10, 404, 0.002);
    add('GET', '#unmatched', 4, 404, 0.001);
    add('DELETE', '/games/:id', 1, 503, 0.3);

    const report = a.report(10);
    expect(report.top.map((t) => [t.endpoint, t.count])).toEqual([
      ['GET /games/:id', 60],
      ['POST /games', 25],
      ['GET #unmatched', 4],
      ['GET /reports/:day', 3],
      ['DELETE /games/:id', 1],
    ]);
    expect(report.top[0]).toEqual({ endpoint: 'GET /games/:id', method: 'GET', route: '/games/:id', count: 60 });
    expect(report.slowest.map((s) => s.endpoint)).toEqual([
      'GET /reports/:day',
      'DELETE /games/:id',
      'POST /games',
      'GET /games/:id',
      'GET #unmatched',
    ]);
    expect(report.error_rates).toEqual([
      { endpoint: 'DELETE /games/:id', count: 1, errors_5xx: 1, errors_4xx: 0, error_rate: 1, client_error_rate: 0 },
      { endpoint: 'POST /games', count: 25, errors_5xx: 5, errors_4xx: 0, error_rate: 0.2, client_error_rate: 0 },
      { endpoint: 'GET #unmatched', count: 4, errors_5xx: 0, errors_4xx: 4, error_rate: 0, client_error_rate: 1 },
      { endpoint: 'GET /games/:id', count: 60, errors_5xx: 0, errors_4xx: 10, error_rate: 0, client_error_rate: 0.1667 },
    ]);
    expect(report.totals).toEqual({ requests: 93, errors: 6, errors_4xx: 14, error_rate: 0.0645 });
    expect(a.report(2).top.map((t) => t.endpoint)).toEqual(['GET /games/:id', 'POST /games']);
    expect(a.report(2).slowest).toHaveLength(2);
    expect(a.report(2).error_rates).toHaveLength(2);
  });

  it('ages old buckets out of the window one bucket at a time (injected clock)', () => {
    let clock = NOON;
    const { a, add } = seeded(() => clock);
    clock = NOON + 30_000;
    add('GET', '/old', 3);
    clock = NOON + 5 * MINUTE;
    add('GET', '/newer', 2, 500);

    clock = NOON + 10 * MINUTE;
    let report = a.report(10);
    expect(report.window).toEqual({ from: new Date(NOON).toISOString(), to: new Date(clock).toISOString(), seconds: 600 });
    expect(report.totals.requests).toBe(5);

    // The 12:00 bucket is the oldest of the window until 12:15 starts.
    clock = NOON + 15 * MINUTE - 1;
    expect(a.report(10).top.map((t) => [t.endpoint, t.count])).toEqual([
      ['GET /old', 3],
      ['GET /newer', 2],
    ]);
    clock = NOON + 15 * MINUTE;
    report = a.report(10);
    expect(report.top.map((t) => [t.endpoint, t.count])).toEqual([['GET /newer', 2]]);
    expect(report.window).toEqual({ from: new Date(NOON + MINUTE).toISOString(), to: new Date(clock).toISOString(), seconds: 840 });

    // The 12:15 bucket reuses the ring slot of 12:00: it starts from zero, not from the old 3.
    clock = NOON + 15 * MINUTE + 10_000;
    add('GET', '/old', 1);
    expect(a.report(10).top.find((t) => t.endpoint === 'GET /old')?.count).toBe(1);

    clock = NOON + 20 * MINUTE;
    report = a.report(10);
    expect(report.top.map((t) => [t.endpoint, t.count])).toEqual([['GET /old', 1]]);
    expect(report.error_rates).toEqual([]);
    expect(report.totals).toEqual({ requests: 1, errors: 0, errors_4xx: 0, error_rate: 0 });

    clock = NOON + 60 * MINUTE;
    report = a.report(10);
    expect(report).toEqual({
      window: { from: new Date(NOON + 46 * MINUTE).toISOString(), to: new Date(clock).toISOString(), seconds: 840 },
      totals: { requests: 0, errors: 0, errors_4xx: 0, error_rate: 0 },
      top: [],
      slowest: [],
      error_rates: [],
    });
  });

  it('places a request by the performance.now() of its end on the wall clock when no clock is injected', () => {
    const a = new Analytics({ windowMs: 15 * MINUTE, buckets: 15, maxEndpoints: 10, now: undefined });
    const e = a.endpoint('GET', '/a');
    a.record(e, 200, 0.01, performance.now());
    a.record(e, 200, 0.01);
    // Ended 20 minutes ago (by the monotonic clock): outside the window.
    a.record(e, 500, 0.01, performance.now() - 20 * MINUTE);
    const report = a.report(10);
    expect(report.totals).toEqual({ requests: 2, errors: 0, errors_4xx: 0, error_rate: 0 });
    expect(Math.abs(Date.parse(report.window.to) - Date.now())).toBeLessThan(1000);
  });

  it("counts endpoints past maxEndpoints together as '#other', without remembering them", () => {
    const a = tracker({ now: () => NOON, maxEndpoints: 2 });
    const first = a.endpoint('GET', '/a');
    expect(a.endpoint('GET', '/a')).toBe(first);
    a.endpoint('GET', '/b');
    const over = a.endpoint('GET', '/c');
    expect(a.endpoint('POST', '/a')).toBe(over);
    expect(a.endpoint(`GET`, `/minted/${Math.random()}`)).toBe(over);
    a.record(first, 200, 0.01);
    a.record(a.endpoint('GET', '/c'), 200, 0.01);
    a.record(a.endpoint('POST', '/a'), 500, 0.01);
    const report = a.report(10);
    expect(report.top).toEqual([
      { endpoint: OTHER_ENDPOINT, method: '*', route: OTHER_ENDPOINT, count: 2 },
      { endpoint: 'GET /a', method: 'GET', route: '/a', count: 1 },
    ]);
    expect(report.error_rates[0]).toMatchObject({ endpoint: OTHER_ENDPOINT, errors_5xx: 1 });
  });

  it.each([
    [{ window: 'soon' }, /metrics\.analytics\.window: expected a duration/],
    [{ buckets: 0 }, /metrics\.analytics\.buckets: expected a whole number from 1 to 240/],
    [{ buckets: 2.5 }, /metrics\.analytics\.buckets/],
    [{ window: '10s', buckets: 15 }, /metrics\.analytics\.window: expected at least one second per bucket/],
    [{ maxEndpoints: 0 }, /metrics\.analytics\.maxEndpoints/],
    [{ limit: 0 }, /metrics\.analytics\.limit: expected a whole number of endpoints/],
    [{ path: 'metrics/analytics' }, /metrics\.analytics\.path: expected a path starting with '\/'/],
    [{ serve: 'yes' }, /metrics\.analytics\.serve: expected true or false/],
    [{ serve: false, path: '/a' }, /metrics\.analytics\.serve: is false while path is '\/a'/],
    [{ windw: '1m' }, /metrics\.analytics\.windw: unknown option; did you mean 'window'\?/],
    [{ now: 5 }, /metrics\.analytics\.now: expected a function/],
    ['15m', /metrics\.analytics: expected an options object/],
  ])('refuses analytics %j at setup', (analytics, message) => {
    expect(() => metrics({ analytics } as never)).toThrow(ConfigError);
    expect(() => metrics({ analytics } as never)).toThrow(message);
  });

  it('serves only when asked: path implies serve, serve: true uses /metrics/analytics', () => {
    expect(parseAnalyticsOptions(undefined)?.path).toBeUndefined();
    expect(parseAnalyticsOptions(true)?.path).toBeUndefined();
    expect(parseAnalyticsOptions({ serve: true })?.path).toBe('/metrics/analytics');
    expect(parseAnalyticsOptions({ path: '/ops/analytics/' })?.path).toBe('/ops/analytics');
    expect(parseAnalyticsOptions(false)).toBeUndefined();
    expect(parseAnalyticsOptions({ window: '1h', buckets: 60 })?.settings).toMatchObject({
      windowMs: 3_600_000,
      buckets: 60,
      maxEndpoints: 1000,
    });
  });
});

describe('analytics: through metrics()', () => {
  /** Durations are driven through performance.now, which the metrics middleware reads on entry and at finish. */
  let perfNow = 0;
  const servers: http.Server[] = [];
  beforeEach(() => {
    perfNow = 1_000;
    jest.spyOn(performance, 'now').mockImplementation(() => perfNow);
  });
  afterEach(async () => {
    jest.restoreAllMocks();
    await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
  });

  /** A stack with only requestId, metrics and bodyParser on, so other middleware cannot change the outcome. */
  function appWith(metricsOptions: Record<string, unknown> = {}, extra: StackConfig = {}) {
    const off: StackConfig = {};
    for (const name of STACK_ORDER) if (!['requestId', 'metrics', 'bodyParser'].includes(name)) (off as Record<string, boolean>)[name] = false;
    let clock = NOON;
    const stack = createStack({
      logger: recordingLogger().logger,
      ...off,
      metrics: { defaultMetrics: false, ...metricsOptions, analytics: { now: () => clock, ...(metricsOptions.analytics as object) } },
      ...extra,
    });
    const app = newApp();
    app.use(stack);
    // The route "takes" ?ms= milliseconds: the fake performance clock moves on before it answers.
    const work = (status: number) => (req: Request, res: Response) => {
      perfNow += Number(req.query.ms ?? 1);
      res.status(status).json({ ok: status < 400 });
    };
    app.get('/games/:id', work(200));
    app.post('/games', work(201));
    app.get('/reports/:day', work(200));
    app.get('/payments/:id', work(502));
    app.use(stack.errorHandler);
    // One listening server per app: supertest would otherwise open and close one per request.
    const server = http.createServer(app).listen(0);
    servers.push(server);
    return { app: server, stack, setClock: (ms: number) => (clock = ms) };
  }

  async function drive(app: ReturnType<typeof appWith>['app']) {
    for (let i = 0; i < 24; i++) await request(app).get(`/games/${i}?ms=2`).expect(200);
    for (let i = 0; i < 6; i++) await request(app).post(`/games?ms=20`).send({}).expect(201);
    for (let i = 0; i < 19; i++)
      await request(app)
        .get(`/reports/2024-01-0${i % 9}?ms=300`)
        .expect(200);
    await request(app).get('/reports/slowest?ms=1500').expect(200);
    for (let i = 0; i < 3; i++) await request(app).get(`/payments/${i}?ms=50`).expect(502);
    await request(app).get('/nope').expect(404);
  }

  it('reports top, slowest and failing endpoints by route template from the requests served', async () => {
    const { app, stack } = appWith();
    await drive(app);
    const report = stack.middleware.metrics.analytics();
    expect(report.top).toEqual([
      { endpoint: 'GET /games/:id', method: 'GET', route: '/games/:id', count: 24 },
      { endpoint: 'GET /reports/:day', method: 'GET', route: '/reports/:day', count: 20 },
      { endpoint: 'POST /games', method: 'POST', route: '/games', count: 6 },
      { endpoint: 'GET /payments/:id', method: 'GET', route: '/payments/:id', count: 3 },
      { endpoint: 'GET #unmatched', method: 'GET', route: '#unmatched', count: 1 },
    ]);
    const reports = report.slowest[0];
    expect(reports.endpoint).toBe('GET /reports/:day');
    // 19 × 300 ms and 1 × 1500 ms: nearest-rank p50 and p95 are 300 ms, p99 the 1.5 s one.
    expect(Math.abs(reports.p50_ms - 300)).toBeLessThanOrEqual(300 * PERCENTILE_RELATIVE_ERROR);
    expect(Math.abs(reports.p95_ms - 300)).toBeLessThanOrEqual(300 * PERCENTILE_RELATIVE_ERROR);
    expect(Math.abs(reports.p99_ms - 1500)).toBeLessThanOrEqual(1500 * PERCENTILE_RELATIVE_ERROR);
    expect(report.slowest.map((s) => s.endpoint)).toEqual([
      'GET /reports/:day',
      'GET /payments/:id',
      'POST /games',
      'GET /games/:id',
      'GET #unmatched',
    ]);
    expect(report.error_rates).toEqual([
      { endpoint: 'GET /payments/:id', count: 3, errors_5xx: 3, errors_4xx: 0, error_rate: 1, client_error_rate: 0 },
      { endpoint: 'GET #unmatched', count: 1, errors_5xx: 0, errors_4xx: 1, error_rate: 0, client_error_rate: 1 },
    ]);
    expect(report.totals).toEqual({ requests: 54, errors: 3, errors_4xx: 1, error_rate: 0.0556 });
    expect(stack.middleware.metrics.analytics({ limit: 1 }).top).toHaveLength(1);
    // The Prometheus series count the same requests.
    const json = await stack.metricsRegistry.getSingleMetric('http_requests_total')!.get();
    expect(json.values.reduce((sum, v) => sum + v.value, 0)).toBe(54);
  });

  it('forgets requests older than the window', async () => {
    const { app, stack, setClock } = appWith({ analytics: { window: '5m', buckets: 5 } });
    await request(app).get('/games/1').expect(200);
    setClock(NOON + 3 * MINUTE);
    await request(app).get('/reports/1').expect(200);
    expect(stack.middleware.metrics.analytics().totals.requests).toBe(2);
    setClock(NOON + 5 * MINUTE);
    const report = stack.middleware.metrics.analytics();
    expect(report.top.map((t) => t.endpoint)).toEqual(['GET /reports/:day']);
    expect(report.window.seconds).toBe(240);
  });

  it("caps endpoints at maxEndpoints and counts the rest as '#other'", async () => {
    const { app, stack } = appWith({ analytics: { maxEndpoints: 2 } });
    await request(app).get('/games/1').expect(200);
    await request(app).get('/games/2').expect(200);
    await request(app).post('/games').send({}).expect(201);
    await request(app).get('/reports/1').expect(200);
    await request(app).get('/payments/1').expect(502);
    expect(stack.middleware.metrics.analytics().top.map((t) => [t.endpoint, t.count])).toEqual([
      [OTHER_ENDPOINT, 2],
      ['GET /games/:id', 2],
      ['POST /games', 1],
    ]);
  });

  describe('GET /metrics/analytics', () => {
    const TOKEN = 'analytics-token-1234';

    it('answers the report as JSON behind the metrics token, and is not counted itself', async () => {
      const { app } = appWith({ token: TOKEN, analytics: { serve: true } });
      await drive(app);

      const missing = await request(app).get('/metrics/analytics').expect(401);
      expect(missing.headers['www-authenticate']).toMatch(/^Bearer/);
      expect(missing.body.error).toMatchObject({ code: 'AUTHENTICATION_REQUIRED', request_id: missing.headers['x-request-id'] });
      const wrong = await request(app).get('/metrics/analytics').set('Authorization', 'Bearer nope').expect(401);
      expect(wrong.body.error.code).toBe('INVALID_TOKEN');

      const res = await request(app).get('/metrics/analytics').set('Authorization', `Bearer ${TOKEN}`).expect(200);
      expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
      expect(res.headers['cache-control']).toBe('no-store');
      const report = res.body as AnalyticsReport;
      expect(Object.keys(report)).toEqual(['window', 'totals', 'top', 'slowest', 'error_rates']);
      expect(report.window).toEqual({ from: new Date(NOON).toISOString(), to: new Date(NOON).toISOString(), seconds: 0 });
      expect(Object.keys(report.totals)).toEqual(['requests', 'errors', 'errors_4xx', 'error_rate']);
      expect(Object.keys(report.slowest[0])).toEqual(['endpoint', 'p50_ms', 'p95_ms', 'p99_ms', 'count']);
      expect(Object.keys(report.error_rates[0])).toEqual([
        'endpoint',
        'count',
        'errors_5xx',
        'errors_4xx',
        'error_rate',
        'client_error_rate',
      ]);
      // 54 requests driven; the refused and served analytics requests are not among them.
      expect(report.totals.requests).toBe(54);
      expect(report.top.map((t) => t.route)).not.toContain('/metrics/analytics');

      const head = await request(app).head('/metrics/analytics').set('Authorization', `Bearer ${TOKEN}`).expect(200);
      expect(head.text).toBeUndefined();
      // The metrics text is still where it was, under the same token.
      await request(app).get('/metrics').set('Authorization', `Bearer ${TOKEN}`).expect(200);
    });

    it('applies the metrics allow list, and serves at a custom path only', async () => {
      const { app } = appWith({ allow: ['10.0.0.0/8'], analytics: { path: '/ops/analytics' } });
      const refused = await request(app).get('/ops/analytics').expect(403);
      expect(refused.body.error.code).toBe('FORBIDDEN');
      const open = appWith({ analytics: { path: '/ops/analytics' } });
      await request(open.app).get('/games/1').expect(200);
      const res = await request(open.app).get('/ops/analytics?x=1').expect(200);
      expect(res.body.top).toEqual([{ endpoint: 'GET /games/:id', method: 'GET', route: '/games/:id', count: 1 }]);
      await request(open.app).get('/metrics/analytics').expect(404);
    });

    it('is not served by default', async () => {
      const { app } = appWith();
      await request(app).get('/metrics/analytics').expect(404);
    });
  });

  it('works on a standalone metrics() handler too', async () => {
    let clock = NOON;
    const handler = metrics({ defaultMetrics: false, prefix: 'standalone_', analytics: { now: () => clock } });
    const app = newApp();
    app.use(handler);
    app.get('/items/:id', (_req, res) => {
      perfNow += 7;
      res.json({});
    });
    await request(app).get('/items/1').expect(200);
    await request(app).get('/items/2').expect(200);
    const report = handler.analytics();
    expect(report.top).toEqual([{ endpoint: 'GET /items/:id', method: 'GET', route: '/items/:id', count: 2 }]);
    expect(Math.abs(report.slowest[0].p95_ms - 7)).toBeLessThanOrEqual(7 * PERCENTILE_RELATIVE_ERROR);
    clock += 16 * MINUTE;
    expect(handler.analytics().totals.requests).toBe(0);
  });

  it('turns off with analytics: false, and analytics() then says how to turn it on', async () => {
    const stack = createStack({ logger: recordingLogger().logger, metrics: { defaultMetrics: false, analytics: false } });
    expect(() => stack.middleware.metrics.analytics()).toThrow(/metrics\.analytics: is false, so no analytics were recorded/);
    await stack.close();
    expect(() => createStack({ logger: recordingLogger().logger, metrics: { analytics: { windw: '1m' } as never } })).toThrow(
      /did you mean 'window'/,
    );
  });

  it.each([[{ limit: 0 }], [{ limit: 'ten' }], [{ limt: 5 }]])('refuses analytics(%j)', (query) => {
    const handler = metrics({ defaultMetrics: false });
    expect(() => handler.analytics(query as never)).toThrow(ConfigError);
  });
});

describe('dashboards/express-perimeter.json', () => {
  const dashboard = JSON.parse(readFileSync(join(__dirname, '..', 'dashboards', 'express-perimeter.json'), 'utf8'));

  interface Panel {
    type: string;
    title: string;
    datasource?: { type: string; uid: string };
    targets?: Array<{ expr: string; datasource: { uid: string } }>;
  }
  const panels: Panel[] = dashboard.panels;
  const queries: string[] = [
    ...panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)),
    ...dashboard.templating.list.filter((v: { type: string }) => v.type === 'query').map((v: { definition: string }) => v.definition),
  ];

  const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset']);
  /** The metric names and label names a PromQL expression uses. */
  function parse(expr: string): { metrics: string[]; labels: string[] } {
    const labels: string[] = [];
    let rest = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
    rest = rest.replace(/\{([^}]*)\}/g, (_m, inner: string) => {
      for (const m of inner.matchAll(/([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)/g)) labels.push(m[1]);
      return ' ';
    });
    rest = rest.replace(/\b(?:by|without|on|ignoring)\s*\(([^)]*)\)/g, (_m, inner: string) => {
      labels.push(
        ...inner
          .split(',')
          .map((l) => l.trim())
          .filter(Boolean),
      );
      return ' ';
    });
    rest = rest.replace(/\[[^\]]*\]/g, ' ');
    const metrics: string[] = [];
    for (const m of rest.matchAll(/([a-zA-Z_:][\w:]*)\s*(\()?/g)) {
      if (m[2] !== undefined || PROMQL_WORDS.has(m[1])) continue;
      // label_values(metric, label): the second argument is a label.
      if (/,\s*$/.test(rest.slice(0, m.index))) labels.push(m[1]);
      else metrics.push(m[1]);
    }
    return { metrics, labels };
  }

  /** Every series name and label name a stack with all available middleware registers once requests went through it. */
  async function registered(): Promise<Map<string, Set<string>>> {
    const configs: Record<string, unknown> = {
      auth: { jwt: { secret: 's'.repeat(32) }, required: false },
      rateLimit: { limit: 2, window: '1m' },
      cache: { ttl: 60 },
      circuitBreaker: {},
      cors: { origin: ['https://app.example'] },
      credits: { required: false },
      ipFilter: { deny: ['10.0.0.0/8'] },
      tenant: { required: false },
      loadShedding: { maxInFlight: 1000 },
    };
    const config: StackConfig = { logger: recordingLogger().logger };
    for (const name of STACK_ORDER) if (STACK_ENTRIES[name] !== undefined) (config as Record<string, unknown>)[name] = configs[name] ?? true;
    const stack = createStack(config);
    const app = newApp();
    app.use(stack);
    app.get('/games/:id', (_req, res) => {
      res.json({ ok: true });
    });
    app.use(stack.errorHandler);
    const first = await request(app).get('/games/1');
    expect([first.status, first.body]).toEqual([200, { ok: true }]);
    await request(app).get('/games/1?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E');
    await request(app).get('/games/2').set('Authorization', 'Bearer not-a-jwt');
    await request(app).get('/games/3');
    await request(app).get('/games/4');
    await stack.close();
    return namesOf(stack.metricsRegistry);
  }

  async function namesOf(registry: Registry): Promise<Map<string, Set<string>>> {
    const names = new Map<string, Set<string>>();
    for (const metric of await registry.getMetricsAsJSON()) {
      const labels = new Set<string>((registry.getSingleMetric(metric.name) as unknown as { labelNames?: string[] }).labelNames ?? []);
      for (const v of metric.values as Array<{ metricName?: string; labels: Record<string, unknown> }>) {
        for (const l of Object.keys(v.labels)) labels.add(l);
        if (v.metricName !== undefined) names.set(v.metricName, labels);
      }
      names.set(metric.name, labels);
    }
    // Added by Prometheus at scrape time, not by the library.
    for (const labels of names.values()) for (const l of ['job', 'instance']) labels.add(l);
    return names;
  }

  it('is an importable dashboard on a ${DS_PROMETHEUS} input', () => {
    expect(dashboard.__inputs).toEqual([expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' })]);
    expect(dashboard.uid).toBe('express-perimeter');
    expect(dashboard.id).toBeNull();
    const queryPanels = panels.filter((p) => p.type !== 'row');
    expect(queryPanels.length).toBeGreaterThanOrEqual(8);
    for (const panel of queryPanels) {
      expect(panel.datasource).toEqual({ type: 'prometheus', uid: '${DS_PROMETHEUS}' });
      for (const t of panel.targets ?? []) expect(t.datasource.uid).toBe('${DS_PROMETHEUS}');
    }
  });

  it('graphs what the issue asks for', () => {
    const all = queries.join('\n');
    expect(all).toContain('sum by (method, route) (rate(http_requests_total');
    expect(all).toMatch(/histogram_quantile\(0\.95, sum by \(le, method, route\) \(rate\(http_request_duration_seconds_bucket/);
    expect(all).toContain('status_code=~"5.."');
    for (const name of [
      'rate_limit_rejections_total',
      'cache_hits_total',
      'cache_misses_total',
      'circuit_breaker_state',
      'auth_failures_total',
      'http_requests_in_progress',
    ]) {
      expect(all).toContain(name);
    }
  });

  it('queries only metric names and labels the library registers', async () => {
    const names = await registered();
    const used = new Set<string>();
    for (const expr of queries) {
      const { metrics: metricNames, labels } = parse(expr);
      expect(metricNames.length).toBeGreaterThan(0);
      const known = new Set<string>(['le']);
      for (const name of metricNames) {
        used.add(name);
        if (!names.has(name)) throw new Error(`${name} (in ${expr}) is not registered; registered: ${[...names.keys()].sort().join(', ')}`);
        for (const l of names.get(name) ?? []) known.add(l);
      }
      for (const label of labels)
        if (!known.has(label)) throw new Error(`label ${label} (in ${expr}) is on none of ${metricNames.join(', ')}`);
    }
    expect(used.size).toBeGreaterThanOrEqual(10);
  });

  it('catches a misspelt metric name (the check above is not vacuous)', async () => {
    const stack = createStack({ logger: recordingLogger().logger });
    const names = await namesOf(stack.metricsRegistry);
    await stack.close();
    const { metrics: used } = parse('sum(rate(rate_limit_rejected_total{job=~"$job"}[$__rate_interval]))');
    expect(used).toEqual(['rate_limit_rejected_total']);
    expect(names.has(used[0])).toBe(false);
  });
});
