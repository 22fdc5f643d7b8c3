#!/usr/bin/env node
// @ts-check
/**
 * Code-block checker: every ```ts block of README.md and docs/*.md is type-checked with
 * `tsc --strict` (no skipLibCheck) against the package as `npm pack` ships it, the way a user who
 * pastes it into a CommonJS TypeScript project would compile it.
 *
 *   node scripts/test-docs.js                   README.md and docs/*.md
 *   node scripts/test-docs.js docs/auth.md      only these files (paths relative to the repo)
 *   node scripts/test-docs.js --keep            keep the generated project (its path is printed)
 *
 * Rules (issue #16):
 * - A block that imports (`import … from`, `require(…)`) is complete on its own.
 * - A block without imports may use `express`, `app` and the package's exports as if imported:
 *   the checker puts one line in front of it, `import express from 'express'; import { <the
 *   exports the block names> } from 'express-perimeter'; const app = express();` (without the names
 *   the block declares itself).
 * - A block whose first line is `// not compiled` is skipped but counted; more than 10% skipped
 *   fails the run.
 * - A block may import other packages only if they are among this repo's dependencies or
 *   devDependencies (migration pages compare with express-rate-limit, helmet, cors…); any other
 *   package must be `// not compiled`.
 * Every block is a module file of its own, and all of them are checked in one program (one parse of
 * the libraries). Errors are reported as `file:line` of the Markdown.
 */
'use strict';
/* global require, module, process */
/* eslint-disable @typescript-eslint/no-require-imports -- a plain CommonJS script, like sync-exports.js */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { builtinModules } = require('node:module');
const { COMPILER_OPTIONS } = require('./test-types.js');
const { ROOT, PKG, packedProject, linkFromRoot } = require('./packed-project.js');

const SKIP_MARK = /^\/\/\s*not compiled\b/i;
const MAX_SKIPPED = 0.1;
const LANGUAGES = new Set(['ts', 'typescript']);
// A user's strict project; only @types/node is loaded globally (this repo's @types also hold jest's).
const OPTIONS = { ...COMPILER_OPTIONS, types: ['node'] };

/** README.md and docs/*.md (not the generated docs/api/), relative to `root`. */
function defaultFiles(root) {
  const docs = path.join(root, 'docs');
  const pages = fs.existsSync(docs)
    ? fs
        .readdirSync(docs)
        .filter((file) => file.endsWith('.md'))
        .sort()
        .map((file) => path.join('docs', file))
    : [];
  return ['README.md', ...pages].filter((file) => fs.existsSync(path.join(root, file)));
}

/**
 * The fenced code blocks of one Markdown text whose info string is ts/typescript, with the
 * 1-based line of their first code line. Fences follow CommonMark: ``` or ~~~, closed by the same
 * character at least as long; a ```ts inside a longer fence (a Markdown sample) is not a block.
 */
function extractBlocks(file, text) {
  const lines = text.split(/\r?\n/);
  const blocks = [];
  let open;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (open === undefined) {
      const m = /^(\s*)(`{3,}|~{3,})\s*([^\s`{]*)/.exec(line);
      if (m) open = { indent: m[1].length, fence: m[2], lang: m[3].toLowerCase(), start: i + 1, code: [] };
      continue;
    }
    const close = /^\s*(`{3,}|~{3,})\s*$/.exec(line);
    if (close && close[1][0] === open.fence[0] && close[1].length >= open.fence.length) {
      if (LANGUAGES.has(open.lang)) blocks.push({ file, line: open.start + 1, code: open.code.join('\n') });
      open = undefined;
      continue;
    }
    // Indented fences (in list items) indent their content the same way.
    open.code.push(line.slice(Math.min(open.indent, line.length - line.trimStart().length)));
  }
  return blocks;
}

/** Module specifiers a block imports (import/export … from, import '…', import(…), require(…)). */
function importsOf(code) {
  const specifiers = [];
  const patterns = [/^\s*(?:import|export)\s[^'"]*?\sfrom\s*['"]([^'"]+)['"]/gm, /^\s*import\s*['"]([^'"]+)['"]/gm, /\b(?:require|import)\(\s*['"]([^'"]+)['"]\s*\)/g];
  for (const pattern of patterns) for (const m of code.matchAll(pattern)) specifiers.push(m[1]);
  return specifiers;
}

function packageName(specifier) {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

const BUILTINS = new Set(builtinModules);
/** Why a block may not import `specifier` here, or undefined when it may. */
function refusedImport(specifier, packages) {
  if (specifier.startsWith('node:') || BUILTINS.has(specifier)) return undefined;
  if (specifier.startsWith('.')) return `imports '${specifier}', a file of the reader's project: start the block with \`// not compiled\``;
  const name = packageName(specifier);
  if (name === PKG.name || packages.has(name)) return undefined;
  return `imports '${name}', which is not a dependency or devDependency of ${PKG.name}: start the block with \`// not compiled\` (or add the package to devDependencies)`;
}

/** Names a block declares at its top level or anywhere (a superset is fine: they are only left out of the prelude). */
function declaredNames(block) {
  // Comments say "the wrong type" too: they are not declarations.
  const code = block.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|\s)\/\/.*$/gm, '$1');
  const names = new Set();
  for (const m of code.matchAll(/\b(?:const|let|var|function|class|interface|type|enum|namespace)[ \t]+([A-Za-z_$][\w$]*)/g)) names.add(m[1]);
  for (const m of code.matchAll(/\b(?:const|let|var)\s*[{[]([^}\]=]*)[}\]]\s*=/g)) {
    for (const part of m[1].split(',')) {
      const local = part.split(':').pop()?.split('=')[0].replace('...', '').trim();
      if (local && /^[A-Za-z_$][\w$]*$/.test(local)) names.add(local);
    }
  }
  return names;
}

