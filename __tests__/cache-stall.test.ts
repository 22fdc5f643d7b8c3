import type { Express } from 'express';
import Redis from 'ioredis';
import request from 'supertest';
import { cache, createStack, type Stack } from '../index';
import { eventually, newApp, recordingLogger, stacksClosedAfterEach, uniquePrefix } from './helpers/app';
import { hasRedisServer, OwnRedisServer } from './helpers/redis-server';

// These tests pause their own redis-server (CLIENT PAUSE), so other suites' Redis never stalls.
const describeOwnRedis = hasRedisServer ? describe : describe.skip;

describeOwnRedis('cache after a Redis stall (CLIENT PAUSE WRITE, #11)', () => {
  let server: OwnRedisServer;
  let admin: Redis;
  let prefix: string;
  const stacks = stacksClosedAfterEach<Stack>();

  beforeAll(async () => {
    server = await OwnRedisServer.start();
    admin = new Redis(server.url);
  });
  afterAll(async () => {
    await admin.quit();
    await server.stop();
  });
  beforeEach(() => {
    prefix = uniquePrefix();
  });

  /** One instance: its own stack and connection on the paused server, a route-level cache on `routes`. */
  function instance(routes: (app: Express) => void): { app: Express; stack: Stack } {
    const stack = createStack({ redis: server.url, keyPrefix: prefix, logger: recordingLogger().logger, rateLimit: false, ipFilter: false });
    stacks.push(stack);
    const app = newApp();
    app.use(stack);
    routes(app);
    app.use(stack.errorHandler);
    return { app, stack };
  }

  /** Pauses writes for `ms`; resolves once Redis took the pause. */
  async function pauseWrites(ms: number): Promise<void> {
    await admin.call('CLIENT', 'PAUSE', String(ms), 'WRITE');
  }

  /** Resolves once the pause is over: a write queued behind every command sent before it has run. */
  async function pauseOver(): Promise<void> {
    await admin.set(`${prefix}probe`, '1');
  }

  async function keys(kind: 'lock' | 'entry'): Promise<string[]> {
    const all = await admin.keys(`${prefix}cache:*`);
    return all.filter((k) => !k.includes('{index}') && (kind === 'lock') === k.endsWith(':lock'));
  }

  /** A connection up and its scripts loaded: a request got a HIT through Redis. */
  async function warm(app: Express): Promise<void> {
    await eventually(() => request(app).get('/warm').expect('X-Cache', 'HIT').then(() => undefined), 5000);
  }

  it('leaves no fill lock behind when a look-up timed out, so the next request does not wait for it (#11)', async () => {
    let runs = 0;
    const { app } = instance((a) => {
      a.get('/warm', cache({ ttl: 60 }), (_req, res) => void res.send('warm'));
      // A lock left behind would hold the next miss for the whole lockTimeout.
      a.get('/x', cache({ ttl: 60, lockTimeout: '30s' }), (_req, res) => void res.send(`run ${++runs}`));
    });
    await warm(app);

    await pauseWrites(1000);
    // The look-up (a script that may take the lock) waits in Redis; the request goes on as a miss.
    await request(app).get('/x').expect(200, 'run 1').expect('X-Cache', 'MISS');
    await pauseOver();

    // The script ran when Redis resumed and took the lock; the release sent after it freed it.
    await eventually(async () => expect(await keys('lock')).toEqual([]));
    await eventually(() => request(app).get('/x').expect(200).expect('X-Cache', 'HIT').then(() => undefined), 5000);
  });

  it('leaves no entry behind that invalidation cannot reach when storing timed out (#11)', async () => {
    let entered!: () => void;
    const inHandler = new Promise<void>((resolve) => (entered = resolve));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const { app } = instance((a) => {
      a.get('/warm', cache({ ttl: 60 }), (_req, res) => void res.send('warm'));
      a.get('/slow', cache({ ttl: 60 }), async (_req, res) => {
        entered();
        await gate;
        res.send('slow');
      });
    });
    await warm(app);
    const before = await keys('entry');

    const slow = request(app).get('/slow').then((r) => r);
    await inHandler;
    // The look-up is done and the lock taken; storing the answer runs into the pause and times out.
    await pauseWrites(3000);
    release();
    expect((await slow).headers['x-cache']).toBe('MISS');
    await pauseOver();

    // The entry written late was deleted right after it, and the lock released.
    await eventually(async () => {
      expect(await keys('entry')).toEqual(before);
      expect(await keys('lock')).toEqual([]);
    });
  });

  it('drops the entries of a write whose invalidation timed out, once Redis answers again (#11)', async () => {
    let version = 1;
    const { app } = instance((a) => {
      a.get('/warm', cache({ ttl: 60 }), (_req, res) => void res.send('warm'));
      a.get('/api/items', cache({ ttl: 60 }), (_req, res) => void res.json({ version }));
      a.post('/api/items', (_req, res) => void (version++, res.status(201).json({})));
    });
    await warm(app);
    await request(app).get('/api/items').expect('X-Cache', 'MISS');
    await eventually(() => request(app).get('/api/items').expect('X-Cache', 'HIT').then(() => undefined), 5000);

    await pauseWrites(3000);
    // The write is answered although its invalidation timed out.
    await request(app).post('/api/items').send({}).expect(201);
    await pauseOver();

    await eventually(async () => {
      const res = await request(app).get('/api/items').expect(200);
      expect(res.body).toEqual({ version: 2 });
    }, 10_000);
  });
});
