// @ts-check
/**
 * TypeDoc plugin (typedoc.config.js): names each module of the API reference by the specifier
 * users import it with (`express-perimeter/rate-limit`), not by its source file
 * (`middleware/rate-limit`).
 */
/* global URL */
import { Converter, ReflectionKind } from 'typedoc';
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));

/** Source module name (the entry point's path without extension) → import specifier. */
const names = new Map(
  Object.entries(pkg.exports)
    .filter(([key]) => key !== './package.json')
    .map(([key, target]) => {
      const source = (typeof target === 'string' ? target : target.types).replace(/^\.\/dist\//, '').replace(/\.d\.ts$/, '');
      return [source.replace(/\/index$/, ''), key === '.' ? pkg.name : `${pkg.name}/${key.slice(2)}`];
    }),
);

/** @param {import('typedoc').Application} app */
export function load(app) {
  app.converter.on(Converter.EVENT_RESOLVE_BEGIN, (context) => {
    for (const module of context.project.getReflectionsByKind(ReflectionKind.Module)) {
      const name = names.get(module.name);
      if (name !== undefined) module.name = name;
    }
  });
}
