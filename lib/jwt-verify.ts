import { createHash, createPublicKey, createSecretKey, KeyObject } from 'node:crypto';
import jwt, { type Algorithm, type Jwt, type JwtHeader, type JwtPayload, type VerifyOptions } from 'jsonwebtoken';
import { LRUCache } from 'lru-cache';
import { ConfigError } from './errors';
import { checkOptions } from './options';
import { describe, parseDuration } from './units';

/** Key material a `getKey` hook may return: a PEM string, a Buffer or a KeyObject (a secret string for HS algorithms). */
export type JwtKeyMaterial = string | Buffer | KeyObject;

/** Options of JWT verification (`auth.jwt`). */
export interface JwtOptions {
  /** HMAC secret (HS256/384/512). Defaults to `JWT_SECRET` when no key source is given. */
  secret?: string | Buffer;
  /** PEM public key (RS*, PS*, ES*). Defaults to `JWT_PUBLIC_KEY` when no key source is given. */
  publicKey?: string | Buffer | KeyObject;
  /** Key per token header (`kid`) for key rotation, JWKS style; `null` means unknown key (401). Defaults to none. */
  getKey?: (header: JwtHeader) => Promise<JwtKeyMaterial | null | undefined> | JwtKeyMaterial | null | undefined;
  /** Accepted algorithms; 'none' is always refused, HS* never with a public key. Defaults to ['HS256'] with a secret, the key's own (RS256, PS256, ES256…) with a public key. */
  algorithms?: Algorithm[];
  /** Accepted `iss` value(s). Defaults to any issuer. */
  issuer?: string | string[];
  /** Accepted `aud` value(s). Defaults to any audience. */
  audience?: string | RegExp | Array<string | RegExp>;
  /** Leeway for `exp` and `nbf` against clock skew, as a duration. Defaults to '5s'. */
  clockTolerance?: string | number;
  /** Refuse tokens without an `exp` claim. Defaults to false (a token without `exp` is accepted, as jsonwebtoken does). */
  requireExp?: boolean;
  /** Verified tokens remembered (by SHA-256 of the token, never past their `exp`) so a repeated token skips the signature check. Defaults to 1000; 0 turns it off. */
  cacheSize?: number;
  /** How long a verified token is remembered at most, as a duration. Defaults to '30s'. */
  cacheTtl?: string | number;
}

const JWT_KEYS = [
  'secret',
  'publicKey',
  'getKey',
  'algorithms',
  'issuer',
  'audience',
  'clockTolerance',
  'requireExp',
  'cacheSize',
  'cacheTtl',
] as const;

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

/** A refused credential (401), as opposed to a failure of the server (500). */
export class AuthFailure extends Error {
  readonly reason: string;
  constructor(reason: string, detail?: string) {
    super(detail ?? reason);
    this.name = 'AuthFailure';
    this.reason = reason;
  }
}

/** Verifies tokens; synchronous with a static key, a promise with `getKey`. Throws or rejects with {@link AuthFailure} for a refused token. */
export interface JwtVerifier {
  verify(token: string): JwtPayload | Promise<JwtPayload>;
  /** The secret is shorter than 32 bytes (brute-forceable offline from one token). */
  readonly weakSecret: boolean;
  /** The algorithms accepted, after defaults. */
  readonly algorithms: readonly Algorithm[];
}

const HS: readonly string[] = ['HS256', 'HS384', 'HS512'];
const RSA: readonly string[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];
const EC: readonly string[] = ['ES256', 'ES384', 'ES512'];
const SAFE_ALG = /^[A-Za-z0-9]{1,10}$/;
const CURVE_ALG: Record<string, string> = { prime256v1: 'ES256', secp384r1: 'ES384', secp521r1: 'ES512' };

/**
 * Builds the verifier from `auth.jwt` (falling back on `JWT_PUBLIC_KEY` / `JWT_SECRET`), deciding
 * everything at setup: the key object, the algorithm allow list and the verify options.
 * Returns undefined when JWTs are off (`false`, or no key source anywhere).
 */
