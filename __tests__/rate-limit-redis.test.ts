import { get as httpGet, type Server } from 'node:http';
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import Redis from 'ioredis';
import request from 'supertest';
import { createStack, rateLimit, type RateLimitOptions } from '../index';
import type { RedisStores } from '../lib/stores';
import { describeRedis, eventually, newApp, recordingLogger, redisUrl, uniquePrefix } from './helpers/app';
import { hasRedisServer, OwnRedisServer } from './helpers/redis-server';

// Bursts of 400 requests through four instances: roomy on a loaded machine.
jest.setTimeout(60_000);

// The slot function ioredis's Cluster client routes with: keys in one slot can share a script.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const keySlot: (key: string) => number = require('cluster-key-slot');

interface Instance {
  server: Server;
  port: number;
  stack: ReturnType<typeof createStack>;
  lines: Array<Record<string, any>>;
}

/**
 * One app instance: its own createStack (so its own ioredis connection) on `redis`, with the
 * middleware this suite is not about left out, listening on a free port.
 */
async function startInstance(redis: string, keyPrefix: string, rateLimit: RateLimitOptions): Promise<Instance> {
  const { logger, lines } = recordingLogger();
  const stack = createStack({
    redis,
    keyPrefix,
    logger,
    rateLimit,
    requestLogger: false,
    metrics: false,
    ipFilter: false,
    sizeLimit: false,
    timeout: false,
    sanitize: false,
    auditLog: false,
    cache: false,
  });
  const app = newApp();
  app.use(stack);
  app.get('/work', (_req, res) => {
    res.send('done');
  });
  app.use(stack.errorHandler);
  const server = await new Promise<Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  return { server, port: (server.address() as AddressInfo).port, stack, lines };
}

async function stopInstance(instance: Instance, closeStores = true): Promise<void> {
  await new Promise<void>((resolve) => instance.server.close(() => resolve()));
  if (closeStores) await instance.stack.close();
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  ms: number;
}

function get(port: number, path = '/work'): Promise<Reply> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    httpGet({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, ms: performance.now() - started }));
    }).on('error', reject);
  });
}

async function keysUnder(client: Redis, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== '0');
  return keys.sort();
}

/** Redis's clock, in ms: the one the scripts decide on. */
async function redisNow(client: Redis): Promise<number> {
  const [seconds, micros] = await client.time();
  return Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
}

