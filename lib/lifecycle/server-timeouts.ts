import type { Server } from 'node:http';

/** Node's defaults (v20+): a value still equal to one of these was left by the user. */
const NODE_DEFAULTS = { keepAliveTimeout: 5_000, headersTimeout: 60_000, requestTimeout: 300_000 } as const;

/**
 * Timeouts `attach` sets where the user left Node's defaults. keepAliveTimeout sits above the
 * 60 s idle timeout of common load balancers (AWS ALB, GCP, nginx upstream keepalive), so the
 * balancer, not Node, closes an idle connection: otherwise Node may close it just as the
 * balancer sends a request on it, and the client gets a 502. headersTimeout must exceed
 * keepAliveTimeout, or a request arriving late on a kept-alive connection is cut by the headers
 * timer. requestTimeout bounds a whole slow upload well above the stack's 30 s handler timeout.
 */
export const SAFE_SERVER_TIMEOUTS = { keepAliveTimeout: 65_000, headersTimeout: 66_000, requestTimeout: 120_000 } as const;

/** Applies {@link SAFE_SERVER_TIMEOUTS} to the timeouts of `server` still at Node's defaults. */
export function applySafeTimeouts(server: Server): void {
  if (server.keepAliveTimeout === NODE_DEFAULTS.keepAliveTimeout) server.keepAliveTimeout = SAFE_SERVER_TIMEOUTS.keepAliveTimeout;
  if (server.headersTimeout === NODE_DEFAULTS.headersTimeout) {
    server.headersTimeout = Math.max(SAFE_SERVER_TIMEOUTS.headersTimeout, server.keepAliveTimeout + 1_000);
  }
  if (server.requestTimeout === NODE_DEFAULTS.requestTimeout) {
    server.requestTimeout = Math.max(SAFE_SERVER_TIMEOUTS.requestTimeout, server.headersTimeout);
  }
}
