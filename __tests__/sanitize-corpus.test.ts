import type { Server } from 'node:http';
import request from 'supertest';
import { createStack, type SanitizeOptions } from '../index';
import { DETECTORS } from '../lib/sanitize';
import { DECODE_PATTERNS, decodeOnce } from '../lib/sanitize/decode';
import { QUOTE_PATTERNS } from '../lib/sanitize/quotes';
import { settle, WALKER_PATTERNS } from '../lib/sanitize/walker';
import type { StringDetector } from '../lib/sanitize/types';
import { ATTACKS, LEGITIMATE, type AttackCase, type CorpusCategory } from './fixtures/sanitize-corpus';
import { EXPRESS_MAJOR, newApp, recordingLogger } from './helpers/app';

const CATEGORIES: CorpusCategory[] = ['xss', 'sql', 'nosql', 'pathTraversal', 'commandInjection'];
const ALL = (action: 'strip' | 'reject' | 'report' | false): SanitizeOptions => Object.fromEntries(CATEGORIES.map((c) => [c, action]));
const QUIET = { requestLogger: false, metrics: false, securityHeaders: false, ipFilter: false, sizeLimit: false, timeout: false, rateLimit: false, auditLog: false, cache: false } as const;

/** A listening app whose stack runs sanitize with `options` and echoes body and query. */
function serve(options: SanitizeOptions) {
  const { logger, lines } = recordingLogger();
  const stack = createStack({ logger, ...QUIET, sanitize: options });
  const app = newApp();
  app.set('query parser', 'extended');
  app.use(stack);
  app.all('/echo', (req, res) => {
    res.json({ body: req.body ?? null, query: req.query });
  });
  app.use(stack.errorHandler);
  const server: Server = app.listen(0);
  return { server, lines, close: () => new Promise<void>((r) => server.close(() => r())) };
}

/** Runs `fn` over `items`, `width` at a time. */
async function inBatches<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += width) await Promise.all(items.slice(i, i + width).map(fn));
}

const caught: Record<string, { total: number; body: number; query: number; missed: string[] }> = {};
const legit = { total: LEGITIMATE.length, passed: { strip: 0, reject: 0, report: 0 } as Record<string, number>, failures: [] as string[] };

afterAll(() => {
  const rows = CATEGORIES.map((c) => {
    const r = caught[c];
    return r ? `${c.padEnd(17)} ${String(r.total).padStart(4)} ${pct(r.body, r.total)} ${pct(r.query, r.total)}` : '';
  });
  const total = Object.values(caught).reduce((a, r) => ({ n: a.n + r.total, b: a.b + r.body, q: a.q + r.query }), { n: 0, b: 0, q: 0 });
  const missed = Object.values(caught).flatMap((r) => r.missed);
  console.log(
    [
      `sanitize corpus, Express ${EXPRESS_MAJOR}: attacks caught in reject mode (as a JSON field / as a query parameter)`,
      `category          cases  body  query`,
      ...rows,
      `${'overall'.padEnd(17)} ${String(total.n).padStart(4)} ${pct(total.b, total.n)} ${pct(total.q, total.n)}`,
      `legitimate inputs unchanged: ${legit.total} cases; strip ${pct(legit.passed.strip, legit.total)}, reject ${pct(legit.passed.reject, legit.total)}, report ${pct(legit.passed.report, legit.total)}`,
      `missed: ${missed.join(' | ') || 'none'}`,
    ].join('\n'),
  );
});

function pct(n: number, d: number): string {
  return `${((100 * n) / Math.max(d, 1)).toFixed(1)}%`.padStart(6);
}

