import type { RequestHandler } from 'express';
import corsPackage, { type CorsOptions } from 'cors';
import { ConfigError } from '../lib/errors';
import { refuseRequest } from '../lib/options';
import type { PerimeterHandler } from '../types/express-augment';

/** Options of {@link cors}: the `cors` package's options, checked at setup. */
export type PerimeterCorsOptions = CorsOptions;

/**
 * The `cors` package, with setup checks: `origin: '*'` (or `true`) together with
 * `credentials: true` is refused, since browsers reject that combination.
 */
export function cors(options?: PerimeterCorsOptions): PerimeterHandler;
export function cors(options: PerimeterCorsOptions = {}): RequestHandler {
  refuseRequest('cors', options);
  if (options === null || typeof options !== 'object') {
    throw new ConfigError('cors', 'expected an options object like { origin: [\'https://app.example.com\'] }');
  }
  const origin = options.origin;
  const wildcard = origin === '*' || origin === true || (Array.isArray(origin) && origin.includes('*'));
  if (wildcard && options.credentials === true) {
    throw new ConfigError('cors.origin', "'*' with credentials: true is refused by browsers; list the origins instead (origin: ['https://app.example.com'])");
  }
  if (Array.isArray(origin)) {
    for (const o of origin) {
      if (typeof o === 'string' && o !== '*' && !/^https?:\/\/[^/\s]+$/.test(o)) {
        throw new ConfigError('cors.origin', `'${o}' is not an origin; write scheme and host without a path, like 'https://app.example.com'`);
      }
    }
  }
  const handler = corsPackage(options);
  return function corsMiddleware(req, res, next) {
    handler(req, res, next);
  };
}