export function createJwtVerifier(
  input: JwtOptions | false | undefined,
  clock: () => number,
  env: Record<string, string | undefined> = process.env,
): JwtVerifier | undefined {
  if (input === false) return undefined;
  const options = { ...checkOptions('auth.jwt', input, JWT_KEYS) };
  const sources = (['secret', 'publicKey', 'getKey'] as const).filter((k) => options[k] !== undefined);
  if (sources.length > 1) {
    throw new ConfigError(
      'auth.jwt',
      `give one key source, not ${sources.join(' and ')}: 'secret' for HS*, 'publicKey' for RS*/PS*/ES*, or 'getKey' for rotating keys`,
    );
  }
  if (sources.length === 0) {
    if (env.JWT_PUBLIC_KEY) options.publicKey = env.JWT_PUBLIC_KEY.replace(/\\n/g, '\n');
    else if (env.JWT_SECRET) options.secret = env.JWT_SECRET;
    else if (input === undefined) return undefined;
    else
      throw new ConfigError(
        'auth.jwt',
        'needs a key: { secret } for HS256, { publicKey } for RS256/ES256, { getKey } for rotating keys, or JWT_SECRET / JWT_PUBLIC_KEY in the environment',
      );
  }

  let key: KeyObject | undefined;
  let algorithms: string[];
  let weakSecret = false;
  const given = options.algorithms === undefined ? undefined : checkAlgorithms(options.algorithms);
  if (options.secret !== undefined) {
    const secret = options.secret;
    if ((typeof secret !== 'string' && !Buffer.isBuffer(secret)) || secret.length === 0) {
      throw new ConfigError('auth.jwt.secret', `expected a non-empty string or Buffer (32 bytes or more), got ${describe(secret)}`);
    }
    key = createSecretKey(typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret);
    weakSecret = key.symmetricKeySize !== undefined && key.symmetricKeySize < 32;
    algorithms = given ?? ['HS256'];
    const asymmetric = algorithms.filter((a) => !HS.includes(a));
    if (asymmetric.length > 0) {
      throw new ConfigError(
        'auth.jwt.algorithms',
        `${asymmetric.join(', ')} cannot be verified with a secret; give 'publicKey' for asymmetric algorithms, or list only HS256/HS384/HS512`,
      );
    }
  } else if (options.publicKey !== undefined) {
    key = toPublicKey(options.publicKey);
    algorithms = given ?? [defaultAlgorithm(key)];
    for (const alg of algorithms) {
      if (HS.includes(alg)) {
        throw new ConfigError(
          'auth.jwt.algorithms',
          `'${alg}' with a public key is refused: anyone holding the public key could sign HMAC tokens with it (HS/RS confusion); list asymmetric algorithms such as 'RS256', or configure 'secret' instead`,
        );
      }
      checkKeyFits(key, alg);
    }
  } else {
    if (typeof options.getKey !== 'function')
      throw new ConfigError('auth.jwt.getKey', `expected a function (header) => key, got ${describe(options.getKey)}`);
    if (given === undefined) {
      throw new ConfigError(
        'auth.jwt.algorithms',
        "is required with getKey, e.g. ['RS256']: the accepted algorithms must never come from the token",
      );
    }
    algorithms = given;
    if (algorithms.some((a) => HS.includes(a)) && algorithms.some((a) => !HS.includes(a))) {
      throw new ConfigError(
        'auth.jwt.algorithms',
        `mixes HMAC and asymmetric algorithms (${algorithms.join(', ')}); with getKey list one family, so a public key can never be used as an HMAC secret`,
      );
    }
  }

  const toleranceMs = parseDuration(options.clockTolerance ?? '5s', 'auth.jwt.clockTolerance');
  const verifyOptions: VerifyOptions = { algorithms: algorithms as Algorithm[], clockTolerance: toleranceMs / 1000 };
  if (options.issuer !== undefined)
    verifyOptions.issuer = checkStrings(options.issuer, 'auth.jwt.issuer') as string | [string, ...string[]];
  if (options.audience !== undefined) verifyOptions.audience = checkAudience(options.audience);
  if (options.requireExp !== undefined && typeof options.requireExp !== 'boolean') {
    throw new ConfigError('auth.jwt.requireExp', `expected true or false, got ${describe(options.requireExp)}`);
  }
  const requireExp = options.requireExp ?? false;
  const cacheSize = options.cacheSize ?? 1000;
  if (typeof cacheSize !== 'number' || !Number.isInteger(cacheSize) || cacheSize < 0) {
    throw new ConfigError('auth.jwt.cacheSize', `expected a whole number of tokens (0 turns the cache off), got ${describe(cacheSize)}`);
  }
  const cacheTtlMs = parseDuration(options.cacheTtl ?? '30s', 'auth.jwt.cacheTtl');
  // jsonwebtoken reads Date.now() itself; pass the injected clock only when there is one.
  const ownClock = clock !== Date.now;
  const optionsAt = (nowMs: number): VerifyOptions =>
    ownClock ? { ...verifyOptions, clockTimestamp: Math.floor(nowMs / 1000) } : verifyOptions;
  const cache =
    cacheSize > 0 && cacheTtlMs > 0 ? new LRUCache<string, { payload: JwtPayload; until: number }>({ max: cacheSize }) : undefined;

  const verifyWith = (token: string, keyObject: KeyObject, nowMs: number): JwtPayload => {
    let payload: string | JwtPayload;
    try {
      payload = jwt.verify(token, keyObject, optionsAt(nowMs)) as string | JwtPayload;
    } catch (err) {
      throw toFailure(err);
    }
    if (typeof payload !== 'object' || payload === null) throw new AuthFailure('malformed', 'the token payload is not a JSON object');
    if (requireExp && typeof payload.exp !== 'number') throw new AuthFailure('invalid_claims', 'the token has no exp claim');
    // Frozen: the same object may serve every request that repeats the token (the cache below).
    return Object.freeze(payload);
  };

  // The cache key is a digest, so the memory holds no usable token; an entry never outlives the
  // token's own exp (plus the tolerance), so expiry is honoured exactly as without the cache.
  const remember = (digest: string, payload: JwtPayload, nowMs: number): void => {
    let until = nowMs + cacheTtlMs;
    if (typeof payload.exp === 'number') until = Math.min(until, payload.exp * 1000 + toleranceMs);
    if (until > nowMs) cache!.set(digest, { payload, until });
  };

  let verify: (token: string) => JwtPayload | Promise<JwtPayload>;
  if (key !== undefined) {
    const staticKey = key;
    verify = function verifyToken(token) {
      const nowMs = clock();
      if (cache === undefined) return verifyWith(token, staticKey, nowMs);
      const digest = createHash('sha256').update(token).digest('base64');
      const hit = cache.get(digest);
      if (hit !== undefined && hit.until > nowMs) return hit.payload;
      const payload = verifyWith(token, staticKey, nowMs);
      remember(digest, payload, nowMs);
      return payload;
    };
  } else {
    const getKey = options.getKey!;
    const hmac = algorithms.every((a) => HS.includes(a));
    const keyObjects = new LRUCache<string, KeyObject>({ max: 100 });
    const toKeyObject = (material: JwtKeyMaterial): KeyObject => {
      if (material instanceof KeyObject) return material;
      const id = typeof material === 'string' ? material : undefined;
      const known = id !== undefined ? keyObjects.get(id) : undefined;
      if (known !== undefined) return known;
      let made: KeyObject;
      try {
        made = hmac ? createSecretKey(typeof material === 'string' ? Buffer.from(material, 'utf8') : material) : createPublicKey(material);
      } catch (err) {
        // The hook gave unusable key material: a server fault (500), not the client's.
        throw new Error(
          `auth.jwt.getKey returned key material that is not a valid ${hmac ? 'secret' : 'public key'}: ${(err as Error).message}`,
        );
      }
      if (id !== undefined) keyObjects.set(id, made);
      return made;
    };
    verify = async function verifyTokenWithKeyHook(token) {
      const nowMs = clock();
      const digest = cache === undefined ? undefined : createHash('sha256').update(token).digest('base64');
      if (digest !== undefined) {
        const hit = cache!.get(digest);
        if (hit !== undefined && hit.until > nowMs) return hit.payload;
      }
      let decoded: Jwt | null;
      try {
        decoded = jwt.decode(token, { complete: true });
      } catch {
        decoded = null;
      }
      if (decoded === null || typeof decoded.header !== 'object') throw new AuthFailure('malformed', 'jwt malformed');
      // Refuse a disallowed alg before the hook runs: the hook never sees tokens we would not accept.
      if (!algorithms.includes(decoded.header.alg))
        throw new AuthFailure(
          'invalid_algorithm',
          `alg ${SAFE_ALG.test(String(decoded.header.alg)) ? decoded.header.alg : '(unreadable)'} is not accepted`,
        );
      const material = await getKey(decoded.header);
      if (material === null || material === undefined) throw new AuthFailure('unknown_key', 'getKey found no key for the token header');
      const payload = verifyWith(token, toKeyObject(material), nowMs);
      if (digest !== undefined) remember(digest, payload, nowMs);
      return payload;
    };
  }
  return { verify, weakSecret, algorithms: algorithms as Algorithm[] };
}

