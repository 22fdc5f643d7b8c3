import { ConfigError, isHttpError } from './errors';
import { checkOptions, oneOf } from './options';
import { describe, parseDuration } from './units';

/** Options of {@link retry}. */
export interface RetryOptions {
  /** Retries after the first attempt (so at most `retries + 1` calls). Defaults to 3. */
  retries?: number;
  /** Cap of the first retry's delay; each later retry doubles it. Defaults to '100ms'. */
  minDelay?: number | string;
  /** Largest delay between two attempts. Defaults to '5s'. */
  maxDelay?: number | string;
  /** 'full': a random delay from 0 to the cap; 'equal': half the cap plus a random half; 'none': the cap itself. Defaults to 'full'. */
  jitter?: 'full' | 'equal' | 'none';
  /** Whether the error of attempt number `attempt` (1 for the first call) is worth another try. Defaults to any error except a 4xx HttpError. */
  retryOn?: (err: unknown, attempt: number) => boolean;
  /** Stops retrying when aborted (e.g. `req.signal`): the wait ends at once and `retry` rejects with the abort reason. Defaults to none. */
  signal?: AbortSignal;
  /** Called before each wait with the error, the number of the attempt that failed and the delay chosen. Defaults to none. */
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
  /** Source of randomness in [0, 1), for tests. Defaults to `Math.random`. */
  random?: () => number;
  /** How to wait `ms` milliseconds, for tests; `retry` stops waiting on abort by itself. Defaults to an unref'd timer. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

const KNOWN = ['retries', 'minDelay', 'maxDelay', 'jitter', 'retryOn', 'signal', 'onRetry', 'random', 'sleep'] as const;

/** The default retryOn: a 4xx HttpError will fail the same way again. */
function retryable(err: unknown): boolean {
  return !(isHttpError(err) && err.status >= 400 && err.status < 500);
}

/**
 * Calls `fn` until it succeeds, at most `retries + 1` times, waiting between attempts with
 * exponential backoff and jitter: before retry `n` (0 for the first), a delay drawn under
 * `min(maxDelay, minDelay * 2^n)` ('full' jitter: anywhere from 0 to that cap). Rejects with the
 * last error once the retries are spent or `retryOn` declines, and with the abort reason as soon
 * as `signal` aborts.
 *
 * ```ts
 * const user = await retry(() => api.getUser(id), { retries: 2, signal: req.signal });
 * ```
 */
export function retry<T>(fn: (attempt: number) => T | Promise<T>, options: RetryOptions = {}): Promise<T> {
  checkOptions('retry', options, KNOWN);
  if (typeof fn !== 'function') throw new ConfigError('retry', `expected the function to call as the first argument, got ${describe(fn)}`);
  const retries = options.retries ?? 3;
  if (typeof retries !== 'number' || !Number.isInteger(retries) || retries < 0) {
    throw new ConfigError('retry.retries', `expected a whole number of retries like 3 (0 for none), got ${describe(retries)}`);
  }
  const minDelay = parseDuration(options.minDelay ?? '100ms', 'retry.minDelay');
  const maxDelay = parseDuration(options.maxDelay ?? '5s', 'retry.maxDelay');
  if (maxDelay < minDelay) {
    throw new ConfigError('retry.maxDelay', `${maxDelay} ms is below minDelay (${minDelay} ms), so every delay would be maxDelay; raise maxDelay or lower minDelay`);
  }
  const jitter = oneOf('retry.jitter', options.jitter ?? 'full', ['full', 'equal', 'none'] as const);
  const retryOn = fnOption(options.retryOn ?? retryable, 'retry.retryOn', 'a function (err, attempt) => boolean');
  const onRetry = options.onRetry === undefined ? undefined : fnOption(options.onRetry, 'retry.onRetry', 'a function (err, attempt, delayMs) => void');
  const random = fnOption(options.random ?? Math.random, 'retry.random', 'a function returning a number in [0, 1)');
  const sleep = fnOption(options.sleep ?? defaultSleep, 'retry.sleep', 'a function (ms, signal) => Promise<void>');
  const signal = options.signal;
  if (signal !== undefined && (signal === null || typeof signal !== 'object' || typeof signal.aborted !== 'boolean' || typeof signal.addEventListener !== 'function')) {
    throw new ConfigError('retry.signal', `expected an AbortSignal such as req.signal, got ${describe(signal)}`);
  }

  const delayBefore = (retryIndex: number): number => {
    const cap = Math.min(maxDelay, minDelay * 2 ** retryIndex);
    if (jitter === 'none') return cap;
    const r = Math.min(1, Math.max(0, random()));
    return jitter === 'full' ? Math.floor(r * cap) : Math.floor(cap / 2 + (r * cap) / 2);
  };

  const run = async (): Promise<T> => {
    for (let attempt = 1; ; attempt++) {
      if (signal?.aborted) throw signal.reason;
      try {
        return await fn(attempt);
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (attempt > retries || !retryOn(err, attempt)) throw err;
        const delay = delayBefore(attempt - 1);
        onRetry?.(err, attempt, delay);
        await waitUnlessAborted(sleep, delay, signal);
      }
    }
  };
  return run();
}

/** Waits through `sleep`, but rejects with the abort reason the moment `signal` aborts, whatever `sleep` does. */
function waitUnlessAborted(sleep: (ms: number, signal?: AbortSignal) => Promise<void>, ms: number, signal: AbortSignal | undefined): Promise<void> {
  if (signal === undefined) return sleep(ms);
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<void>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    Promise.resolve()
      .then(() => sleep(ms, signal))
      .then(
        () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
        (err: unknown) => {
          signal.removeEventListener('abort', onAbort);
          reject(signal.aborted ? signal.reason : err);
        },
      );
  });
}

function defaultSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    // Not unref'd: a retry is work in progress, and a script awaiting it must not exit mid-wait.
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
  });
}

function fnOption<F>(value: F, option: string, expected: string): F {
  if (typeof value === 'function') return value;
  throw new ConfigError(option, `expected ${expected}, got ${describe(value)}`);
}
