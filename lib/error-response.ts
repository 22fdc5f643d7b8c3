import { validateHeaderName, validateHeaderValue } from 'node:http';
import type { Request, Response } from 'express';
import { ConfigError, defaultCode, defaultMessage, isHttpError, OverloadedError, type ErrorDetails } from './errors';
import { answeredEarly, closeIfBodyUnread } from './late-response';
import type { Logger } from './logger';

/** Maps a user's own error class to a status and code. */
export interface ErrorMapping {
  status: number;
  code?: string;
  /** Message for the client; defaults to the error's own for 4xx, a generic one for 5xx. */
  message?: string;
}

/** Options of `createErrorResponder` (and `errorNormalizer`). */
export interface ErrorResponseOptions {
  /** 'envelope' (`{ error: { code, message, request_id, details } }`) or 'problem' (RFC 9457). Defaults to 'envelope'. */
  format?: 'envelope' | 'problem';
  /** Whether 5xx messages and details reach clients. Defaults to `NODE_ENV !== 'production'`. */
  expose?: boolean;
  /** User error classes mapped to a status and code, e.g. `new Map([[DbDownError, { status: 503, code: 'DB_DOWN' }]])`. */
  map?: Map<new (...args: never[]) => Error, ErrorMapping> | Array<[new (...args: never[]) => Error, ErrorMapping]>;
  /** Base URL of the `type` member of problem documents. Defaults to 'https://express-perimeter.dev/errors/'. */
  problemTypeBase?: string;
}

/** The error as it will be sent: what every rejection goes through. */
export interface NormalizedError {
  status: number;
  code: string;
  message: string;
  details?: ErrorDetails;
  headers?: Record<string, string>;
}

/** Sends `err` as the one error format, and logs it (5xx at error with the stack, others at debug). */
export type ErrorResponder = (err: unknown, req: Request, res: Response) => void;

// body-parser and raw-body mark their errors with a `type`; these get their own codes.
const BODY_ERRORS: Record<string, { status: number; code: string; message: string }> = {
  'entity.parse.failed': { status: 400, code: 'INVALID_JSON', message: 'The request body is not valid JSON.' },
  'entity.too.large': { status: 413, code: 'PAYLOAD_TOO_LARGE', message: 'The request body is too large.' },
  'entity.verify.failed': { status: 403, code: 'FORBIDDEN', message: 'The request body failed verification.' },
  'encoding.unsupported': { status: 415, code: 'UNSUPPORTED_MEDIA_TYPE', message: 'The request body has an unsupported content encoding.' },
  'charset.unsupported': { status: 415, code: 'UNSUPPORTED_MEDIA_TYPE', message: 'The request body has an unsupported charset.' },
  'request.aborted': { status: 400, code: 'BAD_REQUEST', message: 'The request was aborted by the client.' },
  'request.size.invalid': { status: 400, code: 'BAD_REQUEST', message: 'The request body length does not match its Content-Length.' },
  'parameters.too.many': { status: 413, code: 'PAYLOAD_TOO_LARGE', message: 'The request has too many parameters.' },
};

