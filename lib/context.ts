import '../types/express-augment';
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Request } from 'express';
import { detectDevice, type Device } from './device';
import { canonicalClientAddress } from './ip-list';
import { defaultLogger, type Logger } from './logger';
import { setIdentity } from './request-slots';

/** The authenticated user, as `auth` sets it. */
export interface ContextUser {
  id: string;
  email?: string;
  roles?: string[];
  plan?: string;
  beta?: boolean;
  tenant?: string;
  [claim: string]: unknown;
}

/** What is known about one request; `req.context` and `getContext()` return it. */
export class RequestContext {
  /** The request id (also `req.id` and the `X-Request-ID` response header). */
  requestId: string;
  /** `Date.now()` when the request entered the stack. */
  readonly startTime: number;
  /** High-resolution start, for durations. */
  readonly startHr: bigint;
  /** Trace id of the active OpenTelemetry span, else from `traceparent` / `X-Cloud-Trace-Context` when the client sent one. */
  traceId?: string;
  /** Span id of the OpenTelemetry span active when the request entered the stack, when there is one. */
  spanId?: string;
  /** Country code from the CDN (`CF-IPCountry`, `CloudFront-Viewer-Country`, `X-Country`), when known. */
  country?: string;
  user?: ContextUser;
  apiKey?: { name?: string; tier?: string; userId?: string };
  tenant?: { id: string; config?: unknown };
  features?: Record<string, boolean>;
  cacheHit?: boolean;
  private readonly req: Request;
  private readonly baseLogger: Logger;
  private deviceValue?: Device;
  private ipValue?: string;
  private ipRead = false;
  private logValue?: Logger;
  private logKey?: string;

  constructor(req: Request, requestId: string, logger: Logger) {
    this.req = req;
    this.requestId = requestId;
    this.startTime = Date.now();
    this.startHr = process.hrtime.bigint();
    this.baseLogger = logger;
  }

  /**
   * Client IP as Express sees it (`req.ip`, so `trust proxy` applies) in canonical form (no port,
   * brackets or zone id; IPv4-mapped IPv6 as IPv4), computed on first read only. Undefined when
   * the address cannot be parsed: see `clientIp` in lib/client-ip.
   */
  get ip(): string | undefined {
    if (!this.ipRead) {
      this.ipValue = canonicalClientAddress(this.req.ip);
      this.ipRead = true;
    }
    return this.ipValue;
  }

  /** The User-Agent header. */
  get userAgent(): string | undefined {
    return this.req.headers['user-agent'];
  }

  /** Device class, computed on first read only. */
  get device(): Device {
    return (this.deviceValue ??= detectDevice(this.req.headers['user-agent']));
  }

  /** A child logger whose every line carries request_id (and user_id, tenant_id once known; trace_id and span_id under an OpenTelemetry span). */
  get log(): Logger {
    const key = `${this.requestId}|${this.user?.id ?? ''}|${this.tenant?.id ?? ''}`;
    if (this.logValue === undefined || this.logKey !== key) {
      const meta: Record<string, unknown> = { request_id: this.requestId };
      if (this.spanId !== undefined) {
        meta.trace_id = this.traceId;
        meta.span_id = this.spanId;
      }
      if (this.user?.id !== undefined) meta.user_id = this.user.id;
      if (this.tenant?.id !== undefined) meta.tenant_id = this.tenant.id;
      this.logValue = this.baseLogger.child(meta);
      this.logKey = key;
    }
    return this.logValue;
  }

  /** A plain object of the context, for logging or serialising. */
  toJSON(): Record<string, unknown> {
    return {
      requestId: this.requestId,
      startTime: this.startTime,
      ip: this.ip,
      userAgent: this.userAgent,
      device: this.device,
      country: this.country,
      user: this.user,
      apiKey: this.apiKey,
      tenant: this.tenant,
      features: this.features,
      cacheHit: this.cacheHit,
    };
  }
}

const storage = new AsyncLocalStorage<RequestContext>();

/** The context of the request being served, inside any async code the handler awaits; undefined outside a request. */
export function getContext(): RequestContext | undefined {
  return storage.getStore();
}

/** Runs `fn` with `ctx` as the current request context. */
export function runWithContext<T>(ctx: RequestContext, fn: () => T): T {
  return storage.run(ctx, fn);
}

/**
 * Returns `next` bound to the request's context, for callbacks that fire from stream or socket
 * events (those run outside the context that registered them).
 */
export function bindToContext<A extends unknown[]>(req: Request, fn: (...args: A) => void): (...args: A) => void {
  const ctx = req.context;
  if (ctx === undefined) return fn;
  return (...args: A) => storage.run(ctx, fn, ...args);
}

/** `req.context`, or undefined on a request no perimeter middleware gave a context (its type says it is always there). */
export function contextOf(req: Request): RequestContext | undefined {
  return req.context as RequestContext | undefined;
}

/**
 * The context of `req`, creating one when no `requestId` middleware ran before (a middleware used
 * alone still gets a request id and a logger).
 */
export function ensureContext(req: Request, logger: Logger = defaultLogger()): RequestContext {
  let ctx = req.context;
  if (ctx === undefined) {
    ctx = new RequestContext(req, req.id ?? '', logger);
    setIdentity(req, undefined, ctx);
  }
  return ctx;
}
