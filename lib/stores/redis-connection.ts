import { createHash } from 'node:crypto';
import Redis, { Cluster } from 'ioredis';
import { ConfigError } from '../errors';
import type { Logger } from '../logger';
import { WARNINGS } from '../warnings';
import { LATE_ERROR, LUA_FENCE } from './lua';
import { StoreOutage } from './outage';

/** What `createStack({ redis })` accepts: a URL, or an ioredis client or Cluster the user owns. */
export type RedisOption = string | Redis | Cluster;

/** Options of {@link RedisConnection}. */
export interface RedisConnectionOptions {
  /** Prefix of every key and channel. Defaults to 'perimeter:'. */
  prefix?: string;
  /** Longest a store command may take before it counts as failed. Defaults to 1000 ms. */
  commandTimeout?: number;
  logger: Logger;
}

/** Thrown (as a rejection) when Redis does not answer within the command timeout. */
export class StoreTimeoutError extends Error {
  constructor(ms: number) {
    super(`Redis did not answer within ${ms} ms`);
    this.name = 'StoreTimeoutError';
  }
}

/**
 * Thrown (as a rejection) when a command is refused without being sent: the connection was up
 * before and is not now (reconnecting). Queueing it would only send it after its caller gave up.
 */
export class StoreUnavailableError extends Error {
  constructor(status: string) {
    super(`Redis is not connected (${status})`);
    this.name = 'StoreUnavailableError';
  }
}

// How often the estimate of Redis's clock (for script deadlines) is refreshed with one TIME; it
// is also refreshed on every (re)connection. Clocks drift apart by microseconds per second.
const CLOCK_REFRESH_MS = 10_000;
// Readings of Redis's clock older than this no longer count towards the estimate.
const CLOCK_MEMORY_MS = 3 * CLOCK_REFRESH_MS;

interface PendingCall {
  deadline: number;
  timeoutMs: number;
  done: boolean;
  reject: (err: Error) => void;
}

interface DeadlineQueue {
  items: Array<PendingCall | undefined>;
  head: number;
}

/**
 * Command deadlines with one timer per connection instead of one per call: calls are kept in
 * FIFO queues per timeout length (so each queue is ordered by deadline) and a sweep rejects the
 * overdue ones. A deadline fires up to a quarter of its length late (at most 25 ms), and one turn
 * of the event loop after the sweep: an answer that already arrived (the loop was busy when both
 * fell due) is read first, so a call is never failed while its reply waits in the socket.
 *
 * Replies on one connection come back in the order the commands went out, so a settled call is
 * almost always at the head of its queue: `settle` drops it (and every settled call behind it) at
 * once. Calls are then released while still young; kept until the next sweep, tens of thousands
 * of them per second outlived V8's young generation and made every collection dearer.
 */
class Deadlines {
  private readonly queues = new Map<number, DeadlineQueue>();
  private lastTimeout = -1;
  private lastQueue?: DeadlineQueue;
  private timer?: NodeJS.Timeout;
  private tick = 25;
  private count = 0;

  constructor(private readonly expire: (call: PendingCall) => void) {}

  track(call: PendingCall): DeadlineQueue {
    let queue = call.timeoutMs === this.lastTimeout ? this.lastQueue : this.queues.get(call.timeoutMs);
    if (queue === undefined) {
      queue = { items: [], head: 0 };
      this.queues.set(call.timeoutMs, queue);
      this.tick = Math.max(1, Math.min(this.tick, Math.floor(call.timeoutMs / 4)));
    }
    this.lastTimeout = call.timeoutMs;
    this.lastQueue = queue;
    queue.items.push(call);
    this.count++;
    if (this.timer === undefined) {
      this.timer = setInterval(() => this.sweep(), this.tick);
      this.timer.unref();
    }
    return queue;
  }

