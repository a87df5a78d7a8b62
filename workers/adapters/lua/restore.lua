-- Rebuild the ledger from a mirror snapshot: into an empty Redis, or (replace) over one
-- that went back below the snapshot's seq. Every record is decoded before the first write.
-- Records that cannot be restored are kept set aside, holding what can be read of them: their
-- usage counted on their pool, their port groups taken (and pinned: a lease released later
-- that shares one does not free it); one whose holdings cannot be read stops all placement
-- (`blocked`) until it is dropped. See ledger/records.py.
-- KEYS: none (derived from the prefix: leases, owner:<owner>, pools, use:<pool>, nets,
--       expiry, version, req:<key>, quarantine, pins, blocked, stats, seq, ready)
-- ARGV: [1] prefix, [2] snapshot seq,
--       [3] {leases: [raw JSON], expiry: [epoch s], rids: {key: ids JSON},
--            aside: [{id, entry: quarantine entry JSON, hold?: {pool, vcenter, vcpus, memory,
--                     storage, nets: [pg key]}}], fresh: how many were set aside just now},
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
    if ok and type(l) == 'table' and type(l.status) == 'table'
       and type(l.status.owner) == 'string' then
      redis.call('DEL', p .. 'owner:' .. l.status.owner)
    end
  end
  for _, pool in ipairs(redis.call('SMEMBERS', p .. 'pools')) do
    redis.call('DEL', p .. 'use:' .. pool)
  end
  redis.call('DEL', p .. 'pools', p .. 'nets', p .. 'leases', p .. 'expiry', p .. 'version',
             p .. 'quarantine', p .. 'pins', p .. 'blocked')
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
for _, a in ipairs(d.aside or {}) do
  redis.call('HSET', p .. 'quarantine', a.id, a.entry)
  local h = a.hold
  if type(h) == 'table' then
    local k = p .. 'use:' .. h.pool
    for _, dim in ipairs({'vcpus', 'memory', 'storage'}) do
      redis.call('HINCRBY', k, dim, string.format('%d', h[dim]))
    end
    redis.call('HINCRBY', k, 'leases', 1)
    redis.call('HSETNX', k, 'vcenter', h.vcenter)
    redis.call('SADD', p .. 'pools', h.pool)
    for _, key in ipairs(h.nets) do
      redis.call('HSETNX', p .. 'nets', key, a.id)  -- a lease holding it too keeps its name
      redis.call('HSETNX', p .. 'pins', key, a.id)
    end
  else
    redis.call('SADD', p .. 'blocked', a.id)
  end
end
if (d.fresh or 0) > 0 then redis.call('HINCRBY', p .. 'stats', 'quarantined', d.fresh) end
for rid, ids in pairs(d.rids) do redis.call('SET', p .. 'req:' .. rid, ids) end
redis.call('SET', p .. 'seq', ARGV[2])
redis.call('SET', p .. 'ready', ARGV[2])
return 1
