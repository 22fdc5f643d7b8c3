import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { Express, NextFunction, Request, RequestHandler, Response } from 'express';
import request from 'supertest';

// A good guest (#12): whatever the library does to the requests it serves, Express's and Node's
// shared request and response prototypes, and Object.prototype, stay exactly as they were, and an
// app in the same process that does not use the library sees stock Express.

/** Express as the run asks for it (EXPRESS_MAJOR=4 tests Express 4), loaded before the library. */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const express: typeof import('express') = process.env.EXPRESS_MAJOR === '4' ? require('express4') : require('express');
const MAJOR = process.env.EXPRESS_MAJOR === '4' ? 4 : 5;

// Identities of functions and objects held by prototype properties: the same function keeps its number.
const identities = new WeakMap<object, number>();
let nextIdentity = 0;

function describeValue(value: unknown): string {
  if ((typeof value === 'object' && value !== null) || typeof value === 'function') {
    let id = identities.get(value);
    if (id === undefined) identities.set(value, (id = nextIdentity++));
    return `#${id}${typeof value === 'function' ? ` ${value.name}()` : ''}`;
  }
  return typeof value === 'symbol' ? value.toString() : `${typeof value} ${String(value)}`;
}

/** Every own property (string and symbol keys, in order) of `obj` with its whole descriptor. */
function describeObject(obj: object): string[] {
  return Reflect.ownKeys(obj).map((key) => {
    const d = Object.getOwnPropertyDescriptor(obj, key) as PropertyDescriptor;
    const flags = `${d.enumerable ? 'e' : '-'}${d.configurable ? 'c' : '-'}${'value' in d ? (d.writable ? 'w' : '-') : ''}`;
    const body = 'value' in d ? `value ${describeValue(d.value)}` : `get ${describeValue(d.get)} set ${describeValue(d.set)}`;
    return `${String(key)} [${flags}] ${body}`;
  });
}

/** `start` and every prototype above it, by name. */
function chain(name: string, start: object): Array<[string, object]> {
  const out: Array<[string, object]> = [];
  for (let obj: object | null = start, depth = 0; obj !== null; obj = Object.getPrototypeOf(obj) as object | null, depth++) {
    out.push([depth === 0 ? name : `${name} ^${depth}`, obj]);
  }
  return out;
}

/** Express's and Node's request/response prototypes with their chains, Object.prototype, and the given apps' own request/response objects. */
function sharedObjects(apps: Express[] = []): Array<[string, object]> {
  return [
    ...chain('express.request', express.request),
    ...chain('express.response', express.response),
    ...chain('IncomingMessage.prototype', http.IncomingMessage.prototype),
    ...chain('ServerResponse.prototype', http.ServerResponse.prototype),
    ['Object.prototype', Object.prototype],
    ...apps.flatMap((app, i): Array<[string, object]> => [
      [`app${i}.request`, app.request],
      [`app${i}.response`, app.response],
    ]),
  ];
}

function snapshot(objects: Array<[string, object]>): Record<string, string[]> {
  return Object.fromEntries(objects.map(([name, obj]) => [name, describeObject(obj)]));
}

// Taken before the library is loaded, so a change made on import would show as well.
const PRISTINE = snapshot(sharedObjects());
const STOCK_HAS_SIGNAL = 'signal' in express.request;
const STOCK_QUERY = Object.getOwnPropertyDescriptor(express.request, 'query');

/* eslint-disable @typescript-eslint/no-require-imports -- loaded after the pristine snapshot */
const P = require('../index') as typeof import('../index');
const { closeAll, eventually, recordingLogger, redisUrl } = require('./helpers/app') as typeof import('./helpers/app');
/* eslint-enable @typescript-eslint/no-require-imports */

type Stack = import('../index').Stack;
type StackConfig = import('../index').StackConfig;

const stacks: Stack[] = [];
afterEach(() => closeAll(stacks));

/** Properties on a shared prototype that the library could have left there, whatever the snapshot says. */
function perimeterTraces(obj: object): string[] {
  return Reflect.ownKeys(obj)
    .filter((key) =>
      typeof key === 'symbol' ? /perimeter/i.test(Symbol.keyFor(key) ?? key.description ?? '') : ['id', 'context'].includes(key),
    )
    .map(String);
}

