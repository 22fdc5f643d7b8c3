#!/usr/bin/env node
// @ts-check
/**
 * Example tests: every app under examples/ is compiled with its own tsconfig (which must be
 * `strict` without `skipLibCheck`) against the package as `npm pack` ships it, then started on a
 * free port, asked a few questions, and stopped with SIGTERM, which must end it with exit code 0.
 *
 *   node scripts/test-examples.js                    every example
 *   node scripts/test-examples.js api-keys-redis     only these
 *   node scripts/test-examples.js --keep             keep the temporary copies (their path is printed)
 *
 * Each example's package.json depends on `express-perimeter` through a `file:` path to the packed
 * tarball; here each is copied to a temporary directory whose node_modules hold the unpacked
 * tarball, and this repo's copies of the example's other dependencies (which must therefore be
 * installed here: express, @types/…, jose…). Nothing is fetched from the registry.
 * REDIS_URL, when set, is passed to the examples that use Redis; the others run on memory.
 *
 * What each example is asked is in SMOKE below: an example without an entry fails the run.
 */
'use strict';
/* global require, module, process, fetch, setTimeout, clearTimeout */
/* eslint-disable @typescript-eslint/no-require-imports -- a plain CommonJS script, like sync-exports.js */

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { ROOT, PKG, packedProject, linkFromRoot } = require('./packed-project.js');

const EXAMPLES = path.join(ROOT, 'examples');
// Bounds on a failure (an app that never listens or never exits), not expectations of speed.
const START_DEADLINE_MS = 30_000;
const EXIT_DEADLINE_MS = 40_000;

/** @typedef {{ status: number, headers: Headers, text: string, json: () => any }} Answer */
/**
 * @typedef {object} Smoke
 * @property {boolean} [redis] whether REDIS_URL is passed on
 * @property {Record<string, string>} [env] extra environment
 * @property {(t: Session) => Promise<void>} run the questions (SIGTERM and the exit code are checked after)
 * @property {(t: Session) => Promise<void>} [stop] replaces the default SIGTERM-and-wait
 */

