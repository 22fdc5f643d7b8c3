import { createHash } from 'node:crypto';
import { Pool } from 'pg';
import { NotReadyError } from '../lifecycle/readiness';
import type { Logger } from '../logger';
import { StoreOutage } from '../stores/outage';
import type { StoreReadiness } from '../stores/types';
import { WARNINGS } from '../warnings';
import { deadlineError, mapPostgresError, PostgresStoreError } from './errors';
import type { PostgresSettings } from './options';
import { migrate, SCHEMA_VERSION, schemaVersion, sqlOn, tableNames, type PostgresTables, type PreparedStatement, type Sql } from './schema';
import type { PostgresClientLike, PostgresPoolLike } from './types';

/** Options of {@link PostgresDatabase}. */
export interface PostgresDatabaseOptions {
  logger: Logger;
}

// Connections of a pool the library opens: enough for a busy instance, few enough that ten
// instances stay well under PostgreSQL's default max_connections of 100.
const POOL_SIZE = 10;
// Schema creation may wait for another instance that is creating it: it gets longer than a request.
const SCHEMA_TIMEOUT_MS = 60_000;
const SCHEMA_RETRY_FIRST_MS = 250;
const SCHEMA_RETRY_MAX_MS = 5_000;

interface Attempt {
  /** Client-side deadline of the whole call, pool wait included. */
  deadlineMs: number;
  /** Wait for the schema first (false for the schema work itself and for readiness). */
  waitForSchema: boolean;
  /** Whether the work runs in a transaction (an error then discards the connection, rolling it back). */
  transaction: boolean;
  /** Aborted by close(): the call gives up at once. */
  abortable: boolean;
}

const noop = (): void => undefined;

/**
 * The stack's PostgreSQL: a pool (ours, opened from a URL and closed by {@link close}, or the
 * user's, borrowed and never closed), the schema (created when missing, in the background, before
 * any statement runs), and every call bounded twice: on the server by `statement_timeout` (so a
 * statement waiting on a lock is cancelled and rolled back) and here by a deadline a little
 * longer (so a server that is gone, or a network that drops packets, cannot hang a request).
 * Failures of the database come out as {@link PostgresStoreError}; an outage is logged once.
 */
export class PostgresDatabase {
  readonly tables: PostgresTables;
  readonly statementTimeoutMs: number;
  /** The `postgres` entry of `/health/ready`; `stack.ready()` waits for its schema. */
  readonly readiness: StoreReadiness;
  private readonly pool: PostgresPoolLike;
  private readonly owned: boolean;
  private readonly poolWaitMs: number;
  /** Opens a transaction with the statement timeout: on the user's pool its sessions have no setting of ours. */
  private readonly begin: string;
  private readonly requestAttempt: Attempt;
  private readonly outage: StoreOutage;
  private readonly logger: Logger;
  private schemaReady = false;
  private schemaWaiters: Array<() => void> = [];
  private schemaError?: string;
  private schemaErrorLogged?: string;
  private schemaTimer?: NodeJS.Timeout;
  private readonly closeController = new AbortController();
  private closing?: Promise<void>;
  private readonly active = new Set<Promise<unknown>>();

  constructor(settings: PostgresSettings, options: PostgresDatabaseOptions) {
    this.logger = options.logger;
    this.tables = tableNames(settings.tablePrefix);
    this.statementTimeoutMs = settings.statementTimeoutMs;
    // Waiting for a free connection longer than this is a pool exhausted by slow statements: fail
    // fast with a clear error rather than queue every request behind them.
    this.poolWaitMs = Math.min(settings.statementTimeoutMs, 2000);
    // The server's own cancel (a clean rollback) should come first; the deadline is for silence.
    const graceMs = Math.min(settings.statementTimeoutMs, 1000);
    this.requestAttempt = { deadlineMs: settings.statementTimeoutMs + graceMs, waitForSchema: true, transaction: false, abortable: false };
    this.outage = new StoreOutage({
      logger: this.logger,
      down: { code: 'ERR_POSTGRES_UNAVAILABLE', message: WARNINGS.ERR_POSTGRES_UNAVAILABLE },
      up: { code: 'ERR_POSTGRES_RECOVERED', message: WARNINGS.ERR_POSTGRES_RECOVERED },
    });
    if (settings.pool !== undefined) {
      this.pool = settings.pool;
      this.owned = false;
      this.begin = beginWithTimeout(settings.statementTimeoutMs);
    } else {
      const pool = new Pool({
        connectionString: settings.url,
        max: POOL_SIZE,
        connectionTimeoutMillis: this.poolWaitMs,
        idleTimeoutMillis: 30_000,
        // Set once per connection, so a statement costs no extra round trip for its timeout.
        statement_timeout: settings.statementTimeoutMs,
        // A transaction whose client stopped talking (a frozen process) releases its locks.
        idle_in_transaction_session_timeout: Math.max(10_000, 2 * settings.statementTimeoutMs),
        application_name: 'express-perimeter',
        keepAlive: true,
        // Idle connections do not keep the process alive.
        allowExitOnIdle: true,
      });
      // An idle connection the server closed (a restart) is reported here; pg-pool replaces it.
      pool.on('error', (err) => this.outage.failed(err));
      // Each connection listens for its own errors for its whole life. The pool stops listening as it
      // hands a connection out, and the server's goodbye on a restart (57P01) can come in the same
      // read as the connection's first ReadyForQuery, before the borrower could listen: unheard, it
      // would be thrown in the process. The borrower still learns of it from its next statement.
      pool.on('connect', (client) => client.on('error', noop));
      this.pool = pool;
      this.owned = true;
      this.begin = 'BEGIN';
    }
    this.readiness = this.makeReadiness();
    this.createSchema(SCHEMA_RETRY_FIRST_MS);
  }

