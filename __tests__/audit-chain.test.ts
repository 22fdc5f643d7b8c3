import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { transformFileSync } from '@swc/core';
import Redis from 'ioredis';
import request from 'supertest';
import { auditLog, createStack, verifyAuditChain, type AuditRecord, type StackConfig } from '../index';
import { canonicalJson, GENESIS, linkRecords, recordHash } from '../lib/audit/chain';
import { main } from '../lib/audit/cli';
import { auditStreamStore } from '../lib/stores/audit-chain-store';
import { RedisStores } from '../lib/stores/redis';
import { describeRedis, newApp, recordingLogger, redisUrl, uniquePrefix } from './helpers/app';

const ROOT = resolve(__dirname, '..');

const ONLY_AUDIT: StackConfig = {
  requestLogger: false, metrics: false, securityHeaders: false, ipFilter: false, sizeLimit: false, timeout: false,
  rateLimit: false, sanitize: false, cache: false,
};

/** `n` records as auditLog builds them, linked into a chain from `genesis`. */
function chainOf(n: number, genesis = GENESIS): AuditRecord[] {
  const base = Array.from({ length: n }, (_, i) => ({
    timestamp: new Date(Date.UTC(2024, 0, 15, 10, 30, i)).toISOString(),
    event: 'GAME_CREATED',
    user_id: 42,
    tenant_id: null,
    action: 'POST /api/games',
    route: '/api/games',
    ip: '192.168.1.1',
    status: 201,
    resource_id: 100 + i,
    request_id: `req-${i}`,
  }));
  return linkRecords(base, { hash: genesis, seq: 0 }).records as AuditRecord[];
}

/** POSTs JSON through `agent`; resolves to the status. */
function post(agent: Agent, url: string, body: unknown, method = 'POST'): Promise<number> {
  const data = JSON.stringify(body);
  return new Promise((done, fail) => {
    const req = httpRequest(url, { method, agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } }, (res) => {
      res.resume();
      res.on('end', () => done(res.statusCode as number));
    });
    req.on('error', fail);
    req.end(data);
  });
}

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'perimeter-chain-'));
}

describe('canonical JSON and record hashes', () => {
  it('sorts keys at every depth, keeps array order and leaves no whitespace', () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { y: 2, x: 'é' }], c: null, skipped: undefined } })).toBe('{"a":{"c":null,"d":[3,{"x":"é","y":2}]},"b":1}');
  });

  it("is SHA-256 hex of the canonical record without hash, followed by prev_hash", () => {
    const [record] = chainOf(1);
    const { hash, ...rest } = record;
    const expected = createHash('sha256').update(canonicalJson(rest) + GENESIS).digest('hex');
    expect(hash).toBe(expected);
    expect(recordHash(record, GENESIS)).toBe(expected);
    // Field order does not matter, values do.
    expect(recordHash(Object.fromEntries(Object.entries(rest).reverse()), GENESIS)).toBe(expected);
    expect(recordHash({ ...rest, status: 202 }, GENESIS)).not.toBe(expected);
  });
});

