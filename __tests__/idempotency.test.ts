import { request as httpRequest, ServerResponse, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Express, NextFunction, Request, Response } from 'express';
import request from 'supertest';
import { ConfigError, createStack, credits, idempotency, type IdempotencyOptions, type Stack, type StackConfig } from '../index';
import { MemoryStores, type Stores } from '../lib/stores';
import type { IdempotencyStore } from '../lib/stores/idempotency-store';
import { isValidKey } from '../lib/idempotency/key';
import { canonicalJson, fingerprintOf } from '../lib/idempotency/fingerprint';
import { closeAll, eventually, loadExpress, newApp, recordingLogger } from './helpers/app';

// Neighbours that keep their own per-client state stay out, so each test sees idempotency alone.
const QUIET: StackConfig = { rateLimit: false, ipFilter: false, cache: false, auditLog: false, requestLogger: false, metrics: false };
const ALICE = 'key-alice';
const BOB = 'key-bob';
const AUTH = {
  required: false,
  apiKeys: [
    { key: ALICE, name: 'alice', userId: 'alice' },
    { key: BOB, name: 'bob', userId: 'bob' },
  ],
};

const stacks: Stack[] = [];
const servers: Server[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
  await closeAll(stacks);
});

/** A stack with idempotency (and `config`), the routes, then the error handler. */
function build(options: IdempotencyOptions | true, routes: (app: Express, stack: Stack) => void, config: StackConfig = {}) {
  const { logger, lines } = recordingLogger();
  const stack = createStack({ logger, ...QUIET, auth: AUTH, idempotency: options, ...config });
  stacks.push(stack);
  const app = newApp();
  app.use(stack);
  routes(app, stack);
  app.use(stack.errorHandler);
  return { app, stack, lines };
}

/** A promise with its resolve, for handlers that wait on the test. */
function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** A counting handler answering 201 with the run number and the body it saw. */
function counted() {
  const counter = { runs: 0 };
  const handler = (req: Request, res: Response): void => {
    counter.runs++;
    res.status(201).json({ run: counter.runs, body: req.body });
  };
  return { counter, handler };
}

function listen(app: Express): number {
  const server = app.listen(0);
  servers.push(server);
  return (server.address() as AddressInfo).port;
}

/** Sends a POST and cuts the connection once `started` resolves (the handler is running). */
function postAndDisconnect(port: number, path: string, key: string, started: Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    const req = httpRequest({ port, path, method: 'POST', headers: { 'Idempotency-Key': key, 'Content-Type': 'application/json' } });
    req.on('error', () => resolve());
    req.on('close', () => resolve());
    req.end('{"amount":5}');
    void started.then(() => req.destroy());
  });
}

