import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Request } from 'express';
import { createStack, handleClientErrors, timeout, type Stack } from '../../index';
import { eventually, newApp, recordingLogger } from '../helpers/app';
import { RawClient } from '../helpers/raw-client';

// Slow and broken clients against the default stack (plus a deadline, auth and credits), on a
// real server with Node's own slow-client limits turned down and handleClientErrors installed
// (#11). Everything waits on events and conditions; the fixed numbers are the server's bounds.

const KEY = 'hostile-key-0123456789abcdef';
const USER = 'u-hostile';
const DEADLINE_MS = 300;

interface Observed {
  /** Abort reasons (`req.signal.reason.code`) handlers saw, by path. */
  aborts: Array<{ path: string; code: string | undefined }>;
  /** Handlers reached, by path. */
  reached: Map<string, Request[]>;
  /** Streaming responses whose writer saw the connection close before the end. */
  streamsCut: number;
}

interface Harness {
  port: number;
  stack: Stack;
  lines: Array<Record<string, any>>;
  seen: Observed;
  server: http.Server;
}

const clients: RawClient[] = [];
const cleanups: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function connect(port: number): Promise<RawClient> {
  const c = await RawClient.connect(port);
  clients.push(c);
  return c;
}

/** Resolves once `cond` holds, letting I/O run between checks; fails after `ms` (a deadline to fail by, not a timing claim). */
async function until(cond: () => boolean, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms: ${cond.toString()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Writes `piece` to `client` every `ms` until the test ends or the socket goes. */
function trickle(client: RawClient, piece: string, ms = 50): void {
  const timer = setInterval(() => {
    if (client.socket.destroyed || !client.socket.writable) clearInterval(timer);
    else client.socket.write(piece);
  }, ms);
  cleanups.push(() => clearInterval(timer));
}

async function start(serverOptions: http.ServerOptions = {}): Promise<Harness> {
  const { logger, lines } = recordingLogger();
  const stack = createStack({
    logger,
    timeout: { ms: `${DEADLINE_MS}ms` },
    auth: { jwt: false, required: false, apiKeys: [{ key: KEY, name: 'hostile', userId: USER, tier: 'free' }] },
    // Anonymous requests are free; keyed ones pay.
    credits: { cost: 10, required: false },
  });
  const seen: Observed = { aborts: [], reached: new Map(), streamsCut: 0 };
  const reach = (req: Request): void => {
    const list = seen.reached.get(req.path) ?? [];
    list.push(req);
    seen.reached.set(req.path, list);
    req.signal.addEventListener('abort', () => seen.aborts.push({ path: req.path, code: (req.signal.reason as { code?: string })?.code }));
  };
  const app = newApp();
  app.use(stack);
  app.get('/ok', (_req, res) => res.json({ ok: true }));
  app.get('/echo/:n', (req, res) => res.json({ n: Number(req.params.n) }));
  // Never answers: the deadline or the client's going ends it.
  app.get('/hang', (req) => reach(req));
  app.post('/paid', (req) => reach(req));
  // Held until the client goes: no deadline of its own, so a loaded machine cannot turn the
  // disconnect this proves into a timeout.
  app.post('/paid-until-gone', timeout({ ms: 0 }), (req) => reach(req));
  // Reads its body as it comes, without a deadline of its own (a slow upload is legitimate here).
  app.post('/upload', timeout({ ms: 0 }), (req, res) => {
    reach(req);
    let bytes = 0;
    req.on('data', (c: Buffer) => (bytes += c.length));
    req.on('end', () => res.json({ bytes }));
  });
  app.get('/stream', timeout({ ms: 0 }), (req, res) => {
    reach(req);
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    const timer = setInterval(() => res.write('x'.repeat(1024)), 5);
    res.on('close', () => {
      clearInterval(timer);
      if (!res.writableFinished) seen.streamsCut++;
    });
  });
  app.use(stack.errorHandler);
  const server = handleClientErrors(http.createServer({ headersTimeout: 60_000, requestTimeout: 0, connectionsCheckingInterval: 50, ...serverOptions }, app), { logger });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    await stack.close();
  });
  return { port: (server.address() as AddressInfo).port, stack, lines, seen, server };
}

