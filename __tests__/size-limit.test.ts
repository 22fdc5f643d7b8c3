import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import type { Express, Request } from 'express';
import request from 'supertest';
import { ConfigError, createStack, errorNormalizer, sizeLimit } from '../index';
import { closeStacks, eventually, newApp, recordingLogger, stackApp } from './helpers/app';
import { RawClient } from './helpers/raw-client';

interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: any;
}

/**
 * Sends a body in pieces over a real socket (chunked unless a Content-Length is given) and
 * resolves with the response, which may come while the body is still being written.
 */
async function upload(app: Express, path: string, chunks: Buffer[], headers: Record<string, string> = {}): Promise<RawResponse> {
  const server = app.listen(0);
  await new Promise((r) => server.once('listening', r));
  const { port } = server.address() as AddressInfo;
  try {
    return await new Promise<RawResponse>((resolve, reject) => {
      let response: RawResponse | undefined;
      let sent = false;
      const done = (): void => {
        if (response !== undefined && sent) resolve(response);
      };
      const req = http.request({ port, path, method: 'POST', headers: { 'Content-Type': 'application/octet-stream', ...headers } }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => {
          const text = Buffer.concat(parts).toString();
          response = { status: res.statusCode ?? 0, headers: res.headers, body: text.startsWith('{') ? JSON.parse(text) : text };
          done();
        });
        res.on('error', reject);
      });
      // The server may answer (and close) before the whole body went out: that is the point.
      req.on('error', () => undefined);
      req.on('close', () => {
        sent = true;
        done();
      });
      let i = 0;
      const writeNext = (): void => {
        if (i === chunks.length) {
          req.end();
          return;
        }
        req.write(chunks[i++], () => setImmediate(writeNext));
      };
      writeNext();
    });
  } finally {
    server.closeAllConnections();
    server.close();
  }
}

/** Sends only the head of a request announcing `length` bytes, and resolves with the response without ever sending the body. */
async function headOnly(app: Express, path: string, length: number, contentType = 'application/octet-stream'): Promise<RawResponse> {
  const server = app.listen(0);
  await new Promise((r) => server.once('listening', r));
  const { port } = server.address() as AddressInfo;
  try {
    return await new Promise<RawResponse>((resolve, reject) => {
      const req = http.request({ port, path, method: 'POST', headers: { 'Content-Type': contentType, 'Content-Length': String(length) } }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c));
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: JSON.parse(text) });
          req.destroy();
        });
      });
      req.on('error', reject);
      req.flushHeaders();
    });
  } finally {
    server.closeAllConnections();
    server.close();
  }
}

const kb = (n: number): Buffer[] => Array.from({ length: n }, () => Buffer.alloc(1024, 'a'));
const json = (bytes: number): string => JSON.stringify({ pad: 'x'.repeat(bytes - 10) });

/** A sink that records how many bytes reached it and whether it saw the end of the body. */
function sink(): Writable & { bytes: number; finished: boolean } {
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      w.bytes += chunk.length;
      cb();
    },
  }) as Writable & { bytes: number; finished: boolean };
  w.bytes = 0;
  w.finished = false;
  w.on('finish', () => (w.finished = true));
  return w;
}

afterEach(closeStacks);

