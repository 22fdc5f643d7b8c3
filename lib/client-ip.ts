import type { Request } from 'express';
import { contextOf } from './context';

/**
 * The client IP as Express sees it (`req.ip`, so `trust proxy` applies), computed once per
 * request: `req.ip` re-runs proxy-addr over X-Forwarded-For on every read, and the logger,
 * ipFilter, rateLimit, metrics, audit and flags all want it.
 */
export function clientIp(req: Request): string | undefined {
  const ctx = contextOf(req);
  return ctx === undefined ? req.ip : ctx.ip;
}
