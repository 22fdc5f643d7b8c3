import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NextFunction, Request, Response } from 'express';
import request from 'supertest';
import {
  audit,
  auditLog,
  bodyParser,
  ConfigError,
  createStack,
  NotFoundError,
  requestId,
  verifyAuditChain,
  type AuditLogOptions,
  type AuditRecord,
  type StackConfig,
} from '../index';
import { resourceName, singularize } from '../lib/audit/event-name';
import { resetWarnings } from '../lib/warnings';
import { eventually, loadExpress, newApp, recordingLogger } from './helpers/app';

// Everything but the audit log (and the body parser and request id it reads) off, so each test
// sees only what auditLog does.
const ONLY_AUDIT: StackConfig = {
  requestLogger: false, metrics: false, securityHeaders: false, ipFilter: false, sizeLimit: false, timeout: false,
  rateLimit: false, sanitize: false, cache: false,
};

/** A function sink that keeps what it gets. */
function collector(): { records: AuditRecord[]; sink: (record: AuditRecord) => void } {
  const records: AuditRecord[] = [];
  return { records, sink: (record) => void records.push(record) };
}

/** A promise and its resolver, to hold a sink until the test lets it go. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

/** An app with requestId, bodyParser and `auditLog(options)` in front of the routes `routes` adds. */
function auditedApp(options: AuditLogOptions, routes: (app: ReturnType<typeof newApp>) => void) {
  const handler = auditLog(options);
  const app = newApp();
  app.use(requestId());
  app.use(bodyParser());
  app.use(handler);
  routes(app);
  return { app, handler };
}

const handlers: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  await Promise.all(handlers.splice(0).map((h) => h.close()));
});
beforeEach(() => resetWarnings());

