import { createHash, createHmac, generateKeyPairSync } from 'node:crypto';
import type { Express, RequestHandler } from 'express';
import jwt from 'jsonwebtoken';
import request from 'supertest';
import {
  auth,
  ConfigError,
  createStack,
  errorNormalizer,
  requestId,
  requireApiKey,
  requireAuth,
  requireRole,
  type AuthOptions,
} from '../index';
import { resetWarnings } from '../lib/warnings';
import { newApp, recordingLogger } from './helpers/app';

const SECRET = 'test-secret-that-is-long-enough-0123456789';
const NOW = Date.UTC(2030, 0, 1, 12, 0, 0);
const nowS = Math.floor(NOW / 1000);

function sign(claims: Record<string, unknown> = {}, secret: string | Buffer = SECRET, options: jwt.SignOptions = {}): string {
  return jwt.sign({ sub: 'u1', iat: nowS, exp: nowS + 3600, ...claims }, secret, { algorithm: 'HS256', ...options });
}

const b64url = (value: unknown): string => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** A token signed by hand, so tests can forge what jsonwebtoken would refuse to sign. */
function forge(header: Record<string, unknown>, payload: Record<string, unknown>, hmacKey?: string | Buffer): string {
  const input = `${b64url(header)}.${b64url(payload)}`;
  return `${input}.${hmacKey === undefined ? '' : createHmac('sha256', hmacKey).update(input).digest('base64url')}`;
}

interface Built {
  app: Express;
  lines: Array<Record<string, any>>;
  clock: { now: number };
}

/** An app with requestId → auth → [guard] → GET /me echoing what auth set, and the error envelope. */
function appWith(options: AuthOptions, guard?: RequestHandler): Built {
  const { logger, lines } = recordingLogger();
  const clock = { now: NOW };
  const app = newApp();
  app.use(requestId());
  app.use(auth({ logger, clock: () => clock.now, ...options }));
  const me: RequestHandler = (req, res) => {
    res.json({ user: req.user ?? null, apiKey: req.apiKey ?? null, auth: req.auth ?? null, contextUser: req.context.user?.id ?? null });
  };
  if (guard) app.get('/me', guard, me);
  else app.get('/me', me);
  app.use(errorNormalizer());
  return { app, lines, clock };
}

const jwtOnly: AuthOptions = { jwt: { secret: SECRET } };

async function expect401(app: Express, headers: Record<string, string>, code: string): Promise<request.Response> {
  let req = request(app).get('/me');
  for (const [k, v] of Object.entries(headers)) req = req.set(k, v);
  const res = await req.expect(401);
  expect(res.body.error.code).toBe(code);
  expect(res.body.error.request_id).toBe(res.headers['x-request-id']);
  expect(res.headers['www-authenticate']).toMatch(/^Bearer\b/);
  return res;
}

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};
beforeAll(() => process.on('unhandledRejection', onUnhandled));
afterAll(() => process.off('unhandledRejection', onUnhandled));
afterEach(() => expect(unhandled).toEqual([]));

