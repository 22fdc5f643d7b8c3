import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RequestHandler } from 'express';
import Redis from 'ioredis';
import request from 'supertest';
import {
  ConfigError,
  createStack,
  errorNormalizer,
  featureFlags,
  requestId,
  requireFeature,
  tenant,
  type FeatureFlagsHandler,
  type FeatureFlagsOptions,
} from '../index';
import { murmur3, rolloutBucket } from '../lib/flags/hash';
import { MemoryStores } from '../lib/stores';
import { resetWarnings } from '../lib/warnings';
import { closeAll, describeRedis, eventually, newApp, recordingLogger, redisUrl, uniquePrefix } from './helpers/app';

/** Sets req.user from X-User / X-Plan / X-Beta, as auth would. */
const fakeAuth: RequestHandler = (req, _res, next) => {
  const id = req.headers['x-user'];
  if (typeof id === 'string') {
    req.user = { id, plan: req.headers['x-plan'] as string | undefined, beta: req.headers['x-beta'] === 'true' } as never;
  } else if (typeof req.headers['x-tier'] === 'string') {
    req.auth = { method: 'apiKey', tier: req.headers['x-tier'] };
  }
  next();
};

/** requestId → fake auth → tenant (optional) → featureFlags → routes answering the flags they see. */
function appWith(options: FeatureFlagsOptions) {
  const app = newApp();
  const flags = featureFlags(options);
  app.use(requestId(), fakeAuth, tenant({ required: false, tenants: { acme: { flags: { 'tenant-off': false, 'tenant-on': true } }, beta: true } }), flags);
  app.get('/flag/:name', (req, res) => {
    res.json({ enabled: req.features?.isEnabled(req.params.name) });
  });
  app.use((req, res) => {
    const first = req.features?.isEnabled('a');
    res.json({ path: req.path, a: first, again: req.features?.isEnabled('a'), context: { ...req.context.features }, country: req.context.country ?? null });
  });
  app.use(errorNormalizer());
  return { app, flags };
}

const enabled = async (app: ReturnType<typeof appWith>['app'], name: string, headers: Record<string, string> = {}, path?: string): Promise<boolean> => {
  let r = request(app).get(path ?? `/flag/${name}`);
  for (const [k, v] of Object.entries(headers)) r = r.set(k, v);
  const res = await r.expect(200);
  return res.body.enabled;
};

