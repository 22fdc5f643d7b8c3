import type { Request, Response } from 'express';

/**
 * What express-perimeter keeps per request besides the public `req.id`, `req.context` and
 * `req.signal`: one object, under one module-private symbol, on the request itself. The state
 * stays out of the request's enumerable properties (logged or inspected requests, `for…in`), and
 * a second copy of the library in the process (another version behind a route) has slots of its
 * own instead of reading these with different expectations.
 */
export class RequestSlots {
  /** The stack serving the request (lib/runtime). */
  runtime: unknown = undefined;
  /** timeout's per-request state. */
  timeout: unknown = undefined;
  /** Listeners waiting for the end of the response (lib/response-done). */
  done: unknown = undefined;
  /** cache: the response hooks, the server-side fill, the write invalidation hook. */
  cachePending: unknown = undefined;
  cacheFill: unknown = undefined;
  cacheWrite: unknown = undefined;
  /** The OpenTelemetry span decisions are recorded on (lib/otel). */
  span: unknown = undefined;
}

const SLOTS = Symbol('express-perimeter.slots');

type Slotted = { [SLOTS]?: RequestSlots };

/** The request's slots, made on first use. */
export function slotsOf(req: Request): RequestSlots {
  let slots = (req as Slotted)[SLOTS];
  if (slots === undefined) {
    // First touch of the request by the library (the stack's entry, or the first middleware used
    // alone): the request and its response go to dictionary mode before anything is added.
    toDictionaryMode(req);
    const res = (req as { res?: unknown }).res;
    if (typeof res === 'object' && res !== null) toDictionaryMode(res);
    slots = new RequestSlots();
    (req as Slotted)[SLOTS] = slots;
  }
  return slots;
}

/** The request's slots if any middleware made them, without making them. */
export function peekSlots(req: Request): RequestSlots | undefined {
  return (req as Slotted)[SLOTS];
}

/** The slots of the request a response answers (Express links them as `res.req`); own slots on anything else. */
export function responseSlots(res: Response): RequestSlots {
  const req = res.req as Request | undefined;
  if (req !== undefined && req !== null) return slotsOf(req);
  let slots = (res as unknown as Slotted)[SLOTS];
  if (slots === undefined) {
    slots = new RequestSlots();
    (res as unknown as Slotted)[SLOTS] = slots;
  }
  return slots;
}

const NORMALIZE = Symbol('express-perimeter.normalize');

/**
 * Switches `obj` (a request or response, on the library's first touch) to V8's dictionary mode.
 *
 * Express gives every request and response a new prototype (`Object.setPrototypeOf(req,
 * app.request)`), after which V8 keeps no shared hidden-class transitions for the object: each
 * property added to it, by Express, Node or the middleware, makes a hidden class for that one
 * object, and reads on it miss V8's inline caches. In dictionary mode all requests share one
 * hidden class: an added property is an insert and a read a hash lookup the caches keep (see
 * docs/benchmarks.md for the measurement). Nothing observable changes: the object keeps its
 * properties, their order and its prototype.
 */
export function toDictionaryMode(obj: object): void {
  // Adding a property and deleting it (not the last-added one's fast path: the object's hidden
  // class has no shared parent to go back to) makes V8 normalize the object.
  (obj as Record<symbol, unknown>)[NORMALIZE] = undefined;
  delete (obj as Record<symbol, unknown>)[NORMALIZE];
}

/**
 * Defines `key` on `obj` itself as a plain writable data property, as an assignment by user code
 * would, but also where a prototype of `obj` has an accessor of that name (a future Node or
 * Express `req.signal`): the own property shadows it for this object only.
 */
export function defineOwn(obj: object, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true });
}

/**
 * Sets `req.id` (unless `id` is undefined) and `req.context`, as own data properties of the
 * request: user code can read and assign them as any property.
 */
export function setIdentity(req: Request, id: string | undefined, context: unknown): void {
  // The first touch (dictionary mode) comes before the additions.
  slotsOf(req);
  if (id !== undefined) defineOwn(req, 'id', id);
  defineOwn(req, 'context', context);
}
