import { ConfigError } from '../errors';
import { checkOptions } from '../options';
import { describe, parseDuration } from '../units';
import type { PostgresOption, PostgresOptions, PostgresPoolLike } from './types';

/** The `postgres` option once checked: where to connect and how the tables are named. */
export interface PostgresSettings {
  /** Set when the library opens (and so owns) the pool. */
  url?: string;
  /** Set when the user passed a pool of their own. */
  pool?: PostgresPoolLike;
  tablePrefix: string;
  statementTimeoutMs: number;
}

const KNOWN = ['url', 'pool', 'tablePrefix', 'statementTimeout'] as const;
// Short enough that `<prefix>credit_ledger_account_id_idx` stays within PostgreSQL's 63-byte names.
const MAX_PREFIX_LENGTH = 32;
const PREFIX = /^[a-z_][a-z0-9_]*$/;
// A statement timeout longer than this is a typo (seconds meant as minutes…), not a policy.
const MAX_STATEMENT_TIMEOUT_MS = 10 * 60_000;

/** Checks the `postgres` option at startup; every mistake is a ConfigError naming the option and the fix. */
export function parsePostgresOption(value: PostgresOption, option = 'postgres'): PostgresSettings {
  if (typeof value === 'string') return { url: checkUrl(value, option), tablePrefix: 'perimeter_', statementTimeoutMs: 5000 };
  if (isPool(value)) return { pool: value, tablePrefix: 'perimeter_', statementTimeoutMs: 5000 };
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ConfigError(option, `expected a URL like 'postgres://user:pass@localhost:5432/app', a pg.Pool, or { url | pool, tablePrefix, statementTimeout }, got ${describe(value)}`);
  }
  const o = checkOptions<PostgresOptions>(option, value, KNOWN);
  if (o.url !== undefined && o.pool !== undefined) {
    throw new ConfigError(`${option}.pool`, 'give either url or pool, not both: with a pool of yours the library opens no connection of its own');
  }
  if (o.url === undefined && o.pool === undefined) {
    throw new ConfigError(option, "needs url or pool: { url: 'postgres://user:pass@localhost:5432/app' } or { pool: new pg.Pool(…) }");
  }
  if (o.pool !== undefined && !isPool(o.pool)) {
    throw new ConfigError(`${option}.pool`, `expected a pg.Pool (an object with connect() and query()), got ${describe(o.pool)}`);
  }
  return {
    url: o.url === undefined ? undefined : checkUrl(o.url, `${option}.url`),
    pool: o.pool,
    tablePrefix: checkTablePrefix(o.tablePrefix ?? 'perimeter_', `${option}.tablePrefix`),
    statementTimeoutMs: checkStatementTimeout(o.statementTimeout ?? '5s', `${option}.statementTimeout`),
  };
}

/** A table prefix is pasted into SQL, so only a plain lowercase identifier is accepted (no quoting, no injection). */
export function checkTablePrefix(value: unknown, option: string): string {
  if (typeof value === 'string' && PREFIX.test(value) && value.length <= MAX_PREFIX_LENGTH) return value;
  throw new ConfigError(
    option,
    `expected a safe SQL identifier prefix of at most ${MAX_PREFIX_LENGTH} characters: lowercase letters, digits and _, starting with a letter or _ (like 'perimeter_' or 'billing_'), got ${describe(value)}`,
  );
}

function checkStatementTimeout(value: unknown, option: string): number {
  const ms = parseDuration(value, option);
  if (ms >= 1 && ms <= MAX_STATEMENT_TIMEOUT_MS) return Math.ceil(ms);
  throw new ConfigError(option, `expected a duration between '1ms' and '10m' like '5s', got ${describe(value)}`);
}

function checkUrl(value: unknown, option: string): string {
  if (typeof value === 'string' && /^postgres(ql)?:\/\/\S+$/.test(value)) return value;
  // The value is not echoed: a URL carries a password.
  throw new ConfigError(option, "expected a connection URL starting with postgres:// or postgresql://, like 'postgres://user:pass@localhost:5432/app'");
}

function isPool(value: unknown): value is PostgresPoolLike {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as PostgresPoolLike).connect === 'function' &&
    typeof (value as PostgresPoolLike).query === 'function' &&
    typeof (value as PostgresPoolLike).end === 'function'
  );
}
