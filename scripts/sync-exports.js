#!/usr/bin/env node
// @ts-check
/**
 * Regenerates package.json `exports` (and `typesVersions`) from middleware/*.ts, so every
 * middleware is its own subpath (`express-perimeter/rate-limit`) without anyone editing the map.
 *
 *   node scripts/sync-exports.js          rewrite package.json when the map is out of date
 *   node scripts/sync-exports.js --check  exit 1 (and say what differs) instead of writing
 *
 * Under CI=true it never writes: a build in CI must not change the package it is testing.
 */
'use strict';
/* global require, module, process, __dirname */
/* eslint-disable @typescript-eslint/no-require-imports -- a plain CommonJS script: it runs before any build */

const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const KEBAB = /^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$/;

/** Subpath names (kebab-case) of the middleware files under `root/middleware`, sorted. */
function middlewareNames(root = ROOT) {
  const dir = path.join(root, 'middleware');
  const names = fs
    .readdirSync(dir)
    .filter((file) => file.endsWith('.ts') && !file.endsWith('.d.ts') && !file.endsWith('.test.ts'))
    .map((file) => file.slice(0, -'.ts'.length))
    .sort();
  const bad = names.filter((name) => !KEBAB.test(name));
  if (bad.length > 0) {
    // The file name becomes the public subpath, so it must already be the kebab-case the API promises.
    throw new Error(
      `middleware/${bad[0]}.ts: middleware file names must be kebab-case (like rate-limit.ts), as they become package subpaths`,
    );
  }
  return names;
}

/** Subpaths that are not middleware files, as `name: path under dist without extension`. */
const EXTRA_SUBPATHS = { openfeature: 'openfeature/index' };

/** `rate-limit` → `rateLimit`: the name each subpath module exports its factory under. */
function camelCase(kebab) {
  return kebab.replace(/-([a-z0-9])/g, (_match, char) => char.toUpperCase());
}

/** The `exports`, `typesVersions`, `main` and `types` fields package.json should have. */
function expectedFields(root = ROOT) {
  const names = middlewareNames(root);
  /** @type {Record<string, unknown>} */
  const exportsMap = { '.': { types: './dist/index.d.ts', default: './dist/index.js' } };
  /** @type {Record<string, string[]>} */
  const typesMap = {};
  for (const name of names) {
    exportsMap[`./${name}`] = { types: `./dist/middleware/${name}.d.ts`, default: `./dist/middleware/${name}.js` };
    // TypeScript's classic `moduleResolution: node` ignores `exports`; typesVersions gives it the subpaths.
    typesMap[name] = [`dist/middleware/${name}.d.ts`];
  }
  // Entry points that are not middleware: the OpenFeature provider.
  for (const [name, file] of Object.entries(EXTRA_SUBPATHS)) {
    exportsMap[`./${name}`] = { types: `./dist/${file}.d.ts`, default: `./dist/${file}.js` };
    typesMap[name] = [`dist/${file}.d.ts`];
  }
  exportsMap['./package.json'] = './package.json';
  return { main: 'dist/index.js', types: 'dist/index.d.ts', exports: exportsMap, typesVersions: { '*': typesMap } };
}

/**
 * package.json with the generated fields in place. Fields it already has keep their position;
 * new ones go right after `types`, where a reader looks for the entry points.
 */
function syncedPackage(pkg, fields) {
  const out = {};
  for (const [key, value] of Object.entries(pkg)) {
    out[key] = key in fields ? fields[key] : value;
    if (key === 'types') {
      for (const [field, fieldValue] of Object.entries(fields)) if (!(field in pkg)) out[field] = fieldValue;
    }
  }
  for (const [field, fieldValue] of Object.entries(fields)) if (!(field in out)) out[field] = fieldValue;
  return out;
}

/** The generated fields whose current value differs from the expected one. */
function staleFields(pkg, fields) {
  return Object.keys(fields).filter((field) => JSON.stringify(pkg[field]) !== JSON.stringify(fields[field]));
}

/** Human-readable differences between the current and the expected fields. */
function describeDiff(pkg, fields) {
  const have = Object.keys(pkg.exports ?? {});
  const want = Object.keys(fields.exports);
  const lines = [];
  for (const key of want) if (!have.includes(key)) lines.push(`  missing subpath ${key}`);
  for (const key of have) if (!want.includes(key)) lines.push(`  stale subpath ${key} (no middleware file for it)`);
  for (const field of staleFields(pkg, fields)) lines.push(`  field "${field}" differs from what scripts/sync-exports.js generates`);
  return lines.join('\n');
}

function main(argv) {
  const check = argv.includes('--check') || process.env.CI === 'true';
  const file = path.join(ROOT, 'package.json');
  const pkg = JSON.parse(fs.readFileSync(file, 'utf8'));
  const fields = expectedFields(ROOT);
  const count = Object.keys(fields.exports).length;
  // Compared as data, not text, so a reformatted package.json is not "out of date".
  if (staleFields(pkg, fields).length === 0) {
    process.stdout.write(`sync-exports: package.json exports are up to date (${count} entries)\n`);
    return 0;
  }
  if (check) {
    process.stderr.write(
      `sync-exports: package.json exports are out of date with middleware/*.ts:\n${describeDiff(pkg, fields)}\n` +
        'Run `node scripts/sync-exports.js` (or `npm run build`) outside CI and commit package.json.\n',
    );
    return 1;
  }
  // Re-read just before writing: someone may have run `npm install` meanwhile.
  const latest = JSON.parse(fs.readFileSync(file, 'utf8'));
  fs.writeFileSync(file, `${JSON.stringify(syncedPackage(latest, fields), null, 2)}\n`);
  process.stdout.write(`sync-exports: wrote ${count} entries to package.json exports\n`);
  return 0;
}

module.exports = { middlewareNames, camelCase, expectedFields };

if (require.main === module) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`sync-exports: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  }
}
