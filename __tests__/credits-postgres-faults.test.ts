import type { Server } from 'node:http';
import { Client } from 'pg';
import request from 'supertest';
import { createStack, type Stack } from '../lib/create-stack';
import { eventually, newApp, recordingLogger } from './helpers/app';
import { expectLedgerBalanced } from './helpers/ledger';
import { withClient } from './helpers/postgres';
import { hasPostgresServer, OwnPostgresServer } from './helpers/postgres-server';

// Backends terminated and the server restarted in the middle of a burst of spends. A private
// server, since this file stops it.
const describeOwn = hasPostgresServer ? describe : describe.skip;

describeOwn('credits on PostgreSQL through faults (#15)', () => {
  let server: OwnPostgresServer;
  const open: Array<{ http: Server; stack: Stack }> = [];
  beforeAll(async () => {
    server = await OwnPostgresServer.start();
  }, 60_000);
  afterAll(() => server.destroy(), 60_000);
  afterEach(async () => {
    for (const { http, stack } of open.splice(0)) {
      http.closeAllConnections();
      await new Promise((r) => http.close(r));
      await stack.close();
    }
  });

  const admin = <T>(work: (client: Client) => Promise<T>): Promise<T> => withClient(server.url, work);

  /** An instance whose handler counts the requests it served, so a fault can be injected mid-burst. */
  function instance(tablePrefix: string) {
    const { logger, lines } = recordingLogger();
    const stack = createStack({
      logger,
      rateLimit: false,
      ipFilter: false,
      cache: false,
      sanitize: false,
      auditLog: false,
      postgres: { url: server.url, tablePrefix, statementTimeout: '1s' },
      // A roomy retry delay is not needed: refunds retry with backoff until the store takes them.
      credits: { cost: 1, refundRetryDelay: '50ms' },
      insert: [{ before: 'credits', name: 'user', handler: (req, _res, next) => ((req.user = { id: String(req.headers['x-user']) }), next()) }],
    });
    const app = newApp();
    app.use(stack);
    app.get('/spend', (_req, res) => {
      served.count++;
      for (const waiter of served.waiters.splice(0)) waiter();
      res.json({ ok: true });
    });
    app.use(stack.errorHandler);
    const http = app.listen(0);
    open.push({ http, stack });
    return { stack, http, lines };
  }

  const served = { count: 0, waiters: [] as Array<() => void> };
  async function servedAtLeast(n: number): Promise<void> {
    while (served.count < n) await new Promise<void>((resolve) => served.waiters.push(resolve));
  }

  /**
   * A burst of `n` spends spread over two instances with `fault` injected once `after` of them
   * were served; every request must get an answer (a hang fails the test by its timeout), and
   * only 200, 402 or 503.
   */
  async function burst(instances: Array<{ http: Server }>, n: number, after: number, fault: () => Promise<void>) {
    served.count = 0;
    // supertest sends when then() is called: call it now, so the burst is in flight before the fault.
    const answers = Array.from({ length: n }, (_, i) =>
      request(instances[i % instances.length].http)
        .get('/spend')
        .set('X-User', 'acct')
        .then((r) => r),
    );
    await servedAtLeast(after);
    await fault();
    const responses = await Promise.all(answers);
    for (const r of responses) expect([200, 402, 503]).toContain(r.status);
    return responses;
  }

  /** Once every refund has been taken: the balance is what the 200s spent, and the books balance. */
  async function expectSettled(stack: Stack, prefix: string, start: number, ok: number): Promise<void> {
    await eventually(async () => expect(await stack.middleware.credits.balance('acct')).toBe(start - ok), 15_000);
    const { rows } = await admin((c) => c.query(`SELECT count(*)::int AS n FROM ${prefix}credit_ledger WHERE reason = 'spend'`));
    expect(rows[0].n).toBeGreaterThanOrEqual(ok);
    await expectLedgerBalanced(server.url, prefix);
  }

  it('backends terminated mid-burst: no request hangs, no double spend, the books balance, and it recovers by itself', async () => {
    const a = instance('term_');
    const b = instance('term_');
    await Promise.all([a.stack.ready(), b.stack.ready()]);
    await a.stack.middleware.credits.grant('acct', 1000);

    const responses = await burst([a, b], 80, 20, async () => {
      await admin((c) => c.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'express-perimeter'"));
    });
    const ok = responses.filter((r) => r.status === 200).length;
    expect(ok).toBeGreaterThanOrEqual(20);
    await expectSettled(a.stack, 'term_', 1000, ok);
    // New requests are served again, on both instances, without anyone restarting anything.
    await eventually(async () => {
      await request(a.http).get('/spend').set('X-User', 'acct').expect(200);
      await request(b.http).get('/spend').set('X-User', 'acct').expect(200);
    }, 15_000);
    await eventually(async () => expect(await a.stack.middleware.credits.balance('acct')).toBe(1000 - ok - 2));
    await expectLedgerBalanced(server.url, 'term_');
  }, 60_000);

  it('the server restarted mid-burst: no request hangs, no double spend, the books balance, and it recovers by itself', async () => {
    const a = instance('restart_');
    const b = instance('restart_');
    await Promise.all([a.stack.ready(), b.stack.ready()]);
    await a.stack.middleware.credits.grant('acct', 1000);

    const responses = await burst([a, b], 80, 20, async () => {
      await server.stop();
      await server.restart();
    });
    const ok = responses.filter((r) => r.status === 200).length;
    expect(ok).toBeGreaterThanOrEqual(20);
    await expectSettled(a.stack, 'restart_', 1000, ok);
    await eventually(async () => {
      await request(a.http).get('/spend').set('X-User', 'acct').expect(200);
      await request(b.http).get('/spend').set('X-User', 'acct').expect(200);
    }, 15_000);
    await expectLedgerBalanced(server.url, 'restart_');
    const lines = [...a.lines, ...b.lines];
    // What was given up (owed credits) would be logged at error: nothing was.
    expect(lines.filter((l) => l.code === 'ERR_CREDITS_REFUND_FAILED')).toEqual([]);
  }, 60_000);
});
