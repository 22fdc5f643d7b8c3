import request from 'supertest';
import { auth, errorNormalizer, requestId, requireApiKey, requireAuth, requireRole } from '../index';
import { newApp, recordingLogger } from './helpers/app';

// The guards on routes behind a lone auth({ required: false }); auth.test.ts covers them with JWTs.
function app(...guards: Array<ReturnType<typeof requireAuth>>) {
  const a = newApp();
  a.use(requestId(), auth({ logger: recordingLogger().logger, required: false, apiKeys: [{ key: 'sk-ops', name: 'ops', tier: 'pro', userId: 'u9' }] }));
  a.get('/guarded', ...guards, (req, res) => {
    res.json({ method: req.auth?.method ?? null });
  });
  a.use(errorNormalizer());
  return a;
}

describe('requireAuth, requireApiKey, requireRole', () => {
  it('requireAuth lets authenticated callers through and answers 401 with WWW-Authenticate otherwise', async () => {
    const res = await request(app(requireAuth())).get('/guarded').expect(401);
    expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
    expect(res.body.error).toMatchObject({ code: 'AUTHENTICATION_REQUIRED', request_id: res.headers['x-request-id'] });
    await request(app(requireAuth())).get('/guarded').set('X-API-Key', 'sk-ops').expect(200, { method: 'apiKey' });
  });

  it('requireApiKey wants a request authenticated by an API key', async () => {
    await request(app(requireApiKey())).get('/guarded').expect(401);
    await request(app(requireApiKey())).get('/guarded').set('X-API-Key', 'sk-ops').expect(200);
  });

  it('requireRole answers 401 to anonymous callers and 403 FORBIDDEN to callers without the role', async () => {
    await request(app(requireRole('admin'))).get('/guarded').expect(401);
    const res = await request(app(requireRole('admin'))).get('/guarded').set('X-API-Key', 'sk-ops').expect(403);
    expect(res.body.error.code).toBe('FORBIDDEN');
  });
});
