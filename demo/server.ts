/**
 * The express-perimeter demo: a small games API that shows every middleware.
 * Copy it as a template. `npm run demo` runs it on in-memory stores; REDIS_URL switches every
 * store to Redis (variables: demo/.env.example; routes and keys: docs/demo.md). Try:
 *   curl -s -X POST localhost:3000/api/login -H 'Content-Type: application/json' -d '{"user":"alice","password":"demo"}'
 *                                                                      # a demo JWT: -H 'Authorization: Bearer <token>'
 *   curl -i localhost:3000/api/games                                   # X-Request-ID, rate-limit headers, ETag
 *   curl -i localhost:3000/api/games -H 'If-None-Match: <etag>'        # 304
 *   curl -i -X POST localhost:3000/api/games -H 'X-API-Key: demo-pro-key' -H 'Content-Type: application/json' -d '{"name":"Go","genre":"board"}'
 *   curl -i localhost:3000/api/slow?ms=3000                             # 504 after 2 s
 *   curl -i localhost:3000/api/flaky                                    # 500s, then 503 CIRCUIT_OPEN
 *   curl -s localhost:3000/metrics | head
 *   curl -i localhost:3000/health/ready                                 # 200 ready (Redis checked when REDIS_URL is set)
 *   curl -s localhost:3000/api/busy?ms=1500 & sleep 0.5; curl -i localhost:3000/api/games   # 503 OVERLOADED: the loop was blocked
 *   curl -s localhost:3000/admin/load                                   # loadShedding readings (loopback only)
 */
import express from 'express';
import {
  audit,
  configFromEnv,
  createStack,
  credits,
  handleClientErrors,
  rateLimit,
  requireAuth,
  requireFeature,
  requireRole,
  retry,
  timeout,
  cache,
  circuitBreaker,
} from '../index';
import { GameStore } from './games';
import { demoJwtSecret, demoLogin } from './login';

// Demo credentials only: real services take them from API_KEYS / JWT_SECRET (configFromEnv).
const DEMO_API_KEYS = [
  { key: 'demo-free-key', name: 'demo-free', tier: 'free', userId: 'u-free' },
  { key: 'demo-pro-key', name: 'demo-pro', tier: 'pro', userId: 'u-pro' },
];

