import type { Express } from 'express';
import Redis from 'ioredis';
import request from 'supertest';
import { cache, createStack, type Stack, type StackConfig } from '../index';
import { describeRedis, eventually, newApp, recordingLogger, redisUrl, uniquePrefix } from './helpers/app';

// Two instances and a real Redis per test: roomy on a loaded machine.
jest.setTimeout(60_000);

/** A supertest parser that keeps the body as bytes. */
function bytes(res: any, cb: (err: Error | null, body: Buffer) => void): void {
  const chunks: Buffer[] = [];
  res.on('data', (c: Buffer) => chunks.push(c));
  res.on('end', () => cb(null, Buffer.concat(chunks)));
}

const BINARY = Buffer.from([0, 1, 2, 10, 13, 0xff, 0xfe, 0x80, 0x7b, 0x7d, 0x0a]);

interface Instance {
  app: Express;
  stack: Stack;
}

describeRedis('cache on Redis (two instances sharing one Redis)', () => {
  let redis: Redis;
  let prefix: string;
  let stacks: Stack[];
  let runs: Record<string, number>;
  let version: number;
  /** Requests for /api/slow that reached an instance, and the gate its handler waits on. */
  let slowArrivals: number;
  let openSlow: () => void;
  let slowGate: Promise<void>;

  beforeAll(() => {
    redis = new Redis(redisUrl as string);
  });
  afterAll(async () => {
    await redis.quit();
  });
  beforeEach(() => {
    prefix = uniquePrefix();
    stacks = [];
    runs = {};
    version = 1;
    slowArrivals = 0;
    slowGate = new Promise((resolve) => (openSlow = resolve));
  });
  afterEach(async () => {
    await Promise.all(stacks.map((s) => s.close()));
  });

  // Store calls far longer than any load can delay them: a store call past its timeout counts as an
  // outage (the request then runs its handler and stores nothing), which these tests do not ask about.
  const ROOMY = { storeTimeout: '5s' } as const;

  /** One instance of the service: its own stack and Redis connection, the shared prefix. */
  function instance(config: Partial<StackConfig> = {}): Instance {
    const stack = createStack({
      redis: redisUrl,
      keyPrefix: prefix,
      logger: recordingLogger().logger,
      rateLimit: false,
      auth: { required: false, apiKeys: [{ key: 'key-alice', name: 'alice', userId: 'alice' }, { key: 'key-bob', name: 'bob', userId: 'bob' }] },
      ...config,
    });
    stacks.push(stack);
    const app = newApp();
    const count = (name: string) => (runs[name] = (runs[name] ?? 0) + 1);
    app.use((req, _res, next) => {
      if (req.path === '/api/slow') slowArrivals++;
      next();
    });
    app.use(stack);
    // A long local copy: only the pub/sub invalidation can drop it within a test.
    app.get('/api/games', cache({ ttl: 60, tags: ['games'], localTtl: 30, ...ROOMY }), (_req, res) => {
      count('games');
      res.set('X-Total-Count', '2').json({ version });
    });
    app.get('/api/games/:id', cache({ ttl: 60, tags: ['games'], ...ROOMY }), (req, res) => {
      count(`game${req.params.id}`);
      res.json({ id: req.params.id, version });
    });
    app.post('/api/games', (_req, res) => {
      version++;
      res.status(201).json({ created: true });
    });
    app.get('/api/binary', cache({ ttl: 60, ...ROOMY }), (_req, res) => {
      count('binary');
      res.type('application/octet-stream').send(BINARY);
    });
    // Store calls and lock waits far longer than any load can delay them: a timeout would count as
    // an outage (each request then runs the handler), which is not what the coalescing test asks.
    app.get('/api/slow', cache({ ttl: 60, storeTimeout: '15s', lockTimeout: '15s' }), async (_req, res) => {
      count('slow');
      await slowGate;
      res.json({ run: runs.slow });
    });
    app.get('/api/me', cache({ ttl: 60, ...ROOMY }), (req, res) => {
      count('me');
      res.send(`hello ${req.user?.id ?? 'anonymous'}`);
    });
    app.get('/api/short', cache({ ttl: 2, ...ROOMY }), (_req, res) => {
      count('short');
      res.send(`short ${runs.short}`);
    });
    app.get('/api/cookie', cache({ ttl: 60, ...ROOMY }), (_req, res) => {
      count('cookie');
      res.cookie('sid', 'x').send('cookie');
    });
    app.get('/api/no-store', cache({ ttl: 60, ...ROOMY }), (_req, res) => {
      count('no-store');
      res.set('Cache-Control', 'no-store').send('secret');
    });
    app.get('/api/missing', cache({ ttl: 60, ...ROOMY }), (_req, res) => {
      count('missing');
      res.status(404).send('missing');
    });
    app.use(stack.errorHandler);
    return { app, stack };
  }

  /** Keys the cache holds under this test's prefix (the test's Redis is private; KEYS is fine here). */
  async function cacheKeys(): Promise<string[]> {
    return (await redis.keys(`${prefix}cache:*`)).sort();
  }

  it('stores on Redis, binary-safe, and another instance serves the entry (HIT) with the same bytes and headers', async () => {
    const a = instance();
    const b = instance();
    const miss = await request(a.app).get('/api/binary').buffer(true).parse(bytes).expect(200).expect('X-Cache', 'MISS');
    await eventually(async () => expect((await cacheKeys()).some((k) => !k.includes('{index}') && !k.endsWith(':lock'))).toBe(true));
    const hit = await request(b.app).get('/api/binary').buffer(true).parse(bytes).expect(200).expect('X-Cache', 'HIT');
    expect(hit.body).toEqual(BINARY);
    expect(miss.body).toEqual(BINARY);
    for (const header of ['content-type', 'etag', 'content-length']) expect(hit.headers[header]).toBe(miss.headers[header]);
    expect(runs.binary).toBe(1);
    const entryKey = (await cacheKeys()).find((k) => !k.includes('{index}') && !k.endsWith(':lock')) as string;
    const ttl = await redis.pttl(entryKey);
    expect(ttl).toBeGreaterThan(50_000);
    expect(ttl).toBeLessThanOrEqual(60_000);
    // The fill lock is released once the entry is stored.
    await eventually(async () => expect((await cacheKeys()).filter((k) => k.endsWith(':lock'))).toEqual([]));
  });

  it('runs the handler once for 50 concurrent misses spread over two instances', async () => {
    const a = instance();
    const b = instance();
    // Connections up and scripts loaded first: a cold connection slower than storeTimeout counts as an
    // outage, during which every request runs its handler (correct, but not what this test measures).
    await Promise.all([request(a.app).get('/api/me'), request(b.app).get('/api/me')]);
    const sent = Promise.all(Array.from({ length: 50 }, (_, i) => request(i % 2 === 0 ? a.app : b.app).get('/api/slow')));
    // The first request's handler holds the fill until all 50 reached an instance, so each of the
    // others finds either the fill lock (and waits for the entry) or the entry.
    await eventually(() => expect(slowArrivals).toBe(50), 15_000);
    openSlow();
    const responses = await sent;
    expect(runs.slow).toBe(1);
    expect(responses.every((r) => r.status === 200 && r.text === '{"run":1}')).toBe(true);
    expect(responses.filter((r) => r.headers['x-cache'] === 'MISS')).toHaveLength(1);
  });

  it('a write on one instance invalidates the entry for every instance (Redis entries deleted, local copies dropped)', async () => {
    const a = instance();
    const b = instance();
    await request(a.app).get('/api/games').expect('X-Cache', 'MISS');
    await eventually(() => request(b.app).get('/api/games').expect('X-Cache', 'HIT').then(() => undefined));
    // B now holds a local copy (it answers even with Redis's entry gone); the write on A must reach it.
    const entries = (await cacheKeys()).filter((k) => !k.includes('{index}'));
    const saved = await Promise.all(entries.map((k) => redis.getBuffer(k)));
    await redis.del(...entries);
    await request(b.app).get('/api/games').expect('X-Cache', 'HIT');
    await Promise.all(entries.map((k, i) => redis.set(k, saved[i] as Buffer, 'PX', 60_000)));
    await request(a.app).post('/api/games').send({}).expect(201);
    // The writer answered only after the Redis entry was gone.
    expect((await cacheKeys()).filter((k) => !k.includes('{index}'))).toEqual([]);
    await eventually(async () => {
      const res = await request(b.app).get('/api/games').expect(200);
      expect(res.body).toEqual({ version: 2 });
    });
    expect(runs.games).toBe(2);
  });

  it('invalidate(tag) and invalidate(prefix) on one instance drop the entries everywhere, through the index (no SCAN)', async () => {
    const a = instance();
    const b = instance();
    for (const path of ['/api/games', '/api/games/1', '/api/me']) await request(a.app).get(path).expect('X-Cache', 'MISS');
    await eventually(async () => expect(await redis.exists(`${prefix}cache:{index}:z:t:games`)).toBe(1));
    expect(await redis.zcard(`${prefix}cache:{index}:z:t:games`)).toBe(2);
    for (const path of ['/api/games', '/api/games/1', '/api/me']) await request(b.app).get(path).expect('X-Cache', 'HIT');

    await a.stack.middleware.cache.invalidate('games');
    expect(await redis.exists(`${prefix}cache:{index}:z:t:games`)).toBe(0);
    await eventually(() => request(b.app).get('/api/games/1').expect('X-Cache', 'MISS').then(() => undefined));
    await request(b.app).get('/api/me').expect('X-Cache', 'HIT');

    await b.stack.middleware.cache.invalidate('/api');
    await eventually(() => request(a.app).get('/api/me').expect('X-Cache', 'MISS').then(() => undefined));
    expect(runs.me).toBe(2);
  });

  it('never serves one user the entry of another', async () => {
    const a = instance();
    const b = instance();
    await request(a.app).get('/api/me').set('X-API-Key', 'key-alice').expect(200, 'hello alice');
    await request(a.app).get('/api/me').set('X-API-Key', 'key-bob').expect(200, 'hello bob');
    await eventually(() => request(b.app).get('/api/me').set('X-API-Key', 'key-alice').expect(200, 'hello alice').expect('X-Cache', 'HIT').then(() => undefined));
    await request(b.app).get('/api/me').set('X-API-Key', 'key-bob').expect(200, 'hello bob').expect('X-Cache', 'HIT');
    await request(b.app).get('/api/me').expect(200, 'hello anonymous').expect('X-Cache', 'MISS');
    expect(runs.me).toBe(3);
  });

  it('lets entries expire after ttl, on Redis and in the local copies', async () => {
    const a = instance();
    const b = instance();
    const first = await request(a.app).get('/api/short').expect(200).expect('X-Cache', 'MISS');
    await eventually(() => request(b.app).get('/api/short').expect(200, first.text).expect('X-Cache', 'HIT').then(() => undefined));
    // Redis drops the entry at its ttl; the local copies expire at the same instant (stored at + ttl).
    await eventually(async () => expect((await cacheKeys()).filter((k) => !k.includes('{index}') && !k.endsWith(':lock'))).toEqual([]));
    const refill = await request(b.app).get('/api/short').expect(200).expect('X-Cache', 'MISS');
    expect(refill.text).not.toBe(first.text);
    // a's local copy expired with the entry: it reads b's fill from Redis (STALE when a loaded
    // machine took longer than the ttl to get here; either way the handler did not run again).
    const fromA = await request(a.app).get('/api/short').expect(200, refill.text);
    expect(['HIT', 'STALE']).toContain(fromA.headers['x-cache']);
  });

  it('stores nothing on Redis for Set-Cookie, no-store and non-2xx responses', async () => {
    const a = instance();
    for (const path of ['/api/cookie', '/api/no-store', '/api/missing']) {
      await request(a.app).get(path);
      await request(a.app).get(path).expect('X-Cache', 'MISS');
    }
    // A response that is stored, after them: its entry is written after any write theirs would
    // have made, on the same connection, so once it is there theirs would be too.
    await request(a.app).get('/api/me').expect('X-Cache', 'MISS');
    await eventually(async () => expect((await cacheKeys()).filter((k) => !k.includes('{index}') && !k.endsWith(':lock'))).toHaveLength(1));
    expect(runs).toEqual({ cookie: 2, 'no-store': 2, missing: 2, me: 1 });
  });

  it('keeps serving (as misses) when Redis is unreachable', async () => {
    const { logger } = recordingLogger();
    const stack = createStack({ redis: 'redis://127.0.0.1:1', logger, rateLimit: false, cache: { ttl: 60, storeTimeout: 50 } });
    stacks.push(stack);
    const app = newApp();
    app.use(stack);
    app.get('/x', (_req, res) => res.send('x'));
    app.use(stack.errorHandler);
    await request(app).get('/x').expect(200, 'x').expect('X-Cache', 'MISS');
    await request(app).get('/x').expect(200, 'x').expect('X-Cache', 'MISS');
  });
});
