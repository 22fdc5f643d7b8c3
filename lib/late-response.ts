import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
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

/**
 * How long, and how many bytes, the rest of an unread request body is read and thrown away after
 * the last response on a connection went out (nginx's lingering close). Reading forever would let
 * one client hold the connection at will; closing while the client still sends makes its kernel
 * answer our close with a reset, which can discard the response before the client reads it.
 */
export const LINGER_MS = 5000;
/** See {@link LINGER_MS}: a client that sends faster than this is cut off sooner. */
export const LINGER_BYTES = 16 * 1024 * 1024;

const lingering = new WeakSet<Duplex>();

/**
 * Prepares an answer sent before the request body was read (401 from auth, 403, 413, 415, 429,
 * 503, 504, a 400 or 404 for an upload nobody read): while the body is still arriving, the answer
 * says `Connection: close`, and once it is out the connection closes cleanly through
 * {@link lingeringClose}. Keeping the connection alive instead would mean reading a body of any
 * size at the client's pace (until Node's `requestTimeout`) just to reach its next request.
 * A request without a body, or whose body is complete, keeps its connection. Call it before the
 * response head is written; afterwards it does nothing.
 */
export function closeIfBodyUnread(req: IncomingMessage, res: ServerResponse): void {
  if (res.headersSent || req.complete || !hasBody(req)) return;
  const socket = req.socket;
  if (socket === null || socket.destroyed) return;
  res.setHeader('Connection', 'close');
  // Runs after Node's own 'finish' listener, which was added when the request arrived and has
  // just asked for the socket to be destroyed as soon as the response is out.
  res.once('finish', () => lingeringClose(socket, req));
}

/**
 * Ends a connection whose last response went out while the client may still be sending: sends
 * FIN after what is queued, stops parsing (whatever follows is the rest of a refused body, or
 * requests the client was told not to send), reads and discards the rest for at most
 * {@link LINGER_MS} and {@link LINGER_BYTES}, and destroys the socket when the client closes its
 * side or a bound is reached. `req`, when given, is destroyed with the socket, so a reader still
 * waiting for its body hears that it will not come (Node no longer tracks an answered request).
 * Calling it again for the same socket does nothing.
 */
export function lingeringClose(socket: Duplex, req?: IncomingMessage): void {
  if (socket.destroyed || lingering.has(socket)) return;
  lingering.add(socket);
  // Node closes the last response's connection with socket.destroySoon(): destroy once the FIN
  // is out, whatever the client is still sending. The lingering close below replaces it.
  socket.removeListener('finish', socket.destroy);
  let received = 0;
  const close = (): void => {
    clearTimeout(timer);
    socket.destroy();
  };
  const timer = setTimeout(close, LINGER_MS).unref();
  socket.once('close', () => {
    clearTimeout(timer);
    if (req !== undefined && !req.readableEnded && !req.destroyed) req.destroy();
  });
  // Node's HTTP parser reads through a 'data' listener once one is added (it is bypassed while
  // it reads the socket directly); with it gone, later bytes reach no parser.
  socket.removeAllListeners('data');
  socket.on('data', (chunk: Buffer) => {
    received += chunk.length;
    if (received > LINGER_BYTES) close();
  });
  socket.once('end', close);
  if (socket.writable) socket.end();
  socket.resume();
}

/** Whether a request carries a body (RFC 9112 §6.3: Transfer-Encoding, or a Content-Length above 0). */
function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}