  /** Marks `call` answered and releases the answered calls at the head of its queue. */
  settle(call: PendingCall, queue: DeadlineQueue): void {
    call.done = true;
    const { items } = queue;
    let head = queue.head;
    while (head < items.length && (items[head] as PendingCall).done) {
      items[head++] = undefined;
      this.count--;
    }
    queue.head = head;
    if (head === items.length) {
      items.length = 0;
      queue.head = 0;
    } else if (head > 1024 && head * 2 > items.length) {
      items.splice(0, head);
      queue.head = 0;
    }
  }

  private sweep(): void {
    const now = performance.now();
    let overdue: PendingCall[] | undefined;
    for (const queue of this.queues.values()) {
      const { items } = queue;
      while (queue.head < items.length) {
        const call = items[queue.head] as PendingCall;
        if (!call.done && call.deadline > now) break;
        items[queue.head++] = undefined;
        this.count--;
        if (!call.done) (overdue ??= []).push(call);
      }
      if (queue.head === items.length) {
        items.length = 0;
        queue.head = 0;
      } else if (queue.head > 1024 && queue.head * 2 > items.length) {
        items.splice(0, queue.head);
        queue.head = 0;
      }
    }
    if (this.count === 0 && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
    if (overdue !== undefined) setImmediate(expireOverdue, overdue, this.expire);
  }
}

function expireOverdue(calls: PendingCall[], expire: (call: PendingCall) => void): void {
  for (const call of calls) {
    if (call.done) continue;
    call.done = true;
    expire(call);
  }
}

/**
 * One Redis client shared by a stack's stores: key naming with `{hash tags}`, scripts through
 * EVALSHA (EVAL when the server answers NOSCRIPT), a per-command timeout so a hung Redis cannot
 * hang a request, and one log line per outage and per recovery (see StoreOutage).
 *
 * A command that timed out must not take effect later (Redis was paused, the network held it, a
 * reconnect resent it): a later write could override a newer one, or leave a lock or a count
 * nobody asked for any more. So every script carries its deadline on Redis's own clock and checks
 * it before running (see LUA_FENCE); commands are not queued while a connection that was up is
 * reconnecting (they fail at once); and an owned client resends nothing after a reconnect, and
 * is cut (and reconnects) when it stays silent while calls time out: a hung peer, or a route that
 * drops packets, would otherwise hold the connection until TCP gives up, many minutes later.
 */
export class RedisConnection {
  readonly client: Redis | Cluster;
  readonly prefix: string;
  readonly commandTimeout: number;
  private readonly owned: boolean;
  private readonly logger: Logger;
  private subscriberClient?: Redis | Cluster;
  private readonly outage: StoreOutage;
  /** Whether the client was ready once: from then on, commands are not queued while it is not. */
  private wasReady: boolean;
  /**
   * Redis's clock minus `performance.now()`, in ms, as a lower bound: each reading is Redis's time
   * when it answered minus our time when the answer arrived, so it errs on the early side and a
   * deadline made with it is never later than the caller's. Undefined until the first reading.
   */
  private clockOffset?: number;
  private clockReadAt = -Infinity;
  private clockCheckedAt = -Infinity;
  private clockSyncing = false;
  /** Since when calls have been timing out with no answer at all in between (performance.now()). */
  private silentSince?: number;
  private readonly hungAfterMs: number;
  /** When the client last became ready (performance.now()). */
  private readyAt = -Infinity;
  private readonly deadlines = new Deadlines((call) => {
    const err = new StoreTimeoutError(call.timeoutMs);
    const sentAt = call.deadline - call.timeoutMs;
    // A call stranded on a connection that has since been replaced says nothing of the new one.
    if (sentAt >= this.readyAt) {
      this.markDown(err, sentAt);
      this.cutIfHung(sentAt);
    }
    call.reject(err);
  });

