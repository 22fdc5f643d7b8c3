import type { NextFunction, Request, Response } from 'express';
import { LRUCache } from 'lru-cache';
import type { Counter } from 'prom-client';
import { ConfigError, ForbiddenError, NotFoundError } from '../lib/errors';
import { counter } from '../lib/metrics-registry';
import { callback, checkCallback, count, defineOptions, duration, flag, headerName, oneOf, option, passThrough } from '../lib/options';
import { perRuntime } from '../lib/runtime';
import { describe } from '../lib/units';
import type { TenantInfo } from '../types/express-augment';
import type { PerimeterHandler } from '../types/express-augment';
import { recordOnSpan } from '../lib/otel';

/** Where a tenant id can come from. */
export type TenantSource = 'subdomain' | 'header' | 'jwt' | 'path';

/** What is known about one tenant: free-form, with a few keys the other middleware read. */
export interface TenantConfig {
  /** The tenant's plan, for your handlers (flags match `plans` against the user's plan, not this). */
  plan?: string;
  /** Per-flag overrides for the tenant's requests: `{ 'new-ui': true }` turns the flag on for them, false off (`enabled: false` still wins). */
  flags?: Record<string, boolean>;
  [key: string]: unknown;
}

/** Looks a tenant up by id: its config, `true` when it exists without one, or null/undefined when there is no such tenant. */
export type TenantResolver = (id: string) => TenantConfig | boolean | null | undefined | Promise<TenantConfig | boolean | null | undefined>;

/** Options of {@link tenant}. */
export interface TenantOptions {
  /** Sources tried in order, first found wins. Defaults to ['subdomain', 'header', 'jwt', 'path'], leaving out 'subdomain' without `baseDomain` and 'path' without `pathPrefix`. */
  from?: TenantSource[];
  /** The domain tenants are subdomains of: 'api.example.com' makes acme.api.example.com the tenant acme (from `req.hostname`, so `trust proxy` applies). Defaults to none. */
  baseDomain?: string | string[];
  /** Header holding the tenant id. Defaults to 'X-Tenant-ID'. */
  header?: string;
  /** Claim of the authenticated user (`req.user`, `req.auth.claims`, then `req.apiKey`) holding the tenant id; also what a mismatch is checked against. Defaults to 'tenant'. */
  claim?: string;
  /** Path prefix before the tenant segment: '/t' reads /t/acme/games, '/' reads /acme/games. Defaults to none ('/t' when 'path' is listed in `from`). */
  pathPrefix?: string;
  /** Removes the prefix and tenant segment from `req.url` when the tenant came from the path, so routes are written without it (`req.originalUrl` keeps it). Defaults to false. */
  stripPath?: boolean;
  /** The known tenants and their config; any other id is 404 TENANT_NOT_FOUND (unless `resolve` knows it). Defaults to none. */
  tenants?: Record<string, TenantConfig | true>;
  /** Looks up tenants not in `tenants` (a database, an API); answers are cached for `cacheTtl`, unknown ones too. Defaults to none: with neither `tenants` nor `resolve` every well-formed id is accepted. */
  resolve?: TenantResolver;
  /** How long an answer of `resolve` is reused. Defaults to '1m'. */
  cacheTtl?: number | string;
  /** Most answers of `resolve` kept (least recently used go first). Defaults to 1000. */
  cacheSize?: number;
  /** Refuse requests that name no tenant with 404 TENANT_NOT_FOUND; false lets them through without `req.tenant`. Defaults to true. */
  required?: boolean;
  /** Treat 'Acme' and 'acme' as different tenants; otherwise ids are lower-cased. Defaults to false. */
  caseSensitive?: boolean;
  /** Subdomains that name no tenant (acme.api.example.com is a tenant, www.api.example.com is not). Defaults to ['www']. */
  ignoreSubdomains?: string[];
  /** Most tenants found by `resolve` given their own `tenant` label on `tenant_requests_total`; later ones (and ids accepted without `tenants` or `resolve`) count as '#other'. Defaults to 100. */
  metricsLabels?: number;
  /** Clock of the resolve cache, in epoch ms (tests). Defaults to Date.now. */
  now?: () => number;
}

/** The `tenant` middleware, with its run-time method. */
export interface TenantHandler extends PerimeterHandler {
  /** Forgets the cached answer of `resolve` for `id`, or every answer without one (after a tenant is created, changed or removed). */
  invalidate(id?: string): void;
}

