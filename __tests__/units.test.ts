import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as P from '../index';
import { ConfigError } from '../index';
import { defaultLogger } from '../lib/logger';
import { resetWarnings } from '../lib/warnings';
import { recordingLogger } from './helpers/app';

let dir: string;
let flagsFile: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'perimeter-units-'));
  flagsFile = join(dir, 'flags.json');
  writeFileSync(flagsFile, JSON.stringify({ beta: { enabled: true } }));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Whatever a factory returned: handlers with timers or watchers are closed after the test. */
async function settle(made: unknown): Promise<void> {
  const value = await made;
  await (value as { close?: () => unknown } | undefined)?.close?.();
}

// Every duration option outside the cache (whose ttl and maxAge are seconds), each given `value`.
const DURATIONS: Array<[string, (value: string) => unknown]> = [
  ['rateLimit.window', (window) => P.rateLimit({ window })],
  ['rateLimit.storeTimeout', (storeTimeout) => P.rateLimit({ storeTimeout })],
  ['rateLimit.tiers.*.window', (window) => P.rateLimit({ tiers: { free: { window } } })],
  ['timeout.ms', (ms) => P.timeout({ ms })],
  ['auth.lookupCacheTtl', (lookupCacheTtl) => P.auth({ lookup: async () => null, lookupCacheTtl })],
  ['auth.negativeCacheTtl', (negativeCacheTtl) => P.auth({ lookup: async () => null, negativeCacheTtl })],
  ['auth.userCacheTtl', (userCacheTtl) => P.auth({ jwt: { secret: 's'.repeat(32) }, loadUser: () => null, userCacheTtl })],
  ['auth.jwt.clockTolerance', (clockTolerance) => P.auth({ jwt: { secret: 's'.repeat(32), clockTolerance } })],
  ['auth.jwt.cacheTtl', (cacheTtl) => P.auth({ jwt: { secret: 's'.repeat(32), cacheTtl } })],
  ['tenant.cacheTtl', (cacheTtl) => P.tenant({ resolve: () => true, cacheTtl })],
  ['credits.storeTimeout', (storeTimeout) => P.credits({ storeTimeout })],
  ['credits.refundRetryDelay', (refundRetryDelay) => P.credits({ refundRetryDelay })],
  ['credits.reservationTtl', (reservationTtl) => P.credits({ reservationTtl })],
  ['auditLog.blockTimeout', (blockTimeout) => P.auditLog({ blockTimeout })],
  ['auditLog.retryDelay', (retryDelay) => P.auditLog({ retryDelay })],
  ['auditLog.maxRetryDelay', (maxRetryDelay) => P.auditLog({ retryDelay: '1ms', maxRetryDelay })],
  ['auditLog.writeTimeout', (writeTimeout) => P.auditLog({ writeTimeout })],
  ['auditLog.closeTimeout', (closeTimeout) => P.auditLog({ closeTimeout })],
  ['auditLog.flush(timeout)', (timeout) => P.auditLog().flush(timeout)],
  ['ipFilter.syncInterval', (syncInterval) => P.ipFilter({ syncInterval })],
  ['ipFilter.autoBan.within', (within) => P.ipFilter({ autoBan: { within } })],
  ['ipFilter.autoBan.for', (duration) => P.ipFilter({ autoBan: { for: duration } })],
  ['ipFilter.block(ip, ttl)', (ttl) => P.ipFilter().block('203.0.113.7', ttl)],
  ['featureFlags.syncInterval', (syncInterval) => P.featureFlags({ syncInterval })],
  ['featureFlags.source.pollInterval', (pollInterval) => P.featureFlags({ source: { file: flagsFile, pollInterval } })],
  ['featureFlags.source.debounce', (debounce) => P.featureFlags({ source: { file: flagsFile, debounce } })],
  ['circuitBreaker.rollingWindow', (rollingWindow) => P.circuitBreaker({ rollingWindow })],
  ['circuitBreaker.resetTimeout', (resetTimeout) => P.circuitBreaker({ resetTimeout })],
  ['createBreaker.timeout', (timeout) => P.createBreaker(async () => 1, { timeout })],
  ['metrics.analytics.window', (window) => P.metrics({ analytics: { window } })],
  ['retry.minDelay', (minDelay) => P.retry(() => 1, { minDelay, maxDelay: '1m' })],
  ['retry.maxDelay', (maxDelay) => P.retry(() => 1, { maxDelay })],
];

