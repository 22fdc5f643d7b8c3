import type { Request, Response } from 'express';
import { sanitize } from '../index';
import { LEGITIMATE } from '../__tests__/fixtures/sanitize-corpus';

// What sanitize() with default options costs per request, called directly (no HTTP, no body
// parsing) on bodies already parsed, in microseconds per request (median of 15 batches):
//
//   npx ts-node --transpile-only bench/sanitize-micro.bench.ts

const middleware = sanitize();

const BODIES: Record<string, unknown> = {
  'empty request': undefined,
  '6-field body of plain words': { name: 'Alice Smith', city: 'Springfield', title: 'Hello there', note: 'see you soon', tag: 'news', lang: 'en' },
  '6 punctuation-heavy legitimate fields': {
    name: "Seán O'Connor-Smith",
    email: 'first.last+newsletter@sub.example.co.uk',
    math: '5 > 3 && 2 < 4',
    prose: 'Please select a drop-down option; then press "OK" (or Cancel).',
    path: 'docs/guide/intro.md',
    url: 'https://example.com/a?b=1&c=2#top',
  },
  [`all ${LEGITIMATE.length} legitimate corpus strings in one body`]: { items: LEGITIMATE },
};

function run(body: unknown): void {
  const req = { url: '/', body, params: {}, headers: {} } as unknown as Request;
  middleware(req, {} as Response, (err?: unknown) => {
    if (err) throw err;
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

console.log(`node ${process.version}, sanitize() defaults called directly, µs per request (median of 15 batches)`);
for (const [name, body] of Object.entries(BODIES)) {
  const perBatch = typeof body === 'object' && body !== null && 'items' in body ? 200 : 20_000;
  for (let i = 0; i < perBatch; i++) run(body); // warm-up
  const samples: number[] = [];
  for (let batch = 0; batch < 15; batch++) {
    const started = process.hrtime.bigint();
    for (let i = 0; i < perBatch; i++) run(body);
    samples.push(Number(process.hrtime.bigint() - started) / 1e3 / perBatch);
  }
  console.log(`${name.padEnd(52)} ${median(samples).toFixed(2).padStart(9)} µs`);
}
