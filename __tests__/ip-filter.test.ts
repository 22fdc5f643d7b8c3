import { networkInterfaces } from 'node:os';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Express, RequestHandler } from 'express';
import Redis from 'ioredis';
import request from 'supertest';
import { AuthenticationError, ConfigError, createStack, errorNormalizer, ipFilter, requestId, type IpFilterOptions, type Stack } from '../index';
import { resetForwardedForWarning } from '../lib/forwarded-for';
import { MemoryStores, RedisStores } from '../lib/stores';
import { ipBlocklistStore } from '../lib/stores/ip-blocklist';
import { resetWarnings } from '../lib/warnings';
import { closeAll, describeRedis, eventually, newApp, recordingLogger, redisUrl, stacksClosedAfterEach, uniquePrefix } from './helpers/app';

/** An app with `filter` alone (no stack), trusting the loopback proxy so X-Forwarded-For picks the client IP. */
function aloneWith(filter: RequestHandler, trustProxy: string | false = 'loopback'): Express {
  const app = newApp();
  if (trustProxy !== false) app.set('trust proxy', trustProxy);
  app.use(requestId());
  app.use(filter);
  app.use((req, res) => {
    res.json({ ip: req.ip, path: req.path });
  });
  app.use(errorNormalizer());
  return app;
}

const from = (app: Express, ip: string, path = '/') => request(app).get(path).set('X-Forwarded-For', ip);

function expectIpBlocked(res: request.Response, reason: string, ip?: string): void {
  expect(res.status).toBe(403);
  expect(res.body).toEqual({
    error: { code: 'IP_BLOCKED', message: 'Access from this address is not allowed.', request_id: res.headers['x-request-id'], details: { reason } },
  });
  if (ip !== undefined) expect(JSON.stringify(res.body)).not.toContain(ip);
}

describe('ipFilter allow and deny lists', () => {
  it.each<[string, IpFilterOptions, string, number | string]>([
    ['IPv4 in an allow list', { allow: ['203.0.113.7'] }, '203.0.113.7', 200],
    ['IPv4 missing from an allow list', { allow: ['203.0.113.7'] }, '203.0.113.8', 'not_allowed'],
    ['IPv4 inside an allowed CIDR', { allow: ['10.0.0.0/8'] }, '10.200.3.4', 200],
    ['IPv4 outside an allowed CIDR', { allow: ['10.0.0.0/8'] }, '11.0.0.1', 'not_allowed'],
    ['IPv4 inside a denied CIDR', { deny: ['198.51.100.0/24'] }, '198.51.100.77', 'denied'],
    ['IPv4 outside a denied CIDR', { deny: ['198.51.100.0/24'] }, '198.51.101.1', 200],
    ['deny beating allow', { allow: ['10.0.0.0/8'], deny: ['10.0.0.0/24'] }, '10.0.0.5', 'denied'],
    ['IPv6 in an allow list, written differently', { allow: ['2001:db8::1'] }, '2001:0DB8:0:0:0:0:0:1', 200],
    ['IPv6 inside an allowed CIDR', { allow: ['2001:db8::/32'] }, '2001:db8:ffff::9', 200],
    ['IPv6 outside an allowed CIDR', { allow: ['2001:db8::/32'] }, '2001:db9::1', 'not_allowed'],
    ['IPv6 inside a denied CIDR', { deny: ['2001:db8:bad::/48'] }, '2001:db8:bad:1::2', 'denied'],
    ['IPv4-mapped IPv6 meeting an IPv4 allow rule', { allow: ['10.0.0.0/8'] }, '::ffff:10.0.0.1', 200],
    ['IPv4-mapped IPv6 meeting an IPv4 deny rule', { deny: ['10.0.0.1'] }, '::ffff:10.0.0.1', 'denied'],
    ['IPv4 meeting an IPv4-mapped CIDR rule', { allow: ['::ffff:10.0.0.0/104'] }, '10.9.9.9', 200],
    ['an IPv6 client against IPv4-only allow rules', { allow: ['10.0.0.0/8'] }, '2001:db8::1', 'not_allowed'],
  ])('%s', async (_name, options, ip, expected) => {
    const app = aloneWith(ipFilter({ ...options, stores: new MemoryStores() }));
    const res = await from(app, ip);
    if (expected === 200) expect(res.status).toBe(200);
    else expectIpBlocked(res, expected as string, ip);
  });

  it('with no rules lets everyone through', async () => {
    const app = aloneWith(ipFilter({ stores: new MemoryStores() }));
    await from(app, '192.0.2.1').expect(200);
    await from(app, '2001:db8::1').expect(200);
  });
});

