import request from 'supertest';
import { createStack, ConfigError, getContext, rateLimit } from '../index';
import { resetForwardedForWarning } from '../lib/forwarded-for';
import { resetWarnings } from '../lib/warnings';
import { describeRedis, newApp, recordingLogger, redisUrl, uniquePrefix } from './helpers/app';

function appWith(config: Parameters<typeof createStack>[0] = {}) {
  const stack = createStack(config);
  const app = newApp();
  app.use(stack);
  app.get('/games/:id', (req, res) => {
    res.json({ id: req.params.id, requestId: req.id });
  });
  app.post('/games', (req, res) => {
    res.status(201).json(req.body);
  });
  app.get('/boom', () => {
    throw new Error('connection to 172.31.30.29 refused');
  });
  app.use(stack.errorHandler);
  return { app, stack };
}

describe('createStack', () => {
  it('gives every response a request id and security headers by default', async () => {
    const { app, stack } = appWith({ logger: recordingLogger().logger });
    const res = await request(app).get('/games/7').expect(200);
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.body).toEqual({ id: '7', requestId: res.headers['x-request-id'] });
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['x-powered-by']).toBeUndefined();
    await stack.close();
  });

  it.each([
    ['/metrics with its token', '/metrics', 'Bearer metrics-token', 200],
    ['the 401 of /metrics', '/metrics', 'Bearer wrong', 401],
    ['/health', '/health', undefined, 200],
    ['/health/ready', '/health/ready', undefined, 200],
  ])('gives %s the security headers and no X-Powered-By, though it answers before securityHeaders (#11)', async (_name, path, authorization, status) => {
    const { app, stack } = appWith({ logger: recordingLogger().logger, metrics: { token: 'metrics-token' } });
    const req = request(app).get(path);
    if (authorization !== undefined) req.set('Authorization', authorization);
    const res = await req.expect(status);
    expect(res.headers['x-powered-by']).toBeUndefined();
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['content-security-policy']).toBe("default-src 'none';frame-ancestors 'none'");
    expect(res.headers['strict-transport-security']).toBe('max-age=31536000; includeSubDomains');
    await stack.close();
  });

  it("sets the user's securityHeaders options on those early answers too", async () => {
    const { app, stack } = appWith({ logger: recordingLogger().logger, securityHeaders: { referrerPolicy: { policy: 'same-origin' } } });
    const res = await request(app).get('/health').expect(200);
    expect(res.headers['referrer-policy']).toBe('same-origin');
    await stack.close();
  });

  it('leaves X-Powered-By and the security headers alone when securityHeaders is off', async () => {
    const { app, stack } = appWith({ logger: recordingLogger().logger, securityHeaders: false });
    const res = await request(app).get('/health').expect(200);
    expect(res.headers['x-powered-by']).toBe('Express');
    expect(res.headers['x-content-type-options']).toBeUndefined();
    await stack.close();
  });

  it('answers unknown routes with the 404 envelope', async () => {
    const { app } = appWith({ logger: recordingLogger().logger });
    const res = await request(app).get('/nope').expect(404);
    expect(res.body).toEqual({
      error: { code: 'NOT_FOUND', message: 'No route for GET /nope.', request_id: res.headers['x-request-id'] },
    });
  });

  it('parses JSON bodies and turns malformed JSON into 400 INVALID_JSON', async () => {
    const { app } = appWith({ logger: recordingLogger().logger });
    await request(app).post('/games').send({ name: 'Go' }).expect(201, { name: 'Go' });
    const bad = await request(app).post('/games').set('Content-Type', 'application/json').send('{"name":').expect(400);
    expect(bad.body.error.code).toBe('INVALID_JSON');
  });

  it('hides 5xx internals in production while the log keeps them under the same request id', async () => {
    const { logger, lines } = recordingLogger();
    const { app } = appWith({ logger, errorNormalizer: { expose: false } });
    const res = await request(app).get('/boom').expect(500);
    expect(res.body.error).toEqual({ code: 'INTERNAL_ERROR', message: 'An internal error occurred.', request_id: res.headers['x-request-id'] });
    expect(JSON.stringify(res.body)).not.toContain('172.31');
    const line = lines.find((l) => l.level === 'error' && l.request_id === res.headers['x-request-id'] && l.err);
    expect(line?.err.message).toContain('172.31.30.29');
    expect(line?.err.stack).toContain('Error');
  });

  it('refuses unknown config keys, naming the nearest known key', () => {
    expect(() => createStack({ rateLimt: {} } as never)).toThrow(ConfigError);
    expect(() => createStack({ requestID: {} } as never)).toThrow(/did you mean 'requestId'/);
  });

  it('places inserted middleware at the named point and lists it in order', async () => {
    const seen: string[] = [];
    const stack = createStack({
      logger: recordingLogger().logger,
      insert: [{ after: 'requestId', name: 'probe', handler: (req, _res, next) => { seen.push(req.id); next(); } }],
    });
    expect(stack.order.slice(0, 2)).toEqual(['requestId', 'probe']);
    const app = newApp();
    app.use(stack);
    app.get('/', (_req, res) => { res.send('ok'); });
    const res = await request(app).get('/').expect(200);
    expect(seen).toEqual([res.headers['x-request-id']]);
  });

  it('keeps the request context across body parsing and awaited code', async () => {
    const stack = createStack({ logger: recordingLogger().logger });
    const app = newApp();
    app.use(stack);
    app.post('/echo', async (req, res) => {
      await new Promise((r) => setTimeout(r, 5));
      res.json({ id: req.id, fromContext: getContext()?.requestId, body: req.body });
    });
    const res = await request(app).post('/echo').send({ a: 1 }).expect(200);
    expect(res.body).toEqual({ id: res.headers['x-request-id'], fromContext: res.headers['x-request-id'], body: { a: 1 } });
  });

  it("applies trustProxy to the app, and warns once (ERR_TRUST_PROXY_OFF) when X-Forwarded-For arrives while it is off", async () => {
    resetWarnings();
    resetForwardedForWarning();
    const { logger, lines } = recordingLogger();
    const off = createStack({ logger });
    const app = newApp();
    app.use(off);
    app.get('/ip', (req, res) => {
      res.json({ ip: req.ip });
    });
    const first = await request(app).get('/ip').set('X-Forwarded-For', '203.0.113.9').expect(200);
    await request(app).get('/ip').set('X-Forwarded-For', '203.0.113.9').expect(200);
    expect(first.body.ip).not.toBe('203.0.113.9');
    expect(lines.filter((l) => l.code === 'ERR_TRUST_PROXY_OFF')).toHaveLength(1);

    const on = createStack({ logger, trustProxy: true });
    const app2 = newApp();
    app2.use(on);
    app2.get('/ip', (req, res) => {
      res.json({ ip: req.ip });
    });
    const trusted = await request(app2).get('/ip').set('X-Forwarded-For', '203.0.113.9').expect(200);
    expect(trusted.body.ip).toBe('203.0.113.9');
  });

  it('refuses a middleware value that is not options, true or false', () => {
    expect(() => createStack({ requestId: 'yes' } as never)).toThrow(/requestId: expected an options object, true or false, got 'yes'/);
    expect(() => createStack({ rateLimit: [] } as never)).toThrow(/rateLimit: expected an options object, true or false, got an array/);
    expect(() => createStack({ insert: [{ after: 'nope', name: 'x', handler: () => undefined }] })).toThrow(/'nope' is not an enabled middleware/);
  });

  it('leaves out middleware set to false', async () => {
    const stack = createStack({ logger: recordingLogger().logger, securityHeaders: false, requestLogger: false });
    expect(stack.order).not.toContain('securityHeaders');
    expect(stack.order).not.toContain('requestLogger');
    const app = newApp();
    app.use(stack);
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    const res = await request(app).get('/').expect(200);
    expect(res.headers['x-content-type-options']).toBeUndefined();
    await stack.close();
    await stack.close();
  });

  it('warns once that memory stores are per instance under NODE_ENV=production', () => {
    resetWarnings();
    const previous = process.env.NODE_ENV;
    process.env.NODE_ENV = 'production';
    try {
      const { logger, lines } = recordingLogger();
      createStack({ logger });
      createStack({ logger });
      expect(lines.filter((l) => l.code === 'ERR_MEMORY_STORE_IN_PRODUCTION')).toHaveLength(1);
    } finally {
      process.env.NODE_ENV = previous;
    }
  });

  it('refuses a factory given as a middleware key, saying to write its options (#12)', () => {
    expect(() => createStack({ rateLimit } as never)).toThrow(ConfigError);
    expect(() => createStack({ rateLimit } as never)).toThrow(
      /^rateLimit: expected an options object, true or false, got a function: write rateLimit: \{ … \} with its options/,
    );
    expect(() => createStack({ timeout: rateLimit() } as never)).toThrow(/^timeout: expected an options object, true or false, got a function/);
  });
});