declare module '../lib/create-stack' {
  interface StackMiddleware {
    /** The stack's tenant resolver, with `invalidate` (present when `tenant` is configured). */
    tenant: TenantHandler;
  }
}

const SOURCES = ['subdomain', 'header', 'jwt', 'path'] as const;
// Checked before any lookup, so no junk reaches a database, a cache key or a metric label.
const TENANT_ID = /^[a-z0-9][a-z0-9-_]{0,62}$/i;
const OTHER = '#other';

// Every option of tenant() once: its default and its check (the interface's JSDoc is its doc).
// `from` and `tenants` depend on other options and are checked as the settings are put together.
const parseOptions = defineOptions<TenantOptions>()('tenant', {
  from: passThrough<TenantSource[]>("sources like ['header', 'jwt']"),
  baseDomain: option("a domain like 'api.example.com', or several", domains),
  header: headerName('X-Tenant-ID'),
  claim: option("a claim name like 'tenant'", claimName, "'tenant'"),
  pathPrefix: option("a path like '/t' or '/'", pathPrefixOption),
  stripPath: flag(false),
  tenants: passThrough<Record<string, TenantConfig | true>>("tenants by id like { acme: { plan: 'pro' } }"),
  resolve: option('an async function (id) => config | null', resolverOption),
  cacheTtl: duration('1m'),
  cacheSize: count(1000),
  required: flag(true),
  caseSensitive: flag(false),
  ignoreSubdomains: option("subdomains like ['www']", (value) => new Set(((value ?? ['www']) as unknown[]).map((s) => (typeof s === 'string' ? s.toLowerCase() : s))), "['www']"),
  metricsLabels: option('a whole number of labels (0 or more)', labelCount, '100'),
  now: callback<() => number>('() => epoch milliseconds'),
});

type Reader = (req: Request) => string | undefined;

/** Where a request named its tenant: the id as sent, and the index in `from` of the source that had it. */
interface Found {
  raw: string;
  source: number;
}

/**
 * Resolves the tenant of each request from the subdomain, a header, the token's claim or a path
 * prefix (first found, in `from` order), checks it against `tenants` or `resolve`, and sets
 * `req.tenant = { id, config }` and the context's tenant (so log lines carry tenant_id).
 * Unknown → 404 TENANT_NOT_FOUND; a token naming another tenant → 403 TENANT_MISMATCH.
 */
