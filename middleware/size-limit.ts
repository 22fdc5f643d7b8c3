import type { NextFunction, Request, RequestHandler, Response } from 'express';
import typeis from 'type-is';
import { ConfigError, PayloadTooLargeError, UnsupportedMediaTypeError } from '../lib/errors';
import { answerEarly, lingeringClose } from '../lib/late-response';
import { bytes, defineOptions, option } from '../lib/options';
import { runtimeOf } from '../lib/runtime';
import type { EntryContext, StackHandler } from '../lib/stack-entries';
import { describe, parseBytes } from '../lib/units';
import { onResponseDone } from '../lib/response-done';
import type { PerimeterHandler } from '../types/express-augment';

/** Options of {@link sizeLimit}. */
export interface SizeLimitOptions {
  /** Largest request body, in bytes or as a size like '1mb'. Defaults to '1mb'. */
  max?: number | string;
  /** Content types accepted for requests that have a body ('json', 'image/*', 'application/*+json'); others get 415. Defaults to any type. */
  types?: string[];
  /** Limits by `req.auth.tier`, e.g. `{ free: '5mb', pro: '25mb' }`; a request without a listed tier gets `max`. Defaults to none. */
  tiers?: Record<string, number | string>;
}

/** What the options come to once validated. */
interface SizeLimitConfig {
  max: number;
  tiers: Map<string, number> | undefined;
  /** The largest of `max` and every tier: what a request may carry before its tier is known. */
  ceiling: number;
  types: string[] | undefined;
}

const GUARD = Symbol('express-perimeter.sizeLimit');

// The largest limit any sizeLimit() outside a stack was created with: a stack defers a body up
// to this size to the route, whose own sizeLimit may allow it. Beyond it nothing could.
let largestRouteLimit = 0;

/**
 * Refuses request bodies larger than `max` with 413 PAYLOAD_TOO_LARGE: from Content-Length before
 * a byte is read, and while streaming when there is none (counting bytes as the HTTP parser
 * delivers them, whatever reads the body). `types` refuses other content types with 415.
 *
 * The innermost sizeLimit wins: one on a route sets the limit for that route's requests, smaller
 * or larger than the stack's (see the README for what a stack can and cannot defer to a route).
 */
export function sizeLimit(options?: SizeLimitOptions): PerimeterHandler;
export function sizeLimit(options: SizeLimitOptions = {}): RequestHandler {
  const config = parseOptions(options);
  largestRouteLimit = Math.max(largestRouteLimit, config.ceiling);
  const { max, tiers } = config;
  const limitOf = tiers === undefined ? () => max : (req: Request) => tierLimit(req, tiers, max);
  return createHandler(config, limitOf, undefined, 'sizeLimitMiddleware');
}

/**
 * @internal The stack's sizeLimit (createStack builds it; use {@link sizeLimit} yourself). The tier is only known after `auth`, which runs after bodyParser, so the
 * early check allows the largest of `max` and every tier, and a second check placed right after
 * `auth` (see `extra`) holds each request to its own tier's limit. Bodies the stack's bodyParser
 * reads (per the stack's `bodyParser` config) are final here; any other body
 * over the limit is left for a route-level sizeLimit to allow, and refused once anything reads it.
 */
export function stackSizeLimit(options: SizeLimitOptions, ctx: EntryContext): StackHandler {
  const config = parseOptions(options);
  const readByStack = typesReadBy(ctx.config.bodyParser);
  const { max, ceiling, tiers } = config;
  const handler: StackHandler = createHandler(config, () => ceiling, readByStack, 'sizeLimitMiddleware');
  if (tiers !== undefined) {
    const tierCheck = createHandler({ ...config, types: undefined }, (req) => tierLimit(req, tiers, max), readByStack, 'sizeLimitTierMiddleware');
    handler.extra = [{ name: 'sizeLimitTier', after: 'auth', handler: tierCheck }];
  }
  return handler;
}

/** @internal The largest body a sizeLimit config lets in before the tier is known (bodyParser's limit in a stack). */
export function sizeLimitCeiling(options: SizeLimitOptions | undefined): number {
  return parseOptions(options ?? {}).ceiling;
}

// The content types the stack's bodyParser parses before routing (true: a type function, so any).
function typesReadBy(bodyParserConfig: unknown): string[] | true {
  if (bodyParserConfig === false) return [];
  const o = (bodyParserConfig !== null && typeof bodyParserConfig === 'object' ? bodyParserConfig : {}) as Record<string, unknown>;
  const types: string[] = [];
  for (const [key, fallback] of [['json', 'application/json'], ['urlencoded', 'application/x-www-form-urlencoded']]) {
    if (o[key] === false) continue;
    const type = o[key] !== null && typeof o[key] === 'object' ? (o[key] as { type?: unknown }).type : undefined;
    if (typeof type === 'function') return true;
    types.push(...(typeof type === 'string' ? [type] : Array.isArray(type) ? (type as string[]) : [fallback]));
  }
  return types;
}

