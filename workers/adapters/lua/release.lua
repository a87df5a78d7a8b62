-- Release leases by id and/or all of an owner's. Reason `expired` (the reaper) counts as
-- `reaps`, `namespace-gone` (workers/service/namespaces.py) as `namespace-pruned`, both also go to
-- `reaped`; any other reason counts as `releases`.
-- KEYS: none (derived from the prefix: leases, expiry, owner:<owner>, use:<pool>, nets,
--       gone:<id>, req:<key>, quarantine, pins, blocked, version, seq, stats, reaped, waiting,
--       kick, ready)
-- ARGV: [1] prefix, [2] ids JSON, [3] owner to check ('' none), [4] owner whose leases all
--       go ('' none), [5] reason, [6] now (RFC 3339), [7] keep (s), [8] quiet ('1'),
--       [9] floor, [10] reap cutoff (epoch s; '' none)
-- A lease whose record cannot be decoded is set aside in `quarantine` (its usage stays
-- counted: safe, never over-allocating) instead of failing every release that meets it.
-- A set-aside record named by id, with no owner (nobody can show they hold it), is dropped:
-- what its entry says it holds is given back (ledger/records.py has the entry's layout).
-- Returns (decoded into ledger.scripts.Released):
--         {'ok', old version, [released JSON], [ids released before], seq, waiting, [set aside],
--          [set-aside ids dropped]}
--         | {'notowner', id, holder} | {'missing', id} | {'unready', ''}
local p = ARGV[1]
if unready(p, ARGV[9]) then return {'unready', ''} end
local cutoff = tonumber(ARGV[10])
local ids = cjson.decode(ARGV[2])
local owner = ARGV[3]
local by_owner = ARGV[4]
local reason = ARGV[5]
local now = ARGV[6]
local keep = tonumber(ARGV[7])
-- A network `id` held is given back once no other lease of its install holds it, unless a
-- set-aside record also claims it.
local function give_back(key, id)
  local holders = redis.call('HGET', p .. 'nets', key)
  if not holders then return end
  local left = without(holders, id)
  if left == holders then return end  -- held by others, not by `id`
  if left ~= '' then
    redis.call('HSET', p .. 'nets', key, left)
    return
  end
  local pin = redis.call('HGET', p .. 'pins', key)
  if pin and pin ~= id then
    redis.call('HSET', p .. 'nets', key, pin)
  else
    redis.call('HDEL', p .. 'nets', key)
  end
end
-- Another set-aside record whose holdings include this port group, or nil.
local function claimant(key, except)
  local all = redis.call('HGETALL', p .. 'quarantine')
  for i = 1, #all, 2 do
    if all[i] ~= except then
      local ok, e = pcall(cjson.decode, all[i + 1])
      if ok and type(e) == 'table' and e.counted == 'hold' and type(e.hold) == 'table' then
        for _, k in ipairs(e.hold.nets or {}) do
          if k == key then return all[i] end
        end
      end
    end
  end
  return nil
end
local listed = {}  -- ids taken from the owner's set: one that is not a lease is stale there
if by_owner ~= '' then
  for _, id in ipairs(redis.call('SMEMBERS', p .. 'owner:' .. by_owner)) do
    ids[#ids + 1] = id
    listed[id] = true
  end
end
local seen, found, gone, missing, bad, stale, drop = {}, {}, {}, {}, {}, {}, {}
for _, id in ipairs(ids) do
  if not seen[id] then
    seen[id] = true
    local raw = redis.call('HGET', p .. 'leases', id)
    local ok, l = false, nil
    if raw then ok, l = pcall(cjson.decode, raw) end
    if ok and not readable(l) then ok = false end
    if raw and not ok then
      bad[#bad + 1] = {id, raw}
    elseif raw then
      if owner ~= '' and l.status.owner ~= owner then
        return {'notowner', id, tostring(l.status.owner)}
      end
      local exp = redis.call('ZSCORE', p .. 'expiry', id)
      -- reaping: a lease renewed since the reaper read it stays
      if not cutoff or not exp or tonumber(exp) <= cutoff then found[#found + 1] = {id, l, raw} end
    elseif not listed[id] and redis.call('HEXISTS', p .. 'quarantine', id) == 1 then
      if owner ~= '' then return {'notowner', id, '(set aside: its record cannot be read)'} end
      drop[#drop + 1] = id
    elseif redis.call('EXISTS', p .. 'gone:' .. id) == 1 then
      gone[#gone + 1] = id
    elseif listed[id] then
      stale[#stale + 1] = id
    else
      missing[#missing + 1] = id
    end
  end
end
if #missing > 0 then return {'missing', missing[1]} end
for _, id in ipairs(stale) do  -- no lease any more (set aside earlier): not the owner's
  redis.call('SREM', p .. 'owner:' .. by_owner, id)
end
local set_aside = {}
for _, b in ipairs(bad) do
  redis.call('HSET', p .. 'quarantine', b[1], cjson.encode({record = b[2], counted = 'committed',
    problem = 'set aside by a release or reap: it cannot be read'}))
  redis.call('HDEL', p .. 'leases', b[1])
  redis.call('ZREM', p .. 'expiry', b[1])
  if by_owner ~= '' then redis.call('SREM', p .. 'owner:' .. by_owner, b[1]) end
  set_aside[#set_aside + 1] = b[1]
end
if #bad > 0 then redis.call('HINCRBY', p .. 'stats', 'quarantined', #bad) end
local ver = tonumber(redis.call('GET', p .. 'version') or '-1')
local raws = {}
for _, f in ipairs(found) do
  local id, l, raw = f[1], f[2], f[3]
  local st, sp = l.status, l.spec
  local k = p .. 'use:' .. st.pool
  for _, dim in ipairs({'vcpus', 'memory', 'storage'}) do
    -- string.format, not -x: Lua's -0 is "-0", which HINCRBY refuses, and Redis does not
    -- roll back a script's earlier writes when a later command fails
    if sp[dim] ~= 0 then redis.call('HINCRBY', k, dim, string.format('%d', -sp[dim])) end
  end
  redis.call('HINCRBY', k, 'leases', -1)
  if type(st.networks) == 'table' then
    for _, n in ipairs(st.networks) do give_back(net_key(st.vcenter, n), id) end
  end
  redis.call('HDEL', p .. 'leases', id)
  redis.call('SREM', p .. 'owner:' .. st.owner, id)
  redis.call('ZREM', p .. 'expiry', id)
  redis.call('HSET', p .. 'gone:' .. id, 'lease', raw, 'released-at', now, 'reason', reason)
  redis.call('EXPIRE', p .. 'gone:' .. id, keep)
  local rk = p .. 'req:' .. string.len(st.owner) .. ':' .. st.owner .. ':' .. (st['request-id'] or id)
  local rids = redis.call('GET', rk)
  if rids then
    local live = false
    for _, x in ipairs(cjson.decode(rids)) do
      if redis.call('HEXISTS', p .. 'leases', x) == 1 then live = true end
    end
    if not live then redis.call('EXPIRE', rk, keep) end
  end
  raws[#raws + 1] = raw
end
for _, id in ipairs(drop) do
  local ok, e = pcall(cjson.decode, redis.call('HGET', p .. 'quarantine', id))
  if not ok or type(e) ~= 'table' then e = {} end
  local h = e.hold
  if e.counted == 'hold' and type(h) == 'table' then  -- what the restore counted goes back
    local k = p .. 'use:' .. h.pool
    for _, dim in ipairs({'vcpus', 'memory', 'storage'}) do
      if h[dim] ~= 0 then redis.call('HINCRBY', k, dim, string.format('%d', -h[dim])) end
    end
    redis.call('HINCRBY', k, 'leases', -1)
    for _, key in ipairs(h.nets or {}) do
      if redis.call('HGET', p .. 'pins', key) == id then
        local other = claimant(key, id)
        if other then
          redis.call('HSET', p .. 'pins', key, other)
        else
          redis.call('HDEL', p .. 'pins', key)
        end
      end
      give_back(key, id)
    end
  elseif e.counted == 'none' then  -- nothing was counted: placement may go on once none is left
    redis.call('SREM', p .. 'blocked', id)
  else  -- set aside by a release or reap: its port groups go; what its grant counted on its
    -- pool cannot be told from a record that cannot be read, so that stays counted
    local nets = redis.call('HGETALL', p .. 'nets')
    for i = 1, #nets, 2 do
      if nets[i + 1] == id then give_back(nets[i], id) end
    end
  end
  redis.call('HDEL', p .. 'quarantine', id)
end
if #drop > 0 then redis.call('HINCRBY', p .. 'stats', 'set-aside-dropped', #drop) end
local seq = tonumber(redis.call('GET', p .. 'seq') or '0')
if #found > 0 or #drop > 0 then
  redis.call('SET', p .. 'version', ver + 1)
  seq = redis.call('INCR', p .. 'seq')
  -- releases the service makes on its own (the reaper's, beat's namespace pruning) have
  -- counters of their own and are recorded in `reaped`; a client's release is a `releases`
  local counter = ({expired = 'reaps', ['namespace-gone'] = 'namespace-pruned'})[reason]
  if #found > 0 then redis.call('HINCRBY', p .. 'stats', counter or 'releases', #found) end
  if counter then
    for _, f in ipairs(found) do
      local st = f[2].status
      local labels = type(st.labels) == 'table' and st.labels or {}
      redis.call('LPUSH', p .. 'reaped', cjson.encode({id = f[1], owner = st.owner,
        pool = st.pool, at = now, ['expires-at'] = st['expires-at'], reason = reason,
        namespace = reason == 'namespace-gone'
          and labels['vsphere-capacity-manager.splat-team.io/lease-namespace'] or nil}))
    end
    redis.call('LTRIM', p .. 'reaped', 0, 999)
  end
  if ARGV[8] ~= '1' then
    kick(p, seq)
  end
end
return {'ok', tostring(ver), raws, gone, seq, redis.call('ZCARD', p .. 'waiting'), set_aside,
        drop}
