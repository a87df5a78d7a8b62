-- Leave the waiting line.
-- KEYS: none (derived from the prefix: waiting, waiters, twins:<key>)
-- ARGV: [1] prefix, [2] request key
-- Returns (decoded into ledger.scripts.Unparked): {left 0/1, [twin task ids]}
local p = ARGV[1]
local twins = redis.call('SMEMBERS', p .. 'twins:' .. ARGV[2])
redis.call('DEL', p .. 'twins:' .. ARGV[2])
if redis.call('ZREM', p .. 'waiting', ARGV[2]) == 1 then
  redis.call('HDEL', p .. 'waiters', ARGV[2])
  return {1, twins}
end
return {0, twins}
