/**
 * Lua fragments shared by the Redis stores' scripts. Every script that needs a time reads it
 * from Redis (`TIME`), so instances whose clocks disagree still agree.
 */

/** Sets `now` to Redis's clock in epoch milliseconds. */
export const LUA_NOW_MS = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/**
 * Adds member ARGV[1] to the sorted set KEYS[1] with its expiry as the score: `now + ARGV[2]`
 * milliseconds, or +inf when ARGV[2] is 0 (never). Needs {@link LUA_NOW_MS} before it.
 */
export const LUA_ZADD_EXPIRING = `local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
else
  redis.call('ZADD', KEYS[1], '+inf', ARGV[1])
end
`;
