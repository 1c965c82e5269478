-- Settles a publication whose outcome the publisher does not know.
--
-- KEYS[1]  the room's log
-- ARGV[1]  message id
-- ARGV[2]  the millisecond part of the message id
-- ARGV[3]  the publishing node's name
-- ARGV[4]  the log's lifetime, in milliseconds (a fence may start a log)
--
-- Returns 1 when the message is in the log. Otherwise it returns 0, and
-- makes sure the publication, should it still arrive (queued in a stalled
-- Redis, say), is refused: when the id is after the log's last entry, a
-- fence entry with that id and no frame is appended, which publish.lua's
-- order check refuses the id against; when it is not, the order check
-- refuses it already. Either way the answer stays true.
local es = redis.call('XRANGE', KEYS[1], ARGV[2] .. '-0', ARGV[2] .. '-18446744073709551615')
for _, e in ipairs(es) do
  if e[2][2] == ARGV[1] then
    return #e[2] >= 6 and 1 or 0
  end
end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if not top or before(top[2][2], ARGV[1]) then
  redis.call('XADD', KEYS[1], ARGV[2] .. '-*', 'i', ARGV[1], 'n', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 0
