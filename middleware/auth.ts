import type { NextFunction, Request, RequestHandler } from 'express';
import { parseCookie } from 'cookie';
import { buildKeyTable, CachedLoader, sha256Hex, toRecord, type ApiKeyEntry, type ApiKeyLookup, type ApiKeyRecord } from '../lib/api-keys';
import type { ContextUser } from '../lib/context';
import { AuthenticationError, ConfigError, ServiceUnavailableError } from '../lib/errors';
import { AuthFailure, createJwtVerifier, KeySourceUnavailable, type JwtClaims, type JwtOptions, type JwtVerifier } from '../lib/jwt-verify';
import { defaultLogger, type Logger } from '../lib/logger';
import { counter } from '../lib/metrics-registry';
import { callback, checkCallback, count, defineOptions, duration, flag, headerName, loggerOption, option, passThrough } from '../lib/options';
import { perRuntime, runtimeOf } from '../lib/runtime';
import { describe } from '../lib/units';
import { warnOnce } from '../lib/warnings';
import type { EntryContext } from '../lib/stack-entries';
import { recordOnSpan, spanOf } from '../lib/otel';
import type { PerimeterHandler } from '../types/express-augment';

export type { ApiKeyEntry, ApiKeyLookup, ApiKeyLookupResult } from '../lib/api-keys';
export type { JwtAlgorithm, JwtClaims, JwtHeader, JwtKeyMaterial, JwtOptions } from '../lib/jwt-verify';

/** Options of {@link auth}. */
export interface AuthOptions {
  /** JWT verification (`secret` | `publicKey` | `jwksUri` | `discovery` | `getKey`, `algorithms`, `issuer`, `audience`, `clockTolerance`); `false` turns JWTs off. Defaults to `JWT_PUBLIC_KEY` or `JWT_SECRET` from the environment when set, else off. */
  jwt?: JwtOptions | false;
  /** Keys accepted in `X-API-Key`: `{ key | hash, name, tier, userId, expiresAt, active }`. Defaults to none. */
  apiKeys?: ApiKeyEntry[];
  /** Finds a key not in `apiKeys` (called with the key and its SHA-256 hex); `null` for unknown. Defaults to none. */
  lookup?: ApiKeyLookup;
  /** How long a `lookup` answer is reused, as a duration. Defaults to '60s'. */
  lookupCacheTtl?: string | number;
  /** How long "unknown key" from `lookup` and "no user" from `loadUser` are reused, as a duration. Defaults to '5s'. */
  negativeCacheTtl?: string | number;
  /** Most entries in each of the lookup and user caches. Defaults to 10000. */
  cacheMax?: number;
  /** Loads the user for verified claims (async); its fields override the claims' on `req.user`; `null` refuses the token. Defaults to none. */
  loadUser?: (claims: Readonly<JwtClaims>) => Promise<Partial<ContextUser> | null | undefined> | Partial<ContextUser> | null | undefined;
  /** How long a `loadUser` result is reused per subject, as a duration. Defaults to '60s'. */
  userCacheTtl?: string | number;
  /** Cookie that may carry the JWT when there is no `Authorization` header. Defaults to none. */
  cookie?: string;
  /** Header that carries the API key. Defaults to 'X-API-Key'. */
  apiKeyHeader?: string;
  /** Refuse requests with no credential (401). A bad credential is refused either way. Defaults to true. */
  required?: boolean;
  /** Logger for setup warnings, and failure lines of requests without a context. Defaults to the stack's logger, else the default logger. */
  logger?: Logger;
  /** Current time in epoch ms, for `exp`/`nbf`, key expiry and cache lifetimes. Defaults to `Date.now`. */
  clock?: () => number;
}

// Every option of auth() once: its default and its check (the interface's JSDoc is its doc).
// `jwt` and `apiKeys` are checked as they compile (createJwtVerifier, buildKeyTable).
const parseOptions = defineOptions<AuthOptions>()('auth', {
  jwt: passThrough<JwtOptions | false>("{ secret | publicKey | jwksUri | discovery | getKey, … }, or false"),
  apiKeys: passThrough<ApiKeyEntry[]>('entries like { key, name, tier }'),
  lookup: asyncCallback<ApiKeyLookup>('(key, sha256) => entry | null', 'an async function (key) => ({ name, tier, userId }) | null'),
  lookupCacheTtl: duration('60s'),
  negativeCacheTtl: duration('5s'),
  cacheMax: count(10_000),
  loadUser: asyncCallback<NonNullable<AuthOptions['loadUser']>>('(claims) => user | null', 'an async function (claims) => user | null'),
  userCacheTtl: duration('60s'),
  cookie: option("a cookie name like 'session_token'", cookieName),
  apiKeyHeader: headerName('X-API-Key'),
  required: flag(true),
  logger: loggerOption(),
  clock: callback<() => number>('() => epoch milliseconds'),
});

