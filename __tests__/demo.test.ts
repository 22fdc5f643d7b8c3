import request from 'supertest';
import { createDemoApp } from '../demo/server';

// The demo is the template users copy: it must start on memory stores and every middleware it
// shows must answer as its comments say.
describe('demo service', () => {
  const { app, stack } = createDemoApp();
  afterAll(() => stack.close());
  // The demo's thresholds are for a server whose clients are elsewhere; here the client runs in
  // the same process and keeps its event loop busy on purpose, which on a loaded machine can
  // cross 0.98 utilization. Sampling stops (maxInFlight still applies); shedding itself is
  // proven in load-shedding.test.ts.
  beforeAll(() => stack.middleware.loadShedding.close());

  it('serves the games list with the stack headers and an ETag that answers 304', async () => {
    const res = await request(app).get('/api/games').expect(200);
    expect(res.body.map((g: { name: string }) => g.name)).toEqual(['Chess', 'Tetris']);
    expect(res.headers['x-request-id']).toBeDefined();
    expect(res.headers['x-ratelimit-limit']).toBe('30');
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers.etag).toMatch(/^"/);
    await request(app).get('/api/games').set('If-None-Match', res.headers.etag).expect(304);
  });

  it('refuses anonymous writes and accepts them with an API key, charging credits', async () => {
    await request(app).post('/api/games').send({ name: 'Go', genre: 'board' }).expect(401);
    const created = await request(app).post('/api/games').set('X-API-Key', 'demo-pro-key').send({ name: 'Go', genre: 'board' }).expect(201);
    expect(created.body).toMatchObject({ name: 'Go', genre: 'board' });
    expect(created.headers['x-credits-remaining']).toBe('15');
    const listed = await request(app).get('/api/games').expect(200);
    expect(listed.body.map((g: { name: string }) => g.name)).toContain('Go');
  });

  it('validates bodies with the error envelope', async () => {
    const res = await request(app).get('/api/games/999').expect(404);
    expect(res.body.error).toMatchObject({ code: 'NOT_FOUND', request_id: res.headers['x-request-id'] });
    const bad = await request(app).post('/api/games').set('Content-Type', 'application/json').send('{"name":').expect(400);
    expect(bad.body.error.code).toBe('INVALID_JSON');
  });

  it('exposes Prometheus metrics and the health route', async () => {
    await request(app).get('/health').expect(200, { status: 'ok' });
    const text = (await request(app).get('/metrics').expect(200)).text;
    expect(text).toContain('http_requests_total');
  });

  it('sheds load after health and securityHeaders, and shows its readings on /admin/load', async () => {
    expect(stack.order.indexOf('loadShedding')).toBe(stack.order.indexOf('securityHeaders') + 1);
    const res = await request(app).get('/admin/load').expect(200);
    expect(res.body).toMatchObject({
      overloaded: false,
      eventLoopDelay: { limit: 200 },
      eventLoopUtilization: { limit: 0.98 },
      inFlight: { limit: 1000 },
    });
    // The /admin/load request itself is in flight while it reads the count.
    expect(res.body.inFlight.value).toBe(1);
  });

  it('answers the flaky route with a fallback once the breaker opens', async () => {
    const answers: Array<{ status: number; degraded?: boolean }> = [];
    for (let i = 0; i < 12; i++) {
      const res = await request(app).get('/api/flaky');
      answers.push({ status: res.status, degraded: res.body.degraded });
    }
    // Calls alternate failure and success until 5 calls are in, then the breaker is open.
    expect(answers.slice(0, 5).map((a) => a.status)).toEqual([500, 200, 500, 200, 500]);
    expect(answers.slice(5)).toEqual(Array(7).fill({ status: 200, degraded: true }));
  });

  describe('POST /api/login (demo/login.ts)', () => {
    const login = (user: string, password = 'demo') => request(app).post('/api/login').send({ user, password });

    it('issues alice a JWT the stack accepts: admin role, pro tier, the pro-only flag on', async () => {
      const res = await login('alice').expect(200);
      expect(res.body).toMatchObject({ token_type: 'Bearer', expires_in: 3600, user: { sub: 'alice', roles: ['admin'], plan: 'pro' } });
      const bearer = `Bearer ${res.body.token}`;
      const created = await request(app).post('/api/games').set('Authorization', bearer).send({ name: 'Hex', genre: 'board' }).expect(201);
      expect(created.headers['x-ratelimit-limit']).toBe('60');
      await request(app).delete(`/api/games/${created.body.id}`).set('Authorization', bearer).expect(204);
      const picks = await request(app).get('/api/recommendations').set('Authorization', bearer).expect(200);
      expect(picks.body.features).toMatchObject({ 'ml-recommendations': true });
    });

    it('issues bob a free-tier token without the admin role: 403 on delete, the flag off', async () => {
      const bearer = `Bearer ${(await login('bob').expect(200)).body.token}`;
      const refused = await request(app).delete('/api/games/1').set('Authorization', bearer).expect(403);
      expect(refused.body.error.code).toBe('FORBIDDEN');
      expect(refused.headers['x-ratelimit-limit']).toBe('10');
      const off = await request(app).get('/api/recommendations').set('Authorization', bearer).expect(404);
      expect(off.body.error.code).toBe('FEATURE_DISABLED');
    });

    it('refuses a wrong password with 401 and a body without credentials with 422, in the envelope', async () => {
      const wrong = await login('alice', 'not-demo').expect(401);
      expect(wrong.body.error).toMatchObject({ code: 'AUTHENTICATION_REQUIRED', request_id: wrong.headers['x-request-id'] });
      expect(wrong.body.token).toBeUndefined();
      const empty = await request(app).post('/api/login').send({}).expect(422);
      expect(empty.body.error.code).toBe('VALIDATION_ERROR');
    });
  });
});
