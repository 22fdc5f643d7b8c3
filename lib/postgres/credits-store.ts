import type { CreditsHistoryEntry, CreditsHistoryOptions, CreditsStore, ReserveResult } from '../stores/credits-store';
import type { PostgresDatabase } from './database';
import type { PostgresTables, PreparedStatement } from './schema';

// Reservations past their time to live are deleted this often (and at most this many per pass):
// the spend stays, as on Redis where the key expires.
const SWEEP_EVERY_MS = 60_000;
const SWEEP_BATCH = 1000;
// Commits arriving within this window are one DELETE, up to this many ids.
const COMMIT_WINDOW_MS = 20;
const COMMIT_BATCH = 500;

// The ledger rows a change writes: the account's opening row when the change created it (its
// initial balance, so the ledger's deltas sum to the balance from the first row on), then the
// change itself. Ordered, so ids follow the order of events.
const LEDGER_ROWS = (t: PostgresTables, source: string, created: string, initial: string, delta: string, after: string, reason: string, requestId: string) => `
  INSERT INTO ${t.creditLedger} (account, delta, balance_after, reason, request_id)
  SELECT $1, d.delta, d.after, d.reason, d.request_id
  FROM ${source}, LATERAL (VALUES
    (1, ${initial}, ${initial}, 'initial', NULL::text),
    (2, ${delta}, ${after}, ${reason}, ${requestId})
  ) AS d(ord, delta, after, reason, request_id)
  WHERE d.ord = 2 OR (${created} AND ${initial} > 0)
  ORDER BY d.ord`;

// $1 account, $2 cost, $3 reservation, $4 initial balance, $5 request id.
// One statement, so one transaction: the spend, its reservation row and its ledger row. The spend
// is the conditional update: under concurrency PostgreSQL re-checks `balance >= cost` on the row
// as the previous writer left it, so no two spends overdraw. An unknown account is created at its
// initial balance minus the cost when the initial balance covers it, and not written at all when
// it does not. A reservation id seen before (a repeat, or one a refund already marked) makes the
// reservation row's insert fail, which undoes the whole statement: the spend included. Only the
// hot path is here; a refusal or a repeat costs a second, read-only, statement.
function reserveSql(t: PostgresTables, createAccount: boolean): string {
  const spend = createAccount
    ? `INSERT INTO ${t.creditBalances} AS b (account, balance) VALUES ($1, $4::bigint - $2::bigint)
    ON CONFLICT (account) DO UPDATE SET balance = b.balance - $2::bigint WHERE b.balance >= $2::bigint
    RETURNING b.balance, (b.xmax = 0) AS created`
    : `UPDATE ${t.creditBalances} SET balance = balance - $2::bigint
    WHERE account = $1 AND balance >= $2::bigint
    RETURNING balance, false AS created`;
  const ledger = createAccount
    ? LEDGER_ROWS(t, 'spend', 'spend.created', '$4::bigint', '-$2::bigint', 'spend.balance', "'spend'", "nullif($5::text, '')")
    : // $4 is unused on this path, but every statement takes the same parameters.
      `INSERT INTO ${t.creditLedger} (account, delta, balance_after, reason, request_id) SELECT $1, -$2::bigint, balance, 'spend', nullif($5::text, '') FROM spend WHERE $4::bigint IS NOT NULL`;
  return `WITH spend AS (
  ${spend}
), held AS (
  INSERT INTO ${t.creditReservations} (reservation, account, cost, state) SELECT $3, $1, $2::bigint, 'held' FROM spend
), ledger AS (${ledger}
)
SELECT balance FROM spend`;
}

// $1 account, $2 reservation, $3 initial balance: why a reservation was not taken.
function refusedSql(t: PostgresTables): string {
  return `SELECT coalesce((SELECT balance FROM ${t.creditBalances} WHERE account = $1), $3::bigint) AS current,
       (SELECT state FROM ${t.creditReservations} WHERE reservation = $2) AS prior`;
}