/** Node's active handles and requests (timers, sockets…) by kind. */
function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) counts[kind] = (counts[kind] ?? 0) + 1;
  return counts;
}

/** The kinds `now` has more of than `baseline`, with how many more. */
function moreThan(now: Record<string, number>, baseline: Record<string, number>): Record<string, number> {
  const extra: Record<string, number> = {};
  for (const [kind, n] of Object.entries(now)) if (n > (baseline[kind] ?? 0)) extra[kind] = n - (baseline[kind] ?? 0);
  return extra;
}

const API_KEY = 'sk-good-guest-0123456789';

/** Every middleware of the stack on: the shared objects must come out of it untouched. */
function fullConfig(logger: import('../index').Logger): StackConfig {
  return {
    logger,
    cors: { origin: ['https://app.example.com'] },
    ipFilter: { deny: ['10.9.0.0/16'] },
    sizeLimit: { max: '10kb' },
    timeout: { ms: '5s' },
    auth: { apiKeys: [{ key: API_KEY, name: 'guest', tier: 'pro', userId: 'u1' }], required: false },
    tenant: { from: ['header'], tenants: { acme: { plan: 'pro' } }, required: false },
    rateLimit: { limit: 10_000, window: '1m' },
    idempotency: true,
    credits: { required: false, initialBalance: 1_000_000 },
    sanitize: { xss: 'strip', nosql: 'strip' },
    auditLog: { sink: 'logger' },
    featureFlags: { flags: { beta: { percentage: 50 }, 'new-ui': { expose: true } } },
    circuitBreaker: {},
    cache: { ttl: 60 },
  };
}

interface Seen {
  id: string;
  contextId: string;
  signal: boolean;
  query: unknown;
  ownQuery: boolean;
}

function seen(req: Request): Seen {
  return {
    id: req.id,
    contextId: req.context.requestId,
    signal: req.signal instanceof AbortSignal,
    query: req.query,
    ownQuery: Object.prototype.hasOwnProperty.call(req, 'query'),
  };
}

function fullStackApp(): { app: Express; stack: Stack; lines: Array<Record<string, any>> } {
  const { logger, lines } = recordingLogger('info');
  const stack = P.createStack(fullConfig(logger));
  stacks.push(stack);
  const app = express();
  app.use(stack);
  app.get('/items/:id', P.sanitize({ sources: ['params'] }), (req, res) => {
    res.json(seen(req));
  });
  app.post('/items', (req, res) => {
    res.status(201).json({ body: req.body as unknown, id: req.id });
  });
  // Never answers: the route-level timeout does (504), and every late write is dropped.
  app.get('/slow', P.timeout({ ms: 30 }), (req, res) => {
    req.signal.addEventListener('abort', () => res.json({ late: true }));
  });
  app.get('/fail', (_req, _res, next) => next(new Error('boom')));
  app.use(stack.errorHandler);
  return { app, stack, lines };
}

/** Many requests through every middleware: hits and misses, attacks stripped, auth, tenant, errors, timeouts. */
async function exercise(app: Express): Promise<void> {
  for (let round = 0; round < 4; round++) {
    const page = await request(app).get('/items/1?q=%3Cscript%3Ealert(1)%3C%2Fscript%3Eshoes&page=2').set('Origin', 'https://app.example.com').expect(200);
    expect(page.body).toMatchObject({ id: page.headers['x-request-id'], contextId: page.headers['x-request-id'], signal: true, ownQuery: true });
    expect(page.body.query).toEqual({ q: 'shoes', page: '2' });
    expect(page.headers['x-response-time']).toMatch(/^\d+\.\d\dms$/);
    await request(app).get('/items/2').set('X-API-Key', API_KEY).set('X-Tenant-ID', 'acme').expect(200);
    const cached = await request(app).get('/items/3').expect(200);
    await request(app).get('/items/3').set('If-None-Match', String(cached.headers.etag)).expect(304);
    const created = await request(app).post('/items').send({ name: 'x', $where: 'sleep(1)' }).expect(201);
    expect(created.body).toEqual({ body: { name: 'x' }, id: created.headers['x-request-id'] });
    const key = `item-${round}`;
    const once = await request(app).post('/items').set('X-API-Key', API_KEY).set('Idempotency-Key', key).send({ name: 'y' }).expect(201);
    const replayed = await request(app).post('/items').set('X-API-Key', API_KEY).set('Idempotency-Key', key).send({ name: 'y' }).expect(201);
    expect(replayed.body).toEqual(once.body);
    await request(app).get('/health').expect(200);
    await request(app).post('/items').set('Content-Type', 'application/json').send('{"broken":').expect(400);
    await request(app).post('/items').send({ big: 'x'.repeat(20_000) }).expect(413);
    await request(app).get('/slow').expect(504);
    await request(app).get('/fail').expect(500);
    await request(app).get('/nowhere').expect(404);
    await request(app).get('/items/1').set('X-API-Key', 'sk-wrong').expect(401);
  }
}

