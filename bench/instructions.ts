import { fork, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { basename, delimiter, join, resolve } from 'node:path';
import { SCENARIOS, type Scenario } from './servers/scenarios';

// `npx ts-node --transpile-only bench/instructions.ts`: the CPU instructions each scenario's server
// spends per request, counted by valgrind's callgrind. Unlike req/s, the count hardly moves with
// other work on the machine, so small differences (a few percent) show on a shared machine.
//
// Each server runs under `valgrind --tool=callgrind --instr-atstart=no`; after a warm-up (so V8 has
// optimised the hot paths), counting is switched on with callgrind_control, REQUESTS requests are
// sent one after another on one keep-alive connection, and the count is dumped; servers take
// turns, REPEAT rounds. Servers load dist/ (run `npm run build` first), as `npm run bench` does.
//
// INSTR_SCENARIOS     comma list (default: bare,stack,stack-user-winston)
// INSTR_REQUESTS      measured requests (default 2000)   INSTR_WARMUP  warm-up requests (default 3000)
// INSTR_COMPARE_DIST  comma list of other builds: each scenario using the library also runs from each
// INSTR_REPEAT        measured runs per server, all reported (default 1)
// INSTR_KEEP=1        keep the callgrind dumps (for callgrind_annotate)  INSTR_NODE_FLAGS  see NODE_FLAGS

const ROOT = join(__dirname, '..');
const DIST = join(ROOT, 'dist');
const REQUESTS = count('INSTR_REQUESTS', 2000);
const WARMUP = count('INSTR_WARMUP', 3000);
const REPEAT = count('INSTR_REPEAT', 1);
// No background threads (concurrent compiling, marking, sweeping) and fixed seeds, so the count
// depends on the requests rather than on how threads interleaved; a young generation and an old
// space large enough that a counted run starts from a collected heap (see `measure`) and rarely
// meets a full collection, which would otherwise land in some runs and not in others.
const NODE_FLAGS = (
  process.env.INSTR_NODE_FLAGS ??
  '--single-threaded --hash-seed=1 --random-seed=1 --expose-gc --min-semi-space-size=16 --max-semi-space-size=16 --initial-old-space-size=512'
)
  .split(' ')
  .filter(Boolean);

function count(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name}: expected a positive integer, got '${raw}'`);
  return value;
}

interface Server {
  name: string;
  scenario: Scenario;
  child: ChildProcess;
  port: number;
  agent: Agent;
  outDir: string;
}

function list(name: string, fallback: string): string[] {
  return (process.env[name] ?? fallback)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/** The project's node_modules on NODE_PATH, so a build compared from outside the project (/tmp/…) finds its dependencies. */
function nodePath(): string {
  return [join(ROOT, 'node_modules'), process.env.NODE_PATH].filter(Boolean).join(delimiter);
}

function start(name: string, key: string, dist: string): Promise<Server> {
  const scenario = SCENARIOS[key];
  const outDir = mkdtempSync(join(tmpdir(), 'perimeter-callgrind-'));
  const child = fork(join(__dirname, 'servers', 'server.ts'), [key], {
    execPath: 'valgrind',
    execArgv: [
      '--tool=callgrind',
      '--quiet',
      '--instr-atstart=no',
      `--callgrind-out-file=${join(outDir, 'callgrind.out')}`,
      process.execPath,
      ...NODE_FLAGS,
      '-r',
      'ts-node/register/transpile-only',
    ],
    env: { ...process.env, NODE_ENV: 'production', LOG_LEVEL: 'info', BENCH_DIST: dist, NODE_PATH: nodePath() },
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  return new Promise((resolvePort, reject) => {
    const timer = setTimeout(() => reject(new Error(`server '${name}' did not start within 5 minutes`)), 300_000);
    child.once('message', (message: { port?: number }) => {
      clearTimeout(timer);
      if (typeof message?.port !== 'number') return reject(new Error(`server '${name}' sent ${JSON.stringify(message)}`));
      resolvePort({ name, scenario, child, port: message.port, agent: new Agent({ keepAlive: true, maxSockets: 1 }), outDir });
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server '${name}' exited with code ${code} before listening`));
    });
  });
}

function once(server: Server): Promise<number> {
  const req = { method: 'GET', path: '/games/1', ...server.scenario.request };
  return new Promise((resolveStatus, reject) => {
    const outgoing = request({ host: '127.0.0.1', port: server.port, agent: server.agent, method: req.method, path: req.path, headers: req.headers }, (res) => {
      res.resume();
      res.on('end', () => resolveStatus(res.statusCode ?? 0));
    });
    outgoing.on('error', reject);
    outgoing.end(req.body);
  });
}

async function send(server: Server, n: number): Promise<void> {
  const expected = server.scenario.expectStatus ?? 200;
  for (let i = 0; i < n; i++) {
    const status = await once(server);
    if (status !== expected) throw new Error(`server '${server.name}' answered ${status}, expected ${expected}`);
  }
}

