import type { Request, Response } from 'express';
import { contextOf } from '../context';
import { isNotModified, strongEtag } from '../etag';
import type { Logger } from '../logger';
import { responseSlots } from '../request-slots';
import type { CachedResponse } from '../stores/cache-store';
import { headerString, type CacheState, type Fill } from './fill';
import { entryNames, tagName, writeNames } from './names';
import type { LayerSettings } from './options';
import { recordOnSpan } from '../otel';

type Send = (...args: unknown[]) => Response;

/** The response hooks of one GET/HEAD request: one set, whatever the number of cache layers. */
interface ResponseHooks {
  req: Request;
  prevSend: Send;
  prevEnd: Send;
  head: boolean;
  etag: boolean;
  cacheControl: string | undefined;
  cacheControlAuthenticated: string | undefined;
  vary: string[] | undefined;
  /** The body res.send saw (HEAD ends without one). */
  body: string | ArrayBufferView | undefined;
  /** Conditional headers hidden from Express's res.send, decided again in res.end. */
  hidden: boolean;
  ifNoneMatch: string | undefined;
  ifModifiedSince: string | undefined;
  /** The server-side fill this response answers, if any. */
  fill: Fill | undefined;
  /** res.send has taken the final body (res.json passes through res.send twice). */
  claimed: boolean;
  /** Ended, or replayed from the cache: the hooks step aside. */
  done: boolean;
}

/** The res.end hook of a write: a 2xx answer first drops the entries of its path and tags. */
interface WriteHook {
  prevEnd: Send;
  names: string[];
  state: CacheState;
  done: boolean;
}

/** What the handler answered, as res.end received it. */
interface Answer {
  status: number;
  body: string | ArrayBufferView | undefined;
  encoding: BufferEncoding | undefined;
  /** The Cache-Control the handler set itself. */
  cacheControl: unknown;
}

// A handler that says any of these wants no shared copy; `no-cache` would need a revalidation per use.
const UNSTORABLE = /(?:^|,)\s*(?:no-store|private|no-cache)\b/i;
const VARY_ANY = /(?:^|,)\s*\*\s*(?:,|$)/;
// Never replayed: per-connection, per-request, or recomputed on every hit.
const SKIP_HEADERS = new Set(['set-cookie', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'date', 'x-cache', 'age', 'trailer', 'upgrade']);
const PARTIAL_CONTENT = 206;
const NO_CONTENT = 204;
const NOT_MODIFIED = 304;
const MS_PER_SECOND = 1000;

/**
 * Hooks res.send and res.end of a GET/HEAD request for ETag, Cache-Control, Vary, 304 and the
 * server-side capture; a later (inner, more specific) layer on the same request amends them.
 */
export function hookResponse(req: Request, res: Response, layer: LayerSettings): ResponseHooks {
  const slots = responseSlots(res);
  let hooks = slots.cachePending as ResponseHooks | undefined;
  if (hooks === undefined) {
    hooks = {
      req,
      prevSend: res.send as Send,
      prevEnd: res.end as Send,
      head: req.method === 'HEAD',
      etag: layer.etag ?? true,
      cacheControl: layer.cacheControl,
      cacheControlAuthenticated: layer.cacheControlAuthenticated,
      vary: layer.vary,
      body: undefined,
      hidden: false,
      ifNoneMatch: undefined,
      ifModifiedSince: undefined,
      fill: undefined,
      claimed: false,
      done: false,
    };
    slots.cachePending = hooks;
    res.send = cacheSend as Response['send'];
    res.end = cacheEnd as Response['end'];
    return hooks;
  }
  if (layer.etag !== undefined) hooks.etag = layer.etag;
  if (layer.setsCacheControl) {
    hooks.cacheControl = layer.cacheControl;
    hooks.cacheControlAuthenticated = layer.cacheControlAuthenticated;
  }
  if (layer.vary !== undefined) hooks.vary = hooks.vary === undefined ? layer.vary : [...hooks.vary, ...layer.vary];
  return hooks;
}

/** Answers from the cache: the stored status, headers and body (or 304), with `X-Cache` and `Age`. */
export function replay(req: Request, res: Response, state: CacheState, entry: CachedResponse): void {
  const hooks = responseSlots(res).cachePending as ResponseHooks | undefined;
  // An outer cache layer's hooks must not hash or rewrite the replayed response.
  if (hooks !== undefined) hooks.done = true;
  const age = Math.max(0, state.store.now() - entry.storedAt);
  res.statusCode = entry.status;
  const headers = entry.headers;
  for (let i = 0; i < headers.length; i++) res.setHeader(headers[i][0], headers[i][1]);
  res.setHeader('X-Cache', age >= entry.ttlMs ? 'STALE' : 'HIT');
  res.setHeader('Age', String(Math.floor(age / MS_PER_SECOND)));
  const ctx = contextOf(req);
  if (ctx !== undefined) ctx.cacheHit = true;
  recordOnSpan(req, 'perimeter.cache.hit', true);
  state.hits.inc();
  const h = req.headers;
  const ifNoneMatch = h['if-none-match'];
  const ifModifiedSince = h['if-modified-since'];
  if (
    (ifNoneMatch !== undefined || ifModifiedSince !== undefined) &&
    isNotModified({ ifNoneMatch, ifModifiedSince, cacheControl: h['cache-control'] }, entry.etag, entry.lastModified)
  ) {
    res.statusCode = NOT_MODIFIED;
    res.removeHeader('Content-Type');
    res.end();
    return;
  }
  res.setHeader('Content-Length', entry.body.length);
  res.end(req.method === 'HEAD' ? undefined : entry.body);
}

