import type { Request } from 'express';

const SHED = Symbol('express-perimeter.shed');

/** Marks `req` as refused by loadShedding (requestLogger then logs it at warn, not error). */
export function markShed(req: Request): void {
  (req as unknown as Record<symbol, boolean>)[SHED] = true;
}

/** Whether loadShedding refused `req`. */
export function isShed(req: Request): boolean {
  return (req as unknown as Record<symbol, boolean | undefined>)[SHED] === true;
}