describe('verifyAuditChain', () => {
  it('accepts an intact chain and reports its length and head', () => {
    const records = chainOf(5);
    expect(verifyAuditChain(records)).toEqual({ valid: true, count: 5, head: records[4].hash });
    expect(verifyAuditChain([])).toEqual({ valid: true, count: 0, head: GENESIS });
  });

  it.each(['timestamp', 'event', 'user_id', 'tenant_id', 'action', 'ip', 'status', 'resource_id', 'request_id', 'seq', 'prev_hash', 'hash'])(
    'detects an edited %s at that record',
    (field) => {
      const records = chainOf(5);
      const value = (records[2] as Record<string, unknown>)[field];
      (records[2] as Record<string, unknown>)[field] = typeof value === 'number' ? value + 1 : field.endsWith('hash') ? 'f'.repeat(64) : `${String(value)}x`;
      expect(verifyAuditChain(records)).toMatchObject({ valid: false, brokenAt: 2, count: 2 });
    },
  );

  it('detects an added field, a removed record and a reordered record', () => {
    const added = chainOf(5);
    (added[3] as Record<string, unknown>).note = 'inserted';
    expect(verifyAuditChain(added)).toMatchObject({ valid: false, brokenAt: 3, reason: expect.stringMatching(/edited/) });

    const removed = chainOf(5);
    removed.splice(2, 1);
    expect(verifyAuditChain(removed)).toMatchObject({ valid: false, brokenAt: 2, reason: expect.stringMatching(/removed, inserted or reordered/) });

    const reordered = chainOf(5);
    [reordered[1], reordered[3]] = [reordered[3], reordered[1]];
    expect(verifyAuditChain(reordered)).toMatchObject({ valid: false, brokenAt: 1 });
  });

  it('detects a removed first record against the genesis, unless told to trust the first prev_hash', () => {
    const records = chainOf(4).slice(1);
    expect(verifyAuditChain(records)).toMatchObject({ valid: false, brokenAt: 0, reason: expect.stringMatching(/genesis/) });
    expect(verifyAuditChain(records, { genesis: false })).toMatchObject({ valid: true, count: 3 });
  });

  it('detects records removed from the end only against the expected head', () => {
    const records = chainOf(4);
    const head = records[3].hash as string;
    expect(verifyAuditChain(records.slice(0, 3))).toMatchObject({ valid: true });
    expect(verifyAuditChain(records.slice(0, 3), { head })).toMatchObject({ valid: false, brokenAt: 3, reason: expect.stringMatching(/ends before the expected head/) });
    expect(verifyAuditChain(records, { head })).toMatchObject({ valid: true });
  });

  it('honours a configured genesis', () => {
    const genesis = 'ab'.repeat(32);
    const records = chainOf(3, genesis);
    expect(verifyAuditChain(records)).toMatchObject({ valid: false, brokenAt: 0 });
    expect(verifyAuditChain(records, { genesis })).toMatchObject({ valid: true, count: 3 });
  });

  it('reads JSON lines (skipping blank ones), flags a line that is not JSON or not chained, and takes an async iterable', async () => {
    const lines = chainOf(3).map((r) => JSON.stringify(r));
    expect(verifyAuditChain(['', ...lines, '  '])).toMatchObject({ valid: true, count: 3 });
    expect(verifyAuditChain([lines[0], '{"event":', lines[1]])).toMatchObject({ valid: false, brokenAt: 1, reason: 'the line is not valid JSON' });
    expect(verifyAuditChain([lines[0], '{"event":"X"}'])).toMatchObject({ valid: false, brokenAt: 1, reason: expect.stringMatching(/no hash/) });
    await expect(verifyAuditChain(Readable.from(lines))).resolves.toMatchObject({ valid: true, count: 3 });
  });
});

