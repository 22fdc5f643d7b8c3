import { Client } from 'pg';
import { checkTablePrefix } from './options';
import type { PostgresClientLike } from './types';

/** The `--postgres` URL of a CLI command, refused unless it is a postgres:// or postgresql:// URL. */
export function cliUrl(url: string | undefined): string {
  if (url === undefined || !/^postgres(ql)?:\/\/\S+$/.test(url)) throw new Error('--postgres: expected a URL starting with postgres:// or postgresql://');
  return url;
}

/** Throws a plain usage error (the CLI prints its message) unless `prefix` is a safe table prefix. */
export function checkCliTablePrefix(prefix: string): void {
  try {
    checkTablePrefix(prefix, '--table-prefix');
  } catch (err) {
    throw new Error((err as Error).message);
  }
}

/** What a CLI command does with its connection (written out, so the published types name nothing of pg). */
export interface CliClient extends Pick<PostgresClientLike, 'query'> {
  connect(): Promise<unknown>;
  end(): Promise<unknown>;
}

/** One connection for a CLI command (not yet connected), named `application_name` in pg_stat_activity. */
export function cliClient(url: string, statementTimeoutMs: number, applicationName: string): CliClient {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 10_000, statement_timeout: statementTimeoutMs, application_name: applicationName });
  // A connection lost mid-command is reported by the query that was running; this keeps it from crashing the CLI first.
  client.on('error', () => undefined);
  return client;
}
