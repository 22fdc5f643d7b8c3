import { createHash, type Hash } from 'node:crypto';
import type { Request } from 'express';

/**
 * What a key is bound to: SHA-256 of the method, the URL as sent (path and query) and the body.
 *
 * The body is the parsed one (`req.body`, as bodyParser or express.json() left it), serialised
 * canonically (object keys sorted, no whitespace), so a client that re-serialises the same
 * payload on a retry (other key order, other spacing) is still recognised. A Buffer or string
 * body (express.raw(), express.text()) is digested as it is. A body nobody parsed cannot be read
 * without taking it from the handler, and one nested deeper than JSON.stringify can walk
 * (thousands of levels: no API expects that, and a slower walk would let such bodies hold the
 * event loop) is not serialised: their Content-Type and Content-Length stand in for them.
 * `payloadOf`, when given, replaces the body with what it returns.
 */
export function fingerprintOf(req: Request, payloadOf: ((req: Request) => unknown) | undefined): string {
  const hash = createHash('sha256');
  hash.update(req.method).update('\n').update(req.originalUrl ?? req.url).update('\n');
  const payload = payloadOf !== undefined ? payloadOf(req) : req.body;
  if (payloadOf === undefined && payload === undefined) {
    standIn(hash, req, 'unparsed');
  } else if (typeof payload === 'string') {
    hash.update('text\n').update(payload);
  } else if (ArrayBuffer.isView(payload)) {
    hash.update('bytes\n').update(new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength));
  } else {
    const json = canonicalJson(payload);
    if (json === undefined) standIn(hash, req, 'deep');
    else hash.update('json\n').update(json);
  }
  return hash.digest('base64url');
}

function standIn(hash: Hash, req: Request, kind: string): void {
  const headers = req.headers;
  const length = headers['content-length'] ?? (headers['transfer-encoding'] !== undefined ? 'chunked' : '0');
  hash.update(kind).update('\n').update(headers['content-type'] ?? '').update('\n').update(length);
}

/**
 * JSON with object keys in one canonical order, so equal values give equal text: array-index keys
 * ('0', '7') first in numeric order, as JavaScript itself keeps them, then the other keys sorted.
 * JSON.stringify does the work, with a replacer that hands it sorted copies of the objects whose
 * keys are out of order. Undefined for a value nested deeper than JSON.stringify's recursion
 * allows (JSON.parse takes any depth, so a hostile body can be).
 */
export function canonicalJson(value: unknown): string | undefined {
  try {
    return JSON.stringify(value, sortKeys) ?? 'null';
  } catch (err) {
    if (err instanceof RangeError) return undefined;
    throw err;
  }
}

function sortKeys(this: unknown, _key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return value;
  const keys = Object.keys(value);
  const ordered = canonicalKeys(keys);
  if (ordered === keys) return value;
  const copy: Record<string, unknown> = {};
  for (let i = 0; i < ordered.length; i++) copy[ordered[i]] = (value as Record<string, unknown>)[ordered[i]];
  return copy;
}

/** `keys` (as Object.keys lists them: index keys first) in canonical order; the same array when it already is. */
function canonicalKeys(keys: string[]): string[] {
  let named = 0;
  while (named < keys.length && isArrayIndex(keys[named])) named++;
  for (let i = named + 1; i < keys.length; i++) {
    if (keys[i - 1] > keys[i]) return [...keys.slice(0, named), ...keys.slice(named).sort()];
  }
  return keys;
}

const MAX_ARRAY_INDEX = 4294967294;

function isArrayIndex(key: string): boolean {
  const c = key.charCodeAt(0);
  if (c < 48 || c > 57 || (c === 48 && key.length > 1) || key.length > 10) return false;
  for (let i = 1; i < key.length; i++) {
    const d = key.charCodeAt(i);
    if (d < 48 || d > 57) return false;
  }
  return Number(key) <= MAX_ARRAY_INDEX;
}

