import { createHash, timingSafeEqual } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import { collectDefaultMetrics, Counter, Gauge, register as globalRegistry, Histogram, type Registry } from 'prom-client';
import { Analytics, checkLimit, parseAnalyticsOptions, type AnalyticsOptions, type AnalyticsReport, type Endpoint } from '../lib/analytics';
import { AuthenticationError, ConfigError, ForbiddenError } from '../lib/errors';
import { IpList } from '../lib/ip-list';
import { counter, gauge, histogram } from '../lib/metrics-registry';
import { checkOptions, defineOptions, flag, option } from '../lib/options';
import { OPENMETRICS_CONTENT_TYPE, openMetricsText, wantsOpenMetrics } from '../lib/openmetrics';
import { compilePathPatterns, type PathLabeller } from '../lib/path-patterns';
import { routeTemplate, UNMATCHED_ROUTE } from '../lib/route-template';
import { perRuntime } from '../lib/runtime';
import type { EntryContext } from '../lib/stack-entries';
import { clientIp } from '../lib/client-ip';
import { onResponseDone } from '../lib/response-done';
import type { PerimeterHandler } from '../types/express-augment';

/** Options of {@link metrics}. */
export interface MetricsOptions {
  /** Path the Prometheus text is served at (GET and HEAD), or false to serve it yourself from the registry. Defaults to '/metrics'. */
  path?: string | false;
  /** Bearer token a scraper must send (`Authorization: Bearer <token>`) to read `path`; compared in constant time. Defaults to none. */
  token?: string;
  /** Addresses and CIDRs allowed to read `path`, matched against `clientIp(req)` (so `trust proxy` applies). Defaults to any. */
  allow?: string[];
  /** Collect prom-client's default process metrics (CPU, memory, event loop lag, GC), once per registry. Defaults to true. */
  defaultMetrics?: boolean;
  /** Prefix of every metric name this middleware creates, e.g. 'shop_'. Defaults to ''. */
  prefix?: string;
  /** Upper bounds in seconds of the `http_request_duration_seconds` buckets. Defaults to 5 ms … 30 s (see DEFAULT_BUCKETS). */
  buckets?: number[];
  /**
   * Route patterns (`['/api/users/:id', '/api/files/*']`, full paths as the client sends them)
   * that label requests no route answered: those refused before routing (401, 429, 400, 503
   * from the stack) or 404. Such a request is labelled with the first pattern its path matches,
   * else `#unmatched`, so the `route` label stays bounded by this list. Compiled once; matched
   * only for requests no route reached. Defaults to none (all of them are `#unmatched`).
   */
  paths?: string[];
  /** Per-endpoint analytics in process memory, read by `analytics()` and optionally served at `analytics.path`; false records nothing. Defaults to on: window '15m' in 15 buckets, 1000 endpoints, not served. */
  analytics?: AnalyticsOptions | boolean;
}

export type { AnalyticsOptions, AnalyticsReport, AnalyticsTopEntry, AnalyticsLatencyEntry, AnalyticsErrorEntry } from '../lib/analytics';

/** Options of one `analytics()` call. */
export interface AnalyticsQuery {
  /** Endpoints per list. Defaults to `analytics.limit` (10). */
  limit?: number;
}

/** The run-time methods of a {@link metrics} handler (also `stack.middleware.metrics`). */
export interface MetricsMethods {
  /**
   * Top endpoints by count, slowest by p95 (with p50 and p99) and 4xx/5xx rates per endpoint over
   * the last `analytics.window`, from the requests this handler measured. Throws ConfigError when
   * the handler was made with `analytics: false`.
   */
  analytics(options?: AnalyticsQuery): AnalyticsReport;
}

// An interface, not an intersection: TypeScript infers a route's params from an intersection as `unknown`.
/** A {@link metrics} middleware with its run-time methods. */
export interface MetricsHandler extends PerimeterHandler, MetricsMethods {}

