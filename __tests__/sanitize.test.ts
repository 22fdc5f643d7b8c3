import type { Express, RequestHandler } from 'express';
import request from 'supertest';
import { ConfigError, createStack, sanitize, type SanitizeOptions } from '../index';
import { EXPRESS_MAJOR, loadExpress, newApp, recordingLogger } from './helpers/app';

// Every other default-on middleware off, so these tests see only sanitize (plus request ids and
// body parsing); `false` is accepted for entries this build does not have.
const QUIET = {
  requestLogger: false,
  metrics: false,
  securityHeaders: false,
  ipFilter: false,
  sizeLimit: false,
  timeout: false,
  rateLimit: false,
  auditLog: false,
  cache: false,
} as const;

/** An app whose stack runs sanitize with `options`; every route echoes what the handler sees. */
function appWith(options: SanitizeOptions | false = {}, setup?: (app: Express) => void) {
  const { logger, lines } = recordingLogger();
  const stack = createStack({ logger, ...QUIET, sanitize: options });
  const app = newApp();
  app.set('query parser', 'extended');
  setup?.(app);
  app.use(stack);
  const echo: RequestHandler = (req, res) => {
    res.json({ body: req.body ?? null, query: req.query, params: req.params });
  };
  app.post('/echo', echo);
  app.get('/echo', echo);
  app.use(stack.errorHandler);
  return { app, stack, lines };
}

const detections = async (stack: ReturnType<typeof createStack>) =>
  (await stack.metricsRegistry.getSingleMetric('sanitize_detections_total')?.get())?.values ?? [];

const ALL_OFF: SanitizeOptions = { xss: false, sql: false, nosql: false, pathTraversal: false, commandInjection: false };

