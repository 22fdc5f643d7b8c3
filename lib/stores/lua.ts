/**
 * Lua fragments shared by the Redis stores' scripts. Every script that needs a time reads it
 * from Redis (`TIME`), so instances whose clocks disagree still agree.
 */

/** Sets `now` to Redis's clock in epoch milliseconds. */
export const LUA_NOW_MS = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/** The error a fenced script answers when it runs after its deadline (see {@link LUA_FENCE}). */
export const LATE_ERROR = 'PERIMETER_LATE';

/**
 * The head of every script run through `RedisConnection.script`. The caller appends one last
 * argument, the deadline on Redis's clock (epoch ms, 0 for none); the fence removes it from ARGV,
 * sets `now` (Redis's clock in ms) for the body and, past the deadline, answers an error before
 * the body runs. A script whose caller already gave up (Redis was paused, the network held the
 * command, a reconnect resent it) therefore writes nothing: a store call either takes effect
 * within its timeout or not at all. The error carries Redis's clock so the caller can correct its
 * estimate of it.
 *
 * replicate_commands: Redis 3.2-4 refuse writes after TIME without it; 5+ do it already.
 */
export const LUA_FENCE = `if redis.replicate_commands then redis.replicate_commands() end
local deadline = tonumber(table.remove(ARGV))
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if deadline > 0 and now > deadline then
  return redis.error_reply('${LATE_ERROR} ' .. string.format('%d', now) .. ' the command arrived after its deadline; nothing was written')
end
`;

/**
 * Adds member ARGV[1] to the sorted set KEYS[1] with its expiry as the score: `now + ARGV[2]`
 * milliseconds, or +inf when ARGV[2] is 0 (never). Needs `now` (the fence or {@link LUA_NOW_MS}).
 */
export const LUA_ZADD_EXPIRING = `local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
else
  redis.call('ZADD', KEYS[1], '+inf', ARGV[1])
end
`;
