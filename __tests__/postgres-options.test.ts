import { Pool } from 'pg';
import { createStack, type StackConfig } from '../lib/create-stack';
import { ConfigError } from '../lib/errors';
import { parsePostgresOption } from '../lib/postgres/options';
import { recordingLogger } from './helpers/app';

// Checked at startup, before any connection is opened: no server is needed.
describe('the postgres option', () => {
  const pool = new Pool({ connectionString: 'postgres://nobody@127.0.0.1:1/none' });
  afterAll(() => pool.end());

  it('accepts a pg.Pool where the types ask for one (checked by npm run typecheck; the published types need no @types/pg)', () => {
    const config: StackConfig = { postgres: pool };
    const nested: StackConfig = { postgres: { pool, tablePrefix: 'billing_' } };
    expect([config.postgres, (nested.postgres as { pool: unknown }).pool]).toEqual([pool, pool]);
  });

  it('takes a URL, a pg.Pool, or { url | pool, tablePrefix, statementTimeout } with the defaults filled in', () => {
    expect(parsePostgresOption('postgres://u:p@db:5432/app')).toEqual({ url: 'postgres://u:p@db:5432/app', tablePrefix: 'perimeter_', statementTimeoutMs: 5000 });
    expect(parsePostgresOption(pool)).toEqual({ pool, tablePrefix: 'perimeter_', statementTimeoutMs: 5000 });
    expect(parsePostgresOption({ pool, tablePrefix: 'billing_', statementTimeout: '250ms' })).toEqual({ url: undefined, pool, tablePrefix: 'billing_', statementTimeoutMs: 250 });
    expect(parsePostgresOption({ url: 'postgresql://db/app', statementTimeout: 1500 })).toMatchObject({ url: 'postgresql://db/app', statementTimeoutMs: 1500 });
  });

  it.each([
    [{ url: 'postgres://db/app', pool }, 'postgres.pool', /either url or pool, not both/],
    [{ tablePrefix: 'x_' }, 'postgres', /needs url or pool/],
    [{ url: 'postgres://db/app', tablePrefix: 'Perimeter_' }, 'postgres.tablePrefix', /safe SQL identifier.*got 'Perimeter_'/],
    [{ url: 'postgres://db/app', tablePrefix: 'x"; drop table users; --' }, 'postgres.tablePrefix', /lowercase letters, digits and _/],
    [{ url: 'postgres://db/app', tablePrefix: '1x_' }, 'postgres.tablePrefix', /starting with a letter or _/],
    [{ url: 'postgres://db/app', tablePrefix: 'a'.repeat(33) }, 'postgres.tablePrefix', /at most 32 characters/],
    [{ url: 'postgres://db/app', statementTimeout: 'five seconds' }, 'postgres.statementTimeout', /expected a duration like '500ms'/],
    [{ url: 'postgres://db/app', statementTimeout: 0 }, 'postgres.statementTimeout', /between '1ms' and '10m'/],
    [{ url: 'postgres://db/app', statementTimeout: '1h' }, 'postgres.statementTimeout', /between '1ms' and '10m'/],
    [{ url: 'postgres://db/app', statmentTimeout: '1s' }, 'postgres.statmentTimeout', /did you mean 'statementTimeout'/],
    [{ pool: { query() {} } }, 'postgres.pool', /expected a pg\.Pool/],
    ['mysql://db/app', 'postgres', /starting with postgres:\/\//],
    [{ url: 'redis://localhost:6379' }, 'postgres.url', /starting with postgres:\/\//],
    [42, 'postgres', /expected a URL .* a pg\.Pool/],
  ])('refuses %p with a ConfigError naming %s', (value, option, message) => {
    let thrown: unknown;
    try {
      parsePostgresOption(value as never);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(ConfigError);
    expect((thrown as ConfigError).option).toBe(option);
    expect((thrown as Error).message).toMatch(message);
  });

  it('never echoes a URL it refuses (it may carry a password)', () => {
    expect(() => parsePostgresOption('mysql://admin:hunter2@db/app')).toThrow(expect.objectContaining({ message: expect.not.stringContaining('hunter2') }));
  });

  it('is checked by createStack before anything connects', () => {
    const { logger } = recordingLogger();
    expect(() => createStack({ logger, postgres: { url: 'postgres://db/app', tablePrefix: 'bad-prefix' } })).toThrow(ConfigError);
    expect(() => createStack({ logger, postgres: { url: 'postgres://db/app', tablePrefix: 'bad-prefix' } })).toThrow(/^postgres\.tablePrefix: /);
    expect(() => createStack({ logger, postgress: 'postgres://db/app' } as never)).toThrow(/did you mean 'postgres'/);
  });
});
