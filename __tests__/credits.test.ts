import { request as httpRequest, type Server } from 'node:http';
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import type { Express, NextFunction, Request, Response } from 'express';
import Redis from 'ioredis';
import request from 'supertest';
import { ConfigError, createStack, credits, timeout, type Stack, type StackConfig } from '../index';
import { standaloneRuntime } from '../lib/runtime';
import { resetWarnings } from '../lib/warnings';
import { creditsStore, type CreditsStore } from '../lib/stores/credits-store';
import { MemoryStores, RedisStores, type Stores } from '../lib/stores';
import { describeRedis, eventually, newApp, recordingLogger, redisUrl, uniquePrefix } from './helpers/app';
import { expectLedgerBalanced } from './helpers/ledger';
import { freshDatabase, postgresUrl } from './helpers/postgres';

// Stands in for `auth`: X-User sets req.user, X-Key sets req.apiKey.
function fakeAuth(req: Request, _res: Response, next: NextFunction): void {
  const user = req.headers['x-user'];
  if (typeof user === 'string') req.user = { id: user };
  const key = req.headers['x-key'];
  if (typeof key === 'string') req.apiKey = { name: key, userId: req.headers['x-key-user'] as string | undefined };
  next();
}

const open: Array<{ server: Server; stack?: Stack }> = [];
afterEach(async () => {
  for (const { server, stack } of open.splice(0)) {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    await stack?.close();
  }
});

function listen(app: Express, stack?: Stack): Server {
  const server = app.listen(0);
  open.push({ server, stack });
  return server;
}

// Neighbours that keep their own state (per-client limits, blocks, caches) stay out of these
// tests, so each one sees credits alone; the stack integration test runs them together.
const ONLY_CREDITS: StackConfig = { rateLimit: false, ipFilter: false, cache: false, sanitize: false, auditLog: false };

/** A stack with credits (and fakeAuth just before it), the given routes, and the error handler. */
function stackApp(config: StackConfig, routes: (app: Express, stack: Stack) => void = defaultRoutes) {
  const { logger, lines } = recordingLogger();
  // A roomy store timeout: on a loaded test machine a 100 ms reservation can time out (503).
  const withTimeout = { ...config, credits: { storeTimeout: '2s', ...(config.credits as object) } };
  const stack = createStack({ logger, ...ONLY_CREDITS, ...withTimeout, insert: [{ before: 'credits', name: 'fakeAuth', handler: fakeAuth }] });
  const app = newApp();
  app.use(stack);
  routes(app, stack);
  app.use(stack.errorHandler);
  return { stack, app, server: listen(app, stack), lines };
}

function defaultRoutes(app: Express): void {
  app.get('/ok', (_req, res) => {
    res.json({ ok: true });
  });
  app.get('/slow', (_req, res) => {
    setTimeout(() => res.json({ ok: true }), 30);
  });
  app.get('/fail', (_req, res) => {
    res.status(500).json({ failed: true });
  });
  app.get('/missing', (_req, res) => {
    res.status(404).json({ nope: true });
  });
  app.get('/throw', () => {
    throw new Error('handler blew up');
  });
  app.get('/next-error', (_req, _res, next) => {
    setTimeout(() => next(new Error('async failure')), 5);
  });
}

async function metric(stack: Stack, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = stack.metricsRegistry.getSingleMetric(name);
  if (m === undefined) return 0;
  const { values } = await m.get();
  return values.filter((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val)).reduce((sum, v) => sum + v.value, 0);
}

type Backend = [string, (prefix: string) => StackConfig];
const backends: Backend[] = [['memory', () => ({})]];
if (redisUrl) backends.push(['redis', (prefix) => ({ redis: redisUrl, keyPrefix: prefix })]);
// The same behaviour on PostgreSQL (its own tables per test, through the prefix).
let pgDatabase = '';
const tablePrefix = (prefix: string) => `${prefix.replace(/[^a-z0-9]/g, '')}_`;
if (postgresUrl) {
  beforeAll(async () => {
    pgDatabase = await freshDatabase();
  });
  backends.push(['postgres', (prefix) => ({ postgres: { url: pgDatabase, tablePrefix: tablePrefix(prefix) } })]);
}