describe('featureFlags: conditions', () => {
  it('turns a flag with no condition on for everyone, enabled: false off for everyone, and an unknown flag off', async () => {
    const { app } = appWith({ flags: { on: {}, short: true, off: { enabled: false, users: ['u1'] } } });
    expect(await enabled(app, 'on')).toBe(true);
    expect(await enabled(app, 'short')).toBe(true);
    expect(await enabled(app, 'off', { 'X-User': 'u1' })).toBe(false);
    expect(await enabled(app, 'nope')).toBe(false);
  });

  it('matches plans against req.user.plan, else req.auth.tier', async () => {
    const { app } = appWith({ flags: { ml: { plans: ['premium', 'enterprise'] } } });
    expect(await enabled(app, 'ml', { 'X-User': 'u1', 'X-Plan': 'premium' })).toBe(true);
    expect(await enabled(app, 'ml', { 'X-User': 'u1', 'X-Plan': 'free' })).toBe(false);
    expect(await enabled(app, 'ml', { 'X-Tier': 'enterprise' })).toBe(true);
    expect(await enabled(app, 'ml')).toBe(false);
  });

  it('matches tenants against req.tenant.id', async () => {
    const { app } = appWith({ flags: { t: { tenants: ['acme'] } } });
    expect(await enabled(app, 't', { 'X-Tenant-ID': 'acme' })).toBe(true);
    expect(await enabled(app, 't', { 'X-Tenant-ID': 'beta' })).toBe(false);
    expect(await enabled(app, 't')).toBe(false);
  });

  it.each([['CF-IPCountry'], ['CloudFront-Viewer-Country'], ['X-Country']])('reads the country from %s and sets req.context.country', async (header) => {
    const { app } = appWith({ flags: { a: { countries: ['us'] } } });
    const res = await request(app).get('/x').set(header, 'us').expect(200);
    expect(res.body).toMatchObject({ a: true, country: 'US' });
    const other = await request(app).get('/x').set(header, 'DE').expect(200);
    expect(other.body).toMatchObject({ a: false, country: 'DE' });
    // Not a two-letter code: no country, so a country-limited flag stays off.
    expect((await request(app).get('/x').set(header, 'USA').expect(200)).body).toMatchObject({ a: false, country: null });
  });

  it('matches routes as path prefixes at a segment boundary and as globs', async () => {
    const { app } = appWith({ flags: { a: { routes: ['/api/v2', '/games/*/stats', '/admin/**'] } } });
    const on = async (path: string) => (await request(app).get(path).expect(200)).body.a;
    expect(await on('/api/v2')).toBe(true);
    expect(await on('/api/v2/games')).toBe(true);
    expect(await on('/api/v20')).toBe(false);
    expect(await on('/games/7/stats')).toBe(true);
    expect(await on('/games/7/8/stats')).toBe(false);
    expect(await on('/admin')).toBe(true);
    expect(await on('/admin/users/1')).toBe(true);
    expect(await on('/administrator')).toBe(false);
  });

  it('limits beta: true to beta users', async () => {
    const { app } = appWith({ flags: { b: { beta: true } } });
    expect(await enabled(app, 'b', { 'X-User': 'u1', 'X-Beta': 'true' })).toBe(true);
    expect(await enabled(app, 'b', { 'X-User': 'u1' })).toBe(false);
    expect(await enabled(app, 'b')).toBe(false);
  });

  it('requires every condition given (AND)', async () => {
    const { app } = appWith({ flags: { both: { plans: ['pro'], countries: ['US'], beta: true } } });
    expect(await enabled(app, 'both', { 'X-User': 'u1', 'X-Plan': 'pro', 'X-Beta': 'true', 'CF-IPCountry': 'US' })).toBe(true);
    expect(await enabled(app, 'both', { 'X-User': 'u1', 'X-Plan': 'pro', 'X-Beta': 'true', 'CF-IPCountry': 'FR' })).toBe(false);
    expect(await enabled(app, 'both', { 'X-User': 'u1', 'X-Plan': 'free', 'X-Beta': 'true', 'CF-IPCountry': 'US' })).toBe(false);
    expect(await enabled(app, 'both', { 'X-User': 'u1', 'X-Plan': 'pro', 'CF-IPCountry': 'US' })).toBe(false);
  });

  it('gives the flag to a listed user whatever the other conditions, and to nobody else when users is the only condition', async () => {
    const { app } = appWith({ flags: { vip: { users: ['u1', 42], plans: ['enterprise'], percentage: 0 }, only: { users: ['u1'] } } });
    expect(await enabled(app, 'vip', { 'X-User': 'u1', 'X-Plan': 'free' })).toBe(true);
    expect(await enabled(app, 'vip', { 'X-User': '42' })).toBe(true);
    // Not listed: the other conditions decide (here, percentage 0 keeps it off even for enterprise).
    expect(await enabled(app, 'vip', { 'X-User': 'u2', 'X-Plan': 'enterprise' })).toBe(false);
    expect(await enabled(app, 'only', { 'X-User': 'u1' })).toBe(true);
    expect(await enabled(app, 'only', { 'X-User': 'u2' })).toBe(false);
    expect(await enabled(app, 'only')).toBe(false);
  });

  it("applies the tenant's overrides (config.flags), under the enabled: false kill switch", async () => {
    const { app } = appWith({ flags: { 'tenant-off': {}, 'tenant-on': { plans: ['enterprise'] }, killed: { enabled: false } } });
    expect(await enabled(app, 'tenant-off', { 'X-Tenant-ID': 'acme' })).toBe(false);
    expect(await enabled(app, 'tenant-off', { 'X-Tenant-ID': 'beta' })).toBe(true);
    expect(await enabled(app, 'tenant-on', { 'X-Tenant-ID': 'acme' })).toBe(true);
    expect(await enabled(app, 'tenant-on', { 'X-Tenant-ID': 'beta' })).toBe(false);
  });
});