describeRedis('a route-level rateLimit that requests reach before (or without) the Redis stack', () => {
  const open: Array<{ close(): Promise<void> }> = [];
  beforeEach(() => resetWarnings());
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.close()));
  });

  /** An app with a Redis stack and a /login limiter mounted `where` relative to it. */
  function appWith(where: 'before' | 'after', withRedis = true) {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ logger, redis: withRedis ? redisUrl : undefined, keyPrefix: uniquePrefix(), rateLimit: false });
    open.push(stack);
    const limiter = rateLimit({ limit: 5, prefix: `login-${where}-${uniquePrefix().slice(5, 13)}` });
    const app = newApp();
    if (where === 'before') app.use('/login', limiter);
    app.use(stack);
    if (where === 'after') app.use('/login', limiter);
    app.post('/login', (_req, res) => {
      res.json({ ok: true });
    });
    return { app, stack, lines };
  }

  const outside = (lines: Array<Record<string, any>>) => lines.filter((line) => line.code === 'ERR_RATE_LIMIT_OUTSIDE_STACK');

  it("warns once, in the stack's logger, that a limiter mounted before the stack counts in memory (#12)", async () => {
    const { app, lines } = appWith('before');
    await request(app).post('/login').expect(200);
    await request(app).post('/login').expect(200);
    expect(outside(lines)).toEqual([
      expect.objectContaining({
        level: 'warn',
        message: expect.stringMatching(/^rateLimit\(\) \(limiter 'login-before-.*'\) served a request that no stack had seen, so it counts in this instance's memory.*mount it after app\.use\(stack\)/),
      }),
    ]);
  });

  it('stays quiet for a limiter mounted after the stack, which counts in Redis (#12)', async () => {
    const { app, lines } = appWith('after');
    await request(app).post('/login').expect(200);
    expect(outside(lines)).toEqual([]);
  });

  it('stays quiet when no stack with Redis is open, or once it is closed (#12)', async () => {
    const { app, lines, stack } = appWith('before', false);
    await request(app).post('/login').expect(200);
    expect(outside(lines)).toEqual([]);
    await stack.close();
    const closed = appWith('before');
    await closed.stack.close();
    await request(closed.app).post('/login').expect(200);
    expect(outside(closed.lines)).toEqual([]);
  });
});
