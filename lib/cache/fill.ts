import type { OutgoingHttpHeaders } from 'node:http';
import type { Request } from 'express';
import type { Counter } from 'prom-client';
import type { Logger } from '../logger';
import { MAX_FILL_MS, type CachedResponse, type CacheLookup, type CacheStore } from '../stores/cache-store';
import type { ServerSettings } from './options';

/** Per stack: the store, the fills in flight in this process, and the metrics. */
export interface CacheState {
  store: CacheStore;
  flights: Map<string, Flight>;
  hits: Counter<string>;
  misses: Counter<string>;
  stored: Counter<string>;
  logger: Logger;
}

/** A miss being filled: misses of the same key in this process wait for its answer instead of running the handler. */
export interface Flight {
  promise: Promise<CachedResponse | undefined>;
  settle(entry: CachedResponse | undefined): void;
  /** The stale entry being refreshed, served to others meanwhile. */
  stale: CachedResponse | undefined;
}

/** What a look-up decided for a request. */
export type Outcome =
  /** Replay this entry; the handler does not run. */
  | { kind: 'hit'; entry: CachedResponse }
  /** Run the handler; its answer goes to the waiting requests and, if it may be shared, to the store. */
  | { kind: 'fill' }
  /** Run the handler and store nothing (the filler this request waited for had nothing to share). */
  | { kind: 'pass' };

const FILL: Outcome = { kind: 'fill' };
const PASS: Outcome = { kind: 'pass' };
const FAILED_LOOKUP: CacheLookup = { entry: undefined, stale: false, locked: false, contended: false, failed: true };
// While another instance fills a key, look again after 10 ms, then twice as long each time, at most 100 ms apart.
const FIRST_POLL_MS = 10;
const MAX_POLL_MS = 100;
// Storing happens after the response is sent, so it may take longer than a look-up.
const MIN_STORE_TIMEOUT_MS = 1000;
const noop = (): void => undefined;

// Names each fill as the holder of its key's lock, unique among the fills that share a store.
let fillSequence = 0;

/** The server-side part of one GET/HEAD request: made by the outermost cache with a ttl, amended by inner ones. */
export class Fill {
  /** What a stored response is kept under: the outer layer's settings until an inner (more specific) layer amends them. */
  ttlMs: number;
  staleMs: number;
  tags: string[] | undefined;
  /** Headers from outer middleware, taken before the handler runs: they are the request's own and never stored. */
  snapshot: OutgoingHttpHeaders | undefined;
  /** Index names, fixed when the response is captured (inner layers add tags on the way in). */
  names: string[] | undefined;
  private flight: Flight | undefined;
  private ticket: number | undefined;
  /** When the ticket was taken (Date.now()). */
  private ticketAt = 0;
  private readonly owner = String(++fillSequence);
  private locked = false;
  private settled = false;

  constructor(
    readonly server: ServerSettings,
    readonly state: CacheState,
    readonly key: string,
    /** Request headers the key holds (see RequestKey.keyed). */
    readonly keyed: string[],
    tags: string[] | undefined,
  ) {
    this.ttlMs = server.ttlMs;
    this.staleMs = server.staleMs;
    this.tags = tags;
  }

  /** An inner cache layer on the same request: its ttl and stale window apply to what is stored, its tags are added. */
  amend(server: ServerSettings, tags: string[] | undefined): void {
    this.ttlMs = server.ttlMs;
    this.staleMs = server.staleMs;
    if (tags !== undefined) this.tags = this.tags === undefined ? tags : [...this.tags, ...tags];
  }

  /**
   * Finds the answer for this request: an entry to replay, the answer of a fill of the same key
   * already running here, or the go-ahead to run the handler as the key's filler.
   * `refresh` (a request's `Cache-Control: no-cache`) skips the look-up and refills the entry.
   */
  async lookUp(req: Request, refresh: boolean): Promise<Outcome> {
    if (refresh) return this.lead(false);
    const { store, flights } = this.state;
    // 1. This process's copy (on memory, the whole store).
    const local = store.peek(this.key);
    if (local?.entry !== undefined && !local.stale && varyMatches(local.entry, req)) return { kind: 'hit', entry: local.entry };
    // 2. A request here is already filling the key: take its answer.
    const running = flights.get(this.key);
    if (running !== undefined) return follow(running, req);
    // 3. Ask the store, taking the key's fill lock in the same step.
    const flight = startFlight(flights, this.key, this.server.lockMs);
    this.flight = flight;
    const found = await this.acquire();
    const entry = found.entry !== undefined && varyMatches(found.entry, req) ? found.entry : undefined;
    if (entry !== undefined && (!found.stale || !found.locked)) {
      // Fresh, or stale while another request refreshes it.
      flight.settle(entry);
      this.flight = undefined;
      return { kind: 'hit', entry };
    }
    // 4. Ours to fill (or refresh: requests here get the stale copy meanwhile).
    if (entry !== undefined) flight.stale = entry;
    this.locked = found.locked;
    return this.lead(found.failed);
  }

