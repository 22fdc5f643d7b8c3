import type { Server } from 'node:http';
import { Client } from 'pg';
import request from 'supertest';
import { createStack, type Stack, type StackConfig } from '../lib/create-stack';
import { PostgresDatabase } from '../lib/postgres/database';
import { parsePostgresOption } from '../lib/postgres/options';
import { StoresWithPostgres } from '../lib/postgres/stores';
import { MemoryStores } from '../lib/stores';
import { creditsStore } from '../lib/stores/credits-store';
import { eventually, newApp, recordingLogger } from './helpers/app';
import { expectLedgerBalanced } from './helpers/ledger';
import { describePostgres, freshDatabase } from './helpers/postgres';

// The proofs of #15 for credits on PostgreSQL; the whole credits suite also runs on it (credits.test.ts).
describePostgres('credits on PostgreSQL (#15)', () => {
  let url: string;
  let admin: Client;
  const open: Array<{ server: Server; stack: Stack }> = [];
  beforeAll(async () => {
    url = await freshDatabase();
    admin = new Client({ connectionString: url });
    await admin.connect();
  });
  afterAll(() => admin.end());
  afterEach(async () => {
    for (const { server, stack } of open.splice(0)) {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await stack.close();
    }
    // After every scenario, concurrent or not, the books balance.
    await expectLedgerBalanced(url);
  });

  /** One instance: its own stack, so its own pool, on the shared database. */
  function instance(config: StackConfig = {}) {
    const { logger, lines } = recordingLogger();
    const stack = createStack({
      logger,
      rateLimit: false,
      ipFilter: false,
      cache: false,
      sanitize: false,
      auditLog: false,
      postgres: url,
      credits: { cost: 10 },
      insert: [{ before: 'credits', name: 'user', handler: (req, _res, next) => ((req.user = { id: String(req.headers['x-user']) }), next()) }],
      ...config,
    });
    const app = newApp();
    app.use(stack);
    app.get('/ok', (_req, res) => {
      res.json({ ok: true });
    });
    app.get('/fail', (_req, res) => {
      res.status(503).json({ failed: true });
    });
    app.use(stack.errorHandler);
    const server = app.listen(0);
    open.push({ server, stack });
    return { stack, server, lines };
  }

  async function ledgerOf(account: string) {
    const { rows } = await admin.query<{ delta: string; reason: string; request_id: string | null }>(
      'SELECT delta, reason, request_id FROM perimeter_credit_ledger WHERE account = $1 ORDER BY id',
      [account],
    );
    return rows.map((r) => ({ delta: Number(r.delta), reason: r.reason, request_id: r.request_id }));
  }

  it('two instances, 30 concurrent spends of 10 against 100: exactly 10 succeed, 20 get 402, no double spend', async () => {
    const a = instance();
    const b = instance();
    await Promise.all([a.stack.ready(), b.stack.ready()]);
    await a.stack.middleware.credits.grant('ann', 100);
    const responses = await Promise.all(Array.from({ length: 30 }, (_, i) => request(i % 2 ? a.server : b.server).get('/ok').set('X-User', 'ann')));
    const statuses = responses.map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(10);
    expect(statuses.filter((s) => s === 402)).toHaveLength(20);
    expect(await b.stack.middleware.credits.balance('ann')).toBe(0);
    const ledger = await ledgerOf('ann');
    expect(ledger.filter((e) => e.reason === 'spend')).toHaveLength(10);
    // Each success is one spend row with its own request id.
    const succeeded = responses.filter((r) => r.status === 200).map((r) => r.headers['x-request-id']);
    expect(ledger.filter((e) => e.reason === 'spend').map((e) => e.request_id).sort()).toEqual(succeeded.sort());
  });

  it('gives the credits of a 5xx back and writes the refund in the ledger with its request id', async () => {
    const a = instance();
    await a.stack.middleware.credits.grant('ben', 25);
    const failed = await request(a.server).get('/fail').set('X-User', 'ben').expect(503);
    expect(failed.headers['x-credits-remaining']).toBe('15');
    await eventually(async () => expect(await a.stack.middleware.credits.balance('ben')).toBe(25));
    const id = failed.headers['x-request-id'];
    expect(await ledgerOf('ben')).toEqual([
      { delta: 25, reason: 'grant', request_id: null },
      { delta: -10, reason: 'spend', request_id: id },
      { delta: 10, reason: 'refund', request_id: id },
    ]);
  });

  it('refunds a reservation once when two instances both try, at the same time', async () => {
    const logger = recordingLogger().logger;
    const stores = [0, 1].map(() => new StoresWithPostgres(new MemoryStores(), new PostgresDatabase(parsePostgresOption(url), { logger })));
    try {
      const [one, two] = stores.map((s) => s.create(creditsStore()));
      await one.grant('cy', 30, 0, 'grant');
      await one.reserve('cy', 10, 0, 'res-cy', 'req-cy');
      const returned = await Promise.all([one.refund('cy', 'res-cy', 'req-cy'), two.refund('cy', 'res-cy', 'req-cy'), one.refund('cy', 'res-cy', 'req-cy')]);
      expect(returned.sort()).toEqual([0, 0, 10]);
      expect(await two.balance('cy', 0)).toBe(30);
      expect((await ledgerOf('cy')).filter((e) => e.reason === 'refund')).toHaveLength(1);
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });

  it('answers 503 when a statement waits on a lock past statementTimeout, and writes nothing', async () => {
    const a = instance({ postgres: { url, statementTimeout: '300ms' } });
    await a.stack.ready();
    await a.stack.middleware.credits.grant('dee', 50);
    const holder = new Client({ connectionString: url });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query("SELECT * FROM perimeter_credit_balances WHERE account = 'dee' FOR UPDATE");
      const res = await request(a.server).get('/ok').set('X-User', 'dee').expect(503);
      expect(res.body.error).toMatchObject({ code: 'SERVICE_UNAVAILABLE', request_id: res.headers['x-request-id'] });
      await holder.query('COMMIT');
    } finally {
      await holder.end();
    }
    expect(await a.stack.middleware.credits.balance('dee')).toBe(50);
    expect(await ledgerOf('dee')).toEqual([{ delta: 50, reason: 'grant', request_id: null }]);
    const { rows } = await admin.query("SELECT state FROM perimeter_credit_reservations WHERE account = 'dee'");
    expect(rows).toEqual([]);
    // The lock gone, the next request is served.
    await request(a.server).get('/ok').set('X-User', 'dee').expect(200);
  });

  it("serves free with onStoreError: 'open' while PostgreSQL cannot be reached", async () => {
    const a = instance({ postgres: { url: 'postgres://postgres@127.0.0.1:1/none', statementTimeout: '200ms' }, credits: { cost: 10, onStoreError: 'open' } });
    await request(a.server).get('/ok').set('X-User', 'eve').expect(200);
    const closed = instance({ postgres: { url: 'postgres://postgres@127.0.0.1:1/none', statementTimeout: '200ms' } });
    const res = await request(closed.server).get('/ok').set('X-User', 'eve').expect(503);
    expect(res.body.error.code).toBe('SERVICE_UNAVAILABLE');
  });

  it('keeps Redis-free neighbours in memory: only credits touch PostgreSQL', async () => {
    const a = instance({ rateLimit: { limit: 1, window: '1m' } });
    await a.stack.middleware.credits.grant('fay', 100);
    await request(a.server).get('/ok').set('X-User', 'fay').expect(200);
    await request(a.server).get('/ok').set('X-User', 'fay').expect(429);
    expect(a.stack.stores.kind).toBe('memory');
    const { rows } = await admin.query<{ table_name: string }>("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1");
    expect(rows.map((r) => r.table_name)).toEqual(['perimeter_audit', 'perimeter_credit_balances', 'perimeter_credit_ledger', 'perimeter_credit_reservations', 'perimeter_schema_migrations']);
  });
});
