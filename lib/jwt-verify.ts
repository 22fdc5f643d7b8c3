import { createHash, createPublicKey, createSecretKey, KeyObject } from 'node:crypto';
import { decodeProtectedHeader, errors as joseErrors, jwtVerify, type JWTVerifyOptions } from 'jose';
import { LRUCache } from 'lru-cache';
import { ConfigError } from './errors';
import { defaultLogger, type Logger } from './logger';
import { defineOptions, duration, flag, option, passThrough } from './options';
import { describe } from './units';
import { ASYMMETRIC, checkAlgorithms, defaultAlgorithm, isHmac, keyMisfit, keyName, type JwtAlgorithm } from './jwt/algorithms';
import { hookResolver, type GetKey, type KeyResolver } from './jwt/key-hook';
import { checkProtocol, RemoteKeySet } from './jwt/remote-key-set';
import type { JwtClaims, JwtHeader } from './jwt/types';

export type { JwtAlgorithm } from './jwt/algorithms';
export type { JwtClaims, JwtHeader, JwtKeyMaterial } from './jwt/types';
export { KeySourceUnavailable } from './jwt/key-hook';

/** Options of JWT verification (`auth.jwt`). Give one key source: `secret`, `publicKey`, `jwksUri`, `discovery` or `getKey`. */
export interface JwtOptions {
  /** HMAC secret (HS256/384/512). Defaults to `JWT_SECRET` when no key source is given. */
  secret?: string | Buffer;
  /** PEM public key (RS*, PS*, ES*, EdDSA with Ed25519). Defaults to `JWT_PUBLIC_KEY` when no key source is given. */
  publicKey?: string | Buffer | KeyObject;
  /** URL of the identity provider's JSON Web Key Set; its keys are fetched, cached and refreshed (RS*, PS*, ES*, EdDSA; never HS*). Must be https in production, except on localhost. Defaults to none. */
  jwksUri?: string | URL;
  /** Read `jwks_uri` from `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery); needs `issuer`. Defaults to false. */
  discovery?: boolean;
  /** Least time between two fetches of the key set caused by tokens (an unknown `kid`, a stale set), as a duration; at least '1s'. Defaults to '30s'. */
  jwksCooldown?: string | number;
  /** Longest a key set (or discovery) fetch may take, as a duration. Defaults to '5s'. */
  jwksTimeout?: string | number;
  /** Age after which the key set is fetched again in the background (keys the provider withdrew stop verifying), as a duration. Defaults to '10m'. */
  jwksMaxAge?: string | number;
  /** Key per token header (`kid`) from your own store; return `null`/`undefined` for "no such key" (401); a throw answers 503. Defaults to none. */
  getKey?: GetKey;
  /** Accepted algorithms; 'none' is always refused, HS* never with a public key or a key set. Defaults to ['HS256'] with a secret, the key's own (RS256, PS256, ES256, EdDSA…) with a public key, each key's own `alg` with a key set. */
  algorithms?: JwtAlgorithm[];
  /** Accepted `iss` value(s); exactly one with `discovery`. Defaults to any issuer. */
  issuer?: string | string[];
  /** Accepted `aud` value(s). Defaults to any audience. */
  audience?: string | RegExp | Array<string | RegExp>;
  /** Leeway for `exp` and `nbf` against clock skew, as a duration. Defaults to '5s'. */
  clockTolerance?: string | number;
  /** Refuse tokens without an `exp` claim. Defaults to false (a token without `exp` is accepted). */
  requireExp?: boolean;
  /** Verified tokens remembered (by SHA-256 of the token, never past their `exp`) so a repeated token skips the signature check. Defaults to 1000; 0 turns it off. */
  cacheSize?: number;
  /** How long a verified token is remembered at most, as a duration. Defaults to '30s'. */
  cacheTtl?: string | number;
}

