/**
 * A multi-tenant SaaS API: users sign in at an identity provider, the API verifies their JWTs
 * against its JWKS, each request belongs to the token's tenant, requests are counted per tenant
 * by its plan, and reports are paid for from the tenant's credits.
 *
 *   npm start                          with the built-in stand-in identity provider
 *   ISSUER=https://id.example.com/ JWKS_URI=https://id.example.com/.well-known/jwks.json npm start
 */
import type { AddressInfo } from 'node:net';
import express from 'express';
import { configFromEnv, createStack, credits, handleClientErrors, requireRole, ValidationError, type CreditsOptions } from 'express-perimeter';
import { AUDIENCE, startIdentityProvider } from './identity-provider';
import { TENANTS } from './tenants';

// Balances are per tenant: every user of a tenant spends from one account.
const CREDITS: CreditsOptions = {
  account: 'tenant',
  initialBalance: (tenant) => TENANTS[tenant]?.credits ?? 0,
};

async function main(): Promise<void> {
  const idp = process.env.ISSUER === undefined ? await startIdentityProvider() : undefined;
  const issuer = process.env.ISSUER ?? idp!.issuer;
  if (idp) console.log(JSON.stringify({ message: `identity provider on ${idp.issuer}: POST /token {"user":"alice"}` }));

  const stack = createStack({
    ...configFromEnv(), // REDIS_URL, LOG_LEVEL, TRUST_PROXY…
    auth: {
      // Keys from the provider's JWKS (refetched when a token names a new kid); issuer and
      // audience checked. With a real provider, `discovery: true` finds jwks_uri from the issuer.
      jwt: { jwksUri: process.env.JWKS_URI ?? idp!.jwksUri, issuer, audience: process.env.AUDIENCE ?? AUDIENCE },
    },
    // The tenant is X-Tenant-ID when sent, else the token's `tenant` claim; a header naming
    // another tenant than the token's is refused (403 TENANT_MISMATCH), an unknown tenant is 404
    // TENANT_NOT_FOUND.
    tenant: { from: ['header', 'jwt'], tenants: TENANTS },
    // Quotas per tenant, by plan (the token's `plan` claim is the tier): all of a tenant's users
    // share them.
    rateLimit: {
      key: 'tenant',
      tiers: {
        free: { limit: 60, window: '1m', daily: 5_000 },
        pro: { limit: 1_200, window: '1m', daily: 1_000_000 },
      },
    },
    // Free by default; routes set their price (below). Same balances as the route-level credits.
    credits: { ...CREDITS, cost: 0 },
  });

  const projects = new Map<string, Array<{ id: number; name: string }>>();
  const app = express();
  app.use(stack);

  app.get('/api/projects', (req, res) => {
    const tenant = req.tenant!.id; // tenant.required (the default) guarantees it here
    res.json({ tenant, projects: projects.get(tenant) ?? [] });
  });
  app.post('/api/projects', requireRole('admin'), (req, res) => {
    const name: unknown = req.body?.name;
    if (typeof name !== 'string' || name.length === 0) throw new ValidationError('name: expected a non-empty string');
    const list = projects.get(req.tenant!.id) ?? [];
    const project = { id: list.length + 1, name };
    projects.set(req.tenant!.id, [...list, project]);
    res.status(201).json(project);
  });
  // A report costs the tenant 10 credits, reserved before the handler runs and refunded if it
  // fails; 402 INSUFFICIENT_CREDITS when the balance is short.
  app.post('/api/reports', credits({ ...CREDITS, cost: 10 }), (req, res) => {
    res.status(202).json({ report: `rep-${req.id}`, tenant: req.tenant!.id });
  });
  app.get('/api/billing', async (req, res) => {
    const tenant = req.tenant!.id;
    res.json({ tenant, plan: TENANTS[tenant]?.plan, balance: await stack.middleware.credits.balance(tenant) });
  });

  app.use(stack.errorHandler);

  await stack.ready();
  const server = app.listen(Number(process.env.PORT ?? 3000), () => {
    stack.logger.info(`listening on http://localhost:${(server.address() as AddressInfo).port}`);
  });
  handleClientErrors(server);
  stack.attach(server);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