function checkAlgorithms(value: unknown): string[] {
  if (!Array.isArray(value) || value.length === 0) {
    throw new ConfigError('auth.jwt.algorithms', `expected a non-empty array like ['HS256'] or ['RS256'], got ${describe(value)}`);
  }
  for (const alg of value) {
    if (typeof alg === 'string' && alg.toLowerCase() === 'none') {
      throw new ConfigError(
        'auth.jwt.algorithms',
        "'none' accepts unsigned tokens that anyone can forge and is always refused; list signing algorithms such as 'HS256' or 'RS256'",
      );
    }
    if (alg === 'EdDSA') {
      throw new ConfigError('auth.jwt.algorithms', "'EdDSA' is not supported by jsonwebtoken 9; use ES256 (P-256) or RS256 keys");
    }
    if (typeof alg !== 'string' || (!HS.includes(alg) && !RSA.includes(alg) && !EC.includes(alg))) {
      throw new ConfigError(
        'auth.jwt.algorithms',
        `unknown algorithm ${describe(alg)}; expected some of ${[...HS, ...RSA, ...EC].join(', ')}`,
      );
    }
  }
  return [...new Set(value as string[])];
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

function defaultAlgorithm(key: KeyObject): string {
  const type = key.asymmetricKeyType;
  if (type === 'rsa') return 'RS256';
  if (type === 'rsa-pss') return 'PS256';
  if (type === 'ec') {
    const alg = CURVE_ALG[key.asymmetricKeyDetails?.namedCurve ?? ''];
    if (alg !== undefined) return alg;
  }
  throw new ConfigError(
    'auth.jwt.publicKey',
    `a ${type ?? 'unknown'} key${type === 'ec' ? ` on curve ${key.asymmetricKeyDetails?.namedCurve}` : ''} is not supported; use an RSA key or an EC key on P-256, P-384 or P-521`,
  );
}

function checkKeyFits(key: KeyObject, alg: string): void {
  const type = key.asymmetricKeyType;
  const fits = RSA.includes(alg)
    ? type === 'rsa' || (type === 'rsa-pss' && alg.startsWith('PS'))
    : type === 'ec' && CURVE_ALG[key.asymmetricKeyDetails?.namedCurve ?? ''] === alg;
  if (!fits) {
    const what = type === 'ec' ? `an EC key on ${key.asymmetricKeyDetails?.namedCurve}` : `a ${type} key`;
    throw new ConfigError(
      'auth.jwt.algorithms',
      `'${alg}' cannot be verified with ${what}; list the algorithm the key was made for${type === 'ec' || type === 'rsa' || type === 'rsa-pss' ? ` ('${defaultAlgorithm(key)}')` : ''}`,
    );
  }
}

function checkStrings(value: unknown, option: string): string | string[] {
  if (typeof value === 'string' && value !== '') return value;
  if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'string' && v !== '')) return value as string[];
  throw new ConfigError(option, `expected a string or a non-empty array of strings, got ${describe(value)}`);
}