describe.each(backends)('credits on %s stores', (backendName, backend) => {
  let prefix: string;
  beforeEach(() => {
    prefix = uniquePrefix();
  });

  it('lets exactly 10 of 30 concurrent cost-10 calls through on a balance of 100, and ends at 0', async () => {
    // On Redis and PostgreSQL two app instances share the balance, as two processes behind a load balancer would.
    const a = stackApp({ ...backend(prefix), credits: { cost: 10 } });
    const b = backendName === 'memory' ? a : stackApp({ ...backend(prefix), credits: { cost: 10 } });
    expect(await a.stack.middleware.credits.grant('alice', 100)).toBe(100);

    const responses = await Promise.all(
      Array.from({ length: 30 }, (_, i) => request(i % 2 ? b.server : a.server).get('/slow').set('X-User', 'alice')),
    );
    const statuses = responses.map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(10);
    expect(statuses.filter((s) => s === 402)).toHaveLength(20);
    const refused = responses.find((r) => r.status === 402)!;
    expect(refused.body.error).toMatchObject({ code: 'INSUFFICIENT_CREDITS', details: { required: 10 }, request_id: refused.headers['x-request-id'] });
    expect(refused.body.error.details.balance).toBeLessThan(10);
    expect(refused.body.error.details.balance).toBeGreaterThanOrEqual(0);

    await eventually(async () => {
      expect(await a.stack.middleware.credits.balance('alice')).toBe(0);
      expect(await b.stack.middleware.credits.balance('alice')).toBe(0);
    });
    const spentA = await metric(a.stack, 'credits_spent_total');
    const spentB = b === a ? 0 : await metric(b.stack, 'credits_spent_total');
    expect(spentA + spentB).toBe(100);
    const rejected = (await metric(a.stack, 'credits_rejections_total', { reason: 'insufficient' })) + (b === a ? 0 : await metric(b.stack, 'credits_rejections_total', { reason: 'insufficient' }));
    expect(rejected).toBe(20);
    if (backendName === 'postgres') await expectLedgerBalanced(pgDatabase, tablePrefix(prefix));
  });

  it.each([
    ['a 500 response', '/fail', 500],
    ['a 404 response', '/missing', 404],
    ['a thrown error', '/throw', 500],
    ['an error passed to next() later', '/next-error', 500],
  ])('refunds on %s', async (_label, path, status) => {
    const { stack, server } = stackApp({ ...backend(prefix), credits: { cost: 7 } });
    await stack.middleware.credits.grant('bob', 20);
    const res = await request(server).get(path).set('X-User', 'bob').expect(status);
    expect(res.headers['x-credits-remaining']).toBe('13');
    await eventually(async () => expect(await stack.middleware.credits.balance('bob')).toBe(20));
    expect(await metric(stack, 'credits_refunded_total')).toBe(7);
    expect(await metric(stack, 'credits_spent_total')).toBe(0);
  });

  it('keeps the credits of a 2xx response and tells the client its cost and remaining balance', async () => {
    const { stack, server } = stackApp({ ...backend(prefix), credits: { cost: 3 } });
    await stack.middleware.credits.grant('carol', 10);
    const res = await request(server).get('/ok').set('X-User', 'carol').expect(200);
    expect(res.headers['x-credits-cost']).toBe('3');
    expect(res.headers['x-credits-remaining']).toBe('7');
    await eventually(async () => expect(await metric(stack, 'credits_spent_total')).toBe(3));
    expect(await stack.middleware.credits.balance('carol')).toBe(7);
    const refused = await request(server).get('/ok').set('X-User', 'nobody').expect(402);
    expect(refused.headers['x-credits-remaining']).toBe('0');
    expect(refused.body.error.details).toEqual({ required: 3, balance: 0 });
  });

  it('refunds when the timeout middleware answers 504 for a handler that never answers', async () => {
    const { stack, server } = stackApp({ ...backend(prefix), credits: { cost: 4 } }, (app) => {
      app.get('/hang', timeout({ ms: 50 }), () => {
        // never answers
      });
    });
    await stack.middleware.credits.grant('dave', 4);
    const res = await request(server).get('/hang').set('X-User', 'dave').expect(504);
    expect(res.body.error.code).toBe('GATEWAY_TIMEOUT');
    await eventually(async () => expect(await stack.middleware.credits.balance('dave')).toBe(4));
  });

  it('refunds when the client disconnects before the response finished', async () => {
    let entered!: () => void;
    const inHandler = new Promise<void>((resolve) => (entered = resolve));
    let answerLate!: () => void;
    const lateAnswer = new Promise<void>((resolve) => (answerLate = resolve));
    let lateTried!: () => void;
    const lateDone = new Promise<void>((resolve) => (lateTried = resolve));
    const { stack, server } = stackApp({ ...backend(prefix), credits: { cost: 5 } }, (app) => {
      app.get('/long', (_req, res) => {
        entered();
        // Answers once the client is gone and refunded: too late to count as served.
        void lateAnswer.then(() => {
          if (!res.destroyed) res.json({ late: true });
          lateTried();
        });
      });
    });
    await stack.middleware.credits.grant('erin', 5);
    const { port } = server.address() as AddressInfo;
    const client = httpRequest({ port, path: '/long', headers: { 'X-User': 'erin' } });
    client.on('error', () => undefined);
    client.end();
    await inHandler;
    expect(await stack.middleware.credits.balance('erin')).toBe(0);
    client.destroy();
    await eventually(async () => expect(await stack.middleware.credits.balance('erin')).toBe(5));
    // The handler's late answer changes nothing: the refund stands.
    answerLate();
    await lateDone;
    expect(await stack.middleware.credits.balance('erin')).toBe(5);
  });

  it('charges what the cost function says, and serves a cost of 0 free without asking who pays', async () => {
    const { stack, server } = stackApp({ ...backend(prefix), credits: { cost: (req: Request) => Number(req.query.n ?? 1) } });
    await stack.middleware.credits.grant('frank', 10);
    await request(server).get('/ok?n=6').set('X-User', 'frank').expect(200);
    await request(server).get('/ok?n=0').expect(200);
    await request(server).get('/ok?n=5').set('X-User', 'frank').expect(402);
    await request(server).get('/ok?n=4').set('X-User', 'frank').expect(200);
    await eventually(async () => expect(await stack.middleware.credits.balance('frank')).toBe(0));
    const bad = await request(server).get('/ok?n=1.5').set('X-User', 'frank').expect(500);
    expect(bad.body.error.code).toBe('INTERNAL_ERROR');
  });

  it('refuses a request with no account with 401 AUTHENTICATION_REQUIRED, or serves it free with required: false', async () => {
    const strict = stackApp({ ...backend(prefix), credits: { cost: 1 } });
    const res = await request(strict.server).get('/ok').expect(401);
    expect(res.headers['www-authenticate']).toBe('Bearer');
    expect(res.body.error.code).toBe('AUTHENTICATION_REQUIRED');
    expect(res.body.error.message).toMatch(/costs credits/);
    expect(await metric(strict.stack, 'credits_rejections_total', { reason: 'unauthenticated' })).toBe(1);
    const lenient = stackApp({ ...backend(uniquePrefix()), credits: { cost: 1, required: false } });
    await request(lenient.server).get('/ok').expect(200);
    await request(lenient.server).get('/ok').set('X-User', 'gina').expect(402);
  });

  it('charges the API key owner by default when there is no user, and the key itself with account: apiKey', async () => {
    const { stack, server } = stackApp({ ...backend(prefix), credits: { cost: 2 } });
    await stack.middleware.credits.grant('owner-1', 2);
    await request(server).get('/ok').set('X-Key', 'ci-key').set('X-Key-User', 'owner-1').expect(200);
    await request(server).get('/ok').set('X-Key', 'ci-key').set('X-Key-User', 'owner-1').expect(402);
    const byKey = stackApp({ ...backend(uniquePrefix()), credits: { cost: 2, account: 'apiKey' } });
    await byKey.stack.middleware.credits.grant('ci-key', 2);
    await request(byKey.server).get('/ok').set('X-Key', 'ci-key').set('X-Key-User', 'owner-1').expect(200);
    await eventually(async () => expect(await byKey.stack.middleware.credits.balance('ci-key')).toBe(0));
  });

  it('starts unknown accounts at initialBalance, once, even under concurrency', async () => {
    const { stack, server } = stackApp({
      ...backend(prefix),
      credits: { cost: 10, initialBalance: (account: string) => (account.startsWith('pro-') ? 50 : 0) },
    });
    expect(await stack.middleware.credits.balance('pro-hal')).toBe(50);
    const statuses = (await Promise.all(Array.from({ length: 8 }, () => request(server).get('/slow').set('X-User', 'pro-hal')))).map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(5);
    await eventually(async () => expect(await stack.middleware.credits.balance('pro-hal')).toBe(0));
    expect(await stack.middleware.credits.grant('pro-ivy', 5)).toBe(55);
    await request(server).get('/ok').set('X-User', 'free-joe').expect(402);
  });

  it('grant, set, balance and history keep a ledger with the request ids', async () => {
    const { stack, server } = stackApp({ ...backend(prefix), credits: { cost: 3, historySize: 4 } });
    const m = stack.middleware.credits;
    expect(await m.balance('kim')).toBe(0);
    expect(await m.grant('kim', 10)).toBe(10);
    expect(await m.grant('kim', 5, 'promo')).toBe(15);
    expect(await m.set('kim', 9)).toBe(9);
    const ok = await request(server).get('/ok').set('X-User', 'kim').expect(200);
    const failed = await request(server).get('/fail').set('X-User', 'kim').expect(500);
    await eventually(async () => expect(await m.balance('kim')).toBe(6));
    const history = await m.history('kim');
    expect(history.map(({ delta, reason, request_id }) => ({ delta, reason, request_id }))).toEqual([
      { delta: 3, reason: 'refund', request_id: failed.headers['x-request-id'] },
      { delta: -3, reason: 'spend', request_id: failed.headers['x-request-id'] },
      { delta: -3, reason: 'spend', request_id: ok.headers['x-request-id'] },
      { delta: -6, reason: 'set', request_id: null },
    ]);
    expect(history[0].at).toBeGreaterThan(Date.now() - 60_000);
    await expect(m.grant('kim', -5)).rejects.toThrow(RangeError);
    await expect(m.grant('kim', 1.5)).rejects.toThrow(RangeError);
    await expect(m.set('kim', -1)).rejects.toThrow(RangeError);
    await expect(m.balance('')).rejects.toThrow(TypeError);
  });

  it('shares balances between the stack and a route-level credits() behind it (same namespace)', async () => {
    const { stack, server } = stackApp({ ...backend(prefix), credits: { cost: 0 } }, (app) => {
      app.post('/generate', credits({ cost: 5, storeTimeout: '2s' }), (_req, res) => {
        res.status(201).json({ made: true });
      });
      app.get('/cheap', credits({ cost: 1, namespace: 'other', storeTimeout: '2s' }), (_req, res) => {
        res.json({ ok: true });
      });
    });
    await stack.middleware.credits.grant('lee', 12);
    await request(server).post('/generate').set('X-User', 'lee').expect(201);
    await request(server).post('/generate').set('X-User', 'lee').expect(201);
    const third = await request(server).post('/generate').set('X-User', 'lee').expect(402);
    expect(third.body.error.details).toEqual({ required: 5, balance: 2 });
    await request(server).get('/cheap').set('X-User', 'lee').expect(402);
    await eventually(async () => expect(await stack.middleware.credits.balance('lee')).toBe(2));
  });
});