// $1 account, $2 reservation, $3 request id, $4 reservation ttl in ms.
// The reservation row is claimed with INSERT … ON CONFLICT: a held one (still within its time to
// live) turns 'refunded' and its cost goes back; none at all leaves a 'refunded' mark, so a
// reservation still on its way is refused when it arrives; an already refunded one matches
// nothing. ON CONFLICT waits for a reservation being written by another transaction and then
// sees it, so a refund racing its own reservation cannot miss it.
function refundSql(t: PostgresTables): string {
  return `WITH claim AS (
  INSERT INTO ${t.creditReservations} AS r (reservation, account, cost, state) VALUES ($2, $1, 0, 'refunded')
  ON CONFLICT (reservation) DO UPDATE SET state = 'refunded'
    WHERE r.state = 'held' AND r.created_at > now() - make_interval(secs => $4::double precision / 1000)
  RETURNING r.account, r.cost, (r.xmax = 0) AS created
), back AS (
  UPDATE ${t.creditBalances} AS b SET balance = b.balance + claim.cost FROM claim
  WHERE b.account = claim.account AND NOT claim.created AND claim.cost > 0
  RETURNING b.account, b.balance, claim.cost
), ledger AS (
  INSERT INTO ${t.creditLedger} (account, delta, balance_after, reason, request_id)
  SELECT account, cost, balance, 'refund', nullif($3::text, '') FROM back
)
SELECT coalesce((SELECT cost FROM back), 0) AS returned`;
}

// $1 account, $2 amount, $3 initial balance, $4 reason.
function grantSql(t: PostgresTables): string {
  return `WITH g AS (
  INSERT INTO ${t.creditBalances} AS b (account, balance) VALUES ($1, $3::bigint + $2::bigint)
  ON CONFLICT (account) DO UPDATE SET balance = b.balance + $2::bigint
  RETURNING b.balance, (b.xmax = 0) AS created
), ledger AS (${LEDGER_ROWS(t, 'g', 'g.created', '$3::bigint', '$2::bigint', 'g.balance', '$4::text', 'NULL::text')}
)
SELECT balance FROM g`;
}

/**
 * Credits on PostgreSQL: balances in `<prefix>credit_balances`, every change a row of the
 * append-only `<prefix>credit_ledger` written in the same transaction, and reservations in
 * `<prefix>credit_reservations` so a refund happens at most once. Same semantics as the Redis
 * store; `timeoutMs` arguments are not used (the database's statementTimeout bounds every call).
 */
export class PostgresCreditsStore implements CreditsStore {
  private readonly t: PostgresTables;
  private readonly reserveNew: PreparedStatement;
  private readonly reserveExisting: PreparedStatement;
  private readonly refusedText: PreparedStatement;
  private readonly refundText: PreparedStatement;
  private readonly grantText: PreparedStatement;
  private readonly setText: PreparedStatement;
  private readonly historyText: PreparedStatement;
  private readonly commitText: PreparedStatement;
  private readonly sweepText: string;
  private readonly balanceText: PreparedStatement;
  private pendingCommits: string[] = [];
  private commitFlush?: Promise<void>;
  private sweeper?: NodeJS.Timeout;

  constructor(
    private readonly db: PostgresDatabase,
    /** Accounts of a namespace other than the default are stored as `namespace:account`. */
    private readonly accountPrefix: string,
    private readonly defaultLimit: number,
    private readonly reservationTtlMs: number,
  ) {
    const t = (this.t = db.tables);
    this.reserveNew = db.prepare(reserveSql(t, true));
    this.reserveExisting = db.prepare(reserveSql(t, false));
    this.refusedText = db.prepare(refusedSql(t));
    this.refundText = db.prepare(refundSql(t));
    this.grantText = db.prepare(grantSql(t));
    this.balanceText = db.prepare(`SELECT balance FROM ${t.creditBalances} WHERE account = $1`);
    this.setText = db.prepare(`WITH old AS (SELECT balance FROM ${t.creditBalances} WHERE account = $1), s AS (
  UPDATE ${t.creditBalances} SET balance = $2::bigint WHERE account = $1 RETURNING balance
), ledger AS (
  INSERT INTO ${t.creditLedger} (account, delta, balance_after, reason) SELECT $1, $2::bigint - (SELECT balance FROM old), $2::bigint, 'set' FROM s
)
SELECT balance FROM s`);
    this.historyText = db.prepare(`SELECT id, delta, balance_after, reason, request_id, (extract(epoch FROM created_at) * 1000)::float8 AS at
FROM ${t.creditLedger} WHERE account = $1 AND ($2::bigint IS NULL OR id < $2::bigint) ORDER BY id DESC LIMIT $3`);
    this.commitText = db.prepare(`DELETE FROM ${t.creditReservations} WHERE reservation = ANY($1::text[]) AND state = 'held'`);
    this.sweepText = `DELETE FROM ${t.creditReservations} WHERE reservation IN (
  SELECT reservation FROM ${t.creditReservations} WHERE created_at < now() - make_interval(secs => $1::double precision / 1000)
  LIMIT ${SWEEP_BATCH} FOR UPDATE SKIP LOCKED)`;
  }

