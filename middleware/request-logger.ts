import type { Request, RequestHandler, Response } from 'express';
import { ConfigError } from '../lib/errors';
import { callback, choice, defineOptions, flag, loggerOption, option } from '../lib/options';
import { describe } from '../lib/units';
import { runtimeOf } from '../lib/runtime';
import type { Logger } from '../lib/logger';
import { clientIp } from '../lib/client-ip';
import { contextOf } from '../lib/context';
import { onResponseDone } from '../lib/response-done';
import type { PerimeterHandler } from '../types/express-augment';
import { isProbe } from '../lib/lifecycle/probe';
import { isShed } from '../lib/load-shedding/shed-mark';

/** Options of {@link requestLogger}. */
export interface RequestLoggerOptions {
  /** Logger to write to. Defaults to the stack's logger. */
  logger?: Logger;
  /** 'json', or 'gcp' to add `severity`, `httpRequest` and `logging.googleapis.com/trace`. Defaults to `LOG_FORMAT` or 'json'. */
  format?: 'json' | 'gcp';
  /** Google Cloud project for trace links. Defaults to `GOOGLE_CLOUD_PROJECT`. */
  gcpProject?: string;
  /** Paths not logged (exact match), or a function. Defaults to none. */
  skip?: string[] | ((req: Request, res: Response) => boolean);
  /** Set `X-Response-Time: 12.34ms`. Defaults to true. */
  responseTime?: boolean;
}

const SEVERITY: Record<string, string> = { error: 'ERROR', warn: 'WARNING', info: 'INFO' };
const FORMATS = ['json', 'gcp'] as const;

// Every option of requestLogger() once: its default and its check (the interface's JSDoc is its doc).
// `format` and `gcpProject` default from the environment when the logger is made, not when this module loads.
const parseOptions = defineOptions<RequestLoggerOptions>()('requestLogger', {
  logger: loggerOption(),
  format: option(
    "'json' or 'gcp'",
    (value, path) => choice(FORMATS).parse(value ?? (process.env.LOG_FORMAT === 'gcp' ? 'gcp' : 'json'), path) ?? 'json',
    "LOG_FORMAT or 'json'",
  ),
  gcpProject: option('a Google Cloud project id', gcpProjectOption, 'GOOGLE_CLOUD_PROJECT'),
  skip: option("paths like ['/health'], or (req, res) => boolean", skipOption),
  responseTime: flag(true),
});

/**
 * One JSON line per request when it finishes ("Request completed"): request_id, method, path,
 * status_code, duration_ms, ip, user_agent, device, user_id, tenant_id, cache_hit; level error
 * for 5xx, warn for 4xx, info otherwise; debug for health probes. Sets `X-Response-Time`.
 */
export function requestLogger(options?: RequestLoggerOptions): PerimeterHandler;
export function requestLogger(options: RequestLoggerOptions = {}): RequestHandler {
  const { format, gcpProject, skip, responseTime, logger: ownLogger } = parseOptions(options);
  const skipPaths = Array.isArray(skip) ? new Set(skip) : undefined;
  const skipFn = typeof skip === 'function' ? skip : undefined;

  return function requestLoggerMiddleware(req, res, next) {
    const context = contextOf(req);
    const start = context?.startHr ?? process.hrtime.bigint();
    if (responseTime) setResponseTimeOnHeaders(res, start);
    if ((skipPaths !== undefined && skipPaths.has(req.path)) || (skipFn !== undefined && skipFn(req, res))) return next();
    onResponseDone(res, function logRequest() {
      const durationMs = Math.round(Number(process.hrtime.bigint() - start) / 1e4) / 100;
      const status = res.statusCode;
      const aborted = !res.writableFinished;
      // Probes come every few seconds from every balancer: debug, whatever their status (readiness logs its own changes).
      // A shed request is a deliberate refusal, not a failure of the service: warn, not error.
      const level = isProbe(req) ? 'debug' : status >= 500 && !isShed(req) ? 'error' : status >= 400 || aborted ? 'warn' : 'info';
      const ctx = context ?? contextOf(req);
      const line: Record<string, unknown> = {
        request_id: req.id,
        method: req.method,
        path: req.originalUrl === undefined ? req.path : pathOf(req.originalUrl),
        status_code: status,
        duration_ms: durationMs,
        ip: clientIp(req),
        user_agent: req.headers['user-agent'],
        device: ctx?.device,
        user_id: ctx?.user?.id ?? req.user?.id,
        tenant_id: ctx?.tenant?.id ?? req.tenant?.id,
        cache_hit: ctx?.cacheHit,
      };
      if (ctx?.country !== undefined) line.country = ctx.country;
      if (ctx?.spanId !== undefined) {
        line.trace_id = ctx.traceId;
        line.span_id = ctx.spanId;
      }
      if (aborted) line.aborted = true;
      if (format === 'gcp') {
        line.severity = SEVERITY[level];
        line.httpRequest = {
          requestMethod: req.method,
          requestUrl: req.originalUrl,
          status,
          userAgent: req.headers['user-agent'],
          remoteIp: clientIp(req),
          latency: `${(durationMs / 1000).toFixed(3)}s`,
        };
        if (ctx?.traceId) line['logging.googleapis.com/trace'] = gcpProject ? `projects/${gcpProject}/traces/${ctx.traceId}` : ctx.traceId;
        if (ctx?.spanId) line['logging.googleapis.com/spanId'] = ctx.spanId;
      }
      const logger = ownLogger ?? runtimeOf(req).logger;
      logger.log(level, aborted ? 'Request aborted' : 'Request completed', line);
    });
    next();
  };
}

/**
 * Sets `X-Response-Time` just before the headers go out, as on-headers does: this one response's
 * `writeHead` is wrapped (an own property of the response; Express's and Node's prototypes are
 * left alone). The response time needs no status code or header arguments, so writeHead's
 * arguments pass through untouched. When two loggers wrap one response, the wrapper that runs first
 * stamps it and the other finds the header set.
 */
function setResponseTimeOnHeaders(res: Response, start: bigint): void {
  const writeHead = res.writeHead;
  res.writeHead = function writeHeadWithResponseTime(this: Response) {
    if (!this.headersSent && this.getHeader('X-Response-Time') === undefined) {
      this.setHeader('X-Response-Time', `${(Number(process.hrtime.bigint() - start) / 1e6).toFixed(2)}ms`);
    }
    // eslint-disable-next-line prefer-rest-params
    return writeHead.apply(this, arguments as unknown as Parameters<Response['writeHead']>);
  } as Response['writeHead'];
}

function gcpProjectOption(value: unknown, path: string): string | undefined {
  const project = value ?? process.env.GOOGLE_CLOUD_PROJECT;
  if (project === undefined || typeof project === 'string') return project;
  throw new ConfigError(path, `expected a Google Cloud project id like 'my-project', got ${describe(value)}`);
}

function skipOption(value: unknown, path: string): RequestLoggerOptions['skip'] {
  if (value === undefined || typeof value === 'function') return callback<(req: Request, res: Response) => boolean>('(req, res) => boolean').parse(value, path);
  if (Array.isArray(value) && value.every((p) => typeof p === 'string')) return value as string[];
  throw new ConfigError(path, `expected paths like ['/health'] or a function (req, res) => boolean, got ${describe(value)}`);
}

// The query string can carry tokens; the log keeps the path only.
function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}
