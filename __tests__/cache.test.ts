import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Express, Request } from 'express';
import request from 'supertest';
import { cache, ConfigError, createStack } from '../index';
import type { CacheOptions } from '../middleware/cache';
import { etagListMatches, strongEtag } from '../lib/etag';
import { eventually, newApp, recordingLogger } from './helpers/app';

/** The etag package's strong form, computed independently of lib/etag. */
function expectedEtag(body: string | Buffer): string {
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  return `"${bytes.length.toString(16)}-${createHash('sha1').update(bytes).digest('base64').slice(0, 27)}"`;
}

/** A supertest parser that keeps the body as bytes. */
function bytes(res: any, cb: (err: Error | null, body: Buffer) => void): void {
  const chunks: Buffer[] = [];
  res.on('data', (c: Buffer) => chunks.push(c));
  res.on('end', () => cb(null, Buffer.concat(chunks)));
}

let namespaces = 0;
/** Standalone caches share the process's memory stores per namespace: each test app gets its own. */
function isolated(options: CacheOptions = {}): CacheOptions {
  return { namespace: `test-${++namespaces}`, ...options };
}

/** An app with `cache(options)` in front of a few routes; `calls` counts handler runs per route. */
function appWith(options: CacheOptions = {}) {
  const app = newApp();
  const calls: Record<string, number> = {};
  const count = (name: string) => (calls[name] = (calls[name] ?? 0) + 1);
  let version = 1;
  const handler = cache(isolated(options));
  app.use(handler);
  app.get('/games', (_req, res) => {
    count('games');
    res.set('X-Total-Count', '2').json({ version, games: ['chess', 'go'] });
  });
  app.get('/games/:id', (req, res) => {
    count(`game${req.params.id}`);
    res.json({ id: req.params.id, version });
  });
  app.post('/games', (_req, res) => {
    version++;
    res.status(201).json({ created: true });
  });
  app.put('/games/:id', (_req, res) => {
    version++;
    res.json({ updated: true });
  });
  app.get('/plain', (_req, res) => {
    count('plain');
    res.setHeader('Content-Type', 'text/plain');
    res.end('plain body');
  });
  app.get('/stream', (_req, res) => {
    res.setHeader('Content-Type', 'text/plain');
    res.write('part 1, ');
    res.end('part 2');
  });
  app.get('/own-etag', (_req, res) => {
    res.set('ETag', '"v42"').send('own');
  });
  app.get('/modified', (_req, res) => {
    res.set('Last-Modified', 'Wed, 01 Jan 2025 00:00:00 GMT').send('dated');
  });
  app.get('/missing', (_req, res) => {
    count('missing');
    res.status(404).json({ missing: true });
  });
  app.get('/boom', () => {
    count('boom');
    throw new Error('boom');
  });
  app.get('/cookie', (_req, res) => {
    count('cookie');
    res.cookie('session', 'abc').send('with cookie');
  });
  app.get('/no-store', (_req, res) => {
    count('no-store');
    res.set('Cache-Control', 'no-store').send('secret');
  });
  app.get('/private', (_req, res) => {
    count('private');
    res.set('Cache-Control', 'private, max-age=10').send('mine');
  });
  app.get('/vary-any', (_req, res) => {
    count('vary-any');
    res.set('Vary', '*').send('anything');
  });
  app.get('/binary', (_req, res) => {
    count('binary');
    res.type('application/octet-stream').send(Buffer.from([0, 255, 10, 13, 0, 128]));
  });
  app.get('/lang', (req, res) => {
    count('lang');
    res.send(req.headers['accept-language'] === 'fr' ? 'bonjour' : 'hello');
  });
  app.get('/whoami', (req, res) => {
    count('whoami');
    res.send(`you are ${req.headers.authorization ?? 'nobody'}`);
  });
  app.get('/big', (_req, res) => {
    count('big');
    res.send('x'.repeat(4096));
  });
  return { app, handler, calls, bump: () => version++ };
}

