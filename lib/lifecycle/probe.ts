import type { Request } from 'express';

const PROBE = Symbol('express-perimeter.probe');

/** Marks `req` as a health probe answered by `health` (requestLogger then logs it at debug). */
export function markProbe(req: Request): void {
  (req as unknown as Record<symbol, boolean>)[PROBE] = true;
}

/** Whether `health` answered `req` as a probe. */
export function isProbe(req: Request): boolean {
  return (req as unknown as Record<symbol, boolean | undefined>)[PROBE] === true;
}
