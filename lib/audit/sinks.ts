import { existsSync, statSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { ConfigError } from '../errors';
import type { Logger } from '../logger';
import { nearest } from '../options';
import { PostgresDatabase } from '../postgres/database';
import { parsePostgresOption } from '../postgres/options';
import type { PostgresOption } from '../postgres/types';
import { auditStreamStore, type AuditStreamStore, type StreamEntry } from '../stores/audit-chain-store';
import { RedisStores } from '../stores/redis';
import type { RedisOption } from '../stores/redis-connection';
import type { Stores } from '../stores/types';
import { describe } from '../units';
import { isHash, linkRecords, type ChainHead } from './chain';
import { PostgresAuditSink } from './postgres-sink';
import type { AuditRecord } from './record';

/** A function sink: called once per record, in order; a throw or a rejection is retried. */
export type AuditSinkFunction = (record: AuditRecord) => void | Promise<void>;

/** The `{ file }` sink: JSON Lines appended to one file through one open handle. */
export interface FileSinkOptions {
  /** Path of the JSON Lines file (relative to the working directory); its directory must exist. */
  file: string;
  /** fdatasync after each batch, so a record is on disk before the next one is taken. Defaults to false. */
  fsync?: boolean;
  /** Name in metrics and logs. Defaults to 'file:<base name>'. */
  name?: string;
}

/** The `{ redisStream }` sink: XADD to a Redis stream shared by every instance. */
export interface RedisStreamSinkOptions {
  /** Name of the stream; its key is `<keyPrefix>audit:{<name>}`. */
  redisStream: string;
  /** Approximate most entries kept (XADD MAXLEN ~); 0 keeps every entry. Defaults to 0 (a consumer ships and trims). */
  maxLen?: number;
  /** Redis for this sink alone. Defaults to the stack's Redis (required when used without a Redis stack). */
  redis?: RedisOption;
  /** Key prefix with `redis`. Defaults to 'perimeter:'. */
  keyPrefix?: string;
  /** Name in metrics and logs. Defaults to 'redisStream:<name>'. */
  name?: string;
}

/**
 * The `{ postgres }` sink: rows of `<tablePrefix>audit`, each batch hash-chained and inserted in one
 * transaction under the table's advisory lock, so every instance extends one chain. Always chained
 * (the table requires `hash` and `prev_hash`), whatever `auditLog.chain` says.
 */
export interface PostgresSinkOptions {
  /**
   * `true`: the stack's `postgres` (its pool, `tablePrefix` and `statementTimeout`). Or a URL, a
   * `pg.Pool` or `{ url | pool, tablePrefix, statementTimeout }` of the sink's own (required when
   * auditLog is used without createStack(); a pool the sink opens is closed by `close()`).
   */
  postgres: true | PostgresOption;
  /** Name in metrics and logs. Defaults to 'postgres:<table>'. */
  name?: string;
}

/** One sink of `auditLog({ sink })`. */
export type AuditSinkOption = 'logger' | FileSinkOptions | RedisStreamSinkOptions | PostgresSinkOptions | AuditSinkFunction;

/** Thrown by a sink that wrote the first `written` records of a batch before failing, so only the rest is retried. */
export class PartialWriteError extends Error {
  constructor(readonly written: number, override readonly cause: unknown) {
    super(cause instanceof Error ? cause.message : String(cause));
    this.name = 'PartialWriteError';
  }
}

/** Where the queue delivers records. */
export interface AuditSink {
  /** Label in metrics and logs; unique within one auditLog. */
  readonly name: string;
  /** Whether the sink extends its chain itself (a head shared in Redis); otherwise the queue links records in process. */
  readonly linksChain: boolean;
  /** The head of the chain already in the sink, read once before the first chained write, so a restart continues the chain. */
  chainHead?(): Promise<ChainHead | undefined>;
  /** Writes a batch in order; a rejection means none (or, with PartialWriteError, only the first `written`) were written. */
  write(records: AuditRecord[], batchId: string): Promise<void>;
  close?(): Promise<void>;
}

/** What building sinks needs from the middleware. */
export interface SinkContext {
  /** The stack's stores (for `{ redisStream }` without its own `redis`, and `{ postgres: true }`), when built by createStack. */
  stores?: Stores;
  /** The logger of the 'logger' sink, resolved when the first record is written. */
  logger: () => Logger;
  /** Logger for connections opened at setup. */
  setupLogger: Logger;
  chain: boolean;
  genesis: string;
  writeTimeout: number;
}

/** What a sink opened for itself (its own Redis, its own PostgreSQL pool), closed with the audit log. */
export interface OwnedConnection {
  close(): Promise<void>;
}

/** Validates `auditLog.sink` at setup and builds the sinks; connections opened for a sink's own `redis` or `postgres` are returned to be closed. */
export function buildSinks(option: unknown, ctx: SinkContext): { sinks: AuditSink[]; owned: OwnedConnection[] } {
  const list = Array.isArray(option) ? option : [option];
  if (list.length === 0) throw new ConfigError('auditLog.sink', "expected at least one sink: 'logger', { file }, { redisStream }, { postgres } or a function");
  const sinks: AuditSink[] = [];
  const owned: OwnedConnection[] = [];
  const names = new Set<string>();
  try {
    list.forEach((item, i) => {
      const at = Array.isArray(option) ? `auditLog.sink[${i}]` : 'auditLog.sink';
      const sink = buildSink(item, at, ctx, owned);
      // Two sinks of one kind still need apart labels.
      let name = sink.name;
      for (let n = 2; names.has(name); n++) name = `${sink.name}#${n}`;
      names.add(name);
      (sink as { name: string }).name = name;
      sinks.push(sink);
    });
  } catch (err) {
    for (const stores of owned) void stores.close();
    throw err;
  }
  return { sinks, owned };
}

const SINK_HINT = "'logger', { file: 'audit.jsonl' }, { redisStream: 'audit' }, { postgres: true } or a function (record) => void";
const SINK_KINDS = ['file', 'redisStream', 'postgres'];

function buildSink(item: unknown, at: string, ctx: SinkContext, owned: OwnedConnection[]): AuditSink {
  if (item === 'logger') return new LoggerSink(ctx.logger);
  if (typeof item === 'function') return new FunctionSink(item as AuditSinkFunction);
  if (typeof item === 'string') {
    const near = nearest(item, ['logger']);
    throw new ConfigError(at, `unknown sink '${item}'${near ? `; did you mean '${near}'?` : ''} Expected ${SINK_HINT}`);
  }
  if (item === null || typeof item !== 'object') throw new ConfigError(at, `expected ${SINK_HINT}, got ${describe(item)}`);
  const o = item as Record<string, unknown>;
  if (SINK_KINDS.filter((kind) => kind in o).length > 1) throw new ConfigError(at, 'give one of file, redisStream or postgres per sink; list several sinks in an array');
  if ('file' in o) {
    onlyKeys(o, ['file', 'fsync', 'name'], at);
    if (typeof o.file !== 'string' || o.file.trim() === '') throw new ConfigError(`${at}.file`, `expected a file path like 'audit.jsonl', got ${describe(o.file)}`);
    const path = resolve(o.file);
    const dir = dirname(path);
    if (!existsSync(dir) || !statSync(dir).isDirectory()) {
      throw new ConfigError(`${at}.file`, `the directory ${dir} does not exist; create it first (records are appended to ${basename(path)} there)`);
    }
    return new FileSink(path, bool(o.fsync ?? false, `${at}.fsync`), name(o.name, `file:${basename(path)}`, at));
  }
  if ('redisStream' in o) {
    onlyKeys(o, ['redisStream', 'maxLen', 'redis', 'keyPrefix', 'name'], at);
    const stream = o.redisStream;
    if (typeof stream !== 'string' || !/^[A-Za-z0-9._:-]{1,128}$/.test(stream)) {
      throw new ConfigError(`${at}.redisStream`, `expected a stream name of 1–128 letters, digits and . _ : -, like 'audit', got ${describe(stream)}`);
    }
    const maxLen = o.maxLen ?? 0;
    if (typeof maxLen !== 'number' || !Number.isInteger(maxLen) || maxLen < 0) {
      throw new ConfigError(`${at}.maxLen`, `expected a whole number of entries like 100000, or 0 to keep all, got ${describe(maxLen)}`);
    }
    const factory = auditStreamStore({ stream, maxLen });
    let store: AuditStreamStore;
    if (o.redis !== undefined) {
      if (o.keyPrefix !== undefined && typeof o.keyPrefix !== 'string') throw new ConfigError(`${at}.keyPrefix`, `expected a string like 'perimeter:', got ${describe(o.keyPrefix)}`);
      const stores = new RedisStores(o.redis as RedisOption, { logger: ctx.setupLogger, prefix: o.keyPrefix as string | undefined });
      owned.push(stores);
      store = stores.create(factory);
    } else if (ctx.stores !== undefined) {
      store = ctx.stores.create(factory);
    } else {
      throw new ConfigError(
        `${at}.redis`,
        `{ redisStream: '${stream}' } used without createStack() needs its own Redis: { redisStream: '${stream}', redis: process.env.REDIS_URL }, or configure auditLog in createStack({ redis, auditLog })`,
      );
    }
    return new RedisStreamSink(store, ctx, name(o.name, `redisStream:${stream}`, at));
  }
  if ('postgres' in o) {
    onlyKeys(o, ['postgres', 'name'], at);
    const database = o.postgres === true ? ctx.stores?.postgres : openPostgres(o.postgres, `${at}.postgres`, ctx, owned);
    if (database === undefined) {
      throw new ConfigError(
        `${at}.postgres`,
        'postgres: true writes to the stack\'s PostgreSQL: pass postgres to createStack() (createStack({ postgres: process.env.DATABASE_URL, auditLog: { sink: { postgres: true } } })), or give the sink its own { postgres: process.env.DATABASE_URL }',
      );
    }
    return new PostgresAuditSink(database, ctx.genesis, name(o.name, `postgres:${database.tables.audit}`, at));
  }
  const near = nearest(Object.keys(o)[0] ?? '', SINK_KINDS);
  throw new ConfigError(at, `expected ${SINK_HINT}${near ? `; did you mean '${near}'?` : ''}`);
}

function openPostgres(value: unknown, option: string, ctx: SinkContext, owned: OwnedConnection[]): PostgresDatabase {
  if (value === false || value === undefined || value === null) {
    throw new ConfigError(option, `expected true (the stack's postgres), a URL, a pg.Pool or { url | pool, tablePrefix, statementTimeout }, got ${describe(value)}`);
  }
  const database = new PostgresDatabase(parsePostgresOption(value as PostgresOption, option), { logger: ctx.setupLogger });
  owned.push(database);
  return database;
}

function onlyKeys(o: Record<string, unknown>, known: string[], at: string): void {
  for (const key of Object.keys(o)) {
    if (!known.includes(key)) {
      const near = nearest(key, known);
      throw new ConfigError(`${at}.${key}`, `unknown sink option${near ? `; did you mean '${near}'?` : ''} Known: ${known.join(', ')}`);
    }
  }
}

function bool(value: unknown, option: string): boolean {
  if (typeof value !== 'boolean') throw new ConfigError(option, `expected true or false, got ${describe(value)}`);
  return value;
}

function name(value: unknown, fallback: string, at: string): string {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || value === '') throw new ConfigError(`${at}.name`, `expected a non-empty string, got ${describe(value)}`);
  return value;
}

