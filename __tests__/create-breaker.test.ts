import { Registry } from 'prom-client';
import {
  ConfigError,
  createBreaker,
  GatewayTimeoutError,
  NotFoundError,
  ServiceUnavailableError,
  type BreakerCallSignal,
  type BreakerTransition,
  type Stores,
} from '../index';
import { MemoryStores } from '../lib/stores';
import type { BreakerAnnouncement, BreakerStateStore } from '../lib/stores/breaker-store';
import { recordingLogger } from './helpers/app';

function manualClock(start = 5_000_000) {
  let t = start;
  return { now: () => t, advance: (ms: number) => void (t += ms) };
}

const quiet = () => recordingLogger().logger;

/** A promise the test settles by hand. */
function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

afterEach(() => {
  jest.useRealTimers();
});

describe('createBreaker', () => {
  it('fires the function with its arguments and counts the calls', async () => {
    const add = jest.fn(async (a: number, b: number) => a + b);
    const breaker = createBreaker(add, { logger: quiet() });
    await expect(breaker.fire(2, 3)).resolves.toBe(5);
    await expect(breaker.fire(1, 1)).resolves.toBe(2);
    expect(add).toHaveBeenCalledWith(2, 3);
    expect(breaker.state).toBe('CLOSED');
    expect(breaker.stats).toEqual({ fires: 2, successes: 2, failures: 0, timeouts: 0, rejects: 0 });
    expect(breaker.name).toBe('mockConstructor');
    await breaker.shutdown();
  });

  it('opens after the failure threshold and then rejects with 503 CIRCUIT_OPEN without calling the function', async () => {
    const clock = manualClock();
    const fn = jest.fn(async (_id: string): Promise<string> => {
      throw new Error('ECONNREFUSED');
    });
    const breaker = createBreaker(fn, { name: 'inventory', now: clock.now, logger: quiet() });
    const events: string[] = [];
    breaker.on('open', (t: BreakerTransition) => events.push(`open:${t.reason}`));
    breaker.on('failure', () => events.push('failure'));
    breaker.on('reject', () => events.push('reject'));

    for (let i = 0; i < 5; i++) await expect(breaker.fire('sku')).rejects.toThrow('ECONNREFUSED');
    expect(breaker.state).toBe('OPEN');
    const err = await breaker.fire('sku').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ServiceUnavailableError);
    expect(err).toMatchObject({ status: 503, code: 'CIRCUIT_OPEN', headers: { 'Retry-After': '30' } });
    expect(fn).toHaveBeenCalledTimes(5);
    expect(breaker.stats).toEqual({ fires: 6, successes: 0, failures: 5, timeouts: 0, rejects: 1 });
    expect(events).toEqual(['failure', 'failure', 'failure', 'failure', 'failure', 'open:5 of 5 calls failed within 10000 ms', 'reject']);
    clock.advance(10_000);
    await expect(breaker.fire('sku')).rejects.toMatchObject({ headers: { 'Retry-After': '20' } });
  });

  it('returns fallback(...args) while open', async () => {
    const fn = jest.fn(async (_a: string, _b: number): Promise<string> => {
      throw new Error('down');
    });
    const fallback = jest.fn((a: string, b: number) => `cached ${a} ${b}`);
    const breaker = createBreaker(fn, { volumeThreshold: 1, fallback, logger: quiet() });
    await expect(breaker.fire('x', 1)).rejects.toThrow('down');
    const rejects: unknown[] = [];
    breaker.on('reject', (e) => rejects.push(e));
    await expect(breaker.fire('y', 2)).resolves.toBe('cached y 2');
    expect(fallback).toHaveBeenCalledWith('y', 2);
    expect(fn).toHaveBeenCalledTimes(1);
    expect(rejects).toHaveLength(1);
    await breaker.shutdown();
  });

  it('half-opens after resetTimeout: a successful probe closes, a failed one reopens, one event per change', async () => {
    const clock = manualClock();
    let fail = true;
    const breaker = createBreaker(
      async () => {
        if (fail) throw new Error('boom');
        return 'ok';
      },
      { volumeThreshold: 2, resetTimeout: '5s', now: clock.now, logger: quiet() },
    );
    const events: string[] = [];
    for (const name of ['open', 'halfOpen', 'close']) breaker.on(name, (t: BreakerTransition) => events.push(`${t.from}->${t.to}`));

    await breaker.fire().catch(() => undefined);
    await breaker.fire().catch(() => undefined);
    expect(breaker.state).toBe('OPEN');
    clock.advance(5_000);
    expect(breaker.state).toBe('HALF_OPEN');
    await expect(breaker.fire()).rejects.toThrow('boom');
    expect(breaker.state).toBe('OPEN');
    clock.advance(4_999);
    await expect(breaker.fire()).rejects.toMatchObject({ code: 'CIRCUIT_OPEN' });
    clock.advance(1);
    fail = false;
    await expect(breaker.fire()).resolves.toBe('ok');
    expect(breaker.state).toBe('CLOSED');
    expect(events).toEqual(['CLOSED->OPEN', 'OPEN->HALF_OPEN', 'HALF_OPEN->OPEN', 'OPEN->HALF_OPEN', 'HALF_OPEN->CLOSED']);
    await breaker.shutdown();
  });

  it('lets halfOpenMax probes through at once and rejects the rest', async () => {
    const clock = manualClock();
    const calls: Array<ReturnType<typeof deferred<string>>> = [];
    const breaker = createBreaker(
      () => {
        const d = deferred<string>();
        calls.push(d);
        return d.promise;
      },
      { volumeThreshold: 1, halfOpenMax: 2, now: clock.now, logger: quiet() },
    );
    const first = breaker.fire();
    calls[0].reject(new Error('down'));
    await expect(first).rejects.toThrow('down');
    clock.advance(30_000);
    const probes = [breaker.fire(), breaker.fire()];
    await expect(breaker.fire()).rejects.toMatchObject({ code: 'CIRCUIT_OPEN', headers: { 'Retry-After': '1' } });
    expect(calls).toHaveLength(3);
    calls[1].resolve('a');
    calls[2].resolve('b');
    await expect(Promise.all(probes)).resolves.toEqual(['a', 'b']);
    expect(breaker.state).toBe('CLOSED');
  });

  describe('timeout', () => {
    it('fails a call that exceeds timeout with 504 GATEWAY_TIMEOUT and the timeout and failure events', async () => {
      jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
      const late = deferred<string>();
      const breaker = createBreaker(() => late.promise, { timeout: '2s', volumeThreshold: 1, logger: quiet() });
      const seen: string[] = [];
      for (const name of ['timeout', 'failure', 'success']) breaker.on(name, () => seen.push(name));
      const outcome = breaker.fire().catch((e: unknown) => e);
      jest.advanceTimersByTime(1_999);
      expect(seen).toEqual([]);
      jest.advanceTimersByTime(1);
      const err = await outcome;
      expect(err).toBeInstanceOf(GatewayTimeoutError);
      expect(err).toMatchObject({ status: 504, code: 'GATEWAY_TIMEOUT', details: { timeout_ms: 2000 } });
      expect(seen).toEqual(['timeout', 'failure']);
      expect(breaker.stats).toMatchObject({ failures: 1, timeouts: 1 });
      expect(breaker.state).toBe('OPEN');
      // The late result counts for nothing.
      late.resolve('too late');
      await Promise.resolve();
      expect(seen).toEqual(['timeout', 'failure']);
      expect(breaker.stats.successes).toBe(0);
      await breaker.shutdown();
    });

    it('passes { signal } as the last argument with abortOnTimeout, aborted with the timeout error', async () => {
      jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
      let seen: AbortSignal | undefined;
      const breaker = createBreaker(
        (id: string, { signal }: BreakerCallSignal) => {
          seen = signal;
          return new Promise<string>((_resolve, reject) => signal.addEventListener('abort', () => reject(new Error(`aborted ${id}`))));
        },
        { timeout: 100, abortOnTimeout: true, logger: quiet() },
      );
      const outcome = breaker.fire('job-1').catch((e: unknown) => e);
      expect(seen?.aborted).toBe(false);
      jest.advanceTimersByTime(100);
      expect(await outcome).toBeInstanceOf(GatewayTimeoutError);
      expect(seen?.aborted).toBe(true);
      expect(seen?.reason).toMatchObject({ code: 'GATEWAY_TIMEOUT' });
      expect(breaker.stats).toMatchObject({ failures: 1, timeouts: 1 });
      await breaker.shutdown();
    });

    it('passes no extra argument without abortOnTimeout, and none at all with timeout: false', async () => {
      const fn = jest.fn(async (...args: unknown[]) => args.length);
      const breaker = createBreaker(fn, { timeout: false, logger: quiet() });
      await expect(breaker.fire('a', 'b')).resolves.toBe(2);
    });
  });

  describe('errorFilter', () => {
    it('does not count 4xx HttpErrors by default, but still rethrows them', async () => {
      const breaker = createBreaker(async () => {
        throw new NotFoundError('No such user.');
      }, { volumeThreshold: 1, logger: quiet() });
      for (let i = 0; i < 10; i++) await expect(breaker.fire()).rejects.toBeInstanceOf(NotFoundError);
      expect(breaker.state).toBe('CLOSED');
      expect(breaker.stats).toEqual({ fires: 10, successes: 10, failures: 0, timeouts: 0, rejects: 0 });
    });

    it('ignores what a custom errorFilter accepts and counts the rest, sync throws included', async () => {
      let code = 'ENOENT';
      const breaker = createBreaker(
        () => {
          throw Object.assign(new Error(code), { code });
        },
        { volumeThreshold: 2, errorFilter: (err) => (err as { code?: string }).code === 'ENOENT', logger: quiet() },
      );
      await expect(breaker.fire()).rejects.toThrow('ENOENT');
      await expect(breaker.fire()).rejects.toThrow('ENOENT');
      expect(breaker.state).toBe('CLOSED');
      code = 'ECONNRESET';
      await expect(breaker.fire()).rejects.toThrow('ECONNRESET');
      await expect(breaker.fire()).rejects.toThrow('ECONNRESET');
      expect(breaker.state).toBe('OPEN');
    });
  });

  it('moves to half-open on its own timer, exports the gauge, and shutdown() clears the timer', async () => {
    jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
    const registry = new Registry();
    const breaker = createBreaker(async () => {
      throw new Error('down');
    }, { name: 'search', volumeThreshold: 1, resetTimeout: '10s', registry, logger: quiet() });
    const gaugeLine = async () => (await registry.getSingleMetricAsString('circuit_breaker_state')).split('\n').find((l) => l.startsWith('circuit_breaker_state{'));
    expect(await gaugeLine()).toBe('circuit_breaker_state{name="search"} 0');
    const halfOpen = jest.fn();
    breaker.on('halfOpen', halfOpen);
    await breaker.fire().catch(() => undefined);
    expect(await gaugeLine()).toBe('circuit_breaker_state{name="search"} 2');
    expect(jest.getTimerCount()).toBe(1);
    jest.advanceTimersByTime(10_000);
    expect(halfOpen).toHaveBeenCalledTimes(1);
    expect(await gaugeLine()).toBe('circuit_breaker_state{name="search"} 1');

    await breaker.fire().catch(() => undefined);
    expect(breaker.state).toBe('OPEN');
    expect(jest.getTimerCount()).toBe(1);
    await breaker.shutdown();
    expect(jest.getTimerCount()).toBe(0);
    await expect(breaker.fire()).rejects.toThrow("Circuit breaker 'search' was shut down");
  });

  it('survives a throwing listener and logs it', async () => {
    const { logger, lines } = recordingLogger();
    const breaker = createBreaker(async () => 'fine', { name: 'listener', logger });
    breaker.on('success', () => {
      throw new Error('listener bug');
    });
    await expect(breaker.fire()).resolves.toBe('fine');
    expect(lines.find((l) => l.code === 'CIRCUIT_BREAKER_LISTENER_ERROR')).toMatchObject({ breaker: 'listener', event: 'success', err: { message: 'listener bug' } });
  });

  it('logs transitions: open at warn, half-open and close at info', async () => {
    const clock = manualClock();
    const { logger, lines } = recordingLogger();
    let fail = true;
    const breaker = createBreaker(async () => {
      if (fail) throw new Error('x');
    }, { name: 'logged', volumeThreshold: 1, now: clock.now, logger });
    await breaker.fire().catch(() => undefined);
    clock.advance(30_000);
    fail = false;
    await breaker.fire();
    expect(lines.filter((l) => l.breaker === 'logged').map((l) => [l.level, l.code])).toEqual([
      ['warn', 'CIRCUIT_OPEN'],
      ['info', 'CIRCUIT_HALF_OPEN'],
      ['info', 'CIRCUIT_CLOSED'],
    ]);
    await breaker.shutdown();
  });

  it.each<[string, () => unknown, RegExp]>([
    ['a missing function', () => createBreaker(undefined as never), /createBreaker: expected the function to protect/],
    ['an unknown option', () => createBreaker(async () => 1, { timout: 5 } as never), /createBreaker\.timout: unknown option; did you mean 'timeout'/],
    ['a bad timeout', () => createBreaker(async () => 1, { timeout: 'fast' }), /createBreaker\.timeout: expected a duration/],
    ['a non-function errorFilter', () => createBreaker(async () => 1, { errorFilter: true as never }), /createBreaker\.errorFilter: expected a function/],
    ['a bad percentage', () => createBreaker(async () => 1, { errorThresholdPercentage: -5 }), /createBreaker\.errorThresholdPercentage/],
  ])('refuses %s with a ConfigError', (_name, build, message) => {
    expect(build).toThrow(ConfigError);
    expect(build).toThrow(message);
  });
});

