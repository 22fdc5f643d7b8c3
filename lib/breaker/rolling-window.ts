/** Counts of a breaker's rolling window (see `RollingWindow`). */
export interface BreakerStats {
  /** Calls attempted, rejected ones included. */
  fires: number;
  /** Calls that completed (errors the `errorFilter` ignores count here too). */
  successes: number;
  /** Calls that failed, timeouts included. */
  failures: number;
  /** Calls that exceeded their timeout (also counted in `failures`). */
  timeouts: number;
  /** Calls refused because the circuit was open (or half-open with its probes in flight). */
  rejects: number;
}

/** Count of calls attempted (an index into a bucket, for {@link RollingWindow.record}). */
export const FIRES = 0;
/** Count of calls that succeeded. */
export const SUCCESSES = 1;
/** Count of calls that failed, timeouts included. */
export const FAILURES = 2;
/** Count of calls that timed out. */
export const TIMEOUTS = 3;
/** Count of calls refused by an open circuit. */
export const REJECTS = 4;
const KINDS = 5;

/**
 * Call counts over the last `windowMs`, kept in `buckets` slots of a ring: a slot is reused
 * (zeroed) when its bucket comes round again, so recording is O(1), a total is O(buckets), and
 * nothing is allocated after construction. The window covers the current, partly elapsed bucket
 * and the `buckets - 1` before it, so an old count leaves it at most one bucket length late.
 */
export class RollingWindow {
  private readonly bucketMs: number;
  private readonly slots: number;
  /** The bucket number (time / bucketMs) each slot currently holds; NaN for never used. */
  private readonly epochs: Float64Array;
  private readonly counts: Uint32Array;

  constructor(windowMs: number, buckets: number, private readonly now: () => number) {
    this.slots = buckets;
    this.bucketMs = windowMs / buckets;
    this.epochs = new Float64Array(buckets).fill(NaN);
    this.counts = new Uint32Array(buckets * KINDS);
  }

  /** Adds one to `kind` (FIRES, SUCCESSES…) in the current bucket. */
  record(kind: number): void {
    const epoch = Math.floor(this.now() / this.bucketMs);
    const slot = ((epoch % this.slots) + this.slots) % this.slots;
    if (this.epochs[slot] !== epoch) {
      this.epochs[slot] = epoch;
      this.counts.fill(0, slot * KINDS, slot * KINDS + KINDS);
    }
    this.counts[slot * KINDS + kind]++;
  }

  /** The total of `kind` within the window. */
  total(kind: number): number {
    const current = Math.floor(this.now() / this.bucketMs);
    let sum = 0;
    for (let slot = 0; slot < this.slots; slot++) {
      const age = current - this.epochs[slot];
      // NaN (never used) fails both comparisons.
      if (age >= 0 && age < this.slots) sum += this.counts[slot * KINDS + kind];
    }
    return sum;
  }

  /** Every count of the window, as a plain object. */
  stats(): BreakerStats {
    return {
      fires: this.total(FIRES),
      successes: this.total(SUCCESSES),
      failures: this.total(FAILURES),
      timeouts: this.total(TIMEOUTS),
      rejects: this.total(REJECTS),
    };
  }

  /** Forgets every count (a circuit that closes starts from a clean window). */
  clear(): void {
    this.epochs.fill(NaN);
    this.counts.fill(0);
  }
}