// Every option of auth.jwt once, with its check; defaults that depend on the key source (the
// algorithms, the key set's timings) are applied where that source is set up.
const parseOptions = defineOptions<JwtOptions>()('auth.jwt', {
  secret: passThrough<string | Buffer>('a string or Buffer of 32 bytes or more'),
  publicKey: passThrough<string | Buffer | KeyObject>('a PEM string, Buffer or KeyObject'),
  jwksUri: passThrough<string | URL>("an https URL like 'https://id.example.com/.well-known/jwks.json'"),
  discovery: flag(false),
  jwksCooldown: duration(),
  jwksTimeout: duration(),
  jwksMaxAge: duration(),
  getKey: passThrough<GetKey>('a function (header) => key'),
  algorithms: option("algorithms like ['RS256']", (value) => (value === undefined ? undefined : checkAlgorithms(value as JwtAlgorithm[]))),
  issuer: option("an issuer like 'https://id.example.com/', or several", (value, path) => (value === undefined ? undefined : checkStrings(value, path))),
  audience: option('a string, a RegExp or an array of them', (value, path) => (value === undefined ? undefined : audienceMatcher(value, path))),
  clockTolerance: duration('5s'),
  requireExp: flag(false),
  cacheSize: option('a whole number of tokens (0 turns the cache off)', tokenCount, '1000'),
  cacheTtl: duration('30s'),
});

type Parsed = ReturnType<typeof parseOptions>;
type KeySource = 'secret' | 'publicKey' | 'jwksUri' | 'discovery' | 'getKey';

/** How a token's key is found: one key for every token, or a key per token header. */
interface KeyPlan {
  staticKey?: KeyObject;
  resolveKey?: KeyResolver;
  /** The algorithms a token may name. */
  algorithms: string[];
  weakSecret: boolean;
}

/** Why a token was refused; each maps to a 401 code and a metrics label. */
export type JwtFailureReason =
  | 'malformed'
  | 'invalid_algorithm'
  | 'invalid_signature'
  | 'invalid_issuer'
  | 'invalid_audience'
  | 'not_before'
  | 'expired'
  | 'invalid_claims'
  | 'unknown_key';

/** A refused credential (401), as opposed to a failure of the server (5xx). */
export class AuthFailure extends Error {
  readonly reason: string;
  constructor(reason: string, detail?: string) {
    super(detail ?? reason);
    this.name = 'AuthFailure';
    this.reason = reason;
  }
}

/**
 * Verifies tokens. Resolves with the claims; rejects with {@link AuthFailure} for a refused token
 * (401) or {@link KeySourceUnavailable} when its key cannot be had now (503). A token verified
 * recently is answered synchronously from the cache.
 */
export interface JwtVerifier {
  verify(token: string): JwtClaims | Promise<JwtClaims>;
  /** The secret is shorter than 32 bytes (brute-forceable offline from one token). */
  readonly weakSecret: boolean;
  /** The algorithms a token may name, after defaults (with a key set: those its keys may use). */
  readonly algorithms: readonly JwtAlgorithm[];
}

const SAFE_ALG = /^[A-Za-z0-9]{1,10}$/;
const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]']);
const MIN_COOLDOWN_MS = 1000;

/**
 * Builds the verifier from `auth.jwt` (falling back on `JWT_PUBLIC_KEY` / `JWT_SECRET`), deciding
 * everything at setup: the key or where keys come from, the algorithm allow list and the claim
 * checks. Returns undefined when JWTs are off (`false`, or no key source anywhere).
 */
export function createJwtVerifier(
  input: JwtOptions | false | undefined,
  clock: () => number,
  env: Record<string, string | undefined> = process.env,
  logger?: Logger,
): JwtVerifier | undefined {
  if (input === false) return undefined;
  const o = parseOptions(input);
  const source = keySourceOf(o, input, env);
  if (source === undefined) return undefined;
  const setupLogger = logger ?? defaultLogger();
  const plan: KeyPlan =
    source === 'secret'
      ? secretPlan(o.secret, o.algorithms)
      : source === 'publicKey'
        ? publicKeyPlan(o.publicKey, o.algorithms)
        : source === 'getKey'
          ? hookPlan(o.getKey, o.algorithms, setupLogger)
          : keySetPlan(o, env, clock, setupLogger);
  const verify = tokenVerifier(plan, o, clock);
  return { verify, weakSecret: plan.weakSecret, algorithms: plan.algorithms as JwtAlgorithm[] };
}

