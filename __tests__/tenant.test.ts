import type { RequestHandler } from 'express';
import jwt from 'jsonwebtoken';
import request from 'supertest';
import { ConfigError, createStack, errorNormalizer, requestId, tenant, type TenantOptions } from '../index';
import { newApp, recordingLogger } from './helpers/app';

const SECRET = 'a-test-secret-that-is-long-enough-for-hs256!';
const token = (claims: Record<string, unknown>): string => jwt.sign({ sub: 'u1', ...claims }, SECRET, { algorithm: 'HS256', expiresIn: '1h' });

/** requestId → (before) → tenant → a handler echoing the tenant and the URL it saw → the error envelope. */
function appWith(options: TenantOptions, before?: RequestHandler) {
  const app = newApp();
  app.use(requestId());
  if (before) app.use(before);
  const handler = tenant(options);
  app.use(handler);
  app.use((req, res) => {
    res.json({ tenant: req.tenant ?? null, contextTenant: req.context.tenant?.id ?? null, url: req.url, originalUrl: req.originalUrl });
  });
  app.use(errorNormalizer());
  return { app, handler };
}

const asUser = (user: Record<string, unknown>): RequestHandler => (req, _res, next) => {
  req.user = user as never;
  next();
};

const TENANTS = { acme: { plan: 'pro' }, beta: { plan: 'free' } };

describe('tenant: sources', () => {
  it('reads the subdomain under baseDomain (acme.api.example.com → acme) and sets req.tenant and the context', async () => {
    const { app } = appWith({ baseDomain: 'api.example.com', tenants: TENANTS });
    const res = await request(app).get('/games').set('Host', 'ACME.api.example.com').expect(200);
    expect(res.body.tenant).toEqual({ id: 'acme', config: { plan: 'pro' } });
    expect(res.body.contextTenant).toBe('acme');
  });

  it.each([
    ['the base domain itself', 'api.example.com'],
    ['two labels in front of the base', 'x.acme.api.example.com'],
    ['an ignored subdomain (www)', 'www.api.example.com'],
    ['another domain', 'acme.example.org'],
  ])('names no tenant from %s', async (_what, host) => {
    const { app } = appWith({ baseDomain: 'api.example.com', tenants: TENANTS, required: false });
    const res = await request(app).get('/').set('Host', host).expect(200);
    expect(res.body.tenant).toBeNull();
  });

  it('honours trust proxy for the subdomain (X-Forwarded-Host), as req.hostname does', async () => {
    const { app } = appWith({ baseDomain: 'api.example.com', tenants: TENANTS });
    app.set('trust proxy', true);
    const res = await request(app).get('/').set('Host', 'internal:8080').set('X-Forwarded-Host', 'beta.api.example.com').expect(200);
    expect(res.body.tenant.id).toBe('beta');
  });

  it('reads the X-Tenant-ID header by default, and a configured header', async () => {
    const { app } = appWith({ tenants: TENANTS });
    expect((await request(app).get('/').set('X-Tenant-ID', 'beta').expect(200)).body.tenant.id).toBe('beta');
    const custom = appWith({ tenants: TENANTS, header: 'X-Org' }).app;
    expect((await request(custom).get('/').set('X-Org', 'acme').expect(200)).body.tenant.id).toBe('acme');
  });

  it("reads the authenticated user's tenant claim (req.user.tenant, req.auth.claims, or a custom claim)", async () => {
    const viaUser = appWith({ tenants: TENANTS }, asUser({ id: 'u1', tenant: 'acme' })).app;
    expect((await request(viaUser).get('/').expect(200)).body.tenant.id).toBe('acme');
    const viaClaims = appWith({ tenants: TENANTS, claim: 'org' }, (req, _res, next) => {
      req.user = { id: 'u1' } as never;
      req.auth = { method: 'jwt', claims: { org: 'beta' } };
      next();
    }).app;
    expect((await request(viaClaims).get('/').expect(200)).body.tenant.id).toBe('beta');
  });

  it('reads a path prefix and leaves req.url alone unless stripPath is set', async () => {
    const { app } = appWith({ from: ['path'], tenants: TENANTS });
    const res = await request(app).get('/t/acme/games?x=1').expect(200);
    expect(res.body.tenant.id).toBe('acme');
    expect(res.body.url).toBe('/t/acme/games?x=1');

    const stripped = appWith({ from: ['path'], pathPrefix: '/t', stripPath: true, tenants: TENANTS }).app;
    const s = await request(stripped).get('/t/beta/games?x=1').expect(200);
    expect(s.body).toMatchObject({ url: '/games?x=1', originalUrl: '/t/beta/games?x=1' });
    expect(s.body.tenant.id).toBe('beta');
    expect((await request(stripped).get('/t/acme').expect(200)).body.url).toBe('/');
  });

  it('routes after a stripped path see the path without the tenant', async () => {
    const app = newApp();
    app.use(requestId(), tenant({ pathPrefix: '/', stripPath: true, tenants: TENANTS }));
    app.get('/games/:id', (req, res) => {
      res.json({ tenant: req.tenant?.id, id: req.params.id });
    });
    app.use(errorNormalizer());
    await request(app).get('/acme/games/7').expect(200, { tenant: 'acme', id: '7' });
  });

  it('takes the first source that gives a value, in the configured order', async () => {
    const headerFirst = appWith({ from: ['header', 'subdomain'], baseDomain: 'api.example.com', tenants: TENANTS }).app;
    const subdomainFirst = appWith({ from: ['subdomain', 'header'], baseDomain: 'api.example.com', tenants: TENANTS }).app;
    const send = (app: typeof headerFirst) => request(app).get('/').set('Host', 'acme.api.example.com').set('X-Tenant-ID', 'beta').expect(200);
    expect((await send(headerFirst)).body.tenant.id).toBe('beta');
    expect((await send(subdomainFirst)).body.tenant.id).toBe('acme');
    // The default order puts the subdomain first when baseDomain is set.
    expect((await send(appWith({ baseDomain: 'api.example.com', tenants: TENANTS }).app)).body.tenant.id).toBe('acme');
  });
});

