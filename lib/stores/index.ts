import type { Logger } from '../logger';
import { MemoryStores } from './memory';
import { RedisStores } from './redis';
import type { RedisOption } from './redis-connection';
import type { Stores } from './types';

export * from './types';
export { MemoryStores } from './memory';
export { RedisStores } from './redis';
export { RedisConnection, StoreTimeoutError, StoreUnavailableError, type RedisOption } from './redis-connection';

/** Redis stores when `redis` is given, else bounded memory stores. */
export function createStores(redis: RedisOption | undefined, logger: Logger, prefix?: string): Stores {
  return redis === undefined ? new MemoryStores() : new RedisStores(redis, { logger, prefix });
}
