import type { Request, Response } from 'express';
import { ConfigError, defaultCode, defaultMessage, isHttpError, type ErrorDetails } from './errors';
import { answeredEarly, closeIfBodyUnread } from './late-response';
import type { Logger } from './logger';

/** Maps a user's own error class to a status and code. */
export interface ErrorMapping {
  status: number;
  code?: string;
  /** Message for the client; defaults to the error's own for 4xx, a generic one for 5xx. */
  message?: string;
}

/** Options of {@link createErrorResponder} (and `errorNormalizer`). */
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
  const mappings = options.map instanceof Map ? [...options.map] : (options.map ?? []);
  const typeBase = options.problemTypeBase ?? 'https://express-perimeter.dev/errors/';

  const normalize = (err: unknown): NormalizedError & { expose: boolean } => {
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
      const known = typeof e.type === 'string' ? BODY_ERRORS[e.type] : undefined;
      if (known) return { ...known, expose: true };
      const status = Number(e.status ?? e.statusCode);
      if (Number.isInteger(status) && status >= 400 && status <= 599) {
        // http-errors marks which messages are meant for clients; other foreign 4xx get the generic one.
        const exposeMessage = status < 500 && e.expose !== false && typeof e.message === 'string' && e.message !== '';
        return {
          status,
          code: defaultCode(status),
          message: exposeMessage ? (e.message as string) : defaultMessage(status),
          headers: isStringRecord(e.headers) ? e.headers : undefined,
          expose: exposeMessage,
        };
      }
    }
    const message = err instanceof Error ? err.message : typeof err === 'string' ? err : defaultMessage(500);
    return { status: 500, code: 'INTERNAL_ERROR', message: message || defaultMessage(500), expose: false };
  };

  return function respondError(err, req, res) {
    const logger = getLogger?.(req) ?? req.context?.log;
    const early = answeredEarly(res);
    if (early !== undefined) {
      // timeout or sizeLimit already answered (504/413) while the handler ran: this error came
      // after, so it is only logged, never answered again (nor the finished connection cut).
      logLateError(err, req, early, logger);
      return;
    }
    const n = normalize(err);
    const requestId = req.id ?? null;
    if (logger) {
      const meta: Record<string, unknown> = { status_code: n.status, code: n.code, method: req.method, path: req.path };
      if (req.context === undefined && requestId) meta.request_id = requestId;
      if (n.status >= 500) {
        // The log keeps what the client does not see: the full message and the stack.
        meta.err = err instanceof Error ? { name: err.name, message: err.message, stack: err.stack } : { message: String(err) };
        logger.error(`Request failed: ${err instanceof Error ? err.message : String(err)}`, meta);
      } else {
        logger.debug(`Request rejected: ${n.code}`, meta);
      }
    }
    if (res.headersSent) {
      // Part of a response is out: the only honest signal left is to cut the connection.
      if (!res.writableEnded) res.destroy();
      return;
    }
    closeIfBodyUnread(req, res);
    const hide = n.status >= 500 && !expose && !n.expose;
    const message = hide ? defaultMessage(n.status) : n.message;
    const details = hide ? undefined : n.details;
    if (n.headers) for (const name of Object.keys(n.headers)) res.setHeader(name, n.headers[name]);
    res.statusCode = n.status;
    let body: string;
    if (format === 'problem') {
      res.setHeader('Content-Type', 'application/problem+json; charset=utf-8');
      body = JSON.stringify({
        type: typeBase + n.code.toLowerCase().replace(/_/g, '-'),
        title: defaultMessage(n.status),
        status: n.status,
        detail: message,
        instance: req.originalUrl ?? req.url,
        code: n.code,
        request_id: requestId,
        ...(details ? { details } : {}),
      });
    } else {
      res.setHeader('Content-Type', 'application/json; charset=utf-8');
      body = JSON.stringify({
        error: { code: n.code, message, request_id: requestId, ...(details ? { details } : {}) },
      });
    }
    res.setHeader('Content-Length', Buffer.byteLength(body));
    res.end(req.method === 'HEAD' ? undefined : body);
  };
}

// The abort reason rethrown by the handler, or the body reader cut off by the 413, is the expected
// echo of the early answer (debug); anything else is a real failure that came too late (warn).
function logLateError(err: unknown, req: Request, early: string, logger: Logger | undefined): void {
  if (!logger) return;
  const e = err as { type?: unknown; code?: unknown } | null;
  const echo = err === (req as { signal?: AbortSignal }).signal?.reason || e?.type === 'request.aborted' || e?.code === 'ECONNABORTED';
  const meta: Record<string, unknown> = { code: early, method: req.method, path: req.path };
  if (req.context === undefined && req.id) meta.request_id = req.id;
  meta.err = err instanceof Error ? { name: err.name, message: err.message, stack: err.stack } : { message: String(err) };
  logger.log(echo ? 'debug' : 'warn', `Error after the response was already answered (${early}): ${err instanceof Error ? err.message : String(err)}`, meta);
}

function isStringRecord(value: unknown): value is Record<string, string> {
  return value !== null && typeof value === 'object' && Object.values(value).every((v) => typeof v === 'string');
}