describe('sanitize corpus', () => {
  it('has at least 40 attacks per category and 100 legitimate inputs', () => {
    for (const c of CATEGORIES) expect(ATTACKS.filter((a) => a.category === c).length).toBeGreaterThanOrEqual(40);
    expect(LEGITIMATE.length).toBeGreaterThanOrEqual(100);
  });

  it.each(CATEGORIES)('reject mode catches at least 90%% of %s attacks, in a JSON field and in the query', async (category) => {
    const { server, close } = serve({ ...ALL(false), [category]: 'reject' });
    const cases = ATTACKS.filter((a) => a.category === category);
    const result = { total: cases.length, body: 0, query: 0, missed: [] as string[] };
    const rejected = (res: request.Response) => res.status === 400 && res.body.error?.code === 'INPUT_REJECTED' && res.body.error.details.category === category;
    try {
      await inBatches(cases, 16, async (a: AttackCase) => {
        let inBody: boolean;
        let inQuery: boolean;
        if (a.payload !== undefined) {
          inBody = rejected(await request(server).post('/echo').send({ input: a.payload }));
          inQuery = rejected(await request(server).get(`/echo?input=${encodeURIComponent(a.payload)}`));
        } else if (a.body !== undefined) {
          inBody = rejected(await request(server).post('/echo').send(a.body));
          // The same operators written as a bracket query (username[$ne]=…).
          inQuery = rejected(await request(server).get(`/echo?${toQuery(a.body)}`));
        } else {
          inQuery = rejected(await request(server).get(`/echo?${a.query}`));
          inBody = rejected(await request(server).post('/echo').type('form').send(a.query as string));
        }
        if (inBody) result.body++;
        if (inQuery) result.query++;
        if (!inBody || !inQuery) result.missed.push(`${category}: ${JSON.stringify(a.payload ?? a.body ?? a.query)}${inBody ? ' (query)' : inQuery ? ' (body)' : ''}`);
      });
    } finally {
      await close();
    }
    caught[category] = result;
    expect(result.body / result.total).toBeGreaterThanOrEqual(0.9);
    expect(result.query / result.total).toBeGreaterThanOrEqual(0.9);
  });

  it('reject mode catches at least 90% overall', () => {
    const all = Object.values(caught);
    // Each category's test above fills `caught`; with one of them filtered out, there is nothing to sum.
    expect(all).toHaveLength(CATEGORIES.length);
    const total = all.reduce((n, r) => n + r.total, 0);
    expect(all.reduce((n, r) => n + r.body, 0) / total).toBeGreaterThanOrEqual(0.9);
    expect(all.reduce((n, r) => n + r.query, 0) / total).toBeGreaterThanOrEqual(0.9);
  });

  it.each(['strip', 'reject', 'report'] as const)('every legitimate input passes unchanged, in body and query, with every category in %s mode', async (mode) => {
    const { server, lines, close } = serve(ALL(mode));
    try {
      await inBatches(LEGITIMATE, 16, async (text) => {
        const res = await request(server).post(`/echo?input=${encodeURIComponent(text)}`).send({ input: text, nested: { list: [text] } });
        const ok = res.status === 200 && res.body.body.input === text && res.body.body.nested.list[0] === text && res.body.query.input === text;
        if (ok) legit.passed[mode]++;
        else legit.failures.push(`${mode}: ${JSON.stringify(text)} → ${res.status} ${JSON.stringify(res.body).slice(0, 120)}`);
      });
    } finally {
      await close();
    }
    expect(legit.failures.filter((f) => f.startsWith(mode))).toEqual([]);
    expect(lines.filter((l) => /^Suspicious|^More suspicious/.test(l.message))).toEqual([]);
    expect(legit.passed[mode]).toBe(LEGITIMATE.length);
  });

  it('strip cleans every attack string it fires on without falling back to dropping the whole value', () => {
    const unclean: string[] = [];
    for (const a of ATTACKS) {
      if (a.payload === undefined) continue;
      for (const d of Object.values(DETECTORS)) {
        if (!d.detect(a.payload) && !d.detect(decodeOnce(a.payload))) continue;
        if (stripAlone(d, a.payload) === undefined) unclean.push(`${d.category}: ${JSON.stringify(a.payload)}`);
      }
    }
    expect(unclean).toEqual([]);
  });

  it('strip keeps the text around an attack', () => {
    const { xss, sql, pathTraversal, commandInjection } = DETECTORS;
    expect(stripAlone(xss, '<a onmouseover="alert(document.cookie)">xxs link</a>')).toBe('xxs link');
    expect(stripAlone(xss, 'Hi <b>there</b><script>steal()</script>, see <a href="javascript:alert(1)">this</a>')).toBe('Hi there, see this');
    expect(stripAlone(sql, "user@example.com' OR '1'='1")).toBe('user@example.com');
    expect(stripAlone(pathTraversal, 'images/../../../../etc/passwd')).toBe('images');
    expect(stripAlone(commandInjection, 'file.txt; rm -rf /tmp/*')).toBe('file.txt');
  });
});

