import { randomUUID } from 'node:crypto';
import { Client } from 'pg';
import { PostgresDatabase } from '../lib/postgres/database';
import { parsePostgresOption } from '../lib/postgres/options';
import { StoresWithPostgres } from '../lib/postgres/stores';
import { creditsStore, type CreditsStore } from '../lib/stores/credits-store';
import { MemoryStores } from '../lib/stores';
import { recordingLogger } from './helpers/app';
import { expectLedgerBalanced, ledgerMismatches } from './helpers/ledger';
import { describePostgres, freshDatabase } from './helpers/postgres';

describePostgres('PostgreSQL credits store (#15)', () => {
  let url: string;
  let prefix: string;
  let stores: StoresWithPostgres;
  let store: CreditsStore;
  beforeAll(async () => {
    url = await freshDatabase();
  });
  beforeEach(async () => {
    prefix = `s${randomUUID().slice(0, 8)}_`;
    stores = new StoresWithPostgres(new MemoryStores(), new PostgresDatabase(parsePostgresOption({ url, tablePrefix: prefix }), { logger: recordingLogger().logger }));
    store = stores.create(creditsStore());
    await stores.postgres.whenSchema();
  });
  afterEach(async () => {
    await expectLedgerBalanced(url, prefix);
    await store.close?.();
    await stores.close();
  });

  async function sql<R>(text: string, values?: unknown[]): Promise<R[]> {
    const client = new Client({ connectionString: url });
    await client.connect();
    try {
      return (await client.query(text, values)).rows as R[];
    } finally {
      await client.end();
    }
  }

  it('refunds a reservation at most once, and not at all after a commit', async () => {
    await store.grant('pat', 10, 0, 'grant');
    expect(await store.reserve('pat', 4, 0, 'r1', 'req-1')).toEqual({ ok: true, balance: 6 });
    const twice = await Promise.all([store.refund('pat', 'r1', 'req-1'), store.refund('pat', 'r1', 'req-1')]);
    expect(twice.sort()).toEqual([0, 4]);
    expect(await store.balance('pat', 0)).toBe(10);
    expect(await store.reserve('pat', 4, 0, 'r2', 'req-2')).toEqual({ ok: true, balance: 6 });
    await store.commit('pat', 'r2');
    expect(await store.refund('pat', 'r2', 'req-2')).toBe(0);
    expect(await store.balance('pat', 0)).toBe(6);
  });

  it('takes nothing more for a repeated reservation id, and nothing for one that arrives after its undo', async () => {
    await store.grant('ren', 10, 0, 'grant');
    expect(await store.reserve('ren', 4, 0, 'r1', 'req-1')).toEqual({ ok: true, balance: 6 });
    expect(await store.reserve('ren', 4, 0, 'r1', 'req-1')).toEqual({ ok: true, balance: 6 });
    // The undo of a reservation that has not arrived yet leaves a mark that refuses it.
    expect(await store.refund('ren', 'late', 'req-2')).toBe(0);
    expect(await store.reserve('ren', 4, 0, 'late', 'req-2')).toEqual({ ok: false, balance: 6 });
    expect(await store.balance('ren', 0)).toBe(6);
  });

  it('never goes below zero and never writes an unknown account it refused', async () => {
    expect(await store.reserve('quinn', 5, 3, 'r1', '')).toEqual({ ok: false, balance: 3 });
    expect(await sql(`SELECT * FROM ${prefix}credit_balances WHERE account = 'quinn'`)).toEqual([]);
    expect(await store.history('quinn')).toEqual([]);
    expect(await store.reserve('quinn', 3, 3, 'r2', '')).toEqual({ ok: true, balance: 0 });
    expect(await store.reserve('quinn', 1, 3, 'r3', '')).toEqual({ ok: false, balance: 0 });
  });

  it('writes a ledger row per change with the request id and the reason, its first row the initial balance', async () => {
    expect(await store.reserve('kim', 3, 50, 'r1', 'req-spend')).toEqual({ ok: true, balance: 47 });
    expect(await store.reserve('kim', 5, 50, 'r2', 'req-fail')).toEqual({ ok: true, balance: 42 });
    expect(await store.refund('kim', 'r2', 'req-fail')).toBe(5);
    expect(await store.grant('kim', 10, 50, 'promo')).toBe(57);
    expect(await store.set('kim', 20)).toBe(20);
    const history = await store.history('kim');
    expect(history.map(({ delta, balance_after, reason, request_id }) => ({ delta, balance_after, reason, request_id }))).toEqual([
      { delta: -37, balance_after: 20, reason: 'set', request_id: null },
      { delta: 10, balance_after: 57, reason: 'promo', request_id: null },
      { delta: 5, balance_after: 47, reason: 'refund', request_id: 'req-fail' },
      { delta: -5, balance_after: 42, reason: 'spend', request_id: 'req-fail' },
      { delta: -3, balance_after: 47, reason: 'spend', request_id: 'req-spend' },
      { delta: 50, balance_after: 50, reason: 'initial', request_id: null },
    ]);
    expect(history[0].at).toBeGreaterThan(Date.now() - 60_000);
    // Stored under the account id itself, with no prefix (API.md).
    expect(await sql(`SELECT account, balance::int FROM ${prefix}credit_balances`)).toEqual([{ account: 'kim', balance: 20 }]);
  });

  it('pages the history newest first with limit and before', async () => {
    for (let i = 1; i <= 5; i++) await store.grant('page', i, 0, `g${i}`);
    const first = await store.history('page', { limit: 2 });
    expect(first.map((e) => e.reason)).toEqual(['g5', 'g4']);
    const second = await store.history('page', { limit: 2, before: first[1].id });
    expect(second.map((e) => e.reason)).toEqual(['g3', 'g2']);
    const last = await store.history('page', { limit: 2, before: second[1].id });
    expect(last.map((e) => e.reason)).toEqual(['g1']);
  });

  it('does not refund a reservation older than its time to live (the spend stays, as on Redis)', async () => {
    await store.grant('old', 10, 0, 'grant');
    await store.reserve('old', 4, 0, 'r-old', 'req');
    await sql(`UPDATE ${prefix}credit_reservations SET created_at = now() - interval '2 hours'`);
    expect(await store.refund('old', 'r-old', 'req')).toBe(0);
    expect(await store.balance('old', 0)).toBe(6);
  });

  it('keeps the books balanced under concurrent spends, refunds, grants and sets on one account', async () => {
    await store.grant('busy', 100, 0, 'grant');
    const work = Array.from({ length: 60 }, async (_, i) => {
      const id = `c${i}`;
      if (i % 10 === 0) return store.grant('busy', 5, 0, 'top-up');
      if (i % 17 === 0) return store.set('busy', 40);
      const r = await store.reserve('busy', 7, 0, id, `req-${i}`);
      if (r.ok && i % 3 === 0) await store.refund('busy', id, `req-${i}`);
      else if (r.ok) await store.commit('busy', id);
    });
    // On a loaded machine some calls may fail (pool wait, timeout): a failed call must leave the books balanced too.
    const outcomes = await Promise.allSettled(work);
    expect(outcomes.filter((o) => o.status === 'fulfilled').length).toBeGreaterThan(0);
    expect(await ledgerMismatches(url, prefix)).toEqual([]);
    expect(await store.balance('busy', 0)).toBeGreaterThanOrEqual(0);
  });
});