export function tenant(options: TenantOptions = {}): TenantHandler {
  const o = parseOptions(options);
  const normalize = o.caseSensitive ? (id: string): string => id : (id: string): string => id.toLowerCase();
  const from = sourcesOf(options.from, o.baseDomain, o.pathPrefix !== undefined);
  const prefix = o.pathPrefix ?? '/t/';
  const claimOf = claimReader(o.claim);
  const readers: Reader[] = from.map((s) =>
    s === 'subdomain' ? subdomainReader(o.baseDomain, o.ignoreSubdomains) : s === 'header' ? headerReader(o.header.toLowerCase()) : s === 'jwt' ? claimOf : pathReader(prefix),
  );
  const fromPath = from.indexOf('path');
  const fromJwt = from.indexOf('jwt');
  const directory = new TenantDirectory(parseTenants(options.tenants, normalize), o.resolve, o.cacheTtl, o.cacheSize, o.now ?? Date.now);
  const labelCap = o.metricsLabels;
  const metricsOf = perRuntime((rt) => new TenantMetrics(counter(rt.registry, 'tenant_requests_total', 'Requests per tenant (tenants beyond the label cap count as #other)', ['tenant']), labelCap));

  const where = from.map((s) =>
    s === 'subdomain' ? `the subdomain of ${o.baseDomain.join(' or ')}` : s === 'header' ? `the ${o.header} header` : s === 'jwt' ? `the token's '${o.claim}' claim` : `the path (${prefix}<tenant>/…)`,
  );
  const missingMessage = `This request names no tenant; send it in ${where.join(' or ')}.`;

  /** The first source that names a tenant, in `from` order. */
  function find(req: Request): Found | undefined {
    for (let i = 0; i < readers.length; i++) {
      const raw = readers[i](req);
      if (raw !== undefined) return { raw, source: i };
    }
    return undefined;
  }

  function accept(req: Request, next: NextFunction, found: Found, { info, kind }: Verdict): void {
    req.tenant = info;
    const ctx = req.context;
    // Setting the context's tenant makes ctx.log (and the request log line) carry tenant_id.
    if (ctx !== undefined) ctx.tenant = info;
    recordOnSpan(req, 'perimeter.tenant.id', info.id);
    metricsOf(req).inc(info.id, kind);
    if (o.stripPath && found.source === fromPath) strip(req, prefix, found.raw);
    next();
  }

  const handler = function tenantMiddleware(req: Request, _res: Response, next: NextFunction): void {
    const found = find(req);
    if (found === undefined) return o.required ? next(new NotFoundError(missingMessage, undefined, 'TENANT_NOT_FOUND')) : next();
    if (!TENANT_ID.test(found.raw)) return next(new NotFoundError('The tenant was not found.', undefined, 'TENANT_NOT_FOUND'));
    const id = normalize(found.raw);
    // Before the lookup, so a user probing other tenants learns nothing of which ones exist.
    if (found.source !== fromJwt) {
      const claimed = claimOf(req);
      if (claimed !== undefined && normalize(claimed) !== id) {
        return next(new ForbiddenError('Your credentials belong to another tenant.', undefined, 'TENANT_MISMATCH'));
      }
    }
    let verdict: Verdict | null | Promise<Verdict | null>;
    try {
      verdict = directory.verify(id);
    } catch (err) {
      return next(err);
    }
    // Listed, unverified and cached tenants are decided at once; only a lookup goes async.
    if (!(verdict instanceof Promise)) return verdict === null ? next(notFound(id)) : accept(req, next, found, verdict);
    verdict.then(
      (v) => {
        try {
          if (v === null) next(notFound(id));
          else accept(req, next, found, v);
        } catch (err) {
          next(err);
        }
      },
      (err: unknown) => next(err),
    );
  } as TenantHandler;

  handler.invalidate = (id?: string): void => directory.invalidate(id === undefined ? undefined : normalize(String(id)));
  return handler;
}

/** A tenant accepted, and how: 'listed' (in `tenants`), 'resolved' (known to `resolve`) or 'unverified' (accepted without either). */
interface Verdict {
  info: TenantInfo;
  kind: 'listed' | 'resolved' | 'unverified';
}

interface CacheEntry {
  info: TenantInfo | null;
  expiresAt: number;
}

/** Which tenants exist: `tenants`, then `resolve` through a bounded cache, else any well-formed id. */
class TenantDirectory {
  private readonly cache: LRUCache<string, CacheEntry>;
  // Concurrent first requests for one tenant share one lookup.
  private readonly inflight = new Map<string, Promise<Verdict | null>>();
  private readonly acceptsAny: boolean;
  // One verdict per listed tenant, made here: nothing allocated per request for them.
  private readonly listed: Map<string, Verdict> | undefined;

  constructor(
    listed: Map<string, TenantInfo> | undefined,
    private readonly resolver: TenantResolver | undefined,
    private readonly ttlMs: number,
    cacheSize: number,
    private readonly now: () => number,
  ) {
    this.cache = new LRUCache({ max: cacheSize });
    this.listed = listed && new Map([...listed].map(([id, info]) => [id, { info, kind: 'listed' as const }]));
    this.acceptsAny = listed === undefined && resolver === undefined;
  }

  /** The tenant `id` (normalized) names, null when there is none; a promise only when `resolve` must be asked. */
  verify(id: string): Verdict | null | Promise<Verdict | null> {
    const known = this.listed?.get(id);
    if (known !== undefined) return known;
    if (this.resolver === undefined) return this.acceptsAny ? { info: { id }, kind: 'unverified' } : null;
    const cached = this.cache.get(id);
    if (cached !== undefined && cached.expiresAt > this.now()) return cached.info === null ? null : { info: cached.info, kind: 'resolved' };
    return this.lookUp(id, this.resolver);
  }

  invalidate(id: string | undefined): void {
    if (id === undefined) this.cache.clear();
    else this.cache.delete(id);
  }