  /**
   * A statement run often (a spend): on the pool the library opened it is named, so each
   * connection parses and plans it once instead of on every call. Not on the user's pool: its
   * sessions are theirs, and named statements would stay in them.
   */
  prepare(text: string): PreparedStatement {
    return this.owned ? { text, name: `perimeter_${createHash('sha1').update(text).digest('hex').slice(0, 24)}` } : { text };
  }

  /** Runs one statement, atomic by itself; resolves to its rows. */
  query<R = Record<string, unknown>>(text: string | PreparedStatement, values?: unknown[]): Promise<R[]> {
    // On the user's pool the timeout needs a transaction to live in (SET LOCAL).
    if (!this.owned) return this.transaction((sql) => sql<R>(text, values));
    return this.track(this.attempt((client) => sqlOn(client)<R>(text, values), this.requestAttempt));
  }

  /** Runs `work` in one transaction: committed when it resolves, rolled back when it throws or the call fails. */
  transaction<T>(work: (sql: Sql) => Promise<T>): Promise<T> {
    return this.track(this.attempt((client) => this.inTransaction(client, this.begin, work), { ...this.requestAttempt, transaction: true }));
  }

  /** Resolves once the schema exists (never rejects). */
  whenSchema(): Promise<void> {
    if (this.schemaReady) return Promise.resolve();
    return new Promise((resolve) => this.schemaWaiters.push(resolve));
  }

  /** Waits for the calls under way, then closes the pool if the library opened it (never the user's). */
  close(): Promise<void> {
    return (this.closing ??= (async () => {
      clearTimeout(this.schemaTimer);
      this.closeController.abort();
      await Promise.allSettled([...this.active]);
      if (this.owned) await this.pool.end().catch(noop);
    })());
  }

  private track<T>(call: Promise<T>): Promise<T> {
    this.active.add(call);
    const forget = (): void => {
      this.active.delete(call);
    };
    call.then(forget, forget);
    return call;
  }

  private async inTransaction<T>(client: PostgresClientLike, begin: string, work: (sql: Sql) => Promise<T>): Promise<T> {
    await client.query(begin);
    const result = await work(sqlOn(client));
    await client.query('COMMIT');
    return result;
  }

