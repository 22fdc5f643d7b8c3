import type { Logger } from '../logger';

/** A log line of {@link StoreOutage}: its stable code and its message. */
export interface OutageLine {
  code: string;
  message: string;
}

/** Options of {@link StoreOutage}. */
export interface StoreOutageOptions {
  logger: Logger;
  /** Logged (warn) when the store starts failing. */
  down: OutageLine;
  /** Logged (info) when it answers again. */
  up: OutageLine;
  /** Fields both lines carry (which middleware, its fail mode). */
  fields?: Record<string, unknown>;
  /** While the store is down, how often one call tries it again. Defaults to 1000 ms. */
  probeIntervalMs?: number;
}

/**
 * A middleware's view of its store being down. One warning when it starts failing and one info
 * line when it answers again, whatever the traffic in between. While it is down, one call at a
 * time, once per probe interval, tries the store; the others take the fail mode at once instead
 * of each waiting out the store timeout (and each leaving a command behind that Redis may still
 * run when it comes back).
 */
export class StoreOutage {
  private isDown = false;
  private probing = false;
  private nextProbeAt = 0;
  private readonly probeIntervalMs: number;

  constructor(private readonly options: StoreOutageOptions) {
    this.probeIntervalMs = options.probeIntervalMs ?? 1000;
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

  /** A store call answered: ends the outage (one info line) if there was one. */
  answered(): void {
    this.probing = false;
    if (!this.isDown) return;
    this.isDown = false;
    this.options.logger.info(this.options.up.message, { code: this.options.up.code, ...this.options.fields });
  }

  /** A store call failed or timed out: starts an outage (one warning) if there was none. */
  failed(err: unknown): void {
    this.probing = false;
    this.nextProbeAt = performance.now() + this.probeIntervalMs;
    if (this.isDown) return;
    this.isDown = true;
    const e = err instanceof Error ? { name: err.name, message: err.message } : { message: String(err) };
    this.options.logger.warn(this.options.down.message, { code: this.options.down.code, ...this.options.fields, err: e });
  }
}