describe('tenant: refusals', () => {
  it('answers an unknown tenant with 404 TENANT_NOT_FOUND in the error envelope', async () => {
    const { app } = appWith({ tenants: TENANTS });
    const res = await request(app).get('/').set('X-Tenant-ID', 'globex').expect(404);
    expect(res.body.error).toMatchObject({ code: 'TENANT_NOT_FOUND', request_id: res.headers['x-request-id'], details: { tenant: 'globex' } });
  });

  it('refuses a malformed id with 404 before any lookup', async () => {
    const resolve = jest.fn(async () => ({}));
    const { app } = appWith({ resolve });
    for (const bad of ['-acme', 'a'.repeat(64), 'ac me', 'acme;drop', '../etc']) {
      const res = await request(app).get('/').set('X-Tenant-ID', bad).expect(404);
      expect(res.body.error.code).toBe('TENANT_NOT_FOUND');
      expect(res.body.error.details).toBeUndefined();
    }
    expect(resolve).not.toHaveBeenCalled();
  });

  it('answers 403 TENANT_MISMATCH when the token names another tenant, whether or not the asked tenant exists', async () => {
    const { app } = appWith({ tenants: TENANTS }, asUser({ id: 'u1', tenant: 'beta' }));
    const res = await request(app).get('/').set('X-Tenant-ID', 'acme').expect(403);
    expect(res.body.error.code).toBe('TENANT_MISMATCH');
    expect((await request(app).get('/').set('X-Tenant-ID', 'nonexistent').expect(403)).body.error.code).toBe('TENANT_MISMATCH');
    // Its own tenant, even in another case, passes.
    expect((await request(app).get('/').set('X-Tenant-ID', 'BETA').expect(200)).body.tenant.id).toBe('beta');
  });

  it('checks the mismatch with real JWTs through createStack({ auth, tenant })', async () => {
    const stack = createStack({ logger: recordingLogger().logger, auth: { jwt: { secret: SECRET } }, tenant: { baseDomain: 'api.example.com', tenants: TENANTS } });
    const app = newApp();
    app.use(stack);
    app.get('/me', (req, res) => {
      res.json({ tenant: req.tenant?.id });
    });
    app.use(stack.errorHandler);
    const acmeUser = token({ tenant: 'acme' });
    await request(app).get('/me').set('Host', 'acme.api.example.com').set('Authorization', `Bearer ${acmeUser}`).expect(200, { tenant: 'acme' });
    const res = await request(app).get('/me').set('Host', 'beta.api.example.com').set('Authorization', `Bearer ${acmeUser}`).expect(403);
    expect(res.body.error.code).toBe('TENANT_MISMATCH');
    await stack.close();
  });

  it('refuses a request naming no tenant when required, saying where to send it; required: false lets it through', async () => {
    const { app } = appWith({ baseDomain: 'api.example.com', tenants: TENANTS });
    const res = await request(app).get('/').set('Host', 'api.example.com').expect(404);
    expect(res.body.error.code).toBe('TENANT_NOT_FOUND');
    expect(res.body.error.message).toBe("This request names no tenant; send it in the subdomain of api.example.com or the X-Tenant-ID header or the token's 'tenant' claim.");
    const optional = appWith({ tenants: TENANTS, required: false }).app;
    expect((await request(optional).get('/').expect(200)).body.tenant).toBeNull();
    // Not required, but named and unknown: still 404.
    await request(optional).get('/').set('X-Tenant-ID', 'globex').expect(404);
  });

  it('accepts any well-formed id (lower-cased) when there is neither tenants nor resolve', async () => {
    const { app } = appWith({});
    expect((await request(app).get('/').set('X-Tenant-ID', 'Initech').expect(200)).body.tenant).toEqual({ id: 'initech' });
    const sensitive = appWith({ caseSensitive: true }).app;
    expect((await request(sensitive).get('/').set('X-Tenant-ID', 'Initech').expect(200)).body.tenant).toEqual({ id: 'Initech' });
  });
});