/** One info line a record, with message 'audit' and the record's fields. */
class LoggerSink implements AuditSink {
  readonly name = 'logger';
  readonly linksChain = false;
  constructor(private readonly logger: () => Logger) {}
  async write(records: AuditRecord[]): Promise<void> {
    const logger = this.logger();
    for (let i = 0; i < records.length; i++) {
      try {
        logger.info('audit', records[i]);
      } catch (err) {
        throw new PartialWriteError(i, err);
      }
    }
  }
}

/** The user's function, once per record, in order. */
class FunctionSink implements AuditSink {
  readonly name: string;
  readonly linksChain = false;
  constructor(private readonly fn: AuditSinkFunction) {
    this.name = `function:${fn.name || 'anonymous'}`;
  }
  async write(records: AuditRecord[]): Promise<void> {
    for (let i = 0; i < records.length; i++) {
      try {
        // A copy: one sink's code must not change what the others write.
        await this.fn({ ...records[i] });
      } catch (err) {
        throw new PartialWriteError(i, err);
      }
    }
  }
}

// Enough for the last line of any record `maxBodySize` allows; grown when a line is longer.
const TAIL_WINDOW = 64 * 1024;

/** JSON Lines through one append handle, reopened after an error. One process per file: appends from several would interleave. */
class FileSink implements AuditSink {
  readonly linksChain = false;
  private handle?: FileHandle;
  // The file ends in a partial line (a crash mid-write): the next write starts on a new line.
  private needsNewline = false;

