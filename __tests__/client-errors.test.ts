import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { ConfigError, handleClientErrors } from '../index';
import { newApp, recordingLogger } from './helpers/app';
import { RawClient } from './helpers/raw-client';

interface Raw {
  status: number;
  headers: Record<string, string>;
  body: any;
}

/**
 * Writes raw bytes to the server and parses the one response it sends back. Resolves only when
 * the server closes the connection, so a server that keeps it open fails the test by timeout.
 */
function raw(port: number, payload: string): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let data = '';
    socket.on('data', (c: Buffer) => (data += c.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => {
      const [head, body] = [data.slice(0, data.indexOf('\r\n\r\n')), data.slice(data.indexOf('\r\n\r\n') + 4)];
      const [statusLine, ...lines] = head.split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) headers[line.slice(0, line.indexOf(':')).toLowerCase()] = line.slice(line.indexOf(':') + 1).trim();
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body: body.startsWith('{') ? JSON.parse(body) : body });
    });
    socket.write(payload);
  });
}

function start(server: http.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

const servers: http.Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    s.close();
  }
});

function serve(options: http.ServerOptions = {}) {
  const { logger, lines } = recordingLogger();
  const app = newApp();
  app.get('/', (_req, res) => res.send('ok'));
  const server = handleClientErrors(http.createServer(options, app), { logger });
  servers.push(server);
  return { server, lines };
}

