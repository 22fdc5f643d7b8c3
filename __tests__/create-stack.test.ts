import request from 'supertest';
import { createStack, ConfigError } from '../index';
import { newApp, recordingLogger } from './helpers/app';

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
});
