import type { Registry } from 'prom-client';
import { ConfigError, GatewayTimeoutError, isHttpError } from '../errors';
import { defaultLogger, type Logger } from '../logger';
import { gauge } from '../metrics-registry';
import { checkOptions } from '../options';
import { breakerStateStore } from '../stores/breaker-store';
import type { Stores } from '../stores/types';
import { describe, parseDuration } from '../units';
import { Breaker, REJECTED } from './breaker';
import { BREAKER_OPTION_KEYS, breakerName, breakerSettings, type BreakerOptions } from './settings';
import { shareBreakerState } from './shared-state';

/** What a function wrapped with `abortOnTimeout: true` receives as its last argument. */
export interface BreakerCallSignal {
  /** Aborted (with the timeout error as reason) when the call exceeds `timeout`. */
  signal: AbortSignal;
}

/** Options of {@link createBreaker}. */
export interface CreateBreakerOptions<A extends unknown[] = unknown[], R = unknown> extends BreakerOptions {
  /** Longest a call may take before it counts as a failure (event `timeout`) and `fire()` rejects with 504 GATEWAY_TIMEOUT; `false` for none. Defaults to '10s'. */
  timeout?: number | string | false;
  /** Pass `{ signal }` as an extra last argument to the function, aborted on timeout, so the call can really stop. Defaults to false (a timed-out call runs on; its result is ignored). */
  abortOnTimeout?: boolean;
  /** Errors for which it returns true do not count as failures (the dependency answered; the caller was wrong); they are still rethrown. Defaults to 4xx HttpErrors. */
  errorFilter?: (err: unknown) => boolean;
  /** Called with the same arguments instead of the function while the circuit is open; `fire()` resolves to its result. Defaults to none (`fire()` rejects with 503 CIRCUIT_OPEN). */
  fallback?: (...args: A) => R | Promise<R>;
  /** Logger of the transition lines (open at warn, half-open and close at info). Defaults to the default JSON logger. */
  logger?: Logger;
  /** prom-client registry that gets the `circuit_breaker_state{name}` gauge (e.g. `stack.metricsRegistry`). Defaults to none. */
  registry?: Registry;
  /** Stores to share the circuit state through (e.g. `stack.stores`): breakers of the same name open and close together. Defaults to none (this breaker alone). */
  stores?: Stores;
}

const KNOWN = [...BREAKER_OPTION_KEYS, 'timeout', 'abortOnTimeout', 'errorFilter', 'fallback', 'logger', 'registry', 'stores'] as const;
const MAX_DELAY = 2 ** 31 - 1;

/** The default errorFilter: a 4xx HttpError means the caller was wrong, not that the dependency is failing. */
export function isClientError(err: unknown): boolean {
  return isHttpError(err) && err.status >= 400 && err.status < 500;
}

/**
 * A circuit breaker around one async function (see {@link createBreaker}). It is the same state
 * machine the `circuitBreaker` middleware uses: `state`, `stats`, events (`open`, `halfOpen`,
 * `close`, `success`, `failure`, `timeout`, `reject`) and `shutdown()`.
 */
export class FunctionBreaker<A extends unknown[], R> extends Breaker {
  private readonly fn: (...args: unknown[]) => R | Promise<R>;
  private readonly timeoutMs: number;
  private readonly abortOnTimeout: boolean;
  private readonly errorFilter: (err: unknown) => boolean;
  private readonly fallback?: (...args: A) => R | Promise<R>;
  private readonly unlink?: () => Promise<void>;
  private isShutdown = false;

  /** @internal Use {@link createBreaker}. */
  constructor(fn: (...args: unknown[]) => R | Promise<R>, options: CreateBreakerOptions<A, R>) {
    checkOptions('createBreaker', options, KNOWN);
    if (typeof fn !== 'function') throw new ConfigError('createBreaker', `expected the function to protect as the first argument, got ${describe(fn)}`);
    const settings = breakerSettings(options, 'createBreaker');
    const name = breakerName(options.name ?? (fn.name || 'breaker'), 'createBreaker.name');
    const logger = options.logger ?? defaultLogger();
    if (typeof logger !== 'object' || typeof logger.warn !== 'function') {
      throw new ConfigError('createBreaker.logger', `expected a winston logger, got ${describe(logger)}`);
    }
    const registry = options.registry;
    if (registry !== undefined && (typeof registry !== 'object' || typeof registry.getSingleMetric !== 'function')) {
      throw new ConfigError('createBreaker.registry', `expected a prom-client Registry such as stack.metricsRegistry, got ${describe(registry)}`);
    }
    const stores = options.stores;
    if (stores !== undefined && (typeof stores !== 'object' || typeof stores.create !== 'function')) {
      throw new ConfigError('createBreaker.stores', `expected a Stores object such as stack.stores, got ${describe(stores)}`);
    }
    super({
      name,
      settings,
      logger,
      gauge: registry && stateGauge(registry).labels({ name }),
    });
    this.fn = fn;
    const timeout = options.timeout ?? '10s';
    this.timeoutMs = timeout === false ? 0 : parseDuration(timeout, 'createBreaker.timeout');
    if (this.timeoutMs > MAX_DELAY) throw new ConfigError('createBreaker.timeout', `${this.timeoutMs} ms is longer than the largest timer Node.js supports (${MAX_DELAY} ms); use false for no timeout`);
    this.abortOnTimeout = flag(options.abortOnTimeout ?? false, 'createBreaker.abortOnTimeout');
    this.errorFilter = fnOption(options.errorFilter ?? isClientError, 'createBreaker.errorFilter', 'a function (err) => boolean');
    this.fallback = options.fallback === undefined ? undefined : fnOption(options.fallback, 'createBreaker.fallback', 'a function taking the same arguments as the protected one');
    if (stores !== undefined) this.unlink = shareBreakerState(this, stores.create(breakerStateStore()), logger);
  }

