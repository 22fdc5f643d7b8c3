import { createHash } from 'node:crypto';
import type { Request } from 'express';
import { ConfigError } from '../errors';
import { clientKey } from '../rate-limit/client-key';
import { describe } from '../units';

/** Whose keys a record belongs to: a built-in kind of caller, or a function returning the caller's id. */
export type IdempotencyScope = 'ip' | 'user' | 'apiKey' | 'tenant' | ((req: Request) => string | number | undefined | null);

/** Longest key accepted, as the IETF draft and Stripe allow. */
export const MAX_KEY_LENGTH = 255;

/** Whether a header value is a key: 1–255 visible ASCII characters (0x21–0x7E), nothing else. */
export function isValidKey(value: string): boolean {
  const length = value.length;
  if (length === 0 || length > MAX_KEY_LENGTH) return false;
  for (let i = 0; i < length; i++) {
    const c = value.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

/**
 * Compiles the `scope` option into the caller id a record belongs to. Default: the API key, else
 * the user, else the client address, each joined with the tenant, as the rate limiter counts
 * callers, so two API keys sending the same key never share a record.
 */
export function scopeOf(option: IdempotencyScope | undefined): (req: Request) => string {
  if (option === undefined || option === 'ip' || option === 'user' || option === 'apiKey' || option === 'tenant' || typeof option === 'function') {
    return clientKey(option).id;
  }
  throw new ConfigError('idempotency.scope', `expected 'ip', 'user', 'apiKey', 'tenant' or a function (req) => callerId, got ${describe(option)}`);
}

/**
 * The id of a record: a digest of the caller and the key, so ids have one length and the store's
 * key names carry neither user ids nor client keys. A key holds no newline, so the pair is
 * unambiguous whatever the caller id holds.
 */
export function recordId(scope: string, key: string): string {
  return createHash('sha256').update(scope).update('\n').update(key).digest('base64url');
}
