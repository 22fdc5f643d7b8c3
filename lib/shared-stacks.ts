import type { Logger } from './logger';

/**
 * The loggers of the stacks with Redis stores open in this process. A route-level limiter serving
 * a request that no stack saw counts in memory; while such a stack is open, that is almost surely
 * a mounting mistake (before `app.use(stack)`, or on a path the stack does not cover), which
 * rateLimit reports once (ERR_RATE_LIMIT_OUTSIDE_STACK) to that stack's logger.
 */
const open = new Set<{ logger: Logger }>();

/** Counts a stack with Redis stores as open; the returned function counts it closed. */
export function openSharedStack(logger: Logger): () => void {
  const entry = { logger };
  open.add(entry);
  return () => {
    open.delete(entry);
  };
}

/** The logger of the most recently opened stack with Redis stores still open, if any. */
export function sharedStackLogger(): Logger | undefined {
  let last: Logger | undefined;
  for (const entry of open) last = entry.logger;
  return last;
}