interface ReasonSpec {
  code: string;
  message: string;
  /** RFC 6750: a presented but unusable token gets error="invalid_token". */
  invalidToken: boolean;
}

// Every reason is a fixed metrics label: the set is bounded, whatever clients send.
const REASONS: Record<string, ReasonSpec> = {
  missing: { code: 'AUTHENTICATION_REQUIRED', message: 'Authentication is required.', invalidToken: false },
  malformed: { code: 'INVALID_TOKEN', message: 'The token is malformed.', invalidToken: true },
  invalid_algorithm: { code: 'INVALID_TOKEN', message: 'The token is signed with an algorithm that is not accepted.', invalidToken: true },
  invalid_signature: { code: 'INVALID_TOKEN', message: 'The token signature is invalid.', invalidToken: true },
  invalid_issuer: { code: 'INVALID_TOKEN', message: 'The token issuer is not accepted.', invalidToken: true },
  invalid_audience: { code: 'INVALID_TOKEN', message: 'The token audience is not accepted.', invalidToken: true },
  not_before: { code: 'INVALID_TOKEN', message: 'The token is not valid yet.', invalidToken: true },
  invalid_claims: { code: 'INVALID_TOKEN', message: 'The token lacks a required claim.', invalidToken: true },
  unknown_key: { code: 'INVALID_TOKEN', message: 'The token is signed with an unknown key.', invalidToken: true },
  user_not_found: { code: 'INVALID_TOKEN', message: 'The user of this token is unknown or disabled.', invalidToken: true },
  expired: { code: 'TOKEN_EXPIRED', message: 'The token has expired.', invalidToken: true },
  unknown_api_key: { code: 'INVALID_API_KEY', message: 'The API key is not valid.', invalidToken: false },
  inactive_api_key: { code: 'INVALID_API_KEY', message: 'The API key is not valid.', invalidToken: false },
  expired_api_key: { code: 'INVALID_API_KEY', message: 'The API key has expired.', invalidToken: false },
  forbidden: { code: 'FORBIDDEN', message: 'Access to this resource is forbidden.', invalidToken: false },
};

const AUTH_SEEN = Symbol('express-perimeter.auth.seen');
const failureCounter = perRuntime((rt) =>
  counter(rt.registry, 'auth_failures_total', 'Requests refused by auth and its guards, by reason.', ['reason']),
);

/**
 * Authenticates the request from `Authorization: Bearer <jwt>` (or the `cookie`) and `X-API-Key`;
 * a JWT wins over an API key. Sets `req.user`, `req.apiKey`, `req.auth = { method, tier }` and the
 * request context. No credential → 401 AUTHENTICATION_REQUIRED (unless `required: false`); a bad
 * one → 401 INVALID_TOKEN, TOKEN_EXPIRED or INVALID_API_KEY, always with `WWW-Authenticate: Bearer`.
 */
export function auth(options?: AuthOptions): PerimeterHandler;
export function auth(options: AuthOptions = {}): RequestHandler {
  const authenticator = new Authenticator(parseOptions(options));
  return function authMiddleware(req, _res, next) {
    authenticator.authenticate(req, next);
  };
}

/** @internal The stack's auth (createStack builds it): setup warnings (a weak JWT secret) go to the stack's logger. */
export function stackAuth(options: AuthOptions, { runtime }: EntryContext): RequestHandler {
  return auth({ logger: runtime.logger, ...options });
}

/** Who a request turned out to be, as `req.auth`, `req.user` and `req.apiKey` show it. */
interface Credential {
  method: 'jwt' | 'apiKey';
  tier: string | undefined;
  user?: ContextUser;
  apiKey?: ApiKeyRecord['info'];
  claims?: JwtClaims;
}

/**
 * One `auth()`'s settings, decided at setup, and its per-request steps in reading order: find the
 * credential, verify a token (then load its user) or look a key up, then accept or refuse. Steps
 * that can answer at once (a secret-signed token, a listed key, a cached answer) stay synchronous.
 */
