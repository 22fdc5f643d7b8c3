import type { RequestHandler } from 'express';
import { NotFoundError } from '../lib/errors';
import type { PerimeterHandler } from '../types/express-augment';

/** Turns a request no route answered into 404 NOT_FOUND, passed on to `errorNormalizer`. */
export function notFound(): PerimeterHandler;
export function notFound(): RequestHandler {
  return function notFoundMiddleware(req, _res, next) {
    next(new NotFoundError(`No route for ${req.method} ${req.path}.`));
  };
}
