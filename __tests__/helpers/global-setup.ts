import { hasPostgresServer, OwnPostgresServer } from './postgres-server';
import { hasRedisServer, OwnRedisServer } from './redis-server';

// Starts a private redis-server and a private PostgreSQL on free ports so tests never touch anyone
// else's data. REDIS_URL and DATABASE_URL override. Without the server binaries, the suites that
// need them are skipped with a notice, except under CI=true, where a missing one fails the run.
export default async function globalSetup(): Promise<void> {
  await Promise.all([setUpRedis(), setUpPostgres()]);
}

async function setUpRedis(): Promise<void> {
  if (process.env.REDIS_URL) {
    process.env.PERIMETER_TEST_REDIS_URL = process.env.REDIS_URL;
    return;
  }
  if (!hasRedisServer) {
    missing('redis-server is not on the PATH: Redis tests are skipped (install redis-server or set REDIS_URL)');
    return;
  }
  const server = await OwnRedisServer.start();
  process.env.PERIMETER_TEST_REDIS_URL = server.url;
  (globalThis as Record<string, unknown>).__PERIMETER_REDIS__ = server;
}

async function setUpPostgres(): Promise<void> {
  if (process.env.DATABASE_URL) {
    process.env.PERIMETER_TEST_DATABASE_URL = process.env.DATABASE_URL;
    return;
  }
  if (!hasPostgresServer) {
    missing('initdb/postgres are not on the PATH: PostgreSQL tests are skipped (install postgresql or set DATABASE_URL)');
    return;
  }
  const server = await OwnPostgresServer.start();
  process.env.PERIMETER_TEST_DATABASE_URL = server.url;
  (globalThis as Record<string, unknown>).__PERIMETER_POSTGRES__ = server;
}

function missing(message: string): void {
  if (process.env.CI === 'true') throw new Error(`${message}; under CI=true a missing server is a failure`);
  process.stderr.write(`\n*** ${message} ***\n`);
}