class Authenticator {
  private readonly verifier: JwtVerifier | undefined;
  private readonly table: Map<string, ApiKeyRecord>;
  private readonly lookup: ApiKeyLookup | undefined;
  private readonly loadUser: AuthOptions['loadUser'];
  private readonly keyCache: CachedLoader<ApiKeyRecord> | undefined;
  private readonly userCache: CachedLoader<Partial<ContextUser>> | undefined;
  private readonly apiKeysOn: boolean;
  private readonly apiKeyHeader: string;
  private readonly cookieName: string | undefined;
  private readonly required: boolean;
  private readonly clock: () => number;
  private readonly logger: Logger | undefined;
  private readonly missingMessage: string;

  constructor(o: ReturnType<typeof parseOptions>) {
    this.clock = o.clock ?? Date.now;
    this.required = o.required;
    this.logger = o.logger;
    const setupLogger = o.logger ?? defaultLogger();
    this.verifier = createJwtVerifier(o.jwt, this.clock, process.env, setupLogger);
    if (this.verifier?.weakSecret) warnOnce(setupLogger, 'ERR_WEAK_JWT_SECRET');
    this.table = buildKeyTable(o.apiKeys, 'auth.apiKeys');
    this.lookup = o.lookup;
    this.loadUser = o.loadUser;
    if (this.loadUser !== undefined && this.verifier === undefined) {
      throw new ConfigError('auth.loadUser', 'is called with JWT claims, but JWTs are off; configure auth.jwt (or JWT_SECRET)');
    }
    this.apiKeysOn = this.table.size > 0 || this.lookup !== undefined;
    if (this.verifier === undefined && !this.apiKeysOn) {
      throw new ConfigError(
        'auth',
        'has no credential source; give jwt: { secret } (or set JWT_SECRET / JWT_PUBLIC_KEY), apiKeys: [{ key, name, tier }] or lookup: async (key) => …',
      );
    }
    const cache = (ttlMs: number) => ({ ttlMs, negativeTtlMs: o.negativeCacheTtl, max: o.cacheMax, clock: this.clock });
    this.keyCache = this.lookup === undefined ? undefined : new CachedLoader<ApiKeyRecord>(cache(o.lookupCacheTtl));
    this.userCache = this.loadUser === undefined ? undefined : new CachedLoader<Partial<ContextUser>>(cache(o.userCacheTtl));
    this.apiKeyHeader = o.apiKeyHeader.toLowerCase();
    this.cookieName = o.cookie;
    const accepted = [
      this.verifier && 'a Bearer token',
      this.verifier && this.cookieName && `the ${this.cookieName} cookie`,
      this.apiKeysOn && `an ${o.apiKeyHeader} header`,
    ].filter(Boolean);
    this.missingMessage = `Authentication is required: send ${accepted.join(' or ')}.`;
  }

  authenticate(req: Request, next: NextFunction): void {
    (req as unknown as Record<symbol, boolean>)[AUTH_SEEN] = true;
    if (this.verifier !== undefined) {
      const token = bearerToken(req.headers.authorization) ?? (this.cookieName === undefined ? undefined : cookieValue(req.headers.cookie, this.cookieName));
      // A JWT wins over an API key; a bad JWT is refused, not skipped in favour of the key.
      if (token !== undefined) return this.byToken(req, next, this.verifier, token);
    }
    if (this.apiKeysOn) {
      const key = req.headers[this.apiKeyHeader];
      if (typeof key === 'string' && key !== '') return this.byKey(req, next, key);
    }
    if (this.required) return this.reject(req, next, 'missing');
    next();
  }

  private byToken(req: Request, next: NextFunction, verifier: JwtVerifier, token: string): void {
    let verified: JwtClaims | Promise<JwtClaims>;
    try {
      verified = verifier.verify(token);
    } catch (err) {
      return this.fail(req, next, err);
    }
    if (!(verified instanceof Promise)) return this.withClaims(req, next, verified);
    verified
      .then(
        (claims) => this.withClaims(req, next, claims),
        (err) => this.fail(req, next, err),
      )
      .catch(next);
  }

