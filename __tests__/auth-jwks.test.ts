import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Express, RequestHandler } from 'express';
import { createRemoteJWKSet, exportJWK, generateKeyPair, SignJWT, type JWK } from 'jose';
import request from 'supertest';
import { auth, ConfigError, errorNormalizer, requestId, type AuthOptions } from '../index';
import { closeStacks, eventually, newApp, recordingLogger, stackApp } from './helpers/app';

const NOW = Date.UTC(2030, 0, 1, 12, 0, 0);
const nowS = Math.floor(NOW / 1000);

type Alg = 'RS256' | 'PS256' | 'ES256' | 'EdDSA';

interface SigningKey {
  alg: Alg;
  kid: string;
  privateKey: KeyObject;
  /** The public JWK as an identity provider publishes it (kid, alg, use). */
  jwk: JWK;
}

async function signingKey(alg: Alg, kid = `${alg.toLowerCase()}-${randomUUID().slice(0, 8)}`): Promise<SigningKey> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { alg, kid, privateKey: privateKey as KeyObject, jwk };
}

/** A token as the identity provider would issue it (its kid in the header), valid for an hour from NOW. */
function token(key: SigningKey, claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}): Promise<string> {
  return new SignJWT({ sub: 'u1', ...claims })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, ...header })
    .setIssuedAt(nowS)
    .setExpirationTime(nowS + 3600)
    .sign(key.privateKey);
}

type IdpMode = 'ok' | 'error' | 'not-json' | 'hang';

/** A local identity provider: a JWKS (and a discovery document) on 127.0.0.1, counting requests. */
interface Idp {
  url: string;
  jwksUri: string;
  keys: object[];
  mode: IdpMode;
  /** The discovery document's issuer; defaults to `url`. */
  issuer?: string;
  hits: { jwks: number; discovery: number };
  close(): Promise<void>;
}

const idps: Idp[] = [];
afterEach(async () => {
  await Promise.all(idps.splice(0).map((idp) => idp.close()));
  await closeStacks();
});

