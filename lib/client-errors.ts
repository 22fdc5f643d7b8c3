import { randomUUID } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { ConfigError } from './errors';
import { lingeringClose } from './late-response';
import { defaultLogger, type Logger } from './logger';
import { checkOptions } from './options';

/** Options of {@link handleClientErrors}. */
export interface ClientErrorOptions {
  /** Where one debug line per refused request goes. Defaults to the default JSON logger. */
  logger?: Logger;
  /** Response header that carries the generated request id. Defaults to 'X-Request-ID'. */
  header?: string;
  /** Makes the request id. Defaults to a random UUID v4. */
  generator?: () => string;
}

/** What Node's parser errors become: status, code and a message safe for any client. */
const ANSWERS: Record<string, { status: number; code: string; message: string }> = {
  HPE_HEADER_OVERFLOW: { status: 431, code: 'REQUEST_HEADER_FIELDS_TOO_LARGE', message: 'The request headers are too large.' },
  HPE_CHUNK_EXTENSIONS_OVERFLOW: { status: 413, code: 'PAYLOAD_TOO_LARGE', message: 'The chunk extensions of the request body are too large.' },
  ERR_HTTP_REQUEST_TIMEOUT: { status: 408, code: 'REQUEST_TIMEOUT', message: 'The request was not received in time.' },
};
const BAD_REQUEST = { status: 400, code: 'BAD_REQUEST', message: 'The request could not be parsed as HTTP.' };

const HEAD = Buffer.from('HEAD ');

// The servers this copy of the library answers for (weak: a closed server takes its entry along).
const installed = new WeakSet<object>();
const VALID_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Answers requests Node's HTTP parser refuses before Express ever sees them (a header with a
 * control character, headers over `maxHeaderSize`, a request not received within
 * `requestTimeout`) with the same JSON envelope as every other error, instead of Node's bare
 * `400 Bad Request`: `{ error: { code, message, request_id } }`, a generated request id in the
 * header, and `Connection: close` (the parser cannot continue on that connection). 431
 * REQUEST_HEADER_FIELDS_TOO_LARGE for oversized headers, 408 REQUEST_TIMEOUT on timeout,
 * 400 BAD_REQUEST otherwise; to a HEAD request, the same headers without the body. Never throws, also when the socket is already gone.
 * Installing twice on one server is a no-op. Returns the server.
 *
 * @example handleClientErrors(app.listen(3000));
 */
export function handleClientErrors<S extends EventEmitter>(server: S, options: ClientErrorOptions = {}): S {
  checkOptions('handleClientErrors', options, ['logger', 'header', 'generator']);
  if (server === null || typeof server !== 'object' || typeof (server as Partial<EventEmitter>).on !== 'function') {
    throw new ConfigError('handleClientErrors', 'expected the http.Server that app.listen() returns (or an https server)');
  }
  const header = options.header ?? 'X-Request-ID';
  if (typeof header !== 'string' || !/^[A-Za-z0-9-]+$/.test(header)) {
    throw new ConfigError('handleClientErrors.header', `expected a header name like 'X-Request-ID', got ${String(header)}`);
  }
  const generator = options.generator ?? randomUUID;
  if (typeof generator !== 'function') {
    throw new ConfigError('handleClientErrors.generator', 'expected a function returning a request id');
  }
  if (installed.has(server)) return server;
  installed.add(server);
  const logger = options.logger;

  server.on('clientError', function onClientError(err: NodeJS.ErrnoException, socket: Duplex) {
    try {
      // Another 'clientError' listener (another copy of this library, the user's own) already
      // answered: destroying the socket before the answer is flushed would cut it.
      if (socket.writableEnded) {
        if (socket.writableFinished) socket.destroy();
        return;
      }
      // Node's own rule: answer only when nothing of a response went out on this connection yet.
      const inFlight = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
      if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
        socket.destroy();
        return;
      }
      const answer = (err.code !== undefined && ANSWERS[err.code]) || BAD_REQUEST;
      let made: unknown;
      try {
        made = generator();
      } catch {
        made = undefined;
      }
      // A user generator that throws or returns junk must not break the response head.
      const id = typeof made === 'string' && VALID_ID.test(made) ? made : randomUUID();
      const body = JSON.stringify({ error: { code: answer.code, message: answer.message, request_id: id } });
      (logger ?? defaultLogger()).debug(`Request refused by the HTTP parser: ${answer.code}`, {
        request_id: id,
        status_code: answer.status,
        code: answer.code,
        parser_code: err.code,
        ip: (socket as { remoteAddress?: string }).remoteAddress,
      });
      const head =
        `HTTP/1.1 ${answer.status} ${STATUS_CODES[answer.status]}\r\n` +
        'Content-Type: application/json; charset=utf-8\r\n' +
        `Content-Length: ${Buffer.byteLength(body)}\r\n` +
        `${header}: ${id}\r\n` +
        'Connection: close\r\n\r\n';
      // A HEAD answer has the headers a GET answer would have and no body: a client reads the
      // body bytes as the start of a next response.
      socket.end(isHead(err) ? head : head + body);
      // FIN after the answer; what the client still sends (the rest of a body, further requests)
      // is read and thrown away for a bounded time, so the client reads its answer instead of a
      // reset, and a peer that never closes its side cannot keep the socket open.
      lingeringClose(socket);
    } catch {
      socket.destroy();
    }
  });
  return server;
}

/**
 * Whether the refused request is a HEAD. Node gives the chunk it was parsing when it gave up,
 * which starts with the request line unless the head was split over several reads (then, and
 * for a timeout, which has no chunk, the answer carries its body).
 */
function isHead(err: NodeJS.ErrnoException): boolean {
  const packet = (err as { rawPacket?: unknown }).rawPacket;
  return Buffer.isBuffer(packet) && packet.length >= HEAD.length && packet.compare(HEAD, 0, HEAD.length, 0, HEAD.length) === 0;
}
