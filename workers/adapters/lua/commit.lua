-- Record the leases of one decision, if it still holds: the task was never answered, the
-- (owner, request-id)s are new, none waits in line (unless being served), the ledger is at
-- the version the decision read, and capacity and port groups still fit (a port group shared
-- only within one install, never by a network-only lease beyond its request). All or nothing.
-- The answer is recorded for the task (answer.tasks) and, when serving waiters, for each
-- task waiting for them (the first and its twins): a copy of any of them is answered so. A
-- waiter whose every task was answered otherwise (a copy of the task that asked for another
-- request was granted or refused) is never granted: `settled`, and the caller takes it out of
-- the line.
-- Nothing is placed while a set-aside record whose holdings cannot be read is left (it could
-- hold any pool's capacity or port group): `blocked` (restore.lua).
-- KEYS: none (derived from the prefix: version, seq, ready, use:<pool>, pools, nets, leases,
--       owner:<owner>, expiry, req:<key>, waiting, waiters, twins:<key>, answered:<task>,
--       blocked, stats, latency, kick)
-- ARGV: [1] prefix, [2] the usage version the decision read,
--       [3] {rids: {key: ids JSON}, pools: {pool: usage + cap}, nets: {pg key: lease ids,
--            space-separated}, held?: {pg key: true, for those the install holds already:
--            a lease of the new holders' install must hold each, checked in the records},
--            leases: [{id, owner, exp}], granted?: [waiter keys], lone?, quiet?, floor?,
--            latency?: {seconds, bucket?}, answer?: {tasks: [task id], json, ttl},
--            counts: {stats field: n, the requests granted per network type}},
--       [4..] each new lease's JSON, in the order of `leases`
-- Returns (decoded into ledger.scripts.Commit):
--         {'ok', version, seq} | {'answered', task, its answer JSON} | {'settled', key} |
--         {'dup', [key, ids JSON, ...]} | {'conflict', key} |
--         {'queued', key} | {'stale', version} | {'waiters', ''} | {'gone', key} |
--         {'over', pool or port group} | {'unready', '0'} |
--         {'blocked', JSON {ids: up to 5 set-aside ids, count}}
local p = ARGV[1]
local d = cjson.decode(ARGV[3])
if unready(p, d.floor or 0) then return {'unready', '0'} end
local answer = d.answer
for _, task in ipairs(answer and answer.tasks or {}) do
  -- a copy of a task answered before (granted or refused): never placed again
  local given = redis.call('GET', p .. 'answered:' .. task)
  if given then return {'answered', task, given} end
end
local expected = tonumber(ARGV[2])
local have, missing, first = 0, 0, nil
for rid, _ in pairs(d.rids) do
  if redis.call('EXISTS', p .. 'req:' .. rid) == 1 then
    have = have + 1
    first = first or rid
  else
    missing = missing + 1
  end
end
if have > 0 then
  if missing > 0 then return {'conflict', first} end
  local out = {}
  for rid, _ in pairs(d.rids) do
    out[#out + 1] = rid
    out[#out + 1] = redis.call('GET', p .. 'req:' .. rid)
  end
  return {'dup', out}
end
local serving = {}
for _, rid in ipairs(d.granted or {}) do serving[rid] = true end
for rid, _ in pairs(d.rids) do
  -- the same request is waiting in line: it is answered from there, never twice
  if not serving[rid] and redis.call('ZSCORE', p .. 'waiting', rid) then return {'queued', rid} end
end
local blocked = redis.call('SCARD', p .. 'blocked')
if blocked > 0 then
  return {'blocked', cjson.encode({ids = redis.call('SRANDMEMBER', p .. 'blocked', 5),
                                   count = blocked})}
end
local ver = tonumber(redis.call('GET', p .. 'version') or '-1')
if ver ~= expected then return {'stale', tostring(ver)} end
if d.lone and redis.call('EXISTS', p .. 'waiting') == 1 then return {'waiters', ''} end
local waiting = {}  -- the tasks waiting for the requests served
for _, rid in ipairs(d.granted or {}) do
  if not redis.call('ZSCORE', p .. 'waiting', rid) then return {'gone', rid} end
  local tasks = waiting_tasks(p, rid)
  local open = #tasks == 0
  for _, task in ipairs(tasks) do
    if redis.call('EXISTS', p .. 'answered:' .. task) == 0 then open = true end
    waiting[#waiting + 1] = task
  end
  if not open then return {'settled', rid} end
end
for pool, u in pairs(d.pools) do
  local cur = redis.call('HMGET', p .. 'use:' .. pool, 'vcpus', 'memory', 'storage')
  if (tonumber(cur[1]) or 0) + u.vcpus > u.cap[1]
     or (tonumber(cur[2]) or 0) + u.memory > u.cap[2]
     or (tonumber(cur[3]) or 0) + u.storage > u.cap[3] then
    return {'over', pool}
  end
end
-- Each network is free, or (`held`) held by a lease of the new holders' install; its new
-- holders are all of one install. Checked against the records whatever `held` says: only the
-- compute leases of one owner's boskos-lease-id share with later requests, and a network-only
-- lease shares with the leases of its own request alone (prelude's `sharer`).
local held = d.held or {}
local new_at = {}  -- new lease id -> its place in `leases` (its JSON is ARGV[3 + place])
for i, l in ipairs(d.leases) do new_at[l.id] = i end
local rid_of  -- new lease id -> its request key, read from `rids` on first use
local function new_sharer(id)
  local i = new_at[id]
  if not i then return nil end
  local ok, l = pcall(cjson.decode, ARGV[3 + i] or '')
  if not (ok and readable(l)) then return nil end
  if not rid_of then
    rid_of = {}
    for rid, ids in pairs(d.rids) do
      for _, x in ipairs(cjson.decode(ids)) do rid_of[x] = rid end
    end
  end
  return sharer(l, rid_of[id])
end
for key, ids in pairs(d.nets) do
  local holders = redis.call('HGET', p .. 'nets', key)
  if (holders ~= false) ~= (held[key] == true) then return {'over', key} end
  if holders or string.find(ids, ' ', 1, true) then  -- shared: only within one install
    local who
    for id in string.gmatch(ids, '%S+') do
      local theirs = new_sharer(id)
      if theirs == nil or (who ~= nil and theirs ~= who) then return {'over', key} end
      who = theirs
    end
    if holders then
      local joined = false
      for id in string.gmatch(holders, '%S+') do
        local raw = redis.call('HGET', p .. 'leases', id)
        local ok, l = pcall(cjson.decode, raw or '')
        if raw and ok and readable(l) and sharer(l, nil) == who then
          joined = true
          break
        end
      end
      if not joined then return {'over', key} end
    end
  end
end
for pool, u in pairs(d.pools) do
  local k = p .. 'use:' .. pool
  for _, dim in ipairs({'vcpus', 'memory', 'storage', 'leases'}) do
    redis.call('HINCRBY', k, dim, string.format('%d', u[dim]))
  end
  redis.call('HSET', k, 'vcenter', u.vcenter)
  redis.call('SADD', p .. 'pools', pool)
end
for key, ids in pairs(d.nets) do
  local cur = held[key] and redis.call('HGET', p .. 'nets', key)
  redis.call('HSET', p .. 'nets', key, cur and (cur .. ' ' .. ids) or ids)
end
for i, l in ipairs(d.leases) do
  redis.call('HSET', p .. 'leases', l.id, ARGV[3 + i])  -- the lease JSON, as sent
  redis.call('SADD', p .. 'owner:' .. l.owner, l.id)
  redis.call('ZADD', p .. 'expiry', l.exp, l.id)
end
for rid, ids in pairs(d.rids) do redis.call('SET', p .. 'req:' .. rid, ids) end
if answer then
  local tasks = {}
  for _, task in ipairs(answer.tasks or {}) do tasks[#tasks + 1] = task end
  for _, task in ipairs(waiting) do tasks[#tasks + 1] = task end
  for _, task in ipairs(tasks) do
    redis.call('SET', p .. 'answered:' .. task, answer.json, 'EX',
               string.format('%d', answer.ttl), 'NX')
  end
end
for _, rid in ipairs(d.granted or {}) do
  redis.call('ZREM', p .. 'waiting', rid)
  redis.call('HDEL', p .. 'waiters', rid)
end
redis.call('HINCRBY', p .. 'stats', 'placements', #d.leases)
for field, n in pairs(d.counts or {}) do redis.call('HINCRBY', p .. 'stats', field, n) end
if d.latency then
  if d.latency.bucket then redis.call('HINCRBY', p .. 'latency', d.latency.bucket, 1) end
  redis.call('HINCRBY', p .. 'latency', 'count', 1)
  redis.call('HINCRBYFLOAT', p .. 'latency', 'sum', d.latency.seconds)
end
redis.call('SET', p .. 'version', ver + 1)
local seq = redis.call('INCR', p .. 'seq')
if not d.quiet then
  kick(p, seq)
end
return {'ok', tostring(ver + 1), seq}
