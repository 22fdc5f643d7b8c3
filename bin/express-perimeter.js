#!/usr/bin/env node
'use strict';
/* global require, process, __dirname */
/* eslint-disable @typescript-eslint/no-require-imports -- a plain CommonJS entry point run by npx */

// `npx express-perimeter verify-audit audit.jsonl`, `npx express-perimeter migrate --postgres URL`:
// the logic is compiled TypeScript in dist/.
const path = require('node:path');

let cli;
try {
  cli = require(path.join(__dirname, '..', 'dist', 'lib', 'audit', 'cli.js'));
} catch (err) {
  process.stderr.write(`express-perimeter: cannot load the compiled CLI (${err && err.message}); in a source checkout run \`npm run build\` first\n`);
  process.exit(2);
}

cli.main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`express-perimeter: ${err && err.stack ? err.stack : String(err)}\n`);
    process.exitCode = 2;
  },
);