/** Hooks res.end of a write so a 2xx answer drops the entries of its path (and `tags`) before it goes out. */
export function watchWrite(req: Request, res: Response, tags: string[] | undefined, state: CacheState): void {
  const slots = responseSlots(res);
  const existing = slots.cacheWrite as WriteHook | undefined;
  if (existing !== undefined) {
    if (tags !== undefined) for (const tag of tags) existing.names.push(tagName(tag));
    return;
  }
  slots.cacheWrite = { prevEnd: res.end as Send, names: writeNames(req, tags), state, done: false } satisfies WriteHook;
  res.end = writeEnd as Response['end'];
}

/** Whether auth identified the caller (user or API key). */
export function isAuthenticated(req: Request): boolean {
  return req.user !== undefined || req.apiKey !== undefined;
}

/**
 * res.send hook: the body is known here, before Express hashes it for its own weak ETag, so the
 * strong ETag is set first and Express skips its hash (one hash per response, never two).
 */
function cacheSend(this: Response, ...args: unknown[]): Response {
  const hooks = responseSlots(this).cachePending as ResponseHooks;
  const body = args[0];
  const status = this.statusCode;
  // Objects come back through res.json → res.send(string); only the final bytes are claimed.
  // Express 4's deprecated res.send(status, body) passes through untouched and returns here the same way.
  if (hooks.done || hooks.claimed || args.length !== 1 || !isSuccess(status) || (typeof body !== 'string' && !ArrayBuffer.isView(body))) {
    return hooks.prevSend.apply(this, args);
  }
  hooks.claimed = true;
  hooks.body = body;
  if (hooks.etag && status !== NO_CONTENT && this.getHeader('etag') === undefined) this.setHeader('ETag', strongEtag(body));
  const headers = hooks.req.headers;
  const ifNoneMatch = headers['if-none-match'];
  const ifModifiedSince = headers['if-modified-since'];
  if (ifNoneMatch === undefined && ifModifiedSince === undefined) return hooks.prevSend.call(this, body);
  // Express would answer 304 inside send() and strip the headers the server-side store must keep:
  // hide the conditionals from it for this synchronous call; cacheEnd decides, by the same rules.
  hooks.hidden = true;
  hooks.ifNoneMatch = ifNoneMatch;
  hooks.ifModifiedSince = ifModifiedSince;
  if (ifNoneMatch !== undefined) headers['if-none-match'] = undefined;
  if (ifModifiedSince !== undefined) headers['if-modified-since'] = undefined;
  try {
    return hooks.prevSend.call(this, body);
  } finally {
    if (ifNoneMatch !== undefined) headers['if-none-match'] = ifNoneMatch;
    if (ifModifiedSince !== undefined) headers['if-modified-since'] = ifModifiedSince;
  }
}

/** res.end hook: Cache-Control, Vary and ETag for GET/HEAD 2xx with a known body, the server-side capture, then 304 or the body. */
function cacheEnd(this: Response, ...args: unknown[]): Response {
  const hooks = responseSlots(this).cachePending as ResponseHooks;
  if (hooks.done) return hooks.prevEnd.apply(this, args);
  hooks.done = true;
  const status = this.statusCode;
  // Streamed (headers already out): no ETag and nothing stored; bodies are never buffered.
  if (this.headersSent || !isSuccess(status)) {
    hooks.fill?.settle(undefined);
    return hooks.prevEnd.apply(this, args);
  }
  const chunk = typeof args[0] === 'function' ? undefined : (args[0] as string | ArrayBufferView | null | undefined);
  const encoding = typeof args[1] === 'string' ? (args[1] as BufferEncoding) : undefined;
  // HEAD through res.send passes no chunk: the body send() saw is the one a GET gets.
  let body = chunk !== undefined && chunk !== null ? chunk : hooks.body;
  if (body === undefined && !hooks.head) body = '';
  const req = hooks.req;
  const handlerCacheControl = this.getHeader('cache-control');
  if (handlerCacheControl === undefined) {
    const value = isAuthenticated(req) ? hooks.cacheControlAuthenticated : hooks.cacheControl;
    if (value !== undefined) this.setHeader('Cache-Control', value);
  }
  if (hooks.vary !== undefined) (this as Response & { vary(field: string[]): Response }).vary(hooks.vary);
  if (hooks.etag && body !== undefined && status !== NO_CONTENT && this.getHeader('etag') === undefined) this.setHeader('ETag', strongEtag(body, encoding));
  if (hooks.fill !== undefined) hooks.fill.settle(entryOf(this, req, hooks.fill, { status, body, encoding, cacheControl: handlerCacheControl }));
  const headers = req.headers;
  const ifNoneMatch = hooks.hidden ? hooks.ifNoneMatch : headers['if-none-match'];
  const ifModifiedSince = hooks.hidden ? hooks.ifModifiedSince : headers['if-modified-since'];
  if (
    (ifNoneMatch !== undefined || ifModifiedSince !== undefined) &&
    status !== NO_CONTENT &&
    isNotModified({ ifNoneMatch, ifModifiedSince, cacheControl: headers['cache-control'] }, headerString(this.getHeader('etag')), headerString(this.getHeader('last-modified')))
  ) {
    this.statusCode = NOT_MODIFIED;
    this.removeHeader('Content-Type');
    this.removeHeader('Content-Length');
    this.removeHeader('Transfer-Encoding');
    const last = args[args.length - 1];
    return hooks.prevEnd.call(this, typeof last === 'function' ? last : undefined);
  }
  return hooks.prevEnd.apply(this, args);
}