/**
 * Runs callgrind_control with `args` on the server. Callgrind reads commands only while the
 * program runs, so requests are sent until the command is done; returns how many were sent.
 */
async function control(server: Server, args: string[]): Promise<number> {
  const ctl = spawn('callgrind_control', [...args, String(server.child.pid)], { stdio: 'ignore' });
  let done = false;
  const exited = new Promise<void>((resolveExit, reject) => {
    ctl.once('exit', (code) => {
      done = true;
      if (code === 0) resolveExit();
      else reject(new Error(`callgrind_control ${args.join(' ')} exited with ${code}`));
    });
  });
  let sent = 0;
  while (!done) {
    await once(server);
    sent++;
  }
  await exited;
  return sent;
}

function lastTotal(server: Server): number {
  const dumps = readdirSync(server.outDir).filter((f) => f.startsWith('callgrind.out'));
  let latest = '';
  let latestPart = -1;
  for (const file of dumps) {
    const part = Number(/\.(\d+)$/.exec(file)?.[1] ?? 0);
    if (part > latestPart) [latest, latestPart] = [file, part];
  }
  const text = readFileSync(join(server.outDir, latest), 'utf8');
  const total = /^(?:summary|totals):\s+(\d+)/m.exec(text);
  if (total === null) throw new Error(`no totals in ${latest}`);
  return Number(total[1]);
}

function collect(server: Server): Promise<void> {
  return new Promise((resolveGc) => {
    const onMessage = (message: { collected?: boolean }): void => {
      if (message?.collected !== true) return;
      server.child.off('message', onMessage);
      resolveGc();
    };
    server.child.on('message', onMessage);
    server.child.send('gc');
  });
}

async function measure(server: Server): Promise<number> {
  await collect(server);
  await control(server, ['--instr=on']);
  const zeroWake = await control(server, ['--zero']);
  await send(server, REQUESTS);
  // The few requests sent while the dump command waits are counted too.
  const extra = await control(server, ['--dump']);
  if (process.env.INSTR_DEBUG) console.log(`    wake-up requests: ${zeroWake} around --zero, ${extra} around --dump`);
  const total = lastTotal(server);
  await control(server, ['--instr=off']);
  return total / (REQUESTS + extra / 2);
}

async function main(): Promise<void> {
  if (!existsSync(join(DIST, 'index.js'))) throw new Error('dist/index.js is missing: run `npm run build`');
  const compare = list('INSTR_COMPARE_DIST', '').map((d) => resolve(d));
  const plan: Array<[string, string, string]> = [];
  for (const key of list('INSTR_SCENARIOS', 'bare,stack,stack-user-winston')) {
    const scenario = SCENARIOS[key];
    if (scenario === undefined) throw new Error(`INSTR_SCENARIOS: unknown scenario '${key}'`);
    plan.push([key, key, DIST]);
    if (scenario.usesLibrary !== false) for (const dist of compare) plan.push([`${key}@${basename(dist)}`, key, dist]);
  }
  console.log(`callgrind: ${WARMUP} warm-up requests, then ${REQUESTS} counted, ${REPEAT} run(s) per server, node ${process.version}`);
  // All servers run at once and are counted in turns, rotating the order each round as
  // `npm run bench` does: time-driven work (timers, sweeps) then weighs alike on every server
  // when the machine's load drifts.
  const servers: Server[] = [];
  const runs = new Map<string, number[]>();
  try {
    for (const [name, key, dist] of plan) servers.push(await start(name, key, dist));
    for (const server of servers) await send(server, WARMUP);
    for (let round = 0; round < REPEAT; round++) {
      for (let i = 0; i < servers.length; i++) {
        const server = servers[(i + round) % servers.length];
        const count = await measure(server);
        runs.set(server.name, [...(runs.get(server.name) ?? []), count]);
        console.log(`  round ${round + 1}: ${server.name} ${Math.round(count / 1000)}k instructions per request`);
      }
    }
  } finally {
    for (const server of servers) {
      server.agent.destroy();
      server.child.kill('SIGTERM');
      await new Promise((r) => server.child.once('exit', r));
      if (process.env.INSTR_KEEP) console.log(`    ${server.name}: callgrind dumps kept in ${server.outDir}`);
      else rmSync(server.outDir, { recursive: true, force: true });
    }
  }
  const rows = servers.map((s): [string, number[]] => [s.name, runs.get(s.name) ?? []]);
  const base = rows.find(([name]) => name === 'bare')?.[1];
  const baseMedian = base === undefined ? undefined : median(base);
  console.log('\n| scenario | instructions per request, median (k) | runs (k) | vs bare |\n|---|---:|---:|---:|');
  for (const [name, counts] of rows) {
    const m = median(counts);
    const each = counts.map((c) => Math.round(c / 1000)).join(', ');
    console.log(`| ${name} | ${Math.round(m / 1000)} | ${each} | ${baseMedian === undefined ? '–' : (m / baseMedian).toFixed(2)} |`);
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

main().catch((err: unknown) => {
  console.error(`instructions bench failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
