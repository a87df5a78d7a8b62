-- Replace a lease's JSON and expiry (renew), if it is unchanged since it was read.
-- KEYS: none (derived from the prefix: leases, expiry, seq, kick, ready)
-- ARGV: [1] prefix, [2] lease id, [3] its JSON as read, [4] the new JSON, [5] new expiry
--       (epoch s), [6] quiet ('1': do not wake the publisher), [7] floor
-- Returns (decoded into ledger.scripts.Swapped):
--   {'ok', seq} | {'missing', 0} | {'changed', 0} | {'unready', 0}
local p = ARGV[1]
if unready(p, ARGV[7]) then return {'unready', 0} end
local cur = redis.call('HGET', p .. 'leases', ARGV[2])
if not cur then return {'missing', 0} end
if cur ~= ARGV[3] then return {'changed', 0} end
redis.call('HSET', p .. 'leases', ARGV[2], ARGV[4])
redis.call('ZADD', p .. 'expiry', ARGV[5], ARGV[2])
local seq = redis.call('INCR', p .. 'seq')
if ARGV[6] ~= '1' then
  kick(p, seq)
end
return {'ok', seq}
