/**
 * A service behind a load balancer (Kubernetes, ECS, an ALB, nginx): liveness and readiness
 * probes, a graceful shutdown that loses no request, and Prometheus metrics for the Grafana
 * dashboard shipped with the package.
 *
 *   npm start                                   DRAIN_DELAY=5s, METRICS_TOKEN optional
 */
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import express from 'express';
import { configFromEnv, createStack, handleClientErrors, ValidationError } from 'express-perimeter';
import { Inventory } from './inventory';

const inventory = new Inventory();

const stack = createStack({
  // TRUST_PROXY=1 behind one proxy hop, so client IPs (rate limits, logs) are the real ones.
  ...configFromEnv(),
  // GET /health: 200 while the process runs (liveness: restart me if this fails).
  // GET /health/ready: 200 when every check passes within 2 s, else 503 (readiness: stop sending
  // me traffic); 503 "draining" from the moment shutdown starts. Redis is checked on its own
  // when REDIS_URL is set.
  health: { checks: { inventory: (signal) => inventory.ping(signal) }, timeout: '2s' },
  // GET /metrics for Prometheus; with METRICS_TOKEN set, only with `Authorization: Bearer <token>`.
  metrics: process.env.METRICS_TOKEN ? { token: process.env.METRICS_TOKEN } : true,
});

const app = express();
app.use(stack);

app.get('/api/items', async (_req, res) => {
  res.json(await inventory.list());
});
// A slow job: stands for work a shutdown must let finish.
app.post('/api/jobs', async (req, res) => {
  const ms = Number(req.body?.ms ?? 100);
  if (!Number.isInteger(ms) || ms < 0 || ms > 10_000) throw new ValidationError('ms: expected a whole number of milliseconds up to 10000');
  await sleep(ms, undefined, { signal: req.signal }); // req.signal aborts if the client leaves or the timeout passes
  res.status(201).json({ job: req.id, took_ms: ms });
});

app.use(stack.errorHandler);

stack.ready().then(
  () => {
    const server = app.listen(Number(process.env.PORT ?? 3000), () => {
      stack.logger.info(`listening on http://localhost:${(server.address() as AddressInfo).port}`);
    });
    handleClientErrors(server);
    // On SIGTERM (what orchestrators send) or SIGINT: readiness turns 503 at once; after
    // DRAIN_DELAY (longer than the load balancer's health-check interval, so it has stopped
    // sending) the listener closes; requests in flight get `grace` to finish; then the stores
    // close and the process exits 0. attach() also sets keep-alive and header timeouts above the
    // usual load-balancer idle timeout (60 s), so the balancer never reuses a closed connection.
    stack.attach(server, { drainDelay: process.env.DRAIN_DELAY ?? '5s', grace: '25s' });
    // The service's own resources close after the server has drained.
    server.on('close', () => void inventory.close());
  },
  (err: Error) => {
    stack.logger.error(`not starting: ${err.message}`);
    process.exit(1);
  },
);
