import fc from 'fast-check';
import { fuzzRequest, rawRequest } from './helpers-generators';
import { checkOutcome, forwardedAddress, parseResponse, processWatch, realProcess, send, startTarget, type FuzzRequest, type Outcome, type Target, type View } from './helpers';

// Issue #11: the hostile suite's properties must be able to fail. Each check is shown catching
// the defect it is there for, on hand-made answers and on a live target set up to leak.

const ID = 'req-1';
const envelope = (status: number, code: string, message = 'No.') => ({
  status,
  headers: { 'x-request-id': ID, 'content-type': 'application/json' },
  body: JSON.stringify({ error: { code, message, request_id: ID } }),
});
const get = (path: string, headers: Array<[string, string]> = []): FuzzRequest => ({ method: 'GET', path, headers });
const noTarget = { views: new Map<string, View>(), secrets: [':6390'] };
const kinds = (fr: FuzzRequest, out: Outcome, target = noTarget) => checkOutcome(target, fr, out).map((v) => v.kind);

describe('hostile suite checks (#11)', () => {
  it('passes a proper error envelope whose request_id is the X-Request-ID header', () => {
    expect(kinds(get('/nope'), envelope(404, 'NOT_FOUND', 'No route for GET /nope.'))).toEqual([]);
  });

  it.each<[string, Outcome]>([
    ['an HTML error page', { status: 500, headers: { 'x-request-id': ID }, body: '<!DOCTYPE html><pre>Internal Server Error</pre>' }],
    ['an envelope without request_id', { status: 400, headers: { 'x-request-id': ID }, body: JSON.stringify({ error: { code: 'BAD_REQUEST', message: 'No.' } }) }],
    ['a request_id that is not the header', { status: 400, headers: { 'x-request-id': ID }, body: JSON.stringify({ error: { code: 'BAD_REQUEST', message: 'No.', request_id: 'other' } }) }],
  ])('flags %s on a 4xx/5xx', (_name, out) => {
    expect(kinds(get('/items/1'), out)).toContain('envelope');
  });

  it('flags an answer without X-Request-ID', () => {
    expect(kinds(get('/items/1'), { status: 200, headers: {}, body: '{}' })).toContain('request-id');
  });

  it('allows 5xx only from the routes that fail on purpose, with their codes', () => {
    expect(kinds(get('/boom'), envelope(500, 'INTERNAL_ERROR'))).toEqual([]);
    expect(kinds(get('/hang'), envelope(504, 'GATEWAY_TIMEOUT'))).toEqual([]);
    expect(kinds(get('/flaky'), envelope(503, 'CIRCUIT_OPEN'))).toEqual([]);
    expect(kinds(get('/items/1'), envelope(500, 'INTERNAL_ERROR'))).toContain('5xx');
    expect(kinds(get('/echo'), envelope(503, 'SERVICE_UNAVAILABLE'))).toContain('5xx');
    expect(kinds(get('/boom'), envelope(503, 'SERVICE_UNAVAILABLE'))).toContain('5xx');
  });

  it.each([
    ['a stack frame', 'Error: x\n    at handler (/srv/app.js:1:1)'],
    ['a source position', 'failed in index.ts:12'],
    ['a module path', 'node_modules/db'],
    ['a file path', 'open /work/app/config'],
    ['the loopback address', 'connect 127.0.0.1 refused'],
    ['the Redis port', 'redis at host:6390'],
  ])('flags %s in a body', (_name, text) => {
    expect(kinds(get('/boom'), envelope(500, 'INTERNAL_ERROR', text))).toContain('leak');
  });

  it('does not call it a leak when the body quotes what the client itself sent', () => {
    expect(kinds(get('/work/node_modules/127.0.0.1'), envelope(404, 'NOT_FOUND', 'No route for GET /work/node_modules/127.0.0.1.'))).toEqual([]);
  });

  it("flags a cache HIT that carries another request's view", () => {
    const mine: View = { method: 'GET', host: 'a.example', path: '/echo', query: {}, user: null, apiKey: null, tenant: null, cookie: null };
    const target = { views: new Map([[ID, mine]]), secrets: [] };
    const hit = (view: View): Outcome => ({ status: 200, headers: { 'x-request-id': ID, 'x-cache': 'HIT' }, body: JSON.stringify({ view, body: null }) });
    expect(kinds(get('/echo'), hit(mine), target)).toEqual([]);
    expect(kinds(get('/echo'), hit({ ...mine, host: 'victim.example' }), target)).toContain('cache-key');
    expect(kinds(get('/echo'), hit({ ...mine, cookie: '[["sid","1"]]' }), target)).toContain('cache-key');
  });

  it.each([
    ['1.2.3.4:5678', '1.2.3.4'],
    ['[2001:db8::1]', '2001:db8::1'],
    ['[1.2.3.4]:80', '1.2.3.4'],
    ['fe80::1%eth0', 'fe80::1'],
    ['unknown', undefined],
    ['999.1.1.1', undefined],
    ['01.02.03.04', 'ambiguous'],
    ['0x7f.1', 'ambiguous'],
  ])('reads forwarded entry %s as %s', (entry, address) => {
    expect(forwardedAddress(entry)).toBe(address);
  });

  it('expects 400 for an unparseable forwarded client and 403 for a denied one in any spelling', () => {
    expect(kinds(get('/items/1', [['X-Forwarded-For', 'garbage']]), envelope(400, 'BAD_REQUEST'))).toEqual([]);
    expect(kinds(get('/items/1', [['X-Forwarded-For', 'garbage']]), { status: 200, headers: { 'x-request-id': ID }, body: '{}' })).toContain('client-ip');
    expect(kinds(get('/items/1', [['X-Forwarded-For', '[198.51.100.9]:80']]), { status: 200, headers: { 'x-request-id': ID }, body: '{}' })).toContain('client-ip');
    expect(kinds(get('/items/1', [['X-Forwarded-For', '198.51.100.9:1']]), envelope(403, 'IP_BLOCKED'))).toEqual([]);
    // Empty entries name no client: the socket's own address is the client.
    expect(kinds(get('/items/1', [['X-Forwarded-For', ',,,']]), { status: 200, headers: { 'x-request-id': ID }, body: '{}' })).toEqual([]);
  });

  it('flags an invalid traceparent that became the request id, and only then', () => {
    const zero = '0'.repeat(32);
    const answer = (id: string): Outcome => ({ status: 200, headers: { 'x-request-id': id }, body: '{}' });
    expect(kinds(get('/items/1', [['traceparent', `00-${zero}-${'1'.repeat(16)}-01`]]), answer(zero))).toContain('traceparent');
    expect(kinds(get('/items/1', [['traceparent', `ff-${'a'.repeat(32)}-${'1'.repeat(16)}-01`]]), answer('a'.repeat(32)))).toContain('traceparent');
    expect(kinds(get('/items/1', [['traceparent', `00-${'a'.repeat(32)}-${'1'.repeat(16)}-01`]]), answer('a'.repeat(32)))).toEqual([]);
    // The client's own X-Request-ID wins, all zeros or not.
    expect(kinds(get('/items/1', [['X-Request-ID', zero], ['traceparent', `00-${zero}-${'1'.repeat(16)}-01`]]), answer(zero))).toEqual([]);
  });

  it('parses raw responses: Content-Length, chunked, and a 100 Continue before the answer', () => {
    expect(parseResponse('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi')).toMatchObject({ status: 200, body: 'hi', complete: true });
    expect(parseResponse('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n1\r\n!\r\n0\r\n\r\n')).toMatchObject({ body: 'hi!', complete: true });
    expect(parseResponse('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n')).toMatchObject({ status: 404, complete: true });
  });

  it("listens to the real process for unhandled rejections and uncaught exceptions (jest's copy of process never hears them)", () => {
    const real = realProcess();
    expect(real).not.toBe(process);
    const before = [real.listenerCount('unhandledRejection'), real.listenerCount('uncaughtException')];
    const watch = processWatch();
    expect([real.listenerCount('unhandledRejection'), real.listenerCount('uncaughtException')]).toEqual([before[0] + 1, before[1] + 1]);
    watch.stop();
    expect([real.listenerCount('unhandledRejection'), real.listenerCount('uncaughtException')]).toEqual(before);
  });

  it('generates the same requests from the same seed (a printed seed replays a run)', () => {
    expect(fc.sample(fuzzRequest, { seed: 7, numRuns: 30 })).toEqual(fc.sample(fuzzRequest, { seed: 7, numRuns: 30 }));
    expect(fc.sample(rawRequest, { seed: 7, numRuns: 30 })).toEqual(fc.sample(rawRequest, { seed: 7, numRuns: 30 }));
  });

  describe('on a live target that exposes its errors', () => {
    let target: Target;
    beforeAll(async () => {
      target = await startTarget('memory', undefined, { errorNormalizer: { expose: true } });
    });
    afterAll(() => target.close());

    it("flags /boom's message (a file path, a module, an address) once errors are exposed", async () => {
      const fr = get('/boom');
      const out = await send(target, fr);
      expect(out.status).toBe(500);
      expect(checkOutcome(target, fr, out).map((v) => v.kind)).toContain('leak');
    });
  });
});
