import type { PostgresClientLike } from './types';

/** A statement the database prepares once per connection (see PostgresDatabase.prepare). */
export interface PreparedStatement {
  text: string;
  name?: string;
}

/** Runs one statement (of a transaction the caller opened) and resolves to its rows. */
export type Sql = <R = Record<string, unknown>>(text: string | PreparedStatement, values?: unknown[]) => Promise<R[]>;

/** The table names of one `tablePrefix` (already checked to be a plain identifier, so pasted unquoted). */
export interface PostgresTables {
  prefix: string;
  /** `<prefix>credit_balances (account, balance)`. */
  creditBalances: string;
  /** `<prefix>credit_ledger (id, account, delta, balance_after, reason, request_id, created_at)`. */
  creditLedger: string;
  /** `<prefix>credit_reservations`: a spend still refundable, or the mark of one refunded (refund at most once). */
  creditReservations: string;
  /** `<prefix>audit (seq, at, record, hash, prev_hash)`. */
  audit: string;
  /** `<prefix>schema_migrations (version, applied_at)`: which migrations ran. */
  migrations: string;
}

/** The table names for `prefix`. */
export function tableNames(prefix: string): PostgresTables {
  return {
    prefix,
    creditBalances: `${prefix}credit_balances`,
    creditLedger: `${prefix}credit_ledger`,
    creditReservations: `${prefix}credit_reservations`,
    audit: `${prefix}audit`,
    migrations: `${prefix}schema_migrations`,
  };
}

/** One step of the schema. Steps run in order, each once, all missing ones in one transaction. */
export interface Migration {
  version: number;
  description: string;
  statements(t: PostgresTables): string[];
}

/**
 * The schema, as migrations. A later change appends a step with the next version; a step that
 * shipped is never edited (databases out there already ran it).
 */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'credit balances, credit ledger, credit reservations, audit',
    statements: (t) => [
      `CREATE TABLE ${t.creditBalances} (
  account text PRIMARY KEY,
  balance bigint NOT NULL CHECK (balance >= 0)
)`,
      // Append-only: for every account, sum(delta) = its balance (its first row brings the
      // initial balance). balance_after makes a statement readable without summing.
      `CREATE TABLE ${t.creditLedger} (
  id bigserial PRIMARY KEY,
  account text NOT NULL,
  delta bigint NOT NULL,
  balance_after bigint NOT NULL,
  reason text NOT NULL,
  request_id text,
  created_at timestamptz NOT NULL DEFAULT now()
)`,
      // history(account) newest first, paged by id.
      `CREATE INDEX ${t.creditLedger}_account_id_idx ON ${t.creditLedger} (account, id DESC)`,
      // Month-end reconciliation reads a period of time. BRIN: rows arrive in time order, so a
      // few pages of summary serve the range scan, and a spend pays almost nothing to keep it.
      `CREATE INDEX ${t.creditLedger}_created_at_idx ON ${t.creditLedger} USING brin (created_at)`,
      // 'held': spent and still refundable; 'refunded': given back (a second refund, or a late
      // reservation under the same id, finds it and does nothing). Rows older than the
      // reservation time to live are swept.
      `CREATE TABLE ${t.creditReservations} (
  reservation text PRIMARY KEY,
  account text NOT NULL,
  cost bigint NOT NULL CHECK (cost >= 0),
  state text NOT NULL CHECK (state IN ('held', 'refunded')),
  created_at timestamptz NOT NULL DEFAULT now()
)`,
      `CREATE INDEX ${t.creditReservations}_created_at_idx ON ${t.creditReservations} (created_at)`,
      // One row per audit record, chained by hash: prev_hash of a row is the hash of the row before it.
      `CREATE TABLE ${t.audit} (
  seq bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  record jsonb NOT NULL,
  hash text NOT NULL,
  prev_hash text NOT NULL
)`,
    ],
  },
];

/** The version the schema has once every migration of this release ran. */
export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;

/** Every DDL statement of the schema for `prefix`, in order (what `migrate` runs on an empty database). */
export function schemaStatements(prefix: string): string[] {
  const t = tableNames(prefix);
  return [migrationsTable(t), ...MIGRATIONS.flatMap((m) => m.statements(t))];
}

function migrationsTable(t: PostgresTables): string {
  return `CREATE TABLE IF NOT EXISTS ${t.migrations} (
  version integer PRIMARY KEY,
  description text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)`;
}

/**
 * The schema version a database has: 0 when the migrations table is missing. Reads only, so it
 * works for a role that may not run DDL (after `express-perimeter migrate` ran with one that may).
 */
export async function schemaVersion(sql: Sql, t: PostgresTables): Promise<number> {
  const [found] = await sql<{ present: boolean }>('SELECT to_regclass($1) IS NOT NULL AS present', [t.migrations]);
  if (found?.present !== true) return 0;
  const [row] = await sql<{ version: number }>(`SELECT coalesce(max(version), 0)::int AS version FROM ${t.migrations}`);
  return row?.version ?? 0;
}

/** Result of {@link migrate}. */
export interface MigrateResult {
  /** Version before. */
  from: number;
  /** Version after. */
  to: number;
}

/**
 * Brings the schema of `prefix` to {@link SCHEMA_VERSION}. Must run inside a transaction (`sql`
 * belongs to it): the advisory lock is held until it ends, so two instances starting at once
 * take turns, and the second finds the work done; DDL is transactional in PostgreSQL, so a crash
 * half-way leaves nothing behind.
 */
export async function migrate(sql: Sql, prefix: string): Promise<MigrateResult> {
  const t = tableNames(prefix);
  await sql('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`express-perimeter:schema:${prefix}`]);
  await sql(migrationsTable(t));
  const from = await schemaVersion(sql, t);
  for (const migration of MIGRATIONS) {
    if (migration.version <= from) continue;
    for (const statement of migration.statements(t)) await sql(statement);
    await sql(`INSERT INTO ${t.migrations} (version, description) VALUES ($1, $2)`, [migration.version, migration.description]);
  }
  return { from, to: Math.max(from, SCHEMA_VERSION) };
}

/** `client` as the `Sql` the schema and stores run statements through. */
export function sqlOn(client: Pick<PostgresClientLike, 'query'>): Sql {
  return <R>(text: string | PreparedStatement, values?: unknown[]) =>
    client.query(typeof text === 'string' ? text : { name: text.name, text: text.text, values }, typeof text === 'string' ? values : undefined).then((r) => r.rows as R[]);
}
