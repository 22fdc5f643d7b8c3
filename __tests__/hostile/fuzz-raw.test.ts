import fc from 'fast-check';
import { rawRequest } from './helpers-generators';
import { CONCURRENCY, checkOutcome, fuzzSeed, noteAwaiting, pool, processWatch, replayable, report, scaled, send, sendRaw, sortViolations, startTarget, tooManyLost, type Target, type Violation } from './helpers';

// Issue #11: requests Node's own client will not send (control characters, bad request lines,
// conflicting lengths, oversized heads), over raw sockets. What the parser refuses must come back
// as the JSON envelope from handleClientErrors, with a request id and Connection: close; what it
// accepts goes through the whole stack and is held to the same properties as every other answer.
// Generous: a run stops early on a dead server (tooManyLost), so this only bounds a run on a badly overloaded machine.
jest.setTimeout(600_000);

describe('hostile fuzz: malformed HTTP over raw sockets (#11)', () => {
  const seed = fuzzSeed();
  const count = scaled(8_000);
  let target: Target;
  let watch: ReturnType<typeof processWatch>;
  beforeAll(async () => {
    watch = processWatch();
    target = await startTarget('memory');
  });
  afterAll(async () => {
    watch?.stop();
    await target?.close();
  });

  it(`answers ${count} raw requests, refused or not, with the envelope, a request id and nothing internal`, replayable(seed, async () => {
    const requests = fc.sample(rawRequest, { seed, numRuns: count });
    const outcomes = await pool(requests, CONCURRENCY, (r) => sendRaw(target.port, Buffer.from(r.bytes, 'latin1')), tooManyLost());
    const violations: Violation[] = [];
    for (const [i, out] of outcomes.entries()) {
      if (out === undefined) continue;
      const [method = '', path = ''] = requests[i].bytes.split(/[\r\n]/)[0].split(' ');
      const fr = { method, path, headers: [] };
      if (out.error !== undefined) {
        // Node closes a CONNECT (a tunnel request) without an answer when no 'connect' listener
        // is installed: documented behaviour of http.Server, nothing is leaked.
        if (method === 'CONNECT' && out.raw === '') continue;
        violations.push({ kind: 'transport', detail: `${out.error}; read ${JSON.stringify(out.raw.slice(0, 120))}`, request: requests[i].what });
        continue;
      }
      const hostless = / HTTP\/1\.1\r\n/.test(requests[i].bytes.split('\r\n\r\n')[0] + '\r\n') && !/\r\nHost:/i.test(requests[i].bytes);
      if (hostless && out.status === 400 && out.headers['x-request-id'] === undefined) {
        violations.push({ kind: 'missing-host', detail: `400 without the envelope: ${JSON.stringify(out.raw.slice(0, 120))}`, request: requests[i].what });
        continue;
      }
      // HTTP/1.1 requires Host: the stack (attached) refuses what Node no longer does.
      if (hostless && out.status < 400) violations.push({ kind: 'missing-host', detail: `answered ${out.status}`, request: requests[i].what });
      violations.push(...checkOutcome(target, fr, out, requests[i].bytes));
      // The parser's own answers: nothing more can be read on that connection.
      const parserAnswer = (out.status === 400 || out.status === 431) && out.headers['x-powered-by'] === undefined && out.headers['content-security-policy'] === undefined;
      if (parserAnswer && out.headers.connection !== 'close') violations.push({ kind: 'envelope', detail: `parser answer ${out.status} without Connection: close`, request: requests[i].what });
    }
    // And the server still serves everyone else.
    const after = await send(target, { method: 'GET', path: '/items/1', headers: [] });
    expect(after.status).toBe(200);
    expect(outcomes.filter((o) => o !== undefined)).toHaveLength(count);
    const { failing, awaiting } = sortViolations(violations);
    noteAwaiting('raw', seed, awaiting);
    if (failing.length > 0) throw new Error(report('hostile fuzz: raw sockets', seed, failing));
  }));

  it('raises no unhandled rejection and no uncaught exception', replayable(seed, () => {
    expect(watch.seen).toEqual([]);
  }));
});
