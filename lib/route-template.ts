import type { Request } from 'express';

/** The label of a request no route matched: 404s, and requests answered before routing. */
export const UNMATCHED_ROUTE = '#unmatched';

/** The route object Express sets on `req.route` (only `path` is read). */
interface RouteLike {
  path?: unknown;
}

/** A router layer, as Express 4 (`regexp`, `keys`) or router 2.3+ (`rawPath`, `match`) builds it. */
interface LayerLike {
  route?: RouteLike;
  handle?: unknown;
  rawPath?: unknown;
  regexp?: RegExp & { fast_slash?: boolean };
  keys?: Array<{ name: string | number }>;
  match?: (path: string) => unknown;
}

interface Found {
  mounts: LayerLike[];
  prefix: Array<string | undefined>;
}

interface Chain {
  /** The mount layers from the app's router down to the route's router. */
  mounts: LayerLike[];
  template: string;
}

/** Where a route sits in an app: one chain usually, several when its router is mounted twice (`/v1`, `/v2`). */
interface Resolution {
  chains: Chain[];
  /** The route's own path, rendered; used when no chain was found. */
  routePath: string;
}

const NO_APP = {};
// Keyed by app, then by route object: a route reached through a sub-app resolves from that sub-app.
// Weak, so routers and apps that go away take their entries with them.
const resolutions = new WeakMap<object, WeakMap<object, Resolution>>();
const MAX_DEPTH = 32;

/**
 * The Express route template that answered `req`, mount paths included: `app.use('/v2', router)`
 * with `router.get('/items/:itemId')` gives `/v2/items/:itemId`. {@link UNMATCHED_ROUTE} when no
 * route matched. Never the raw URL, so it is safe as a metrics label or a cache/breaker key.
 *
 * Call it once the route has run (at finish time, typically). It does not read `req.baseUrl`,
 * which Express rewinds when an error leaves a mounted router and which holds parameter values
 * (`/users/42`) rather than the mount template: it finds `req.route` in the app's router tree
 * once, caches where it sits, and afterwards costs two WeakMap lookups.
 */
export function routeTemplate(req: Request): string {
  const route = (req as { route?: RouteLike }).route;
  if (route === undefined || route === null || typeof route !== 'object') return UNMATCHED_ROUTE;
  const app = (req.app as object | undefined) ?? NO_APP;
  let byRoute = resolutions.get(app);
  if (byRoute === undefined) {
    byRoute = new WeakMap();
    resolutions.set(app, byRoute);
  }
  let resolution = byRoute.get(route);
  if (resolution === undefined) {
    resolution = resolve(app, route);
    byRoute.set(route, resolution);
  }
  const chains = resolution.chains;
  if (chains.length === 1) return chains[0].template;
  if (chains.length > 1) return pickChain(chains, req);
  // Not in the app's tree (a sub-app whose error its parent answered, a router version that keeps
  // no mount paths): the route's own path stays bounded, and '*' marks the unknown mount prefix
  // rather than guessing it. A bare router without an app and no mount prefix is exact.
  return app === NO_APP && !req.baseUrl ? resolution.routePath : `*${resolution.routePath}`;
}

/** How a path argument (string, RegExp or array of them) reads in a template. */
export function renderPath(path: unknown): string {
  if (typeof path === 'string') return path;
  if (path instanceof RegExp) return String(path);
  if (Array.isArray(path)) return path.map(renderPath).join('|');
  return String(path);
}

function resolve(app: object, route: RouteLike): Resolution {
  const routePath = renderPath(route.path);
  const router = appRouter(app);
  const found: Found[] = [];
  if (router !== undefined) walk(router, route, [], [], found, new Set(), 0);
  const appPrefix = appMountPrefix(app);
  const chains: Chain[] = [];
  for (const { mounts, prefix } of found) {
    // A mount this router version keeps no path for: better no chain than a wrong one.
    if (prefix.every((p): p is string => p !== undefined)) chains.push({ mounts, template: join([appPrefix, ...prefix], routePath) });
  }
  return { chains, routePath };
}

function walk(
  router: { stack: LayerLike[] },
  target: RouteLike,
  mounts: LayerLike[],
  prefix: Array<string | undefined>,
  found: Found[],
  onPath: Set<unknown>,
  depth: number,
): void {
  if (depth > MAX_DEPTH || onPath.has(router)) return;
  onPath.add(router);
  for (const layer of router.stack) {
    if (layer.route !== undefined) {
      if (layer.route === target) found.push({ mounts, prefix });
      continue;
    }
    // A mounted Router is a function carrying its own `stack`; a mounted sub-app is an opaque closure.
    const handle = layer.handle as { stack?: unknown } | undefined;
    if (typeof layer.handle === 'function' && Array.isArray(handle?.stack)) {
      walk(handle as { stack: LayerLike[] }, target, [...mounts, layer], [...prefix, mountTemplate(layer)], found, onPath, depth + 1);
    }
  }
  onPath.delete(router);
}

/** The router of an Express 4 (`_router`) or 5 (`router`) app; undefined for anything else. */
function appRouter(app: object): { stack: LayerLike[] } | undefined {
  if (app === NO_APP) return undefined;
  const a = app as { _router?: unknown; router?: unknown };
  let router: unknown = a._router;
  if (router === undefined && !('_router' in a)) {
    try {
      // Express 4 defines `app.router` as a getter that throws; Express 5 builds it lazily.
      router = a.router;
    } catch {
      return undefined;
    }
  }
  const stack = (router as { stack?: unknown } | null | undefined)?.stack;
  return Array.isArray(stack) ? (router as { stack: LayerLike[] }) : undefined;
}

