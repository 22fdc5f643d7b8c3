import { randomBytes } from 'node:crypto';
import type { Counter, Registry } from 'prom-client';
import type { Logger } from '../logger';
import { counter } from '../metrics-registry';
import { linkRecords, type ChainHead } from './chain';
import type { AuditRecord } from './record';
import { PartialWriteError, type AuditSink } from './sinks';

/** Settings of {@link AuditQueue}, already validated. */
export interface AuditQueueSettings {
  /** Most records waiting per sink. */
  maxQueue: number;
  overflow: 'block' | 'drop';
  batchSize: number;
  /** First retry delay (ms); doubles per failed attempt. */
  retryDelay: number;
  maxRetryDelay: number;
  /** Failed attempts after which a batch goes to the logger at error instead; Infinity retries until close. */
  maxRetries: number;
  /** Longest one write may take (ms) before it counts as failed. */
  writeTimeout: number;
  chain: boolean;
  genesis: string;
  /** The logger for the queue's own warnings and for undeliverable records. */
  logger: () => Logger;
  registry: () => Registry;
}

/** What one sink has done, for `auditLog().stats()`. */
export interface AuditSinkStats {
  sink: string;
  /** Records waiting (including a batch being written or retried). */
  queued: number;
  written: number;
  /** Records this sink never got: dropped on overflow, or logged at error as undeliverable. */
  dropped: number;
  /** Whether the sink's last attempt failed. */
  failing: boolean;
}

interface Metrics {
  written: Counter<'sink'>;
  dropped: Counter<'sink'>;
  errors: Counter<'sink'>;
}

interface Batch {
  /** Stable across retries, so a store can tell a retry of a batch it already has. */
  id: string;
  records: AuditRecord[];
  attempts: number;
}

/**
 * The records between a finished response and the sinks: one worker per sink, so a failing sink
 * is retried with exponential backoff without holding back the others. The request path only
 * pushes; writes happen here. A record leaves a sink's queue when the sink took it, or when it is
 * dropped (overflow 'drop', counted and warned) or given up (logged at error with its content):
 * never silently.
 */
export class AuditQueue {
  private readonly workers: SinkWorker[];
  private roomWaiters: Array<(room: boolean) => void> = [];
  private idleWaiters: Array<() => void> = [];
  private metricsValue?: Metrics;
  private closing?: Promise<void>;
  /** Set once close() has given up on what is left: workers stop and late records go to the logger. */
  stopped = false;
  /** Set while close() drains: backoffs shrink to the first retry delay. */
  draining = false;

  constructor(sinks: AuditSink[], readonly settings: AuditQueueSettings) {
    this.workers = sinks.map((sink) => new SinkWorker(sink, this));
  }

  /** Hands a record to every sink's queue. Never throws and never waits. */
  push(record: AuditRecord): void {
    if (this.stopped) {
      for (const worker of this.workers) this.giveUp(worker, [record], 'the audit log was closed before this record was written');
      return;
    }
    for (const worker of this.workers) worker.push(record);
  }

  /** Whether every sink has fewer than `maxQueue` records waiting. */
  hasRoom(): boolean {
    const max = this.settings.maxQueue;
    for (const worker of this.workers) if (worker.size >= max) return false;
    return true;
  }

  /** Resolves true as soon as every queue has room, false after `ms` or when the queue closes. */
  waitForRoom(ms: number): Promise<boolean> {
    if (this.hasRoom()) return Promise.resolve(true);
    if (this.stopped) return Promise.resolve(false);
    return new Promise((done) => {
      const waiter = (room: boolean): void => {
        clearTimeout(timer);
        done(room);
      };
      const timer = setTimeout(() => {
        this.roomWaiters = this.roomWaiters.filter((w) => w !== waiter);
        done(false);
      }, ms);
      timer.unref();
      this.roomWaiters.push(waiter);
    });
  }

