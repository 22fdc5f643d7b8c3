import type { Express, RequestHandler } from 'express';
import request from 'supertest';
import { ConfigError, createStack, rateLimit, type RateLimitOptions } from '../index';
import { ipKey } from '../lib/rate-limit/client-key';
import { MemoryStores, RedisStores, type Stores } from '../lib/stores';
import { rateLimitStore, type RateLimitDecision, type RateLimitOutcome, type RateLimitPolicy, type RateLimitStore } from '../lib/stores/rate-limit-store';
import { newApp, recordingLogger, redisUrl, uniquePrefix } from './helpers/app';

// ---------------------------------------------------------------------------------------------
// One table of cases, fed to the memory store and to the Redis script at the same instants (the
// script's test-only clock override), so the two implementations are held to the same results.

const T0 = Date.UTC(2030, 0, 15, 12, 0, 0); // noon UTC: 12 h to the daily reset
const MIDNIGHT = Date.UTC(2030, 0, 16);
const DR = (at: number): number => MIDNIGHT - T0 - at;
type Expected = [outcome: RateLimitOutcome, remaining: number, resetMs: number, retryAfterMs: number, dailyRemaining: number, dailyResetMs: number];
interface Case {
  name: string;
  policy: RateLimitPolicy;
  steps: Array<[at: number, cost: number, expected: Expected]>;
}
const sw = (limit: number, windowMs: number, daily = 0): RateLimitPolicy => ({ algorithm: 'sliding-window', limit, windowMs, burst: limit, daily });
const tb = (limit: number, windowMs: number, burst: number, daily = 0): RateLimitPolicy => ({ algorithm: 'token-bucket', limit, windowMs, burst, daily });
const fw = (limit: number, windowMs: number, daily = 0): RateLimitPolicy => ({ algorithm: 'fixed-window', limit, windowMs, burst: limit, daily });