export function createDemoApp() {
  const env = configFromEnv();
  const stack = createStack({
    ...env,
    auth: {
      apiKeys: DEMO_API_KEYS,
      jwt: { secret: demoJwtSecret() }, // POST /api/login issues tokens signed with it (demo/login.ts)
      // Tokens from an identity provider instead (Auth0, Okta, Cognito, Keycloak, Entra ID): its
      // issuer and your API's audience; the keys come from its JWKS, found by discovery and
      // refreshed when it rotates them. Recipes per provider: docs/auth.md.
      // jwt: { issuer: 'https://your-tenant.eu.auth0.com/', audience: 'https://games.example.com', discovery: true },
      required: false, // anonymous reads are fine; writes use requireRole / credits below
    },
    tenant: { from: ['header', 'jwt'], tenants: { acme: { plan: 'pro' }, globex: { plan: 'free' } }, required: false },
    rateLimit: {
      limit: 30,
      window: '1m',
      tiers: { free: { limit: 10, window: '1m', daily: 500 }, pro: { limit: 60, window: '1m', daily: 10_000 } },
    },
    credits: { cost: 0, initialBalance: 20 }, // free by default; priced per route below (same balances)
    featureFlags: {
      flags: {
        'new-ui': { beta: true, expose: true },
        'ml-recommendations': { plans: ['pro'], percentage: 50 },
      },
    },
    ipFilter: { paths: { '/admin': { allow: ['127.0.0.1', '::1'] } }, autoBan: { after: 20, within: '1m', for: '10m' } },
    auditLog: { sink: 'logger' },
    cache: { maxAge: 0 },
    // Refuse with 503 OVERLOADED (Retry-After: 10) rather than queue requests a saturated process
    // would answer too late: probes and /metrics are never shed. See docs/load-shedding.md.
    loadShedding: { maxEventLoopDelay: '200ms', maxEventLoopUtilization: 0.98, maxInFlight: 1000 },
  });

  const games = new GameStore([
    { name: 'Chess', genre: 'board' },
    { name: 'Tetris', genre: 'puzzle' },
  ]);
  const app = express();
  app.use(stack);

  const api = express.Router();
  // Cached server-side for 30 s per caller; writes to /api/games invalidate it on every instance.
  api.get('/games', cache({ ttl: 30, tags: ['games'] }), (_req, res) => {
    res.json(games.list());
  });
  api.get('/games/:id', (req, res) => {
    res.json(games.get(Number(req.params.id)));
  });
  // Writes need a caller (JWT or API key) and cost 5 credits, refunded unless the answer is 2xx.
  api.post('/games', requireAuth(), credits({ cost: 5, initialBalance: 20 }), (req, res) => {
    res.status(201).json(games.create(req.body));
  });
  api.put('/games/:id', requireAuth(), (req, res) => {
    res.json(games.update(Number(req.params.id), req.body));
  });
  api.delete('/games/:id', requireRole('admin'), audit('GAME_REMOVED'), (req, res) => {
    games.delete(Number(req.params.id));
    res.status(204).end();
  });
  // A demo JWT for alice or bob (demo/login.ts), under a stricter limit counted apart from the stack's.
  api.post('/login', rateLimit({ limit: 5, window: '1m', key: 'ip' }), demoLogin(demoJwtSecret()));
  // req.signal aborts when the 2 s deadline passes or the client goes away.
  api.get('/slow', timeout({ ms: 2000 }), async (req, res) => {
    const ms = Math.min(Number(req.query.ms ?? 1000), 10_000);
    await new Promise((resolve) => setTimeout(resolve, ms));
    if (!req.signal.aborted) res.json({ waited: ms });
  });
  // Fails every other call: after 5 calls with ≥ 50% failures the breaker answers the fallback
  // for 30 s, then lets one probe through.
  let flakyCalls = 0;
  api.get('/flaky', circuitBreaker({ name: 'flaky', fallback: { games: [], degraded: true } }), (_req, res) => {
    if (flakyCalls++ % 2 === 0) throw new Error('upstream 10.0.0.7 refused the connection');
    res.json({ games: games.list() });
  });
  // Outbound calls get retries with jittered backoff that stop when the request is aborted.
  api.get('/recommendations', requireFeature('ml-recommendations'), async (req, res) => {
    const picks = await retry(async () => games.list().slice(0, 1), { retries: 2, signal: req.signal });
    res.json({ picks, features: req.features?.all() });
  });
  // Blocks the event loop, as a CPU-heavy handler would (never do this in a real service): requests
  // arriving meanwhile are shed once the sampler sees the delay.
  api.get('/busy', (req, res) => {
    const ms = Math.min(Number(req.query.ms ?? 500), 2000);
    const until = performance.now() + ms;
    while (performance.now() < until) {
      // blocking on purpose
    }
    res.json({ blocked_ms: ms });
  });
  api.get('/fail', () => {
    throw new Error('connection to 172.31.30.29 refused'); // the client sees INTERNAL_ERROR only in production
  });
  app.use('/api', api);

  // Admin: block an IP on every instance (ipFilter only lets loopback reach /admin).
  app.post('/admin/blocks', express.json(), async (req, res) => {
    await stack.middleware.ipFilter.block(String(req.body?.ip), req.body?.ttl ?? '1h');
    res.status(201).json({ blocked: req.body?.ip });
  });
  app.get('/admin/load', (_req, res) => {
    res.json(stack.middleware.loadShedding.status());
  });
  app.post('/admin/credits/:user', async (req, res) => {
    res.json({ balance: await stack.middleware.credits.grant(req.params.user, Number(req.body?.amount ?? 100)) });
  });

  app.use(stack.errorHandler);
  return { app, stack };
}

if (require.main === module) {
  const { app, stack } = createDemoApp();
  const port = Number(process.env.PORT ?? 3000);
  // Traffic only once the stores are connected: a request before that cannot be counted on Redis.
  void stack.ready().then(
    () => {
      const server = app.listen(port, () => {
        stack.logger.info(`express-perimeter demo on http://localhost:${port} (${process.env.REDIS_URL ? 'Redis' : 'memory'} stores)`);
      });
      handleClientErrors(server);
      // SIGTERM/SIGINT: readiness 503 draining, DRAIN_DELAY (5s behind a load balancer) for it to notice, then the
      // listener closes and requests in flight get 20 s; exit 0 after a clean drain.
      stack.attach(server, { drainDelay: process.env.DRAIN_DELAY ?? '0s', grace: '20s' });
    },
    (err: Error) => {
      stack.logger.error(err.message, { code: 'PERIMETER_NOT_READY' });
      process.exit(1);
    },
  );
}