describe('durations', () => {
  it.each(DURATIONS)("%s takes a duration string like '30s', and refuses one it cannot read (#12)", async (_option, make) => {
    await settle(make('30s'));
    let refused: unknown;
    try {
      await settle(make('two seconds'));
    } catch (err) {
      refused = err;
    }
    expect(refused).toBeInstanceOf(ConfigError);
    expect((refused as ConfigError).message).toMatch(/expected a duration like/);
  });
});

describe('a bare number that is almost surely seconds (ERR_DURATION_UNIT)', () => {
  beforeEach(() => resetWarnings());
  afterEach(() => jest.restoreAllMocks());

  it("warns once, through the stack's logger, that rateLimit.window: 60 is 60 ms and to write '60s' (#12)", async () => {
    const { logger, lines } = recordingLogger();
    const stack = P.createStack({ logger, rateLimit: { window: 60 } });
    const again = P.createStack({ logger, rateLimit: { window: 60 } });
    const warned = lines.filter((line) => line.code === 'ERR_DURATION_UNIT');
    expect(warned).toEqual([
      expect.objectContaining({
        level: 'warn',
        option: 'rateLimit.window',
        value: 60,
        suggestion: "'60s'",
        message:
          "rateLimit.window is 60, a number of milliseconds, and a rate-limit window that short is almost surely meant in seconds: write '60s' (or '60ms' to keep milliseconds)",
      }),
    ]);
    await Promise.all([stack.close(), again.close()]);
  });

  it.each([
    ['timeout.ms', () => P.timeout({ ms: 30 }), "'30s'"],
    ['rateLimit.window', () => P.rateLimit({ window: 1 }), "'1s'"],
    ['rateLimit.tiers.free.window', () => P.rateLimit({ tiers: { free: { window: 10 } } }), "'10s'"],
    ['timeout.ms', () => P.timeout({ ms: '15' }), "'15s'"],
  ])('%s: a factory used alone warns once through the default logger (#12)', (option, make, suggestion) => {
    const warn = jest.spyOn(defaultLogger(), 'warn').mockImplementation(() => defaultLogger());
    make();
    make();
    expect(warn).toHaveBeenCalledTimes(1);
    expect(warn).toHaveBeenCalledWith(expect.stringContaining(`write ${suggestion}`), expect.objectContaining({ code: 'ERR_DURATION_UNIT', option }));
  });

  it.each([
    ['a string with a unit', () => P.rateLimit({ window: '60ms' })],
    ['1000 ms or more', () => P.rateLimit({ window: 1000 })],
    ['timeout 0 (no deadline)', () => P.timeout({ ms: 0 })],
    ['a short duration that can be meant (storeTimeout)', () => P.rateLimit({ storeTimeout: 50 })],
    ['the defaults', () => P.createStack({ logger: recordingLogger().logger })],
  ])('stays quiet for %s', async (_case, make) => {
    const warn = jest.spyOn(defaultLogger(), 'warn').mockImplementation(() => defaultLogger());
    await settle(make());
    expect(warn).not.toHaveBeenCalled();
  });

  it('is silenced with PERIMETER_SILENCE=ERR_DURATION_UNIT', () => {
    const warn = jest.spyOn(defaultLogger(), 'warn').mockImplementation(() => defaultLogger());
    process.env.PERIMETER_SILENCE = 'ERR_DURATION_UNIT';
    try {
      P.timeout({ ms: 30 });
    } finally {
      delete process.env.PERIMETER_SILENCE;
    }
    expect(warn).not.toHaveBeenCalled();
  });
});
