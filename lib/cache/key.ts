import { createHash } from 'node:crypto';
import { isIPv6 } from 'node:net';
import type { Request } from 'express';
import type { KeySettings } from './options';

/** Why a request is served without the server-side cache: it is neither looked up nor stored. */
export type Bypass =
  /** The client asked for no storage (`Cache-Control: no-store`). */
  | 'no-store'
  /** Credentials no auth middleware identified (Authorization, X-API-Key): the key cannot name them. */
  | 'credentials'
  /** A Host (or trusted X-Forwarded-Host) that is not `hostname[:port]`. */
  | 'host'
  /** A request target that is not a path (absolute form: `GET http://other.example/x`). */
  | 'target';

/** The server-side cache key of a request. */
export interface RequestKey {
  key: string;
  /** Request headers the key already holds (lower case): a response's own `Vary` on them needs no per-entry check. */
  keyed: string[];
}

// Bumped whenever the layout of the key changes, so an entry stored under another layout is never read.
const KEY_FORMAT = 2;
const MAX_KEY_LENGTH = 256;
// Longer queries keep their order as sent: sorting costs more than the entry it could share.
const MAX_SORTED_PAIRS = 64;
const CREDENTIAL_HEADERS = ['authorization', 'cookie', 'x-api-key'];

/**
 * The key of a GET or HEAD request (they share entries), or why it is not cached. The key is the
 * JSON array of its parts, so no part can spill into another whatever it contains: the host name
 * as Express reads it (the whole Host validated first), the path, the query pairs, the `vary`
 * headers by name, the identity (user, API key, tenant), the Cookie header of a request no user
 * is known for, and the `key` option's part. Keys above 256 characters become their SHA-256.
 */
export function cacheKeyOf(req: Request, settings: KeySettings): RequestKey | Bypass {
  const identity = identityOf(req);
  const headers = req.headers;
  if (identity === 'unnamed') return 'credentials';
  const authenticated = req.user !== undefined || req.apiKey !== undefined;
  if (!authenticated && (headers.authorization !== undefined || headers['x-api-key'] !== undefined)) return 'credentials';

  const host = hostOf(req);
  if (host !== undefined && !isValidHost(host)) return 'host';
  const hostname = host === undefined ? null : hostnameOf(host);
  const url = req.originalUrl || req.url;
  if (url.charCodeAt(0) !== 0x2f /* / */) return 'target';
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  const query = q === -1 || q + 1 === url.length ? null : queryPart(url.slice(q + 1));

  const keyed: string[] = [];
  let vary: Array<[string, string | string[] | null]> | null = null;
  if (settings.vary !== undefined && settings.vary.length > 0) {
    vary = [];
    for (const name of settings.vary) {
      vary.push([name, headers[name] ?? null]);
      keyed.push(name);
    }
  }
  // A caller known only by a cookie session must not get another caller's entry: with no user,
  // the Cookie header is part of the key unless the route's `vary` lists what the response depends on.
  let cookie: string | null = null;
  if (!authenticated && settings.cookie && headers.cookie !== undefined) {
    cookie = headers.cookie;
    keyed.push('cookie');
  }
  if (authenticated) keyed.push(...CREDENTIAL_HEADERS);
  const extraValue = settings.extra?.(req);
  const extra = extraValue === undefined || extraValue === null ? null : String(extraValue);

  const key = JSON.stringify([KEY_FORMAT, hostname, path, query, vary, identity === 'anonymous' ? null : identity, cookie, extra]);
  return { key: key.length > MAX_KEY_LENGTH ? `sha256:${createHash('sha256').update(key).digest('base64url')}` : key, keyed };
}

/**
 * Who the response may be for: 'anonymous' (no user, API key or tenant), 'unnamed' (a user or
 * key the cache cannot name, so it is never shared), else user id, API key name and tenant id.
 */
function identityOf(req: Request): 'anonymous' | 'unnamed' | [string | null, string | null, string | null] {
  const { user, apiKey, tenant } = req;
  if (user === undefined && apiKey === undefined && tenant === undefined) return 'anonymous';
  const userId = user?.id;
  const keyName = apiKey?.name ?? apiKey?.userId;
  if ((user !== undefined && (userId === undefined || userId === null)) || (apiKey !== undefined && (keyName === undefined || keyName === null))) return 'unnamed';
  return [user === undefined ? null : String(userId), apiKey === undefined ? null : String(keyName), tenant === undefined ? null : String(tenant.id)];
}

