import type { Server } from 'node:http';
import { createServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import type { Request, Response } from 'express';
import Redis from 'ioredis';
import request from 'supertest';
import { createStack, type IdempotencyOptions, type Stack, type StackConfig } from '../index';
import { MemoryStores, RedisStores } from '../lib/stores';
import { idempotencyStore, type IdempotencyStore } from '../lib/stores/idempotency-store';
import { closeAll, describeRedis, eventually, newApp, recordingLogger, redisUrl, uniquePrefix } from './helpers/app';

const QUIET: StackConfig = { rateLimit: false, ipFilter: false, cache: false, auditLog: false, requestLogger: false, metrics: false };
const AUTH = { required: false, apiKeys: [{ key: 'key-alice', name: 'alice', userId: 'alice' }] };
const BINARY = Buffer.from([0, 1, 2, 10, 13, 0xff, 0xfe, 0x80, 0x7b, 0x7d, 0x0a]);

/** A supertest parser that keeps the body as bytes. */
function bytes(res: any, cb: (err: Error | null, body: Buffer) => void): void {
  const chunks: Buffer[] = [];
  res.on('data', (c: Buffer) => chunks.push(c));
  res.on('end', () => cb(null, Buffer.concat(chunks)));
}

describeRedis('idempotency on a shared Redis (several instances)', () => {
  let redis: Redis;
  let prefix: string;
  let runs: number;
  const stacks: Stack[] = [];
  const servers: Server[] = [];

  beforeAll(() => {
    redis = new Redis(redisUrl as string);
  });
  afterAll(async () => {
    await redis.quit();
  });
  beforeEach(() => {
    prefix = uniquePrefix();
    runs = 0;
  });
  afterEach(async () => {
    for (const server of servers.splice(0)) {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
    await closeAll(stacks);
  });

  /** One instance of the service: its own stack and Redis connection, the shared prefix, listening. */
  function instance(options: IdempotencyOptions | true = { storeTimeout: '2s' }, config: StackConfig = {}) {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ redis: redisUrl, keyPrefix: prefix, logger, ...QUIET, auth: AUTH, idempotency: options, ...config });
    stacks.push(stack);
    const app = newApp();
    app.use(stack);
    app.post('/payments', (req: Request, res: Response) => {
      runs++;
      const run = runs;
      res.cookie('session', `s-${run}`);
      setTimeout(() => res.status(201).json({ run, amount: req.body.amount }), 10);
    });
    app.post('/binary', (_req, res) => {
      runs++;
      res.status(200).type('application/octet-stream').send(BINARY);
    });
    app.post('/flaky', (_req, res) => {
      runs++;
      res.status(runs === 1 ? 503 : 201).json({ run: runs });
    });
    app.use(stack.errorHandler);
    const server = app.listen(0);
    servers.push(server);
    return { app, stack, lines, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
  }

  const pay = (url: string, key: string, amount = 5) => request(url).post('/payments').set('Idempotency-Key', key).send({ amount });

  it('runs the handler once when the same key reaches two instances; the second answers with the replay', async () => {
    const a = instance();
    const b = instance();
    const first = await pay(a.url, 'pay-1');
    expect(first.status).toBe(201);
    // The outcome is on its way to Redis as the response goes out; a retry that overtakes it on a
    // loaded machine is told 409 (in progress) and retries, never runs the handler again.
    let second = await pay(b.url, 'pay-1');
    await eventually(async () => {
      if (second.status === 409) second = await pay(b.url, 'pay-1');
      expect(second.status).toBe(201);
    });
    expect(second.body).toEqual({ run: 1, amount: 5 });
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(second.headers['set-cookie']).toBeUndefined();
    expect(runs).toBe(1);
  });

  it('runs the handler once for ten concurrent duplicates spread over two instances', async () => {
    const instances = [instance(), instance()];
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => pay(instances[i % 2].url, 'burst-1')));
    expect(runs).toBe(1);
    const fresh = results.filter((r) => r.status === 201 && r.headers['idempotent-replayed'] === undefined);
    expect(fresh).toHaveLength(1);
    for (const r of results) {
      if (r === fresh[0]) continue;
      if (r.status === 409) expect([r.body.error.code, r.headers['retry-after']]).toEqual(['IDEMPOTENCY_IN_PROGRESS', '1']);
      else expect([r.status, r.headers['idempotent-replayed'], r.body]).toEqual([201, 'true', { run: 1, amount: 5 }]);
    }
  });

  it('answers another body under the same key 422 IDEMPOTENCY_KEY_MISMATCH on any instance', async () => {
    const a = instance();
    const b = instance();
    await pay(a.url, 'pay-2', 5);
    const other = await pay(b.url, 'pay-2', 500);
    expect(other.status).toBe(422);
    expect(other.body.error.code).toBe('IDEMPOTENCY_KEY_MISMATCH');
    expect(runs).toBe(1);
  });

  it('frees the key of a 5xx for a retry on another instance', async () => {
    const a = instance();
    const b = instance();
    expect((await request(a.url).post('/flaky').set('Idempotency-Key', 'f-1')).status).toBe(503);
    // The release is on its way to Redis as the 503 goes out; a retry that overtakes it on a loaded
    // machine is told 409 (in progress) and retries.
    await eventually(async () => {
      const retry = await request(b.url).post('/flaky').set('Idempotency-Key', 'f-1');
      expect(retry.status).toBe(201);
    });
    expect((await request(a.url).post('/flaky').set('Idempotency-Key', 'f-1')).headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(2);
  });

  it('replays a binary body byte for byte', async () => {
    const a = instance();
    const b = instance();
    await request(a.url).post('/binary').set('Idempotency-Key', 'bin-1').buffer(true).parse(bytes);
    const retry = await request(b.url).post('/binary').set('Idempotency-Key', 'bin-1').buffer(true).parse(bytes);
    expect(Buffer.compare(retry.body as Buffer, BINARY)).toBe(0);
    expect(retry.headers['content-type']).toBe('application/octet-stream');
    expect(runs).toBe(1);
  });

  it('keeps one hash per key under a hash-tagged name that carries neither the key nor the caller, without Set-Cookie, for ttl', async () => {
    const a = instance({ ttl: '1h' });
    await request(a.url).post('/payments').set('X-API-Key', 'key-alice').set('Idempotency-Key', 'secret-order-42').send({ amount: 5 });
    const keys = await redis.keys(`${prefix}*`);
    expect(keys).toHaveLength(1);
    expect(keys[0]).toMatch(new RegExp(`^${prefix}idempotency:\\{[A-Za-z0-9_-]{43}\\}$`));
    expect(keys[0]).not.toContain('secret-order-42');
    expect(keys[0]).not.toContain('alice');
    const record = await redis.hgetall(keys[0]);
    expect(record.state).toBe('D');
    const kept = JSON.parse(record.result);
    expect(kept.status).toBe(201);
    expect(Buffer.from(kept.body, 'base64').toString()).toBe('{"run":1,"amount":5}');
    expect(kept.headers.map(([name]: [string]) => name)).not.toContain('set-cookie');
    expect(kept.headers.map(([name]: [string]) => name)).not.toContain('x-request-id');
    const pttl = await redis.pttl(keys[0]);
    expect(pttl).toBeGreaterThan(3_500_000);
    expect(pttl).toBeLessThanOrEqual(3_600_000);
  });

  it('holds the lock of a running request for lockTtl at most, so a crashed instance cannot keep a key for ever', async () => {
    const { logger } = recordingLogger();
    const stack = createStack({ redis: redisUrl, keyPrefix: prefix, logger, ...QUIET, idempotency: { lockTtl: '20s', storeTimeout: '2s' } });
    stacks.push(stack);
    const app = newApp();
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    app.use(stack);
    // Never answers: the instance "crashed" with the lock held.
    app.post('/hang', () => started());
    app.use(stack.errorHandler);
    const server = app.listen(0);
    servers.push(server);
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    void request(url).post('/hang').set('Idempotency-Key', 'h-1').then(
      () => undefined,
      () => undefined,
    );
    await running;
    const [key] = await redis.keys(`${prefix}*`);
    expect(await redis.hget(key, 'state')).toBe('L');
    const pttl = await redis.pttl(key);
    expect(pttl).toBeGreaterThan(15_000);
    expect(pttl).toBeLessThanOrEqual(20_000);
  });

  it('forgets a kept response after ttl: the same key then runs again', async () => {
    const a = instance({ ttl: '300ms', storeTimeout: '2s' });
    await pay(a.url, 'short');
    const [key] = await redis.keys(`${prefix}*`);
    await eventually(async () => expect(await redis.exists(key)).toBe(0), 5000);
    const again = await pay(a.url, 'short');
    expect(again.headers['idempotent-replayed']).toBeUndefined();
    expect(again.body.run).toBe(2);
  });

  it('spends credits once for a POST retried on two instances', async () => {
    const config: StackConfig = { credits: { cost: 5, storeTimeout: '2s' } };
    const a = instance({ storeTimeout: '2s' }, config);
    const b = instance({ storeTimeout: '2s' }, config);
    await a.stack.middleware.credits.grant('alice', 20);
    const send = (url: string) => request(url).post('/payments').set('X-API-Key', 'key-alice').set('Idempotency-Key', 'pay-c').send({ amount: 5 });
    expect((await send(a.url)).status).toBe(201);
    const retries = await Promise.all([send(b.url), send(a.url), send(b.url)]);
    for (const r of retries) expect([r.status, r.headers['idempotent-replayed']]).toEqual([201, 'true']);
    expect(await b.stack.middleware.credits.balance('alice')).toBe(15);
    expect(runs).toBe(1);
  });

});

