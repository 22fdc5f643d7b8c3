import type { TenantConfig } from 'express-perimeter';

/** What the example knows of each customer. In a real service: a table, read through `tenant.resolve`. */
export interface Tenant extends TenantConfig {
  plan: 'free' | 'pro';
  /** Credits a tenant starts with (reports cost 10). */
  credits: number;
}

export const TENANTS: Record<string, Tenant> = {
  acme: { plan: 'pro', credits: 1_000 },
  globex: { plan: 'free', credits: 20 },
};

/** The example's users and the tenant each belongs to: what an identity provider would hold. */
export const USERS: Record<string, { tenant: string; roles: string[] }> = {
  alice: { tenant: 'acme', roles: ['admin'] },
  bob: { tenant: 'globex', roles: ['member'] },
};
