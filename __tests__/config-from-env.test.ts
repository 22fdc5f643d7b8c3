import { ConfigError, configFromEnv, createStack } from '../index';
import { recordingLogger } from './helpers/app';

describe('configFromEnv', () => {
  it('reads every documented variable', () => {
    const config = configFromEnv({
      REDIS_URL: 'redis://cache:6379',
      JWT_SECRET: 's'.repeat(32),
      API_KEYS: '[{"key":"sk-prod-key","name":"Production","tier":"enterprise"}]',
      CORS_ORIGINS: 'https://a.example.com, https://b.example.com',
      LOG_LEVEL: 'debug',
      LOG_FORMAT: 'gcp',
      NODE_ENV: 'production',
      TRUST_PROXY: '1',
    });
    expect(config).toEqual({
      redis: 'redis://cache:6379',
      logger: { level: 'debug', format: 'gcp' },
      errorNormalizer: { expose: false },
      auth: { jwt: { secret: 's'.repeat(32) }, apiKeys: [{ key: 'sk-prod-key', name: 'Production', tier: 'enterprise' }] },
      cors: { origin: ['https://a.example.com', 'https://b.example.com'], credentials: true },
      trustProxy: 1,
    });
  });

  it('reads CORS_ORIGINS as JSON, and a PEM public key with escaped newlines', () => {
    const config = configFromEnv({ CORS_ORIGINS: '["https://x.example.com"]', JWT_PUBLIC_KEY: '-----BEGIN PUBLIC KEY-----\\nabc\\n-----END PUBLIC KEY-----' });
    expect((config.cors as { origin: string[] }).origin).toEqual(['https://x.example.com']);
    expect((config.auth as { jwt: { publicKey: string } }).jwt.publicKey).toBe('-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----');
  });

  it('returns an empty config for an empty environment, usable by createStack', async () => {
    const config = configFromEnv({});
    expect(config).toEqual({});
    const stack = createStack({ ...config, logger: recordingLogger().logger });
    expect(stack.order[0]).toBe('requestId');
    await stack.close();
  });

  it.each([
    [{ API_KEYS: 'not json' }, /API_KEYS: expected a JSON array/],
    [{ API_KEYS: '{"key":"x"}' }, /API_KEYS: expected a JSON array/],
    [{ LOG_FORMAT: 'xml' }, /LOG_FORMAT: expected 'json' or 'gcp'/],
    [{ CORS_ORIGINS: '[broken' }, /CORS_ORIGINS/],
  ])('refuses malformed values naming the variable (%p)', (env, message) => {
    expect(() => configFromEnv(env)).toThrow(ConfigError);
    expect(() => configFromEnv(env)).toThrow(message);
  });

  it('parses TRUST_PROXY forms', () => {
    expect(configFromEnv({ TRUST_PROXY: 'true' }).trustProxy).toBe(true);
    expect(configFromEnv({ TRUST_PROXY: 'loopback, 10.0.0.0/8' }).trustProxy).toEqual(['loopback', '10.0.0.0/8']);
    expect(configFromEnv({ TRUST_PROXY: 'loopback' }).trustProxy).toBe('loopback');
  });
});

describe('units', () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { parseBytes, parseDuration } = require('../lib/units') as typeof import('../lib/units');
  it.each([
    ['1mb', 1048576],
    ['100kb', 102400],
    ['2 MB', 2097152],
    [512, 512],
    ['512', 512],
  ])('parses the size %p', (input, expected) => {
    expect(parseBytes(input, 'x.max')).toBe(expected);
  });
  it.each(['1 megabyte', 'lots', '', -1, '1mbps'])('refuses the size %p naming the option', (input) => {
    expect(() => parseBytes(input, 'sizeLimit.max')).toThrow(/sizeLimit.max: expected a size like '100kb' or '1mb'/);
  });
  it.each([
    ['500ms', 500],
    ['30s', 30000],
    ['1m', 60000],
    ['1h', 3600000],
    ['1d', 86400000],
    [250, 250],
  ])('parses the duration %p', (input, expected) => {
    expect(parseDuration(input, 'x.window')).toBe(expected);
  });
  it.each(['1 minute please', 'soon', -5, {}])('refuses the duration %p naming the option', (input) => {
    expect(() => parseDuration(input, 'rateLimit.window')).toThrow(/rateLimit.window: expected a duration like '500ms', '30s' or '1m'/);
  });
});