describe('auth: JWT', () => {
  it('sets req.user (id, email, roles, plan, beta, tenant), req.auth and the context from a valid HS256 token', async () => {
    const { app } = appWith(jwtOnly);
    const token = sign({ sub: 'u1', email: 'a@example.com', roles: ['admin', 'user'], plan: 'pro', is_beta: true, tenant: 'acme' });
    const res = await request(app).get('/me').set('Authorization', `Bearer ${token}`).expect(200);
    expect(res.body.user).toEqual({ id: 'u1', email: 'a@example.com', roles: ['admin', 'user'], plan: 'pro', beta: true, tenant: 'acme' });
    expect(res.body.auth).toMatchObject({ method: 'jwt', tier: 'pro' });
    expect(res.body.auth.claims.email).toBe('a@example.com');
    expect(res.body.apiKey).toBeNull();
    expect(res.body.contextUser).toBe('u1');
  });

  it('takes the tier from a tier claim when there is no plan, makes a numeric sub a string, and beta false without is_beta', async () => {
    const { app } = appWith(jwtOnly);
    const res = await request(app)
      .get('/me')
      .set('Authorization', `Bearer ${sign({ sub: 42, tier: 'enterprise' })}`)
      .expect(200);
    expect(res.body.user).toEqual({ id: '42', beta: false });
    expect(res.body.auth.tier).toBe('enterprise');
  });

  it('answers 401 AUTHENTICATION_REQUIRED with a bare WWW-Authenticate: Bearer when nothing is sent', async () => {
    const { app } = appWith({ ...jwtOnly, apiKeys: [{ key: 'sk-1', name: 'one' }] });
    const res = await expect401(app, {}, 'AUTHENTICATION_REQUIRED');
    expect(res.headers['www-authenticate']).toBe('Bearer');
    expect(res.body.error.message).toBe('Authentication is required: send a Bearer token or an X-API-Key header.');
  });

  it('refuses an alg:none token (401 INVALID_TOKEN, error="invalid_token")', async () => {
    const { app } = appWith(jwtOnly);
    const token = forge({ alg: 'none', typ: 'JWT' }, { sub: 'admin', exp: nowS + 3600 });
    const res = await expect401(app, { Authorization: `Bearer ${token}` }, 'INVALID_TOKEN');
    expect(res.headers['www-authenticate']).toMatch(/^Bearer error="invalid_token", error_description="[^"]+"$/);
  });

  it.each([
    ['signed with another secret', () => sign({}, 'another-secret-that-is-also-long-enough!!')],
    [
      'with a tampered payload',
      () => {
        const [h, , s] = sign({ roles: ['user'] }).split('.');
        return `${h}.${b64url({ sub: 'u1', roles: ['admin'], exp: nowS + 3600 })}.${s}`;
      },
    ],
    ['malformed', () => 'not.a.jwt'],
    ['with two parts', () => 'abc.def'],
    ['with an unaccepted algorithm (HS512)', () => sign({}, SECRET, { algorithm: 'HS512' })],
    ['without a sub', () => jwt.sign({ email: 'x@example.com', exp: nowS + 60 }, SECRET)],
  ])('refuses a token %s with 401 INVALID_TOKEN', async (_name, make) => {
    const { app } = appWith(jwtOnly);
    await expect401(app, { Authorization: `Bearer ${make()}` }, 'INVALID_TOKEN');
  });

  it('refuses an empty Bearer credential as INVALID_TOKEN and ignores other schemes', async () => {
    const { app } = appWith(jwtOnly);
    await expect401(app, { Authorization: 'Bearer' }, 'INVALID_TOKEN');
    await expect401(app, { Authorization: 'Basic dXNlcjpwYXNz' }, 'AUTHENTICATION_REQUIRED');
  });

  it('checks issuer and audience', async () => {
    const { app } = appWith({ jwt: { secret: SECRET, issuer: 'https://id.example.com', audience: 'api' } });
    const good = sign({ iss: 'https://id.example.com', aud: 'api' });
    await request(app).get('/me').set('Authorization', `Bearer ${good}`).expect(200);
    await expect401(app, { Authorization: `Bearer ${sign({ iss: 'https://evil.example.com', aud: 'api' })}` }, 'INVALID_TOKEN');
    await expect401(app, { Authorization: `Bearer ${sign({ iss: 'https://id.example.com', aud: 'other' })}` }, 'INVALID_TOKEN');
    await expect401(app, { Authorization: `Bearer ${sign({ aud: 'api' })}` }, 'INVALID_TOKEN');
  });

  it('answers 401 TOKEN_EXPIRED for an expired token, with error="invalid_token"', async () => {
    const { app } = appWith(jwtOnly);
    const res = await expect401(app, { Authorization: `Bearer ${sign({ iat: nowS - 7200, exp: nowS - 3600 })}` }, 'TOKEN_EXPIRED');
    expect(res.headers['www-authenticate']).toContain('error="invalid_token"');
    expect(res.body.error.message).toBe('The token has expired.');
  });

  it('refuses a token whose nbf is in the future (401 INVALID_TOKEN)', async () => {
    const { app } = appWith(jwtOnly);
    await expect401(app, { Authorization: `Bearer ${sign({ nbf: nowS + 60 })}` }, 'INVALID_TOKEN');
  });

  it('honours clockTolerance (default 5s) for exp and nbf', async () => {
    const justExpired = sign({ exp: nowS - 3 });
    const almostValid = sign({ nbf: nowS + 3 });
    const lenient = appWith(jwtOnly).app;
    await request(lenient).get('/me').set('Authorization', `Bearer ${justExpired}`).expect(200);
    await request(lenient).get('/me').set('Authorization', `Bearer ${almostValid}`).expect(200);
    const strict = appWith({ jwt: { secret: SECRET, clockTolerance: 0 } }).app;
    await expect401(strict, { Authorization: `Bearer ${justExpired}` }, 'TOKEN_EXPIRED');
    await expect401(strict, { Authorization: `Bearer ${almostValid}` }, 'INVALID_TOKEN');
    const wide = appWith({ jwt: { secret: SECRET, clockTolerance: '1m' } }).app;
    await request(wide)
      .get('/me')
      .set('Authorization', `Bearer ${sign({ exp: nowS - 30 })}`)
      .expect(200);
  });

  it('refuses a remembered token once it expires (the verify cache honours exp)', async () => {
    const { app, clock } = appWith(jwtOnly);
    const token = sign({ exp: nowS + 10 });
    await request(app).get('/me').set('Authorization', `Bearer ${token}`).expect(200);
    clock.now = NOW + 16_000; // past exp + 5 s tolerance
    await expect401(app, { Authorization: `Bearer ${token}` }, 'TOKEN_EXPIRED');
  });

  it('refuses tokens without exp when requireExp is set', async () => {
    const { app } = appWith({ jwt: { secret: SECRET, requireExp: true } });
    await expect401(app, { Authorization: `Bearer ${jwt.sign({ sub: 'u1' }, SECRET)}` }, 'INVALID_TOKEN');
    await request(app).get('/me').set('Authorization', `Bearer ${sign()}`).expect(200);
  });

  it('reads the token from the configured cookie; an Authorization header wins over it', async () => {
    const { app } = appWith({ ...jwtOnly, cookie: 'session_token' });
    const res = await request(app)
      .get('/me')
      .set('Cookie', `theme=dark; session_token=${sign({ sub: 'cookie-user' })}; other=1`)
      .expect(200);
    expect(res.body.user.id).toBe('cookie-user');
    const both = await request(app)
      .get('/me')
      .set('Cookie', `session_token=${sign({ sub: 'cookie-user' })}`)
      .set('Authorization', `Bearer ${sign({ sub: 'header-user' })}`)
      .expect(200);
    expect(both.body.user.id).toBe('header-user');
    await expect401(app, { Cookie: 'session_token=garbage' }, 'INVALID_TOKEN');
    await expect401(app, { Cookie: 'session_tokenx=abc' }, 'AUTHENTICATION_REQUIRED');
  });

  it('reads JWT_SECRET from the environment when jwt is not configured', async () => {
    const saved = process.env.JWT_SECRET;
    process.env.JWT_SECRET = SECRET;
    try {
      const { app } = appWith({});
      await request(app).get('/me').set('Authorization', `Bearer ${sign()}`).expect(200);
    } finally {
      if (saved === undefined) delete process.env.JWT_SECRET;
      else process.env.JWT_SECRET = saved;
    }
  });
});

