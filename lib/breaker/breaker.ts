import { EventEmitter } from 'node:events';
import type { Gauge } from 'prom-client';
import { ServiceUnavailableError } from '../errors';
import type { Logger } from '../logger';
import { FAILURES, FIRES, REJECTS, RollingWindow, SUCCESSES, TIMEOUTS, type BreakerStats } from './rolling-window';
import type { BreakerSettings } from './settings';

/** Where a circuit is: CLOSED lets calls through, OPEN refuses them, HALF_OPEN lets `halfOpenMax` probes through. */
export type BreakerState = 'CLOSED' | 'OPEN' | 'HALF_OPEN';

/** What the `open`, `halfOpen` and `close` events carry (and what is logged). */
export interface BreakerTransition {
  name: string;
  from: BreakerState;
  to: BreakerState;
  /** True when another instance made the change and this one applied it (shared stores). */
  remote: boolean;
  /** Why the circuit moved, in words. */
  reason: string;
  /** OPEN only: milliseconds until the circuit lets a probe through. */
  retryAfterMs?: number;
}

/** Values of the `circuit_breaker_state` gauge. */
export const STATE_GAUGE: Readonly<Record<BreakerState, number>> = { CLOSED: 0, HALF_OPEN: 1, OPEN: 2 };

/** The moves a circuit can make; anything else is refused by {@link Breaker} (and never emits an event). */
const MOVES: Readonly<Record<BreakerState, readonly BreakerState[]>> = {
  CLOSED: ['OPEN'],
  // OPEN → CLOSED only when another instance's probe closed the shared circuit.
  OPEN: ['HALF_OPEN', 'CLOSED'],
  HALF_OPEN: ['CLOSED', 'OPEN'],
};

const EVENTS: Readonly<Record<BreakerState, string>> = { CLOSED: 'close', OPEN: 'open', HALF_OPEN: 'halfOpen' };

/** {@link Breaker.admit}: the call is refused. */
export const REJECTED = 0;
/** {@link Breaker.admit}: the call may run (circuit closed). Probe tickets are numbers ≥ 2. */
export const ADMITTED = 1;

/** What a {@link Breaker} is built from besides its settings. */
export interface BreakerParts {
  name: string;
  settings: BreakerSettings;
  /** Where transitions are logged; none when omitted. */
  logger?: Logger;
  /** The `circuit_breaker_state` series of this breaker. */
  gauge?: Gauge.Internal<string>;
}

/**
 * The circuit breaker state machine: private state, one guarded `transition` that emits
 * exactly one event (`open`, `halfOpen`, `close`) and one log line per change, and per-call events
 * `success`, `failure`, `timeout` (a timeout is also a failure) and `reject`. State is local, so
 * deciding whether a call may run never waits on the network; shared stores only announce and
 * apply transitions (see lib/breaker/shared-state.ts).
 *
 * Callers take a ticket with {@link admit}, run the call, then report exactly one of
 * {@link success}, {@link failure} or {@link release} with that ticket.
 */
export class Breaker extends EventEmitter {
  /** The breaker's name (log lines, metrics, shared state). */
  readonly name: string;
  /**
   * Set by the shared-state link: announces a local move to OPEN or CLOSED to other instances.
   * @internal
   */
  announce?: (to: 'OPEN' | 'CLOSED', remainingMs: number) => void;
  private current: BreakerState = 'CLOSED';
  /** OPEN: when (local clock) the circuit may let a probe through. */
  private until = 0;
  private probes = 0;
  /** Counts transitions; a probe ticket carries the value it was issued under, so a probe from an earlier half-open spell decides nothing. */
  private generation = 2;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly window: RollingWindow;
  private readonly settings: BreakerSettings;
  private readonly now: () => number;
  private readonly logger?: Logger;
  private readonly gauge?: Gauge.Internal<string>;