describeRedis('idempotency when Redis accepts connections but never answers', () => {
  let silent: NetServer;
  let port: number;
  let runs: number;
  const sockets: Socket[] = [];
  const stacks: Stack[] = [];
  beforeAll(async () => {
    // Reads and discards but never answers: a hung Redis.
    silent = createServer((socket) => {
      sockets.push(socket);
      socket.resume();
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    port = (silent.address() as AddressInfo).port;
  });
  afterAll(() => {
    for (const socket of sockets) socket.destroy();
    return new Promise<void>((resolve) => silent.close(() => resolve()));
  });
  beforeEach(() => {
    runs = 0;
  });
  afterEach(async () => {
    // quit() would wait for an answer that never comes.
    for (const stack of stacks) (stack.stores as RedisStores).connection.client.disconnect();
    await closeAll(stacks);
  });

  function hungApp(options: IdempotencyOptions) {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ redis: `redis://127.0.0.1:${port}`, keyPrefix: uniquePrefix(), logger, ...QUIET, idempotency: options });
    stacks.push(stack);
    const app = newApp();
    app.use(stack);
    app.post('/payments', (_req, res) => {
      runs++;
      res.status(201).json({ run: runs });
    });
    app.use(stack.errorHandler);
    return { app, lines };
  }

  it("runs requests without idempotency (onStoreError: 'open'), logging the outage once", async () => {
    const { app, lines } = hungApp({ storeTimeout: '100ms' });
    for (let i = 0; i < 3; i++) expect((await request(app).post('/payments').set('Idempotency-Key', 'down-1').send({})).status).toBe(201);
    expect(runs).toBe(3);
    expect(lines.filter((l) => l.code === 'ERR_IDEMPOTENCY_STORE_UNAVAILABLE')).toHaveLength(1);
  });

  it("refuses keyed requests with 503 (onStoreError: 'closed')", async () => {
    const { app } = hungApp({ storeTimeout: '100ms', onStoreError: 'closed' });
    const res = await request(app).post('/payments').set('Idempotency-Key', 'down-2').send({});
    expect(res.status).toBe(503);
    expect(res.body.error.code).toBe('SERVICE_UNAVAILABLE');
    expect(runs).toBe(0);
  });
});

