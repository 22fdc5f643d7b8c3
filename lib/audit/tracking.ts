import type { Request, Response } from 'express';
import type { AuditRequestState } from './record';

/** Where the state of a recorded request lives on `req`. */
export const AUDIT_STATE = Symbol('express-perimeter.audit');

/** An auditLog as `audit('EVENT')` sees it: something that can start recording a request. */
export interface AuditTracker {
  /** Starts recording `req` (it will be written when the response finishes) and returns its state. */
  track(req: Request, res: Response): AuditRequestState;
}

// Keyed by Express app: audit('EVENT') on a GET route needs the auditLog that let the GET pass
// without recording it. Weak, so apps that go away take their entry with them.
const trackers = new WeakMap<object, AuditTracker>();
const MAX_DEPTH = 32;

/** Remembers that `tracker` serves `app`. */
export function registerTracker(app: object, tracker: AuditTracker): void {
  trackers.set(app, tracker);
}

/** The auditLog serving `req`'s app, or a parent app's (a route in a mounted sub-app). */
export function trackerFor(req: Request): AuditTracker | undefined {
  let app = req.app as (object & { parent?: object }) | undefined;
  for (let depth = 0; app !== undefined && app !== null && depth < MAX_DEPTH; depth++) {
    const tracker = trackers.get(app);
    if (tracker !== undefined) return tracker;
    app = app.parent as (object & { parent?: object }) | undefined;
  }
  return undefined;
}

/** The state of `req` when an auditLog is recording it. */
export function auditStateOf(req: Request): AuditRequestState | undefined {
  return (req as unknown as Record<symbol, AuditRequestState | undefined>)[AUDIT_STATE];
}

/** Marks `req` as recorded with `state`. */
export function setAuditState(req: Request, state: AuditRequestState): void {
  (req as unknown as Record<symbol, AuditRequestState>)[AUDIT_STATE] = state;
}