// Every option of sizeLimit() once: its default and its check (the interface's JSDoc is its doc).
const parseTable = defineOptions<SizeLimitOptions>()('sizeLimit', {
  max: bytes('1mb'),
  types: option("content types like ['json', 'image/*']", typesOption),
  tiers: option("tier names to sizes like { free: '5mb', pro: '25mb' }", tiersOption),
});

function parseOptions(options: SizeLimitOptions): SizeLimitConfig {
  const { max, types, tiers } = parseTable(options);
  let ceiling = max;
  for (const bytes of tiers?.values() ?? []) ceiling = Math.max(ceiling, bytes);
  return { max, tiers, ceiling, types };
}

function tiersOption(value: unknown, path: string): Map<string, number> | undefined {
  if (value === undefined) return undefined;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ConfigError(path, `expected an object of tier names to sizes like { free: '5mb', pro: '25mb' }, got ${describe(value)}`);
  }
  // A Map, so a tier named 'constructor' or '__proto__' in a token is just an unknown tier.
  const tiers = new Map<string, number>();
  for (const [tier, size] of Object.entries(value)) tiers.set(tier, parseBytes(size, `${path}.${tier}`));
  return tiers;
}

function typesOption(value: unknown, path: string): string[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.length === 0) {
    throw new ConfigError(path, `expected a non-empty array of content types like ['json', 'image/*'], got ${describe(value)}; leave it out to accept any type`);
  }
  for (const type of value) {
    if (typeof type !== 'string' || typeis.normalize(type) === false) {
      throw new ConfigError(path, `${describe(type)} is not a content type type-is understands; write a MIME type ('application/pdf'), a wildcard ('image/*', '+json') or an extension ('json', 'png')`);
    }
  }
  return [...(value as string[])];
}

function tierLimit(req: Request, tiers: Map<string, number>, max: number): number {
  const tier = req.auth?.tier;
  return (tier === undefined ? undefined : tiers.get(tier)) ?? max;
}

function createHandler(
  config: SizeLimitConfig,
  limitOf: (req: Request) => number,
  readByStack: string[] | true | undefined,
  name: string,
): RequestHandler {
  const { types } = config;
  const accepted = types?.join(', ');
  const handler = function sizeLimitMiddleware(req: Request, res: Response, next: NextFunction): void {
    const chunked = req.headers['transfer-encoding'] !== undefined;
    const length = req.headers['content-length'];
    // Transfer-Encoding overrides Content-Length (RFC 9112); Node's parser already refused invalid lengths.
    const declared = chunked || length === undefined ? undefined : Number(length);
    if (!chunked && (declared === undefined || declared === 0)) return next();
    if (types !== undefined && !typeis(req, types)) {
      return next(new UnsupportedMediaTypeError(`The request body must be one of: ${accepted}.`, { accepted: types }));
    }
    const limit = limitOf(req);
    const guard = (req as WithGuard)[GUARD];
    if (guard !== undefined) return guard.check(limit, readByStack, next);
    // The common case stays allocation-free: a declared length within the limit needs no counting,
    // since Node's parser never delivers more body than Content-Length says.
    if (declared !== undefined && declared <= limit) return next();
    new BodyGuard(req, res, declared).check(limit, readByStack, next);
  };
  Object.defineProperty(handler, 'name', { value: name });
  return handler;
}

type WithGuard = { [GUARD]?: BodyGuard };

const OPEN = 0;
/** Over the limit in force, waiting for a route-level sizeLimit to allow it (or a reader to refuse it). */
const DEFERRED = 1;
/** Refused: the rest of the body is thrown away as it arrives. */
const TRIPPED = 2;

/**
 * Counts one request's body as the HTTP parser hands it over (`req.push` is what the parser calls
 * for every chunk and at the end), so the count holds whatever reads the body: body-parser, a
 * pipe, multer, async iteration. Shared by every sizeLimit the request passes through; each one
 * sets the limit in force, so the innermost wins.
 */
class BodyGuard {
  private limit = Infinity;
  private received: number;
  private state = OPEN;
  /** The body types the stack reads itself, when the limit in force is the stack's (undefined: a route's, final). */
  private readByStack: string[] | true | undefined;
  /** Whether a route may still raise the limit in force, worked out on first need. */
  private deferrable: boolean | undefined;
  /** The parser's end of body: held back while deferred or refused, so no reader sees a complete oversized body. */
  private heldEnd = false;
  /** Whether the end of body already reached the stream (it arrived before any sizeLimit ran). */
  private readonly endPassed: boolean;
  private ended: boolean;
  private responseDone = false;
  private readonly push: Request['push'];
  private readonly onNewListener = (event: string | symbol): void => {
    if (this.state === DEFERRED && (event === 'data' || event === 'readable')) this.trip(undefined);
  };

