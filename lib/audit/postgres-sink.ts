import { appendAuditBatch, jsonRecord, type AppendAttempt } from '../postgres/audit-table';
import type { PostgresDatabase } from '../postgres/database';
import type { AuditRecord } from './record';
import type { AuditSink } from './sinks';

/** What the sink remembers of a batch until it is in the table. */
interface BatchState {
  /** The batch as stored: computed once, so every attempt links the same content. */
  records: Record<string, unknown>[];
  /** Attempts that linked the batch and sent its INSERT; any of them may have committed. */
  attempts: AppendAttempt[];
  done: boolean;
}

// The queue writes one batch at a time per sink, so only the last batch or two are ever asked for again.
const MAX_BATCHES = 16;

/**
 * `{ postgres }`: rows of `<prefix>audit`, each batch linked to the chain and inserted in one
 * transaction under the table's advisory lock, so every instance extends one chain. Always
 * chained (the table's `hash` and `prev_hash` are required), whatever `auditLog.chain` says.
 *
 * A retry never inserts a batch twice: an attempt whose answer was lost (the connection dropped
 * at COMMIT, a write past `writeTimeout` still waiting for the lock) is looked for, under the lock,
 * before the batch is linked again.
 */
export class PostgresAuditSink implements AuditSink {
  readonly linksChain = true;
  private readonly batches = new Map<string, BatchState>();

  constructor(
    private readonly database: Pick<PostgresDatabase, 'transaction' | 'tables'>,
    private readonly genesis: string,
    readonly name: string,
  ) {}

  async write(records: AuditRecord[], batchId: string): Promise<void> {
    const state = this.stateOf(batchId, records);
    if (state.done) return;
    const table = this.database.tables.audit;
    await this.database.transaction(async (sql) => {
      // An earlier attempt of this batch committed while this one waited for the lock.
      if (state.done) return;
      await appendAuditBatch(sql, table, state.records, this.genesis, state.attempts, (link) => state.attempts.push(link));
    });
    // Kept (not deleted) while the queue may still call again: an attempt it gave up on at
    // writeTimeout can commit during the backoff before its retry, which must then add nothing.
    state.done = true;
  }

  private stateOf(batchId: string, records: AuditRecord[]): BatchState {
    let state = this.batches.get(batchId);
    if (state === undefined) {
      state = { records: records.map(jsonRecord), attempts: [], done: false };
      this.batches.set(batchId, state);
      if (this.batches.size > MAX_BATCHES) this.batches.delete(this.batches.keys().next().value as string);
    }
    return state;
  }
}
