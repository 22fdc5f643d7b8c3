import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Redis from 'ioredis';

// Starts a private redis-server on a free port so tests never touch anyone else's data.
// REDIS_URL overrides. Without redis-server, Redis tests are skipped with a notice, except
// under CI=true, where a missing Redis fails the run.
export default async function globalSetup(): Promise<void> {
  if (process.env.REDIS_URL) {
    process.env.PERIMETER_TEST_REDIS_URL = process.env.REDIS_URL;
    return;
  }
  const found = spawnSync('redis-server', ['--version']).status === 0;
  if (!found) {
    const message = 'redis-server is not on the PATH: Redis tests are skipped (install redis-server or set REDIS_URL)';
    if (process.env.CI === 'true') throw new Error(`${message}; under CI=true a missing Redis is a failure`);
    process.stderr.write(`\n*** ${message} ***\n`);
    return;
  }
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'perimeter-redis-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: 'ignore',
    detached: false,
  });
  const url = `redis://127.0.0.1:${port}`;
  await waitForRedis(url);
  process.env.PERIMETER_TEST_REDIS_URL = url;
  (globalThis as Record<string, unknown>).__PERIMETER_REDIS__ = child;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

async function waitForRedis(url: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.ping();
      client.disconnect();
      return;
    } catch (err) {
      client.disconnect();
      if (Date.now() > deadline) throw new Error(`redis-server did not start at ${url}: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