describe('idempotency: the first request runs, a retry is replayed', () => {
  it('replays status, body and the headers the handler set, with Idempotent-Replayed: true, without running the handler again', async () => {
    let runs = 0;
    const { app } = build(true, (a) => {
      a.post('/payments', (req, res) => {
        runs++;
        res.setHeader('Location', '/payments/7');
        res.status(201).json({ id: 7, amount: req.body.amount });
      });
    });
    const first = await request(app).post('/payments').set('Idempotency-Key', 'pay-1').send({ amount: 5 });
    const retry = await request(app).post('/payments').set('Idempotency-Key', 'pay-1').send({ amount: 5 });
    expect(first.status).toBe(201);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    expect(retry.status).toBe(201);
    expect(retry.body).toEqual({ id: 7, amount: 5 });
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(retry.headers.location).toBe('/payments/7');
    expect(retry.headers['content-type']).toBe(first.headers['content-type']);
    expect(retry.headers['content-length']).toBe(first.headers['content-length']);
    // The retry is a request of its own: its own id, and the stack's headers set afresh.
    expect(retry.headers['x-request-id']).not.toBe(first.headers['x-request-id']);
    expect(retry.headers['x-content-type-options']).toBe('nosniff');
    expect(runs).toBe(1);
  });

  it('never replays Set-Cookie', async () => {
    const { app } = build(true, (a) => {
      a.post('/login', (_req, res) => {
        res.cookie('session', 'secret-session', { httpOnly: true });
        res.status(200).json({ ok: true });
      });
    });
    const first = await request(app).post('/login').set('Idempotency-Key', 'login-1').send({});
    expect(first.headers['set-cookie']).toEqual([expect.stringContaining('session=secret-session')]);
    const retry = await request(app).post('/login').set('Idempotency-Key', 'login-1').send({});
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(retry.headers['set-cookie']).toBeUndefined();
    expect(retry.body).toEqual({ ok: true });
  });

  it('recognises the same JSON body sent again with other key order and spacing', async () => {
    const { counter, handler } = counted();
    const { app } = build(true, (a) => a.post('/orders', handler));
    await request(app).post('/orders').set('Idempotency-Key', 'o-1').set('Content-Type', 'application/json').send('{"item":"book","qty":2,"meta":{"a":1,"b":[1,2]}}');
    const retry = await request(app)
      .post('/orders')
      .set('Idempotency-Key', 'o-1')
      .set('Content-Type', 'application/json')
      .send('{ "meta": { "b": [1, 2], "a": 1 }, "qty": 2, "item": "book" }');
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(counter.runs).toBe(1);
  });

  it('replays a streamed response (res.write chunks, then res.end) byte for byte', async () => {
    let runs = 0;
    const { app } = build(true, (a) => {
      a.post('/export', (_req, res) => {
        runs++;
        res.status(202).type('text/plain');
        res.write('part one;');
        res.write(Buffer.from('part two;'));
        res.end('end');
      });
    });
    const first = await request(app).post('/export').set('Idempotency-Key', 'exp-1');
    const retry = await request(app).post('/export').set('Idempotency-Key', 'exp-1');
    expect(first.text).toBe('part one;part two;end');
    expect(retry.status).toBe(202);
    expect(retry.text).toBe('part one;part two;end');
    expect(retry.headers['content-length']).toBe('21');
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(1);
  });

  it('leaves requests without the header, and methods not listed, alone', async () => {
    const { counter, handler } = counted();
    const { app } = build(true, (a) => {
      a.post('/orders', handler);
      a.put('/orders', handler);
    });
    await request(app).post('/orders').send({ a: 1 });
    await request(app).post('/orders').send({ a: 1 });
    await request(app).put('/orders').set('Idempotency-Key', 'put-1').send({ a: 1 });
    const again = await request(app).put('/orders').set('Idempotency-Key', 'put-1').send({ a: 1 });
    expect(again.headers['idempotent-replayed']).toBeUndefined();
    expect(counter.runs).toBe(4);
  });

  it('reads the key from the configured header and applies to the configured methods', async () => {
    const { counter, handler } = counted();
    const { app } = build({ header: 'X-Request-Key', methods: ['PUT'] }, (a) => a.put('/things/1', handler));
    await request(app).put('/things/1').set('X-Request-Key', 'put-1').send({ a: 1 });
    const retry = await request(app).put('/things/1').set('X-Request-Key', 'put-1').send({ a: 1 });
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(counter.runs).toBe(1);
  });
});

