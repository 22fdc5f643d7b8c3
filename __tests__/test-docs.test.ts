import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';

// The code-block checker (scripts/test-docs.js, `npm run test:docs`) run on a small fixture set
// of Markdown (__tests__/fixtures/docs-check): what it compiles, what it refuses, and where it
// says the mistake is. CI runs it on README.md and docs/ themselves.

const ROOT = resolve(__dirname, '..');
const RUNNER = join(ROOT, 'scripts', 'test-docs.js');
const FIXTURES = join(__dirname, 'fixtures', 'docs-check');

// eslint-disable-next-line @typescript-eslint/no-require-imports -- the CommonJS script under test
const checker = require('../scripts/test-docs.js') as {
  extractBlocks(file: string, text: string): Array<{ file: string; line: number; code: string }>;
  preludeFor(code: string, exportNames: Set<string>): string;
};

function runChecker(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [RUNNER, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk));
    child.stderr.on('data', (chunk: Buffer) => (out += chunk));
    child.on('error', fail);
    child.on('close', (code) => done({ code, out }));
  });
}

describe('extracting blocks', () => {
  it('takes ```ts and ```typescript fences with the line of their first code line, not other languages or samples inside longer fences', () => {
    const text = ['# T', '```ts', 'a();', '```', '````md', '```ts', 'sample();', '```', '````', '- item', '  ```typescript', '  b();', '  ```', '```js', 'c();', '```'].join('\n');
    expect(checker.extractBlocks('x.md', text)).toEqual([
      { file: 'x.md', line: 3, code: 'a();' },
      { file: 'x.md', line: 12, code: 'b();' },
    ]);
  });
});

describe('the prelude of a block without imports', () => {
  const exportsOf = new Set(['createStack', 'rateLimit', 'StackConfig', 'cors']);

  it('imports express, the exports the block names and creates app', () => {
    expect(checker.preludeFor("const config: StackConfig = {};\napp.use(createStack(config));", exportsOf)).toBe(
      "import express from 'express'; import { StackConfig, createStack } from 'express-perimeter'; const app = express();",
    );
  });

  it('leaves out what the block declares itself, and names that are only in comments', () => {
    const code = "const app = express();\nconst cors = (): void => undefined; // the wrong type\ncreateStack({});";
    expect(checker.preludeFor(code, exportsOf)).toBe("import express from 'express'; import { createStack } from 'express-perimeter';");
  });
});

describe('npm run test:docs on the fixtures', () => {
  let ran: { code: number | null; out: string };
  beforeAll(async () => {
    ran = await runChecker(['--root', FIXTURES]);
  }, 240_000);

  it('compiles the correct blocks of README.md: the generated prelude and a block that imports', () => {
    expect(ran.out.split('\n').filter((line) => line.startsWith('README.md'))).toEqual([]);
    expect(ran.out).toContain('docs code blocks: 5 in 2 files, 4 compiled, 1 skipped (20%)');
  });

  it('reports a type error at the Markdown file and line of the mistake, with the line itself', () => {
    expect(ran.out).toMatch(/^docs\/page\.md:5:\d+: TS2561: .*'rateLimt'/m);
    expect(ran.out).toContain('    | app.use(stack, createStack({ rateLimt: { limit: 5 } }));');
  });

  it('refuses an import of a package that is not a dependency or devDependency, naming the fix', () => {
    expect(ran.out).toMatch(/^docs\/page\.md:14: imports 'opossum', .*start the block with `\/\/ not compiled`/m);
  });

  it('fails when more than 10% of the blocks are `// not compiled`, listing them', () => {
    expect(ran.out).toContain('1 of 5 blocks (20%) are `// not compiled`, more than 10%');
    expect(ran.out).toContain('  docs/page.md:9\n');
    expect(ran.code).toBe(1);
  });
});