/** One plain request on a connection of its own. */
async function fetchOk(port: number): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/ok`);
  await res.arrayBuffer();
  return res.status;
}

describe('slow and broken clients (#11)', () => {
  it('serves other clients while 20 slow sockets are open (slowloris heads and slow uploads)', async () => {
    const h = await start();
    const slow: RawClient[] = [];
    for (let i = 0; i < 10; i++) {
      const head = await connect(h.port);
      // A head that never ends: one more header byte now and then.
      await head.write(`GET /ok HTTP/1.1\r\nHost: localhost\r\nX-Slow-${i}: `);
      trickle(head, 'a');
      slow.push(head);
      const body = await connect(h.port);
      await body.head('POST', '/upload', { 'Content-Type': 'application/octet-stream', 'Content-Length': 1024 * 1024 });
      await body.write('b');
      trickle(body, 'b');
      slow.push(body);
    }
    await until(() => (h.seen.reached.get('/upload') ?? []).length === 10);

    expect(await fetchOk(h.port)).toBe(200);
    const keyed = await fetch(`http://127.0.0.1:${h.port}/echo/7`, { headers: { 'X-API-Key': KEY } });
    expect(keyed.status).toBe(402); // served (refused for want of credits), not stuck behind the slow ones
    await keyed.arrayBuffer();

    expect(slow).toHaveLength(20);
    for (const c of slow) expect(c.state).toEqual({ ended: false, closed: false });
    // They go away mid-head and mid-body: every upload handler hears of it through req.signal.
    for (const c of slow) c.destroy();
    await until(() => h.seen.aborts.filter((a) => a.path === '/upload').length === 10);
    expect(h.seen.aborts.every((a) => a.code === 'CLIENT_CLOSED_REQUEST')).toBe(true);
    expect(await fetchOk(h.port)).toBe(200);
  });

  it('answers a head that never completes with 408 REQUEST_TIMEOUT in the envelope at headersTimeout, and closes', async () => {
    const h = await start({ headersTimeout: 300, requestTimeout: 600 });
    const slow = await Promise.all(Array.from({ length: 5 }, () => connect(h.port)));
    for (const c of slow) {
      await c.write('GET /ok HTTP/1.1\r\nHost: localhost\r\nX-Slow: ');
      trickle(c, 'a');
    }
    for (const c of slow) {
      const res = await c.response();
      expect(res.status).toBe(408);
      expect(res.headers.connection).toBe('close');
      expect(res.body).toEqual({ error: { code: 'REQUEST_TIMEOUT', message: 'The request was not received in time.', request_id: res.headers['x-request-id'] } });
      await c.serverEnd();
    }
    expect(await fetchOk(h.port)).toBe(200);
  });

  it('answers a body that trickles past the deadline with 504 in the envelope, and ends the connection', async () => {
    const h = await start();
    const c = await connect(h.port);
    // bodyParser reads this one, inside the stack's deadline.
    await c.head('POST', '/ok', { 'Content-Type': 'application/json', 'Content-Length': 100_000 });
    await c.write('{"a":"');
    trickle(c, 'a');
    const res = await c.response();
    expect(res.status).toBe(504);
    expect(res.headers.connection).toBe('close');
    expect(res.body.error).toEqual({
      code: 'GATEWAY_TIMEOUT',
      message: `The request did not complete within ${DEADLINE_MS} ms.`,
      request_id: res.headers['x-request-id'],
      details: { timeout_ms: DEADLINE_MS },
    });
    await c.serverEnd();
  });

  it('fires the deadline on a handler that never answers: 504 in the envelope, req.signal aborted with it, the connection kept', async () => {
    const h = await start();
    const c = await connect(h.port);
    await c.head('GET', '/hang');
    const res = await c.response();
    expect(res.status).toBe(504);
    expect(res.body.error).toMatchObject({ code: 'GATEWAY_TIMEOUT', request_id: res.headers['x-request-id'] });
    expect(h.seen.aborts).toEqual([{ path: '/hang', code: 'GATEWAY_TIMEOUT' }]);
    // A bodyless request keeps its connection after the 504.
    expect(res.headers.connection).toBe('keep-alive');
    await c.head('GET', '/ok');
    expect((await c.response()).status).toBe(200);
  });

  it('aborts req.signal when the client disconnects mid-body, and logs no failure', async () => {
    const h = await start();
    const c = await connect(h.port);
    await c.head('POST', '/upload', { 'Content-Type': 'application/octet-stream', 'Content-Length': 1024 * 1024 });
    await c.write(Buffer.alloc(16 * 1024));
    await until(() => h.seen.reached.has('/upload'));
    c.destroy();
    await until(() => h.seen.aborts.length === 1);
    expect(h.seen.aborts).toEqual([{ path: '/upload', code: 'CLIENT_CLOSED_REQUEST' }]);
    expect(await fetchOk(h.port)).toBe(200);
    expect(h.lines.filter((l) => l.level === 'error')).toEqual([]);
  });

  it('stops a streaming response when the client disconnects mid-response, aborting req.signal', async () => {
    const h = await start();
    const c = await connect(h.port);
    await c.head('GET', '/stream');
    // Some of the response arrives, then the client goes.
    await until(() => c.socket.bytesRead > 4096);
    c.destroy();
    await until(() => h.seen.streamsCut === 1 && h.seen.aborts.length === 1);
    expect(h.seen.aborts).toEqual([{ path: '/stream', code: 'CLIENT_CLOSED_REQUEST' }]);
    expect(await fetchOk(h.port)).toBe(200);
  });

  it('answers pipelined requests on one socket in order, each with its own request id, a slow one included', async () => {
    const h = await start();
    const c = await connect(h.port);
    const head = (path: string) => `GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`;
    await c.write(head('/echo/1') + head('/echo/2') + head('/hang') + head('/echo/4') + head('/echo/5'));
    const responses = [];
    for (let i = 0; i < 5; i++) responses.push(await c.response());
    expect(responses.map((r) => r.status)).toEqual([200, 200, 504, 200, 200]);
    expect(responses.filter((r) => r.status === 200).map((r) => r.body.n)).toEqual([1, 2, 4, 5]);
    expect(new Set(responses.map((r) => r.headers['x-request-id'])).size).toBe(5);
    expect(responses[2].body.error.request_id).toBe(responses[2].headers['x-request-id']);
    expect(c.state).toEqual({ ended: false, closed: false });
  });

  it('refunds the credits reserved for a request whose client disconnects, and for one that times out', async () => {
    const h = await start();
    const credits = h.stack.middleware.credits as unknown as { grant(a: string, n: number): Promise<number>; balance(a: string): Promise<number> };
    await credits.grant(USER, 100);

    const c = await connect(h.port);
    await c.head('POST', '/paid-until-gone', { 'X-API-Key': KEY, 'Content-Length': 0 });
    await until(() => h.seen.reached.has('/paid-until-gone'));
    expect(await credits.balance(USER)).toBe(90);
    c.destroy();
    await until(() => h.seen.aborts.length === 1);
    expect(h.seen.aborts).toEqual([{ path: '/paid-until-gone', code: 'CLIENT_CLOSED_REQUEST' }]);
    await eventually(async () => expect(await credits.balance(USER)).toBe(100));

    const t = await connect(h.port);
    await t.head('POST', '/paid', { 'X-API-Key': KEY, 'Content-Length': 0 });
    expect((await t.response()).status).toBe(504);
    await eventually(async () => expect(await credits.balance(USER)).toBe(100));
  });
});