describe('idempotency: the key', () => {
  it.each([
    ['empty', ''],
    ['a space inside', 'order 1'],
    ['a tab inside', 'order\t1'],
    ['256 characters', 'k'.repeat(256)],
    ['a character above ASCII', 'clé'],
  ])('refuses a key with %s: 400 IDEMPOTENCY_KEY_INVALID', async (_name, key) => {
    const { counter, handler } = counted();
    const { app } = build(true, (a) => a.post('/orders', handler));
    const res = await request(app).post('/orders').set('Idempotency-Key', key).send({});
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('IDEMPOTENCY_KEY_INVALID');
    expect(res.body.error.request_id).toBe(res.headers['x-request-id']);
    expect(counter.runs).toBe(0);
  });

  it.each([
    ['255 characters', 'k'.repeat(255)],
    ['one character', '!'],
    ['a UUID', '8e03978e-40d5-43e8-bc93-6894a57f9324'],
    ['a quoted string (the IETF draft form)', '"8e03978e-40d5-43e8-bc93-6894a57f9324"'],
    ['every punctuation mark', '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~'],
  ])('accepts a key of %s', async (_name, key) => {
    const { counter, handler } = counted();
    const { app } = build(true, (a) => a.post('/orders', handler));
    expect((await request(app).post('/orders').set('Idempotency-Key', key).send({})).status).toBe(201);
    const retry = await request(app).post('/orders').set('Idempotency-Key', key).send({});
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(counter.runs).toBe(1);
  });

  it.each([
    ['a DEL character', 'key\x7f', false],
    ['a NUL character', 'key\x00', false],
    ['a line feed', 'key\n', false],
    ['only visible ASCII', '~!key-1_', true],
  ])('tells a key with %s apart (HTTP clients refuse to send the invalid ones)', (_name, key, valid) => {
    expect(isValidKey(key)).toBe(valid);
  });

  it('refuses two keys in one request (the header sent twice)', async () => {
    const { counter, handler } = counted();
    const { app } = build(true, (a) => a.post('/orders', handler));
    const res = await request(app).post('/orders').set('Idempotency-Key', ['a-1', 'a-2'] as unknown as string).send({});
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('IDEMPOTENCY_KEY_INVALID');
    expect(counter.runs).toBe(0);
  });

  it('with required: true refuses a listed method without the header (400 IDEMPOTENCY_KEY_REQUIRED), and nothing else', async () => {
    const { counter, handler } = counted();
    const { app } = build({ required: true }, (a) => {
      a.post('/orders', handler);
      a.get('/orders', (_req, res) => {
        res.json([]);
      });
    });
    const res = await request(app).post('/orders').send({ a: 1 });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('IDEMPOTENCY_KEY_REQUIRED');
    expect(res.body.error.message).toContain('Idempotency-Key');
    expect((await request(app).get('/orders')).status).toBe(200);
    expect((await request(app).post('/orders').set('Idempotency-Key', 'o-1').send({ a: 1 })).status).toBe(201);
    expect(counter.runs).toBe(1);
  });

  it.each([
    ['another body', '/orders', 'post', { item: 'pen' }],
    ['another path', '/orders/other', 'post', { item: 'book' }],
    ['another method', '/orders', 'patch', { item: 'book' }],
    ['another query', '/orders?currency=eur', 'post', { item: 'book' }],
  ] as const)('answers the same key with %s 422 IDEMPOTENCY_KEY_MISMATCH without running the handler', async (_name, path, method, body) => {
    const { counter, handler } = counted();
    const { app } = build(true, (a) => {
      a.post('/orders', handler);
      a.post('/orders/other', handler);
      a.patch('/orders', handler);
    });
    await request(app).post('/orders').set('Idempotency-Key', 'o-1').send({ item: 'book' });
    const res = await request(app)[method](path).set('Idempotency-Key', 'o-1').send(body);
    expect(res.status).toBe(422);
    expect(res.body.error.code).toBe('IDEMPOTENCY_KEY_MISMATCH');
    expect(res.headers['idempotent-replayed']).toBeUndefined();
    expect(counter.runs).toBe(1);
  });

  it('isolates callers: two API keys sending the same key each run once and each get their own response', async () => {
    let runs = 0;
    const { app } = build(true, (a) => {
      a.post('/payments', (req, res) => {
        runs++;
        res.status(201).json({ payer: req.apiKey?.name, run: runs });
      });
    });
    const send = (apiKey: string) => request(app).post('/payments').set('X-API-Key', apiKey).set('Idempotency-Key', 'shared-key').send({ amount: 5 });
    expect((await send(ALICE)).body).toEqual({ payer: 'alice', run: 1 });
    expect((await send(BOB)).body).toEqual({ payer: 'bob', run: 2 });
    const aliceAgain = await send(ALICE);
    const bobAgain = await send(BOB);
    expect(aliceAgain.body).toEqual({ payer: 'alice', run: 1 });
    expect(bobAgain.body).toEqual({ payer: 'bob', run: 2 });
    expect([aliceAgain.headers['idempotent-replayed'], bobAgain.headers['idempotent-replayed']]).toEqual(['true', 'true']);
    expect(runs).toBe(2);
  });
});

describe('idempotency: the fingerprint', () => {
  const req = (body: unknown, headers: Record<string, string> = {}) =>
    ({ method: 'POST', originalUrl: '/orders', url: '/orders', headers: { 'content-type': 'application/json', ...headers }, body }) as unknown as Request;

  it('writes equal values as equal text whatever their key order, index keys first as JavaScript keeps them', () => {
    expect(canonicalJson({ b: 1, 10: 2, 9: 3, a: [{ d: 1, c: undefined, e: new Date(0) }] })).toBe('{"9":3,"10":2,"a":[{"d":1,"e":"1970-01-01T00:00:00.000Z"}],"b":1}');
    expect(canonicalJson({ z: { y: 1, x: 2 }, a: 0 })).toBe(canonicalJson({ a: 0, z: { x: 2, y: 1 } }));
    expect(canonicalJson([1, 'two', null, true])).toBe('[1,"two",null,true]');
  });

  it('tells bodies apart by any value, by the URL and by the method', () => {
    const base = fingerprintOf(req({ amount: 5 }), undefined);
    expect(fingerprintOf(req({ amount: 5 }), undefined)).toBe(base);
    expect(fingerprintOf(req({ amount: 6 }), undefined)).not.toBe(base);
    expect(fingerprintOf(req({ amount: '5' }), undefined)).not.toBe(base);
    expect(fingerprintOf({ ...req({ amount: 5 }), originalUrl: '/orders?x=1' } as Request, undefined)).not.toBe(base);
    expect(fingerprintOf({ ...req({ amount: 5 }), method: 'PATCH' } as Request, undefined)).not.toBe(base);
  });

  it('stands in for a body nested too deep to serialise with its type and length, in bounded time, without throwing', () => {
    let deep: unknown = 1;
    for (let i = 0; i < 200_000; i++) deep = [deep];
    expect(canonicalJson(deep)).toBeUndefined();
    const a = fingerprintOf(req(deep, { 'content-length': '400001' }), undefined);
    expect(fingerprintOf(req([[[1]]], { 'content-length': '400001' }), undefined)).not.toBe(a);
    expect(fingerprintOf(req(deep, { 'content-length': '400001' }), undefined)).toBe(a);
    expect(fingerprintOf(req(deep, { 'content-length': '400003' }), undefined)).not.toBe(a);
  });

  it('uses the fingerprint option in place of the body', () => {
    const byHeader = (r: Request) => r.headers['x-content-sha256'];
    const a = fingerprintOf(req({ amount: 5 }, { 'x-content-sha256': 'abc' }), byHeader);
    expect(fingerprintOf(req({ amount: 999 }, { 'x-content-sha256': 'abc' }), byHeader)).toBe(a);
    expect(fingerprintOf(req({ amount: 5 }, { 'x-content-sha256': 'def' }), byHeader)).not.toBe(a);
  });
});

