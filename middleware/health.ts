import type { Request, Response } from 'express';
import type { PerimeterHandler } from '../types/express-augment';
import { ConfigError } from '../lib/errors';
import { markProbe } from '../lib/lifecycle/probe';
import { Readiness, type NamedCheck, type ReadinessReport } from '../lib/lifecycle/readiness';
import type { Logger } from '../lib/logger';
import { defineOptions, flag, loggerOption, option, passThrough, positiveDuration } from '../lib/options';
import type { PerimeterRuntime } from '../lib/runtime';
import type { EntryContext } from '../lib/stack-entries';
import { describe, parseDuration } from '../lib/units';

export type { ReadinessReport, CheckReport } from '../lib/lifecycle/readiness';

/** A readiness check: resolves (with anything) when the dependency can serve, throws or rejects when not. `signal` aborts at its timeout. */
export type HealthCheck = (signal: AbortSignal) => unknown;

/** Options of {@link health}. */
export interface HealthOptions {
  /** Liveness path: 200 `{ "status": "ok" }` while the process runs; false to leave it out. Defaults to '/health'. */
  path?: string | false;
  /** Readiness path: 200 ready, 503 not_ready or draining; false to leave it out. Defaults to '/health/ready'. */
  readyPath?: string | false;
  /** The application's own checks by name, each a function or `{ check, timeout }`; run concurrently with the stack's store checks. Defaults to none. */
  checks?: Record<string, HealthCheck | { check: HealthCheck; timeout?: number | string }>;
  /** Time limit of each check without its own. Defaults to '2s'. */
  timeout?: number | string;
  /** How long a readiness report is reused, so a probe storm does not hammer Redis; at most '1s'. Defaults to '1s'. */
  cacheFor?: number | string;
  /** Show the messages of failed checks in the body (driver messages can carry hosts and addresses); the library's own reasons ('timed out after 2000 ms') always show. Defaults to true unless NODE_ENV is 'production'. */
  exposeErrors?: boolean;
  /** Receives one line per change between ready and not ready. Defaults to the stack's logger. */
  logger?: Logger;
}

/** The run-time methods of a {@link health} handler (also `stack.middleware.health`). */
export interface HealthMethods {
  /** The readiness report `/health/ready` would answer now (cached like it). */
  readiness(): Promise<ReadinessReport>;
  /** Turns readiness into 503 draining for good; `stack.shutdown()` calls it. */
  drain(): void;
  /** Whether {@link drain} was called. */
  readonly draining: boolean;
}

/** A {@link health} middleware with its run-time methods. */
// An interface, not an intersection: TypeScript infers a route's params from an intersection as `unknown`.
export interface HealthHandler extends PerimeterHandler, HealthMethods {}

declare module '../lib/create-stack' {
  interface StackMiddleware {
    /** Liveness and readiness probes (on by default). */
    health: HealthHandler;
  }
}

// Every option of health() once: its default and its check (the interface's JSDoc is its doc).
// `checks` are checked against the stack's own checks, below.
const parseOptions = defineOptions<HealthOptions>()('health', {
  path: option("a path like '/health', or false", (value, path) => checkPath(path, value ?? '/health'), "'/health'"),
  readyPath: option("a path like '/health/ready', or false", (value, path) => checkPath(path, value ?? '/health/ready'), "'/health/ready'"),
  checks: passThrough<HealthOptions['checks']>('checks by name: (signal) => Promise, or { check, timeout }'),
  timeout: positiveDuration('2s'),
  cacheFor: option("a duration of at most '1s'", cacheDuration, "'1s'"),
  exposeErrors: flag(),
  logger: loggerOption(),
});
const LIVE_BODY = '{"status":"ok"}';
const MAX_CACHE_MS = 1000;

