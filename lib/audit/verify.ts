import { GENESIS, isHash, recordHash } from './chain';

/** Result of {@link verifyAuditChain}. */
export interface AuditChainResult {
  /** Whether every record links to the one before it and its content matches its hash. */
  valid: boolean;
  /** Index (from 0, among non-blank records) of the first record that breaks the chain; `count` when the chain ends before the expected `head`. */
  brokenAt?: number;
  /** Why the chain breaks there, in a sentence. */
  reason?: string;
  /** Records that verified (all of them when valid; those before `brokenAt` otherwise). */
  count: number;
  /** `hash` of the last valid record (the genesis value when there were none). */
  head: string;
}

/** Options of {@link verifyAuditChain}. */
export interface VerifyAuditChainOptions {
  /**
   * `prev_hash` the first record must carry: the `genesis` the chain was written with, or `false`
   * to trust whatever the first record says (a trimmed Redis stream, a rotated file). Defaults to 64 zeros.
   */
  genesis?: string | false;
  /** `hash` the last record must carry (the head kept in Redis, or noted elsewhere): detects records removed from the end. Defaults to no check. */
  head?: string;
  /** Fields a transport added after hashing, left out before checking (`['level', 'message']` for lines of the 'logger' sink). Defaults to none. */
  omit?: string[];
}

/**
 * Checks a hash chain one record at a time (records may be objects or JSON lines), so a file or a
 * stream of any length is verified in constant memory. Stops at the first break.
 */
export class ChainVerifier {
  private expected: string | undefined;
  private index = 0;
  private broken?: { at: number; reason: string };
  private readonly omit: readonly string[];
  private readonly head?: string;

  constructor(options: VerifyAuditChainOptions = {}) {
    const genesis = options.genesis ?? GENESIS;
    if (genesis !== false && !isHash(genesis)) throw new TypeError(`verifyAuditChain: genesis must be 64 lowercase hex characters or false, got ${String(genesis)}`);
    this.expected = genesis === false ? undefined : genesis;
    this.omit = options.omit ?? [];
    this.head = options.head;
  }

  /** Checks the next record; returns false once the chain is broken (later records are not read). Blank strings are skipped. */
  push(input: unknown): boolean {
    if (this.broken !== undefined) return false;
    let record: unknown = input;
    if (typeof input === 'string') {
      if (input.trim() === '') return true;
      try {
        record = JSON.parse(input);
      } catch {
        return this.fail('the line is not valid JSON');
      }
    }
    if (record === null || typeof record !== 'object' || Array.isArray(record)) return this.fail('the record is not a JSON object');
    let fields = record as Record<string, unknown>;
    if (this.omit.length > 0) {
      fields = { ...fields };
      for (const key of this.omit) delete fields[key];
    }
    const { hash, prev_hash: prev } = fields;
    if (!isHash(hash) || !isHash(prev)) return this.fail('the record has no hash and prev_hash (was it written with chain: true?)');
    if (this.expected !== undefined && prev !== this.expected) {
      return this.fail(this.index === 0 ? 'prev_hash of the first record is not the genesis value' : "prev_hash does not match the previous record's hash (a record was removed, inserted or reordered)");
    }
    if (recordHash(fields, prev) !== hash) return this.fail("the record's content does not match its hash (a field was edited)");
    this.expected = hash;
    this.index++;
    return true;
  }

  /** The verdict so far (call after the last record). */
  result(): AuditChainResult {
    const head = this.expected ?? GENESIS;
    if (this.broken !== undefined) return { valid: false, brokenAt: this.broken.at, reason: this.broken.reason, count: this.broken.at, head };
    if (this.head !== undefined && this.head !== head) {
      return { valid: false, brokenAt: this.index, reason: 'the chain ends before the expected head (records were removed from the end)', count: this.index, head };
    }
    return { valid: true, count: this.index, head };
  }

  private fail(reason: string): false {
    this.broken = { at: this.index, reason };
    return false;
  }
}

/**
 * Verifies a hash chain written with `auditLog({ chain: true })`: each record's `prev_hash` must be
 * the previous record's `hash` (the genesis value for the first) and its `hash` must match its
 * content. Detects an edited field, a removed, inserted or reordered record, and with `head`
 * a removed tail. Records are objects or JSON lines; an async iterable (a file read line by
 * line) gives a promise.
 */
export function verifyAuditChain(records: Iterable<unknown>, options?: VerifyAuditChainOptions): AuditChainResult;
export function verifyAuditChain(records: AsyncIterable<unknown>, options?: VerifyAuditChainOptions): Promise<AuditChainResult>;
export function verifyAuditChain(records: Iterable<unknown> | AsyncIterable<unknown>, options: VerifyAuditChainOptions = {}): AuditChainResult | Promise<AuditChainResult> {
  const verifier = new ChainVerifier(options);
  if (records !== null && typeof records === 'object' && Symbol.asyncIterator in records) {
    return (async () => {
      for await (const record of records as AsyncIterable<unknown>) if (!verifier.push(record)) break;
      return verifier.result();
    })();
  }
  if (records === null || typeof records !== 'object' || !(Symbol.iterator in records)) {
    throw new TypeError('verifyAuditChain: expected an array (or iterable) of records or JSON lines');
  }
  for (const record of records as Iterable<unknown>) if (!verifier.push(record)) break;
  return verifier.result();
}