describeRedis('rateLimit on a shared Redis', () => {
  let client: Redis;
  beforeAll(() => {
    client = new Redis(redisUrl as string);
  });
  afterAll(() => client.quit());

  // Four app instances (each its own createStack, so its own ioredis connection) share one Redis;
  // 400 requests in flight at once against a limit of 50.
  //
  // Sliding window: the instances' clocks are skewed by -30 s, -10 s, +10 s and +30 s with a
  // one-minute window. Decided on app time, the two outer instances (60 s apart) would always
  // count in different windows and admit far more than 50 between them; the script reads Redis
  // TIME, so the skew changes nothing.
  //
  // A generous storeTimeout: on a loaded machine 400 requests in flight could exceed 100 ms, and
  // the limiter would then (rightly) fall back to its local share, which is not what this proves.
  const SKEWS = [-30_000, -10_000, 10_000, 30_000];
  it.each<[string, RateLimitOptions, boolean]>([
    ['sliding-window, app clocks skewed by up to ±30 s', { algorithm: 'sliding-window', limit: 50, window: '1m', storeTimeout: '10s' }, true],
    // Refill of 50 per hour: well under one token during the run.
    ['token-bucket', { algorithm: 'token-bucket', limit: 50, burst: 50, window: '1h', storeTimeout: '10s' }, false],
    ['fixed-window', { algorithm: 'fixed-window', limit: 50, window: '1h', storeTimeout: '10s' }, false],
  ])('%s: four instances, 400 concurrent requests, limit 50: exactly 50 admitted', async (_name, options, skewed) => {
    // A run still going 1.2 s past a minute boundary may rightly admit a 51st request under the
    // sliding window (the previous minute's 50 then weigh under 49): start clear of the boundary,
    // so that on an idle machine the exact count is what is checked.
    const intoMinute = Date.now() % 60_000;
    if (skewed && intoMinute > 55_000) await new Promise((r) => setTimeout(r, 60_100 - intoMinute));
    const prefix = uniquePrefix();
    const instances = await Promise.all(
      SKEWS.map((skew) => startInstance(redisUrl as string, prefix, skewed ? { ...options, now: () => Date.now() + skew } : options)),
    );
    try {
      const startedAt = await redisNow(client);
      const replies = await Promise.all(instances.flatMap((instance) => Array.from({ length: 100 }, () => get(instance.port))));
      const endedAt = await redisNow(client);
      const admitted = replies.filter((r) => r.status === 200).length;
      expect(replies.filter((r) => r.status === 429)).toHaveLength(400 - admitted);
      // Every instance now refuses: the count is one, shared through Redis.
      for (const instance of instances) expect((await get(instance.port)).status).toBe(429);
      const windowMs = options.algorithm === 'sliding-window' ? 60_000 : 3_600_000;
      if (options.algorithm !== 'token-bucket' && Math.floor(startedAt / windowMs) !== Math.floor(endedAt / windowMs)) {
        // A loaded machine stretched the burst over a window boundary (by Redis's clock, the one the
        // script decides on). A new fixed window starts from zero; under the sliding window the
        // previous window's 50 weigh less as the new one goes on, so at most 50 × the fraction of the
        // new window gone by more are rightly admitted. Never more.
        const allowed = options.algorithm === 'fixed-window' ? 100 : 50 + Math.ceil((50 * (endedAt % windowMs)) / windowMs);
        expect(admitted).toBeGreaterThanOrEqual(50);
        expect(admitted).toBeLessThanOrEqual(allowed);
        return;
      }
      expect(admitted).toBe(50);
      const keys = await keysUnder(client, prefix);
      expect(keys).toEqual([`${prefix}rl:stack:{ip:127.0.0.1}:w`]);
      // The state is one string of integers: "slot:curr:prev", "level:lastRefill" or "count:start".
      const state = ((await client.get(keys[0])) ?? '').split(':').map(Number);
      if (options.algorithm === 'sliding-window') expect(state[1] + state[2]).toBe(50);
      if (options.algorithm === 'fixed-window') expect(state[0]).toBe(50);
      if (options.algorithm === 'token-bucket') expect(state[0]).toBeLessThan(3_600_000); // under one token (1 token = windowMs units)
      expect(await client.pttl(keys[0])).toBeGreaterThan(0);
    } finally {
      await Promise.all(instances.map((i) => stopInstance(i)));
    }
  });

  it('keeps every key of a decision in one Cluster slot, the daily key expiring at the next UTC midnight', async () => {
    const prefix = uniquePrefix();
    // A roomy store timeout: a decision slower than 100 ms on a loaded machine would (rightly)
    // fall back to the local limiter and write no key, which is not what this test looks at.
    const instance = await startInstance(redisUrl as string, prefix, { limit: 5, daily: 100, key: () => 'customer-7', storeTimeout: '10s' });
    try {
      const res = await get(instance.port);
      expect(res.status).toBe(200);
      expect(res.headers['ratelimit-policy']).toBe('"default";q=5;w=60, "default-daily";q=100;w=86400');
      const keys = await keysUnder(client, prefix);
      expect(keys).toEqual([`${prefix}rl:stack:{custom:customer-7}:d`, `${prefix}rl:stack:{custom:customer-7}:w`]);
      expect(keySlot(keys[0])).toBe(keySlot(keys[1]));
      expect(await client.get(keys[0])).toBe(`${Math.floor(Date.now() / 86_400_000)}:1`);
      const nextMidnight = (Math.floor(Date.now() / 86_400_000) + 1) * 86_400_000;
      // The TTL is read at some instant between `asked` and `answered`: it ends at midnight then,
      // however long the round trip took (1 s of slack for PTTL's rounding and clock steps).
      const asked = Date.now();
      const ttl = await client.pttl(keys[0]);
      const answered = Date.now();
      expect(ttl).toBeGreaterThanOrEqual(nextMidnight - answered - 1_000);
      expect(ttl).toBeLessThanOrEqual(nextMidnight - asked + 1_000);
      // The window key lives two windows at most: it expires by itself.
      expect(await client.pttl(keys[1])).toBeGreaterThan(0);
      expect(await client.pttl(keys[1])).toBeLessThanOrEqual(120_000);
    } finally {
      await stopInstance(instance);
    }
  });

  it('a route-level limiter behind a Redis stack counts under its own namespace', async () => {
    const prefix = uniquePrefix();
    const { logger } = recordingLogger();
    // Roomy store timeouts: a decision slower than 100 ms would fall back to a local limiter.
    const stack = createStack({ redis: redisUrl, keyPrefix: prefix, logger, metrics: false, ipFilter: false, requestLogger: false, rateLimit: { storeTimeout: '10s' } });
    const app = newApp();
    app.use(stack);
    app.post('/login', rateLimit({ limit: 1, prefix: 'login', storeTimeout: '10s' }), (_req, res) => {
      res.send('ok');
    });
    app.use(stack.errorHandler);
    try {
      await request(app).post('/login').expect(200);
      await request(app).post('/login').expect(429);
      expect(await keysUnder(client, prefix)).toEqual([`${prefix}rl:login:{ip:127.0.0.1}:w`, `${prefix}rl:stack:{ip:127.0.0.1}:w`]);
    } finally {
      await stack.close();
    }
  });
});

