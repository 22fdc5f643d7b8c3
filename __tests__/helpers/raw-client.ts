import net from 'node:net';

/** One HTTP/1.1 response as it came off the wire. */
export interface RawResponse {
  status: number;
  /** Header names in lower case; a repeated header keeps its last value. */
  headers: Record<string, string>;
  text: string;
  body: any;
}

/**
 * A client on a raw TCP socket, for what HTTP clients hide: requests written byte by byte, bodies
 * that never finish, pipelining, and how the server ends the connection (FIN or reset). It keeps
 * its side open when the server closes its own (allowHalfOpen), as a client still uploading does.
 */
export class RawClient {
  readonly socket: net.Socket;
  /** Errors the socket reported (ECONNRESET, EPIPE): a clean close leaves this empty. */
  readonly errors: Error[] = [];
  /** Resolves when the socket is closed, whichever side closed it. */
  readonly closed: Promise<void>;
  private buffer = Buffer.alloc(0);
  private waiting: (() => void) | undefined;
  private isEnded = false;
  private isClosed = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.wake();
    });
    socket.on('error', (err) => this.errors.push(err));
    socket.once('end', () => {
      this.isEnded = true;
      this.wake();
    });
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.isClosed = true;
        this.wake();
        resolve();
      }),
    );
  }

  /** Connects to `port` on the loopback interface. */
  static async connect(port: number): Promise<RawClient> {
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawClient(socket);
  }

  /** Whether the server closed its side, and whether the socket is closed. */
  get state(): { ended: boolean; closed: boolean } {
    return { ended: this.isEnded, closed: this.isClosed };
  }

  /** Writes `data`, resolving once the socket took it (false when the socket is gone). */
  write(data: string | Buffer): Promise<boolean> {
    if (this.socket.destroyed || !this.socket.writable) return Promise.resolve(false);
    return new Promise((resolve) => this.socket.write(data, (err) => resolve(err === undefined || err === null)));
  }

  /** Writes a request head (HTTP/1.1, Host added). */
  head(method: string, path: string, headers: Record<string, string | number> = {}): Promise<boolean> {
    const lines = [`${method} ${path} HTTP/1.1`, 'Host: localhost', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
    return this.write(lines.join('\r\n') + '\r\n\r\n');
  }

  /** Reads the next response (framed by Content-Length); rejects when the connection ends first. */
  async response(): Promise<RawResponse> {
    for (;;) {
      const parsed = this.take();
      if (parsed !== undefined) return parsed;
      if (this.isEnded || this.isClosed) {
        throw new Error(`the connection ended before a whole response arrived (${this.errors.map((e) => e.message).join(', ') || 'no error'}): ${JSON.stringify(this.buffer.toString())}`);
      }
      await new Promise<void>((resolve) => (this.waiting = resolve));
    }
  }

  /** Waits until the server closed its side cleanly (FIN); throws when the connection was reset or closed without it. */
  async serverEnd(): Promise<void> {
    while (!this.isEnded) {
      if (this.isClosed) throw new Error(`the connection closed without the server ending it: ${this.errors.map((e) => e.message).join(', ') || 'no error'}`);
      await new Promise<void>((resolve) => (this.waiting = resolve));
    }
  }

  /** Sends FIN (the client is done) and waits until the socket is closed. */
  async finish(): Promise<void> {
    if (!this.socket.destroyed) this.socket.end();
    await this.closed;
  }

  /** Closes the socket at once (a client that goes away). */
  destroy(): void {
    this.socket.destroy();
  }

  private wake(): void {
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.();
  }

  private take(): RawResponse | undefined {
    const end = this.buffer.indexOf('\r\n\r\n');
    if (end === -1) return undefined;
    const [statusLine, ...lines] = this.buffer.subarray(0, end).toString('latin1').split('\r\n');
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const colon = line.indexOf(':');
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const length = Number(headers['content-length'] ?? 0);
    if (this.buffer.length < end + 4 + length) return undefined;
    const text = this.buffer.subarray(end + 4, end + 4 + length).toString();
    this.buffer = this.buffer.subarray(end + 4 + length);
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON: the text it is
    }
    return { status: Number(statusLine.split(' ')[1]), headers, text, body };
  }
}