describe('auditLog event names', () => {
  it.each([
    ['games', 'game'],
    ['categories', 'category'],
    ['addresses', 'address'],
    ['statuses', 'status'],
    ['people', 'person'],
    ['children', 'child'],
    ['boxes', 'box'],
    ['matches', 'match'],
    ['caches', 'cache'],
    ['houses', 'house'],
    ['databases', 'database'],
    ['policies', 'policy'],
    ['movies', 'movie'],
    ['analyses', 'analysis'],
    ['news', 'news'],
    ['status', 'status'],
    ['login', 'login'],
  ])('singularises %s to %s', (plural, singular) => {
    expect(singularize(plural)).toBe(singular);
  });

  it.each([
    ['study-sessions', 'STUDY_SESSION'],
    ['user_profiles', 'USER_PROFILE'],
    ['studySessions', 'STUDY_SESSION'],
    ['oauth2-clients', 'OAUTH2_CLIENT'],
  ])('writes the resource %s as %s', (segment, name) => {
    expect(resourceName(segment)).toBe(name);
  });

  // method, route template, URL called, event, resource_id (the response body carries id 'body-1')
  it.each([
    ['post', '/api/games', '/api/games', 'GAME_CREATED', 'body-1'],
    ['put', '/api/games/:id', '/api/games/7', 'GAME_UPDATED', '7'],
    ['patch', '/api/games/:id', '/api/games/7', 'GAME_UPDATED', '7'],
    ['delete', '/api/games/:id', '/api/games/7', 'GAME_DELETED', '7'],
    ['post', '/api/categories', '/api/categories', 'CATEGORY_CREATED', 'body-1'],
    ['post', '/users/:userId/addresses', '/users/5/addresses', 'ADDRESS_CREATED', 'body-1'],
    ['patch', '/orders/:orderId/statuses/:statusId', '/orders/1/statuses/9', 'STATUS_UPDATED', '9'],
    ['post', '/people', '/people', 'PERSON_CREATED', 'body-1'],
    ['post', '/api/study-sessions', '/api/study-sessions', 'STUDY_SESSION_CREATED', 'body-1'],
    ['delete', '/api/v2/user_profiles/:id', '/api/v2/user_profiles/u-1', 'USER_PROFILE_DELETED', 'u-1'],
    ['post', '/companies/:id/policies', '/companies/3/policies', 'POLICY_CREATED', 'body-1'],
    ['post', '/boxes', '/boxes', 'BOX_CREATED', 'body-1'],
  ] as const)('%s %s → %s', async (method, template, url, event, resourceId) => {
    const { records, sink } = collector();
    const { app, handler } = auditedApp({ sink }, (a) => {
      a[method](template, (_req: Request, res: Response) => {
        res.status(method === 'post' ? 201 : 200).json({ id: 'body-1' });
      });
    });
    handlers.push(handler);
    await request(app)[method](url).send({ name: 'x' }).expect(method === 'post' ? 201 : 200);
    await handler.flush();
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ event, route: template, action: `${method.toUpperCase()} ${url}`, resource_id: resourceId });
  });

  it('names events of routes in mounted routers by the full template, and of unmatched URLs by their path', async () => {
    const express = loadExpress();
    const { records, sink } = collector();
    const { app, handler } = auditedApp({ sink }, (a) => {
      const router = express.Router();
      router.post('/matches', (_req, res) => {
        res.status(201).json({ id: 11 });
      });
      a.use('/api', router);
    });
    handlers.push(handler);
    await request(app).post('/api/matches').send({}).expect(201);
    await request(app).delete('/api/replays/12345').expect(404);
    await handler.flush();
    expect(records.map((r) => [r.event, r.route, r.status, r.resource_id])).toEqual([
      ['MATCH_CREATED', '/api/matches', 201, 11],
      ['REPLAY_DELETED', '#unmatched', 404, null],
    ]);
  });

  it("audit('USER_BANNED') on a route replaces the derived name; a function names it per request", async () => {
    const { records, sink } = collector();
    const { app, handler } = auditedApp({ sink }, (a) => {
      a.post('/users/:id/ban', audit('USER_BANNED'), (_req, res) => {
        res.json({ ok: true });
      });
      a.patch('/users/:id', audit((req) => (req.body.role === 'admin' ? 'USER_PROMOTED' : 'USER_UPDATED')), (_req, res) => {
        res.json({ ok: true });
      });
    });
    handlers.push(handler);
    await request(app).post('/users/9/ban').expect(200);
    await request(app).patch('/users/9').send({ role: 'admin' }).expect(200);
    await request(app).patch('/users/9').send({ role: 'user' }).expect(200);
    await handler.flush();
    expect(records.map((r) => [r.event, r.resource_id])).toEqual([
      ['USER_BANNED', '9'],
      ['USER_PROMOTED', '9'],
      ['USER_UPDATED', '9'],
    ]);
  });

  it("audit('EVENT') records a GET that auditLog lets pass, and audit(false) leaves a write out", async () => {
    const { records, sink } = collector();
    const { app, handler } = auditedApp({ sink }, (a) => {
      a.get('/reports/:id/export', audit('REPORT_EXPORTED'), (_req, res) => {
        res.send('csv');
      });
      a.get('/reports/:id', (_req, res) => {
        res.send('report');
      });
      a.post('/search', audit(false), (_req, res) => {
        res.json([]);
      });
    });
    handlers.push(handler);
    await request(app).get('/reports/4').expect(200);
    await request(app).get('/reports/4/export').expect(200);
    await request(app).post('/search').send({ q: 'go' }).expect(200);
    await handler.flush();
    expect(records.map((r) => [r.event, r.action, r.resource_id])).toEqual([['REPORT_EXPORTED', 'GET /reports/4/export', '4']]);
  });

  it('warns ERR_AUDIT_WITHOUT_AUDIT_LOG once when audit() runs where no auditLog records', async () => {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ ...ONLY_AUDIT, auditLog: false, logger });
    handlers.push(stack);
    const app = newApp();
    app.use(stack);
    app.post('/users/:id/ban', audit('USER_BANNED'), (_req, res) => {
      res.json({ ok: true });
    });
    await request(app).post('/users/1/ban').expect(200);
    await request(app).post('/users/2/ban').expect(200);
    expect(lines.filter((l) => l.code === 'ERR_AUDIT_WITHOUT_AUDIT_LOG')).toHaveLength(1);
    expect(lines.filter((l) => l.message === 'audit')).toHaveLength(0);
  });
});

