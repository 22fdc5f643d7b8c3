import type { Request } from 'express';
import type { Logger } from './logger';
import { warnOnce } from './warnings';

let warned = false;

/**
 * Warns once (ERR_TRUST_PROXY_OFF) when a request carries X-Forwarded-For while Express's
 * `trust proxy` is off: behind a load balancer every client would then share one IP for rate
 * limits and IP rules. The header itself is never believed here; `req.ip` decides.
 */
export function checkForwardedFor(req: Request, logger: Logger): void {
  if (warned || req.headers['x-forwarded-for'] === undefined) return;
  const trust = req.app?.get('trust proxy fn') as ((addr: string, i: number) => boolean) | undefined;
  const trusted = typeof trust === 'function' && trust(req.socket?.remoteAddress ?? '', 0);
  if (!trusted) warned = warnOnce(logger, 'ERR_TRUST_PROXY_OFF', { remote_address: req.socket?.remoteAddress }) || warned;
}

/** Re-arms the warning (tests). */
export function resetForwardedForWarning(): void {
  warned = false;
}
