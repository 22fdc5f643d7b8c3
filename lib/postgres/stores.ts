import type { CounterStore, ExpiringSetStore, KeyValueOptions, KeyValueStore, PubSub, StoreFactory, StoreReadiness, Stores } from '../stores/types';
import type { PostgresDatabase } from './database';

/**
 * The stack's stores with PostgreSQL beside them: a feature that has a PostgreSQL builder
 * (credits, the audit sink) gets its store there, every other one stays on the base stores
 * (Redis or memory). Readiness lists both; close() closes both.
 */
export class StoresWithPostgres implements Stores {
  readonly kind: Stores['kind'];
  readonly pubsub: PubSub;
  readonly readiness: readonly StoreReadiness[];

  constructor(
    private readonly base: Stores,
    readonly postgres: PostgresDatabase,
  ) {
    this.kind = base.kind;
    this.pubsub = base.pubsub;
    this.readiness = [...(base.readiness ?? []), postgres.readiness];
  }

  create<T>(factory: StoreFactory<T>): T {
    return factory.postgres !== undefined ? factory.postgres(this.postgres, this) : this.base.create(factory);
  }
  keyValue<V = unknown>(namespace: string, options?: KeyValueOptions): KeyValueStore<V> {
    return this.base.keyValue<V>(namespace, options);
  }
  counter(namespace: string, options?: { maxKeys?: number }): CounterStore {
    return this.base.counter(namespace, options);
  }
  expiringSet(namespace: string, options?: { maxMembers?: number }): ExpiringSetStore {
    return this.base.expiringSet(namespace, options);
  }
  async close(): Promise<void> {
    await Promise.all([this.base.close(), this.postgres.close()]);
  }
}
