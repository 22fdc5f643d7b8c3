import { createHmac, randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import type { ErrorRequestHandler, Express, RequestHandler } from 'express';
import type * as Perimeter from '../../index';

/** What a scenario's `setup` is given: the built library (from dist/) and Express. */
export interface BenchLib {
  /** `require('express-perimeter')` as users get it: the compiled dist/index.js. */
  perimeter: typeof Perimeter;
  /** Whether this build of the library has the named stack middleware (`rateLimit`, `auth`…). */
  hasMiddleware(name: string): boolean;
  /** Express 5, the version the bench measures. */
  express: typeof import('express');
}

/** The request autocannon sends to a scenario's server. */
export interface BenchRequest {
  method?: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  path?: string;
  headers?: Record<string, string>;
  body?: string;
}

/** One server of the benchmark. Add a scenario with an entry in {@link SCENARIOS}. */
export interface Scenario {
  /** One line printed beside the results. */
  description: string;
  /** npm packages the scenario needs besides the project's own; it is skipped when one is missing. */
  requires?: string[];
  /** The request to load the server with. Defaults to GET /games/1. */
  request?: BenchRequest;
  /** Status every benchmarked response must have. Defaults to 200. */
  expectStatus?: number;
  /** False for a scenario that does not use express-perimeter (no need to run it on each BENCH_COMPARE_DIST build). Defaults to true. */
  usesLibrary?: boolean;
  /** Mounts the scenario's middleware before the route; returns what goes after the route (error handlers). */
  setup(app: Express, lib: BenchLib): { after?: Array<RequestHandler | ErrorRequestHandler>; close?: () => Promise<void> } | void;
}

/** A stream that throws every log line away, so loggers still format each line but write nothing. */
export function nullStream(): Writable {
  return new Writable({
    write(_chunk, _encoding, callback) {
      callback();
    },
  });
}

// Single-client load would trip the default 100/min limit in a second and measure 429s, so
// limits are raised far above what a 5 s round sends; the limiter still runs for every request.
const UNREACHABLE_LIMIT = 1e9;

const BENCH_SECRET = 'bench-secret-bench-secret-bench-secret!';
// HS256 over {"sub":"u1","plan":"pro"} with BENCH_SECRET, no expiry: the same token every request.
const BENCH_JWT = signHs256({ sub: 'u1', plan: 'pro' }, BENCH_SECRET);

function signHs256(claims: Record<string, unknown>, secret: string): string {
  const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}


/**
 * `createStack()` defaults as the bench runs them: info logs formatted into a null stream, the
 * rate limit out of reach. `extra` adds or overrides stack options (auth keys, a Redis URL…).
 */
export function benchStack({ perimeter, hasMiddleware }: BenchLib, extra: Perimeter.StackConfig = {}): Perimeter.Stack {
  const config: Perimeter.StackConfig = { logger: { level: 'info', stream: nullStream() } };
  if (hasMiddleware('rateLimit')) config.rateLimit = { limit: UNREACHABLE_LIMIT, window: '1m' };
  return perimeter.createStack({ ...config, ...extra });
}

/**
 * The servers the bench compares, by name. `bare` is the baseline every ratio is taken against.
 * A later middleware adds its case here, e.g.
 * `'stack-auth': { description: '…', request: { headers: { 'X-API-Key': 'k' } }, setup: (app, lib) => {…benchStack(lib, { auth: … })…} }`.
 */
export const SCENARIOS: Record<string, Scenario> = {
  bare: {
    description: 'Express 5, one JSON route, no middleware',
    usesLibrary: false,
    setup: () => undefined,
  },

  stack: {
    description: 'createStack() defaults, memory stores, info logs formatted to a null stream',
    setup(app, lib) {
      const stack = benchStack(lib);
      app.use(stack);
      return { after: stack.errorHandler, close: () => stack.close() };
    },
  },

  'stack-user-winston': {
    description: "'stack' with the user's own winston logger (timestamp + json format, Stream transport into a null stream) instead of the default one",
    requires: ['winston'],
    setup(app, lib) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded as the user's app would
      const winston = require('winston') as typeof import('winston');
      const logger = winston.createLogger({
        level: 'info',
        format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
        transports: [new winston.transports.Stream({ stream: nullStream() })],
      });
      const stack = benchStack(lib, { logger });
      app.use(stack);
      return { after: stack.errorHandler, close: () => stack.close() };
    },
  },

  'stack-load-shedding': {
    description: "'stack' with loadShedding on every reading, at thresholds the load never reaches (what every request pays: a flag read and the in-flight count)",
    setup(app, lib) {
      const stack = benchStack(
        lib,
        lib.hasMiddleware('loadShedding')
          ? { loadShedding: { maxEventLoopDelay: '5s', maxEventLoopUtilization: 1, maxHeapUsedBytes: '1gb', maxRssBytes: '4gb', maxInFlight: 100_000 } }
          : {},
      );
      app.use(stack);
      return { after: stack.errorHandler, close: () => stack.close() };
    },
  },

  'stack-no-async-context': {
    description: "'stack' with requestId: { asyncContext: false } (no AsyncLocalStorage: getContext() off, req.context kept)",
    setup(app, lib) {
      const stack = benchStack(lib, { requestId: { asyncContext: false } });
      app.use(stack);
      return { after: stack.errorHandler, close: () => stack.close() };
    },
  },

  'cache-hit': {
    description: 'bare Express + cache({ ttl: 60 }) on the route alone: every request after the first is a memory cache hit',
    setup(app, { perimeter }) {
      app.use('/games', perimeter.cache({ ttl: 60 }));
    },
  },

  'stack-cache-hit': {
    description: "createStack() defaults (as 'stack') + cache({ ttl: 60 }) on the route: every request after the first is a cache hit",
    setup(app, lib) {
      const stack = benchStack(lib);
      app.use(stack);
      app.use('/games', lib.perimeter.cache({ ttl: 60 }));
      return { after: stack.errorHandler, close: () => stack.close() };
    },
  },

  // What each access-control and governance middleware costs against the foundation alone
  // (issue 3's middleware: no ipFilter, sanitize, rate limit, cache or audit).
  foundation: {
    description: 'createStack() with the foundation only: requestId, requestLogger, metrics, securityHeaders, sizeLimit, timeout, bodyParser',
    setup(app, lib) {
      const stack = benchStack(lib, { ipFilter: false, rateLimit: false, sanitize: false, cache: false, auditLog: false });
      app.use(stack);
      return { after: stack.errorHandler, close: () => stack.close() };
    },
  },

  'foundation+ipFilter': {
    description: 'foundation + ipFilter with a 10-entry deny list and run-time blocks',
    setup(app, lib) {
      const deny = Array.from({ length: 10 }, (_, i) => `10.${i}.0.0/16`);
      const stack = benchStack(lib, { rateLimit: false, sanitize: false, cache: false, auditLog: false, ipFilter: { deny } });
      app.use(stack);
      return { after: stack.errorHandler, close: () => stack.close() };
    },
  },

  'foundation+sanitize': {
    description: 'foundation + sanitize (defaults) on a request with a 3-field query string',
    request: { path: '/games/1?search=chess&sort=name&page=2' },
    setup(app, lib) {
      const stack = benchStack(lib, { ipFilter: false, rateLimit: false, cache: false, auditLog: false });
      app.use(stack);
      return { after: stack.errorHandler, close: () => stack.close() };
    },
  },

  'foundation+auth-apikey': {
    description: 'foundation + auth with an X-API-Key (SHA-256 lookup)',
    request: { headers: { 'X-API-Key': 'bench-key' } },
    setup(app, lib) {
      const auth = { apiKeys: [{ key: 'bench-key', name: 'bench', tier: 'pro', userId: 'u1' }] };
      const stack = benchStack(lib, { ipFilter: false, rateLimit: false, sanitize: false, cache: false, auditLog: false, auth });
      app.use(stack);
      return { after: stack.errorHandler, close: () => stack.close() };
    },
  },

  'foundation+auth-jwt': {
    description: 'foundation + auth with an HS256 Bearer token (verified-token cache on, as by default)',
    request: { headers: { Authorization: `Bearer ${BENCH_JWT}` } },
    setup(app, lib) {
      const auth = { jwt: { secret: BENCH_SECRET } };
      const stack = benchStack(lib, { ipFilter: false, rateLimit: false, sanitize: false, cache: false, auditLog: false, auth });
      app.use(stack);
      return { after: stack.errorHandler, close: () => stack.close() };
    },
  },

  'stack+tenant+flags': {
    description: "'stack' + tenant (header, 2 tenants) + featureFlags (5 flags, one exposed)",
    request: { headers: { 'X-Tenant-ID': 'acme' } },
    setup(app, lib) {
      const flags = {
        a: { percentage: 30 },
        b: { plans: ['pro'] },
        c: { countries: ['US'] },
        d: { beta: true },
        e: { expose: true },
      };
      const stack = benchStack(lib, { tenant: { from: ['header'], tenants: { acme: {}, globex: {} } }, featureFlags: { flags } });
      app.use(stack);
      return { after: stack.errorHandler, close: () => stack.close() };
    },
  },

  'hand-assembled': {
    description: 'uuid id + express-winston + express-prom-bundle + helmet + express-rate-limit + json/urlencoded + hpp',
    requires: ['express-winston', 'express-prom-bundle', 'helmet', 'express-rate-limit', 'hpp', 'winston'],
    usesLibrary: false,
    setup(app, { express }) {
      /* eslint-disable @typescript-eslint/no-require-imports -- optional packages, loaded only when installed */
      const winston = require('winston') as typeof import('winston');
      const expressWinston = require('express-winston') as typeof import('express-winston');
      const promBundle = require('express-prom-bundle') as typeof import('express-prom-bundle');
      const helmet = require('helmet') as typeof import('helmet');
      const { rateLimit } = require('express-rate-limit') as typeof import('express-rate-limit');
      const hpp = require('hpp') as typeof import('hpp');
      /* eslint-enable @typescript-eslint/no-require-imports */
      app.use(function requestIdMiddleware(req, res, next) {
        const id = randomUUID();
        req.id = id;
        res.setHeader('X-Request-ID', id);
        next();
      });
      app.use(
        expressWinston.logger({
          transports: [new winston.transports.Stream({ stream: nullStream() })],
          format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
          meta: true,
          expressFormat: true,
        }),
      );
      app.use(promBundle({ includeMethod: true, includePath: true, includeStatusCode: true }));
      app.use(helmet.default());
      app.use(rateLimit({ windowMs: 60_000, limit: UNREACHABLE_LIMIT, standardHeaders: 'draft-7', legacyHeaders: true }));
      app.use(express.json({ limit: '1mb' }));
      app.use(express.urlencoded({ extended: false, limit: '1mb' }));
      app.use(hpp());
    },
  },
};

/** The JSON the benchmarked route answers: small, like a typical API read. */
export function game(id: string): Record<string, unknown> {
  return { id, name: 'Chess', players: 2, tags: ['board', 'strategy'], rating: 4.8 };
}