describeRedis('idempotency stores: the memory store and the Lua scripts decide alike', () => {
  let redisStores: RedisStores;
  let stores: Array<[string, IdempotencyStore]>;

  beforeAll(() => {
    redisStores = new RedisStores(redisUrl as string, { logger: recordingLogger().logger, prefix: uniquePrefix() });
  });
  afterAll(() => redisStores.close());
  beforeEach(() => {
    const factory = idempotencyStore({ namespace: `diff-${Math.random().toString(36).slice(2)}` });
    stores = [
      ['memory', new MemoryStores().create(factory)],
      ['redis', redisStores.create(factory)],
    ];
  });

  const outcome = { status: 201, headers: [['location', '/p/1']] as Array<[string, string]>, body: Buffer.from('{"id":1}') };

  // Each step: the call and what it must give, on both stores, in order.
  const steps: Array<[string, (s: IdempotencyStore) => Promise<unknown>, unknown]> = [
    ['the first request locks a free key', (s) => s.begin('k', 'fp', 'o1', 60_000), { outcome: 'acquired' }],
    ['a duplicate meets the lock', (s) => s.begin('k', 'fp', 'o2', 60_000), { outcome: 'in-progress' }],
    ['another payload meets a mismatch', (s) => s.begin('k', 'other', 'o2', 60_000), { outcome: 'mismatch' }],
    ['a resent begin of the holder acquires again', (s) => s.begin('k', 'fp', 'o1', 60_000), { outcome: 'acquired' }],
    ['another owner cannot release it', (s) => s.release('k', 'o2'), false],
    ['another owner cannot complete it', (s) => s.complete('k', 'fp', 'o2', { status: 200, body: Buffer.from('x'), headers: [] }, 60_000), false],
    ['the holder completes it', (s) => s.complete('k', 'fp', 'o1', outcome, 60_000), true],
    ['a duplicate gets the outcome', (s) => s.begin('k', 'fp', 'o3', 60_000), { outcome: 'done', result: outcome }],
    ['another payload still meets a mismatch', (s) => s.begin('k', 'other', 'o3', 60_000), { outcome: 'mismatch' }],
    ['a completed key cannot be released', (s) => s.release('k', 'o1'), false],
    ['nor completed again', (s) => s.complete('k', 'fp', 'o1', { status: 500 }, 60_000), false],
    ['a second key locks', (s) => s.begin('k2', 'fp', 'o4', 60_000), { outcome: 'acquired' }],
    ['its holder releases it', (s) => s.release('k2', 'o4'), true],
    ['then it is free again', (s) => s.begin('k2', 'fp', 'o5', 60_000), { outcome: 'acquired' }],
    ['a free key takes a late outcome (its lock lapsed, nobody took it)', (s) => s.complete('k3', 'fp', 'o6', { status: 201 }, 60_000), true],
    ['which answers as completed but not replayable', (s) => s.begin('k3', 'fp', 'o7', 60_000), { outcome: 'done', result: { status: 201 } }],
  ];

  it('gives the same answer at every step', async () => {
    for (const [name, call, expected] of steps) {
      for (const [kind, store] of stores) {
        await expect(call(store).then((r) => [name, kind, r])).resolves.toEqual([name, kind, expected]);
      }
    }
  });
});
