-- Settles a publication whose outcome the publisher does not know.
--
-- KEYS[1]  the room's log
-- KEYS[2]  the fence of this message id
-- ARGV[1]  message id
-- ARGV[2]  the millisecond part of the message id
-- ARGV[3]  the fence's lifetime, in milliseconds
--
-- Returns 1 when the message is in the log. Otherwise it sets the fence,
-- so that the publication, should it still arrive, is refused, and
-- returns 0: either way the answer stays true.
local es = redis.call('XRANGE', KEYS[1], ARGV[2] .. '-0', ARGV[2] .. '-18446744073709551615')
for _, e in ipairs(es) do
  if e[2][2] == ARGV[1] then
    return 1
  end
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
return 0