/**
 * The one key source configured; with none, `JWT_PUBLIC_KEY` then `JWT_SECRET` from the
 * environment (written into `o`), else undefined when `auth.jwt` was left out.
 */
function keySourceOf(o: Parsed, input: JwtOptions | undefined, env: Record<string, string | undefined>): KeySource | undefined {
  const sources: KeySource[] = (['secret', 'publicKey', 'jwksUri', 'getKey'] as const).filter((k) => o[k] !== undefined);
  if (o.discovery) sources.push('discovery');
  if (sources.length > 1) {
    throw new ConfigError(
      'auth.jwt',
      `give one key source, not ${sources.join(' and ')}: 'secret' for HS*, 'publicKey' for RS*/PS*/ES*/EdDSA, 'jwksUri' (or discovery: true with 'issuer') for an identity provider's rotating keys, or 'getKey' for your own lookup`,
    );
  }
  const remote = sources[0] === 'jwksUri' || sources[0] === 'discovery';
  for (const option of ['jwksCooldown', 'jwksTimeout', 'jwksMaxAge'] as const) {
    if (o[option] !== undefined && !remote) {
      throw new ConfigError(`auth.jwt.${option}`, "applies to key sets only; give 'jwksUri' (or discovery: true with 'issuer'), or remove it");
    }
  }
  if (sources.length > 0) return sources[0];
  if (env.JWT_PUBLIC_KEY) {
    o.publicKey = env.JWT_PUBLIC_KEY.replace(/\\n/g, '\n');
    return 'publicKey';
  }
  if (env.JWT_SECRET) {
    o.secret = env.JWT_SECRET;
    return 'secret';
  }
  if (input === undefined) return undefined;
  throw new ConfigError(
    'auth.jwt',
    'needs a key: { secret } for HS256, { publicKey } for RS256/ES256/EdDSA, { jwksUri } or { issuer, discovery: true } for an identity provider, { getKey } for your own lookup, or JWT_SECRET / JWT_PUBLIC_KEY in the environment',
  );
}

function secretPlan(secret: unknown, given: string[] | undefined): KeyPlan {
  if ((typeof secret !== 'string' && !Buffer.isBuffer(secret)) || secret.length === 0) {
    throw new ConfigError('auth.jwt.secret', `expected a non-empty string or Buffer (32 bytes or more), got ${describe(secret)}`);
  }
  const staticKey = createSecretKey(typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret);
  const algorithms = given ?? ['HS256'];
  const asymmetric = algorithms.filter((a) => !isHmac(a));
  if (asymmetric.length > 0) {
    throw new ConfigError(
      'auth.jwt.algorithms',
      `${asymmetric.join(', ')} cannot be verified with a secret; give 'publicKey' for asymmetric algorithms, or list only HS256/HS384/HS512`,
    );
  }
  return { staticKey, algorithms, weakSecret: staticKey.symmetricKeySize !== undefined && staticKey.symmetricKeySize < 32 };
}

function publicKeyPlan(publicKey: unknown, given: string[] | undefined): KeyPlan {
  const staticKey = toPublicKey(publicKey);
  const own = defaultAlgorithm(staticKey);
  if (own === undefined) {
    throw new ConfigError('auth.jwt.publicKey', `${keyName(staticKey)} is not supported; use an RSA key, an EC key on P-256, P-384 or P-521, or an Ed25519 key`);
  }
  const algorithms = given ?? [own];
  for (const alg of algorithms) {
    if (isHmac(alg)) {
      throw new ConfigError(
        'auth.jwt.algorithms',
        `'${alg}' with a public key is refused: anyone holding the public key could sign HMAC tokens with it (HS/RS confusion); list asymmetric algorithms such as 'RS256', or configure 'secret' instead`,
      );
    }
    const misfit = keyMisfit(staticKey, alg);
    if (misfit !== undefined) {
      throw new ConfigError('auth.jwt.algorithms', `'${alg}' cannot be verified with ${misfit}; list the algorithm the key was made for ('${own}')`);
    }
  }
  return { staticKey, algorithms, weakSecret: false };
}