describe('cache: ETag and conditional requests', () => {
  it('sends a strong ETag of the body on GET 2xx, replacing (not adding to) the weak one Express would send', async () => {
    const { app } = appWith();
    const res = await request(app).get('/games/1').expect(200);
    expect(res.headers.etag).toBe(expectedEtag(res.text));
    expect(res.headers.etag.startsWith('W/')).toBe(false);
  });

  it('hashes bodies sent with res.end, and binary bodies, byte for byte', async () => {
    const { app } = appWith();
    const plain = await request(app).get('/plain').expect(200, 'plain body');
    expect(plain.headers.etag).toBe(expectedEtag('plain body'));
    const binary = await request(app).get('/binary').buffer(true).parse(bytes);
    expect(binary.body).toEqual(Buffer.from([0, 255, 10, 13, 0, 128]));
    expect(binary.headers.etag).toBe(expectedEtag(Buffer.from([0, 255, 10, 13, 0, 128])));
  });

  it('answers If-None-Match with 304 and no body, keeping ETag, Cache-Control and Vary', async () => {
    const { app } = appWith({ maxAge: 60, vary: ['Accept-Language'] });
    const first = await request(app).get('/games/1').expect(200);
    const etag = first.headers.etag;
    const res = await request(app).get('/games/1').set('If-None-Match', etag).expect(304);
    expect(res.text).toBe('');
    expect(res.headers.etag).toBe(etag);
    expect(res.headers['cache-control']).toBe('max-age=60');
    expect(res.headers.vary).toBe('Accept-Language');
    expect(res.headers['content-type']).toBeUndefined();
    expect(res.headers['content-length']).toBeUndefined();
  });

  it.each([
    ['a weak form of the tag', (etag: string) => `W/${etag}`],
    ['a list containing it', (etag: string) => `"nope", ${etag} , "other"`],
    ['a list containing its weak form', (etag: string) => `"nope",W/${etag}`],
    ['*', () => '*'],
  ])('304 for If-None-Match with %s (weak comparison)', async (_name, header) => {
    const { app } = appWith();
    const etag = (await request(app).get('/games/1')).headers.etag;
    await request(app).get('/games/1').set('If-None-Match', header(etag)).expect(304);
  });

  it('answers a non-matching If-None-Match in full, and a forced reload (no-cache) in full', async () => {
    const { app } = appWith();
    const etag = (await request(app).get('/games/1')).headers.etag;
    await request(app).get('/games/1').set('If-None-Match', '"something-else"').expect(200);
    await request(app).get('/games/1').set('If-None-Match', etag).set('Cache-Control', 'no-cache').expect(200);
  });

  it('honours a handler-set ETag (no hashing) and conditional requests against it', async () => {
    const { app } = appWith();
    const res = await request(app).get('/own-etag').expect(200, 'own');
    expect(res.headers.etag).toBe('"v42"');
    await request(app).get('/own-etag').set('If-None-Match', 'W/"v42"').expect(304);
  });

  it('answers If-Modified-Since against Last-Modified, but lets If-None-Match take precedence', async () => {
    const { app } = appWith();
    await request(app).get('/modified').set('If-Modified-Since', 'Thu, 02 Jan 2025 00:00:00 GMT').expect(304);
    await request(app).get('/modified').set('If-Modified-Since', 'Tue, 31 Dec 2024 00:00:00 GMT').expect(200, 'dated');
    await request(app).get('/modified').set('If-Modified-Since', 'Thu, 02 Jan 2025 00:00:00 GMT').set('If-None-Match', '"other"').expect(200);
  });

  it('sets no ETag of its own on POST, on 4xx and on streamed responses', async () => {
    const { app } = appWith();
    app.set('etag', false); // Express's own weak ETag off, so any ETag seen would be ours
    const created = await request(app).post('/games').expect(201);
    expect(created.headers.etag).toBeUndefined();
    const missing = await request(app).get('/missing').expect(404);
    expect(missing.headers.etag).toBeUndefined();
    const streamed = await request(app).get('/stream').expect(200, 'part 1, part 2');
    expect(streamed.headers.etag).toBeUndefined();
  });

  it('leaves Express its own weak ETag where the cache does not hash (POST)', async () => {
    const { app } = appWith();
    const created = await request(app).post('/games').expect(201);
    expect(created.headers.etag).toMatch(/^W\//);
  });

  it('gives HEAD the ETag and length of the GET body, with no body', async () => {
    const { app } = appWith();
    const get = await request(app).get('/games/1').expect(200);
    const head = await request(app).head('/games/1').expect(200);
    expect(head.headers.etag).toBe(get.headers.etag);
    expect(head.headers['content-length']).toBe(get.headers['content-length']);
    expect(head.text).toBeUndefined();
    await request(app).head('/games/1').set('If-None-Match', get.headers.etag).expect(304);
  });

  it('with etag: false sends no strong ETag (Express keeps its own)', async () => {
    const { app } = appWith({ etag: false });
    const res = await request(app).get('/games/1').expect(200);
    expect(res.headers.etag).toMatch(/^W\//);
    await request(app).get('/games/1').set('If-None-Match', res.headers.etag).expect(304);
  });

  it('lib/etag: list matching is exact per element and handles odd spacing', () => {
    const etag = strongEtag('hello');
    expect(etag).toBe(expectedEtag('hello'));
    expect(strongEtag('')).toBe(expectedEtag(''));
    expect(strongEtag('h\u00e9', 'latin1')).toBe(expectedEtag(Buffer.from('h\u00e9', 'latin1')));
    expect(etagListMatches(` \t${etag}`, etag)).toBe(true);
    expect(etagListMatches(`${etag.slice(0, -2)}", "x"`, etag)).toBe(false);
    expect(etagListMatches(`"x",,${etag}`, etag)).toBe(true);
    expect(etagListMatches(`"${etag}"`, etag)).toBe(false);
    expect(etagListMatches('', etag)).toBe(false);
  });
});

describe('cache: Cache-Control', () => {
  it('sends max-age from maxAge (seconds), and nothing without options', async () => {
    expect((await request(appWith({ maxAge: 300 }).app).get('/games/1')).headers['cache-control']).toBe('max-age=300');
    expect((await request(appWith().app).get('/games/1')).headers['cache-control']).toBeUndefined();
  });

  it.each([
    [{ maxAge: 60, private: true }, 'private, max-age=60'],
    [{ noStore: true }, 'no-store'],
    [{ private: true }, 'private'],
  ] as Array<[CacheOptions, string]>)('%j → %s', async (options, expected) => {
    expect((await request(appWith(options).app).get('/games/1')).headers['cache-control']).toBe(expected);
  });

  it("keeps the handler's own Cache-Control", async () => {
    const res = await request(appWith({ maxAge: 60 }).app).get('/private').expect(200);
    expect(res.headers['cache-control']).toBe('private, max-age=10');
  });

  it('marks responses to authenticated requests private (unless private: false), so a CDN never shares them', async () => {
    const build = (options: CacheOptions) => {
      const app = newApp();
      app.use((req, _res, next) => {
        if (req.headers['x-user']) req.user = { id: String(req.headers['x-user']) };
        next();
      });
      app.use(cache(isolated(options)));
      app.get('/me', (_req, res) => res.send('me'));
      return app;
    };
    const app = build({ maxAge: 60 });
    expect((await request(app).get('/me')).headers['cache-control']).toBe('max-age=60');
    expect((await request(app).get('/me').set('X-User', 'u1')).headers['cache-control']).toBe('private, max-age=60');
    expect((await request(build({ maxAge: 60, private: false })).get('/me').set('X-User', 'u1')).headers['cache-control']).toBe('max-age=60');
  });
});

describe('cache: server-side store (memory)', () => {
  it('answers MISS, then HIT with the identical status, body and headers, without running the handler again', async () => {
    const { app, calls } = appWith({ ttl: 60, maxAge: 30 });
    const first = await request(app).get('/games').expect(200);
    const second = await request(app).get('/games').expect(200);
    expect(first.headers['x-cache']).toBe('MISS');
    expect(second.headers['x-cache']).toBe('HIT');
    expect(second.text).toBe(first.text);
    for (const header of ['content-type', 'etag', 'cache-control', 'x-total-count', 'content-length']) {
      expect(second.headers[header]).toBe(first.headers[header]);
    }
    expect(second.headers.age).toBe('0');
    expect(calls.games).toBe(1);
    await request(app).get('/games').set('If-None-Match', first.headers.etag).expect(304).expect('X-Cache', 'HIT');
  });

  it('stores the full response when the miss that fills it is conditional (answered 304)', async () => {
    const { app, handler, calls } = appWith({ ttl: 60 });
    const first = await request(app).get('/games').expect(200);
    await handler.invalidate('/games');
    await request(app).get('/games').set('If-None-Match', first.headers.etag).expect(304).expect('X-Cache', 'MISS');
    const hit = await request(app).get('/games').expect(200).expect('X-Cache', 'HIT');
    expect(hit.text).toBe(first.text);
    expect(hit.headers['content-type']).toBe(first.headers['content-type']);
    expect(calls.games).toBe(2);
  });

  it('serves HEAD from the GET entry (and a HEAD miss fills it for GET)', async () => {
    const { app, calls } = appWith({ ttl: 60 });
    const head = await request(app).head('/games/1').expect(200);
    expect(head.headers['x-cache']).toBe('MISS');
    const get = await request(app).get('/games/1').expect(200);
    expect(get.headers['x-cache']).toBe('HIT');
    expect(get.headers.etag).toBe(head.headers.etag);
    expect(JSON.parse(get.text)).toEqual({ id: '1', version: 1 });
    const head2 = await request(app).head('/games/1').expect(200);
    expect(head2.headers['x-cache']).toBe('HIT');
    expect(head2.headers['content-length']).toBe(get.headers['content-length']);
    expect(calls.game1).toBe(1);
  });

  it('keeps binary bodies byte for byte', async () => {
    const { app, calls } = appWith({ ttl: 60 });
    await request(app).get('/binary').buffer(true).parse(bytes);
    const hit = await request(app).get('/binary').buffer(true).parse(bytes).expect('X-Cache', 'HIT');
    expect(hit.body).toEqual(Buffer.from([0, 255, 10, 13, 0, 128]));
    expect(calls.binary).toBe(1);
  });

  it('runs the handler once for 50 concurrent misses of one key (coalescing)', async () => {
    const app = newApp();
    let runs = 0;
    let arrived = 0;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    app.use((_req, _res, next) => {
      arrived++;
      next();
    });
    app.use(cache(isolated({ ttl: 60 })));
    app.get('/slow', async (_req, res) => {
      runs++;
      await gate;
      res.json({ run: runs });
    });
    const sent = Promise.all(Array.from({ length: 50 }, () => request(app).get('/slow')));
    // The filler holds the entry until every request arrived: each of the others waits for it.
    await eventually(() => expect(arrived).toBe(50), 15_000);
    release();
    const responses = await sent;
    expect(runs).toBe(1);
    expect(new Set(responses.map((r) => r.text))).toEqual(new Set(['{"run":1}']));
    expect(responses.filter((r) => r.headers['x-cache'] === 'MISS')).toHaveLength(1);
    expect(responses.filter((r) => r.headers['x-cache'] === 'HIT')).toHaveLength(49);
  });

  it("lets waiters run the handler themselves when the filler's answer cannot be shared", async () => {
    const app = newApp();
    let runs = 0;
    let arrived = 0;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    app.use((_req, _res, next) => {
      arrived++;
      next();
    });
    app.use(cache(isolated({ ttl: 60 })));
    app.get('/flaky', async (_req, res) => {
      const run = ++runs;
      // The first run answers 503 once all five requests arrived (the others wait for its fill).
      if (run === 1) await gate;
      res.status(run === 1 ? 503 : 200).send(`run ${run}`);
    });
    const sent = Promise.all(Array.from({ length: 5 }, () => request(app).get('/flaky')));
    await eventually(() => expect(arrived).toBe(5), 15_000);
    release();
    const responses = await sent;
    expect(runs).toBe(5);
    expect(responses.filter((r) => r.status === 503)).toHaveLength(1);
  });

  it('releases waiters after lockTimeout when the filler hangs', async () => {
    const app = newApp();
    let runs = 0;
    let entered!: () => void;
    const filling = new Promise<void>((resolve) => (entered = resolve));
    let release!: () => void;
    const hang = new Promise<void>((resolve) => (release = resolve));
    app.use(cache(isolated({ ttl: 60, lockTimeout: 100 })));
    app.get('/hang', async (_req, res) => {
      if (++runs === 1) {
        entered();
        await hang;
      }
      res.send(`run ${runs}`);
    });
    const first = request(app).get('/hang').then((r) => r);
    await filling;
    // The filler still hangs when the second request is answered: only lockTimeout released it.
    const second = await request(app).get('/hang').expect(200, 'run 2');
    expect(second.headers['x-cache']).toBe('MISS');
    release();
    expect((await first).status).toBe(200);
  });

  it('drops a path and its collection after a successful write (POST /games, PUT /games/7)', async () => {
    const { app, calls } = appWith({ ttl: 60 });
    await request(app).get('/games').expect('X-Cache', 'MISS');
    await request(app).get('/games').expect('X-Cache', 'HIT');
    await request(app).post('/games').expect(201);
    const after = await request(app).get('/games').expect('X-Cache', 'MISS');
    expect(JSON.parse(after.text).version).toBe(2);
    expect(calls.games).toBe(2);

    await request(app).get('/games/7').expect('X-Cache', 'MISS');
    await request(app).get('/games/8').expect('X-Cache', 'MISS');
    await request(app).get('/games').expect('X-Cache', 'HIT');
    await request(app).put('/games/7').expect(200);
    expect(JSON.parse((await request(app).get('/games/7').expect('X-Cache', 'MISS')).text).version).toBe(3);
    await request(app).get('/games').expect('X-Cache', 'MISS');
    // A sibling is not the written path nor its collection.
    await request(app).get('/games/8').expect('X-Cache', 'HIT');
  });

  it('does not invalidate on a failed write', async () => {
    const app = newApp();
    app.use(cache(isolated({ ttl: 60 })));
    app.get('/items', (_req, res) => res.send('items'));
    app.post('/items', (_req, res) => res.status(422).send('invalid'));
    await request(app).get('/items').expect('X-Cache', 'MISS');
    await request(app).post('/items').expect(422);
    await request(app).get('/items').expect('X-Cache', 'HIT');
  });

  it('invalidate(tag) and invalidate(prefix) drop exactly the tagged entries and the entries under the prefix', async () => {
    const app = newApp();
    const handler = cache(isolated({ ttl: 60, tags: (req: Request) => (req.path.startsWith('/api/games') ? ['games'] : ['other']) }));
    app.use(handler);
    app.use((req, res) => void res.send(req.path));
    const paths = ['/api/games', '/api/games/1', '/api/users', '/apix', '/other'];
    for (const path of paths) await request(app).get(path).expect('X-Cache', 'MISS');
    await handler.invalidate('games');
    const afterTag = await Promise.all(paths.map((p) => request(app).get(p)));
    expect(afterTag.map((r) => r.headers['x-cache'])).toEqual(['MISS', 'MISS', 'HIT', 'HIT', 'HIT']);
    await handler.invalidate('/api');
    const afterPrefix = await Promise.all(paths.map((p) => request(app).get(p)));
    // '/apix' is not under '/api': prefixes end at a path segment.
    expect(afterPrefix.map((r) => r.headers['x-cache'])).toEqual(['MISS', 'MISS', 'MISS', 'HIT', 'HIT']);
    await handler.invalidate(['/', 'unused-tag']);
    expect((await request(app).get('/other')).headers['x-cache']).toBe('MISS');
    await expect(handler.invalidate('')).rejects.toThrow(/non-empty string/);
  });

  it('never serves one user the response cached for another (identity always in the key)', async () => {
    const stack = createStack({
      logger: recordingLogger().logger,
      rateLimit: false,
      auth: { required: false, apiKeys: [{ key: 'key-alice', name: 'alice-key', userId: 'alice' }, { key: 'key-bob', name: 'bob-key', userId: 'bob' }] },
    });
    const app = newApp();
    app.use(stack);
    let runs = 0;
    app.get('/me', cache({ ttl: 60 }), (req, res) => {
      runs++;
      res.send(`hello ${req.user?.id ?? 'anonymous'}`);
    });
    app.use(stack.errorHandler);
    await request(app).get('/me').set('X-API-Key', 'key-alice').expect(200, 'hello alice').expect('X-Cache', 'MISS');
    await request(app).get('/me').set('X-API-Key', 'key-bob').expect(200, 'hello bob').expect('X-Cache', 'MISS');
    await request(app).get('/me').expect(200, 'hello anonymous').expect('X-Cache', 'MISS');
    await request(app).get('/me').set('X-API-Key', 'key-alice').expect(200, 'hello alice').expect('X-Cache', 'HIT');
    await request(app).get('/me').set('X-API-Key', 'key-bob').expect(200, 'hello bob').expect('X-Cache', 'HIT');
    await request(app).get('/me').expect(200, 'hello anonymous').expect('X-Cache', 'HIT');
    expect(runs).toBe(3);
    await stack.close();
  });

  it('keeps tenants apart even for the same user and URL', async () => {
    const app = newApp();
    app.use((req, _res, next) => {
      req.user = { id: 'u1' };
      req.tenant = { id: String(req.headers['x-tenant-id']) };
      next();
    });
    let runs = 0;
    app.use(cache(isolated({ ttl: 60 })));
    app.get('/dashboard', (req, res) => void (runs++, res.send(`tenant ${req.tenant?.id}`)));
    await request(app).get('/dashboard').set('X-Tenant-ID', 'acme').expect(200, 'tenant acme').expect('X-Cache', 'MISS');
    await request(app).get('/dashboard').set('X-Tenant-ID', 'globex').expect(200, 'tenant globex').expect('X-Cache', 'MISS');
    await request(app).get('/dashboard').set('X-Tenant-ID', 'acme').expect(200, 'tenant acme').expect('X-Cache', 'HIT');
    expect(runs).toBe(2);
  });

  it('never shares a response of a user the cache cannot identify (req.user without id)', async () => {
    const app = newApp();
    app.use((req, _res, next) => {
      req.user = { email: `${String(req.headers['x-who'])}@example.com` } as never;
      next();
    });
    let runs = 0;
    app.use(cache(isolated({ ttl: 60 })));
    app.get('/me', (req, res) => void (runs++, res.send(String(req.user?.email))));
    await request(app).get('/me').set('X-Who', 'a').expect(200, 'a@example.com');
    await request(app).get('/me').set('X-Who', 'b').expect(200, 'b@example.com').expect('X-Cache', 'MISS');
    expect(runs).toBe(2);
  });

  it('never stores a request carrying credentials the cache cannot name (Authorization without auth)', async () => {
    const { app, calls } = appWith({ ttl: 60 });
    await request(app).get('/whoami').set('Authorization', 'Bearer a').expect(200, 'you are Bearer a');
    await request(app).get('/whoami').set('Authorization', 'Bearer b').expect(200, 'you are Bearer b');
    await request(app).get('/whoami').set('Authorization', 'Bearer a').expect('X-Cache', 'MISS');
    await request(app).get('/whoami').expect(200, 'you are nobody');
    expect(calls.whoami).toBe(4);
  });

  it.each([
    ['Set-Cookie', '/cookie', 200],
    ['Cache-Control: no-store', '/no-store', 200],
    ['Cache-Control: private', '/private', 200],
    ['Vary: *', '/vary-any', 200],
    ['a 404', '/missing', 404],
    ['a 500', '/boom', 500],
  ])('never stores a response with %s', async (_name, path, status) => {
    const { app, calls } = appWith({ ttl: 60 });
    await request(app).get(path).expect(status);
    const second = await request(app).get(path).expect(status);
    expect(second.headers['x-cache']).toBe('MISS');
    expect(calls[path.slice(1)]).toBe(2);
  });

  it('keeps different entries per `vary` header, and says so in Vary', async () => {
    const { app, calls } = appWith({ ttl: 60, vary: ['Accept-Language'] });
    await request(app).get('/lang').set('Accept-Language', 'fr').expect(200, 'bonjour').expect('X-Cache', 'MISS');
    const en = await request(app).get('/lang').set('Accept-Language', 'en').expect(200, 'hello').expect('X-Cache', 'MISS');
    expect(en.headers.vary).toBe('Accept-Language');
    await request(app).get('/lang').set('Accept-Language', 'fr').expect(200, 'bonjour').expect('X-Cache', 'HIT');
    await request(app).get('/lang').set('Accept-Language', 'en').expect(200, 'hello').expect('X-Cache', 'HIT');
    expect(calls.lang).toBe(2);
  });

  it("checks headers the response's own Vary names on every hit", async () => {
    const app = newApp();
    let runs = 0;
    app.use(cache(isolated({ ttl: 60 })));
    app.get('/origin', (req, res) => {
      runs++;
      res.vary('Origin').send(`for ${req.headers.origin ?? 'none'}`);
    });
    await request(app).get('/origin').set('Origin', 'https://a.example').expect(200, 'for https://a.example');
    await request(app).get('/origin').set('Origin', 'https://a.example').expect('X-Cache', 'HIT');
    await request(app).get('/origin').set('Origin', 'https://b.example').expect(200, 'for https://b.example').expect('X-Cache', 'MISS');
    expect(runs).toBe(2);
  });

  it('expires entries after ttl (injected clock)', async () => {
    let now = 1_000_000;
    const { app, calls } = appWith({ ttl: 60, now: () => now });
    await request(app).get('/games/1').expect('X-Cache', 'MISS');
    now += 59_000;
    const hit = await request(app).get('/games/1').expect('X-Cache', 'HIT');
    expect(hit.headers.age).toBe('59');
    now += 1_000;
    await request(app).get('/games/1').expect('X-Cache', 'MISS');
    expect(calls.game1).toBe(2);
  });

  it('serves STALE within staleWhileRevalidate while one request refreshes the entry', async () => {
    let now = 1_000_000;
    const app = newApp();
    let runs = 0;
    let entered!: () => void;
    const refreshStarted = new Promise<void>((resolve) => (entered = resolve));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    app.use(cache(isolated({ ttl: 10, staleWhileRevalidate: 30, now: () => now })));
    app.get('/news', async (_req, res) => {
      runs++;
      if (runs === 2) {
        entered();
        await gate;
      }
      res.send(`edition ${runs}`);
    });
    await request(app).get('/news').expect(200, 'edition 1');
    now += 15_000;
    const refreshing = request(app).get('/news').then((r) => r);
    await refreshStarted;
    const stale = await request(app).get('/news').expect(200, 'edition 1');
    expect(stale.headers['x-cache']).toBe('STALE');
    expect(stale.headers.age).toBe('15');
    release();
    const refreshed = await refreshing;
    expect(refreshed.text).toBe('edition 2');
    expect(refreshed.headers['x-cache']).toBe('MISS');
    await request(app).get('/news').expect(200, 'edition 2').expect('X-Cache', 'HIT');
    now += 41_000;
    await request(app).get('/news').expect('X-Cache', 'MISS');
    expect(runs).toBe(3);
  });

  it('refreshes on a request with Cache-Control: no-cache, and skips the store for no-store', async () => {
    const { app, calls, bump } = appWith({ ttl: 60 });
    await request(app).get('/games/1').expect('X-Cache', 'MISS');
    bump();
    const reload = await request(app).get('/games/1').set('Cache-Control', 'no-cache').expect('X-Cache', 'MISS');
    expect(JSON.parse(reload.text).version).toBe(2);
    expect(JSON.parse((await request(app).get('/games/1').expect('X-Cache', 'HIT')).text).version).toBe(2);
    await request(app).get('/games/1').set('Cache-Control', 'no-store').expect('X-Cache', 'MISS');
    expect(calls.game1).toBe(3);
    const { app: strict, calls: strictCalls } = appWith({ ttl: 60, honorNoCache: false });
    await request(strict).get('/games/1');
    await request(strict).get('/games/1').set('Cache-Control', 'no-cache').expect('X-Cache', 'HIT');
    expect(strictCalls.game1).toBe(1);
  });

  it('shares one entry between query strings that differ only in parameter order', async () => {
    const { app, calls } = appWith({ ttl: 60 });
    await request(app).get('/games/1?a=1&b=2').expect('X-Cache', 'MISS');
    await request(app).get('/games/1?b=2&a=1').expect('X-Cache', 'HIT');
    await request(app).get('/games/1?a=1&b=3').expect('X-Cache', 'MISS');
    // Repeated names keep their order: ?t=x&t=y may mean a different list than ?t=y&t=x.
    await request(app).get('/games/1?t=x&t=y').expect('X-Cache', 'MISS');
    await request(app).get('/games/1?t=y&t=x').expect('X-Cache', 'MISS');
    expect(calls.game1).toBe(4);
  });

  it('does not store bodies above maxBodySize, and evicts by maxEntries (counted in cache_evictions_total)', async () => {
    const stack = createStack({ logger: recordingLogger().logger, rateLimit: false, cache: { ttl: 60, maxBodySize: 1024, maxEntries: 2 } });
    const app = newApp();
    app.use(stack);
    let big = 0;
    app.get('/big', (_req, res) => {
      big++;
      res.send('x'.repeat(4096));
    });
    app.get('/n/:n', (req, res) => res.send(req.params.n));
    app.use(stack.errorHandler);
    await request(app).get('/big').expect('X-Cache', 'MISS');
    await request(app).get('/big').expect('X-Cache', 'MISS');
    expect(big).toBe(2);
    for (const n of [1, 2, 3]) await request(app).get(`/n/${n}`).expect('X-Cache', 'MISS');
    await request(app).get('/n/3').expect('X-Cache', 'HIT');
    await request(app).get('/n/1').expect('X-Cache', 'MISS');
    const metrics = await stack.metricsRegistry.getSingleMetricAsString('cache_evictions_total');
    expect(metrics).toMatch(/cache_evictions_total 2/);
    await stack.close();
  });
});

describe('cache: in a stack', () => {
  function stackApp(config: Parameters<typeof createStack>[0], mount: (app: Express) => void) {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ logger, rateLimit: false, ...config });
    const app = newApp();
    app.use(stack);
    mount(app);
    app.use(stack.errorHandler);
    return { app, stack, lines };
  }

  it('is on by default with ETag/304 only (no server-side store, no X-Cache)', async () => {
    let runs = 0;
    const { app, stack } = stackApp({}, (a) => a.get('/games', (_req, res) => void (runs++, res.json({ games: [] }))));
    expect(stack.order).toContain('cache');
    const res = await request(app).get('/games').expect(200);
    expect(res.headers.etag).toBe(expectedEtag(res.text));
    expect(res.headers['x-cache']).toBeUndefined();
    await request(app).get('/games').set('If-None-Match', res.headers.etag).expect(304);
    await request(app).get('/games').expect(200);
    expect(runs).toBe(3);
    await stack.close();
  });

  it('puts cache_hit on the request log line, and counts hits, misses and stores', async () => {
    const { app, stack, lines } = stackApp({}, (a) => a.get('/games', cache({ ttl: 60 }), (_req, res) => res.json({ ok: true })));
    const miss = await request(app).get('/games').expect('X-Cache', 'MISS');
    const hit = await request(app).get('/games').expect('X-Cache', 'HIT');
    const lineOf = (id: string) => lines.find((l) => l.message === 'Request completed' && l.request_id === id);
    expect(lineOf(miss.headers['x-request-id'])?.cache_hit).toBe(false);
    expect(lineOf(hit.headers['x-request-id'])?.cache_hit).toBe(true);
    // Per-request headers from earlier middleware are the request's own, never replayed.
    expect(hit.headers['x-request-id']).not.toBe(miss.headers['x-request-id']);
    const text = await stack.metricsRegistry.metrics();
    expect(text).toMatch(/cache_hits_total 1/);
    expect(text).toMatch(/cache_misses_total 1/);
    expect(text).toMatch(/cache_stores_total 1/);
    await stack.close();
  });

  it('lets the stack-level cache invalidate route-level entries, and invalidates them on writes', async () => {
    let version = 1;
    const { app, stack } = stackApp({}, (a) => {
      a.get('/api/games', cache({ ttl: 60, tags: ['games'] }), (_req, res) => res.json({ version }));
      a.post('/api/games', (_req, res) => void (version++, res.status(201).json({})));
    });
    await request(app).get('/api/games').expect('X-Cache', 'MISS');
    await request(app).get('/api/games').expect('X-Cache', 'HIT');
    await stack.middleware.cache.invalidate('games');
    await request(app).get('/api/games').expect('X-Cache', 'MISS');
    await request(app).post('/api/games').send({}).expect(201);
    const fresh = await request(app).get('/api/games').expect('X-Cache', 'MISS');
    expect(fresh.body).toEqual({ version: 2 });
    await stack.close();
  });

  it('hashes once when stack and route caches both run, the route-level settings winning', async () => {
    const { app, stack } = stackApp({ cache: { maxAge: 10 } }, (a) => {
      a.get('/a', cache({ ttl: 60, maxAge: 60 }), (_req, res) => res.send('a'));
      a.get('/b', (_req, res) => res.send('b'));
    });
    const a = await request(app).get('/a').expect(200);
    expect(a.headers['cache-control']).toBe('max-age=60');
    expect(a.headers.etag).toBe(expectedEtag('a'));
    const hit = await request(app).get('/a').expect('X-Cache', 'HIT');
    expect(hit.headers.etag).toBe(a.headers.etag);
    expect(hit.headers['cache-control']).toBe('max-age=60');
    expect((await request(app).get('/b')).headers['cache-control']).toBe('max-age=10');
    await stack.close();
  });

  it('with a stack-wide ttl, caches every GET route', async () => {
    let runs = 0;
    const { app, stack } = stackApp({ cache: { ttl: 60 } }, (a) => a.get('/x', (_req, res) => void (runs++, res.send('x'))));
    await request(app).get('/x').expect('X-Cache', 'MISS');
    await request(app).get('/x').expect('X-Cache', 'HIT');
    expect(runs).toBe(1);
    await stack.close();
  });
});

