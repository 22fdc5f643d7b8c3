import type { Logger } from '../logger';

/** The two lines of an outage: the first failure and the first success after it. */
export interface OutageCodes {
  /** Stable code of the failure line, e.g. `ERR_JWKS_UNAVAILABLE`. */
  down: string;
  /** Stable code of the recovery line, e.g. `ERR_JWKS_RECOVERED`. */
  up: string;
}

/**
 * Logs a key source's outage once: one line when it starts failing (however many requests fail
 * during it), one when it answers again. A flood of requests during an outage is one line, not one
 * per request, so the log stays readable and the cause (the first error) is not buried.
 */
export class OutageLog {
  private down = false;

  constructor(
    private readonly logger: Logger,
    private readonly codes: OutageCodes,
  ) {}

  /** Whether the source is failing now. */
  get isDown(): boolean {
    return this.down;
  }

  /** Records a failure; logs `message` at `level` only when this starts an outage. */
  failed(err: unknown, message: string, level: 'warn' | 'error', extra: Record<string, unknown> = {}): void {
    if (this.down) return;
    this.down = true;
    const e = err instanceof Error ? { name: err.name, message: err.message } : { message: String(err) };
    this.logger.log(level, message, { code: this.codes.down, ...extra, err: e });
  }

  /** Records a success; logs `message` at info only when it ends an outage. */
  recovered(message: string, extra: Record<string, unknown> = {}): void {
    if (!this.down) return;
    this.down = false;
    this.logger.info(message, { code: this.codes.up, ...extra });
  }
}
