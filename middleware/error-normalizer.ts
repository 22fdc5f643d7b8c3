import type { ErrorRequestHandler } from 'express';
import { createErrorResponder, type ErrorResponseOptions } from '../lib/error-response';
import { defineOptions, passThrough } from '../lib/options';
import { runtimeOf } from '../lib/runtime';
import type { PerimeterErrorHandler } from '../types/express-augment';

/** Options of {@link errorNormalizer}. */
export type ErrorNormalizerOptions = ErrorResponseOptions;

// The keys of errorNormalizer() once; their values are checked by createErrorResponder, which
// createStack's error options share.
const parseOptions = defineOptions<ErrorNormalizerOptions>()('errorNormalizer', {
  format: passThrough<ErrorNormalizerOptions['format']>("'envelope' or 'problem'"),
  expose: passThrough<boolean>('true or false'),
  map: passThrough<ErrorNormalizerOptions['map']>('a Map (or pairs) of error classes to { status, code, message }'),
  problemTypeBase: passThrough<string>('a URL the problem type is resolved against'),
});

/**
 * The last error handler: every error leaves as `{ error: { code, message, request_id, details? } }`
 * (or RFC 9457 problem+json with `format: 'problem'`). In production 5xx internals stay in the log.
 */
export function errorNormalizer(options?: ErrorNormalizerOptions): PerimeterErrorHandler;
export function errorNormalizer(options: ErrorNormalizerOptions = {}): ErrorRequestHandler {
  const respond = createErrorResponder(parseOptions(options), (req) => req.context?.log ?? runtimeOf(req).logger);
  return function errorNormalizerMiddleware(err, req, res, _next) {
    respond(err, req, res);
  };
}