describe('credits behind the real auth middleware', () => {
  it('charges the user an API key belongs to, and refuses an anonymous request on a paid route', async () => {
    const { logger } = recordingLogger();
    const stack = createStack({
      logger,
      ...ONLY_CREDITS,
      auth: { jwt: false, required: false, apiKeys: [{ key: 'test-key-0123456789abcdef', name: 'ci', userId: 'u-77', tier: 'free' }] },
      credits: { cost: 2 },
    });
    const app = newApp();
    app.use(stack);
    defaultRoutes(app);
    app.use(stack.errorHandler);
    const server = listen(app, stack);
    await stack.middleware.credits.grant('u-77', 3);
    await request(server).get('/ok').set('X-API-Key', 'test-key-0123456789abcdef').expect(200);
    const short = await request(server).get('/ok').set('X-API-Key', 'test-key-0123456789abcdef').expect(402);
    expect(short.body.error.details).toEqual({ required: 2, balance: 1 });
    const anonymous = await request(server).get('/ok').expect(401);
    expect(anonymous.body.error.code).toBe('AUTHENTICATION_REQUIRED');
  });
});

describe('credits used alone', () => {
  it('runs on its own memory stores, and its methods act on the same balances', async () => {
    const stores = new MemoryStores();
    const paid = credits({ cost: 3, stores });
    const app = newApp();
    app.use(fakeAuth);
    app.get('/x', paid, (_req, res) => {
      res.json({ ok: true });
    });
    const server = listen(app);
    expect(await paid.grant('mo', 4)).toBe(4);
    await request(server).get('/x').set('X-User', 'mo').expect(200);
    // Without errorNormalizer, Express's own handler renders the error; the status is the contract.
    await request(server).get('/x').set('X-User', 'mo').expect(402);
    await eventually(async () => expect(await paid.balance('mo')).toBe(1));
    expect(await credits({ cost: 1, stores }).balance('mo')).toBe(1);
  });

  const detachedWarnings = (calls: unknown[][]) => calls.filter((args) => (args[1] as { code?: string } | undefined)?.code === 'ERR_CREDITS_DETACHED_METHODS');

  it('warns once (ERR_CREDITS_DETACHED_METHODS) when its methods are called while it serves a stack with no stores option', async () => {
    resetWarnings();
    const warn = jest.spyOn(standaloneRuntime().logger, 'warn');
    try {
      const routeCredits = credits({ cost: 1, namespace: 'detached' });
      const { stack, server } = stackApp({ credits: { cost: 0, namespace: 'detached' } }, (app) => {
        app.get('/paid', routeCredits, (_req, res) => {
          res.json({ ok: true });
        });
      });
      await stack.middleware.credits.grant('uma', 5);
      await request(server).get('/paid').set('X-User', 'uma').expect(200);
      // The request spent from the stack's balances; the detached methods see the standalone store.
      expect(await routeCredits.balance('uma')).toBe(0);
      expect(detachedWarnings(warn.mock.calls)).toHaveLength(1);
      await routeCredits.balance('uma');
      expect(detachedWarnings(warn.mock.calls)).toHaveLength(1);
      await eventually(async () => expect(await stack.middleware.credits.balance('uma')).toBe(4));
    } finally {
      warn.mockRestore();
    }
  });

  it('refuses misconfiguration at setup, naming the option and the fix', () => {
    expect(() => credits({ cost: -1 })).toThrow(ConfigError);
    expect(() => credits({ cost: 2.5 })).toThrow(/credits\.cost: expected a whole number/);
    expect(() => credits({ cost: '5' as never })).toThrow(/credits\.cost/);
    expect(() => credits({ onStoreError: 'memory' as never })).toThrow(/credits\.onStoreError: expected one of 'closed', 'open'/);
    expect(() => credits({ account: 'ip' as never })).toThrow(/credits\.account/);
    expect(() => credits({ storeTimeout: 'soon' })).toThrow(/credits\.storeTimeout/);
    expect(() => credits({ initialBalance: -5 })).toThrow(/credits\.initialBalance/);
    expect(() => credits({ namespace: 'has space' })).toThrow(/credits\.namespace/);
    expect(() => credits({ required: 'no' as never })).toThrow(/credits\.required: expected true or false/);
    expect(() => credits({ cots: 5 } as never)).toThrow(/did you mean 'cost'/);
    expect(() => credits({ stores: new MemoryStores(), redis: 'redis://localhost:6379' })).toThrow(/credits\.redis/);
    const slip = credits as unknown as (req: unknown) => unknown;
    expect(() => slip({ method: 'GET', headers: {}, url: '/' })).toThrow(/app\.use\(credits\(\)\)/);
    expect(() => createStack({ logger: recordingLogger().logger, credits: { cost: 'x' } as never })).toThrow(ConfigError);
  });
});

