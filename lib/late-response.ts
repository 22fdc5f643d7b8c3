import type { Request, Response } from 'express';
import type { Logger } from './logger';
import type { PerimeterRuntime } from './runtime';
import { WARNINGS, type WarningCode } from './warnings';

const ANSWERED = Symbol('express-perimeter.answeredEarly');

/**
 * Every way a handler can write to a response: Node's own methods and the Express helpers built
 * on them. Express helpers are replaced too, so a late `res.json()` does no work at all (no
 * serialising, no ETag) instead of failing deep inside `setHeader`.
 */
const WRITE_METHODS = [
  'writeHead', 'setHeader', 'setHeaders', 'appendHeader', 'removeHeader', 'flushHeaders', 'addTrailers',
  'writeContinue', 'writeProcessing', 'writeEarlyHints', 'write', 'end',
  'status', 'set', 'header', 'append', 'type', 'contentType', 'location', 'links', 'vary', 'attachment',
  'cookie', 'clearCookie', 'send', 'json', 'jsonp', 'sendStatus', 'sendFile', 'download', 'redirect',
  'render', 'format',
] as const;

/**
 * Whether a perimeter middleware (timeout, sizeLimit) already answered this response while its
 * handler was still running; the error handler then logs a late error instead of answering again.
 * Returns the warning code the early answer was made under, or undefined.
 */
export function answeredEarly(res: Response): WarningCode | undefined {
  return (res as unknown as Record<symbol, WarningCode | undefined>)[ANSWERED];
}

/**
 * Answers `err` on behalf of a request whose handler is still running (it timed out, its body
 * grew too large), through the stack's error responder so the client gets the usual envelope
 * with the request id. Afterwards every write the handler still makes is a logged no-op.
 *
 * Returns true when the error was sent; false when the response had already started, in which
 * case the responder cut the connection (the only honest signal left).
 */
export function answerEarly(req: Request, res: Response, err: Error, lateCode: WarningCode, runtime: PerimeterRuntime): boolean {
  const sent = !res.headersSent;
  try {
    runtime.respondError(err, req, res);
  } catch {
    // A responder that throws (a broken custom logger) must not leave the request hanging.
    res.destroy();
  }
  (res as unknown as Record<symbol, WarningCode>)[ANSWERED] = lateCode;
  dropLateWrites(req, res, lateCode, runtime.logger);
  return sent;
}

/**
 * Turns every later write to `res` into a no-op, so a handler that finishes after the response
 * was answered cannot crash the process (ERR_HTTP_HEADERS_SENT thrown from a timer, or an
 * unhandled 'error' event for a write after end). The first late write is logged at debug under
 * `code`: it is the expected tail of an early answer that was itself logged, and one handler often
 * makes several late calls (setHeader, then end), so one line per response is enough.
 */
export function dropLateWrites(req: Request, res: Response, code: WarningCode, logger: Logger): void {
  let logged = false;
  const target = res as unknown as Record<string, unknown>;
  for (const method of WRITE_METHODS) {
    target[method] = function lateWrite(this: Response, ...args: unknown[]): unknown {
      if (!logged) {
        logged = true;
        (req.context?.log ?? logger).debug(WARNINGS[code], { code, method, path: req.originalUrl ?? req.url });
      }
      // Callers waiting on a callback (res.end(cb), res.sendFile(path, cb)) must not hang.
      const last = args[args.length - 1];
      if (typeof last === 'function') process.nextTick(last as () => void);
      // `true` keeps a stream piped into the response from waiting forever for 'drain'.
      return method === 'write' ? true : method === 'removeHeader' ? undefined : this;
    };
  }
}
