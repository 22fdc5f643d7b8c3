// @ts-check
/**
 * TypeDoc (`npm run docs`): the API reference from the JSDoc, written to docs/api/ (git-ignored).
 * The entry points are the package's public ones, read from package.json `exports`
 * (./dist/middleware/x.d.ts → middleware/x.ts), so a new subpath is documented without editing
 * this file.
 */
/* global require, module */
/* eslint-disable @typescript-eslint/no-require-imports -- TypeDoc loads this CommonJS file */
const pkg = require('./package.json');

const entryPoints = Object.entries(pkg.exports)
  .filter(([key]) => key !== './package.json')
  .map(([, target]) => (typeof target === 'string' ? target : target.types).replace(/^\.\/dist\//, '').replace(/\.d\.ts$/, '.ts'));

/** @type {Partial<import('typedoc').TypeDocOptions>} */
module.exports = {
  entryPoints,
  tsconfig: 'tsconfig.build.json',
  out: 'docs/api',
  readme: 'none',
  name: pkg.name,
  // Modules named as users import them: express-perimeter/rate-limit.
  plugin: ['./scripts/typedoc-subpaths.mjs'],
  includeVersion: true,
  excludePrivate: true,
  excludeInternal: true,
  // There is no public repository URL to link sources to (package.json has none on purpose).
  disableSources: true,
  // CI runs `npm run docs`: a new warning (a public signature naming an unexported type, a
  // {@link} to something the reference leaves out) fails it, so the reference does not rot.
  treatWarningsAsErrors: true,
  validation: { notExported: true, invalidLink: true, notDocumented: false },
  // Internal types that public signatures mention. Each is either an alias the public name
  // re-exports (SanitizeAction = Action), or a parameter of an internal constructor/hook users do
  // not call (stores, runtime, breaker parts). Export one instead of listing it here when users
  // are meant to name it.
  intentionallyNotExported: [
    'Action',
    'Category',
    'GetKey',
    'RedisOption',
    'StackHandler',
    'BreakerParts',
    'MemoryStores',
    'RedisConnection',
    'RedisStores',
    'ChainFields',
    'PostgresDatabase',
  ],
};
