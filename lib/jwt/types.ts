import type { KeyObject } from 'node:crypto';
import type { JWK, KeyLike } from 'jose';

/**
 * A token's protected header as `getKey` receives it. Shaped like jsonwebtoken's `JwtHeader` and
 * jose's `JWSHeaderParameters`, so a hook typed for either (or jose's `createRemoteJWKSet`) fits.
 */
export interface JwtHeader {
  alg: string;
  kid?: string;
  typ?: string;
  cty?: string;
  crit?: string[];
  jku?: string;
  x5u?: string;
  'x5t#S256'?: string;
  x5t?: string;
  x5c?: string[];
  [parameter: string]: unknown;
}

/**
 * Verified JWT claims (`loadUser`'s argument, `req.auth.claims`). Shaped like jsonwebtoken's
 * `JwtPayload`: the registered claims typed, any other claim readable.
 */
export interface JwtClaims {
  // Claims are the token issuer's to define; `any` keeps `claims.org_id` usable without a cast, as jsonwebtoken's type does.
  [claim: string]: any;
  iss?: string;
  sub?: string;
  aud?: string | string[];
  exp?: number;
  nbf?: number;
  iat?: number;
  jti?: string;
}

/**
 * Key material a `getKey` hook may return: a PEM string, a Buffer, a KeyObject, a WebCrypto
 * CryptoKey (what jose's key functions give), or a public JWK object; with HS* algorithms a secret
 * (string, Buffer, or a JWK of kty 'oct'). `null` or `undefined` means "no such key" (401).
 */
export type JwtKeyMaterial = string | Buffer | Uint8Array | KeyObject | KeyLike | JWK;
