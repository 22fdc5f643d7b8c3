import type { NextFunction, Request, Response } from 'express';
import type { Counter } from 'prom-client';
import { ConfigError, ForbiddenError } from '../lib/errors';
import { checkForwardedFor } from '../lib/forwarded-for';
import { IpList, parseIp } from '../lib/ip-list';
import type { Logger } from '../lib/logger';
import { counter as metricCounter } from '../lib/metrics-registry';
import { defineOptions, loggerOption, option, positiveDuration } from '../lib/options';
import { loggerOf, runtimeOf, standaloneRuntime, type PerimeterRuntime } from '../lib/runtime';
import { ipBlocklistStore, type IpBlock, type IpBlocklist } from '../lib/stores/ip-blocklist';
import type { CounterStore, Stores } from '../lib/stores/types';
import { describe } from '../lib/units';
import { clientIp, invalidClientAddress } from '../lib/client-ip';
import { onResponseDone } from '../lib/response-done';
import type { EntryContext } from '../lib/stack-entries';
import type { PerimeterHandler } from '../types/express-augment';

export type { IpBlock } from '../lib/stores/ip-blocklist';

/** Allow and deny lists of IPv4/IPv6 addresses and CIDRs. */
export interface IpRules {
  /** Only these may pass (when non-empty). Defaults to everyone. */
  allow?: string[];
  /** These never pass, even when also allowed. Defaults to no one. */
  deny?: string[];
}

/** Options of `autoBan`: ban an IP after repeated refusals. */
export interface AutoBanOptions {
  /** Refusals (responses with one of `statuses`) from one IP that trigger a ban. Defaults to 20. */
  after?: number;
  /** Window the refusals are counted in, from the first one. Defaults to '1m'. */
  within?: number | string;
  /** How long the ban lasts. Defaults to '15m'. */
  for?: number | string;
  /** Response statuses that count as refusals. Defaults to [401, 403, 429]. */
  statuses?: number[];
}

/** Options of {@link ipFilter}. */
export interface IpFilterOptions extends IpRules {
  /** Extra rules for path prefixes (`'/admin'` covers `/admin` and `/admin/x`, not `/administrator`); they narrow, never widen. Defaults to none. */
  paths?: Record<string, IpRules>;
  /** Ban IPs after repeated 401/403/429 responses (`true` for the defaults), through the same shared blocklist as `block()`. Defaults to false. */
  autoBan?: AutoBanOptions | boolean;
  /** How often run-time blocks are reloaded in full from Redis, healing missed messages. Defaults to '30s'. */
  syncInterval?: number | string;
  /** Stores holding run-time blocks and auto-ban counts. Defaults to the stack's stores, or process memory when used alone. */
  stores?: Stores;
  /** Logger for bans and warnings. Defaults to the stack's logger (the request's, with its request_id, for auto-bans). */
  logger?: Logger;
}

/** The `ipFilter` middleware, with its run-time methods. */
export interface IpFilterHandler extends PerimeterHandler {
  /** Blocks `ip` (any textual form; `::ffff:10.0.0.1` is `10.0.0.1`) for `ttl` ('10m' or ms), or until `unblock()`. Applies on this instance at once; resolves when shared, rejects when the store fails. */
  block(ip: string, ttl?: number | string): Promise<void>;
  /** Lifts a run-time block. */
  unblock(ip: string): Promise<void>;
  /** The run-time blocks in force: `{ ip, expiresAt }` with `expiresAt` in epoch ms, or null for until unblocked. */
  blocked(): Promise<IpBlock[]>;
  /** Stops the blocklist's reload timer and subscription (createStack calls it from `stack.close()`). */
  close(): Promise<void>;
}

declare module '../lib/create-stack' {
  interface StackMiddleware {
    /** The stack's IP filter, with `block`, `unblock` and `blocked` (present unless `ipFilter: false`). */
    ipFilter: IpFilterHandler;
  }
}

/** Why a request was refused, as `details.reason` of the 403. */
export type IpFilterReason = 'blocked' | 'denied' | 'not_allowed';

// Every option of ipFilter() once: its default and its check (the interface's JSDoc is its doc).
const parseOptions = defineOptions<IpFilterOptions>()('ipFilter', {
  allow: option("addresses and CIDRs like ['10.0.0.0/8']", ruleList),
  deny: option("addresses and CIDRs like ['203.0.113.7']", ruleList),
  paths: option("rules by path prefix like { '/admin': { allow: ['10.0.0.0/8'] } }", parsePaths),
  autoBan: option('false, true or { after, within, for, statuses }', parseAutoBan, 'false'),
  syncInterval: positiveDuration('30s'),
  stores: option('stores such as stack.stores or new MemoryStores()', checkStores),
  logger: loggerOption(),
});

