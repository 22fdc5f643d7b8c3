import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { context, trace, type Span } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import type { Express } from 'express';
import jwt from 'jsonwebtoken';
import request from 'supertest';
import { Writable } from 'node:stream';
import { createLogger, createStack, type StackConfig } from '../index';
import { closeStacks, eventually, newApp, stackApp } from './helpers/app';

const SECRET = 'otel-test-secret-otel-test-secret-0123456789';
const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager();

afterEach(async () => {
  exporter.reset();
  await closeStacks();
});
afterAll(() => provider.shutdown());

/**
 * A server that starts a span per request and runs the app inside it, as the HTTP
 * instrumentation does; the span ends when the response closes.
 */
async function tracedServer(app: Express): Promise<{ server: Server; url: string; spans: Span[] }> {
  const tracer = trace.getTracer('test');
  const spans: Span[] = [];
  const server = createServer((req, res) =>
    tracer.startActiveSpan(`${req.method} server`, (span) => {
      spans.push(span);
      res.on('close', () => span.end());
      app(req, res);
    }),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spans };
}

async function finishedSpan(count = 1): Promise<ReadableSpan[]> {
  await eventually(() => expect(exporter.getFinishedSpans()).toHaveLength(count));
  return exporter.getFinishedSpans();
}

const routes = (app: Express) => {
  app.get('/games', (req, res) => {
    req.context.log.info('listing games');
    res.json([]);
  });
  app.get('/fail', () => {
    throw new Error('database on fire');
  });
};

const CONFIG: StackConfig = {
  auth: { jwt: { secret: SECRET }, required: false },
  tenant: { from: ['header'], tenants: { acme: {} }, required: false },
  rateLimit: { limit: 10, window: '1m' },
  circuitBreaker: { volumeThreshold: 5 },
};

describe('OpenTelemetry correlation with a span active', () => {
  beforeAll(() => {
    context.setGlobalContextManager(contextManager.enable());
    trace.setGlobalTracerProvider(provider);
  });
  afterAll(() => {
    trace.disable();
    context.disable();
  });

  it('gives every log line of the request the span\'s trace_id and span_id, and req.id its trace id', async () => {
    const { app, lines } = stackApp(CONFIG, routes);
    const { server, url } = await tracedServer(app);
    try {
      const res = await request(url).get('/games').expect(200);
      const [span] = await finishedSpan();
      const { traceId, spanId } = span.spanContext();
      expect(res.headers['x-request-id']).toBe(traceId);
      const ofRequest = lines.filter((l) => l.request_id === traceId);
      expect(ofRequest.map((l) => l.message).sort()).toEqual(['Request completed', 'listing games']);
      for (const line of ofRequest) expect(line).toMatchObject({ trace_id: traceId, span_id: spanId });

      await request(url).get('/fail').expect(500);
      const [, failed] = await finishedSpan(2);
      const failLines = lines.filter((l) => l.request_id === failed.spanContext().traceId);
      expect(failLines.map((l) => l.message).sort()).toEqual(['Request completed', 'Request failed: database on fire']);
      for (const line of failLines) expect(line).toMatchObject({ trace_id: failed.spanContext().traceId, span_id: failed.spanContext().spanId });
    } finally {
      server.close();
    }
  });

  it('adds them to lines written through the stack\'s own logger inside the request too', async () => {
    const written: Array<Record<string, unknown>> = [];
    const stream = new Writable({
      write(chunk, _enc, cb) {
        written.push(JSON.parse(String(chunk)));
        cb();
      },
    });
    const stack = createStack({ logger: createLogger({ stream, level: 'info' }), rateLimit: false });
    const app = newApp();
    app.use(stack);
    app.get('/plain', async (_req, res) => {
      await new Promise((resolve) => setImmediate(resolve));
      stack.logger.info('from the handler, without req.context.log');
      res.end();
    });
    const { server, url } = await tracedServer(app);
    try {
      await request(url).get('/plain').expect(200);
      const [span] = await finishedSpan();
      expect(written.find((l) => l.message === 'from the handler, without req.context.log')).toMatchObject({
        trace_id: span.spanContext().traceId,
        span_id: span.spanContext().spanId,
      });
      // Outside any request, no trace.
      stack.logger.info('outside');
      expect(written.find((l) => l.message === 'outside')).not.toHaveProperty('trace_id');
    } finally {
      server.close();
      await stack.close();
    }
  });

  it('keeps the client\'s own X-Request-ID as req.id, and records it on the span', async () => {
    const { app, lines } = stackApp({}, routes);
    const { server, url } = await tracedServer(app);
    try {
      const res = await request(url).get('/games').set('X-Request-ID', 'client-id-42').expect(200);
      expect(res.headers['x-request-id']).toBe('client-id-42');
      const [span] = await finishedSpan();
      expect(span.attributes['perimeter.request_id']).toBe('client-id-42');
      expect(lines.find((l) => l.message === 'Request completed')).toMatchObject({ request_id: 'client-id-42', trace_id: span.spanContext().traceId });
    } finally {
      server.close();
    }
  });

  it('records the stack\'s decisions as span attributes: enduser.*, then perimeter.*', async () => {
    const { app } = stackApp({ ...CONFIG, cache: { ttl: 60 } }, routes);
    const { server, url } = await tracedServer(app);
    try {
      const token = jwt.sign({ sub: 'u-7', roles: ['admin', 'player'] }, SECRET, { algorithm: 'HS256', expiresIn: 60 });
      await request(url).get('/games').set('Authorization', `Bearer ${token}`).set('X-Tenant-ID', 'acme').expect(200);
      const [span] = await finishedSpan();
      expect(span.attributes).toMatchObject({
        'enduser.id': 'u-7',
        'enduser.role': 'admin,player',
        'perimeter.auth.method': 'jwt',
        'perimeter.tenant.id': 'acme',
        'perimeter.rate_limit.remaining': 9,
        'perimeter.breaker.state': 'CLOSED',
        'perimeter.cache.hit': false,
      });
      await request(url).get('/games').set('Authorization', `Bearer ${token}`).set('X-Tenant-ID', 'acme').expect(200);
      const [, second] = await finishedSpan(2);
      expect(second.attributes['perimeter.cache.hit']).toBe(true);
    } finally {
      server.close();
    }
  });

  it('records why a request was shed', async () => {
    const { app } = stackApp({ loadShedding: { maxHeapUsedBytes: 1, sampleInterval: '20ms' } }, routes);
    const { server, url } = await tracedServer(app);
    try {
      await eventually(async () => void (await request(url).get('/games').expect(503)));
      const spans = exporter.getFinishedSpans();
      expect(spans.at(-1)?.attributes['perimeter.shed.reason']).toBe('heap');
    } finally {
      server.close();
    }
  });
});

