import { GENESIS, linkRecords, type ChainFields, type ChainHead } from '../audit/chain';
import { ChainVerifier, type AuditChainResult, type VerifyAuditChainOptions } from '../audit/verify';
import { checkTablePrefix } from './options';
import type { Sql } from './schema';

/**
 * `<prefix>audit`: one row per record, `record` the audit record without its chain fields, which
 * live in their columns (`seq`, `prev_hash`, `hash`). A row is read back as the record
 * `{ ...record, seq, prev_hash, hash }`, whose hash is computed exactly as for the other sinks
 * (lib/audit/chain.ts), so `verifyAuditChain` checks rows like lines of a file.
 */

/** Anything that runs a query: a `pg.Pool`, a `pg.Client`, a pool client. */
export interface AuditQueryable {
  query(text: string, values?: unknown[]): Promise<{ rows: unknown[] }>;
}

/** An audit record read back from `<prefix>audit`: the `record` column with the row's `seq`, `prev_hash` and `hash`. */
export type AuditRowRecord = Record<string, unknown> & Required<ChainFields>;

/** Where one write attempt linked its batch: enough to find the batch later if its answer was lost. */
export interface AppendAttempt {
  /** `seq` of the row the batch was linked to (0 on an empty table). */
  afterSeq: number;
  /** `hash` of the batch's first row. */
  firstHash: string;
}

/** The advisory lock that makes one transaction at a time extend the chain of `table` (a key of its own per table). */
export function auditLockName(table: string): string {
  return `express-perimeter:audit:${table}`;
}

/**
 * Appends `records` (JSON values, see {@link jsonRecord}) to the chain of `table`, in the
 * transaction `sql` belongs to: takes the table's advisory lock (held until the transaction
 * ends, so instances writing at once take turns, an empty table included), reads the last row,
 * links the batch to it and inserts it with explicit `seq` = last + 1, … (no gaps).
 *
 * `earlier` are the attempts of this same batch that may have committed without an answer (a
 * connection lost at COMMIT, a write that timed out and is still waiting for the lock): under the
 * lock every one of them is settled, so when one of their first rows is in the table the batch
 * is there already and nothing is inserted again. `attempt` is called with this attempt's link
 * before the INSERT is sent, so an attempt after it knows to look for it.
 */