async function startIdp(keys: object[] = []): Promise<Idp> {
  const server = http.createServer((req, res) => {
    const path = req.url ?? '';
    if (path === '/jwks.json') idp.hits.jwks++;
    else if (path === '/.well-known/openid-configuration') idp.hits.discovery++;
    else return void res.writeHead(404).end();
    if (idp.mode === 'hang') return;
    if (idp.mode === 'error') return void res.writeHead(500).end('{"error":"down"}');
    if (idp.mode === 'not-json') return void res.writeHead(200, { 'content-type': 'text/html' }).end('<html>maintenance</html>');
    const body = path === '/jwks.json' ? { keys: idp.keys } : { issuer: idp.issuer ?? idp.url, jwks_uri: idp.jwksUri };
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const idp: Idp = {
    url,
    jwksUri: `${url}/jwks.json`,
    keys,
    mode: 'ok',
    hits: { jwks: 0, discovery: 0 },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  idps.push(idp);
  return idp;
}

/** A port nothing listens on (connections are refused). */
async function closedPortUrl(): Promise<string> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}/jwks.json`;
}

interface Built {
  app: Express;
  lines: Array<Record<string, any>>;
  clock: { now: number };
}

/** requestId → auth → GET /me echoing req.user → the error envelope, with a recorded logger and a settable clock. */
function appWith(options: AuthOptions): Built {
  const { logger, lines } = recordingLogger();
  const clock = { now: NOW };
  const app = newApp();
  app.use(requestId());
  app.use(auth({ logger, clock: () => clock.now, ...options }));
  const me: RequestHandler = (req, res) => {
    res.json({ user: req.user ?? null });
  };
  app.get('/me', me);
  app.use(errorNormalizer());
  return { app, lines, clock };
}

function get(app: Express | http.Server, bearer: string): request.Test {
  return request(app).get('/me').set('Authorization', `Bearer ${bearer}`);
}

async function expectInvalidToken(app: Express | http.Server, bearer: string, code = 'INVALID_TOKEN'): Promise<void> {
  const res = await get(app, bearer).expect(401);
  expect(res.body.error.code).toBe(code);
  expect(res.headers['www-authenticate']).toMatch(/^Bearer error="invalid_token"/);
}

const coded = (lines: Array<Record<string, any>>, code: string) => lines.filter((l) => l.code === code);

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};
beforeAll(() => process.on('unhandledRejection', onUnhandled));
afterAll(() => process.off('unhandledRejection', onUnhandled));
afterEach(() => expect(unhandled).toEqual([]));

describe('auth: JWKS key sets (#14)', () => {
  it.each<Alg>(['RS256', 'ES256', 'PS256', 'EdDSA'])('verifies %s tokens with keys from the JWKS, fetched once', async (alg) => {
    const key = await signingKey(alg);
    const idp = await startIdp([key.jwk]);
    const { app } = appWith({ jwt: { jwksUri: idp.jwksUri } });
    const res = await get(app, await token(key, { email: `${alg}@example.com` })).expect(200);
    expect(res.body.user).toMatchObject({ id: 'u1', email: `${alg}@example.com` });
    await get(app, await token(key, { sub: 'u2' })).expect(200);
    expect(idp.hits.jwks).toBe(1);
  });

  it('infers the algorithm of a key without alg from its type: RSA → RS256 (PS256 only when listed), P-256 → ES256, Ed25519 → EdDSA', async () => {
    const keys = await Promise.all([signingKey('RS256'), signingKey('ES256'), signingKey('EdDSA')]);
    const idp = await startIdp(keys.map(({ jwk: { alg: _alg, ...bare } }) => bare));
    const { app } = appWith({ jwt: { jwksUri: idp.jwksUri } });
    for (const key of keys) await get(app, await token(key)).expect(200);
    const [rsa] = keys;
    // The same RSA key signing PS256: not inferred, so refused unless algorithms lists it.
    await expectInvalidToken(app, await token({ ...rsa, alg: 'PS256' }));
    const listed = appWith({ jwt: { jwksUri: idp.jwksUri, algorithms: ['RS256', 'PS256'] } }).app;
    await get(listed, await token({ ...rsa, alg: 'PS256' })).expect(200);
    await get(listed, await token(rsa)).expect(200);
  });

  it('verifies a token with the key its kid names after the provider rotates keys, with one fetch (rotation)', async () => {
    const oldKey = await signingKey('RS256', '2029');
    const newKey = await signingKey('RS256', '2030');
    const idp = await startIdp([oldKey.jwk]);
    const { app, clock } = appWith({ jwt: { jwksUri: idp.jwksUri, jwksCooldown: '30s' } });
    await get(app, await token(oldKey)).expect(200);
    expect(idp.hits.jwks).toBe(1);

    idp.keys = [newKey.jwk];
    clock.now += 30_000;
    await get(app, await token(newKey)).expect(200);
    expect(idp.hits.jwks).toBe(2);
    await get(app, await token(newKey, { sub: 'u2' })).expect(200);
    // The withdrawn key no longer verifies, and asking about it again fetches nothing.
    await expectInvalidToken(app, await token(oldKey, { sub: 'u3' }));
    expect(idp.hits.jwks).toBe(2);
  });

  it('refuses a token whose kid is in no key set with 401 INVALID_TOKEN, refetching at most once per cooldown', async () => {
    const known = await signingKey('ES256', 'known');
    const stranger = await signingKey('ES256', 'not-published');
    const idp = await startIdp([known.jwk]);
    const { app, clock } = appWith({ jwt: { jwksUri: idp.jwksUri, jwksCooldown: '30s' } });
    await expectInvalidToken(app, await token(stranger));
    expect(idp.hits.jwks).toBe(1); // the first fetch; the kid is not in it
    await expectInvalidToken(app, await token(stranger, { sub: 'u2' }));
    clock.now += 29_000;
    await expectInvalidToken(app, await token(stranger, { sub: 'u3' }));
    expect(idp.hits.jwks).toBe(1);
    clock.now += 1_000;
    await expectInvalidToken(app, await token(stranger, { sub: 'u4' }));
    expect(idp.hits.jwks).toBe(2);
    await get(app, await token(known)).expect(200);
    expect(idp.hits.jwks).toBe(2);
  });

  it('still refetches for an unknown kid after the clock is set back (a clock jump never freezes the key set)', async () => {
    const oldKey = await signingKey('ES256', 'before');
    const newKey = await signingKey('ES256', 'after');
    const idp = await startIdp([oldKey.jwk]);
    const { app, clock } = appWith({ jwt: { jwksUri: idp.jwksUri } });
    await get(app, await token(oldKey)).expect(200);
    idp.keys = [newKey.jwk];
    clock.now -= 3600_000;
    await get(app, await token(newKey)).expect(200);
    expect(idp.hits.jwks).toBe(2);
  });

  it('turns a flood of 100 tokens with forged kids into at most one fetch per cooldown', async () => {
    const known = await signingKey('RS256', 'real');
    const attacker = await signingKey('RS256', 'unused');
    const idp = await startIdp([known.jwk]);
    const { app, clock } = appWith({ jwt: { jwksUri: idp.jwksUri } });
    const server = http.createServer(app).listen(0, '127.0.0.1');
    try {
      await get(server, await token(known)).expect(200);
      expect(idp.hits.jwks).toBe(1);
      clock.now += 30_000; // the cooldown has passed: one refetch is allowed
      const flood = async (): Promise<number[]> => {
        const forged = await Promise.all(Array.from({ length: 100 }, () => token(attacker, {}, { kid: randomUUID() })));
        const answers = await Promise.all(forged.map((t) => get(server, t)));
        return answers.map((r) => r.status);
      };
      expect(new Set(await flood())).toEqual(new Set([401]));
      expect(idp.hits.jwks).toBe(2);
      expect(new Set(await flood())).toEqual(new Set([401]));
      expect(idp.hits.jwks).toBe(2);
      await get(server, await token(known, { sub: 'u2' })).expect(200);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('never accepts HS* from a key set: an HS256 token is refused before any fetch, and an oct key in the set is ignored', async () => {
    const rsa = await signingKey('RS256', 'rsa');
    const secret = Buffer.from('a-secret-published-by-mistake-0123456789');
    const idp = await startIdp([rsa.jwk, { kty: 'oct', kid: 'hmac', k: secret.toString('base64url'), alg: 'HS256' }]);
    const { app } = appWith({ jwt: { jwksUri: idp.jwksUri } });
    const hs = await new SignJWT({ sub: 'admin' })
      .setProtectedHeader({ alg: 'HS256', kid: 'hmac' })
      .setExpirationTime(nowS + 60)
      .sign(secret);
    await expectInvalidToken(app, hs);
    expect(idp.hits.jwks).toBe(0);
    await get(app, await token(rsa)).expect(200);
    await expectInvalidToken(app, hs);
  });

  it('verifies a token without kid only when exactly one key of the set fits its algorithm', async () => {
    const only = await signingKey('EdDSA', 'ed');
    const rsa1 = await signingKey('RS256', 'r1');
    const rsa2 = await signingKey('RS256', 'r2');
    const idp = await startIdp([only.jwk, rsa1.jwk, rsa2.jwk]);
    const { app } = appWith({ jwt: { jwksUri: idp.jwksUri } });
    await get(app, await token(only, {}, { kid: undefined })).expect(200);
    await expectInvalidToken(app, await token(rsa1, {}, { kid: undefined }));
  });

  it('applies exp, issuer and audience to key-set tokens as to any other', async () => {
    const key = await signingKey('ES256');
    const idp = await startIdp([key.jwk]);
    const { app, clock } = appWith({ jwt: { jwksUri: idp.jwksUri, issuer: 'https://id.example.com/', audience: 'api' } });
    const good = { iss: 'https://id.example.com/', aud: 'api' };
    await get(app, await token(key, good)).expect(200);
    await expectInvalidToken(app, await token(key, { ...good, iss: 'https://evil.example.com/' }));
    await expectInvalidToken(app, await token(key, { ...good, aud: 'other' }));
    clock.now += 3600_000 + 5_000;
    await expectInvalidToken(app, await token(key, good), 'TOKEN_EXPIRED');
  });
});

describe('auth: discovery (#14)', () => {
  it('reads jwks_uri from <issuer>/.well-known/openid-configuration once, then fetches only the key set', async () => {
    const key = await signingKey('RS256', 'k1');
    const rotated = await signingKey('RS256', 'k2');
    const idp = await startIdp([key.jwk]);
    const { app, clock } = appWith({ jwt: { issuer: idp.url, discovery: true } });
    await get(app, await token(key, { iss: idp.url })).expect(200);
    await get(app, await token(key, { iss: idp.url, sub: 'u2' })).expect(200);
    expect(idp.hits).toEqual({ discovery: 1, jwks: 1 });
    idp.keys = [rotated.jwk];
    clock.now += 30_000;
    await get(app, await token(rotated, { iss: idp.url })).expect(200);
    expect(idp.hits).toEqual({ discovery: 1, jwks: 2 });
  });

  it('builds the discovery URL from an issuer with a trailing slash (as Auth0 writes it)', async () => {
    const key = await signingKey('RS256');
    const idp = await startIdp([key.jwk]);
    idp.issuer = `${idp.url}/`;
    const { app } = appWith({ jwt: { issuer: `${idp.url}/`, discovery: true } });
    await get(app, await token(key, { iss: `${idp.url}/` })).expect(200);
    expect(idp.hits).toEqual({ discovery: 1, jwks: 1 });
  });

  it('refuses a discovery document that names another issuer: 503, logged once with the fix', async () => {
    const key = await signingKey('RS256');
    const idp = await startIdp([key.jwk]);
    idp.issuer = 'https://someone-else.example.com';
    const { app, lines, clock } = appWith({ jwt: { issuer: idp.url, discovery: true } });
    const res = await get(app, await token(key, { iss: idp.url })).expect(503);
    expect(res.body.error).toMatchObject({ code: 'SERVICE_UNAVAILABLE', request_id: res.headers['x-request-id'] });
    clock.now += 5_000;
    await get(app, await token(key, { iss: idp.url, sub: 'u2' })).expect(503);
    const logged = coded(lines, 'ERR_JWKS_UNAVAILABLE');
    expect(logged).toHaveLength(1);
    expect(logged[0].err.message).toContain('https://someone-else.example.com');
    expect(logged[0].err.message).toContain('set auth.jwt.issuer');
    expect(logged[0].discovery_uri).toBe(`${idp.url}/.well-known/openid-configuration`);
    expect(idp.hits.jwks).toBe(0);
  });
});

describe('auth: JWKS endpoint outages (#14)', () => {
  it('keeps verifying with the cached keys while the endpoint is down, and logs the outage and the recovery once each', async () => {
    const key = await signingKey('RS256', 'cached');
    const stranger = await signingKey('RS256', 'stranger');
    const idp = await startIdp([key.jwk]);
    const { app, lines, clock } = appWith({ jwt: { jwksUri: idp.jwksUri, jwksCooldown: '30s', jwksMaxAge: '10m' } });
    await get(app, await token(key)).expect(200);

    idp.mode = 'error';
    clock.now += 11 * 60_000; // the set is stale: the next request refreshes it behind the scenes
    await get(app, await token(key, { sub: 'u2' })).expect(200);
    await eventually(() => expect(coded(lines, 'ERR_JWKS_UNAVAILABLE')).toHaveLength(1));
    expect(coded(lines, 'ERR_JWKS_UNAVAILABLE')[0]).toMatchObject({ level: 'warn', cached_keys: 1, jwks_uri: idp.jwksUri });
    await get(app, await token(key, { sub: 'u3' })).expect(200);
    await expectInvalidToken(app, await token(stranger));
    clock.now += 30_000;
    await expectInvalidToken(app, await token(stranger, { sub: 'u2' }));
    await get(app, await token(key, { sub: 'u4' })).expect(200);
    expect(idp.hits.jwks).toBe(3);
    expect(coded(lines, 'ERR_JWKS_UNAVAILABLE')).toHaveLength(1);

    idp.mode = 'ok';
    clock.now += 30_000;
    await expectInvalidToken(app, await token(stranger, { sub: 'u3' }));
    expect(idp.hits.jwks).toBe(4);
    expect(coded(lines, 'ERR_JWKS_RECOVERED')).toHaveLength(1);
    expect(coded(lines, 'ERR_JWKS_UNAVAILABLE')).toHaveLength(1);
  });

  it('answers 503 SERVICE_UNAVAILABLE with no keys cached, logs the outage once, and verifies again once the endpoint answers', async () => {
    const key = await signingKey('ES256');
    const idp = await startIdp([key.jwk]);
    idp.mode = 'error';
    const { app, lines, clock } = appWith({ jwt: { jwksUri: idp.jwksUri } });
    const res = await get(app, await token(key)).expect(503);
    expect(res.body.error).toMatchObject({ code: 'SERVICE_UNAVAILABLE', request_id: res.headers['x-request-id'] });
    expect(JSON.stringify(res.body)).not.toContain('127.0.0.1');
    await get(app, await token(key, { sub: 'u2' })).expect(503);
    expect(idp.hits.jwks).toBe(1); // a failed first fetch is retried at most once a second
    clock.now += 1_000;
    await get(app, await token(key, { sub: 'u3' })).expect(503);
    expect(idp.hits.jwks).toBe(2);
    const logged = coded(lines, 'ERR_JWKS_UNAVAILABLE');
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ level: 'error', cached_keys: 0, jwks_uri: idp.jwksUri });
    expect(logged[0].err.message).toContain('500');

    idp.mode = 'ok';
    clock.now += 1_000;
    await get(app, await token(key, { sub: 'u4' })).expect(200);
    expect(coded(lines, 'ERR_JWKS_RECOVERED')).toHaveLength(1);
    expect(coded(lines, 'ERR_JWKS_UNAVAILABLE')).toHaveLength(1);
  });

  it.each<[string, (idp: Idp) => Promise<AuthOptions['jwt']>, RegExp]>([
    ['refuses connections', async () => ({ jwksUri: await closedPortUrl() }), /could not be fetched: ECONNREFUSED/],
    ['answers HTML', async (idp) => ((idp.mode = 'not-json'), { jwksUri: idp.jwksUri }), /did not answer JSON/],
    [
      'publishes only a secret',
      async (idp) => ((idp.keys = [{ kty: 'oct', k: 'c2VjcmV0' }]), { jwksUri: idp.jwksUri }),
      /no usable signing key/,
    ],
    [
      'never answers (jwksTimeout)',
      async (idp) => ((idp.mode = 'hang'), { jwksUri: idp.jwksUri, jwksTimeout: '200ms' }),
      /no answer within 200 ms/,
    ],
  ])('answers 503 when the endpoint %s, logged once with the cause', async (_name, setup, cause) => {
    const key = await signingKey('RS256');
    const idp = await startIdp([key.jwk]);
    const { app, lines } = appWith({ jwt: await setup(idp) });
    await get(app, await token(key)).expect(503);
    await get(app, await token(key, { sub: 'u2' })).expect(503);
    const logged = coded(lines, 'ERR_JWKS_UNAVAILABLE');
    expect(logged).toHaveLength(1);
    expect(logged[0].err.message).toMatch(cause);
  });

  it('logs the outage through the stack logger and counts auth_failures_total{reason="keys_unavailable"}', async () => {
    const key = await signingKey('RS256');
    const idp = await startIdp([key.jwk]);
    idp.mode = 'error';
    const { app, lines } = stackApp({ auth: { jwt: { jwksUri: idp.jwksUri } } }, (a) => {
      a.get('/me', (req, res) => {
        res.json({ id: req.user?.id });
      });
    });
    const res = await get(app, await token(key)).expect(503);
    expect(res.body.error.request_id).toBe(res.headers['x-request-id']);
    expect(coded(lines, 'ERR_JWKS_UNAVAILABLE')).toHaveLength(1);
    const metrics = await request(app).get('/metrics').expect(200);
    expect(metrics.text).toMatch(/auth_failures_total\{reason="keys_unavailable"\} 1/);
  });
});

describe('auth: static EdDSA and PS256 keys (#14)', () => {
  const ed = generateKeyPairSync('ed25519', {
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const rsa = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const signPem = async (alg: string, pem: string, claims: Record<string, unknown> = {}): Promise<string> => {
    const { createPrivateKey } = await import('node:crypto');
    return new SignJWT({ sub: 'u1', ...claims })
      .setProtectedHeader({ alg })
      .setExpirationTime(nowS + 60)
      .sign(createPrivateKey(pem));
  };

  it('verifies EdDSA with an Ed25519 PEM public key (EdDSA is its default) and refuses other algorithms', async () => {
    for (const jwt of [{ publicKey: ed.publicKey }, { publicKey: ed.publicKey, algorithms: ['EdDSA' as const] }]) {
      const { app } = appWith({ jwt });
      const res = await get(app, await signPem('EdDSA', ed.privateKey, { email: 'ed@example.com' })).expect(200);
      expect(res.body.user).toMatchObject({ id: 'u1', email: 'ed@example.com' });
      await expectInvalidToken(app, await signPem('RS256', rsa.privateKey));
      const otherEd = generateKeyPairSync('ed25519', {
        privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
        publicKeyEncoding: { type: 'spki', format: 'pem' },
      });
      await expectInvalidToken(app, await signPem('EdDSA', otherEd.privateKey));
    }
  });

  it('verifies PS256 with an RSA public key when algorithms lists it, and only the listed algorithms', async () => {
    const { app } = appWith({ jwt: { publicKey: rsa.publicKey, algorithms: ['PS256'] } });
    await get(app, await signPem('PS256', rsa.privateKey)).expect(200);
    await expectInvalidToken(app, await signPem('RS256', rsa.privateKey));
    const both = appWith({ jwt: { publicKey: rsa.publicKey, algorithms: ['RS256', 'PS256'] } }).app;
    await get(both, await signPem('PS256', rsa.privateKey)).expect(200);
    await get(both, await signPem('RS256', rsa.privateKey)).expect(200);
  });
});

describe('auth: getKey failures (#14)', () => {
  it('answers 401 when getKey finds no key (undefined or null) and 503 when it throws, logging the outage once and its end', async () => {
    const key = await signingKey('ES256', 'k1');
    let state: 'ok' | 'missing' | 'null' | 'throws' = 'ok';
    const getKey = async (header: { kid?: string }) => {
      if (state === 'throws') throw new Error('key store at 10.0.0.7 refused the connection');
      if (state === 'null') return null;
      return state === 'missing' || header.kid !== 'k1' ? undefined : key.jwk;
    };
    const { app, lines } = appWith({ jwt: { getKey, algorithms: ['ES256'], cacheSize: 0 } });
    await get(app, await token(key)).expect(200);
    state = 'missing';
    await expectInvalidToken(app, await token(key));
    state = 'null';
    await expectInvalidToken(app, await token(key));
    state = 'throws';
    for (let i = 0; i < 3; i++) {
      const res = await get(app, await token(key)).expect(503);
      expect(res.body.error.code).toBe('SERVICE_UNAVAILABLE');
      expect(JSON.stringify(res.body)).not.toContain('10.0.0.7');
    }
    const logged = coded(lines, 'ERR_JWT_GET_KEY_FAILED');
    expect(logged).toHaveLength(1);
    expect(logged[0].err.message).toContain('refused the connection');
    state = 'ok';
    await get(app, await token(key)).expect(200);
    expect(coded(lines, 'ERR_JWT_GET_KEY_RECOVERED')).toHaveLength(1);
  });

  it('answers 503, not 500, when getKey returns something that is not a key', async () => {
    const key = await signingKey('RS256');
    const { app, lines } = appWith({ jwt: { getKey: async () => 'not a PEM', algorithms: ['RS256'] } });
    await get(app, await token(key)).expect(503);
    expect(coded(lines, 'ERR_JWT_GET_KEY_FAILED')).toHaveLength(1);
  });

  it("answers 401, not 500, for a rotated-out kid when jose's createRemoteJWKSet is the getKey hook (#14)", async () => {
    const current = await signingKey('RS256', 'current');
    const retired = await signingKey('RS256', 'retired');
    const idp = await startIdp([current.jwk]);
    const { app } = appWith({ jwt: { getKey: createRemoteJWKSet(new URL(idp.jwksUri)), algorithms: ['RS256'] } });
    await get(app, await token(current)).expect(200);
    await expectInvalidToken(app, await token(retired));
  });
});

describe('auth: key-set setup', () => {
  const nodeEnv = process.env.NODE_ENV;
  afterEach(() => {
    process.env.NODE_ENV = nodeEnv;
  });
  const rsaPub = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  }).publicKey;
  const weakRsaPub = generateKeyPairSync('rsa', {
    modulusLength: 1024,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  }).publicKey;
  const edPub = generateKeyPairSync('ed25519', {
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  }).publicKey;
  const SECRET = 'test-secret-that-is-long-enough-0123456789';

  it.each<[string, AuthOptions['jwt'], RegExp]>([
    ['a jwksUri that is not a URL', { jwksUri: 'id.example.com/jwks' }, /auth\.jwt\.jwksUri: expected an absolute URL/],
    ['a jwksUri that is not http(s)', { jwksUri: 'file:///etc/jwks.json' }, /auth\.jwt\.jwksUri: .*https URL/],
    ['discovery without issuer', { discovery: true }, /auth\.jwt\.discovery: needs exactly one 'issuer'/],
    [
      'discovery with several issuers',
      { discovery: true, issuer: ['https://a.example.com', 'https://b.example.com'] },
      /needs exactly one 'issuer'.*got several/,
    ],
    [
      'secret and jwksUri together',
      { secret: SECRET, jwksUri: 'https://id.example.com/jwks.json' },
      /one key source, not secret and jwksUri/,
    ],
    [
      'jwksUri and discovery together',
      { jwksUri: 'https://id.example.com/jwks.json', discovery: true, issuer: 'https://id.example.com' },
      /one key source, not jwksUri and discovery/,
    ],
    [
      'HS256 with a key set',
      { jwksUri: 'https://id.example.com/jwks.json', algorithms: ['RS256', 'HS256'] },
      /HS256 with a key set is refused/,
    ],
    [
      'a jwksCooldown under a second',
      { jwksUri: 'https://id.example.com/jwks.json', jwksCooldown: '10ms' },
      /auth\.jwt\.jwksCooldown: must be at least '1s'/,
    ],
    ['a jwksCooldown without a key set', { secret: SECRET, jwksCooldown: '1m' }, /auth\.jwt\.jwksCooldown: applies to key sets only/],
    ['a bad jwksTimeout', { jwksUri: 'https://id.example.com/jwks.json', jwksTimeout: 'soon' }, /auth\.jwt\.jwksTimeout/],
    ['a misspelt option', { jwksUrl: 'https://id.example.com/jwks.json' } as never, /did you mean 'jwksUri'/],
    ['EdDSA with an RSA key', { publicKey: rsaPub, algorithms: ['EdDSA'] }, /'EdDSA' cannot be verified with an RSA key/],
    ['RS256 with an Ed25519 key', { publicKey: edPub, algorithms: ['RS256'] }, /'RS256' cannot be verified with an Ed25519 key; .*'EdDSA'/],
    ['an RSA key under 2048 bits', { publicKey: weakRsaPub }, /RSA key of 1024 bits \(2048 or more are needed\)/],
  ])('refuses %s with a ConfigError that names the option and the fix', (_name, jwt, message) => {
    const build = (): unknown => auth({ jwt });
    expect(build).toThrow(ConfigError);
    expect(build).toThrow(message);
  });

  it.each<[string, AuthOptions['jwt'], RegExp]>([
    ['a jwksUri over http', { jwksUri: 'http://id.example.com/jwks.json' }, /auth\.jwt\.jwksUri: .*must be https in production/],
    [
      'an http issuer for discovery',
      { issuer: 'http://id.example.com', discovery: true },
      /auth\.jwt\.issuer: .*must be https in production/,
    ],
  ])('refuses %s in production (NODE_ENV=production)', (_name, jwt, message) => {
    process.env.NODE_ENV = 'production';
    const build = (): unknown => auth({ jwt });
    expect(build).toThrow(ConfigError);
    expect(build).toThrow(message);
  });

  it('allows http for localhost and 127.0.0.1 in production, and anywhere outside production', () => {
    process.env.NODE_ENV = 'production';
    expect(() => auth({ jwt: { jwksUri: 'http://localhost:8080/jwks.json' } })).not.toThrow();
    expect(() => auth({ jwt: { jwksUri: 'http://127.0.0.1:8080/jwks.json' } })).not.toThrow();
    process.env.NODE_ENV = 'development';
    expect(() => auth({ jwt: { jwksUri: 'http://keycloak:8080/realms/demo/protocol/openid-connect/certs' } })).not.toThrow();
  });
});
