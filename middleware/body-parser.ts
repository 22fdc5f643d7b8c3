import type { RequestHandler } from 'express';
import bodyParserPackage from 'body-parser';
import { bindToContext } from '../lib/context';
import { checkOptions } from '../lib/options';
import { parseBytes } from '../lib/units';
import type { PerimeterHandler } from '../types/express-augment';

/** Options of {@link bodyParser}. */
export interface BodyParserOptions {
  /** Parse `application/json` (or pass body-parser's json options). Defaults to true. */
  json?: boolean | bodyParserPackage.OptionsJson;
  /** Parse `application/x-www-form-urlencoded` (or pass its options). Defaults to true, with `extended: false`. */
  urlencoded?: boolean | bodyParserPackage.OptionsUrlencoded;
  /** Largest body read. Defaults to sizeLimit's `max` inside a stack, else '1mb'. */
  limit?: number | string;
}

/**
 * JSON and urlencoded body parsing (body-parser) with the size limit enforced while streaming.
 * Malformed JSON → 400 INVALID_JSON; too large → 413 PAYLOAD_TOO_LARGE.
 */
export function bodyParser(options?: BodyParserOptions): PerimeterHandler;
export function bodyParser(options: BodyParserOptions = {}): RequestHandler {
  checkOptions('bodyParser', options, ['json', 'urlencoded', 'limit']);
  const limit = parseBytes(options.limit ?? '1mb', 'bodyParser.limit');
  const parsers: RequestHandler[] = [];
  if (options.json !== false) {
    parsers.push(bodyParserPackage.json({ limit, ...(typeof options.json === 'object' ? options.json : {}) }));
  }
  if (options.urlencoded !== false) {
    parsers.push(bodyParserPackage.urlencoded({ limit, extended: false, parameterLimit: 1000, ...(typeof options.urlencoded === 'object' ? options.urlencoded : {}) }));
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
