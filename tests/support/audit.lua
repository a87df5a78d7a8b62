-- Leases, counters, port groups and set-aside records read in one atomic step (tests and
-- checks).
-- KEYS: none (derived from the prefix: leases, pools, use:<pool>, nets, quarantine, pins,
--       blocked)
-- ARGV: [1] prefix
-- Returns (decoded into tests.support.audit.Audit):
--   {[lease id, lease JSON, ...], [pool, {vcpus, memory, storage, leases}, ...],
--    [pg key, lease id, ...], [set-aside id, entry, ...], [pg key, set-aside id, ...],
--    [set-aside id, ...]}
local p = ARGV[1]
local leases = redis.call('HGETALL', p .. 'leases')
local usage = {}
for _, pool in ipairs(redis.call('SMEMBERS', p .. 'pools')) do
  usage[#usage + 1] = pool
  usage[#usage + 1] = redis.call('HMGET', p .. 'use:' .. pool,
    'vcpus', 'memory', 'storage', 'leases')
end
return {leases, usage, redis.call('HGETALL', p .. 'nets'),
        redis.call('HGETALL', p .. 'quarantine'), redis.call('HGETALL', p .. 'pins'),
        redis.call('SMEMBERS', p .. 'blocked')}
