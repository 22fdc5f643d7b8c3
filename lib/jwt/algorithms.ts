import type { KeyObject } from 'node:crypto';
import { ConfigError } from '../errors';
import { describe } from '../units';

/** A JWS algorithm `auth.jwt` can verify ('none' is never one). */
export type JwtAlgorithm =
  'HS256' | 'HS384' | 'HS512' | 'RS256' | 'RS384' | 'RS512' | 'PS256' | 'PS384' | 'PS512' | 'ES256' | 'ES384' | 'ES512' | 'EdDSA';

export const HMAC: readonly string[] = ['HS256', 'HS384', 'HS512'];
export const RSA: readonly string[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];
export const EC: readonly string[] = ['ES256', 'ES384', 'ES512'];
export const OKP: readonly string[] = ['EdDSA'];
/** Every algorithm verified with a public key: what a key set may use when `algorithms` is not given. */
export const ASYMMETRIC: readonly string[] = [...RSA, ...EC, ...OKP];
const ALL: readonly string[] = [...HMAC, ...ASYMMETRIC];

// Node's names of the curves (KeyObject) and JOSE's (JWK `crv`), each with the one ES algorithm it signs.
const CURVE_ALG: Record<string, string> = {
  prime256v1: 'ES256',
  secp384r1: 'ES384',
  secp521r1: 'ES512',
  'P-256': 'ES256',
  'P-384': 'ES384',
  'P-521': 'ES512',
};
// Below 2048 bits an RSA key is breakable, and jose refuses to verify with it.
const MIN_RSA_BITS = 2048;

/** Validates `auth.jwt.algorithms`: a non-empty list of known algorithms, never 'none'; returns it without repeats. */
export function checkAlgorithms(value: unknown): string[] {
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
    if (typeof alg !== 'string' || !ALL.includes(alg)) {
      throw new ConfigError('auth.jwt.algorithms', `unknown algorithm ${describe(alg)}; expected some of ${ALL.join(', ')}`);
    }
  }
  return [...new Set(value as string[])];
}

/** Whether `alg` is an HMAC algorithm (verified with a shared secret). */
export function isHmac(alg: string): boolean {
  return HMAC.includes(alg);
}

/** The algorithm a public key signs by default: RS256 for RSA, PS256 for RSA-PSS, the curve's ES* for EC, EdDSA for Ed25519/Ed448. */
export function defaultAlgorithm(key: KeyObject): string | undefined {
  switch (key.asymmetricKeyType) {
    case 'rsa':
      return 'RS256';
    case 'rsa-pss':
      return pssAlgorithm(key) ?? 'PS256';
    case 'ec':
      return CURVE_ALG[key.asymmetricKeyDetails?.namedCurve ?? ''];
    case 'ed25519':
    case 'ed448':
      return 'EdDSA';
    default:
      return undefined;
  }
}

/**
 * Why `key` cannot verify `alg`, as the end of "cannot be verified with …" ('an RSA key',
 * 'an RSA key of 1024 bits (2048 or more are needed)'), or undefined when it can.
 */
export function keyMisfit(key: KeyObject, alg: string): string | undefined {
  const type = key.asymmetricKeyType;
  if (RSA.includes(alg)) {
    if (type !== 'rsa' && !(type === 'rsa-pss' && alg.startsWith('PS'))) return keyName(key);
    const pss = type === 'rsa-pss' ? pssAlgorithm(key) : undefined;
    if (pss !== undefined && pss !== alg) return `an RSA-PSS key bound to ${pss}`;
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS) return `an RSA key of ${bits} bits (${MIN_RSA_BITS} or more are needed)`;
    return undefined;
  }
  if (EC.includes(alg)) return type === 'ec' && CURVE_ALG[key.asymmetricKeyDetails?.namedCurve ?? ''] === alg ? undefined : keyName(key);
  if (alg === 'EdDSA') return type === 'ed25519' || type === 'ed448' ? undefined : keyName(key);
  if (isHmac(alg)) return type === undefined ? undefined : keyName(key);
  return keyName(key);
}

/** A key's kind as a user would name it: 'an RSA key', 'an EC key on secp384r1', 'an Ed25519 key', 'a secret'. */
export function keyName(key: KeyObject): string {
  switch (key.asymmetricKeyType) {
    case undefined:
      return 'a secret';
    case 'rsa':
      return 'an RSA key';
    case 'rsa-pss':
      return 'an RSA-PSS key';
    case 'ec':
      return `an EC key on ${key.asymmetricKeyDetails?.namedCurve ?? 'an unknown curve'}`;
    case 'ed25519':
      return 'an Ed25519 key';
    case 'ed448':
      return 'an Ed448 key';
    default:
      return `a key of type ${key.asymmetricKeyType}`;
  }
}

/**
 * The algorithms a key from a JWKS may verify. Its own `alg` when it names one; otherwise inferred
 * from its type: RSA → RS256 (or the RS and PS algorithms `configured` lists), EC → its curve's
 * ES algorithm, OKP Ed25519/Ed448 → EdDSA. Narrowed to `configured` when given. Never an HMAC
 * algorithm: a key set is public, so a secret in it would let anyone sign.
 */
export function jwkAlgorithms(jwk: { kty?: unknown; crv?: unknown; alg?: unknown }, configured: readonly string[] | undefined): string[] {
  let own: readonly string[];
  if (typeof jwk.alg === 'string') {
    own = ASYMMETRIC.includes(jwk.alg) && jwkFits(jwk, jwk.alg) ? [jwk.alg] : [];
  } else if (jwk.kty === 'RSA') {
    own = configured === undefined ? ['RS256'] : RSA;
  } else if (jwk.kty === 'EC') {
    const alg = typeof jwk.crv === 'string' ? CURVE_ALG[jwk.crv] : undefined;
    own = alg === undefined ? [] : [alg];
  } else if (jwk.kty === 'OKP') {
    own = jwk.crv === 'Ed25519' || jwk.crv === 'Ed448' ? ['EdDSA'] : [];
  } else {
    own = [];
  }
  return own.filter((a) => configured === undefined || configured.includes(a));
}

function jwkFits(jwk: { kty?: unknown; crv?: unknown }, alg: string): boolean {
  if (RSA.includes(alg)) return jwk.kty === 'RSA';
  if (EC.includes(alg)) return jwk.kty === 'EC' && typeof jwk.crv === 'string' && CURVE_ALG[jwk.crv] === alg;
  return jwk.kty === 'OKP' && (jwk.crv === 'Ed25519' || jwk.crv === 'Ed448');
}

function pssAlgorithm(key: KeyObject): string | undefined {
  const hash = key.asymmetricKeyDetails?.hashAlgorithm;
  return hash === 'sha256' ? 'PS256' : hash === 'sha384' ? 'PS384' : hash === 'sha512' ? 'PS512' : undefined;
}
