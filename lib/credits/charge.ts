import { randomBytes } from 'node:crypto';
import type { Request, Response } from 'express';
import { InsufficientCreditsError, ServiceUnavailableError } from '../errors';
import { PostgresStoreError } from '../postgres/errors';
import { loggerOf } from '../runtime';
import type { ReserveResult } from '../stores/credits-store';
import { StoreUnavailableError } from '../stores/redis-connection';
import { onResponseDone } from '../response-done';
import type { CreditsState, Settlement } from './settlements';

/** The settings a charge reads (decided once, at setup). */
export interface ChargePolicy {
  headers: boolean;
  onStoreError: 'closed' | 'open';
  storeTimeoutMs: number;
}

type Next = (err?: unknown) => void;

// Unique per process and cheap per request: a random prefix plus a counter.
const PROCESS_TAG = randomBytes(6).toString('base64url');
let sequence = 0;

/** The store cannot be asked: 503 SERVICE_UNAVAILABLE, or the request served free with onStoreError 'open'. */
export function refuseUnavailable(state: CreditsState, policy: ChargePolicy, next: Next): void {
  if (policy.onStoreError === 'open') return next();
  state.rejections.inc({ reason: 'store_unavailable' });
  next(new ServiceUnavailableError('Credits cannot be checked right now; try again shortly.'));
}

/**
 * One paid request, from its reservation to its settlement: reserve the cost, then on the
 * response's end keep it (a whole 2xx response went out) or give it back (anything else).
 */
export class Charge {
  readonly reservation = `${PROCESS_TAG}.${(++sequence).toString(36)}`;
  readonly reservedAt = performance.now();
  readonly requestId: string;

  constructor(
    private readonly state: CreditsState,
    private readonly policy: ChargePolicy,
    readonly account: string,
    readonly cost: number,
    private readonly req: Request,
    private readonly res: Response,
    private readonly next: Next,
  ) {
    this.requestId = req.id ?? '';
  }

  /** Sends the reservation; the request goes on (or is refused) when the store answers. */
  reserve(initial: number): void {
    this.state.store
      .reserve(this.account, this.cost, initial, this.reservation, this.requestId, this.policy.storeTimeoutMs)
      .then(
        (result) => this.reserved(result),
        (err: Error) => this.storeFailed(err),
      )
      .catch((err: unknown) => {
        loggerOf(this.req).error('credits: a later middleware threw synchronously after the reservation', {
          err: err instanceof Error ? { name: err.name, message: err.message, stack: err.stack } : { message: String(err) },
        });
      });
  }

  private reserved(result: ReserveResult): void {
    const { state, policy, res, cost } = this;
    state.outage.answered();
    if (!result.ok) {
      state.rejections.inc({ reason: 'insufficient' });
      const err = new InsufficientCreditsError(`This request costs ${cost} credits and the balance is ${result.balance}.`, { required: cost, balance: result.balance });
      if (policy.headers) err.withHeaders({ 'X-Credits-Cost': String(cost), 'X-Credits-Remaining': String(result.balance) });
      return this.next(err);
    }
    if (policy.headers && !res.headersSent) {
      res.setHeader('X-Credits-Cost', String(cost));
      res.setHeader('X-Credits-Remaining', String(result.balance));
    }
    onResponseDone(res, () => this.settleOnDone());
    // Answered meanwhile (timeout) or the client left: nothing to run, the listener refunds.
    if (!(res.writableEnded || res.destroyed)) this.next();
  }

  // Kept only when a 2xx response went out whole; anything else gets its credits back.
  private settleOnDone(): void {
    const { res } = this;
    if (res.writableFinished && res.statusCode >= 200 && res.statusCode < 300) {
      this.state.spent.inc(this.cost);
      this.settle('commit', false);
    } else {
      this.settle('refund', false);
    }
  }

  private storeFailed(err: Error): void {
    this.state.storeErrors.inc({ operation: 'reserve' });
    // A statement the server cancelled (one account's row held too long) says the store is up.
    if (err instanceof PostgresStoreError && err.cancelledByServer) this.state.outage.answered();
    else this.state.outage.failed(err, this.reservedAt);
    // A reservation that was sent may have been taken with its answer lost or late: undo it under
    // the same id (a no-op if it was not, and a mark that refuses it if it is still on its way).
    if (mayHaveTaken(err)) this.settle('refund', true);
    refuseUnavailable(this.state, this.policy, this.next);
  }

  private settle(op: Settlement['op'], uncertain: boolean): void {
    this.state.settlements.settle({ op, account: this.account, reservation: this.reservation, requestId: this.requestId, cost: this.cost, uncertain, reservedAt: this.reservedAt });
  }
}

/** Whether a failed reservation may have been taken anyway: not when it was never sent, or the server rolled it back. */
function mayHaveTaken(err: unknown): boolean {
  if (err instanceof StoreUnavailableError) return false;
  if (err instanceof PostgresStoreError) return err.maybeApplied;
  return true;
}
