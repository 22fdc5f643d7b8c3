import type { Logger } from '../logger';

/** A log line of {@link StoreOutage}: its stable code and its message. */
export interface OutageLine {
  code: string;
  message: string;
}

/** Options of {@link StoreOutage}. */
export interface StoreOutageOptions {
  logger: Logger;
  /** Logged (warn) once the store has been failing for `confirmMs`. */
  down: OutageLine;
  /** Logged (info) when it answers again after an outage that was logged. */
  up: OutageLine;
  /** Fields both lines carry (which middleware, its fail mode). */
  fields?: Record<string, unknown>;
  /** While the store is down, how often one call tries it again. Defaults to 1000 ms. */
  probeIntervalMs?: number;
  /** How long calls must keep failing before it is an outage worth a log line. Defaults to {@link OUTAGE_CONFIRM_MS}. */
  confirmMs?: number;
}

/**
 * Failures must go on this long (from the first failing call, with no answer since) before they
 * are logged as an outage: one slow answer on a busy machine is counted in the metrics and takes
 * the fail mode, but it is not an outage, and logging it would make every blip two log lines.
 */
export const OUTAGE_CONFIRM_MS = 1000;

/**
 * A store's health as one caller (a middleware, the connection) sees it. The fail mode applies
 * from the first failure; while the store is down, one call at a time, once per probe interval,
 * tries it, and the others take the fail mode at once instead of each waiting out the store
 * timeout (and each leaving a command behind that Redis may run when it comes back).
 *
 * Logging: one warning once failures have lasted `confirmMs`, and one info line when the store
 * answers again after it, whatever the traffic in between. A call that was made before the store
 * last answered again (it waited out its timeout across the recovery) starts no new outage.
 */
export class StoreOutage {
  private isDown = false;
  private logged = false;
  private probing = false;
  private nextProbeAt = 0;
  /** When the first failing call of the current run of failures was made (performance.now()). */
  private failingSince?: number;
  /** When the store last answered again after failing (performance.now()). */
  private upAt = -Infinity;
  private readonly probeIntervalMs: number;
  private readonly confirmMs: number;

  constructor(private readonly options: StoreOutageOptions) {
    this.probeIntervalMs = options.probeIntervalMs ?? 1000;
    this.confirmMs = options.confirmMs ?? OUTAGE_CONFIRM_MS;
  }

  /** Whether the store is considered down (its last call failed). */
  get down(): boolean {
    return this.isDown;
  }

  /** Whether this call should use the store: always while it is up; while down, only the probe. */
  mayTry(): boolean {
    if (!this.isDown) return true;
    if (this.probing || performance.now() < this.nextProbeAt) return false;
    this.probing = true;
    return true;
  }

  /** A store call answered: ends the outage (one info line if it was logged). */
  answered(): void {
    this.probing = false;
    this.failingSince = undefined;
    if (!this.isDown) return;
    this.isDown = false;
    this.upAt = performance.now();
    if (!this.logged) return;
    this.logged = false;
    this.options.logger.info(this.options.up.message, { code: this.options.up.code, ...this.options.fields });
  }

  /** A store call made at `startedAt` (performance.now()) failed or timed out. */
  failed(err: unknown, startedAt = performance.now()): void {
    this.probing = false;
    if (startedAt < this.upAt) return;
    const now = performance.now();
    this.nextProbeAt = now + this.probeIntervalMs;
    this.isDown = true;
    this.failingSince ??= startedAt;
    if (this.logged || now - this.failingSince < this.confirmMs) return;
    this.logged = true;
    const e = err instanceof Error ? { name: err.name, message: err.message } : { message: String(err) };
    this.options.logger.warn(this.options.down.message, { code: this.options.down.code, ...this.options.fields, err: e });
  }
}
