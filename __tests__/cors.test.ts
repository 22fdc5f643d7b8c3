import request from 'supertest';
import { ConfigError, cors, createStack } from '../index';
import { newApp, recordingLogger } from './helpers/app';

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

  it('answers preflights in a stack before auth can refuse them', async () => {
    const stack = createStack({ logger: recordingLogger().logger, cors: { origin: ['https://app.example.com'] }, auth: { apiKeys: [{ key: 'k', name: 'n' }] } });
    const app = newApp();
    app.use(stack);
    app.get('/private', (_req, res) => {
      res.send('ok');
    });
    app.use(stack.errorHandler);
    const res = await request(app).options('/private').set('Origin', 'https://app.example.com').set('Access-Control-Request-Method', 'GET').expect(204);
    expect(res.headers['access-control-allow-origin']).toBe('https://app.example.com');
    await request(app).get('/private').expect(401);
    await stack.close();
  });
});