describe('sizeLimit: Content-Length', () => {
  it('answers 413 from Content-Length before reading a byte of the body', async () => {
    let reached = false;
    const { app } = stackApp({ sizeLimit: { max: '1kb' } }, (a) =>
      a.post('/upload', (_req, res) => {
        reached = true;
        res.send('ok');
      }),
    );
    // 50 MB announced, nothing sent: the answer can only come from the header.
    const res = await headOnly(app, '/upload', 50 * 1024 * 1024);
    expect(res.status).toBe(413);
    expect(res.body).toEqual({
      error: {
        code: 'PAYLOAD_TOO_LARGE',
        message: 'The request body is larger than the limit of 1024 bytes.',
        request_id: res.headers['x-request-id'],
        details: { limit: 1024, received: 50 * 1024 * 1024 },
      },
    });
    expect(reached).toBe(false);
  });

  it('lets bodies within the limit through, and bodyless and empty requests without a check', async () => {
    const { app } = stackApp({ sizeLimit: { max: '2kb', types: ['json'] } }, (a) => {
      a.post('/echo', (req, res) => res.json({ size: JSON.stringify(req.body ?? null).length }));
      a.get('/echo', (_req, res) => res.json({ ok: true }));
    });
    await request(app).post('/echo').send(JSON.parse(json(2000))).expect(200);
    await request(app).get('/echo').expect(200, { ok: true });
    // Content-Length: 0 without a Content-Type is how many clients send an empty POST: not a 415.
    await request(app).post('/echo').set('Content-Length', '0').expect(200);
  });

  it('keeps bodyParser on the stack limit: a JSON body over sizeLimit.max is 413, under it parses', async () => {
    const { app } = stackApp({ sizeLimit: { max: '2kb' } }, (a) => a.post('/echo', (req, res) => res.json({ n: req.body.pad.length })));
    await request(app).post('/echo').send(JSON.parse(json(1500))).expect(200, { n: 1490 });
    const res = await request(app).post('/echo').send(JSON.parse(json(3000))).expect(413);
    expect(res.body.error).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', details: { limit: 2048, received: 3000 } });
  });
});

describe('sizeLimit: bodyParser in a stack', () => {
  // A gzip body is small on the wire, where sizeLimit counts: only bodyParser sees it inflated.
  const gzipped = (bytes: number) => gzipSync(Buffer.from(json(bytes)));
  const post = (app: Express, body: Buffer, key?: string) =>
    upload(app, '/echo', [body], {
      'Content-Type': 'application/json',
      'Content-Encoding': 'gzip',
      'Content-Length': String(body.length),
      ...(key ? { 'X-API-Key': key } : {}),
    });

  it('takes its limit from sizeLimit.max, for bodies as they are once inflated', async () => {
    const { app } = stackApp({ sizeLimit: { max: '2kb' } }, (a) => a.post('/echo', (req, res) => res.json({ n: req.body.pad.length })));
    expect(gzipped(10000).length).toBeLessThan(2048);
    expect(await post(app, gzipped(1500))).toMatchObject({ status: 200, body: { n: 1490 } });
    const res = await post(app, gzipped(10000));
    expect(res).toMatchObject({ status: 413, body: { error: { code: 'PAYLOAD_TOO_LARGE' } } });
  });

  it('takes the largest tier as its limit when there are tiers', async () => {
    const { app } = stackApp(
      { sizeLimit: { max: '1kb', tiers: { pro: '8kb' } }, auth: { apiKeys: [{ key: 'key-pro-0123456789', name: 'p', tier: 'pro' }], required: false } },
      (a) => a.post('/echo', (req, res) => res.json({ n: req.body.pad.length })),
    );
    expect(await post(app, gzipped(6000), 'key-pro-0123456789')).toMatchObject({ status: 200, body: { n: 5990 } });
    expect((await post(app, gzipped(10000), 'key-pro-0123456789')).status).toBe(413);
  });
});

