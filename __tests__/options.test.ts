import type { ErrorRequestHandler } from 'express';
import request from 'supertest';
import * as P from '../index';
import { ConfigError } from '../index';
import { loadExpress, newApp } from './helpers/app';

/** Every factory a user mounts, called as Express would call it if the factory itself were mounted. */
const FACTORIES = [
  'createStack', 'requestId', 'requestLogger', 'metrics', 'securityHeaders', 'cors', 'ipFilter', 'sizeLimit', 'timeout',
  'bodyParser', 'auth', 'tenant', 'rateLimit', 'credits', 'sanitize', 'auditLog', 'featureFlags', 'circuitBreaker', 'cache',
  'notFound', 'errorNormalizer', 'requireAuth', 'requireApiKey', 'requireRole', 'requireFeature', 'audit',
] as const;

/** How the message tells the user to write it. */
const CALL: Partial<Record<(typeof FACTORIES)[number], string>> = {
  createStack: 'createStack(config)',
  requireRole: "requireRole('admin')",
  requireFeature: "requireFeature('new-ui')",
  audit: "audit('EVENT')",
};

const reportError: ErrorRequestHandler = (err, _req, res, _next) => {
  res.status(500).json({ name: err.name, option: err.option, message: err.message });
};

describe('a factory mounted where its middleware belongs', () => {
  it.each(FACTORIES)('app.use(%s) answers its first request with a ConfigError that says to call it (#12)', async (name) => {
    const app = newApp();
    app.use(P[name] as never);
    app.get('/', (_req, res) => {
      res.send('reached the route');
    });
    app.use(reportError);
    const res = await request(app).get('/').timeout(5000).expect(500);
    const call = CALL[name] ?? `${name}()`;
    expect(res.body).toEqual({
      name: 'ConfigError',
      option: name,
      message: `${name}: was called with a request instead of options: write app.use(${call}) with parentheses, not app.use(${name})`,
    });
  });
});

describe('a middleware or Router given as an option callback', () => {
  const middleware = (_req: unknown, _res: unknown, next: () => void): void => next();
  // Each option takes a callback of the request (or of a key, an id…) whose return value is used.
  const CALLBACKS: Array<[string, (callback: never) => unknown]> = [
    ['rateLimit.skip', (skip) => P.rateLimit({ skip })],
    ['rateLimit.key', (key) => P.rateLimit({ key })],
    ['rateLimit.cost', (cost) => P.rateLimit({ cost })],
    ['requestLogger.skip', (skip) => P.requestLogger({ skip })],
    ['auditLog.skip', (skip) => P.auditLog({ skip })],
    ['audit', (event) => P.audit(event)],
    ['auth.lookup', (lookup) => P.auth({ lookup })],
    ['auth.loadUser', (loadUser) => P.auth({ jwt: { secret: 's'.repeat(32) }, loadUser })],
    ['tenant.resolve', (resolve) => P.tenant({ resolve })],
    ['credits.cost', (cost) => P.credits({ cost })],
    ['credits.account', (account) => P.credits({ account })],
  ];

  it.each(CALLBACKS)('%s: a middleware (req, res, next) is refused at setup, naming the option (#12)', (option, make) => {
    expect(() => make(middleware as never)).toThrow(ConfigError);
    expect(() => make(middleware as never)).toThrow(
      new RegExp(`^${option.replace('.', '\\.')}: expected a function \\(.*, got a function of 3 parameters, a middleware \\(req, res, next\\): .*mount middleware with app\\.use\\(\\) instead$`),
    );
  });

  it.each(CALLBACKS)('%s: an Express Router is refused at setup, naming the option (#12)', (option, make) => {
    const router = loadExpress().Router();
    expect(() => make(router as never)).toThrow(new RegExp(`^${option.replace('.', '\\.')}: expected a function .*, got an Express Router: `));
  });

  it('accepts the callbacks as documented, with fewer parameters', () => {
    expect(() => P.rateLimit({ skip: (req) => req.path === '/health', key: (req) => req.ip, cost: () => 2 })).not.toThrow();
    expect(() => P.requestLogger({ skip: (_req, res) => res.statusCode < 400 })).not.toThrow();
    expect(() => P.auth({ lookup: async (_key, _sha) => null })).not.toThrow();
  });
});