describe('auth: asymmetric keys', () => {
  const rsa = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const rsa2 = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const ec = generateKeyPairSync('ec', {
    namedCurve: 'P-256',
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const rs = (claims: Record<string, unknown> = {}, key = rsa.privateKey, kid?: string): string =>
    jwt.sign({ sub: 'u1', exp: nowS + 3600, ...claims }, key, { algorithm: 'RS256', ...(kid ? { keyid: kid } : {}) });

  it('verifies RS256 with a public key (RS256 is the default for an RSA key)', async () => {
    const { app } = appWith({ jwt: { publicKey: rsa.publicKey } });
    const res = await request(app)
      .get('/me')
      .set('Authorization', `Bearer ${rs({ email: 'r@example.com' })}`)
      .expect(200);
    expect(res.body.user).toMatchObject({ id: 'u1', email: 'r@example.com' });
    await expect401(app, { Authorization: `Bearer ${rs({}, rsa2.privateKey)}` }, 'INVALID_TOKEN');
  });

  it('refuses an HS256 token signed with the public key as HMAC secret (HS/RS confusion)', async () => {
    const { app } = appWith({ jwt: { publicKey: rsa.publicKey } });
    const forged = forge({ alg: 'HS256', typ: 'JWT' }, { sub: 'admin', exp: nowS + 3600 }, rsa.publicKey);
    await expect401(app, { Authorization: `Bearer ${forged}` }, 'INVALID_TOKEN');
    const forgedNone = forge({ alg: 'none', typ: 'JWT' }, { sub: 'admin', exp: nowS + 3600 });
    await expect401(app, { Authorization: `Bearer ${forgedNone}` }, 'INVALID_TOKEN');
  });

  it('verifies ES256 with an EC P-256 key', async () => {
    const { app } = appWith({ jwt: { publicKey: ec.publicKey } });
    const token = jwt.sign({ sub: 'ec-user', exp: nowS + 60 }, ec.privateKey, { algorithm: 'ES256' });
    const res = await request(app).get('/me').set('Authorization', `Bearer ${token}`).expect(200);
    expect(res.body.user.id).toBe('ec-user');
  });

  it('rotates keys through getKey(header) by kid; unknown kid → 401, a throwing hook → 503 (#14), refused algorithms never reach the hook', async () => {
    const keys: Record<string, string> = { k1: rsa.publicKey, k2: rsa2.publicKey };
    const getKey = jest.fn(async (header: jwt.JwtHeader) => (header.kid ? keys[header.kid] : undefined) ?? null);
    const { app } = appWith({ jwt: { getKey, algorithms: ['RS256'] } });
    await request(app)
      .get('/me')
      .set('Authorization', `Bearer ${rs({}, rsa.privateKey, 'k1')}`)
      .expect(200);
    await request(app)
      .get('/me')
      .set('Authorization', `Bearer ${rs({ sub: 'u2' }, rsa2.privateKey, 'k2')}`)
      .expect(200);
    await expect401(app, { Authorization: `Bearer ${rs({}, rsa.privateKey, 'k2')}` }, 'INVALID_TOKEN');
    await expect401(app, { Authorization: `Bearer ${rs({}, rsa.privateKey, 'k9')}` }, 'INVALID_TOKEN');
    const calls = getKey.mock.calls.length;
    await expect401(app, { Authorization: `Bearer ${forge({ alg: 'HS256', kid: 'k1' }, { sub: 'x' }, rsa.publicKey)}` }, 'INVALID_TOKEN');
    expect(getKey.mock.calls.length).toBe(calls);

    const broken = appWith({
      jwt: {
        getKey: async () => {
          throw new Error('JWKS endpoint down');
        },
        algorithms: ['RS256'],
      },
    }).app;
    const res = await request(broken)
      .get('/me')
      .set('Authorization', `Bearer ${rs({}, rsa.privateKey, 'k1')}`)
      .expect(503);
    expect(res.body.error.code).toBe('SERVICE_UNAVAILABLE');
    expect(res.body.error.message).not.toContain('JWKS endpoint down');
  });
});

describe('auth: API keys', () => {
  const hashed = createHash('sha256').update('sk-hashed-key').digest('hex');
  const apiKeys: AuthOptions['apiKeys'] = [
    { key: 'sk-plain-key', name: 'Plain', tier: 'pro', userId: 'owner-1' },
    { hash: hashed, name: 'Hashed', tier: 'enterprise' },
    { key: 'sk-expired', name: 'Old', expiresAt: '2029-12-31T00:00:00Z' },
    { key: 'sk-expiring', name: 'Soon', expiresAt: NOW + 60_000 },
    { key: 'sk-inactive', name: 'Revoked', active: false },
  ];

  it('accepts a plain key and sets req.apiKey (no secret), req.auth and req.user from userId', async () => {
    const { app } = appWith({ apiKeys });
    const res = await request(app).get('/me').set('X-API-Key', 'sk-plain-key').expect(200);
    expect(res.body.apiKey).toEqual({ name: 'Plain', tier: 'pro', userId: 'owner-1' });
    expect(res.body.auth).toEqual({ method: 'apiKey', tier: 'pro' });
    expect(res.body.user).toEqual({ id: 'owner-1' });
    expect(JSON.stringify(res.body)).not.toContain('sk-plain-key');
  });

  it('accepts a key configured by its SHA-256 hash', async () => {
    const { app } = appWith({ apiKeys });
    const res = await request(app).get('/me').set('X-API-Key', 'sk-hashed-key').expect(200);
    expect(res.body.apiKey).toEqual({ name: 'Hashed', tier: 'enterprise' });
    expect(res.body.user).toBeNull();
  });

  it.each([
    ['unknown', 'sk-nope', 'The API key is not valid.'],
    ['inactive', 'sk-inactive', 'The API key is not valid.'],
    ['expired', 'sk-expired', 'The API key has expired.'],
  ])('refuses an %s key with 401 INVALID_API_KEY', async (_name, key, message) => {
    const { app } = appWith({ apiKeys });
    const res = await expect401(app, { 'X-API-Key': key }, 'INVALID_API_KEY');
    expect(res.body.error.message).toBe(message);
  });

  it('refuses a key once its expiresAt passes', async () => {
    const { app, clock } = appWith({ apiKeys });
    await request(app).get('/me').set('X-API-Key', 'sk-expiring').expect(200);
    clock.now = NOW + 60_000;
    await expect401(app, { 'X-API-Key': 'sk-expiring' }, 'INVALID_API_KEY');
  });

  it('reads the key from a configured header', async () => {
    const { app } = appWith({ apiKeys, apiKeyHeader: 'X-Service-Key' });
    await request(app).get('/me').set('X-Service-Key', 'sk-plain-key').expect(200);
    await expect401(app, { 'X-API-Key': 'sk-plain-key' }, 'AUTHENTICATION_REQUIRED');
  });

  it('lets a JWT win over an API key, and refuses a bad JWT even next to a good key', async () => {
    const { app } = appWith({ ...jwtOnly, apiKeys });
    const res = await request(app)
      .get('/me')
      .set('X-API-Key', 'sk-plain-key')
      .set('Authorization', `Bearer ${sign({ sub: 'jwt-user' })}`)
      .expect(200);
    expect(res.body.auth.method).toBe('jwt');
    expect(res.body.user.id).toBe('jwt-user');
    expect(res.body.apiKey).toBeNull();
    await expect401(
      app,
      { 'X-API-Key': 'sk-plain-key', Authorization: `Bearer ${sign({}, 'wrong-secret-wrong-secret-wrong-secret!')}` },
      'INVALID_TOKEN',
    );
  });

  it('calls lookup once for repeated and concurrent requests, caches unknown keys briefly, and expires the cache', async () => {
    const lookup = jest.fn(async (key: string, hash: string) => {
      expect(hash).toBe(createHash('sha256').update(key).digest('hex'));
      return key === 'sk-db' ? { name: 'From DB', tier: 'free', userId: 'db-user' } : null;
    });
    const { app, clock } = appWith({ lookup, lookupCacheTtl: '60s', negativeCacheTtl: '5s' });
    const [a, b] = await Promise.all([
      request(app).get('/me').set('X-API-Key', 'sk-db'),
      request(app).get('/me').set('X-API-Key', 'sk-db'),
    ]);
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(a.body.apiKey).toEqual({ name: 'From DB', tier: 'free', userId: 'db-user' });
    await request(app).get('/me').set('X-API-Key', 'sk-db').expect(200);
    expect(lookup).toHaveBeenCalledTimes(1);

    await expect401(app, { 'X-API-Key': 'sk-unknown' }, 'INVALID_API_KEY');
    await expect401(app, { 'X-API-Key': 'sk-unknown' }, 'INVALID_API_KEY');
    expect(lookup).toHaveBeenCalledTimes(2);
    clock.now = NOW + 6_000;
    await expect401(app, { 'X-API-Key': 'sk-unknown' }, 'INVALID_API_KEY');
    expect(lookup).toHaveBeenCalledTimes(3);

    clock.now = NOW + 61_000;
    await request(app).get('/me').set('X-API-Key', 'sk-db').expect(200);
    expect(lookup).toHaveBeenCalledTimes(4);
  });

  it('applies active and expiresAt from lookup results, and prefers the config table', async () => {
    const lookup = jest.fn(async (key: string) =>
      key === 'sk-off' ? { name: 'Off', active: false } : key === 'sk-old' ? { name: 'Old', expiresAt: new Date(NOW - 1) } : null,
    );
    const { app } = appWith({ apiKeys, lookup });
    await expect401(app, { 'X-API-Key': 'sk-off' }, 'INVALID_API_KEY');
    await expect401(app, { 'X-API-Key': 'sk-old' }, 'INVALID_API_KEY');
    await request(app).get('/me').set('X-API-Key', 'sk-plain-key').expect(200);
    expect(lookup).toHaveBeenCalledTimes(2);
  });

  it('turns a throwing lookup into 500 INTERNAL_ERROR (never an unhandled rejection) and does not cache the failure', async () => {
    let calls = 0;
    const lookup = async (): Promise<null> => {
      calls++;
      throw new Error('database unreachable');
    };
    const { app } = appWith({ lookup });
    const res = await request(app).get('/me').set('X-API-Key', 'sk-any').expect(500);
    expect(res.body.error.code).toBe('INTERNAL_ERROR');
    await request(app).get('/me').set('X-API-Key', 'sk-any').expect(500);
    expect(calls).toBe(2);
    const sync = appWith({
      lookup: () => {
        throw new Error('sync throw');
      },
    }).app;
    await request(sync).get('/me').set('X-API-Key', 'sk-any').expect(500);
  });
});

describe('auth: required: false', () => {
  it('lets a request without credentials through anonymously but still refuses bad ones', async () => {
    const { app } = appWith({ ...jwtOnly, apiKeys: [{ key: 'sk-1' }], required: false });
    const res = await request(app).get('/me').expect(200);
    expect(res.body).toEqual({ user: null, apiKey: null, auth: null, contextUser: null });
    await expect401(app, { Authorization: `Bearer ${sign({ exp: nowS - 3600 })}` }, 'TOKEN_EXPIRED');
    await expect401(app, { Authorization: 'Bearer junk' }, 'INVALID_TOKEN');
    await expect401(app, { 'X-API-Key': 'sk-wrong' }, 'INVALID_API_KEY');
  });
});

describe('auth: loadUser', () => {
  it('loads the user once per subject within userCacheTtl and merges it over the claims', async () => {
    const loadUser = jest.fn(async (claims: jwt.JwtPayload) => ({ roles: ['admin'], plan: 'enterprise', name: `User ${claims.sub}` }));
    const { app, clock } = appWith({ ...jwtOnly, loadUser, userCacheTtl: '60s' });
    const first = await request(app)
      .get('/me')
      .set('Authorization', `Bearer ${sign({ email: 'u1@example.com', roles: ['user'], plan: 'free' })}`)
      .expect(200);
    expect(first.body.user).toEqual({
      id: 'u1',
      email: 'u1@example.com',
      roles: ['admin'],
      plan: 'enterprise',
      beta: false,
      name: 'User u1',
    });
    expect(first.body.auth.tier).toBe('enterprise');
    await request(app)
      .get('/me')
      .set('Authorization', `Bearer ${sign({ iat: nowS + 1 })}`)
      .expect(200);
    expect(loadUser).toHaveBeenCalledTimes(1);
    await request(app)
      .get('/me')
      .set('Authorization', `Bearer ${sign({ sub: 'u2' })}`)
      .expect(200);
    expect(loadUser).toHaveBeenCalledTimes(2);
    clock.now = NOW + 61_000;
    await request(app).get('/me').set('Authorization', `Bearer ${sign()}`).expect(200);
    expect(loadUser).toHaveBeenCalledTimes(3);
  });

  it('refuses the token when loadUser finds no user (401), and answers 500 when it throws', async () => {
    const gone = appWith({ ...jwtOnly, loadUser: async () => null }).app;
    const res = await expect401(gone, { Authorization: `Bearer ${sign()}` }, 'INVALID_TOKEN');
    expect(res.body.error.message).toBe('The user of this token is unknown or disabled.');
    const broken = appWith({
      ...jwtOnly,
      loadUser: async () => {
        throw new Error('users db down');
      },
    }).app;
    const err = await request(broken).get('/me').set('Authorization', `Bearer ${sign()}`).expect(500);
    expect(err.body.error.code).toBe('INTERNAL_ERROR');
  });
});

describe('guards', () => {
  const optional: AuthOptions = { ...jwtOnly, apiKeys: [{ key: 'sk-1', name: 'one', tier: 'pro' }], required: false };

  it('requireAuth: 401 AUTHENTICATION_REQUIRED when anonymous, through with a token or a key', async () => {
    const { app } = appWith(optional, requireAuth());
    await expect401(app, {}, 'AUTHENTICATION_REQUIRED');
    await request(app).get('/me').set('Authorization', `Bearer ${sign()}`).expect(200);
    await request(app).get('/me').set('X-API-Key', 'sk-1').expect(200);
  });

  it('requireRole: 403 FORBIDDEN without any of the roles, 401 when anonymous, through with one', async () => {
    const { app } = appWith(optional, requireRole('admin', 'ops'));
    const res = await request(app)
      .get('/me')
      .set('Authorization', `Bearer ${sign({ roles: ['user'] })}`)
      .expect(403);
    expect(res.body.error.code).toBe('FORBIDDEN');
    expect(res.body.error.request_id).toBe(res.headers['x-request-id']);
    await request(app).get('/me').set('Authorization', `Bearer ${sign()}`).expect(403);
    await request(app).get('/me').set('X-API-Key', 'sk-1').expect(403);
    await expect401(app, {}, 'AUTHENTICATION_REQUIRED');
    await request(app)
      .get('/me')
      .set('Authorization', `Bearer ${sign({ roles: ['ops'] })}`)
      .expect(200);
    await request(app)
      .get('/me')
      .set('Authorization', `Bearer ${sign({ roles: 'admin' })}`)
      .expect(200);
  });

  it('requireApiKey: through with a key, 401 AUTHENTICATION_REQUIRED for anonymous and token requests', async () => {
    const { app } = appWith(optional, requireApiKey());
    const res = await request(app).get('/me').set('X-API-Key', 'sk-1').expect(200);
    expect(res.body.apiKey.name).toBe('one');
    await expect401(app, {}, 'AUTHENTICATION_REQUIRED');
    await expect401(app, { Authorization: `Bearer ${sign()}` }, 'AUTHENTICATION_REQUIRED');
  });

  it('warns ERR_GUARD_WITHOUT_AUTH when a guard runs where auth() never ran', async () => {
    resetWarnings();
    const { logger, lines } = recordingLogger();
    const stack = createStack({ logger });
    const app = newApp();
    app.use(stack);
    app.get('/admin', requireRole('admin'), (_req, res) => {
      res.send('ok');
    });
    app.use(stack.errorHandler);
    await request(app)
      .get('/admin')
      .set('Authorization', `Bearer ${sign({ roles: ['admin'] })}`)
      .expect(401);
    expect(lines.some((l) => l.code === 'ERR_GUARD_WITHOUT_AUTH')).toBe(true);
    await stack.close();
  });

  it('explains setup slips: no roles, a non-string role, app.use(requireAuth) without the call', () => {
    expect(() => requireRole()).toThrow(ConfigError);
    expect(() => requireRole('' as string)).toThrow(/role names/);
    const fakeReq = { method: 'GET', headers: {}, url: '/' } as never;
    expect(() => (requireAuth as (o: unknown) => unknown)(fakeReq)).toThrow(/app.use\(requireAuth\(\)\)/);
    expect(() => (requireRole as (o: unknown) => unknown)(fakeReq)).toThrow(ConfigError);
  });
});

describe('auth: setup', () => {
  const rsaPub = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  }).publicKey;

  it.each<[string, AuthOptions | (() => AuthOptions), RegExp]>([
    ['no credential source', { jwt: false }, /no credential source/],
    ["algorithms ['none']", { jwt: { secret: SECRET, algorithms: ['none'] as never } }, /'none'.*always refused/],
    ['HS256 with a public key', { jwt: { publicKey: rsaPub, algorithms: ['HS256'] } }, /HS\/RS confusion/],
    ['RS256 with a secret', { jwt: { secret: SECRET, algorithms: ['RS256'] } }, /cannot be verified with a secret/],
    ['ES256 with an RSA key', { jwt: { publicKey: rsaPub, algorithms: ['ES256'] } }, /cannot be verified with an RSA key/],
    ['secret and publicKey together', { jwt: { secret: SECRET, publicKey: rsaPub } }, /one key source/],
    ['getKey without algorithms', { jwt: { getKey: async () => null } }, /required with getKey/],
    ['getKey mixing HS and RS', { jwt: { getKey: async () => null, algorithms: ['HS256', 'RS256'] } }, /mixes HMAC and asymmetric/],
    ['a non-PEM public key', { jwt: { publicKey: 'not a key' } }, /not a PEM public key/],
    ['a bad clockTolerance', { jwt: { secret: SECRET, clockTolerance: 'soon' } }, /auth.jwt.clockTolerance/],
    ['key and hash in one entry', { apiKeys: [{ key: 'a', hash: 'b'.repeat(64) }] }, /exactly one of 'key'/],
    ['a hash that is not SHA-256 hex', { apiKeys: [{ hash: 'abc' }] }, /SHA-256 hex digest/],
    ['an unparseable expiresAt', { apiKeys: [{ key: 'a', expiresAt: 'next tuesday' }] }, /auth.apiKeys\[0\].expiresAt/],
    ['a misspelt entry field', { apiKeys: [{ key: 'a', tire: 'pro' } as never] }, /did you mean 'tier'/],
    ['the same key twice', { apiKeys: [{ key: 'a' }, { hash: createHash('sha256').update('a').digest('hex') }] }, /same key appears twice/],
    ['a misspelt option', { ...jwtOnly, requird: false } as never, /did you mean 'required'/],
    ['loadUser without JWTs', { apiKeys: [{ key: 'a' }], jwt: false, loadUser: async () => null }, /JWTs are off/],
    ['a bad cookie name', { ...jwtOnly, cookie: 'a b' }, /auth.cookie/],
  ])('refuses %s with a ConfigError that names the fix', (_name, options, message) => {
    const build = (): unknown => auth(typeof options === 'function' ? options() : options);
    expect(build).toThrow(ConfigError);
    expect(build).toThrow(message);
  });

  it('warns ERR_WEAK_JWT_SECRET once for a secret shorter than 32 bytes', () => {
    resetWarnings();
    const { logger, lines } = recordingLogger();
    auth({ jwt: { secret: 'short-secret' }, logger });
    auth({ jwt: { secret: 'short-secret' }, logger });
    auth({ jwt: { secret: SECRET }, logger });
    expect(lines.filter((l) => l.code === 'ERR_WEAK_JWT_SECRET')).toHaveLength(1);
    expect(JSON.stringify(lines)).not.toContain('short-secret');
  });
});

