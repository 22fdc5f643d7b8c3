import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

// The package as users get it: the compiled dist/ reached by name through package.json
// `exports` from a project whose node_modules holds express-perimeter (a symlink to this repo),
// in real Node processes (CommonJS, ESM) and real tsc runs, not through jest's module system.

const ROOT = resolve(__dirname, '..');
const DIST = join(ROOT, 'dist');
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
const FIXTURE = join(__dirname, 'fixtures', 'typed-usage.ts');
const SOURCE_DIRS = ['lib', 'middleware', 'types'];
// The fixture's opening lines keep the project typecheck off it; this test removes them.
const PRAGMA = /^\/\*[^\n]*\*\/\n\/\/ @ts-nocheck[^\n]*\n/;

// eslint-disable-next-line @typescript-eslint/no-require-imports -- the CommonJS build script, shared so the test and CI agree on names
const { middlewareNames, camelCase } = require('../scripts/sync-exports.js') as {
  middlewareNames(root?: string): string[];
  camelCase(kebab: string): string;
};

/** The error classes API.md promises, with the status and code a bare `new X()` carries. */
const API_ERRORS: Array<[string, number, string]> = [
  ['BadRequestError', 400, 'BAD_REQUEST'],
  ['ValidationError', 422, 'VALIDATION_ERROR'],
  ['AuthenticationError', 401, 'AUTHENTICATION_REQUIRED'],
  ['InsufficientCreditsError', 402, 'INSUFFICIENT_CREDITS'],
  ['ForbiddenError', 403, 'FORBIDDEN'],
  ['NotFoundError', 404, 'NOT_FOUND'],
  ['ConflictError', 409, 'CONFLICT'],
  ['PayloadTooLargeError', 413, 'PAYLOAD_TOO_LARGE'],
  ['UnsupportedMediaTypeError', 415, 'UNSUPPORTED_MEDIA_TYPE'],
  ['RateLimitError', 429, 'RATE_LIMIT_EXCEEDED'],
  ['QuotaExceededError', 429, 'QUOTA_EXCEEDED'],
  ['ServiceUnavailableError', 503, 'SERVICE_UNAVAILABLE'],
  ['GatewayTimeoutError', 504, 'GATEWAY_TIMEOUT'],
];
const ERRORS_SOURCE = readFileSync(join(ROOT, 'lib', 'errors.ts'), 'utf8');
const DEFINED_ERRORS = API_ERRORS.filter(([name]) => new RegExp(`export class ${name}\\b`).test(ERRORS_SOURCE));

const ROOT_EXPORTS = ['createStack', 'configFromEnv', 'getContext', 'HttpError', 'isHttpError', 'ConfigError'];

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command without blocking the event loop (several tsc runs go in parallel). */
function run(command: string, args: string[], cwd: string, timeoutMs = 120_000, env: NodeJS.ProcessEnv = process.env): Promise<Ran> {
  return new Promise((done, fail) => {
    const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      fail(
        new Error(
          `${command} ${args.join(' ').slice(0, 120)} did not finish within ${timeoutMs} ms (open handles keep it alive?)\n${stderr}`,
        ),
      );
    }, timeoutMs);
    child.on('error', fail);
    child.on('close', (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    });
  });
}

/** Parses the JSON a child printed, or fails with what it said. */
function jsonOf(ran: Ran, what: string): any {
  if (ran.code !== 0) throw new Error(`${what} exited with ${ran.code}:\n${ran.stderr}${ran.stdout}`);
  return JSON.parse(ran.stdout);
}

function newestSourceMtime(): number {
  let newest = statSync(join(ROOT, 'index.ts')).mtimeMs;
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(path).mtimeMs);
    }
  };
  for (const dir of SOURCE_DIRS) walk(join(ROOT, dir));
  return Math.max(newest, statSync(join(ROOT, 'tsconfig.build.json')).mtimeMs);
}

