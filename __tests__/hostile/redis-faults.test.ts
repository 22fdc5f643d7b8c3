import { request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Request, Response } from 'express';
import Redis from 'ioredis';
import { cache, circuitBreaker, createStack, rateLimit, verifyAuditChain, type Stack } from '../../index';
import { eventually, newApp, recordingLogger, redisUrl, uniquePrefix } from '../helpers/app';
import { FaultProxy } from '../helpers/fault-proxy';
import { hasRedisServer, OwnRedisServer } from '../helpers/redis-server';

// Faults against a real Redis: stopped (SIGKILL) and restarted, paused (CLIENT PAUSE WRITE and
// ALL), flushed mid-traffic, and silent (a proxy that holds every byte, then delivers them late).
// One stack carries every middleware with a store. For each fault: each middleware follows its
// fail mode within its timeout, the outage is logged once (and its end once), everything is back
// on Redis by itself, and Redis holds no reservation, count or record the fault left behind.
//
// The server is this suite's own, behind a proxy, so stopping or pausing it disturbs no other
// suite. Durations are conditions waited for, never sleeps.

const describeFaults = redisUrl && hasRedisServer ? describe : describe.skip;

// The store timeout of every middleware here: short, yet long enough that a loaded test machine
// does not turn the time after a fault into new outages.
const STORE_TIMEOUT = '250ms';
// Below what a fault lasts here (until every middleware logged it, and PAUSE_ALL_MS) and far
// above a request's store timeouts (two at most in a row), with room for a heavily loaded machine:
// an answer inside it followed its fail mode instead of waiting out the fault.
const WITHIN_TIMEOUT_MS = 2500;
// An outage is logged once its failures lasted a second (StoreOutage): the traffic during a
// fault goes on until every middleware logged it, for at most this long (a loaded machine is slow).
const LOGGED_WITHIN_MS = 6000;
// CLIENT PAUSE ALL holds the admin connection too, so it cannot be lifted early: it lasts this long.
const PAUSE_ALL_MS = 6000;
// The lines each fault must produce, once: the connection's, each limiter's, the credits'.
const OUTAGE_LINES: Array<[string, string?]> = [
  ['ERR_REDIS_UNAVAILABLE'],
  ['ERR_RATE_LIMIT_STORE_UNAVAILABLE', 'stack'],
  ['ERR_RATE_LIMIT_STORE_UNAVAILABLE', 'open'],
  ['ERR_RATE_LIMIT_STORE_UNAVAILABLE', 'closed'],
  ['ERR_CREDITS_STORE_UNAVAILABLE'],
];
const BLOCKED = '203.0.113.66';
const LATE_BLOCK = '203.0.113.77';
const ACCOUNT = 'ann';
const INITIAL_CREDITS = 100;

interface Reply {
  name: string;
  /** When it was sent: before, during or after the fault. */
  phase: Phase;
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: any;
  ms: number;
}

type Phase = 'before' | 'fault' | 'after';

interface Harness {
  phase: Phase;
  stack: Stack;
  server: Server;
  port: number;
  prefix: string;
  lines: Array<Record<string, any>>;
  upstream: { failing: boolean };
  replies: Reply[];
}

interface Call {
  name: string;
  method: 'GET' | 'POST';
  path: string;
  headers?: Record<string, string>;
}

// One request to each middleware's route; `blocked` comes from an IP blocked before the fault.
const ROUND: Call[] = [
  { name: 'stackLimit', method: 'GET', path: '/free' },
  { name: 'open', method: 'GET', path: '/rl/open' },
  { name: 'closed', method: 'GET', path: '/rl/closed' },
  { name: 'credits', method: 'GET', path: '/paid', headers: { 'X-Account': ACCOUNT } },
  { name: 'audit', method: 'POST', path: '/things' },
  { name: 'flags', method: 'GET', path: '/flags' },
  { name: 'blocked', method: 'GET', path: '/free', headers: { 'X-Forwarded-For': BLOCKED } },
  { name: 'cache', method: 'GET', path: '/cached' },
];
// Sent during the fault only, while its upstream fails, so the breaker's counts are those alone.
const BREAKER: Call = { name: 'breaker', method: 'GET', path: '/breaker' };