const describeOwnRedis = redisUrl && hasRedisServer ? describe : describe.skip;

describeOwnRedis('rateLimit when Redis fails', () => {
  let server: OwnRedisServer;
  beforeAll(async () => {
    server = await OwnRedisServer.start();
  });
  afterAll(() => server.stop());

  it('makes one EVALSHA per decision: one round trip, the whole decision inside the script', async () => {
    // A roomy store timeout: with the default 100 ms, a decision that a loaded machine delays past
    // it counts as an outage, and the requests after it go to the local limiter without a script
    // call, so the count comes out short.
    const instance = await startInstance(server.url, uniquePrefix(), { limit: 1000, daily: 5000, storeTimeout: '10s' });
    const probe = new Redis(server.url);
    const calls = async (): Promise<Record<string, number>> => {
      const info = await probe.info('commandstats');
      const out: Record<string, number> = {};
      for (const m of info.matchAll(/cmdstat_(\w+):calls=(\d+)/g)) out[m[1]] = Number(m[2]);
      return out;
    };
    try {
      await get(instance.port); // loads the script (EVALSHA, NOSCRIPT, EVAL) once
      const before = await calls();
      await Promise.all(Array.from({ length: 20 }, () => get(instance.port)));
      const after = await calls();
      const delta = Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - (before[k] ?? 0)]).filter(([k, v]) => v !== 0 && k !== 'info'));
      // The client sent 20 EVALSHA and nothing else; the rest ran inside them (commandstats counts
      // a script's own calls): TIME, then GET and SET on the window key and on the daily key.
      expect(delta).toEqual({ evalsha: 20, time: 20, get: 40, set: 40 });
    } finally {
      probe.disconnect();
      await stopInstance(instance);
    }
  });

  it('answers within the store timeout in each fail mode while Redis is down, logs once per outage, and resumes on Redis after a restart', async () => {
    const modes = ['memory', 'closed', 'open'] as const;
    const prefix = uniquePrefix();
    // 1 s: the requests before the outage must not time out on a loaded machine (that would be an
    // outage of its own, logged and answered in the fail mode).
    const options = (mode: (typeof modes)[number]): RateLimitOptions => ({
      limit: 4,
      instances: 2,
      onStoreError: mode,
      storeTimeout: '1s',
      prefix: `fail-${mode}`,
    });
    const instances = await Promise.all(modes.map((mode) => startInstance(server.url, prefix, options(mode))));
    const [memory, closed, open] = instances;
    try {
      for (const instance of instances) {
        const res = await get(instance.port);
        expect(res.status).toBe(200);
        expect(res.headers['x-ratelimit-limit']).toBe('4');
      }

      await server.stop();

      const m = [await get(memory.port), await get(memory.port), await get(memory.port)];
      // The local limiter admits limit / instances = 2, with its own headers.
      expect(m.map((r) => r.status)).toEqual([200, 200, 429]);
      expect(m[0].headers['x-ratelimit-limit']).toBe('2');
      expect(m[0].headers['ratelimit-policy']).toBe('"default";q=2;w=60');
      const c = [await get(closed.port), await get(closed.port)];
      expect(c.map((r) => r.status)).toEqual([503, 503]);
      expect(JSON.parse(c[0].body).error.code).toBe('SERVICE_UNAVAILABLE');
      const o = [await get(open.port), await get(open.port), await get(open.port), await get(open.port), await get(open.port)];
      expect(o.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
      expect(o[0].headers['x-ratelimit-limit']).toBeUndefined();
      // A down Redis never holds a request: bounded by the 1 s store timeout (the bound here is
      // loose for a loaded test machine; without the timeout ioredis would queue for 10 s or more).
      for (const r of [...m, ...c, ...o]) expect(r.ms).toBeLessThan(3_000);

      for (const [i, instance] of instances.entries()) {
        // An outage is logged once its failures have lasted a second; each request meanwhile took the fail mode.
        await eventually(async () => {
          await get(instance.port);
          expect(instance.lines.filter((l) => l.code === 'ERR_RATE_LIMIT_STORE_UNAVAILABLE')).toHaveLength(1);
        }, 5_000);
        const outage = instance.lines.filter((l) => l.code === 'ERR_RATE_LIMIT_STORE_UNAVAILABLE');
        expect(outage).toHaveLength(1);
        expect(outage[0]).toMatchObject({ level: 'warn', fail_mode: modes[i], limiter: `fail-${modes[i]}` });
        const errors = (await instance.stack.metricsRegistry.getMetricsAsJSON()).find((x) => x.name === 'rate_limit_store_errors_total');
        expect(errors?.values[0].value).toBeGreaterThanOrEqual(1);
      }

      await server.restart();

      // No restart of the apps: each limiter probes Redis again by itself and is back on it.
      await eventually(async () => {
        const res = await get(memory.port);
        expect(res.headers['x-ratelimit-limit']).toBe('4');
      }, 15_000);
      await eventually(async () => expect((await get(closed.port)).status).toBe(200), 15_000);
      await eventually(async () => expect((await get(open.port)).headers['x-ratelimit-limit']).toBe('4'), 15_000);
      const probe = new Redis(server.url);
      expect((await probe.keys(`${prefix}*`)).sort()).toEqual([
        `${prefix}rl:fail-closed:{ip:127.0.0.1}:w`,
        `${prefix}rl:fail-memory:{ip:127.0.0.1}:w`,
        `${prefix}rl:fail-open:{ip:127.0.0.1}:w`,
      ]);
      probe.disconnect();
      for (const instance of instances) {
        expect(instance.lines.filter((l) => l.code === 'ERR_RATE_LIMIT_STORE_UNAVAILABLE')).toHaveLength(1);
        expect(instance.lines.filter((l) => l.code === 'ERR_RATE_LIMIT_STORE_RECOVERED')).toHaveLength(1);
      }
    } finally {
      await Promise.all(instances.map((i) => stopInstance(i)));
    }
  });
});

