import { createServer, type Server, type Socket } from 'node:net';
import { MemoryStores, RedisStores, StoreTimeoutError, type Stores } from '../lib/stores';
import { describeRedis, eventually, recordingLogger, redisUrl, uniquePrefix } from './helpers/app';

const backends: Array<[string, () => Stores]> = [['memory', () => new MemoryStores()]];
const url = redisUrl;
// A roomy command timeout: these tests are about what the stores keep, not a loaded machine's latency.
if (url) backends.push(['redis', () => new RedisStores(url, { logger: recordingLogger().logger, prefix: uniquePrefix(), commandTimeout: 10_000 })]);

describe.each(backends)('%s stores', (_name, make) => {
  let stores: Stores;
  beforeEach(() => {
    stores = make();
  });
  afterEach(() => stores.close());

  // Lifetimes: what must still be there has a lifetime no loaded machine outlasts within the test
  // (a minute); what must expire has 50 ms and is waited for, not slept on.
  it('key-value entries round-trip and expire', async () => {
    const kv = stores.keyValue<{ n: number }>('kv');
    await kv.set('a', { n: 1 });
    await kv.set('b', { n: 2 }, 60_000);
    await kv.set('c', { n: 3 }, 50);
    expect(await kv.get('a')).toEqual({ n: 1 });
    expect(await kv.get('b')).toEqual({ n: 2 });
    await eventually(async () => expect(await kv.get('c')).toBeUndefined());
    expect(await kv.get('b')).toEqual({ n: 2 });
    await kv.delete('a');
    expect(await kv.get('a')).toBeUndefined();
  });

  it('counters count within a window and restart after it', async () => {
    const counter = stores.counter('c');
    expect((await counter.increment('k', 60_000)).count).toBe(1);
    const second = await counter.increment('k', 60_000, 2);
    expect(second.count).toBe(3);
    expect(second.resetAt).toBeGreaterThan(Date.now());
    expect(second.resetAt).toBeLessThanOrEqual(Date.now() + 60_000);
    // A 50 ms window: counting again starts at 1 once it is over (each look counts, so it is 2, 3… until then).
    expect((await counter.increment('short', 50)).count).toBe(1);
    await eventually(async () => expect((await counter.increment('short', 50)).count).toBe(1));
  });

  it('expiring sets drop members when their time is up', async () => {
    const set = stores.expiringSet('s');
    await set.add('10.0.0.1');
    await set.add('10.0.0.2', 60_000);
    await set.add('10.0.0.3', 50);
    expect(await set.has('10.0.0.2')).toBe(true);
    await eventually(async () => expect(await set.has('10.0.0.3')).toBe(false));
    expect((await set.members()).map((m) => m.member).sort()).toEqual(['10.0.0.1', '10.0.0.2']);
    await set.remove('10.0.0.1');
    expect(await set.has('10.0.0.1')).toBe(false);
  });

  it('pub/sub delivers to subscribers until they unsubscribe', async () => {
    const got: string[] = [];
    const off = await stores.pubsub.subscribe('ch', (m) => got.push(m));
    await stores.pubsub.publish('ch', 'one');
    await eventually(() => expect(got).toEqual(['one']));
    await off();
    // A second subscriber on the channel: once it has 'two', the first would have had it too.
    const later: string[] = [];
    const offLater = await stores.pubsub.subscribe('ch', (m) => later.push(m));
    await stores.pubsub.publish('ch', 'two');
    await eventually(() => expect(later).toEqual(['two']));
    expect(got).toEqual(['one']);
    await offLater();
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
    // The 100 ms deadline is what answered (the error says so), however slow the machine.
    await expect(stores.counter('c').increment('k', 1000)).rejects.toThrow(new StoreTimeoutError(100));
    await expect(stores.counter('c').increment('k', 1000)).rejects.toBeInstanceOf(StoreTimeoutError);
    expect(lines.filter((l) => l.code === 'ERR_REDIS_UNAVAILABLE')).toHaveLength(1);
    stores.connection.client.disconnect();
  });

  it('runs scripts again after SCRIPT FLUSH (EVALSHA answered NOSCRIPT, so EVAL is sent)', async () => {
    const stores = new RedisStores(redisUrl as string, { logger: recordingLogger().logger, prefix: uniquePrefix(), commandTimeout: 10_000 });
    const counter = stores.counter('c');
    expect((await counter.increment('k', 10_000)).count).toBe(1);
    await stores.connection.client.script('FLUSH');
    expect((await counter.increment('k', 10_000)).count).toBe(2);
    expect((await counter.increment('k', 10_000)).count).toBe(3);
    await stores.close();
  });
});
