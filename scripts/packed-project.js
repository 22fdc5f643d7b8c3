// @ts-check
/**
 * A throwaway project that holds the package as `npm pack` ships it, for the scripts that check
 * what users get (test-docs.js, test-examples.js).
 *
 * The tarball is unpacked into `<dir>/node_modules/express-perimeter`, which is what `npm install
 * <tarball>` puts there; its dependencies (and whatever else the caller names) are symlinks to
 * this repo's node_modules, so the versions are the lockfile's and nothing is fetched from the
 * registry. What is checked is the packed file set and its `exports` map: a file missing from
 * `files` or a subpath missing from `exports` fails as it would for a user. (The full install from
 * the registry under every @types pair is test-types.js's job.)
 */
'use strict';
/* global require, module, __dirname */
/* eslint-disable @typescript-eslint/no-require-imports -- a plain CommonJS script, like sync-exports.js */

const fs = require('node:fs');
const path = require('node:path');
const { ensureBuilt, pack, run } = require('./test-types.js');

const ROOT = path.resolve(__dirname, '..');
const PKG = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));

/** Names a user's project would have beside the package: its dependencies and peers, and their types. */
function packageNeeds() {
  return [...Object.keys(PKG.dependencies ?? {}), ...Object.keys(PKG.peerDependencies ?? {})];
}

/** Symlinks `<dir>/node_modules/<name>` to this repo's copy; false when this repo has none. */
function linkFromRoot(dir, name, target = name) {
  const from = path.join(ROOT, 'node_modules', target);
  if (!fs.existsSync(from)) return false;
  const to = path.join(dir, 'node_modules', name);
  if (fs.existsSync(to)) return true;
  fs.mkdirSync(path.dirname(to), { recursive: true });
  fs.symlinkSync(from, to, 'dir');
  return true;
}

/**
 * Builds dist/ if it is stale, packs, and makes `dir` a CommonJS project whose node_modules hold
 * the unpacked package, its dependencies and peers, every @types package of this repo and
 * `extra` (names of this repo's node_modules). Returns the tarball's path.
 */
async function packedProject(dir, extra = []) {
  await ensureBuilt();
  fs.mkdirSync(path.join(dir, 'node_modules', 'express-perimeter'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: path.basename(dir), private: true }));
  const tarball = await pack(dir);
  const untar = await run('tar', ['-xzf', tarball, '-C', path.join(dir, 'node_modules', 'express-perimeter'), '--strip-components=1']);
  if (untar.code !== 0) throw new Error(`tar -xzf ${tarball} failed (exit ${untar.code}):\n${untar.out}`);
  // @types first, whole: a scoped dependency (@types/cors) then finds its place already linked.
  for (const name of ['@types', ...packageNeeds(), ...extra]) linkFromRoot(dir, name);
  return tarball;
}

module.exports = { ROOT, PKG, packedProject, linkFromRoot };
