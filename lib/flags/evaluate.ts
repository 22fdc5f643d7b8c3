import type { CompiledFlag } from './definition';
import { rolloutBucket } from './hash';

/** What a flag is evaluated against: the request's user, plan, tenant, country, path and IP. */
export interface FlagSubject {
  /** The user id; the rollout sticks to it. */
  userId?: string;
  /** The user's plan or tier. */
  plan?: string;
  /** The tenant id. */
  tenant?: string;
  /** Two-letter country code, upper case. */
  country?: string;
  /** Whether the user is a beta user. */
  beta?: boolean;
  /** The request path, for `routes`. */
  path?: string;
  /** The client IP: the rollout sticks to it when there is no user id. */
  ip?: string;
  /** The tenant's per-flag overrides (`req.tenant.config.flags`): a boolean here decides the flag for the tenant. */
  tenantFlags?: Readonly<Record<string, unknown>>;
}

/**
 * Why a flag has its value, in OpenFeature's terms: 'DISABLED' (`enabled: false`), 'STATIC' (no
 * condition), 'TARGETING_MATCH' (a listed user, a tenant override, or conditions that decided
 * alone), 'SPLIT' (the percentage rollout decided), 'DEFAULT' (a condition did not hold).
 */
export type FlagReason = 'DISABLED' | 'STATIC' | 'TARGETING_MATCH' | 'SPLIT' | 'DEFAULT';

/** The outcome of one evaluation. */
export interface FlagResult {
  readonly value: boolean;
  readonly reason: FlagReason;
}

// Shared, frozen results: an evaluation allocates nothing.
const DISABLED: FlagResult = Object.freeze({ value: false, reason: 'DISABLED' });
const STATIC_ON: FlagResult = Object.freeze({ value: true, reason: 'STATIC' });
const MATCH_ON: FlagResult = Object.freeze({ value: true, reason: 'TARGETING_MATCH' });
const MATCH_OFF: FlagResult = Object.freeze({ value: false, reason: 'TARGETING_MATCH' });
const SPLIT_ON: FlagResult = Object.freeze({ value: true, reason: 'SPLIT' });
const SPLIT_OFF: FlagResult = Object.freeze({ value: false, reason: 'SPLIT' });
const NO_MATCH: FlagResult = Object.freeze({ value: false, reason: 'DEFAULT' });

/**
 * Evaluates `flag` for `s`, in this order:
 * 1. `enabled: false` → off for everyone (the kill switch beats everything below);
 * 2. the tenant's override (`tenantFlags[name]` true or false) → that value;
 * 3. a user listed in `users` → on;
 * 4. no other condition given → off when `users` was given (the list is the whole audience), on otherwise;
 * 5. every other condition given must hold (plans, tenants, countries, beta, routes), and then the
 *    percentage rollout, sticky per user id (else per IP), decides.
 */
export function evaluateFlag(flag: CompiledFlag, s: FlagSubject): FlagResult {
  if (!flag.enabled) return DISABLED;
  const overrides = s.tenantFlags;
  if (overrides !== undefined) {
    const forced = overrides[flag.name];
    if (forced === true) return MATCH_ON;
    if (forced === false) return MATCH_OFF;
  }
  const userId = s.userId;
  if (flag.users !== undefined && userId !== undefined && flag.users.has(userId)) return MATCH_ON;
  if (!flag.targeted) return flag.users !== undefined ? NO_MATCH : STATIC_ON;
  if (flag.plans !== undefined && (s.plan === undefined || !flag.plans.has(s.plan))) return NO_MATCH;
  if (flag.tenants !== undefined && (s.tenant === undefined || !flag.tenants.has(s.tenant))) return NO_MATCH;
  if (flag.countries !== undefined && (s.country === undefined || !flag.countries.has(s.country))) return NO_MATCH;
  if (flag.beta && s.beta !== true) return NO_MATCH;
  if (flag.routes !== undefined && (s.path === undefined || !flag.routes(s.path))) return NO_MATCH;
  const percentage = flag.percentage;
  if (percentage === undefined) return MATCH_ON;
  if (percentage >= 100) return SPLIT_ON;
  if (percentage <= 0) return SPLIT_OFF;
  const id = userId ?? s.ip;
  // Nobody to stick to: a coin flip per request would make the flag flicker, so it stays off.
  if (id === undefined || id === '') return SPLIT_OFF;
  return rolloutBucket(flag.hashPrefix, id) < percentage ? SPLIT_ON : SPLIT_OFF;
}
