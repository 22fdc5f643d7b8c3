/**
 * A stand-in for your identity provider (Auth0, Okta, Cognito, Keycloak, Entra ID…), so the
 * example runs alone: it signs tokens with a key pair made at startup and publishes the public
 * half as a JWKS. Set ISSUER (and JWKS_URI) to use a real one instead; then this never starts.
 */
import type { AddressInfo } from 'node:net';
import express from 'express';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { TENANTS, USERS } from './tenants';

export const AUDIENCE = 'https://api.example.test';

export interface IdentityProvider {
  issuer: string;
  jwksUri: string;
  close(): Promise<void>;
}

/** Listens on 127.0.0.1 (a free port): GET /.well-known/jwks.json, POST /token { user } (no password: a demo). */
export async function startIdentityProvider(): Promise<IdentityProvider> {
  const { privateKey, publicKey } = await generateKeyPair('ES256');
  const kid = 'example-key-1';
  const jwks = { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' }] };

  const app = express();
  app.use(express.json());
  app.get('/.well-known/jwks.json', (_req, res) => {
    res.json(jwks);
  });
  let issuer = '';
  app.post('/token', (req, res, next) => {
    const name: unknown = req.body?.user;
    const user = typeof name === 'string' && Object.hasOwn(USERS, name) ? USERS[name] : undefined;
    if (user === undefined) {
      res.status(400).json({ error: 'invalid_request', error_description: `user: one of ${Object.keys(USERS).join(', ')}` });
      return;
    }
    // The claims the API reads: sub, roles, tenant, and plan (the rate-limit tier).
    new SignJWT({ roles: user.roles, tenant: user.tenant, plan: TENANTS[user.tenant]?.plan })
      .setProtectedHeader({ alg: 'ES256', kid })
      .setIssuer(issuer)
      .setAudience(AUDIENCE)
      .setSubject(String(name))
      .setIssuedAt()
      .setExpirationTime('15m')
      .sign(privateKey)
      .then((token) => res.json({ access_token: token, token_type: 'Bearer', expires_in: 900 }), next);
  });

  const server = app.listen(Number(process.env.IDP_PORT ?? 0), '127.0.0.1');
  await new Promise<void>((resolve, reject) => server.once('listening', resolve).once('error', reject));
  issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    issuer,
    jwksUri: `${issuer}/.well-known/jwks.json`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
