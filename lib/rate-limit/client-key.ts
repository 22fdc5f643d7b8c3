import { createHash } from 'node:crypto';
import type { Request } from 'express';
import type ipaddr from 'ipaddr.js';
import { ConfigError } from '../errors';
import { parseClientAddress } from '../ip-list';
import { describe } from '../units';
import { requireClientIp } from '../client-ip';

/** What a rate limit counts per: a built-in kind, or a function returning the client's id. */
export type RateLimitKey = 'ip' | 'user' | 'apiKey' | 'tenant' | ((req: Request) => string | number | undefined | null);

/** The `key_type` label of `rate_limit_rejections_total`. */
export type RateLimitKeyType = 'ip' | 'user' | 'apiKey' | 'tenant' | 'custom';

/** The two functions a key option compiles to: the client id (hot path) and, on rejection only, its kind. */
export interface ClientKey {
  /** The id the limiter counts under: kind-prefixed, tenant-scoped, at most 128 characters. */
  id(req: Request): string;
  /** Which kind of id `id(req)` used (for the metric label). */
  type(req: Request): RateLimitKeyType;
}

/**
 * The client part of a rate-limit key for an address (any spelling `clientIp` accepts; the
 * middleware passes its canonical form). IPv4 (and IPv4-mapped IPv6) as is; IPv6 grouped by its
 * /64, because one subscriber is routinely handed a whole /64 and could otherwise rotate through
 * 2^64 addresses, each with a fresh limit.
 */
export function ipKey(ip: string | undefined): string {
  if (!ip) return 'unknown';
  // clientIp gives IPv4 in canonical form: the common case needs no parsing.
  if (ip.indexOf(':') === -1 && ip.indexOf('%') === -1) return ip;
  const addr = parseClientAddress(ip);
  if (addr === undefined) return ip;
  if (addr.kind() === 'ipv4') return addr.toString();
  const p = (addr as ipaddr.IPv6).parts;
  return `${p[0].toString(16)}:${p[1].toString(16)}:${p[2].toString(16)}:${p[3].toString(16)}::/64`;
}

const MAX_ID = 128;

/** Compiles the `key` option once; the result does no option checks per request. */
export function clientKey(option: RateLimitKey | undefined): ClientKey {
  if (option === undefined) {
    // An API key is the most specific identity (one user may hold several keys with their own
    // tiers), then the user, then the address.
    return {
      id: (req) => {
        const key = apiKeyId(req);
        if (key !== undefined) return scoped(req, `key:${key}`);
        const user = req.user?.id;
        return scoped(req, user === undefined || user === null || user === '' ? `ip:${ipKey(requireClientIp(req))}` : `user:${String(user)}`);
      },
      type: (req) => (apiKeyId(req) !== undefined ? 'apiKey' : hasValue(req.user?.id) ? 'user' : 'ip'),
    };
  }
  if (option === 'ip') return { id: (req) => scoped(req, `ip:${ipKey(requireClientIp(req))}`), type: () => 'ip' };
  if (option === 'user') {
    // Anonymous requests fall back to their address rather than sharing one bucket.
    return {
      id: (req) => scoped(req, hasValue(req.user?.id) ? `user:${String(req.user?.id)}` : `ip:${ipKey(requireClientIp(req))}`),
      type: (req) => (hasValue(req.user?.id) ? 'user' : 'ip'),
    };
  }
  if (option === 'apiKey') {
    return {
      id: (req) => {
        const key = apiKeyId(req);
        return scoped(req, key !== undefined ? `key:${key}` : `ip:${ipKey(requireClientIp(req))}`);
      },
      type: (req) => (apiKeyId(req) !== undefined ? 'apiKey' : 'ip'),
    };
  }
  if (option === 'tenant') {
    // The tenant is the key itself here, so it is not joined a second time.
    return {
      id: (req) => bounded(hasValue(req.tenant?.id) ? `tenant:${String(req.tenant?.id)}` : `ip:${ipKey(requireClientIp(req))}`),
      type: (req) => (hasValue(req.tenant?.id) ? 'tenant' : 'ip'),
    };
  }
  if (typeof option === 'function') {
    return {
      id: (req) => {
        const value = option(req);
        return scoped(req, hasValue(value) ? `custom:${String(value)}` : `ip:${ipKey(requireClientIp(req))}`);
      },
      type: () => 'custom',
    };
  }
  throw new ConfigError('rateLimit.key', `expected 'ip', 'user', 'apiKey', 'tenant' or a function (req) => string, got ${describe(option)}`);
}

function apiKeyId(req: Request): string | undefined {
  const key = req.apiKey;
  if (key === undefined || key === null) return undefined;
  const id = key.name ?? key.userId;
  return hasValue(id) ? String(id) : undefined;
}

function hasValue(value: unknown): boolean {
  return value !== undefined && value !== null && value !== '';
}

// A tenant's clients never share counts with another tenant's clients of the same id.
function scoped(req: Request, id: string): string {
  const tenant = req.tenant?.id;
  return bounded(hasValue(tenant) ? `tenant:${String(tenant)}|${id}` : id);
}

// Ids come from users (JWT subjects, custom functions): long ones are hashed so keys stay short.
function bounded(id: string): string {
  return id.length <= MAX_ID ? id : `sha256:${createHash('sha256').update(id).digest('base64url')}`;
}
