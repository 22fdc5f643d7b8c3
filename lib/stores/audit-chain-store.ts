import { ConfigError } from '../errors';
import type { RedisConnection } from './redis-connection';
import type { StoreFactory } from './types';

/** Where a chain ends: the hash of its last record and that record's `seq`. */
export interface StreamChainHead {
  hash: string;
  seq: number;
}

/** What {@link AuditStreamStore.append} found. */
export type AppendResult =
  | { status: 'ok' }
  /** This batch was appended before (an attempt whose answer was lost): nothing was added again. */
  | { status: 'duplicate' }
  /** Another writer extended the chain first: nothing was added; link the batch to `head` and try again. */
  | { status: 'conflict'; head: StreamChainHead }
  /** Another writer that kept losing holds the turn: nothing was added; wait a moment and try again. */
  | { status: 'wait'; head: StreamChainHead };

/** One stream entry: the event (so consumers can filter without parsing) and the record's JSON. */
export interface StreamEntry {
  event: string;
  json: string;
}

/** What the chained append checks and sets. */
export interface ChainSwap {
  /** Hash the head must still have (the genesis value when the chain has no record yet). */
  expected: string;
  /** prev_hash of the first record of a new chain. */
  genesis: string;
  /** The head after this batch. */
  next: StreamChainHead;
  /**
   * On a conflict, take the turn: for a moment only this batch may extend the chain. A writer that
   * lost a few times in a row asks for it, so a busy instance cannot starve a slower one.
   */
  claimTurn?: boolean;
}

/**
 * An audit Redis stream shared by every instance. A batch is appended in one script: with a
 * chain, only when the chain head is still the one its hashes were computed from (compare-and-set),
 * and the XADDs happen in that same script, so the stream's order is the chain's order. Every
 * batch leaves a marker for a day, so a retry of a batch whose answer was lost adds nothing twice.
 * A batch that keeps losing the compare-and-set can claim a short turn (see {@link ChainSwap.claimTurn}).
 */
export interface AuditStreamStore {
  /** The stream's key, for consumers (XRANGE, XREAD, XREADGROUP). */
  readonly key: string;
  /** The hash holding the chain head (`hash`, `seq`). */
  readonly headKey: string;
  append(entries: StreamEntry[], batchId: string, chain: ChainSwap | undefined, timeoutMs: number): Promise<AppendResult>;
  /** The current chain head, or undefined before the first chained record. */
  head(timeoutMs: number): Promise<StreamChainHead | undefined>;
}

/** Options of {@link auditStreamStore}. */
export interface AuditStreamStoreOptions {
  /** Name of the stream; the key is `<prefix>audit:{<stream>}`. */
  stream: string;
  /** Approximate most entries kept (XADD MAXLEN ~); 0 keeps all. Defaults to 0. */
  maxLen?: number;
  /** How long a batch's marker stops a duplicate. Defaults to 86,400,000 ms (1 day). */
  markerTtlMs?: number;
  /** Longest a claimed turn holds off other writers, should its holder vanish. Defaults to 250 ms. */
  turnTtlMs?: number;
}