  constructor(
    private readonly req: Request,
    private readonly res: Response,
    private readonly declared: number | undefined,
  ) {
    // Bytes that arrived while earlier (asynchronous) middleware ran are already buffered.
    this.received = req.readableLength;
    this.endPassed = this.ended = req.complete;
    this.push = req.push;
    req.push = (chunk: unknown, encoding?: BufferEncoding) => this.onPush(chunk, encoding);
    (req as WithGuard)[GUARD] = this;
  }

  /** Sets the limit in force and decides: next(), next(413), or defer to a later sizeLimit. */
  check(limit: number, readByStack: string[] | true | undefined, next: NextFunction): void {
    if (this.state === TRIPPED) return; // already answered 413; the chain stops here
    this.limit = limit;
    this.readByStack = readByStack;
    this.deferrable = undefined;
    if (this.evaluate()) next();
    else this.trip(next);
  }

  private size(): number {
    return this.declared ?? this.received;
  }

  /** False when the body must be refused now. */
  private evaluate(): boolean {
    const size = this.size();
    if (size <= this.limit) {
      if (this.state === DEFERRED) this.undefer();
      return true;
    }
    const req = this.req;
    if (size <= largestRouteLimit && !this.endPassed && !hasReader(req) && this.isDeferrable()) {
      if (this.state !== DEFERRED) {
        this.state = DEFERRED;
        req.on('newListener', this.onNewListener);
      }
      return true;
    }
    return false;
  }

  private isDeferrable(): boolean {
    const types = this.readByStack;
    // A body the stack's bodyParser reads is read before any route runs: the stack's limit is final.
    return (this.deferrable ??= types !== undefined && types !== true && (types.length === 0 || !typeis(this.req, types)));
  }

  private undefer(): void {
    this.state = OPEN;
    this.req.removeListener('newListener', this.onNewListener);
    if (this.heldEnd) {
      this.heldEnd = false;
      this.push.call(this.req, null);
    }
  }

  private onPush(chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk === null) {
      this.ended = true;
      if (this.state === OPEN) return this.push.call(this.req, null);
      if (this.state === DEFERRED) {
        this.heldEnd = true;
        return false;
      }
      // Refused: a reader must never see the end of a body it got only part of, as if complete;
      // a mere drain (Express's final handler waits for the request to end) may, so it can finish.
      if (!hasReader(this.req)) this.push.call(this.req, null);
      this.settle();
      return false;
    }
    // Swallowed, and `true` keeps the socket draining.
    if (this.state === TRIPPED) return true;
    this.received += typeof chunk === 'string' ? Buffer.byteLength(chunk, encoding) : (chunk as Buffer).length;
    if (this.received > this.limit && !this.evaluate()) {
      this.trip(undefined);
      return true;
    }
    return this.push.call(this.req, chunk, encoding);
  }

  /**
   * Refuses the body. Inside the chain (`next` given) the 413 goes down it like any rejection;
   * from a stream event it is answered at once through the error envelope, and whatever was
   * reading the body is left waiting, never sees its end, and is cut off once the response is out.
   */
  private trip(next: NextFunction | undefined): void {
    const { req, res } = this;
    this.state = TRIPPED;
    req.removeListener('newListener', this.onNewListener);
    const size = this.size();
    const err = new PayloadTooLargeError(`The request body is larger than the limit of ${this.limit} bytes.`, { limit: this.limit, received: size });
    onResponseDone(res, () => this.afterResponse());
    if (next !== undefined) next(err);
    // Already answered (by the handler, or a timeout): only the rest of the body is refused.
    else if (!res.writableEnded) answerEarly(req, res, err, 'ERR_SIZE_LIMIT_LATE_WRITE', runtimeOf(req));
  }

  private afterResponse(): void {
    this.responseDone = true;
    if (this.ended) return this.settle();
    const socket = this.req.socket;
    if (socket === null || socket.destroyed) return cutOff(this.req);
    // The rest of the body is still on its way: the 413 said `Connection: close` (or the handler
    // had answered before the body grew too large); the connection ends without a reset, and a
    // reader still waiting goes with it.
    lingeringClose(socket, this.req);
  }

  /** Once the 413 is out and the body is in, a reader still waiting for its end is cut off. */
  private settle(): void {
    if (!this.ended || !this.responseDone) return;
    // Destroying the request closes the connection; with the whole body read, that is a clean close.
    if (hasReader(this.req)) cutOff(this.req);
  }
}

function hasReader(req: Request): boolean {
  return req.listenerCount('data') > 0 || req.listenerCount('readable') > 0;
}

function cutOff(req: Request): void {
  if (!req.destroyed) req.destroy();
}
