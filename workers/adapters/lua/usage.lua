-- The usage version, per-pool counters, port groups in use and readiness, in one read.
-- KEYS: none (derived from the prefix: version, pools, use:<pool>, nets, ready)
-- ARGV: [1] prefix
-- Returns (decoded into ledger.scripts.UsageRead; not ready raises when the caller needs it):
--   {version, [pool, {vcpus, memory, storage, leases}, ...], [pg key, ...], ready 0/1}
local p = ARGV[1]
local v = redis.call('GET', p .. 'version')
if not v then
  local t = redis.call('TIME')
  v = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('SET', p .. 'version', v)
end
local out = {v}
local pools = redis.call('SMEMBERS', p .. 'pools')
local rows = {}
for _, pool in ipairs(pools) do
  rows[#rows + 1] = pool
  rows[#rows + 1] = redis.call('HMGET', p .. 'use:' .. pool, 'vcpus', 'memory', 'storage', 'leases')
end
out[2] = rows
out[3] = redis.call('HKEYS', p .. 'nets')
out[4] = redis.call('EXISTS', p .. 'ready')
return out
