-- Shared by the room-log scripts (prepended to each, see broker_redis.go).

-- before compares byte-wise, not with Lua's locale-dependent operators.
local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