  /** Resolves true once every record pushed so far is written (or given up), false if `ms` passes first. */
  flush(ms: number): Promise<boolean> {
    if (this.idle()) return Promise.resolve(true);
    return new Promise((done) => {
      const waiter = (): void => {
        clearTimeout(timer);
        done(true);
      };
      const timer = setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== waiter);
        done(false);
      }, ms);
      timer.unref();
      this.idleWaiters.push(waiter);
    });
  }

  /**
   * Drains the queues for up to `ms` (failing sinks are retried at once, then at the first retry
   * delay), then logs whatever is still undelivered at error, record by record, and closes the sinks.
   */
  close(ms: number): Promise<void> {
    return (this.closing ??= (async () => {
      this.draining = true;
      for (const worker of this.workers) worker.wakeUp();
      await this.flush(ms);
      this.stopped = true;
      for (const worker of this.workers) {
        worker.wakeUp();
        const left = worker.takeAll();
        if (left.length > 0) this.giveUp(worker, left, `not written within closeTimeout (${ms} ms)`);
      }
      for (const waiter of this.roomWaiters.splice(0)) waiter(false);
      await Promise.all(
        this.workers.map((worker) =>
          worker.sink.close?.().catch((err: Error) => {
            this.settings.logger().warn('Audit sink did not close cleanly', { code: 'ERR_AUDIT_SINK_FAILED', sink: worker.sink.name, err: { name: err.name, message: err.message } });
          }),
        ),
      );
    })());
  }

  stats(): AuditSinkStats[] {
    return this.workers.map((w) => ({ sink: w.sink.name, queued: w.size, written: w.written, dropped: w.dropped, failing: w.failures > 0 }));
  }

  /** Counters in the stack's registry, made on first use. */
  get metrics(): Metrics {
    if (this.metricsValue === undefined) {
      const registry = this.settings.registry();
      this.metricsValue = {
        written: counter(registry, 'audit_records_written_total', 'Audit records written, by sink', ['sink']),
        dropped: counter(registry, 'audit_records_dropped_total', 'Audit records a sink never got (overflow, or undeliverable and logged at error), by sink', ['sink']),
        errors: counter(registry, 'audit_sink_errors_total', 'Failed audit sink writes (each is retried), by sink', ['sink']),
      };
    }
    return this.metricsValue;
  }

  /** Called by workers after every attempt: wakes requests waiting for room and flushes waiting for idle. */
  progress(): void {
    if (this.roomWaiters.length > 0 && this.hasRoom()) for (const waiter of this.roomWaiters.splice(0)) waiter(true);
    if (this.idleWaiters.length > 0 && this.idle()) for (const waiter of this.idleWaiters.splice(0)) waiter();
  }

  /** Logs records a sink will never get, with their content, so an operator can replay them. */
  giveUp(worker: SinkWorker, records: AuditRecord[], reason: string): void {
    const sink = worker.sink.name;
    worker.dropped += records.length;
    this.metrics.dropped.inc({ sink }, records.length);
    const logger = this.settings.logger();
    for (const record of records) logger.error('Audit record could not be delivered; it is logged here instead', { code: 'ERR_AUDIT_UNDELIVERED', sink, reason, record });
  }

  private idle(): boolean {
    for (const worker of this.workers) if (worker.size > 0 || worker.running) return false;
    return true;
  }
}

class SinkWorker {
  private pending: AuditRecord[] = [];
  private batch?: Batch;
  private head?: ChainHead;
  private wake?: () => void;
  private dropping = 0;
  running = false;
  /** Failed attempts in a row. */
  failures = 0;
  written = 0;
  dropped = 0;

  constructor(readonly sink: AuditSink, private readonly queue: AuditQueue) {}

  get size(): number {
    return this.pending.length + (this.batch?.records.length ?? 0);
  }

  push(record: AuditRecord): void {
    const { overflow, maxQueue } = this.queue.settings;
    if (overflow === 'drop' && this.size >= maxQueue) {
      this.dropped++;
      this.queue.metrics.dropped.inc({ sink: this.sink.name });
      if (this.dropping++ === 0) {
        this.queue.settings.logger().warn('Audit queue is full; records for this sink are dropped until it catches up', {
          code: 'ERR_AUDIT_RECORDS_DROPPED',
          sink: this.sink.name,
          max_queue: maxQueue,
          event: record.event,
          request_id: record.request_id,
        });
      }
      return;
    }
    this.pending.push(record);
    if (!this.running) {
      this.running = true;
      void this.run();
    }
  }

  /** Cuts a backoff short (close() wants its retries now). */
  wakeUp(): void {
    this.wake?.();
  }