/** What each example is asked. `t.check` records a failure and goes on. */
/** @type {Record<string, Smoke>} */
const SMOKE = {
  'api-keys-redis': {
    redis: true,
    async run(t) {
      t.status(await t.request('GET', '/health'), 200);
      t.status(await t.request('GET', '/v1/widgets'), 401);
      const listed = await t.request('GET', '/v1/widgets', { headers: { 'X-API-Key': 'example-free-key-1' } });
      t.status(listed, 200);
      t.check(listed.headers.get('x-ratelimit-limit') === '10', `free tier: X-RateLimit-Limit 10, got ${listed.headers.get('x-ratelimit-limit')}`);
      const created = await t.request('POST', '/v1/widgets', { headers: { 'X-API-Key': 'example-pro-key-1' }, json: { name: 'gear' } });
      t.status(created, 201);
      t.check(created.headers.get('x-ratelimit-limit') === '100', `pro tier: X-RateLimit-Limit 100, got ${created.headers.get('x-ratelimit-limit')}`);
      t.status(await t.request('POST', '/v1/widgets', { headers: { 'X-API-Key': 'example-pro-key-1' }, json: {} }), 422);
    },
  },
  'saas-jwt-tenants': {
    async run(t) {
      const idp = await t.waitForOutput(/identity provider on (http:\/\/[\w.]+:\d+)/);
      const token = async (/** @type {string} */ user) => {
        const answer = await t.request('POST', `${idp[1]}/token`, { json: { user } });
        t.status(answer, 200);
        return `Bearer ${answer.json().access_token}`;
      };
      const alice = await token('alice');
      const bob = await token('bob');
      t.status(await t.request('GET', '/api/projects'), 401);
      const projects = await t.request('GET', '/api/projects', { headers: { Authorization: alice } });
      t.status(projects, 200);
      t.check(projects.json().tenant === 'acme', `alice's projects are acme's, got ${projects.text}`);
      const mismatch = await t.request('GET', '/api/projects', { headers: { Authorization: alice, 'X-Tenant-ID': 'globex' } });
      t.status(mismatch, 403);
      t.check(mismatch.json().error?.code === 'TENANT_MISMATCH', `TENANT_MISMATCH, got ${mismatch.text}`);
      // globex (free) starts with 20 credits, a report costs 10: two, then 402.
      const statuses = [];
      for (let i = 0; i < 3; i++) statuses.push((await t.request('POST', '/api/reports', { headers: { Authorization: bob }, json: { kind: 'usage' } })).status);
      t.check(statuses.join() === '202,202,402', `globex's reports: 202, 202, 402, got ${statuses.join(', ')}`);
      const billing = await t.request('GET', '/api/billing', { headers: { Authorization: bob } });
      t.status(billing, 200);
      t.check(billing.json().balance === 0, `globex's balance 0 after two reports, got ${billing.text}`);
    },
  },
  'load-balanced': {
    env: { DRAIN_DELAY: '2s', METRICS_TOKEN: 'example-metrics-token' },
    async run(t) {
      t.status(await t.request('GET', '/health'), 200);
      const ready = await t.request('GET', '/health/ready');
      t.status(ready, 200);
      t.check(ready.json().status === 'ready', `ready, got ${ready.text}`);
      t.status(await t.request('GET', '/api/items'), 200);
      t.status(await t.request('GET', '/metrics'), 401);
      const metrics = await t.request('GET', '/metrics', { headers: METRICS_AUTH });
      t.status(metrics, 200);
      t.check(metrics.text.includes('http_requests_total{method="GET",route="/api/items",status_code="200"} 1'), 'http_requests_total counts GET /api/items');
    },
    // A job in flight when SIGTERM arrives is answered; readiness says draining meanwhile.
    async stop(t) {
      const job = t.request('POST', '/api/jobs', { json: { ms: 1500 } });
      // SIGTERM once the job is in the server (the in-progress gauge says so), not before it arrived.
      await t.until('the job is in progress', async () =>
        (await t.request('GET', '/metrics', { headers: METRICS_AUTH })).text.includes('http_requests_in_progress{method="POST"} 1'),
      );
      t.child.kill('SIGTERM');
      await t.until('readiness answers 503 draining', async () => {
        const probe = await t.request('GET', '/health/ready');
        return probe.status === 503 && probe.json().status === 'draining';
      });
      t.status(await job, 201);
      await t.exited();
    },
  },
};

const METRICS_AUTH = { Authorization: 'Bearer example-metrics-token' };

