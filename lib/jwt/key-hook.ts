import { createPublicKey, createSecretKey, KeyObject, type JsonWebKey } from 'node:crypto';
import { types } from 'node:util';
import { LRUCache } from 'lru-cache';
import type { Logger } from '../logger';
import { OutageLog } from './outage-log';
import type { JwtHeader, JwtKeyMaterial } from './types';

/**
 * The token's key cannot be had right now: the JWKS endpoint is unreachable with no keys cached,
 * or the `getKey` hook failed. The server's problem, not the client's: 503, never 401 or 500.
 */
export class KeySourceUnavailable extends Error {
  constructor(message = 'the signing keys are unavailable') {
    super(message);
    this.name = 'KeySourceUnavailable';
  }
}

/** Finds the key of a token: undefined when there is no such key (401); throws {@link KeySourceUnavailable} when the source fails (503). */
export type KeyResolver = (header: JwtHeader) => Promise<KeyObject | undefined>;

/** The `getKey` hook of `auth.jwt`. */
export type GetKey = (header: JwtHeader) => Promise<JwtKeyMaterial | null | undefined> | JwtKeyMaterial | null | undefined;

// What the key libraries people wire into getKey throw for "no key with that kid": jose's key
// sets (JWKSNoMatchingKey, and JWKSMultipleMatchingKeys for a token that names no kid) and
// jwks-rsa (SigningKeyNotFoundError). They mean a token nobody can verify, as returning null does.
function isNoSuchKey(err: unknown): boolean {
  if (err === null || typeof err !== 'object') return false;
  const { code, name } = err as { code?: unknown; name?: unknown };
  return code === 'ERR_JWKS_NO_MATCHING_KEY' || code === 'ERR_JWKS_MULTIPLE_MATCHING_KEYS' || name === 'SigningKeyNotFoundError';
}

/**
 * Wraps `getKey` into a {@link KeyResolver}: null/undefined (or a "no matching key" error) is
 * "no such key"; any other throw, or material that is not a key, makes the source unavailable,
 * logged once per outage with the hook's error.
 */
export function hookResolver(getKey: GetKey, hmac: boolean, logger: Logger): KeyResolver {
  const outage = new OutageLog(logger, { down: 'ERR_JWT_GET_KEY_FAILED', up: 'ERR_JWT_GET_KEY_RECOVERED' });
  // PEM strings are parsed once: a hook usually returns the same few strings for every token.
  const parsed = new LRUCache<string, KeyObject>({ max: 100 });

  const toKeyObject = (material: JwtKeyMaterial): KeyObject => {
    if (material instanceof KeyObject) return material.type === 'private' ? createPublicKey(material) : material;
    if (types.isCryptoKey(material)) return toKeyObject(KeyObject.from(material as Parameters<typeof KeyObject.from>[0]));
    if (typeof material === 'string') {
      let key = parsed.get(material);
      if (key === undefined) {
        key = hmac ? createSecretKey(Buffer.from(material, 'utf8')) : createPublicKey(material);
        parsed.set(material, key);
      }
      return key;
    }
    if (material instanceof Uint8Array) return hmac ? createSecretKey(material) : createPublicKey(Buffer.from(material));
    if (typeof material === 'object' && material !== null && typeof (material as { kty?: unknown }).kty === 'string') {
      const jwk = material as JsonWebKey;
      if (jwk.kty === 'oct') {
        if (!hmac || typeof jwk.k !== 'string') throw new TypeError("a JWK of kty 'oct' is a secret, usable only with HS* algorithms");
        return createSecretKey(Buffer.from(jwk.k, 'base64url'));
      }
      return createPublicKey({ key: jwk, format: 'jwk' });
    }
    throw new TypeError('expected a PEM string, a Buffer, a KeyObject, a CryptoKey or a JWK');
  };

  return async function keyFromHook(header) {
    let material: JwtKeyMaterial | null | undefined;
    try {
      material = await getKey(header);
    } catch (err) {
      if (isNoSuchKey(err)) return undefined;
      outage.failed(err, 'auth.jwt.getKey failed; tokens that need it are refused with 503 until it answers again', 'error');
      throw new KeySourceUnavailable('auth.jwt.getKey failed');
    }
    if (material === null || material === undefined) {
      outage.recovered('auth.jwt.getKey answers again');
      return undefined;
    }
    let key: KeyObject;
    try {
      key = toKeyObject(material);
    } catch (err) {
      // Unusable material is the hook's fault, never the client's.
      outage.failed(
        err,
        `auth.jwt.getKey returned key material that is not a valid ${hmac ? 'secret' : 'public key'}; tokens that need it are refused with 503`,
        'error',
      );
      throw new KeySourceUnavailable('auth.jwt.getKey returned unusable key material');
    }
    outage.recovered('auth.jwt.getKey answers again');
    return key;
  };
}
