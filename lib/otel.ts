import type { Request } from 'express';
import { peekSlots, slotsOf } from './request-slots';

/**
 * OpenTelemetry correlation, with `@opentelemetry/api` as an optional peer: it is required once,
 * on the first request, inside a try; without it every function here returns at once. The
 * shapes below are the few members read, declared here so the library's types never name the
 * package (a user without it still compiles without skipLibCheck).
 */

/** Attribute values OpenTelemetry accepts. */
export type SpanAttributeValue = string | number | boolean | string[];

interface SpanContextLike {
  traceId: string;
  spanId: string;
}

interface SpanLike {
  spanContext(): SpanContextLike;
  setAttribute(key: string, value: SpanAttributeValue): unknown;
  isRecording(): boolean;
}

interface OtelApi {
  trace: { getActiveSpan(): SpanLike | undefined };
  isSpanContextValid?: (context: SpanContextLike) => boolean;
}

/** The span a request is served under, with its ids read once. */
export interface RequestSpan {
  span: SpanLike;
  traceId: string;
  spanId: string;
}

const MISSING = null;
let api: OtelApi | typeof MISSING | undefined;

/** The `@opentelemetry/api` module, or undefined when it is not installed (looked up once). */
export function loadOtelApi(): OtelApi | undefined {
  if (api === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      api = require('@opentelemetry/api') as OtelApi;
    } catch {
      api = MISSING;
    }
  }
  return api ?? undefined;
}

/**
 * The span active where the request entered the stack (the HTTP server span of the
 * instrumentation, typically), or undefined without the package, a registered SDK or a valid span.
 */
export function activeRequestSpan(): RequestSpan | undefined {
  const otel = loadOtelApi();
  if (otel === undefined) return undefined;
  const span = otel.trace.getActiveSpan();
  if (span === undefined) return undefined;
  const context = span.spanContext();
  if (otel.isSpanContextValid !== undefined ? !otel.isSpanContextValid(context) : !/[^0]/.test(context.traceId)) return undefined;
  return { span, traceId: context.traceId, spanId: context.spanId };
}

/**
 * Adds `trace_id` and `span_id` of the active span to a log record that has none: a line written
 * through the stack's own logger (not `req.context.log`) inside a traced request still joins
 * its trace. Without the package or a span this is a null check and one context read.
 */
export function addTraceFields(record: Record<string, unknown>): void {
  if (record.trace_id !== undefined || api === MISSING) return;
  const active = activeRequestSpan();
  if (active === undefined) return;
  record.trace_id = active.traceId;
  record.span_id = active.spanId;
}

/** Keeps `span` as the one the request's decisions are recorded on. */
export function setRequestSpan(req: Request, span: RequestSpan): void {
  slotsOf(req).span = span;
}

/** The span `req` is served under, when OpenTelemetry gave it one. */
export function spanOf(req: Request): RequestSpan | undefined {
  return peekSlots(req)?.span as RequestSpan | undefined;
}

/**
 * Records a decision of the stack on the request's span: `enduser.*` where OpenTelemetry's
 * semantic conventions name one, `perimeter.*` otherwise. Without a span this is one field read.
 */
export function recordOnSpan(req: Request, key: string, value: SpanAttributeValue | undefined): void {
  const held = peekSlots(req)?.span as RequestSpan | undefined;
  if (held === undefined || value === undefined) return;
  // An ended span (an instrumentation that closes its middleware span early) ignores attributes
  // and warns through OpenTelemetry's diag logger: skip it.
  if (held.span.isRecording()) held.span.setAttribute(key, value);
}