describe('featureFlags: percentage rollout', () => {
  it('computes MurmurHash3 x86_32 (published test vectors)', () => {
    expect(murmur3('')).toBe(0);
    expect(murmur3('hello')).toBe(0x248bfa47);
    expect(murmur3('Hello, world!')).toBe(0xc0363e43);
    expect(murmur3('The quick brown fox jumps over the lazy dog')).toBe(0x2e4ff723);
    expect(murmur3('', '', 1)).toBe(0x514e28b7);
    expect(murmur3('hel', 'lo')).toBe(murmur3('hello'));
    // Non-ASCII is hashed as UTF-8 bytes, the same joined or split.
    expect(murmur3('ü', 'x')).toBe(murmur3('üx'));
    expect(rolloutBucket('new-ui:', 'user-1')).toBe(murmur3('new-ui:user-1') % 100);
  });

  it.each([10, 30, 50])('gives %i%% of 10,000 users the flag (within ±2 points), the same answer every time', (share) => {
    const flags = featureFlags({ flags: { rollout: { percentage: share } } });
    let on = 0;
    const first: boolean[] = [];
    for (let i = 0; i < 10_000; i++) {
      const value = flags.evaluate('rollout', { userId: `user-${i}` })?.value === true;
      first.push(value);
      if (value) on++;
    }
    expect(Math.abs(on / 100 - share)).toBeLessThanOrEqual(2);
    for (let i = 0; i < 10_000; i++) expect(flags.evaluate('rollout', { userId: `user-${i}` })?.value).toBe(first[i]);
    // Sticky across instances: a second handler with the same flag picks the same users.
    const again = featureFlags({ flags: { rollout: { percentage: share } } });
    for (let i = 0; i < 10_000; i += 97) expect(again.evaluate('rollout', { userId: `user-${i}` })?.value).toBe(first[i]);
  });

  it('grows the audience monotonically (users at 10% keep the flag at 30%) and picks different users per flag', () => {
    const flags = featureFlags({ flags: { a10: { percentage: 10 }, b10: { percentage: 10 } } });
    const wider = featureFlags({ flags: { a10: { percentage: 30 } } });
    let overlap = 0;
    let inA = 0;
    for (let i = 0; i < 10_000; i++) {
      const s = { userId: `user-${i}` };
      const a = flags.evaluate('a10', s)?.value;
      if (a) {
        inA++;
        expect(wider.evaluate('a10', s)?.value).toBe(true);
        if (flags.evaluate('b10', s)?.value) overlap++;
      }
    }
    // Independent 10% draws overlap on about 10% of a's users, not all of them.
    expect(overlap / inA).toBeLessThan(0.2);
  });

  it('sticks to the IP when there is no user, and agrees with req.features', async () => {
    const { app, flags } = appWith({ flags: { a: { percentage: 50 } } });
    const res = await request(app).get('/x').expect(200);
    // supertest connects from loopback; Express reports it as ::ffff:127.0.0.1 or 127.0.0.1.
    const ips = ['::ffff:127.0.0.1', '127.0.0.1', '::1'].map((ip) => flags.evaluate('a', { ip })?.value);
    expect(ips).toContain(res.body.a);
    const users = await Promise.all(['u1', 'u2', 'u3', 'u4'].map((u) => enabled(app, 'a', { 'X-User': u })));
    expect(users).toEqual(['u1', 'u2', 'u3', 'u4'].map((u) => flags.evaluate('a', { userId: u })?.value));
  });

  it('names the reason of each outcome', () => {
    const flags = featureFlags({ flags: { s: {}, d: { enabled: false }, t: { plans: ['pro'] }, p: { percentage: 50 }, u: { users: ['u1'] } } });
    expect(flags.evaluate('s')?.reason).toBe('STATIC');
    expect(flags.evaluate('d')?.reason).toBe('DISABLED');
    expect(flags.evaluate('t', { plan: 'pro' })).toEqual({ value: true, reason: 'TARGETING_MATCH' });
    expect(flags.evaluate('t', { plan: 'free' })).toEqual({ value: false, reason: 'DEFAULT' });
    expect(flags.evaluate('p', { userId: 'x' })?.reason).toBe('SPLIT');
    expect(flags.evaluate('u', { userId: 'u1' })).toEqual({ value: true, reason: 'TARGETING_MATCH' });
    expect(flags.evaluate('missing')).toBeUndefined();
  });
});