const CASES: Case[] = [
  {
    name: 'sliding window counts the previous window by how much of it still overlaps',
    policy: sw(3, 10_000),
    steps: [
      [0, 1, ['allowed', 2, 10_000, 0, -1, DR(0)]],
      [0, 1, ['allowed', 1, 10_000, 0, -1, DR(0)]],
      [0, 1, ['allowed', 0, 10_000, 0, -1, DR(0)]],
      // 3 used this window: passes once the window has turned and 3 x (1 - 3334/10000) + 1 <= 3.
      [0, 1, ['limited', 0, 10_000, 13_334, -1, DR(0)]],
      // Half-way through the next window the previous 3 weigh 1.5.
      [15_000, 1, ['allowed', 0, 5_000, 0, -1, DR(15_000)]],
      // 3 x 0.4 + 1 = 2.2, plus 1 is too many; 667 ms later 3 x 0.3333 + 1 + 1 <= 3.
      [16_000, 1, ['limited', 0, 4_000, 667, -1, DR(16_000)]],
      [16_667, 1, ['allowed', 0, 3_333, 0, -1, DR(16_667)]],
    ],
  },
  {
    name: 'token bucket spends its burst at once and refills limit per window',
    policy: tb(2, 10_000, 4),
    steps: [
      [0, 4, ['allowed', 0, 20_000, 0, -1, DR(0)]],
      [0, 1, ['limited', 0, 20_000, 5_000, -1, DR(0)]],
      [5_000, 1, ['allowed', 0, 20_000, 0, -1, DR(5_000)]],
      [7_500, 1, ['limited', 0, 17_500, 2_500, -1, DR(7_500)]],
      [100_000, 1, ['allowed', 3, 5_000, 0, -1, DR(100_000)]],
    ],
  },
  {
    name: 'fixed window starts with the first request and restarts after it',
    policy: fw(2, 10_000),
    steps: [
      [1_000, 1, ['allowed', 1, 10_000, 0, -1, DR(1_000)]],
      [5_000, 1, ['allowed', 0, 6_000, 0, -1, DR(5_000)]],
      [6_000, 1, ['limited', 0, 5_000, 5_000, -1, DR(6_000)]],
      [11_000, 1, ['allowed', 1, 10_000, 0, -1, DR(11_000)]],
    ],
  },
  {
    name: 'a request refused by the daily quota takes nothing from the window',
    policy: sw(10, 10_000, 2),
    steps: [
      [0, 1, ['allowed', 9, 10_000, 0, 1, DR(0)]],
      [0, 1, ['allowed', 8, 10_000, 0, 0, DR(0)]],
      [0, 1, ['quota', 8, 10_000, DR(0), 0, DR(0)]],
      [0, 1, ['quota', 8, 10_000, DR(0), 0, DR(0)]],
    ],
  },
  {
    name: 'a request refused by the window takes nothing from the daily quota',
    policy: fw(1, 10_000, 5),
    steps: [
      [0, 1, ['allowed', 0, 10_000, 0, 4, DR(0)]],
      [1_000, 1, ['limited', 0, 9_000, 9_000, 4, DR(1_000)]],
      [10_000, 1, ['allowed', 0, 10_000, 0, 3, DR(10_000)]],
    ],
  },
  {
    name: 'the daily quota renews at 00:00 UTC',
    policy: fw(100, 60_000, 1),
    steps: [
      [DR(0) - 1_000, 1, ['allowed', 99, 60_000, 0, 0, 1_000]],
      [DR(0) - 500, 1, ['quota', 99, 59_500, 500, 0, 500]],
      [DR(0) + 1, 1, ['allowed', 98, 58_999, 0, 0, 86_399_999]],
    ],
  },
  {
    name: 'weighted requests take their cost, and one costing more than the limit never passes',
    policy: sw(3, 10_000),
    steps: [
      [0, 5, ['limited', 3, 10_000, 20_000, -1, DR(0)]],
      [0, 2, ['allowed', 1, 10_000, 0, -1, DR(0)]],
      [0, 2, ['limited', 1, 10_000, 15_000, -1, DR(0)]],
      [0, 0, ['allowed', 1, 10_000, 0, -1, DR(0)]],
    ],
  },
  {
    name: 'token bucket refuses a cost larger than its capacity',
    policy: tb(2, 10_000, 4),
    steps: [[0, 5, ['limited', 4, 0, 30_000, -1, DR(0)]]],
  },
];

const backends: Array<[string, (clock: () => number) => { store: RateLimitStore; stores: Stores }]> = [
  [
    'memory',
    (clock) => {
      const stores = new MemoryStores();
      return { stores, store: stores.create(rateLimitStore({ namespace: 'table', now: clock })) };
    },
  ],
];
if (redisUrl) {
  backends.push([
    'redis',
    (clock) => {
      // A roomy command timeout: the first call of a suite (connect, load the script) can take
      // a loaded machine over the 1 s default, and these tests are about decisions, not timeouts.
      const stores = new RedisStores(redisUrl as string, { logger: recordingLogger().logger, prefix: uniquePrefix(), commandTimeout: 10_000 });
      return { stores, store: stores.create(rateLimitStore({ namespace: 'table', redisClockForTests: clock })) };
    },
  ]);
}

describe.each(backends)('rate-limit store on %s', (_name, make) => {
  let now = T0;
  let backend: ReturnType<typeof make>;
  beforeAll(() => {
    backend = make(() => now);
  });
  afterAll(() => backend.stores.close());

  it.each(CASES.map((c, i) => [c.name, c, i] as const))('%s', async (_title, c, i) => {
    for (const [at, cost, expected] of c.steps) {
      now = T0 + at;
      const d = await backend.store.consume(`case-${i}`, c.policy, cost);
      expect([d.outcome, d.remaining, d.resetMs, d.retryAfterMs, d.dailyRemaining, d.dailyResetMs]).toEqual(expected);
    }
  });

  it('forgets a client on reset', async () => {
    now = T0;
    const policy = fw(1, 60_000, 3);
    expect((await backend.store.consume('reset-me', policy, 1)).outcome).toBe('allowed');
    expect((await backend.store.consume('reset-me', policy, 1)).outcome).toBe('limited');
    await backend.store.reset('reset-me');
    expect(await backend.store.consume('reset-me', policy, 1)).toMatchObject({ outcome: 'allowed', dailyRemaining: 2 });
  });
});