  /**
   * Ends the fill with the handler's answer (undefined: nothing to share): hands it to the
   * waiting requests at once, then stores it and releases the lock.
   */
  settle(entry: CachedResponse | undefined): void {
    if (this.settled) return;
    this.settled = true;
    this.flight?.settle(entry);
    const { store, stored, logger } = this.state;
    const unlock = (): void => {
      if (this.locked) store.unlock(this.key, this.owner).catch(noop);
    };
    // A fill older than the invalidation markers could have missed one: serve it, do not keep it.
    if (entry === undefined || this.ticket === undefined || Date.now() - this.ticketAt > MAX_FILL_MS) return unlock();
    store
      .set(this.key, entry, this.ticket, Math.max(this.server.storeTimeout, MIN_STORE_TIMEOUT_MS))
      .then(
        (kept) => {
          if (kept) stored.inc();
        },
        (err: Error) => logger.debug('cache: could not store a response', { err: { name: err.name, message: err.message } }),
      )
      .finally(unlock);
  }

  /**
   * Looks the key up and takes its fill lock. While another instance holds the lock and nothing
   * is stored, looks again until its entry appears or `lockTimeout` is over; then looks once
   * more without locking and runs the handler rather than wait on a filler that may be gone.
   */
  private async acquire(): Promise<CacheLookup> {
    const { lockMs } = this.server;
    // Real time, not the store's (possibly frozen test) clock: it bounds how long a request waits.
    const deadline = Date.now() + lockMs;
    let found = await this.tryLock(lockMs);
    for (let delay = FIRST_POLL_MS; found.contended && found.entry === undefined && Date.now() < deadline; delay = Math.min(delay * 2, MAX_POLL_MS)) {
      const last = Date.now() + delay >= deadline;
      await sleep(delay);
      found = await this.tryLock(last ? 0 : lockMs);
      if (last && found.entry === undefined) found = { ...found, contended: false };
    }
    return found;
  }

  private async tryLock(lockMs: number): Promise<CacheLookup> {
    try {
      return await this.state.store.acquire(this.key, lockMs, this.server.storeTimeout, this.server.staleMs, this.owner);
    } catch {
      return FAILED_LOOKUP;
    }
  }

  /** Becomes the filler: the ticket taken now lets the store refuse an answer an invalidation overtook. */
  private async lead(storeFailed: boolean): Promise<Outcome> {
    this.ticketAt = Date.now();
    // A store that failed the look-up is not asked again: the answer is served, not kept.
    if (!storeFailed) {
      try {
        this.ticket = await this.state.store.ticket(this.server.storeTimeout);
      } catch {
        this.ticket = undefined;
      }
    }
    return FILL;
  }
}

/** Whether the request sends the header values the entry's own Vary asked to match. */
export function varyMatches(entry: CachedResponse, req: Request): boolean {
  const check = entry.varyCheck;
  if (check === undefined) return true;
  for (let i = 0; i < check.length; i++) {
    if ((headerString(req.headers[check[i][0]]) ?? '') !== check[i][1]) return false;
  }
  return true;
}

/** A header value as one string (lists joined as HTTP joins them). */
export function headerString(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) return value.join(', ');
  return String(value);
}

const flightMaps = new WeakMap<CacheStore, Map<string, Flight>>();

/** The fills in flight on a store, shared by every cache layer that uses it. */
export function flightsOf(store: CacheStore): Map<string, Flight> {
  let map = flightMaps.get(store);
  if (map === undefined) {
    map = new Map();
    flightMaps.set(store, map);
  }
  return map;
}

async function follow(flight: Flight, req: Request): Promise<Outcome> {
  if (flight.stale !== undefined && varyMatches(flight.stale, req)) return { kind: 'hit', entry: flight.stale };
  const entry = await flight.promise;
  if (entry !== undefined && varyMatches(entry, req)) return { kind: 'hit', entry };
  // The filler's answer could not be shared (not 2xx, Set-Cookie, private…): run our own, store nothing.
  return PASS;
}

function startFlight(flights: Map<string, Flight>, key: string, lockMs: number): Flight {
  let resolve!: (entry: CachedResponse | undefined) => void;
  const promise = new Promise<CachedResponse | undefined>((r) => (resolve = r));
  const flight: Flight = { promise, settle: noop, stale: undefined };
  // Waiters are released after lockMs even if the filler hangs; the next miss then fills anew.
  const timer = setTimeout(() => flight.settle(undefined), lockMs);
  timer.unref?.();
  flight.settle = (entry) => {
    clearTimeout(timer);
    if (flights.get(key) === flight) flights.delete(key);
    flight.settle = noop;
    resolve(entry);
  };
  flights.set(key, flight);
  return flight;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => {
    setTimeout(resolve, ms).unref();
  });
}