describe('featureFlags: req.features', () => {
  it('evaluates lazily, remembers each answer, lists only evaluated flags in the context, and all() gives every flag', async () => {
    const app = newApp();
    app.use(requestId(), fakeAuth, featureFlags({ flags: { a: { plans: ['pro'] }, b: {}, c: { enabled: false } } }));
    app.get('/', (req, res) => {
      const before = { ...req.context.features };
      const a = req.features?.isEnabled('a');
      const after = { ...req.context.features };
      const all = req.features?.all() ?? {};
      all.a = !all.a;
      res.json({ before, a, after, all: req.features?.all(), ctx: { ...req.context.features } });
    });
    const res = await request(app).get('/').set('X-User', 'u1').set('X-Plan', 'pro').expect(200);
    expect(res.body).toEqual({ before: {}, a: true, after: { a: true }, all: { a: true, b: true, c: false }, ctx: { a: true, b: true, c: false } });
  });

  it('sets X-Feature-<name>: enabled (name as written) for exposed flags that are on, and nothing for the others', async () => {
    const { app } = appWith({ flags: { 'new-ui': { expose: true, beta: true }, hidden: {}, 'Dark.Mode': { expose: true } } });
    const beta = await request(app).get('/x').set('X-User', 'u1').set('X-Beta', 'true').expect(200);
    expect(beta.headers['x-feature-new-ui']).toBe('enabled');
    expect(beta.headers['x-feature-dark.mode']).toBe('enabled');
    expect(beta.headers['x-feature-hidden']).toBeUndefined();
    // 'a' is not a flag here: unknown names answer false and are not listed.
    expect(beta.body.context).toEqual({ 'new-ui': true, 'Dark.Mode': true });
    const plain = await request(app).get('/x').set('X-User', 'u2').expect(200);
    expect(plain.headers['x-feature-new-ui']).toBeUndefined();
  });
});

