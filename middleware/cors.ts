import type { RequestHandler } from 'express';
import corsPackage, { type CorsOptions } from 'cors';
import { ConfigError } from '../lib/errors';
import { defineOptions, passThrough } from '../lib/options';
import type { PerimeterHandler } from '../types/express-augment';

/** Options of {@link cors}: the `cors` package's options, checked at setup. */
export type PerimeterCorsOptions = CorsOptions;

// The `cors` package's options; it checks their values, and the origins are checked below.
const corsOption = passThrough<unknown>("the cors package's option of that name");
const parseOptions = defineOptions<PerimeterCorsOptions>()('cors', {
  origin: corsOption,
  methods: corsOption,
  allowedHeaders: corsOption,
  exposedHeaders: corsOption,
  credentials: corsOption,
  maxAge: corsOption,
  preflightContinue: corsOption,
  optionsSuccessStatus: corsOption,
});

/**
 * The `cors` package, with setup checks: `origin: '*'` (or `true`) together with
 * `credentials: true` is refused, since browsers reject that combination.
 */
export function cors(options?: PerimeterCorsOptions): PerimeterHandler;
export function cors(options: PerimeterCorsOptions = {}): RequestHandler {
  const { origin, credentials } = parseOptions(options);
  const wildcard = origin === '*' || origin === true || (Array.isArray(origin) && origin.includes('*'));
  if (wildcard && credentials === true) {
    throw new ConfigError('cors.origin', "'*' with credentials: true is refused by browsers; list the origins instead (origin: ['https://app.example.com'])");
  }
  if (Array.isArray(origin)) {
    for (const o of origin) {
      if (typeof o === 'string' && o !== '*' && !/^https?:\/\/[^/\s]+$/.test(o)) {
        throw new ConfigError('cors.origin', `'${o}' is not an origin; write scheme and host without a path, like 'https://app.example.com'`);
      }
    }
  }
  const handler = corsPackage(options ?? {});
  return function corsMiddleware(req, res, next) {
    handler(req, res, next);
  };
}
