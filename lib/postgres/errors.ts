/** Why a PostgreSQL call failed, as far as callers need to know. */
export type PostgresFailure = 'timeout' | 'unavailable' | 'pool_exhausted';

/**
 * A PostgreSQL call that failed for a reason of the database, not of the data: it timed out,
 * the server was unreachable, or every connection of the pool stayed busy. Middleware answer it
 * with their fail mode (503 SERVICE_UNAVAILABLE by default). Its message is the library's own
 * (no address, no driver text); the driver's error is its `cause`.
 */
export class PostgresStoreError extends Error {
  /** What went wrong. */
  readonly failure: PostgresFailure;
  /**
   * Whether the work may have taken effect anyway: the connection was lost (or the deadline
   * passed) after a statement or its COMMIT was sent, so only the database knows. False when
   * nothing reached the server, or when the server itself cancelled it (a statement timeout
   * rolls the transaction back).
   */
  readonly maybeApplied: boolean;
  /**
   * The server itself cancelled the statement (its statement timeout, a lock timeout): it is up,
   * and the statement was slow, most often waiting on a row another transaction holds. Not an
   * outage: other calls may go on.
   */
  readonly cancelledByServer: boolean;
  constructor(failure: PostgresFailure, message: string, maybeApplied: boolean, cause?: unknown, cancelledByServer = false) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'PostgresStoreError';
    this.failure = failure;
    this.maybeApplied = maybeApplied;
    this.cancelledByServer = cancelledByServer;
  }
}

// SQLSTATE classes and codes that say the server (or the way to it) failed, not the statement:
// 08 connection exception, 53 insufficient resources (too many connections, out of memory or
// disk), 57P01–57P05 the backend was terminated or the server is shutting down or starting.
const UNAVAILABLE_CLASSES = ['08', '53'];
const UNAVAILABLE_CODES = new Set(['57P01', '57P02', '57P03', '57P04', '57P05', '58000', '58030']);
// Node's socket errors on the way to the server.
const SOCKET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED']);
// pg's own messages for a connection that went away or could not be made in time.
const DRIVER_GONE = /Connection terminated|not queryable|connection timeout|Client was closed|Cannot use a pool after calling end/i;
// pg-pool's message when no connection became free within connectionTimeoutMillis.
const POOL_WAIT = 'timeout exceeded when trying to connect';

/**
 * Maps a driver error to {@link PostgresStoreError} when the database (not the statement) failed;
 * returns other errors (a constraint, a bug in a query) unchanged. `sent` says whether a statement
 * of the work had gone out when it failed.
 */
export function mapPostgresError(err: unknown, sent: boolean, timeoutMs: number, poolWaitMs: number): unknown {
  if (err instanceof PostgresStoreError) return err;
  // Duck-typed: socket errors can come from another realm (a test runner's sandbox), where `instanceof Error` is false.
  if (typeof err !== 'object' || err === null || typeof (err as Error).message !== 'string') return err;
  const code = (err as { code?: unknown }).code;
  const sqlState = typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
  // 57014 query_canceled: statement_timeout fired on the server, which rolled the work back.
  // 55P03 lock_not_available: a lock_timeout the user's pool set.
  if (sqlState === '57014' || sqlState === '55P03') {
    return new PostgresStoreError('timeout', `PostgreSQL cancelled a statement that ran longer than ${timeoutMs} ms`, false, err, true);
  }
  if ((err as Error).message === POOL_WAIT) {
    return new PostgresStoreError(
      'pool_exhausted',
      `No PostgreSQL connection became free within ${poolWaitMs} ms: every connection of the pool is busy (slow statements, or a pool too small for the load)`,
      false,
      err,
    );
  }
  const unavailable =
    (sqlState !== undefined && (UNAVAILABLE_CLASSES.includes(sqlState.slice(0, 2)) || UNAVAILABLE_CODES.has(sqlState))) ||
    (typeof code === 'string' && SOCKET_CODES.has(code)) ||
    DRIVER_GONE.test((err as Error).message);
  if (unavailable) {
    const why = typeof code === 'string' ? code : 'connection lost';
    return new PostgresStoreError('unavailable', `PostgreSQL is unavailable (${why})`, sent, err);
  }
  return err;
}

/** The client-side deadline passed: the server (or the way to it) did not answer at all. */
export function deadlineError(timeoutMs: number, sent: boolean): PostgresStoreError {
  return new PostgresStoreError('timeout', `PostgreSQL did not answer within ${timeoutMs} ms`, sent);
}