describe('sanitize', () => {
  describe('per category and mode, in the body', () => {
    const cases: Array<[keyof typeof ALL_OFF, string, string]> = [
      // category, attack, what strip leaves of it
      ['xss', 'Nice post<script>alert(document.cookie)</script>!', 'Nice post!'],
      ['sql', "alice@example.com' OR '1'='1", 'alice@example.com'],
      ['nosql', "admin' || '1'=='1", 'admin'],
      ['pathTraversal', '../../etc/passwd', 'etc/passwd'],
      ['commandInjection', 'report.pdf; cat /etc/passwd', 'report.pdf'],
    ];

    it.each(cases)('%s strip removes the dangerous part and keeps the rest', async (category, attack, stripped) => {
      const { app, lines } = appWith({ ...ALL_OFF, [category]: 'strip' });
      const res = await request(app).post('/echo').send({ comment: attack, name: "O'Brien" }).expect(200);
      expect(res.body.body).toEqual({ comment: stripped, name: "O'Brien" });
      const line = lines.find((l) => l.message === 'Suspicious input stripped');
      expect(line).toMatchObject({ field: 'body.comment', category, action: 'strip', request_id: res.headers['x-request-id'] });
    });

    it.each(cases)('%s reject answers 400 INPUT_REJECTED naming the field and category, never the value', async (category, attack) => {
      const { app } = appWith({ ...ALL_OFF, [category]: 'reject' });
      const res = await request(app).post('/echo').send({ title: 'ok', comment: attack }).expect(400);
      expect(res.body).toEqual({
        error: {
          code: 'INPUT_REJECTED',
          message: 'The request contains input that is not allowed.',
          request_id: res.headers['x-request-id'],
          details: { field: 'body.comment', category },
        },
      });
      expect(res.text).not.toContain(attack.slice(-8));
    });

    it.each(cases)('%s report leaves the input alone, logs field and category without the value, and counts', async (category, attack) => {
      const { app, stack, lines } = appWith({ ...ALL_OFF, [category]: 'report' });
      const res = await request(app).post('/echo').send({ comment: attack }).expect(200);
      expect(res.body.body).toEqual({ comment: attack });
      const reported = lines.filter((l) => l.message === 'Suspicious input reported');
      expect(reported).toEqual([expect.objectContaining({ level: 'warn', field: 'body.comment', category, action: 'report', request_id: res.headers['x-request-id'] })]);
      expect(JSON.stringify(lines)).not.toContain(attack.slice(-8));
      expect(await detections(stack)).toEqual([expect.objectContaining({ labels: { category, action: 'report' }, value: 1 })]);
    });

    it.each(cases)('%s false lets the attack through untouched and silent', async (category, attack) => {
      const { app, lines } = appWith({ ...ALL_OFF, [category]: false });
      const res = await request(app).post('/echo').send({ comment: attack }).expect(200);
      expect(res.body.body).toEqual({ comment: attack });
      expect(lines.filter((l) => /Suspicious/.test(l.message))).toEqual([]);
    });
  });

  it('strips XSS and NoSQL operators and only reports SQL by default', async () => {
    const { app, lines } = appWith({});
    const res = await request(app)
      .post('/echo')
      .send({ bio: '<img src=x onerror=alert(1)>Hi', user: { $ne: null }, q: "' OR 1=1--" })
      .expect(200);
    expect(res.body.body).toEqual({ bio: 'Hi', user: {}, q: "' OR 1=1--" });
    expect(lines.filter((l) => l.message === 'Suspicious input reported').map((l) => [l.field, l.category])).toEqual([['body.q', 'sql']]);
  });

  it('names nested and array fields in the error', async () => {
    const { app } = appWith({ xss: 'reject' });
    const res = await request(app)
      .post('/echo')
      .send({ post: { comments: [{ text: 'fine' }, { text: '<svg/onload=alert(1)>' }] } })
      .expect(400);
    expect(res.body.error.details).toEqual({ field: 'body.post.comments[1].text', category: 'xss' });
  });

  it('rejects on an attack in a key, and strip drops that key', async () => {
    const reject = appWith({ xss: 'reject' });
    const res = await request(reject.app).post('/echo').send({ '<script>alert(1)</script>': 1 }).expect(400);
    expect(res.body.error.details.category).toBe('xss');
    expect(res.body.error.details.field).not.toContain('<');
    const strip = appWith({});
    await request(strip.app).post('/echo').send({ '<script>alert(1)</script>': 1, ok: 2 }).expect(200, { body: { ok: 2 }, query: {}, params: {} });
  });

  it('sanitizes a text body as the field "body"', async () => {
    const { app } = appWith({ xss: 'reject' }, (a) => a.use(loadExpress().text()));
    const res = await request(app).post('/echo').set('Content-Type', 'text/plain').send('<script>alert(1)</script>').expect(400);
    expect(res.body.error.details).toEqual({ field: 'body', category: 'xss' });
  });

  it('leaves Buffers (express.raw bodies) alone', async () => {
    const app = newApp();
    app.use(loadExpress().raw({ type: '*/*' }), sanitize({ xss: 'reject' }));
    app.post('/raw', (req, res) => {
      res.json({ isBuffer: Buffer.isBuffer(req.body), text: String(req.body) });
    });
    const res = await request(app).post('/raw').set('Content-Type', 'application/octet-stream').send(Buffer.from('<script>x</script>')).expect(200);
    expect(res.body).toEqual({ isBuffer: true, text: '<script>x</script>' });
  });

  describe(`req.query (Express ${EXPRESS_MAJOR})`, () => {
    it('the handler sees the cleaned query on every read, as an own property', async () => {
      const { logger } = recordingLogger();
      const stack = createStack({ logger, ...QUIET });
      const app = newApp();
      app.use(stack);
      app.get('/search', (req, res) => {
        const first = req.query.q;
        const second = req.query.q;
        res.json({ first, second, own: Object.prototype.hasOwnProperty.call(req, 'query'), url: req.originalUrl });
      });
      const res = await request(app).get('/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3Eshoes&page=2').expect(200);
      expect(res.body).toEqual({ first: 'shoes', second: 'shoes', own: true, url: '/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3Eshoes&page=2' });
    });

    it('a handler can still assign req.query afterwards', async () => {
      const app = newApp();
      app.use(sanitize());
      app.get('/', (req, res) => {
        (req as { query: unknown }).query = { replaced: true };
        res.json(req.query);
      });
      await request(app).get('/?a=1').expect(200, { replaced: true });
      await request(app).get('/').expect(200, { replaced: true });
    });

    it('keeps a clean query readable, and a cleaned one the same on every read', async () => {
      const app = newApp();
      app.use(sanitize());
      app.get('/', (req, res) => {
        res.json({ first: req.query, second: req.query, same: req.query === req.query });
      });
      const clean = await request(app).get('/?q=chess&page=2').expect(200);
      expect(clean.body.first).toEqual({ q: 'chess', page: '2' });
      expect(clean.body.second).toEqual({ q: 'chess', page: '2' });
      const cleaned = await request(app).get('/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3Echess').expect(200);
      expect(cleaned.body.first.q).not.toContain('<script');
      expect(cleaned.body.second).toEqual(cleaned.body.first);
      expect(cleaned.body.same).toBe(true);
    });

    it('drops $-operator keys from bracket queries with the extended parser', async () => {
      const { app, lines } = appWith({});
      const res = await request(app).get('/echo?username[$ne]=x&password[$gt]=&name=ok').expect(200);
      expect(res.body.query).toEqual({ username: {}, password: {}, name: 'ok' });
      expect(lines.filter((l) => l.message === 'Suspicious input stripped').map((l) => l.field)).toEqual(['query.username.$ne', 'query.password.$gt']);
    });

    it('drops bracket-operator keys the simple parser leaves flat', async () => {
      const { logger } = recordingLogger();
      const stack = createStack({ logger, ...QUIET });
      const app = newApp();
      app.set('query parser', 'simple');
      app.use(stack);
      app.get('/', (req, res) => {
        res.json(req.query);
      });
      await request(app).get('/?username[$ne]=x&user.role=admin&name=ok').expect(200, { name: 'ok' });
    });

    it('rejects a query attack naming the query field', async () => {
      const { app } = appWith({ sql: 'reject' });
      const res = await request(app).get(`/echo?id=${encodeURIComponent('1 UNION SELECT username, password FROM users')}`).expect(400);
      expect(res.body.error.details).toEqual({ field: 'query.id', category: 'sql' });
    });
  });

  describe('params', () => {
    it('sanitize() on a route covers its params', async () => {
      const app = newApp();
      app.get('/files/:name', sanitize({ pathTraversal: 'reject' }), (req, res) => {
        res.json(req.params);
      });
      app.use(((err, _req, res, _next) => {
        res.status(err.status).json({ code: err.code, details: err.details });
      }) as import('express').ErrorRequestHandler);
      await request(app).get('/files/report.v2.pdf').expect(200, { name: 'report.v2.pdf' });
      const res = await request(app).get('/files/..%2F..%2Fetc%2Fpasswd').expect(400);
      expect(res.body).toEqual({ code: 'INPUT_REJECTED', details: { field: 'params.name', category: 'pathTraversal' } });
    });

    it('strips params in strip mode, so the handler sees the cleaned value', async () => {
      const app = newApp();
      app.get('/users/:id', sanitize({ sql: 'strip' }), (req, res) => {
        res.json(req.params);
      });
      await request(app).get(`/users/${encodeURIComponent("7' OR '1'='1")}`).expect(200, { id: '7' });
    });

    it("behind a stack, sources: ['params'] scans the route's params with the stack's logger", async () => {
      const { logger, lines } = recordingLogger();
      const stack = createStack({ logger, ...QUIET });
      const app = newApp();
      app.use(stack);
      app.get('/run/:cmd', sanitize({ sources: ['params'] }), (req, res) => {
        res.json(req.params);
      });
      app.use(stack.errorHandler);
      await request(app).get(`/run/${encodeURIComponent('build; rm -rf /')}?q=${encodeURIComponent('; id')}`).expect(200, { cmd: 'build; rm -rf /' });
      expect(lines.filter((l) => l.message === 'Suspicious input reported').map((l) => [l.field, l.category])).toEqual([
        ['query.q', 'commandInjection'],
        ['params.cmd', 'commandInjection'],
      ]);
    });
  });

  describe('prototype pollution', () => {
    it('drops __proto__ from a JSON body, even with every category off', async () => {
      const { app } = appWith(ALL_OFF);
      const res = await request(app).post('/echo').set('Content-Type', 'application/json').send('{"__proto__": {"admin": true}, "name": "x"}').expect(200);
      expect(res.body.body).toEqual({ name: 'x' });
      expect(({} as Record<string, unknown>).admin).toBeUndefined();
    });

    it('drops constructor.prototype and nested __proto__ at any depth', async () => {
      let seen: any;
      const app = newApp();
      app.use(loadExpress().json(), sanitize(ALL_OFF));
      app.post('/', (req, res) => {
        seen = req.body;
        res.json(req.body);
      });
      const res = await request(app)
        .post('/')
        .set('Content-Type', 'application/json')
        .send('{"constructor": {"prototype": {"admin": true}}, "a": {"b": [{"__proto__": {"admin": true}, "c": 1}], "prototype": 1}}')
        .expect(200);
      expect(res.body).toEqual({ a: { b: [{ c: 1 }] } });
      expect(seen.a.b[0].admin).toBeUndefined();
      expect(Object.getPrototypeOf(seen.a.b[0])).toBe(Object.prototype);
      expect(typeof seen.a.hasOwnProperty).toBe('function');
    });

    it('drops ?__proto__[admin]=1 and ?constructor[prototype][admin]=1 with the extended query parser', async () => {
      let seen: any;
      const { logger } = recordingLogger();
      const stack = createStack({ logger, ...QUIET, sanitize: ALL_OFF });
      const app = newApp();
      app.set('query parser', 'extended');
      app.use(stack);
      app.get('/', (req, res) => {
        seen = req.query;
        res.json({ admin: req.query.admin ?? null, keys: Object.keys(req.query) });
      });
      await request(app).get('/?__proto__[admin]=1&x=2').expect(200, { admin: null, keys: ['x'] });
      expect(Object.getPrototypeOf(seen)).toBe(Object.prototype);
      await request(app).get('/?constructor[prototype][admin]=1&x=2').expect(200, { admin: null, keys: ['x'] });
    });

    it('rebuilds an object whose prototype a parser let __proto__ replace (older qs assigned it)', async () => {
      const app = newApp();
      // What `obj['__proto__'] = { admin: '1' }` in a parser leaves behind.
      app.set('query parser', (str: string) => Object.assign(Object.create({ admin: '1' }), Object.fromEntries(new URLSearchParams(str))));
      app.use(sanitize(ALL_OFF));
      app.get('/', (req, res) => {
        res.json({ admin: req.query.admin ?? null, plain: Object.getPrototypeOf(req.query) === Object.prototype, x: req.query.x });
      });
      await request(app).get('/?x=2').expect(200, { admin: null, plain: true, x: '2' });
    });

    it('drops them inside allowed fields too', async () => {
      const { app } = appWith({ allow: ['body.raw'] });
      const res = await request(app).post('/echo').set('Content-Type', 'application/json').send('{"raw": {"__proto__": {"x": 1}, "html": "<b>hi</b><script>x</script>"}}').expect(200);
      expect(res.body.body).toEqual({ raw: { html: '<b>hi</b><script>x</script>' } });
    });
  });

  describe('allow', () => {
    const attack = '<script>alert(1)</script>**hi**';

    it('keeps raw input in a listed path and cleans the others', async () => {
      const { app } = appWith({ allow: ['body.markdown'] });
      const res = await request(app).post('/echo').send({ markdown: attack, comment: attack, post: { markdown: attack } }).expect(200);
      expect(res.body.body).toEqual({ markdown: attack, comment: '**hi**', post: { markdown: '**hi**' } });
    });

    it('a bare name matches that key anywhere, in any source', async () => {
      const { app } = appWith({ allow: ['markdown'], xss: 'reject' });
      const res = await request(app)
        .post(`/echo?markdown=${encodeURIComponent(attack)}`)
        .send({ post: { markdown: attack }, drafts: [{ markdown: attack }] })
        .expect(200);
      expect(res.body.body).toEqual({ post: { markdown: attack }, drafts: [{ markdown: attack }] });
      expect(res.body.query).toEqual({ markdown: attack });
    });

    it('skips array indices and supports * for any key', async () => {
      const { app } = appWith({ allow: ['body.posts.body', 'body.i18n.*.html'], xss: 'reject' });
      await request(app)
        .post('/echo')
        .send({ posts: [{ body: attack }, { body: attack }], i18n: { en: { html: attack }, fr: { html: attack } } })
        .expect(200);
      const res = await request(app).post('/echo').send({ posts: [{ title: attack }] }).expect(400);
      expect(res.body.error.details).toEqual({ field: 'body.posts[0].title', category: 'xss' });
    });

    it('lets allowed fields keep $-operator keys (a query builder endpoint)', async () => {
      const { app } = appWith({ allow: ['body.filter'] });
      const res = await request(app).post('/echo').send({ filter: { age: { $gt: 18 } }, sort: { $natural: 1 } }).expect(200);
      expect(res.body.body).toEqual({ filter: { age: { $gt: 18 } }, sort: {} });
    });
  });

  describe('limits', () => {
    const nested = (levels: number): unknown => {
      let v: unknown = 'leaf';
      for (let i = 1; i < levels; i++) v = { a: v };
      return v;
    };

    it('accepts maxDepth levels and answers 400 INPUT_TOO_COMPLEX beyond', async () => {
      const { app } = appWith({ maxDepth: 5 });
      // nested(6) is 5 objects deep around the leaf: the body object is level 1.
      await request(app).post('/echo').send(nested(6) as object).expect(200);
      const res = await request(app).post('/echo').send(nested(7) as object).expect(400);
      expect(res.body.error).toEqual({
        code: 'INPUT_TOO_COMPLEX',
        message: 'The request input is too complex: nested more than 5 levels deep.',
        request_id: res.headers['x-request-id'],
        details: { limit: 'maxDepth', max: 5 },
      });
    });

    it('defaults maxDepth to 20', async () => {
      const { app } = appWith({});
      await request(app).post('/echo').send(nested(21) as object).expect(200);
      const res = await request(app).post('/echo').send(nested(22) as object).expect(400);
      expect(res.body.error.details).toEqual({ limit: 'maxDepth', max: 20 });
    });

    it('counts keys and array items over query and body together (maxKeys)', async () => {
      const { app } = appWith({ maxKeys: 10 });
      const body = Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`k${i}`, i]));
      await request(app).post('/echo?a=1&b=2').send(body).expect(200);
      const res = await request(app).post('/echo?a=1&b=2&c=3').send(body).expect(400);
      expect(res.body.error).toMatchObject({ code: 'INPUT_TOO_COMPLEX', details: { limit: 'maxKeys', max: 10 } });
    });

    it('defaults maxKeys to 1000', async () => {
      const { app } = appWith({});
      await request(app).post('/echo').send({ items: Array.from({ length: 999 }, (_, i) => i) }).expect(200);
      await request(app).post('/echo').send({ items: Array.from({ length: 1000 }, (_, i) => i) }).expect(400);
    });
  });

  describe('report mode', () => {
    it('logs one warn line per finding with the request id, and counts each by category and action', async () => {
      const { app, stack, lines } = appWith({ sql: 'report', pathTraversal: 'report', xss: 'strip' });
      const res = await request(app)
        .post(`/echo?file=${encodeURIComponent('../../etc/passwd')}`)
        .send({ q: "1' UNION SELECT password FROM users--", note: '<script>x</script>ok' })
        .expect(200);
      expect(res.body.query).toEqual({ file: '../../etc/passwd' });
      const rid = res.headers['x-request-id'];
      expect(lines.filter((l) => /^Suspicious/.test(l.message))).toEqual([
        expect.objectContaining({ level: 'warn', message: 'Suspicious input reported', field: 'query.file', category: 'pathTraversal', action: 'report', request_id: rid }),
        expect.objectContaining({ level: 'warn', message: 'Suspicious input reported', field: 'body.q', category: 'sql', action: 'report', request_id: rid }),
        expect.objectContaining({ level: 'info', message: 'Suspicious input stripped', field: 'body.note', category: 'xss', action: 'strip', request_id: rid }),
      ]);
      const logged = JSON.stringify(lines);
      for (const fragment of ['etc/passwd', 'UNION', 'script']) expect(logged).not.toContain(fragment);
      const values = await detections(stack);
      expect(values).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ labels: { category: 'pathTraversal', action: 'report' }, value: 1 }),
          expect.objectContaining({ labels: { category: 'sql', action: 'report' }, value: 1 }),
          expect.objectContaining({ labels: { category: 'xss', action: 'strip' }, value: 1 }),
        ]),
      );
      const text = await stack.metricsRegistry.metrics();
      expect(text).toContain('sanitize_detections_total{category="sql",action="report"} 1');
    });

    it('caps log lines per request and summarises the rest; the metric counts every finding', async () => {
      const { app, stack, lines } = appWith({ sql: 'report' });
      const body = Object.fromEntries(Array.from({ length: 15 }, (_, i) => [`f${i}`, "' OR 1=1--"]));
      await request(app).post('/echo').send(body).expect(200);
      expect(lines.filter((l) => l.message === 'Suspicious input reported')).toHaveLength(10);
      expect(lines.find((l) => l.message === 'More suspicious input not logged')).toMatchObject({ count: 5 });
      expect(await detections(stack)).toEqual([expect.objectContaining({ labels: { category: 'sql', action: 'report' }, value: 15 })]);
    });

    it('counts rejects too', async () => {
      const { app, stack } = appWith({ commandInjection: 'reject' });
      await request(app).post('/echo').send({ host: '127.0.0.1 && whoami' }).expect(400);
      expect(await detections(stack)).toEqual([expect.objectContaining({ labels: { category: 'commandInjection', action: 'reject' }, value: 1 })]);
    });
  });

  describe('reject wins', () => {
    it('a reject in one category wins over a strip in another on the same value', async () => {
      const { app } = appWith({ xss: 'strip', sql: 'reject' });
      const res = await request(app).post('/echo').send({ v: "<b>x</b><script>1</script>' OR '1'='1" }).expect(400);
      expect(res.body.error.details).toEqual({ field: 'body.v', category: 'sql' });
    });
  });

  describe('what a strip leaves is judged again in every category (#11)', () => {
    const TAG = '<script></script>';
    // [what the strip rebuilds, options, request, field and category of the 400]
    const rebuilt: Array<[string, SanitizeOptions, { body?: object; query?: string }, string, string]> = [
      ['an SQL tautology', { sql: 'reject' }, { body: { v: `' OR${TAG} '1'='1` } }, 'body.v', 'sql'],
      ['an SQL tautology in an array in an object', { sql: 'reject' }, { body: { a: ['x', { b: `' OR${TAG} '1'='1` }] } }, 'body.a[1].b', 'sql'],
      ['an SQL tautology in the query', { sql: 'reject' }, { query: `v=${encodeURIComponent(`' OR${TAG} '1'='1`)}` }, 'query.v', 'sql'],
      ['an SQL tautology behind percent-encoded tags', { sql: 'reject' }, { body: { v: "' OR%3Cscript%3E%3C/script%3E '1'='1" } }, 'body.v', 'sql'],
      ['an SQL tautology behind entity-encoded tags', { sql: 'reject' }, { body: { v: "' OR&lt;script&gt;&lt;/script&gt; '1'='1" } }, 'body.v', 'sql'],
      ['a NoSQL operator in a JSON string', { nosql: 'reject' }, { body: { filter: `{"$${TAG}ne": null}` } }, 'body.filter', 'nosql'],
      ['a path traversal', { pathTraversal: 'reject' }, { body: { file: `..${TAG}/..${TAG}/etc/passwd` } }, 'body.file', 'pathTraversal'],
      ['a command after a separator', { commandInjection: 'reject' }, { body: { host: `127.0.0.1;${TAG}cat /etc/passwd` } }, 'body.host', 'commandInjection'],
      ['a command name split by a tag', { commandInjection: 'reject' }, { body: { host: `127.0.0.1; who${TAG}ami` } }, 'body.host', 'commandInjection'],
      ['a script tag (from a path-traversal strip)', { xss: 'reject', pathTraversal: 'strip' }, { body: { v: '<scr../ipt src=//evil.example/x.js>' } }, 'body.v', 'xss'],
      ['a script tag (from a NUL strip)', { xss: 'reject', pathTraversal: 'strip' }, { body: { v: '<scr\u0000ipt>alert(1)</scr\u0000ipt>' } }, 'body.v', 'xss'],
      ['an SQL tautology (from a command-injection cut)', { sql: 'reject', commandInjection: 'strip' }, { body: { v: "x' OR 1=1 --;cat /etc/passwd" } }, 'body.v', 'sql'],
    ];

    it.each(rebuilt)('rejects %s that a strip would rebuild, naming the field', async (_what, options, req, field, category) => {
      const { app } = appWith(options);
      const res = req.query !== undefined ? await request(app).get(`/echo?${req.query}`) : await request(app).post('/echo').send(req.body as object);
      expect(res.status).toBe(400);
      expect(res.body.error).toMatchObject({ code: 'INPUT_REJECTED', details: { field, category } });
    });

    it.each([
      ['xss then sql', { xss: 'strip', sql: 'strip' }, `alice' OR${TAG} '1'='1`, 'alice'],
      ['xss then pathTraversal', { xss: 'strip', pathTraversal: 'strip' }, `docs/..${TAG}/..${TAG}/etc/passwd`, 'docs'],
      ['xss then commandInjection', { xss: 'strip', commandInjection: 'strip' }, `report.pdf;${TAG}cat /etc/passwd`, 'report.pdf'],
      ['xss then nosql', { xss: 'strip', nosql: 'strip' }, `name: {"$${TAG}ne": null}`, 'name: {'],
      ['pathTraversal then xss', { xss: 'strip', pathTraversal: 'strip' }, 'Hello <scr../ipt>alert(1)</scr../ipt> world', 'Hello  world'],
      ['encoded, decoded by the first strip', { xss: 'strip', sql: 'strip' }, "bob' OR%3Cb%3E%3Cscript%3E%3C/script%3E '1'='1", 'bob'],
    ])('strip mode: %s leaves a value no category fires on', async (_what, options, attack, expected) => {
      const { app } = appWith({ ...ALL_OFF, ...(options as SanitizeOptions) });
      const res = await request(app).post('/echo').send({ v: attack, name: "O'Brien" }).expect(200);
      expect(res.body.body).toEqual({ v: expected, name: "O'Brien" });
    });

    it('reports a payload a strip rebuilt, in a category set to report, once per field', async () => {
      const { app, lines } = appWith({});
      const res = await request(app).post('/echo').send({ q: `alice' OR${TAG} '1'='1` }).expect(200);
      // sql is 'report' by default: the handler gets the stripped value, and the log says what it carries.
      expect(res.body.body).toEqual({ q: "alice' OR '1'='1" });
      expect(lines.filter((l) => /^Suspicious/.test(l.message)).map((l) => [l.field, l.category, l.action])).toEqual([
        ['body.q', 'xss', 'strip'],
        ['body.q', 'sql', 'report'],
      ]);
    });

    it.each([
      ['%24ne', 'percent-encoded'],
      ['&#36;where', 'an HTML reference'],
      ['profile%2Erole', 'a percent-encoded dot'],
    ])('treats the key %s (%s) as the operator it decodes to', async (key) => {
      const strip = appWith({});
      const stripped = await request(strip.app).post('/echo').send({ [key]: 'x', ok: 1 }).expect(200);
      expect(stripped.body.body).toEqual({ ok: 1 });
      const reject = appWith({ nosql: 'reject' });
      const res = await request(reject.app).post('/echo').send({ user: { [key]: 'x' } }).expect(400);
      expect(res.body.error.details.category).toBe('nosql');
    });

    it('never passes on a key a strip would turn into an operator: the key goes with its value', async () => {
      const { app } = appWith({ nosql: 'report' });
      const res = await request(app).post('/echo').send({ [`$${TAG}ne`]: 1, [`${TAG}$gt`]: 2, ok: 3 }).expect(200);
      expect(res.body.body).toEqual({ ok: 3 });
    });

    it('drops a value that is still an attack when the rounds run out, instead of judging it on and on', async () => {
      const { app } = appWith({ ...ALL_OFF, pathTraversal: 'strip' });
      // Each strip removes one ../ from the middle and joins the dots and slashes around it into the next one.
      const nested = `${'.'.repeat(40)}${'/'.repeat(20)}`;
      const res = await request(app).post('/echo').send({ v: nested, ok: 'fine' }).expect(200);
      expect(res.body.body).toEqual({ v: '', ok: 'fine' });
    });
  });

  describe('in createStack', () => {
    it('is on by default, between credits and auditLog in the order', () => {
      const stack = createStack({ logger: recordingLogger().logger, rateLimit: false });
      expect(stack.order).toContain('sanitize');
      const at = stack.order.indexOf('sanitize');
      for (const before of ['bodyParser', 'auth', 'rateLimit', 'credits']) {
        if (stack.order.includes(before)) expect(stack.order.indexOf(before)).toBeLessThan(at);
      }
      for (const after of ['auditLog', 'featureFlags', 'circuitBreaker', 'cache']) {
        if (stack.order.includes(after)) expect(stack.order.indexOf(after)).toBeGreaterThan(at);
      }
      void stack.close();
    });

    it('strips XSS from the body with a default createStack()', async () => {
      const stack = createStack({ logger: recordingLogger().logger });
      const app = newApp();
      app.use(stack);
      app.post('/comments', (req, res) => {
        res.status(201).json(req.body);
      });
      app.use(stack.errorHandler);
      await request(app).post('/comments').send({ text: 'Great<script>steal()</script> post' }).expect(201, { text: 'Great post' });
      await stack.close();
    });

    it('sanitize: false leaves it out', () => {
      const stack = createStack({ logger: recordingLogger().logger, sanitize: false });
      expect(stack.order).not.toContain('sanitize');
      void stack.close();
    });
  });

  describe('configuration', () => {
    it.each([
      [{ xss: 'remove' }, "sanitize.xss: expected 'strip', 'reject', 'report' or false, got 'remove'"],
      [{ sql: true }, "sanitize.sql: expected 'strip', 'reject', 'report' or false, got true"],
      [{ allow: 'body.x' }, 'sanitize.allow: expected an array'],
      [{ allow: ['user.bio'] }, "sanitize.allow: 'user.bio': a path must start with query., body. or params."],
      [{ allow: [''] }, 'sanitize.allow: expected field paths'],
      [{ maxDepth: 0 }, 'sanitize.maxDepth: expected a whole number from 1 to 1000, got 0'],
      [{ maxKeys: 1.5 }, 'sanitize.maxKeys: expected a whole number'],
      [{ sources: ['headers'] }, "sanitize.sources: expected one of 'query', 'body', 'params', got 'headers'"],
      [{ sources: [] }, 'sanitize.sources: expected a non-empty array'],
      [{ xxs: 'strip' }, "sanitize.xxs: unknown option; did you mean 'xss'?"],
    ])('%j throws ConfigError at setup', (options, message) => {
      expect(() => sanitize(options as SanitizeOptions)).toThrow(ConfigError);
      expect(() => sanitize(options as SanitizeOptions)).toThrow(message);
    });

    it('explains app.use(sanitize) without parentheses', () => {
      const fakeReq = { method: 'GET', headers: {}, url: '/' };
      expect(() => (sanitize as unknown as (r: unknown) => void)(fakeReq)).toThrow(/app\.use\(sanitize\(\)\)/);
    });
  });
});
