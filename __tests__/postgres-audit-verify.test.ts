import { readAuditRows, verifyAuditChain, verifyAuditTable, type AuditRecord } from '../index';
import { main } from '../lib/audit/cli';
import { PostgresAuditSink } from '../lib/audit/postgres-sink';
import { PostgresDatabase } from '../lib/postgres/database';
import { parsePostgresOption } from '../lib/postgres/options';
import { recordingLogger } from './helpers/app';
import { withClient } from './helpers/audit-postgres';
import { describePostgres, freshDatabase } from './helpers/postgres';
import { freePort } from './helpers/redis-server';

function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const io = { stdout: { write: (t: string) => (out += t) }, stderr: { write: (t: string) => (err += t) } };
  return main(args, io).then((code) => ({ code, out, err }));
}

describePostgres('verifying the { postgres } audit table: verifyAuditTable, readAuditRows and verify-audit --postgres (#15)', () => {
  let url: string;
  beforeAll(async () => {
    url = await freshDatabase();
  });

  /** Writes 20 records through the sink, in batches of 6, into `<prefix>audit`; resolves to the head. */
  async function writeTwenty(prefix: string): Promise<string> {
    // A roomy timeout: a loaded machine can take seconds, and this writes the fixture, not the subject.
    const db = new PostgresDatabase(parsePostgresOption({ url, tablePrefix: prefix, statementTimeout: '60s' }), { logger: recordingLogger().logger });
    try {
      await db.whenSchema();
      const sink = new PostgresAuditSink(db, '0'.repeat(64), 'postgres');
      for (let from = 0; from < 20; from += 6) {
        const batch: AuditRecord[] = [];
        for (let i = from; i < Math.min(20, from + 6); i++) {
          batch.push({ timestamp: new Date(Date.UTC(2024, 0, 15, 10, 30, i)).toISOString(), event: 'GAME_CREATED', user_id: 42, tenant_id: null, action: 'POST /api/games', route: '/api/games', ip: '10.0.0.1', status: 201, resource_id: i, request_id: `req-${i}` });
        }
        await sink.write(batch, `batch-${from}`);
      }
    } finally {
      await db.close();
    }
    return withClient(url, async (c) => (await c.query(`SELECT hash FROM ${prefix}audit ORDER BY seq DESC LIMIT 1`)).rows[0].hash as string);
  }

  const sql = (text: string) => withClient(url, (c) => c.query(text));

  it('an intact table: valid, read a page at a time; the CLI exits 0', async () => {
    const head = await writeTwenty('intact_');
    // Pages of 3 and 7 do not divide 20: pages end mid-batch and the last page is short.
    for (const pageSize of [3, 7, 1000]) {
      const result = await withClient(url, (c) => verifyAuditTable(c, { tablePrefix: 'intact_', pageSize }));
      expect(result).toEqual({ table: 'intact_audit', valid: true, count: 20, head, lastSeq: 20 });
    }
    const viaRows = await withClient(url, (c) => verifyAuditChain(readAuditRows(c, { tablePrefix: 'intact_', pageSize: 4 })));
    expect(viaRows).toEqual({ valid: true, count: 20, head });
    const rows: Array<{ seq: number; resource_id: unknown }> = [];
    await withClient(url, async (c) => {
      for await (const r of readAuditRows(c, { tablePrefix: 'intact_', pageSize: 6, afterSeq: 15 })) rows.push({ seq: r.seq, resource_id: r.resource_id });
    });
    expect(rows).toEqual([16, 17, 18, 19, 20].map((seq) => ({ seq, resource_id: seq - 1 })));

    const ok = await cli(['verify-audit', '--postgres', url, '--table-prefix', 'intact_', '--page-size', '6']);
    expect(ok).toEqual({ code: 0, out: `OK: intact_audit: 20 rows, chain intact (last seq 20, head ${head})\n`, err: '' });
    const json = await cli(['verify-audit', '--postgres', url, '--table-prefix', 'intact_', '--json', '--head', head]);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.out)).toEqual({ table: 'intact_audit', valid: true, count: 20, head, lastSeq: 20 });
  });

  const EDITED = "the record's content does not match its hash (a field was edited)";
  it.each([
    ['a field of a record edited', `UPDATE edit_audit SET record = jsonb_set(record, '{status}', '200') WHERE seq = 7`, 'edit_', 7, 6, EDITED],
    ['a hash replaced', `UPDATE hash_audit SET hash = repeat('a', 64) WHERE seq = 12`, 'hash_', 12, 11, EDITED],
    ['a seq renumbered', 'UPDATE seq_audit SET seq = 100 WHERE seq = 20', 'seq_', 100, 19, EDITED],
    ['a middle row deleted', 'DELETE FROM del_audit WHERE seq = 10', 'del_', 11, 9, "prev_hash does not match the previous record's hash (a record was removed, inserted or reordered)"],
    ['the first row deleted', 'DELETE FROM first_audit WHERE seq = 1', 'first_', 2, 0, 'prev_hash of the first record is not the genesis value'],
  ])('%s: verifyAuditTable and the CLI (exit 1) name the first bad seq', async (_what, tamper, prefix, seq, before, reason) => {
    await writeTwenty(prefix);
    await sql(tamper);
    const result = await withClient(url, (c) => verifyAuditTable(c, { tablePrefix: prefix, pageSize: 5 }));
    expect(result).toMatchObject({ valid: false, seq, reason, count: before, brokenAt: before, lastSeq: before });
    expect(await withClient(url, (c) => verifyAuditChain(readAuditRows(c, { tablePrefix: prefix })))).toMatchObject({ valid: false, brokenAt: before });

    const broken = await cli(['verify-audit', '--postgres', url, '--table-prefix', prefix]);
    expect(broken.code).toBe(1);
    expect(broken.out).toBe(`BROKEN: ${prefix}audit: seq ${seq}: ${reason}; ${before} row${before === 1 ? '' : 's'} before it verify\n`);
    const json = await cli(['verify-audit', '--postgres', url, '--table-prefix', prefix, '--json']);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.out)).toMatchObject({ valid: false, seq, reason });
  });

  it('rows removed from the end are found against the expected head (--head)', async () => {
    const head = await writeTwenty('tail_');
    await sql('DELETE FROM tail_audit WHERE seq > 18');
    expect((await cli(['verify-audit', '--postgres', url, '--table-prefix', 'tail_'])).code).toBe(0);
    const broken = await cli(['verify-audit', '--postgres', url, '--table-prefix', 'tail_', '--head', head]);
    expect(broken).toEqual({ code: 1, out: 'BROKEN: tail_audit: after seq 18: the chain ends before the expected head (records were removed from the end); 18 rows before it verify\n', err: '' });
  });

  it('exits 2 on a usage error, a missing table or an unreachable server, never echoing the URL', async () => {
    const usage = [
      ['verify-audit', '--postgres'],
      ['verify-audit', '--postgres', 'mysql://u:secret@x/db'],
      ['verify-audit', '--postgres', url, '--table-prefix', 'Bad-Prefix'],
      ['verify-audit', '--postgres', url, '--genesis', 'nothex'],
      ['verify-audit', '--postgres', url, '--page-size', '0'],
      ['verify-audit', '--postgres', url, 'audit.jsonl'],
      ['verify-audit', '--postgres', url, '--frobnicate'],
    ];
    for (const args of usage) {
      const run = await cli(args);
      expect(run.code).toBe(2);
      expect(run.err).toMatch(/^express-perimeter verify-audit: .*\n\nUsage: express-perimeter verify-audit --postgres <url>/);
      expect(run.err).not.toContain('secret');
    }
    const missing = await cli(['verify-audit', '--postgres', url, '--table-prefix', 'nope_']);
    expect(missing).toMatchObject({ code: 2, out: '' });
    expect(missing.err).toBe('express-perimeter verify-audit: cannot read nope_audit: table nope_audit does not exist (is --table-prefix right? npx express-perimeter migrate creates it)\n');

    const closed = `postgres://someone:secret@127.0.0.1:${await freePort()}/db`;
    const unreachable = await cli(['verify-audit', '--postgres', closed]);
    expect(unreachable.code).toBe(2);
    expect(unreachable.err).toMatch(/^express-perimeter verify-audit: cannot read perimeter_audit: .*ECONNREFUSED/);
    expect(unreachable.err).not.toContain('secret');

    const help = await cli(['verify-audit', '--postgres', '--help']);
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/Exit status: 0 when the chain is intact, 1 when it is broken, 2 on a usage or connection error/);
    // The file mode is unchanged.
    expect((await cli(['verify-audit'])).code).toBe(2);
  });
});