  private withClaims(req: Request, next: NextFunction, claims: JwtClaims): void {
    const sub = claims.sub as unknown;
    if ((typeof sub !== 'string' && typeof sub !== 'number') || sub === '') return this.reject(req, next, 'invalid_claims', 'the token has no sub claim');
    const user = userFromClaims(claims, String(sub));
    const loadUser = this.loadUser;
    if (this.userCache === undefined || loadUser === undefined) return this.withUser(req, next, claims, user, undefined);
    // Per subject (and issuer, when several issue tokens): one loadUser call serves every token of a user.
    const cacheKey = claims.iss === undefined ? user.id : `${claims.iss}\n${user.id}`;
    const cached = this.userCache.peek(cacheKey);
    if (cached !== undefined) return this.withUser(req, next, claims, user, cached);
    this.userCache
      .load(cacheKey, () => loadUser(claims))
      .then((loaded) => this.withUser(req, next, claims, user, loaded), next)
      .catch(next);
  }

  /** The token's user, with what `loadUser` found laid over the claims' fields; null refuses the token. */
  private withUser(req: Request, next: NextFunction, claims: JwtClaims, user: ContextUser, loaded: Partial<ContextUser> | null | undefined): void {
    if (loaded === null) return this.reject(req, next, 'user_not_found');
    if (loaded !== undefined) {
      if (typeof loaded !== 'object') return next(new TypeError(`auth.loadUser must resolve to a user object or null, got ${describe(loaded)}`));
      user = { ...user, ...loaded, id: loaded.id === undefined || loaded.id === null ? user.id : String(loaded.id) } as ContextUser;
    }
    accept(req, { method: 'jwt', tier: tierOf(user, claims), user, claims });
    next();
  }

  private byKey(req: Request, next: NextFunction, key: string): void {
    // Hash first, then look up: see buildKeyTable for why this is the constant-time compare.
    const hash = sha256Hex(key);
    const record = this.table.get(hash);
    if (record !== undefined || this.keyCache === undefined) return this.withKey(req, next, record);
    const cached = this.keyCache.peek(hash);
    if (cached !== undefined) return this.withKey(req, next, cached);
    this.keyCache
      .load(hash, () => this.lookUpKey(key, hash))
      .then((found) => this.withKey(req, next, found), next)
      .catch(next);
  }

  private async lookUpKey(key: string, hash: string): Promise<ApiKeyRecord | null> {
    const found = await (this.lookup as ApiKeyLookup)(key, hash);
    if (found === null || found === undefined) return null;
    if (typeof found !== 'object') throw new TypeError(`auth.lookup must resolve to { name, tier, userId, expiresAt?, active? } or null, got ${describe(found)}`);
    return toRecord(found, 'auth.lookup result');
  }

  private withKey(req: Request, next: NextFunction, record: ApiKeyRecord | null | undefined): void {
    if (record === null || record === undefined) return this.reject(req, next, 'unknown_api_key');
    if (!record.active) return this.reject(req, next, 'inactive_api_key', undefined, record.info.name);
    if (record.expiresAt !== undefined && record.expiresAt <= this.clock()) return this.reject(req, next, 'expired_api_key', undefined, record.info.name);
    const userId = record.info.userId;
    accept(req, { method: 'apiKey', tier: record.info.tier, user: userId === undefined ? undefined : { id: userId }, apiKey: record.info });
    next();
  }

  // A refused credential becomes a 401. Keys that cannot be had now (the JWKS endpoint or getKey
  // failed; the cause is logged once per outage by the key source) are the server's problem: 503,
  // counted but not logged per request. Anything else is a fault: 500.
  private fail(req: Request, next: NextFunction, err: unknown): void {
    if (err instanceof AuthFailure) return this.reject(req, next, err.reason, err.message);
    if (err instanceof KeySourceUnavailable) {
      failureCounter(req).inc({ reason: 'keys_unavailable' });
      return next(new ServiceUnavailableError('The token cannot be verified right now; try again shortly.'));
    }
    next(err);
  }

  private reject(req: Request, next: NextFunction, reason: string, detail?: string, keyName?: string): void {
    const spec = REASONS[reason];
    const meta: { reason: string; code: string; [field: string]: unknown } = { reason, code: spec.code };
    if (detail !== undefined) meta.detail = detail;
    if (keyName !== undefined) meta.key_name = keyName;
    recordFailure(req, meta, this.logger);
    const err = new AuthenticationError(reason === 'missing' ? this.missingMessage : spec.message, spec.code);
    if (spec.invalidToken) err.withHeaders({ 'WWW-Authenticate': `Bearer error="invalid_token", error_description="${spec.message}"` });
    next(err);
  }
}