  constructor(parts: BreakerParts) {
    super();
    this.name = parts.name;
    this.settings = parts.settings;
    this.now = parts.settings.now;
    this.logger = parts.logger;
    this.gauge = parts.gauge;
    this.window = new RollingWindow(parts.settings.rollingWindowMs, parts.settings.buckets, this.now);
    this.gauge?.set(STATE_GAUGE.CLOSED);
  }

  /** 'CLOSED', 'OPEN' or 'HALF_OPEN'. An open circuit whose reset timeout has elapsed reads 'HALF_OPEN'. */
  get state(): BreakerState {
    if (this.current === 'OPEN' && this.now() >= this.until) this.transition('HALF_OPEN', 'the reset timeout elapsed');
    return this.current;
  }

  /** Counts of the rolling window: fires, successes, failures (timeouts included), timeouts, rejects. */
  get stats(): BreakerStats {
    return this.window.stats();
  }

  /** Milliseconds until an open circuit lets a probe through; 0 when it is not open. */
  retryAfterMs(): number {
    return this.current === 'OPEN' ? Math.max(0, this.until - this.now()) : 0;
  }

  /**
   * Asks to run one call: `REJECTED` (0), `ADMITTED` (1), or a probe ticket (≥ 2) while
   * half-open. Counts the call, and the rejection when refused.
   */
  admit(): number {
    this.window.record(FIRES);
    if (this.current === 'CLOSED') return ADMITTED;
    if (this.current === 'OPEN' && this.now() >= this.until) this.transition('HALF_OPEN', 'the reset timeout elapsed');
    if (this.current === 'HALF_OPEN' && this.probes < this.settings.halfOpenMax) {
      this.probes++;
      return this.generation;
    }
    this.window.record(REJECTS);
    return REJECTED;
  }

  /**
   * The CIRCUIT_OPEN error for a call {@link admit} refused, with `Retry-After` (seconds until a
   * probe may pass; 1 while half-open with its probes in flight); emits `reject` with it.
   */
  rejection(): ServiceUnavailableError {
    const seconds = Math.max(1, Math.ceil(this.retryAfterMs() / 1000));
    // A refusal's stack is always this line, and capturing it is most of the refusal's cost,
    // paid on every call an open circuit sheds.
    const stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    let err: ServiceUnavailableError;
    try {
      err = new ServiceUnavailableError('The service is temporarily unavailable; retry after the time in Retry-After.', undefined, 'CIRCUIT_OPEN');
    } finally {
      Error.stackTraceLimit = stackTraceLimit;
    }
    err.headers = { 'Retry-After': String(seconds) };
    this.emitSafe('reject', err);
    return err;
  }

  /** Reports that the call of `ticket` succeeded; a probe's success closes the circuit. */
  success(ticket: number, detail?: unknown): void {
    this.window.record(SUCCESSES);
    this.emitSafe('success', detail);
    if (this.isLiveProbe(ticket)) this.transition('CLOSED', 'a probe succeeded');
  }

  /** Reports that the call of `ticket` failed (`timedOut`: it exceeded its time); may open the circuit. */
  failure(ticket: number, detail: unknown, timedOut: boolean): void {
    this.window.record(FAILURES);
    if (timedOut) {
      this.window.record(TIMEOUTS);
      this.emitSafe('timeout', detail);
    }
    this.emitSafe('failure', detail);
    if (this.current === 'CLOSED') {
      const failures = this.window.total(FAILURES);
      const calls = failures + this.window.total(SUCCESSES);
      if (calls >= this.settings.volumeThreshold && failures * 100 >= this.settings.errorThresholdPercentage * calls) {
        this.transition('OPEN', `${failures} of ${calls} calls failed within ${this.settings.rollingWindowMs} ms`);
      }
    } else if (this.isLiveProbe(ticket)) {
      this.transition('OPEN', 'a probe failed');
    }
  }

  /** Reports that the call of `ticket` ended without an outcome that says anything (the client went away): frees its probe slot. */
  release(ticket: number): void {
    if (this.isLiveProbe(ticket)) this.probes--;
  }

