import type { Request } from 'express';
import { contextOf } from './context';
import { BadRequestError } from './errors';
import { canonicalClientAddress } from './ip-list';

/**
 * The client IP, the one value every middleware uses for it (ipFilter, rateLimit keys, logs,
 * audit, flags, metrics): Express's `req.ip` (so `trust proxy` decides whether X-Forwarded-For
 * counts) in canonical form. A proxy's port, brackets or zone id are dropped and IPv4-mapped IPv6
 * is IPv4, so `[198.51.100.9]:1234` and `198.51.100.9` are one client. Read once per request
 * (through the request context when there is one): `req.ip` re-runs proxy-addr on every read.
 *
 * Undefined when the address cannot be parsed (`unknown`, junk from a client when `trust proxy`
 * believes its header) or is missing: never a value that would pass for some other client.
 * Middleware that decide by address use {@link requireClientIp}.
 */
export function clientIp(req: Request): string | undefined {
  const ctx = contextOf(req);
  return ctx === undefined ? canonicalClientAddress(req.ip) : ctx.ip;
}

/**
 * {@link clientIp} for middleware that decide by address: throws 400 BAD_REQUEST when the address
 * cannot be parsed, so an unreadable client is refused rather than treated as an unknown one.
 * The first middleware of a chain that needs the address refuses (in a stack: ipFilter, early).
 */
export function requireClientIp(req: Request): string {
  const ip = clientIp(req);
  if (ip === undefined) throw invalidClientAddress();
  return ip;
}

/** The 400 BAD_REQUEST for a client address that cannot be parsed, built without a stack trace. */
export function invalidClientAddress(): BadRequestError {
  // Junk in a forwarded header can come in floods: a stack trace would be the costliest part.
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return new BadRequestError(MESSAGE, { reason: 'invalid_client_address' });
  } finally {
    Error.stackTraceLimit = limit;
  }
}

// Says what is wrong without echoing the header (or which proxy wrote it).
const MESSAGE = 'The client address of this request is not a valid IP address.';
