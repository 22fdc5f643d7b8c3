/**
 * Rate-limit benchmark (not a test): `npm run bench:ratelimit`.
 *
 * 1. Decisions per second through the Redis store (one EVALSHA each) with 100 calls in flight on
 *    one connection, beside a raw PING loop on the same connection in the same run, and beside
 *    rate-limit-redis and rate-limiter-flexible when they are installed.
 * 2. Memory store: heap for 1,000,000 distinct clients, and that it stays flat beyond `maxKeys`.
 *
 * Starts its own redis-server on a free port unless REDIS_URL is set. RL_BENCH_MS sets the length
 * of one measurement (default 2000 ms); RL_BENCH_ROUNDS the rounds whose median is printed (3).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import Redis from 'ioredis';
import winston from 'winston';
import { RedisStores } from '../lib/stores/redis';
import { MemoryRateLimitStore, rateLimitStore, type RateLimitPolicy, type RateLimitStore } from '../lib/stores/rate-limit-store';

const IN_FLIGHT = 100;
const DURATION_MS = Number(process.env.RL_BENCH_MS ?? 2000);
const ROUNDS = Number(process.env.RL_BENCH_ROUNDS ?? 3);
const CLIENTS = 10_000;
// High limits: every decision admits, the costlier path (reads and writes).
const policy = (algorithm: RateLimitPolicy['algorithm']): RateLimitPolicy => ({ algorithm, limit: 1_000_000, windowMs: 60_000, burst: 1_000_000, daily: 0 });

type Op = (i: number) => Promise<unknown>;

async function main(): Promise<void> {
  const { url, child } = await redisForBench();
  const logger = winston.createLogger({ silent: true });
  const prefix = `bench:${process.pid}:`;
  const stores = new RedisStores(url, { logger, prefix, commandTimeout: 5_000 });
  const client = stores.connection.client as Redis;
  await client.ping();
  const redisVersion = /redis_version:(\S+)/.exec(await client.info('server'))?.[1];

  const ours = (algorithm: RateLimitPolicy['algorithm'], daily = 0): Op => {
    const store: RateLimitStore = stores.create(rateLimitStore({ namespace: `${algorithm}-${daily}` }));
    const p = { ...policy(algorithm), daily };
    return (i) => store.consume(`ip:10.0.${(i % CLIENTS) >> 8}.${i % 256}`, p, 1, 5_000) as Promise<unknown>;
  };
  const ops: Array<[string, Op]> = [
    ['raw PING (same connection)', () => client.ping()],
    ['sliding-window (ours)', ours('sliding-window')],
    ['sliding-window + daily quota (ours)', ours('sliding-window', 1_000_000_000)],
    ['token-bucket (ours)', ours('token-bucket')],
    ['fixed-window (ours)', ours('fixed-window')],
    ...(await competitors(client, prefix)),
  ];

  const results = new Map<string, Sample[]>();
  for (const [, op] of ops) await measure(client, op, 300); // warm-up: scripts loaded, JIT settled
  for (let round = 0; round < ROUNDS; round++) {
    // Interleaved, so drift on a shared machine hits every contender alike.
    for (const [name, op] of ops) results.set(name, [...(results.get(name) ?? []), await measure(client, op, DURATION_MS)]);
  }
  const ping = median((results.get('raw PING (same connection)') ?? []).map((r) => r.rate));
  console.log(`\nRedis ${redisVersion} at ${url}; ${IN_FLIGHT} calls in flight on one ioredis connection; median of ${ROUNDS} x ${DURATION_MS} ms; Node ${process.version}; load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}\n`);
  console.log(pad('contender', 40) + pad('ops/s', 10) + pad('x PING', 8) + pad('client CPU', 14) + 'Redis CPU (per op)');
  for (const [name] of ops) {
    const samples = results.get(name) ?? [];
    const rate = median(samples.map((r) => r.rate));
    console.log(
      pad(name, 40) +
        pad(String(Math.round(rate)), 10) +
        pad((rate / ping).toFixed(2), 8) +
        pad(`${median(samples.map((r) => r.clientUs)).toFixed(1)} µs`, 14) +
        `${median(samples.map((r) => r.serverUs)).toFixed(1)} µs`,
    );
  }
  const sliding = median((results.get('sliding-window (ours)') ?? []).map((r) => r.rate)) / ping;
  console.log(`\nsliding window / raw PING = ${sliding.toFixed(2)} (target >= 0.85): ${sliding >= 0.85 ? 'met' : 'NOT met'}`);

  await cleanup(client, prefix);
  await stores.close();
  if (child) child.kill('SIGTERM');

  memoryBench();
}

async function competitors(client: Redis, prefix: string): Promise<Array<[string, Op]>> {
  const out: Array<[string, Op]> = [];
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { RedisStore } = require('rate-limit-redis') as typeof import('rate-limit-redis');
    const store = new RedisStore({
      prefix: `${prefix}rlr:`,
      sendCommand: (...args: string[]) => client.call(args[0], ...args.slice(1)) as Promise<number>,
    });
    store.init({ windowMs: 60_000 } as Parameters<typeof store.init>[0]);
    out.push(['rate-limit-redis (fixed window)', (i) => store.increment(`ip:10.0.${(i % CLIENTS) >> 8}.${i % 256}`)]);
  } catch (err) {
    console.log(`rate-limit-redis not measured: ${(err as Error).message}`);
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { RateLimiterRedis } = require('rate-limiter-flexible') as typeof import('rate-limiter-flexible');
    const limiter = new RateLimiterRedis({ storeClient: client, keyPrefix: `${prefix}rlf`, points: 1_000_000, duration: 60 });
    out.push(['rate-limiter-flexible (fixed window)', (i) => limiter.consume(`ip:10.0.${(i % CLIENTS) >> 8}.${i % 256}`)]);
  } catch (err) {
    console.log(`rate-limiter-flexible not measured: ${(err as Error).message}`);
  }
  return out;
}

interface Sample {
  rate: number;
  /** CPU time of this process per operation. */
  clientUs: number;
  /** CPU time of redis-server per operation (INFO cpu). */
  serverUs: number;
}

