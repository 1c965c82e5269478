-- Accepts one room publication in one atomic step.
--
-- KEYS[1]  the room's log, a stream of {i = message id, n = node, d = frame}
-- KEYS[2]  the fence of this message id (set by resolve.lua)
-- KEYS[3]  the room's deleted messages (delete.lua), kept as long as the log
-- ARGV[1]  message id; empty for a frame that is relayed, not logged
-- ARGV[2]  the frame
-- ARGV[3]  the room's pub/sub channel
-- ARGV[4]  the log's lifetime after its latest message, in milliseconds
-- ARGV[5]  how many messages the log keeps (approximately, never fewer)
-- ARGV[6]  the publishing node's name
-- ARGV[7]  the millisecond part of the message id (the stream entry id's)
--
-- Returns {1} when published; {0, last} when the id is not after the log's
-- last message id (nothing done); {2} when the id and frame are the log's
-- last message, i.e. a command retried after its reply was lost (nothing
-- done again); {3} when the id was fenced off by resolve.lua
-- (nothing done, and it never will be).

-- before compares byte-wise, not with Lua's locale-dependent operators.
local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local id = ARGV[1]
if id ~= '' then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return {3}
  end
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if top then
    local f = top[2]
    local last = f[2]
    if id == last and f[6] == ARGV[2] then
      return {2}
    end
    if not before(last, id) then
      return {0, last}
    end
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], ARGV[7] .. '-*', 'i', id, 'n', ARGV[6], 'd', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
redis.call('PUBLISH', ARGV[3], ARGV[2])
return {1}