describe('ipFilter per-path lists', () => {
  const options: IpFilterOptions = {
    deny: ['192.0.2.66'],
    paths: {
      '/admin': { allow: ['10.0.0.0/8'] },
      '/admin/secrets/': { deny: ['10.6.6.0/24'] },
      '/webhooks': { allow: ['203.0.113.0/24'], deny: ['203.0.113.99'] },
    },
  };
  const app = aloneWith(ipFilter({ ...options, stores: new MemoryStores() }));

  it.each<[string, string, number | string]>([
    ['/admin', '10.1.2.3', 200],
    ['/admin', '198.51.100.1', 'not_allowed'],
    ['/admin/users/7', '198.51.100.1', 'not_allowed'],
    ['/admin/', '198.51.100.1', 'not_allowed'],
    ['/ADMIN/users', '198.51.100.1', 'not_allowed'],
    ['/administrator', '198.51.100.1', 200],
    ['/public', '198.51.100.1', 200],
    ['/admin/secrets', '10.6.6.6', 'denied'],
    ['/admin/secrets/x', '10.6.6.6', 'denied'],
    ['/admin/other', '10.6.6.6', 200],
    ['/webhooks/stripe', '203.0.113.5', 200],
    ['/webhooks/stripe', '203.0.113.99', 'denied'],
    ['/webhooks/stripe', '10.1.2.3', 'not_allowed'],
    ['/public', '192.0.2.66', 'denied'],
    ['/admin', '192.0.2.66', 'denied'],
  ])('%s from %s', async (path, ip, expected) => {
    const res = await from(app, ip, path);
    if (expected === 200) expect(res.status).toBe(200);
    else expectIpBlocked(res, expected as string, ip);
  });

  it('guards one admin route when used at route level behind a stack', async () => {
    const stack = createStack({ logger: recordingLogger().logger, trustProxy: 'loopback' });
    const api = newApp();
    api.use(stack);
    api.get('/admin/stats', ipFilter({ allow: ['10.0.0.0/8'] }), (_req, res) => {
      res.json({ ok: true });
    });
    api.get('/games', (_req, res) => {
      res.json([]);
    });
    api.use(stack.errorHandler);
    await from(api, '10.4.4.4', '/admin/stats').expect(200, { ok: true });
    expectIpBlocked(await from(api, '198.51.100.1', '/admin/stats'), 'not_allowed');
    await from(api, '198.51.100.1', '/games').expect(200);
    // The route-level filter enforces the stack's run-time blocks too.
    await stack.middleware.ipFilter.block('10.4.4.4');
    expectIpBlocked(await from(api, '10.4.4.4', '/admin/stats'), 'blocked');
    await stack.close();
  });
});

