import { randomUUID } from 'node:crypto';
import type { Logger } from '../logger';
import type { BreakerAnnouncement, BreakerStateStore } from '../stores/breaker-store';
import type { Breaker } from './breaker';

// Bounds how long shutdown waits for Redis to confirm an unsubscribe.
const UNSUBSCRIBE_WAIT_MS = 1000;

/**
 * Links a breaker to the shared state of its name, so all instances open and close together:
 * local moves to OPEN or CLOSED are announced (fire and forget: the request that caused them
 * never waits on the store), and announcements are applied through the breaker's guarded
 * transition, marked remote so they are not announced again.
 *
 * Announcements carry an order (`gen`) and each instance applies them in that order, its own
 * included: when two instances decide at once (one probe succeeds here while another fails
 * there), every instance ends in the state of whichever announcement the store took last.
 * Half-open is not shared: each instance lets its own `halfOpenMax` probes through when the
 * open spell it was told about ends.
 *
 * Returns the function that unlinks it.
 */
export function shareBreakerState(breaker: Breaker, store: BreakerStateStore, logger: Logger | undefined): () => Promise<void> {
  const origin = randomUUID();
  let lastGen = -1;
  let unlinked = false;

  const apply = (announcement: BreakerAnnouncement): void => {
    if (unlinked || announcement.gen <= lastGen) return;
    lastGen = announcement.gen;
    // Our own announcement coming back changes nothing unless another instance's, ordered
    // before it, moved us meanwhile (half-open is where our own OPEN left us, so it agrees).
    if (announcement.origin === origin && (announcement.state === 'CLOSED') === (breaker.state === 'CLOSED')) return;
    breaker.applyRemote(announcement.state, announcement.remainingMs);
  };

  const warn = (message: string, err: unknown): void => {
    logger?.warn(message, {
      code: 'CIRCUIT_BREAKER_SYNC_ERROR',
      breaker: breaker.name,
      err: err instanceof Error ? { name: err.name, message: err.message } : String(err),
    });
  };

  breaker.announce = (to, remainingMs) => {
    store.announce(breaker.name, to, remainingMs, origin).catch((err: unknown) => {
      warn('Circuit breaker could not share a state change; other instances decide on their own counts until the store answers', err);
    });
  };

  // Subscribe first, then read: an announcement made in between is seen by one or the other.
  const unsubscribing = store
    .subscribe(breaker.name, apply)
    .then(async (unsubscribe) => {
      const current = await store.load(breaker.name);
      // A new instance joins an open circuit; a recorded CLOSED is where it already is.
      if (current !== undefined) apply(current);
      return unsubscribe;
    })
    .catch((err: unknown) => {
      warn('Circuit breaker could not join the shared state; it decides on its own counts', err);
      return undefined;
    });

  return async () => {
    unlinked = true;
    breaker.announce = undefined;
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, UNSUBSCRIBE_WAIT_MS);
      timer.unref();
    });
    const unsubscribed = unsubscribing.then((unsubscribe) => unsubscribe?.()).catch(() => undefined);
    await Promise.race([unsubscribed, waited]);
    clearTimeout(timer);
  };
}
