import { Agent } from 'node:http';
import { createStack, verifyAuditTable, type Stack } from '../index';
import { eventually, recordingLogger } from './helpers/app';
import { auditRows, closeServer, gamesApp, listen, ONLY_AUDIT, post, withClient } from './helpers/audit-postgres';
import { describePostgres } from './helpers/postgres';
import { OwnPostgresServer } from './helpers/postgres-server';

const TOTAL = 300;

describePostgres('{ postgres } audit sink across a PostgreSQL restart (#15)', () => {
  let server: OwnPostgresServer;
  let stack: Stack | undefined;
  beforeAll(async () => {
    // A server of this suite's own: stopping it must not disturb the other suites.
    server = await OwnPostgresServer.start();
  }, 60_000);
  afterAll(async () => {
    await stack?.close();
    await server?.destroy();
  });

  it('restarted in the middle of a burst: requests never wait for it, and afterwards every accepted record is in the table once, chain valid', async () => {
    const { logger, lines } = recordingLogger();
    stack = createStack({
      ...ONLY_AUDIT,
      logger,
      postgres: { url: server.url, statementTimeout: '1s' },
      // Short backoffs, so recovery is noticed within the test rather than after 30 s.
      auditLog: { sink: { postgres: true }, batchSize: 10, retryDelay: '50ms', maxRetryDelay: '250ms', closeTimeout: '30s' },
    });
    await stack.ready();
    const audit = stack.middleware.auditLog;
    const { server: http, url } = await listen(gamesApp(stack));
    const agent = new Agent({ keepAlive: true, maxSockets: 10 });
    const statuses: number[] = [];
    let next = 0;
    // Ten clients sending one request after another until TOTAL were sent.
    const burst = Promise.all(
      Array.from({ length: 10 }, async () => {
        while (next < TOTAL) {
          const n = next++;
          statuses[n] = await post(agent, `${url}/api/games`, { n });
        }
      }),
    );
    try {
      await eventually(() => expect(audit.stats()[0].written).toBeGreaterThanOrEqual(60), 30_000);
      // A fast shutdown: sessions (some in the middle of an append) are terminated.
      await server.stop();
      await eventually(() => expect(audit.stats()[0].failing).toBe(true), 30_000);
      const duringOutage = next;
      await eventually(() => expect(next).toBeGreaterThan(duringOutage), 30_000);
      await server.restart();
      await burst;
      expect(statuses.filter((s) => s === 201)).toHaveLength(TOTAL);
      expect(await audit.flush('60s')).toBe(true);
    } finally {
      agent.destroy();
      await closeServer(http);
    }

    const rows = await auditRows(server.url);
    expect(rows).toHaveLength(TOTAL);
    expect(rows.map((r) => r.record.resource_id).sort((a, b) => a - b)).toEqual(Array.from({ length: TOTAL }, (_, i) => i));
    expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: TOTAL }, (_, i) => i + 1));
    expect(await withClient(server.url, (c) => verifyAuditTable(c))).toMatchObject({ valid: true, count: TOTAL });
    expect(audit.stats()[0]).toMatchObject({ written: TOTAL, dropped: 0, failing: false, queued: 0 });
    // The outage and the recovery were each said once.
    expect(lines.filter((l) => l.code === 'ERR_AUDIT_SINK_FAILED')).toHaveLength(1);
    expect(lines.filter((l) => l.code === 'ERR_AUDIT_SINK_RECOVERED')).toHaveLength(1);
    expect(lines.filter((l) => l.code === 'ERR_AUDIT_UNDELIVERED')).toEqual([]);
  }, 120_000);
});
