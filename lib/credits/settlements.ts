import type { Counter } from 'prom-client';
import type { Logger } from '../logger';
import type { CreditsStore } from '../stores/credits-store';
import type { StoreOutage } from '../stores/outage';

/** What one credits handler keeps per stack (runtime) it serves. */
export interface CreditsState {
  store: CreditsStore;
  spent: Counter<string>;
  refunded: Counter<string>;
  rejections: Counter<'reason'>;
  storeErrors: Counter<'operation'>;
  outage: StoreOutage;
  settlements: PendingSettlements;
}

/** A refund or commit of one reservation. */
export interface Settlement {
  op: 'refund' | 'commit';
  account: string;
  reservation: string;
  requestId: string;
  cost: number;
  /** The reservation itself timed out: whether the store took it is not known (a refund then returns 0 if it did not). */
  uncertain: boolean;
  /** When the reservation was made (performance.now()); after `reservationTtl` the store has forgotten it. */
  reservedAt: number;
}

// Settlements waiting for the store, per stores: beyond this, a new one is given up at once (and logged).
const MAX_PENDING_SETTLEMENTS = 10_000;
const MAX_RETRY_DELAY_MS = 5_000;
// How many waiting settlements are sent at once once the store answers again.
const DRAIN_BATCH = 100;

/**
 * Refunds and commits the store has not taken yet. Each is tried at once while the store is up;
 * one that fails (or comes while the store is down) waits here and is tried again with backoff:
 * first one alone, as a probe, then the rest, until the store takes them or the reservation
 * expires. The outage itself is logged once (StoreOutage); only a settlement given up is logged,
 * each with its account and amount, since an account is then owed credits.
 */
export class PendingSettlements {
  private readonly waiting = new Map<string, Settlement>();
  private timer?: NodeJS.Timeout;
  private delay: number;
  private draining?: Promise<void>;

  constructor(
    private readonly state: Omit<CreditsState, 'settlements'>,
    private readonly logger: Logger,
    private readonly firstDelay: number,
    private readonly reservationTtlMs: number,
  ) {
    this.delay = firstDelay;
  }

  /** Settlements still waiting for the store. */
  get size(): number {
    return this.waiting.size;
  }

  /** Sends `settlement` now, or keeps it for later while the store is down. */
  settle(settlement: Settlement): void {
    if (this.state.outage.down || this.waiting.size > 0) {
      this.keep(settlement);
      return;
    }
    void this.attempt(settlement).then((done) => {
      if (!done) this.keep(settlement);
    });
  }

  /** Tries every waiting settlement now; with `final`, gives up (logs) whatever the store still refuses. */
  async flush(final: boolean): Promise<void> {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    await this.draining;
    await this.drain();
    if (!final) return;
    for (const settlement of this.waiting.values()) this.giveUp(settlement, 'the credits handler was closed before the store took it');
    this.waiting.clear();
  }

  private attempt(s: Settlement): Promise<boolean> {
    const startedAt = performance.now();
    const call =
      s.op === 'refund'
        ? this.state.store.refund(s.account, s.reservation, s.requestId).then((returned) => {
            if (returned > 0) this.state.refunded.inc(returned);
          })
        : this.state.store.commit(s.account, s.reservation);
    return call.then(
      () => {
        this.state.outage.answered();
        return true;
      },
      (err: unknown) => {
        this.state.storeErrors.inc({ operation: s.op });
        this.state.outage.failed(err, startedAt);
        return false;
      },
    );
  }

  private keep(settlement: Settlement): void {
    if (!this.waiting.has(settlement.reservation) && this.waiting.size >= MAX_PENDING_SETTLEMENTS) {
      this.giveUp(settlement, `more than ${MAX_PENDING_SETTLEMENTS} settlements are waiting for the store`);
      return;
    }
    this.waiting.set(settlement.reservation, settlement);
    this.schedule();
  }

  private schedule(): void {
    if (this.timer !== undefined || this.draining !== undefined || this.waiting.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.drain();
    }, this.delay);
    this.timer.unref();
  }

  private drain(): Promise<void> {
    this.draining ??= this.drainOnce().finally(() => {
      this.draining = undefined;
      this.schedule();
    });
    return this.draining;
  }

  private async drainOnce(): Promise<void> {
    const now = performance.now();
    for (const settlement of [...this.waiting.values()]) {
      if (now - settlement.reservedAt <= this.reservationTtlMs) continue;
      this.waiting.delete(settlement.reservation);
      this.giveUp(settlement, 'the reservation expired on the store before the store answered again');
    }
    let batch = [...this.waiting.values()].slice(0, 1);
    while (batch.length > 0) {
      const results = await Promise.all(batch.map((s) => this.attempt(s)));
      batch.forEach((s, i) => {
        if (results[i]) this.waiting.delete(s.reservation);
      });
      if (results.includes(false)) {
        this.delay = Math.min(MAX_RETRY_DELAY_MS, this.delay * 2);
        return;
      }
      batch = [...this.waiting.values()].slice(0, DRAIN_BATCH);
    }
    this.delay = this.firstDelay;
  }

  private giveUp(s: Settlement, reason: string): void {
    // A commit that never happened only leaves the reservation record to expire: the credits stay spent, as they should.
    if (s.op === 'commit') return;
    const meta = { account: s.account, amount: s.cost, reservation: s.reservation, request_id: s.requestId || undefined, reason };
    if (s.uncertain) {
      // Most often the reservation never reached the store (it was down): a warning, not an alarm.
      this.logger.warn('Credits reservation failed and its undo could not be confirmed; if it reached the store, the account is owed credits', { code: 'ERR_CREDITS_RESERVE_UNCERTAIN', ...meta });
    } else {
      this.logger.error('Credits refund could not be made; the account is owed credits', { code: 'ERR_CREDITS_REFUND_FAILED', ...meta });
    }
  }
}