describe('idempotency: while the first request runs', () => {
  it('answers a repeat 409 IDEMPOTENCY_IN_PROGRESS with Retry-After, then replays once the first completed', async () => {
    const gate = deferred();
    const started = deferred();
    let runs = 0;
    const { app } = build(true, (a) => {
      a.post('/payments', async (_req, res) => {
        runs++;
        started.resolve();
        await gate.promise;
        res.status(201).json({ run: runs });
      });
    });
    const first = request(app).post('/payments').set('Idempotency-Key', 'p-1').send({ amount: 5 }).then((r) => r);
    await started.promise;
    const during = await request(app).post('/payments').set('Idempotency-Key', 'p-1').send({ amount: 5 });
    expect(during.status).toBe(409);
    expect(during.body.error.code).toBe('IDEMPOTENCY_IN_PROGRESS');
    expect(during.headers['retry-after']).toBe('1');
    gate.resolve();
    expect((await first).status).toBe(201);
    const after = await request(app).post('/payments').set('Idempotency-Key', 'p-1').send({ amount: 5 });
    expect(after.headers['idempotent-replayed']).toBe('true');
    expect(after.body).toEqual({ run: 1 });
    expect(runs).toBe(1);
  });

  it('runs the handler once for ten concurrent duplicates; the others get 409 or the replay', async () => {
    let runs = 0;
    const { app } = build(true, (a) => {
      a.post('/payments', (_req, res) => {
        runs++;
        setTimeout(() => res.status(201).json({ run: runs }), 20);
      });
    });
    const port = listen(app);
    const results = await Promise.all(
      Array.from({ length: 10 }, () => request(`http://127.0.0.1:${port}`).post('/payments').set('Idempotency-Key', 'burst-1').send({ amount: 5 })),
    );
    expect(runs).toBe(1);
    const fresh = results.filter((r) => r.status === 201 && r.headers['idempotent-replayed'] === undefined);
    expect(fresh).toHaveLength(1);
    for (const r of results) {
      if (r === fresh[0]) continue;
      if (r.status === 409) expect(r.body.error.code).toBe('IDEMPOTENCY_IN_PROGRESS');
      else expect([r.status, r.headers['idempotent-replayed'], r.body]).toEqual([201, 'true', { run: 1 }]);
    }
  });
});

