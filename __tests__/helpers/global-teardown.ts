import type { OwnRedisServer } from './redis-server';

export default async function globalTeardown(): Promise<void> {
  const server = (globalThis as Record<string, unknown>).__PERIMETER_REDIS__ as OwnRedisServer | undefined;
  await server?.stop();
}
