import { randomUUID } from 'node:crypto';
import type { NextFunction, RequestHandler, Response } from 'express';
import { v7 as uuidv7 } from 'uuid';
import { RequestContext, runWithContext } from '../lib/context';
import { BadRequestError, ConfigError } from '../lib/errors';
import { defineOptions, flag, headerName, option } from '../lib/options';
import { setIdentity } from '../lib/request-slots';
import { activeRequestSpan, setRequestSpan } from '../lib/otel';
import { runtimeOf } from '../lib/runtime';
import { describe } from '../lib/units';
import type { PerimeterHandler } from '../types/express-augment';

/** Options of {@link requestId}. */
export interface RequestIdOptions {
  /** Header read from the client and set on the response. Defaults to 'X-Request-ID'. */
  header?: string;
  /** How new ids are made: 'uuidv4', 'uuidv7' (time-ordered) or a function. Defaults to 'uuidv4'. */
  generator?: 'uuidv4' | 'uuidv7' | (() => string);
  /** Take the client's id (or trace id) when it is valid. Defaults to true. */
  trustIncoming?: boolean;
  /**
   * Run the rest of the chain inside AsyncLocalStorage, so `getContext()` works in any code the
   * handler awaits. On Node 20 this turns on async hooks for the whole process, a real share of
   * the CPU per request on a trivial route (docs/benchmarks.md); with `false`, `req.context` and
   * `req.id` still work but `getContext()` returns undefined. Defaults to true.
   */
  asyncContext?: boolean;
}

// 1–128 characters of a safe alphabet: anything else (control characters, quotes, very long
// values) is replaced, never echoed, so the id cannot inject into logs or headers.
const VALID_ID = /^[A-Za-z0-9._:-]{1,128}$/;
// W3C Trace Context: the fields of version 00, in lowercase hex only.
const TRACEPARENT_00 = /^[\da-f]{2}-([\da-f]{32})-([\da-f]{16})-[\da-f]{2}$/;
const TRACEPARENT_LENGTH = 55;
const ZERO_TRACE_ID = '0'.repeat(32);
const ZERO_PARENT_ID = '0'.repeat(16);
// Google's `TRACE_ID/SPAN_ID;o=OPTIONS`: span id decimal (64 bits), options 0 or 1.
const CLOUD_TRACE = /^([\da-fA-F]{32})(?:\/\d{1,20})?(?:;o=[01])?$/;

// Every option of requestId() once: its default and its check (the interface's JSDoc is its doc).
const parseOptions = defineOptions<RequestIdOptions>()('requestId', {
  header: headerName('X-Request-ID'),
  generator: option("'uuidv4', 'uuidv7' or () => string", (value, path) => pickGenerator(value ?? 'uuidv4', path), "'uuidv4'"),
  trustIncoming: flag(true),
  asyncContext: flag(true),
});

/** Gives every request an id: the client's `X-Request-ID` (or trace id) when valid, else a new UUID. Sets `req.id`, `req.context` and the response header. */
export function requestId(options?: RequestIdOptions): PerimeterHandler;
export function requestId(options: RequestIdOptions = {}): RequestHandler {
  const { header, generator: generate, trustIncoming, asyncContext } = parseOptions(options);
  const headerKey = header.toLowerCase();

  return function requestIdMiddleware(req, res, next) {
    let traceId: string | undefined;
    let id: string | undefined;
    if (trustIncoming) {
      const incoming = req.headers[headerKey];
      if (typeof incoming === 'string' && VALID_ID.test(incoming)) id = incoming;
      const traceparent = req.headers.traceparent;
      if (typeof traceparent === 'string') traceId = traceparentTraceId(traceparent);
      const cloudTrace = req.headers['x-cloud-trace-context'];
      if (traceId === undefined && typeof cloudTrace === 'string') traceId = cloudTraceId(cloudTrace);
      id ??= traceId;
    }
    // With OpenTelemetry, the request is known by its trace id unless the client named it.
    const span = activeRequestSpan();
    id ??= span?.traceId ?? generate();
    const ctx = new RequestContext(req, id, runtimeOf(req).logger);
    if (traceId !== undefined) ctx.traceId = traceId;
    if (span !== undefined) {
      ctx.traceId = span.traceId;
      ctx.spanId = span.spanId;
      setRequestSpan(req, span);
      if (id !== span.traceId && span.span.isRecording()) span.span.setAttribute('perimeter.request_id', id);
    }
    setIdentity(req, id, ctx);
    res.setHeader(header, id);
    const proceed = req.headers.host === undefined && req.httpVersionMajor === 1 && req.httpVersionMinor >= 1 ? refuseMissingHost(res, next) : next;
    if (asyncContext) runWithContext(ctx, proceed);
    else proceed();
  };
}

/**
 * HTTP/1.1 requires a Host header (RFC 9112 §3.2: 400 without it); HTTP/1.0 may leave it out.
 * Node refuses such a request itself with a bare 400, unless `stack.attach()` turned that off so
 * the refusal carries the request id and the envelope, as here. The connection closes, as Node's
 * answer closes it: a client this broken is not kept.
 */
function refuseMissingHost(res: Response, next: NextFunction): () => void {
  // Built without a stack trace: such requests can come in floods, and the trace is never shown.
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  let err: BadRequestError;
  try {
    err = new BadRequestError('An HTTP/1.1 request must carry a Host header.', { reason: 'missing_host' });
  } finally {
    Error.stackTraceLimit = limit;
  }
  res.setHeader('Connection', 'close');
  return () => next(err);
}

/**
 * The trace id of a `traceparent` header valid under W3C Trace Context, else undefined (the
 * header is then ignored, as the spec asks: the trace restarts). Version `ff` and all-zero trace
 * or parent ids are invalid; version 00 is exactly 55 characters; a later version is read from
 * its first 55 characters, which must be followed by the end or a `-` (its own extra fields).
 * An all-zero id taken as the request id would join unrelated requests under one id.
 */
function traceparentTraceId(value: string): string | undefined {
  if (value.length < TRACEPARENT_LENGTH) return undefined;
  const version = value.slice(0, 2);
  if (version === 'ff') return undefined;
  if (value.length > TRACEPARENT_LENGTH && (version === '00' || value.charCodeAt(TRACEPARENT_LENGTH) !== 45 /* - */)) return undefined;
  const match = TRACEPARENT_00.exec(value.length === TRACEPARENT_LENGTH ? value : value.slice(0, TRACEPARENT_LENGTH));
  if (match === null || match[1] === ZERO_TRACE_ID || match[2] === ZERO_PARENT_ID) return undefined;
  return match[1];
}

/** The trace id of an `X-Cloud-Trace-Context` header (lowercased, as Cloud Trace writes it), else undefined; all zeros is no trace. */
function cloudTraceId(value: string): string | undefined {
  const id = CLOUD_TRACE.exec(value)?.[1].toLowerCase();
  return id === ZERO_TRACE_ID ? undefined : id;
}

function pickGenerator(generator: unknown, path: string): () => string {
  if (generator === 'uuidv4') return randomUUID;
  if (generator === 'uuidv7') return uuidv7;
  if (typeof generator === 'function') {
    const user = generator as () => unknown;
    return () => {
      const id = user();
      // A user generator that returns junk must not break the header or the logs.
      return typeof id === 'string' && VALID_ID.test(id) ? id : randomUUID();
    };
  }
  throw new ConfigError(path, `expected 'uuidv4', 'uuidv7' or a function returning a string, got ${describe(generator)}`);
}
