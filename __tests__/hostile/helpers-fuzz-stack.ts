import fc from 'fast-check';
import { verifyAuditChain } from '../../index';
import { fuzzRequest } from './helpers-generators';
import {
  CONCURRENCY,
  garbageCollector,
  noteAwaiting,
  pool,
  processWatch,
  prototypeSnapshot,
  report,
  ROUTES,
  scaled,
  send,
  series,
  settledHeap,
  replayable,
  sortViolations,
  startTarget,
  checkOutcome,
  fuzzSeed,
  tooManyLost,
  type Target,
  type Violation,
} from './helpers';

/** Options of {@link describeFuzzStack}. */
export interface FuzzStackOptions {
  kind: 'memory' | 'redis';
  redis?: string;
  batches: number;
  perBatch: number;
  /** Check that the heap settles (needs at least three batches). */
  heap: boolean;
}

/**
 * The hostile fuzz of the whole stack as one describe block: `batches` batches of generated
 * requests sent 16 at a time over keep-alive connections, every answer checked as it comes back,
 * then the whole-process properties (prototypes, unhandled errors, metrics series, heap).
 */
export function describeFuzzStack(title: string, options: FuzzStackOptions): void {
  describe(title, () => {
    const seed = fuzzSeed();
    const perBatch = scaled(options.perBatch);
    let target: Target;
    let watch: ReturnType<typeof processWatch>;
    let prototypesBefore: Record<string, string[]>;
    const heaps: number[] = [];
    const seriesAfter: Array<{ lines: number; routes: Set<string>; newPaths: number }> = [];
    const gc = garbageCollector();
    let sent = 0;

    beforeAll(async () => {
      prototypesBefore = prototypeSnapshot();
      watch = processWatch();
      target = await startTarget(options.kind, options.redis);
    });
    afterAll(async () => {
      watch?.stop();
      await target?.close();
    });

    it(`answers ${options.batches} batches of ${perBatch} hostile requests with the error envelope, a request id, no unexpected 5xx and nothing internal`, replayable(seed, async () => {
      const violations: Violation[] = [];
      const seenPaths = new Set<string>();
      for (let batch = 0; batch < options.batches; batch++) {
        const requests = fc.sample(fuzzRequest, { seed: seed + batch, numRuns: perBatch });
        const outcomes = await pool(requests, CONCURRENCY, (fr) => send(target, fr), tooManyLost());
        for (const [i, outcome] of outcomes.entries()) if (outcome !== undefined) violations.push(...checkOutcome(target, requests[i], outcome));
        sent += outcomes.filter((o) => o !== undefined).length;
        if (sent < (batch + 1) * perBatch) break;
        target.views.clear();

        let newPaths = 0;
        for (const fr of requests) {
          const path = fr.path.split('?')[0];
          if (!seenPaths.has(path)) newPaths++;
          seenPaths.add(path);
        }
        seriesAfter.push({ ...(await series(target.stack, 'http_requests_total')), newPaths });
        if (gc !== undefined && options.heap) heaps.push(await settledHeap(gc));
      }
      const { failing, awaiting } = sortViolations(violations);
      noteAwaiting(title, seed, awaiting);
      if (failing.length > 0) throw new Error(report(title, seed, failing));
      expect(sent).toBe(options.batches * perBatch);
    }));

    it('keeps the audit hash chain valid whatever the requests carried', replayable(seed, async () => {
      expect(sent).toBeGreaterThan(0);
      expect(await target.stack.middleware.auditLog.flush()).toBe(true);
      // The sink keeps the last records only: the chain is checked from the first one kept.
      expect(target.audited.length).toBeGreaterThan(10);
      expect(verifyAuditChain(target.audited, { genesis: false })).toMatchObject({ valid: true, count: target.audited.length });
    }));

    it('logs at error level only the 5xx of the routes that fail on purpose', replayable(seed, () => {
      expect(sent).toBeGreaterThan(0);
      expect(target.unexpectedErrors).toEqual([]);
    }));

    it('leaves Object.prototype and the other shared prototypes as they were', replayable(seed, () => {
      expect(sent).toBeGreaterThan(0);
      expect(prototypeSnapshot()).toEqual(prototypesBefore);
      expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    }));

    it('raises no unhandled rejection and no uncaught exception', replayable(seed, () => {
      expect(sent).toBeGreaterThan(0);
      expect(watch.seen).toEqual([]);
    }));

    it('keeps http_requests_total bounded: only route templates as labels, and hundreds of new paths add next to no series', replayable(seed, () => {
      expect(seriesAfter.length).toBeGreaterThanOrEqual(3);
      const known = new Set([...ROUTES, '#unmatched', '/metrics']);
      for (const { routes } of seriesAfter) for (const route of routes) expect(known).toContain(route);
      // Series are method × route × status: after the first batches only rare combinations are
      // new (a few dozen), while each batch brings hundreds of paths never seen before. A path
      // that became a label would add a series per new path.
      const second = seriesAfter[1];
      const last = seriesAfter[seriesAfter.length - 1];
      const newPaths = seriesAfter.slice(2).reduce((sum, s) => sum + s.newPaths, 0);
      expect(last.lines - second.lines).toBeLessThan(Math.max(60, newPaths / 10));
    }));

    (options.heap && gc !== undefined ? it : it.skip)('lets the heap settle: after the last batch it is not notably above the second', replayable(seed, () => {
      expect(heaps.length).toBeGreaterThanOrEqual(3);
      // Stores are bounded and filled by the first batch, so the heap is flat from the second on
      // (within a megabyte of V8 bookkeeping). The bound is loose on purpose, never flaky: a
      // request, socket or buffer kept per request (several kB each) would still exceed it.
      const second = heaps[1];
      const last = heaps[heaps.length - 1];
      expect(last).toBeLessThan(second * 1.1 + 6 * 1024 * 1024);
    }));
  });
}