declare module '../lib/create-stack' {
  interface StackMiddleware {
    /** The stack's metrics, with `analytics()` (on by default). */
    metrics: MetricsHandler;
  }
}

/** Duration buckets (seconds) for an API: fine below 100 ms where most calls land, up to the default 30 s timeout. */
export const DEFAULT_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
// A client that hangs up before the response finished: nginx's "client closed request".
const CLIENT_CLOSED = 499;
// Label values are bounded by design (route templates, methods, status codes); this caps the
// cache of labelled children should an app still produce many (custom methods, odd statuses).
const MAX_CACHED_CHILDREN = 10_000;

type HttpLabel = 'method' | 'route' | 'status_code';
const HTTP_LABELS = ['method', 'route', 'status_code'] as const;

const SERIES = {
  requests: {
    name: 'http_requests_total',
    type: Counter,
    labels: HTTP_LABELS,
    help: 'HTTP requests answered, by method, route template and status code.',
  },
  duration: {
    name: 'http_request_duration_seconds',
    type: Histogram,
    labels: HTTP_LABELS,
    help: 'Time from entering the middleware to the end of the response, in seconds.',
  },
  inProgress: {
    name: 'http_requests_in_progress',
    type: Gauge,
    labels: ['method'] as const,
    help: 'HTTP requests being served, by method.',
  },
};

// Every option of metrics() once: its default and its check (the interface's JSDoc is its doc).
const parseOptions = defineOptions<MetricsOptions>()('metrics', {
  path: option("a path like '/metrics', or false", (value, path) => checkPath(value === undefined ? '/metrics' : value, path), "'/metrics'"),
  token: option('a token without spaces, like process.env.METRICS_TOKEN', (value, path) => (value === undefined ? undefined : checkToken(value, path))),
  allow: option("addresses and CIDRs like ['10.0.0.0/8']", (value, path) => (value === undefined ? undefined : new IpList(value as string[], path))),
  defaultMetrics: flag(true),
  prefix: option("a metric name prefix like 'shop_'", (value, path) => checkPrefix(value ?? '', path), "''"),
  buckets: option('increasing positive numbers of seconds', (value, path) => checkBuckets(value ?? DEFAULT_BUCKETS, path), '5 ms … 30 s'),
  paths: option("route patterns like ['/api/users/:id']", (value, path) => compilePathPatterns(value, path)),
  analytics: option("an options object like { window: '15m' }, true or false", (value) => parseAnalyticsOptions(value as AnalyticsOptions | boolean | undefined), 'on'),
});

interface Children {
  requests: Counter.Internal;
  duration: Histogram.Internal<HttpLabel>;
  /** The analytics endpoint of (method, route), resolved with the children so the hot path looks nothing up for it. */
  endpoint: Endpoint | undefined;
}

/**
 * Prometheus metrics for every request: `http_requests_total{method,route,status_code}`,
 * `http_request_duration_seconds{method,route,status_code}` and `http_requests_in_progress{method}`,
 * where `route` is the Express route template (`/users/:id`) or `#unmatched`. Serves the registry
 * at `path` (optionally behind a bearer `token` and/or an IP `allow` list); the scrape itself is
 * not counted. Series live in the stack's registry (`stack.metricsRegistry`), or in prom-client's
 * global registry when used alone. `analytics()` on the handler reports top, slowest and failing
 * endpoints over the last `analytics.window`.
 */
export function metrics(options: MetricsOptions = {}): MetricsHandler {
  return buildMetrics(options, undefined);
}

/** @internal The stack's metrics (createStack builds it): bound to the stack's registry at setup, so its series and default metrics exist before the first request. */
export function stackMetrics(options: MetricsOptions, { runtime }: EntryContext): MetricsHandler {
  return buildMetrics(options, runtime.registry);
}