describe('auditLog records', () => {
  it('records who did what, where from and how it ended', async () => {
    const { records, sink } = collector();
    const { app, handler } = auditedApp({ sink }, (a) => {
      a.post('/api/games', (req, res) => {
        res.status(201).json({ id: 123, name: req.body.name });
      });
    });
    handlers.push(handler);
    const res = await request(app).post('/api/games?token=abc').set('X-Request-ID', 'req-audit-1').send({ name: 'Go' }).expect(201);
    await handler.flush();
    expect(records).toEqual([
      {
        timestamp: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
        event: 'GAME_CREATED',
        user_id: null,
        tenant_id: null,
        action: 'POST /api/games',
        route: '/api/games',
        ip: expect.stringMatching(/127\.0\.0\.1|::1/),
        status: 201,
        resource_id: 123,
        request_id: res.headers['x-request-id'],
      },
    ]);
    expect(res.headers['x-request-id']).toBe('req-audit-1');
    expect(JSON.stringify(records)).not.toContain('token');
  });

  it('takes user_id and tenant_id from req.user and req.tenant, and the API key name when one authenticated', async () => {
    const { records, sink } = collector();
    const handler = auditLog({ sink });
    handlers.push(handler);
    const app = newApp();
    app.use((req: Request, _res: Response, next: NextFunction) => {
      req.user = { id: '42' };
      req.tenant = { id: 'acme' };
      req.apiKey = { name: 'ci-key', userId: '42' };
      next();
    });
    app.use(handler);
    app.delete('/api/games/:id', (_req, res) => {
      res.status(204).end();
    });
    await request(app).delete('/api/games/5').expect(204);
    await handler.flush();
    expect(records[0]).toMatchObject({ user_id: '42', tenant_id: 'acme', api_key: 'ci-key', event: 'GAME_DELETED', resource_id: '5', status: 204 });
  });

  it('takes resource_id from the URL when an error handler answers a failed write outside the route', async () => {
    const { records, sink } = collector();
    const { app, handler } = auditedApp({ sink }, (a) => {
      a.delete('/api/games/:id', (_req, _res, next) => next(new NotFoundError('No such game.')));
      a.use((err: NotFoundError, _req: Request, res: Response, _next: NextFunction) => {
        res.status(err.status).json({ error: { code: err.code } });
      });
    });
    handlers.push(handler);
    await request(app).delete('/api/games/42').expect(404);
    await handler.flush();
    expect(records[0]).toMatchObject({ event: 'GAME_DELETED', status: 404, resource_id: '42' });
  });

  it('records failed writes with their status, and leaves them out with onlySuccessful', async () => {
    const routes = (a: ReturnType<typeof newApp>) => {
      a.post('/games', (req, res) => {
        res.status(req.body.ok ? 201 : 422).json({ id: 1 });
      });
    };
    const all = collector();
    const first = auditedApp({ sink: all.sink }, routes);
    const ok = collector();
    const second = auditedApp({ sink: ok.sink, onlySuccessful: true }, routes);
    handlers.push(first.handler, second.handler);
    for (const app of [first.app, second.app]) {
      await request(app).post('/games').send({ ok: false }).expect(422);
      await request(app).post('/games').send({ ok: true }).expect(201);
    }
    await Promise.all([first.handler.flush(), second.handler.flush()]);
    expect(all.records.map((r) => r.status)).toEqual([422, 201]);
    expect(ok.records.map((r) => r.status)).toEqual([201]);
  });

  it('with includeBody adds the body as changes with every secret redacted, and bounds it', async () => {
    const { records, sink } = collector();
    const { app, handler } = auditedApp({ sink, includeBody: true, maxBodySize: 300 }, (a) => {
      a.post('/users', (req, res) => {
        // The handler changing req.body afterwards does not change the record.
        req.body.name = 'changed';
        res.status(201).json({ id: 'u1' });
      });
    });
    handlers.push(handler);
    const password = 'hunter2-very-secret';
    await request(app)
      .post('/users')
      .send({ name: 'Ada', password, profile: { apiKey: 'k-123456', note: 'x' }, tags: ['a', 'b'] })
      .expect(201);
    await request(app).post('/users').send({ name: 'B', bio: 'z'.repeat(5000), password }).expect(201);
    await handler.flush();
    expect(records[0].changes).toEqual({ name: 'Ada', password: '[REDACTED]', profile: { apiKey: '[REDACTED]', note: 'x' }, tags: ['a', 'b'] });
    expect(records[0].changes_truncated).toBeUndefined();
    expect(records[1].changes_truncated).toBe(true);
    expect(JSON.stringify(records[1].changes).length).toBeLessThanOrEqual(320);
    expect(JSON.stringify(records)).not.toContain(password);
    expect(JSON.stringify(records)).not.toContain('k-123456');
  });

  it('adds nothing to GET requests: no record and res.json left as it is', async () => {
    const { records, sink } = collector();
    const { app, handler } = auditedApp({ sink }, (a) => {
      a.get('/games', (_req, res) => {
        res.json({ wrapped: Object.prototype.hasOwnProperty.call(res, 'json') });
      });
      a.post('/games', (_req, res) => {
        res.json({ wrapped: Object.prototype.hasOwnProperty.call(res, 'json') });
      });
    });
    handlers.push(handler);
    expect((await request(app).get('/games').expect(200)).body).toEqual({ wrapped: false });
    expect((await request(app).post('/games').expect(200)).body).toEqual({ wrapped: true });
    await handler.flush();
    expect(records.map((r) => r.action)).toEqual(['POST /games']);
  });

  it('records the methods listed in methods, and not requests skip() names', async () => {
    const { records, sink } = collector();
    const { app, handler } = auditedApp({ sink, methods: ['delete', 'GET'], skip: (req) => req.path === '/health' }, (a) => {
      a.all('/games/:id', (_req, res) => {
        res.send('ok');
      });
      a.all('/health', (_req, res) => {
        res.send('ok');
      });
    });
    handlers.push(handler);
    await request(app).post('/games/1').expect(200);
    await request(app).get('/games/1').expect(200);
    await request(app).delete('/games/1').expect(200);
    await request(app).get('/health').expect(200);
    await handler.flush();
    expect(records.map((r) => r.event)).toEqual(['GAME_READ', 'GAME_DELETED']);
  });
});