const parseRules = defineOptions<IpRules>()('ipFilter.paths[path]', {
  allow: option("addresses and CIDRs like ['10.0.0.0/8']", ruleList),
  deny: option("addresses and CIDRs like ['203.0.113.7']", ruleList),
});

const parseAutoBanOptions = defineOptions<AutoBanOptions>()('ipFilter.autoBan', {
  after: option('a whole number of refused requests, at least 1', refusalCount, '20'),
  within: positiveDuration('1m'),
  for: positiveDuration('15m'),
  statuses: option('4xx/5xx statuses like [401, 403, 429]', refusalStatuses, '[401, 403, 429]'),
});
// Says nothing of the lists, the address or the reason's source: the client learns only "no".
const MESSAGE = 'Access from this address is not allowed.';

interface PathRule {
  prefix: string;
  allow?: IpList;
  deny?: IpList;
}

/** What the filter works with on one stack (or alone): decided once per runtime. */
interface FilterState {
  blocklist: IpBlocklist;
  counts?: CounterStore;
  logger: Logger;
  bans: Counter<'reason'>;
  refusals: Counter<'reason'>;
}

/**
 * Refuses requests by client IP with 403 IP_BLOCKED: run-time blocks (`block()`, `autoBan`),
 * then `deny` lists, then `allow` lists, globally and per path prefix. The IP is Express's `req.ip`
 * in canonical form, read once per request through `clientIp`, so `trust proxy` decides whether
 * X-Forwarded-For counts (the raw header never does) and `[198.51.100.9]:1234` meets the rules of
 * `198.51.100.9`; an address that cannot be parsed is refused with 400 BAD_REQUEST.
 */
export function ipFilter(options: IpFilterOptions = {}): IpFilterHandler {
  return buildIpFilter(options, undefined);
}

/** @internal The stack's IP filter (createStack builds it): on the stack's stores, logger and registry, so block() works at once. */
export function stackIpFilter(options: IpFilterOptions, { runtime }: EntryContext): IpFilterHandler {
  return buildIpFilter(options, runtime);
}