/** What a handler of an app without the library sees. */
function stockProbe(req: Request, res: Response): void {
  let assignable: boolean;
  try {
    (req as { query: unknown }).query = { replaced: true };
    assignable = true;
  } catch {
    assignable = false;
  }
  res.json({
    id: 'id' in req,
    context: 'context' in req,
    signal: 'signal' in req,
    ownQuery: MAJOR === 5 ? Object.prototype.hasOwnProperty.call(req, 'query') : undefined,
    assignable,
  });
}

describe(`a good guest in the process (#12, Express ${MAJOR})`, () => {
  it('leaves the request and response prototypes and Object.prototype exactly as they were after many requests through every middleware (#12)', async () => {
    const { app } = fullStackApp();
    const before = snapshot(sharedObjects([app]));
    expect(snapshot(sharedObjects())).toEqual(PRISTINE);
    await exercise(app);
    expect(snapshot(sharedObjects([app]))).toEqual(before);
    expect(snapshot(sharedObjects())).toEqual(PRISTINE);
    for (const [name, obj] of sharedObjects([app])) expect([name, perimeterTraces(obj)]).toEqual([name, []]);
  });

  it('leaves them untouched when each middleware is used alone, and still sets req.id, req.context and req.signal (#12)', async () => {
    const app = express();
    const before = snapshot(sharedObjects([app]));
    app.use(P.requestId(), P.requestLogger({ logger: recordingLogger().logger }), P.timeout({ ms: '5s' }), P.sanitize(), P.cache({ ttl: 60 }));
    app.get('/alone', (req, res) => res.json(seen(req)));
    app.use(P.errorNormalizer());
    const res = await request(app).get('/alone?q=%3Cscript%3Ex%3C%2Fscript%3Ehi').expect(200);
    expect(res.body).toEqual({ id: res.headers['x-request-id'], contextId: res.headers['x-request-id'], signal: true, query: { q: 'hi' }, ownQuery: true });
    expect(res.headers['x-response-time']).toMatch(/^\d+\.\d\dms$/);
    expect(snapshot(sharedObjects([app]))).toEqual(before);
    expect(snapshot(sharedObjects())).toEqual(PRISTINE);
  });

  it('shows stock Express to another app in the process: no id, context or signal, req.query still a getter (#12)', async () => {
    const { app } = fullStackApp();
    await exercise(app);
    const plain = express();
    plain.get('/', stockProbe);
    const res = await request(plain).get('/?a=1').expect(200);
    expect(res.headers['x-response-time']).toBeUndefined();
    expect(res.headers['x-request-id']).toBeUndefined();
    // Express 4 parses the query into a plain own property; Express 5 keeps a getter that cannot be assigned.
    expect(res.body).toEqual({ id: false, context: false, signal: STOCK_HAS_SIGNAL, ownQuery: MAJOR === 5 ? false : undefined, assignable: MAJOR === 4 });
    expect(Object.getOwnPropertyDescriptor(express.request, 'query')).toEqual(STOCK_QUERY);
  });

  it('keeps the per-request state on the request: own id, context and signal that user code can assign (#12)', async () => {
    const { logger, lines } = recordingLogger('info');
    const stack = P.createStack({ logger, rateLimit: false });
    stacks.push(stack);
    const app = express();
    app.use(stack);
    app.get('/own', (req, res) => {
      const own = (key: string) => Object.prototype.hasOwnProperty.call(req, key);
      const before = { id: own('id'), context: own('context'), signal: own('signal') };
      const signal = new AbortController().signal;
      req.id = 'renamed';
      (req as { signal: AbortSignal }).signal = signal;
      res.json({ before, id: req.id, signalReplaced: req.signal === signal, registered: Object.getOwnPropertySymbols(req).filter((s) => Symbol.keyFor(s) !== undefined).length });
    });
    const res = await request(app).get('/own').expect(200);
    expect(res.body).toEqual({ before: { id: true, context: true, signal: true }, id: 'renamed', signalReplaced: true, registered: 0 });
    await eventually(() => expect(lines.find((l) => l.message === 'Request completed')).toMatchObject({ request_id: 'renamed' }));
  });

  it('wires req.signal even where a prototype of the request has a signal of its own (#12)', async () => {
    const { logger } = recordingLogger();
    const stack = P.createStack({ logger, rateLimit: false, timeout: { ms: 30 } });
    stacks.push(stack);
    const app = express();
    // A throwaway prototype for this app only, standing in for a future Node or Express `req.signal`.
    const theirs = new AbortController().signal;
    app.request = Object.create(app.request, { signal: { get: () => theirs, enumerable: false, configurable: true } }) as typeof app.request;
    app.use(stack);
    let reason: unknown;
    let ours: AbortSignal | undefined;
    app.get('/wait', (req) => {
      ours = req.signal;
      req.signal.addEventListener('abort', () => (reason = req.signal.reason));
    });
    app.use(stack.errorHandler);
    await request(app).get('/wait').expect(504);
    await eventually(() => expect(reason).toMatchObject({ code: 'GATEWAY_TIMEOUT' }));
    expect(ours).not.toBe(theirs);
    expect(theirs.aborted).toBe(false);
    // A request that timeout() did not see keeps what its prototype gives.
    const other = express();
    other.request = Object.create(other.request, { signal: { get: () => theirs, enumerable: false, configurable: true } }) as typeof other.request;
    other.get('/', (req, res) => res.json({ theirs: req.signal === theirs }));
    await request(other).get('/').expect(200, { theirs: true });
  });

  it('leaves nothing behind after stack.close(): prototypes, process listeners, timers and sockets (#12)', async () => {
    const listeners = () => process.eventNames().map((e) => `${String(e)}:${process.listenerCount(e)}`);
    const baseline = { listeners: listeners(), resources: activeResources() };
    const { app, stack } = fullStackApp();
    const before = snapshot(sharedObjects([app]));
    await exercise(app);
    await stack.close();
    expect(snapshot(sharedObjects([app]))).toEqual(before);
    expect(snapshot(sharedObjects())).toEqual(PRISTINE);
    expect(listeners()).toEqual(baseline.listeners);
    // The requests' sockets and the stack's timers wind down once it is closed.
    await eventually(() => expect(moreThan(activeResources(), baseline.resources)).toEqual({}), 5000);
  });

  (redisUrl ? it : it.skip)('closes its Redis connections and leaves the prototypes untouched on Redis too (#12)', async () => {
    const baseline = activeResources();
    const { logger } = recordingLogger('info');
    const stack = P.createStack({ ...fullConfig(logger), redis: redisUrl, keyPrefix: `guest:${process.pid}:${Date.now()}:` });
    const app = express();
    const before = snapshot(sharedObjects([app]));
    app.use(stack);
    app.get('/items/:id', (req, res) => res.json(seen(req)));
    app.use(stack.errorHandler);
    for (let i = 0; i < 10; i++) await request(app).get(`/items/${i % 3}?q=%3Cscript%3Ex%3C%2Fscript%3Ey`).expect(200, /"q":"y"/);
    await stack.close();
    expect(snapshot(sharedObjects([app]))).toEqual(before);
    expect(snapshot(sharedObjects())).toEqual(PRISTINE);
    await eventually(() => expect(moreThan(activeResources(), baseline)).toEqual({}), 5000);
  });
});

