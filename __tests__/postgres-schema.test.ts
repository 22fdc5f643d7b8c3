import { main } from '../lib/audit/cli';
import { createStack, type Stack } from '../lib/create-stack';
import { schemaStatements, SCHEMA_VERSION } from '../lib/postgres/schema';
import { recordingLogger } from './helpers/app';
import { describePostgres, freshDatabase, withClient } from './helpers/postgres';

/** The columns of `table` as `name type nullable`, in order. */
function columnsOf(url: string, table: string): Promise<string[]> {
  return withClient(url, async (client) => {
    const { rows } = await client.query<{ column_name: string; data_type: string }>(
      'SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position',
      [table],
    );
    return rows.map((r) => `${r.column_name} ${r.data_type}`);
  });
}

function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const io = { stdout: { write: (t: string) => (out += t) }, stderr: { write: (t: string) => (err += t) } };
  return main(args, io).then((code) => ({ code, out, err }));
}

describePostgres('PostgreSQL schema (#15)', () => {
  let url: string;
  const stacks: Stack[] = [];
  beforeAll(async () => {
    url = await freshDatabase();
  });
  afterEach(async () => {
    await Promise.all(stacks.splice(0).map((s) => s.close()));
  });

  it('is created once when several instances start at once: every ready() resolves, one migration, no error', async () => {
    const logs = Array.from({ length: 5 }, () => recordingLogger());
    for (const { logger } of logs) stacks.push(createStack({ logger, postgres: { url, tablePrefix: 'race_' } }));
    await Promise.all(stacks.map((s) => s.ready({ timeout: '15s' })));

    const lines = logs.flatMap((l) => l.lines);
    expect(lines.filter((l) => l.code === 'ERR_POSTGRES_SCHEMA')).toEqual([]);
    expect(lines.filter((l) => l.code === 'PERIMETER_POSTGRES_MIGRATED')).toEqual([
      expect.objectContaining({ table_prefix: 'race_', from_version: 0, to_version: SCHEMA_VERSION }),
    ]);
    const versions = await withClient(url, (c) => c.query('SELECT version FROM race_schema_migrations'));
    expect(versions.rows).toEqual([{ version: 1 }]);
  });

  it('has the tables and columns of API.md under the prefix, with CHECK (balance >= 0)', async () => {
    const stack = createStack({ logger: recordingLogger().logger, postgres: { url, tablePrefix: 'api_' } });
    stacks.push(stack);
    await stack.ready();
    expect(await columnsOf(url, 'api_credit_balances')).toEqual(['account text', 'balance bigint']);
    expect(await columnsOf(url, 'api_credit_ledger')).toEqual([
      'id bigint', 'account text', 'delta bigint', 'balance_after bigint', 'reason text', 'request_id text', 'created_at timestamp with time zone',
    ]);
    expect(await columnsOf(url, 'api_audit')).toEqual(['seq bigint', 'at timestamp with time zone', 'record jsonb', 'hash text', 'prev_hash text']);
    await withClient(url, async (client) => {
      await expect(client.query("INSERT INTO api_credit_balances VALUES ('a', -1)")).rejects.toMatchObject({ code: '23514' });
      const { rows } = await client.query<{ indexname: string }>("SELECT indexname FROM pg_indexes WHERE tablename = 'api_credit_ledger' ORDER BY 1");
      expect(rows.map((r) => r.indexname)).toEqual(['api_credit_ledger_account_id_idx', 'api_credit_ledger_created_at_idx', 'api_credit_ledger_pkey']);
    });
  });

  describe('npx express-perimeter migrate', () => {
    it('creates the tables (exit 0), and a second run finds them in place (exit 0)', async () => {
      const first = await cli(['migrate', '--postgres', url, '--table-prefix', 'cli_']);
      expect(first).toEqual({ code: 0, out: `OK: schema 'cli_' migrated from version 0 to ${SCHEMA_VERSION}\n`, err: '' });
      expect(await columnsOf(url, 'cli_credit_balances')).toEqual(['account text', 'balance bigint']);
      expect(await columnsOf(url, 'cli_audit')).toHaveLength(5);
      const again = await cli(['migrate', '--postgres', url, '--table-prefix', 'cli_', '--json']);
      expect(again.code).toBe(0);
      expect(JSON.parse(again.out)).toEqual({ ok: true, table_prefix: 'cli_', from: SCHEMA_VERSION, to: SCHEMA_VERSION });
    });

    it('lets a role that may not run DDL serve once the tables exist, and tells it how when they do not', async () => {
      await withClient(url, async (client) => {
        await client.query('DROP ROLE IF EXISTS perimeter_app');
        await client.query("CREATE ROLE perimeter_app LOGIN PASSWORD 'app'");
        await client.query('REVOKE CREATE ON SCHEMA public FROM PUBLIC');
        await client.query('GRANT USAGE ON SCHEMA public TO perimeter_app');
      });
      const appUrl = new URL(url);
      appUrl.username = 'perimeter_app';
      appUrl.password = 'app';

      const refused = recordingLogger();
      const early = createStack({ logger: refused.logger, postgres: { url: appUrl.toString(), tablePrefix: 'ddl_' } });
      stacks.push(early);
      await expect(early.ready({ timeout: '1s' })).rejects.toThrow(/PostgreSQL schema is not ready \(last error 42501\)/);
      expect(refused.lines.filter((l) => l.code === 'ERR_POSTGRES_SCHEMA')).toEqual([
        expect.objectContaining({ level: 'error', message: expect.stringContaining('npx express-perimeter migrate --postgres URL') }),
      ]);

      expect((await cli(['migrate', '--postgres', url, '--table-prefix', 'ddl_'])).code).toBe(0);
      await withClient(url, (client) => client.query('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO perimeter_app; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO perimeter_app'));
      // The stack that could not create them finds them by itself on its next try.
      await early.ready({ timeout: '10s' });
      const late = createStack({ logger: recordingLogger().logger, postgres: { url: appUrl.toString(), tablePrefix: 'ddl_' } });
      stacks.push(late);
      await late.ready({ timeout: '10s' });
    });

    it('exits 1 when the database cannot be reached, without printing the URL', async () => {
      const result = await cli(['migrate', '--postgres', 'postgres://someone:s3cret@127.0.0.1:1/none']);
      expect(result.code).toBe(1);
      expect(result.err).toMatch(/^express-perimeter migrate: FAILED: .*ECONNREFUSED.*nothing was changed\n$/);
      expect(result.err).not.toContain('s3cret');
    });

    it.each([
      [['migrate'], /missing --postgres <url>/],
      [['migrate', '--postgres', 'mysql://db'], /expected a URL starting with postgres:\/\//],
      [['migrate', '--postgres', 'postgres://db/app', '--table-prefix', 'Bad-'], /safe SQL identifier/],
      [['migrate', '--postgres'], /--postgres needs a value/],
      [['migrate', '--frobnicate'], /unknown option --frobnicate/],
    ])('exits 2 on a usage error: %p', async (args, message) => {
      const result = await cli(args);
      expect(result.code).toBe(2);
      expect(result.err).toMatch(message);
    });

    it('--print writes the DDL without connecting', async () => {
      const result = await cli(['migrate', '--print', '--table-prefix', 'doc_']);
      expect(result.code).toBe(0);
      expect(result.out).toBe(schemaStatements('doc_').map((s) => `${s};\n`).join('\n'));
      expect(result.out).toContain('CREATE TABLE doc_credit_ledger');
    });
  });
});
