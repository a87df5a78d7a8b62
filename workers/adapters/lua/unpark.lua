-- Leave the waiting line. With a refusal, it is recorded as the answer of every task that
-- waited for the request (the first and its twins), in the same step: a copy of any of them
-- gets it, and the request is never placed for them again.
-- KEYS: none (derived from the prefix: waiting, waiters, twins:<key>, answered:<task>)
-- ARGV: [1] prefix, [2] request key, [3] the refusal JSON ('' none), [4] its lifetime (s)
-- Returns (decoded into ledger.scripts.Unparked): {left 0/1, [twin task ids]}
local p = ARGV[1]
local twins = redis.call('SMEMBERS', p .. 'twins:' .. ARGV[2])
local tasks = waiting_tasks(p, ARGV[2])
redis.call('DEL', p .. 'twins:' .. ARGV[2])
if redis.call('ZREM', p .. 'waiting', ARGV[2]) == 1 then
  redis.call('HDEL', p .. 'waiters', ARGV[2])
  if ARGV[3] ~= '' then
    for _, task in ipairs(tasks) do
      redis.call('SET', p .. 'answered:' .. task, ARGV[3], 'EX', ARGV[4], 'NX')
    end
  end
  return {1, twins}
end
return {0, twins}