describe('cache: configuration', () => {
  it.each([
    [{ staleWhileRevalidate: 10 }, /cache\.staleWhileRevalidate: .*needs cache\.ttl/],
    [{ maxAge: 60, noStore: true }, /cache\.noStore: .*contradicts maxAge 60/],
    [{ maxAge: 1.5 }, /cache\.maxAge: expected whole seconds/],
    [{ ttl: 'soon' }, /cache\.ttl: expected a number of seconds/],
    [{ ttl: '60' }, /cache\.ttl: expected a number of seconds \(as in HTTP max-age\) or a duration like '90s'/],
    [{ maxAge: '1500ms' }, /cache\.maxAge: expected whole seconds/],
    [{ staleWhileRevalidate: 'later', ttl: 60 }, /cache\.staleWhileRevalidate: expected a number of seconds/],
    [{ vary: 'Accept' }, /cache\.vary: expected an array of request header names/],
    [{ tags: ['/games'] }, /cache\.tags: expected an array of tag names/],
    [{ lockTimeout: 0 }, /cache\.lockTimeout: expected a duration above zero/],
    [{ namespace: 'a b' }, /cache\.namespace/],
    [{ tll: 60 }, /cache\.tll: unknown option; did you mean 'ttl'\?/],
  ])('refuses %j', (options, message) => {
    expect(() => cache(options as CacheOptions)).toThrow(ConfigError);
    expect(() => cache(options as CacheOptions)).toThrow(message);
  });

  it('explains app.use(cache) without parentheses', () => {
    expect(() => cache({ method: 'GET', headers: {}, url: '/' } as never)).toThrow(/write app.use\(cache\(\)\) with parentheses/);
  });
});

