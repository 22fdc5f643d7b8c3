import request from 'supertest';
import { ConfigError, cors, securityHeaders } from '../index';
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

describe('cors', () => {
  it('answers preflights for listed origins only', async () => {
    const app = newApp();
    app.use(cors({ origin: ['https://app.example.com'], credentials: true }));
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    const ok = await request(app).options('/').set('Origin', 'https://app.example.com').set('Access-Control-Request-Method', 'GET').expect(204);
    expect(ok.headers['access-control-allow-origin']).toBe('https://app.example.com');
    expect(ok.headers['access-control-allow-credentials']).toBe('true');
    const other = await request(app).get('/').set('Origin', 'https://evil.example').expect(200);
    expect(other.headers['access-control-allow-origin']).toBeUndefined();
  });

  it("refuses '*' with credentials at setup, naming the fix", () => {
    expect(() => cors({ origin: '*', credentials: true })).toThrow(ConfigError);
    expect(() => cors({ origin: '*', credentials: true })).toThrow(/cors.origin: '\*' with credentials: true is refused by browsers; list the origins/);
  });

  it('refuses an origin with a path', () => {
    expect(() => cors({ origin: ['https://app.example.com/'] })).toThrow(/is not an origin/);
  });
});
