import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Express, NextFunction, Request, Response } from 'express';
import { Counter, register as globalRegistry, type Registry } from 'prom-client';
import request from 'supertest';
import { ConfigError, createStack, errorNormalizer, metrics, NotFoundError, requestId, type StackConfig } from '../index';
import { fromExpress4Regexp, routeTemplate, UNMATCHED_ROUTE } from '../lib/route-template';
import { stackMetrics } from '../middleware/metrics';
import { STACK_ORDER } from '../lib/stack-entries';
import { EXPRESS_MAJOR, eventually, loadExpress, newApp, recordingLogger } from './helpers/app';

const PROM_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** A stack with only requestId, metrics and bodyParser on, so other middleware cannot change the outcome. */
function quietStack(config: StackConfig = {}) {
  const off: StackConfig = {};
  for (const name of STACK_ORDER) if (!['requestId', 'metrics', 'bodyParser'].includes(name)) (off as Record<string, boolean>)[name] = false;
  return createStack({ logger: recordingLogger().logger, ...off, ...config });
}

/** The value of one sample in Prometheus text, matching `labels` exactly; undefined when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const found: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
      found[l[1]] = l[2].replace(/\\(.)/g, (_e, c: string) => (c === 'n' ? '\n' : c));
    if (JSON.stringify(Object.entries(found).sort()) === JSON.stringify(Object.entries(labels).sort())) return Number(m[3]);
  }
  return undefined;
}

async function text(registry: Registry, name = 'http_requests_total'): Promise<string> {
  return registry.getSingleMetricAsString(name);
}

const ok = (_req: Request, res: Response) => {
  res.json({ ok: true });
};

describe('metrics: series and labels', () => {
  function appWith(config: StackConfig = {}) {
    const stack = quietStack(config);
    const app = newApp();
    app.use(stack);
    app.get('/games/:id', ok);
    app.post('/games', (req, res) => {
      res.status(201).json(req.body);
    });
    app.use(stack.errorHandler);
    return { app, stack };
  }

  it('counts requests and observes durations under {method, route template, status_code}', async () => {
    const { app, stack } = appWith();
    for (const id of ['1', '2', '3']) await request(app).get(`/games/${id}`).expect(200);
    await request(app).post('/games').send({ name: 'Go' }).expect(201);

    const counters = await text(stack.metricsRegistry);
    expect(sample(counters, 'http_requests_total', { method: 'GET', route: '/games/:id', status_code: '200' })).toBe(3);
    expect(sample(counters, 'http_requests_total', { method: 'POST', route: '/games', status_code: '201' })).toBe(1);
    // Bounded: the ids never become label values.
    expect(counters).not.toMatch(/\/games\/[123]/);

    const durations = await text(stack.metricsRegistry, 'http_request_duration_seconds');
    const labels = { method: 'GET', route: '/games/:id', status_code: '200' };
    expect(sample(durations, 'http_request_duration_seconds_count', labels)).toBe(3);
    expect(sample(durations, 'http_request_duration_seconds_bucket', { ...labels, le: '+Inf' })).toBe(3);
    expect(sample(durations, 'http_request_duration_seconds_bucket', { ...labels, le: '30' })).toBe(3);
    expect(sample(durations, 'http_request_duration_seconds_sum', labels)).toBeGreaterThan(0);
  });

  it("labels 404s from no route, and requests refused before routing, '#unmatched'", async () => {
    const { app, stack } = appWith();
    await request(app).get('/nope/123').expect(404);
    await request(app).get('/other').expect(404);
    await request(app).post('/games').set('Content-Type', 'application/json').send('{"name":').expect(400);
    const counters = await text(stack.metricsRegistry);
    expect(sample(counters, 'http_requests_total', { method: 'GET', route: UNMATCHED_ROUTE, status_code: '404' })).toBe(2);
    expect(sample(counters, 'http_requests_total', { method: 'POST', route: UNMATCHED_ROUTE, status_code: '400' })).toBe(1);
    expect(counters).not.toContain('/nope');
  });

  it('is on in the default stack, right after requestLogger, with its series in stack.metricsRegistry before any request', async () => {
    const stack = createStack({ logger: recordingLogger().logger });
    expect(stack.order.slice(0, 3)).toEqual(['requestId', 'requestLogger', 'metrics']);
    const help = await text(stack.metricsRegistry, 'http_request_duration_seconds');
    expect(help).toContain('# TYPE http_request_duration_seconds histogram');
    expect(await text(stack.metricsRegistry, 'process_cpu_user_seconds_total')).toContain('process_cpu_user_seconds_total');
    await stack.close();
  });

  it('leaves the stack out with metrics: false', async () => {
    const stack = quietStack({ metrics: false });
    expect(stack.order).not.toContain('metrics');
    expect(stack.metricsRegistry.getSingleMetric('http_requests_total')).toBeUndefined();
  });

  it('applies prefix, buckets and defaultMetrics: false', async () => {
    const { app, stack } = appWith({ metrics: { prefix: 'shop_', buckets: [0.5, 2], defaultMetrics: false } });
    await request(app).get('/games/1').expect(200);
    const durations = await text(stack.metricsRegistry, 'shop_http_request_duration_seconds');
    const labels = { method: 'GET', route: '/games/:id', status_code: '200' };
    expect(sample(durations, 'shop_http_request_duration_seconds_bucket', { ...labels, le: '2' })).toBe(1);
    expect(sample(durations, 'shop_http_request_duration_seconds_bucket', { ...labels, le: '0.005' })).toBeUndefined();
    expect(stack.metricsRegistry.getSingleMetric('http_requests_total')).toBeUndefined();
    expect(stack.metricsRegistry.getSingleMetric('shop_process_cpu_user_seconds_total')).toBeUndefined();
  });
});

describe('metrics: route templates', () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  function routedApp() {
    const express = loadExpress();
    const stack = quietStack();
    const app = newApp();
    app.use(stack);

    const v2 = express.Router();
    v2.get('/items/:itemId', ok);
    // A handler that answers 404 itself matched a route: its template, not '#unmatched'.
    v2.get('/items/:itemId/owner', (_req, res) => {
      res.status(404).json({ owner: null });
    });
    v2.get('/slow/:id', async (_req, res) => {
      await sleep(5);
      res.status(202).json({ ok: true });
    });
    v2.get('/fails/:id', async (_req, _res, next: NextFunction) => {
      await sleep(1);
      next(new NotFoundError('No such thing.'));
    });
    v2.get('/throws/:id', () => {
      throw new Error('boom');
    });
    app.use('/v2', v2);
    const unprefixed = express.Router();
    unprefixed.get('/health/live', ok);
    app.use(unprefixed);

    // Two levels, the inner mount path with a parameter: req.baseUrl would hold '/admin/acme'.
    const api = express.Router();
    const org = express.Router({ mergeParams: true });
    org.get('/users/:userId', ok);
    api.use('/admin/:org', org);
    app.use('/api', api);

    // The same router under two versions.
    const shared = express.Router();
    shared.get('/ping', ok);
    app.use('/v1', shared);
    app.use('/v3', shared);

    // A sub-app.
    const admin = express();
    admin.get('/stats/:day', ok);
    admin.get('/broken/:day', () => {
      throw new Error('sub-app failure');
    });
    app.use('/backoffice', admin);

    // Routes whose path is not a string.
    app.get(/^\/files\/\d+$/, ok);
    app.get(['/alpha/:a', '/beta/:b'], ok);
    app.get('/', ok);

    app.use(stack.errorHandler);
    return { app, stack };
  }

  let ctx: ReturnType<typeof routedApp>;
  beforeAll(() => {
    ctx = routedApp();
  });
  const count = async (method: string, route: string, status: string) =>
    sample(await text(ctx.stack.metricsRegistry), 'http_requests_total', { method, route, status_code: status });

  it('includes the mount path of a router (app.use(/v2, router) + /items/:itemId)', async () => {
    await request(ctx.app).get('/v2/items/42').expect(200);
    await request(ctx.app).get('/v2/items/43').expect(200);
    expect(await count('GET', '/v2/items/:itemId', '200')).toBe(2);
    await request(ctx.app).get('/health/live').expect(200);
    expect(await count('GET', '/health/live', '200')).toBe(1);
  });

  it('gives a route that sends its own 404 its template', async () => {
    await request(ctx.app).get('/v2/items/42/owner').expect(404);
    expect(await count('GET', '/v2/items/:itemId/owner', '404')).toBe(1);
  });

  it('works for async handlers, and for errors passed on from them', async () => {
    await request(ctx.app).get('/v2/slow/1').expect(202);
    await request(ctx.app).get('/v2/fails/1').expect(404);
    expect(await count('GET', '/v2/slow/:id', '202')).toBe(1);
    expect(await count('GET', '/v2/fails/:id', '404')).toBe(1);
  });

  it('keeps the mount path when an error leaves the router for the app-level error handler (Express rewinds req.baseUrl)', async () => {
    const res = await request(ctx.app).get('/v2/throws/9').expect(500);
    expect(res.body.error.code).toBe('INTERNAL_ERROR');
    expect(await count('GET', '/v2/throws/:id', '500')).toBe(1);
  });

  it('joins nested routers two levels deep, mount parameters as templates', async () => {
    await request(ctx.app).get('/api/admin/acme/users/7').expect(200);
    await request(ctx.app).get('/api/admin/globex/users/8').expect(200);
    expect(await count('GET', '/api/admin/:org/users/:userId', '200')).toBe(2);
    expect(await text(ctx.stack.metricsRegistry)).not.toMatch(/acme|globex/);
  });

  it('tells apart one router mounted at two paths', async () => {
    await request(ctx.app).get('/v1/ping').expect(200);
    await request(ctx.app).get('/v3/ping').expect(200);
    await request(ctx.app).get('/v3/ping').expect(200);
    expect(await count('GET', '/v1/ping', '200')).toBe(1);
    expect(await count('GET', '/v3/ping', '200')).toBe(2);
  });

  it('includes the mount path of a sub-app', async () => {
    await request(ctx.app).get('/backoffice/stats/monday').expect(200);
    expect(await count('GET', '/backoffice/stats/:day', '200')).toBe(1);
  });

  it("marks the mount path it cannot see with '*' (a sub-app's error answered by the parent app), never the raw URL", async () => {
    await request(ctx.app).get('/backoffice/broken/monday').expect(500);
    expect(await count('GET', '*/broken/:day', '500')).toBe(1);
    expect(await text(ctx.stack.metricsRegistry)).not.toContain('monday');
  });

  it('renders RegExp and array routes as their (bounded) source', async () => {
    await request(ctx.app).get('/files/123').expect(200);
    await request(ctx.app).get('/files/456').expect(200);
    await request(ctx.app).get('/beta/x').expect(200);
    expect(await count('GET', String(/^\/files\/\d+$/), '200')).toBe(2);
    expect(await count('GET', '/alpha/:a|/beta/:b', '200')).toBe(1);
    await request(ctx.app).get('/').expect(200);
    expect(await count('GET', '/', '200')).toBe(1);
  });

  it('routeTemplate(req) is #unmatched before routing and the template once a route ran', async () => {
    const seen: string[] = [];
    const app = newApp();
    app.use((req, _res, next) => {
      seen.push(routeTemplate(req));
      next();
    });
    const router = loadExpress().Router();
    router.get('/x/:id', (req, res) => {
      seen.push(routeTemplate(req));
      res.end();
    });
    app.use('/m', router);
    await request(app).get('/m/x/1').expect(200);
    expect(seen).toEqual([UNMATCHED_ROUTE, '/m/x/:id']);
  });

  it.each([
    ['/v2', '^\\/v2\\/?(?=\\/|$)', [], '/v2'],
    ['/users/:id', '^\\/users(?:\\/([^/]+?))\\/?(?=\\/|$)', ['id'], '/users/:id'],
    ['/users/:id?', '^\\/users(?:\\/([^/]+?))?\\/?(?=\\/|$)', ['id'], '/users/:id?'],
    ['/files/:name.:ext', '^\\/files(?:\\/([^/]+?))(?:\\.([^/\\.]+?))\\/?(?=\\/|$)', ['name', 'ext'], '/files/:name.:ext'],
    ['/x/:id(\\d+)', '^\\/x(?:\\/(\\d+))\\/?(?=\\/|$)', ['id'], '/x/:id(\\d+)'],
    ['/a.b-c_d~e', '^\\/a\\.b-c_d~e\\/?(?=\\/|$)', [], '/a.b-c_d~e'],
    ['* (unknown form)', '^(.*)\\/?(?=\\/|$)', [0], undefined],
    ['a user RegExp', '^\\/api\\/v\\d+', [], undefined],
  ])('reads the Express 4 mount path %s back from its compiled expression', (_name, source, keys, expected) => {
    expect(
      fromExpress4Regexp(
        source,
        keys.map((name) => ({ name })),
      ),
    ).toBe(expected);
  });

  if (EXPRESS_MAJOR === 4) {
    it('reads back what Express 4 path-to-regexp really compiles', () => {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const compile = require('express4/node_modules/path-to-regexp') as (p: string, k: Array<{ name: string }>, o: object) => RegExp;
      for (const path of ['/v2', '/users/:id', '/users/:id/posts', '/:org/:repo', '/files/:name.:ext']) {
        const keys: Array<{ name: string }> = [];
        const re = compile(path, keys, { end: false, strict: false, sensitive: false });
        expect(fromExpress4Regexp(re.source, keys)).toBe(path);
      }
    });
  }
});