function buildIpFilter(options: IpFilterOptions, stackRuntime: PerimeterRuntime | undefined): IpFilterHandler {
  const { allow, deny, paths: pathRules, autoBan, syncInterval: syncIntervalMs, stores: ownStores, logger: ownLogger } = parseOptions(options);
  const blocklistFactory = ipBlocklistStore({ syncIntervalMs });

  const build = (rt: PerimeterRuntime): FilterState => ({
    blocklist: rt.stores.create(blocklistFactory),
    counts: autoBan && rt.stores.counter('ipFilter:autoBan'),
    logger: ownLogger ?? rt.logger,
    bans: metricCounter(rt.registry, 'ip_filter_blocks_total', 'IPs blocked at run time, by reason (manual, auto_ban)', ['reason']),
    refusals: metricCounter(rt.registry, 'ip_filter_rejections_total', 'Requests refused by ipFilter, by reason (blocked, denied, not_allowed)', ['reason']),
  });
  // With a stack or stores of its own, the state exists before the first request, so block()
  // works at once; otherwise it follows the stack serving each request (memory when alone).
  const home = stackRuntime !== undefined || ownStores !== undefined;
  const homeState = home ? build({ ...(stackRuntime ?? standaloneRuntime()), ...(ownStores ? { stores: ownStores } : {}) }) : undefined;
  const states = new WeakMap<PerimeterRuntime, FilterState>();
  const stateFor = (rt: PerimeterRuntime): FilterState => {
    let state = states.get(rt);
    if (state === undefined) {
      state = build(rt);
      states.set(rt, state);
    }
    return state;
  };
  // createStack already runs the X-Forwarded-For check for every request.
  const checkProxy = stackRuntime === undefined;
  const checkRules = compileRules(allow, deny, pathRules);

  function filter(req: Request, res: Response, next: NextFunction, state: FilterState): void {
    const ip = clientIp(req);
    if (ip === undefined) return next(invalidClientAddress());
    const reason: IpFilterReason | undefined = state.blocklist.isBlocked(ip) ? 'blocked' : checkRules(ip, req);
    if (reason !== undefined) {
      state.refusals.inc({ reason });
      return next(refusal(reason));
    }
    if (autoBan !== undefined) onResponseDone(res, countRefusal);
    next();
  }

  // Runs once the response is sent, so counting (a Redis round trip when shared) never delays it.
  function countRefusal(res: Response): void {
    if (autoBan === undefined || !autoBan.statuses.has(res.statusCode)) return;
    const req = res.req;
    const ip = clientIp(req);
    if (ip === undefined) return;
    const state = homeState ?? stateFor(runtimeOf(req));
    const logger = ownLogger ?? loggerOf(req);
    (state.counts as CounterStore)
      .increment(ip, autoBan.withinMs)
      .then((result) => {
        if (result.count < autoBan.after || state.blocklist.isBlocked(ip)) return;
        // Applies locally at once; later refusals of in-flight requests see it and do not ban again.
        const banning = state.blocklist.block(ip, autoBan.forMs);
        state.bans.inc({ reason: 'auto_ban' });
        logger.warn('IP auto-banned after repeated refused requests', {
          code: 'IP_AUTO_BANNED',
          ip,
          reason: 'auto_ban',
          count: result.count,
          within_ms: autoBan.withinMs,
          ban_ms: autoBan.forMs,
        });
        return Promise.all([banning, (state.counts as CounterStore).reset(ip)]);
      })
      .catch((err: Error) => {
        logger.warn('ipFilter could not count or share an auto-ban; bans apply on this instance only until the store answers', {
          code: 'IP_AUTO_BAN_STORE_ERROR',
          ip,
          err: { name: err.name, message: err.message },
        });
      });
  }

  const handler = function ipFilterMiddleware(req: Request, res: Response, next: NextFunction): void {
    const state = homeState ?? stateFor(runtimeOf(req));
    if (checkProxy) checkForwardedFor(req, ownLogger ?? runtimeOf(req).logger);
    if (state.blocklist.ready) return filter(req, res, next, state);
    // Only until a fresh instance's first load of shared blocks settles (bounded by the store's
    // command timeout): a banned IP must not slip in during startup.
    state.blocklist
      .whenReady()
      .then(() => filter(req, res, next, state))
      .catch(next);
  } as IpFilterHandler;

  const methodState = (): FilterState => homeState ?? stateFor(standaloneRuntime());
  handler.block = async (ip: string, ttl?: number | string): Promise<void> => {
    const canonical = checkIp(ip, 'ipFilter.block');
    const ttlMs = ttl === undefined ? undefined : positiveDuration().parse(ttl, 'ipFilter.block ttl');
    const state = methodState();
    const blocking = state.blocklist.block(canonical, ttlMs);
    state.bans.inc({ reason: 'manual' });
    state.logger.info('IP blocked', { code: 'IP_BLOCKED_MANUALLY', ip: canonical, reason: 'manual', ttl_ms: ttlMs ?? null });
    await blocking;
  };
  handler.unblock = async (ip: string): Promise<void> => {
    const canonical = checkIp(ip, 'ipFilter.unblock');
    const state = methodState();
    const unblocking = state.blocklist.unblock(canonical);
    state.logger.info('IP unblocked', { code: 'IP_UNBLOCKED', ip: canonical });
    await unblocking;
  };
  handler.blocked = (): Promise<IpBlock[]> => methodState().blocklist.list();
  // Only the blocklist this handler owns: one reached through a stack belongs to that stack.
  handler.close = async (): Promise<void> => {
    await homeState?.blocklist.close();
  };
  return handler;
}

