import { createHash, hash as oneShotHash } from 'node:crypto';

// Same shape as the `etag` package (and Express with `app.set('etag', 'strong')`): the byte
// length in hex, then the SHA-1 of the body in base64 without its padding. SHA-1 here is a fast
// fingerprint, not a security boundary: a collision only makes a client keep a copy it could
// have refreshed. crypto.hash (Node ≥ 20.12) hashes in one call without a Hash object.
const EMPTY_ETAG = '"0-2jmj7l5rSw0yVb/vlWAYkK/YBwk"';
const sha1Base64: (data: string | Buffer) => string =
  typeof oneShotHash === 'function'
    ? (data) => oneShotHash('sha1', data, 'base64')
    : (data) => createHash('sha1').update(data).digest('base64');

/**
 * A strong ETag of the exact bytes of `body` (`"<length hex>-<sha1 base64>"`). Strings are hashed
 * as the bytes `encoding` makes of them (UTF-8 by default, as Express sends them).
 */
export function strongEtag(body: string | ArrayBufferView, encoding?: BufferEncoding): string {
  let data: string | Buffer;
  let length: number;
  if (typeof body === 'string') {
    if (encoding !== undefined && encoding !== 'utf8' && encoding !== 'utf-8') {
      data = Buffer.from(body, encoding);
      length = data.length;
    } else {
      data = body;
      length = Buffer.byteLength(body, 'utf8');
    }
  } else {
    data = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    length = data.length;
  }
  if (length === 0) return EMPTY_ETAG;
  return `"${length.toString(16)}-${sha1Base64(data).slice(0, 27)}"`;
}

/**
 * Whether an `If-None-Match` value matches `etag` under the weak comparison RFC 9110 §13.1.2
 * prescribes for it (`W/` ignored on both sides). Handles lists; `*` is the caller's business.
 * Allocation-free: it compares in place instead of splitting the header.
 */
export function etagListMatches(ifNoneMatch: string, etag: string): boolean {
  const target = etag.startsWith('W/') ? etag.slice(2) : etag;
  const targetLength = target.length;
  const n = ifNoneMatch.length;
  let i = 0;
  while (i < n) {
    while (i < n && (ifNoneMatch.charCodeAt(i) === 0x20 || ifNoneMatch.charCodeAt(i) === 0x2c || ifNoneMatch.charCodeAt(i) === 0x09)) i++;
    let end = ifNoneMatch.indexOf(',', i);
    if (end === -1) end = n;
    let last = end;
    while (last > i && (ifNoneMatch.charCodeAt(last - 1) === 0x20 || ifNoneMatch.charCodeAt(last - 1) === 0x09)) last--;
    let start = i;
    if (ifNoneMatch.charCodeAt(start) === 0x57 /* W */ && ifNoneMatch.charCodeAt(start + 1) === 0x2f /* / */) start += 2;
    if (last - start === targetLength && ifNoneMatch.startsWith(target, start)) return true;
    i = end + 1;
  }
  return false;
}

/** The request's conditional headers, as {@link isNotModified} reads them. */
export interface Conditionals {
  ifNoneMatch: string | undefined;
  ifModifiedSince: string | undefined;
  cacheControl: string | undefined;
}

const NO_CACHE = /(?:^|,)\s*no-cache\s*(?:,|$)/i;

/**
 * Whether a GET/HEAD 2xx answer may be replaced by 304 Not Modified: `If-None-Match` (weak
 * comparison, lists, `*`) when present, else `If-Modified-Since` against `Last-Modified`. A
 * request saying `Cache-Control: no-cache` always gets the full answer (a forced reload), as
 * Express's own `req.fresh` decides, so both paths agree.
 */
export function isNotModified(conditionals: Conditionals, etag: string | undefined, lastModified: string | undefined): boolean {
  const { ifNoneMatch, ifModifiedSince, cacheControl } = conditionals;
  if (ifNoneMatch === undefined && ifModifiedSince === undefined) return false;
  if (cacheControl !== undefined && NO_CACHE.test(cacheControl)) return false;
  if (ifNoneMatch !== undefined) {
    if (ifNoneMatch.trim() === '*') return true;
    return etag !== undefined && etagListMatches(ifNoneMatch, etag);
  }
  if (lastModified === undefined) return false;
  const modified = Date.parse(lastModified);
  const since = Date.parse(ifModifiedSince as string);
  return !Number.isNaN(modified) && !Number.isNaN(since) && modified <= since;
}