function hookPlan(getKey: unknown, given: string[] | undefined, logger: Logger): KeyPlan {
  if (typeof getKey !== 'function') throw new ConfigError('auth.jwt.getKey', `expected a function (header) => key, got ${describe(getKey)}`);
  if (given === undefined) {
    throw new ConfigError('auth.jwt.algorithms', "is required with getKey, e.g. ['RS256']: the accepted algorithms must never come from the token");
  }
  if (given.some(isHmac) && !given.every(isHmac)) {
    throw new ConfigError(
      'auth.jwt.algorithms',
      `mixes HMAC and asymmetric algorithms (${given.join(', ')}); with getKey list one family, so a public key can never be used as an HMAC secret`,
    );
  }
  return { resolveKey: hookResolver(getKey as GetKey, given.every(isHmac), logger), algorithms: given, weakSecret: false };
}

/** An identity provider's key set, from `jwksUri` or discovered from the issuer. */
function keySetPlan(o: Parsed, env: Record<string, string | undefined>, clock: () => number, logger: Logger): KeyPlan {
  const given = o.algorithms;
  if (given?.some(isHmac)) {
    throw new ConfigError(
      'auth.jwt.algorithms',
      `${given.filter(isHmac).join(', ')} with a key set is refused: a JWKS is public, so an HMAC key in it would let anyone sign tokens; list asymmetric algorithms (RS256, PS256, ES256, EdDSA) or leave 'algorithms' out to take each key's own`,
    );
  }
  const httpsRequired = (url: URL): boolean => env.NODE_ENV === 'production' && !LOOPBACK.has(url.hostname);
  const cooldownMs = o.jwksCooldown ?? 30_000;
  if (cooldownMs < MIN_COOLDOWN_MS) {
    throw new ConfigError(
      'auth.jwt.jwksCooldown',
      `must be at least '1s', got ${describe(o.jwksCooldown)}: it is what keeps tokens with forged kids from each causing a request to the identity provider`,
    );
  }
  const timeoutMs = o.jwksTimeout ?? 5000;
  if (timeoutMs <= 0) throw new ConfigError('auth.jwt.jwksTimeout', `must be more than 0, got ${describe(o.jwksTimeout)}`);
  const maxAgeMs = o.jwksMaxAge ?? 600_000;
  if (maxAgeMs <= 0) throw new ConfigError('auth.jwt.jwksMaxAge', `must be more than 0, got ${describe(o.jwksMaxAge)}`);
  let jwksUri: URL | undefined;
  let discoverFrom: string | undefined;
  if (o.jwksUri !== undefined) {
    jwksUri = setupUrl(o.jwksUri, 'auth.jwt.jwksUri', 'https://id.example.com/.well-known/jwks.json', httpsRequired);
  } else {
    const issuer = o.issuer;
    if (typeof issuer !== 'string') {
      throw new ConfigError(
        'auth.jwt.discovery',
        `needs exactly one 'issuer' (the provider's URL, e.g. 'https://id.example.com/'): the key set's URL is read from <issuer>/.well-known/openid-configuration${issuer === undefined ? '' : '; got several'}`,
      );
    }
    setupUrl(issuer, 'auth.jwt.issuer', 'https://id.example.com/', httpsRequired);
    discoverFrom = issuer;
  }
  const keySet = new RemoteKeySet({ jwksUri, discoverFrom, cooldownMs, timeoutMs, maxAgeMs, algorithms: given, httpsRequired, clock, logger });
  return { resolveKey: keySet.resolve, algorithms: given ?? [...ASYMMETRIC], weakSecret: false };
}