describe('idempotency: what is kept and what frees the key', () => {
  it('does not keep a 500: the retry runs the handler again', async () => {
    let runs = 0;
    const { app } = build(true, (a) => {
      a.post('/payments', (_req, res) => {
        runs++;
        if (runs === 1) res.status(500).json({ failed: true });
        else res.status(201).json({ run: runs });
      });
    });
    expect((await request(app).post('/payments').set('Idempotency-Key', 'p-500').send({ amount: 5 })).status).toBe(500);
    const retry = await request(app).post('/payments').set('Idempotency-Key', 'p-500').send({ amount: 5 });
    expect(retry.status).toBe(201);
    expect(retry.headers['idempotent-replayed']).toBeUndefined();
    expect(runs).toBe(2);
  });

  it('frees the key when the handler throws (the error handler answers 500)', async () => {
    let runs = 0;
    const { app } = build(true, (a) => {
      a.post('/payments', (_req, res) => {
        runs++;
        if (runs === 1) throw new Error('database down');
        res.status(201).json({ run: runs });
      });
    });
    const first = await request(app).post('/payments').set('Idempotency-Key', 'p-throw').send({});
    expect(first.status).toBe(500);
    expect(first.body.error.code).toBe('INTERNAL_ERROR');
    expect((await request(app).post('/payments').set('Idempotency-Key', 'p-throw').send({})).status).toBe(201);
    expect(runs).toBe(2);
  });

  it('keeps a 4xx the handler decided (422) and replays it', async () => {
    let runs = 0;
    const { app } = build(true, (a) => {
      a.post('/payments', (_req, res) => {
        runs++;
        res.status(422).json({ error: { code: 'VALIDATION_ERROR', message: 'amount must be positive' } });
      });
    });
    await request(app).post('/payments').set('Idempotency-Key', 'p-422').send({ amount: -1 });
    const retry = await request(app).post('/payments').set('Idempotency-Key', 'p-422').send({ amount: -1 });
    expect(retry.status).toBe(422);
    expect(retry.body.error.message).toBe('amount must be positive');
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(1);
  });

  it.each([401, 402, 429])('does not keep a %i (a condition the caller can clear without changing the request)', async (status) => {
    let runs = 0;
    const { app } = build(true, (a) => {
      a.post('/payments', (_req, res) => {
        runs++;
        res.status(runs === 1 ? status : 201).json({ run: runs });
      });
    });
    expect((await request(app).post('/payments').set('Idempotency-Key', `p-${status}`).send({})).status).toBe(status);
    expect((await request(app).post('/payments').set('Idempotency-Key', `p-${status}`).send({})).status).toBe(201);
    expect(runs).toBe(2);
  });

  it('keeps a response larger than maxBodySize as not replayable: the retry gets 422 IDEMPOTENCY_REPLAY_UNAVAILABLE and nothing runs twice', async () => {
    let runs = 0;
    const big = 'x'.repeat(4096);
    const { app } = build({ maxBodySize: '1kb' }, (a) => {
      a.post('/reports', (_req, res) => {
        runs++;
        res.status(201).type('text/plain').send(big);
      });
    });
    const first = await request(app).post('/reports').set('Idempotency-Key', 'r-1');
    expect(first.status).toBe(201);
    expect(first.text).toBe(big);
    const retry = await request(app).post('/reports').set('Idempotency-Key', 'r-1');
    expect(retry.status).toBe(422);
    expect(retry.body.error.code).toBe('IDEMPOTENCY_REPLAY_UNAVAILABLE');
    expect(retry.body.error.details).toEqual({ status: 201 });
    expect(runs).toBe(1);
  });

  it('frees the key of a request answered 504 by the timeout, like any 5xx: the retry runs', async () => {
    const gate = deferred();
    let runs = 0;
    const { app } = build(
      {},
      (a) => {
        a.post('/payments', async (_req, res) => {
          runs++;
          if (runs === 1) await gate.promise;
          res.status(201).json({ run: runs });
        });
      },
      { timeout: { ms: 1000 } },
    );
    const first = await request(app).post('/payments').set('Idempotency-Key', 'p-slow-free').send({});
    expect(first.status).toBe(504);
    const retry = await request(app).post('/payments').set('Idempotency-Key', 'p-slow-free').send({});
    expect(retry.status).toBe(201);
    expect(retry.body).toEqual({ run: 2 });
    gate.resolve();
  });

  it('with keepLockOnTimeout keeps the key of a request answered 504 until lockTtl: its handler may still be running', async () => {
    const gate = deferred();
    let runs = 0;
    const { app } = build(
      { lockTtl: '60s', keepLockOnTimeout: true },
      (a) => {
        a.post('/payments', async (_req, res) => {
          runs++;
          await gate.promise;
          res.status(201).json({ run: runs });
        });
      },
      { timeout: { ms: 1000 } },
    );
    const first = await request(app).post('/payments').set('Idempotency-Key', 'p-slow').send({});
    expect(first.status).toBe(504);
    const retry = await request(app).post('/payments').set('Idempotency-Key', 'p-slow').send({});
    expect(retry.status).toBe(409);
    expect(retry.body.error.code).toBe('IDEMPOTENCY_IN_PROGRESS');
    gate.resolve();
    expect(runs).toBe(1);
  });
});

