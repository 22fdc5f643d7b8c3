import type { OutgoingHttpHeaders } from 'node:http';
import type { Response } from 'express';

/** What a handler answered, as the hooks of its response saw it. */
export interface CapturedResponse {
  status: number;
  /** Every header as the head went out (or as it stands at the end when the head never went through the hook). */
  headers: OutgoingHttpHeaders;
  /** The body as sent; undefined when it grew past `maxBodySize` (or a chunk could not be read). */
  body: Buffer | undefined;
}

type Method = (...args: unknown[]) => unknown;

/**
 * Hooks `writeHead`, `write` and `end` of this one response, as own properties of it (Express's
 * and Node's prototypes stay as they are), to see what the handler answers through any path:
 * res.json, res.send, res.write + res.end, a piped stream. The body is copied as it passes, up to
 * `maxBodySize` bytes; past that only the fact is kept. `onEnd` runs once, when the handler calls
 * res.end(), just before the end of the response goes out: a retry that follows the response
 * finds the outcome recorded (memory) or its store command sent ahead of its own look-up (Redis).
 */
export function captureResponse(res: Response, maxBodySize: number, onEnd: (captured: CapturedResponse) => void): void {
  const target = res as unknown as Record<'writeHead' | 'write' | 'end', Method>;
  const prevWriteHead = target.writeHead;
  const prevWrite = target.write;
  const prevEnd = target.end;
  let status: number | undefined;
  let head: OutgoingHttpHeaders | undefined;
  const chunks: Buffer[] = [];
  let size = 0;
  let overflow = false;
  let ended = false;

  const collect = (chunk: unknown, encoding: unknown): void => {
    if (overflow || chunk === undefined || chunk === null || typeof chunk === 'function') return;
    try {
      // Copies: the handler may reuse its buffer once the write returns.
      const bytes =
        typeof chunk === 'string'
          ? Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8')
          : ArrayBuffer.isView(chunk)
            ? Buffer.from(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength))
            : undefined;
      if (bytes === undefined) return;
      size += bytes.length;
      if (size > maxBodySize) {
        overflow = true;
        chunks.length = 0;
        return;
      }
      chunks.push(bytes);
    } catch {
      // An encoding Buffer does not know: Node refuses the write itself; nothing here is replayable.
      overflow = true;
      chunks.length = 0;
    }
  };

  target.writeHead = function idempotencyWriteHead(this: Response, ...args: unknown[]): unknown {
    if (head === undefined) {
      status = typeof args[0] === 'number' ? args[0] : this.statusCode;
      head = { ...this.getHeaders(), ...headersArgument(typeof args[1] === 'string' ? args[2] : args[1]) };
    }
    return prevWriteHead.apply(this, args);
  };
  target.write = function idempotencyWrite(this: Response, ...args: unknown[]): unknown {
    if (!ended) collect(args[0], args[1]);
    return prevWrite.apply(this, args);
  };
  target.end = function idempotencyEnd(this: Response, ...args: unknown[]): unknown {
    if (ended) return prevEnd.apply(this, args);
    ended = true;
    collect(args[0], args[1]);
    // Reported before the last bytes go out, so the outcome is recorded (or its store command on
    // its way) before the client can have read the response and retried. Unless the handler wrote
    // the head itself, the status and headers are final here: Node's own writeHead adds none.
    onEnd({
      status: status ?? this.statusCode,
      headers: head ?? this.getHeaders(),
      body: overflow ? undefined : Buffer.concat(chunks, size),
    });
    return prevEnd.apply(this, args);
  };
}

/** The headers given to writeHead (an object, or a flat [name, value, …] list), by lower-case name. */
function headersArgument(value: unknown): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  if (Array.isArray(value)) {
    for (let i = 0; i + 1 < value.length; i += 2) out[String(value[i]).toLowerCase()] = value[i + 1] as string;
  } else if (value !== null && typeof value === 'object') {
    for (const name of Object.keys(value)) out[name.toLowerCase()] = (value as OutgoingHttpHeaders)[name];
  }
  return out;
}