describe('sizeLimit: bodies without Content-Length', () => {
  it('refuses a chunked JSON body once it passes the limit, through body-parser, with one 413 and no crash', async () => {
    let handled = 0;
    const { app, lines } = stackApp({ sizeLimit: { max: '4kb' } }, (a) =>
      a.post('/echo', (_req, res) => {
        handled++;
        res.json({ ok: true });
      }),
    );
    const body = Buffer.from(json(64 * 1024));
    const chunks = Array.from({ length: 64 }, (_, i) => body.subarray(i * 1024, (i + 1) * 1024));
    const res = await upload(app, '/echo', chunks, { 'Content-Type': 'application/json' });
    expect(res.status).toBe(413);
    expect(res.body.error.code).toBe('PAYLOAD_TOO_LARGE');
    expect(res.body.error.request_id).toBe(res.headers['x-request-id']);
    expect(res.body.error.details.limit).toBe(4096);
    expect(res.body.error.details.received).toBeGreaterThan(4096);
    expect(res.body.error.details.received).toBeLessThanOrEqual(4096 + 1024);
    expect(handled).toBe(0);
    // One answer only: the 413; body-parser's own failure afterwards is logged as a late echo, not answered.
    await eventually(() => expect(lines.some((l) => /already answered/.test(l.message))).toBe(true));
    expect(lines.filter((l) => l.message === 'Request completed')).toHaveLength(1);
    expect(lines.filter((l) => l.level === 'error')).toEqual([]);
  });

  const pipe = (req: Request, w: Writable) => req.pipe(w);
  const iterate = async (req: Request, w: Writable) => {
    for await (const chunk of req) w.write(chunk);
    w.end();
  };
  it.each([
    ['a pipe', 'in 1 kB pieces', pipe, kb(40)],
    ['async iteration', 'in 1 kB pieces', iterate, kb(40)],
    // All at once: the end of the body arrives before the 413 has gone out.
    ['a pipe', 'in one piece', pipe, [Buffer.alloc(20 * 1024)]],
    ['async iteration', 'in one piece', iterate, [Buffer.alloc(20 * 1024)]],
  ])('refuses a chunked upload read through %s, sent %s, and the reader never sees the end of the body', async (_name, _shape, read, chunks) => {
    const sinks: Array<ReturnType<typeof sink>> = [];
    let closed = false;
    const { app, lines } = stackApp({ sizeLimit: { max: '8kb' } }, (a) =>
      a.post('/upload', (req, res) => {
        const w = sink();
        sinks.push(w);
        req.on('close', () => (closed = true));
        w.on('finish', () => res.json({ bytes: w.bytes }));
        Promise.resolve(read(req, w)).catch(() => undefined);
      }),
    );
    const res = await upload(app, '/upload', chunks);
    expect(res.status).toBe(413);
    expect(res.body.error).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', details: { limit: 8192 } });
    expect(sinks).toHaveLength(1);
    expect(sinks[0].bytes).toBeLessThanOrEqual(8192);
    expect(sinks[0].finished).toBe(false);
    // The reader is cut off once the body is in and the 413 is out, so it does not hang forever.
    await eventually(() => expect(closed).toBe(true));
    expect(lines.filter((l) => l.level === 'error')).toEqual([]);
  });

  it('drops the late response of a handler whose upload was refused, logging ERR_SIZE_LIMIT_LATE_WRITE', async () => {
    let release!: () => void;
    const answerLate = new Promise<void>((resolve) => (release = resolve));
    const { app, lines } = stackApp({ sizeLimit: { max: '2kb' } }, (a) =>
      a.post('/upload', (req, res) => {
        req.on('data', () => undefined);
        // A handler that answers on its own schedule, whatever happened to its body: here, once
        // the client has its 413.
        void answerLate.then(() => res.status(201).json({ stored: true }));
      }),
    );
    const res = await upload(app, '/upload', kb(10));
    expect(res.status).toBe(413);
    release();
    await eventually(() => expect(lines.some((l) => l.code === 'ERR_SIZE_LIMIT_LATE_WRITE')).toBe(true));
    const late = lines.find((l) => l.code === 'ERR_SIZE_LIMIT_LATE_WRITE');
    expect(late).toMatchObject({ level: 'debug', method: 'status', request_id: res.headers['x-request-id'] });
  });

  it('counts a chunked body within the limit without changing it', async () => {
    const { app } = stackApp({ sizeLimit: { max: '64kb' } }, (a) =>
      a.post('/upload', (req, res) => {
        const w = sink();
        w.on('finish', () => res.json({ bytes: w.bytes }));
        req.pipe(w);
      }),
    );
    const res = await upload(app, '/upload', kb(40));
    expect(res).toMatchObject({ status: 200, body: { bytes: 40 * 1024 } });
  });
});