describe('cache: keys (#11)', () => {
  /** An app whose handler answers with what it sees of the request, behind `cache(options)`. */
  function echoApp(options: CacheOptions = { ttl: 60 }, setup?: (app: Express) => void) {
    const app = newApp();
    setup?.(app);
    let runs = 0;
    app.use(cache(isolated(options)));
    app.use((req, res) => {
      runs++;
      res.send(`${req.get('host')} ${req.originalUrl} ${JSON.stringify(req.query)} ${req.headers.cookie ?? '-'}`);
    });
    return { app, runs: () => runs };
  }

  it("keeps hosts with a slash out of another host's cache entry (#11)", async () => {
    const { app } = echoApp();
    await request(app).get('/x').set('Host', 'victim.example/page').expect(200, 'victim.example/page /x {} -').expect('X-Cache', 'MISS');
    // Not stored under any key: the same request is a miss again.
    await request(app).get('/x').set('Host', 'victim.example/page').expect('X-Cache', 'MISS');
    await request(app).get('/page/x').set('Host', 'victim.example').expect(200, 'victim.example /page/x {} -').expect('X-Cache', 'MISS');
    await request(app).get('/page/x').set('Host', 'victim.example').expect(200, 'victim.example /page/x {} -').expect('X-Cache', 'HIT');
  });

  it.each(['victim.example/page', 'victim.example:80/page', 'victim.example:', 'victim.example:http', 'a b.example', 'victim..example', '-victim.example', '[::1', '[::1]x', '[::g]', 'x'.repeat(64) + '.example'])(
    'neither looks up nor stores a request whose Host is %j (#11)',
    async (host) => {
      const { app, runs } = echoApp();
      await request(app).get('/page').set('Host', host).expect(200).expect('X-Cache', 'MISS');
      await request(app).get('/page').set('Host', host).expect(200).expect('X-Cache', 'MISS');
      expect(runs()).toBe(2);
    },
  );

  it.each(['victim.example', 'victim.example.', 'victim.example:8080', 'localhost', '127.0.0.1:3000', '[::1]:3000', 'svc_a.internal'])('caches a request whose Host is %j', async (host) => {
    const { app, runs } = echoApp();
    await request(app).get('/page').set('Host', host).expect('X-Cache', 'MISS');
    await request(app).get('/page').set('Host', host).expect('X-Cache', 'HIT');
    expect(runs()).toBe(1);
  });

  it('keys the host name as Express reads it, and the port too when vary lists Host', async () => {
    const plain = echoApp();
    await request(plain.app).get('/').set('Host', 'a.example:8080').expect('X-Cache', 'MISS');
    await request(plain.app).get('/').set('Host', 'a.example:9090').expect('X-Cache', 'HIT');
    await request(plain.app).get('/').set('Host', 'b.example:8080').expect('X-Cache', 'MISS');
    const byHost = echoApp({ ttl: 60, vary: ['Host'] });
    await request(byHost.app).get('/').set('Host', 'a.example:8080').expect('X-Cache', 'MISS');
    await request(byHost.app).get('/').set('Host', 'a.example:9090').expect(200, 'a.example:9090 / {} -').expect('X-Cache', 'MISS');
  });

  it('reads X-Forwarded-Host, and validates it, only when trust proxy trusts the peer (#11)', async () => {
    const trusted = echoApp({ ttl: 60 }, (app) => app.set('trust proxy', true));
    await request(trusted.app).get('/x').set('X-Forwarded-Host', 'victim.example/page').expect('X-Cache', 'MISS');
    await request(trusted.app).get('/x').set('X-Forwarded-Host', 'victim.example/page').expect('X-Cache', 'MISS');
    await request(trusted.app).get('/x').set('X-Forwarded-Host', 'a.example, b.example').expect('X-Cache', 'MISS');
    await request(trusted.app).get('/x').set('X-Forwarded-Host', 'a.example').expect('X-Cache', 'HIT');
    await request(trusted.app).get('/x').set('X-Forwarded-Host', 'b.example').expect('X-Cache', 'MISS');
    expect(trusted.runs()).toBe(4);
    const untrusted = echoApp();
    await request(untrusted.app).get('/x').set('X-Forwarded-Host', 'a.example').expect('X-Cache', 'MISS');
    await request(untrusted.app).get('/x').set('X-Forwarded-Host', 'victim.example/page').expect('X-Cache', 'HIT');
  });

  it('keeps ?a=1&%61=2 and ?%61=2&a=1 apart: the handler sees different arrays (#11)', async () => {
    const { app } = echoApp();
    const first = await request(app).get('/q?a=1&%61=2').expect('X-Cache', 'MISS');
    const second = await request(app).get('/q?%61=2&a=1').expect('X-Cache', 'MISS');
    expect(first.text).toContain('{"a":["1","2"]}');
    expect(second.text).toContain('{"a":["2","1"]}');
    await request(app).get('/q?a=1&%61=2').expect(200, first.text).expect('X-Cache', 'HIT');
    await request(app).get('/q?%61=2&a=1').expect(200, second.text).expect('X-Cache', 'HIT');
  });

  it('keeps the order of the parts of one parameter (a, a[], a[x], a.b) under the extended parser (#11)', async () => {
    const { app } = echoApp({ ttl: 60 }, (a) => a.set('query parser', 'extended'));
    const first = await request(app).get('/q?a=1&a[]=2&b=3').expect('X-Cache', 'MISS');
    const second = await request(app).get('/q?a[]=2&a=1&b=3').expect('X-Cache', 'MISS');
    expect(first.text).toContain('{"a":["1","2"],"b":"3"}');
    expect(second.text).toContain('{"a":["2","1"],"b":"3"}');
    // Different parameters still share an entry whatever their order.
    await request(app).get('/q?b=3&a=1&a[]=2').expect(200, first.text).expect('X-Cache', 'HIT');
  });

  it('never shares an entry between two spellings of a query the handler can tell apart (#11)', async () => {
    const { app } = echoApp();
    const plain = await request(app).get('/q?x=A').expect('X-Cache', 'MISS');
    expect(plain.text).toContain(' /q?x=A {"x":"A"}');
    const encoded = await request(app).get('/q?x=%41').expect('X-Cache', 'MISS');
    expect(encoded.text).toContain(' /q?x=%41 {"x":"A"}');
    await request(app).get('/q?x=A&x=B').expect('X-Cache', 'MISS');
    await request(app).get('/q?x=B&x=A').expect('X-Cache', 'MISS');
  });

  it('never serves a caller known by a cookie session the entry of another (#11)', async () => {
    const { app, runs } = echoApp();
    await request(app).get('/me').set('Cookie', 'sid=alice').expect('X-Cache', 'MISS');
    const bob = await request(app).get('/me').set('Cookie', 'sid=bob').expect('X-Cache', 'MISS');
    expect(bob.text).toMatch(/ sid=bob$/);
    const alice = await request(app).get('/me').set('Cookie', 'sid=alice').expect('X-Cache', 'HIT');
    expect(alice.text).toMatch(/ sid=alice$/);
    const anonymous = await request(app).get('/me').expect('X-Cache', 'MISS');
    expect(anonymous.text).toMatch(/ -$/);
    expect(runs()).toBe(3);
  });

  it("shares entries between cookies when the route's vary says the response does not depend on them", async () => {
    for (const vary of [[], ['Accept-Language']]) {
      const { app, runs } = echoApp({ ttl: 60, vary });
      await request(app).get('/page').set('Cookie', 'sid=alice').expect('X-Cache', 'MISS');
      await request(app).get('/page').set('Cookie', 'sid=bob').expect('X-Cache', 'HIT');
      expect(runs()).toBe(1);
    }
    const { app } = echoApp({ ttl: 60, vary: ['Cookie'] });
    await request(app).get('/page').set('Cookie', 'sid=alice').expect('X-Cache', 'MISS');
    await request(app).get('/page').set('Cookie', 'sid=bob').expect('X-Cache', 'MISS');
  });

  it('keys an authenticated user by identity, not by cookie', async () => {
    const { app, runs } = echoApp({ ttl: 60 }, (a) =>
      a.use((req, _res, next) => {
        if (req.headers['x-user']) req.user = { id: String(req.headers['x-user']) };
        next();
      }),
    );
    await request(app).get('/me').set('X-User', 'u1').set('Cookie', 'sid=1').expect('X-Cache', 'MISS');
    await request(app).get('/me').set('X-User', 'u1').set('Cookie', 'sid=2').expect('X-Cache', 'HIT');
    await request(app).get('/me').set('X-User', 'u2').set('Cookie', 'sid=1').expect('X-Cache', 'MISS');
    expect(runs()).toBe(2);
  });

  it('keeps identities apart whatever characters their ids contain (#11)', async () => {
    const identities: Record<string, Partial<Request>> = {
      one: { user: { id: 'a\u0001b' }, tenant: { id: 'c' } },
      two: { user: { id: 'a' }, apiKey: { name: 'b\u0001' }, tenant: { id: 'c' } },
    };
    const app = newApp();
    app.use((req, _res, next) => {
      Object.assign(req, identities[String(req.headers['x-who'])]);
      next();
    });
    app.use(cache(isolated({ ttl: 60 })));
    app.get('/me', (req, res) => void res.send(String(req.headers['x-who'])));
    await request(app).get('/me').set('X-Who', 'one').expect(200, 'one').expect('X-Cache', 'MISS');
    await request(app).get('/me').set('X-Who', 'two').expect(200, 'two').expect('X-Cache', 'MISS');
  });

  it('never stores a request with Authorization that no auth identified, even with a tenant', async () => {
    const { app, runs } = echoApp({ ttl: 60 }, (a) =>
      a.use((req, _res, next) => {
        req.tenant = { id: 'acme' };
        next();
      }),
    );
    await request(app).get('/me').set('Authorization', 'Bearer a').expect('X-Cache', 'MISS');
    await request(app).get('/me').set('Authorization', 'Bearer b').expect('X-Cache', 'MISS');
    expect(runs()).toBe(2);
  });

  it('neither looks up nor stores an absolute-form request target', async () => {
    const { app, runs } = echoApp();
    const server = app.listen(0);
    try {
      const port = (server.address() as AddressInfo).port;
      const get = () =>
        new Promise<string | undefined>((resolve, reject) => {
          http
            .get({ host: '127.0.0.1', port, path: `http://127.0.0.1:${port}/abs`, headers: { host: `127.0.0.1:${port}` } }, (res) => {
              res.resume();
              resolve(res.headers['x-cache'] as string | undefined);
            })
            .on('error', reject);
        });
      expect(await get()).toBe('MISS');
      expect(await get()).toBe('MISS');
      expect(runs()).toBe(2);
    } finally {
      server.close();
    }
  });
});