function buildMetrics(options: MetricsOptions, registry: Registry | undefined): MetricsHandler {
  const o = parseOptions(options);
  const { path, prefix, buckets, defaultMetrics, allow, paths: labelPath, analytics: analyticsOptions } = o;
  const tokenDigest = o.token === undefined ? undefined : digest(o.token);
  // One per handler, whatever registries it writes to: it reports the requests this handler measured.
  const tracker = analyticsOptions && new Analytics(analyticsOptions.settings);
  const served =
    tracker && analyticsOptions?.path !== undefined ? { tracker, path: analyticsOptions.path, limit: analyticsOptions.limit } : undefined;

  const build = (reg: Registry): HttpSeries => {
    if (defaultMetrics) collectDefaultsOnce(reg, prefix);
    return new HttpSeries(reg, prefix, buckets, tracker);
  };
  // Alone, series are made on the first request (behind a stack, a route-level metrics() uses that
  // stack's registry); a clash in the global registry is still worth refusing now.
  if (registry === undefined) checkRegistry(globalRegistry, prefix);
  const fixed = registry === undefined ? undefined : build(registry);
  const seriesOf = fixed === undefined ? perRuntime((runtime) => build(runtime.registry)) : () => fixed;
  const scrapePath = path === false ? undefined : path;
  const refusal = (req: Request): ForbiddenError | AuthenticationError | undefined => {
    if (allow !== undefined && !allow.has(clientIp(req))) return new ForbiddenError('Metrics are not served to this address.');
    return tokenDigest === undefined ? undefined : bearerProblem(req.headers.authorization, tokenDigest);
  };

  const handler = function metricsMiddleware(req: Request, res: Response, next: NextFunction) {
    const series = seriesOf(req);
    if (scrapePath !== undefined && (req.method === 'GET' || req.method === 'HEAD') && isPath(req.url, scrapePath)) {
      // The scrape is answered here and left out of the HTTP series: it would otherwise be the
      // busiest, most regular "endpoint" and skew every rate and percentile.
      const problem = refusal(req);
      if (problem !== undefined) return next(problem);
      return scrape(series.registry, req, res, next);
    }
    // Same protection as the scrape, and likewise not counted.
    if (served !== undefined && (req.method === 'GET' || req.method === 'HEAD') && isPath(req.url, served.path)) {
      const problem = refusal(req);
      if (problem !== undefined) return next(problem);
      return sendReport(served.tracker.report(served.limit), req, res);
    }
    // Captured on entry: the gauge must go down under the label it went up with, even if a
    // method-override middleware rewrites req.method later.
    const method = req.method;
    const start = performance.now();
    series.started(method);
    onResponseDone(res, function recordRequest() {
      const status = res.writableFinished ? res.statusCode : CLIENT_CLOSED;
      const end = performance.now();
      series.finished(method, routeLabel(req, labelPath), status, (end - start) / 1000, end);
    });
    next();
  } as MetricsHandler;
  handler.analytics = function analytics(query?: AnalyticsQuery): AnalyticsReport {
    if (tracker === undefined || analyticsOptions === undefined) {
      throw new ConfigError('metrics.analytics', 'is false, so no analytics were recorded; remove analytics: false to call analytics()');
    }
    const { limit } = checkOptions('metrics.analytics()', query, ['limit']);
    return tracker.report(limit === undefined ? analyticsOptions.limit : checkLimit(limit, 'metrics.analytics().limit'));
  };
  return handler;
}

/**
 * The HTTP series of one registry. The labelled children are cached in nested Maps (route →
 * method → status), so the hot path does three lookups on strings and numbers whose hashes are
 * already computed, and never calls `labels()` (which validates and allocates) after warm-up.
 * Per-endpoint analytics ride on the same cache: each children entry carries its endpoint.
 */
class HttpSeries {
  readonly registry: Registry;
  private readonly requests: Counter<HttpLabel>;
  private readonly duration: Histogram<HttpLabel>;
  private readonly inProgress: Gauge<'method'>;
  private readonly byRoute = new Map<string, Map<string, Map<number, Children>>>();
  private readonly gauges = new Map<string, Gauge.Internal<'method'>>();
  private cached = 0;