describe('requireFeature', () => {
  afterEach(() => resetWarnings());

  it('answers 404 FEATURE_DISABLED when the flag is off for the request, and lets it through when on', async () => {
    const { logger } = recordingLogger();
    const stack = createStack({ logger, featureFlags: { flags: { 'new-ui': { plans: ['pro'] } } } });
    const app = newApp();
    app.use(stack);
    app.get('/ui', requireFeature('new-ui'), (_req, res) => {
      res.send('new ui');
    });
    app.use(stack.errorHandler);
    const res = await request(app).get('/ui').expect(404);
    expect(res.body.error).toEqual({ code: 'FEATURE_DISABLED', message: 'This endpoint is not available.', request_id: res.headers['x-request-id'] });
    const pro = newApp();
    pro.use((req, _res, next) => {
      req.user = { id: 'u1', plan: 'pro' } as never;
      next();
    });
    pro.use(stack);
    pro.get('/ui', requireFeature('new-ui'), (_req, res) => {
      res.send('new ui');
    });
    pro.use(stack.errorHandler);
    await request(pro).get('/ui').expect(200, 'new ui');
    await stack.close();
  });

  it('evaluates its own flags when given them, without featureFlags in front', async () => {
    const app = newApp();
    app.use(requestId());
    app.get('/us', requireFeature('us-only', { flags: { 'us-only': { countries: ['US'] } } }), (_req, res) => {
      res.send('ok');
    });
    app.use(errorNormalizer());
    await request(app).get('/us').set('CF-IPCountry', 'US').expect(200);
    expect((await request(app).get('/us').set('CF-IPCountry', 'GB').expect(404)).body.error.code).toBe('FEATURE_DISABLED');
  });

  it('refuses every request and warns once (ERR_FEATURE_WITHOUT_FLAGS) when no flags are in reach', async () => {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ logger });
    const app = newApp();
    app.use(stack);
    app.get('/x', requireFeature('anything'), (_req, res) => {
      res.send('ok');
    });
    app.use(stack.errorHandler);
    expect((await request(app).get('/x').expect(404)).body.error.code).toBe('FEATURE_DISABLED');
    await request(app).get('/x').expect(404);
    expect(lines.filter((l) => l.code === 'ERR_FEATURE_WITHOUT_FLAGS')).toHaveLength(1);
    await stack.close();
  });

  it('refuses a bad name or an own flag set without the flag at setup', () => {
    expect(() => requireFeature('')).toThrow(ConfigError);
    expect(() => requireFeature({} as never)).toThrow(/expected the flag name first/);
    expect(() => requireFeature('a', { flags: { b: {} } })).toThrow(/has no flag 'a'/);
  });
});

describe('featureFlags: validation and set()', () => {
  it.each([
    [{ flags: { a: { enabeld: true } } }, /featureFlags.flags.a.enabeld: unknown flag condition; did you mean 'enabled'\?/],
    [{ flags: { a: { percentage: 150 } } }, /featureFlags.flags.a.percentage: expected a whole number from 0 to 100/],
    [{ flags: { a: { percentage: 12.5 } } }, /percentage/],
    [{ flags: { a: { users: 'u1' } } }, /featureFlags.flags.a.users: expected an array/],
    [{ flags: { a: { countries: ['USA'] } } }, /two-letter/],
    [{ flags: { a: { routes: ['api'] } } }, /starting with '\/'/],
    [{ flags: { a: { beta: 'yes' } } }, /featureFlags.flags.a.beta: expected true or false/],
    [{ flags: { 'bad name': {} } }, /flag name/],
    [{ flags: { a: 'on' } }, /expected a flag definition/],
    [{ source: 'flags.yaml' }, /featureFlags.source: expected 'redis', a path ending in .json/],
    [{ source: { file: '/nonexistent/flags.json' } }, /cannot read the flag file/],
    [{ stores: new MemoryStores() }, /only applies to source: 'redis'/],
    [{ flagz: {} }, /did you mean 'flags'/],
  ])('refuses %p at setup', (options, message) => {
    expect(() => featureFlags(options as FeatureFlagsOptions)).toThrow(ConfigError);
    expect(() => featureFlags(options as FeatureFlagsOptions)).toThrow(message);
  });

  it('set() and delete() change the flags of this instance; an invalid set() rejects and changes nothing', async () => {
    const { app, flags } = appWith({ flags: { a: { enabled: false } } });
    const changes: string[][] = [];
    flags.onChange((c) => changes.push(c));
    expect((await request(app).get('/x').expect(200)).body.a).toBe(false);
    await flags.set('a', { enabled: true });
    expect((await request(app).get('/x').expect(200)).body.a).toBe(true);
    await expect(flags.set('a', { percentage: 101 })).rejects.toThrow(/featureFlags.set\('a'\).percentage: expected a whole number/);
    expect((await request(app).get('/x').expect(200)).body.a).toBe(true);
    expect(flags.definitions()).toEqual({ a: { enabled: true } });
    await flags.delete('a');
    expect((await request(app).get('/x').expect(200)).body.a).toBe(false);
    expect(changes).toEqual([['a'], ['a']]);
  });

  it("lets createStack's featureFlags be reached as stack.middleware.featureFlags", async () => {
    const stack = createStack({ logger: recordingLogger().logger, featureFlags: { flags: { a: false } } });
    expect(stack.order.indexOf('featureFlags')).toBeGreaterThan(stack.order.indexOf('auditLog'));
    await stack.middleware.featureFlags.set('a', true);
    expect(stack.middleware.featureFlags.evaluate('a')?.value).toBe(true);
    await stack.close();
  });
});

