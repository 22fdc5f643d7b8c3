import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import express from 'express';
import request from 'supertest';
import { createStack, detectAttacks } from '../index';

// Detection rates of sanitize on public payload lists it was not written from (PayloadsAllTheThings
// Intruder files, fetched for the measurement and not committed):
//
//   LISTS_DIR=/path/to/lists npx ts-node --transpile-only bench/sanitize-public-lists.ts
//
// LISTS_DIR holds RSNAKE_XSS.txt, Auth_Bypass.txt, command-execution-unix.txt and
// directory_traversal.txt (from "XSS Injection/Intruders", "SQL Injection/Intruder", "Command
// Injection/Intruder" and "Directory Traversal/Intruder"). Each distinct non-empty line is one
// payload. Reported: the share detectAttacks() finds in the list's own category, and the share a
// stack with every category in 'reject' answers 400 when the payload is a JSON field.

const LISTS: Array<[file: string, category: string]> = [
  ['RSNAKE_XSS.txt', 'xss'],
  ['Auth_Bypass.txt', 'sql'],
  ['command-execution-unix.txt', 'commandInjection'],
  ['directory_traversal.txt', 'pathTraversal'],
];

async function main(): Promise<void> {
  const dir = process.env.LISTS_DIR;
  if (!dir) throw new Error('LISTS_DIR: expected the directory holding the four list files');
  const sink = new Writable({
    write(_chunk, _enc, cb) {
      cb();
    },
  });
  const reject = { xss: 'reject', sql: 'reject', nosql: 'reject', pathTraversal: 'reject', commandInjection: 'reject' } as const;
  const stack = createStack({ logger: { stream: sink }, rateLimit: false, sanitize: reject });
  const app = express();
  app.use(stack);
  app.post('/in', (_req, res) => {
    res.json({ ok: true });
  });
  app.use(stack.errorHandler);
  const server = app.listen(0, '127.0.0.1');
  try {
    console.log(`${'list'.padEnd(28)} ${'payloads'.padStart(8)} ${'detectAttacks, own category'.padStart(28)} ${'rejected by the stack'.padStart(22)}`);
    for (const [file, category] of LISTS) {
      const payloads = [...new Set(readFileSync(join(dir, file), 'utf8').split(/\r?\n/).filter((l) => l.trim() !== ''))];
      let own = 0;
      let rejected = 0;
      const missed: string[] = [];
      for (const payload of payloads) {
        const found = detectAttacks(payload).includes(category as never);
        if (found) own++;
        const res = await request(server).post('/in').send({ input: payload });
        if (res.status === 400) rejected++;
        if (!found && res.status !== 400) missed.push(payload);
      }
      const pct = (n: number) => `${((100 * n) / payloads.length).toFixed(1)}%`;
      console.log(`${file.padEnd(28)} ${String(payloads.length).padStart(8)} ${pct(own).padStart(28)} ${pct(rejected).padStart(22)}`);
      if (process.env.MISSED) for (const m of missed) console.log(`  missed: ${JSON.stringify(m)}`);
    }
  } finally {
    server.close();
    await stack.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
