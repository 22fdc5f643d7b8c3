import type { OwnPostgresServer } from './postgres-server';
import type { OwnRedisServer } from './redis-server';

export default async function globalTeardown(): Promise<void> {
  const globals = globalThis as Record<string, unknown>;
  await Promise.all([
    (globals.__PERIMETER_REDIS__ as OwnRedisServer | undefined)?.stop(),
    (globals.__PERIMETER_POSTGRES__ as OwnPostgresServer | undefined)?.destroy(),
  ]);
}