describe('OpenTelemetry correlation without a registered SDK', () => {
  it('adds no field or attribute and keeps generated ids, even under a span started through the API', async () => {
    const { app, lines } = stackApp(CONFIG, routes);
    // Without a provider the API hands out non-recording spans with invalid ids: nothing to correlate.
    const { server, url } = await tracedServer(app);
    let res: request.Response;
    try {
      res = await request(url).get('/games').expect(200);
    } finally {
      server.close();
    }
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4/);
    expect(lines.filter((l) => 'trace_id' in l || 'span_id' in l)).toEqual([]);
    expect(exporter.getFinishedSpans()).toEqual([]);
  });
});

describe('OpenTelemetry correlation without the package', () => {
  // prom-client 15 itself requires @opentelemetry/api (exemplars), so the stack cannot load
  // without it in practice; what is tested here is the module that reads it, on its own.
  it('requires @opentelemetry/api once, on first use, and finds no span when it is missing', () => {
    let attempts = 0;
    jest.isolateModules(() => {
      jest.doMock('@opentelemetry/api', () => {
        attempts++;
        throw Object.assign(new Error("Cannot find module '@opentelemetry/api'"), { code: 'MODULE_NOT_FOUND' });
      });
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const otel = require('../lib/otel') as typeof import('../lib/otel');
      expect(attempts).toBe(0);
      expect(otel.loadOtelApi()).toBeUndefined();
      expect(otel.activeRequestSpan()).toBeUndefined();
      expect(otel.activeRequestSpan()).toBeUndefined();
      expect(attempts).toBe(1);
      const req = {} as import('express').Request;
      expect(otel.spanOf(req)).toBeUndefined();
      otel.recordOnSpan(req, 'enduser.id', 'u-1');
      expect(Object.getOwnPropertySymbols(req)).toEqual([]);
    });
  });
});