describe('idempotency: the lock when the client leaves', () => {
  it('with releaseOnDisconnect: false frees the key once a handler that stops on req.signal gives up: the retry runs', async () => {
    const started = deferred();
    let runs = 0;
    const { app } = build({ releaseOnDisconnect: false }, (a) => {
      a.post('/payments', (req, res, next) => {
        runs++;
        if (runs > 1) return void res.status(201).json({ run: runs });
        started.resolve();
        // A well-behaved handler: it stops when the stack's timeout aborts req.signal on disconnect.
        req.signal.addEventListener('abort', () => next(req.signal.reason));
      });
    });
    const port = listen(app);
    await postAndDisconnect(port, '/payments', 'p-gone', started.promise);
    await eventually(async () => {
      const retry = await request(`http://127.0.0.1:${port}`).post('/payments').set('Idempotency-Key', 'p-gone').send({ amount: 5 });
      expect(retry.status).toBe(201);
    });
    expect(runs).toBe(2);
  });

  it('with releaseOnDisconnect: false keeps the outcome of a handler that completes after its client left: the retry is a replay, never a second run', async () => {
    const started = deferred();
    const gate = deferred();
    let runs = 0;
    const finished = deferred();
    const { app } = build({ releaseOnDisconnect: false }, (a) => {
      a.post('/payments', async (_req, res) => {
        runs++;
        started.resolve();
        await gate.promise;
        res.status(201).json({ run: runs });
        finished.resolve();
      });
    });
    const port = listen(app);
    await postAndDisconnect(port, '/payments', 'p-late', started.promise);
    const during = await request(`http://127.0.0.1:${port}`).post('/payments').set('Idempotency-Key', 'p-late').send({ amount: 5 });
    expect(during.status).toBe(409);
    gate.resolve();
    await finished.promise;
    const retry = await request(`http://127.0.0.1:${port}`).post('/payments').set('Idempotency-Key', 'p-late').send({ amount: 5 });
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(retry.body).toEqual({ run: 1 });
    expect(runs).toBe(1);
  });

  it('frees the key as soon as the client leaves (releaseOnDisconnect, the default) (#14)', async () => {
    const started = deferred();
    const gate = deferred();
    let runs = 0;
    const { app } = build(true, (a) => {
      a.post('/payments', async (_req, res) => {
        runs++;
        if (runs === 1) {
          started.resolve();
          await gate.promise;
        }
        res.status(201).json({ run: runs });
      });
    });
    const port = listen(app);
    await postAndDisconnect(port, '/payments', 'p-free', started.promise);
    await eventually(async () => {
      const retry = await request(`http://127.0.0.1:${port}`).post('/payments').set('Idempotency-Key', 'p-free').send({ amount: 5 });
      expect(retry.status).toBe(201);
      expect(retry.headers['idempotent-replayed']).toBeUndefined();
    });
    gate.resolve();
    expect(runs).toBe(2);
  });
});

describe('idempotency: expiry', () => {
  afterEach(() => {
    jest.useRealTimers();
  });

  // Only Date is faked: the HTTP exchange runs on real timers and I/O.
  const fakeDateOnly = () =>
    jest.useFakeTimers({
      doNotFake: ['nextTick', 'setImmediate', 'clearImmediate', 'queueMicrotask', 'hrtime', 'performance', 'setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'],
    });

  it('forgets a kept response after ttl: the same key then runs again', async () => {
    fakeDateOnly();
    const { counter, handler } = counted();
    const { app } = build({ ttl: '1h' }, (a) => a.post('/orders', handler));
    await request(app).post('/orders').set('Idempotency-Key', 'o-ttl').send({ a: 1 });
    jest.setSystemTime(Date.now() + 59 * 60_000);
    expect((await request(app).post('/orders').set('Idempotency-Key', 'o-ttl').send({ a: 1 })).headers['idempotent-replayed']).toBe('true');
    jest.setSystemTime(Date.now() + 2 * 60_000);
    const after = await request(app).post('/orders').set('Idempotency-Key', 'o-ttl').send({ a: 1 });
    expect(after.headers['idempotent-replayed']).toBeUndefined();
    expect(after.body.run).toBe(2);
    expect(counter.runs).toBe(2);
  });

  it('lets a lock lapse after lockTtl, so a request that never answers (a crash) does not hold its key for ever', async () => {
    fakeDateOnly();
    let runs = 0;
    const { app } = build({ lockTtl: '30s' }, (a) => {
      a.post('/payments', (_req, res) => {
        runs++;
        // The first run never answers, as if its instance died mid-request.
        if (runs > 1) res.status(201).json({ run: runs });
      });
    });
    const port = listen(app);
    const base = `http://127.0.0.1:${port}`;
    const first = request(base).post('/payments').set('Idempotency-Key', 'p-crash').send({}).then(
      (r) => r,
      () => undefined,
    );
    await eventually(() => expect(runs).toBe(1));
    expect((await request(base).post('/payments').set('Idempotency-Key', 'p-crash').send({})).status).toBe(409);
    jest.setSystemTime(Date.now() + 31_000);
    expect((await request(base).post('/payments').set('Idempotency-Key', 'p-crash').send({})).status).toBe(201);
    expect(runs).toBe(2);
    for (const server of servers) server.closeAllConnections();
    await first;
  });
});

