import { Agent } from 'node:http';
import { Client } from 'pg';
import { auditLog, verifyAuditTable, type AuditRecord } from '../index';
import { PostgresAuditSink } from '../lib/audit/postgres-sink';
import { PostgresDatabase } from '../lib/postgres/database';
import { PostgresStoreError } from '../lib/postgres/errors';
import { parsePostgresOption } from '../lib/postgres/options';
import { eventually, loadExpress, newApp, recordingLogger } from './helpers/app';
import { auditRows, closeServer, listen, post, withClient } from './helpers/audit-postgres';
import { describePostgres, freshDatabase } from './helpers/postgres';

function records(from: number, n: number): AuditRecord[] {
  return Array.from({ length: n }, (_, i) => ({
    timestamp: new Date(Date.UTC(2024, 0, 15, 10, 30, from + i)).toISOString(),
    event: 'GAME_CREATED',
    user_id: 42,
    tenant_id: null,
    action: 'POST /api/games',
    route: '/api/games',
    ip: '192.168.1.1',
    status: 201,
    resource_id: from + i,
    request_id: `req-${from + i}`,
  }));
}

/** Sessions of ours waiting for a lock (the chain's advisory lock held by the test). */
async function waitingOnLock(url: string): Promise<number> {
  return withClient(url, async (c) => {
    const { rows } = await c.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'express-perimeter' AND wait_event_type = 'Lock' AND datname = current_database()");
    return rows[0].n as number;
  });
}

/** Holds the chain lock of `table` in a session of its own until the returned function is called. */
async function holdChainLock(url: string, table: string): Promise<() => Promise<void>> {
  const holder = new Client({ connectionString: url });
  await holder.connect();
  await holder.query('BEGIN');
  await holder.query("SELECT pg_advisory_xact_lock(hashtextextended('express-perimeter:audit:' || $1, 0))", [table]);
  return async () => {
    await holder.query('COMMIT');
    await holder.end();
  };
}

describePostgres('{ postgres } sink retries: a batch is in the table once (#15)', () => {
  let url: string;
  const opened: Array<{ close(): Promise<void> }> = [];
  beforeAll(async () => {
    url = await freshDatabase();
  });
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((o) => o.close()));
  });

  async function database(tablePrefix: string, statementTimeout = '5s'): Promise<PostgresDatabase> {
    const db = new PostgresDatabase(parsePostgresOption({ url, tablePrefix, statementTimeout }), { logger: recordingLogger().logger });
    opened.push(db);
    await db.whenSchema();
    return db;
  }

  it('a retry after an answer lost at COMMIT (the batch did commit) adds nothing; the next batch continues the chain', async () => {
    const db = await database('lost_');
    let loseNext = true;
    // The real transaction commits; then the connection "drops" before the answer arrives.
    const flaky = {
      tables: db.tables,
      transaction: async <T>(work: Parameters<PostgresDatabase['transaction']>[0]): Promise<T> => {
        const result = (await db.transaction(work)) as T;
        if (loseNext) {
          loseNext = false;
          throw new PostgresStoreError('unavailable', 'PostgreSQL is unavailable (ECONNRESET)', true);
        }
        return result;
      },
    };
    const sink = new PostgresAuditSink(flaky, '0'.repeat(64), 'postgres:lost_audit');
    const batch = records(0, 5);
    await expect(sink.write(batch, 'batch-1')).rejects.toMatchObject({ maybeApplied: true });
    await sink.write(batch, 'batch-1');
    await sink.write(records(5, 3), 'batch-2');
    const rows = await auditRows(url, 'lost_');
    expect(rows.map((r) => r.record.resource_id)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(await withClient(url, (c) => verifyAuditTable(c, { tablePrefix: 'lost_' }))).toMatchObject({ valid: true, count: 8 });
  });

  it('two attempts of one batch waiting for the lock at once (a write past writeTimeout and its retry) insert it once', async () => {
    const db = await database('twice_');
    const sink = new PostgresAuditSink(db, '0'.repeat(64), 'postgres:twice_audit');
    const release = await holdChainLock(url, 'twice_audit');
    const batch = records(0, 4);
    const attempts = [sink.write(batch, 'batch-1'), sink.write(batch, 'batch-1')];
    await eventually(async () => expect(await waitingOnLock(url)).toBe(2), 20_000);
    await release();
    await Promise.all(attempts);
    expect((await auditRows(url, 'twice_')).map((r) => r.record.resource_id)).toEqual([0, 1, 2, 3]);
  });

  it('a write cancelled by statementTimeout while waiting for the lock is rolled back and its retry appends the batch', async () => {
    const db = await database('cancel_', '300ms');
    const sink = new PostgresAuditSink(db, '0'.repeat(64), 'postgres:cancel_audit');
    const release = await holdChainLock(url, 'cancel_audit');
    const batch = records(0, 2);
    await expect(sink.write(batch, 'batch-1')).rejects.toMatchObject({ failure: 'timeout', maybeApplied: false });
    await release();
    await sink.write(batch, 'batch-1');
    expect((await auditRows(url, 'cancel_')).map((r) => r.record.resource_id)).toEqual([0, 1]);
  });

  it('through auditLog: writes past writeTimeout are retried while the first attempts still wait, and every record lands once', async () => {
    const { logger, lines } = recordingLogger();
    const handler = auditLog({ sink: { postgres: { url, tablePrefix: 'queue_' } }, writeTimeout: '100ms', retryDelay: '20ms', maxRetryDelay: '100ms', batchSize: 10, logger });
    opened.push(handler);
    const app = newApp();
    app.use(loadExpress().json(), handler);
    app.post('/api/games', (req, res) => {
      res.status(201).json({ id: req.body.n });
    });
    const release = await holdChainLock(url, 'queue_audit');
    const { server, url: base } = await listen(app);
    const agent = new Agent({ keepAlive: true });
    try {
      const statuses = await Promise.all(Array.from({ length: 25 }, (_, n) => post(agent, `${base}/api/games`, { n })));
      expect(statuses.every((s) => s === 201)).toBe(true);
      // Several attempts of the first batch queue up behind the lock before it is released.
      await eventually(async () => expect(await waitingOnLock(url)).toBeGreaterThanOrEqual(3), 20_000);
      expect(lines.filter((l) => l.code === 'ERR_AUDIT_SINK_FAILED')).toEqual([expect.objectContaining({ sink: 'postgres:queue_audit' })]);
      await release();
      expect(await handler.flush('20s')).toBe(true);
    } finally {
      agent.destroy();
      await closeServer(server);
    }
    const rows = await auditRows(url, 'queue_');
    expect(rows.map((r) => r.record.resource_id).sort((a, b) => a - b)).toEqual(Array.from({ length: 25 }, (_, i) => i));
    expect(await withClient(url, (c) => verifyAuditTable(c, { tablePrefix: 'queue_' }))).toMatchObject({ valid: true, count: 25 });
  }, 30_000);
});
