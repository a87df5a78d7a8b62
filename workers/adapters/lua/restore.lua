-- Rebuild the ledger from a mirror snapshot: into an empty Redis, or (replace) over one
-- that went back below the snapshot's seq. Every record is decoded before the first write.
-- KEYS: none (derived from the prefix: leases, owner:<owner>, pools, use:<pool>, nets,
--       expiry, version, req:<key>, seq, ready)
-- ARGV: [1] prefix, [2] snapshot seq,
--       [3] {leases: [raw JSON], expiry: [epoch s], rids: {key: ids JSON}},
--       [4] replace ('1': Redis went back below the snapshot)
-- Returns (decoded into ledger.scripts.Restored): 1 rebuilt | 0 not (Redis was ready, or
--         not behind the snapshot; or it held leases of its own: marked ready, Redis wins)
local p = ARGV[1]
local d = cjson.decode(ARGV[3])
local parsed = {}  -- every record decoded before the first write (the caller checked them)
for i, raw in ipairs(d.leases) do parsed[i] = cjson.decode(raw) end
if ARGV[4] == '1' then  -- replace: Redis went back to an older state than the snapshot's
  -- a live ledger is never behind a mirror of itself: refuse unless it still is
  if tonumber(redis.call('GET', p .. 'seq') or '0') >= tonumber(ARGV[2]) then return 0 end
  for _, raw in ipairs(redis.call('HVALS', p .. 'leases')) do
    local ok, l = pcall(cjson.decode, raw)
    if ok then redis.call('DEL', p .. 'owner:' .. l.status.owner) end
  end
  for _, pool in ipairs(redis.call('SMEMBERS', p .. 'pools')) do
    redis.call('DEL', p .. 'use:' .. pool)
  end
  redis.call('DEL', p .. 'pools', p .. 'nets', p .. 'leases', p .. 'expiry', p .. 'version')
else
  if redis.call('EXISTS', p .. 'ready') == 1 then return 0 end
  if redis.call('HLEN', p .. 'leases') > 0 then
    redis.call('SET', p .. 'ready', 'kept')  -- Redis has data of its own: Redis wins
    return 0
  end
end
for i, raw in ipairs(d.leases) do
  local l = parsed[i]
  local st, sp, id = l.status, l.spec, l.metadata.name
  local k = p .. 'use:' .. st.pool
  for _, dim in ipairs({'vcpus', 'memory', 'storage'}) do
    redis.call('HINCRBY', k, dim, string.format('%d', sp[dim]))
  end
  redis.call('HINCRBY', k, 'leases', 1)
  redis.call('HSET', k, 'vcenter', st.vcenter)
  redis.call('SADD', p .. 'pools', st.pool)
  if type(st.networks) == 'table' then
    for _, n in ipairs(st.networks) do
      local key = net_key(st.vcenter, n)
      local cur = redis.call('HGET', p .. 'nets', key)
      redis.call('HSET', p .. 'nets', key, cur and (cur .. ' ' .. id) or id)
    end
  end
  redis.call('HSET', p .. 'leases', id, raw)
  redis.call('SADD', p .. 'owner:' .. st.owner, id)
  redis.call('ZADD', p .. 'expiry', d.expiry[i], id)
end
for rid, ids in pairs(d.rids) do redis.call('SET', p .. 'req:' .. rid, ids) end
redis.call('SET', p .. 'seq', ARGV[2])
redis.call('SET', p .. 'ready', ARGV[2])
return 1
