import { createHash, type Hash } from 'node:crypto';
import type { Request } from 'express';

/**
 * What a key is bound to: SHA-256 of the method, the URL as sent (path and query) and the body.
 *
 * The body is the parsed one (`req.body`, as bodyParser or express.json() left it), serialised
 * canonically (object keys sorted, no whitespace), so a client that re-serialises the same
 * payload on a retry (other key order, other spacing) is still recognised. A Buffer or string
 * body (express.raw(), express.text()) is digested as it is. A body nobody parsed cannot be read
 * without taking it from the handler: its Content-Type and Content-Length stand in for it.
 * `payloadOf`, when given, replaces the body with what it returns.
 */
export function fingerprintOf(req: Request, payloadOf: ((req: Request) => unknown) | undefined): string {
  const hash = createHash('sha256');
  hash.update(req.method).update('\n').update(req.originalUrl ?? req.url).update('\n');
  if (payloadOf !== undefined) {
    digestValue(hash, payloadOf(req));
  } else if (req.body === undefined) {
    const headers = req.headers;
    const length = headers['content-length'] ?? (headers['transfer-encoding'] !== undefined ? 'chunked' : '0');
    hash.update('unparsed\n').update(headers['content-type'] ?? '').update('\n').update(length);
  } else {
    digestValue(hash, req.body);
  }
  return hash.digest('base64url');
}

function digestValue(hash: Hash, value: unknown): void {
  if (typeof value === 'string') hash.update('text\n').update(value);
  else if (ArrayBuffer.isView(value)) hash.update('bytes\n').update(new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
  else hash.update('json\n').update(canonicalJson(value));
}

/** A piece of output on the work stack, told apart from the values still to serialise. */
class Piece {
  constructor(readonly text: string) {}
}
const OPEN_ARRAY = new Piece('[');
const CLOSE_ARRAY = new Piece(']');
const OPEN_OBJECT = new Piece('{');
const CLOSE_OBJECT = new Piece('}');
const COMMA = new Piece(',');

/**
 * JSON with object keys sorted, so equal values give equal text. Iterative, not recursive: a
 * parsed body can nest deeper than the call stack (JSON.parse takes any depth), and a body must
 * never turn into a RangeError. Values JSON cannot hold are written as JSON.stringify writes them
 * (undefined and functions skipped in objects, null in arrays).
 */
export function canonicalJson(value: unknown): string {
  const out: string[] = [];
  const stack: unknown[] = [value];
  // Parsed bodies are trees; a value met twice is a cycle that would never end.
  const seen = new Set<object>();
  while (stack.length > 0) {
    const item = stack.pop();
    if (item instanceof Piece) {
      out.push(item.text);
      continue;
    }
    if (item === null) {
      out.push('null');
      continue;
    }
    switch (typeof item) {
      case 'string':
        out.push(JSON.stringify(item));
        continue;
      case 'number':
        out.push(Number.isFinite(item) ? String(item) : 'null');
        continue;
      case 'boolean':
        out.push(item ? 'true' : 'false');
        continue;
      case 'bigint':
        out.push(item.toString());
        continue;
      case 'object':
        break;
      default:
        out.push('null');
        continue;
    }
    const obj = item as Record<string, unknown>;
    if (seen.has(obj)) throw new TypeError('idempotency: the request payload refers to itself (a cycle or a shared object); the fingerprint option can return a string instead');
    seen.add(obj);
    if (typeof obj.toJSON === 'function') {
      stack.push((obj.toJSON as () => unknown)());
      continue;
    }
    if (Array.isArray(obj)) {
      stack.push(CLOSE_ARRAY);
      for (let i = obj.length - 1; i >= 0; i--) {
        stack.push(obj[i]);
        if (i > 0) stack.push(COMMA);
      }
      stack.push(OPEN_ARRAY);
      continue;
    }
    const keys = Object.keys(obj).filter((k) => isJsonValue(obj[k])).sort();
    stack.push(CLOSE_OBJECT);
    for (let i = keys.length - 1; i >= 0; i--) {
      stack.push(obj[keys[i]]);
      stack.push(new Piece(`${JSON.stringify(keys[i])}:`));
      if (i > 0) stack.push(COMMA);
    }
    stack.push(OPEN_OBJECT);
  }
  return out.join('');
}

function isJsonValue(value: unknown): boolean {
  const type = typeof value;
  return type !== 'undefined' && type !== 'function' && type !== 'symbol';
}
