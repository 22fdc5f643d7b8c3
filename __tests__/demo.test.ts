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
});
