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

declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    // Declared as Express.User (not a new `user` property) so it merges with passport's typings.
    // eslint-disable-next-line @typescript-eslint/no-empty-object-type
    interface User extends Partial<ContextUser> {}

    interface Request {
      /** The request id (`X-Request-ID`). Set by `requestId`. */
      id: string;
      /** What is known about this request. Set by `requestId` (or the first perimeter middleware). */
      context: RequestContext;
      /** Aborted when the request times out or the client disconnects. Set by `timeout`. */
      signal: AbortSignal;
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

export {};
