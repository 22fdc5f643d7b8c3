import { request, Agent, type IncomingMessage, type Server } from 'node:http';
import { Writable } from 'node:stream';
import express from 'express';
import { createStack } from '../index';

// What hostile input costs sanitize against plain input of the same size, end to end: a JSON body
// POSTed over a local socket through createStack() defaults (body parser, size limit, sanitize
// with its default modes, logs written to a null stream), timed from the first byte sent to the
// last byte of the answer. In-process, from the sources:
//
//   npx ts-node --transpile-only bench/sanitize-adversarial.bench.ts
//
// SIZES   comma list of body sizes in bytes (default 100000,1000000)
// RUNS    timed requests per pattern and size, medians reported (default 9; 25 below 200 KB)
// ONLY    comma list of pattern names to run (default: all)
// SKIP    comma list of pattern names to leave out
// SANITIZE=strip  every category in 'strip' instead of the defaults (the most rounds of judging)
//
// Each pattern is repeated until the JSON body reaches the size. The ratio is the pattern's median
// over the median of `prose` (sentences with ordinary punctuation) at the same size; `letters`
// (no punctuation, so sanitize skips it at once) is shown for scale. Requests alternate between
// patterns round by round, so drift of a shared machine hits every pattern alike.

const SIZES = list('SIZES', '100000,1000000').map(Number);
const ONLY = process.env.ONLY ? list('ONLY', '') : undefined;
const SKIP = list('SKIP', '');
const STRIP_ALL = process.env.SANITIZE === 'strip';

function list(name: string, fallback: string): string[] {
  return (process.env[name] ?? fallback).split(',').filter((s) => s !== '');
}

/** A body of about `bytes` bytes, made by a function of the string length wanted. */
type Shape = (bytes: number) => unknown;

/** One string field holding `unit` repeated to fill the body. */
const field =
  (unit: string): Shape =>
  (bytes) => {
    const escaped = JSON.stringify(unit).length - 2;
    return { text: unit.repeat(Math.max(1, Math.floor((bytes - 12) / escaped))) };
  };

/** `filler` repeated to fill the body, then `payload`. */
const padded =
  (filler: string, payload: string): Shape =>
  (bytes) => {
    const escaped = JSON.stringify(filler).length - 2;
    return { text: filler.repeat(Math.max(1, Math.floor((bytes - 12 - JSON.stringify(payload).length) / escaped))) + payload };
  };

const PROSE = 'The quick brown fox, who was 3 years old, jumps over the lazy dog (twice). Really? Yes! ';

const PATTERNS: Record<string, Shape> = {
  letters: field('abcdefghij klmnopqrstuvwxyz '),
  prose: field(PROSE),
  '&#x0': field('&#x0'),
  '%c0%ae': field('%c0%ae'),
  '&lt;': field('&lt;'),
  '%25%32%35': field('%25%32%35'),
  'nested %253C': field('%253Cscript%253E'),
  'nested &amp;lt;': field('&amp;lt;script&amp;gt;'),
  '&#x25;3C': field('&#x25;3Cimg&#x25;3E'),
  '<<<<': field('<'),
  '<a<a': field('<a'),
  '<script></script>': field('<script></script>'),
  "' OR<script></script> '1'='1": field("' OR<script></script> '1'='1"),
  "''''": field("'"),
  '""""': field('"'),
  '`': field('`'),
  '..;/': field('..;/'),
  '../': field('../'),
  '; id': field('; id'),
  '|||': field('|'),
  '$(': field('$('),
  '&&&&': field('&'),
  '%%%%': field('%'),
  'on=': field(' onload='),
  'javascript:': field('javascript:'),
  '{{': field('{{'),
  '$ne:': field('{"$ne":'),
  '<(id ': field('<(id '),
  '; cat x': field(';cat x'),
  '/*': field('/*'),
  '-- #': field("'--"),
  // Rounds: the xss strip rebuilds a nosql payload, whose strip is judged again, behind a long
  // run of what costs detection most.
  "'''' then $<script></script>ne": padded("'", '{"$<script></script>ne": 1}'),
  'prose then $<script></script>ne': padded(PROSE, '{"$<script></script>ne": 1}'),
  // Keys: as many as maxKeys allows, each as long as the size allows.
  '$-keys': (bytes) => keys(bytes, (i, n) => `$${String(i).padStart(6, '0')}${'a'.repeat(n)}`),
  '$<script></script>ne keys': (bytes) => keys(bytes, (i, n) => `$<script></script>${String(i).padStart(6, '0')}${'<b>'.repeat(n / 3)}ne`),
  // Nesting: 20 levels (the default maxDepth) of objects, fanned out up to maxKeys, each leaf a string of `&lt;`.
  'deep nesting': (bytes) => nested(bytes),
};

const MAX_KEYS = 999;

function keys(bytes: number, key: (i: number, filler: number) => string): Record<string, number> {
  const out: Record<string, number> = {};
  const filler = Math.max(1, Math.floor(bytes / MAX_KEYS) - 20);
  for (let i = 0; i < MAX_KEYS; i++) out[key(i, filler)] = i;
  return out;
}

