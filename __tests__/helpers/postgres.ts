import { randomUUID } from 'node:crypto';
import { Client } from 'pg';
import { createTestDatabase } from './postgres-server';

/** URL of the tests' private PostgreSQL, or undefined when none could be started. */
export const postgresUrl: string | undefined = process.env.PERIMETER_TEST_DATABASE_URL;

/** `describe` for suites that need PostgreSQL: skipped (with the global notice) when there is none. */
export const describePostgres: jest.Describe = postgresUrl ? describe : describe.skip;

/** A database of its own for one suite, so suites running at once never share tables. */
export async function freshDatabase(): Promise<string> {
  if (postgresUrl === undefined) throw new Error('no test PostgreSQL');
  return createTestDatabase(postgresUrl, `perimeter_test_${randomUUID().replace(/-/g, '').slice(0, 12)}`);
}

/** Runs `work` on a connection of its own to `url`, closed after it. */
export async function withClient<T>(url: string, work: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}