  /**
   * Calls the function through the breaker. Rejects with 503 CIRCUIT_OPEN (with `Retry-After`)
   * while the circuit is open, unless `fallback` is set, whose result it then resolves to; rejects
   * with 504 GATEWAY_TIMEOUT when the call exceeds `timeout`; otherwise settles as the call does.
   */
  fire(...args: A): Promise<R> {
    if (this.isShutdown) return Promise.reject(new Error(`Circuit breaker '${this.name}' was shut down; create a new one to make calls`));
    const ticket = this.admit();
    if (ticket === REJECTED) {
      const err = this.rejection();
      if (this.fallback === undefined) return Promise.reject(err);
      const fallback = this.fallback;
      return new Promise<R>((resolve) => resolve(fallback(...args)));
    }
    return this.call(ticket, args);
  }

  /** Stops the reset timer and leaves the shared state; later `fire()` calls reject. */
  override shutdown(): Promise<void> {
    this.isShutdown = true;
    super.shutdown();
    return this.unlink?.() ?? Promise.resolve();
  }

  private call(ticket: number, args: A): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      const controller = this.abortOnTimeout ? new AbortController() : undefined;
      if (this.timeoutMs > 0) {
        timer = setTimeout(() => {
          settled = true;
          const err = new GatewayTimeoutError('The upstream call did not complete in time.', { timeout_ms: this.timeoutMs });
          controller?.abort(err);
          this.failure(ticket, err, true);
          reject(err);
        }, this.timeoutMs);
        // The call itself keeps the process alive if it is doing real work.
        timer.unref();
      }
      let pending: R | Promise<R>;
      try {
        pending = controller === undefined ? this.fn(...args) : this.fn(...args, { signal: controller.signal } satisfies BreakerCallSignal);
      } catch (err) {
        pending = Promise.reject(err);
      }
      Promise.resolve(pending).then(
        (value) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          this.success(ticket, value);
          resolve(value);
        },
        (err: unknown) => {
          // After a timeout the late rejection is nobody's any more: dropping it here is what keeps it from being unhandled.
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          if (this.ignores(err)) this.success(ticket, err);
          else this.failure(ticket, err, false);
          reject(err);
        },
      );
    });
  }

  private ignores(err: unknown): boolean {
    try {
      return this.errorFilter(err) === true;
    } catch {
      // A filter that throws cannot vouch for the error.
      return false;
    }
  }
}

/**
 * Wraps an async function in a circuit breaker: `fire(...args)` calls it while the circuit is
 * closed, counts successes, failures and timeouts in a rolling window, and opens the circuit when
 * at least `volumeThreshold` calls show `errorThresholdPercentage` failures; while open, `fire()`
 * rejects at once with 503 CIRCUIT_OPEN (or returns `fallback(...args)`); after `resetTimeout`,
 * `halfOpenMax` probe calls decide whether it closes again.
 *
 * ```ts
 * const prices = createBreaker((sku: string) => fetchPrice(sku), { timeout: '2s', fallback: () => null });
 * prices.on('open', (t) => alert(t.reason));
 * const price = await prices.fire('sku-1');
 * ```
 */
export function createBreaker<A extends unknown[], R>(
  fn: (...args: [...A, BreakerCallSignal]) => R | Promise<R>,
  options: CreateBreakerOptions<A, Awaited<R>> & { abortOnTimeout: true },
): FunctionBreaker<A, Awaited<R>>;
export function createBreaker<A extends unknown[], R>(fn: (...args: A) => R | Promise<R>, options?: CreateBreakerOptions<A, Awaited<R>>): FunctionBreaker<A, Awaited<R>>;
export function createBreaker<A extends unknown[], R>(fn: (...args: A) => R | Promise<R>, options: CreateBreakerOptions<A, Awaited<R>> = {}): FunctionBreaker<A, Awaited<R>> {
  return new FunctionBreaker<A, Awaited<R>>(fn as (...args: unknown[]) => Promise<Awaited<R>>, options);
}

/** The `circuit_breaker_state{name}` gauge of `registry` (0 closed, 1 half-open, 2 open). */
export function stateGauge(registry: Registry) {
  return gauge(registry, 'circuit_breaker_state', 'Circuit breaker state by breaker name: 0 closed, 1 half-open, 2 open.', ['name'] as const);
}

function flag(value: unknown, option: string): boolean {
  if (typeof value === 'boolean') return value;
  throw new ConfigError(option, `expected true or false, got ${describe(value)}`);
}

function fnOption<F>(value: F, option: string, expected: string): F {
  if (typeof value === 'function') return value;
  throw new ConfigError(option, `expected ${expected}, got ${describe(value)}`);
}