  constructor(
    registry: Registry,
    prefix: string,
    buckets: number[],
    private readonly analytics: Analytics | undefined,
  ) {
    checkRegistry(registry, prefix);
    this.registry = registry;
    this.requests = counter(registry, prefix + SERIES.requests.name, SERIES.requests.help, HTTP_LABELS);
    this.duration = histogram(registry, prefix + SERIES.duration.name, SERIES.duration.help, HTTP_LABELS, buckets);
    this.inProgress = gauge(registry, prefix + SERIES.inProgress.name, SERIES.inProgress.help, ['method'] as const);
  }

  started(method: string): void {
    let child = this.gauges.get(method);
    if (child === undefined) {
      child = this.inProgress.labels(method);
      if (this.gauges.size < MAX_CACHED_CHILDREN) this.gauges.set(method, child);
    }
    child.inc();
  }

  finished(method: string, route: string, status: number, seconds: number, end: number): void {
    (this.gauges.get(method) ?? this.inProgress.labels(method)).dec();
    const children = this.children(method, route, status);
    children.requests.inc();
    children.duration.observe(seconds);
    if (children.endpoint !== undefined) this.analytics?.record(children.endpoint, status, seconds, end);
  }

  private children(method: string, route: string, status: number): Children {
    let byMethod = this.byRoute.get(route);
    let byStatus = byMethod?.get(method);
    let children = byStatus?.get(status);
    if (children !== undefined) return children;
    const code = String(status);
    children = {
      requests: this.requests.labels(method, route, code),
      duration: this.duration.labels(method, route, code),
      endpoint: this.analytics?.endpoint(method, route),
    };
    if (this.cached >= MAX_CACHED_CHILDREN) return children;
    if (byMethod === undefined) this.byRoute.set(route, (byMethod = new Map()));
    if (byStatus === undefined) byMethod.set(method, (byStatus = new Map()));
    byStatus.set(status, children);
    this.cached++;
    return children;
  }
}

/** The route template of `req`, or for a request no route reached, the first of `paths` it matches. */
function routeLabel(req: Request, labelPath: PathLabeller | undefined): string {
  const route = routeTemplate(req);
  if (route !== UNMATCHED_ROUTE || labelPath === undefined) return route;
  const url = req.originalUrl ?? req.url;
  const query = url.indexOf('?');
  return labelPath(query === -1 ? url : url.slice(0, query)) ?? UNMATCHED_ROUTE;
}

/**
 * A metric the application (or another library) registered under one of our names must be usable
 * as ours; checked at setup, so a clash is a ConfigError there and not a 500 on every request.
 */
function checkRegistry(registry: Registry, prefix: string): void {
  for (const { name, type, labels } of Object.values(SERIES)) {
    const existing = registry.getSingleMetric(prefix + name) as { labelNames?: string[] } | undefined;
    if (existing === undefined) continue;
    if (!(existing instanceof type) || labels.some((l) => !(existing.labelNames ?? []).includes(l))) {
      throw new ConfigError(
        'metrics.prefix',
        `the registry already holds a metric named '${prefix + name}' of another type or without the labels ${labels.join(', ')}; set metrics.prefix (e.g. 'app_') to keep the two apart`,
      );
    }
  }
}

// Default metrics register fixed names: a second collectDefaultMetrics() on one registry throws.
const withDefaults = new WeakSet<Registry>();
function collectDefaultsOnce(registry: Registry, prefix: string): void {
  if (withDefaults.has(registry)) return;
  withDefaults.add(registry);
  // The application may have collected them on this registry itself.
  if (registry.getSingleMetric(`${prefix}process_cpu_user_seconds_total`) !== undefined) return;
  collectDefaultMetrics({ register: registry, prefix });
}

