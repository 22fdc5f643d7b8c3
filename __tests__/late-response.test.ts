import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Express } from 'express';
import type { StackConfig } from '../lib/create-stack';
import { closeStacks, stackApp } from './helpers/app';
import { RawClient } from './helpers/raw-client';

const servers: http.Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    s.close();
  }
  await closeStacks();
});

async function listen(app: Express): Promise<number> {
  const server = app.listen(0);
  servers.push(server);
  await new Promise((r) => server.once('listening', r));
  return (server.address() as AddressInfo).port;
}

const UPLOAD = { 'Content-Type': 'application/octet-stream', 'Content-Length': 1024 * 1024 };

/** Routes every case below needs; none of them reads an octet-stream body. */
function routes(app: Express): void {
  app.get('/ok', (_req, res) => res.send('ok'));
  app.post('/upload', (_req, res) => {
    // Never answers: only a timeout ends this request.
    void res;
  });
  app.get('/fail', (_req, res) => res.status(500).send('down'));
  app.post('/fail', (_req, res) => res.status(500).send('down'));
  app.post('/echo', (req, res) => res.json({ body: req.body }));
}

/** An early answer case: the stack config, the request that gets the answer, and what to send before it. */
interface Case {
  config: StackConfig;
  path: string;
  status: number;
  code: string;
  /** Bodyless requests sent first (to fill a rate limit, to open a circuit). */
  before?: string[];
}

const cases: Array<[string, Case]> = [
  ['401 from auth', { config: { auth: { apiKeys: [{ key: 'key-0123456789abcdef', name: 'k', tier: 'free' }] } }, path: '/upload', status: 401, code: 'AUTHENTICATION_REQUIRED' }],
  ['403 from ipFilter', { config: { ipFilter: { deny: ['127.0.0.0/8', '::1'] } }, path: '/upload', status: 403, code: 'IP_BLOCKED' }],
  ['429 from rateLimit', { config: { rateLimit: { limit: 1, window: '1m' } }, path: '/upload', status: 429, code: 'RATE_LIMIT_EXCEEDED', before: ['/ok'] }],
  ['415 from sizeLimit.types', { config: { sizeLimit: { types: ['json'] } }, path: '/upload', status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' }],
  ['413 from sizeLimit', { config: { sizeLimit: { max: '1kb' } }, path: '/upload', status: 413, code: 'PAYLOAD_TOO_LARGE' }],
  ['503 from an open circuit', { config: { circuitBreaker: { volumeThreshold: 1 } }, path: '/fail', status: 503, code: 'CIRCUIT_OPEN', before: ['/fail'] }],
  ['400 from sanitize', { config: { sanitize: { xss: 'reject' } }, path: '/upload?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E', status: 400, code: 'INPUT_REJECTED' }],
  ['404 from notFound', { config: {}, path: '/nowhere', status: 404, code: 'NOT_FOUND' }],
  ['504 from timeout', { config: { timeout: { ms: '150ms' } }, path: '/upload', status: 504, code: 'GATEWAY_TIMEOUT' }],
];

describe('early answers to requests whose body was not read (#11)', () => {
  it.each(cases)('%s says Connection: close and ends the connection cleanly while the client still uploads', async (_name, c) => {
    const { app } = stackApp(c.config, routes);
    const client = await RawClient.connect(await listen(app));
    for (const path of c.before ?? []) {
      await client.head('GET', path);
      const first = await client.response();
      expect(first.headers.connection).toBe('keep-alive');
    }
    await client.head('POST', c.path, UPLOAD);
    await client.write(Buffer.alloc(16 * 1024, 'a'));
    const res = await client.response();
    expect(res.status).toBe(c.status);
    expect(res.body.error).toMatchObject({ code: c.code, request_id: res.headers['x-request-id'] });
    expect(res.headers.connection).toBe('close');
    // A client that has not read the answer yet goes on sending: its bytes are read and thrown
    // away, not answered with a reset that could destroy the answer before the client reads it.
    for (let i = 0; i < 8; i++) await client.write(Buffer.alloc(64 * 1024, 'b'));
    await client.serverEnd();
    await client.finish();
    expect(client.errors).toEqual([]);
  });

  it('keeps the connection of a bodyless request answered early', async () => {
    const { app } = stackApp({ auth: { apiKeys: [{ key: 'key-0123456789abcdef', name: 'k', tier: 'free' }] } }, routes);
    const client = await RawClient.connect(await listen(app));
    await client.head('GET', '/ok');
    const res = await client.response();
    expect(res.status).toBe(401);
    expect(res.headers.connection).toBe('keep-alive');
    // The same connection serves the next request.
    await client.head('GET', '/ok', { 'X-API-Key': 'key-0123456789abcdef' });
    expect((await client.response()).status).toBe(200);
    await client.finish();
    expect(client.errors).toEqual([]);
  });

  it('keeps the connection when the body was read before the answer (a JSON body bodyParser read, then 401)', async () => {
    const { app } = stackApp({ auth: { apiKeys: [{ key: 'key-0123456789abcdef', name: 'k', tier: 'free' }] } }, routes);
    const client = await RawClient.connect(await listen(app));
    const body = JSON.stringify({ hello: 'world' });
    await client.head('POST', '/echo', { 'Content-Type': 'application/json', 'Content-Length': body.length });
    await client.write(body);
    const res = await client.response();
    expect(res.status).toBe(401);
    expect(res.headers.connection).toBe('keep-alive');
    await client.head('POST', '/echo', { 'Content-Type': 'application/json', 'Content-Length': body.length, 'X-API-Key': 'key-0123456789abcdef' });
    await client.write(body);
    expect(await client.response()).toMatchObject({ status: 200, body: { body: { hello: 'world' } } });
    await client.finish();
  });

  it('runs no request the client sends after an early answer that closed the connection', async () => {
    let runs = 0;
    const { app } = stackApp({ sizeLimit: { max: '1kb' } }, (a) => {
      a.post('/count', (_req, res) => {
        runs++;
        res.send('counted');
      });
      a.post('/upload', (req, res) => {
        req.on('data', () => undefined);
        req.on('end', () => res.send('stored'));
      });
    });
    const client = await RawClient.connect(await listen(app));
    await client.head('POST', '/upload', { 'Content-Type': 'application/octet-stream', 'Transfer-Encoding': 'chunked' });
    await client.write(`800\r\n${'a'.repeat(0x800)}\r\n`);
    const res = await client.response();
    expect(res).toMatchObject({ status: 413, headers: { connection: 'close' } });
    // The end of the refused body, then a request pipelined behind it: the server said it closes.
    await client.write('0\r\n\r\nPOST /count HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n');
    await client.serverEnd();
    await client.finish();
    expect(runs).toBe(0);
    expect(client.errors).toEqual([]);
  });
});
