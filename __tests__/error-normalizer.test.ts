import http from 'node:http';
import type { AddressInfo } from 'node:net';
import request from 'supertest';
import {
  BadRequestError,
  createStack,
  ConflictError,
  errorNormalizer,
  GatewayTimeoutError,
  HttpError,
  isHttpError,
  notFound,
  RateLimitError,
  requestId,
  ServiceUnavailableError,
  ValidationError,
} from '../index';
import { closeStacks, loadExpress, newApp, recordingLogger, stackApp } from './helpers/app';

class DbDownError extends Error {}

function appThrowing(thrown: () => unknown, options: Parameters<typeof errorNormalizer>[0] = {}) {
  const app = newApp();
  app.use(requestId());
  app.get('/x', (_req, _res, next) => {
    try {
      throw thrown();
    } catch (err) {
      next(err);
    }
  });
  app.get('/async', async () => {
    throw thrown();
  });
  app.use(notFound(), errorNormalizer(options));
  return app;
}

describe('errorNormalizer', () => {
  it.each([
    [new BadRequestError('Name is required.'), 400, 'BAD_REQUEST', 'Name is required.'],
    [new ValidationError('Bad input.', { field: 'name' }), 422, 'VALIDATION_ERROR', 'Bad input.'],
    [new ConflictError('Exists.'), 409, 'CONFLICT', 'Exists.'],
    [new HttpError(418, 'TEAPOT', "I'm a teapot."), 418, 'TEAPOT', "I'm a teapot."],
  ])('sends %p as the envelope with its status and code', async (err, status, code, message) => {
    const res = await request(appThrowing(() => err)).get('/x').expect(status);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body.error).toMatchObject({ code, message, request_id: res.headers['x-request-id'] });
  });

  it('keeps details and error headers (Retry-After)', async () => {
    const res = await request(appThrowing(() => new RateLimitError('Slow down.', { limit: 5, window: 60, retry_after: 12 }, 12))).get('/x').expect(429);
    expect(res.headers['retry-after']).toBe('12');
    expect(res.body.error.details).toEqual({ limit: 5, window: 60, retry_after: 12 });
  });

  it('keeps the status of foreign errors carrying status or statusCode', async () => {
    const e = Object.assign(new Error('Gone for good'), { status: 410, expose: true });
    const res = await request(appThrowing(() => e)).get('/x').expect(410);
    expect(res.body.error).toMatchObject({ code: 'GONE', message: 'Gone for good' });
    const s = Object.assign(new Error('upstream 10.0.0.5 down'), { statusCode: 502 });
    const res2 = await request(appThrowing(() => s, { expose: false })).get('/x').expect(502);
    expect(res2.body.error.code).toBe('BAD_GATEWAY');
    expect(res2.body.error.message).not.toContain('10.0.0.5');
  });

  it.each([
    ['a string', () => 'plain string thrown'],
    ['a number', () => 42],
    ['an object', () => ({ weird: true })],
  ])('turns %s thrown into 500 INTERNAL_ERROR without crashing', async (_name, thrown) => {
    const res = await request(appThrowing(thrown, { expose: false })).get('/x').expect(500);
    expect(res.body.error).toMatchObject({ code: 'INTERNAL_ERROR', message: 'An internal error occurred.' });
  });

  it.each([
    ['null', null],
    ['undefined', undefined],
    ['a string', 'oops'],
  ])('turns %s thrown inside the stack into 500 INTERNAL_ERROR', async (_name, value) => {
    const stack = createStack({
      logger: recordingLogger().logger,
      errorNormalizer: { expose: false },
      insert: [{ after: 'requestId', name: 'thrower', handler: () => { throw value; } }],
    });
    const app = newApp();
    app.use(stack);
    app.get('/x', (_req, res) => {
      res.send('unreachable');
    });
    app.use(stack.errorHandler);
    const res = await request(app).get('/x').expect(500);
    expect(res.body.error).toMatchObject({ code: 'INTERNAL_ERROR', request_id: res.headers['x-request-id'] });
    await stack.close();
  });

  it('catches rejected async handlers (Express 5) with the same envelope', async () => {
    if (process.env.EXPRESS_MAJOR === '4') return; // Express 4 does not route async rejections.
    const res = await request(appThrowing(() => new BadRequestError('nope'))).get('/async').expect(400);
    expect(res.body.error.code).toBe('BAD_REQUEST');
  });

  it('hides 5xx messages in production (no message, stack, host or address)', async () => {
    const res = await request(appThrowing(() => new Error('connect ECONNREFUSED 172.31.30.29:5432 at db.internal'), { expose: false })).get('/x').expect(500);
    expect(JSON.stringify(res.body)).not.toMatch(/172\.31|db\.internal|ECONNREFUSED|stack/);
    expect(res.body.error).toEqual({ code: 'INTERNAL_ERROR', message: 'An internal error occurred.', request_id: res.headers['x-request-id'] });
  });

  it('hides 5xx messages when NODE_ENV=production by default', async () => {
    const previous = process.env.NODE_ENV;
    process.env.NODE_ENV = 'production';
    try {
      const app = appThrowing(() => new Error('secret internals'));
      const res = await request(app).get('/x').expect(500);
      expect(res.body.error.message).toBe('An internal error occurred.');
    } finally {
      process.env.NODE_ENV = previous;
    }
  });

  it('shows 5xx messages outside production, never the stack', async () => {
    const res = await request(appThrowing(() => new Error('db exploded'), { expose: true })).get('/x').expect(500);
    expect(res.body.error.message).toBe('db exploded');
    expect(JSON.stringify(res.body)).not.toContain('at ');
  });

  it('shows library 503/504 messages even in production (they carry nothing internal)', async () => {
    const r1 = await request(appThrowing(() => new ServiceUnavailableError('Circuit open.', undefined, 'CIRCUIT_OPEN'), { expose: false })).get('/x').expect(503);
    expect(r1.body.error).toMatchObject({ code: 'CIRCUIT_OPEN', message: 'Circuit open.' });
    const r2 = await request(appThrowing(() => new GatewayTimeoutError(), { expose: false })).get('/x').expect(504);
    expect(r2.body.error.code).toBe('GATEWAY_TIMEOUT');
  });

  it("emits RFC 9457 problem+json with format 'problem'", async () => {
    const res = await request(appThrowing(() => new ValidationError('Bad input.', { field: 'name' }), { format: 'problem' })).get('/x').expect(422);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(res.body).toMatchObject({
      type: 'https://express-perimeter.dev/errors/validation-error',
      title: expect.any(String),
      status: 422,
      detail: 'Bad input.',
      instance: '/x',
      code: 'VALIDATION_ERROR',
      request_id: res.headers['x-request-id'],
      details: { field: 'name' },
    });
  });

  it('maps user error classes with map', async () => {
    const res = await request(appThrowing(() => new DbDownError('pg at 10.1.1.1 down'), { map: [[DbDownError, { status: 503, code: 'DB_DOWN' }]], expose: false }))
      .get('/x')
      .expect(503);
    expect(res.body.error.code).toBe('DB_DOWN');
    expect(res.body.error.message).not.toContain('10.1.1.1');
  });

  it('gives 404 NOT_FOUND for unknown routes through notFound', async () => {
    const res = await request(appThrowing(() => null)).get('/missing').expect(404);
    expect(res.body.error).toMatchObject({ code: 'NOT_FOUND', request_id: res.headers['x-request-id'] });
  });

  it('refuses an unknown format at setup', () => {
    expect(() => errorNormalizer({ format: 'xml' as never })).toThrow(/errorNormalizer.format: expected 'envelope' or 'problem'/);
  });

  it('tells library errors from foreign ones', () => {
    expect(isHttpError(new BadRequestError())).toBe(true);
    expect(isHttpError(new Error('x'))).toBe(false);
    expect(isHttpError({ status: 400 })).toBe(false);
  });
});