/**
 * The host the request names, with its port, read as Express reads it for `req.hostname`
 * (X-Forwarded-Host's first value when `trust proxy` trusts the peer, else Host).
 */
export function hostOf(req: Request): string | undefined {
  const headers = req.headers;
  const forwarded = headers['x-forwarded-host'];
  if (typeof forwarded === 'string' && forwarded !== '') {
    const trust = req.app?.get('trust proxy fn') as ((address: string | undefined, hop: number) => boolean) | undefined;
    if (typeof trust === 'function' && trust(req.socket?.remoteAddress, 0)) {
      const comma = forwarded.indexOf(',');
      return comma === -1 ? forwarded : forwarded.slice(0, comma).trimEnd();
    }
  }
  const host = headers.host;
  return host === '' ? undefined : host;
}

/**
 * The host name without its port, as `req.hostname`: one app may answer for several sites, and
 * its instances listen on ports of their own. (A handler that writes the port into its answer
 * lists `Host` in `vary`.)
 */
function hostnameOf(host: string): string {
  const colon = host.indexOf(':', host.charCodeAt(0) === 0x5b /* [ */ ? host.indexOf(']') : 0);
  return colon === -1 ? host : host.slice(0, colon);
}

const MAX_HOSTNAME_LENGTH = 254;
const PORT = /^:\d{1,5}$/;
const LABEL = /^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;
const IPV6_CHARACTERS = /^[0-9A-Fa-f:.]+$/;

/**
 * Whether `host` is `hostname[:port]` or `[IPv6][:port]`: DNS labels (underscores allowed, as
 * internal names use them), an optional trailing dot, a port of digits. Anything else (a slash,
 * a space, a second colon, an empty label) cannot be a host a client meant.
 */
export function isValidHost(host: string): boolean {
  let name = host;
  if (host.charCodeAt(0) === 0x5b /* [ */) {
    const close = host.indexOf(']');
    if (close === -1) return false;
    const address = host.slice(1, close);
    const rest = host.slice(close + 1);
    return IPV6_CHARACTERS.test(address) && isIPv6(address) && (rest === '' || PORT.test(rest));
  }
  const colon = host.indexOf(':');
  if (colon !== -1) {
    if (!PORT.test(host.slice(colon))) return false;
    name = host.slice(0, colon);
  }
  if (name.length === 0 || name.length > MAX_HOSTNAME_LENGTH) return false;
  if (name.endsWith('.')) name = name.slice(0, -1);
  for (const label of name.split('.')) if (!LABEL.test(label)) return false;
  return true;
}

/**
 * The query as key material: its raw `name=value` pairs (never decoded values, so two spellings
 * the handler can tell apart never share an entry), reordered only between different parameter
 * roots. Parsers read `a`, `a[]`, `a[x]` and `a.b` as one parameter whose order matters, so the
 * root is the decoded name up to `[` or `.`, and pairs of one root keep the order they came in.
 * A name that does not decode, or a very long query, keeps the whole query as sent.
 */
export function queryPart(query: string): string[] | string {
  const pairs = query.split('&').filter((pair) => pair !== '');
  if (pairs.length < 2) return pairs;
  if (pairs.length > MAX_SORTED_PAIRS) return query;
  const rooted: Array<[string, string]> = [];
  for (const pair of pairs) {
    const root = rootOf(pair);
    if (root === undefined) return query;
    rooted.push([root, pair]);
  }
  // Array#sort is stable: pairs of one root stay in their order.
  rooted.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return rooted.map((entry) => entry[1]);
}

function rootOf(pair: string): string | undefined {
  const eq = pair.indexOf('=');
  let name = eq === -1 ? pair : pair.slice(0, eq);
  if (name.includes('+')) name = name.replace(/\+/g, ' ');
  if (name.includes('%')) {
    try {
      name = decodeURIComponent(name);
    } catch {
      return undefined;
    }
  }
  const cut = name.search(/[[.]/);
  return cut === -1 ? name : name.slice(0, cut);
}
