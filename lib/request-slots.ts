import { IncomingMessage, ServerResponse } from 'node:http';
import type { Request, Response } from 'express';

/**
 * Everything express-perimeter keeps per request, in one object hung on the request under one
 * symbol.
 *
 * Why one object: Express gives every request and response a new prototype
 * (`Object.setPrototypeOf(req, app.request)`), and V8 then keeps no shared transitions for
 * properties added afterwards. Each property added to `req` or `res` makes a new hidden class
 * for that one object, about 3 µs, and leaves every later property access on it to a slow
 * lookup. Measured on Node 20: 6 properties added per request cost 21 µs; one object holding
 * them 3.4 µs. So middleware state lives here, and `req.id` / `req.context` are accessors on
 * Express's request prototype that read this object (see {@link installRequestAccessors}).
 */
export class RequestSlots {
  /** The stack serving the request (lib/runtime). */
  runtime: unknown = undefined;
  /** `req.id`. */
  id: string | undefined = undefined;
  /** `req.context`. */
  context: unknown = undefined;
  /** timeout's per-request state. */
  timeout: unknown = undefined;
  /** Listeners waiting for the end of the response (lib/response-done). */
  done: unknown = undefined;
  /** cache: the response hooks, the server-side fill, the write invalidation hook. */
  cachePending: unknown = undefined;
  cacheFill: unknown = undefined;
  cacheWrite: unknown = undefined;
  /** requestLogger: when the request started, until `X-Response-Time` is set. */
  responseTimeStart: bigint | undefined = undefined;
}

// Symbol.for: two copies of the library in one process (a stack and a route-level factory from
// another version) find the same slots.
const SLOTS = Symbol.for('express-perimeter.slots');

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
    onceOnExpressPrototype(req, ACCESSORS, defineRequestAccessors);
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

const ACCESSORS = Symbol.for('express-perimeter.accessors');

const NORMALIZE = Symbol('express-perimeter.normalize');

/**
 * Switches `obj` (a request or response, at the stack's entry) to V8's dictionary mode.
 *
 * After Express re-prototypes them, each request and response gets hidden classes of its own
 * (above), so every property added or read on it, by Express, Node and the middleware alike,
 * misses V8's inline caches. In dictionary mode all requests share one hidden class: a property
 * read is a hash lookup that the caches keep, and an added property is an insert. Measured on
 * Node 20 (setPrototypeOf, 6 added properties, 24 reads per object): 46 µs per object with its
 * own hidden classes, 10.9 µs in dictionary mode, the switch included. Semantics do not change.
 */
export function toDictionaryMode(obj: object): void {
  // Adding a property and deleting it (not the last-added one's fast path: the object's hidden
  // class has no shared parent to go back to) makes V8 normalize the object.
  (obj as Record<symbol, unknown>)[NORMALIZE] = undefined;
  delete (obj as Record<symbol, unknown>)[NORMALIZE];
}

/**
 * The prototype in `req`'s chain just above http.IncomingMessage: Express's own `request` object,
 * shared by every app (and sub-app) of one Express copy. Undefined for a request that is not an
 * IncomingMessage (a test double).
 */
export function expressRequestPrototype(req: Request): object | undefined {
  return prototypeAbove(req, IncomingMessage.prototype);
}

/** The same for a response: Express's own `response` object, just above http.ServerResponse. */
export function expressResponsePrototype(res: Response): object | undefined {
  return prototypeAbove(res, ServerResponse.prototype);
}

/**
 * Runs `install` once on the Express prototype `target` inherits from (its `request` object for a
 * request, `response` for a response), marking it with `marker` so later calls cost one property
 * read. Returns false for an object outside Express (a test double), where nothing is installed.
 */
export function onceOnExpressPrototype(target: Request | Response, marker: symbol, install: (proto: object) => void): boolean {
  if ((target as unknown as Record<symbol, unknown>)[marker] === true) return true;
  const proto = target instanceof ServerResponse ? expressResponsePrototype(target as Response) : expressRequestPrototype(target as Request);
  if (proto === undefined) return false;
  if (!Object.prototype.hasOwnProperty.call(proto, marker)) {
    install(proto);
    Object.defineProperty(proto, marker, { value: true, enumerable: false });
  }
  return true;
}

function prototypeAbove(obj: object, base: object): object | undefined {
  let proto = Object.getPrototypeOf(obj) as object | null;
  while (proto !== null && Object.getPrototypeOf(proto) !== base) proto = Object.getPrototypeOf(proto) as object | null;
  return proto ?? undefined;
}

/**
 * `req.id` and `req.context` as accessors on Express's request prototype backed by the slots.
 * Assigning them (user code, another request-id library) stores into the slots too. A request
 * outside Express keeps plain own properties.
 */
function defineRequestAccessors(proto: object): void {
  for (const name of ['id', 'context'] as const) {
    if (Object.prototype.hasOwnProperty.call(proto, name)) continue;
    Object.defineProperty(proto, name, {
      get(this: Request) {
        return (this as Slotted)[SLOTS]?.[name];
      },
      set(this: Request, value: unknown) {
        (slotsOf(this) as unknown as Record<string, unknown>)[name] = value;
      },
      enumerable: false,
      configurable: true,
    });
  }
}

/** Sets `req.id` (unless `id` is undefined) and `req.context`: in the slots, and as own properties on a request outside Express. */
export function setIdentity(req: Request, id: string | undefined, context: unknown): void {
  const slots = slotsOf(req);
  if (id !== undefined) slots.id = id;
  slots.context = context;
  if ((req as { [ACCESSORS]?: boolean })[ACCESSORS] !== true) {
    if (id !== undefined) (req as unknown as Record<string, unknown>).id = id;
    (req as unknown as Record<string, unknown>).context = context;
  }
}