/** The 403 IP_BLOCKED for `reason`, built without a stack trace. */
function refusal(reason: IpFilterReason): ForbiddenError {
  // A banned client may send a flood: capturing a stack (useless for a refusal) would cost
  // several times more than the whole filter.
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return new ForbiddenError(MESSAGE, { reason }, 'IP_BLOCKED');
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/** Builds the static-rule check once: a no-op when there are no rules. Deny beats allow at every level. */
function compileRules(allow: IpList | undefined, deny: IpList | undefined, paths: PathRule[]): (ip: string, req: Request) => IpFilterReason | undefined {
  if (allow === undefined && deny === undefined && paths.length === 0) return () => undefined;
  const globalVerdict = cachedVerdict(allow, deny);
  if (paths.length === 0) {
    return function checkIpRules(ip) {
      const verdict = globalVerdict(ip);
      return verdict === 0 ? undefined : verdict & DENIED ? 'denied' : 'not_allowed';
    };
  }
  return function checkIpAndPathRules(ip, req) {
    const verdict = globalVerdict(ip);
    if (verdict & DENIED) return 'denied';
    let allowMiss = verdict !== 0;
    // Express matches routes case-insensitively by default, so '/ADMIN' must meet '/admin' rules.
    const path = req.path.toLowerCase();
    for (const rule of paths) {
      if (!covers(rule.prefix, path)) continue;
      if (rule.deny !== undefined && rule.deny.has(ip)) return 'denied';
      if (!allowMiss && rule.allow !== undefined && !rule.allow.has(ip)) allowMiss = true;
    }
    return allowMiss ? 'not_allowed' : undefined;
  };
}

const DENIED = 1;
const NOT_ALLOWED = 2;
// Per filter: matching a CIDR list parses the address again, and a client keeps its address.
const VERDICT_CACHE_SIZE = 10_000;

/** The global lists' verdict on an address (0, DENIED and/or NOT_ALLOWED), remembered per address. */
function cachedVerdict(allow: IpList | undefined, deny: IpList | undefined): (ip: string) => number {
  if (allow === undefined && deny === undefined) return () => 0;
  const cache = new Map<string, number>();
  return (ip) => {
    let verdict = cache.get(ip);
    if (verdict === undefined) {
      verdict = (deny !== undefined && deny.has(ip) ? DENIED : 0) | (allow !== undefined && !allow.has(ip) ? NOT_ALLOWED : 0);
      if (cache.size >= VERDICT_CACHE_SIZE) cache.clear();
      cache.set(ip, verdict);
    }
    return verdict;
  };
}

/** Whether `prefix` covers `path` on a segment boundary: '/admin' covers '/admin' and '/admin/x', not '/administrator'. */
function covers(prefix: string, path: string): boolean {
  if (prefix === '/') return true;
  if (!path.startsWith(prefix)) return false;
  return path.length === prefix.length || path.charCodeAt(prefix.length) === 47; // '/'
}

function ruleList(entries: unknown, option: string): IpList | undefined {
  if (entries === undefined) return undefined;
  const list = new IpList(entries as string[], option);
  // An empty allow list means "no restriction", as when it is left out.
  return list.size === 0 ? undefined : list;
}

function parsePaths(paths: unknown, at: string): PathRule[] {
  if (paths === undefined) return [];
  if (paths === null || typeof paths !== 'object' || Array.isArray(paths)) {
    throw new ConfigError(at, `expected an object like { '/admin': { allow: ['10.0.0.0/8'] } }, got ${describe(paths)}`);
  }
  const rules: PathRule[] = [];
  const seen = new Map<string, string>();
  for (const [path, value] of Object.entries(paths as Record<string, unknown>)) {
    const option = `${at}['${path}']`;
    if (!path.startsWith('/')) throw new ConfigError(option, `a path prefix must start with '/', like '/admin'`);
    const { allow, deny } = parseRules(value as IpRules, option);
    const prefix = path.length > 1 ? path.toLowerCase().replace(/\/+$/, '') || '/' : '/';
    const twin = seen.get(prefix);
    if (twin !== undefined) throw new ConfigError(option, `covers the same paths as '${twin}' (paths match case-insensitively, trailing '/' ignored); merge the two`);
    seen.set(prefix, path);
    if (allow === undefined && deny === undefined) throw new ConfigError(option, 'has no addresses in allow or deny; add some or remove the path');
    rules.push({ prefix, allow, deny });
  }
  return rules;
}

interface AutoBan {
  after: number;
  withinMs: number;
  forMs: number;
  statuses: Set<number>;
}

function parseAutoBan(value: unknown, path: string): AutoBan | undefined {
  if (value === undefined || value === false) return undefined;
  if (value !== true && (value === null || typeof value !== 'object' || Array.isArray(value))) {
    throw new ConfigError(path, `expected false, true or { after, within, for }, got ${describe(value)}`);
  }
  const o = parseAutoBanOptions(value === true ? {} : (value as AutoBanOptions), path);
  return { after: o.after, withinMs: o.within, forMs: o.for, statuses: o.statuses };
}

function refusalCount(value: unknown, path: string): number {
  const after = value ?? 20;
  if (typeof after !== 'number' || !Number.isInteger(after) || after < 1) {
    throw new ConfigError(path, `expected a whole number of refused requests, at least 1, got ${describe(after)}`);
  }
  return after;
}

function refusalStatuses(value: unknown, path: string): Set<number> {
  const statuses = value ?? [401, 403, 429];
  if (!Array.isArray(statuses) || statuses.length === 0 || statuses.some((s) => !Number.isInteger(s) || s < 400 || s > 599)) {
    throw new ConfigError(path, `expected a non-empty array of 4xx/5xx statuses like [401, 403, 429], got ${describe(statuses)}`);
  }
  return new Set(statuses as number[]);
}

function checkStores(stores: unknown, path: string): Stores | undefined {
  if (stores === undefined) return undefined;
  if (stores === null || typeof stores !== 'object' || typeof (stores as Stores).create !== 'function' || typeof (stores as Stores).counter !== 'function') {
    throw new ConfigError(path, `expected stores such as stack.stores or new MemoryStores(), got ${describe(stores)}`);
  }
  return stores as Stores;
}

function checkIp(ip: unknown, option: string): string {
  const parsed = typeof ip === 'string' ? parseIp(ip.trim()) : undefined;
  if (parsed === undefined) {
    throw new ConfigError(option, `expected one IPv4 or IPv6 address like '203.0.113.7', got ${describe(ip)}; for ranges, use the deny list`);
  }
  return parsed.toString();
}
