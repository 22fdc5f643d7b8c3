import { fork, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { request } from 'node:http';
import { cpus, loadavg } from 'node:os';
import { basename, delimiter, join, resolve } from 'node:path';
import { SCENARIOS, type BenchRequest, type Scenario } from './servers/scenarios';

// `npm run bench`: the cost of createStack() against bare Express, measured from dist/.
// Each scenario runs in its own child process; autocannon loads them from this process in
// alternating rounds, so drift of the machine (other work, thermal) hits every scenario alike.
//
// BENCH_DURATION  seconds per round (default: 5, less when there are many scenarios, so the
//                 load phase stays near a minute)     BENCH_ROUNDS       rounds (default 3)
// BENCH_WARMUP    warm-up seconds (default 2)        BENCH_CONNECTIONS  connections (default 50)
// BENCH_SCENARIOS comma list of scenario names (default: all whose packages are installed)
// BENCH_COMPARE_DIST comma list of other builds of the library (e.g. `npx tsc -p tsconfig.build.json
//                 --outDir /tmp/before` on an older commit): every scenario that uses the library also runs
//                 from each, as `<scenario>@<folder name>`, in the same alternating rounds
//                 (scenarios without the library, `bare` and `hand-assembled`, run once)

/** The part of autocannon's result the bench reads. */
interface AutocannonResult {
  requests: { average: number; total: number };
  latency: { p50: number; p99: number };
  non2xx: number;
  errors: number;
  timeouts: number;
}
type Autocannon = (options: Record<string, unknown>) => Promise<AutocannonResult>;
// eslint-disable-next-line @typescript-eslint/no-require-imports -- autocannon ships no types
const autocannon = require('autocannon') as Autocannon;

interface Round {
  rps: number;
  p50: number;
  p99: number;
  /** Server CPU time (user + system) per completed request, in microseconds. */
  cpuPerRequest: number;
  bad: number;
}

interface Running {
  name: string;
  /** The scenario's key in SCENARIOS (`name` without the `@build` suffix). */
  key: string;
  /** The build the server loads. */
  dist: string;
  scenario: Scenario;
  child: ChildProcess;
  port: number;
  rounds: Round[];
}

const ROUNDS = Math.round(positive('BENCH_ROUNDS', 3));
// Seconds of measured load the default run aims at, whatever the number of scenarios.
const LOAD_BUDGET = 60;
const WARMUP = positive('BENCH_WARMUP', 2);
const CONNECTIONS = Math.round(positive('BENCH_CONNECTIONS', 50));
const BASELINE = 'bare';
const ROOT = join(__dirname, '..');
const DIST = join(ROOT, 'dist');

function positive(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name}: expected a positive number, got '${raw}'`);
  return value;
}

function installed(pkg: string): boolean {
  try {
    require.resolve(pkg, { paths: [ROOT] });
    return true;
  } catch {
    return false;
  }
}

/** What each server runs: its scenario and the build of the library it loads. */
interface Planned {
  name: string;
  key: string;
  dist: string;
  scenario: Scenario;
}

function selectScenarios(): Planned[] {
  const wanted = process.env.BENCH_SCENARIOS?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const name of wanted ?? []) {
    if (!(name in SCENARIOS)) throw new Error(`BENCH_SCENARIOS: unknown scenario '${name}' (known: ${Object.keys(SCENARIOS).join(', ')})`);
  }
  const compare = (process.env.BENCH_COMPARE_DIST ?? '')
    .split(',')
    .filter((d) => d.trim() !== '')
    .map((d) => resolve(d.trim()));
  for (const dist of compare) {
    if (!existsSync(join(dist, 'index.js'))) throw new Error(`BENCH_COMPARE_DIST: ${dist}/index.js is missing`);
  }
  const picked: Planned[] = [];
  for (const [name, scenario] of Object.entries(SCENARIOS)) {
    if (wanted && !wanted.includes(name) && name !== BASELINE) continue;
    const missing = (scenario.requires ?? []).filter((pkg) => !installed(pkg));
    if (missing.length > 0) {
      console.log(`skipping '${name}': not installed: ${missing.join(', ')} (npm install -D ${missing.join(' ')})`);
      continue;
    }
    picked.push({ name, key: name, dist: DIST, scenario });
    if (scenario.usesLibrary === false) continue;
    for (const dist of compare) picked.push({ name: `${name}@${basename(dist)}`, key: name, dist, scenario });
  }
  return picked;
}

/** The project's node_modules on NODE_PATH, so a build compared from outside the project (/tmp/…) finds its dependencies. */
function nodePath(): string {
  return [join(ROOT, 'node_modules'), process.env.NODE_PATH].filter(Boolean).join(delimiter);
}

function start({ name, key, dist, scenario }: Planned): Promise<Running> {
  const child = fork(join(__dirname, 'servers', 'server.ts'), [key], {
    execArgv: ['-r', 'ts-node/register/transpile-only'],
    // Production mode, as deployed: Express and the stack skip their development-only work.
    env: { ...process.env, NODE_ENV: 'production', LOG_LEVEL: 'info', BENCH_DIST: dist, NODE_PATH: nodePath() },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server '${name}' did not start within 30 s`)), 30_000);
    child.once('message', (message: { port?: number }) => {
      clearTimeout(timer);
      if (typeof message?.port !== 'number') return reject(new Error(`server '${name}' sent ${JSON.stringify(message)}`));
      resolve({ name, key, dist, scenario, child, port: message.port, rounds: [] });
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server '${name}' exited with code ${code} before listening`));
    });
  });
}

function requestOf(scenario: Scenario): Required<Pick<BenchRequest, 'method' | 'path'>> & BenchRequest {
  return { method: 'GET', path: '/games/1', ...scenario.request };
}

/** One request before the load, so a scenario that answers the wrong thing fails loudly instead of measuring errors. */
function probe(server: Running): Promise<void> {
  const req = requestOf(server.scenario);
  const expected = server.scenario.expectStatus ?? 200;
  return new Promise((resolve, reject) => {
    const outgoing = request({ host: '127.0.0.1', port: server.port, method: req.method, path: req.path, headers: req.headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => {
        if (res.statusCode !== expected) {
          reject(
            new Error(
              `server '${server.name}': ${req.method} ${req.path} answered ${res.statusCode}, expected ${expected}: ${body.slice(0, 300)}`,
            ),
          );
          return;
        }
        const headers = Object.keys(res.headers).length;
        console.log(`  ${server.name.padEnd(16)} ${res.statusCode}, ${headers} response headers, ${body.length} body bytes`);
        resolve();
      });
    });
    outgoing.on('error', reject);
    outgoing.end(req.body);
  });
}

function serverCpu(server: Running): Promise<number> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server '${server.name}' did not report its CPU time`)), 10_000);
    const onMessage = (message: { cpuMicros?: number }): void => {
      if (typeof message?.cpuMicros !== 'number') return;
      clearTimeout(timer);
      server.child.off('message', onMessage);
      resolve(message.cpuMicros);
    };
    server.child.on('message', onMessage);
    server.child.send('cpu');
  });
}