describe('handleClientErrors', () => {
  it.each([
    ['a control character in a header value', 'GET / HTTP/1.1\r\nHost: x\r\nX-Note: a\x01b\r\n\r\n'],
    ['a space in a header name', 'GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n'],
    ['garbage instead of a request line', 'HELLO\r\n\r\n'],
  ])('answers %s with 400 BAD_REQUEST in the JSON envelope', async (_name, payload) => {
    const { server, lines } = serve();
    const res = await raw(await start(server), payload);
    expect(res.status).toBe(400);
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(res.headers.connection).toBe('close');
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.body).toEqual({
      error: { code: 'BAD_REQUEST', message: 'The request could not be parsed as HTTP.', request_id: res.headers['x-request-id'] },
    });
    expect(Number(res.headers['content-length'])).toBe(Buffer.byteLength(JSON.stringify(res.body)));
    expect(lines.find((l) => l.request_id === res.headers['x-request-id'])).toMatchObject({ level: 'debug', code: 'BAD_REQUEST', status_code: 400 });
  });

  it('answers headers over maxHeaderSize with 431 REQUEST_HEADER_FIELDS_TOO_LARGE', async () => {
    const { server } = serve({ maxHeaderSize: 1024 });
    const res = await raw(await start(server), `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(4096)}\r\n\r\n`);
    expect(res.status).toBe(431);
    expect(res.body.error).toEqual({
      code: 'REQUEST_HEADER_FIELDS_TOO_LARGE',
      message: 'The request headers are too large.',
      request_id: res.headers['x-request-id'],
    });
  });

  it.each([
    ['a control character in a header value', {}, 'HEAD / HTTP/1.1\r\nHost: x\r\nX-Note: a\x01b\r\n\r\n', 400],
    ['headers over maxHeaderSize', { maxHeaderSize: 1024 }, `HEAD / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(4096)}\r\n\r\n`, 431],
  ])('answers a HEAD request refused for %s with the headers and no body (#11)', async (_name, options, payload, status) => {
    const { server } = serve(options);
    const res = await raw(await start(server), payload);
    expect(res.status).toBe(status);
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.headers.connection).toBe('close');
    expect(res.body).toBe('');
  });

  it('keeps the body for a refused GET whose path starts with HEAD', async () => {
    const { server } = serve();
    const res = await raw(await start(server), 'GET /HEAD HTTP/1.1\r\nHost: x\r\nX-Note: a\x01b\r\n\r\n');
    expect(res.body.error.code).toBe('BAD_REQUEST');
  });

  it('answers a request not received in time with 408 REQUEST_TIMEOUT', async () => {
    const { server } = serve({ requestTimeout: 100, headersTimeout: 100, connectionsCheckingInterval: 20 } as http.ServerOptions);
    // Half a request head, then silence.
    const res = await raw(await start(server), 'GET / HTTP/1.1\r\nHost: x\r\n');
    expect(res.status).toBe(408);
    expect(res.body.error.code).toBe('REQUEST_TIMEOUT');
  });

  it('ends the connection without a reset while the client still sends after its refused request (#11)', async () => {
    const { server } = serve();
    const client = await RawClient.connect(await start(server));
    await client.write(`POST / HTTP/1.1\r\nHost: x\r\nX-Note: a\x01b\r\nContent-Length: ${1024 * 1024}\r\n\r\n`);
    const res = await client.response();
    expect(res).toMatchObject({ status: 400, headers: { connection: 'close' }, body: { error: { code: 'BAD_REQUEST' } } });
    // The client goes on with its body (and would pipeline more): read and thrown away, then FIN.
    for (let i = 0; i < 8; i++) await client.write(Buffer.alloc(64 * 1024, 'b'));
    await client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await client.serverEnd();
    await client.finish();
    expect(client.errors).toEqual([]);
  });

  it('leaves well-formed requests alone', async () => {
    const { server } = serve();
    const res = await raw(await start(server), 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(res).toMatchObject({ status: 200, body: 'ok' });
  });

  it('never throws, and writes nothing, when the socket is already gone or a response already started', () => {
    const { server } = serve();
    const gone = new PassThrough();
    gone.destroy();
    const err = Object.assign(new Error('Parse Error'), { code: 'HPE_INVALID_HEADER_TOKEN' });
    expect(() => server.emit('clientError', err, gone)).not.toThrow();

    const started = Object.assign(new PassThrough(), { _httpMessage: { headersSent: true } });
    const written: string[] = [];
    started.on('data', (c) => written.push(String(c)));
    expect(() => server.emit('clientError', err, started)).not.toThrow();
    expect(started.destroyed).toBe(true);
    expect(written).toEqual([]);

    const reset = new PassThrough();
    expect(() => server.emit('clientError', Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }), reset)).not.toThrow();
    expect(reset.destroyed).toBe(true);
  });

  it('installs once per server, answering once', async () => {
    const { server } = serve();
    handleClientErrors(server);
    expect(server.listenerCount('clientError')).toBe(1);
    const res = await raw(await start(server), 'GET / HTTP/1.1\r\nHost: x\r\nX-Note: \x7f\r\n\r\n');
    expect(res.status).toBe(400);
  });

  it('uses a custom header and generator, replacing an id unsafe for a header', async () => {
    const a = http.createServer(newApp());
    const b = http.createServer(newApp());
    servers.push(a, b);
    handleClientErrors(a, { header: 'X-Trace', generator: () => 'trace-1', logger: recordingLogger().logger });
    handleClientErrors(b, { generator: () => 'bad\r\nSet-Cookie: x=1', logger: recordingLogger().logger });
    const resA = await raw(await start(a), 'BAD\r\n\r\n');
    expect(resA.headers['x-trace']).toBe('trace-1');
    expect(resA.body.error.request_id).toBe('trace-1');
    const resB = await raw(await start(b), 'BAD\r\n\r\n');
    expect(resB.headers['set-cookie']).toBeUndefined();
    expect(resB.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it.each([
    [{ header: 'X Bad' }, /handleClientErrors\.header/],
    [{ generator: 'uuid' }, /handleClientErrors\.generator/],
    [{ loger: {} }, /did you mean 'logger'/],
  ])('refuses %j at setup', (options, message) => {
    expect(() => handleClientErrors(http.createServer(), options as never)).toThrow(ConfigError);
    expect(() => handleClientErrors(http.createServer(), options as never)).toThrow(message);
  });

  it('refuses something that is not a server', () => {
    expect(() => handleClientErrors(undefined as never)).toThrow(/expected the http\.Server/);
  });
});
