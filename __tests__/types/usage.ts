// What a TypeScript user writes, compiled by scripts/test-types.js against the packed package
// (tsc --strict, no skipLibCheck) under each @types/node and @types/express version we support.
// Every line must compile; the expectTypeOf lines pin types that must not widen or become any.
import express, { Router, type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { expectTypeOf } from 'expect-type';
import * as P from 'express-perimeter';
import {
  configFromEnv,
  createStack,
  getContext,
  isHttpError,
  NotFoundError,
  type RequestContext,
  type Stack,
  type StackConfig,
} from 'express-perimeter';
import { rateLimit } from 'express-perimeter/rate-limit';

// The config of API.md's "Assembling", every key with its options.
const config: StackConfig = {
  ...configFromEnv({ LOG_LEVEL: 'warn', REDIS_URL: 'redis://localhost:6379' }),
  keyPrefix: 'shop:',
  // Compiles without @types/pg: the published types describe the pool they need themselves.
  postgres: { url: 'postgres://app@localhost:5432/app', tablePrefix: 'shop_', statementTimeout: '5s' },
  trustProxy: 1,
  logger: { level: 'info', format: 'json' },
  insert: [{ after: 'cors', name: 'session', handler: (_req, _res, next) => next() }],
  requestId: { header: 'X-Request-ID', generator: 'uuidv7' },
  requestLogger: { format: 'gcp', skip: ['/health'] },
  metrics: { path: '/metrics' },
  securityHeaders: true,
  loadShedding: { maxEventLoopDelay: '200ms', maxEventLoopUtilization: 0.98, maxHeapUsedBytes: '1gb', maxRssBytes: 2 * 1024 ** 3, maxInFlight: 500, retryAfter: '10s', sampleInterval: '1s' },
  cors: { origin: ['https://app.example.com'], credentials: true },
  ipFilter: { deny: ['10.0.0.0/8'], autoBan: { after: 10, within: '1m', for: '15m' } },
  sizeLimit: { max: '1mb' },
  timeout: { ms: '30s' },
  bodyParser: { json: true, urlencoded: true },
  auth: {
    jwt: { secret: 's'.repeat(32), algorithms: ['HS256'], issuer: 'https://id.example.com', clockTolerance: '5s' },
    apiKeys: [{ key: 'sk-live-1', name: 'Production', tier: 'pro' }],
    lookup: async (key) => (key === 'sk-db' ? { name: 'db', tier: 'free' } : null),
    cookie: 'session_token',
    required: false,
    loadUser: async (claims) => ({ id: String(claims.sub), roles: ['admin'] }),
  },
  tenant: { from: ['subdomain', 'header'], baseDomain: 'api.example.com', tenants: { acme: { plan: 'pro' } }, required: false },
  rateLimit: {
    algorithm: 'sliding-window',
    limit: 100,
    window: '1m',
    key: (req) => req.apiKey?.name ?? req.ip,
    tiers: { free: { limit: 60, daily: 1000 }, pro: { limit: 600, window: '1m' } },
    skip: (req) => req.path === '/health',
    headers: 'both',
    onStoreError: 'memory',
    storeTimeout: '100ms',
  },
  credits: { cost: (req) => (req.method === 'POST' ? 5 : 1), required: false },
  sanitize: { xss: 'strip', nosql: 'strip', sql: 'report', pathTraversal: 'report', commandInjection: 'report', allow: ['bio'] },
  auditLog: { sink: 'logger', chain: true, methods: ['POST', 'PUT', 'PATCH', 'DELETE'] },
  featureFlags: { flags: { 'new-ui': { enabled: true, plans: ['pro'], percentage: 20, expose: true } } },
  circuitBreaker: { volumeThreshold: 5, errorThresholdPercentage: 50, rollingWindow: '10s', resetTimeout: '30s', halfOpenMax: 1 },
  cache: { ttl: 60, vary: ['Accept-Language'] },
  errorNormalizer: { format: 'problem' },
};
const stack: Stack = createStack(config);
const app = express();
app.use(stack);

// Route-level middleware leave Express's own typing of the route alone.
app.get('/games/:id', rateLimit({ limit: 5 }), (req, res) => {
  expectTypeOf(req.params.id).toEqualTypeOf<string>();
  const s: string = req.params.id;
  res.json({ s });
});
app.get('/users/:userId/games/:gameId', P.rateLimit({ limit: 5, window: '10s' }), P.cache({ ttl: 60 }), P.timeout({ ms: '2s' }), (req, res) => {
  expectTypeOf(req.params).toEqualTypeOf<{ userId: string } & { gameId: string }>();
  res.json(req.params);
});
app.post(
  '/games/:id/moves',
  P.auth({ apiKeys: [{ key: 'k', name: 'n' }] }),
  P.requireAuth(),
  P.requireRole('player'),
  P.requireFeature('new-ui'),
  P.sizeLimit({ max: '10kb' }),
  P.sanitize({ xss: 'reject' }),
  P.credits({ cost: 2 }),
  P.circuitBreaker({ name: 'moves' }),
  P.audit('MOVE_MADE'),
  (req, res) => {
    expectTypeOf(req.params.id).toEqualTypeOf<string>();
    res.status(201).json({ id: req.params.id });
  },
);
const router = Router();
router.get('/items/:sku', [P.rateLimit({ limit: 10 }), P.timeout({ ms: 5000 })], (req: Request<{ sku: string }>, res: Response) => {
  expectTypeOf(req.params.sku).toEqualTypeOf<string>();
  res.json({ sku: req.params.sku });
});
router.use(P.ipFilter({ allow: ['192.168.0.0/16'] }), P.tenant({ header: 'X-Tenant-ID' }));
app.use('/api', P.requestId(), P.requestLogger(), P.metrics(), P.securityHeaders(), P.cors({ origin: 'https://a.example' }), router);

// What the augmentation gives every request, with or without a route.
app.get('/me', (req: Request, res: Response, next: NextFunction) => {
  expectTypeOf(req.id).toEqualTypeOf<string>();
  expectTypeOf(req.context).toEqualTypeOf<RequestContext>();
  expectTypeOf(req.signal).toEqualTypeOf<AbortSignal>();
  expectTypeOf(req.user?.id).toEqualTypeOf<string | undefined>();
  expectTypeOf(req.auth?.method).toEqualTypeOf<'jwt' | 'apiKey' | undefined>();
  expectTypeOf(req.tenant?.id).toEqualTypeOf<string | undefined>();
  expectTypeOf(req.features?.isEnabled('new-ui')).toEqualTypeOf<boolean | undefined>();
  const ctx = getContext();
  ctx?.log.info('me', { id: req.id });
  if (req.user === undefined) return next(new NotFoundError('No such user.'));
  res.json({ id: req.user.id });
});

// Run-time methods of the stack's middleware.
void stack.middleware.ipFilter.block('203.0.113.7', '1h');
void stack.middleware.cache.invalidate('games');
void stack.middleware.credits.grant('user-1', 100);
expectTypeOf(stack.middleware.metrics.analytics()).not.toBeAny();
const order: string[] = stack.order;
const load: P.LoadSheddingStatus = stack.middleware.loadShedding.status();
expectTypeOf(load.reason).toEqualTypeOf<P.ShedReason | null>();
expectTypeOf(load.eventLoopDelay.over).toEqualTypeOf<boolean>();
app.get('/reports/:id', P.loadShedding({ maxInFlight: 5 }), (req, res) => {
  expectTypeOf(req.params.id).toEqualTypeOf<string>();
  res.json({ id: req.params.id });
});

// A perimeter handler is a RequestHandler wherever one is expected.
const asHandler: RequestHandler = P.rateLimit();
const handlers: RequestHandler[] = [P.timeout(), stack];
app.use(stack.errorHandler);
app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
  res.status(isHttpError(err) ? err.status : 500).end();
});

// The PostgreSQL audit sink, alone with a URL of its own, and its table verified with any pg-like client.
app.use(P.auditLog({ sink: [{ postgres: 'postgres://app@localhost:5432/app', name: 'audit-db' }, { postgres: { url: 'postgres://a@h/db', tablePrefix: 'shop_' } }] }));
const verified: Promise<P.AuditTableResult> = P.verifyAuditTable({ query: async () => ({ rows: [] }) }, { tablePrefix: 'shop_', pageSize: 500 });
void verified.then((r) => expectTypeOf(r.seq).toEqualTypeOf<number | undefined>());

const closing: Promise<void> = stack.close();

export { asHandler, closing, handlers, order };
