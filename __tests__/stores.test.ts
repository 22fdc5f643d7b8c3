import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import Redis from 'ioredis';
import { MemoryStores, RedisStores, StoreTimeoutError, StoreUnavailableError, type Stores } from '../lib/stores';
import { auditStreamStore } from '../lib/stores/audit-chain-store';
import { breakerStateStore } from '../lib/stores/breaker-store';
import { creditsStore } from '../lib/stores/credits-store';
import { flagsStore } from '../lib/stores/flags-store';
import { ipBlocklistStore } from '../lib/stores/ip-blocklist';
import type { Logger } from '../lib/logger';
import { StoreOutage } from '../lib/stores/outage';
import { rateLimitStore } from '../lib/stores/rate-limit-store';
import { describeRedis, eventually, recordingLogger, redisUrl, uniquePrefix } from './helpers/app';
import { hasRedisServer, OwnRedisServer } from './helpers/redis-server';

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

  it('fails a command within the timeout when Redis accepts but never answers, and logs the outage once it lasted a second', async () => {
    const { logger, lines } = recordingLogger();
    const stores = new RedisStores(`redis://127.0.0.1:${port}`, { logger, commandTimeout: 100 });
    // The 100 ms deadline is what answered (the error says so), however slow the machine.
    await expect(stores.counter('c').increment('k', 1000)).rejects.toThrow(new StoreTimeoutError(100));
    await expect(stores.counter('c').increment('k', 1000)).rejects.toBeInstanceOf(StoreTimeoutError);
    // Failures are logged as an outage once they have lasted a second, then only once.
    await eventually(async () => {
      await expect(stores.counter('c').increment('k', 1000)).rejects.toBeInstanceOf(StoreTimeoutError);
      expect(lines.filter((l) => l.code === 'ERR_REDIS_UNAVAILABLE')).toHaveLength(1);
    }, 5000);
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

describe('StoreOutage: one log line per outage, one per recovery', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  function outage() {
    const lines: Array<{ level: string; message: string; meta: Record<string, unknown> }> = [];
    const record = (level: string) => (message: string, meta: Record<string, unknown>) => lines.push({ level, message, meta });
    const logger = { warn: record('warn'), info: record('info') } as unknown as Logger;
    const tracker = new StoreOutage({ logger, down: { code: 'DOWN', message: 'store down' }, up: { code: 'UP', message: 'store back' }, fields: { limiter: 'x' } });
    return { tracker, lines };
  }

  it('takes the fail mode from the first failure and lets one probe a second through', () => {
    const { tracker } = outage();
    expect(tracker.mayTry()).toBe(true);
    tracker.failed(new Error('timeout'));
    expect(tracker.down).toBe(true);
    expect(tracker.mayTry()).toBe(false);
    jest.advanceTimersByTime(1000);
    expect(tracker.mayTry()).toBe(true);
    expect(tracker.mayTry()).toBe(false);
    tracker.answered();
    expect([tracker.down, tracker.mayTry()]).toEqual([false, true]);
  });

  it('does not log failures that end within a second, such as one slow answer (#11)', () => {
    const { tracker, lines } = outage();
    tracker.failed(new Error('timeout'));
    jest.advanceTimersByTime(900);
    tracker.failed(new Error('timeout'));
    tracker.answered();
    expect(lines).toEqual([]);
  });

  it('logs an outage once its failures lasted a second, and its end once (#11)', () => {
    const { tracker, lines } = outage();
    tracker.failed(new Error('timeout'));
    jest.advanceTimersByTime(1000);
    for (let i = 0; i < 5; i++) tracker.failed(new Error('refused'));
    tracker.answered();
    tracker.answered();
    expect(lines).toEqual([
      { level: 'warn', message: 'store down', meta: { code: 'DOWN', limiter: 'x', err: { name: 'Error', message: 'refused' } } },
      { level: 'info', message: 'store back', meta: { code: 'UP', limiter: 'x' } },
    ]);
  });

  it('starts no new outage for a call made before the store answered again (it waited out its timeout across the recovery) (#11)', () => {
    const { tracker, lines } = outage();
    const before = performance.now();
    tracker.failed(new Error('timeout'), before);
    jest.advanceTimersByTime(1500);
    tracker.failed(new Error('timeout'));
    tracker.answered();
    jest.advanceTimersByTime(1500);
    tracker.failed(new Error('timeout'), before + 1000);
    expect(tracker.down).toBe(false);
    expect(lines.map((l) => l.meta.code)).toEqual(['DOWN', 'UP']);
  });
});

/** Resolves once the stores' connection is ready and has measured Redis's clock (the TIME it sends on connecting is answered before the PING). */
async function connected(stores: RedisStores): Promise<void> {
  const client = stores.connection.client;
  if (client.status !== 'ready') await once(client, 'ready');
  await client.ping();
}

describeRedis('redis connection deadlines', () => {
  let silent: Server;
  let port: number;
  const sockets: Socket[] = [];
  beforeAll(async () => {
    silent = createServer((socket) => {
      sockets.push(socket);
      socket.resume();
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    port = (silent.address() as { port: number }).port;
  });
  afterAll(() => {
    for (const socket of sockets) socket.destroy();
    return new Promise<void>((resolve) => silent.close(() => resolve()));
  });

  it('cuts a connection that stays silent while calls time out, and reconnects by itself (#11)', async () => {
    const stores = new RedisStores(`redis://127.0.0.1:${port}`, { logger: recordingLogger().logger, commandTimeout: 100 });
    const client = stores.connection.client;
    const events: string[] = [];
    for (const event of ['close', 'reconnecting']) client.on(event, () => events.push(event));
    const counter = stores.counter('c');
    try {
      // Calls keep timing out; after 1 s without a single answer (5 x 100 ms, at least 1 s) the
      // connection is cut and ioredis opens a new one.
      await eventually(async () => {
        await counter.increment('k', 1000).catch(() => undefined);
        expect(events).toEqual(expect.arrayContaining(['close', 'reconnecting']));
      }, 5000);
    } finally {
      client.disconnect();
    }
  });

  it('does not fail a call whose answer arrived while the event loop was busy past its deadline (#11)', async () => {
    const stores = new RedisStores(redisUrl as string, { logger: recordingLogger().logger, prefix: uniquePrefix(), commandTimeout: 50 });
    try {
      await connected(stores);
      const pending = stores.connection.run(() => stores.connection.client.ping());
      // Redis answers within a millisecond; the loop is busy for twice the timeout, so the
      // deadline sweep and the answer are due together.
      const until = performance.now() + 100;
      while (performance.now() < until);
      await expect(pending).resolves.toBe('PONG');
    } finally {
      await stores.close();
    }
  });
});

const describeOwnRedis = redisUrl && hasRedisServer ? describe : describe.skip;

// Against a private server: CLIENT PAUSE and SIGKILL must not disturb the other suites' Redis.
describeOwnRedis('stores when Redis stalls: a call that timed out never takes effect later', () => {
  let server: OwnRedisServer;
  let admin: Redis;
  let stores: RedisStores;
  let prefix: string;
  const listeners: Redis[] = [];
  beforeAll(async () => {
    server = await OwnRedisServer.start();
    admin = new Redis(server.url);
  });
  afterAll(async () => {
    admin.disconnect();
    await server.stop();
  });
  beforeEach(async () => {
    prefix = uniquePrefix();
    stores = new RedisStores(server.url, { logger: recordingLogger().logger, prefix, commandTimeout: 100 });
    await connected(stores);
  });
  afterEach(async () => {
    for (const sub of listeners.splice(0)) sub.disconnect();
    await stores.close();
  });

  // Each test first makes the same call once with Redis running, so the script is loaded and the
  // call held by the pause is the script itself (not a NOSCRIPT answer that writes nothing). Those
  // calls have the stores' 100 ms timeout too, which a loaded machine can miss: they are repeated
  // until one is answered (each is safe to repeat).
  function settled<T>(call: () => Promise<T>): Promise<T> {
    let result: T;
    return eventually(async () => {
      result = await call();
    }, 5000).then(() => result);
  }

  /**
   * Runs `call` while Redis holds every write for 300 ms (three times the stores' timeout) and
   * resolves to its rejection once Redis has run whatever the call sent: the connection's next
   * command (a PING) is answered only after the ones before it.
   */
  async function duringPause(call: () => Promise<unknown>): Promise<unknown> {
    await admin.call('CLIENT', 'PAUSE', '300', 'WRITE');
    const outcome = await call().then(
      () => new Error('the call should have timed out'),
      (err: unknown) => err,
    );
    await stores.connection.client.ping();
    return outcome;
  }

  /** Collects what is published on `channel` from now on; `stop` resolves to it once a marker published after the call came through. */
  async function listen(channel: string): Promise<{ stop(): Promise<string[]> }> {
    const sub = new Redis(server.url);
    listeners.push(sub);
    const got: string[] = [];
    sub.on('message', (_ch: string, message: string) => got.push(message));
    await sub.subscribe(channel);
    return {
      async stop() {
        await admin.publish(channel, 'marker');
        await eventually(() => expect(got).toContain('marker'));
        return got.filter((m) => m !== 'marker');
      },
    };
  }

  it('a counter increment that timed out is not counted when Redis resumes (#11)', async () => {
    const counter = stores.counter('c');
    await settled(() => counter.increment('warm', 60_000));
    expect(await duringPause(() => counter.increment('k', 60_000))).toBeInstanceOf(StoreTimeoutError);
    expect(await admin.exists(`${prefix}c:{k}`)).toBe(0);
    expect((await counter.increment('k', 60_000)).count).toBe(1);
  });

  it('a key-value write that timed out does not land over a newer one (#11)', async () => {
    const kv = stores.keyValue<string>('kv');
    await settled(() => kv.set('k', 'old'));
    expect(await duringPause(() => kv.set('k', 'stale'))).toBeInstanceOf(StoreTimeoutError);
    expect(await kv.get('k')).toBe('old');
  });

  it('a rate-limit decision that timed out does not count when Redis resumes (#11)', async () => {
    const limiter = stores.create(rateLimitStore({ namespace: 'stall' }));
    const policy = { algorithm: 'fixed-window', limit: 2, windowMs: 60_000, burst: 2, daily: 5 } as const;
    await settled(async () => limiter.consume('ip:warm', policy, 1, 1000));
    expect(await duringPause(() => limiter.consume('ip:1', policy, 1, 100) as Promise<unknown>)).toBeInstanceOf(StoreTimeoutError);
    expect(await admin.keys(`${prefix}rl:stall:{ip:1}*`)).toEqual([]);
    // The client still has its whole window and its whole day.
    expect(await limiter.consume('ip:1', policy, 1, 1000)).toMatchObject({ outcome: 'allowed', remaining: 1, dailyRemaining: 4 });
  });

  it('a credits reservation that timed out is not taken when Redis resumes (#11)', async () => {
    const credits = stores.create(creditsStore());
    await settled(() => credits.set('ann', 10));
    await settled(() => credits.reserve('warm', 1, 5, 'r0', 'req-0', 1000));
    expect(await duringPause(() => credits.reserve('ann', 4, 0, 'r1', 'req-1', 100))).toBeInstanceOf(StoreTimeoutError);
    expect(await credits.balance('ann', 0)).toBe(10);
    expect(await admin.keys(`${prefix}credits:{ann}:r:*`)).toEqual([]);
    expect((await credits.history('ann')).map((e) => e.reason)).toEqual(['set']);
  });

  it('an IP block that timed out is neither stored nor announced when Redis resumes (#11)', async () => {
    const blocklist = stores.create(ipBlocklistStore());
    await blocklist.whenReady();
    await settled(() => blocklist.block('198.51.100.1', 60_000));
    const announcements = await listen(`${prefix}ipFilter:blocks`);
    expect(await duringPause(() => blocklist.block('198.51.100.7', 60_000))).toBeInstanceOf(StoreTimeoutError);
    expect(await admin.zscore(`${prefix}ipFilter:{blocks}`, '198.51.100.7')).toBeNull();
    try {
      expect(await announcements.stop()).toEqual([]);
    } finally {
      await blocklist.close();
    }
  });

  it('a breaker announcement that timed out does not override the state recorded after it (#11)', async () => {
    const shared = stores.create(breakerStateStore());
    const recorded = await settled(() => shared.announce('pay', 'OPEN', 30_000, 'instance-a', 0));
    expect(recorded).toMatchObject({ applied: true });
    const gen = (recorded as { gen: number }).gen;
    expect(await duringPause(() => shared.announce('pay', 'CLOSED', 0, 'instance-a', gen))).toBeInstanceOf(StoreTimeoutError);
    expect(await shared.load('pay')).toMatchObject({ state: 'OPEN', gen });
  });

  it('a flag write that timed out is neither stored nor announced when Redis resumes (#11)', async () => {
    const flags = stores.create(flagsStore());
    await settled(() => flags.set('new-ui', '{"enabled":true}'));
    const announcements = await listen(`${prefix}flags:changed`);
    expect(await duringPause(() => flags.set('new-ui', '{"enabled":false}'))).toBeInstanceOf(StoreTimeoutError);
    expect(await flags.load()).toEqual({ 'new-ui': '{"enabled":true}' });
    expect(await announcements.stop()).toEqual([]);
  });

  it('an audit append that timed out is not added when Redis resumes, so its retry writes each record once (#11)', async () => {
    const stream = stores.create(auditStreamStore({ stream: 'audit' }));
    const entries = [{ event: 'GAME_CREATED', json: '{"n":1}' }, { event: 'GAME_CREATED', json: '{"n":2}' }];
    await settled(() => stream.append([{ event: 'GAME_CREATED', json: '{"n":0}' }], 'batch-0', undefined, 1000));
    expect(await duringPause(() => stream.append(entries, 'batch-1', undefined, 100))).toBeInstanceOf(StoreTimeoutError);
    expect(await admin.xlen(stream.key)).toBe(1);
    expect(await stream.append(entries, 'batch-1', undefined, 1000)).toEqual({ status: 'ok' });
    expect(await admin.xlen(stream.key)).toBe(3);
  });

  it('keeps working when Redis\'s clock runs ahead of its estimate: a fresh call refused as late is sent again (#11)', async () => {
    // A roomy timeout: this is about the clock, and a loaded machine must not time the calls out.
    await stores.close();
    stores = new RedisStores(server.url, { logger: recordingLogger().logger, prefix, commandTimeout: 2000 });
    await connected(stores);
    const counter = stores.counter('c');
    // As if Redis's clock stepped a minute forward since it was measured.
    (stores.connection as unknown as { clockOffset: number }).clockOffset -= 60_000;
    expect((await counter.increment('k', 60_000)).count).toBe(1);
    expect((await counter.increment('k', 60_000)).count).toBe(2);
  });

  it('refuses commands at once while a connection that was up is reconnecting, and none of them runs later (#11)', async () => {
    const counter = stores.counter('c');
    await server.stop();
    await eventually(() => expect(stores.connection.client.status).not.toBe('ready'));
    // Refused (StoreUnavailableError), not queued until the timeout (that would be StoreTimeoutError).
    await expect(counter.increment('k', 60_000)).rejects.toBeInstanceOf(StoreUnavailableError);
    await server.restart();
    await eventually(async () => expect((await counter.increment('k', 60_000)).count).toBe(1), 5000);
    expect(Number(await admin.get(`${prefix}c:{k}`))).toBe(1);
  });
});
