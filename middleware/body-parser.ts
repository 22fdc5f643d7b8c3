import type { RequestHandler } from 'express';
import bodyParserPackage from 'body-parser';
import { bindToContext } from '../lib/context';
import { bytes, defineOptions, passThrough } from '../lib/options';
import type { EntryContext } from '../lib/stack-entries';
import type { PerimeterHandler } from '../types/express-augment';
import { sizeLimitCeiling } from './size-limit';

/** Options of {@link bodyParser}. */
export interface BodyParserOptions {
  /** Parse `application/json` (or pass body-parser's json options). Defaults to true. */
  json?: boolean | bodyParserPackage.OptionsJson;
  /** Parse `application/x-www-form-urlencoded` (or pass its options). Defaults to true, with `extended: false`. */
  urlencoded?: boolean | bodyParserPackage.OptionsUrlencoded;
  /** Largest body read. Defaults to sizeLimit's `max` inside a stack, else '1mb'. */
  limit?: number | string;
}

// Every option of bodyParser() once: its default and its check (the interface's JSDoc is its doc).
// `json` and `urlencoded` are body-parser's own options, which it checks itself.
const parseOptions = defineOptions<BodyParserOptions>()('bodyParser', {
  json: passThrough<boolean | bodyParserPackage.OptionsJson>("true, false or body-parser's json options"),
  urlencoded: passThrough<boolean | bodyParserPackage.OptionsUrlencoded>("true, false or body-parser's urlencoded options"),
  limit: bytes('1mb'),
});

/**
 * JSON and urlencoded body parsing (body-parser) with the size limit enforced while streaming.
 * Malformed JSON → 400 INVALID_JSON; too large → 413 PAYLOAD_TOO_LARGE.
 */
export function bodyParser(options?: BodyParserOptions): PerimeterHandler;
export function bodyParser(options: BodyParserOptions = {}): RequestHandler {
  const { json, urlencoded, limit } = parseOptions(options);
  const parsers: RequestHandler[] = [];
  if (json !== false) {
    parsers.push(bodyParserPackage.json({ limit, ...(typeof json === 'object' ? json : {}) }));
  }
  if (urlencoded !== false) {
    parsers.push(bodyParserPackage.urlencoded({ limit, extended: false, parameterLimit: 1000, ...(typeof urlencoded === 'object' ? urlencoded : {}) }));
  }
  return function bodyParserMiddleware(req, res, next) {
    // Bodyless requests skip the parsers entirely.
    if (req.headers['content-type'] === undefined || (req.headers['content-length'] === undefined && req.headers['transfer-encoding'] === undefined)) {
      return next();
    }
    // Parsers call back from stream events, outside the request context: re-enter it.
    const done = bindToContext(req, next as (err?: unknown) => void);
    let i = 0;
    const step = (err?: unknown): void => {
      if (err || i === parsers.length) return done(err);
      parsers[i++](req, res, step);
    };
    step();
  };
}

/**
 * @internal The stack's bodyParser (createStack builds it). sizeLimit counts exactly (per tier,
 * per route); this is the backstop, at the largest limit sizeLimit allows before the tier is known
 * (it also bounds gzip bodies once inflated).
 */
export function stackBodyParser(options: BodyParserOptions, { config }: EntryContext): RequestHandler {
  const size = config.sizeLimit;
  const max = size && typeof size === 'object' ? sizeLimitCeiling(size) : undefined;
  return bodyParser({ ...options, limit: options.limit ?? max ?? '1mb' });
}