/** Builds the responder used by `errorNormalizer` and by middleware that answer asynchronously (timeout). */
export function createErrorResponder(options: ErrorResponseOptions = {}, getLogger?: (req: Request) => Logger): ErrorResponder {
  const format = options.format ?? 'envelope';
  if (format !== 'envelope' && format !== 'problem') {
    throw new ConfigError('errorNormalizer.format', `expected 'envelope' or 'problem', got '${String(format)}'`);
  }
  const expose = options.expose ?? process.env.NODE_ENV !== 'production';
  const mappings = checkMappings(options.map);
  const typeBase = options.problemTypeBase ?? 'https://express-perimeter.dev/errors/';

  // Reads only what the error offers for the response; any field may be a getter that throws.
  const read = (err: unknown): NormalizedError & { expose: boolean } => {
    for (const [cls, mapping] of mappings) {
      if (err instanceof cls) {
        const safe = mapping.status < 500 || mapping.message !== undefined;
        return {
          status: mapping.status,
          code: mapping.code ?? defaultCode(mapping.status),
          message: mapping.message ?? (mapping.status < 500 ? (err as Error).message : defaultMessage(mapping.status)),
          expose: safe,
        };
      }
    }
    if (isHttpError(err)) {
      return { status: err.status, code: err.code, message: err.message, details: err.details, headers: err.headers, expose: err.expose };
    }
    if (err !== null && typeof err === 'object') {
      const e = err as { type?: string; status?: unknown; statusCode?: unknown; expose?: boolean; message?: unknown; headers?: unknown };
      const type = e.type;
      const known = typeof type === 'string' && Object.prototype.hasOwnProperty.call(BODY_ERRORS, type) ? BODY_ERRORS[type] : undefined;
      if (known) return { ...known, expose: true };
      const status = Number(e.status ?? e.statusCode);
      if (Number.isInteger(status) && status >= 400 && status <= 599) {
        // http-errors marks which messages are meant for clients; other foreign 4xx get the generic one.
        const message = e.message;
        const exposeMessage = status < 500 && e.expose !== false && typeof message === 'string' && message !== '';
        return {
          status,
          code: defaultCode(status),
          message: exposeMessage ? (message as string) : defaultMessage(status),
          headers: e.headers as Record<string, string> | undefined,
          expose: exposeMessage,
        };
      }
    }
    const message = err instanceof Error ? err.message : typeof err === 'string' ? err : defaultMessage(500);
    return { status: 500, code: 'INTERNAL_ERROR', message: message || defaultMessage(500), expose: false };
  };

  // Normalising never throws: an error whose fields cannot be read, or read as nonsense (a status
  // of 99 or 'abc', a code that is not a name), is the 500 every unknown error is.
  const normalize = (err: unknown): NormalizedError & { expose: boolean } => {
    let n: NormalizedError & { expose: boolean };
    try {
      n = read(err);
    } catch {
      return UNREADABLE;
    }
    const { status, code, message, details, headers } = n;
    if (typeof status !== 'number' || !Number.isInteger(status) || status < 400 || status > 599) return UNREADABLE;
    return {
      status,
      code: typeof code === 'string' && ERROR_CODE.test(code) ? code : defaultCode(status),
      message: typeof message === 'string' && message !== '' ? message : defaultMessage(status),
      details,
      headers: validHeaders(headers),
      expose: n.expose === true,
    };
  };

  const serialise = (n: NormalizedError, message: string, details: unknown, req: Request, requestId: string | null): string =>
    format === 'problem'
      ? JSON.stringify({
          type: typeBase + n.code.toLowerCase().replace(/_/g, '-'),
          title: defaultMessage(n.status),
          status: n.status,
          detail: message,
          instance: requestPath(req),
          code: n.code,
          request_id: requestId,
          ...(details ? { details } : {}),
        })
      : JSON.stringify({ error: { code: n.code, message, request_id: requestId, ...(details ? { details } : {}) } });

  function respond(err: unknown, req: Request, res: Response): void {
    const logger = getLogger?.(req) ?? req.context?.log;
    const early = answeredEarly(res);
    if (early !== undefined) {
      // timeout or sizeLimit already answered (504/413) while the handler ran: this error came
      // after, so it is only logged, never answered again (nor the finished connection cut).
      logLateError(err, req, early, logger);
      return;
    }
    let n = normalize(err);
    const requestId = req.id ?? null;
    let body: string | undefined;
    if (!res.headersSent) {
      const hide = n.status >= 500 && !expose && !n.expose;
      try {
        body = serialise(n, hide ? defaultMessage(n.status) : n.message, hide ? undefined : n.details, req, requestId);
      } catch {
        // Details that cannot be serialised (a cycle, a BigInt, a throwing toJSON): unreadable too.
        n = UNREADABLE;
        body = serialise(n, defaultMessage(500), undefined, req, requestId);
      }
    }
    if (logger) logError(logger, err, n, req, requestId);
    if (body === undefined) {
      // Part of a response is out: the only honest signal left is to cut the connection.
      if (!res.writableEnded) res.destroy();
      return;
    }
    closeIfBodyUnread(req, res);
    if (n.headers) for (const name of Object.keys(n.headers)) res.setHeader(name, n.headers[name]);
    res.statusCode = n.status;
    res.setHeader('Content-Type', format === 'problem' ? 'application/problem+json; charset=utf-8' : 'application/json; charset=utf-8');
    res.setHeader('Content-Length', Buffer.byteLength(body));
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  return function respondError(err, req, res) {
    try {
      respond(err, req, res);
    } catch {
      // Only a fault outside the error (a throwing logger accessor, a response torn down under
      // us) reaches here: answer with the fixed 500 if nothing is out yet, else cut the connection.
      lastResort(req, res);
    }
  };
}

// What an error that cannot be read (or serialised) is answered as.
const UNREADABLE: Readonly<NormalizedError & { expose: boolean }> = Object.freeze({ status: 500, code: 'INTERNAL_ERROR', message: defaultMessage(500), expose: false });

// Codes are names (`RATE_LIMIT_EXCEEDED`): they go into problem `type` URIs and client branches.
const ERROR_CODE = /^[A-Za-z0-9_.-]{1,64}$/;

/** The request's path for an error body, without its query string (a query can carry tokens) or fragment. */
function requestPath(req: Request): string {
  const url = req.originalUrl ?? req.url ?? '/';
  let end = url.length;
  for (let i = 0; i < url.length; i++) {
    const c = url.charCodeAt(i);
    if (c === 63 /* ? */ || c === 35 /* # */) {
      end = i;
      break;
    }
  }
  const path = url.slice(0, end);
  if (path.startsWith('/')) return path;
  // An absolute-form request target (`GET http://host/x?token=… HTTP/1.1`): its path only.
  try {
    return new URL(path).pathname;
  } catch {
    return '/';
  }
}

// The responder frames the body itself; an error's own values for these would contradict it.
const FRAMING_HEADERS = new Set(['content-length', 'content-type', 'transfer-encoding']);

/**
 * The error's response headers (`Retry-After`, `WWW-Authenticate`) that are valid HTTP headers;
 * others are dropped rather than let setHeader throw halfway through the answer.
 */
function validHeaders(headers: unknown): Record<string, string> | undefined {
  if (headers === null || typeof headers !== 'object') return undefined;
  let valid: Record<string, string> | undefined;
  try {
    for (const name of Object.keys(headers)) {
      const value = (headers as Record<string, unknown>)[name];
      if (typeof value !== 'string' || FRAMING_HEADERS.has(name.toLowerCase())) continue;
      try {
        validateHeaderName(name);
        validateHeaderValue(name, value);
      } catch {
        continue;
      }
      (valid ??= {})[name] = value;
    }
  } catch {
    return undefined;
  }
  return valid;
}

// The log keeps what the client does not see: the full message and the stack (5xx at error).
function logError(logger: Logger, err: unknown, n: NormalizedError, req: Request, requestId: string | null): void {
  try {
    const meta: Record<string, unknown> = { status_code: n.status, code: n.code, method: req.method, path: req.path };
    if (req.context === undefined && requestId) meta.request_id = requestId;
    // Shedding load is the stack working as configured: thousands of these a second must not
    // each write an error line with a stack (requestLogger still logs the request at warn).
    if (n.status >= 500 && !isShedding(err)) {
      const summary = describeThrown(err);
      meta.err = summary;
      logger.error(`Request failed: ${summary.message}`, meta);
    } else {
      logger.debug(`Request rejected: ${n.code}`, meta);
    }
  } catch {
    // A logger that throws must not turn one error into two.
  }
}

/** Whether `err` is loadShedding's refusal; a Proxy whose prototype cannot be read is not. */
function isShedding(err: unknown): boolean {
  try {
    return err instanceof OverloadedError;
  } catch {
    return false;
  }
}

/** The fixed 500 envelope, for when answering the error itself failed. */
function lastResort(req: Request, res: Response): void {
  try {
    if (res.headersSent) {
      if (!res.writableEnded) res.destroy();
      return;
    }
    const body = JSON.stringify({ error: { code: 'INTERNAL_ERROR', message: defaultMessage(500), request_id: typeof req.id === 'string' ? req.id : null } });
    res.statusCode = 500;
    res.setHeader('Content-Type', 'application/json; charset=utf-8');
    res.setHeader('Content-Length', Buffer.byteLength(body));
    res.end(body);
  } catch {
    res.destroy();
  }
}

/**
 * What the log says of a thrown value, read defensively: a Proxy, a throwing getter or an object
 * without `toString` still gives a line.
 */
function describeThrown(err: unknown): { name?: string; message: string; stack?: string } {
  try {
    if (err instanceof Error) {
      const stack = err.stack;
      return { name: String(err.name), message: String(err.message), ...(typeof stack === 'string' ? { stack } : {}) };
    }
    return { message: typeof err === 'symbol' ? err.toString() : String(err) };
  } catch {
    return { message: 'an error value that could not be read' };
  }
}

// The abort reason rethrown by the handler, or the body reader cut off by the 413, is the expected
// echo of the early answer (debug); anything else is a real failure that came too late (warn).
function logLateError(err: unknown, req: Request, early: string, logger: Logger | undefined): void {
  if (!logger) return;
  try {
    let echo = false;
    try {
      const e = err as { type?: unknown; code?: unknown } | null;
      echo = err === (req as { signal?: AbortSignal }).signal?.reason || e?.type === 'request.aborted' || e?.code === 'ECONNABORTED';
    } catch {
      // An unreadable error is no echo.
    }
    const meta: Record<string, unknown> = { code: early, method: req.method, path: req.path };
    if (req.context === undefined && req.id) meta.request_id = req.id;
    const summary = describeThrown(err);
    meta.err = summary;
    logger.log(echo ? 'debug' : 'warn', `Error after the response was already answered (${early}): ${summary.message}`, meta);
  } catch {
    // As in logError: logging must not throw.
  }
}

function checkMappings(map: ErrorResponseOptions['map']): Array<[new (...args: never[]) => Error, ErrorMapping]> {
  const entries = map instanceof Map ? [...map] : (map ?? []);
  if (!Array.isArray(entries)) throw new ConfigError('errorNormalizer.map', 'expected a Map or an array of [ErrorClass, { status, code }] pairs');
  for (const entry of entries) {
    const [cls, mapping] = Array.isArray(entry) ? entry : [];
    if (typeof cls !== 'function' || mapping === null || typeof mapping !== 'object') {
      throw new ConfigError('errorNormalizer.map', 'expected [ErrorClass, { status, code }] pairs, like [[DbDownError, { status: 503, code: \'DB_DOWN\' }]]');
    }
    if (!Number.isInteger(mapping.status) || mapping.status < 400 || mapping.status > 599) {
      throw new ConfigError('errorNormalizer.map', `expected an error status from 400 to 599 for ${cls.name || 'a mapped class'}, got ${String(mapping.status)}`);
    }
    if (mapping.code !== undefined && (typeof mapping.code !== 'string' || !ERROR_CODE.test(mapping.code))) {
      throw new ConfigError('errorNormalizer.map', `expected a code like 'DB_DOWN' for ${cls.name || 'a mapped class'}, got ${String(mapping.code)}`);
    }
  }
  return entries;
}
