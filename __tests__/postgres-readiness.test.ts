import { Client, Pool } from 'pg';
import request from 'supertest';
import { createStack, type Stack } from '../lib/create-stack';
import { eventually, newApp, recordingLogger, redisUrl } from './helpers/app';
import { describePostgres, freshDatabase } from './helpers/postgres';

async function connectionsNamed(url: string, application: string): Promise<number> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()', [application]);
    return rows[0].n;
  } finally {
    await client.end();
  }
}

function appOf(stack: Stack) {
  const app = newApp();
  app.use(stack);
  app.use(stack.errorHandler);
  return app;
}

describePostgres('PostgreSQL readiness and lifecycle (#15)', () => {
  let url: string;
  const stacks: Stack[] = [];
  beforeAll(async () => {
    url = await freshDatabase();
  });
  afterEach(async () => {
    await Promise.all(stacks.splice(0).map((s) => s.close()));
  });

  it('is a check of its own in /health/ready once ready() resolved (its tables exist)', async () => {
    const stack = createStack({ logger: recordingLogger().logger, postgres: url });
    stacks.push(stack);
    await stack.ready();
    const res = await request(appOf(stack)).get('/health/ready').expect(200);
    expect(res.body).toEqual({ status: 'ready', checks: { postgres: { status: 'up', duration_ms: expect.any(Number) } } });
  });

  (redisUrl ? it : it.skip)('sits beside the Redis check when both are configured', async () => {
    const stack = createStack({ logger: recordingLogger().logger, postgres: url, redis: redisUrl });
    stacks.push(stack);
    await stack.ready();
    const res = await request(appOf(stack)).get('/health/ready').expect(200);
    expect(Object.keys(res.body.checks).sort()).toEqual(['postgres', 'redis']);
  });

  it('keeps ready() waiting and readiness 503 while the database cannot be reached', async () => {
    const { logger } = recordingLogger();
    const stack = createStack({ logger, postgres: { url: 'postgres://postgres@127.0.0.1:1/none', statementTimeout: '200ms' } });
    stacks.push(stack);
    await expect(stack.ready({ timeout: '300ms' })).rejects.toThrow(/not connected after 300 ms: PostgreSQL schema is not ready \(last error ECONNREFUSED\)/);
    const res = await request(appOf(stack)).get('/health/ready').expect(503);
    expect(res.body).toEqual({ status: 'not_ready', checks: { postgres: { status: 'down', duration_ms: expect.any(Number), error: 'schema not ready (ECONNREFUSED)' } } });
  });

  it('close() ends the pool the stack opened', async () => {
    const stack = createStack({ logger: recordingLogger().logger, postgres: url });
    await stack.ready();
    await request(appOf(stack)).get('/health/ready').expect(200);
    expect(await connectionsNamed(url, 'express-perimeter')).toBeGreaterThan(0);
    await stack.close();
    await eventually(async () => expect(await connectionsNamed(url, 'express-perimeter')).toBe(0));
  });

  it('close() leaves a pool the user passed open and usable', async () => {
    const pool = new Pool({ connectionString: url, application_name: 'users-own-pool' });
    try {
      const stack = createStack({ logger: recordingLogger().logger, postgres: { pool } });
      await stack.ready();
      await request(appOf(stack)).get('/health/ready').expect(200);
      await stack.close();
      expect(pool.ended).toBe(false);
      const { rows } = await pool.query<{ one: number }>('SELECT 1 AS one');
      expect(rows).toEqual([{ one: 1 }]);
    } finally {
      await pool.end();
    }
  });
});
