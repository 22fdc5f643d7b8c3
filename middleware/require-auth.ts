import type { NextFunction, Request, RequestHandler } from 'express';
import { AuthenticationError, ConfigError, ForbiddenError } from '../lib/errors';
import { checkOptions, refuseRequest } from '../lib/options';
import { runtimeOf } from '../lib/runtime';
import { describe } from '../lib/units';
import { warnOnce } from '../lib/warnings';
import { authSawRequest, recordFailure } from './auth';
import type { PerimeterHandler } from '../types/express-augment';

// Guards take no options today; the parameter exists so app.use(requireAuth) (without the call)
// is caught with an explanation instead of hanging every request.
/** Options of the guards: none yet. */
export type GuardOptions = Record<string, never>;

function refuseAnonymous(req: Request, next: NextFunction, message: string): void {
  if (!authSawRequest(req)) warnOnce(runtimeOf(req).logger, 'ERR_GUARD_WITHOUT_AUTH', { path: req.path });
  recordFailure(req, { reason: 'missing', code: 'AUTHENTICATION_REQUIRED' });
  next(new AuthenticationError(message));
}

/**
 * 401 AUTHENTICATION_REQUIRED unless `auth` authenticated the request (by JWT or API key).
 * Use it behind `auth({ required: false })` on the routes that need a caller.
 */
export function requireAuth(options?: GuardOptions): PerimeterHandler;
export function requireAuth(options?: GuardOptions): RequestHandler {
  checkOptions('requireAuth', options, []);
  return function requireAuthMiddleware(req, _res, next) {
    if (req.user !== undefined || req.apiKey !== undefined) return next();
    refuseAnonymous(req, next, 'Authentication is required for this endpoint.');
  };
}

/**
 * 401 AUTHENTICATION_REQUIRED unless the request authenticated with an API key. A request that
 * authenticated with a JWT is refused too (it sent no key, or its key lost to the token): the
 * endpoint is for machine clients, which `req.apiKey` identifies for usage tracking. Invalid keys
 * never reach the guard: `auth` has already answered 401 INVALID_API_KEY.
 */
export function requireApiKey(options?: GuardOptions): PerimeterHandler;
export function requireApiKey(options?: GuardOptions): RequestHandler {
  checkOptions('requireApiKey', options, []);
  return function requireApiKeyMiddleware(req, _res, next) {
    if (req.apiKey !== undefined) return next();
    refuseAnonymous(
      req,
      next,
      req.auth?.method === 'jwt'
        ? 'This endpoint takes an API key, not a token; send the X-API-Key header without a Bearer token.'
        : 'This endpoint requires an API key (X-API-Key header).',
    );
  };
}

/**
 * 403 FORBIDDEN unless `req.user.roles` holds at least one of `roles`; 401 AUTHENTICATION_REQUIRED
 * when the request is anonymous. API-key requests carry no roles, so they get 403.
 */
export function requireRole(...roles: Array<string | string[]>): PerimeterHandler;
export function requireRole(...roles: Array<string | string[]>): RequestHandler {
  const first = roles[0] as unknown;
  refuseRequest('requireRole', first, "requireRole('admin')");
  if (first !== null && typeof first === 'object' && !Array.isArray(first)) {
    checkOptions('requireRole', first as object, []);
  }
  const wanted = roles.flat();
  if (wanted.length === 0)
    throw new ConfigError('requireRole', "needs at least one role: requireRole('admin') or requireRole('admin', 'ops')");
  for (const role of wanted) {
    if (typeof role !== 'string' || role === '')
      throw new ConfigError('requireRole', `expected role names as strings, got ${describe(role)}`);
  }
  const allowed = new Set(wanted);
  const message = `This endpoint requires the role${allowed.size > 1 ? `s ${wanted.join(' or ')}` : ` ${wanted[0]}`}.`;
  return function requireRoleMiddleware(req, _res, next) {
    const user = req.user;
    if (user === undefined && req.apiKey === undefined) return refuseAnonymous(req, next, 'Authentication is required for this endpoint.');
    const held = user?.roles;
    if (Array.isArray(held)) {
      for (const role of held) if (allowed.has(role)) return next();
    }
    recordFailure(req, { reason: 'forbidden', code: 'FORBIDDEN', required_roles: wanted });
    next(new ForbiddenError(message));
  };
}
