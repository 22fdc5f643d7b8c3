import request from 'supertest';
import { errorNormalizer, featureFlags, requestId, requireFeature } from '../index';
import { newApp } from './helpers/app';

// requireFeature alone and behind featureFlags; feature-flags.test.ts covers it inside a stack.
describe('requireFeature', () => {
  it('uses the flags of featureFlags in front of it: 404 FEATURE_DISABLED when off', async () => {
    const app = newApp();
    app.use(requestId(), featureFlags({ flags: { beta: { users: ['u1'] }, off: { enabled: false } } }));
    app.get('/off', requireFeature('off'), (_req, res) => {
      res.send('hidden');
    });
    app.get('/beta', requireFeature('beta'), (_req, res) => {
      res.send('beta');
    });
    app.use(errorNormalizer({ format: 'envelope' }));
    const res = await request(app).get('/off').expect(404);
    expect(res.body.error).toMatchObject({ code: 'FEATURE_DISABLED', request_id: res.headers['x-request-id'] });
    await request(app).get('/beta').expect(404);
  });

  it('takes its own flags when no featureFlags runs before it', async () => {
    const app = newApp();
    app.use(requestId());
    app.get('/us', requireFeature('us-only', { flags: { 'us-only': { countries: ['US'] } } }), (_req, res) => {
      res.send('hello US');
    });
    app.use(errorNormalizer());
    await request(app).get('/us').set('CF-IPCountry', 'US').expect(200, 'hello US');
    await request(app).get('/us').set('CF-IPCountry', 'FR').expect(404);
  });
});
