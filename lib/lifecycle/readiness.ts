import type { Logger } from '../logger';

/**
 * A check failure whose message the library wrote itself ('timed out after 2000 ms', 'not
 * connected yet'): it carries no address or driver text, so `/health/ready` shows it in every
 * environment. Other errors' messages are shown only with `exposeErrors`.
 */
export class NotReadyError extends Error {
  readonly expose = true;
  constructor(message: string) {
    super(message);
    this.name = 'NotReadyError';
  }
}

/** One named check of the readiness report, with its own time limit. */
export interface NamedCheck {
  name: string;
  timeoutMs: number;
  /** Resolves (with anything) when up; throws or rejects when down. `signal` aborts at the timeout. */
  run(signal: AbortSignal): unknown;
}

/** One check's line in the readiness body. */
export interface CheckReport {
  status: 'up' | 'down';
  duration_ms: number;
  /** Why it is down (see `NotReadyError` for what is shown). */
  error?: string;
}

/** The body of `/health/ready`. */
export type ReadinessReport =
  | { status: 'ready' | 'not_ready'; checks: Record<string, CheckReport> }
  | { status: 'draining' };

/** Options of {@link Readiness}. */
export interface ReadinessOptions {
  /** How long a report is reused, in ms (at most 1000). */
  cacheMs: number;
  /** Show the messages of errors the library did not write. */
  exposeErrors: boolean;
  /** Receives one line per change between ready and not ready. */
  logger?: Logger;
}

const DRAINING: ReadinessReport = Object.freeze({ status: 'draining' });

/**
 * Runs the named checks concurrently, each bounded by its timeout, and reuses the report for
 * `cacheMs`: every probe arriving meanwhile (or while a run is under way) gets the same report, so
 * a probe storm costs one round of checks per interval. Once draining, the report is 'draining'
 * without running anything.
 */
export class Readiness {
  private draining = false;
  private cached?: ReadinessReport;
  private cachedAt = 0;
  private running?: Promise<ReadinessReport>;
  private lastStatus?: 'ready' | 'not_ready';

  constructor(
    private readonly checks: readonly NamedCheck[],
    private readonly options: ReadinessOptions,
  ) {}

  /** Turns every later report into 'draining' (graceful shutdown began). */
  drain(): void {
    this.draining = true;
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** The current report, from the cache when it is fresh. */
  report(): Promise<ReadinessReport> {
    if (this.draining) return Promise.resolve(DRAINING);
    if (this.cached !== undefined && Date.now() - this.cachedAt < this.options.cacheMs) return Promise.resolve(this.cached);
    return (this.running ??= this.runAll().finally(() => {
      this.running = undefined;
    }));
  }

  private async runAll(): Promise<ReadinessReport> {
    const results = await Promise.all(this.checks.map((check) => this.runOne(check)));
    const checks: Record<string, CheckReport> = {};
    const failures: Record<string, string> = {};
    let ready = true;
    for (const [i, { report, cause }] of results.entries()) {
      checks[this.checks[i].name] = report;
      if (report.status === 'down') {
        ready = false;
        failures[this.checks[i].name] = cause ?? '';
      }
    }
    const status = ready ? 'ready' : 'not_ready';
    const report: ReadinessReport = { status, checks };
    this.cached = report;
    this.cachedAt = Date.now();
    this.logChange(status, failures);
    return this.draining ? DRAINING : report;
  }

  private async runOne(check: NamedCheck): Promise<{ report: CheckReport; cause?: string }> {
    const start = performance.now();
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        // Called inside the promise chain so a check that throws synchronously counts as down.
        Promise.resolve().then(() => check.run(controller.signal)),
        new Promise<never>((_resolve, reject) => {
          timer = setTimeout(() => {
            reject(new NotReadyError(`timed out after ${check.timeoutMs} ms`));
            controller.abort();
          }, check.timeoutMs);
        }),
      ]);
      return { report: { status: 'up', duration_ms: elapsed(start) } };
    } catch (err) {
      const shown = err instanceof NotReadyError || this.options.exposeErrors ? messageOf(err) : 'check failed';
      return { report: { status: 'down', duration_ms: elapsed(start), error: shown }, cause: messageOf(err) };
    } finally {
      clearTimeout(timer);
    }
  }

  // One line per change, with the real causes (the log is internal; the body may hide them).
  private logChange(status: 'ready' | 'not_ready', failures: Record<string, string>): void {
    if (status === this.lastStatus) return;
    const first = this.lastStatus === undefined;
    this.lastStatus = status;
    if (status === 'not_ready') {
      this.options.logger?.warn('Readiness: not ready', { code: 'PERIMETER_NOT_READY', failing: failures });
    } else if (!first) {
      this.options.logger?.info('Readiness: ready again', { code: 'PERIMETER_READY' });
    }
  }
}

function elapsed(start: number): number {
  return Math.round((performance.now() - start) * 100) / 100;
}

function messageOf(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.length > 200 ? `${message.slice(0, 200)}…` : message;
}