async function measure(client: Redis, op: Op, durationMs: number): Promise<Sample> {
  let done = 0;
  const serverBefore = await serverCpuUs(client);
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const end = started + durationMs;
  const worker = async (w: number): Promise<void> => {
    for (let i = w; performance.now() < end; i += IN_FLIGHT) {
      await op(i);
      done++;
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, (_, w) => worker(w)));
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const serverUs = (await serverCpuUs(client)) - serverBefore;
  return { rate: done / seconds, clientUs: (cpu.user + cpu.system) / done, serverUs: serverUs / done };
}

async function serverCpuUs(client: Redis): Promise<number> {
  const info = await client.info('cpu');
  const field = (name: string): number => Number(new RegExp(`${name}:([\\d.]+)`).exec(info)?.[1] ?? 0);
  return (field('used_cpu_user') + field('used_cpu_sys')) * 1e6;
}

function memoryBench(): void {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const used = (): number => {
    gc();
    gc();
    const m = process.memoryUsage();
    return m.heapUsed + m.arrayBuffers;
  };
  const p = policy('sliding-window');
  const daily = { ...p, daily: 10_000 };
  const fill = (store: MemoryRateLimitStore, from: number, count: number, pol: RateLimitPolicy): number => {
    const started = performance.now();
    for (let i = from; i < from + count; i++) store.consume(`ip:10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, pol, 1);
    return count / ((performance.now() - started) / 1000);
  };

  console.log('\nMemory store (ids like "ip:10.1.2.3"):');
  let before = 0;
  let store: MemoryRateLimitStore | undefined;
  let rate = 0;
  for (const [label, pol] of [
    ['window state only', p],
    ['window + daily state', daily],
  ] as const) {
    before = used();
    store = new MemoryRateLimitStore(1_000_000);
    rate = fill(store, 0, 1_000_000, pol);
    const million = (used() - before) / 1e6;
    console.log(`  1,000,000 distinct clients (${label}): ${million.toFixed(1)} MB (target <= 150 MB): ${million <= 150 ? 'met' : 'NOT met'}; ${store.size} kept; ${Math.round(rate)} decisions/s while filling`);
    store = undefined;
  }

  before = used();
  store = new MemoryRateLimitStore(100_000);
  fill(store, 0, 1_000_000, daily);
  const afterOne = (used() - before) / 1e6;
  rate = fill(store, 1_000_000, 1_000_000, daily);
  const afterTwo = (used() - before) / 1e6;
  console.log(`  maxKeys 100,000: after 1,000,000 clients ${afterOne.toFixed(1)} MB, after 2,000,000 ${afterTwo.toFixed(1)} MB; ${store.size} kept (bounded); ${Math.round(rate)} decisions/s with eviction`);
}

async function redisForBench(): Promise<{ url: string; child?: ChildProcess }> {
  if (process.env.REDIS_URL) return { url: process.env.REDIS_URL };
  const port = await new Promise<number>((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
  const dir = mkdtempSync(join(tmpdir(), 'perimeter-bench-redis-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  child.on('error', (err) => {
    console.error(`could not start redis-server (${err.message}); set REDIS_URL`);
    process.exit(1);
  });
  const url = `redis://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on('error', () => undefined);
    try {
      await probe.connect();
      await probe.ping();
      probe.disconnect();
      return { url, child };
    } catch {
      probe.disconnect();
      if (i > 200) throw new Error(`redis-server did not start at ${url}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function cleanup(client: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) await client.del(...keys);
  } while (cursor !== '0');
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function pad(text: string, width: number): string {
  return text.length >= width ? `${text} ` : text + ' '.repeat(width - text.length);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
