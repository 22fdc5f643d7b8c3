import type { Request } from 'express';

/**
 * The client IP as Express sees it (`req.ip`, so `trust proxy` applies), computed once per
 * request: `req.ip` re-runs proxy-addr over X-Forwarded-For on every read, and the logger,
 * ipFilter, rateLimit, metrics, audit and flags all want it.
 */
export function clientIp(req: Request): string | undefined {
  return req.context === undefined ? req.ip : req.context.ip;
}
