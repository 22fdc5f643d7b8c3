import { Agent } from 'node:http';
import request from 'supertest';
import { auditLog, createStack, readAuditRows, verifyAuditChain, verifyAuditTable, type Stack } from '../index';
import { ConfigError } from '../lib/errors';
import { eventually, loadExpress, newApp, recordingLogger } from './helpers/app';
import { auditRows, closeServer, gamesApp, listen, ONLY_AUDIT, post, withClient } from './helpers/audit-postgres';
import { describePostgres, freshDatabase } from './helpers/postgres';
import { freePort } from './helpers/redis-server';

describePostgres('auditLog { postgres } sink (#15)', () => {
  let url: string;
  const stacks: Stack[] = [];
  beforeAll(async () => {
    url = await freshDatabase();
  });
  afterEach(async () => {
    await Promise.all(stacks.splice(0).map((s) => s.close()));
  });

  function stack(tablePrefix: string, audit: Record<string, unknown> = {}, statementTimeout = '5s') {
    const log = recordingLogger();
    const created = createStack({ ...ONLY_AUDIT, logger: log.logger, postgres: { url, tablePrefix, statementTimeout }, auditLog: { sink: { postgres: true }, ...audit } });
    stacks.push(created);
    return { stack: created, lines: log.lines };
  }

  it('200 concurrent writes from two instances (two pools) form one chain: exactly 200 rows, seq 1…200, valid', async () => {
    // Small batches, so the two instances' transactions interleave many times. Roomy timeouts: on a
    // loaded machine a wait for the lock may pass 5 s, which would be a failure this test does not test.
    const audit = { batchSize: 5, writeTimeout: '60s' };
    const instances = [stack('two_', audit, '30s'), stack('two_', audit, '30s')];
    await Promise.all(instances.map((i) => i.stack.ready()));
    const servers = await Promise.all(instances.map((i) => listen(gamesApp(i.stack))));
    const agent = new Agent({ keepAlive: true, maxSockets: Infinity });
    try {
      const statuses = await Promise.all(Array.from({ length: 200 }, (_, n) => post(agent, `${servers[n % 2].url}/api/games`, { n })));
      expect(statuses.filter((s) => s === 201)).toHaveLength(200);
      expect(await Promise.all(instances.map((i) => i.stack.middleware.auditLog.flush('60s')))).toEqual([true, true]);
    } finally {
      agent.destroy();
      await Promise.all(servers.map((s) => closeServer(s.server)));
    }

    const rows = await auditRows(url, 'two_');
    expect(rows).toHaveLength(200);
    expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(new Set(rows.map((r) => r.record.resource_id)).size).toBe(200);
    // Rows hold the record; its chain fields are the columns.
    expect(rows[0].record).toMatchObject({ event: 'GAME_CREATED', action: 'POST /api/games', status: 201 });
    expect(rows[0].record).not.toHaveProperty('hash');
    expect(rows[0].prev_hash).toBe('0'.repeat(64));
    expect(rows[1].prev_hash).toBe(rows[0].hash);

    const result = await withClient(url, (client) => verifyAuditChain(readAuditRows(client, { tablePrefix: 'two_', pageSize: 64 })));
    expect(result).toEqual({ valid: true, count: 200, head: rows[199].hash });
    expect(await withClient(url, (client) => verifyAuditTable(client, { tablePrefix: 'two_' }))).toEqual({ table: 'two_audit', valid: true, count: 200, head: rows[199].hash, lastSeq: 200 });
    // Each instance wrote its own 100; taking turns on the lock is no failure.
    expect(instances.map((i) => i.stack.middleware.auditLog.stats()[0])).toEqual([
      { sink: 'postgres:two_audit', queued: 0, written: 100, dropped: 0, failing: false },
      { sink: 'postgres:two_audit', queued: 0, written: 100, dropped: 0, failing: false },
    ]);
    expect(instances.flatMap((i) => i.lines).filter((l) => /^ERR_AUDIT/.test(String(l.code)))).toEqual([]);
  }, 120_000);

  it.each(['close', 'shutdown'] as const)('every record accepted before stack.%s() is in the table after it, though PostgreSQL held the writes back until then', async (how) => {
    // closeTimeout only bounds a failure: a loaded machine can take seconds to write 30 records.
    const { stack: created } = stack(`${how}_`, { closeTimeout: '30s' });
    await created.ready();
    const { server, url: base } = await listen(gamesApp(created));
    if (how === 'shutdown') created.attach(server, { signals: [], exit: false });
    const agent = new Agent({ keepAlive: true });
    // Another session holds the chain's lock: every audit write waits (and is retried) meanwhile.
    await withClient(url, async (holder) => {
      await holder.query('BEGIN');
      await holder.query("SELECT pg_advisory_xact_lock(hashtextextended('express-perimeter:audit:' || $1, 0))", [`${how}_audit`]);
      const statuses = await Promise.all(Array.from({ length: 30 }, (_, n) => post(agent, `${base}/api/games`, { n })));
      expect(statuses.every((s) => s === 201)).toBe(true);
      expect((await holder.query(`SELECT count(*)::int AS n FROM ${how}_audit`)).rows).toEqual([{ n: 0 }]);
      agent.destroy();
      const closing = how === 'close' ? created.close() : created.shutdown({ grace: '5s' });
      await holder.query('COMMIT');
      await closing;
    });
    if (how === 'close') await closeServer(server);
    const rows = await auditRows(url, `${how}_`);
    expect(rows.map((r) => r.record.resource_id).sort((a, b) => a - b)).toEqual(Array.from({ length: 30 }, (_, i) => i));
    expect(await withClient(url, (client) => verifyAuditTable(client, { tablePrefix: `${how}_` }))).toMatchObject({ valid: true, count: 30 });
  }, 30_000);

  it('stores what jsonb cannot hold (U+0000, a lone surrogate) as U+FFFD, everything else as it is, and the row read back verifies', async () => {
    const { stack: created } = stack('text_', { includeBody: true });
    const app = gamesApp(created);
    // JSON escapes, so the body really carries a NUL and an unpaired surrogate.
    await request(app).post('/api/games').set('content-type', 'application/json').send('{"n":1,"note":"a\\u0000b","name":"x\\ud800y","quote":"say \\"hi\\" \\\\ 😀 \\\\u0000"}').expect(201);
    await created.close();
    const [row] = await auditRows(url, 'text_');
    // Quotes, backslashes, a text that spells an escape and a character outside the BMP are kept as they are.
    expect(row.record.changes).toEqual({ n: 1, note: 'a\uFFFDb', name: 'x\uFFFDy', quote: 'say "hi" \\ 😀 \\u0000' });
    expect(await withClient(url, (client) => verifyAuditTable(client, { tablePrefix: 'text_' }))).toMatchObject({ valid: true, count: 1 });
  });

  it('follows auditLog.genesis for the first row', async () => {
    const genesis = 'ab'.repeat(32);
    const { stack: created } = stack('gen_', { genesis });
    await request(gamesApp(created)).post('/api/games').send({ n: 1 }).expect(201);
    await created.close();
    const [row] = await auditRows(url, 'gen_');
    expect(row.prev_hash).toBe(genesis);
    expect(await withClient(url, (client) => verifyAuditTable(client, { tablePrefix: 'gen_', genesis }))).toMatchObject({ valid: true, count: 1 });
    expect(await withClient(url, (client) => verifyAuditTable(client, { tablePrefix: 'gen_' }))).toMatchObject({ valid: false, seq: 1 });
  });

  it('alone, auditLog takes { postgres: <url or options> } of its own, creates the tables and closes its pool on close()', async () => {
    const handler = auditLog({ sink: { postgres: { url, tablePrefix: 'alone_', statementTimeout: '2s' } }, logger: recordingLogger().logger });
    const app = newApp();
    app.use(loadExpress().json(), handler);
    app.post('/api/games', (req, res) => {
      res.status(201).json({ id: req.body.n });
    });
    for (let n = 0; n < 3; n++) await request(app).post('/api/games').send({ n }).expect(201);
    await handler.close();
    expect((await auditRows(url, 'alone_')).map((r) => r.record.resource_id)).toEqual([0, 1, 2]);
    const open = await withClient(url, (c) => c.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'express-perimeter' AND datname = current_database()"));
    expect(open.rows).toEqual([{ n: 0 }]);
  });

  it("PostgreSQL unreachable: requests pass; overflow 'drop' counts and warns what the sink lost; close() logs the rest at error, with their content", async () => {
    const { logger, lines } = recordingLogger();
    const down = `postgres://someone@127.0.0.1:${await freePort()}/db`;
    const created = createStack({
      ...ONLY_AUDIT,
      logger,
      postgres: { url: down, statementTimeout: '200ms' },
      auditLog: { sink: { postgres: true }, overflow: 'drop', maxQueue: 5, retryDelay: '50ms', closeTimeout: '300ms' },
    });
    stacks.push(created);
    const app = gamesApp(created);
    for (let n = 0; n < 8; n++) await request(app).post('/api/games').send({ n }).expect(201);
    await eventually(() => expect(created.middleware.auditLog.stats()).toEqual([{ sink: 'postgres:perimeter_audit', queued: 5, written: 0, dropped: 3, failing: true }]), 20_000);
    expect(lines.filter((l) => l.code === 'ERR_AUDIT_RECORDS_DROPPED')).toEqual([expect.objectContaining({ level: 'warn', sink: 'postgres:perimeter_audit', max_queue: 5 })]);
    expect(await created.metricsRegistry.getSingleMetricAsString('audit_records_dropped_total')).toMatch(/audit_records_dropped_total\{sink="postgres:perimeter_audit"\} 3/);

    await created.close();
    const undelivered = lines.filter((l) => l.code === 'ERR_AUDIT_UNDELIVERED');
    expect(undelivered.map((l) => l.record.resource_id)).toEqual([0, 1, 2, 3, 4]);
    expect(undelivered[0]).toMatchObject({ level: 'error', sink: 'postgres:perimeter_audit', record: { event: 'GAME_CREATED', action: 'POST /api/games' } });
    expect(created.middleware.auditLog.stats()[0]).toMatchObject({ queued: 0, dropped: 8 });
  });

  it('refuses a misconfigured sink at startup, naming the option and the fix', () => {
    const logger = recordingLogger().logger;
    expect(() => createStack({ ...ONLY_AUDIT, logger, auditLog: { sink: { postgres: true } } })).toThrow(
      new ConfigError('auditLog.sink.postgres', "postgres: true writes to the stack's PostgreSQL: pass postgres to createStack() (createStack({ postgres: process.env.DATABASE_URL, auditLog: { sink: { postgres: true } } })), or give the sink its own { postgres: process.env.DATABASE_URL }"),
    );
    expect(() => auditLog({ sink: { postgres: true } })).toThrow(/auditLog\.sink\.postgres: postgres: true writes to the stack's PostgreSQL/);
    expect(() => auditLog({ sink: [{ postgres: 'mysql://x' }] })).toThrow(/auditLog\.sink\[0\]\.postgres: expected a connection URL starting with postgres:\/\//);
    expect(() => auditLog({ sink: { postgres: { url, tablePrefix: 'Bad-Prefix' } } })).toThrow(/auditLog\.sink\.postgres\.tablePrefix: expected a safe SQL identifier prefix/);
    // @ts-expect-error an option the sink does not have
    expect(() => auditLog({ sink: { postgres: true, tablePrefx: 'x' } })).toThrow(/auditLog\.sink\.tablePrefx: unknown sink option/);
    // Two kinds in one sink (TypeScript lets it through: each key belongs to some sink type).
    expect(() => auditLog({ sink: { postgres: true, file: 'a.jsonl' } })).toThrow(/give one of file, redisStream or postgres per sink/);
  });
});