/** Builds dist/ when it is missing, older than a source, or lacks a middleware (CI builds first, so there it is a no-op). */
function ensureBuilt(): void {
  const entry = join(DIST, 'index.js');
  const missing = middlewareNames(ROOT).some((name) => !existsSync(join(DIST, 'middleware', `${name}.js`)));
  if (existsSync(entry) && !missing && statSync(entry).mtimeMs >= newestSourceMtime()) return;
  const built = spawnSync(process.execPath, [TSC, '-p', 'tsconfig.build.json'], { cwd: ROOT, encoding: 'utf8', timeout: 300_000 });
  if (built.status !== 0) throw new Error(`tsc -p tsconfig.build.json failed (${built.status}):\n${built.stdout}${built.stderr}`);
}

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  main: string;
  types: string;
  exports: Record<string, string | { types: string; default: string }>;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  bin?: string | Record<string, string>;
};
// Middleware subpaths, which export a factory; `openfeature` (a provider, not middleware) has its own test.
const SUBPATHS = Object.keys(pkg.exports ?? {})
  .filter((key) => key !== '.' && key !== './package.json' && key !== './openfeature')
  .map((key) => key.slice(2));

let project: string;

/** A user's project: node_modules with express-perimeter (this repo), express, and @types (the fixture loads only node's globally). */
function makeProject(): string {
  const dir = mkdtempSync(join(tmpdir(), 'perimeter-package-'));
  mkdirSync(join(dir, 'node_modules'));
  symlinkSync(ROOT, join(dir, 'node_modules', 'express-perimeter'), 'dir');
  // The Express under test (EXPRESS_MAJOR=4 picks the `express4` alias), as the user's peer dependency.
  const express = process.env.EXPRESS_MAJOR === '4' ? 'express4' : 'express';
  symlinkSync(join(ROOT, 'node_modules', express), join(dir, 'node_modules', 'express'), 'dir');
  symlinkSync(join(ROOT, 'node_modules', '@types'), join(dir, 'node_modules', '@types'), 'dir');
  return dir;
}

// The deadlines of this file only bound a failure (a child kept alive by an open handle, a
// build that hangs): builds and tsc runs can take minutes on a loaded two-core machine.
beforeAll(() => {
  ensureBuilt();
  project = makeProject();
}, 300_000);

afterAll(() => {
  if (project) rmSync(project, { recursive: true, force: true });
});

