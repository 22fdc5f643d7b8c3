import type { Request, RequestHandler } from 'express';
import { auditStateOf, trackerFor } from '../lib/audit/tracking';
import { ConfigError } from '../lib/errors';
import { checkCallback, refuseRequest } from '../lib/options';
import { loggerOf } from '../lib/runtime';
import { describe } from '../lib/units';
import { warnOnce } from '../lib/warnings';
import type { PerimeterHandler } from '../types/express-augment';

const EVENT = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

/**
 * Names the audit event of a route, replacing the derived one: `app.post('/users/:id/ban',
 * audit('USER_BANNED'), handler)`. A function names it per request. On a route whose method
 * auditLog does not record (a GET), the request is recorded all the same; `audit(false)` leaves
 * the route's requests out of the audit log.
 */
export function audit(event: string | false | ((req: Request) => string)): PerimeterHandler;
export function audit(event: string | false | ((req: Request) => string)): RequestHandler {
  refuseRequest('audit', event, "audit('EVENT')");
  checkCallback('audit', event, '(req) => event name');
  if (event !== false && typeof event !== 'function' && (typeof event !== 'string' || !EVENT.test(event))) {
    throw new ConfigError('audit', `expected an event name of 1–128 letters, digits and _ . : - like 'USER_BANNED', a function (req) => name, or false, got ${describe(event)}`);
  }
  return function auditEvent(req, res, next) {
    let state = auditStateOf(req);
    if (state === undefined) {
      if (event === false) return next();
      const tracker = trackerFor(req);
      if (tracker === undefined) {
        warnOnce(loggerOf(req), 'ERR_AUDIT_WITHOUT_AUDIT_LOG', { path: req.path });
        return next();
      }
      state = tracker.track(req, res);
    }
    if (typeof event === 'function') {
      try {
        const name = event(req);
        // A name the function could not make keeps the derived one rather than losing the record.
        if (typeof name === 'string' && name !== '') state.event = name.slice(0, 128);
      } catch (err) {
        return next(err);
      }
    } else {
      state.event = event;
    }
    next();
  };
}