function scrape(registry: Registry, req: Request, res: Response, next: NextFunction): void {
  // OpenMetrics when the scraper prefers it (Prometheus with OpenMetrics scraping, needed for
  // exemplars and native _created series); the text format otherwise. A registry the user put
  // in OpenMetrics mode answers in it either way, as before.
  const openMetrics = (registry.contentType as string) !== OPENMETRICS_CONTENT_TYPE && wantsOpenMetrics(req.headers.accept);
  (openMetrics ? openMetricsText(registry) : registry.metrics()).then(
    function sendMetrics(text) {
      try {
        res.statusCode = 200;
        res.setHeader('Content-Type', openMetrics ? OPENMETRICS_CONTENT_TYPE : registry.contentType);
        res.setHeader('Vary', 'Accept');
        // A cached scrape is a stale scrape.
        res.setHeader('Cache-Control', 'no-store');
        res.setHeader('Content-Length', Buffer.byteLength(text));
        res.end(req.method === 'HEAD' ? undefined : text);
      } catch (err) {
        next(err);
      }
    },
    // A collect() callback of some gauge failed: the error envelope, not an unhandled rejection.
    next,
  );
}

function sendReport(report: AnalyticsReport, req: Request, res: Response): void {
  const body = JSON.stringify(report);
  res.statusCode = 200;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** Whether `url` (req.url, relative to the mount point) names `path`, with or without a trailing slash or query. */
function isPath(url: string, path: string): boolean {
  if (!url.startsWith(path)) return false;
  const after = url.charCodeAt(path.length);
  if (Number.isNaN(after) || after === 63 /* ? */) return true;
  if (after !== 47 /* / */) return false;
  const next = url.charCodeAt(path.length + 1);
  return Number.isNaN(next) || next === 63;
}

function bearerProblem(header: string | undefined, expected: Buffer): AuthenticationError | undefined {
  const token = typeof header === 'string' && /^bearer\s+/i.test(header) ? header.replace(/^bearer\s+/i, '').trim() : '';
  if (token === '') return new AuthenticationError('A bearer token is required to read the metrics.');
  // Equal-length digests: timingSafeEqual then leaks neither the token nor its length.
  if (!timingSafeEqual(digest(token), expected))
    return new AuthenticationError('The bearer token is not valid for the metrics.', 'INVALID_TOKEN');
  return undefined;
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

function checkPath(path: unknown, option: string): string | false {
  if (path === false) return false;
  if (typeof path !== 'string' || !path.startsWith('/') || /[?#\s]/.test(path)) {
    throw new ConfigError(
      option,
      `expected a path starting with '/' like '/metrics' (or false to serve it yourself), got ${JSON.stringify(path)}`,
    );
  }
  // '/metrics/' and '/metrics' name the same endpoint; isPath accepts both.
  return path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
}

function checkToken(token: unknown, option: string): string {
  if (typeof token !== 'string' || token.trim() === '' || /\s/.test(token)) {
    const got = typeof token === 'string' ? (token.trim() === '' ? 'an empty string' : 'a string with spaces') : typeof token;
    throw new ConfigError(option, `expected a non-empty token without spaces (e.g. process.env.METRICS_TOKEN), got ${got}`);
  }
  return token;
}

function checkPrefix(prefix: unknown, option: string): string {
  if (typeof prefix !== 'string' || (prefix !== '' && !METRIC_NAME.test(prefix))) {
    throw new ConfigError(
      option,
      `expected letters, digits, '_' or ':' not starting with a digit (like 'shop_'), got ${JSON.stringify(prefix)}`,
    );
  }
  return prefix;
}

function checkBuckets(buckets: unknown, option: string): number[] {
  const ok =
    Array.isArray(buckets) &&
    buckets.length > 0 &&
    buckets.every((b, i) => typeof b === 'number' && Number.isFinite(b) && b > 0 && (i === 0 || b > (buckets[i - 1] as number)));
  if (!ok) {
    throw new ConfigError(
      option,
      `expected increasing positive numbers of seconds like [0.05, 0.1, 0.5, 1], got ${JSON.stringify(buckets)}`,
    );
  }
  return [...(buckets as number[])];
}