/** The entry to store for a filler's answer, or undefined when it must not be shared. */
function entryOf(res: Response, req: Request, fill: Fill, answer: Answer): CachedResponse | undefined {
  const { status, body, encoding } = answer;
  if (status === PARTIAL_CONTENT || body === undefined) return undefined;
  if (res.getHeader('set-cookie') !== undefined) return undefined;
  if (answer.cacheControl !== undefined && UNSTORABLE.test(String(answer.cacheControl))) return undefined;
  const vary = headerString(res.getHeader('vary'));
  if (vary !== undefined && VARY_ANY.test(vary)) return undefined;
  const size = typeof body === 'string' ? Buffer.byteLength(body, encoding ?? 'utf8') : body.byteLength;
  if (size > fill.server.maxBodySize) return undefined;
  // A copy: the handler may reuse its buffer once the response is sent.
  const bytes = typeof body === 'string' ? Buffer.from(body, encoding ?? 'utf8') : Buffer.from(new Uint8Array(body.buffer, body.byteOffset, body.byteLength));
  const snapshot = fill.snapshot ?? {};
  const headers: Array<[string, string | string[]]> = [];
  for (const name of res.getHeaderNames()) {
    if (SKIP_HEADERS.has(name)) continue;
    const value = res.getHeader(name);
    // Headers outer middleware set for this request alone (request id, rate limits) are set again on a hit.
    if (value === undefined || snapshot[name] === value) continue;
    headers.push([name, typeof value === 'number' ? String(value) : value]);
  }
  // Named now, not before the handler: inner cache layers add their tags on the way in.
  fill.names ??= entryNames(req, fill.tags);
  const entry: CachedResponse = {
    status,
    headers,
    body: bytes,
    names: fill.names,
    ttlMs: fill.ttlMs,
    staleMs: fill.staleMs,
    storedAt: fill.state.store.now(),
  };
  const etag = headerString(res.getHeader('etag'));
  if (etag !== undefined) entry.etag = etag;
  const lastModified = headerString(res.getHeader('last-modified'));
  if (lastModified !== undefined) entry.lastModified = lastModified;
  if (vary !== undefined) {
    const check = varyCheckOf(req, vary, fill.keyed);
    if (check.length > 0) entry.varyCheck = check;
  }
  return entry;
}

/** Request header values a hit must match: those the response's own Vary names that the key does not already hold. */
function varyCheckOf(req: Request, vary: string, keyed: string[]): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const raw of vary.split(',')) {
    const name = raw.trim().toLowerCase();
    if (name === '' || keyed.includes(name)) continue;
    out.push([name, headerString(req.headers[name]) ?? '']);
  }
  return out;
}

/** res.end hook of a write: a 2xx answer first drops the entries of its path (and tags), so the writer's next read is fresh. */
function writeEnd(this: Response, ...args: unknown[]): Response {
  const hook = responseSlots(this).cacheWrite as WriteHook;
  if (hook.done) return hook.prevEnd.apply(this, args);
  hook.done = true;
  if (!isSuccess(this.statusCode)) return hook.prevEnd.apply(this, args);
  let pending: void | Promise<void> = undefined;
  try {
    pending = hook.state.store.invalidate(hook.names);
  } catch (err) {
    logInvalidationFailure(hook.state.logger, err);
  }
  if (!(pending instanceof Promise)) return hook.prevEnd.apply(this, args);
  pending
    .catch((err: unknown) => logInvalidationFailure(hook.state.logger, err))
    .then(() => hook.prevEnd.apply(this, args))
    .catch((err: unknown) => logInvalidationFailure(hook.state.logger, err));
  return this;
}

function logInvalidationFailure(logger: Logger, err: unknown): void {
  const e = err instanceof Error ? err : new Error(String(err));
  logger.warn('cache: could not invalidate after a write; it is retried in the background, and entries of the path may be served meanwhile', {
    err: { name: e.name, message: e.message },
  });
}

function isSuccess(status: number): boolean {
  return status >= 200 && status < 300;
}
