/**
 * The parts of the `pg` driver the library uses, written out so the published types need no
 * `@types/pg`: a `pg.Pool` satisfies {@link PostgresPoolLike} as it is, and a project without
 * `@types/pg` still compiles under `--strict` without `skipLibCheck`.
 */

/** A result of a query: its rows and how many rows the statement touched. */
export interface PostgresQueryResult {
  rows: unknown[];
  rowCount: number | null;
}

/** A connection checked out of a pool (`pg.PoolClient`). */
export interface PostgresClientLike {
  /** A statement as text, or as `{ name, text, values }` (a named statement is prepared once per connection). */
  query(textOrConfig: string | { name?: string; text: string; values?: unknown[] }, values?: unknown[]): Promise<PostgresQueryResult>;
  /** Returns the connection to its pool; with an error (or `true`) the pool closes it instead. */
  release(err?: Error | boolean): void;
  on(event: 'error', listener: (err: Error) => void): unknown;
  removeListener(event: 'error', listener: (err: Error) => void): unknown;
}

/** A connection pool (`pg.Pool`). */
export interface PostgresPoolLike {
  connect(): Promise<PostgresClientLike>;
  query(text: string, values?: unknown[]): Promise<PostgresQueryResult>;
  end(): Promise<void>;
}

/** The object form of the `postgres` option. */
export interface PostgresOptions {
  /** Connection URL (`postgres://user:pass@host:5432/db`); the library opens a pool and closes it on `stack.close()`. Give `url` or `pool`. */
  url?: string;
  /** A `pg.Pool` of yours; the library borrows its connections and never closes it. Give `url` or `pool`. */
  pool?: PostgresPoolLike;
  /** Prefix of every table name: lowercase letters, digits and `_`, starting with a letter or `_`. Defaults to 'perimeter_'. */
  tablePrefix?: string;
  /** Longest a statement (a spend, a refund, an audit append) may run before it fails with 503. Defaults to '5s'. */
  statementTimeout?: number | string;
}

/** What `createStack({ postgres })` accepts: a URL, a `pg.Pool`, or {@link PostgresOptions}. */
export type PostgresOption = string | PostgresPoolLike | PostgresOptions;