  constructor(private readonly path: string, private readonly fsync: boolean, readonly name: string) {}

  async chainHead(): Promise<ChainHead | undefined> {
    const handle = await this.open();
    const { size } = await handle.stat();
    let window = TAIL_WINDOW;
    for (;;) {
      const length = Math.min(size, window);
      if (length === 0) return undefined;
      const buffer = Buffer.alloc(length);
      await handle.read(buffer, 0, length, size - length);
      const text = buffer.toString('utf8');
      const end = text.endsWith('\n') ? text.length - 1 : text.lastIndexOf('\n');
      const start = end <= 0 ? -1 : text.lastIndexOf('\n', end - 1);
      if (end > 0 && (start !== -1 || length === size)) {
        const line = text.slice(start + 1, end).trim();
        return headOf(line);
      }
      if (end <= 0 && length === size) return headOf(text.trim());
      window *= 4;
    }
  }

  async write(records: AuditRecord[]): Promise<void> {
    let text = this.needsNewline ? '\n' : '';
    for (const record of records) text += `${JSON.stringify(record)}\n`;
    const handle = await this.open();
    try {
      const data = Buffer.from(text, 'utf8');
      let offset = 0;
      while (offset < data.length) offset += (await handle.write(data, offset)).bytesWritten;
      this.needsNewline = false;
      if (this.fsync) await handle.datasync();
    } catch (err) {
      // A handle that failed once is not trusted again; the next attempt reopens (and checks the file's end).
      this.handle = undefined;
      await handle.close().catch(() => undefined);
      throw err;
    }
  }