describe('auth in a stack', () => {
  function stackApp(authOptions: AuthOptions) {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ logger, auth: authOptions, rateLimit: false });
    const app = newApp();
    app.use(stack);
    app.get('/me', (req, res) => {
      req.context.log.info('handler ran');
      res.json({ id: req.user?.id ?? null });
    });
    app.use(stack.errorHandler);
    return { app, lines, stack };
  }

  it('puts user_id on the request log line and on the handler lines', async () => {
    const { app, lines, stack } = stackApp(jwtOnly);
    expect(stack.order).toContain('auth');
    const res = await request(app)
      .get('/me')
      .set('Authorization', `Bearer ${jwt.sign({ sub: 'logged-user' }, SECRET, { expiresIn: '1h' })}`)
      .expect(200);
    const id = res.headers['x-request-id'];
    const done = lines.find((l) => l.message === 'Request completed' && l.request_id === id);
    expect(done?.user_id).toBe('logged-user');
    expect(lines.find((l) => l.message === 'handler ran')).toMatchObject({ request_id: id, user_id: 'logged-user' });
    await stack.close();
  });

  it('counts failures in auth_failures_total{reason} and logs them at warn with the request id', async () => {
    const { app, lines, stack } = stackApp({ ...jwtOnly, apiKeys: [{ key: 'sk-stack-key', name: 'k' }] });
    const expired = jwt.sign({ sub: 'u1', exp: Math.floor(Date.now() / 1000) - 3600 }, SECRET);
    const res = await request(app).get('/me').set('Authorization', `Bearer ${expired}`).expect(401);
    await request(app).get('/me').set('X-API-Key', 'sk-wrong').expect(401);
    await request(app).get('/me').set('X-API-Key', 'sk-wrong-again').expect(401);
    await request(app).get('/me').expect(401);
    const metric = await stack.metricsRegistry.getSingleMetric('auth_failures_total')!.get();
    const byReason = Object.fromEntries(metric.values.map((v) => [v.labels.reason, v.value]));
    expect(byReason).toEqual({ expired: 1, unknown_api_key: 2, missing: 1 });
    const warn = lines.find((l) => l.message === 'Authentication failed' && l.reason === 'expired');
    expect(warn).toMatchObject({ level: 'warn', code: 'TOKEN_EXPIRED', request_id: res.headers['x-request-id'] });
    await stack.close();
  });

  it('never writes a token or an API key into any log line', async () => {
    const { app, lines, stack } = stackApp({
      ...jwtOnly,
      apiKeys: [
        { key: 'sk-live-SECRETKEY-1', name: 'live' },
        { key: 'sk-off-SECRETKEY-2', active: false },
      ],
    });
    const good = jwt.sign({ sub: 'u1' }, SECRET, { expiresIn: '1h' });
    const badSig = jwt.sign({ sub: 'u1' }, 'x'.repeat(40), { expiresIn: '1h' });
    const expired = jwt.sign({ sub: 'u1', exp: Math.floor(Date.now() / 1000) - 60 }, SECRET);
    await request(app).get('/me').set('Authorization', `Bearer ${good}`).expect(200);
    await request(app).get('/me').set('Authorization', `Bearer ${badSig}`).expect(401);
    await request(app).get('/me').set('Authorization', `Bearer ${expired}`).expect(401);
    await request(app)
      .get('/me?token=' + good)
      .set('Authorization', `Bearer ${good}`)
      .expect(200);
    await request(app).get('/me').set('X-API-Key', 'sk-live-SECRETKEY-1').expect(200);
    await request(app).get('/me').set('X-API-Key', 'sk-off-SECRETKEY-2').expect(401);
    await request(app).get('/me').set('X-API-Key', 'sk-unknown-SECRETKEY-3').expect(401);
    // A payload that is not JSON: the parser's own message would quote it.
    const garbled = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url('SECRETKEY-4 is not json')}.c2ln`;
    await request(app).get('/me').set('Authorization', `Bearer ${garbled}`).expect(401);
    expect(lines.filter((l) => l.message === 'Authentication failed')).toHaveLength(5);
    const all = JSON.stringify(lines);
    for (const secret of [good, badSig, expired, SECRET, 'SECRETKEY']) {
      expect(all).not.toContain(secret);
      // The signature alone would be enough to replay a token.
      if (secret.includes('.')) expect(all).not.toContain(secret.split('.')[2]);
    }
    await stack.close();
  });
});