  constructor(option: RedisOption, options: RedisConnectionOptions) {
    this.logger = options.logger;
    this.outage = new StoreOutage({
      logger: this.logger,
      down: { code: 'ERR_REDIS_UNAVAILABLE', message: WARNINGS.ERR_REDIS_UNAVAILABLE },
      up: { code: 'ERR_REDIS_RECOVERED', message: WARNINGS.ERR_REDIS_RECOVERED },
    });
    this.prefix = options.prefix ?? 'perimeter:';
    this.commandTimeout = options.commandTimeout ?? 1000;
    // Long enough that a pause (a failover's CLIENT PAUSE, a slow command) is waited out.
    this.hungAfterMs = Math.max(1000, 5 * this.commandTimeout);
    if (typeof option === 'string') {
      if (!/^rediss?:\/\//.test(option)) {
        throw new ConfigError('redis', `expected a URL like 'redis://localhost:6379', an ioredis client or a Cluster, got '${option}'`);
      }
      this.client = new Redis(option, {
        // Fail fast while disconnected instead of queueing for ever; ioredis reconnects by itself.
        maxRetriesPerRequest: 1,
        enableReadyCheck: true,
        lazyConnect: false,
        // A command cut off by a dropped connection is reported failed by its deadline; sent
        // again after the reconnect, it would take effect after its caller gave up.
        autoResendUnfulfilledCommands: false,
      });
      this.owned = true;
    } else if (option instanceof Redis || option instanceof Cluster || isRedisLike(option)) {
      this.client = option;
      this.owned = false;
    } else {
      throw new ConfigError('redis', 'expected a URL string, an ioredis Redis instance or an ioredis Cluster');
    }
    this.wasReady = this.client.status === 'ready';
    this.client.on('error', (err: Error) => this.markDown(err, performance.now()));
    this.client.on('ready', () => {
      this.wasReady = true;
      this.readyAt = performance.now();
      this.markUp();
      this.syncClock();
    });
  }

  /** `prefix + namespace + ':' + '{' + id + '}'`: the hash tag keeps one entity's keys on one Cluster slot. */
  key(namespace: string, id: string, suffix?: string): string {
    return `${this.prefix}${namespace}:{${id}}${suffix === undefined ? '' : `:${suffix}`}`;
  }

  /**
   * Registers a Lua script once; the returned function runs it (keys first, then args) with the
   * timeout: EVALSHA, and EVAL when the server answers NOSCRIPT (after a restart or SCRIPT FLUSH).
   *
   * The script runs behind LUA_FENCE: its body finds `now` (Redis's clock, ms) defined, and it
   * does not run at all once the call's timeout has passed on Redis's clock, so a call that
   * timed out here never takes effect later.
   */
  script(
    lua: string,
    numberOfKeys: number,
  ): <T = unknown>(keys: string[], args: Array<string | number>, timeoutMs?: number, map?: (reply: unknown) => T) => Promise<T> {
    const fenced = LUA_FENCE + lua;
    const sha = createHash('sha1').update(fenced).digest('hex');
    const client = this.client as Redis;
    // The hot path of every rate-limit decision: evalsha directly (not ioredis's custom-command
    // wrapper), the reply mapped inside the one promise the caller gets, and the retries (EVAL on
    // NOSCRIPT, a corrected deadline) only in the error path.
    return <T>(keys: string[], args: Array<string | number>, timeoutMs = this.commandTimeout, map?: (reply: unknown) => T) => {
      const refused = this.refuseWhileDown();
      if (refused !== undefined) return refused;
      const start = performance.now();
      let deadline = this.redisDeadline(start, timeoutMs);
      return this.within<T>(
        client.evalsha(sha, numberOfKeys, ...keys, ...args, deadline),
        timeoutMs,
        (err) => {
          const message = typeof err?.message === 'string' ? err.message : '';
          if (message.startsWith('NOSCRIPT')) return client.eval(fenced, numberOfKeys, ...keys, ...args, deadline);
          // Refused as late while the call still has time here: the estimate of Redis's clock is
          // behind (its clock stepped); correct it from the answer and try once more.
          if (message.startsWith(LATE_ERROR) && performance.now() < start + timeoutMs && this.correctClock(message)) {
            deadline = this.redisDeadline(start, timeoutMs);
            return client.evalsha(sha, numberOfKeys, ...keys, ...args, deadline);
          }
          return undefined;
        },
        map,
        start,
      );
    };
  }

