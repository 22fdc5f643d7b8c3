/**
 * PostgreSQL credits benchmark (not a test): `npm run bench:postgres`.
 *
 * Spends per second through the PostgreSQL credits store (a reservation: one statement; its
 * commit: batched) beside a bare `SELECT 1` round trip on the same pool, in the same run,
 * interleaved, so drift on a shared machine hits both alike. Also a spend that is refunded, and
 * spends all on one account (every one waits for the row lock of the one before).
 *
 * Starts its own PostgreSQL (initdb + postgres on a free port, fsync off like the tests) unless
 * DATABASE_URL is set. PG_BENCH_MS sets one measurement (default 2000 ms), PG_BENCH_ROUNDS the
 * rounds whose median is printed (3), PG_BENCH_IN_FLIGHT the calls in flight (32).
 */
import { loadavg } from 'node:os';
import winston from 'winston';
import { PostgresDatabase } from '../lib/postgres/database';
import { parsePostgresOption } from '../lib/postgres/options';
import { PostgresCreditsStore } from '../lib/postgres/credits-store';
import { OwnPostgresServer } from '../__tests__/helpers/postgres-server';

const DURATION_MS = Number(process.env.PG_BENCH_MS ?? 2000);
const ROUNDS = Number(process.env.PG_BENCH_ROUNDS ?? 3);
const IN_FLIGHT = Number(process.env.PG_BENCH_IN_FLIGHT ?? 32);
const ACCOUNTS = 10_000;
const PREFIX = `bench${process.pid}_`;

type Op = (i: number) => Promise<unknown>;

async function main(): Promise<void> {
  const own = process.env.DATABASE_URL ? undefined : await OwnPostgresServer.start();
  const url = process.env.DATABASE_URL ?? own!.url;
  const logger = winston.createLogger({ silent: true });
  const db = new PostgresDatabase(parsePostgresOption({ url, tablePrefix: PREFIX, statementTimeout: '5s' }), { logger });
  await db.whenSchema();
  const store = new PostgresCreditsStore(db, '', 20, 3_600_000);
  const [{ server_version: version }] = await db.query<{ server_version: string }>('SHOW server_version');
  // Accounts with room for every spend of the run, created up front (a spend, not an account creation, is measured).
  await db.query(`INSERT INTO ${PREFIX}credit_balances (account, balance) SELECT 'a' || g, 1000000000 FROM generate_series(0, ${ACCOUNTS - 1}) g`);
  await db.query(`INSERT INTO ${PREFIX}credit_ledger (account, delta, balance_after, reason) SELECT 'a' || g, 1000000000, 1000000000, 'initial' FROM generate_series(0, ${ACCOUNTS - 1}) g`);
  await db.query(`INSERT INTO ${PREFIX}credit_balances (account, balance) VALUES ('hot', 1000000000)`);
  await db.query(`INSERT INTO ${PREFIX}credit_ledger (account, delta, balance_after, reason) VALUES ('hot', 1000000000, 1000000000, 'initial')`);

  let n = 0;
  const settling = new Set<Promise<void>>();
  const reservation = (): string => `b${(++n).toString(36)}`;
  const ops: Array<[string, Op]> = [
    ['SELECT 1 (same pool)', () => db.query('SELECT 1')],
    // As the middleware does it: the request waits for its reservation; the commit follows the
    // response (batched with its neighbours), and the measurement ends only once all are taken.
    ['spend: reserve, commit after', async (i) => {
      const id = reservation();
      const account = `a${i % ACCOUNTS}`;
      await store.reserve(account, 1, 0, id, `req-${id}`);
      settling.add(store.commit(account, id));
    }],
    ['spend: reserve, then await commit', async (i) => {
      const id = reservation();
      const account = `a${i % ACCOUNTS}`;
      await store.reserve(account, 1, 0, id, `req-${id}`);
      await store.commit(account, id);
    }],
    ['reservation alone (one statement)', (i) => store.reserve(`a${i % ACCOUNTS}`, 1, 0, reservation(), 'req')],
    ['spend refunded: reserve + refund', async (i) => {
      const id = reservation();
      const account = `a${i % ACCOUNTS}`;
      await store.reserve(account, 1, 0, id, `req-${id}`);
      await store.refund(account, id, `req-${id}`);
    }],
    ['spend on one hot account', async () => {
      const id = reservation();
      await store.reserve('hot', 1, 0, id, `req-${id}`);
      await store.commit('hot', id);
    }],
  ];

  const results = new Map<string, number[]>();
  const settled = async (): Promise<void> => {
    await Promise.all([...settling]);
    settling.clear();
  };
  for (const [, op] of ops) await measure(op, 300, settled);
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, op] of ops) results.set(name, [...(results.get(name) ?? []), await measure(op, DURATION_MS, settled)]);
  }
  const select = median(results.get('SELECT 1 (same pool)') ?? []);
  console.log(`\nPostgreSQL ${version}${own ? ' (private, fsync off)' : ''}; pool of 10; ${IN_FLIGHT} calls in flight; median of ${ROUNDS} x ${DURATION_MS} ms; Node ${process.version}; load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}\n`);
  console.log(pad('contender', 36) + pad('ops/s', 10) + 'x SELECT 1');
  for (const [name] of ops) {
    const rate = median(results.get(name) ?? []);
    console.log(pad(name, 36) + pad(String(Math.round(rate)), 10) + (rate / select).toFixed(2));
  }
  const spend = median(results.get('spend: reserve, commit after') ?? []) / select;
  console.log(`\nspend (reserve, commit after) / SELECT 1 = ${spend.toFixed(2)} (target >= 0.5): ${spend >= 0.5 ? 'met' : 'NOT met'}`);

  const [books] = await db.query<{ off: number }>(`SELECT count(*)::int AS off FROM ${PREFIX}credit_balances b
    JOIN (SELECT account, sum(delta) AS s FROM ${PREFIX}credit_ledger GROUP BY account) l USING (account) WHERE l.s <> b.balance`);
  console.log(`accounts whose ledger does not sum to the balance after the run: ${books.off}`);

  await store.close();
  for (const table of ['credit_ledger', 'credit_balances', 'credit_reservations', 'audit', 'schema_migrations']) await db.query(`DROP TABLE ${PREFIX}${table}`);
  await db.close();
  await own?.destroy();
}

async function measure(op: Op, durationMs: number, settled: () => Promise<void>): Promise<number> {
  let done = 0;
  const started = performance.now();
  const end = started + durationMs;
  const worker = async (w: number): Promise<void> => {
    for (let i = w; performance.now() < end; i += IN_FLIGHT) {
      await op(i);
      done++;
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, (_, w) => worker(w)));
  await settled();
  return done / ((performance.now() - started) / 1000);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

function pad(text: string, width: number): string {
  return text.padEnd(width);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