function accept(req: Request, { method, tier, user, apiKey, claims }: Credential): void {
  req.auth = claims === undefined ? { method, tier } : { method, tier, claims };
  if (user !== undefined) req.user = user;
  if (apiKey !== undefined) req.apiKey = apiKey;
  const ctx = req.context;
  if (ctx !== undefined) {
    // Setting the context user makes ctx.log (and the request log line) carry user_id.
    if (user !== undefined) ctx.user = user;
    if (apiKey !== undefined) ctx.apiKey = apiKey;
  }
  if (spanOf(req) !== undefined) recordAuth(req, user, apiKey, method, tier);
}

/**
 * The authentication decision as attributes of the request's span: OpenTelemetry's `enduser.id`
 * and `enduser.role`, and `perimeter.auth.*` for what no convention names.
 */
function recordAuth(req: Request, user: ContextUser | undefined, apiKey: ApiKeyRecord['info'] | undefined, method: 'jwt' | 'apiKey', tier: string | undefined): void {
  recordOnSpan(req, 'enduser.id', user?.id);
  if (Array.isArray(user?.roles) && user.roles.length > 0) recordOnSpan(req, 'enduser.role', user.roles.join(','));
  recordOnSpan(req, 'perimeter.auth.method', method);
  recordOnSpan(req, 'perimeter.auth.tier', tier);
  recordOnSpan(req, 'perimeter.auth.api_key', typeof apiKey?.name === 'string' ? apiKey.name : undefined);
}

/** A callback option that takes an async function: refuses non-functions, Routers and middleware. */
function asyncCallback<F extends (...args: never[]) => unknown>(shape: string, expected: string) {
  return option(expected, (value, path): F | undefined => {
    if (value === undefined) return undefined;
    if (typeof value !== 'function') throw new ConfigError(path, `expected ${expected}, got ${describe(value)}`);
    checkCallback(path, value, shape);
    return value as F;
  });
}

function cookieName(value: unknown, path: string): string | undefined {
  if (value !== undefined && (typeof value !== 'string' || !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(value))) {
    throw new ConfigError(path, `expected a cookie name like 'session_token', got ${describe(value)}`);
  }
  return value;
}

/** Whether `auth()` saw this request (guards use it to explain a mount-order mistake). */
export function authSawRequest(req: Request): boolean {
  return (req as unknown as Record<symbol, boolean | undefined>)[AUTH_SEEN] === true;
}

/**
 * Counts a refusal in `auth_failures_total{reason}` and logs it at warn with the request id.
 * Never given the credential: only the reason, the code and the key's name.
 */
export function recordFailure(req: Request, meta: { reason: string; code: string; [field: string]: unknown }, logger?: Logger): void {
  failureCounter(req).inc({ reason: meta.reason });
  const message = meta.reason === 'forbidden' ? 'Authorization failed' : 'Authentication failed';
  const ctx = req.context;
  if (ctx !== undefined) ctx.log.warn(message, meta);
  else (logger ?? runtimeOf(req).logger).warn(message, { ...meta, request_id: req.id });
}

function userFromClaims(claims: JwtClaims, id: string): ContextUser {
  const user: ContextUser = { id };
  if (typeof claims.email === 'string') user.email = claims.email;
  const roles = claims.roles as unknown;
  if (Array.isArray(roles)) user.roles = roles.filter((r): r is string => typeof r === 'string');
  else if (typeof roles === 'string') user.roles = [roles];
  if (typeof claims.plan === 'string') user.plan = claims.plan;
  user.beta = claims.is_beta === true;
  if (typeof claims.tenant === 'string') user.tenant = claims.tenant;
  return user;
}

function tierOf(user: ContextUser, claims: JwtClaims): string | undefined {
  if (typeof user.plan === 'string') return user.plan;
  return typeof claims.tier === 'string' ? claims.tier : undefined;
}

function bearerToken(header: string | undefined): string | undefined {
  // Other schemes (Basic, Digest) belong to someone else: not ours to refuse.
  if (header === undefined || header.length < 6 || header.slice(0, 6).toLowerCase() !== 'bearer') return undefined;
  if (header.length === 6) return '';
  if (header.charCodeAt(6) !== 32) return undefined;
  return header.slice(7).trim();
}

// RFC 6265 lets a cookie value be wrapped in double quotes, which `cookie` keeps.
function cookieValue(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  let value = parseCookie(header)[name];
  if (value !== undefined && value.length > 1 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
  return value === '' ? undefined : value;
}
