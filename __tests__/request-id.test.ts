import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import request from 'supertest';
import { createStack, getContext, requestId, type Stack, type StackConfig } from '../index';
import { newApp, recordingLogger } from './helpers/app';

function app(options?: Parameters<typeof requestId>[0]) {
  const a = newApp();
  a.use(requestId(options));
  a.get('/', async (req, res) => {
    await new Promise((r) => setTimeout(r, 5));
    // getContext() works inside async code the handler awaits.
    res.json({ id: req.id, fromContext: getContext()?.requestId, contextId: req.context.requestId });
  });
  return a;
}

describe('requestId', () => {
  it('makes a UUID v4 when the client sends none, and sets req.id, the context and the header', async () => {
    const res = await request(app()).get('/').expect(200);
    const id = res.headers['x-request-id'];
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(res.body).toEqual({ id, fromContext: id, contextId: id });
  });

  it('takes a valid incoming X-Request-ID', async () => {
    const res = await request(app()).get('/').set('X-Request-ID', 'req-abc123:edge.1').expect(200);
    expect(res.headers['x-request-id']).toBe('req-abc123:edge.1');
    expect(res.body.id).toBe('req-abc123:edge.1');
  });

  it.each([
    ['too long', 'a'.repeat(129)],
    ['spaces', 'abc def'],
    ['quotes and angle brackets', '"><script>'],
    ['a newline-injection attempt', 'abc%0d%0aSet-Cookie:x=1'],
    ['json', '{"a":1}'],
  ])('replaces an invalid incoming id (%s) and never echoes it', async (_name, bad) => {
    const res = await request(app()).get('/').set('X-Request-ID', bad).expect(200);
    expect(res.headers['x-request-id']).not.toBe(bad);
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(JSON.stringify(res.body)).not.toContain(bad);
  });

  it('uses the W3C traceparent trace id when no request id is sent', async () => {
    const res = await request(app())
      .get('/')
      .set('traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')
      .expect(200);
    expect(res.headers['x-request-id']).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
  });

  it('uses the X-Cloud-Trace-Context trace id when no request id is sent', async () => {
    const res = await request(app()).get('/').set('X-Cloud-Trace-Context', '105445aa7843bc8bf206b12000100000/1;o=1').expect(200);
    expect(res.headers['x-request-id']).toBe('105445aa7843bc8bf206b12000100000');
  });

  const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
  const PARENT = '00f067aa0ba902b7';
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

  it.each([
    ['version 00', `00-${TRACE}-${PARENT}-01`],
    ['version 00, not sampled', `00-${TRACE}-${PARENT}-00`],
    ['a future version, exactly 55 characters', `01-${TRACE}-${PARENT}-01`],
    ['a future version with fields of its own after a dash', `cc-${TRACE}-${PARENT}-09-what-the-future-holds`],
    ['version fe', `fe-${TRACE}-${PARENT}-01-x`],
  ])('takes the trace id of a valid traceparent (%s) (#11)', async (_name, traceparent) => {
    const res = await request(app()).get('/').set('traceparent', traceparent).expect(200);
    expect(res.headers['x-request-id']).toBe(TRACE);
  });

  it.each([
    ['an all-zero trace id', `00-${'0'.repeat(32)}-${PARENT}-01`],
    ['an all-zero parent id', `00-${TRACE}-${'0'.repeat(16)}-01`],
    ['version ff', `ff-${TRACE}-${PARENT}-01`],
    ['uppercase hex in the trace id', `00-${TRACE.toUpperCase()}-${PARENT}-01`],
    ['uppercase hex in the version', `0A-${TRACE}-${PARENT}-01`],
    ['uppercase hex in the flags', `00-${TRACE}-${PARENT}-0A`],
    ['version 00 with anything after its 55 characters', `00-${TRACE}-${PARENT}-01-extra`],
    ['version 00 with a trailing character', `00-${TRACE}-${PARENT}-011`],
    ['a future version followed by other than a dash', `01-${TRACE}-${PARENT}-01x`],
    ['a short trace id', `00-${TRACE.slice(1)}-${PARENT}-01`],
    ['a long trace id', `00-${TRACE}0-${PARENT}-01`],
    ['a short parent id', `00-${TRACE}-${PARENT.slice(1)}-01`],
    ['a one-character flags field', `00-${TRACE}-${PARENT}-1`],
    ['a one-character version', `0-${TRACE}-${PARENT}-01`],
    ['a non-hex version', `0g-${TRACE}-${PARENT}-01`],
    ['a non-hex trace id', `00-${TRACE.slice(0, 31)}g-${PARENT}-01`],
    ['underscores for dashes', `00_${TRACE}_${PARENT}_01`],
    ['two headers joined by a comma', `00-${TRACE}-${PARENT}-01, 00-${TRACE}-${PARENT}-01`],
    ['an empty value', ''],
  ])('ignores a traceparent with %s and makes an id (#11)', async (_name, traceparent) => {
    const res = await request(app()).get('/').set('traceparent', traceparent).expect(200);
    expect(res.headers['x-request-id']).toMatch(UUID);
  });

  it('gives unrelated requests with an all-zero traceparent ids of their own (#11)', async () => {
    const zero = `00-${'0'.repeat(32)}-${PARENT}-01`;
    const [a, b] = await Promise.all([request(app()).get('/').set('traceparent', zero), request(app()).get('/').set('traceparent', zero)]);
    expect(a.headers['x-request-id']).not.toBe(b.headers['x-request-id']);
    expect(a.headers['x-request-id']).not.toContain('0000000000');
  });

  it('prefers X-Request-ID, and falls back to X-Cloud-Trace-Context, when a traceparent is invalid (#11)', async () => {
    const bad = `ff-${TRACE}-${PARENT}-01`;
    const withId = await request(app()).get('/').set('traceparent', bad).set('X-Request-ID', 'edge-42').expect(200);
    expect(withId.headers['x-request-id']).toBe('edge-42');
    const withCloud = await request(app()).get('/').set('traceparent', bad).set('X-Cloud-Trace-Context', '105445aa7843bc8bf206b12000100000/1;o=1').expect(200);
    expect(withCloud.headers['x-request-id']).toBe('105445aa7843bc8bf206b12000100000');
  });

  it.each([
    ['the trace id alone', '105445aa7843bc8bf206b12000100000', '105445aa7843bc8bf206b12000100000'],
    ['a span id and options', '105445aa7843bc8bf206b12000100000/1;o=1', '105445aa7843bc8bf206b12000100000'],
    ['uppercase hex, lowercased', '105445AA7843BC8BF206B12000100000/12345;o=0', '105445aa7843bc8bf206b12000100000'],
  ])('takes the X-Cloud-Trace-Context trace id from %s (#11)', async (_name, header, expected) => {
    const res = await request(app()).get('/').set('X-Cloud-Trace-Context', header).expect(200);
    expect(res.headers['x-request-id']).toBe(expected);
  });

  it.each([
    ['an all-zero trace id', `${'0'.repeat(32)}/1;o=1`],
    ['a short trace id', '105445aa7843bc8bf206b1200010000/1;o=1'],
    ['a span id that is not decimal', '105445aa7843bc8bf206b12000100000/abc;o=1'],
    ['an options value other than 0 or 1', '105445aa7843bc8bf206b12000100000/1;o=2'],
  ])('ignores an X-Cloud-Trace-Context with %s (#11)', async (_name, header) => {
    const res = await request(app()).get('/').set('X-Cloud-Trace-Context', header).expect(200);
    expect(res.headers['x-request-id']).toMatch(UUID);
  });

  it('makes time-ordered UUID v7 ids on request', async () => {
    const res = await request(app({ generator: 'uuidv7' })).get('/').expect(200);
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-/);
  });

  it('accepts a custom generator and header name, and replaces junk from the generator', async () => {
    const custom = await request(app({ generator: () => 'req-1', header: 'X-Correlation-ID' })).get('/').expect(200);
    expect(custom.headers['x-correlation-id']).toBe('req-1');
    const junk = await request(app({ generator: () => 'bad id\n' })).get('/').expect(200);
    expect(junk.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('leaves getContext() undefined, and req.context working, with asyncContext: false', async () => {
    const res = await request(app({ asyncContext: false })).get('/').expect(200);
    const id = res.headers['x-request-id'];
    expect(res.body).toEqual({ id, contextId: id });
  });

  it('ignores incoming ids when trustIncoming is false', async () => {
    const res = await request(app({ trustIncoming: false })).get('/').set('X-Request-ID', 'client-id').expect(200);
    expect(res.headers['x-request-id']).not.toBe('client-id');
  });

  it('refuses a bad generator at setup and explains app.use(requestId) without parentheses', () => {
    expect(() => requestId({ generator: 'uuid' as never })).toThrow(/requestId.generator: expected 'uuidv4', 'uuidv7' or a function/);
    const fakeReq = { method: 'GET', headers: {}, url: '/' };
    expect(() => requestId(fakeReq as never)).toThrow(/app.use\(requestId\(\)\)/);
  });

  it('lets later middleware assign req.id and req.context, and keeps ids apart across concurrent requests', async () => {
    const a = newApp();
    a.use(requestId());
    a.use((req, _res, next) => {
      if (req.query.rename !== undefined) req.id = String(req.query.rename);
      next();
    });
    a.get('/', async (req, res) => {
      await new Promise((r) => setTimeout(r, 5));
      res.json({ id: req.id, contextId: req.context.requestId });
    });
    const [renamed, plain] = await Promise.all([request(a).get('/?rename=mine'), request(a).get('/')]);
    expect(renamed.body.id).toBe('mine');
    expect(renamed.body.contextId).toBe(renamed.headers['x-request-id']);
    expect(plain.body.id).toBe(plain.headers['x-request-id']);
    expect(plain.body.id).not.toBe(renamed.headers['x-request-id']);
    const replaced = newApp();
    replaced.use(requestId());
    replaced.get('/', (req, res) => {
      const mine = { requestId: 'other' } as typeof req.context;
      req.context = mine;
      res.json({ same: req.context === mine });
    });
    expect((await request(replaced).get('/')).body.same).toBe(true);
  });

  it('computes the device lazily from the user agent', async () => {
    const a = newApp();
    a.use(requestId());
    a.get('/', (req, res) => {
      res.json({ device: req.context.device });
    });
    const ua = {
      iphone: 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148',
      ipad: 'Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148',
      desktop: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36',
      bot: 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
    };
    expect((await request(a).get('/').set('User-Agent', ua.iphone)).body.device).toBe('mobile');
    expect((await request(a).get('/').set('User-Agent', ua.ipad)).body.device).toBe('tablet');
    expect((await request(a).get('/').set('User-Agent', ua.desktop)).body.device).toBe('desktop');
    expect((await request(a).get('/').set('User-Agent', ua.bot)).body.device).toBe('bot');
    expect((await request(a).get('/').set('User-Agent', '')).body.device).toBe('unknown');
  });
});

describe('an HTTP/1.1 request without Host', () => {
  const servers: Server[] = [];
  const stacks: Stack[] = [];
  afterEach(async () => {
    for (const s of servers.splice(0)) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
    for (const stack of stacks.splice(0)) await stack.close();
  });

  async function serve(config: StackConfig): Promise<number> {
    const stack = createStack({ logger: recordingLogger().logger, ...config });
    stacks.push(stack);
    const app = newApp();
    app.use(stack);
    app.get('/', (_req, res) => {
      res.json({ served: true });
    });
    app.use(stack.errorHandler);
    const server = createServer(app);
    servers.push(server);
    stack.attach(server, { signals: [], exit: false });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return (server.address() as AddressInfo).port;
  }

  /** Sends `payload` and returns everything the server wrote until it closed the connection. */
  function exchange(port: number, payload: string): Promise<{ status: number; headers: Record<string, string>; body: string }> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => socket.write(payload));
      let data = '';
      socket.on('data', (c: Buffer) => (data += c.toString('latin1')));
      socket.on('error', reject);
      socket.on('close', () => {
        const at = data.indexOf('\r\n\r\n');
        const [statusLine, ...lines] = data.slice(0, at).split('\r\n');
        const headers: Record<string, string> = {};
        for (const line of lines) headers[line.slice(0, line.indexOf(':')).toLowerCase()] = line.slice(line.indexOf(':') + 1).trim();
        resolve({ status: Number(statusLine.split(' ')[1]), headers, body: data.slice(at + 4) });
      });
    });
  }

  it('is refused by an attached stack with 400 BAD_REQUEST in the envelope, with its request id, and the connection closes (#11)', async () => {
    const port = await serve({});
    const res = await exchange(port, 'GET / HTTP/1.1\r\n\r\n');
    expect(res.status).toBe(400);
    expect(res.headers.connection).toBe('close');
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(JSON.parse(res.body)).toEqual({
      error: {
        code: 'BAD_REQUEST',
        message: 'An HTTP/1.1 request must carry a Host header.',
        request_id: res.headers['x-request-id'],
        details: { reason: 'missing_host' },
      },
    });
  });

  it('is served when it is HTTP/1.0, which may leave Host out', async () => {
    const port = await serve({});
    const res = await exchange(port, 'GET / HTTP/1.0\r\n\r\n');
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ served: true });
  });

  it('is served when it carries Host', async () => {
    const port = await serve({});
    const res = await exchange(port, 'GET / HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n');
    expect(res.status).toBe(200);
  });

  it("is left to Node's own 400 when the stack has no requestId to refuse it", async () => {
    const port = await serve({ requestId: false });
    const res = await exchange(port, 'GET / HTTP/1.1\r\n\r\n');
    expect(res.status).toBe(400);
    expect(res.headers['x-request-id']).toBeUndefined();
    expect(res.body).not.toContain('served');
  });
});
