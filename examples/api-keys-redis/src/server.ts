/**
 * A minimal API behind API keys, rate-limited per key on Redis.
 *
 *   REDIS_URL=redis://localhost:6379 npm start     every instance shares the counters
 *   npm start                                       in-memory counters (one instance only)
 */
import type { AddressInfo } from 'node:net';
import express from 'express';
import { configFromEnv, createStack, handleClientErrors, NotFoundError, rateLimit, ValidationError, type ApiKeyEntry } from 'express-perimeter';

// Keys are configured by their SHA-256 digest, so neither the code nor the config holds a secret:
//   node -e "console.log(require('node:crypto').createHash('sha256').update(process.argv[1]).digest('hex'))" <key>
// These two belong to the example (example-free-key-1, example-pro-key-1); API_KEYS replaces them.
const EXAMPLE_KEYS: ApiKeyEntry[] = [
  { hash: '0acd4e0f7a854c9a4d385d6041b35e8243b3a04947a22035cfb5ecb6da7d48a7', name: 'example-free', tier: 'free' },
  { hash: '1122bb5d277736e91e764ea91e23f0adc11ca67b72cfd12153686b592ce5b925', name: 'example-pro', tier: 'pro' },
];

// REDIS_URL, API_KEYS, LOG_LEVEL, TRUST_PROXY… (docs/configuration.md).
const env = configFromEnv();
const stack = createStack({
  ...env,
  // Every route needs a key (required is the default); /health and /metrics come before auth.
  // API_KEYS (a JSON array read by configFromEnv) replaces the example keys.
  auth: typeof env.auth === 'object' && env.auth.apiKeys ? env.auth : { apiKeys: EXAMPLE_KEYS },
  // Counted per key, by the key's tier. With REDIS_URL one Lua script per request decides, on
  // Redis's clock; if Redis stalls, each instance counts locally until it answers again.
  rateLimit: {
    key: 'apiKey',
    tiers: {
      free: { limit: 10, window: '1m', daily: 1_000 },
      pro: { limit: 100, window: '1m', daily: 100_000 },
    },
  },
});

interface Widget {
  id: number;
  name: string;
}
const widgets = new Map<number, Widget>([[1, { id: 1, name: 'sprocket' }]]);

const app = express();
app.use(stack);

app.get('/v1/widgets', (_req, res) => {
  res.json([...widgets.values()]);
});
app.get('/v1/widgets/:id', (req, res) => {
  const widget = widgets.get(Number(req.params.id));
  if (widget === undefined) throw new NotFoundError(`Widget ${req.params.id} does not exist.`);
  res.json(widget);
});
app.post('/v1/widgets', (req, res) => {
  const name: unknown = req.body?.name;
  if (typeof name !== 'string' || name.length === 0) throw new ValidationError('name: expected a non-empty string');
  const widget = { id: widgets.size + 1, name };
  widgets.set(widget.id, widget);
  res.status(201).json(widget);
});
// An expensive route gets a stricter limit of its own, counted apart from the stack's.
app.post('/v1/exports', rateLimit({ limit: 2, window: '1m', key: 'apiKey' }), (req, res) => {
  res.status(202).json({ export: `exp-${req.id}`, by: req.apiKey?.name });
});

app.use(stack.errorHandler);

// Traffic only once the stores are connected: a request before that cannot be counted on Redis.
stack.ready().then(
  () => {
    const server = app.listen(Number(process.env.PORT ?? 3000), () => {
      stack.logger.info(`listening on http://localhost:${(server.address() as AddressInfo).port}`);
    });
    handleClientErrors(server);
    // SIGTERM/SIGINT: finish what was accepted, close Redis, exit 0.
    stack.attach(server);
  },
  (err: Error) => {
    stack.logger.error(`not starting: ${err.message}`);
    process.exit(1);
  },
);