describe('sizeLimit: the connection after a 413 (#11)', () => {
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
  function uploadApp() {
    return stackApp({ sizeLimit: { max: '1kb' } }, (a) => {
      a.post('/upload', (req, res) => {
        const w = sink();
        w.on('finish', () => res.json({ bytes: w.bytes }));
        req.pipe(w);
      });
      a.get('/ok', (_req, res) => res.send('ok'));
    });
  }

  it("tells a keep-alive client the connection closes, so its next request goes out on a new one and succeeds", async () => {
    const { app } = uploadApp();
    const port = await listen(app);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const send = (method: string, path: string, body?: Buffer) =>
      new Promise<{ status: number; connection: string | undefined; reused: boolean }>((resolve, reject) => {
        const req = http.request({ port, path, method, agent, headers: body ? { 'Content-Type': 'application/octet-stream' } : {} }, (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection, reused: req.reusedSocket }));
        });
        req.on('error', reject);
        req.end(body);
      });
    try {
      expect(await send('POST', '/upload', Buffer.alloc(256 * 1024))).toMatchObject({ status: 413, connection: 'close' });
      expect(await send('GET', '/ok')).toMatchObject({ status: 200, reused: false });
      expect(await send('GET', '/ok')).toMatchObject({ status: 200, reused: true });
    } finally {
      agent.destroy();
    }
  });

  it.each([
    ['announced by Content-Length', { 'Content-Length': 1024 * 1024 }, (n: number) => Buffer.alloc(n, 'a')],
    ['chunked, refused once it passes the limit', { 'Transfer-Encoding': 'chunked' }, (n: number) => `${n.toString(16)}\r\n${'a'.repeat(n)}\r\n`],
  ])('ends the connection without a reset when the client goes on sending an upload %s', async (_name, framing, piece) => {
    const { app, lines } = uploadApp();
    const client = await RawClient.connect(await listen(app));
    await client.head('POST', '/upload', { 'Content-Type': 'application/octet-stream', ...framing });
    for (let i = 0; i < 4; i++) await client.write(piece(1024));
    const res = await client.response();
    expect(res).toMatchObject({ status: 413, headers: { connection: 'close' }, body: { error: { code: 'PAYLOAD_TOO_LARGE' } } });
    for (let i = 0; i < 16; i++) await client.write(piece(32 * 1024));
    await client.serverEnd();
    await client.finish();
    expect(client.errors).toEqual([]);
    expect(lines.filter((l) => l.level === 'error')).toEqual([]);
  });
});

describe('sizeLimit: types', () => {
  it('answers 415 for a body of a type not listed, and lets listed types through', async () => {
    const app = newApp();
    app.post('/img', sizeLimit({ types: ['image/*', 'application/pdf'] }), (_req, res) => res.send('ok'));
    app.use(errorNormalizer());
    const bad = await request(app).post('/img').set('Content-Type', 'text/html').send('<b>hi</b>').expect(415);
    expect(bad.body.error).toEqual({
      code: 'UNSUPPORTED_MEDIA_TYPE',
      message: 'The request body must be one of: image/*, application/pdf.',
      request_id: null,
      details: { accepted: ['image/*', 'application/pdf'] },
    });
    await request(app).post('/img').set('Content-Type', 'image/png').send(Buffer.from('png')).expect(200);
    // A body with no Content-Type at all is not of a listed type either.
    const none = await upload(app, '/img', kb(1), { 'Content-Type': '' });
    expect(none.status).toBe(415);
  });
});