describe('tenant: resolve()', () => {
  it('caches answers (found and unknown) for cacheTtl, shares one lookup between concurrent requests, and invalidate() forgets', async () => {
    let now = 1_000_000;
    const calls: string[] = [];
    const resolve = async (id: string) => {
      calls.push(id);
      await new Promise((r) => setTimeout(r, 20));
      return id === 'acme' ? { plan: 'pro' } : null;
    };
    const { app, handler } = appWith({ resolve, cacheTtl: '1m', now: () => now });
    const results = await Promise.all([1, 2, 3, 4].map(() => request(app).get('/').set('X-Tenant-ID', 'acme')));
    expect(results.map((r) => r.status)).toEqual([200, 200, 200, 200]);
    expect(results[0].body.tenant).toEqual({ id: 'acme', config: { plan: 'pro' } });
    expect(calls).toEqual(['acme']);

    await request(app).get('/').set('X-Tenant-ID', 'globex').expect(404);
    await request(app).get('/').set('X-Tenant-ID', 'globex').expect(404);
    expect(calls).toEqual(['acme', 'globex']);

    now += 59_000;
    await request(app).get('/').set('X-Tenant-ID', 'acme').expect(200);
    expect(calls).toHaveLength(2);
    now += 2_000;
    await request(app).get('/').set('X-Tenant-ID', 'acme').expect(200);
    expect(calls).toEqual(['acme', 'globex', 'acme']);

    handler.invalidate('acme');
    await request(app).get('/').set('X-Tenant-ID', 'acme').expect(200);
    expect(calls).toHaveLength(4);
  });

  it('passes a failing resolve() to the error handler (500) and does not cache the failure', async () => {
    let fail = true;
    const { app } = appWith({
      resolve: async () => {
        if (fail) throw new Error('tenant database unreachable');
        return { plan: 'pro' };
      },
    });
    const res = await request(app).get('/').set('X-Tenant-ID', 'acme').expect(500);
    expect(res.body.error.code).toBe('INTERNAL_ERROR');
    fail = false;
    await request(app).get('/').set('X-Tenant-ID', 'acme').expect(200);
  });

  it('tries the tenants map before resolve()', async () => {
    const resolve = jest.fn(async () => ({ plan: 'resolved' }));
    const { app } = appWith({ tenants: { acme: { plan: 'listed' } }, resolve });
    expect((await request(app).get('/').set('X-Tenant-ID', 'acme').expect(200)).body.tenant.config.plan).toBe('listed');
    expect(resolve).not.toHaveBeenCalled();
    expect((await request(app).get('/').set('X-Tenant-ID', 'beta').expect(200)).body.tenant.config.plan).toBe('resolved');
  });
});