describe('ipFilter configuration', () => {
  it.each<[string, unknown, RegExp]>([
    ['a malformed CIDR', { allow: ['10.0.0.0/33'] }, /ipFilter\.allow: '10\.0\.0\.0\/33' is not an IPv4\/IPv6 address or CIDR/],
    ['a non-address in deny', { deny: ['localhost'] }, /ipFilter\.deny: 'localhost'/],
    ['a typo of a known option', { alow: ['10.0.0.1'] }, /ipFilter\.alow: unknown option; did you mean 'allow'\?/],
    ['a path without a leading slash', { paths: { admin: { allow: ['10.0.0.1'] } } }, /ipFilter\.paths\['admin'\]: a path prefix must start with '\/'/],
    ['a path rule with a typo', { paths: { '/admin': { allowed: ['10.0.0.1'] } } }, /ipFilter\.paths\['\/admin'\]\.allowed: unknown option; did you mean 'allow'\?/],
    ['a path rule with no addresses', { paths: { '/admin': { allow: [] } } }, /has no addresses in allow or deny/],
    ['two spellings of one path', { paths: { '/admin': { allow: ['10.0.0.1'] }, '/Admin/': { deny: ['10.0.0.2'] } } }, /covers the same paths as '\/admin'/],
    ['autoBan.after of 0', { autoBan: { after: 0 } }, /ipFilter\.autoBan\.after: expected a whole number .* got 0/],
    ['autoBan.within in words', { autoBan: { within: '1 minute please' } }, /ipFilter\.autoBan\.within: expected a duration/],
    ['autoBan.statuses outside 4xx/5xx', { autoBan: { statuses: [200] } }, /ipFilter\.autoBan\.statuses/],
    ['syncInterval of 0', { syncInterval: 0 }, /ipFilter\.syncInterval: expected a duration above zero/],
    ['stores that are not stores', { stores: 'redis://x' }, /ipFilter\.stores: expected stores/],
  ])('refuses %s at setup, naming the option', (_name, options, message) => {
    expect(() => ipFilter(options as IpFilterOptions)).toThrow(ConfigError);
    expect(() => ipFilter(options as IpFilterOptions)).toThrow(message);
  });

  it('explains app.use(ipFilter) without parentheses', () => {
    expect(() => ipFilter({ method: 'GET', headers: {}, url: '/' } as never)).toThrow(/write app\.use\(ipFilter\(\)\) with parentheses/);
  });

  it('refuses createStack({ ipFilter }) with bad rules at creation', () => {
    expect(() => createStack({ logger: recordingLogger().logger, ipFilter: { deny: ['300.1.1.1'] } })).toThrow(/ipFilter\.deny/);
  });
});

