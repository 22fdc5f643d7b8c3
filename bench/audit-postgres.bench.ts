// Audit records per second through the { postgres } sink: one instance, and two instances sharing
// one chain, at batch sizes 10 and 100, beside a bare `SELECT 1` round trip on the same server.
// Run: npx ts-node --transpile-only bench/audit-postgres.bench.ts (starts a private PostgreSQL;
// DATABASE_URL uses yours instead, writing tables with the prefix bench_<n>_).
import { performance } from 'node:perf_hooks';
import { Pool } from 'pg';
import winston from 'winston';
import { PostgresAuditSink } from '../lib/audit/postgres-sink';
import type { AuditRecord } from '../lib/audit/record';
import { PostgresDatabase } from '../lib/postgres/database';
import { parsePostgresOption } from '../lib/postgres/options';
import { OwnPostgresServer } from '../__tests__/helpers/postgres-server';

const RECORDS = 10_000;
const logger = winston.createLogger({ silent: true });

function record(i: number): AuditRecord {
  return { timestamp: new Date().toISOString(), event: 'GAME_CREATED', user_id: `user-${i % 97}`, tenant_id: null, action: 'POST /api/games', route: '/api/games', ip: '10.0.0.1', status: 201, resource_id: i, request_id: `req-${i}` };
}

async function run(url: string, prefix: string, instances: number, batchSize: number): Promise<number> {
  const dbs = Array.from({ length: instances }, () => new PostgresDatabase(parsePostgresOption({ url, tablePrefix: prefix }), { logger }));
  await Promise.all(dbs.map((db) => db.whenSchema()));
  const started = performance.now();
  // Each instance writes its share one batch after another, as its queue worker does.
  await Promise.all(
    dbs.map(async (db, k) => {
      const sink = new PostgresAuditSink(db, '0'.repeat(64), 'bench');
      for (let from = k * (RECORDS / instances); from < (k + 1) * (RECORDS / instances); from += batchSize) {
        await sink.write(Array.from({ length: batchSize }, (_, i) => record(from + i)), `${k}-${from}`);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  await Promise.all(dbs.map((db) => db.close()));
  return RECORDS / seconds;
}

async function main(): Promise<void> {
  const own = process.env.DATABASE_URL ? undefined : await OwnPostgresServer.start();
  const url = process.env.DATABASE_URL ?? (own as OwnPostgresServer).url;
  try {
    const pool = new Pool({ connectionString: url, max: 1 });
    await pool.query('SELECT 1');
    const n = 2000;
    const t = performance.now();
    for (let i = 0; i < n; i++) await pool.query('SELECT 1');
    const selectMs = (performance.now() - t) / n;
    await pool.end();
    console.log(`SELECT 1 round trip: ${selectMs.toFixed(3)} ms`);
    let k = 0;
    for (const batchSize of [10, 100]) {
      for (const instances of [1, 2]) {
        const perSecond = await run(url, `bench_${k++}_`, instances, batchSize);
        console.log(`batch ${batchSize}, ${instances} instance(s): ${Math.round(perSecond)} records/s (${(batchSize / perSecond * 1000 * instances).toFixed(2)} ms per batch)`);
      }
    }
  } finally {
    await own?.destroy();
  }
}

void main();