  private lookUp(id: string, resolver: TenantResolver): Promise<Verdict | null> {
    let pending = this.inflight.get(id);
    if (pending === undefined) {
      pending = (async () => {
        const info = answerToInfo(id, await resolver(id));
        this.cache.set(id, { info, expiresAt: this.now() + this.ttlMs });
        return info === null ? null : { info, kind: 'resolved' as const };
      })().finally(() => this.inflight.delete(id));
      this.inflight.set(id, pending);
    }
    return pending;
  }
}

/** `tenant_requests_total` children, one per tenant up to the cap, so a request increments without building a label object. */
class TenantMetrics {
  private readonly children = new Map<string, { inc(): void }>();
  private unlisted = 0;
  private other?: { inc(): void };
  constructor(
    private readonly counter: Counter<'tenant'>,
    private readonly cap: number,
  ) {}
  /** Counts a request of `id`: 'listed' (in `tenants`), 'resolved' (known to `resolve`) or 'unverified' (accepted without either). */
  inc(id: string, kind: 'listed' | 'resolved' | 'unverified'): void {
    // An unverified id is whatever the client sent: it never gets a label of its own.
    if (kind === 'unverified') return (this.other ??= this.counter.labels(OTHER)).inc();
    const listed = kind === 'listed';
    let child = this.children.get(id);
    if (child === undefined) {
      // Tenants from config are bounded by the config; resolved ones by the cap.
      if (listed || this.unlisted < this.cap) {
        child = this.counter.labels(id);
        this.children.set(id, child);
        if (!listed) this.unlisted++;
      } else child = this.other ??= this.counter.labels(OTHER);
    }
    child.inc();
  }
}

function notFound(id: string): NotFoundError {
  return new NotFoundError('The tenant was not found.', { tenant: id }, 'TENANT_NOT_FOUND');
}

function answerToInfo(id: string, answer: unknown): TenantInfo | null {
  if (answer === null || answer === undefined || answer === false) return null;
  if (answer === true) return Object.freeze({ id });
  if (typeof answer === 'object' && !Array.isArray(answer)) return Object.freeze({ id, config: answer });
  throw new TypeError(`tenant.resolve must resolve to a config object, true, or null for an unknown tenant; got ${describe(answer)}`);
}

function parseTenants(tenants: TenantOptions['tenants'], normalize: (id: string) => string): Map<string, TenantInfo> | undefined {
  if (tenants === undefined) return undefined;
  if (tenants === null || typeof tenants !== 'object' || Array.isArray(tenants)) {
    throw new ConfigError('tenant.tenants', `expected an object like { acme: { plan: 'pro' } }, got ${describe(tenants)}`);
  }
  const out = new Map<string, TenantInfo>();
  for (const [key, config] of Object.entries(tenants)) {
    const option = `tenant.tenants.${key}`;
    if (!TENANT_ID.test(key)) {
      throw new ConfigError(option, 'tenant ids are 1–63 letters, digits, - and _, starting with a letter or digit');
    }
    const id = normalize(key);
    if (out.has(id)) throw new ConfigError(option, `is the same tenant as another key once lower-cased ('${id}'); remove one, or set caseSensitive: true`);
    if (config === true) {
      out.set(id, Object.freeze({ id }));
      continue;
    }
    if (config === null || typeof config !== 'object' || Array.isArray(config)) {
      throw new ConfigError(option, `expected the tenant's config object (or true), got ${describe(config)}`);
    }
    const flags = (config as TenantConfig).flags;
    if (flags !== undefined) {
      if (flags === null || typeof flags !== 'object' || Array.isArray(flags)) {
        throw new ConfigError(`${option}.flags`, `expected flag overrides like { 'new-ui': true }, got ${describe(flags)}`);
      }
      for (const [name, value] of Object.entries(flags)) {
        if (typeof value !== 'boolean') throw new ConfigError(`${option}.flags.${name}`, `expected true or false, got ${describe(value)}`);
      }
    }
    // One frozen object per tenant, shared by its requests: nothing allocated per request.
    out.set(id, Object.freeze({ id, config }));
  }
  return out;
}

function domains(value: unknown, path: string): string[] {
  if (value === undefined) return [];
  const list = Array.isArray(value) ? value : [value];
  return list
    .map((d, i) => {
      if (typeof d !== 'string' || !/^[A-Za-z0-9.-]+$/.test(d) || d.startsWith('.') || d.endsWith('.')) {
        throw new ConfigError(Array.isArray(value) ? `${path}[${i}]` : path, `expected a domain like 'api.example.com', got ${describe(d)}`);
      }
      return d.toLowerCase();
    })
    .sort((a, b) => b.length - a.length);
}

