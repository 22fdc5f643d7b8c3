import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

// The shape of examples/ that `npm run test:examples` (scripts/test-examples.js) relies on,
// checked in milliseconds here so a new example missing a piece fails before CI's examples step,
// which compiles and runs them.

const ROOT = resolve(__dirname, '..');
const EXAMPLES = join(ROOT, 'examples');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string };
// eslint-disable-next-line @typescript-eslint/no-require-imports -- the CommonJS runner, so test and CI agree on the list
const { SMOKE } = require('../scripts/test-examples.js') as { SMOKE: Record<string, unknown> };
const names = readdirSync(EXAMPLES, { withFileTypes: true })
  .filter((entry) => entry.isDirectory())
  .map((entry) => entry.name);

describe('examples/', () => {
  it('holds at least three apps, each with smoke questions in scripts/test-examples.js, and no questions for a missing app', () => {
    expect(names.length).toBeGreaterThanOrEqual(3);
    expect(Object.keys(SMOKE).sort()).toEqual([...names].sort());
  });

  describe.each(names)('%s', (name) => {
    const dir = join(EXAMPLES, name);
    const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
      scripts?: Record<string, string>;
      dependencies?: Record<string, string>;
      devDependencies?: Record<string, string>;
    };

    it('has a README and a tsconfig that is strict without skipLibCheck', () => {
      expect(existsSync(join(dir, 'README.md'))).toBe(true);
      const { compilerOptions } = JSON.parse(readFileSync(join(dir, 'tsconfig.json'), 'utf8')) as { compilerOptions: Record<string, unknown> };
      expect(compilerOptions.strict).toBe(true);
      expect(compilerOptions.skipLibCheck).toBeUndefined();
    });

    it('depends on the packed tarball of this version, and otherwise only on packages this repo has', () => {
      expect(manifest.dependencies?.[pkg.name]).toBe(`file:../../${pkg.name}-${pkg.version}.tgz`);
      const others = [...Object.keys(manifest.dependencies ?? {}), ...Object.keys(manifest.devDependencies ?? {})].filter((dep) => dep !== pkg.name);
      expect(others.filter((dep) => !existsSync(join(ROOT, 'node_modules', dep, 'package.json')))).toEqual([]);
    });

    it('starts with `node <compiled file>` and builds with tsc', () => {
      expect(manifest.scripts?.start).toMatch(/^node \S+\.js$/);
      expect(manifest.scripts?.build).toMatch(/^tsc\b/);
    });
  });
});
