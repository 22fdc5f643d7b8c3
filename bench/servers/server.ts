import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import express from 'express';
import type * as Perimeter from '../../index';
import { game, SCENARIOS, type BenchLib } from './scenarios';

// One benchmarked server, as a child process of bench/stack.bench.ts: `server.ts <scenario>`.
// It loads the library from dist/ (what users run), listens on a free loopback port and
// reports `{ port }` over IPC; it exits when the parent disconnects.

const name = process.argv[2] ?? '';
const scenario = SCENARIOS[name];
if (scenario === undefined) {
  process.stderr.write(`bench server: unknown scenario '${name}' (known: ${Object.keys(SCENARIOS).join(', ')})\n`);
  process.exit(2);
}

const dist = resolve(process.env.BENCH_DIST ?? join(__dirname, '..', '..', 'dist'));
if (!existsSync(join(dist, 'index.js'))) {
  process.stderr.write(`bench server: ${dist}/index.js is missing; run \`npm run build\` first\n`);
  process.exit(2);
}
/* eslint-disable @typescript-eslint/no-require-imports -- the compiled package, chosen at run time */
const perimeter = require(join(dist, 'index.js')) as typeof Perimeter;
const entries = (require(join(dist, 'lib', 'stack-entries.js')) as { STACK_ENTRIES: Record<string, unknown> }).STACK_ENTRIES;
/* eslint-enable @typescript-eslint/no-require-imports */

const lib: BenchLib = { perimeter, express, hasMiddleware: (middleware) => middleware in entries };
const app = express();
const mounted = scenario.setup(app, lib) ?? {};
app.get('/games/:id', function getGame(req, res) {
  res.json(game(req.params.id));
});
for (const handler of mounted.after ?? []) app.use(handler);

const server = app.listen(0, '127.0.0.1', () => {
  process.send?.({ port: (server.address() as AddressInfo).port });
});
server.keepAliveTimeout = 60_000;

// The parent asks for CPU time before and after each round: CPU per request is the figure
// that other work on a shared machine disturbs least.
process.on('message', (message) => {
  if (message === 'cpu') {
    const { user, system } = process.cpuUsage();
    process.send?.({ cpuMicros: user + system });
  }
  // bench/instructions.ts starts each counted run from a collected heap (node --expose-gc).
  if (message === 'gc') {
    (globalThis as { gc?: () => void }).gc?.();
    process.send?.({ collected: true });
  }
});

let stopping = false;
function stop(): void {
  if (stopping) return;
  stopping = true;
  server.closeAllConnections();
  server.close();
  void Promise.resolve(mounted.close?.())
    .catch(() => undefined)
    .finally(() => process.exit(0));
}
process.on('disconnect', stop);
process.on('SIGTERM', stop);