  async close(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close();
  }

  private async open(): Promise<FileHandle> {
    if (this.handle !== undefined) return this.handle;
    const handle = await open(this.path, 'a+');
    try {
      const { size } = await handle.stat();
      if (size > 0) {
        const last = Buffer.alloc(1);
        await handle.read(last, 0, 1, size - 1);
        this.needsNewline = last[0] !== 0x0a;
      }
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw err;
    }
    this.handle = handle;
    return handle;
  }
}

function headOf(line: string): ChainHead | undefined {
  try {
    const record = JSON.parse(line) as { hash?: unknown; seq?: unknown };
    // A file written without chain: true starts a chain at the genesis value after its last line.
    return isHash(record.hash) ? { hash: record.hash, seq: typeof record.seq === 'number' ? record.seq : 0 } : undefined;
  } catch {
    return undefined;
  }
}

// Compare-and-set losses (each means another writer made progress) before the batch waits for
// the queue's backoff instead; far more than a fair turn ever needs.
const MAX_ATTEMPTS = 1000;
// A writer that lost this many times in a row claims the turn.
const CLAIM_AFTER = 2;

/** XADD through the audit stream store; with a chain, linked to the head kept in Redis so every instance extends one chain. */
class RedisStreamSink implements AuditSink {
  readonly linksChain = true;
  private head?: ChainHead;

  constructor(private readonly store: AuditStreamStore, private readonly ctx: SinkContext, readonly name: string) {}

  async write(records: AuditRecord[], batchId: string): Promise<void> {
    const { chain, genesis, writeTimeout } = this.ctx;
    if (!chain) {
      await this.store.append(records.map(entryOf), batchId, undefined, writeTimeout);
      return;
    }
    // Optimistic: the head this instance last wrote; a loss says what the head really is.
    let head = this.head ?? { hash: genesis, seq: 0 };
    let losses = 0;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const linked = linkRecords(records, head);
      const swap = { expected: head.hash, genesis, next: linked.head, claimTurn: losses >= CLAIM_AFTER };
      const result = await this.store.append(linked.records.map(entryOf), batchId, swap, writeTimeout);
      if (result.status === 'ok') {
        this.head = linked.head;
        return;
      }
      if (result.status === 'duplicate') {
        this.head = undefined;
        return;
      }
      head = result.head;
      if (result.status === 'conflict') {
        losses++;
      } else {
        // Another instance holds the turn for a moment.
        await new Promise((done) => setTimeout(done, 2 + Math.random() * 8).unref());
      }
    }
    this.head = undefined;
    throw new Error(`the chain head of ${this.store.key} moved ${MAX_ATTEMPTS} times in a row while appending`);
  }
}

function entryOf(record: AuditRecord): StreamEntry {
  return { event: record.event, json: JSON.stringify(record) };
}
