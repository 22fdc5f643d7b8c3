import Redis, { Cluster } from 'ioredis';
import { ConfigError } from '../errors';
import type { Logger } from '../logger';

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

type ScriptFn = (...args: Array<string | number>) => Promise<unknown>;

/**
 * One Redis client shared by a stack's stores: key naming with `{hash tags}`, scripts through
 * EVALSHA (ioredis falls back to EVAL on NOSCRIPT), a per-command timeout so a hung Redis cannot
 * hang a request, and one log line per outage and per recovery.
 */
export class RedisConnection {
  readonly client: Redis | Cluster;
  readonly prefix: string;
  readonly commandTimeout: number;
  private readonly owned: boolean;
  private readonly logger: Logger;
  private subscriberClient?: Redis | Cluster;
  private healthy = true;
  private scriptCount = 0;

  constructor(option: RedisOption, options: RedisConnectionOptions) {
    this.logger = options.logger;
    this.prefix = options.prefix ?? 'perimeter:';
    this.commandTimeout = options.commandTimeout ?? 1000;
    if (typeof option === 'string') {
      if (!/^rediss?:\/\//.test(option)) {
        throw new ConfigError('redis', `expected a URL like 'redis://localhost:6379', an ioredis client or a Cluster, got '${option}'`);
      }
      // Fail fast while disconnected instead of queueing for ever; ioredis reconnects by itself.
      this.client = new Redis(option, { maxRetriesPerRequest: 1, enableReadyCheck: true, lazyConnect: false });
      this.owned = true;
    } else if (option instanceof Redis || option instanceof Cluster || isRedisLike(option)) {
      this.client = option;
      this.owned = false;
    } else {
      throw new ConfigError('redis', 'expected a URL string, an ioredis Redis instance or an ioredis Cluster');
    }
    this.client.on('error', (err: Error) => this.markDown(err));
    this.client.on('ready', () => this.markUp());
  }

  /** `prefix + namespace + ':' + '{' + id + '}'`: the hash tag keeps one entity's keys on one Cluster slot. */
  key(namespace: string, id: string, suffix?: string): string {
    return `${this.prefix}${namespace}:{${id}}${suffix === undefined ? '' : `:${suffix}`}`;
  }

  /** Registers a Lua script once; the returned function runs it (keys first, then args) with the timeout. */
  script(lua: string, numberOfKeys: number): (keys: string[], args: Array<string | number>, timeoutMs?: number) => Promise<unknown> {
    const name = `perimeterScript${++this.scriptCount}_${hash(lua)}`;
    const client = this.client as unknown as Record<string, ScriptFn | undefined> & Redis;
    if (typeof client[name] !== 'function') client.defineCommand(name, { numberOfKeys, lua });
    return (keys, args, timeoutMs) => this.run(() => (client[name] as ScriptFn)(...keys, ...args), timeoutMs);
  }

  /** Runs one command with the timeout, tracking outages and recoveries for the log. */
  run<T>(command: () => Promise<T>, timeoutMs = this.commandTimeout): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const pending = command();
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new StoreTimeoutError(timeoutMs)), timeoutMs);
      timer.unref();
    });
    return Promise.race([pending, timeout]).then(
      (value) => {
        clearTimeout(timer);
        if (!this.healthy) this.markUp();
        return value;
      },
      (err: Error) => {
        clearTimeout(timer);
        // The command may still settle after the timeout; nobody waits for it any more.
        pending.catch(() => undefined);
        this.markDown(err);
        throw err;
      },
    );
  }

  /** A second connection for SUBSCRIBE (a subscribed connection can run nothing else), made on first use. */
  subscriber(): Redis | Cluster {
    if (this.subscriberClient === undefined) {
      this.subscriberClient = this.client.duplicate();
      this.subscriberClient.on('error', () => undefined);
    }
    return this.subscriberClient;
  }

  /** Whether the last command (or connection event) succeeded. */
  get isHealthy(): boolean {
    return this.healthy;
  }

  async close(): Promise<void> {
    const closing: Array<Promise<unknown>> = [];
    if (this.subscriberClient) closing.push(shutdown(this.subscriberClient));
    if (this.owned) closing.push(shutdown(this.client));
    await Promise.all(closing);
  }

  private markDown(err: Error): void {
    if (!this.healthy) return;
    this.healthy = false;
    this.logger.warn('Redis is unavailable; stores follow their configured fail mode until it answers again', {
      code: 'ERR_REDIS_UNAVAILABLE',
      err: { name: err.name, message: err.message },
    });
  }

  private markUp(): void {
    if (this.healthy) return;
    this.healthy = true;
    this.logger.info('Redis answers again; stores are back on Redis', { code: 'ERR_REDIS_RECOVERED' });
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
  return typeof value === 'object' && value !== null && typeof (value as Redis).defineCommand === 'function' && typeof (value as Redis).duplicate === 'function';
}

function hash(text: string): string {
  let h = 0;
  for (let i = 0; i < text.length; i++) h = (Math.imul(31, h) + text.charCodeAt(i)) | 0;
  return (h >>> 0).toString(36);
}