// A store whose refunds fail: how a Redis outage right after the response looks to the middleware.
function flakyStores(failures: number): { stores: Stores; refundCalls: () => number } {
  const inner = new MemoryStores();
  let calls = 0;
  const stores = Object.create(inner) as Stores;
  stores.create = <T>(factory: Parameters<Stores['create']>[0]): T => {
    const real = inner.create(factory) as unknown as CreditsStore;
    const wrapped: CreditsStore = Object.create(real);
    wrapped.refund = (...args) => (++calls <= failures ? Promise.reject(new Error('connection lost')) : real.refund(...args));
    return wrapped as unknown as T;
  };
  return { stores, refundCalls: () => calls };
}

describe('credits refund failures', () => {
  function flakyApp(failures: number, options: Record<string, unknown> = {}) {
    const { stores, refundCalls } = flakyStores(failures);
    const { logger, lines } = recordingLogger();
    const stack = createStack({ logger, ...ONLY_CREDITS, credits: { cost: 8, stores, refundRetryDelay: 20, ...options }, insert: [{ before: 'credits', name: 'fakeAuth', handler: fakeAuth }] });
    const app = newApp();
    app.use(stack);
    defaultRoutes(app);
    app.use(stack.errorHandler);
    return { stack, server: listen(app, stack), lines, refundCalls };
  }

  it('retries a failed refund and then gives the credits back', async () => {
    const { stack, server, lines, refundCalls } = flakyApp(1);
    await stack.middleware.credits.grant('nia', 8);
    await request(server).get('/fail').set('X-User', 'nia').expect(500);
    await eventually(async () => expect(await stack.middleware.credits.balance('nia')).toBe(8));
    expect(refundCalls()).toBe(2);
    expect(lines.filter((l) => l.code === 'ERR_CREDITS_REFUND_FAILED')).toHaveLength(0);
    expect(await metric(stack, 'credits_store_errors_total', { operation: 'refund' })).toBe(1);
  });

  it('keeps trying a refund the store refuses until it takes it, with no line per attempt (#11)', async () => {
    const { stack, server, lines, refundCalls } = flakyApp(3);
    await stack.middleware.credits.grant('oli', 8);
    await request(server).get('/fail').set('X-User', 'oli').expect(500);
    await eventually(async () => expect(await stack.middleware.credits.balance('oli')).toBe(8));
    expect(refundCalls()).toBe(4);
    expect(await metric(stack, 'credits_store_errors_total', { operation: 'refund' })).toBe(3);
    // Three failures within a second are no outage worth a line (StoreOutage logs longer ones once).
    expect(lines.filter((l) => typeof l.code === 'string' && l.code.startsWith('ERR_CREDITS'))).toEqual([]);
  });

  it('logs a refund the store did not take before the reservation expired at error, with the account and the amount', async () => {
    const { stack, server, lines } = flakyApp(Infinity, { reservationTtl: 150 });
    await stack.middleware.credits.grant('ola', 8);
    const res = await request(server).get('/fail').set('X-User', 'ola').expect(500);
    await eventually(() => expect(lines.filter((l) => l.code === 'ERR_CREDITS_REFUND_FAILED')).toHaveLength(1));
    const line = lines.find((l) => l.code === 'ERR_CREDITS_REFUND_FAILED')!;
    expect(line).toMatchObject({ level: 'error', account: 'ola', amount: 8, request_id: res.headers['x-request-id'] });
    expect(line.message).toMatch(/owed credits/);
    expect(await stack.middleware.credits.balance('ola')).toBe(0);
  });
});

