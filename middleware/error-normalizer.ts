import type { ErrorRequestHandler } from 'express';
import { createErrorResponder, type ErrorResponseOptions } from '../lib/error-response';
import { checkOptions } from '../lib/options';
import { runtimeOf } from '../lib/runtime';
import type { PerimeterErrorHandler } from '../types/express-augment';

/** Options of {@link errorNormalizer}. */
export type ErrorNormalizerOptions = ErrorResponseOptions;

/**
 * The last error handler: every error leaves as `{ error: { code, message, request_id, details? } }`
 * (or RFC 9457 problem+json with `format: 'problem'`). In production 5xx internals stay in the log.
 */
export function errorNormalizer(options?: ErrorNormalizerOptions): PerimeterErrorHandler;
export function errorNormalizer(options: ErrorNormalizerOptions = {}): ErrorRequestHandler {
  checkOptions('errorNormalizer', options, ['format', 'expose', 'map', 'problemTypeBase']);
  const respond = createErrorResponder(options, (req) => req.context?.log ?? runtimeOf(req).logger);
  return function errorNormalizerMiddleware(err, req, res, _next) {
    respond(err, req, res);
  };
}
