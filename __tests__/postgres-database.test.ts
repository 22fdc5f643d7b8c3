import { Client, Pool } from 'pg';
import { PostgresDatabase } from '../lib/postgres/database';
import { PostgresStoreError } from '../lib/postgres/errors';
import { parsePostgresOption } from '../lib/postgres/options';
import type { PostgresOption } from '../lib/postgres/types';
import { eventually, recordingLogger } from './helpers/app';
import { FaultProxy } from './helpers/fault-proxy';
import { describePostgres, freshDatabase } from './helpers/postgres';

describePostgres('PostgreSQL calls: timeouts and failures (#15)', () => {
  let url: string;
  let admin: Client;
  const opened: Array<{ close(): Promise<void> }> = [];
  beforeAll(async () => {
    url = await freshDatabase();
    admin = new Client({ connectionString: url });
    await admin.connect();
    await admin.query('CREATE TABLE t (n int)');
  });
  afterAll(() => admin.end());
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((o) => o.close()));
    await admin.query('TRUNCATE t');
  });

  async function database(option: PostgresOption): Promise<PostgresDatabase> {
    const db = new PostgresDatabase(parsePostgresOption(option), { logger: recordingLogger().logger });
    opened.push(db);
    await db.whenSchema();
    return db;
  }

  async function failure(call: Promise<unknown>): Promise<PostgresStoreError> {
    const err = await call.then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(PostgresStoreError);
    return err as PostgresStoreError;
  }

  describe.each([
    ['a pool it opened', (u: string) => ({ url: u, statementTimeout: '300ms' })],
    ['the user\'s pool', (u: string) => ({ pool: new Pool({ connectionString: u }), statementTimeout: '300ms' })],
  ])('on %s', (_name, optionFor) => {
    let userPool: Pool | undefined;
    afterEach(async () => {
      await userPool?.end();
      userPool = undefined;
    });
    const make = async () => {
      const option = optionFor(url);
      if ('pool' in option) userPool = option.pool;
      return database(option);
    };

    it('a statement waiting on a lock past statementTimeout fails as a timeout, rolled back, and the lock holder is unharmed', async () => {
      const db = await make();
      const holder = new Client({ connectionString: url });
      await holder.connect();
      try {
        await holder.query('BEGIN');
        await holder.query('LOCK TABLE t IN ACCESS EXCLUSIVE MODE');
        const err = await failure(
          db.transaction(async (sql) => {
            await sql('SELECT 1');
            await sql('INSERT INTO t VALUES (1)');
          }),
        );
        expect(err).toMatchObject({ failure: 'timeout', maybeApplied: false, message: 'PostgreSQL cancelled a statement that ran longer than 300 ms' });
        await holder.query('COMMIT');
      } finally {
        await holder.end();
      }
      // Nothing half-written, and the next call works on the same pool.
      expect((await admin.query('SELECT count(*)::int AS n FROM t')).rows).toEqual([{ n: 0 }]);
      expect(await db.query('INSERT INTO t VALUES (2) RETURNING n')).toEqual([{ n: 2 }]);
    });

    it('a single statement past statementTimeout is cancelled by the server', async () => {
      const db = await make();
      const err = await failure(db.query('SELECT pg_sleep(5)'));
      expect(err).toMatchObject({ failure: 'timeout', maybeApplied: false });
    });
  });

  it('a server that stops answering fails the call by the client-side deadline, and calls work again once it answers', async () => {
    const port = Number(new URL(url).port);
    const proxy = await FaultProxy.start(port);
    try {
      const viaProxy = new URL(url);
      viaProxy.port = new URL(proxy.url).port;
      const db = await database({ url: viaProxy.toString(), statementTimeout: '1s' });
      expect(await db.query('SELECT 1 AS one')).toEqual([{ one: 1 }]);
      proxy.silence();
      const err = await failure(db.query('INSERT INTO t VALUES (3)'));
      // Sent, then silence: only the server knows whether it ran.
      expect(err).toMatchObject({ failure: 'timeout', maybeApplied: true, message: 'PostgreSQL did not answer within 2000 ms' });
      proxy.heal();
      await eventually(async () => expect(await db.query('SELECT 2 AS two')).toEqual([{ two: 2 }]));
    } finally {
      await proxy.close();
    }
  });

  it('an unreachable server is unavailable, and nothing was sent; before the schema exists too', async () => {
    const port = Number(new URL(url).port);
    const proxy = await FaultProxy.start(port);
    const viaProxy = new URL(url);
    viaProxy.port = new URL(proxy.url).port;
    const db = await database({ url: viaProxy.toString(), statementTimeout: '300ms' });
    await proxy.close();
    // The first call may meet a pooled connection the proxy cut (sent, so maybe applied); then none can be made.
    await eventually(async () => {
      expect(await failure(db.query('SELECT 1'))).toMatchObject({ failure: 'unavailable', maybeApplied: false, message: 'PostgreSQL is unavailable (ECONNREFUSED)' });
    });

    const never = new PostgresDatabase(parsePostgresOption({ url: viaProxy.toString(), statementTimeout: '300ms' }), { logger: recordingLogger().logger });
    opened.push(never);
    await eventually(() => expect(never.readiness.describe()).toMatch(/ECONNREFUSED/));
    expect(await failure(never.query('SELECT 1'))).toMatchObject({ failure: 'unavailable', maybeApplied: false, message: 'PostgreSQL schema is not ready (ECONNREFUSED)' });
  });

  it('a pool exhausted by slow statements fails fast with a clear error instead of queueing', async () => {
    const db = await database({ url, statementTimeout: '5s' });
    // Ten statements (the pool's size) wait on a lock the test holds.
    const holder = new Client({ connectionString: url });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE t IN ACCESS EXCLUSIVE MODE');
      const slow = Array.from({ length: 10 }, () => db.query('SELECT count(*) FROM t'));
      await eventually(async () => {
        const { rows } = await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'express-perimeter' AND wait_event_type = 'Lock'");
        expect(rows[0].n).toBe(10);
      });
      const err = await failure(db.query('SELECT 1'));
      expect(err).toMatchObject({ failure: 'pool_exhausted', maybeApplied: false });
      expect(err.message).toBe('No PostgreSQL connection became free within 2000 ms: every connection of the pool is busy (slow statements, or a pool too small for the load)');
      await holder.query('COMMIT');
      await Promise.all(slow);
    } finally {
      await holder.end();
    }
  });

  it('close() waits for calls under way, then refuses new ones', async () => {
    const db = new PostgresDatabase(parsePostgresOption(url), { logger: recordingLogger().logger });
    await db.whenSchema();
    const running = db.query('SELECT pg_sleep(0.2), 1 AS one');
    const closing = db.close();
    expect(await running).toEqual([{ pg_sleep: '', one: 1 }]);
    await closing;
    await expect(db.query('SELECT 1')).rejects.toMatchObject({ failure: 'unavailable', message: 'The PostgreSQL store is closed' });
  });
});
