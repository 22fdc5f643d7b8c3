import request from 'supertest';
import { createStack, requestId, requestLogger } from '../index';
import { eventually, newApp, recordingLogger } from './helpers/app';

function stackApp(loggerOptions: Parameters<typeof requestLogger>[0] = {}) {
  const { logger, lines } = recordingLogger();
  const stack = createStack({ logger, requestLogger: loggerOptions });
  const app = newApp();
  app.use(stack);
  app.get('/api/games', (req, res) => {
    req.context.user = { id: '42' };
    req.context.log.info('listing games');
    res.json([]);
  });
  app.post('/api/login', (_req, res) => {
    res.status(401).json({});
  });
  app.get('/health', (_req, res) => {
    res.send('ok');
  });
  app.get('/fail', () => {
    throw new Error('db down');
  });
  app.use(stack.errorHandler);
  return { app, lines };
}

const completed = (lines: Array<Record<string, any>>) => lines.filter((l) => l.message === 'Request completed');

describe('requestLogger', () => {
  it('writes one JSON line per request with the documented fields', async () => {
    const { app, lines } = stackApp();
    const res = await request(app).get('/api/games?limit=6&token=secret').set('User-Agent', 'Mozilla/5.0 (iPhone) Mobile').expect(200);
    await eventually(() => expect(completed(lines)).toHaveLength(1));
    const line = completed(lines)[0];
    expect(line).toMatchObject({
      level: 'info',
      message: 'Request completed',
      request_id: res.headers['x-request-id'],
      method: 'GET',
      path: '/api/games',
      status_code: 200,
      ip: expect.any(String),
      user_agent: 'Mozilla/5.0 (iPhone) Mobile',
      device: 'mobile',
      user_id: '42',
    });
    expect(typeof line.duration_ms).toBe('number');
    expect(line.timestamp).toMatch(/^\d{4}-\d\d-\d\dT/);
    // The query string can carry secrets, so it is not logged.
    expect(JSON.stringify(lines)).not.toContain('secret');
  });

  it('sets X-Response-Time', async () => {
    const { app } = stackApp();
    const res = await request(app).get('/api/games').expect(200);
    expect(res.headers['x-response-time']).toMatch(/^\d+\.\d\dms$/);
  });

  it('sets X-Response-Time on responses sent from a mounted sub-app and under another writeHead wrapper', async () => {
    const stack = createStack({ logger: recordingLogger().logger });
    const app = newApp();
    app.use(stack);
    const sub = newApp();
    sub.get('/ping', (_req, res) => res.send('pong'));
    app.use('/sub', sub);
    app.get('/wrapped', (_req, res) => {
      // What on-headers and similar libraries do: replace writeHead on the instance, call the old one.
      const previous = res.writeHead;
      res.writeHead = function (this: typeof res, ...args: unknown[]) {
        this.setHeader('X-Wrapped', 'yes');
        return (previous as (...a: unknown[]) => typeof res).apply(this, args);
      } as typeof res.writeHead;
      res.json({ ok: true });
    });
    const fromSub = await request(app).get('/sub/ping').expect(200, 'pong');
    expect(fromSub.headers['x-response-time']).toMatch(/^\d+\.\d\dms$/);
    const wrapped = await request(app).get('/wrapped').expect(200);
    expect(wrapped.headers['x-wrapped']).toBe('yes');
    expect(wrapped.headers['x-response-time']).toMatch(/^\d+\.\d\dms$/);
    // A response that does not pass the logger gets no X-Response-Time from the shared writeHead.
    const bare = newApp();
    bare.get('/', (_req, res) => res.send('x'));
    expect((await request(bare).get('/')).headers['x-response-time']).toBeUndefined();
    await stack.close();
  });

  it('logs 4xx at warn and 5xx at error', async () => {
    const { app, lines } = stackApp();
    await request(app).post('/api/login').expect(401);
    await request(app).get('/fail').expect(500);
    await eventually(() => expect(completed(lines)).toHaveLength(2));
    expect(completed(lines).map((l) => [l.status_code, l.level])).toEqual([
      [401, 'warn'],
      [500, 'error'],
    ]);
  });

  it("carries request_id and user_id on the handler's own log lines through req.context.log", async () => {
    const { app, lines } = stackApp();
    const res = await request(app).get('/api/games').expect(200);
    const own = lines.find((l) => l.message === 'listing games');
    expect(own).toMatchObject({ request_id: res.headers['x-request-id'], user_id: '42' });
  });

  it('skips listed paths', async () => {
    const { app, lines } = stackApp({ skip: ['/health'] });
    await request(app).get('/health').expect(200);
    await request(app).get('/api/games').expect(200);
    await eventually(() => expect(completed(lines)).toHaveLength(1));
    expect(completed(lines)[0].path).toBe('/api/games');
  });

  it("adds severity, httpRequest and the trace link in format 'gcp'", async () => {
    const { app, lines } = stackApp({ format: 'gcp', gcpProject: 'my-proj' });
    await request(app).get('/api/games').set('X-Cloud-Trace-Context', '105445aa7843bc8bf206b12000100000/1;o=1').expect(200);
    await eventually(() => expect(completed(lines)).toHaveLength(1));
    expect(completed(lines)[0]).toMatchObject({
      severity: 'INFO',
      'logging.googleapis.com/trace': 'projects/my-proj/traces/105445aa7843bc8bf206b12000100000',
      httpRequest: { requestMethod: 'GET', status: 200 },
    });
  });

  it('logs a request the client abandoned as aborted', async () => {
    const { logger, lines } = recordingLogger();
    const app = newApp();
    app.use(requestId(), requestLogger({ logger }));
    // The client hangs up once the request is in the handler: a loaded machine can take any fixed
    // delay before the server has even read the request.
    let entered!: () => void;
    const inHandler = new Promise<void>((resolve) => (entered = resolve));
    app.get('/slow', () => entered());
    const server = app.listen(0);
    const port = (server.address() as { port: number }).port;
    const http = await import('node:http');
    const req = http.get(`http://127.0.0.1:${port}/slow`);
    req.on('error', () => undefined);
    await inHandler;
    req.destroy();
    await eventually(() => expect(lines.find((l) => l.message === 'Request aborted')).toMatchObject({ aborted: true, level: 'warn' }));
    server.close();
  });
});

describe('requestLogger options', () => {
  it.each([
    [{ format: 'text' }, /^requestLogger\.format: expected one of 'json', 'gcp', got 'text'$/],
    [{ skip: '/health' }, /^requestLogger\.skip: expected paths like \['\/health'\] or a function \(req, res\) => boolean, got/],
    [{ responseTime: 'yes' }, /^requestLogger\.responseTime: expected true or false, got 'yes'$/],
    [{ gcpProject: 42 }, /^requestLogger\.gcpProject: expected a Google Cloud project id/],
    [{ responsetime: false }, /^requestLogger\.responsetime: unknown option; did you mean 'responseTime'\?/],
  ])('refuses %j at setup', (options, message) => {
    expect(() => requestLogger(options as never)).toThrow(message);
  });
});
