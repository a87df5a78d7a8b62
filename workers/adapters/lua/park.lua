-- Join the waiting line, once per request key; a later task for the same key is a twin. A
-- task that was answered before (a copy of it) does not join: it gets that answer.
-- A request that joins is counted (stats) as pending for its network type, and as delayed
-- when older requests wait ahead of it.
-- KEYS: none (derived from the prefix: req:<key>, waiting, waiters, arrivals, twins:<key>,
--       answered:<task>, stats)
-- ARGV: [1] prefix, [2] request key, [3] waiter record JSON, [4] task id,
--       [5] the stats field of its pending count, [6] that of its delayed count
-- Returns (decoded into ledger.scripts.InLine):
--   {'parked', position (1: the head), the record in line} | {'dup', 0} (granted meanwhile)
--   | {'answered', 0, the task's answer JSON}
local p = ARGV[1]
local rid = ARGV[2]
local given = redis.call('GET', p .. 'answered:' .. ARGV[4])
if given then return {'answered', 0, given} end
if redis.call('EXISTS', p .. 'req:' .. rid) == 1 then return {'dup', 0} end
if not redis.call('ZSCORE', p .. 'waiting', rid) then
  if redis.call('ZCARD', p .. 'waiting') > 0 then redis.call('HINCRBY', p .. 'stats', ARGV[6], 1) end
  redis.call('HINCRBY', p .. 'stats', ARGV[5], 1)
  redis.call('ZADD', p .. 'waiting', redis.call('INCR', p .. 'arrivals'), rid)
  redis.call('HSET', p .. 'waiters', rid, ARGV[3])
else
  -- the same request sent again while it waits: that task gets the same answer
  redis.call('SADD', p .. 'twins:' .. rid, ARGV[4])
end
return {'parked', redis.call('ZRANK', p .. 'waiting', rid) + 1,
        redis.call('HGET', p .. 'waiters', rid)}