describe('cache: durations (#12)', () => {
  it.each([
    [{ ttl: '5m', maxAge: '1m' }, 'max-age=60'],
    [{ ttl: 300, maxAge: 60 }, 'max-age=60'],
    [{ ttl: '1h', maxAge: '1h' }, 'max-age=3600'],
  ] as Array<[CacheOptions, string]>)('%j stores and sends %s', async (options, cacheControl) => {
    const { app } = appWith(options);
    const res = await request(app).get('/games/1').expect('X-Cache', 'MISS');
    expect(res.headers['cache-control']).toBe(cacheControl);
    await request(app).get('/games/1').expect('X-Cache', 'HIT');
  });

  it("keeps an entry for ttl: '90s' exactly as for ttl: 90 (injected clock)", async () => {
    for (const ttl of ['90s', 90, '1.5m']) {
      let now = 1_000_000;
      const { app } = appWith({ ttl, now: () => now });
      await request(app).get('/games/1').expect('X-Cache', 'MISS');
      now += 89_000;
      await request(app).get('/games/1').expect('X-Cache', 'HIT');
      now += 1_000;
      await request(app).get('/games/1').expect('X-Cache', 'MISS');
    }
  });

  it("serves STALE for staleWhileRevalidate: '30s' past ttl: '10s' while one request refreshes", async () => {
    let now = 1_000_000;
    let runs = 0;
    let entered!: () => void;
    const refreshing = new Promise<void>((resolve) => (entered = resolve));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const app = newApp();
    app.use(cache(isolated({ ttl: '10s', staleWhileRevalidate: '30s', now: () => now })));
    app.get('/news', async (_req, res) => {
      if (++runs > 1) {
        entered();
        await gate;
      }
      res.send(`edition ${runs}`);
    });
    await request(app).get('/news').expect(200, 'edition 1');
    now += 39_000;
    const refresher = request(app).get('/news').then((r) => r);
    await refreshing;
    await request(app).get('/news').expect(200, 'edition 1').expect('X-Cache', 'STALE');
    release();
    expect((await refresher).text).toBe('edition 2');
  });
});

describe('cache: conditional requests through fresh', () => {
  it('lets a matching If-None-Match win over an If-Modified-Since that alone would say modified (RFC 9110 §13.1.3)', async () => {
    const { app } = appWith();
    const etag = (await request(app).get('/modified').expect(200)).headers.etag;
    await request(app).get('/modified').set('If-None-Match', etag).set('If-Modified-Since', 'Tue, 31 Dec 2024 00:00:00 GMT').expect(304);
  });
});
