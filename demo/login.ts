/**
 * The demo's `/login`: trades a demo user's name and password for a signed JWT, so every route
 * of the demo can be tried with `Authorization: Bearer <token>`. A real service gets its tokens
 * from an identity provider (docs/auth.md); this exists only so the demo needs none.
 */
import type { RequestHandler } from 'express';
import { SignJWT } from 'jose';
import { AuthenticationError, ValidationError } from '../index';

/** A demo account: the claims its token carries (auth reads sub, roles, plan, tenant, is_beta). */
export interface DemoUser {
  sub: string;
  roles: string[];
  /** The rate-limit tier and feature-flag plan. */
  plan: 'free' | 'pro';
  /** The tenant (the demo's tenant middleware reads the `tenant` claim). */
  tenant: string;
  is_beta: boolean;
}

/** Every demo user's password: the accounts are public, the point is to try the routes. */
export const DEMO_PASSWORD = 'demo';

/**
 * alice may do everything (admin, pro plan: the ml-recommendations flag is on for her); bob is a
 * free-plan user without the admin role, to see 403s, the smaller rate limit and the flag off.
 */
export const DEMO_USERS: Readonly<Record<string, DemoUser>> = {
  alice: { sub: 'alice', roles: ['admin'], plan: 'pro', tenant: 'acme', is_beta: true },
  bob: { sub: 'bob', roles: ['user'], plan: 'free', tenant: 'globex', is_beta: false },
};

/** The HS256 secret the demo signs and verifies with: JWT_SECRET, or a demo-only default. */
export function demoJwtSecret(env: NodeJS.ProcessEnv = process.env): string {
  return env.JWT_SECRET ?? 'demo-secret-change-me-demo-secret-change-me';
}

/** Seconds a demo token is valid. */
export const DEMO_TOKEN_TTL = 3600;

/**
 * POST /login `{ "user": "alice", "password": "demo" }` → 200 `{ token, token_type, expires_in,
 * user }`; a wrong password or unknown user → 401 in the error envelope; a body without the two
 * strings → 422.
 */
export function demoLogin(secret: string): RequestHandler {
  // Encoded once: the key does not change per request.
  const key = new TextEncoder().encode(secret);
  return function demoLoginHandler(req, res, next) {
    const body = (req.body ?? {}) as { user?: unknown; password?: unknown };
    if (typeof body.user !== 'string' || typeof body.password !== 'string') {
      next(new ValidationError('Send {"user": "alice", "password": "demo"} (demo users: alice, bob).'));
      return;
    }
    const user = Object.hasOwn(DEMO_USERS, body.user) ? DEMO_USERS[body.user] : undefined;
    if (user === undefined || body.password !== DEMO_PASSWORD) {
      next(new AuthenticationError('Unknown demo user or wrong password.'));
      return;
    }
    const { sub, ...claims } = user;
    new SignJWT({ ...claims })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(sub)
      .setIssuedAt()
      .setExpirationTime(`${DEMO_TOKEN_TTL}s`)
      .sign(key)
      .then((token) => {
        res.json({ token, token_type: 'Bearer', expires_in: DEMO_TOKEN_TTL, user });
      }, next);
  };
}
