import { BadRequestError, ConfigError, NotFoundError, RateLimitError, retry, ServiceUnavailableError, type RetryOptions } from '../index';

/** A sleep that records what was asked and returns at once. */
function recordingSleep() {
  const requested: number[] = [];
  const sleep = jest.fn(async (ms: number) => {
    requested.push(ms);
  });
  return { requested, sleep };
}

/** A function failing with a numbered error `failures` times, then returning 'done'. */
function failing(failures: number, makeError: (n: number) => unknown = (n) => new Error(`attempt ${n} failed`)) {
  return jest.fn(async (attempt: number) => {
    if (attempt <= failures) throw makeError(attempt);
    return 'done';
  });
}

describe('retry', () => {
  it('retries until the call succeeds, counting attempts from 1', async () => {
    const { sleep } = recordingSleep();
    const fn = failing(2);
    await expect(retry(fn, { sleep })).resolves.toBe('done');
    expect(fn.mock.calls.map(([attempt]) => attempt)).toEqual([1, 2, 3]);
    expect(sleep).toHaveBeenCalledTimes(2);
  });

  it('makes retries + 1 attempts, then rethrows the last error', async () => {
    const { sleep } = recordingSleep();
    const fn = failing(99);
    await expect(retry(fn, { retries: 3, sleep })).rejects.toThrow('attempt 4 failed');
    expect(fn).toHaveBeenCalledTimes(4);
    const none = failing(99);
    await expect(retry(none, { retries: 0, sleep })).rejects.toThrow('attempt 1 failed');
    expect(none).toHaveBeenCalledTimes(1);
  });

  it.each<[string, Partial<RetryOptions>, number[]]>([
    ['full jitter at its top (random → 1): the cap, doubling from minDelay', { random: () => 1 }, [100, 200, 400]],
    ['full jitter at its bottom (random → 0): no wait', { random: () => 0 }, [0, 0, 0]],
    ['full jitter halfway', { random: () => 0.5 }, [50, 100, 200]],
    ['the cap held at maxDelay', { random: () => 1, retries: 6, minDelay: '1s', maxDelay: '5s' }, [1000, 2000, 4000, 5000, 5000, 5000]],
    ['equal jitter at its bottom: half the cap', { random: () => 0, jitter: 'equal' }, [50, 100, 200]],
    ['no jitter: the cap itself', { random: () => 0, jitter: 'none', minDelay: 10 }, [10, 20, 40]],
  ])('waits with exponential backoff: %s', async (_name, options, expected) => {
    const { requested, sleep } = recordingSleep();
    await expect(retry(failing(99), { sleep, ...options })).rejects.toThrow();
    expect(requested).toEqual(expected);
  });

  it('keeps every full-jitter delay within [0, cap] for any random draw', async () => {
    const draws = [0.999999, 0.3, 0.7, 0.01, 0.5];
    let i = 0;
    const { requested, sleep } = recordingSleep();
    await expect(retry(failing(99), { sleep, retries: 5, minDelay: 100, maxDelay: 1000, random: () => draws[i++] })).rejects.toThrow();
    const caps = [100, 200, 400, 800, 1000];
    requested.forEach((delay, n) => {
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThanOrEqual(caps[n]);
    });
    expect(requested).toEqual([99, 60, 280, 8, 500]);
  });

  it('does not retry a 4xx HttpError, but does retry a 5xx one', async () => {
    const { sleep } = recordingSleep();
    const notFound = failing(99, () => new NotFoundError());
    await expect(retry(notFound, { sleep })).rejects.toBeInstanceOf(NotFoundError);
    expect(notFound).toHaveBeenCalledTimes(1);
    const tooMany = failing(99, () => new RateLimitError());
    await expect(retry(tooMany, { sleep })).rejects.toBeInstanceOf(RateLimitError);
    expect(tooMany).toHaveBeenCalledTimes(1);
    const unavailable = failing(1, () => new ServiceUnavailableError());
    await expect(retry(unavailable, { sleep })).resolves.toBe('done');
    expect(unavailable).toHaveBeenCalledTimes(2);
  });

  it('lets retryOn decide instead, with the error and the attempt number', async () => {
    const { sleep } = recordingSleep();
    const seen: Array<[string, number]> = [];
    const retryOn = (err: unknown, attempt: number) => {
      seen.push([(err as Error).constructor.name, attempt]);
      return err instanceof BadRequestError;
    };
    const fn = failing(2, () => new BadRequestError());
    await expect(retry(fn, { sleep, retryOn })).resolves.toBe('done');
    expect(seen).toEqual([
      ['BadRequestError', 1],
      ['BadRequestError', 2],
    ]);
    const plain = failing(99);
    await expect(retry(plain, { sleep, retryOn })).rejects.toThrow('attempt 1 failed');
    expect(plain).toHaveBeenCalledTimes(1);
  });

  it('calls onRetry before each wait with the error, the failed attempt and the delay', async () => {
    const { sleep } = recordingSleep();
    const onRetry = jest.fn();
    await retry(failing(2), { sleep, onRetry, random: () => 1 });
    expect(onRetry.mock.calls.map(([err, attempt, delay]) => [(err as Error).message, attempt, delay])).toEqual([
      ['attempt 1 failed', 1, 100],
      ['attempt 2 failed', 2, 200],
    ]);
  });

  it('waits on a timer by default', async () => {
    jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
    try {
      const settle = () => new Promise((r) => setImmediate(r));
      const fn = failing(1);
      const outcome = retry(fn, { minDelay: 50, random: () => 1 });
      await settle();
      expect(fn).toHaveBeenCalledTimes(1);
      jest.advanceTimersByTime(49);
      await settle();
      expect(fn).toHaveBeenCalledTimes(1);
      jest.advanceTimersByTime(1);
      await expect(outcome).resolves.toBe('done');
      expect(fn).toHaveBeenCalledTimes(2);
    } finally {
      jest.useRealTimers();
    }
  });

  describe('abort', () => {
    it('stops waiting the moment the signal aborts and rejects with its reason', async () => {
      const controller = new AbortController();
      const fn = failing(99);
      const outcome = retry(fn, { signal: controller.signal, minDelay: '1h', maxDelay: '1h', jitter: 'none' }).catch((e: unknown) => e);
      await new Promise((r) => setImmediate(r));
      expect(fn).toHaveBeenCalledTimes(1);
      const reason = new Error('client went away');
      controller.abort(reason);
      // An hour-long wait ended at once: the test would time out otherwise.
      expect(await outcome).toBe(reason);
      expect(fn).toHaveBeenCalledTimes(1);
    });

    it('stops an injected sleep that ignores the signal too', async () => {
      const controller = new AbortController();
      const never = () => new Promise<void>(() => undefined);
      const outcome = retry(failing(99), { signal: controller.signal, sleep: never }).catch((e: unknown) => e);
      await new Promise((r) => setImmediate(r));
      controller.abort();
      expect(await outcome).toMatchObject({ name: 'AbortError' });
    });

    it('does not call the function when the signal is already aborted', async () => {
      const fn = failing(0);
      const reason = new Error('already gone');
      await expect(retry(fn, { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
      expect(fn).not.toHaveBeenCalled();
    });

    it('does not retry after an attempt that failed while the signal aborted', async () => {
      const controller = new AbortController();
      const reason = new Error('timed out');
      const fn = jest.fn(async () => {
        controller.abort(reason);
        throw new Error('upstream failed');
      });
      await expect(retry(fn, { signal: controller.signal, sleep: recordingSleep().sleep })).rejects.toBe(reason);
      expect(fn).toHaveBeenCalledTimes(1);
    });
  });

  it.each<[string, unknown, RegExp]>([
    ['negative retries', { retries: -1 }, /retry\.retries: expected a whole number of retries/],
    ['an unknown jitter', { jitter: 'half' }, /retry\.jitter: expected one of 'full', 'equal', 'none', got 'half'/],
    ['maxDelay below minDelay', { minDelay: '1s', maxDelay: '100ms' }, /retry\.maxDelay: 100 ms is below minDelay \(1000 ms\)/],
    ['a bad duration', { minDelay: 'soon' }, /retry\.minDelay: expected a duration/],
    ['an unknown option', { retrys: 2 }, /retry\.retrys: unknown option; did you mean 'retries'/],
    ['a signal that is not one', { signal: {} }, /retry\.signal: expected an AbortSignal/],
  ])('refuses %s with a ConfigError, before calling anything', (_name, options, message) => {
    const fn = jest.fn();
    expect(() => retry(fn, options as RetryOptions)).toThrow(ConfigError);
    expect(() => retry(fn, options as RetryOptions)).toThrow(message);
    expect(fn).not.toHaveBeenCalled();
  });
});