describe.each([['memory'], ...(redisUrl ? [['redis']] : [])])('%s credits store', (kind) => {
  let stores: Stores;
  let store: CreditsStore;
  beforeEach(() => {
    // A roomy command timeout on Redis: these tests are about outcomes, not a loaded machine's latency.
    stores = kind === 'memory' ? new MemoryStores() : new RedisStores(redisUrl!, { logger: recordingLogger().logger, prefix: uniquePrefix(), commandTimeout: 10_000 });
    store = stores.create(creditsStore());
  });
  afterEach(() => stores.close());

  it('refunds a reservation at most once, and not at all after a commit', async () => {
    await store.grant('pat', 10, 0, 'grant');
    expect(await store.reserve('pat', 4, 0, 'r1', 'req-1')).toEqual({ ok: true, balance: 6 });
    const twice = await Promise.all([store.refund('pat', 'r1', 'req-1'), store.refund('pat', 'r1', 'req-1')]);
    expect(twice.sort()).toEqual([0, 4]);
    expect(await store.balance('pat', 0)).toBe(10);
    expect(await store.reserve('pat', 4, 0, 'r2', 'req-2')).toEqual({ ok: true, balance: 6 });
    await store.commit('pat', 'r2');
    expect(await store.refund('pat', 'r2', 'req-2')).toBe(0);
    expect(await store.balance('pat', 0)).toBe(6);
  });

  it('takes nothing more for a repeated reservation id (a resend after a lost reply)', async () => {
    await store.grant('ren', 10, 0, 'grant');
    expect(await store.reserve('ren', 4, 0, 'r1', 'req-1')).toEqual({ ok: true, balance: 6 });
    expect(await store.reserve('ren', 4, 0, 'r1', 'req-1')).toEqual({ ok: true, balance: 6 });
    expect(await store.balance('ren', 0)).toBe(6);
  });

  it('never goes below zero and never writes an unknown account it refused', async () => {
    expect(await store.reserve('quinn', 5, 3, 'r1', '')).toEqual({ ok: false, balance: 3 });
    expect(await store.history('quinn')).toEqual([]);
    expect(await store.reserve('quinn', 3, 3, 'r2', '')).toEqual({ ok: true, balance: 0 });
    expect(await store.reserve('quinn', 1, 3, 'r3', '')).toEqual({ ok: false, balance: 0 });
  });
});