/** The one-line prelude of a block without imports (see the rules above). */
function preludeFor(code, exportNames) {
  const declared = declaredNames(code);
  const used = new Set(code.match(/[A-Za-z_$][\w$]*/g) ?? []);
  const names = [...exportNames].filter((name) => used.has(name) && !declared.has(name)).sort();
  const parts = [];
  if (!declared.has('express')) parts.push(`import express from 'express';`);
  if (names.length > 0) parts.push(`import { ${names.join(', ')} } from '${PKG.name}';`);
  if (used.has('app') && !declared.has('app') && !declared.has('express')) parts.push('const app = express();');
  return parts.join(' ');
}

/** A compiler host that parses each file once, however many programs use it. */
function cachingHost(ts, options) {
  const host = ts.createCompilerHost(options);
  const parsed = new Map();
  const getSourceFile = host.getSourceFile;
  host.getSourceFile = (fileName, languageVersion, ...rest) => {
    let file = parsed.get(fileName);
    if (file === undefined) {
      file = getSourceFile.call(host, fileName, languageVersion, ...rest);
      parsed.set(fileName, file);
    }
    return file;
  };
  return host;
}

/** The names `express-perimeter` exports (values and types), read from the packed declarations. */
function packageExports(ts, dir, options, host) {
  const probe = path.join(dir, 'exports-probe.ts');
  fs.writeFileSync(probe, `import * as perimeter from '${PKG.name}';\nexport { perimeter };\n`);
  const program = ts.createProgram({ rootNames: [probe], options, host });
  const checker = program.getTypeChecker();
  const source = program.getSourceFile(probe);
  const declaration = source?.statements[0];
  const symbol = declaration && ts.isImportDeclaration(declaration) ? checker.getSymbolAtLocation(declaration.moduleSpecifier) : undefined;
  if (symbol === undefined) throw new Error(`the packed ${PKG.name} cannot be resolved from ${dir} (is "types" in its exports map?)`);
  return new Set(checker.getExportsOfModule(symbol).map((s) => s.getName()));
}

function parseArgs(argv) {
  const args = { keep: false, root: ROOT, files: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--keep') args.keep = true;
    else if (argv[i] === '--root') args.root = path.resolve(argv[++i]);
    else if (argv[i].startsWith('--')) throw new Error(`unknown option ${argv[i]} (see the top of scripts/test-docs.js)`);
    else args.files.push(argv[i]);
  }
  return args;
}