describe('errorNormalizer never echoes the query string (#11)', () => {
  const TOKEN = 'eyJhbGciOiJIUzI1NiJ9.secret-token-123';

  function mountedApp(options: Parameters<typeof errorNormalizer>[0]) {
    const app = newApp();
    app.use(requestId());
    const router = loadExpress().Router();
    router.get('/x', (_req, _res, next) => next(new ValidationError('Bad input.', { field: 'name' })));
    app.use('/api', router);
    app.use(notFound(), errorNormalizer(options));
    return app;
  }

  it.each([
    ['envelope', { format: 'envelope' as const }],
    ['problem', { format: 'problem' as const }],
  ])('leaves a token in the query out of the %s body of a thrown error', async (_format, options) => {
    const res = await request(appThrowing(() => new ValidationError('Bad input.'), options)).get(`/x?access_token=${TOKEN}&a=1`).expect(422);
    expect(JSON.stringify(res.body)).not.toContain('secret-token');
    expect(JSON.stringify(res.body)).not.toContain('access_token');
    if (options.format === 'problem') expect(res.body.instance).toBe('/x');
  });

  it.each([
    ['envelope', { format: 'envelope' as const }],
    ['problem', { format: 'problem' as const }],
  ])('leaves a token in the query out of the %s body of a 404', async (_format, options) => {
    const res = await request(appThrowing(() => null, options)).get(`/missing?access_token=${TOKEN}`).expect(404);
    expect(JSON.stringify(res.body)).not.toContain('secret-token');
    expect(res.body.request_id ?? res.body.error.request_id).toBe(res.headers['x-request-id']);
    if (options.format === 'problem') expect(res.body.instance).toBe('/missing');
  });

  it('names the full path under a mount point, without the query, as problem instance', async () => {
    const res = await request(mountedApp({ format: 'problem' })).get(`/api/x?token=${TOKEN}#frag`).expect(422);
    expect(res.body.instance).toBe('/api/x');
  });

  it('names only the path of an absolute-form request target', async () => {
    const server = mountedApp({ format: 'problem' }).listen(0, '127.0.0.1');
    try {
      await new Promise<void>((resolve) => server.once('listening', resolve));
      const { port } = server.address() as AddressInfo;
      const body = await new Promise<string>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port, path: `http://api.example.com/api/x?access_token=${TOKEN}` }, (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (text += chunk));
          res.on('end', () => resolve(text));
        });
        req.on('error', reject);
        req.end();
      });
      expect(JSON.parse(body)).toMatchObject({ status: 422, instance: '/api/x' });
      expect(body).not.toContain('secret-token');
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe('errorNormalizer never throws (#11)', () => {
  afterEach(closeStacks);

  // A Proxy whose every trap throws: reading, testing, listing or converting it fails.
  const hostile = new Proxy(
    {},
    new Proxy({}, {
      get: () => () => {
        throw new Error('trap');
      },
    }),
  );
  const throwing = (name: string) => () => {
    throw new Error(`${name} getter`);
  };
  const withGetter = <T extends object>(target: T, name: string): T => Object.defineProperty(target, name, { get: throwing(name) });
  const circular: Record<string, unknown> = { field: 'name' };
  circular.self = circular;
  const fatal = { status: 500, code: 'INTERNAL_ERROR' };

  it.each<[string, () => unknown, { status: number; code: string; message?: string }]>([
    ['an error whose status getter throws', () => withGetter(new Error('x'), 'status'), fatal],
    ['an error whose statusCode getter throws', () => withGetter(new Error('x'), 'statusCode'), fatal],
    ['a library error whose status getter throws', () => withGetter(new BadRequestError('x'), 'status'), fatal],
    ['a Proxy that throws on every trap', () => hostile, fatal],
    ['an error with a throwing toJSON', () => Object.assign(new Error('x'), { toJSON: throwing('toJSON') }), fatal],
    ['a 4xx whose details have a throwing toJSON', () => new ValidationError('Bad input.', { toJSON: throwing('toJSON') }), fatal],
    ['an error whose message getter throws', () => withGetter(new Error(), 'message'), fatal],
    ['a 4xx whose message getter throws', () => withGetter(Object.assign(new Error(), { status: 404, expose: true }), 'message'), fatal],
    ['a library error whose message getter throws', () => withGetter(new BadRequestError(), 'message'), fatal],
    ['a library error whose details getter throws', () => withGetter(new BadRequestError('x'), 'details'), fatal],
    ['an error whose type getter throws', () => withGetter(new Error('x'), 'type'), fatal],
    ['a frozen library error', () => Object.freeze(new BadRequestError('Frozen but fine.')), { status: 400, code: 'BAD_REQUEST', message: 'Frozen but fine.' }],
    ['a frozen foreign error', () => Object.freeze(Object.assign(new Error('Gone.'), { status: 410, expose: true })), { status: 410, code: 'GONE', message: 'Gone.' }],
    ['null', () => null, fatal],
    ['undefined', () => undefined, fatal],
    ['the number 42', () => 42, fatal],
    ['a Symbol', () => Symbol('boom'), fatal],
    ['an object without a prototype', () => Object.create(null), fatal],
    ['an object whose conversion to a string throws', () => ({ [Symbol.toPrimitive]: throwing('toPrimitive') }), fatal],
    ['a 4xx with circular details', () => new ValidationError('Bad input.', circular), fatal],
    ['a 4xx with a BigInt in its details', () => new ValidationError('Bad input.', { n: BigInt(1) }), fatal],
    ['a library error with status 99', () => new HttpError(99), fatal],
    ['a library error with status 600', () => new HttpError(600), fatal],
    ['a library error with status 200', () => new HttpError(200), fatal],
    ['a library error with status NaN', () => new HttpError(Number.NaN), fatal],
    ["a library error with status 'abc'", () => new HttpError('abc' as never), fatal],
    ['a foreign error with status 99', () => Object.assign(new Error('x'), { status: 99 }), fatal],
    ['a foreign error with status 600', () => Object.assign(new Error('x'), { status: 600 }), fatal],
    ["a foreign error with status 'abc'", () => Object.assign(new Error('x'), { status: 'abc' }), fatal],
    ['a foreign error with status NaN', () => Object.assign(new Error('x'), { status: Number.NaN }), fatal],
    ["an object typed 'constructor'", () => ({ type: 'constructor' }), fatal],
    ["an object typed '__proto__'", () => ({ type: '__proto__' }), fatal],
    ['a library error whose code is not a name', () => new HttpError(418, 42 as never, 'Teapot.'), { status: 418, code: 'BAD_REQUEST', message: 'Teapot.' }],
    ['a library error with an empty message', () => new HttpError(404, 'NOT_FOUND', ''), { status: 404, code: 'NOT_FOUND', message: 'The resource was not found.' }],
  ])('answers %s with the envelope and the request id', async (_name, thrown, expected) => {
    for (const format of ['envelope', 'problem'] as const) {
      const app = newApp();
      app.use(requestId());
      const normalize = errorNormalizer({ format, expose: false });
      // Called directly: Express treats next(null) as "no error", and some of these values it never routes.
      app.get('/x', (req, res, next) => normalize(thrown(), req, res, next));
      const res = await request(app).get('/x');
      expect(res.status).toBe(expected.status);
      const id = res.headers['x-request-id'];
      if (format === 'envelope') {
        expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
        expect(res.body.error).toMatchObject({ code: expected.code, request_id: id, ...(expected.message ? { message: expected.message } : {}) });
        if (expected.status === 500) expect(res.body).toEqual({ error: { code: 'INTERNAL_ERROR', message: 'An internal error occurred.', request_id: id } });
      } else {
        expect(res.headers['content-type']).toBe('application/problem+json; charset=utf-8');
        expect(res.body).toMatchObject({ status: expected.status, code: expected.code, request_id: id, instance: '/x' });
      }
    }
  });

  it('drops error headers that are not valid HTTP headers, keeping the valid ones and the status', async () => {
    const err = new RateLimitError('Slow down.', undefined, 5).withHeaders({ 'X-Bad': 'a\r\nSet-Cookie: x=1', 'Bad Name': 'v', 'Content-Length': '0', 'X-Fine': 'ok' });
    const res = await request(appThrowing(() => err)).get('/x').expect(429);
    expect(res.headers['retry-after']).toBe('5');
    expect(res.headers['x-fine']).toBe('ok');
    expect(res.headers['x-bad']).toBeUndefined();
    expect(res.headers['set-cookie']).toBeUndefined();
    expect(res.body.error.code).toBe('RATE_LIMIT_EXCEEDED');
  });

  it('logs an unreadable error under its request id instead of failing', async () => {
    const { app, lines } = stackApp({}, (a) => {
      a.get('/x', (_req, _res, next) => next(new Proxy(new Error('x'), { get: throwing('get'), getPrototypeOf: throwing('getPrototypeOf') })));
    });
    const res = await request(app).get('/x').expect(500);
    expect(res.body.error).toMatchObject({ code: 'INTERNAL_ERROR', request_id: res.headers['x-request-id'] });
    const logged = lines.find((l) => l.message?.startsWith('Request failed'));
    expect(logged).toMatchObject({ level: 'error', request_id: res.headers['x-request-id'], status_code: 500 });
  });

  it('cuts the connection of a response already under way, logs, and keeps serving', async () => {
    const { app, lines } = stackApp({}, (a) => {
      a.get('/partial', (_req, res, next) => {
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.write('half of it');
        next(hostile);
      });
      a.get('/ok', (_req, res) => {
        res.send('ok');
      });
    });
    await expect(request(app).get('/partial')).rejects.toThrow();
    await request(app).get('/ok').expect(200);
    expect(lines.some((l) => l.message?.startsWith('Request failed') && l.level === 'error')).toBe(true);
  });
});

describe('errorNormalizer map is checked at setup (#11)', () => {
  it.each<[string, unknown]>([
    ['a status under 400', [[DbDownError, { status: 200 }]]],
    ['a status over 599', [[DbDownError, { status: 600 }]]],
    ['a status that is not a number', [[DbDownError, { status: '503' }]]],
    ['a code that is not a name', [[DbDownError, { status: 503, code: 'DB DOWN' }]]],
    ['an entry that is not a pair', [DbDownError]],
  ])('refuses %s', (_name, map) => {
    expect(() => errorNormalizer({ map: map as never })).toThrow(/^errorNormalizer\.map: /);
  });
});