describe('auditLog sinks', () => {
  it("'logger' (the stack's default) writes one info line 'audit' with the record's fields", async () => {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ ...ONLY_AUDIT, logger });
    handlers.push(stack);
    expect(stack.order).toContain('auditLog');
    const app = newApp();
    app.use(stack);
    app.post('/api/games', (_req, res) => {
      res.status(201).json({ id: 123 });
    });
    app.get('/api/games', (_req, res) => {
      res.json([]);
    });
    app.use(stack.errorHandler);
    const res = await request(app).post('/api/games').send({ name: 'Go' }).expect(201);
    await request(app).get('/api/games').expect(200);
    await stack.close();
    const audits = lines.filter((l) => l.message === 'audit');
    expect(audits).toHaveLength(1);
    expect(audits[0]).toMatchObject({ level: 'info', event: 'GAME_CREATED', action: 'POST /api/games', status: 201, resource_id: 123, request_id: res.headers['x-request-id'] });
  });

  it('{ file } appends JSON Lines, and a chained file continues its chain after a restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'perimeter-audit-'));
    try {
      const file = join(dir, 'audit.jsonl');
      const run = async (n: number) => {
        const { app, handler } = auditedApp({ sink: { file }, chain: true }, (a) => {
          a.post('/games', (_req, res) => {
            res.status(201).json({ id: 1 });
          });
        });
        for (let i = 0; i < n; i++) await request(app).post('/games').expect(201);
        await handler.close();
      };
      await run(3);
      const first = readFileSync(file, 'utf8').split('\n');
      expect(first).toHaveLength(4);
      expect(first[3]).toBe('');
      expect(first.slice(0, 3).map((l) => JSON.parse(l).event)).toEqual(['GAME_CREATED', 'GAME_CREATED', 'GAME_CREATED']);
      await run(2);
      const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l !== '');
      expect(lines.map((l) => JSON.parse(l).seq)).toEqual([1, 2, 3, 4, 5]);
      expect(verifyAuditChain(lines)).toMatchObject({ valid: true, count: 5 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('sends every record to each of several sinks, each function once and in order', async () => {
    const a = collector();
    const b = collector();
    const { app, handler } = auditedApp({ sink: [a.sink, b.sink], batchSize: 2 }, (app_) => {
      app_.put('/items/:id', (_req, res) => {
        res.send('ok');
      });
    });
    handlers.push(handler);
    for (let i = 1; i <= 5; i++) await request(app).put(`/items/${i}`).expect(200);
    await handler.flush();
    expect(a.records.map((r) => r.resource_id)).toEqual(['1', '2', '3', '4', '5']);
    expect(b.records.map((r) => r.resource_id)).toEqual(['1', '2', '3', '4', '5']);
    expect(handler.stats().map((s) => [s.sink, s.written, s.queued])).toEqual([
      ['function:sink', 5, 0],
      ['function:sink#2', 5, 0],
    ]);
  });

  it('a sink that throws its first 3 times loses nothing, and does not hold back the other sinks', async () => {
    const { logger, lines } = recordingLogger();
    const good = collector();
    const flaky: AuditRecord[] = [];
    let calls = 0;
    // Its first success waits for the test to look: how far its retries get while the requests
    // run depends on the machine's load, not on the code.
    const recovered = gate();
    const flakySink = async function flakySink(record: AuditRecord) {
      if (++calls <= 3) throw new Error(`disk unavailable (${calls})`);
      await recovered.promise;
      flaky.push(record);
    };
    const { app, handler } = auditedApp({ sink: [flakySink, good.sink], retryDelay: '150ms', logger }, (a) => {
      a.post('/games', (_req, res) => {
        res.status(201).json({ id: 'g' });
      });
    });
    handlers.push(handler);
    for (let i = 0; i < 4; i++) await request(app).post('/games').expect(201);
    // The good sink has everything while the flaky one is still failing.
    await eventually(() => expect(good.records).toHaveLength(4));
    expect(flaky).toHaveLength(0);
    recovered.open();
    await eventually(() => expect(flaky).toHaveLength(4));
    expect(flaky.map((r) => r.request_id)).toEqual(good.records.map((r) => r.request_id));
    expect(calls).toBe(7);
    expect(lines.filter((l) => l.code === 'ERR_AUDIT_SINK_FAILED')).toEqual([
      expect.objectContaining({ level: 'warn', sink: 'function:flakySink', err: expect.objectContaining({ message: 'disk unavailable (1)' }) }),
    ]);
    expect(lines.filter((l) => l.code === 'ERR_AUDIT_SINK_RECOVERED')).toEqual([expect.objectContaining({ level: 'info', failed_attempts: 3 })]);
    expect(handler.stats()[0]).toMatchObject({ written: 4, dropped: 0, failing: false });
  });

  it("overflow 'drop' drops past maxQueue, counts audit_records_dropped_total and warns once per episode", async () => {
    const { logger, lines } = recordingLogger();
    const hold = gate();
    const written: AuditRecord[] = [];
    const stuck = async function stuck(record: AuditRecord) {
      await hold.promise;
      written.push(record);
    };
    const stack = createStack({ ...ONLY_AUDIT, logger, auditLog: { sink: stuck, maxQueue: 2, overflow: 'drop' } });
    handlers.push(stack);
    const app = newApp();
    app.use(stack);
    app.post('/games', (_req, res) => {
      res.status(201).json({ id: 1 });
    });
    for (let i = 0; i < 5; i++) await request(app).post('/games').expect(201);
    const metric = async () => (await stack.metricsRegistry.getSingleMetric('audit_records_dropped_total')?.get())?.values ?? [];
    expect(await metric()).toEqual([expect.objectContaining({ value: 3, labels: { sink: 'function:stuck' } })]);
    expect(lines.filter((l) => l.code === 'ERR_AUDIT_RECORDS_DROPPED')).toEqual([expect.objectContaining({ level: 'warn', sink: 'function:stuck', max_queue: 2 })]);
    hold.open();
    expect(await stack.middleware.auditLog.flush()).toBe(true);
    expect(written).toHaveLength(2);
    expect(stack.middleware.auditLog.stats()[0]).toMatchObject({ written: 2, dropped: 3, queued: 0 });
    expect(lines.filter((l) => l.code === 'ERR_AUDIT_RECORDS_DROPPED').map((l) => l.dropped)).toEqual([undefined, 3]);
  });

  it("overflow 'block' holds the next write until its sink has room, and refuses it with 503 after blockTimeout", async () => {
    const hold = gate();
    const written: AuditRecord[] = [];
    const slow = async (record: AuditRecord) => {
      await hold.promise;
      written.push(record);
    };
    // 'atDoor' sees each request reach auditLog: the test waits for that, not for a time.
    const atDoor: string[] = [];
    const stack = createStack({
      ...ONLY_AUDIT,
      logger: recordingLogger().logger,
      auditLog: { sink: slow, maxQueue: 1, blockTimeout: '10s' },
      insert: [{ before: 'auditLog', name: 'atDoor', handler: (req, _res, next) => void (atDoor.push(req.id), next()) }],
    });
    handlers.push(stack);
    const app = newApp();
    let ran = 0;
    app.use(stack);
    app.post('/games', (_req, res) => {
      ran++;
      res.status(201).json({ id: ran });
    });
    app.use(stack.errorHandler);
    await request(app).post('/games').expect(201);
    const second = request(app).post('/games').then((r) => r);
    await eventually(() => expect(atDoor).toHaveLength(2));
    // A few turns of the event loop: a write that was not held would have run by then.
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    // Held at the door: the handler (the write) has not run.
    expect(ran).toBe(1);
    hold.open();
    expect((await second).status).toBe(201);
    expect(ran).toBe(2);
    await stack.middleware.auditLog.flush();
    expect(written.map((r) => r.resource_id)).toEqual([1, 2]);

    const refusing = createStack({ ...ONLY_AUDIT, logger: recordingLogger().logger, auditLog: { sink: () => new Promise(() => undefined), maxQueue: 1, blockTimeout: '50ms', closeTimeout: '10ms' } });
    handlers.push(refusing);
    const app2 = newApp();
    app2.use(refusing);
    app2.post('/games', (_req, res) => {
      res.status(201).json({ id: 1 });
    });
    app2.use(refusing.errorHandler);
    await request(app2).post('/games').expect(201);
    const refused = await request(app2).post('/games').expect(503);
    expect(refused.headers['retry-after']).toBe('1');
    expect(refused.body.error).toMatchObject({ code: 'SERVICE_UNAVAILABLE', request_id: refused.headers['x-request-id'] });
  });

  it('close() resolves once queued records are written, and stack.close() calls it', async () => {
    const written: AuditRecord[] = [];
    // The sink writes only once close() has begun: a sink that merely took some time per record
    // could finish before close() on a slow machine, and the test would prove nothing.
    const writing = gate();
    const slow = async (record: AuditRecord) => {
      await writing.promise;
      written.push(record);
    };
    const stack = createStack({ ...ONLY_AUDIT, logger: recordingLogger().logger, auditLog: { sink: slow, batchSize: 1, closeTimeout: '10s' } });
    const app = newApp();
    app.use(stack);
    app.post('/games', (_req, res) => {
      res.status(201).end();
    });
    await Promise.all(Array.from({ length: 5 }, () => request(app).post('/games').expect(201)));
    expect(written).toHaveLength(0);
    let closed = false;
    const closing = stack.close().then(() => (closed = true));
    await new Promise((r) => setImmediate(r));
    expect(closed).toBe(false);
    writing.open();
    await closing;
    expect(written).toHaveLength(5);
  });

  it('close() logs what it could not deliver within closeTimeout at error, record included, and so does a record after close', async () => {
    const { logger, lines } = recordingLogger();
    const { app, handler } = auditedApp({ sink: () => new Promise<void>(() => undefined), closeTimeout: '100ms', logger }, (a) => {
      a.post('/games', (_req, res) => {
        res.status(201).json({ id: 'g1' });
      });
    });
    await request(app).post('/games').expect(201);
    await request(app).post('/games').expect(201);
    expect(await handler.flush(20)).toBe(false);
    await handler.close();
    const undelivered = lines.filter((l) => l.code === 'ERR_AUDIT_UNDELIVERED');
    expect(undelivered).toHaveLength(2);
    expect(undelivered[0]).toMatchObject({ level: 'error', sink: 'function:sink', record: { event: 'GAME_CREATED', resource_id: 'g1' } });
    await request(app).post('/games').expect(201);
    await eventually(() => expect(lines.filter((l) => l.code === 'ERR_AUDIT_UNDELIVERED')).toHaveLength(3));
    expect(handler.stats()[0].dropped).toBe(3);
  });

  it('with maxRetries gives a batch up to the error log instead of retrying for ever', async () => {
    const { logger, lines } = recordingLogger();
    const { app, handler } = auditedApp({ sink: () => { throw new Error('nope'); }, maxRetries: 2, retryDelay: '5ms', logger }, (a) => {
      a.post('/games', (_req, res) => {
        res.status(201).end();
      });
    });
    handlers.push(handler);
    await request(app).post('/games').expect(201);
    await eventually(() => expect(lines.filter((l) => l.code === 'ERR_AUDIT_UNDELIVERED')).toHaveLength(1));
    expect(lines.find((l) => l.code === 'ERR_AUDIT_UNDELIVERED')?.reason).toMatch(/after 2 retries: nope/);
  });

  it.each([
    [{ sink: 'loger' }, /auditLog\.sink: unknown sink 'loger'; did you mean 'logger'/],
    [{ sink: [] }, /at least one sink/],
    [{ sink: { redisStream: 'audit' } }, /auditLog\.sink\.redis: .*needs its own Redis/],
    [{ sink: { file: '/no/such/dir/audit.jsonl' } }, /auditLog\.sink\.file: the directory \/no\/such\/dir does not exist/],
    [{ sink: { file: 'a.jsonl', fsycn: true } }, /did you mean 'fsync'/],
    [{ methods: 'POST' }, /auditLog\.methods: expected a non-empty array/],
    [{ genesis: 'abc' }, /auditLog\.genesis: expected 64 lowercase hex/],
    [{ overflow: 'wait' }, /auditLog\.overflow: expected one of 'block', 'drop'/],
    [{ chian: true }, /did you mean 'chain'/],
    [{ maxQueue: 0 }, /auditLog\.maxQueue/],
  ])('refuses %j at setup with a ConfigError that says what to do', (options, message) => {
    expect(() => auditLog(options as AuditLogOptions)).toThrow(ConfigError);
    expect(() => auditLog(options as AuditLogOptions)).toThrow(message);
  });

  it('refuses { redisStream } on a stack without Redis, app.use(auditLog) without parentheses, and a bad audit() name', () => {
    expect(() => createStack({ logger: recordingLogger().logger, auditLog: { sink: { redisStream: 'audit' } } })).toThrow(/needs Redis: pass redis to createStack\(\)/);
    expect(() => auditLog({ method: 'POST', headers: {}, url: '/' } as never)).toThrow(/app\.use\(auditLog\(\)\) with parentheses/);
    expect(() => audit('' as string)).toThrow(ConfigError);
    expect(() => audit('has space')).toThrow(/expected an event name/);
  });
});
