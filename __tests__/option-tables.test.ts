import * as P from '../index';
import { ConfigError } from '../index';
import { bytes, count, defineOptions, describeOptions, duration, flag } from '../lib/options';

interface ExampleOptions {
  /** Defaults to '1m'. */
  window?: number | string;
  limit?: number;
  maxBody?: number | string;
  strict?: boolean;
}

const parseExample = defineOptions<ExampleOptions>()('example', {
  window: duration('1m'),
  limit: count(100),
  maxBody: bytes('1mb'),
  strict: flag(),
});

describe('defineOptions: one table per factory (#12 §4)', () => {
  it('applies each default and parses each unit', () => {
    expect(parseExample(undefined)).toEqual({ window: 60_000, limit: 100, maxBody: 1024 * 1024, strict: undefined });
    expect(parseExample({ window: '2s', limit: 5, maxBody: '1kb', strict: true })).toEqual({ window: 2000, limit: 5, maxBody: 1024, strict: true });
  });

  it('refuses an unknown key with the nearest known one, and a bad value naming its path', () => {
    expect(() => parseExample({ limt: 5 } as never)).toThrow(new ConfigError('example.limt', "unknown option; did you mean 'limit'? Known options: window, limit, maxBody, strict"));
    expect(() => parseExample({ limit: 0 })).toThrow(/^example\.limit: expected a whole number of at least 1, got 0$/);
    expect(() => parseExample({ window: 'soon' })).toThrow(/^example\.window: expected a duration/);
  });

  it('names a nested table by the place it is given', () => {
    expect(() => parseExample({ strict: 'yes' } as never, "outer.rules['/a']")).toThrow(/^outer\.rules\['\/a'\]\.strict: expected true or false, got 'yes'$/);
  });

  it('refuses a table that misses a key of the options type, or has one it lacks (compile time)', () => {
    // @ts-expect-error `strict` has no row
    defineOptions<ExampleOptions>()('missing', { window: duration(), limit: count(), maxBody: bytes() });
    // @ts-expect-error `extra` is not an option of ExampleOptions
    defineOptions<ExampleOptions>()('extra', { window: duration(), limit: count(), maxBody: bytes(), strict: flag(), extra: flag() });
  });
});

describe('describeOptions: every declared option, for docs', () => {
  it('lists each option of a factory with what it accepts and its default', () => {
    P.rateLimit({ limit: 1 });
    const rows = describeOptions('rateLimit');
    expect(rows.map((r) => r.key)).toEqual([
      'algorithm', 'limit', 'window', 'burst', 'daily', 'key', 'tiers', 'defaultTier', 'cost', 'skip', 'prefix', 'headers',
      'onStoreError', 'storeTimeout', 'instances', 'maxKeys', 'now',
    ]);
    expect(rows.find((r) => r.key === 'window')).toEqual({ factory: 'rateLimit', key: 'window', accepts: "a duration like '1m' or milliseconds", default: "'1m'" });
    expect(rows.find((r) => r.key === 'limit')?.default).toBe('100');
  });

  it('has a table for every factory a user configures with an options object', () => {
    const factories = new Set(describeOptions().map((r) => r.factory));
    for (const name of [
      'requestId', 'securityHeaders', 'cors', 'ipFilter', 'sizeLimit', 'timeout', 'bodyParser', 'auth', 'auth.jwt', 'tenant',
      'rateLimit', 'idempotency', 'sanitize', 'auditLog', 'featureFlags', 'circuitBreaker', 'cache', 'health', 'errorNormalizer', 'requireFeature',
      'loadShedding', 'requestLogger', 'metrics', 'credits',
    ]) {
      expect(factories).toContain(name);
    }
  });
});