describe('sizeLimit: per route behind a stack (innermost wins)', () => {
  // Keep this suite's limits small: the largest route-level limit made in this file decides which
  // bodies the stack may defer to a route.
  function app() {
    return stackApp({ sizeLimit: { max: '1kb' } }, (a) => {
      const store = (req: Request, res: any) => {
        const w = sink();
        w.on('finish', () => res.json({ bytes: w.bytes }));
        req.pipe(w);
      };
      a.post('/big', sizeLimit({ max: '16kb' }), store);
      a.post('/small', sizeLimit({ max: '100b' }), store);
      a.post('/plain', store);
      a.post('/ignore', (_req, res) => res.json({ ignored: true }));
    });
  }

  it('lets a route raise the limit for its own uploads, with Content-Length and chunked', async () => {
    const { app: a } = app();
    const body = Buffer.alloc(8 * 1024, 'b');
    await request(a).post('/big').set('Content-Type', 'application/octet-stream').send(body).expect(200, { bytes: 8192 });
    expect(await upload(a, '/big', kb(12))).toMatchObject({ status: 200, body: { bytes: 12 * 1024 } });
    // Above the route's own limit: refused by the route, at its limit.
    const over = await request(a).post('/big').set('Content-Type', 'application/octet-stream').send(Buffer.alloc(20 * 1024)).expect(413);
    expect(over.body.error.details).toEqual({ limit: 16384, received: 20480 });
    const overChunked = await upload(a, '/big', kb(20));
    expect(overChunked.status).toBe(413);
    expect(overChunked.body.error.details.limit).toBe(16384);
  });

  it('lets a route lower the limit for its own uploads', async () => {
    const { app: a } = app();
    const res = await request(a).post('/small').set('Content-Type', 'application/octet-stream').send(Buffer.alloc(500)).expect(413);
    expect(res.body.error.details).toEqual({ limit: 100, received: 500 });
    expect((await upload(a, '/small', kb(1))).body.error.details.limit).toBe(100);
    await request(a).post('/small').set('Content-Type', 'application/octet-stream').send(Buffer.alloc(80)).expect(200, { bytes: 80 });
  });

  it('holds routes without their own sizeLimit to the stack limit as soon as they read the body', async () => {
    const { app: a } = app();
    const res = await request(a).post('/plain').set('Content-Type', 'application/octet-stream').send(Buffer.alloc(8 * 1024)).expect(413);
    expect(res.body.error.details).toEqual({ limit: 1024, received: 8192 });
    expect((await upload(a, '/plain', kb(8))).body.error.details.limit).toBe(1024);
    // A handler that never reads the body is not stopped by a body it never reads (see README).
    await request(a).post('/ignore').set('Content-Type', 'application/octet-stream').send(Buffer.alloc(8 * 1024)).expect(200);
  });

  it('keeps the stack limit final for JSON, which the stack parses before any route runs', async () => {
    const { app: a } = app();
    const res = await request(a).post('/big').send(JSON.parse(json(4096))).expect(413);
    expect(res.body.error.details).toEqual({ limit: 1024, received: 4096 });
  });

  it('refuses at once a Content-Length no sizeLimit in the process would allow', async () => {
    const { app: a } = app();
    const res = await headOnly(a, '/ignore', 10 * 1024 * 1024);
    expect(res.status).toBe(413);
    expect(res.body.error.details).toEqual({ limit: 1024, received: 10 * 1024 * 1024 });
  });
});