  /** Everything still waiting, removed from the queue. */
  takeAll(): AuditRecord[] {
    const left = [...(this.batch?.records ?? []), ...this.pending];
    this.batch = undefined;
    this.pending = [];
    return left;
  }

  private async run(): Promise<void> {
    const { settings } = this.queue;
    try {
      while (!this.queue.stopped) {
        if (this.batch === undefined) {
          if (this.pending.length === 0) break;
          if (settings.chain && !this.sink.linksChain && this.head === undefined) {
            try {
              this.head = (await this.sink.chainHead?.()) ?? { hash: settings.genesis, seq: 0 };
            } catch (err) {
              await this.failed(err);
              continue;
            }
          }
          let records = this.pending.splice(0, settings.batchSize);
          if (settings.chain && !this.sink.linksChain) {
            // Linked once: a retry sends the same records, so the chain never skips or repeats a link.
            const linked = linkRecords(records, this.head as ChainHead);
            records = linked.records;
            this.head = linked.head;
          }
          this.batch = { id: randomBytes(12).toString('base64url'), records, attempts: 0 };
        }
        const batch = this.batch;
        try {
          await withTimeout(this.sink.write(batch.records, batch.id), settings.writeTimeout);
          this.succeeded(batch.records.length);
          if (this.batch === batch) this.batch = undefined;
        } catch (err) {
          const written = err instanceof PartialWriteError ? err.written : 0;
          if (written > 0) {
            this.succeeded(written);
            batch.records = batch.records.slice(written);
          }
          if (this.batch !== batch) continue;
          if (++batch.attempts > settings.maxRetries) {
            this.batch = undefined;
            this.queue.giveUp(this, batch.records, `still failing after ${settings.maxRetries} retries: ${messageOf(err)}`);
          }
          await this.failed(err instanceof PartialWriteError ? err.cause : err);
        }
        this.queue.progress();
      }
    } catch (err) {
      // A bug here must not become an unhandled rejection; what is queued stays for close().
      settings.logger().error('Audit queue worker stopped unexpectedly', { code: 'ERR_AUDIT_SINK_FAILED', sink: this.sink.name, err });
    } finally {
      this.running = false;
      this.queue.progress();
    }
  }

  private succeeded(count: number): void {
    this.written += count;
    this.queue.metrics.written.inc({ sink: this.sink.name }, count);
    if (this.failures > 0) {
      this.queue.settings.logger().info('Audit sink recovered; its queued records are being written', { code: 'ERR_AUDIT_SINK_RECOVERED', sink: this.sink.name, failed_attempts: this.failures });
      this.failures = 0;
    }
    if (this.dropping > 0 && this.size - count < this.queue.settings.maxQueue) {
      this.queue.settings.logger().warn('Audit sink caught up after dropping records', { code: 'ERR_AUDIT_RECORDS_DROPPED', sink: this.sink.name, dropped: this.dropping });
      this.dropping = 0;
    }
  }

  /** Counts and logs a failed attempt, then waits the backoff (cut short by close()). */
  private async failed(err: unknown): Promise<void> {
    const { settings } = this.queue;
    this.queue.metrics.errors.inc({ sink: this.sink.name });
    if (this.failures++ === 0) {
      settings.logger().warn('Audit sink failed; its records stay queued and are retried with backoff', {
        code: 'ERR_AUDIT_SINK_FAILED',
        sink: this.sink.name,
        queued: this.size,
        err: { name: (err as Error)?.name, message: messageOf(err) },
      });
    }
    const base = this.queue.draining ? settings.retryDelay : Math.min(settings.maxRetryDelay, settings.retryDelay * 2 ** Math.min(this.failures - 1, 30));
    // Half fixed, half random: instances that failed together do not retry together.
    const delay = base / 2 + Math.random() * (base / 2);
    await new Promise<void>((done) => {
      const timer = setTimeout(done, delay);
      timer.unref();
      this.wake = () => {
        clearTimeout(timer);
        done();
      };
    });
    this.wake = undefined;
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  if (!Number.isFinite(ms)) return promise;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the sink did not answer within writeTimeout (${ms} ms)`)), ms);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => {
    clearTimeout(timer);
    // A write that settles after its timeout has no one waiting for it.
    promise.catch(() => undefined);
  });
}