  async reserve(account: string, cost: number, initial: number, reservation: string, requestId: string): Promise<ReserveResult> {
    this.startSweeper();
    const key = this.key(account);
    // The upsert (which may create the account) only when the initial balance covers the cost;
    // otherwise the plain conditional update, which never creates it.
    const text = initial >= cost ? this.reserveNew : this.reserveExisting;
    let rows: Array<{ balance: string }>;
    try {
      rows = await this.db.query<{ balance: string }>(text, [key, cost, reservation, initial, requestId]);
    } catch (err) {
      // 23505: this reservation id has a row already; the statement took nothing.
      if ((err as { code?: unknown }).code !== '23505') throw err;
      rows = [];
    }
    if (rows.length === 1) return { ok: true, balance: Number(rows[0].balance) };
    const [why] = await this.db.query<{ current: string; prior: string | null }>(this.refusedText, [key, reservation, initial]);
    // A repeat of a reservation still held was taken already: nothing more. A refunded one stays undone.
    return { ok: why.prior === 'held', balance: Number(why.current) };
  }

  commit(_account: string, reservation: string): Promise<void> {
    this.pendingCommits.push(reservation);
    if (this.pendingCommits.length >= COMMIT_BATCH) return this.flushCommits();
    // Commits of a short window share one statement: a commit follows the response, so its delay
    // costs no request anything, while one DELETE per commit would cost as much as the spend.
    return (this.commitFlush ??= new Promise<void>((resolve) => setTimeout(resolve, COMMIT_WINDOW_MS)).then(() => this.flushCommits()));
  }

  async refund(account: string, reservation: string, requestId: string): Promise<number> {
    const [row] = await this.db.query<{ returned: string }>(this.refundText, [this.key(account), reservation, requestId, this.reservationTtlMs]);
    return Number(row.returned);
  }

  async grant(account: string, amount: number, initial: number, reason: string): Promise<number> {
    const [row] = await this.db.query<{ balance: string }>(this.grantText, [this.key(account), amount, initial, reason]);
    return Number(row.balance);
  }

  async set(account: string, amount: number): Promise<number> {
    const key = this.key(account);
    // The old balance must be read under the row's lock, or a spend between the read and the write
    // would make the ledger's delta wrong: the row is created (at 0, as on Redis) and locked first.
    return this.db.transaction(async (sql) => {
      await sql(`INSERT INTO ${this.t.creditBalances} (account, balance) VALUES ($1, 0) ON CONFLICT (account) DO NOTHING`, [key]);
      await sql(`SELECT 1 FROM ${this.t.creditBalances} WHERE account = $1 FOR UPDATE`, [key]);
      const [row] = await sql<{ balance: string }>(this.setText, [key, amount]);
      return Number(row.balance);
    });
  }

  async balance(account: string, initial: number): Promise<number> {
    const [row] = await this.db.query<{ balance: string }>(this.balanceText, [this.key(account)]);
    return row === undefined ? initial : Number(row.balance);
  }

  async history(account: string, options: CreditsHistoryOptions = {}): Promise<CreditsHistoryEntry[]> {
    const rows = await this.db.query<{ id: string; delta: string; balance_after: string; reason: string; request_id: string | null; at: number }>(this.historyText, [
      this.key(account),
      options.before ?? null,
      options.limit ?? this.defaultLimit,
    ]);
    return rows.map((r) => ({ id: Number(r.id), at: Math.round(r.at), delta: Number(r.delta), balance_after: Number(r.balance_after), reason: r.reason, request_id: r.request_id }));
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.sweeper = undefined;
    await this.commitFlush;
  }

  private flushCommits(): Promise<void> {
    this.commitFlush = undefined;
    const ids = this.pendingCommits;
    this.pendingCommits = [];
    return ids.length === 0 ? Promise.resolve() : this.db.query(this.commitText, [ids]).then(() => undefined);
  }

  private startSweeper(): void {
    if (this.sweeper !== undefined) return;
    this.sweeper = setInterval(() => {
      // A failed pass (the database is away) is simply the next one's work.
      this.db.query(this.sweepText, [this.reservationTtlMs]).catch(() => undefined);
    }, Math.min(SWEEP_EVERY_MS, this.reservationTtlMs));
    this.sweeper.unref();
  }

  private key(account: string): string {
    return this.accountPrefix + account;
  }
}