/** The mount paths of the sub-apps between the top app and `app` (`app.use('/admin', adminApp)`). */
function appMountPrefix(app: object): string {
  let prefix = '';
  let current = app as { parent?: object; mountpath?: unknown };
  for (let depth = 0; current.parent !== undefined && depth < MAX_DEPTH; depth++) {
    prefix = trimSlash(renderPath(current.mountpath)) + prefix;
    current = current.parent as { parent?: object; mountpath?: unknown };
  }
  return prefix;
}

/** The path a router was mounted at, as written; undefined when this router version keeps no trace of it. */
function mountTemplate(layer: LayerLike): string | undefined {
  // router 2.3+ (Express 5) keeps the path as written.
  if (layer.rawPath !== undefined) return renderPath(layer.rawPath);
  // Express 4 keeps only the compiled expression: read the template back from it.
  if (layer.regexp instanceof RegExp) {
    if (layer.regexp.fast_slash) return '';
    return fromExpress4Regexp(layer.regexp.source, layer.keys ?? []) ?? String(layer.regexp);
  }
  return undefined;
}

const TAILS = ['\\/?(?=\\/|$)', '(?=\\/|$)', '\\/?(?:\\/|$)', '(?:\\/|$)', '\\/?$', '$'];
const DEFAULT_CAPTURES = new Set(['[^/]+?', '[^\\/]+?', '[^/\\.]+?', '[^\\/\\.]+?']);
const PLAIN = /[A-Za-z0-9\-_~!&',;=:@%]/;

/**
 * Reads a mount template back from what Express 4's path-to-regexp 0.1 compiled it to
 * (`^\/users(?:\/([^/]+?))\/?(?=\/|$)` → `/users/:id`). Undefined for any form it does not know,
 * so the caller falls back to the expression itself, which is just as bounded.
 */
export function fromExpress4Regexp(source: string, keys: ReadonlyArray<{ name: string | number }>): string | undefined {
  if (source[0] !== '^') return undefined;
  let body = source.slice(1);
  const tail = TAILS.find((t) => body.endsWith(t));
  if (tail === undefined) return undefined;
  body = body.slice(0, body.length - tail.length);
  let out = '';
  let key = 0;
  let i = 0;
  while (i < body.length) {
    const c = body[i];
    if (c === '\\' && i + 1 < body.length) {
      out += body[i + 1];
      i += 2;
    } else if (body.startsWith('(?:', i)) {
      // A parameter: (?:<prefix>(<capture>))<optional ?>
      let j = i + 3;
      let lead = '';
      if (body.startsWith('\\/', j) || body.startsWith('\\.', j)) {
        lead = body[j + 1];
        j += 2;
      }
      if (body[j] !== '(') return undefined;
      const close = closingParen(body, j);
      if (close === -1 || body[close + 1] !== ')') return undefined;
      const capture = body.slice(j + 1, close);
      const name = keys[key++]?.name;
      if (name === undefined) return undefined;
      out += `${lead}:${name}${DEFAULT_CAPTURES.has(capture) ? '' : `(${capture})`}`;
      i = close + 2;
      if (body[i] === '?') {
        out += '?';
        i++;
      }
    } else if (PLAIN.test(c)) {
      out += c;
      i++;
    } else {
      return undefined;
    }
  }
  return out === '' ? '/' : out;
}

function closingParen(s: string, open: number): number {
  let depth = 0;
  let inClass = false;
  for (let i = open; i < s.length; i++) {
    const c = s[i];
    if (c === '\\') {
      i++;
    } else if (inClass) {
      if (c === ']') inClass = false;
    } else if (c === '[') {
      inClass = true;
    } else if (c === '(') {
      depth++;
    } else if (c === ')' && --depth === 0) {
      return i;
    }
  }
  return -1;
}

function trimSlash(path: string): string {
  return path === '/' ? '' : path.endsWith('/') ? path.slice(0, -1) : path;
}

function join(prefix: string[], routePath: string): string {
  let out = '';
  for (const part of prefix) out += trimSlash(part);
  // '/v2' + '/' reads as '/v2', the path a client calls.
  if (out !== '' && routePath === '/') return out;
  return out + routePath;
}

/** A router mounted at several paths: the chain whose mount paths match this request's URL. */
function pickChain(chains: Chain[], req: Request): string {
  const url = req.originalUrl ?? req.url ?? '';
  const q = url.indexOf('?');
  const pathname = q === -1 ? url : url.slice(0, q);
  for (const chain of chains) if (mountsMatch(chain.mounts, pathname)) return chain.template;
  return chains[0].template;
}

function mountsMatch(mounts: LayerLike[], pathname: string): boolean {
  let rest = pathname;
  for (const layer of mounts) {
    const length = matchedLength(layer, rest);
    if (length < 0) return false;
    rest = rest.slice(length);
    if (rest[0] !== '/') rest = `/${rest}`;
  }
  return true;
}

function matchedLength(layer: LayerLike, path: string): number {
  if (layer.regexp instanceof RegExp) {
    if (layer.regexp.fast_slash) return 0;
    const m = layer.regexp.exec(path);
    return m === null ? -1 : m[0].length;
  }
  // router 2.3+ returns the match instead of storing it on the shared layer, so calling it here is safe.
  if (layer.rawPath !== undefined && typeof layer.match === 'function') {
    const m = layer.match(path) as { path?: string } | false;
    return m && typeof m.path === 'string' ? m.path.length : -1;
  }
  return -1;
}