  /**
   * One call: wait for the schema, borrow a connection, run `run` on it, give it back, all
   * within `deadlineMs`. A connection that failed, or served a transaction that did not commit,
   * is discarded (closing it rolls back whatever it held) rather than returned to the pool.
   */
  private async attempt<T>(run: (client: PostgresClientLike) => Promise<T>, how: Attempt): Promise<T> {
    if (this.closing !== undefined && !how.abortable) {
      throw new PostgresStoreError('unavailable', 'The PostgreSQL store is closed', false);
    }
    const startedAt = performance.now();
    let sent = false;
    let over = false;
    let client: PostgresClientLike | undefined;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => {
        over = true;
        reject(deadlineError(how.deadlineMs, sent));
      }, how.deadlineMs);
      if (how.abortable) {
        onAbort = () => {
          over = true;
          reject(new PostgresStoreError('unavailable', 'The PostgreSQL store was closed', sent));
        };
        this.closeController.signal.addEventListener('abort', onAbort, { once: true });
      }
    });
    deadline.catch(noop);
    try {
      if (how.waitForSchema && !this.schemaReady) {
        // The last try failed: answer now rather than wait out the deadline for the next one.
        if (this.schemaError !== undefined) throw new PostgresStoreError('unavailable', `PostgreSQL schema is not ready (${this.schemaError})`, false);
        await Promise.race([this.whenSchema(), deadline]);
      }
      const connecting = this.pool.connect();
      // A connection that arrives after the deadline goes straight back.
      connecting.then((late) => {
        if (over) late.release();
      }, noop);
      client = await Promise.race([connecting, deadline]);
      client.on('error', noop);
      sent = true;
      const result = await Promise.race([run(client), deadline]);
      this.giveBack(client, undefined);
      client = undefined;
      this.outage.answered();
      return result;
    } catch (err) {
      const mapped = mapPostgresError(err, sent, this.statementTimeoutMs, this.poolWaitMs);
      if (client !== undefined) this.giveBack(client, how.transaction || over || mapped instanceof PostgresStoreError ? toError(mapped) : undefined);
      if (mapped instanceof PostgresStoreError && (mapped.failure === 'unavailable' || over)) this.outage.failed(mapped, startedAt);
      throw mapped;
    } finally {
      clearTimeout(timer);
      if (onAbort !== undefined) this.closeController.signal.removeEventListener('abort', onAbort);
    }
  }

  private giveBack(client: PostgresClientLike, discard: Error | undefined): void {
    // A discarded connection keeps the listener: it may still be mid-statement (a deadline gave up
    // on it) and report the server's going (57P01 on a restart) after the pool let go of it, when
    // nobody else listens. One going back to the pool sheds it: the pool listens while it is idle.
    if (discard === undefined) client.removeListener('error', noop);
    try {
      client.release(discard);
    } catch {
      // Released twice (the late-connect path raced a failure): nothing left to give back.
    }
  }

  /**
   * Creates the schema when missing, then wakes whoever waits for it; retried with backoff while
   * the database is unreachable or refuses, until close(). Reads the version first, so a role
   * that may not run DDL works once `express-perimeter migrate` ran.
   */
  private createSchema(retryMs: number): void {
    if (this.closing !== undefined) return;
    const schema: Attempt = { deadlineMs: SCHEMA_TIMEOUT_MS, waitForSchema: false, transaction: false, abortable: true };
    this.attempt((client) => schemaVersion(sqlOn(client), this.tables), schema)
      .then((version) => {
        if (version >= SCHEMA_VERSION) return;
        const begin = `BEGIN; SET LOCAL statement_timeout = ${SCHEMA_TIMEOUT_MS}`;
        return this.attempt((client) => this.inTransaction(client, begin, (sql) => migrate(sql, this.tables.prefix)), { ...schema, transaction: true }).then((result) => {
          // Another instance may have created it while this one waited for the lock.
          if (result.from === result.to) return;
          this.logger.info('PostgreSQL schema created', { code: 'PERIMETER_POSTGRES_MIGRATED', table_prefix: this.tables.prefix, from_version: result.from, to_version: result.to });
        });
      })
      .then(
        () => {
          this.schemaReady = true;
          this.schemaError = undefined;
          for (const wake of this.schemaWaiters.splice(0)) wake();
        },
        (err: unknown) => {
          if (this.closing !== undefined) return;
          this.schemaFailed(err);
          this.schemaTimer = setTimeout(() => this.createSchema(Math.min(SCHEMA_RETRY_MAX_MS, retryMs * 2)), retryMs);
          this.schemaTimer.unref();
        },
      );
  }

  // Unreachable is the outage's to log; anything else (no right to create tables, a table of that
  // name that is not ours) is logged once per cause, with the way out.
  private schemaFailed(err: unknown): void {
    // The driver's code (ECONNREFUSED, 42501) says most, and carries no address.
    this.schemaError = err instanceof PostgresStoreError && err.cause === undefined ? err.failure : codeOf(err instanceof PostgresStoreError ? err.cause : err);
    if (err instanceof PostgresStoreError || this.schemaErrorLogged === this.schemaError) return;
    this.schemaErrorLogged = this.schemaError;
    this.logger.error(WARNINGS.ERR_POSTGRES_SCHEMA, {
      code: 'ERR_POSTGRES_SCHEMA',
      table_prefix: this.tables.prefix,
      err: err instanceof Error ? { name: err.name, message: err.message, code: codeOf(err) } : { message: String(err) },
    });
  }

  private makeReadiness(): StoreReadiness {
    const isReady = (): boolean => this.schemaReady;
    return {
      name: 'postgres',
      get connected() {
        return isReady();
      },
      whenConnected: () => this.whenSchema(),
      describe: () => `PostgreSQL schema is not ready${this.schemaError ? ` (last error ${this.schemaError})` : ''}`,
      check: (timeoutMs) => {
        if (!this.schemaReady) {
          return Promise.reject(new NotReadyError(this.schemaError ? `schema not ready (${this.schemaError})` : 'schema not created yet'));
        }
        const how: Attempt = { deadlineMs: timeoutMs, waitForSchema: false, transaction: false, abortable: true };
        return this.attempt((client) => client.query('SELECT 1'), how).then(noop, (err: unknown) => {
          throw new NotReadyError(err instanceof PostgresStoreError ? err.message : `SELECT 1 failed (${codeOf(err)})`);
        });
      },
    };
  }
}

function beginWithTimeout(ms: number): string {
  return `BEGIN; SET LOCAL statement_timeout = ${ms}; SET LOCAL idle_in_transaction_session_timeout = ${Math.max(10_000, 2 * ms)}`;
}

function toError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}

function codeOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : err instanceof Error ? err.name : 'unknown';
}