describe('auditLog with chain: true', () => {
  it('gives each record seq, prev_hash and hash, continuing one chain per sink', async () => {
    const records: AuditRecord[] = [];
    const handler = auditLog({ sink: (r) => void records.push(r), chain: true, batchSize: 2 });
    const app = newApp();
    app.use(handler);
    app.post('/api/games', (_req, res) => {
      res.status(201).json({ id: 1 });
    });
    for (let i = 0; i < 5; i++) await request(app).post('/api/games').expect(201);
    await handler.close();
    expect(records.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(records[0].prev_hash).toBe(GENESIS);
    expect(records[1].prev_hash).toBe(records[0].hash);
    expect(verifyAuditChain(records)).toMatchObject({ valid: true, count: 5 });
  });

  it("chains the 'logger' sink's lines, which verify once the logger's own fields are left out", async () => {
    const { logger, lines } = recordingLogger();
    const stack = createStack({ ...ONLY_AUDIT, logger, auditLog: { chain: true } });
    const app = newApp();
    app.use(stack);
    app.delete('/api/games/:id', (_req, res) => {
      res.status(204).end();
    });
    for (let i = 0; i < 3; i++) await request(app).delete(`/api/games/${i}`).expect(204);
    await stack.close();
    const audits = lines.filter((l) => l.message === 'audit');
    expect(audits).toHaveLength(3);
    expect(verifyAuditChain(audits).valid).toBe(false);
    expect(verifyAuditChain(audits, { omit: ['level', 'message'] })).toMatchObject({ valid: true, count: 3 });
  });
});

describe('express-perimeter verify-audit', () => {
  const out = () => {
    let stdout = '';
    let stderr = '';
    return { io: { stdout: { write: (t: string) => (stdout += t) }, stderr: { write: (t: string) => (stderr += t) } }, text: () => ({ stdout, stderr }) };
  };

  it('exits 0 on an intact file, 1 with the record and line of a break, 2 on a usage or read error', async () => {
    const dir = tmp();
    try {
      const file = join(dir, 'audit.jsonl');
      const lines = chainOf(4).map((r) => JSON.stringify(r));
      writeFileSync(file, `${lines.join('\n')}\n`);
      let o = out();
      expect(await main(['verify-audit', file], o.io)).toBe(0);
      expect(o.text().stdout).toMatch(/^OK: .*audit\.jsonl: 4 records, chain intact \(head [0-9a-f]{64}\)\n$/);

      const tampered = join(dir, 'tampered.jsonl');
      writeFileSync(tampered, ['', lines[0], lines[1].replace('"status":201', '"status":200'), lines[2]].join('\n'));
      o = out();
      expect(await main(['verify-audit', tampered], o.io)).toBe(1);
      expect(o.text().stdout).toMatch(/^BROKEN: .*: record 1 \(line 3\): the record's content does not match its hash/);

      o = out();
      expect(await main(['verify-audit', tampered, '--json'], o.io)).toBe(1);
      expect(JSON.parse(o.text().stdout)).toMatchObject({ valid: false, brokenAt: 1, line: 3 });

      o = out();
      expect(await main(['verify-audit', join(dir, 'missing.jsonl')], o.io)).toBe(2);
      expect(o.text().stderr).toMatch(/cannot read/);
      o = out();
      expect(await main(['verify-audit'], o.io)).toBe(2);
      expect(await main(['verify-audit', file, '--genesis', 'nothex'], o.io)).toBe(2);
      expect(await main(['frobnicate'], o.io)).toBe(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('runs as the published bin (bin/express-perimeter.js loading the compiled dist/lib/audit/cli.js)', () => {
    // A package laid out as npm installs it: the real bin file, and the CLI's modules compiled to CommonJS.
    const dir = tmp();
    try {
      mkdirSync(join(dir, 'bin'));
      mkdirSync(join(dir, 'dist', 'lib', 'audit'), { recursive: true });
      copyFileSync(join(ROOT, 'bin', 'express-perimeter.js'), join(dir, 'bin', 'express-perimeter.js'));
      for (const name of ['cli', 'verify', 'chain']) {
        const { code } = transformFileSync(join(ROOT, 'lib', 'audit', `${name}.ts`), {
          swcrc: false,
          jsc: { target: 'es2022', parser: { syntax: 'typescript' } },
          module: { type: 'commonjs' },
        });
        writeFileSync(join(dir, 'dist', 'lib', 'audit', `${name}.js`), code);
      }
      const good = join(dir, 'good.jsonl');
      const records = chainOf(3);
      writeFileSync(good, `${records.map((r) => JSON.stringify(r)).join('\n')}\n`);
      const bad = join(dir, 'bad.jsonl');
      writeFileSync(bad, `${[records[0], records[2]].map((r) => JSON.stringify(r)).join('\n')}\n`);
      const run = (file: string) => spawnSync(process.execPath, [join(dir, 'bin', 'express-perimeter.js'), 'verify-audit', file], { encoding: 'utf8', timeout: 10_000 });
      const ok = run(good);
      expect(ok.stderr).toBe('');
      expect(ok.status).toBe(0);
      expect(ok.stdout).toMatch(/OK: .*3 records, chain intact/);
      const broken = run(bad);
      expect(broken.status).toBe(1);
      expect(broken.stdout).toMatch(/BROKEN: .*record 1 \(line 2\): prev_hash does not match/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describeRedis('auditLog { redisStream } on Redis', () => {
  let redis: Redis;
  beforeAll(() => {
    redis = new Redis(redisUrl as string);
  });
  afterAll(() => redis.quit());

  /** Stream entries as records, oldest first. */
  async function readStream(key: string): Promise<AuditRecord[]> {
    const entries = await redis.xrange(key, '-', '+');
    return entries.map(([, fields]) => JSON.parse(fields[fields.indexOf('record') + 1]) as AuditRecord);
  }

  it('1,000 concurrent writes across two instances extend one chain: exactly 1,000 entries that verify, in stream order', async () => {
    const prefix = uniquePrefix();
    const servers: Server[] = [];
    const logs = [recordingLogger(), recordingLogger()];
    const stacks = logs.map(({ logger }) =>
      createStack({ ...ONLY_AUDIT, redis: redisUrl, keyPrefix: prefix, logger, auditLog: { sink: { redisStream: 'audit' }, chain: true } }),
    );
    // Every request in flight at once, each on its own keep-alive socket.
    const agent = new Agent({ keepAlive: true, maxSockets: Infinity });
    try {
      const urls = await Promise.all(
        stacks.map((stack) => {
          const app = newApp();
          app.use(stack);
          app.post('/api/games', (req, res) => {
            res.status(201).json({ id: req.body.n });
          });
          const server = createServer(app);
          servers.push(server);
          return new Promise<string>((done) => server.listen(0, '127.0.0.1', () => done(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)));
        }),
      );
      const statuses = await Promise.all(Array.from({ length: 1000 }, (_, n) => post(agent, `${urls[n % 2]}/api/games`, { n })));
      expect(statuses.filter((s) => s === 201)).toHaveLength(1000);
      // Deadlines that only bound a failure: 1,000 requests and their records can take a loaded
      // two-core machine well over the default 20 s test timeout.
      expect(await Promise.all(stacks.map((stack) => stack.middleware.auditLog.flush('60s')))).toEqual([true, true]);

      const key = `${prefix}audit:{audit}`;
      const records = await readStream(key);
      expect(records).toHaveLength(1000);
      expect(new Set(records.map((r) => r.resource_id)).size).toBe(1000);
      expect(records.map((r) => r.seq)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
      const head = await redis.hget(`${prefix}audit:{audit}:head`, 'hash');
      expect(verifyAuditChain(records, { head: head as string })).toEqual({ valid: true, count: 1000, head });
      // Both instances wrote into it.
      expect(stacks.map((s) => s.middleware.auditLog.stats()[0].written)).toEqual([500, 500]);
      // Compare-and-set losses are not failures: the turn keeps the busier instance from starving the other.
      expect(logs.flatMap((l) => l.lines).filter((l) => l.code === 'ERR_AUDIT_SINK_FAILED')).toEqual([]);

      const edited = records.map((r) => ({ ...r }));
      edited[500].status = 200;
      expect(verifyAuditChain(edited)).toMatchObject({ valid: false, brokenAt: 500 });
      expect(verifyAuditChain([...records.slice(0, 700), ...records.slice(701)])).toMatchObject({ valid: false, brokenAt: 700 });
    } finally {
      agent.destroy();
      await Promise.all(servers.map((s) => new Promise((done) => s.close(done))));
      await Promise.all(stacks.map((s) => s.close()));
    }
  }, 120_000);

  it('appends a retried batch once, refuses a chained append whose head moved (saying where it is), and lets a repeated loser take a turn', async () => {
    // Roomy deadlines: a loaded machine can take a script call past 1 s, and this test is about outcomes.
    const stores = new RedisStores(redisUrl as string, { logger: recordingLogger().logger, prefix: uniquePrefix(), commandTimeout: 10_000 });
    try {
      const store = stores.create(auditStreamStore({ stream: 'audit' }));
      const [first, second] = chainOf(2);
      const entry = (r: AuditRecord) => [{ event: r.event, json: JSON.stringify(r) }];
      const swap = (r: AuditRecord, expected: string) => ({ expected, genesis: GENESIS, next: { hash: r.hash as string, seq: r.seq as number } });
      expect(await store.append(entry(first), 'batch-1', swap(first, GENESIS), 10_000)).toEqual({ status: 'ok' });
      // The same batch again (its first answer lost): nothing is added.
      expect(await store.append(entry(first), 'batch-1', swap(first, GENESIS), 10_000)).toEqual({ status: 'duplicate' });
      // Another batch computed from a stale head is refused, with the real head.
      expect(await store.append(entry(second), 'batch-2', swap(second, GENESIS), 10_000)).toEqual({ status: 'conflict', head: { hash: first.hash, seq: 1 } });
      expect(await store.append(entry(second), 'batch-2', swap(second, first.hash as string), 10_000)).toEqual({ status: 'ok' });
      expect(await store.head(1000)).toEqual({ hash: second.hash, seq: 2 });
      expect(verifyAuditChain(await readStream(store.key))).toMatchObject({ valid: true, count: 2 });

      // A loser claiming the turn holds off every other batch (even one with the right head) until it appends.
      const [, , third, fourth] = chainOf(4);
      const head2 = second.hash as string;
      expect(await store.append(entry(fourth), 'batch-4', { ...swap(fourth, GENESIS), claimTurn: true }, 10_000)).toMatchObject({ status: 'conflict' });
      expect(await store.append(entry(third), 'batch-3', swap(third, head2), 10_000)).toEqual({ status: 'wait', head: { hash: head2, seq: 2 } });
      const relinked = linkRecords([fourth], { hash: head2, seq: 2 }).records[0] as AuditRecord;
      expect(await store.append(entry(relinked), 'batch-4', swap(relinked, head2), 10_000)).toEqual({ status: 'ok' });
      expect(await store.append(entry(third), 'batch-3', swap(third, head2), 10_000)).toMatchObject({ status: 'conflict' });
    } finally {
      await stores.close();
    }
  });

  it('without a chain, XADDs with MAXLEN ~ when maxLen is set', async () => {
    const prefix = uniquePrefix();
    const handler = auditLog({ sink: { redisStream: 'trimmed', maxLen: 10, redis: redisUrl as string, keyPrefix: prefix } });
    const agent = new Agent({ keepAlive: true });
    const app = newApp();
    app.use(handler);
    app.put('/items/:id', (_req, res) => {
      res.send('ok');
    });
    const server = createServer(app);
    try {
      await new Promise<void>((done) => server.listen(0, '127.0.0.1', () => done()));
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      for (let i = 0; i < 150; i++) expect(await post(agent, `${base}/items/${i}`, {}, 'PUT')).toBe(200);
      expect(await handler.flush()).toBe(true);
      const length = await redis.xlen(`${prefix}audit:{trimmed}`);
      // Approximate trimming drops whole stream nodes (100 entries each by default).
      expect(length).toBeGreaterThanOrEqual(10);
      expect(length).toBeLessThan(150);
      const [last] = await readStream(`${prefix}audit:{trimmed}`).then((r) => r.slice(-1));
      expect(last).toMatchObject({ event: 'ITEM_UPDATED', resource_id: '149' });
      expect(last.hash).toBeUndefined();
    } finally {
      agent.destroy();
      await new Promise((done) => server.close(done));
      await handler.close();
    }
  });
});