// Random traffic on both backends at once: every decision must be identical.
(redisUrl ? it : it.skip)('memory and Redis decide identically on random traffic (same table, all algorithms)', async () => {
  let now = T0;
  const memory = new MemoryStores().create(rateLimitStore({ namespace: 'random', now: () => now }));
  const stores = new RedisStores(redisUrl as string, { logger: recordingLogger().logger, prefix: uniquePrefix(), commandTimeout: 10_000 });
  const redis = stores.create(rateLimitStore({ namespace: 'random', redisClockForTests: () => now }));
  let seed = 42;
  const random = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const seen: Array<[RateLimitDecision, RateLimitDecision]> = [];
  try {
    for (const algorithm of ['sliding-window', 'token-bucket', 'fixed-window'] as const) {
      for (let client = 0; client < 8; client++) {
        const limit = 1 + Math.floor(random() * 9);
        const policy: RateLimitPolicy = {
          algorithm,
          limit,
          windowMs: 1_000 * (1 + Math.floor(random() * 30)),
          burst: algorithm === 'token-bucket' ? limit + Math.floor(random() * 4) : limit,
          daily: random() < 0.5 ? 0 : 5 + Math.floor(random() * 20),
        };
        for (let i = 0; i < 40; i++) {
          now += Math.floor((random() * policy.windowMs) / 3);
          if (random() < 0.03) now += 86_400_000;
          const cost = Math.floor(random() * 3);
          const id = `${algorithm}-${client}`;
          seen.push([memory.consume(id, policy, cost) as RateLimitDecision, await redis.consume(id, policy, cost)]);
        }
      }
    }
  } finally {
    await stores.close();
  }
  expect(seen.filter(([m, r]) => JSON.stringify(m) !== JSON.stringify(r))).toEqual([]);
  // The traffic exercised every outcome, so the agreement is not trivial.
  expect(new Set(seen.map(([m]) => m.outcome))).toEqual(new Set(['allowed', 'limited', 'quota']));
});

// ---------------------------------------------------------------------------------------------
// The middleware over HTTP (memory store; Express 4 and 5 through EXPRESS_MAJOR).

interface Built {
  app: Express;
  stack: ReturnType<typeof createStack>;
  lines: Array<Record<string, any>>;
}

/** A stack with `rateLimit`, an optional probe before it (fake auth/tenant), and a few routes. */
function appWith(options: RateLimitOptions | false, before?: RequestHandler, extra?: (app: Express) => void, trustProxy?: boolean): Built {
  const { logger, lines } = recordingLogger();
  const stack = createStack({
    logger,
    // The app's own /health route below is what rateLimit's default skip list is tested on.
    health: false,
    rateLimit: options,
    ...(trustProxy ? { trustProxy: true } : {}),
    ...(before ? { insert: [{ before: options === false ? 'bodyParser' : 'rateLimit', name: 'probe', handler: before }] } : {}),
  });
  const app = newApp();
  app.use(stack);
  extra?.(app);
  app.get('/health', (_req, res) => {
    res.send('ok');
  });
  app.get('/things', (_req, res) => {
    res.json({ ok: true });
  });
  app.use(stack.errorHandler);
  return { app, stack, lines };
}

const fakeAuth: RequestHandler = (req, _res, next) => {
  const tier = req.headers['x-tier'];
  if (typeof tier === 'string') {
    req.auth = { method: 'apiKey', tier };
    req.apiKey = { name: String(req.headers['x-key'] ?? 'k1'), tier };
  }
  const tenant = req.headers['x-tenant'];
  if (typeof tenant === 'string') req.tenant = { id: tenant };
  next();
};