function nested(bytes: number): unknown {
  // 49 chains of 19 nested objects under the body (49 × 20 keys = 980 < maxKeys), one leaf each.
  const chains = 49;
  const leaf = '&lt;'.repeat(Math.max(1, Math.floor(bytes / chains / 4) - 60));
  const body: Record<string, unknown> = {};
  for (let c = 0; c < chains; c++) {
    let v: unknown = leaf;
    for (let d = 0; d < 18; d++) v = { n: v };
    body[`c${c}`] = v;
  }
  return body;
}

const sink = new Writable({
  write(_chunk, _enc, cb) {
    cb();
  },
});

function app(): { server: Server; close: () => Promise<void> } {
  // createStack() defaults; only the rate limit is raised (the bench is one client sending
  // hundreds of requests) and logs go to a null stream instead of stdout.
  const sanitize = STRIP_ALL ? ({ xss: 'strip', sql: 'strip', nosql: 'strip', pathTraversal: 'strip', commandInjection: 'strip' } as const) : process.env.SANITIZE_JSON ? JSON.parse(process.env.SANITIZE_JSON) : true;
  const stack = createStack({ logger: { stream: sink }, rateLimit: { limit: 1_000_000_000 }, sanitize });
  const a = express();
  a.use(stack);
  a.post('/in', (req, res) => {
    res.json({ ok: true, keys: req.body === null || typeof req.body !== 'object' ? 0 : Object.keys(req.body as object).length });
  });
  a.use(stack.errorHandler);
  const server = a.listen(0, '127.0.0.1');
  return { server, close: () => new Promise((r) => server.close(() => void stack.close().then(() => r()))) };
}

const agent = new Agent({ keepAlive: true, maxSockets: 1 });

function post(port: number, body: Buffer): Promise<{ ms: number; cpu: number; status: number }> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const cpu = process.cpuUsage();
    const req = request(
      { host: '127.0.0.1', port, path: '/in', method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': body.length } },
      (res: IncomingMessage) => {
        res.resume();
        res.on('end', () => {
          const used = process.cpuUsage(cpu);
          resolve({ ms: Number(process.hrtime.bigint() - started) / 1e6, cpu: (used.user + used.system) / 1000, status: res.statusCode ?? 0 });
        });
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(): Promise<void> {
  const { server, close } = app();
  await new Promise((r) => server.once('listening', r));
  const port = (server.address() as { port: number }).port;
  const names = Object.keys(PATTERNS).filter((n) => n === 'prose' || n === 'letters' || ((ONLY === undefined || ONLY.includes(n)) && !SKIP.includes(n)));
  console.log(`node ${process.version}, sanitize ${STRIP_ALL ? 'with every category in strip' : 'defaults'} through createStack(), medians of timed POSTs`);
  console.log('wall: first byte sent to last byte received; cpu: this process\'s CPU time over the same span (client and server)');
  for (const size of SIZES) {
    const runs = Number(process.env.RUNS ?? (size < 200_000 ? 25 : 9));
    const bodies = new Map(names.map((n) => [n, Buffer.from(JSON.stringify(PATTERNS[n](size)))]));
    const wall = new Map(names.map((n) => [n, [] as number[]]));
    const cpu = new Map(names.map((n) => [n, [] as number[]]));
    const statuses = new Map<string, Set<number>>(names.map((n) => [n, new Set()]));
    // Two untimed rounds warm up the JIT and the socket.
    for (let round = -2; round < runs; round++) {
      for (const n of names) {
        const r = await post(port, bodies.get(n) as Buffer);
        statuses.get(n)?.add(r.status);
        if (round < 0) continue;
        wall.get(n)?.push(r.ms);
        cpu.get(n)?.push(r.cpu);
      }
    }
    const baseWall = median(wall.get('prose') as number[]);
    const baseCpu = median(cpu.get('prose') as number[]);
    console.log(`\n${size.toLocaleString('en')} bytes, ${runs} runs each`);
    console.log(`${'pattern'.padEnd(34)} ${'bytes'.padStart(9)} ${'wall ms'.padStart(8)} ${'× prose'.padStart(8)} ${'cpu ms'.padStart(8)} ${'× prose'.padStart(8)}  status`);
    const worst = { wall: { name: '', ratio: 0 }, cpu: { name: '', ratio: 0 } };
    for (const n of names) {
      const w = median(wall.get(n) as number[]);
      const c = median(cpu.get(n) as number[]);
      if (n !== 'letters' && n !== 'prose') {
        if (w / baseWall > worst.wall.ratio) worst.wall = { name: n, ratio: w / baseWall };
        if (c / baseCpu > worst.cpu.ratio) worst.cpu = { name: n, ratio: c / baseCpu };
      }
      console.log(
        `${n.padEnd(34)} ${String(bodies.get(n)?.length).padStart(9)} ${w.toFixed(1).padStart(8)} ${(w / baseWall).toFixed(2).padStart(8)} ${c.toFixed(1).padStart(8)} ${(c / baseCpu).toFixed(2).padStart(8)}  ${[...(statuses.get(n) as Set<number>)].join(',')}`,
      );
    }
    console.log(`worst: wall ${worst.wall.name} at ${worst.wall.ratio.toFixed(2)}× prose; cpu ${worst.cpu.name} at ${worst.cpu.ratio.toFixed(2)}× prose`);
  }
  agent.destroy();
  await close();
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
