import request from 'supertest';
import { ConfigError, createStack, metrics } from '../index';
import { compilePathPatterns } from '../lib/path-patterns';
import { closeStacks, loadExpress, stackApp } from './helpers/app';

afterEach(() => closeStacks());

const KEY = 'k-123456789012345678901234';

/** Routes under /api behind a stack whose auth refuses anonymous callers before routing. */
function refusingApp(paths?: string[]) {
  return stackApp(
    { auth: { apiKeys: [{ key: KEY, name: 'k' }], required: true }, metrics: { paths } },
    (app) => {
      const router = loadExpress().Router();
      router.get('/users/:id', (req, res) => void res.json({ id: req.params.id }));
      app.use('/api', router);
    },
  );
}

async function routeLabels(registry: import('prom-client').Registry): Promise<Array<[string, string]>> {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === 'http_requests_total');
  return (metric?.values ?? []).map((v) => [String(v.labels.route), String(v.labels.status_code)] as [string, string]).sort();
}

describe('metrics.paths: a label for requests refused before routing', () => {
  it('labels a refusal with the first pattern its path matches, and keeps #unmatched for the rest', async () => {
    const { app, stack } = refusingApp(['/api/users/:id', '/api/files/*', '/api/*']);
    await request(app).get('/api/users/1').expect(401);
    await request(app).get('/API/Users/2/?token=x').expect(401);
    await request(app).get('/api/files/a/b.txt').expect(401);
    await request(app).get('/api/files').expect(401);
    await request(app).get('/api/other').expect(401);
    await request(app).get('/elsewhere').expect(401);
    await request(app).get('/api/users/3').set('X-API-Key', KEY).expect(200);
    expect(await routeLabels(stack.metricsRegistry)).toEqual([
      ['#unmatched', '401'],
      ['/api/*', '401'],
      ['/api/files/*', '401'],
      ['/api/users/:id', '200'],
      ['/api/users/:id', '401'],
    ]);
  });

  it('keeps the label set bounded by the list, whatever paths clients send', async () => {
    const { app, stack } = refusingApp(['/api/users/:id']);
    for (let i = 0; i < 30; i++) await request(app).get(`/api/users/${i}/x${i}`).expect(401);
    for (let i = 0; i < 30; i++) await request(app).get(`/api/users/${i}`).expect(401);
    const routes = new Set((await routeLabels(stack.metricsRegistry)).map(([route]) => route));
    expect([...routes].sort()).toEqual(['#unmatched', '/api/users/:id']);
  });

  it('leaves everything #unmatched without the option, as before', async () => {
    const { app, stack } = refusingApp();
    await request(app).get('/api/users/1').expect(401);
    expect(await routeLabels(stack.metricsRegistry)).toEqual([['#unmatched', '401']]);
  });

  it.each([
    ['/users/:id', /metrics.paths: expected an array of at most 1000 route patterns/],
    [['users/:id'], /metrics.paths\[0\]: expected a route pattern starting with '\/'/],
    [['/ok', '/files/*/x'], /metrics.paths\[1\]: '\/files\/\*\/x': .*'\*' may only end the pattern/],
    [['/users/:'], /metrics.paths\[0\]/],
    [['/a?b'], /metrics.paths\[0\]/],
  ])('refuses paths: %j at setup', (paths, message) => {
    expect(() => metrics({ paths: paths as string[] })).toThrow(ConfigError);
    expect(() => createStack({ logger: { level: 'silent' }, metrics: { paths: paths as string[] } })).toThrow(message);
  });
});

describe('compilePathPatterns', () => {
  it('matches :name as one segment, a trailing * as the rest, the root, without case or trailing slash', () => {
    const label = compilePathPatterns(['/', '/users/:id', '/users/:id/games/:game', '/v1.0/files/*'], 'paths')!;
    expect(label('/')).toBe('/');
    expect(label('/users/42')).toBe('/users/:id');
    expect(label('/USERS/42/')).toBe('/users/:id');
    expect(label('/users/42/games/7')).toBe('/users/:id/games/:game');
    expect(label('/users/42/games')).toBeUndefined();
    expect(label('/users/')).toBeUndefined();
    expect(label('/v1.0/files/a/b')).toBe('/v1.0/files/*');
    expect(label('/v1.0/files')).toBe('/v1.0/files/*');
    // '.' is literal, not a regex wildcard.
    expect(label('/v1x0/files/a')).toBeUndefined();
  });

  it('gives the first matching pattern when several match', () => {
    const label = compilePathPatterns(['/users/me', '/users/:id'], 'paths')!;
    expect(label('/users/me')).toBe('/users/me');
    expect(label('/users/you')).toBe('/users/:id');
  });
});