/** One running example: its child process, its output, and helpers for the smoke questions. */
class Session {
  /** @param {string} name @param {import('node:child_process').ChildProcess} child */
  constructor(name, child) {
    this.name = name;
    this.child = child;
    this.out = '';
    /** @type {string[]} */
    this.failures = [];
    /** @type {Array<() => void>} */
    this.waiters = [];
    this.base = '';
    /** @type {Promise<number | string | null>} */
    this.exit = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.wake();
        resolve(signal ? signal : code);
      });
    });
    const take = (/** @type {Buffer} */ chunk) => {
      this.out += chunk;
      this.wake();
    };
    child.stdout?.on('data', take);
    child.stderr?.on('data', take);
  }

  wake() {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  /** Resolves with the first match of `pattern` in the output; rejects when the app exits first or after the deadline. */
  waitForOutput(pattern, deadline = START_DEADLINE_MS) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no output matching ${pattern} within ${deadline} ms`)), deadline);
      const look = () => {
        const match = pattern.exec(this.out);
        if (match) {
          clearTimeout(timer);
          resolve(match);
        } else if (this.child.exitCode !== null || this.child.signalCode !== null) {
          clearTimeout(timer);
          reject(new Error(`exited (${this.child.exitCode ?? this.child.signalCode}) before any output matching ${pattern}`));
        } else this.waiters.push(look);
      };
      look();
    });
  }

  /**
   * One HTTP request to the app (a path) or elsewhere (a URL), on a connection of its own.
   * @param {string} method @param {string} target
   * @param {{ headers?: Record<string, string>, json?: unknown }} [options]
   * @returns {Promise<Answer>}
   */
  async request(method, target, options = {}) {
    const headers = { connection: 'close', ...options.headers };
    const init = { method, headers, body: /** @type {string | undefined} */ (undefined) };
    if (options.json !== undefined) {
      init.body = JSON.stringify(options.json);
      headers['content-type'] = 'application/json';
    }
    const res = await fetch(target.startsWith('http') ? target : `${this.base}${target}`, init);
    const text = await res.text();
    return {
      status: res.status,
      headers: res.headers,
      text,
      json: () => {
        try {
          return JSON.parse(text);
        } catch {
          return {};
        }
      },
    };
  }

  /**
   * Asks `condition` again (every 50 ms) until it holds, the app exits or the deadline passes;
   * resolves whether it held. Errors (a refused connection) count as not yet.
   * @param {string} what @param {() => Promise<boolean>} condition
   */
  async until(what, condition, deadline = START_DEADLINE_MS) {
    const end = Date.now() + deadline;
    while (Date.now() < end && this.child.exitCode === null) {
      if (await condition().catch(() => false)) return true;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    this.failures.push(`${what}: not seen (the app ${this.child.exitCode === null ? 'is still running' : `exited with ${this.child.exitCode}`})`);
    return false;
  }

  check(ok, message) {
    if (!ok) this.failures.push(message);
  }

  /** @param {Answer} answer @param {number} expected */
  status(answer, expected) {
    this.check(answer.status === expected, `expected ${expected}, got ${answer.status}: ${answer.text.slice(0, 300)}`);
  }

  /** Waits for the exit and checks it was 0. */
  async exited() {
    let timer;
    const code = await Promise.race([this.exit, new Promise((resolve) => (timer = setTimeout(() => resolve('still running'), EXIT_DEADLINE_MS)))]);
    clearTimeout(timer);
    if (code === 'still running') this.child.kill('SIGKILL');
    this.check(code === 0, `exit code 0 after SIGTERM, got ${code}`);
  }
}

/** Copies an example without its node_modules and build output. */
function copyExample(from, to) {
  fs.cpSync(from, to, { recursive: true, filter: (source) => !/[\\/](node_modules|dist)$/.test(source) });
}

/** Links the example's dependencies from this repo and the packed package; returns what is wrong. */
function installExample(dir, packedDir) {
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  const problems = [];
  const spec = pkg.dependencies?.[PKG.name];
  if (typeof spec !== 'string' || !/^file:.*\.tgz$/.test(spec)) {
    problems.push(`package.json: dependencies["${PKG.name}"] must be a file: path to the packed tarball (file:../../${PKG.name}-${PKG.version}.tgz), got ${JSON.stringify(spec)}`);
  }
  fs.mkdirSync(path.join(dir, 'node_modules'), { recursive: true });
  fs.symlinkSync(packedDir, path.join(dir, 'node_modules', PKG.name), 'dir');
  for (const name of [...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.devDependencies ?? {})]) {
    if (name === PKG.name || name === 'typescript') continue;
    if (!linkFromRoot(dir, name)) problems.push(`package.json: ${name} is not installed in ${ROOT}: the examples may use only packages this repo has`);
  }
  return problems;
}

/** A compiler host sharing parsed files between the examples' programs. */
function cachingHost(ts, options, parsed) {
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile;
  host.getSourceFile = (fileName, languageVersion, ...rest) => {
    const key = `${fileName}\n${JSON.stringify(languageVersion)}`;
    let file = parsed.get(key);
    if (file === undefined) {
      file = getSourceFile.call(host, fileName, languageVersion, ...rest);
      parsed.set(key, file);
    }
    return file;
  };
  return host;
}

/** An example's tsconfig, parsed; problems with it (strict off, skipLibCheck on) in `problems`. */
function readConfig(ts, dir) {
  const configPath = path.join(dir, 'tsconfig.json');
  const problems = [];
  const config = ts.getParsedCommandLineOfConfigFile(configPath, {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: () => {} });
  if (config === undefined) return { problems: [`${configPath} cannot be read`] };
  if (config.options.strict !== true) problems.push('tsconfig.json: "strict": true is required (users copy these settings)');
  if (config.options.skipLibCheck === true || config.options.skipDefaultLibCheck === true) problems.push('tsconfig.json: skipLibCheck hides what a user would see: remove it');
  if (config.errors.length > 0) problems.push(ts.formatDiagnostics(config.errors, formatHost(dir)));
  return { config, problems };
}

function formatHost(dir) {
  return { getCanonicalFileName: (f) => f, getCurrentDirectory: () => dir, getNewLine: () => '\n' };
}

/** Compiler options with the per-example paths left out: examples whose rest is equal are checked together. */
function sharedOptions(options) {
  const { outDir: _outDir, rootDir: _rootDir, configFilePath: _configFilePath, pathsBasePath: _pathsBasePath, ...rest } = options;
  return rest;
}

/**
 * Type-checks the examples (`{ name, dir, config }`) and emits each into its outDir. Examples with
 * the same compiler options are checked in one program, so the libraries' declarations (checked
 * in full: no skipLibCheck) are checked once, not once per example; each file is then transpiled
 * on its own. Returns name → problems.
 */
function compileExamples(ts, examples) {
  const parsed = new Map();
  /** @type {Map<string, string[]>} */
  const problems = new Map(examples.map((e) => [e.name, []]));
  const groups = new Map();
  for (const example of examples) {
    const key = JSON.stringify(sharedOptions(example.config.options));
    groups.set(key, [...(groups.get(key) ?? []), example]);
  }
  for (const group of groups.values()) {
    const options = { ...sharedOptions(group[0].config.options), noEmit: true };
    const program = ts.createProgram({ rootNames: group.flatMap((e) => e.config.fileNames), options, host: cachingHost(ts, options, parsed) });
    const diagnostics = ts.getPreEmitDiagnostics(program);
    for (const example of group) {
      const own = diagnostics.filter((d) => d.file === undefined || !path.relative(example.dir, d.file.fileName).startsWith('..'));
      // A library's declarations failing (no file of any example) is every example's problem.
      const shared = diagnostics.filter((d) => d.file !== undefined && group.every((e) => path.relative(e.dir, d.file.fileName).startsWith('..')));
      const all = [...own, ...shared];
      if (all.length > 0) problems.get(example.name).push(ts.formatDiagnostics(all, formatHost(example.dir)).trim());
    }
  }
  for (const example of examples) {
    if (problems.get(example.name).length > 0) continue;
    // Checked already: each file is transpiled alone (what tsc would write, without a second checker).
    const { options, fileNames } = example.config;
    const rootDir = options.rootDir ?? example.dir;
    const outDir = options.outDir ?? example.dir;
    for (const file of fileNames) {
      const out = ts.transpileModule(fs.readFileSync(file, 'utf8'), { compilerOptions: options, fileName: file });
      const target = path.join(outDir, path.relative(rootDir, file)).replace(/\.ts$/, '.js');
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.writeFileSync(target, out.outputText);
    }
  }
  return problems;
}

/** Starts the compiled example, runs its smoke questions, stops it. */
async function smokeRun(name, dir, smoke) {
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  const main = /^node (\S+)$/.exec(pkg.scripts?.start ?? '')?.[1];
  if (main === undefined) return { failures: ['package.json: scripts.start must be `node <compiled file>`'], out: '' };
  const env = { ...process.env, PORT: '0', NODE_ENV: 'development', ...smoke.env };
  if (!smoke.redis) delete env.REDIS_URL;
  delete env.JWT_SECRET;
  delete env.API_KEYS;
  const child = spawn(process.execPath, [main], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const t = new Session(name, child);
  try {
    const listening = await t.waitForOutput(/listening on (http:\/\/\S+?:\d+)/);
    t.base = listening[1].replace('localhost', '127.0.0.1');
    await smoke.run(t);
    if (smoke.stop) await smoke.stop(t);
    else {
      child.kill('SIGTERM');
      await t.exited();
    }
  } catch (err) {
    t.failures.push(err instanceof Error ? err.message : String(err));
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  return { failures: t.failures, out: t.out };
}

function tail(text, lines = 30) {
  return text
    .trimEnd()
    .split('\n')
    .slice(-lines)
    .map((line) => `    | ${line}`)
    .join('\n');
}

async function main(argv) {
  const started = Date.now();
  const keep = argv.includes('--keep');
  const chosen = argv.filter((arg) => !arg.startsWith('--'));
  const all = fs
    .readdirSync(EXAMPLES, { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .map((entry) => entry.name)
    .sort();
  const names = chosen.length > 0 ? chosen : all;
  const unknown = names.filter((name) => !all.includes(name));
  if (unknown.length > 0) throw new Error(`no such example: ${unknown.join(', ')} (examples/ has ${all.join(', ')})`);

  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'perimeter-examples-'));
  const results = [];
  try {
    await packedProject(path.join(base, 'packed'));
    const packedDir = path.join(base, 'packed', 'node_modules', PKG.name);
    const ts = require(path.join(ROOT, 'node_modules', 'typescript'));
    const ready = [];
    for (const name of names) {
      const dir = path.join(base, name);
      copyExample(path.join(EXAMPLES, name), dir);
      const problems = ['package.json', 'tsconfig.json', 'README.md'].filter((file) => !fs.existsSync(path.join(dir, file))).map((file) => `${file} is missing`);
      if (problems.length === 0) {
        problems.push(...installExample(dir, packedDir));
        const { config, problems: configProblems } = readConfig(ts, dir);
        problems.push(...configProblems);
        if (SMOKE[name] === undefined) problems.push(`no smoke test: add an entry for '${name}' to SMOKE in scripts/test-examples.js`);
        if (problems.length === 0) ready.push({ name, dir, config });
      }
      if (problems.length > 0) results.push({ name, failures: problems });
    }
    const compileStarted = Date.now();
    const compiled = compileExamples(ts, ready);
    const compileSeconds = ((Date.now() - compileStarted) / 1000).toFixed(1);
    for (const { name, dir } of ready) {
      const problems = compiled.get(name) ?? [];
      if (problems.length > 0) {
        results.push({ name, failures: problems });
        continue;
      }
      const runStarted = Date.now();
      const ran = await smokeRun(name, dir, SMOKE[name]);
      results.push({ name, failures: ran.failures, out: ran.out, timing: `ran in ${((Date.now() - runStarted) / 1000).toFixed(1)}s` });
    }
    process.stdout.write(`packed in ${((compileStarted - started) / 1000).toFixed(1)}s; ${ready.length} examples compiled in ${compileSeconds}s\n`);
  } finally {
    if (keep) process.stdout.write(`kept ${base}\n`);
    else fs.rmSync(base, { recursive: true, force: true });
  }
  for (const result of results) {
    const ok = result.failures.length === 0;
    process.stdout.write(`${result.name}: ${ok ? 'ok' : 'FAILED'}${result.timing ? ` (${result.timing})` : ''}\n`);
    for (const failure of result.failures) process.stdout.write(`  ${failure.split('\n').join('\n  ')}\n`);
    if (!ok && result.out) process.stdout.write(`  its output:\n${tail(result.out)}\n`);
  }
  const failed = results.filter((result) => result.failures.length > 0).length;
  process.stdout.write(`examples: ${results.length - failed} passed, ${failed} failed in ${((Date.now() - started) / 1000).toFixed(0)}s\n`);
  return failed === 0 ? 0 : 1;
}

module.exports = { SMOKE };

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`test-examples: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