describe('package.json', () => {
  it('has an exports map in sync with middleware/*.ts (node scripts/sync-exports.js --check)', () => {
    const env = { ...process.env };
    delete env.CI;
    const checked = spawnSync(process.execPath, [join(ROOT, 'scripts', 'sync-exports.js'), '--check'], {
      cwd: ROOT,
      env,
      encoding: 'utf8',
    });
    expect(checked.stderr).toBe('');
    expect(checked.status).toBe(0);
  });

  it('maps the root to dist/index.js with its types, and exposes package.json', () => {
    expect(pkg.main).toBe('dist/index.js');
    expect(pkg.types).toBe('dist/index.d.ts');
    expect(pkg.exports['.']).toEqual({ types: './dist/index.d.ts', default: './dist/index.js' });
    expect(pkg.exports['./package.json']).toBe('./package.json');
  });

  it.each(middlewareNames(ROOT))('gives middleware/%s.ts a kebab-case subpath with types', (name) => {
    expect(pkg.exports[`./${name}`]).toEqual({ types: `./dist/middleware/${name}.d.ts`, default: `./dist/middleware/${name}.js` });
  });

  it('packs every exported file and bin, and no sources, tests or tooling (npm pack --dry-run)', async () => {
    const packed = jsonOf(await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], ROOT), 'npm pack');
    const files: string[] = packed[0].files.map((file: { path: string }) => file.path);
    const targets = Object.values(pkg.exports).flatMap((target) =>
      typeof target === 'string' ? [target] : [target.types, target.default],
    );
    for (const target of targets) expect(files).toContain(target.replace(/^\.\//, ''));
    expect(files).toContain('dist/types/express-augment.d.ts');
    for (const bin of Object.values(typeof pkg.bin === 'string' ? { cli: pkg.bin } : (pkg.bin ?? {})))
      expect(files).toContain(bin.replace(/^\.\//, ''));
    // Nothing a user does not run: TypeScript sources, tests, bench, CI and build scripts.
    const devOnly = files.filter(
      (file) =>
        (/\.ts$/.test(file) && !/\.d\.ts$/.test(file)) ||
        /^(__tests__|bench|scripts|demo|examples|docs|\.ci|\.github|node_modules|coverage)\//.test(file) ||
        /\.test\./.test(file),
    );
    expect(devOnly).toEqual([]);
  }, 150_000);

  it('runs nothing on a consumer\'s install: no prepare or install scripts, the build runs on pack (prepack)', () => {
    // `prepare` also runs on consumers' git installs and on every `npm ci` of this repo;
    // `prepack` builds dist/ exactly when a tarball is made (npm pack, npm publish).
    const scripts = (pkg as { scripts?: Record<string, string> }).scripts ?? {};
    const consumerHooks = ['prepare', 'preinstall', 'install', 'postinstall'].filter((name) => name in scripts);
    expect(consumerHooks).toEqual([]);
    expect(scripts.prepack).toBe('npm run build');
  });

  it('names in its dependencies every package whose types the published .d.ts files import', () => {
    // A TypeScript user has @types/node and @types/express (express is the peer); anything else
    // our declarations import must come with the package, or their project sees errors or `any`.
    const dependencies = { ...pkg.dependencies, ...pkg.peerDependencies };
    const usersTypes = closure(['@types/node', '@types/express']);
    const imported = new Set<string>();
    const walk = (dir: string): void => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) walk(path);
        else if (entry.name.endsWith('.d.ts')) {
          for (const match of readFileSync(path, 'utf8').matchAll(/(?:from |import\()'([^.'][^']*)'/g)) imported.add(packageName(match[1]));
        }
      }
    };
    walk(DIST);
    const unavailable = [...imported].filter((name) => {
      if (name.startsWith('node:') || usersTypes.has(`@types/${name}`)) return false;
      if (name in dependencies && shipsTypes(name)) return false;
      return !(`@types/${name}` in dependencies);
    });
    expect(unavailable).toEqual([]);
  });
});