describe('idempotency: credits are spent once', () => {
  function creditsApp(cost: number) {
    const { logger } = recordingLogger();
    const stack = createStack({ logger, ...QUIET, auth: AUTH, idempotency: true });
    stacks.push(stack);
    // credits on the route, on the stack's stores, behind the stack's idempotency.
    const charge = credits({ cost, stores: stack.stores });
    let runs = 0;
    const app = newApp();
    app.use(stack);
    app.post('/payments', charge, (_req, res) => {
      runs++;
      res.status(201).json({ run: runs });
    });
    app.use(stack.errorHandler);
    return { app, charge, runs: () => runs };
  }

  it('charges a retried POST once (the replay runs nothing after idempotency)', async () => {
    const { app, charge, runs } = creditsApp(5);
    await charge.grant('alice', 20);
    const send = () => request(app).post('/payments').set('X-API-Key', ALICE).set('Idempotency-Key', 'pay-credits').send({ amount: 5 });
    expect((await send()).status).toBe(201);
    const retries = await Promise.all([send(), send(), send()]);
    for (const r of retries) expect(r.headers['idempotent-replayed']).toBe('true');
    expect(await charge.balance('alice')).toBe(15);
    expect(runs()).toBe(1);
  });

  it('lets a request refused for want of credits (402) run once the account is topped up, charging once', async () => {
    const { app, charge, runs } = creditsApp(5);
    const send = () => request(app).post('/payments').set('X-API-Key', ALICE).set('Idempotency-Key', 'pay-402').send({ amount: 5 });
    expect((await send()).status).toBe(402);
    await charge.grant('alice', 5);
    expect((await send()).status).toBe(201);
    expect((await send()).headers['idempotent-replayed']).toBe('true');
    expect(await charge.balance('alice')).toBe(0);
    expect(runs()).toBe(1);
  });
});