function checkAudience(value: unknown): string | RegExp | [string | RegExp, ...(string | RegExp)[]] {
  const ok = (v: unknown): boolean => (typeof v === 'string' && v !== '') || v instanceof RegExp;
  if (ok(value)) return value as string | RegExp;
  if (Array.isArray(value) && value.length > 0 && value.every(ok)) return value as [string | RegExp, ...(string | RegExp)[]];
  throw new ConfigError('auth.jwt.audience', `expected a string, a RegExp or a non-empty array of them, got ${describe(value)}`);
}

// jsonwebtoken says what failed only in its messages; they are stable across v9.
function toFailure(err: unknown): AuthFailure {
  if (err instanceof jwt.TokenExpiredError) return new AuthFailure('expired', err.message);
  if (err instanceof jwt.NotBeforeError) return new AuthFailure('not_before', err.message);
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof jwt.JsonWebTokenError) {
    if (message === 'invalid signature') return new AuthFailure('invalid_signature', message);
    if (
      message === 'invalid algorithm' ||
      message === 'jwt signature is required' ||
      message.startsWith('please specify "none"') ||
      message.startsWith('secretOrPublicKey must be')
    ) {
      return new AuthFailure('invalid_algorithm', message);
    }
    if (message.startsWith('jwt audience invalid')) return new AuthFailure('invalid_audience', message);
    if (message.startsWith('jwt issuer invalid')) return new AuthFailure('invalid_issuer', message);
  }
  // Anything else jsonwebtoken (or jws underneath) throws comes from the token's bytes: malformed.
  // Foreign messages (JSON.parse's) quote the decoded token, so they never reach the log.
  return new AuthFailure('malformed', err instanceof jwt.JsonWebTokenError ? message : 'the token could not be decoded');
}
