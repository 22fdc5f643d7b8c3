import etag from 'etag';
import fresh from 'fresh';

/**
 * A strong ETag of the exact bytes of `body`, from the `etag` package: `"<length hex>-<sha1
 * base64>"`, the form Express sends with `app.set('etag', 'strong')`. Strings are hashed as the
 * bytes `encoding` makes of them (UTF-8 by default, as Express sends them).
 */
export function strongEtag(body: string | ArrayBufferView, encoding?: BufferEncoding): string {
  if (typeof body === 'string') {
    // etag hashes a string as UTF-8; a response written in another encoding is hashed as its bytes.
    return etag(encoding === undefined || encoding === 'utf8' || encoding === 'utf-8' ? body : Buffer.from(body, encoding));
  }
  return etag(Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength));
}

/**
 * Whether an `If-None-Match` value matches `etag` under the weak comparison RFC 9110 §13.1.2
 * prescribes for it (`W/` ignored on both sides), element by element; `*` matches any tag.
 */
export function etagListMatches(ifNoneMatch: string, etag: string): boolean {
  return fresh({ 'if-none-match': withSpaces(ifNoneMatch) }, { etag });
}

/** The request's conditional headers, as {@link isNotModified} reads them. */
export interface Conditionals {
  ifNoneMatch: string | undefined;
  ifModifiedSince: string | undefined;
  cacheControl: string | undefined;
}

/**
 * Whether a GET/HEAD 2xx answer may be replaced by 304 Not Modified, decided by the `fresh`
 * package as Express's `req.fresh` decides it: `If-None-Match` (weak comparison, lists, `*`) when
 * present, else `If-Modified-Since` against `Last-Modified`; a request saying
 * `Cache-Control: no-cache` (a forced reload) always gets the full answer.
 */
export function isNotModified(conditionals: Conditionals, etag: string | undefined, lastModified: string | undefined): boolean {
  const { ifNoneMatch, ifModifiedSince, cacheControl } = conditionals;
  if (ifNoneMatch === undefined && ifModifiedSince === undefined) return false;
  return fresh(
    { 'if-none-match': ifNoneMatch === undefined ? undefined : withSpaces(ifNoneMatch), 'if-modified-since': ifModifiedSince, 'cache-control': cacheControl },
    { etag, 'last-modified': lastModified },
  );
}

// fresh splits lists on commas and trims spaces only; HTTP's optional whitespace also allows tabs.
function withSpaces(list: string): string {
  return list.includes('\t') ? list.replace(/\t/g, ' ') : list;
}