describeRedis('credits on Redis', () => {
  it('does not take a reservation that arrives after its undo (a late resend after a timeout)', async () => {
    const stores = new RedisStores(redisUrl!, { logger: recordingLogger().logger, prefix: uniquePrefix(), commandTimeout: 10_000 });
    try {
      const store = stores.create(creditsStore());
      await store.grant('ray', 10, 0, 'grant');
      expect(await store.refund('ray', 'late-1', 'req-1')).toBe(0);
      expect((await store.reserve('ray', 4, 0, 'late-1', 'req-1')).ok).toBe(false);
      expect(await store.balance('ray', 0)).toBe(10);
    } finally {
      await stores.close();
    }
  });

  it('keeps one account under one {hash tag}; a commit leaves no reservation key, a refund a short-lived tombstone', async () => {
    const prefix = uniquePrefix();
    const { stack, server } = stackApp({ redis: redisUrl, keyPrefix: prefix, credits: { cost: 2 } });
    await stack.middleware.credits.grant('rae', 10);
    const client = new Redis(redisUrl!);
    try {
      await request(server).get('/ok').set('X-User', 'rae').expect(200);
      await eventually(async () => expect((await client.keys(`${prefix}*`)).sort()).toEqual([`${prefix}credits:{rae}`, `${prefix}credits:{rae}:history`]));
      await request(server).get('/fail').set('X-User', 'rae').expect(500);
      await eventually(async () => expect(await client.get(`${prefix}credits:{rae}`)).toBe('8'));
      const tombstones = (await client.keys(`${prefix}*`)).filter((k) => k.startsWith(`${prefix}credits:{rae}:r:`));
      expect(tombstones).toHaveLength(1);
      expect(await client.get(tombstones[0])).toBe('-');
      const ttl = await client.pttl(tombstones[0]);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(300_000);
      expect(await client.llen(`${prefix}credits:{rae}:history`)).toBe(4);
    } finally {
      client.disconnect();
    }
  });

  describe('when Redis accepts connections but never answers', () => {
    let silent: NetServer;
    let url: string;
    const sockets: Socket[] = [];
    beforeAll(async () => {
      silent = createServer((socket) => sockets.push(socket));
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
      url = `redis://127.0.0.1:${(silent.address() as AddressInfo).port}`;
    });
    afterAll(() => {
      for (const socket of sockets) socket.destroy();
      return new Promise<void>((resolve) => silent.close(() => resolve()));
    });

    function outageApp(onStoreError: 'closed' | 'open') {
      const { logger, lines } = recordingLogger();
      const reached: string[] = [];
      const stack = createStack({
        logger,
        ...ONLY_CREDITS,
        redis: url,
        credits: { cost: 1, storeTimeout: 100, onStoreError },
        insert: [{ before: 'credits', name: 'fakeAuth', handler: (req, res, next) => { reached.push(req.id); fakeAuth(req, res, next); } }],
      });
      const app = newApp();
      app.use(stack);
      defaultRoutes(app);
      app.use(stack.errorHandler);
      const server = app.listen(0);
      // Not stack.close(): QUIT would wait for an answer that never comes.
      open.push({ server });
      return { stack, server, lines, reached };
    }

    it('answers 503 SERVICE_UNAVAILABLE within the store timeout (fails closed by default)', async () => {
      const { stack, server, reached } = outageApp('closed');
      try {
        const res = await request(server).get('/ok').set('X-User', 'sam').expect(503);
        expect(reached).toHaveLength(1);
        expect(res.body.error.code).toBe('SERVICE_UNAVAILABLE');
        expect(await metric(stack, 'credits_rejections_total', { reason: 'store_unavailable' })).toBe(1);
      } finally {
        (stack.stores as RedisStores).connection.client.disconnect();
      }
    });

    it("serves the request free with onStoreError: 'open'", async () => {
      const { stack, server } = outageApp('open');
      try {
        await request(server).get('/ok').set('X-User', 'sam').expect(200, { ok: true });
        expect(await metric(stack, 'credits_store_errors_total', { operation: 'reserve' })).toBe(1);
      } finally {
        (stack.stores as RedisStores).connection.client.disconnect();
      }
    });
  });
});