  /**
   * Runs one command with the timeout, tracking outages and recoveries for the log. `recover`
   * may turn a failure into a second attempt (a promise) within the same deadline. Refused at
   * once (StoreUnavailableError) while a connection that was up is reconnecting.
   *
   * Plain commands carry no deadline: use them for reads and for writes that are harmless when
   * they land late (a DEL of a key that is deleted anyway, a PUBLISH that only makes instances
   * reload); anything else goes through a {@link script}.
   */
  run<T>(command: () => Promise<T>, timeoutMs = this.commandTimeout, recover?: (err: Error) => Promise<T> | undefined): Promise<T> {
    const refused = this.refuseWhileDown();
    if (refused !== undefined) return refused;
    return this.runOn(command, timeoutMs, recover);
  }

  /** {@link run} for commands of the {@link subscriber} connection, which reconnects (and resubscribes) on its own. */
  runSubscriber<T>(command: () => Promise<T>, timeoutMs = this.commandTimeout): Promise<T> {
    return this.runOn(command, timeoutMs);
  }

  private runOn<T>(command: () => Promise<T>, timeoutMs: number, recover?: (err: Error) => Promise<T> | undefined): Promise<T> {
    let started: Promise<T>;
    try {
      started = command();
    } catch (err) {
      started = Promise.reject(err);
    }
    return this.within<T>(started, timeoutMs, recover);
  }