describeRedis('rateLimit when Redis accepts connections but never answers', () => {
  let silent: NetServer;
  let port: number;
  const sockets: Socket[] = [];
  beforeAll(async () => {
    // Reads and discards (so it sees the client hang up) but never answers: a hung Redis.
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

  it.each([
    ['memory', 200],
    ['closed', 503],
    ['open', 200],
  ] as const)('onStoreError %s answers %i within the store timeout', async (mode, status) => {
    const instance = await startInstance(`redis://127.0.0.1:${port}`, uniquePrefix(), { limit: 10, onStoreError: mode, storeTimeout: '100ms' });
    try {
      const first = await get(instance.port);
      expect(first.status).toBe(status);
      expect(first.ms).toBeLessThan(2_000);
      expect(first.headers['x-ratelimit-limit']).toBe(mode === 'memory' ? '10' : undefined);
      // Later requests during the outage take the fail mode at once instead of waiting out the
      // timeout again: they make no store call, so no further store error is counted.
      const second = await get(instance.port);
      expect(second.status).toBe(status);
      const errors = (await instance.stack.metricsRegistry.getMetricsAsJSON()).find((x) => x.name === 'rate_limit_store_errors_total');
      expect(errors?.values).toEqual([{ labels: {}, value: 1 }]);
    } finally {
      // quit() would wait for an answer that never comes.
      (instance.stack.stores as RedisStores).connection.client.disconnect();
      await stopInstance(instance, false);
    }
  });
});
