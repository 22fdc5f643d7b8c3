import type { IncomingMessage } from 'node:http';
import type { NextFunction, Request, Response } from 'express';
import type { RequestContext, ContextUser } from '../lib/context';

/** How the request authenticated, as `auth` sets it on `req.auth`. */
export interface AuthInfo {
  method: 'jwt' | 'apiKey';
  /** Rate-limit tier of the key or the user's plan, when known. */
  tier?: string;
  /** The verified JWT claims (method 'jwt' only), for claims `req.user` does not map. */
  claims?: Readonly<Record<string, unknown>>;
}

/** The API key that authenticated the request, without its secret. */
export interface ApiKeyInfo {
  name?: string;
  tier?: string;
  userId?: string;
  [field: string]: unknown;
}

/** The resolved tenant of the request. */
export interface TenantInfo {
  id: string;
  config?: unknown;
}

/** Feature flags evaluated for the request. */
export interface RequestFeatures {
  isEnabled(name: string): boolean;
  all(): Record<string, boolean>;
}

/**
 * A middleware as express-perimeter's factories return it. It is generic over Express's request
 * type parameters, like a handler written inline, so adding it to a route leaves the route's own
 * typing alone: in `app.get('/x/:id', rateLimit(), (req) => …)`, `req.params.id` stays a
 * `string`. (Typed as Express's `RequestHandler`, its default `ParamsDictionary` would become the
 * params of the whole route, and `id` a `string | string[]` under @types/express 5.) It is
 * assignable to `RequestHandler` wherever one is expected. Each factory declares it as its public
 * signature and builds the handler itself as a plain `RequestHandler`.
 */
export interface PerimeterHandler {
  <P = Request['params'], ResBody = any, ReqBody = any, ReqQuery = Request['query'], Locals extends Record<string, any> = Record<string, any>>(
    req: Request<P, ResBody, ReqBody, ReqQuery, Locals>,
    res: Response<ResBody, Locals>,
    next: NextFunction,
  ): void;
}

/** An error handler as `errorNormalizer` returns it: generic for the same reason as {@link PerimeterHandler}. */
export interface PerimeterErrorHandler {
  <P = Request['params'], ResBody = any, ReqBody = any, ReqQuery = Request['query'], Locals extends Record<string, any> = Record<string, any>>(
    err: any,
    req: Request<P, ResBody, ReqBody, ReqQuery, Locals>,
    res: Response<ResBody, Locals>,
    next: NextFunction,
  ): void;
}

// Node's typings declare `IncomingMessage.signal` from v26 on (`readonly signal: AbortSignal`).
// Express's `Request` extends both `IncomingMessage` and `Express.Request`, and TypeScript refuses
// two bases whose `signal` declarations differ in any way, so `req.signal` is declared here only
// when Node's typings lack it; either way it reads as a readonly AbortSignal.
type RequestSignal = 'signal' extends keyof IncomingMessage
  ? Record<never, never>
  : {
      /** Aborted when the request times out or the client disconnects. Set by `timeout`. */
      readonly signal: AbortSignal;
    };

declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    // Declared as Express.User (not a new `user` property) so it merges with passport's typings.
    // eslint-disable-next-line @typescript-eslint/no-empty-object-type
    interface User extends Partial<ContextUser> {}

    interface Request extends RequestSignal {
      /** The request id (`X-Request-ID`). Set by `requestId`. */
      id: string;
      /** What is known about this request. Set by `requestId` (or the first perimeter middleware). */
      context: RequestContext;
      /** The authenticated user. Set by `auth`. */
      user?: User;
      /** The API key that authenticated the request. Set by `auth`. */
      apiKey?: ApiKeyInfo;
      /** How the request authenticated. Set by `auth`. */
      auth?: AuthInfo;
      /** The resolved tenant. Set by `tenant`. */
      tenant?: TenantInfo;
      /** Feature flags for this request. Set by `featureFlags`. */
      features?: RequestFeatures;
    }
  }
}