  /**
   * The promise of a started command, bounded by its deadline: it rejects with StoreTimeoutError
   * when Redis has not answered in time, and its outcome marks the connection up or down. `map`
   * turns the reply into the value inside this one promise.
   */
  private within<T>(
    started: Promise<unknown>,
    timeoutMs: number,
    recover?: (err: Error) => Promise<unknown> | undefined,
    map?: (reply: unknown) => T,
    sentAt = performance.now(),
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const pending: PendingCall = { deadline: sentAt + timeoutMs, timeoutMs, done: false, reject };
      const queue = this.deadlines.track(pending);
      const succeed = (reply: unknown): void => {
        this.silentSince = undefined;
        if (pending.done) return;
        this.deadlines.settle(pending, queue);
        this.markUp();
        try {
          resolve(map === undefined ? (reply as T) : map(reply));
        } catch (err) {
          reject(err);
        }
      };
      const fail = (err: Error): void => {
        // An error reply is an answer: the connection is alive.
        if (err.name === 'ReplyError') this.silentSince = undefined;
        // A command that fails after its timeout was already reported; nobody waits for it.
        if (pending.done) return;
        this.deadlines.settle(pending, queue);
        // Refused by the fence an instant before the sweep would have expired it: a timeout, and
        // an answer from a Redis that is up (the calls just before it may already have succeeded).
        if (typeof err.message === 'string' && err.message.startsWith(LATE_ERROR)) {
          reject(new StoreTimeoutError(timeoutMs));
          return;
        }
        if (sentAt >= this.readyAt) this.markDown(err, sentAt);
        reject(err);
      };
      started.then(succeed, (err: Error) => {
        const retried = pending.done ? undefined : recover?.(err);
        if (retried === undefined) fail(err);
        else retried.then(succeed, fail);
      });
    });
  }

  /** A second connection for SUBSCRIBE (a subscribed connection can run nothing else), made on first use. */
  subscriber(): Redis | Cluster {
    if (this.subscriberClient === undefined) {
      this.subscriberClient = this.client.duplicate();
      this.subscriberClient.on('error', () => undefined);
    }
    return this.subscriberClient;
  }

  /**
   * Calls `listener` each time the command or the subscriber connection is ready again:
   * announcements published while either was down never arrive, so a listener reads the state
   * again. Returns the remover.
   */
  onReconnect(listener: () => void): () => void {
    const subscriber = this.subscriber();
    const client = this.client;
    subscriber.on('ready', listener);
    client.on('ready', listener);
    return () => {
      subscriber.off('ready', listener);
      client.off('ready', listener);
    };
  }

  /** Whether the last command (or connection event) succeeded. */
  get isHealthy(): boolean {
    return !this.outage.down;
  }

  async close(): Promise<void> {
    const closing: Array<Promise<unknown>> = [];
    if (this.subscriberClient) closing.push(shutdown(this.subscriberClient));
    if (this.owned) closing.push(shutdown(this.client));
    await Promise.all(closing);
  }

  /**
   * Called as a call sent at `sentAt` times out. An owned connection that answered nothing at all
   * for `hungAfterMs` while calls waited is cut; ioredis then reconnects, and commands refused
   * meanwhile fail at once instead of each waiting out its timeout.
   */
  private cutIfHung(sentAt: number): void {
    this.silentSince = Math.min(this.silentSince ?? sentAt, sentAt);
    if (!this.owned || performance.now() - this.silentSince < this.hungAfterMs) return;
    const status = this.client.status;
    if (status !== 'ready' && status !== 'connect') return;
    this.silentSince = undefined;
    this.client.disconnect(true);
  }

  /** A rejection for a command that would only wait in ioredis's offline queue; undefined when it may be sent. */
  private refuseWhileDown(): Promise<never> | undefined {
    const status = this.client.status;
    if (status === 'ready' || !this.wasReady) return undefined;
    const err = new StoreUnavailableError(status);
    this.markDown(err, performance.now());
    return Promise.reject(err);
  }

  /** The deadline of a call made at `start` (a `performance.now()` time) on Redis's clock, or 0 before the clock is known. */
  private redisDeadline(start: number, timeoutMs: number): number {
    if (start - this.clockCheckedAt > CLOCK_REFRESH_MS) this.syncClock();
    return this.clockOffset === undefined ? 0 : Math.ceil(start + timeoutMs + this.clockOffset);
  }

  /** Reads Redis's clock with one TIME, in the background. */
  private syncClock(): void {
    if (this.clockSyncing) return;
    this.clockSyncing = true;
    // A failed attempt is tried again after the refresh interval (or on reconnection), not on every call.
    this.clockCheckedAt = performance.now();
    this.run(() => this.client.time())
      .then(
        (reply) => this.readClock(Number(reply[0]) * 1000 + Math.floor(Number(reply[1]) / 1000)),
        () => undefined,
      )
      .finally(() => {
        this.clockSyncing = false;
      });
  }

  /** Takes Redis's clock from a LATE_ERROR answer; false when the answer carries none. */
  private correctClock(message: string): boolean {
    const redisNow = Number(message.split(' ')[1]);
    if (!Number.isFinite(redisNow)) return false;
    // The last readings said Redis's clock is earlier than it is (it stepped): start again from this one.
    this.clockOffset = undefined;
    this.readClock(redisNow);
    return true;
  }

  /**
   * One reading of Redis's clock, `redisNow` when it answered, taken as the answer arrives. The
   * estimate is the latest of the recent readings (the one whose answer travelled fastest), so a
   * reading delayed on the way (a busy loop, a queued command) does not make deadlines late.
   */
  private readClock(redisNow: number): void {
    const now = performance.now();
    const offset = redisNow - now;
    if (this.clockOffset === undefined || now - this.clockReadAt > CLOCK_MEMORY_MS || offset > this.clockOffset) {
      this.clockOffset = offset;
      this.clockReadAt = now;
    }
    this.clockCheckedAt = now;
  }

  private markDown(err: Error, sentAt: number): void {
    this.outage.failed(err, sentAt);
  }

  private markUp(): void {
    this.outage.answered();
  }
}

// QUIT on a connected client lets pending replies arrive; a client that is still connecting or
// reconnecting is cut at once so no reconnect timer outlives close().
async function shutdown(client: Redis | Cluster): Promise<void> {
  if (client.status === 'ready') {
    await client.quit().catch(() => client.disconnect());
  } else {
    client.disconnect();
  }
}

function isRedisLike(value: unknown): value is Redis {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as Redis).defineCommand === 'function' &&
    typeof (value as Redis).duplicate === 'function'
  );
}