/**
 * Answers liveness (`path`) and readiness (`readyPath`) probes, GET and HEAD, without calling the
 * rest of the chain: in a stack it sits right after metrics, so probes are counted but never
 * rate-limited, authenticated, cached or audited, and requestLogger logs them at debug.
 * Readiness runs the stack's store checks (Redis) and `checks` concurrently, each within its
 * timeout, and caches the report for `cacheFor`.
 */
export function health(options: HealthOptions = {}): HealthHandler {
  return buildHealth(options, undefined);
}

/** @internal The stack's health (createStack builds it): readiness includes the stack's stores, changes go to its logger. */
export function stackHealth(options: HealthOptions, { runtime }: EntryContext): HealthHandler {
  return buildHealth(options, runtime);
}

function buildHealth(options: HealthOptions, runtime: PerimeterRuntime | undefined): HealthHandler {
  const o = parseOptions(options);
  const { path: livePath, readyPath, timeout: timeoutMs } = o;
  const checks: NamedCheck[] = (runtime?.stores.readiness ?? []).map((store) => ({
    name: store.name,
    timeoutMs,
    run: () => store.check(timeoutMs),
  }));
  for (const [name, value] of Object.entries(o.checks ?? {})) {
    if (checks.some((c) => c.name === name)) {
      throw new ConfigError(`health.checks.${name}`, `'${name}' is the stack's own check of its store; give your check another name`);
    }
    const fn = typeof value === 'function' ? value : value?.check;
    if (typeof fn !== 'function') {
      throw new ConfigError(`health.checks.${name}`, 'expected a function (signal) => Promise, or { check, timeout }');
    }
    const own = typeof value === 'function' ? undefined : value.timeout;
    checks.push({ name, timeoutMs: own === undefined ? timeoutMs : positiveDuration().parse(own, `health.checks.${name}.timeout`) ?? timeoutMs, run: fn });
  }
  const readiness = new Readiness(checks, {
    cacheMs: o.cacheFor,
    exposeErrors: o.exposeErrors ?? process.env.NODE_ENV !== 'production',
    logger: o.logger ?? runtime?.logger,
  });

  const handler = function healthMiddleware(req: Request, res: Response, next: (err?: unknown) => void) {
    if (req.method !== 'GET' && req.method !== 'HEAD') return next();
    const url = req.url;
    if (livePath !== false && isPath(url, livePath)) {
      markProbe(req);
      return send(res, 200, LIVE_BODY);
    }
    if (readyPath !== false && isPath(url, readyPath)) {
      markProbe(req);
      readiness.report().then((report) => send(res, report.status === 'ready' ? 200 : 503, JSON.stringify(report)), next);
      return;
    }
    next();
  } as HealthHandler;
  handler.readiness = () => readiness.report();
  handler.drain = () => readiness.drain();
  Object.defineProperty(handler, 'draining', { get: () => readiness.isDraining, enumerable: true });
  return handler;
}

function send(res: Response, status: number, body: string): void {
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  // A cached probe answer would hide a change of state from the load balancer.
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

/** Whether `url` (req.url) names `path`, with or without a trailing slash or a query. */
function isPath(url: string, path: string): boolean {
  if (!url.startsWith(path)) return false;
  if (url.length === path.length) return true;
  const after = url.charCodeAt(path.length);
  if (after === 63 /* ? */) return true;
  return after === 47 /* / */ && (url.length === path.length + 1 || url.charCodeAt(path.length + 1) === 63);
}

function checkPath(option: string, path: unknown): string | false {
  if (path === false) return false;
  if (typeof path !== 'string' || !path.startsWith('/') || /[?#\s]/.test(path)) {
    throw new ConfigError(option, `expected a path starting with '/' like '/health' (or false to leave it out), got ${describe(path)}`);
  }
  return path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
}

function cacheDuration(value: unknown, path: string): number {
  const ms = parseDuration(value ?? '1s', path);
  if (ms > MAX_CACHE_MS) {
    throw new ConfigError(path, `readiness may be cached for at most 1s so a load balancer sees an outage quickly, got ${describe(value)}`);
  }
  return ms;
}
