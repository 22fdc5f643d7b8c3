import { hasRedisServer, OwnRedisServer } from './redis-server';

// Starts a private redis-server on a free port so tests never touch anyone else's data.
// REDIS_URL overrides. Without redis-server, Redis tests are skipped with a notice, except
// under CI=true, where a missing Redis fails the run.
export default async function globalSetup(): Promise<void> {
  if (process.env.REDIS_URL) {
    process.env.PERIMETER_TEST_REDIS_URL = process.env.REDIS_URL;
    return;
  }
  if (!hasRedisServer) {
    const message = 'redis-server is not on the PATH: Redis tests are skipped (install redis-server or set REDIS_URL)';
    if (process.env.CI === 'true') throw new Error(`${message}; under CI=true a missing Redis is a failure`);
    process.stderr.write(`\n*** ${message} ***\n`);
    return;
  }
  const server = await OwnRedisServer.start();
  process.env.PERIMETER_TEST_REDIS_URL = server.url;
  (globalThis as Record<string, unknown>).__PERIMETER_REDIS__ = server;
}