describe('ipFilter client IP', () => {
  beforeEach(() => {
    resetWarnings();
    resetForwardedForWarning();
  });

  it('ignores a spoofed X-Forwarded-For while trust proxy is off, and warns once', async () => {
    const { logger, lines } = recordingLogger();
    const app = aloneWith(ipFilter({ allow: ['10.0.0.0/8'], logger, stores: new MemoryStores() }), false);
    expectIpBlocked(await from(app, '10.0.0.1'), 'not_allowed');
    expectIpBlocked(await from(app, '10.0.0.2'), 'not_allowed');
    const denyLoopback = aloneWith(ipFilter({ deny: ['127.0.0.0/8', '::1'], logger, stores: new MemoryStores() }), false);
    expectIpBlocked(await from(denyLoopback, '8.8.8.8'), 'denied');
    const warnings = lines.filter((l) => l.code === 'ERR_TRUST_PROXY_OFF');
    expect(warnings).toHaveLength(1);
    expect(warnings[0].level).toBe('warn');
  });

  it('honours X-Forwarded-For from a trusted proxy, without the warning', async () => {
    const { logger, lines } = recordingLogger();
    const app = aloneWith(ipFilter({ allow: ['10.0.0.0/8'], logger, stores: new MemoryStores() }), 'loopback');
    await from(app, '10.0.0.1').expect(200, { ip: '10.0.0.1', path: '/' });
    expectIpBlocked(await from(app, '11.0.0.1'), 'not_allowed');
    // Only the hop the trusted proxy saw counts: an address the client prepended does not.
    expectIpBlocked(await from(app, '10.0.0.1, 11.0.0.1'), 'not_allowed');
    expect(lines.filter((l) => l.code === 'ERR_TRUST_PROXY_OFF')).toHaveLength(0);
  });

  const hasIpv6 = Object.values(networkInterfaces()).some((list) => list?.some((i) => i.family === 'IPv6'));
  (hasIpv6 ? it : it.skip)('applies IPv4 rules and blocks to IPv4-mapped clients of a server bound to ::', async () => {
    const seen: string[] = [];
    const app = newApp();
    const blockable = ipFilter({ stores: new MemoryStores() });
    app.use((req, _res, next) => {
      seen.push(String(req.ip));
      next();
    });
    app.use('/allow', ipFilter({ allow: ['127.0.0.1'], stores: new MemoryStores() }));
    app.use('/deny', ipFilter({ deny: ['127.0.0.0/8'], stores: new MemoryStores() }));
    app.use('/blocked', blockable);
    app.use((_req, res) => {
      res.send('ok');
    });
    app.use(errorNormalizer());
    const server = await new Promise<Server>((resolve) => {
      const s = app.listen(0, '::', () => resolve(s as unknown as Server));
    });
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      expect((await fetch(`${base}/allow`)).status).toBe(200);
      expect(seen[0]).toBe('::ffff:127.0.0.1');
      const denied = await fetch(`${base}/deny`);
      expect(denied.status).toBe(403);
      expect(((await denied.json()) as { error: { details: unknown } }).error.details).toEqual({ reason: 'denied' });
      expect((await fetch(`${base}/blocked`)).status).toBe(200);
      await blockable.block('127.0.0.1');
      expect((await fetch(`${base}/blocked`)).status).toBe(403);
      expect(await blockable.blocked()).toEqual([{ ip: '127.0.0.1', expiresAt: null }]);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe('ipFilter run-time blocks', () => {
  it('blocks, lists and unblocks, with TTLs on an injected clock', async () => {
    let now = 1_700_000_000_000;
    const { logger, lines } = recordingLogger();
    const filter = ipFilter({ stores: new MemoryStores({ now: () => now }), logger });
    const app = aloneWith(filter);

    await filter.block('10.0.0.7', '1m');
    await filter.block('::ffff:10.0.0.8');
    await filter.block('2001:0db8::0001', 5000);
    expect(await filter.blocked()).toEqual([
      { ip: '10.0.0.7', expiresAt: now + 60_000 },
      { ip: '10.0.0.8', expiresAt: null },
      { ip: '2001:db8::1', expiresAt: now + 5000 },
    ]);
    expectIpBlocked(await from(app, '10.0.0.7'), 'blocked', '10.0.0.7');
    expectIpBlocked(await from(app, '10.0.0.8'), 'blocked');
    expectIpBlocked(await from(app, '::ffff:10.0.0.8'), 'blocked');
    expectIpBlocked(await from(app, '2001:db8::1'), 'blocked');
    await from(app, '10.0.0.9').expect(200);

    now += 5000;
    await from(app, '2001:db8::1').expect(200);
    expectIpBlocked(await from(app, '10.0.0.7'), 'blocked');
    now += 55_000;
    await from(app, '10.0.0.7').expect(200);
    expect(await filter.blocked()).toEqual([{ ip: '10.0.0.8', expiresAt: null }]);

    await filter.unblock('::ffff:10.0.0.8');
    await from(app, '10.0.0.8').expect(200);
    expect(await filter.blocked()).toEqual([]);

    expect(lines.filter((l) => l.code === 'IP_BLOCKED_MANUALLY').map((l) => [l.ip, l.ttl_ms])).toEqual([
      ['10.0.0.7', 60_000],
      ['10.0.0.8', null],
      ['2001:db8::1', 5000],
    ]);
    expect(lines.filter((l) => l.code === 'IP_UNBLOCKED').map((l) => l.ip)).toEqual(['10.0.0.8']);
  });

  it.each<[string, string, unknown]>([
    ['a host name', 'example.com', undefined],
    ['a CIDR', '10.0.0.0/8', undefined],
    ['a zero ttl', '10.0.0.1', 0],
    ['a ttl in words', '10.0.0.1', 'ten minutes'],
  ])('rejects block() with %s', async (_name, ip, ttl) => {
    const filter = ipFilter({ stores: new MemoryStores() });
    await expect(filter.block(ip, ttl as string)).rejects.toBeInstanceOf(ConfigError);
    expect(await filter.blocked()).toEqual([]);
  });

  it('works out of the box in createStack(), counting blocks and refusals in metrics', async () => {
    const stack = createStack({ logger: recordingLogger().logger, trustProxy: 'loopback' });
    expect(stack.order).toContain('ipFilter');
    expect(stack.order.indexOf('ipFilter')).toBe(stack.order.indexOf('securityHeaders') + 1);
    const app = newApp();
    app.use(stack);
    app.get('/games', (_req, res) => {
      res.json([]);
    });
    app.use(stack.errorHandler);
    await from(app, '203.0.113.9', '/games').expect(200);
    await stack.middleware.ipFilter.block('203.0.113.9', '10m');
    const res = await from(app, '203.0.113.9', '/games');
    expectIpBlocked(res, 'blocked', '203.0.113.9');
    // The envelope still carries the stack's security headers and request id.
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    await from(app, '203.0.113.10', '/games').expect(200);
    expect(await stack.metricsRegistry.getSingleMetricAsString('ip_filter_blocks_total')).toContain('ip_filter_blocks_total{reason="manual"} 1');
    expect(await stack.metricsRegistry.getSingleMetricAsString('ip_filter_rejections_total')).toContain('ip_filter_rejections_total{reason="blocked"} 1');
    await stack.close();
  });
});

/** A stack app whose /login always answers 401, for autoBan. */
function banApp(stack: Stack): Express {
  const app = newApp();
  app.use(stack);
  app.post('/login', () => {
    throw new AuthenticationError('Wrong password.');
  });
  app.get('/games', (_req, res) => {
    res.json([]);
  });
  app.use(stack.errorHandler);
  return app;
}

const login = (app: Express, ip: string) => request(app).post('/login').set('X-Forwarded-For', ip);

describe('ipFilter autoBan', () => {
  it('bans an IP after N 401s within the window, logs it and counts it', async () => {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ logger, trustProxy: 'loopback', ipFilter: { autoBan: { after: 3, within: '1m', for: '10m' } } });
    const app = banApp(stack);
    const filter = stack.middleware.ipFilter;

    // Successes and other errors do not count.
    for (let i = 0; i < 5; i++) await from(app, '198.51.100.7', '/games').expect(200);
    await from(app, '198.51.100.7', '/nope').expect(404);
    await login(app, '198.51.100.7').expect(401);
    await login(app, '198.51.100.7').expect(401);
    // The memory counter counts a refusal as its response finishes, before the server reads the
    // next request: by the time this answer arrives, both refusals of .7 are counted.
    await login(app, '198.51.100.8').expect(401);
    expect(await filter.blocked()).toEqual([]);

    const before = Date.now();
    await login(app, '198.51.100.7').expect(401);
    await eventually(async () => expect((await filter.blocked()).map((b) => b.ip)).toEqual(['198.51.100.7']));
    const [ban] = await filter.blocked();
    expect(ban.expiresAt).toBeGreaterThanOrEqual(before + 600_000);
    expect(ban.expiresAt).toBeLessThanOrEqual(Date.now() + 600_000);

    expectIpBlocked(await login(app, '198.51.100.7'), 'blocked', '198.51.100.7');
    expectIpBlocked(await from(app, '198.51.100.7', '/games'), 'blocked');
    await login(app, '198.51.100.8').expect(401);
    await from(app, '198.51.100.8', '/games').expect(200);

    const banned = lines.filter((l) => l.code === 'IP_AUTO_BANNED');
    expect(banned).toHaveLength(1);
    expect(banned[0]).toMatchObject({ level: 'warn', ip: '198.51.100.7', reason: 'auto_ban', count: 3, ban_ms: 600_000, request_id: expect.any(String) });
    expect(await stack.metricsRegistry.getSingleMetricAsString('ip_filter_blocks_total')).toContain('ip_filter_blocks_total{reason="auto_ban"} 1');
    await stack.close();
  });

  it('stays off unless configured', async () => {
    const stack = createStack({ logger: recordingLogger().logger, trustProxy: 'loopback' });
    const app = banApp(stack);
    // Each refusal would be counted before the next request is read (memory counter).
    for (let i = 0; i < 25; i++) await login(app, '198.51.100.9').expect(401);
    expect(await stack.middleware.ipFilter.blocked()).toEqual([]);
    await stack.close();
  });
});

/** A TCP proxy in front of Redis that can be cut and restored: Redis "going down" for one app only. */
class RedisProxy {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private up = true;
  port = 0;
  constructor(private readonly target: { host: string; port: number }) {
    this.server = createServer((client) => {
      if (!this.up) return void client.destroy();
      const upstream = connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
  }
  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return `redis://127.0.0.1:${this.port}`;
  }
  cut(): void {
    this.up = false;
    for (const s of this.sockets) s.destroy();
  }
  restore(): void {
    this.up = true;
  }
  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** Waits for a stack's Redis connections to be up again: closing one mid-reconnect leaves ioredis timers behind. */
async function settleConnections(stack: Stack): Promise<void> {
  const connection = (stack.stores as RedisStores).connection;
  await eventually(() => {
    expect(connection.client.status).toBe('ready');
    expect(connection.subscriber().status).toBe('ready');
  }, 5000).catch(() => undefined);
}

describeRedis('ipFilter shared through Redis', () => {
  const stacks = stacksClosedAfterEach<Stack>();
  let raw: Redis;
  beforeAll(() => {
    raw = new Redis(redisUrl as string);
  });
  afterAll(() => raw.quit());

  function instance(prefix: string, ipFilterOptions: IpFilterOptions | true = true, redis: string = redisUrl as string) {
    const { logger, lines } = recordingLogger();
    // No rateLimit: before Redis first connects its default answers 503 (#13), which is not what these tests look at.
    const stack = createStack({ redis, keyPrefix: prefix, logger, trustProxy: 'loopback', ipFilter: ipFilterOptions, rateLimit: false });
    stacks.push(stack);
    return { stack, app: banApp(stack), filter: stack.middleware.ipFilter, lines };
  }

  // Within a deadline far below the 30 s periodic reload: only the pub/sub message can carry it.
  it('a block on one instance applies on another through pub/sub, and so does the unblock', async () => {
    const prefix = uniquePrefix();
    const a = instance(prefix);
    const b = instance(prefix);
    await from(b.app, '203.0.113.50', '/games').expect(200);

    await a.filter.block('203.0.113.50');
    expect(await raw.zscore(`${prefix}ipFilter:{blocks}`, '203.0.113.50')).toBe('inf');
    await eventually(async () => expectIpBlocked(await from(b.app, '203.0.113.50', '/games'), 'blocked'), 10_000);
    await from(b.app, '203.0.113.51', '/games').expect(200);

    await a.filter.unblock('203.0.113.50');
    expect(await raw.zscore(`${prefix}ipFilter:{blocks}`, '203.0.113.50')).toBeNull();
    await eventually(async () => expect((await from(b.app, '203.0.113.50', '/games')).status).toBe(200), 10_000);

    // Another prefix is another deployment: it does not see these blocks.
    const other = instance(uniquePrefix());
    await a.filter.block('203.0.113.52');
    await eventually(async () => expect((await from(b.app, '203.0.113.52', '/games')).status).toBe(403), 10_000);
    await from(other.app, '203.0.113.52', '/games').expect(200);
  });

  it('shares TTLs, and a fresh instance enforces existing blocks from its first request', async () => {
    const prefix = uniquePrefix();
    const a = instance(prefix);
    const before = Date.now();
    await a.filter.block('2001:db8::77', '1h');
    const after = Date.now();
    const score = Number(await raw.zscore(`${prefix}ipFilter:{blocks}`, '2001:db8::77'));
    expect(score).toBeGreaterThanOrEqual(before + 3_600_000);
    expect(score).toBeLessThanOrEqual(after + 3_600_000);

    const c = instance(prefix);
    expectIpBlocked(await from(c.app, '2001:db8::77', '/games'), 'blocked');
    const [block] = await c.filter.blocked();
    expect(block.ip).toBe('2001:db8::77');
    expect(block.expiresAt).toBeGreaterThanOrEqual(before + 3_600_000);
    expect(block.expiresAt).toBeLessThanOrEqual(Date.now() + 3_600_000);
  });

  it('heals a missed message with the periodic reload', async () => {
    const prefix = uniquePrefix();
    const a = instance(prefix, { syncInterval: '200ms' });
    await from(a.app, '192.0.2.200', '/games').expect(200);
    // Written behind the instance's back, with no message: only a reload can reveal it.
    await raw.zadd(`${prefix}ipFilter:{blocks}`, '+inf', '192.0.2.200');
    await eventually(async () => expectIpBlocked(await from(a.app, '192.0.2.200', '/games'), 'blocked'), 10_000);
    await raw.zrem(`${prefix}ipFilter:{blocks}`, '192.0.2.200');
    await eventually(async () => expect((await from(a.app, '192.0.2.200', '/games')).status).toBe(200), 10_000);
  });

  it('keeps a change made while a full reload is in flight (the snapshot may predate it)', async () => {
    const stores = new RedisStores(redisUrl as string, { logger: recordingLogger().logger, prefix: uniquePrefix() });
    try {
      const list = stores.create(ipBlocklistStore());
      await list.whenReady();
      // Sent on one connection in this order: the reload's snapshot cannot contain the block.
      const reloading = list.list();
      const blocking = list.block('192.0.2.77');
      await reloading;
      expect(list.isBlocked('192.0.2.77')).toBe(true);
      await blocking;
      await list.close();
    } finally {
      await stores.close();
    }
  });

  it('close() unsubscribes and stops the reload timer, leaving the stores open', async () => {
    const prefix = uniquePrefix();
    const stores = new RedisStores(redisUrl as string, { logger: recordingLogger().logger, prefix });
    const filter = ipFilter({ stores, syncInterval: '100ms' });
    const app = aloneWith(filter);
    const peerStores = new RedisStores(redisUrl as string, { logger: recordingLogger().logger, prefix });
    let peerFilter: ReturnType<typeof ipFilter> | undefined;
    try {
      await from(app, '192.0.2.150').expect(200);
      const channel = `${prefix}ipFilter:blocks`;
      await eventually(async () => expect(await raw.pubsub('NUMSUB', channel)).toEqual([channel, 1]));
      await filter.close();
      // Redis counts the UNSUBSCRIBE once it has processed it; a re-subscription would keep it at 1.
      await eventually(async () => expect(await raw.pubsub('NUMSUB', channel)).toEqual([channel, 0]));
      // A peer on the same schedule, left open: once it sees a block written with no message, a
      // reload interval has passed, and the closed filter would have reloaded too.
      peerFilter = ipFilter({ stores: peerStores, syncInterval: '100ms' });
      const peer = aloneWith(peerFilter);
      await from(peer, '192.0.2.150').expect(200);
      await raw.zadd(`${prefix}ipFilter:{blocks}`, '+inf', '192.0.2.150');
      await eventually(async () => expect((await from(peer, '192.0.2.150')).status).toBe(403));
      await from(app, '192.0.2.150').expect(200);
      expect(await stores.counter('still-open').increment('k', 1000)).toMatchObject({ count: 1 });
    } finally {
      await peerFilter?.close();
      await stores.close();
      await peerStores.close();
    }
  });

  it('auto-bans on every instance, counting refusals across them', async () => {
    const prefix = uniquePrefix();
    const autoBan = { autoBan: { after: 3, within: '1m', for: '5m' } };
    const a = instance(prefix, autoBan);
    const b = instance(prefix, autoBan);
    await login(a.app, '198.51.100.20').expect(401);
    await login(a.app, '198.51.100.20').expect(401);
    // Both refusals counted in Redis (the count is written after the answer), and no ban.
    await eventually(async () => expect(await raw.get(`${prefix}ipFilter:autoBan:{198.51.100.20}`)).toBe('2'));
    expect(await raw.zscore(`${prefix}ipFilter:{blocks}`, '198.51.100.20')).toBeNull();
    await login(b.app, '198.51.100.20').expect(401);
    await eventually(async () => expectIpBlocked(await from(a.app, '198.51.100.20', '/games'), 'blocked'));
    await eventually(async () => expectIpBlocked(await from(b.app, '198.51.100.20', '/games'), 'blocked'));
    expect(b.lines.filter((l) => l.code === 'IP_AUTO_BANNED')).toHaveLength(1);
    expect(a.lines.filter((l) => l.code === 'IP_AUTO_BANNED')).toHaveLength(0);
    expect(Number(await raw.zscore(`${prefix}ipFilter:{blocks}`, '198.51.100.20'))).toBeGreaterThan(Date.now() + 200_000);
  });

  it('keeps serving from the local mirror while Redis is down, and catches up after it returns', async () => {
    const target = new URL(redisUrl as string);
    const proxy = new RedisProxy({ host: target.hostname, port: Number(target.port) });
    const viaProxy = await proxy.start();
    const prefix = uniquePrefix();
    const direct = instance(prefix);
    const a = instance(prefix, true, viaProxy);
    try {
      await direct.filter.block('192.0.2.10');
      await eventually(async () => expect((await from(a.app, '192.0.2.10', '/games')).status).toBe(403));
      // Both connections up and subscribed (start-up loads done), so that only the reconnect can
      // reveal what follows.
      const connection = (a.stack.stores as RedisStores).connection;
      const channel = `${prefix}ipFilter:blocks`;
      await eventually(async () => {
        expect([connection.client.status, connection.subscriber().status]).toEqual(['ready', 'ready']);
        expect(await raw.pubsub('NUMSUB', channel)).toEqual([channel, 2]);
      });

      // Answered while Redis is still cut off (it comes back only after these): from the mirror.
      proxy.cut();
      expectIpBlocked(await from(a.app, '192.0.2.10', '/games'), 'blocked');
      await from(a.app, '192.0.2.11', '/games').expect(200);
      // A block during the outage applies here at once; the caller learns it was not shared.
      await expect(a.filter.block('192.0.2.12')).rejects.toThrow();
      expectIpBlocked(await from(a.app, '192.0.2.12', '/games'), 'blocked');

      // Missed while cut off: the reconnect reloads in full (the periodic reload is 30 s away).
      await direct.filter.block('192.0.2.13');
      await direct.filter.unblock('192.0.2.10');
      proxy.restore();
      await eventually(async () => {
        expectIpBlocked(await from(a.app, '192.0.2.13', '/games'), 'blocked');
        expect((await from(a.app, '192.0.2.10', '/games')).status).toBe(200);
      }, 5000);
    } finally {
      proxy.restore();
      await settleConnections(a.stack);
      await closeAll(stacks);
      await proxy.close();
    }
  });

  it('answers without hanging when Redis is unreachable from the start, and loads blocks once it answers', async () => {
    const target = new URL(redisUrl as string);
    const proxy = new RedisProxy({ host: target.hostname, port: Number(target.port) });
    const viaProxy = await proxy.start();
    proxy.cut();
    const prefix = uniquePrefix();
    const direct = instance(prefix);
    await direct.filter.block('192.0.2.98');
    const a = instance(prefix, { deny: ['192.0.2.99'] }, viaProxy);
    try {
      // The first request waits for the first load to fail (bounded by the command timeout), then
      // is served with the static lists; all of this while Redis is still cut off.
      await from(a.app, '192.0.2.1', '/games').expect(200);
      expectIpBlocked(await from(a.app, '192.0.2.99', '/games'), 'denied');
      await from(a.app, '192.0.2.98', '/games').expect(200);
      proxy.restore();
      await eventually(async () => expectIpBlocked(await from(a.app, '192.0.2.98', '/games'), 'blocked'), 5000);
    } finally {
      proxy.restore();
      await settleConnections(a.stack);
      await closeAll(stacks);
      await proxy.close();
    }
  });
});