  /**
   * Applies a transition announced through the shared stores. OPEN while already open only moves
   * the end of the open spell (no event: the state did not change).
   * @internal
   */
  applyRemote(to: 'OPEN' | 'CLOSED', remainingMs: number): void {
    if (to === 'OPEN' && this.current === 'OPEN') {
      this.until = this.now() + Math.max(0, remainingMs);
      this.arm();
      return;
    }
    this.transition(to, to === 'OPEN' ? 'another instance opened the circuit' : 'another instance closed the circuit', true, remainingMs);
  }

  /** Clears the reset timer; the breaker keeps answering from its state, moving to half-open lazily on the next call. */
  shutdown(): void {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /**
   * The one way the state changes: refuses moves the machine does not have (and same-state
   * moves), then updates the state, the gauge and the timer, logs once and emits one event.
   * Local moves to OPEN or CLOSED are announced to other instances; remote ones are not, so a
   * change never echoes round.
   */
  private transition(to: BreakerState, reason: string, remote = false, remainingMs = this.settings.resetTimeoutMs): boolean {
    const from = this.current;
    if (!MOVES[from].includes(to) || (from === 'OPEN' && to === 'CLOSED' && !remote)) return false;
    this.current = to;
    this.generation++;
    this.probes = 0;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    const event: BreakerTransition = { name: this.name, from, to, remote, reason };
    if (to === 'OPEN') {
      event.retryAfterMs = Math.max(0, remainingMs);
      this.until = this.now() + event.retryAfterMs;
      this.arm();
    } else if (to === 'CLOSED') {
      // A closed circuit starts over: the failures that opened it must not reopen it at once.
      this.window.clear();
    }
    this.gauge?.set(STATE_GAUGE[to]);
    this.log(event);
    if (!remote && to !== 'HALF_OPEN') this.announce?.(to, event.retryAfterMs ?? 0);
    this.emitSafe(EVENTS[to], event);
    return true;
  }

  private isLiveProbe(ticket: number): boolean {
    return ticket === this.generation && this.current === 'HALF_OPEN';
  }

  /** The timer only makes the half-open move visible (event, gauge) without traffic; calls also make it lazily. */
  private arm(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.stopped || this.current !== 'OPEN') return;
    // The injected clock decides: a timer that fires early (the clock is behind real time) re-arms.
    this.timer = setTimeout(this.onTimer, Math.max(1, this.until - this.now()));
    this.timer.unref();
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    if (this.current !== 'OPEN') return;
    if (this.now() >= this.until) this.transition('HALF_OPEN', 'the reset timeout elapsed');
    else this.arm();
  };

  private log(event: BreakerTransition): void {
    if (this.logger === undefined) return;
    const fields = { code: `CIRCUIT_${event.to}`, breaker: event.name, from: event.from, to: event.to, remote: event.remote, reason: event.reason };
    if (event.to === 'OPEN') {
      this.logger.warn('Circuit breaker opened: calls are refused until the reset timeout elapses', { ...fields, retry_after_ms: event.retryAfterMs });
    } else if (event.to === 'HALF_OPEN') {
      this.logger.info('Circuit breaker half-open: letting probes through', { ...fields, half_open_max: this.settings.halfOpenMax });
    } else {
      this.logger.info('Circuit breaker closed: calls flow again', fields);
    }
  }

  // A throwing listener must not break the request or the call that triggered the event.
  private emitSafe(event: string, payload: unknown): void {
    if (this.listenerCount(event) === 0) return;
    try {
      this.emit(event, payload);
    } catch (err) {
      this.logger?.error('A circuit breaker event listener threw', {
        code: 'CIRCUIT_BREAKER_LISTENER_ERROR',
        breaker: this.name,
        event,
        err: err instanceof Error ? { name: err.name, message: err.message, stack: err.stack } : String(err),
      });
    }
  }
}
