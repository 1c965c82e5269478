-- Takes a message of a room's log down and publishes its msg_deleted frame,
-- in one atomic step.
--
-- KEYS[1]  the room's log, a stream of {i = message id, n = node, d = frame}
-- KEYS[2]  the room's deleted messages: a sorted set of ids (all scores 0,
--          ordered by id), which the log's readers leave out
-- ARGV[1]  message id
-- ARGV[2]  the millisecond part of the message id (the stream entry id's)
-- ARGV[3]  the frame to publish
-- ARGV[4]  the room's pub/sub channel
-- ARGV[5]  the command that publishes: PUBLISH, or SPUBLISH on a Redis
--          Cluster
--
-- Returns 1 when the log holds the message, 0 when it does not (nothing is
-- recorded then). Either way the frame is published. The set lives as long
-- as the log (publish.lua extends both), and keeps no id older than the
-- log's oldest message.
local held = 0
local es = redis.call('XRANGE', KEYS[1], ARGV[2] .. '-0', ARGV[2] .. '-18446744073709551615')
for _, e in ipairs(es) do
  if e[2][2] == ARGV[1] then
    held = 1
    break
  end
end
if held == 1 then
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  redis.call('ZREMRANGEBYLEX', KEYS[2], '-', '(' .. oldest[2][2])
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
redis.call(ARGV[5], ARGV[4], ARGV[3])
return held