describe('tenant in a stack', () => {
  it('puts tenant_id on the request log line and on lines logged through req.context.log', async () => {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ logger, tenant: { tenants: TENANTS } });
    const app = newApp();
    app.use(stack);
    app.get('/games', (req, res) => {
      req.context.log.info('listing games');
      res.json([]);
    });
    app.use(stack.errorHandler);
    const res = await request(app).get('/games').set('X-Tenant-ID', 'acme').expect(200);
    const id = res.headers['x-request-id'];
    expect(lines.find((l) => l.message === 'listing games')).toMatchObject({ request_id: id, tenant_id: 'acme' });
    expect(lines.find((l) => l.message === 'Request completed')).toMatchObject({ request_id: id, tenant_id: 'acme' });
    await stack.close();
  });

  it('gives each tenant its own rate-limit counts (issue 7)', async () => {
    const stack = createStack({ logger: recordingLogger().logger, tenant: { tenants: TENANTS }, rateLimit: { limit: 2 } });
    expect(stack.order.indexOf('tenant')).toBeLessThan(stack.order.indexOf('rateLimit'));
    const app = newApp();
    app.use(stack);
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    app.use(stack.errorHandler);
    const hit = (t: string) => request(app).get('/').set('X-Tenant-ID', t);
    expect((await hit('acme')).status).toBe(200);
    expect((await hit('acme')).status).toBe(200);
    const refused = await hit('acme');
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe('RATE_LIMIT_EXCEEDED');
    // Same client IP, other tenant: a fresh limit.
    const other = await hit('beta');
    expect(other.status).toBe(200);
    expect(other.headers['x-ratelimit-remaining']).toBe('1');
    expect((await hit('beta')).status).toBe(200);
    expect((await hit('beta')).status).toBe(429);
    await stack.close();
  });

  it('counts tenant_requests_total per listed tenant, and resolved tenants beyond the cap as #other', async () => {
    const stack = createStack({
      logger: recordingLogger().logger,
      rateLimit: false,
      tenant: { tenants: { acme: true }, resolve: async (id: string) => (id.startsWith('r') ? {} : null), metricsLabels: 2 },
    });
    const app = newApp();
    app.use(stack);
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    app.use(stack.errorHandler);
    for (const t of ['acme', 'acme', 'r1', 'r2', 'r3', 'r4']) await request(app).get('/').set('X-Tenant-ID', t).expect(200);
    await request(app).get('/').set('X-Tenant-ID', 'unknown').expect(404);
    const text = await stack.metricsRegistry.metrics();
    expect(text).toContain('tenant_requests_total{tenant="acme"} 2');
    expect(text).toContain('tenant_requests_total{tenant="r1"} 1');
    expect(text).toContain('tenant_requests_total{tenant="r2"} 1');
    expect(text).toContain('tenant_requests_total{tenant="#other"} 2');
    expect(text).not.toContain('tenant="unknown"');
    expect(text).not.toContain('tenant="r3"');
    await stack.close();
  });

  it('gives ids accepted without tenants or resolve no label of their own (the client chose them)', async () => {
    const stack = createStack({ logger: recordingLogger().logger, rateLimit: false, tenant: {} });
    const app = newApp();
    app.use(stack);
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    app.use(stack.errorHandler);
    for (const t of ['junk1', 'junk2', 'junk3']) await request(app).get('/').set('X-Tenant-ID', t).expect(200);
    const text = await stack.metricsRegistry.metrics();
    expect(text).toContain('tenant_requests_total{tenant="#other"} 3');
    expect(text).not.toContain('tenant="junk1"');
    await stack.close();
  });
});

describe('tenant: setup errors', () => {
  it.each([
    [{ from: ['subdomain'] }, /tenant.baseDomain: is needed/],
    [{ from: ['cookie'] }, /tenant.from\[0\]: expected one of 'subdomain'/],
    [{ tenants: { 'bad id': {} } }, /tenant.tenants.bad id/],
    [{ tenants: { Acme: {}, acme: {} } }, /same tenant as another key/],
    [{ tenants: { acme: { flags: { 'new-ui': 'yes' } } } }, /tenant.tenants.acme.flags.new-ui: expected true or false/],
    [{ resolve: 'db' }, /tenant.resolve: expected an async function/],
    [{ cacheTtl: 'soon' }, /tenant.cacheTtl: expected a duration/],
    [{ baseDomain: '.example.com' }, /tenant.baseDomain: expected a domain/],
    [{ requried: true }, /did you mean 'required'/],
  ])('refuses %p', (options, message) => {
    expect(() => tenant(options as TenantOptions)).toThrow(ConfigError);
    expect(() => tenant(options as TenantOptions)).toThrow(message);
  });

  it('explains app.use(tenant) without the call', () => {
    const slip = tenant as unknown as RequestHandler;
    expect(() => slip({ method: 'GET', headers: {}, url: '/' } as never, {} as never, () => undefined)).toThrow(/app.use\(tenant\(\)\)/);
  });
});