/** The sources tried in order: `from` as given, else every source the other options make usable. */
function sourcesOf(value: unknown, bases: string[], hasPathPrefix: boolean): TenantSource[] {
  if (value === undefined) return SOURCES.filter((s) => (s !== 'subdomain' || bases.length > 0) && (s !== 'path' || hasPathPrefix));
  if (!Array.isArray(value) || value.length === 0) {
    throw new ConfigError('tenant.from', `expected a non-empty array of 'subdomain', 'header', 'jwt', 'path', got ${describe(value)}`);
  }
  const from = value.map((s, i) => oneOf(`tenant.from[${i}]`, s, SOURCES));
  if (new Set(from).size !== from.length) throw new ConfigError('tenant.from', `lists a source twice: ${from.join(', ')}`);
  if (from.includes('subdomain') && bases.length === 0) {
    throw new ConfigError('tenant.baseDomain', "is needed to read the tenant from the subdomain: set baseDomain: 'api.example.com' so acme.api.example.com means acme");
  }
  return from;
}

function claimName(value: unknown, path: string): string {
  const claim = value ?? 'tenant';
  if (typeof claim !== 'string' || claim === '') throw new ConfigError(path, `expected a claim name like 'tenant', got ${describe(claim)}`);
  return claim;
}

/** The prefix with one trailing slash ('/t' → '/t/'), or undefined when not given. */
function pathPrefixOption(value: unknown, path: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value[0] !== '/') {
    throw new ConfigError(path, `expected a path like '/t' (for /t/acme/…) or '/' (for /acme/…), got ${describe(value)}`);
  }
  return value === '/' ? '/' : `${value.replace(/\/+$/, '')}/`;
}

function resolverOption(value: unknown, path: string): TenantResolver | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'function') throw new ConfigError(path, `expected an async function (id) => config | null, got ${describe(value)}`);
  checkCallback(path, value, '(id) => config');
  return value as TenantResolver;
}

function labelCount(value: unknown, path: string): number {
  const n = value ?? 100;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) throw new ConfigError(path, `expected a whole number ≥ 0, got ${describe(n)}`);
  return n;
}

function subdomainReader(bases: string[], ignored: Set<unknown>): Reader {
  return function fromSubdomain(req) {
    const hostname = req.hostname;
    if (!hostname) return undefined;
    const host = hostname.toLowerCase();
    for (const base of bases) {
      const cut = host.length - base.length - 1;
      // Exactly one label in front of the base: a.b.api.example.com names no tenant.
      if (cut > 0 && host.endsWith(base) && host.charCodeAt(cut) === 46) {
        const label = host.slice(0, cut);
        return label.includes('.') || ignored.has(label) ? undefined : label;
      }
    }
    return undefined;
  };
}

function headerReader(name: string): Reader {
  return function fromHeader(req) {
    const value = req.headers[name];
    return typeof value === 'string' && value !== '' ? value : undefined;
  };
}

function claimReader(claim: string): Reader {
  return function fromClaim(req) {
    let value = (req.user as Record<string, unknown> | undefined)?.[claim];
    if (value === undefined || value === null) value = req.auth?.claims?.[claim];
    if (value === undefined || value === null) value = req.apiKey?.[claim];
    if (typeof value === 'number' && Number.isFinite(value)) return String(value);
    return typeof value === 'string' && value !== '' ? value : undefined;
  };
}

function pathReader(prefix: string): Reader {
  return function fromPath(req) {
    const path = req.path;
    if (!path.startsWith(prefix)) return undefined;
    const end = path.indexOf('/', prefix.length);
    const segment = end === -1 ? path.slice(prefix.length) : path.slice(prefix.length, end);
    return segment === '' ? undefined : segment;
  };
}

// /t/acme/games?x=1 → /games?x=1, so the routes after the stack need not know the prefix.
function strip(req: Request, prefix: string, segment: string): void {
  const head = prefix + segment;
  const url = req.url;
  if (!url.startsWith(head)) return;
  const rest = url.slice(head.length);
  if (rest !== '' && rest[0] !== '/' && rest[0] !== '?') return;
  req.url = rest[0] === '/' ? rest : `/${rest}`;
}
