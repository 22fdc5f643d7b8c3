import { createHash } from 'node:crypto';

/** The `prev_hash` of a chain's first record unless `genesis` says otherwise: 64 zeros. */
export const GENESIS = '0'.repeat(64);

const HEX_64 = /^[0-9a-f]{64}$/;

/** Whether `value` is a SHA-256 hex digest (64 lowercase hex characters). */
export function isHash(value: unknown): value is string {
  return typeof value === 'string' && HEX_64.test(value);
}

/** Where a chain ends: the hash of its last record and that record's `seq` (0 before the first). */
export interface ChainHead {
  hash: string;
  seq: number;
}

/** The fields `chain: true` adds to a record. */
export interface ChainFields {
  /** Position in this sink's chain, from 1. */
  seq?: number;
  /** `hash` of the previous record of this sink (the genesis value for the first). */
  prev_hash?: string;
  /** SHA-256 hex of the canonical JSON of the record without `hash`, followed by `prev_hash`. */
  hash?: string;
}

/**
 * JSON with object keys sorted (by UTF-16 code unit, as `Array.prototype.sort` does) at every
 * depth and no whitespace; otherwise exactly `JSON.stringify`'s rules (undefined fields left out,
 * `toJSON` honoured, non-finite numbers as null). Two parties that agree on the values agree on
 * the bytes, whatever order the fields were written in.
 */
export function canonicalJson(value: unknown): string {
  const out = canonical(value, true);
  return out === undefined ? 'null' : out;
}

function canonical(value: unknown, top: boolean): string | undefined {
  if (value !== null && typeof value === 'object' && typeof (value as { toJSON?: unknown }).toJSON === 'function') {
    value = (value as { toJSON(): unknown }).toJSON();
  }
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'number':
      return Number.isFinite(value) ? JSON.stringify(value) : 'null';
    case 'boolean':
      return value ? 'true' : 'false';
    case 'bigint':
      // JSON.stringify throws on a bigint; a record must never stop the chain, so it is written as a string.
      return JSON.stringify(value.toString());
    case 'object': {
      if (value === null) return 'null';
      if (Array.isArray(value)) {
        let out = '[';
        for (let i = 0; i < value.length; i++) out += (i === 0 ? '' : ',') + (canonical(value[i], false) ?? 'null');
        return `${out}]`;
      }
      const source = value as Record<string, unknown>;
      const keys = Object.keys(source).sort();
      let out = '{';
      let first = true;
      for (const key of keys) {
        const item = canonical(source[key], false);
        if (item === undefined) continue;
        out += `${first ? '' : ','}${JSON.stringify(key)}:${item}`;
        first = false;
      }
      return `${out}}`;
    }
    default:
      // undefined, functions and symbols: left out of objects, null in arrays, as in JSON.
      return top ? 'null' : undefined;
  }
}

/**
 * The `hash` a record must carry: SHA-256 hex of the canonical JSON of the record without its
 * `hash` field (so `prev_hash` and `seq` are covered), followed by `prev_hash`.
 */
export function recordHash(record: Record<string, unknown>, prevHash: string): string {
  let body: Record<string, unknown> = record;
  if ('hash' in record) {
    const { hash: _hash, ...rest } = record;
    body = rest;
  }
  return createHash('sha256').update(canonicalJson(body)).update(prevHash).digest('hex');
}

/**
 * Copies of `records` extended with `seq`, `prev_hash` and `hash`, continuing the chain at
 * `head`; returns them with the new head. The inputs are not modified (every sink links its own copies).
 */
export function linkRecords<R extends object>(records: readonly R[], head: ChainHead): { records: Array<R & ChainFields>; head: ChainHead } {
  const linked: Array<R & ChainFields> = new Array(records.length);
  let { hash, seq } = head;
  for (let i = 0; i < records.length; i++) {
    const source = records[i] as Record<string, unknown>;
    const record: Record<string, unknown> = {};
    for (const key of Object.keys(source)) if (key !== 'seq' && key !== 'prev_hash' && key !== 'hash') record[key] = source[key];
    record.seq = ++seq;
    record.prev_hash = hash;
    hash = recordHash(record, hash);
    record.hash = hash;
    linked[i] = record as R & ChainFields;
  }
  return { records: linked, head: { hash, seq } };
}