async function main(argv) {
  const started = Date.now();
  const args = parseArgs(argv);
  const files = args.files.length > 0 ? args.files : defaultFiles(args.root);
  const blocks = files.flatMap((file) => extractBlocks(file, fs.readFileSync(path.join(args.root, file), 'utf8')));
  const skipped = blocks.filter((block) => SKIP_MARK.test(block.code.trimStart()));
  const compiled = blocks.filter((block) => !skipped.includes(block));
  const packages = new Set([...Object.keys(PKG.dependencies ?? {}), ...Object.keys(PKG.peerDependencies ?? {}), ...Object.keys(PKG.devDependencies ?? {})]);

  const failures = [];
  let packedAt = started;
  /** `file:line` of every block with an error. */
  const failedBlocks = new Set();
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'perimeter-docs-'));
  try {
    const dir = path.join(base, 'project');
    await packedProject(dir);
    packedAt = Date.now();
    const ts = require(path.join(ROOT, 'node_modules', 'typescript'));
    const options = ts.convertCompilerOptionsFromJson(OPTIONS, dir).options;
    const host = cachingHost(ts, options);
    const exportNames = packageExports(ts, dir, options, host);

    fs.mkdirSync(path.join(dir, 'blocks'));
    /** Generated file → its block and the number of prelude lines before the block's code. */
    const sources = new Map();
    for (const block of compiled) {
      const refused = importsOf(block.code)
        .map((specifier) => refusedImport(specifier, packages))
        .filter((reason) => reason !== undefined);
      if (refused.length > 0) {
        failures.push(...refused.map((reason) => `${block.file}:${block.line}: ${reason}`));
        failedBlocks.add(`${block.file}:${block.line}`);
        continue;
      }
      for (const specifier of importsOf(block.code)) {
        const name = packageName(specifier);
        if (name !== PKG.name && !specifier.startsWith('node:') && !BUILTINS.has(specifier)) linkFromRoot(dir, name);
      }
      const prelude = importsOf(block.code).length > 0 ? '' : preludeFor(block.code, exportNames);
      const name = `${block.file.replace(/[^A-Za-z0-9]+/g, '-')}-L${block.line}.ts`;
      const file = path.join(dir, 'blocks', name);
      // `export {}` makes every block a module: blocks never see each other's declarations.
      fs.writeFileSync(file, `${prelude}\n${block.code}\nexport {};\n`);
      sources.set(file, { block, offset: 1 });
    }

    const program = ts.createProgram({ rootNames: [...sources.keys()], options, host });
    const diagnostics = ts.getPreEmitDiagnostics(program);
    for (const diagnostic of diagnostics) {
      const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n    ');
      const source = diagnostic.file && sources.get(path.resolve(diagnostic.file.fileName));
      if (source) failedBlocks.add(`${source.block.file}:${source.block.line}`);
      if (diagnostic.file && diagnostic.start !== undefined && source) {
        const { line, character } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start);
        if (line < source.offset) {
          failures.push(`${source.block.file}:${source.block.line}: (the generated prelude) TS${diagnostic.code}: ${message}`);
          continue;
        }
        const codeLine = source.block.code.split('\n')[line - source.offset] ?? '';
        failures.push(
          `${source.block.file}:${source.block.line + line - source.offset}:${character + 1}: TS${diagnostic.code}: ${message}\n    | ${codeLine.trim()}`,
        );
      } else if (diagnostic.file && diagnostic.start !== undefined) {
        // In a declaration file: the packed package (or a dependency's types) is broken, not the docs.
        const { line, character } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start);
        failures.push(`${path.relative(dir, diagnostic.file.fileName)}:${line + 1}:${character + 1}: TS${diagnostic.code}: ${message}`);
      } else {
        failures.push(`TS${diagnostic.code}: ${message}`);
      }
    }
    if (args.keep) process.stdout.write(`kept ${base}\n`);
  } finally {
    if (!args.keep) fs.rmSync(base, { recursive: true, force: true });
  }

  const share = blocks.length === 0 ? 0 : skipped.length / blocks.length;
  for (const failure of failures) process.stdout.write(`${failure}\n`);
  const percent = `${(share * 100).toFixed(0)}%`;
  if (share > MAX_SKIPPED) {
    process.stdout.write(
      `${skipped.length} of ${blocks.length} blocks (${percent}) are \`// not compiled\`, more than ${MAX_SKIPPED * 100}%: make some complete\n` +
        skipped.map((block) => `  ${block.file}:${block.line}\n`).join(''),
    );
  }
  process.stdout.write(
    `docs code blocks: ${blocks.length} in ${files.length} files, ${compiled.length} compiled, ${skipped.length} skipped (${percent}), ` +
      `${failedBlocks.size} with errors (${failures.length} errors); ` +
      `${((Date.now() - started) / 1000).toFixed(1)}s (build and pack ${((packedAt - started) / 1000).toFixed(1)}s)\n`,
  );
  return failures.length === 0 && share <= MAX_SKIPPED ? 0 : 1;
}

module.exports = { extractBlocks, importsOf, declaredNames, preludeFor };

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`test-docs: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
