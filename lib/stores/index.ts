import type { Logger } from '../logger';
import { PostgresDatabase } from '../postgres/database';
import type { PostgresSettings } from '../postgres/options';
import { StoresWithPostgres } from '../postgres/stores';
import { MemoryStores } from './memory';
import { RedisStores } from './redis';
import type { RedisOption } from './redis-connection';
import type { Stores } from './types';

export * from './types';
export { MemoryStores } from './memory';
export { RedisStores } from './redis';
export { RedisConnection, StoreTimeoutError, StoreUnavailableError, type RedisOption } from './redis-connection';

/** Redis stores when `redis` is given, else bounded memory stores; with `postgres`, PostgreSQL beside them for the durable state. */
export function createStores(redis: RedisOption | undefined, logger: Logger, prefix?: string, postgres?: PostgresSettings): Stores {
  const base = redis === undefined ? new MemoryStores() : new RedisStores(redis, { logger, prefix });
  return postgres === undefined ? base : new StoresWithPostgres(base, new PostgresDatabase(postgres, { logger }));
}
