import { createServer, type Server, type Socket } from 'node:net';
import { MemoryStores, RedisStores, StoreTimeoutError, type Stores } from '../lib/stores';
import { describeRedis, eventually, recordingLogger, redisUrl, uniquePrefix } from './helpers/app';

const backends: Array<[string, () => Stores]> = [['memory', () => new MemoryStores()]];
const url = redisUrl;
if (url) backends.push(['redis', () => new RedisStores(url, { logger: recordingLogger().logger, prefix: uniquePrefix() })]);

describe.each(backends)('%s stores', (_name, make) => {
  let stores: Stores;
  beforeEach(() => {
    stores = make();
  });
  afterEach(() => stores.close());

  // Lifetimes are long enough for a loaded machine to read an entry before it expires; the
  // expiry itself is waited for as a condition.
  it('key-value entries round-trip and expire', async () => {
    const kv = stores.keyValue<{ n: number }>('kv');
    await kv.set('a', { n: 1 });
    await kv.set('b', { n: 2 }, 500);
    expect(await kv.get('a')).toEqual({ n: 1 });
    expect(await kv.get('b')).toEqual({ n: 2 });
    await eventually(async () => expect(await kv.get('b')).toBeUndefined());
    await kv.delete('a');
    expect(await kv.get('a')).toBeUndefined();
  });

  it('counters count within a window and restart after it', async () => {
    const counter = stores.counter('c');
    expect((await counter.increment('k', 1000)).count).toBe(1);
    const second = await counter.increment('k', 1000, 2);
    expect(second.count).toBe(3);
    expect(second.resetAt).toBeGreaterThan(Date.now() - 1000);
    await eventually(async () => expect((await counter.increment('k', 1000, 0)).count).toBe(0));
    expect((await counter.increment('k', 1000)).count).toBe(1);
  });

  it('expiring sets drop members when their time is up', async () => {
    const set = stores.expiringSet('s');
    await set.add('10.0.0.1');
    await set.add('10.0.0.2', 500);
    expect(await set.has('10.0.0.2')).toBe(true);
    await eventually(async () => expect(await set.has('10.0.0.2')).toBe(false));
    expect((await set.members()).map((m) => m.member)).toEqual(['10.0.0.1']);
    await set.remove('10.0.0.1');
    expect(await set.has('10.0.0.1')).toBe(false);
  });

  it('pub/sub delivers to subscribers until they unsubscribe', async () => {
    const got: string[] = [];
    const off = await stores.pubsub.subscribe('ch', (m) => got.push(m));
    await stores.pubsub.publish('ch', 'one');
    await eventually(() => expect(got).toEqual(['one']));
    await off();
    await stores.pubsub.publish('ch', 'two');
    await new Promise((r) => setTimeout(r, 50));
    expect(got).toEqual(['one']);
  });
});

describe('memory stores stay bounded', () => {
  it('evicts the least recently used keys beyond maxKeys', async () => {
    const counter = new MemoryStores().counter('c', { maxKeys: 100 });
    for (let i = 0; i < 1000; i++) await counter.increment(`k${i}`, 60_000);
    expect((await counter.increment('k999', 60_000)).count).toBe(2);
    expect((await counter.increment('k0', 60_000)).count).toBe(1);
  });
});

describeRedis('redis connection', () => {
  let silent: Server;
  let port: number;
  const sockets: Socket[] = [];
  beforeAll(async () => {
    // Accepts connections and never answers: a hung Redis.
    silent = createServer((socket) => sockets.push(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    port = (silent.address() as { port: number }).port;
  });
  afterAll(() => {
    for (const socket of sockets) socket.destroy();
    return new Promise<void>((resolve) => silent.close(() => resolve()));
  });

  it('fails a command within the timeout when Redis accepts but never answers, and logs the outage once', async () => {
    const { logger, lines } = recordingLogger();
    const stores = new RedisStores(`redis://127.0.0.1:${port}`, { logger, commandTimeout: 100 });
    const started = Date.now();
    await expect(stores.counter('c').increment('k', 1000)).rejects.toBeInstanceOf(StoreTimeoutError);
    await expect(stores.counter('c').increment('k', 1000)).rejects.toBeInstanceOf(StoreTimeoutError);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(lines.filter((l) => l.code === 'ERR_REDIS_UNAVAILABLE')).toHaveLength(1);
    stores.connection.client.disconnect();
  });

  it('runs scripts again after SCRIPT FLUSH (EVALSHA answered NOSCRIPT, so EVAL is sent)', async () => {
    const stores = new RedisStores(redisUrl as string, { logger: recordingLogger().logger, prefix: uniquePrefix() });
    const counter = stores.counter('c');
    expect((await counter.increment('k', 10_000)).count).toBe(1);
    await stores.connection.client.script('FLUSH');
    expect((await counter.increment('k', 10_000)).count).toBe(2);
    expect((await counter.increment('k', 10_000)).count).toBe(3);
    await stores.close();
  });
});
