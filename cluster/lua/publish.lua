-- Accepts one room publication in one atomic step.
--
-- KEYS[1]  the room's log, a stream of {i = message id, n = node, d = frame};
--          an entry without d is a fence left by resolve.lua
-- KEYS[2]  the room's deleted messages (delete.lua), kept as long as the log
-- ARGV[1]  message id; empty for a frame that is relayed, not logged
-- ARGV[2]  the frame
-- ARGV[3]  the room's pub/sub channel
-- ARGV[4]  the log's lifetime after its latest message, in milliseconds
-- ARGV[5]  how many messages the log keeps (approximately, never fewer)
-- ARGV[6]  the publishing node's name
-- ARGV[7]  the millisecond part of the message id (the stream entry id's)
-- ARGV[8]  '1' when the publisher has read every publication made before
--          it last found the log empty, so its id is after them
-- ARGV[9]  the command that publishes: PUBLISH, or SPUBLISH on a Redis
--          Cluster (the channel is in the room's slot, like KEYS)
--
-- Returns {1} when published; {0, last} when the id is not after the log's
-- last entry (nothing done: a fence refuses its own id this way); {2} when
-- the id and frame are the log's last message, i.e. a command retried after
-- its reply was lost (nothing done again); {3} when the log is empty and
-- ARGV[8] is not '1' (nothing done: a log lost with Redis's data no longer
-- orders the message against those published just before the loss, so the
-- publisher first reads them). before() is order.lua's.

local id = ARGV[1]
if id ~= '' then
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  local fresh = true
  if top then
    local f = top[2]
    local last = f[2]
    if id == last and f[6] == ARGV[2] then
      return {2}
    end
    if not before(last, id) then
      return {0, last}
    end
    -- The lifetime is renewed once a minute of the room's activity, not
    -- on every message.
    fresh = math.floor(tonumber(string.match(top[1], '^%d+')) / 60000) ~= math.floor(tonumber(ARGV[7]) / 60000)
  elseif ARGV[8] ~= '1' then
    return {3}
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], ARGV[7] .. '-*', 'i', id, 'n', ARGV[6], 'd', ARGV[2])
  if fresh then
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  end
end
redis.call(ARGV[9], ARGV[3], ARGV[2])
return {1}
