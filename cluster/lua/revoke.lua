-- Records a user's revocation in one atomic step, keeping the latest.
--
-- KEYS[1]  the user's revocation key (chatd:{user:<id>}:revoked)
-- ARGV[1]  the revocation's moment, in unix seconds
-- ARGV[2]  how long it is remembered, in milliseconds
--
-- The key holds the latest moment recorded, in unix seconds, and lives
-- ARGV[2] from this call. Returns the moment the key holds.

local at = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]))
if cur and cur > at then
	at = cur
end
redis.call('SET', KEYS[1], string.format('%d', at), 'PX', ARGV[2])
return at
