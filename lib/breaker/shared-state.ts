import { randomUUID } from 'node:crypto';
import type { Logger } from '../logger';
import type { BreakerAnnouncement, BreakerStateStore } from '../stores/breaker-store';
import type { Breaker } from './breaker';

// Bounds how long shutdown waits for Redis to confirm an unsubscribe.
const UNSUBSCRIBE_WAIT_MS = 1000;
// While the store fails, how often a change it did not take (or a failed join) is tried again.
const RETRY_MS = 1000;

/**
 * Links a breaker to the shared state of its name, so all instances open and close together:
 * local moves to OPEN or CLOSED are announced (fire and forget: the request that caused them
 * never waits on the store), and announcements are applied through the breaker's guarded
 * transition, marked remote so they are not announced again.
 *
 * Announcements carry an order (`gen`) and each instance applies them in that order, its own
 * included: when two instances decide at once (one probe succeeds here while another fails
 * there), every instance ends in the state of whichever announcement the store took last.
 * An announcement names the newest `gen` this instance knew of, and the store refuses it when
 * another instance recorded a newer one meanwhile; this instance then follows the record. So a
 * change that arrives late never overrides a newer one.
 *
 * Half-open is not shared: each instance lets its own `halfOpenMax` probes through when the
 * open spell it was told about ends.
 *
 * While the store fails, the breaker decides on its own counts: one warning, then the change it
 * could not share is offered again every second (as the breaker stands then), and the record is
 * read again whenever a connection comes back; one info line when sharing works again.
 *
 * Returns the function that unlinks it.
 */
export function shareBreakerState(breaker: Breaker, store: BreakerStateStore, logger: Logger | undefined): () => Promise<void> {
  const origin = randomUUID();
  let lastGen = 0;
  let unlinked = false;
  let failing = false;
  /** When sharing last worked again after failing (performance.now()). */
  let sharedAgainAt = -Infinity;
  let retry: NodeJS.Timeout | undefined;
  let joinAgain = false;
  let offerAgain = false;
  let unsubscribe: (() => Promise<void>) | undefined;
  let joining: Promise<void> | undefined;

  const apply = (announcement: BreakerAnnouncement): void => {
    if (unlinked || announcement.gen <= lastGen) return;
    lastGen = announcement.gen;
    // Our own announcement coming back changes nothing unless another instance's, ordered
    // before it, moved us meanwhile (half-open is where our own OPEN left us, so it agrees).
    if (announcement.origin === origin && (announcement.state === 'CLOSED') === (breaker.state === 'CLOSED')) return;
    breaker.applyRemote(announcement.state, announcement.remainingMs);
  };

  const shared = (): void => {
    if (!failing) return;
    failing = false;
    sharedAgainAt = performance.now();
    logger?.info('Circuit breaker shares its state again', { code: 'CIRCUIT_BREAKER_SYNC_RECOVERED', breaker: breaker.name });
  };

  const failed = (message: string, err: unknown, startedAt: number): void => {
    // A call that waited out its timeout across the recovery does not start a new outage.
    if (!failing && startedAt >= sharedAgainAt) {
      failing = true;
      logger?.warn(message, {
        code: 'CIRCUIT_BREAKER_SYNC_ERROR',
        breaker: breaker.name,
        err: err instanceof Error ? { name: err.name, message: err.message } : String(err),
      });
    }
    if (unlinked || retry !== undefined) return;
    retry = setTimeout(() => {
      retry = undefined;
      if (unlinked) return;
      if (joinAgain) join();
      if (offerAgain) offer();
    }, RETRY_MS);
    retry.unref();
  };

  const announce = (to: 'OPEN' | 'CLOSED', remainingMs: number): void => {
    // A newer change supersedes one still waiting to be offered again.
    offerAgain = false;
    const startedAt = performance.now();
    store.announce(breaker.name, to, remainingMs, origin, lastGen).then(
      (result) => {
        shared();
        if (result.applied) lastGen = Math.max(lastGen, result.gen);
        // Another instance recorded a newer state than this one knew of: follow it.
        else apply(result.current);
      },
      (err: unknown) => {
        offerAgain = true;
        failed('Circuit breaker could not share a state change; other instances decide on their own counts until the store answers', err, startedAt);
      },
    );
  };

  // The change the store did not take, offered again as the breaker stands now: an open spell
  // with what is left of it; nothing while half-open (the probes' outcome is announced).
  const offer = (): void => {
    offerAgain = false;
    const state = breaker.state;
    if (state !== 'HALF_OPEN') announce(state, breaker.retryAfterMs());
  };

  breaker.announce = announce;

  const reload = (): Promise<void> =>
    store.load(breaker.name).then((current) => {
      // A new instance joins an open circuit; a recorded CLOSED is where it already is.
      if (current !== undefined) apply(current);
    });

  // Subscribe first, then read: an announcement made in between is seen by one or the other.
  const join = (): void => {
    joinAgain = false;
    const startedAt = performance.now();
    joining = (unsubscribe === undefined ? store.subscribe(breaker.name, apply) : Promise.resolve(unsubscribe))
      .then(async (off) => {
        unsubscribe = off;
        if (unlinked) return;
        await reload();
        shared();
      })
      .catch((err: unknown) => {
        joinAgain = true;
        failed('Circuit breaker could not join the shared state; it decides on its own counts', err, startedAt);
      });
  };
  join();

  const removeResync = store.onResync(() => {
    if (!unlinked) reload().then(shared, () => undefined);
  });

  return async () => {
    unlinked = true;
    breaker.announce = undefined;
    removeResync();
    if (retry !== undefined) clearTimeout(retry);
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, UNSUBSCRIBE_WAIT_MS);
      timer.unref();
    });
    const unsubscribed = (joining ?? Promise.resolve()).then(() => unsubscribe?.()).catch(() => undefined);
    await Promise.race([unsubscribed, waited]);
    clearTimeout(timer);
  };
}