/**
 * The per-token check: the signature with the plan's key, the claims (issuer, audience, exp/nbf
 * within the tolerance, exp when required), answered synchronously for a token verified recently.
 */
function tokenVerifier(plan: KeyPlan, o: Parsed, clock: () => number): (token: string) => JwtClaims | Promise<JwtClaims> {
  const { staticKey, resolveKey, algorithms } = plan;
  const toleranceMs = o.clockTolerance;
  const audienceOk = o.audience;
  const claimChecks: JWTVerifyOptions = { clockTolerance: toleranceMs / 1000 };
  if (o.issuer !== undefined) claimChecks.issuer = o.issuer;
  if (o.requireExp) claimChecks.requiredClaims = ['exp'];
  const cacheTtlMs = o.cacheTtl;
  const cache = o.cacheSize > 0 && cacheTtlMs > 0 ? new LRUCache<string, { payload: JwtClaims; until: number }>({ max: o.cacheSize }) : undefined;

  const verifyWith = async (token: string, key: KeyObject, accepted: string[], nowMs: number): Promise<JwtClaims> => {
    let payload: JwtClaims;
    try {
      ({ payload } = await jwtVerify(token, key, { ...claimChecks, algorithms: accepted, currentDate: new Date(nowMs) }));
    } catch (err) {
      throw toFailure(err);
    }
    if (audienceOk !== undefined && !audienceOk(payload.aud)) throw new AuthFailure('invalid_audience', 'the token audience is not accepted');
    // Frozen: the same object may serve every request that repeats the token (the cache below).
    return Object.freeze(payload);
  };

  const verifyFresh =
    staticKey !== undefined
      ? (token: string, nowMs: number): Promise<JwtClaims> => verifyWith(token, staticKey, algorithms, nowMs)
      : async (token: string, nowMs: number): Promise<JwtClaims> => {
          const header = readHeader(token);
          const alg = header.alg;
          // Refuse a disallowed alg before looking for a key: neither the hook nor the identity
          // provider ever sees a token we would not accept.
          if (!algorithms.includes(alg)) {
            throw new AuthFailure('invalid_algorithm', `alg ${SAFE_ALG.test(alg) ? alg : '(unreadable)'} is not accepted`);
          }
          const key = await (resolveKey as KeyResolver)(header);
          if (key === undefined) throw new AuthFailure('unknown_key', 'no key is known for the token header (kid and alg)');
          const misfit = keyMisfit(key, alg);
          if (misfit !== undefined) throw new AuthFailure('invalid_algorithm', `the key for the token is ${misfit}, which cannot verify ${alg}`);
          return verifyWith(token, key, [alg], nowMs);
        };
  if (cache === undefined) return (token) => verifyFresh(token, clock());

  // The cache key is a digest, so the memory holds no usable token; an entry never outlives the
  // token's own exp (plus the tolerance), so expiry is honoured exactly as without the cache.
  const remember = (digest: string, payload: JwtClaims, nowMs: number): JwtClaims => {
    let until = nowMs + cacheTtlMs;
    if (typeof payload.exp === 'number') until = Math.min(until, payload.exp * 1000 + toleranceMs);
    if (until > nowMs) cache.set(digest, { payload, until });
    return payload;
  };
  return function verifyToken(token) {
    const nowMs = clock();
    const digest = createHash('sha256').update(token).digest('base64');
    const hit = cache.get(digest);
    if (hit !== undefined && hit.until > nowMs) return hit.payload;
    return verifyFresh(token, nowMs).then((payload) => remember(digest, payload, nowMs));
  };
}

function tokenCount(value: unknown, path: string): number {
  const n = value ?? 1000;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) {
    throw new ConfigError(path, `expected a whole number of tokens (0 turns the cache off), got ${describe(n)}`);
  }
  return n;
}