describe('require() from CommonJS', () => {
  let shapes: any;
  beforeAll(async () => {
    const script = `
      const root = require('express-perimeter');
      const out = { root: {}, subpaths: {}, errors: {}, configError: {} };
      for (const [key, value] of Object.entries(root)) out.root[key] = typeof value;
      for (const [sub, factory] of ${JSON.stringify(SUBPATHS.map((sub) => [sub, camelCase(sub)]))}) {
        const mod = require('express-perimeter/' + sub);
        out.subpaths[sub] = { type: typeof mod[factory], sameAsRoot: mod[factory] === root[factory], rootType: typeof root[factory] };
      }
      for (const name of ${JSON.stringify(DEFINED_ERRORS.map(([name]) => name))}) {
        const err = new root[name]();
        out.errors[name] = { status: err.status, code: err.code, httpError: err instanceof root.HttpError,
          isHttpError: root.isHttpError(err), error: err instanceof Error, name: err.name, message: typeof err.message };
      }
      const config = new root.ConfigError('rateLimit.window', 'expected a duration');
      out.configError = { error: config instanceof Error, isHttpError: root.isHttpError(config), option: config.option, message: config.message };
      out.openfeature = typeof require('express-perimeter/openfeature').PerimeterProvider;
      out.version = require('express-perimeter/package.json').version;
      out.express = require('express/package.json').version;
      process.stdout.write(JSON.stringify(out));
    `;
    writeFileSync(join(project, 'shapes.cjs'), script);
    shapes = jsonOf(await run(process.execPath, ['shapes.cjs'], project), 'require shapes');
  }, 150_000);

  it.each(ROOT_EXPORTS)("require('express-perimeter').%s is a function", (name) => {
    expect(shapes.root[name]).toBe('function');
  });

  it('runs beside the Express major under test', () => {
    expect(shapes.express.split('.')[0]).toBe(process.env.EXPRESS_MAJOR === '4' ? '4' : '5');
  });

  it("require('express-perimeter/openfeature') gives the OpenFeature provider", () => {
    expect(shapes.openfeature).toBe('function');
  });

  it('exposes package.json as a subpath', () => {
    expect(shapes.version).toBe(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version);
  });

  it('resolves the request-id subpath', () => {
    expect(shapes.subpaths['request-id']).toEqual({ type: 'function', sameAsRoot: true, rootType: 'function' });
  });

  it.each(SUBPATHS)("require('express-perimeter/%s') exports its camelCase factory, the same function as the root's", (sub) => {
    expect(shapes.subpaths[sub]).toEqual({ type: 'function', sameAsRoot: true, rootType: 'function' });
  });

  it.each(DEFINED_ERRORS)('exports %s (%i %s), an HttpError', (name, status, code) => {
    expect(shapes.errors[name]).toEqual({ status, code, httpError: true, isHttpError: true, error: true, name, message: 'string' });
  });

  it('exports ConfigError, an Error that is not an HttpError', () => {
    expect(shapes.configError).toEqual({
      error: true,
      isHttpError: false,
      option: 'rateLimit.window',
      message: 'rateLimit.window: expected a duration',
    });
  });

  it('serves requests from the built package: request id, JSON route, error envelope, clean close', async () => {
    const script = `
      const express = require('express');
      const { createStack, NotFoundError } = require('express-perimeter');
      const stack = createStack({ logger: { level: 'silent' } });
      const app = express();
      app.use(stack);
      app.get('/games/:id', (req, res) => res.json({ id: req.params.id, requestId: req.id }));
      app.get('/gone', (req, res, next) => next(new NotFoundError('No such game.')));
      app.use(stack.errorHandler);
      const server = app.listen(0, '127.0.0.1', async () => {
        const base = 'http://127.0.0.1:' + server.address().port;
        const out = [];
        for (const path of ['/games/7', '/gone']) {
          const res = await fetch(base + path, { headers: { 'X-Request-ID': 'pkg-test-' + out.length } });
          out.push({ status: res.status, requestId: res.headers.get('x-request-id'), type: res.headers.get('content-type'), body: await res.json() });
        }
        process.stdout.write(JSON.stringify(out));
        await stack.close();
        server.close();
        // No process.exit: the child must end by itself once the stack is closed.
      });
    `;
    writeFileSync(join(project, 'serve.cjs'), script);
    const [ok, gone] = jsonOf(await run(process.execPath, ['serve.cjs'], project, 60_000), 'serve');
    expect(ok).toEqual({
      status: 200,
      requestId: 'pkg-test-0',
      type: expect.stringMatching(/^application\/json/),
      body: { id: '7', requestId: 'pkg-test-0' },
    });
    expect(gone).toEqual({
      status: 404,
      requestId: 'pkg-test-1',
      type: expect.stringMatching(/^application\/json/),
      body: { error: { code: 'NOT_FOUND', message: 'No such game.', request_id: 'pkg-test-1' } },
    });
  }, 90_000);
});