describe('two copies of the library in one process (#12)', () => {
  type Lib = typeof import('../index');
  function load(): Lib {
    let lib: Lib | undefined;
    jest.isolateModules(() => {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      lib = require('../index') as Lib;
    });
    return lib as Lib;
  }

  it('keep their state apart: each stack logs its own requests, and a route-level factory of one works behind the other (#12)', async () => {
    const a = load();
    const b = load();
    expect(a.createStack).not.toBe(b.createStack);
    const logA = recordingLogger('info');
    const logB = recordingLogger('info');
    const stackA = a.createStack({ logger: logA.logger, rateLimit: false });
    const stackB = b.createStack({ logger: logB.logger, rateLimit: false });
    stacks.push(stackA, stackB);
    const appA = express();
    const appB = express();
    const before = snapshot(sharedObjects([appA, appB]));

    appA.use(stackA);
    // B's own limiter on a route behind A's stack: it counts on its own, and its 429 carries A's request id.
    appA.get('/limited', b.rateLimit({ limit: 1, window: '1m' }) as RequestHandler, (req, res) => res.json(seen(req)));
    appA.get('/items/:id', (req, res) => res.json(seen(req)));
    appA.use(stackA.errorHandler);
    appB.use(stackB);
    appB.get('/items/:id', b.timeout({ ms: '5s' }) as RequestHandler, (req: Request, res: Response, _next: NextFunction) => res.json(seen(req)));
    appB.use(stackB.errorHandler);

    const answers = await Promise.all(
      Array.from({ length: 10 }, (_, i) => request(i % 2 === 0 ? appA : appB).get(`/items/${i}?q=%3Cscript%3Ex%3C%2Fscript%3Ey`).expect(200)),
    );
    for (const res of answers) {
      expect(res.body).toMatchObject({ id: res.headers['x-request-id'], contextId: res.headers['x-request-id'], signal: true, query: { q: 'y' } });
    }
    const idsA = answers.filter((_, i) => i % 2 === 0).map((r) => r.headers['x-request-id']);
    const idsB = answers.filter((_, i) => i % 2 === 1).map((r) => r.headers['x-request-id']);
    await eventually(() => {
      expect(logA.lines.filter((l) => l.message === 'Request completed').map((l) => l.request_id).sort()).toEqual([...idsA].sort());
      expect(logB.lines.filter((l) => l.message === 'Request completed').map((l) => l.request_id).sort()).toEqual([...idsB].sort());
    });

    const first = await request(appA).get('/limited').expect(200);
    expect(first.body.id).toBe(first.headers['x-request-id']);
    const limited = await request(appA).get('/limited').expect(429);
    expect(limited.body.error).toMatchObject({ code: 'RATE_LIMIT_EXCEEDED', request_id: limited.headers['x-request-id'] });

    expect(snapshot(sharedObjects([appA, appB]))).toEqual(before);
    expect(snapshot(sharedObjects())).toEqual(PRISTINE);
  });

  it('answer a request the HTTP parser refused once, whole, when both handle the server\'s client errors (#12)', async () => {
    const a = load();
    const b = load();
    const server = http.createServer(express());
    a.handleClientErrors(server, { logger: recordingLogger().logger, generator: () => 'from-a' });
    b.handleClientErrors(server, { logger: recordingLogger().logger, generator: () => 'from-b' });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const socket = net.connect((server.address() as AddressInfo).port, '127.0.0.1');
      let data = '';
      socket.on('data', (c: Buffer) => (data += c.toString('latin1')));
      socket.write('HELLO\r\n\r\n');
      await new Promise((r) => socket.once('close', r));
      expect(data.match(/HTTP\/1\.1 /g)).toHaveLength(1);
      const body = JSON.parse(data.slice(data.indexOf('\r\n\r\n') + 4)) as { error: Record<string, unknown> };
      expect(body.error).toEqual({ code: 'BAD_REQUEST', message: 'The request could not be parsed as HTTP.', request_id: 'from-a' });
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});