describe('createBreaker shared state', () => {
  it('opens and closes every breaker of the same name on the same stores', async () => {
    const clock = manualClock();
    const stores = new MemoryStores();
    let fail = true;
    const work = async () => {
      if (fail) throw new Error('down');
      return 'ok';
    };
    const a = createBreaker(work, { name: 'billing', volumeThreshold: 1, stores, now: clock.now, logger: quiet() });
    const b = createBreaker(work, { name: 'billing', stores, now: clock.now, logger: quiet() });
    const other = createBreaker(work, { name: 'other', stores, now: clock.now, logger: quiet() });
    const seen: BreakerTransition[] = [];
    b.on('open', (t: BreakerTransition) => seen.push(t));
    b.on('close', (t: BreakerTransition) => seen.push(t));
    await new Promise((r) => setImmediate(r));

    await a.fire().catch(() => undefined);
    expect(a.state).toBe('OPEN');
    expect(b.state).toBe('OPEN');
    expect(other.state).toBe('CLOSED');
    await expect(b.fire()).rejects.toMatchObject({ code: 'CIRCUIT_OPEN', headers: { 'Retry-After': '30' } });

    clock.advance(30_000);
    fail = false;
    await expect(a.fire()).resolves.toBe('ok');
    expect(b.state).toBe('CLOSED');
    expect(seen.map((t) => [t.to, t.remote])).toEqual([
      ['OPEN', true],
      ['CLOSED', true],
    ]);
    await Promise.all([a.shutdown(), b.shutdown(), other.shutdown()]);
  });

  it('ignores a stored state older than announcements already applied (a slow first load)', async () => {
    const handlers: Array<(a: BreakerAnnouncement) => void> = [];
    const loaded = deferred<BreakerAnnouncement | undefined>();
    const store: BreakerStateStore = {
      announce: async () => ({ applied: true, gen: 1 }),
      subscribe: async (_name, handler) => {
        handlers.push(handler);
        return async () => undefined;
      },
      load: () => loaded.promise,
      onResync: () => () => undefined,
    };
    const stores = { create: () => store } as unknown as Stores;
    const breaker = createBreaker(async () => 'ok', { name: 'late-load', stores, logger: quiet() });
    await new Promise((r) => setImmediate(r));
    const open: BreakerAnnouncement = { name: 'late-load', state: 'OPEN', remainingMs: 30_000, gen: 5, origin: 'other' };
    handlers[0](open);
    handlers[0]({ ...open, state: 'CLOSED', remainingMs: 0, gen: 6 });
    expect(breaker.state).toBe('CLOSED');
    // The load was answered before gen 6 but arrives after it.
    loaded.resolve(open);
    await new Promise((r) => setImmediate(r));
    expect(breaker.state).toBe('CLOSED');
    await breaker.shutdown();
  });

  it('converges on the last announcement when two instances decide at once (issue 6 consistency model)', async () => {
    // A store that delivers in announce order, but only when flushed: two instances' probes can
    // finish (one failing, one succeeding) before either hears of the other.
    const queue: BreakerAnnouncement[] = [];
    const handlers: Array<(a: BreakerAnnouncement) => void> = [];
    let gen = 0;
    const store: BreakerStateStore = {
      announce: async (name, state, remainingMs, origin) => {
        queue.push({ name, state, remainingMs, gen: ++gen, origin });
        return { applied: true, gen };
      },
      subscribe: async (_name, handler) => {
        handlers.push(handler);
        return async () => undefined;
      },
      load: async () => undefined,
      onResync: () => () => undefined,
    };
    const flush = () => {
      for (const announcement of queue.splice(0)) for (const h of [...handlers]) h(announcement);
    };
    const stores = { create: () => store } as unknown as Stores;
    const clockA = manualClock();
    const clockB = manualClock();
    let failA = true;
    const a = createBreaker(async () => {
      if (failA) throw new Error('a down');
    }, { name: 'x', volumeThreshold: 1, stores, now: clockA.now, logger: quiet() });
    const b = createBreaker(async () => undefined, { name: 'x', stores, now: clockB.now, logger: quiet() });
    await new Promise((r) => setImmediate(r));

    await a.fire().catch(() => undefined);
    flush();
    expect([a.state, b.state]).toEqual(['OPEN', 'OPEN']);

    clockA.advance(30_000);
    clockB.advance(30_000);
    // A's probe fails (announced first), B's succeeds (announced second).
    await a.fire().catch(() => undefined);
    await b.fire();
    expect([a.state, b.state]).toEqual(['OPEN', 'CLOSED']);
    flush();
    expect([a.state, b.state]).toEqual(['CLOSED', 'CLOSED']);
    failA = false;
    await Promise.all([a.shutdown(), b.shutdown()]);
  });
});