function readHeader(token: string): JwtHeader {
  let header: Record<string, unknown>;
  try {
    header = decodeProtectedHeader(token) as Record<string, unknown>;
  } catch {
    throw new AuthFailure('malformed', 'the token header could not be decoded');
  }
  if (typeof header.alg !== 'string') throw new AuthFailure('malformed', 'the token header has no alg');
  return header as JwtHeader;
}

function toPublicKey(value: unknown): KeyObject {
  if (value instanceof KeyObject) {
    if (value.type === 'secret') throw new ConfigError('auth.jwt.publicKey', "is a secret key; give it as 'secret' instead");
    return value.type === 'private' ? createPublicKey(value) : value;
  }
  if (typeof value !== 'string' && !Buffer.isBuffer(value)) {
    throw new ConfigError(
      'auth.jwt.publicKey',
      `expected a PEM string ('-----BEGIN PUBLIC KEY-----…'), Buffer or KeyObject, got ${describe(value)}`,
    );
  }
  try {
    return createPublicKey(value);
  } catch {
    throw new ConfigError(
      'auth.jwt.publicKey',
      "is not a PEM public key; expected '-----BEGIN PUBLIC KEY-----…' (in an env var, write newlines as \\n)",
    );
  }
}

function setupUrl(value: unknown, option: string, example: string, httpsRequired: (url: URL) => boolean): URL {
  let url: URL;
  try {
    url = new URL(value instanceof URL ? value.href : (value as string));
  } catch {
    throw new ConfigError(option, `expected an absolute URL like '${example}', got ${describe(value)}`);
  }
  try {
    checkProtocol(url, httpsRequired, 'it');
  } catch (err) {
    throw new ConfigError(
      option,
      `${(err as Error).message}; use the provider's https URL (NODE_ENV=production refuses plain http, which lets anyone on the path swap the keys)`,
    );
  }
  return url;
}

function checkStrings(value: unknown, option: string): string | string[] {
  if (typeof value === 'string' && value !== '') return value;
  if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'string' && v !== '')) return value as string[];
  throw new ConfigError(option, `expected a string or a non-empty array of strings, got ${describe(value)}`);
}

/** Compiles `audience` into a check of a token's `aud` (a string or an array: one match suffices). */
function audienceMatcher(value: unknown, path: string): (aud: unknown) => boolean {
  const ok = (v: unknown): boolean => (typeof v === 'string' && v !== '') || v instanceof RegExp;
  const list = Array.isArray(value) ? value : [value];
  if (list.length === 0 || !list.every(ok)) {
    throw new ConfigError(path, `expected a string, a RegExp or a non-empty array of them, got ${describe(value)}`);
  }
  const names = new Set(list.filter((v): v is string => typeof v === 'string'));
  // Without the g and y flags, test() keeps no lastIndex between tokens.
  const patterns = list.filter((v): v is RegExp => v instanceof RegExp).map((r) => new RegExp(r.source, r.flags.replace(/[gy]/g, '')));
  return (aud) => {
    const given: unknown[] = Array.isArray(aud) ? aud : [aud];
    return given.some((a) => typeof a === 'string' && (names.has(a) || patterns.some((p) => p.test(a))));
  };
}

// jose names what failed by class and claim; its messages never quote the token.
function toFailure(err: unknown): unknown {
  if (err instanceof joseErrors.JWTExpired) return new AuthFailure('expired', err.message);
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    if (err.claim === 'iss') return new AuthFailure('invalid_issuer', err.message);
    if (err.claim === 'aud') return new AuthFailure('invalid_audience', err.message);
    if (err.claim === 'nbf' && err.reason === 'check_failed') return new AuthFailure('not_before', err.message);
    return new AuthFailure(err.reason === 'missing' ? 'invalid_claims' : 'malformed', err.message);
  }
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return new AuthFailure('invalid_algorithm', err.message);
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return new AuthFailure('invalid_signature', 'invalid signature');
  if (err instanceof joseErrors.JOSEError) return new AuthFailure('malformed', err.message);
  // Not about the token (a key the checks above let through): the server's fault, left to surface.
  return err;
}