describeFaults('middleware against Redis faults (#11)', () => {
  let server: OwnRedisServer;
  let proxy: FaultProxy;
  let admin: Redis;
  let harness: Harness | undefined;
  let stopped = false;

  beforeAll(async () => {
    server = await OwnRedisServer.start();
    proxy = await FaultProxy.start(server.port);
    admin = new Redis(server.url, { maxRetriesPerRequest: null });
    admin.on('error', () => undefined);
  });
  afterEach(async () => {
    proxy.heal();
    if (stopped) {
      await server.restart();
      stopped = false;
    }
    if (harness !== undefined) {
      await new Promise<void>((resolve) => harness?.server.close(() => resolve()));
      await harness.stack.close();
      harness = undefined;
    }
  });
  afterAll(async () => {
    admin.disconnect();
    await proxy.close();
    await server.stop();
  });

  async function start(storeTimeout = STORE_TIMEOUT): Promise<Harness> {
    const prefix = uniquePrefix();
    const { logger, lines } = recordingLogger('info');
    const upstream = { failing: false };
    const stack = createStack({
      redis: proxy.url,
      keyPrefix: prefix,
      logger,
      trustProxy: 'loopback',
      requestLogger: false,
      metrics: false,
      // instances: 2, so the local fallback's limit (50000) shows in the headers.
      rateLimit: { limit: 100_000, instances: 2, storeTimeout, prefix: 'stack' },
      credits: {
        cost: (req: Request) => (req.path === '/paid' ? 1 : 0),
        account: (req: Request) => req.get('X-Account'),
        required: false,
        initialBalance: INITIAL_CREDITS,
        storeTimeout,
        refundRetryDelay: '50ms',
      },
      featureFlags: { source: 'redis' },
      // Retried quickly once Redis is back; a write timeout a loaded machine does not miss.
      auditLog: { sink: { redisStream: 'audit' }, chain: true, retryDelay: '50ms', maxRetryDelay: '200ms', writeTimeout: '2s' },
    });
    const app = newApp();
    app.use(stack);
    const ok = (_req: Request, res: Response): void => {
      res.json({ ok: true });
    };
    app.get('/free', ok);
    // Their own limit (900), so their headers tell them from the stack's limiter.
    const limiter = (mode: 'open' | 'closed') => rateLimit({ algorithm: 'fixed-window', limit: 900, onStoreError: mode, storeTimeout, prefix: mode });
    app.get('/rl/open', limiter('open'), ok);
    app.get('/rl/closed', limiter('closed'), ok);
    app.get('/paid', ok);
    app.post('/things', (_req, res) => {
      res.status(201).json({ id: 'thing' });
    });
    app.get('/flags', (req, res) => {
      res.json({ beta: req.features?.isEnabled('beta') ?? null });
    });
    app.get('/breaker', circuitBreaker({ name: 'upstream', volumeThreshold: 2 }), (_req, res) => {
      if (upstream.failing) res.status(500).json({ failed: true });
      else res.json({ ok: true });
    });
    let fills = 0;
    // Its own namespace: the stack's cache then has no server-side entries to drop on writes.
    app.get('/cached', cache({ ttl: 60, namespace: 'faults' }), (_req, res) => {
      res.json({ fill: ++fills });
    });
    app.use(stack.errorHandler);
    const http = await new Promise<Server>((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    harness = { phase: 'before', stack, server: http, port: (http.address() as AddressInfo).port, prefix, lines, upstream, replies: [] };
    return harness;
  }

  function send(h: Harness, call: Call): Promise<Reply> {
    const started = performance.now();
    const phase = h.phase;
    return new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port: h.port, method: call.method, path: call.path, headers: call.headers }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          const reply: Reply = { name: call.name, phase, status: res.statusCode ?? 0, headers: res.headers, body: text ? JSON.parse(text) : undefined, ms: performance.now() - started };
          h.replies.push(reply);
          resolve(reply);
        });
      });
      req.on('error', reject);
      req.end();
    });
  }

  async function round(h: Harness, calls = ROUND): Promise<Record<string, Reply>> {
    const replies = await Promise.all(calls.map((call) => send(h, call)));
    return Object.fromEntries(replies.map((r) => [r.name, r]));
  }

  /** Every middleware on Redis: the shared limits, paid requests charged, the last flag values. */
  function expectHealthy(r: Record<string, Reply>, flagsKept = true): void {
    expect(r.stackLimit).toMatchObject({ status: 200, headers: expect.objectContaining({ 'x-ratelimit-limit': '100000' }) });
    expect(r.open).toMatchObject({ status: 200, headers: expect.objectContaining({ 'x-ratelimit-limit': '900' }) });
    expect(r.closed).toMatchObject({ status: 200, headers: expect.objectContaining({ 'x-ratelimit-limit': '900' }) });
    expect(r.credits).toMatchObject({ status: 200, headers: expect.objectContaining({ 'x-credits-cost': '1' }) });
    expect(r.audit.status).toBe(201);
    if (flagsKept) expect(r.flags.body).toEqual({ beta: true });
    expect(r.cache.status).toBe(200);
  }

  /** During the fault: each middleware's fail mode, answered within its timeout. */
  function expectFailModes(r: Record<string, Reply>): void {
    // rateLimit 'memory': this instance's share of the limit, on its own memory.
    expect(r.stackLimit).toMatchObject({ status: 200, headers: expect.objectContaining({ 'x-ratelimit-limit': '50000' }) });
    // rateLimit 'open': through, unlimited, adding no headers (those left are the stack limiter's).
    expect(r.open).toMatchObject({ status: 200, headers: expect.objectContaining({ 'x-ratelimit-limit': '50000' }) });
    // rateLimit 'closed' and credits (closed by default): 503 in the one error envelope.
    expect(r.closed).toMatchObject({ status: 503, body: { error: expect.objectContaining({ code: 'SERVICE_UNAVAILABLE', request_id: expect.any(String) }) } });
    expect(r.credits).toMatchObject({ status: 503, body: { error: expect.objectContaining({ code: 'SERVICE_UNAVAILABLE' }) } });
    // auditLog: the write is served; its record waits in the queue.
    expect(r.audit.status).toBe(201);
    // featureFlags: the flags in force stay.
    expect(r.flags.body).toEqual({ beta: true });
    // ipFilter: blocks are checked against this instance's mirror.
    expect(r.blocked).toMatchObject({ status: 403, body: { error: expect.objectContaining({ code: 'IP_BLOCKED' }) } });
    // cache: served (lightly checked; the cache has its own tests).
    expect(r.cache.status).toBe(200);
    expect(Object.values(r).filter((reply) => reply.ms >= WITHIN_TIMEOUT_MS).map((reply) => [reply.name, Math.round(reply.ms)])).toEqual([]);
  }

  /** Waits until a round finds every middleware back on Redis. */
  async function recovered(h: Harness, flagsKept = true): Promise<void> {
    h.phase = 'after';
    await eventually(async () => expectHealthy(await round(h), flagsKept), 10_000);
  }

  /** Sets up what the fault must not lose: a flag, a block, a closed breaker, the first records. */
  async function healthyStart(storeTimeout?: string): Promise<Harness> {
    const h = await start(storeTimeout);
    await h.stack.middleware.featureFlags.ready();
    await h.stack.middleware.featureFlags.set('beta', { enabled: true });
    await h.stack.middleware.ipFilter.block(BLOCKED);
    await eventually(async () => expectHealthy(await round(h)), 5000);
    return h;
  }

  /**
   * During the fault: rounds until every middleware logged the outage, each round in the fail
   * modes; the breaker's upstream failing, so it opens on its own counts; a flag write and a block
   * that must not land later.
   */
  async function duringFault(h: Harness, within = LOGGED_WITHIN_MS): Promise<{ attempts: Array<Promise<unknown>> }> {
    h.phase = 'fault';
    h.upstream.failing = true;
    // Writes whose callers will see a failure: none may take effect when Redis is back.
    const attempts = [
      h.stack.middleware.featureFlags.set('beta', { enabled: false }).then(
        () => 'applied',
        () => 'failed',
      ),
      h.stack.middleware.ipFilter.block(LATE_BLOCK).then(
        () => 'applied',
        () => 'failed',
      ),
    ];
    const logged = () => OUTAGE_LINES.every(([code, limiter]) => h.lines.some((l) => l.code === code && (limiter === undefined || l.limiter === limiter)));
    const deadline = performance.now() + within;
    let last: Record<string, Reply> = {};
    for (let rounds = 0; rounds < 3 || !logged(); rounds++) {
      if (performance.now() > deadline) throw new Error(`not every middleware logged the outage within ${within} ms: ${JSON.stringify(h.lines.map((l) => l.code))}`);
      last = await round(h, [...ROUND, BREAKER]);
      expectFailModes(last);
    }
    // The breaker decided on its own counts: open, with the envelope.
    expect(last.breaker).toMatchObject({ status: 503, body: { error: expect.objectContaining({ code: 'CIRCUIT_OPEN' }) } });
    return { attempts };
  }

  /** The outage was logged once, its end once, per middleware; nothing at error. */
  function expectOneOutageLogged(h: Harness): void {
    const coded = h.lines.filter((l) => typeof l.code === 'string');
    const count = (code: string, field?: [string, string]) => coded.filter((l) => l.code === code && (field === undefined || l[field[0]] === field[1])).length;
    // The connection: down once, up once (the messages say why, should it flap).
    const connection = coded.filter((l) => l.code === 'ERR_REDIS_UNAVAILABLE' || l.code === 'ERR_REDIS_RECOVERED');
    expect(connection.map((l) => [l.code, l.err?.message ?? ''])).toEqual([
      ['ERR_REDIS_UNAVAILABLE', expect.any(String)],
      ['ERR_REDIS_RECOVERED', ''],
    ]);
    for (const limiter of ['stack', 'open', 'closed']) {
      expect([limiter, count('ERR_RATE_LIMIT_STORE_UNAVAILABLE', ['limiter', limiter]), count('ERR_RATE_LIMIT_STORE_RECOVERED', ['limiter', limiter])]).toEqual([limiter, 1, 1]);
    }
    expect([count('ERR_CREDITS_STORE_UNAVAILABLE'), count('ERR_CREDITS_STORE_RECOVERED')]).toEqual([1, 1]);
    // Middleware that noticed the fault say so once and say when it is over.
    for (const [down, up] of [
      ['CIRCUIT_BREAKER_SYNC_ERROR', 'CIRCUIT_BREAKER_SYNC_RECOVERED'],
      ['ERR_AUDIT_SINK_FAILED', 'ERR_AUDIT_SINK_RECOVERED'],
    ]) {
      expect([down, count(down)]).toEqual([down, count(up)]);
      expect(count(down)).toBeLessThanOrEqual(1);
    }
    expect(count('FEATURE_FLAGS_SOURCE_ERROR')).toBeLessThanOrEqual(1);
    // Lines about one request (the error handler logs each 5xx answer) are not about the outage.
    const outageLines = coded.filter((l) => l.status_code === undefined && l.level !== 'info' && !/^CIRCUIT_(OPEN|HALF_OPEN|CLOSED)$/.test(l.code));
    // Nothing warns more than once for one subject, and nothing but the flags' reload is an error.
    const seen = new Map<string, number>();
    for (const line of outageLines) {
      const key = `${line.code} ${line.limiter ?? line.sink ?? line.breaker ?? ''}`;
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }
    expect([...seen].filter(([, n]) => n > 1)).toEqual([]);
    expect(outageLines.filter((l) => l.level === 'error' && l.code !== 'FEATURE_FLAGS_SOURCE_ERROR')).toEqual([]);
  }

  /**
   * What Redis holds once everything settled: no reservation still holding credits, the balance
   * the 2xx paid requests (since reply `since`) account for, the closed limiter's count equal to
   * the decisions it served, each record (of requests since reply `auditSince`) once in a valid
   * chain, a complete breaker record, and nothing else without an expiry.
   */
  async function expectNoLeftovers(h: Harness, since = 0, auditSince = since): Promise<void> {
    const p = h.prefix;
    const replies = h.replies.slice(since);
    const paid = replies.filter((r) => r.name === 'credits' && r.status === 200).length;
    await eventually(async () => {
      const reservations = (await admin.keys(`${p}credits:{${ACCOUNT}}:r:*`)).sort();
      const held = await Promise.all(reservations.map((k) => admin.get(k)));
      expect(held.filter((v) => v !== '-')).toEqual([]);
      expect(Number(await admin.get(`${p}credits:{${ACCOUNT}}`))).toBe(INITIAL_CREDITS - paid);
    }, 5000);

    // Every decision counted is one a request got from the store: none sent during the fault
    // counts when Redis comes back. (Once it is back, a decision Redis made in time whose answer
    // came too late still counts: at most one unit for each such request, on the safe side.)
    const decided = replies.filter((r) => r.name === 'closed' && r.status === 200).length;
    const lateAfter = replies.filter((r) => r.name === 'closed' && r.status === 503 && r.phase === 'after').length;
    const counted = Number((await admin.get(`${p}rl:closed:{ip:127.0.0.1}:w`))?.split(':')[0]);
    expect(counted).toBeGreaterThanOrEqual(decided);
    expect(counted - decided).toBeLessThanOrEqual(lateAfter);

    expect(await h.stack.middleware.auditLog.flush('5s')).toBe(true);
    const entries = await admin.xrange(`${p}audit:{audit}`, '-', '+');
    const records = entries.map(([, fields]) => JSON.parse(fields[fields.indexOf('record') + 1]) as Record<string, unknown>);
    const written = h.replies.slice(auditSince).filter((r) => r.name === 'audit').map((r) => r.headers['x-request-id']);
    const ids = records.map((r) => r.request_id);
    expect(ids.filter((id, i) => ids.indexOf(id) !== i)).toEqual([]);
    expect(written.filter((id) => !ids.includes(id))).toEqual([]);
    expect(verifyAuditChain(records)).toMatchObject({ valid: true });

    const breaker = await admin.hgetall(`${p}circuitBreaker:{upstream}`);
    if (Object.keys(breaker).length > 0) expect(Object.keys(breaker).sort()).toEqual(['changedAt', 'gen', 'origin', 'state', 'until']);

    // Only the balance, its ledger, the blocks, the flags and the audit stream and head live on; the rest expires.
    const lasting = [`${p}credits:{${ACCOUNT}}`, `${p}credits:{${ACCOUNT}}:history`, `${p}ipFilter:{blocks}`, `${p}flags`, `${p}audit:{audit}`, `${p}audit:{audit}:head`];
    const keys = (await admin.keys(`${p}*`)).filter((k) => !lasting.includes(k) && !k.startsWith(`${p}cache`));
    const ttls = await Promise.all(keys.map((k) => admin.pttl(k)));
    expect(keys.filter((_k, i) => ttls[i] < 0)).toEqual([]);
  }

  /** The writes refused during the fault never took effect: the flag kept its value, the late block is nowhere. */
  async function expectRefusedWritesAbsent(h: Harness, attempts: Array<Promise<unknown>>): Promise<void> {
    expect(await Promise.all(attempts)).toEqual(['failed', 'failed']);
    expect(JSON.parse((await admin.hget(`${h.prefix}flags`, 'beta')) ?? 'null')).toMatchObject({ enabled: true });
    await h.stack.middleware.featureFlags.reload();
    expect(h.stack.middleware.featureFlags.evaluate('beta')).toMatchObject({ value: true });
    expect(await admin.zscore(`${h.prefix}ipFilter:{blocks}`, LATE_BLOCK)).toBeNull();
  }

  /** The breaker's state changed during the fault reaches the store once it is back. */
  async function expectBreakerShared(h: Harness): Promise<void> {
    await eventually(async () => expect(await admin.hget(`${h.prefix}circuitBreaker:{upstream}`, 'state')).toBe('OPEN'), 5000);
  }

  it('Redis paused for writes (CLIENT PAUSE WRITE): fail modes within the timeouts, one outage logged, nothing lands late', async () => {
    const h = await healthyStart();
    await admin.call('CLIENT', 'PAUSE', '30000', 'WRITE');
    const { attempts } = await duringFault(h);
    expect(await Promise.all(attempts)).toEqual(['failed', 'failed']);
    // Not a write, so not held: the pause ends now, and Redis runs what it held.
    await admin.call('CLIENT', 'UNPAUSE');
    await recovered(h);
    await expectBreakerShared(h);
    await expectRefusedWritesAbsent(h, attempts);
    await expectNoLeftovers(h);
    expectOneOutageLogged(h);
  });

  it('Redis paused for everything (CLIENT PAUSE ALL): fail modes within the timeouts, one outage logged, nothing lands late', async () => {
    const h = await healthyStart();
    await admin.call('CLIENT', 'PAUSE', String(PAUSE_ALL_MS), 'ALL');
    const { attempts } = await duringFault(h, PAUSE_ALL_MS - 500);
    // Held like everything else: it returns once the pause is over.
    await admin.ping();
    await recovered(h);
    await expectBreakerShared(h);
    await expectRefusedWritesAbsent(h, attempts);
    await expectNoLeftovers(h);
    expectOneOutageLogged(h);
  });

  it('Redis silent (every byte held, then delivered late): fail modes within the timeouts, one outage logged, nothing lands late', async () => {
    const h = await healthyStart();
    proxy.silence();
    const { attempts } = await duringFault(h);
    expect(await Promise.all(attempts)).toEqual(['failed', 'failed']);
    // The route heals: everything sent meanwhile reaches Redis now, after its callers gave up.
    proxy.heal();
    await recovered(h);
    await expectBreakerShared(h);
    await expectRefusedWritesAbsent(h, attempts);
    await expectNoLeftovers(h);
    expectOneOutageLogged(h);
  });

  it('Redis stopped (SIGKILL) then restarted: fail modes within the timeouts, one outage logged, back by itself', async () => {
    const h = await healthyStart();
    stopped = true;
    await server.stop();
    const stoppedAt = h.replies.length;
    const { attempts } = await duringFault(h);
    expect(await Promise.all(attempts)).toEqual(['failed', 'failed']);
    await server.restart();
    stopped = false;
    const restartedAt = h.replies.length;
    // The server kept nothing (no persistence): balances, counts and flags start over, so only
    // what ran after the restart counts; the records queued during the outage are written.
    await recovered(h, false);
    await expectBreakerShared(h);
    expect(await admin.zscore(`${h.prefix}ipFilter:{blocks}`, LATE_BLOCK)).toBeNull();
    await expectNoLeftovers(h, restartedAt, stoppedAt);
    expectOneOutageLogged(h);
  });

  it('Redis flushed (FLUSHALL) mid-traffic: no outage, no error, no half-written state', async () => {
    // Roomy timeouts: nothing here is about them, and a loaded machine must not fail a request.
    const h = await healthyStart('2s');
    const traffic = Promise.all([round(h), round(h), round(h)]);
    await admin.flushall();
    const during = await traffic;
    const after = await round(h);
    for (const r of [...during, after]) {
      expect(Object.values(r).filter((reply) => reply.status >= 500).map((reply) => [reply.name, reply.status])).toEqual([]);
    }
    expect(h.lines.filter((l) => l.code === 'ERR_REDIS_UNAVAILABLE' || l.level === 'error')).toEqual([]);
    // Balances and counts start over (Redis lost them); whatever straddled the flush left no
    // reservation holding credits.
    await eventually(async () => {
      const held = await Promise.all((await admin.keys(`${h.prefix}credits:{${ACCOUNT}}:r:*`)).map((k) => admin.get(k)));
      expect(held.filter((v) => v !== '-')).toEqual([]);
    }, 5000);
    // The chain starts again from the genesis value after the flush and stays whole, each record once.
    const from = h.replies.length;
    await round(h);
    expect(await h.stack.middleware.auditLog.flush('5s')).toBe(true);
    const entries = await admin.xrange(`${h.prefix}audit:{audit}`, '-', '+');
    const records = entries.map(([, fields]) => JSON.parse(fields[fields.indexOf('record') + 1]) as Record<string, unknown>);
    const ids = records.map((r) => r.request_id);
    expect(ids.filter((id, i) => ids.indexOf(id) !== i)).toEqual([]);
    expect(verifyAuditChain(records)).toMatchObject({ valid: true });
    const posted = h.replies.slice(from).filter((r) => r.name === 'audit').map((r) => r.headers['x-request-id']);
    expect(posted.filter((id) => !ids.includes(id))).toEqual([]);
  });
});