describe('idempotency: per route and in the stack', () => {
  it('works on one route without a stack (memory), refusing a missing key when required', async () => {
    const app = newApp();
    app.use(loadExpress().json());
    let runs = 0;
    app.post('/payments', idempotency({ required: true }), (_req, res) => {
      runs++;
      res.status(201).json({ run: runs });
    });
    app.use((err: { status?: number; code?: string }, _req: Request, res: Response, _next: NextFunction) => {
      res.status(err.status ?? 500).json({ code: err.code });
    });
    expect((await request(app).post('/payments').send({ a: 1 })).body).toEqual({ code: 'IDEMPOTENCY_KEY_REQUIRED' });
    await request(app).post('/payments').set('Idempotency-Key', 'r-1').send({ a: 1 });
    expect((await request(app).post('/payments').set('Idempotency-Key', 'r-1').send({ a: 1 })).headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(1);
  });

  it('behind a stack keeps its records in the stack\'s stores', async () => {
    let runs = 0;
    const handler = (_req: Request, res: Response) => {
      runs++;
      res.status(201).json({ run: runs });
    };
    const { app, stack } = build(true, (a) => a.post('/payments', idempotency(), handler), { idempotency: false });
    // Another app, no stack, reading the same stores: it finds the record the first one kept.
    const other = newApp();
    other.use(loadExpress().json());
    other.post('/payments', idempotency({ stores: stack.stores }), handler);
    await request(app).post('/payments').set('Idempotency-Key', 'shared').send({ a: 1 });
    const replayed = await request(other).post('/payments').set('Idempotency-Key', 'shared').send({ a: 1 });
    expect(replayed.headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(1);
  });

  it('a route-level idempotency behind the stack\'s does not lock the key a second time', async () => {
    const { counter, handler } = counted();
    const { app } = build(true, (a) => a.post('/payments', idempotency({ required: true }), handler));
    expect((await request(app).post('/payments').set('Idempotency-Key', 'twice').send({ a: 1 })).status).toBe(201);
    expect((await request(app).post('/payments').set('Idempotency-Key', 'twice').send({ a: 1 })).headers['idempotent-replayed']).toBe('true');
    // The route's own rule still applies to requests the stack's let through without a key.
    expect((await request(app).post('/payments').send({ a: 1 })).body.error.code).toBe('IDEMPOTENCY_KEY_REQUIRED');
    expect(counter.runs).toBe(1);
  });

  it('sits after rateLimit and before credits in the stack, and is off until configured', () => {
    const { logger } = recordingLogger();
    const off = createStack({ logger });
    stacks.push(off);
    expect(off.order).not.toContain('idempotency');
    const on = createStack({ logger, idempotency: true, auth: AUTH, credits: { cost: 1 } });
    stacks.push(on);
    const order = on.order;
    expect(order.indexOf('idempotency')).toBe(order.indexOf('rateLimit') + 1);
    expect(order.indexOf('credits')).toBe(order.indexOf('idempotency') + 1);
    expect(typeof on.middleware.idempotency).toBe('function');
  });

  it('leaves Express\'s and Node\'s response prototypes as they were', async () => {
    const express = loadExpress();
    const before = { write: ServerResponse.prototype.write, end: ServerResponse.prototype.end, writeHead: ServerResponse.prototype.writeHead };
    const { counter, handler } = counted();
    const { app } = build(true, (a) => a.post('/orders', handler));
    await request(app).post('/orders').set('Idempotency-Key', 'proto').send({ a: 1 });
    await request(app).post('/orders').set('Idempotency-Key', 'proto').send({ a: 1 });
    expect(counter.runs).toBe(1);
    expect({ write: ServerResponse.prototype.write, end: ServerResponse.prototype.end, writeHead: ServerResponse.prototype.writeHead }).toEqual(before);
    for (const name of ['write', 'end', 'writeHead']) expect(Object.prototype.hasOwnProperty.call(express.response, name)).toBe(false);
  });
});

describe('idempotency: when the store fails', () => {
  function brokenStores(): Stores {
    const failing: IdempotencyStore = {
      begin: () => Promise.reject(new Error('store down')),
      complete: () => Promise.reject(new Error('store down')),
      release: () => Promise.reject(new Error('store down')),
    };
    const stores = new MemoryStores();
    return Object.assign(Object.create(stores) as Stores, { create: () => failing });
  }

  it("runs requests without idempotency with onStoreError: 'open' (the default), logging the outage once", async () => {
    const { counter, handler } = counted();
    const { app, lines } = build({ stores: brokenStores() }, (a) => a.post('/orders', handler));
    for (let i = 0; i < 3; i++) expect((await request(app).post('/orders').set('Idempotency-Key', 'o-1').send({})).status).toBe(201);
    expect(counter.runs).toBe(3);
    expect(lines.filter((l) => l.code === 'ERR_IDEMPOTENCY_STORE_UNAVAILABLE')).toHaveLength(1);
  });

  it("answers 503 SERVICE_UNAVAILABLE with onStoreError: 'closed'", async () => {
    const { counter, handler } = counted();
    const { app } = build({ stores: brokenStores(), onStoreError: 'closed' }, (a) => a.post('/orders', handler));
    const res = await request(app).post('/orders').set('Idempotency-Key', 'o-1').send({});
    expect(res.status).toBe(503);
    expect(res.body.error.code).toBe('SERVICE_UNAVAILABLE');
    // Requests without a key do not need the store.
    expect((await request(app).post('/orders').send({})).status).toBe(201);
    expect(counter.runs).toBe(1);
  });
});

describe('idempotency: configuration mistakes explain themselves', () => {
  it.each([
    [{ tll: '1h' }, "idempotency.tll: unknown option; did you mean 'ttl'?"],
    [{ ttl: 'a day' }, "idempotency.ttl: expected a duration like '500ms', '30s' or '1m', or milliseconds, got 'a day'"],
    [{ header: 'Idempotency Key' }, "idempotency.header: expected a header name like 'Idempotency-Key', got 'Idempotency Key'"],
    [{ methods: [] }, "idempotency.methods: expected a non-empty array of HTTP methods like ['POST', 'PATCH'], got an array"],
    [{ scope: 'session' }, "idempotency.scope: expected 'ip', 'user', 'apiKey', 'tenant' or a function (req) => callerId, got 'session'"],
    [{ releaseStatuses: [500] }, 'idempotency.releaseStatuses: expected an array of 4xx statuses like [402, 429] (every 5xx is released anyway), got an array'],
    [{ onStoreError: 'memory' }, "idempotency.onStoreError: expected one of 'open', 'closed', got 'memory'"],
    [{ maxBodySize: '2mb', maxBytes: '1mb' }, 'idempotency.maxBodySize: 2097152 bytes is more than maxBytes (1048576)'],
  ])('%j', (options, message) => {
    expect(() => idempotency(options as IdempotencyOptions)).toThrow(ConfigError);
    expect(() => idempotency(options as IdempotencyOptions)).toThrow(message);
  });

  it('explains app.use(idempotency) written without the call', () => {
    const asMiddleware = idempotency as unknown as (req: object) => unknown;
    expect(() => asMiddleware({ method: 'POST', url: '/', headers: {} })).toThrow('write app.use(idempotency()) with parentheses');
  });
});