export async function appendAuditBatch(
  sql: Sql,
  table: string,
  records: readonly Record<string, unknown>[],
  genesis: string,
  earlier: readonly AppendAttempt[],
  attempt: (link: AppendAttempt) => void,
): Promise<'appended' | 'duplicate'> {
  await sql('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [auditLockName(table)]);
  // A statement of its own, after the lock: in READ COMMITTED it sees every chain row committed before it.
  if (earlier.length > 0) {
    const after = Math.min(...earlier.map((a) => a.afterSeq));
    const found = await sql(`SELECT 1 FROM ${table} WHERE seq > $1 AND hash = ANY($2::text[]) LIMIT 1`, [after, earlier.map((a) => a.firstHash)]);
    if (found.length > 0) return 'duplicate';
  }
  const [last] = await sql<{ seq: string; hash: string }>(`SELECT seq, hash FROM ${table} ORDER BY seq DESC LIMIT 1`);
  const head: ChainHead = last === undefined ? { hash: genesis, seq: 0 } : { hash: last.hash, seq: Number(last.seq) };
  const linked = linkRecords(records, head).records;
  attempt({ afterSeq: head.seq, firstHash: linked[0].hash as string });
  await sql(`INSERT INTO ${table} (seq, record, hash, prev_hash) SELECT * FROM unnest($1::bigint[], $2::jsonb[], $3::text[], $4::text[])`, [
    linked.map((r) => r.seq),
    records.map((r) => JSON.stringify(r)),
    linked.map((r) => r.hash),
    linked.map((r) => r.prev_hash),
  ]);
  return 'appended';
}

// PostgreSQL's jsonb holds no U+0000 and no lone UTF-16 surrogate; both are written as U+FFFD.
/* eslint-disable no-control-regex -- U+0000 is the very character to find */
const UNSTORABLE = /[\u0000\uD800-\uDFFF]/;
const UNSTORABLE_ALL = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
/* eslint-enable no-control-regex */

function storable(text: string): string {
  return UNSTORABLE.test(text) ? text.replace(UNSTORABLE_ALL, '\uFFFD') : text;
}

/**
 * A record as jsonb gives it back: plain JSON values (toJSON applied, a bigint as its decimal
 * string, a non-finite number as null, undefined left out), without the chain fields, and with
 * what jsonb cannot hold (U+0000, a lone surrogate) replaced by U+FFFD. The chain is computed
 * over this, so the row read back hashes to what was written.
 */
export function jsonRecord(record: object): Record<string, unknown> {
  const value = jsonValue(record);
  const out = value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
  delete out.seq;
  delete out.prev_hash;
  delete out.hash;
  return out;
}

function jsonValue(value: unknown): unknown {
  if (value !== null && typeof value === 'object' && typeof (value as { toJSON?: unknown }).toJSON === 'function') {
    value = (value as { toJSON(): unknown }).toJSON();
  }
  switch (typeof value) {
    case 'string':
      return storable(value);
    case 'number':
      return Number.isFinite(value) ? value : null;
    case 'boolean':
      return value;
    case 'bigint':
      return value.toString();
    case 'object': {
      if (value === null) return null;
      if (Array.isArray(value)) return value.map((item) => jsonValue(item) ?? null);
      const out: Record<string, unknown> = {};
      for (const key of Object.keys(value)) {
        const item = jsonValue((value as Record<string, unknown>)[key]);
        // defineProperty: a key named __proto__ stays a key, as JSON.parse would make it.
        if (item !== undefined) Object.defineProperty(out, storable(key), { value: item, enumerable: true, writable: true, configurable: true });
      }
      return out;
    }
    default:
      return undefined;
  }
}

/** A row of `<prefix>audit` as the record it holds. */
export function auditRecordOfRow(row: { seq: unknown; record: unknown; hash: unknown; prev_hash: unknown }): AuditRowRecord {
  const record = row.record !== null && typeof row.record === 'object' && !Array.isArray(row.record) ? (row.record as Record<string, unknown>) : { record: row.record };
  // The columns are the chain: a `seq`, `hash` or `prev_hash` inside `record` is not trusted over them.
  return { ...record, seq: Number(row.seq), prev_hash: row.prev_hash as string, hash: row.hash as string };
}

/** Options of {@link readAuditRows}. */
export interface ReadAuditRowsOptions {
  /** Prefix of the table, as in the `postgres` option. Defaults to 'perimeter_'. */
  tablePrefix?: string;
  /** Rows read per query (keyset pagination on `seq`, so memory stays bounded on a table of any size). Defaults to 1000. */
  pageSize?: number;
  /** Start after this `seq`. Defaults to 0 (from the first row). */
  afterSeq?: number;
}

/**
 * The rows of `<tablePrefix>audit` as records, in `seq` order, a page at a time:
 * `await verifyAuditChain(readAuditRows(pool))` verifies the table.
 */
export async function* readAuditRows(db: AuditQueryable, options: ReadAuditRowsOptions = {}): AsyncGenerator<AuditRowRecord, void, undefined> {
  const table = `${checkTablePrefix(options.tablePrefix ?? 'perimeter_', 'readAuditRows.tablePrefix')}audit`;
  const pageSize = options.pageSize ?? 1000;
  if (!Number.isSafeInteger(pageSize) || pageSize < 1) throw new TypeError(`readAuditRows: pageSize must be a whole number ≥ 1, got ${String(pageSize)}`);
  let after = options.afterSeq ?? 0;
  for (;;) {
    const { rows } = await db.query(`SELECT seq, record, hash, prev_hash FROM ${table} WHERE seq > $1 ORDER BY seq LIMIT $2`, [after, pageSize]);
    for (const row of rows) yield auditRecordOfRow(row as { seq: unknown; record: unknown; hash: unknown; prev_hash: unknown });
    if (rows.length < pageSize) return;
    after = Number((rows[rows.length - 1] as { seq: unknown }).seq);
  }
}

/** Options of {@link verifyAuditTable}. */
export interface VerifyAuditTableOptions extends Omit<VerifyAuditChainOptions, 'omit'>, Omit<ReadAuditRowsOptions, 'afterSeq'> {}

/** Result of {@link verifyAuditTable}. */
export interface AuditTableResult extends AuditChainResult {
  /** The table verified. */
  table: string;
  /** `seq` of the first row that breaks the chain (absent when valid, or when only the end is missing). */
  seq?: number;
  /** `seq` of the last row that verified (0 when none did). */
  lastSeq: number;
}

/** Verifies `<tablePrefix>audit` row by row, a page at a time; stops at the first break and names its `seq`. */
export async function verifyAuditTable(db: AuditQueryable, options: VerifyAuditTableOptions = {}): Promise<AuditTableResult> {
  const table = `${checkTablePrefix(options.tablePrefix ?? 'perimeter_', 'verifyAuditTable.tablePrefix')}audit`;
  const verifier = new ChainVerifier({ genesis: options.genesis ?? GENESIS, head: options.head });
  let lastSeq = 0;
  let seq: number | undefined;
  for await (const record of readAuditRows(db, options)) {
    if (!verifier.push(record)) {
      seq = record.seq;
      break;
    }
    lastSeq = record.seq;
  }
  return { table, ...verifier.result(), ...(seq !== undefined ? { seq } : {}), lastSeq };
}
