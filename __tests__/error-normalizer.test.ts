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
import { newApp, recordingLogger } from './helpers/app';

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