describe('sanitize patterns are linear', () => {
  const PATTERNS = [...Object.values(DETECTORS).flatMap((d) => d.patterns), ...DECODE_PATTERNS, ...QUOTE_PATTERNS, ...WALKER_PATTERNS];
  // Only catastrophic backtracking could take this long on 50–100 KB; linear scans take a few ms.
  // Measured in CPU time of this process, so other processes on a loaded machine do not count.
  const CATASTROPHIC_MS = 1000;
  const cpuMs = (since: NodeJS.CpuUsage): number => {
    const used = process.cpuUsage(since);
    return (used.user + used.system) / 1000;
  };

  it('no pattern quantifies a group that already holds an unbounded quantifier (the (a+)+ shape)', () => {
    const offenders = PATTERNS.filter((re) => nestedUnboundedQuantifier(re.source)).map((re) => re.source);
    expect(offenders).toEqual([]);
    // The checker itself must see the shape it looks for.
    expect(nestedUnboundedQuantifier('(a+)+b')).toBe(true);
    expect(nestedUnboundedQuantifier('(?:x|[ab]*c)*')).toBe(true);
    expect(nestedUnboundedQuantifier('(?:\\s|/\\*[^*]{0,64}\\*/)+')).toBe(false);
  });

  it('every pattern finishes on 100 KB runs of each character it mentions', () => {
    const slow: string[] = [];
    for (const re of PATTERNS) {
      // Sticky patterns stay sticky: they are only ever tried at one position.
      const once = new RegExp(re.source, re.flags.replace('g', ''));
      const alphabet = new Set([...re.source.replace(/\\[a-z]/gi, ''), ' ', 'a', '0', '\n']);
      for (const c of alphabet) {
        const input = c.repeat(100_000);
        const started = process.cpuUsage();
        once.test(input);
        const ms = cpuMs(started);
        if (ms > CATASTROPHIC_MS) slow.push(`${re.source.slice(0, 60)} on ${JSON.stringify(c)}: ${ms.toFixed(0)} ms`);
      }
    }
    expect(slow).toEqual([]);
  });

  it('every detector finishes detect and strip on 50 KB of its own attacks cut in half and repeated', () => {
    const slow: string[] = [];
    for (const d of Object.values(DETECTORS)) {
      const seeds = new Set(ATTACKS.filter((a) => a.category === d.category && a.payload).map((a) => (a.payload as string).slice(0, Math.ceil((a.payload as string).length / 2))));
      for (const seed of seeds) {
        const input = seed.repeat(Math.ceil(50_000 / seed.length));
        const started = process.cpuUsage();
        d.detect(input);
        d.detect(decodeOnce(input));
        d.strip(input);
        const ms = cpuMs(started);
        if (ms > CATASTROPHIC_MS) slow.push(`${d.category} on ${JSON.stringify(seed)}: ${ms.toFixed(0)} ms`);
      }
    }
    expect(slow).toEqual([]);
  });
});

/** `s` stripped by `d` alone until `d` no longer fires; undefined when the rounds ran out and the value would be dropped. */
function stripAlone(d: StringDetector, s: string): string | undefined {
  const settled = settle([{ detector: d, action: 'strip' }], s, () => undefined);
  return settled.dropped ? undefined : settled.value;
}

/** `{ a: { $ne: 1 } }` → `a[$ne]=1`. */
function toQuery(value: unknown, prefix = ''): string {
  if (value === null || typeof value !== 'object') return `${prefix}=${encodeURIComponent(String(value ?? ''))}`;
  const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v] as const) : Object.entries(value);
  return entries.map(([k, v]) => toQuery(v, prefix ? `${prefix}[${k}]` : k)).join('&');
}

/**
 * Whether a regex source quantifies a group (with *, + or {n,}) that already contains an
 * unbounded quantifier: the nested shape behind catastrophic backtracking. Bounded repeats
 * ({0,64}) and adjacency are not flagged; the timing checks above cover those.
 */
function nestedUnboundedQuantifier(source: string): boolean {
  const groups: boolean[] = [false];
  const quantifierAt = (at: number): { length: number; unbounded: boolean } | undefined => {
    const m = /^(?:[*+?]|\{(\d+)(,(\d*))?\})\??/.exec(source.slice(at, at + 24));
    if (m === null) return undefined;
    return { length: m[0].length, unbounded: m[0][0] === '*' || m[0][0] === '+' || (m[2] !== undefined && m[3] === '') };
  };
  let i = 0;
  while (i < source.length) {
    const c = source[i];
    if (c === '(') {
      groups.push(false);
      const prefix = /^\((?:\?(?::|=|!|<=|<!|<[A-Za-z_]\w*>))?/.exec(source.slice(i, i + 40)) as RegExpExecArray;
      i += prefix[0].length;
      continue;
    }
    if (c === ')') {
      const inner = groups.pop() as boolean;
      const q = quantifierAt(++i);
      if (q?.unbounded && inner) return true;
      if (q) i += q.length;
      if (inner || q?.unbounded) groups[groups.length - 1] = true;
      continue;
    }
    if (c === '|') {
      i++;
      continue;
    }
    // One atom: an escape, a character class or a literal character.
    if (c === '\\') i += 2;
    else if (c === '[') {
      i++;
      if (source[i] === '^') i++;
      if (source[i] === ']') i++;
      while (i < source.length && source[i] !== ']') i += source[i] === '\\' ? 2 : 1;
      i++;
    } else i++;
    const q = quantifierAt(i);
    if (q) {
      if (q.unbounded) groups[groups.length - 1] = true;
      i += q.length;
    }
  }
  return false;
}