describe('metrics: in-progress gauge', () => {
  it('goes up while a request is served and back to 0 when it finishes or the client hangs up', async () => {
    const stack = quietStack();
    const app = newApp();
    app.use(stack);
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    app.get('/hold', (_req, res) => {
      void held.then(() => {
        if (!res.writableEnded && !res.destroyed) res.json({ ok: true });
      });
    });
    app.get('/hang', () => {
      // Never answers: the client gives up.
    });
    const server = app.listen(0);
    const gaugeValue = async (method = 'GET') =>
      sample(await text(stack.metricsRegistry, 'http_requests_in_progress'), 'http_requests_in_progress', { method });
    try {
      const pending = request(server)
        .get('/hold')
        .then((r) => r.status);
      await eventually(async () => expect(await gaugeValue()).toBe(1));
      // A scrape is served while the request is in flight and reports it.
      const scraped = await request(server).get('/metrics').expect(200);
      expect(sample(scraped.text, 'http_requests_in_progress', { method: 'GET' })).toBe(1);
      release();
      expect(await pending).toBe(200);
      await eventually(async () => expect(await gaugeValue()).toBe(0));

      const { port } = server.address() as AddressInfo;
      const aborted = http.get({ port, path: '/hang' });
      aborted.on('error', () => undefined);
      await eventually(async () => expect(await gaugeValue()).toBe(1));
      aborted.destroy();
      await eventually(async () => expect(await gaugeValue()).toBe(0));
      // A request the client abandoned is counted as 499, nginx's "client closed request".
      const counters = await text(stack.metricsRegistry);
      expect(sample(counters, 'http_requests_total', { method: 'GET', route: '/hang', status_code: '499' })).toBe(1);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});

describe('metrics: the /metrics endpoint', () => {
  function appWith(options: Record<string, unknown> = {}, trustProxy = false) {
    const stack = quietStack({ metrics: options });
    const app: Express = newApp();
    if (trustProxy) app.set('trust proxy', true);
    app.use(stack);
    app.get('/games/:id', ok);
    app.use(stack.errorHandler);
    return { app, stack };
  }

  it("serves the registry with prom-client's content type, default metrics included, and does not count the scrape", async () => {
    const { app, stack } = appWith();
    await request(app).get('/games/1').expect(200);
    const res = await request(app).get('/metrics').expect(200);
    expect(res.headers['content-type']).toBe(PROM_CONTENT_TYPE);
    expect(res.headers['cache-control']).toBe('no-store');
    expect(sample(res.text, 'http_requests_total', { method: 'GET', route: '/games/:id', status_code: '200' })).toBe(1);
    expect(res.text).toContain('# TYPE process_cpu_user_seconds_total counter');
    await request(app).get('/metrics?x=1').expect(200);
    await request(app).get('/metrics/').expect(200);
    await request(app).head('/metrics').expect(200);
    const counters = await text(stack.metricsRegistry);
    expect(counters).not.toContain('/metrics');
    expect(sample(counters, 'http_requests_total', { method: 'GET', route: UNMATCHED_ROUTE, status_code: '200' })).toBeUndefined();
    expect(counters.match(/^http_requests_total\{/gm)).toHaveLength(1);
  });

  it('answers GET only: other methods on the path go on to the app', async () => {
    const { app } = appWith();
    await request(app).post('/metrics').expect(404);
    await request(app).get('/metricsx').expect(404);
  });

  it('serves at a custom path, or nowhere with path: false', async () => {
    const custom = appWith({ path: '/internal/prom' });
    await request(custom.app).get('/internal/prom').expect(200).expect('content-type', PROM_CONTENT_TYPE);
    await request(custom.app).get('/metrics').expect(404);
    const none = appWith({ path: false });
    await request(none.app).get('/metrics').expect(404);
  });

  it('with token: 401 with WWW-Authenticate: Bearer in the error envelope without it or with a wrong one, 200 with it', async () => {
    const { app } = appWith({ token: 's3cret-token' });
    const missing = await request(app).get('/metrics').expect(401);
    expect(missing.headers['www-authenticate']).toBe('Bearer');
    expect(missing.body).toEqual({
      error: { code: 'AUTHENTICATION_REQUIRED', message: expect.any(String), request_id: missing.headers['x-request-id'] },
    });
    const wrong = await request(app).get('/metrics').set('Authorization', 'Bearer s3cret-tokem').expect(401);
    expect(wrong.headers['www-authenticate']).toBe('Bearer');
    expect(wrong.body.error.code).toBe('INVALID_TOKEN');
    await request(app).get('/metrics').set('Authorization', 'Basic czNjcmV0LXRva2Vu').expect(401);
    await request(app).get('/metrics').set('Authorization', 'Bearer s3cret-token-longer').expect(401);
    const good = await request(app).get('/metrics').set('Authorization', 'Bearer s3cret-token').expect(200);
    expect(good.text).toContain('http_requests_total');
    await request(app).get('/metrics').set('Authorization', 'bearer s3cret-token').expect(200);
    // Only the scrape is protected.
    await request(app).get('/games/1').expect(200);
  });

  it('with allow: 403 FORBIDDEN to an address outside the list (req.ip, so trust proxy applies)', async () => {
    const { app } = appWith({ allow: ['10.0.0.0/8', '2001:db8::/32'] }, true);
    await request(app).get('/metrics').set('X-Forwarded-For', '10.1.2.3').expect(200);
    await request(app).get('/metrics').set('X-Forwarded-For', '2001:db8::7').expect(200);
    const refused = await request(app).get('/metrics').set('X-Forwarded-For', '203.0.113.9').expect(403);
    expect(refused.body.error).toEqual({ code: 'FORBIDDEN', message: expect.any(String), request_id: refused.headers['x-request-id'] });
    await request(app).get('/games/1').set('X-Forwarded-For', '203.0.113.9').expect(200);
  });

  it('with allow and token both: the address is checked first, then the token', async () => {
    const { app } = appWith({ allow: ['10.0.0.0/8'], token: 'tok' }, true);
    await request(app).get('/metrics').set('X-Forwarded-For', '203.0.113.9').set('Authorization', 'Bearer tok').expect(403);
    await request(app).get('/metrics').set('X-Forwarded-For', '10.0.0.1').expect(401);
    await request(app).get('/metrics').set('X-Forwarded-For', '10.0.0.1').set('Authorization', 'Bearer tok').expect(200);
  });
});

describe('metrics: registries', () => {
  it('keeps two stacks in one process apart (one registry each)', async () => {
    const a = quietStack();
    const b = quietStack();
    expect(a.metricsRegistry).not.toBe(b.metricsRegistry);
    const appA = newApp();
    appA.use(a);
    appA.get('/a', ok);
    const appB = newApp();
    appB.use(b);
    appB.get('/b', ok);
    await request(appA).get('/a').expect(200);
    await request(appA).get('/a').expect(200);
    await request(appB).get('/b').expect(200);
    const textA = await text(a.metricsRegistry);
    const textB = await text(b.metricsRegistry);
    expect(sample(textA, 'http_requests_total', { method: 'GET', route: '/a', status_code: '200' })).toBe(2);
    expect(sample(textB, 'http_requests_total', { method: 'GET', route: '/b', status_code: '200' })).toBe(1);
    expect(textA).not.toContain('"/b"');
    expect(textB).not.toContain('"/a"');
    const scrapeB = await request(appB).get('/metrics').expect(200);
    expect(scrapeB.text).not.toContain('"/a"');
  });

  it("works alone on prom-client's global registry, and serves it", async () => {
    const app = newApp();
    app.use(requestId());
    app.use(metrics({ token: 'global-token' }));
    app.get('/alone/:id', ok);
    app.use(errorNormalizer());
    await request(app).get('/alone/1').expect(200);
    const global = await globalRegistry.getSingleMetricAsString('http_requests_total');
    expect(sample(global, 'http_requests_total', { method: 'GET', route: '/alone/:id', status_code: '200' })).toBe(1);
    const scraped = await request(app).get('/metrics').set('Authorization', 'Bearer global-token').expect(200);
    expect(sample(scraped.text, 'http_requests_total', { method: 'GET', route: '/alone/:id', status_code: '200' })).toBe(1);
    expect(scraped.text).toContain('process_cpu_user_seconds_total');
    const refused = await request(app).get('/metrics').expect(401);
    expect(refused.body.error.code).toBe('AUTHENTICATION_REQUIRED');
    // A second standalone instance shares the registry without registering anything twice.
    expect(() => metrics()).not.toThrow();
    const second = newApp();
    second.use(metrics());
    second.get('/second', ok);
    await request(second).get('/second').expect(200);
    expect(
      sample(await globalRegistry.getSingleMetricAsString('http_requests_total'), 'http_requests_total', {
        method: 'GET',
        route: '/second',
        status_code: '200',
      }),
    ).toBe(1);
  });

  it('explains at setup a clash with a metric the application registered under the same name', () => {
    const stack = quietStack({ metrics: false });
    new Counter({ name: 'http_requests_total', help: 'mine', labelNames: ['path'], registers: [stack.metricsRegistry] });
    // What createStack({ metrics: … }) builds, on this stack's registry.
    const onRegistry = { runtime: { registry: stack.metricsRegistry }, config: {} } as never;
    expect(() => stackMetrics({}, onRegistry)).toThrow(/metrics\.prefix: .*'http_requests_total'.*set metrics\.prefix/);
    expect(() => stackMetrics({ prefix: 'app_' }, onRegistry)).not.toThrow();
    // Alone, on the global registry: refused at setup too, not with a 500 on every request.
    new Counter({ name: 'clash_http_request_duration_seconds', help: 'mine', labelNames: ['method'] });
    expect(() => metrics({ prefix: 'clash_' })).toThrow(/'clash_http_request_duration_seconds' of another type/);
  });
});

describe('metrics: configuration', () => {
  it.each([
    [{ path: 'metrics' }, /metrics\.path: expected a path starting with '\/'/],
    [{ path: '' }, /metrics\.path/],
    [{ allow: '10.0.0.1' }, /metrics\.allow: expected an array/],
    [{ allow: ['not-an-ip'] }, /metrics\.allow: 'not-an-ip' is not an IPv4\/IPv6 address/],
    [{ token: '' }, /metrics\.token: expected a non-empty token/],
    [{ token: 42 }, /metrics\.token/],
    [{ prefix: '1bad' }, /metrics\.prefix/],
    [{ buckets: [1, 0.5] }, /metrics\.buckets: expected increasing positive numbers/],
    [{ buckets: [] }, /metrics\.buckets/],
    [{ defaultMetrics: 'yes' }, /metrics\.defaultMetrics/],
    [{ tokne: 'x' }, /metrics\.tokne: unknown option; did you mean 'token'\?/],
  ])('refuses %j at setup with a ConfigError naming the option', (options, message) => {
    expect(() => metrics(options as never)).toThrow(ConfigError);
    expect(() => metrics(options as never)).toThrow(message);
    expect(() => createStack({ logger: recordingLogger().logger, metrics: options as never })).toThrow(message);
  });

  it('explains app.use(metrics) without parentheses', () => {
    const fakeReq = { method: 'GET', headers: {}, url: '/' };
    expect(() => metrics(fakeReq as never)).toThrow(/app\.use\(metrics\(\)\)/);
  });
});