describe('featureFlags: JSON file source', () => {
  let dir: string;
  let flags: FeatureFlagsHandler | undefined;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'perimeter-flags-'));
  });
  afterEach(async () => {
    await flags?.close();
    flags = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('reloads the file when it changes, without a restart', async () => {
    const file = join(dir, 'flags.json');
    writeFileSync(file, JSON.stringify({ a: { enabled: false } }));
    const { logger, lines } = recordingLogger();
    const built = appWith({ source: { file, pollInterval: '50ms', debounce: '20ms' }, flags: { base: true }, logger });
    flags = built.flags;
    expect((await request(built.app).get('/x').expect(200)).body.a).toBe(false);
    writeFileSync(file, JSON.stringify({ a: { enabled: true, expose: true } }));
    await eventually(async () => {
      const res = await request(built.app).get('/x').expect(200);
      expect(res.body.a).toBe(true);
      expect(res.headers['x-feature-a']).toBe('enabled');
    });
    expect(flags.definitions()).toEqual({ base: { enabled: true }, a: { enabled: true, expose: true } });
    expect(lines.find((l) => l.code === 'FEATURE_FLAGS_RELOADED')).toMatchObject({ level: 'info', source: file, changed: ['a'] });
    await expect(flags.set('a', false)).rejects.toThrow(/edit that file/);
  });

  it('refuses a bad definition in the file, logs why at error, and keeps the previous flags until the file is fixed', async () => {
    const file = join(dir, 'flags.json');
    writeFileSync(file, JSON.stringify({ a: { percentage: 100 } }));
    const { logger, lines } = recordingLogger();
    const built = appWith({ source: file, logger });
    flags = built.flags;
    writeFileSync(file, JSON.stringify({ a: { percentage: 250 } }));
    await eventually(() => expect(lines.find((l) => l.code === 'FEATURE_FLAGS_INVALID')).toBeDefined(), 5000);
    const line = lines.find((l) => l.code === 'FEATURE_FLAGS_INVALID');
    expect(line).toMatchObject({ level: 'error', source: file });
    expect(line?.reason).toMatch(/\.a\.percentage: expected a whole number from 0 to 100/);
    expect((await request(built.app).get('/x').expect(200)).body.a).toBe(true);

    writeFileSync(file, '{ "a": ');
    await eventually(() => expect(lines.filter((l) => l.code === 'FEATURE_FLAGS_INVALID')).toHaveLength(2), 5000);
    expect((await request(built.app).get('/x').expect(200)).body.a).toBe(true);
    await expect(flags.reload()).rejects.toThrow(/not valid JSON/);

    writeFileSync(file, JSON.stringify({ a: { percentage: 0 } }));
    await eventually(async () => expect((await request(built.app).get('/x').expect(200)).body.a).toBe(false), 5000);
  });
});

describe("featureFlags: source 'redis' in memory", () => {
  it('shares set() between handlers on the same stores', async () => {
    const stores = new MemoryStores();
    const a = featureFlags({ source: 'redis', stores });
    const b = featureFlags({ source: 'redis', stores });
    await Promise.all([a.ready(), b.ready()]);
    await a.set('x', { plans: ['pro'] });
    await eventually(() => expect(b.evaluate('x', { plan: 'pro' })?.value).toBe(true));
    await a.delete('x');
    await eventually(() => expect(b.evaluate('x')).toBeUndefined());
    await Promise.all([a.close(), b.close()]);
  });
});