describe('sizeLimit: tiers', () => {
  const apiKeys = [
    { key: 'key-pro-0123456789', name: 'pro-client', tier: 'pro' },
    { key: 'key-free-0123456789', name: 'free-client', tier: 'free' },
  ];

  function tierApp() {
    return stackApp({ sizeLimit: { max: '1kb', tiers: { free: '2kb', pro: '8kb' } }, auth: { apiKeys, required: false } }, (a) =>
      a.post('/echo', (req, res) => res.json({ n: req.body.pad.length })),
    );
  }

  it('places the tier check right after auth', () => {
    const { stack } = tierApp();
    expect(stack.order.slice(stack.order.indexOf('sizeLimit'))).toEqual(
      expect.arrayContaining(['sizeLimit', 'timeout', 'bodyParser', 'auth', 'sizeLimitTier']),
    );
    expect(stack.order[stack.order.indexOf('auth') + 1]).toBe('sizeLimitTier');
  });

  it.each([
    ['no key', undefined, 4096, 413, 1024],
    ['the free tier', 'key-free-0123456789', 4096, 413, 2048],
    ['the pro tier', 'key-pro-0123456789', 4096, 200, undefined],
    ['the free tier, within it', 'key-free-0123456789', 1500, 200, undefined],
  ])('holds a request with %s to its own limit', async (_name, key, size, status, limit) => {
    const { app } = tierApp();
    const req = request(app).post('/echo');
    if (key) req.set('X-API-Key', key);
    const res = await req.send(JSON.parse(json(size))).expect(status);
    if (limit !== undefined) expect(res.body.error.details).toEqual({ limit, received: size });
  });

  it('holds chunked bodies to the tier limit too', async () => {
    const { app } = tierApp();
    const body = Buffer.from(json(4096));
    const chunks = [body.subarray(0, 2048), body.subarray(2048)];
    const anonymous = await upload(app, '/echo', chunks, { 'Content-Type': 'application/json' });
    expect(anonymous.status).toBe(413);
    const pro = await upload(app, '/echo', chunks, { 'Content-Type': 'application/json', 'X-API-Key': 'key-pro-0123456789' });
    expect(pro).toMatchObject({ status: 200, body: { n: 4086 } });
  });

  it('refuses from Content-Length at once what no tier allows', async () => {
    const { app } = tierApp();
    const res = await headOnly(app, '/echo', 9000, 'application/json');
    expect(res.status).toBe(413);
    expect(res.body.error.details).toEqual({ limit: 8192, received: 9000 });
  });

  it('puts the tier check right after sizeLimit when auth is off, and adds none without tiers', () => {
    const { stack } = stackApp({ rateLimit: undefined, sizeLimit: { tiers: { pro: '5mb' } } }, () => undefined);
    const { stack: plain } = stackApp({ rateLimit: undefined }, () => undefined);
    expect(stack.order[stack.order.indexOf('sizeLimit') + 1]).toBe('sizeLimitTier');
    expect(plain.order).not.toContain('sizeLimitTier');
    // On by default, in the documented place: ipFilter → sizeLimit → timeout → bodyParser.
    expect(plain.order.slice(plain.order.indexOf('sizeLimit'), plain.order.indexOf('bodyParser') + 1)).toEqual(['sizeLimit', 'timeout', 'bodyParser']);
  });

  it('picks the tier on a route-level sizeLimit placed after auth', async () => {
    const app = newApp();
    app.use((req, _res, next) => {
      const tier = req.headers['x-tier'];
      if (typeof tier === 'string') req.auth = { method: 'apiKey', tier };
      next();
    });
    app.post('/up', sizeLimit({ max: '100b', tiers: { pro: '1kb', constructor: '1b' } }), (_req, res) => res.send('ok'));
    const body = Buffer.alloc(500);
    await request(app).post('/up').set('Content-Type', 'application/octet-stream').set('X-Tier', 'pro').send(body).expect(200);
    await request(app).post('/up').set('Content-Type', 'application/octet-stream').send(body).expect(413);
    // Tier names are looked up in a map, not an object: '__proto__' is simply an unknown tier.
    await request(app).post('/up').set('Content-Type', 'application/octet-stream').set('X-Tier', '__proto__').send(Buffer.alloc(50)).expect(200);
  });
});

describe('sizeLimit: configuration', () => {
  it.each([
    [{ max: 'lots' }, /sizeLimit\.max: expected a size like '100kb'/],
    [{ max: -1 }, /sizeLimit\.max/],
    [{ types: 'json' }, /sizeLimit\.types: expected a non-empty array/],
    [{ types: ['jsn'] }, /sizeLimit\.types: 'jsn' is not a content type/],
    [{ tiers: ['pro'] }, /sizeLimit\.tiers: expected an object/],
    [{ tiers: { pro: 'lots' } }, /sizeLimit\.tiers\.pro: expected a size/],
    [{ type: ['json'] }, /sizeLimit\.type: unknown option; did you mean 'types'\?/],
  ])('refuses %j at setup', (options, message) => {
    expect(() => sizeLimit(options as never)).toThrow(ConfigError);
    expect(() => sizeLimit(options as never)).toThrow(message);
  });

  it('explains app.use(sizeLimit) without parentheses', () => {
    const slip = sizeLimit as unknown as (req: unknown) => unknown;
    expect(() => slip({ method: 'GET', headers: {}, url: '/' })).toThrow(/app\.use\(sizeLimit\(\)\)/);
  });

  it('refuses a bad stack config naming the option', () => {
    expect(() => createStack({ logger: recordingLogger().logger, sizeLimit: { max: 'huge' } })).toThrow(/sizeLimit\.max/);
  });
});