async function load(server: Running, seconds: number): Promise<Round> {
  const req = requestOf(server.scenario);
  const cpuBefore = await serverCpu(server);
  const result = await autocannon({
    url: `http://127.0.0.1:${server.port}`,
    connections: CONNECTIONS,
    pipelining: 1,
    duration: seconds,
    requests: [{ method: req.method, path: req.path, headers: req.headers, body: req.body }],
  });
  const expected = server.scenario.expectStatus ?? 200;
  // autocannon counts non-2xx; a scenario expecting another status judges by the probe alone.
  const bad = (expected < 300 ? result.non2xx : 0) + result.errors + result.timeouts;
  const cpuPerRequest = ((await serverCpu(server)) - cpuBefore) / Math.max(1, result.requests.total);
  return { rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99, cpuPerRequest, bad };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function report(servers: Running[]): void {
  const base = servers.find((s) => s.name === BASELINE);
  const baseRps = base ? median(base.rounds.map((r) => r.rps)) : undefined;
  const baseCpu = base ? median(base.rounds.map((r) => r.cpuPerRequest)) : undefined;
  const rows = servers.map((s) => {
    const rps = median(s.rounds.map((r) => r.rps));
    const cpu = median(s.rounds.map((r) => r.cpuPerRequest));
    return {
      cpu,
      extraCpu: baseCpu === undefined ? NaN : cpu - baseCpu,
      name: s.name,
      rps,
      range: `${Math.round(Math.min(...s.rounds.map((r) => r.rps)))}–${Math.round(Math.max(...s.rounds.map((r) => r.rps)))}`,
      p50: median(s.rounds.map((r) => r.p50)),
      p99: median(s.rounds.map((r) => r.p99)),
      bad: s.rounds.reduce((sum, r) => sum + r.bad, 0),
      ratio: baseRps ? rps / baseRps : NaN,
    };
  });
  const dash = (value: number, text: string): string => (Number.isNaN(value) ? '–' : text);
  console.log(
    '\n| scenario | req/s (median) | req/s range | vs bare | p50 ms | p99 ms | server CPU µs/req | added µs/req | non-2xx/errors |',
  );
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.name} | ${Math.round(r.rps)} | ${r.range} | ${dash(r.ratio, r.ratio.toFixed(2))} | ${r.p50} | ${r.p99} | ` +
        `${Math.round(r.cpu)} | ${dash(r.extraCpu, `${r.extraCpu >= 0 ? '+' : ''}${Math.round(r.extraCpu)}`)} | ${r.bad} |`,
    );
  }
  console.log('\nScenarios:');
  for (const s of servers) console.log(`  ${s.name}: ${s.scenario.description}${s.dist === DIST ? '' : ` (library from ${s.dist})`}`);
  console.log(
    `\nNote: ${cpus().length} CPU core(s) shared by autocannon (this process) and the server under load; ` +
      'absolute req/s is lower than with a separate load generator. Compare ratios, not raw numbers, across machines. ' +
      'Server CPU µs/req (user + system time of the server process per completed request) is the figure other load disturbs least.',
  );
  const load = loadavg()[0];
  if (load > cpus().length) {
    console.log(
      `WARNING: load average ${load.toFixed(1)} on ${cpus().length} cores: other work competed with the bench; the figures are noisy.`,
    );
  }
  const failed = rows.filter((r) => r.bad > 0);
  if (failed.length > 0) {
    console.log(`\nWARNING: ${failed.map((r) => r.name).join(', ')} answered non-2xx or failed requests: their figures are not valid.`);
    process.exitCode = 1;
  }
}

async function main(): Promise<void> {
  if (!existsSync(join(DIST, 'index.js'))) throw new Error('dist/index.js is missing: run `npm run build` (npm run bench does it)');
  const picked = selectScenarios();
  const duration = positive('BENCH_DURATION', Math.max(2, Math.min(5, Math.floor(LOAD_BUDGET / (ROUNDS * picked.length)))));
  console.log(
    `express-perimeter bench: ${picked.length} servers, ${ROUNDS} rounds × ${duration} s each after ${WARMUP} s warm-up, ` +
      `${CONNECTIONS} connections, pipelining 1, node ${process.version}, ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown'}), ` +
      `load average ${loadavg()[0].toFixed(1)} at start`,
  );
  const servers: Running[] = [];
  try {
    for (const pick of picked) servers.push(await start(pick));
    console.log('probe:');
    for (const server of servers) await probe(server);
    for (const server of servers) await load(server, WARMUP);
    for (let round = 0; round < ROUNDS; round++) {
      // Rotate the order every round so no scenario always runs first (or right after the heaviest one).
      const order = servers.map((_, i) => servers[(i + round) % servers.length]);
      const line: string[] = [];
      for (const server of order) {
        const result = await load(server, duration);
        server.rounds.push(result);
        line.push(`${server.name} ${Math.round(result.rps)} req/s`);
      }
      console.log(`round ${round + 1}/${ROUNDS}: ${line.join(', ')}`);
    }
    report(servers);
  } finally {
    for (const server of servers) server.child.kill('SIGTERM');
  }
}

main().catch((err: unknown) => {
  console.error(`bench failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
