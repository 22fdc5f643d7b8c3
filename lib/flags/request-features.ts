import type { Request } from 'express';
import type { RequestFeatures } from '../../types/express-augment';
import type { CompiledFlag, FlagSet } from './definition';
import { evaluateFlag, type FlagResult, type FlagSubject } from './evaluate';
import { clientIp } from '../client-ip';

/** The CDN headers a country is read from, in order. */
export const DEFAULT_COUNTRY_HEADERS = ['CF-IPCountry', 'CloudFront-Viewer-Country', 'X-Country'];

/** Compiles the country header list once: the reader returns the first two-letter code, upper case. */
export function countryReader(headers: readonly string[]): (req: Request) => string | undefined {
  const names = headers.map((h) => h.toLowerCase());
  return function readCountry(req: Request): string | undefined {
    for (const name of names) {
      const value = req.headers[name];
      if (typeof value === 'string' && value.length === 2 && isLetter(value.charCodeAt(0)) && isLetter(value.charCodeAt(1))) {
        return value.toUpperCase();
      }
    }
    return undefined;
  };
}

function isLetter(c: number): boolean {
  return (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
}

/**
 * `req.features`: the flags of one snapshot evaluated for one request, each on first use and
 * remembered, so a handler that asks twice gets the same answer and an unused flag costs nothing.
 * The object is its own evaluation subject: the request's user, plan, tenant… are read into it
 * once, on the first evaluation.
 */
export class RequestFeatureSet implements RequestFeatures, FlagSubject {
  userId?: string;
  plan?: string;
  tenant?: string;
  country?: string;
  beta?: boolean;
  path?: string;
  tenantFlags?: Readonly<Record<string, unknown>>;
  private read = false;
  private ipValue?: string;
  private ipRead = false;
  private evaluated?: Record<string, boolean>;

  constructor(
    private readonly flags: FlagSet,
    private readonly req: Request,
    country: string | undefined,
  ) {
    this.country = country;
  }

  /** The client IP, read only when a percentage rollout needs it (`req.ip` runs the trust-proxy logic). */
  get ip(): string | undefined {
    if (!this.ipRead) {
      this.ipRead = true;
      this.ipValue = clientIp(this.req);
    }
    return this.ipValue;
  }

  /** Whether the flag `name` is on for this request; false for a flag that does not exist. */
  isEnabled(name: string): boolean {
    const memo = this.evaluated;
    if (memo !== undefined) {
      const known = memo[name];
      if (known !== undefined) return known;
    }
    const flag = this.flags.byName.get(name);
    return flag === undefined ? false : this.remember(flag, this.evaluate(flag).value);
  }

  /** Every flag of the snapshot with its value for this request (a copy: changing it changes nothing). */
  all(): Record<string, boolean> {
    for (const flag of this.flags.list) this.isEnabled(flag.name);
    return { ...(this.evaluated ?? {}) };
  }

  /** Evaluates `flag` with its reason, without remembering it. */
  evaluate(flag: CompiledFlag): FlagResult {
    if (!this.read) this.readRequest();
    return evaluateFlag(flag, this);
  }

  private remember(flag: CompiledFlag, value: boolean): boolean {
    let memo = this.evaluated;
    if (memo === undefined) {
      // Null prototype: flag names come from config, but a lookup must never find Object.prototype.
      memo = this.evaluated = Object.create(null) as Record<string, boolean>;
      // The context shows what this request evaluated (the log and getContext() read it).
      const ctx = this.req.context;
      if (ctx !== undefined) ctx.features = memo;
    }
    memo[flag.name] = value;
    return value;
  }

  private readRequest(): void {
    this.read = true;
    const req = this.req;
    const user = req.user;
    if (user !== undefined && user !== null) {
      const id = user.id as unknown;
      if (typeof id === 'string') this.userId = id;
      else if (typeof id === 'number') this.userId = String(id);
      if (typeof user.plan === 'string') this.plan = user.plan;
      this.beta = user.beta === true;
    }
    if (this.plan === undefined && typeof req.auth?.tier === 'string') this.plan = req.auth.tier;
    const tenant = req.tenant;
    if (tenant !== undefined && tenant !== null) {
      if (typeof tenant.id === 'string') this.tenant = tenant.id;
      const config = tenant.config as { flags?: unknown } | undefined;
      if (config !== null && typeof config === 'object' && config.flags !== null && typeof config.flags === 'object') {
        this.tenantFlags = config.flags as Record<string, unknown>;
      }
    }
    // baseUrl + path is the full path at any depth of routing (inside a router, path is relative).
    this.path = req.baseUrl ? req.baseUrl + req.path : req.path;
  }
}
