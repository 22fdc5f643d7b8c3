import { spawn } from 'node:child_process';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

// The type-test runner (scripts/test-types.js) in its --local mode: the fixtures of
// __tests__/types compiled once against this repo's @types, with a canary of each kind beside
// them. CI runs the same fixtures under every supported @types/node × @types/express pair
// (`npm run test:types`); this keeps a broken fixture or runner from waiting for that step.

const ROOT = resolve(__dirname, '..');
const FIXTURES = join(__dirname, 'types');
const RUNNER = join(ROOT, 'scripts', 'test-types.js');

// A mistake that compiles (its @ts-expect-error is unused), and an entry point compiled alone that fails.
const CANARY = "// @ts-expect-error a canary: this line compiles, so the runner must fail\nexport const fine: number = 1;\n";
const CANARY_ALONE = "import 'express-perimeter/request-id';\nexport const wrong: number = 'not a number';\n";

function runLocal(fixtures: string): Promise<{ code: number | null; out: string }> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [RUNNER, '--local', '--fixtures', fixtures], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk));
    child.stderr.on('data', (chunk: Buffer) => (out += chunk));
    child.on('error', fail);
    child.on('close', (code) => done({ code, out }));
  });
}

describe('type tests (scripts/test-types.js --local)', () => {
  let dir: string;
  let ran: { code: number | null; out: string };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'perimeter-type-fixtures-'));
    for (const file of readdirSync(FIXTURES)) copyFileSync(join(FIXTURES, file), join(dir, file));
    writeFileSync(join(dir, 'canary.ts'), CANARY);
    writeFileSync(join(dir, 'canary-only.ts'), CANARY_ALONE);
    ran = await runLocal(dir);
  }, 240_000);

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reports no error in the fixtures of __tests__/types: realistic usage compiles and every marked mistake fails (#12)', () => {
    const errors = ran.out.split('\n').filter((line) => /error TS\d+/.test(line));
    expect(errors.filter((line) => !/canary/.test(line))).toEqual([]);
  });

  it('fails the run on a marked mistake that compiles and on an entry point that does not (#12)', () => {
    expect(ran.code).toBe(1);
    expect(ran.out).toMatch(/canary\.ts\(1,1\): error TS2578: Unused '@ts-expect-error' directive/);
    expect(ran.out).toMatch(/canary-only\.ts\(2,14\): error TS2322/);
  });

  it('compiles every subpath of the exports map alone, so each brings the Request augmentation (#12)', () => {
    const exported = Object.keys(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).exports).filter(
      (key) => key !== '.' && key !== './package.json',
    );
    const fixtures = readdirSync(FIXTURES);
    const main = fixtures.filter((file) => !file.endsWith('-only.ts')).length + 1;
    const alone = fixtures.filter((file) => file.endsWith('-only.ts')).length + 1 + exported.length;
    expect(ran.out).toContain(`(${main} fixtures in one program, ${alone} alone;`);
  });
});