describe('rateLimit middleware', () => {
  it('sets legacy and IETF headers on every limited response (100 per minute by default)', async () => {
    const { app } = appWith({});
    const res = await request(app).get('/things').expect(200);
    expect(res.headers['x-ratelimit-limit']).toBe('100');
    expect(res.headers['x-ratelimit-remaining']).toBe('99');
    const reset = Number(res.headers['x-ratelimit-reset']);
    expect(reset).toBeGreaterThanOrEqual(Math.floor(Date.now() / 1000));
    expect(reset).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000) + 60);
    expect(res.headers['ratelimit-policy']).toBe('"default";q=100;w=60');
    expect(res.headers.ratelimit).toMatch(/^"default";r=99;t=\d+$/);
  });

  it('refuses the request over the limit with 429 RATE_LIMIT_EXCEEDED, Retry-After and details', async () => {
    const { app } = appWith({ limit: 2, window: '30s', algorithm: 'fixed-window' });
    await request(app).get('/things').expect(200);
    await request(app).get('/things').expect(200);
    const res = await request(app).get('/things').expect(429);
    expect(res.body.error).toEqual({
      code: 'RATE_LIMIT_EXCEEDED',
      message: expect.stringContaining('the limit is 2 per 30 s'),
      request_id: res.headers['x-request-id'],
      details: { limit: 2, window: 30, retry_after: Number(res.headers['retry-after']) },
    });
    expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(29);
    expect(Number(res.headers['retry-after'])).toBeLessThanOrEqual(30);
    expect(res.headers['x-ratelimit-remaining']).toBe('0');
    expect(res.headers.ratelimit).toBe(`"default";r=0;t=${res.headers['retry-after']}`);
  });

  it.each([
    ['legacy', ['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset'], ['ratelimit', 'ratelimit-policy']],
    ['ietf', ['ratelimit', 'ratelimit-policy'], ['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset']],
    [false, [], ['ratelimit', 'ratelimit-policy', 'x-ratelimit-limit']],
  ] as const)('headers: %s sends only its fields', async (headers, present, absent) => {
    const { app } = appWith({ headers });
    const res = await request(app).get('/things').expect(200);
    for (const h of present) expect(res.headers[h]).toBeDefined();
    for (const h of absent) expect(res.headers[h]).toBeUndefined();
  });

  it('skips /health by default, and paths or a function when configured', async () => {
    const { app } = appWith({ limit: 1 });
    for (let i = 0; i < 3; i++) {
      const res = await request(app).get('/health').expect(200);
      expect(res.headers['x-ratelimit-limit']).toBeUndefined();
    }
    await request(app).get('/things').expect(200);
    await request(app).get('/things').expect(429);

    const custom = appWith({ limit: 1, skip: (req) => req.headers['x-internal'] === '1' }).app;
    await request(custom).get('/things').set('X-Internal', '1').expect(200);
    await request(custom).get('/things').set('X-Internal', '1').expect(200);
    await request(custom).get('/health').expect(200);
    await request(custom).get('/health').expect(429);

    const paths = appWith({ limit: 1, skip: ['/things'] }).app;
    await request(paths).get('/things/').expect(200);
    await request(paths).get('/things').expect(200);
  });

  it('groups IPv6 clients by /64 and keeps IPv4 addresses apart', async () => {
    const { app } = appWith({ limit: 1, key: 'ip' }, undefined, undefined, true);
    await request(app).get('/things').set('X-Forwarded-For', '2001:db8:1:2::1').expect(200);
    await request(app).get('/things').set('X-Forwarded-For', '2001:db8:1:2:ffff:ffff:ffff:9').expect(429);
    await request(app).get('/things').set('X-Forwarded-For', '2001:db8:1:3::1').expect(200);
    await request(app).get('/things').set('X-Forwarded-For', '198.51.100.1').expect(200);
    await request(app).get('/things').set('X-Forwarded-For', '198.51.100.2').expect(200);
    await request(app).get('/things').set('X-Forwarded-For', '::ffff:198.51.100.2').expect(429);
  });

  it.each([
    ['203.0.113.7', '203.0.113.7'],
    ['::ffff:203.0.113.7', '203.0.113.7'],
    ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2::/64'],
    ['2001:DB8:0001:0002::1', '2001:db8:1:2::/64'],
    ['fe80::1%eth0', 'fe80:0:0:0::/64'],
    ['::1', '0:0:0:0::/64'],
    [undefined, 'unknown'],
  ])('ipKey(%s) is %s', (ip, expected) => {
    expect(ipKey(ip)).toBe(expected);
  });

  it('joins the tenant to the key: the same client counts apart per tenant', async () => {
    const { app } = appWith({ limit: 1 }, fakeAuth);
    await request(app).get('/things').set('X-Tenant', 'acme').expect(200);
    await request(app).get('/things').set('X-Tenant', 'acme').expect(429);
    await request(app).get('/things').set('X-Tenant', 'globex').expect(200);
    await request(app).get('/things').expect(200);
  });

  it('counts per API key by default, else per user, else per IP', async () => {
    const { app } = appWith({ limit: 1 }, fakeAuth);
    await request(app).get('/things').set('X-Tier', 'x').set('X-Key', 'alpha').expect(200);
    await request(app).get('/things').set('X-Tier', 'x').set('X-Key', 'alpha').expect(429);
    await request(app).get('/things').set('X-Tier', 'x').set('X-Key', 'beta').expect(200);
    await request(app).get('/things').expect(200);
    await request(app).get('/things').expect(429);
  });

  it('applies the tier of req.auth.tier, and the default tier to anonymous and unknown tiers', async () => {
    const { app } = appWith({ limit: 2, tiers: { free: { limit: 1, daily: 100 }, pro: { limit: 3, window: '10s' } } }, fakeAuth);
    const free = await request(app).get('/things').set('X-Tier', 'free').set('X-Key', 'f').expect(200);
    expect(free.headers['x-ratelimit-limit']).toBe('1');
    expect(free.headers['ratelimit-policy']).toBe('"free";q=1;w=60, "free-daily";q=100;w=86400');
    expect(free.headers.ratelimit).toMatch(/^"free";r=0;t=\d+, "free-daily";r=99;t=\d+$/);
    await request(app).get('/things').set('X-Tier', 'free').set('X-Key', 'f').expect(429);

    for (let i = 0; i < 3; i++) await request(app).get('/things').set('X-Tier', 'pro').set('X-Key', 'p').expect(200);
    const pro = await request(app).get('/things').set('X-Tier', 'pro').set('X-Key', 'p').expect(429);
    expect(pro.body.error.details).toMatchObject({ limit: 3, window: 10 });
    expect(pro.headers['ratelimit-policy']).toBe('"pro";q=3;w=10');

    const anon = await request(app).get('/things').expect(200);
    expect(anon.headers['ratelimit-policy']).toBe('"default";q=2;w=60');
    const gold = await request(app).get('/things').set('X-Tier', 'gold').set('X-Key', 'g').expect(200);
    expect(gold.headers['ratelimit-policy']).toBe('"default";q=2;w=60');
  });

  it('defaultTier names the tier anonymous callers get', async () => {
    const { app } = appWith({ tiers: { anonymous: { limit: 1 }, pro: { limit: 5 } }, defaultTier: 'anonymous' });
    const res = await request(app).get('/things').expect(200);
    expect(res.headers['ratelimit-policy']).toBe('"anonymous";q=1;w=60');
    await request(app).get('/things').expect(429);
  });

  it('refuses with 429 QUOTA_EXCEEDED once the daily quota is spent, and renews it at 00:00 UTC', async () => {
    let clock = Date.UTC(2030, 0, 15, 23, 59, 59, 0);
    const { app } = appWith({ limit: 100, daily: 2, now: () => clock });
    const first = await request(app).get('/things').expect(200);
    // The daily quota binds (1 left vs 99 in the window), so the legacy fields describe it.
    expect(first.headers['x-ratelimit-limit']).toBe('2');
    expect(first.headers['x-ratelimit-remaining']).toBe('1');
    expect(first.headers['x-ratelimit-reset']).toBe(String(Date.UTC(2030, 0, 16) / 1000));
    expect(first.headers['ratelimit-policy']).toBe('"default";q=100;w=60, "default-daily";q=2;w=86400');
    expect(first.headers.ratelimit).toBe('"default";r=99;t=1, "default-daily";r=1;t=1');
    await request(app).get('/things').expect(200);
    const refused = await request(app).get('/things').expect(429);
    expect(refused.headers['retry-after']).toBe('1');
    expect(refused.body.error).toMatchObject({ code: 'QUOTA_EXCEEDED', details: { limit: 2, window: 86400, retry_after: 1 } });
    clock = Date.UTC(2030, 0, 16, 0, 0, 0, 500);
    const renewed = await request(app).get('/things').expect(200);
    expect(renewed.headers['x-ratelimit-remaining']).toBe('1');
  });

  it('token bucket: admits a burst at once, then refills limit per window', async () => {
    let clock = Date.UTC(2030, 0, 15, 12, 0, 0);
    const { app } = appWith({ algorithm: 'token-bucket', limit: 1, window: '10s', burst: 3, now: () => clock });
    for (let i = 0; i < 3; i++) {
      const ok = await request(app).get('/things').expect(200);
      expect(ok.headers['x-ratelimit-remaining']).toBe(String(2 - i));
    }
    const empty = await request(app).get('/things').expect(429);
    expect(empty.headers['retry-after']).toBe('10');
    expect(empty.headers['ratelimit-policy']).toBe('"default";q=3;w=30');
    clock += 10_000;
    await request(app).get('/things').expect(200);
    await request(app).get('/things').expect(429);
    clock += 30_000;
    for (let i = 0; i < 3; i++) await request(app).get('/things').expect(200);
  });

  it('weighted cost: a request takes its cost, and a refused one takes nothing', async () => {
    const { app } = appWith({ algorithm: 'fixed-window', limit: 10, cost: (req) => Number(req.headers['x-cost'] ?? 1) });
    expect((await request(app).get('/things').set('X-Cost', '4').expect(200)).headers['x-ratelimit-remaining']).toBe('6');
    expect((await request(app).get('/things').set('X-Cost', '7').expect(429)).headers['x-ratelimit-remaining']).toBe('6');
    expect((await request(app).get('/things').set('X-Cost', '6').expect(200)).headers['x-ratelimit-remaining']).toBe('0');
    expect((await request(app).get('/things').set('X-Cost', '0').expect(200)).headers['x-ratelimit-remaining']).toBe('0');
  });

  it('a cost function that returns junk is a 500, not a free request', async () => {
    const { app } = appWith({ cost: () => Number.NaN });
    const res = await request(app).get('/things').expect(500);
    expect(res.body.error.code).toBe('INTERNAL_ERROR');
  });

  it('a route-level limiter behind a stack counts on its own keys, apart from the stack limiter', async () => {
    const { app, stack } = appWith({ limit: 100 }, undefined, (a) => {
      a.post('/login', rateLimit({ limit: 2, window: '1m' }), (_req, res) => {
        res.send('welcome');
      });
    });
    for (let i = 0; i < 2; i++) {
      const ok = await request(app).post('/login').expect(200);
      expect(ok.headers['x-ratelimit-limit']).toBe('2');
    }
    const refused = await request(app).post('/login').expect(429);
    expect(refused.body.error.details).toMatchObject({ limit: 2, window: 60 });
    // The stack's limiter counted the three logins and this request, nothing more.
    const other = await request(app).get('/things').expect(200);
    expect(other.headers['x-ratelimit-limit']).toBe('100');
    expect(other.headers['x-ratelimit-remaining']).toBe('96');
    const metric = (await stack.metricsRegistry.getMetricsAsJSON()).find((m) => m.name === 'rate_limit_rejections_total');
    expect(metric?.values).toEqual([{ labels: { key_type: 'ip', route: '/login' }, value: 1 }]);
  });

  it('counts stack-level rejections in rate_limit_rejections_total (before routing: #unmatched)', async () => {
    const { app, stack } = appWith({ limit: 1 }, fakeAuth);
    await request(app).get('/things').set('X-Tier', 't').expect(200);
    await request(app).get('/things').set('X-Tier', 't').expect(429);
    await request(app).get('/things').set('X-Tier', 't').expect(429);
    const metric = (await stack.metricsRegistry.getMetricsAsJSON()).find((m) => m.name === 'rate_limit_rejections_total');
    expect(metric?.values).toEqual([{ labels: { key_type: 'apiKey', route: '#unmatched' }, value: 2 }]);
  });

  it('works alone on memory, refusing through the default Express error handler with Retry-After', async () => {
    const app = newApp();
    app.get('/only', rateLimit({ limit: 1, window: '5s', algorithm: 'fixed-window' }), (_req, res) => {
      res.send('ok');
    });
    await request(app).get('/only').expect(200);
    const res = await request(app).get('/only').expect(429);
    expect(res.headers['retry-after']).toBe('5');
    expect(res.headers['x-ratelimit-remaining']).toBe('0');
  });

  it('limiters with the same prefix share counts on memory, as they do on Redis', async () => {
    const app = newApp();
    app.get('/a', rateLimit({ limit: 1, prefix: 'shared-ab' }), (_req, res) => {
      res.send('a');
    });
    app.get('/b', rateLimit({ limit: 1, prefix: 'shared-ab' }), (_req, res) => {
      res.send('b');
    });
    await request(app).get('/a').expect(200);
    await request(app).get('/b').expect(429);
  });

  it('is on in a default stack, between tenant and credits in the documented order', () => {
    const stack = createStack({ logger: recordingLogger().logger });
    expect(stack.order).toContain('rateLimit');
    expect(createStack({ logger: recordingLogger().logger, rateLimit: false }).order).not.toContain('rateLimit');
  });

  it.each([
    [{ limt: 5 }, /rateLimit\.limt: unknown option; did you mean 'limit'\?/],
    [{ window: 'one minute' }, /rateLimit\.window: expected a duration like .*got 'one minute'/],
    [{ limit: 0 }, /rateLimit\.limit: expected a whole number of at least 1, got 0/],
    [{ limit: 2.5 }, /rateLimit\.limit: expected a whole number/],
    [{ algorithm: 'leaky-bucket' }, /rateLimit\.algorithm: expected one of 'sliding-window', 'token-bucket', 'fixed-window', got 'leaky-bucket'/],
    [{ burst: 10 }, /rateLimit\.burst: applies to algorithm 'token-bucket' only/],
    [{ key: 'email' }, /rateLimit\.key: expected 'ip', 'user', 'apiKey', 'tenant' or a function/],
    [{ tiers: { free: { limt: 1 } } }, /rateLimit\.tiers\.free\.limt: unknown option; did you mean 'limit'/],
    [{ tiers: { free: { limit: 1 } }, defaultTier: 'gold' }, /rateLimit\.defaultTier: expected the name of a tier in rateLimit\.tiers \(free\), got 'gold'/],
    [{ cost: -1 }, /rateLimit\.cost: expected a whole number of units/],
    [{ headers: 'draft-7' }, /rateLimit\.headers: expected one of 'legacy', 'ietf', 'both'/],
    [{ onStoreError: 'fail' }, /rateLimit\.onStoreError: expected one of 'open', 'closed', 'memory'/],
    [{ skip: ['health'] }, /rateLimit\.skip: expected paths like/],
    [{ prefix: 'has space' }, /rateLimit\.prefix: expected 1-64 characters/],
    [{ daily: -5 }, /rateLimit\.daily: expected a whole number of at least 1, got -5/],
  ])('refuses bad options at setup: %j', (options, message) => {
    expect(() => rateLimit(options as RateLimitOptions)).toThrow(ConfigError);
    expect(() => rateLimit(options as RateLimitOptions)).toThrow(message);
  });

  it('explains app.use(rateLimit) without parentheses', () => {
    const app = newApp();
    app.use(rateLimit as unknown as RequestHandler);
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    return request(app)
      .get('/')
      .expect(500)
      .then((res) => expect(res.text).toContain('app.use(rateLimit())'));
  });
});