// KEYS: head, stream, batch marker, turn. ARGV: chained ('1'|'0'), genesis, expected hash, next
// hash, next seq, maxLen (0 = none), marker ttl ms, batch id, claim turn ('1'|'0'), turn ttl ms,
// then event/json pairs (the connection's fence has already taken its deadline off the end).
// An append that timed out is either refused by the fence when it arrives late, or it ran in time
// and left its marker, so the queue's retry of the same batch id adds nothing twice.
const APPEND = `
if redis.call('EXISTS', KEYS[3]) == 1 then return {'duplicate'} end
if ARGV[1] == '1' then
  local head = redis.call('HMGET', KEYS[1], 'hash', 'seq')
  local current = head[1] or ARGV[2]
  local turn = redis.call('GET', KEYS[4])
  if turn and turn ~= ARGV[8] then return {'wait', current, head[2] or '0'} end
  if current ~= ARGV[3] then
    if ARGV[9] == '1' then redis.call('SET', KEYS[4], ARGV[8], 'NX', 'PX', ARGV[10]) end
    return {'conflict', current, head[2] or '0'}
  end
  if turn then redis.call('DEL', KEYS[4]) end
end
local maxLen = tonumber(ARGV[6])
for i = 11, #ARGV, 2 do
  if maxLen > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxLen, '*', 'event', ARGV[i], 'record', ARGV[i + 1])
  else
    redis.call('XADD', KEYS[2], '*', 'event', ARGV[i], 'record', ARGV[i + 1])
  end
end
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'hash', ARGV[4], 'seq', ARGV[5]) end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[7])
return {'ok'}
`;

/** The audit stream of `options.stream`. Redis only: in memory it throws ConfigError, since records kept in a process's memory are no audit trail. */
export function auditStreamStore(options: AuditStreamStoreOptions): StoreFactory<AuditStreamStore> {
  const maxLen = options.maxLen ?? 0;
  const markerTtlMs = Math.max(1000, Math.ceil(options.markerTtlMs ?? 86_400_000));
  const turnTtlMs = Math.max(10, Math.ceil(options.turnTtlMs ?? 250));
  return {
    memory: () => {
      throw new ConfigError(
        'auditLog.sink',
        `{ redisStream: '${options.stream}' } needs Redis: pass redis to createStack() (createStack({ redis: process.env.REDIS_URL, auditLog: { sink: { redisStream } } })) or give the sink its own { redisStream, redis }`,
      );
    },
    redis: (connection) => new RedisAuditStream(connection, options.stream, maxLen, markerTtlMs, turnTtlMs),
  };
}

class RedisAuditStream implements AuditStreamStore {
  readonly key: string;
  readonly headKey: string;
  private readonly turnKey: string;
  private readonly append_;

  constructor(
    private readonly conn: RedisConnection,
    private readonly stream: string,
    private readonly maxLen: number,
    private readonly markerTtlMs: number,
    private readonly turnTtlMs: number,
  ) {
    // One hash tag for the stream, its head, its turn and its markers: the script touches them together, even on a Cluster.
    this.key = conn.key('audit', stream);
    this.headKey = conn.key('audit', stream, 'head');
    this.turnKey = conn.key('audit', stream, 'turn');
    this.append_ = conn.script(APPEND, 4);
  }

  async append(entries: StreamEntry[], batchId: string, chain: ChainSwap | undefined, timeoutMs: number): Promise<AppendResult> {
    const args: Array<string | number> = [
      chain === undefined ? '0' : '1',
      chain?.genesis ?? '',
      chain?.expected ?? '',
      chain?.next.hash ?? '',
      chain?.next.seq ?? 0,
      this.maxLen,
      this.markerTtlMs,
      batchId,
      chain?.claimTurn ? '1' : '0',
      this.turnTtlMs,
    ];
    for (const entry of entries) args.push(entry.event, entry.json);
    const keys = [this.headKey, this.key, this.conn.key('audit', this.stream, `batch:${batchId}`), this.turnKey];
    const reply = (await this.append_(keys, args, timeoutMs)) as string[];
    if (reply[0] === 'ok') return { status: 'ok' };
    if (reply[0] === 'duplicate') return { status: 'duplicate' };
    const head = { hash: String(reply[1]), seq: Number(reply[2]) };
    return reply[0] === 'wait' ? { status: 'wait', head } : { status: 'conflict', head };
  }

  async head(timeoutMs: number): Promise<StreamChainHead | undefined> {
    const [hash, seq] = await this.conn.run(() => this.conn.client.hmget(this.headKey, 'hash', 'seq'), timeoutMs);
    return hash === null ? undefined : { hash, seq: Number(seq ?? 0) };
  }
}
