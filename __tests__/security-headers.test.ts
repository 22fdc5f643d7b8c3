import request from 'supertest';
import { securityHeaders } from '../index';
import { newApp } from './helpers/app';

describe('securityHeaders', () => {
  it('sets the API defaults and removes X-Powered-By', async () => {
    const app = newApp();
    app.use(securityHeaders());
    app.get('/', (_req, res) => {
      res.json({ ok: true });
    });
    const res = await request(app).get('/').expect(200);
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['x-frame-options']).toBe('DENY');
    expect(res.headers['strict-transport-security']).toBe('max-age=31536000; includeSubDomains');
    expect(res.headers['content-security-policy']).toBe("default-src 'none';frame-ancestors 'none'");
    expect(res.headers['referrer-policy']).toBe('no-referrer');
    expect(res.headers['x-powered-by']).toBeUndefined();
    expect(res.headers['cross-origin-resource-policy']).toBe('same-origin');
    // Document-only headers are left out of API responses.
    expect(res.headers['x-dns-prefetch-control']).toBeUndefined();
    expect(res.headers['origin-agent-cluster']).toBeUndefined();
  });

  it('turns a document-only header back on when asked', async () => {
    const app = newApp();
    app.use(securityHeaders({ xDnsPrefetchControl: { allow: false } }));
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    const res = await request(app).get('/').expect(200);
    expect(res.headers['x-dns-prefetch-control']).toBe('off');
  });

  it("takes helmet's options over the defaults", async () => {
    const app = newApp();
    app.use(securityHeaders({ strictTransportSecurity: { maxAge: 600 }, referrerPolicy: { policy: 'same-origin' } }));
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    const res = await request(app).get('/').expect(200);
    expect(res.headers['strict-transport-security']).toBe('max-age=600; includeSubDomains');
    expect(res.headers['referrer-policy']).toBe('same-origin');
  });

  it('refuses unknown options with the nearest name', () => {
    expect(() => securityHeaders({ contentSecurityPolicyy: false } as never)).toThrow(/did you mean 'contentSecurityPolicy'/);
  });
});