describeRedis("featureFlags: source 'redis'", () => {
  const stacks: Array<ReturnType<typeof createStack>> = [];
  let redis: Redis;
  beforeEach(() => {
    redis = new Redis(redisUrl as string);
  });
  afterEach(async () => {
    await closeAll(stacks);
    await redis.quit();
  });
  const instance = (keyPrefix: string, logger = recordingLogger().logger, syncInterval: string | number = '30s') => {
    const stack = createStack({ redis: redisUrl, keyPrefix, logger, rateLimit: false, featureFlags: { source: 'redis', flags: { base: true }, syncInterval } });
    stacks.push(stack);
    const app = newApp();
    app.use(stack);
    app.get('/', (req, res) => {
      res.json(req.features?.all());
    });
    app.use(stack.errorHandler);
    return { stack, app, flags: stack.middleware.featureFlags };
  };

  it('loads the hash at start and shows set() on instance A on instance B at once, not at the 30 s periodic reload', async () => {
    const prefix = uniquePrefix();
    await redis.hset(`${prefix}flags`, 'preset', JSON.stringify({ enabled: true }));
    const a = instance(prefix);
    const b = instance(prefix);
    await Promise.all([a.flags.ready(), b.flags.ready()]);
    expect((await request(b.app).get('/').expect(200)).body).toEqual({ base: true, preset: true });

    await a.flags.set('new-ui', { percentage: 100, expose: true });
    expect(JSON.parse((await redis.hget(`${prefix}flags`, 'new-ui')) as string)).toEqual({ percentage: 100, expose: true });
    await eventually(async () => {
      const res = await request(b.app).get('/').expect(200);
      expect(res.body['new-ui']).toBe(true);
      expect(res.headers['x-feature-new-ui']).toBe('enabled');
    });

    await a.flags.delete('preset');
    await eventually(() => expect(b.flags.evaluate('preset')).toBeUndefined());
  });

  it('refuses an invalid set() without writing, and keeps the previous flags when the hash holds a bad definition', async () => {
    const prefix = uniquePrefix();
    const { logger, lines } = recordingLogger();
    const a = instance(prefix);
    const b = instance(prefix, logger);
    await Promise.all([a.flags.ready(), b.flags.ready()]);
    await a.flags.set('x', { plans: ['pro'] });
    await eventually(() => expect(b.flags.evaluate('x', { plan: 'pro' })?.value).toBe(true));

    await expect(a.flags.set('x', { plans: 'pro' } as never)).rejects.toThrow(ConfigError);
    expect(JSON.parse((await redis.hget(`${prefix}flags`, 'x')) as string)).toEqual({ plans: ['pro'] });

    // Written behind the library's back, then announced: B refuses the set and keeps x.
    await redis.hset(`${prefix}flags`, 'y', JSON.stringify({ percentage: -5 }));
    await redis.publish(`${prefix}flags:changed`, 'y');
    await eventually(() => expect(lines.find((l) => l.code === 'FEATURE_FLAGS_INVALID')).toBeDefined());
    expect(lines.find((l) => l.code === 'FEATURE_FLAGS_INVALID')?.reason).toMatch(/\.y\.percentage/);
    expect(b.flags.evaluate('x', { plan: 'pro' })?.value).toBe(true);
    expect(b.flags.evaluate('y')).toBeUndefined();
  });

  it('heals a missed announcement with the periodic full reload (syncInterval)', async () => {
    const prefix = uniquePrefix();
    const b = instance(prefix, recordingLogger().logger, '200ms');
    await b.flags.ready();
    // Written without PUBLISH, as if the announcement had been lost.
    await redis.hset(`${prefix}flags`, 'quiet', JSON.stringify({ enabled: true }));
    await eventually(() => expect(b.flags.evaluate('quiet')?.value).toBe(true));
  });
});
