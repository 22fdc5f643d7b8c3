import type { RequestHandler } from 'express';
import { NotFoundError } from '../lib/errors';
import { refuseRequest } from '../lib/options';
import type { PerimeterHandler } from '../types/express-augment';

/** Turns a request no route answered into 404 NOT_FOUND, passed on to `errorNormalizer`. */
export function notFound(): PerimeterHandler;
export function notFound(...args: unknown[]): RequestHandler {
  // Mounted as app.use(notFound), it would hand every request a middleware and never answer.
  refuseRequest('notFound', args[0]);
  return function notFoundMiddleware(req, _res, next) {
    next(new NotFoundError(`No route for ${req.method} ${req.path}.`));
  };
}
