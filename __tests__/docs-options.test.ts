import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import '../index';
import { describeOptions } from '../lib/options';

// Each factory's options table (lib/options.ts) against its docs page: an option added to the code
// is documented, under its own name, on the page named after the middleware (#16).
const DOCS = join(__dirname, '..', 'docs');
const kebab = (name: string): string => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
const pageOf = (factory: string): string => `${kebab(factory.split('.')[0])}.md`;

describe('docs/<middleware>.md names every option of its table', () => {
  const byFactory = new Map<string, string[]>();
  for (const row of describeOptions()) byFactory.set(row.factory, [...(byFactory.get(row.factory) ?? []), row.key]);

  it('covers the factories of the stack', () => {
    expect(byFactory.size).toBeGreaterThanOrEqual(20);
  });

  it.each([...byFactory.keys()])('%s', (factory) => {
    const page = readFileSync(join(DOCS, pageOf(factory)), 'utf8');
    const missing = (byFactory.get(factory) ?? []).filter((key) => !page.includes(`\`${key}\``));
    expect(missing).toEqual([]);
  });
});