describe('import from ESM', () => {
  it("named and dynamic imports of 'express-perimeter' and every subpath work (node --input-type=module)", async () => {
    const code = `
      import { createStack, HttpError, isHttpError, getContext, configFromEnv, ConfigError } from 'express-perimeter';
      import { requestId } from 'express-perimeter/request-id';
      import pkg from 'express-perimeter';
      const dynamic = await import('express-perimeter');
      const out = {
        named: [createStack, HttpError, isHttpError, getContext, configFromEnv, ConfigError, requestId].map((f) => typeof f),
        defaultIsModule: pkg.createStack === createStack,
        dynamicSame: dynamic.createStack === createStack && dynamic.requestId === requestId,
        error: isHttpError(new HttpError(418, 'TEAPOT')),
        subpaths: {},
      };
      for (const [sub, factory] of ${JSON.stringify(SUBPATHS.map((sub) => [sub, camelCase(sub)]))}) {
        out.subpaths[sub] = typeof (await import('express-perimeter/' + sub))[factory];
      }
      process.stdout.write(JSON.stringify(out));
    `;
    const out = jsonOf(await run(process.execPath, ['--input-type=module', '-e', code], project), 'ESM import');
    expect(out).toEqual({
      named: Array(7).fill('function'),
      defaultIsModule: true,
      dynamicSame: true,
      error: true,
      subpaths: Object.fromEntries(SUBPATHS.map((sub) => [sub, 'function'])),
    });
  }, 150_000);
});

describe('TypeScript types', () => {
  // The classic resolution (which ignores `exports`, so subpaths need typesVersions) and Node's
  // own (which reads `exports`; 'bundler' resolves our map the same way). skipLibCheck as most
  // projects have it: the declarations come from checked sources, and what they import from
  // other packages is checked by the dependency test above.
  const MODES: Array<[string, Record<string, unknown>]> = [
    ['node10', { module: 'commonjs', moduleResolution: 'node10', esModuleInterop: true }],
    ['node16', { module: 'node16', moduleResolution: 'node16' }],
  ];
  const results = new Map<string, Promise<Ran>>();

  beforeAll(() => {
    const source = readFileSync(FIXTURE, 'utf8').replace(PRAGMA, '');
    writeFileSync(join(project, 'typed-usage.ts'), source);
    for (const [mode, options] of MODES) {
      const tsconfig = {
        compilerOptions: { target: 'es2022', strict: true, noEmit: true, skipLibCheck: true, types: ['node'], ...options },
        files: ['typed-usage.ts'],
      };
      writeFileSync(join(project, `tsconfig.${mode}.json`), JSON.stringify(tsconfig));
      // Both compile at once; each test awaits its own.
      const ran = run(process.execPath, [TSC, '-p', `tsconfig.${mode}.json`], project, 240_000);
      ran.catch(() => undefined);
      results.set(mode, ran);
    }
  });

  it('the fixture is checked for real: its only pragma is the one this test removes', () => {
    const source = readFileSync(FIXTURE, 'utf8');
    expect(source).toMatch(PRAGMA);
    const checked = source.replace(PRAGMA, '');
    expect(checked).not.toMatch(/@ts-nocheck|@ts-ignore/);
    expect(checked.match(/@ts-expect-error/g)?.length).toBeGreaterThanOrEqual(3);
  });

  it.each(MODES.map(([mode]) => mode))(
    '__tests__/fixtures/typed-usage.ts compiles against the built types (moduleResolution %s)',
    async (mode) => {
      const ran = await results.get(mode)!;
      expect(ran.stdout + ran.stderr).toBe('');
      expect(ran.code).toBe(0);
    },
    250_000,
  );
});

function packageName(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

function readPackage(
  name: string,
): { dependencies?: Record<string, string>; types?: string; typings?: string; exports?: unknown } | undefined {
  const file = join(ROOT, 'node_modules', name, 'package.json');
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : undefined;
}

function shipsTypes(name: string): boolean {
  const manifest = readPackage(name);
  if (manifest === undefined) return false;
  return (
    Boolean(manifest.types ?? manifest.typings) ||
    existsSync(join(ROOT, 'node_modules', name, 'index.d.ts')) ||
    /\.d\.[cm]?ts/.test(JSON.stringify(manifest.exports ?? ''))
  );
}

/** The packages installed along with `names` (their dependencies, recursively). */
function closure(names: string[]): Set<string> {
  const seen = new Set<string>();
  const queue = [...names];
  while (queue.length > 0) {
    const name = queue.pop()!;
    if (seen.has(name)) continue;
    seen.add(name);
    queue.push(...Object.keys(readPackage(name)?.dependencies ?? {}));
  }
  return seen;
}
