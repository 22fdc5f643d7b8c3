import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { Express, NextFunction, Request, RequestHandler, Response } from 'express';
import { ClientClosedRequestError, ConfigError, errorNormalizer, requestId, timeout } from '../index';
import { LINGER_MS } from '../lib/late-response';
import { closeStacks, EXPRESS_MAJOR, newApp, stackApp } from './helpers/app';
import { RawClient } from './helpers/raw-client';

// Deadlines run on jest's fake clock; sockets, nextTick and setImmediate stay real so HTTP works.
beforeEach(() => {
  jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'clearImmediate', 'queueMicrotask', 'hrtime', 'performance', 'Date'] });
});
afterEach(() => {
  jest.useRealTimers();
});

interface Got {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: any;
  reusedSocket: boolean;
}

const servers: http.Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    s.close();
  }
});

async function listen(app: Express): Promise<number> {
  const server = app.listen(0);
  servers.push(server);
  await new Promise((r) => server.once('listening', r));
  return (server.address() as AddressInfo).port;
}

function get(port: number, path: string, agent?: http.Agent): { response: Promise<Got>; req: http.ClientRequest } {
  const req = http.get({ port, path, agent });
  const response = new Promise<Got>((resolve, reject) => {
    req.on('response', (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text.startsWith('{') ? JSON.parse(text) : text, reusedSocket: req.reusedSocket }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  return { response, req };
}

/** A promise the test awaits until the handler has been reached. */
function signal<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Lets real I/O (the response travelling back) happen between fake-clock steps. */
const io = () => new Promise((r) => setImmediate(r));
/** Lets real I/O happen until `check` holds: the request reached the point the test drives the clock from. */
async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 20000 && !check(); i++) await io();
  if (!check()) throw new Error('the request never got there');
}
/** Until `n` fake timers are pending (the deadline, plus the handler's own). */
const timers = (n: number) => until(() => jest.getTimerCount() === n);

// Express 5 passes a rejected handler promise to next(err); Express 4 ignores it, so the handler
// does it itself there, as Express 4 apps must.
function asyncHandler(fn: (req: Request, res: Response, next: NextFunction) => Promise<unknown>): RequestHandler {
  if (EXPRESS_MAJOR === 5) return fn as RequestHandler;
  return (req, res, next) => void fn(req, res, next).catch(next);
}

afterEach(closeStacks);

describe('timeout', () => {
  it('answers 504 GATEWAY_TIMEOUT in the error envelope with the request id, and aborts req.signal', async () => {
    const reached = signal<Request>();
    const { app, lines } = stackApp({ timeout: { ms: 100 } }, (a) => a.get('/slow', (req) => reached.resolve(req)));
    const { response } = get(await listen(app), '/slow');
    const req = await reached.promise;
    jest.advanceTimersByTime(99);
    expect(req.signal.aborted).toBe(false);
    jest.advanceTimersByTime(1);
    const res = await response;
    expect(res.status).toBe(504);
    expect(res.body).toEqual({
      error: {
        code: 'GATEWAY_TIMEOUT',
        message: 'The request did not complete within 100 ms.',
        request_id: res.headers['x-request-id'],
        details: { timeout_ms: 100 },
      },
    });
    expect(req.signal.aborted).toBe(true);
    expect(req.signal.reason).toMatchObject({ status: 504, code: 'GATEWAY_TIMEOUT' });
    expect(lines.find((l) => l.message === 'Request completed')).toMatchObject({ status_code: 504, request_id: res.headers['x-request-id'] });
  });

  it('makes req.signal on first read: read after the deadline, it is already aborted with the reason; assigning replaces it', async () => {
    const reached = signal<Request>();
    const { app } = stackApp({ timeout: { ms: 100 } }, (a) => a.get('/slow', (req) => reached.resolve(req)));
    const { response } = get(await listen(app), '/slow');
    const req = await reached.promise;
    jest.advanceTimersByTime(100);
    expect((await response).status).toBe(504);
    expect(req.signal.aborted).toBe(true);
    expect(req.signal.reason).toMatchObject({ code: 'GATEWAY_TIMEOUT', details: { timeout_ms: 100 } });
    expect(req.signal).toBe(req.signal);
    const own = new AbortController().signal;
    (req as { signal: AbortSignal }).signal = own;
    expect(req.signal).toBe(own);
  });

  it('clears its timer when the response finishes', async () => {
    const { app } = stackApp({}, (a) => a.get('/fast', (_req, res) => res.json({ ok: true })));
    const res = await get(await listen(app), '/fast').response;
    expect(res.status).toBe(200);
    expect(jest.getTimerCount()).toBe(0);
  });

  it.each([
    ['res.json', (res: Response) => res.json({ late: true })],
    ['res.status().send', (res: Response) => res.status(200).send('late')],
    ['res.setHeader', (res: Response) => res.setHeader('X-Late', '1')],
    ['res.writeHead', (res: Response) => res.writeHead(200, { 'X-Late': '1' })],
    ['res.write + res.end', (res: Response) => {
      res.write('late');
      res.end();
    }],
    ['res.redirect', (res: Response) => res.redirect('/elsewhere')],
  ])('drops a late %s after the 504 without a crash, and logs ERR_TIMEOUT_LATE_WRITE once', async (_name, write) => {
    const { app, lines } = stackApp({ timeout: { ms: 100 } }, (a) =>
      a.get('/late', (_req, res) => {
        setTimeout(() => {
          write(res);
          write(res);
        }, 300);
      }),
    );
    const { response } = get(await listen(app), '/late');
    await timers(2);
    jest.advanceTimersByTime(100);
    const res = await response;
    // A throw here (ERR_HTTP_HEADERS_SENT) would surface from the fake clock and fail the test.
    jest.advanceTimersByTime(300);
    await io();
    expect(res.status).toBe(504);
    expect(res.body.error.code).toBe('GATEWAY_TIMEOUT');
    const late = lines.filter((l) => l.code === 'ERR_TIMEOUT_LATE_WRITE');
    expect(late).toHaveLength(1);
    expect(late[0]).toMatchObject({ level: 'debug', request_id: res.headers['x-request-id'], path: '/late' });
  });

  it('drops a response an abort listener tries to send after the 504', async () => {
    const reached = signal();
    const { app } = stackApp({ timeout: { ms: 100 } }, (a) =>
      a.get('/listener', (req, res) => {
        req.signal.addEventListener('abort', () => res.status(503).json({ mine: true }));
        reached.resolve();
      }),
    );
    const { response } = get(await listen(app), '/listener');
    await reached.promise;
    jest.advanceTimersByTime(100);
    expect((await response).status).toBe(504);
  });

  it('lets a route-level timeout shorten the stack deadline (100 ms inside 30 s), keeping one req.signal', async () => {
    const reached = signal<Request>();
    let stackSignal: AbortSignal | undefined;
    const { app } = stackApp({ insert: [{ after: 'timeout', name: 'probe', handler: (req, _res, next) => ((stackSignal = req.signal), next()) }] }, (a) =>
      a.get('/short', timeout({ ms: 100 }), (req) => reached.resolve(req)),
    );
    const { response } = get(await listen(app), '/short');
    const req = await reached.promise;
    expect(req.signal).toBe(stackSignal);
    jest.advanceTimersByTime(100);
    const res = await response;
    expect(res.status).toBe(504);
    expect(res.body.error.details).toEqual({ timeout_ms: 100 });
    expect(req.signal.aborted).toBe(true);
  });

  it('lets a route-level timeout extend the stack deadline (2000 ms inside 100 ms): a handler answering at 300 ms succeeds', async () => {
    const reached = signal<Request>();
    const { app } = stackApp({ timeout: { ms: 100 } }, (a) =>
      a.get(
        '/long',
        timeout({ ms: 2000 }),
        asyncHandler(async (req, res) => {
          reached.resolve(req);
          await sleep(300);
          res.json({ done: true });
        }),
      ),
    );
    const { response } = get(await listen(app), '/long');
    const req = await reached.promise;
    jest.advanceTimersByTime(150);
    expect(req.signal.aborted).toBe(false);
    jest.advanceTimersByTime(150);
    const res = await response;
    expect(res).toMatchObject({ status: 200, body: { done: true } });
    expect(req.signal.aborted).toBe(false);
    expect(jest.getTimerCount()).toBe(0);
  });

  it('counts a route-level deadline from when the route is reached', async () => {
    const reached = signal<Request>();
    const { app } = stackApp(
      {
        timeout: { ms: 1000 },
        // 400 ms spent before the route (a slow auth lookup, say).
        insert: [{ after: 'timeout', name: 'slow', handler: (_req, _res, next) => void setTimeout(next, 400) }],
      },
      (a) => a.get('/route', timeout({ ms: 500 }), (req) => reached.resolve(req)),
    );
    const { response } = get(await listen(app), '/route');
    await timers(2);
    jest.advanceTimersByTime(400);
    const req = await reached.promise;
    // 900 ms after the start: past the route's 500 ms if it counted from the start, within it from the route.
    jest.advanceTimersByTime(499);
    expect(req.signal.aborted).toBe(false);
    jest.advanceTimersByTime(1);
    expect((await response).status).toBe(504);
  });

  it('turns the deadline off with ms: 0 on a route, keeping req.signal', async () => {
    const { app } = stackApp({ timeout: { ms: 100 } }, (a) =>
      a.get(
        '/stream',
        timeout({ ms: 0 }),
        asyncHandler(async (req, res) => {
          await sleep(5000);
          res.json({ aborted: req.signal.aborted });
        }),
      ),
    );
    const { response } = get(await listen(app), '/stream');
    // Only the handler's own sleep is pending: no deadline.
    await timers(1);
    jest.advanceTimersByTime(5000);
    expect(await response).toMatchObject({ status: 200, body: { aborted: false } });
  });

  it('does not run the route when a middleware calls next() after the request already timed out', async () => {
    let ran = 0;
    const { app } = stackApp(
      { timeout: { ms: 100 }, insert: [{ after: 'timeout', name: 'slow', handler: (_req, _res, next) => void setTimeout(next, 300) }] },
      (a) =>
        a.get('/route', timeout({ ms: 5000 }), (_req, res) => {
          ran++;
          res.send('ok');
        }),
    );
    const { response } = get(await listen(app), '/route');
    await timers(2);
    jest.advanceTimersByTime(100);
    expect((await response).status).toBe(504);
    jest.advanceTimersByTime(300);
    await io();
    expect(ran).toBe(0);
  });

  it('aborts req.signal when the client disconnects, with a distinct reason, and clears the timer', async () => {
    const reached = signal<Request>();
    const { app } = stackApp({}, (a) => a.get('/hang', (req) => reached.resolve(req)));
    const { req: client, response } = get(await listen(app), '/hang');
    response.catch(() => undefined);
    const req = await reached.promise;
    expect(jest.getTimerCount()).toBe(1);
    const aborted = new Promise((r) => req.signal.addEventListener('abort', r));
    client.destroy();
    await aborted;
    expect(req.signal.reason).toBeInstanceOf(ClientClosedRequestError);
    expect(req.signal.reason).toMatchObject({ status: 499, code: 'CLIENT_CLOSED_REQUEST' });
    expect(jest.getTimerCount()).toBe(0);
  });

  it('only logs an async handler that throws after the timeout: no unhandled rejection, the 504 stands, the connection is kept', async () => {
    const unhandled = jest.fn();
    process.on('unhandledRejection', unhandled);
    try {
      const { app, lines } = stackApp({ timeout: { ms: 100 } }, (a) => {
        a.get(
          '/throws',
          asyncHandler(async () => {
            await sleep(300);
            throw new Error('database gave up');
          }),
        );
        a.get(
          '/rethrows',
          asyncHandler(async (req) => {
            await new Promise((_r, reject) => req.signal.addEventListener('abort', () => reject(req.signal.reason)));
          }),
        );
        a.get('/ok', (_req, res) => res.send('ok'));
      });
      const port = await listen(app);
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      const first = get(port, '/throws', agent).response;
      await timers(2);
      jest.advanceTimersByTime(100);
      const res = await first;
      expect(res.status).toBe(504);
      jest.advanceTimersByTime(300);
      await io();
      await io();
      const late = lines.find((l) => /already answered/.test(l.message));
      expect(late).toMatchObject({ level: 'warn', code: 'ERR_TIMEOUT_LATE_WRITE', request_id: res.headers['x-request-id'] });
      expect(late?.err.message).toBe('database gave up');
      // The timed-out response was finished, not destroyed: the next request reuses the connection.
      const second = await get(port, '/ok', agent).response;
      expect(second).toMatchObject({ status: 200, reusedSocket: true });

      // The abort reason rethrown by the handler is the expected echo of the 504: debug, not warn.
      const third = get(port, '/rethrows', agent).response;
      await timers(1);
      jest.advanceTimersByTime(100);
      expect((await third).status).toBe(504);
      await io();
      const echo = lines.filter((l) => /already answered/.test(l.message));
      expect(echo[1]).toMatchObject({ level: 'debug', err: { message: 'The request did not complete within 100 ms.' } });
      agent.destroy();
      await io();
      expect(unhandled).not.toHaveBeenCalled();
    } finally {
      process.off('unhandledRejection', unhandled);
    }
  });

  it('cuts the connection when the response had already started streaming at the deadline', async () => {
    const reached = signal<Request>();
    const { app } = stackApp({ timeout: { ms: 100 } }, (a) =>
      a.get('/stream', (req, res) => {
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.write('partial');
        reached.resolve(req);
      }),
    );
    const { response } = get(await listen(app), '/stream');
    const req = await reached.promise;
    jest.advanceTimersByTime(100);
    await expect(response).rejects.toThrow(/aborted|socket hang up/);
    expect(req.signal.reason).toMatchObject({ code: 'GATEWAY_TIMEOUT' });
  });

  it('leaves alone a response the handler ended in time that is still flushing to a slow client', async () => {
    const size = 8 * 1024 * 1024;
    const ended = signal<Response>();
    const { app, lines } = stackApp({ timeout: { ms: 100 } }, (a) =>
      a.get('/big', (_req, res) => {
        res.setHeader('Content-Type', 'application/octet-stream');
        res.end(Buffer.alloc(size));
        ended.resolve(res);
      }),
    );
    const port = await listen(app);
    // A client that does not read yet, so the response cannot finish flushing before the deadline.
    const socket = net.connect(port, '127.0.0.1');
    socket.pause();
    socket.write('GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    const res = await ended.promise;
    expect(res.writableFinished).toBe(false);
    jest.advanceTimersByTime(1000);
    let received = 0;
    let head = '';
    socket.on('data', (c: Buffer) => {
      if (head === '') head = c.subarray(0, 12).toString();
      received += c.length;
    });
    socket.resume();
    await new Promise((r) => socket.once('close', r));
    expect(head).toBe('HTTP/1.1 200');
    expect(received).toBeGreaterThan(size);
    // Not a timeout: nothing aborted, nothing logged as failed.
    expect(res.req.signal.aborted).toBe(false);
    expect(lines.filter((l) => l.code === 'GATEWAY_TIMEOUT')).toEqual([]);
  });

  it('closes the connection of a client still trickling its body after the 504, within 5 s and without a reset (#11)', async () => {
    let reached = false;
    const { app, lines } = stackApp({ timeout: { ms: 1000 } }, (a) =>
      a.post('/upload', (_req, res) => {
        reached = true;
        res.json({ stored: true });
      }),
    );
    const port = await listen(app);
    const accepted = new Promise<net.Socket>((r) => servers[servers.length - 1].once('connection', r));
    const client = await RawClient.connect(port);
    const serverSide = await accepted;
    const serverClosed = new Promise((r) => serverSide.once('close', r));
    // bodyParser waits for a JSON body of 1 MB that comes a few bytes at a time.
    await client.head('POST', '/upload', { 'Content-Type': 'application/json', 'Content-Length': 1024 * 1024 });
    await client.write('{"data":"');
    await timers(1);
    jest.advanceTimersByTime(1000);
    const res = await client.response();
    expect(res.status).toBe(504);
    expect(res.body.error).toMatchObject({ code: 'GATEWAY_TIMEOUT', request_id: res.headers['x-request-id'] });
    expect(res.headers.connection).toBe('close');
    await client.serverEnd();
    // The trickle goes on after the answer: read and thrown away, not answered with a reset.
    await client.write('aaaa');
    await timers(1);
    jest.advanceTimersByTime(LINGER_MS - 1);
    await client.write('bbbb');
    for (let i = 0; i < 20; i++) await io();
    expect(serverSide.destroyed).toBe(false);
    // At the bound the server closes, however slowly the client still sends.
    jest.advanceTimersByTime(1);
    await serverClosed;
    expect(LINGER_MS).toBeLessThanOrEqual(5000);
    expect(client.errors).toEqual([]);
    expect(reached).toBe(false);
    // bodyParser's reader, cut off with the connection, is logged as the echo of the 504, not as a failure.
    await until(() => lines.some((l) => /already answered/.test(l.message)));
    expect(lines.filter((l) => /already answered/.test(l.message))).toEqual([expect.objectContaining({ level: 'debug', code: 'ERR_TIMEOUT_LATE_WRITE' })]);
  });

  it('works alone, without a stack or a request id', async () => {
    const app = newApp();
    app.use(timeout({ ms: '50ms' }));
    app.get('/slow', () => undefined);
    app.use(errorNormalizer());
    const { response } = get(await listen(app), '/slow');
    await timers(1);
    jest.advanceTimersByTime(50);
    const res = await response;
    expect(res.status).toBe(504);
    expect(res.body.error).toMatchObject({ code: 'GATEWAY_TIMEOUT', request_id: null });
  });

  it('uses the request id of a requestId placed before it when alone', async () => {
    const app = newApp();
    app.use(requestId(), timeout({ ms: 50 }));
    app.get('/slow', () => undefined);
    app.use(errorNormalizer());
    const { response } = get(await listen(app), '/slow');
    await timers(1);
    jest.advanceTimersByTime(50);
    const res = await response;
    expect(res.body.error.request_id).toBe(res.headers['x-request-id']);
  });

  it.each([
    [{ ms: 'soon' }, /timeout\.ms: expected a duration/],
    [{ ms: -5 }, /timeout\.ms/],
    [{ ms: 2 ** 31 }, /timeout\.ms: .*largest timer/],
    [{ timeout: 100 }, /timeout\.timeout: unknown option/],
  ])('refuses %j at setup', (options, message) => {
    expect(() => timeout(options as never)).toThrow(ConfigError);
    expect(() => timeout(options as never)).toThrow(message);
  });
});
