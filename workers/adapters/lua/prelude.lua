-- Prepended to every script. `p` is the key prefix every script gets as ARGV[1].

-- Writes refuse while the ledger is not ready (Redis lost it) or is below `floor` (Redis went
-- back to an older state than changes the writer already made): the worker rebuilds it first.
local function unready(p, floor)
  return redis.call('EXISTS', p .. 'ready') == 0
         or tonumber(redis.call('GET', p .. 'seq') or '0') < tonumber(floor)
end

-- Wake the mirror publisher (a change to mirror, an answer to release): one pending kick.
local function kick(p, seq)
  redis.call('LPUSH', p .. 'kick', seq)
  redis.call('LTRIM', p .. 'kick', 0, 0)
end

-- Whether a decoded lease record has everything the scripts read, of the right types: a
-- record that decodes but lacks them (old, hand-written) is set aside like one that does not
-- decode, before any write (a script that fails half-way is not rolled back).
local function readable(l)
  if type(l) ~= 'table' or type(l.status) ~= 'table' or type(l.spec) ~= 'table' then
    return false
  end
  local st, sp = l.status, l.spec
  if type(st.pool) ~= 'string' or type(st.owner) ~= 'string' or type(st.vcenter) ~= 'string'
     or (st['request-id'] ~= nil and type(st['request-id']) ~= 'string') then
    return false
  end
  for _, dim in ipairs({'vcpus', 'memory', 'storage'}) do
    if type(sp[dim]) ~= 'number' then return false end
  end
  if st.networks ~= nil and type(st.networks) ~= 'table' then return false end
  for _, n in ipairs(st.networks or {}) do
    if type(n) ~= 'table' or type(n['port-group']) ~= 'string' then return false end
  end
  return true
end

-- Who may share a (readable) lease's networks, as core/lease.py's sharing_install: the
-- leases of its owner's install, its boskos-lease-id (the label, else the field), when it has
-- one and vCPUs or memory; otherwise only the leases of its own request `rid` (nil when that
-- is unknown: nobody). A network-only lease (vcpus 0, memory 0) never shares with its
-- install. Returned as text, equal for the leases that may share.
local function sharer(l, rid)
  local st, sp = l.status, l.spec
  local group = type(st.labels) == 'table' and st.labels['boskos-lease-id'] or nil
  if type(group) ~= 'string' or group == '' then group = st['boskos-lease-id'] end
  if type(group) == 'string' and group ~= '' and not (sp.vcpus == 0 and sp.memory == 0) then
    return cjson.encode({'install', st.owner, group})
  end
  if rid == nil then return nil end
  return cjson.encode({'request', rid})
end

-- The ledger key of one of a lease's networks, as core/lease.py's port_group_key builds it:
-- "<vcenter>|<port group>[|<pod>[|<slice>]]", trailing empty parts left out; a pod or slice
-- that is not a string reads as unset.
local function net_key(vcenter, n)
  local key = vcenter .. '|' .. n['port-group']
  local pod = type(n.pod) == 'string' and n.pod or ''
  local slice = type(n.slice) == 'string' and n.slice or ''
  if slice ~= '' then return key .. '|' .. pod .. '|' .. slice end
  if pod ~= '' then return key .. '|' .. pod end
  return key
end

-- A network's holders without `id`: the `nets` hash holds "<lease id> <lease id> ..." (the
-- leases of one install may share a network; one holder is the usual case).
local function without(holders, id)
  local out = {}
  for x in string.gmatch(holders or '', '%S+') do
    if x ~= id then out[#out + 1] = x end
  end
  return table.concat(out, ' ')
end

-- The tasks waiting for a request in the waiting line: its first task and its twins.
local function waiting_tasks(p, rid)
  local tasks = {}
  local ok, waiter = pcall(cjson.decode, redis.call('HGET', p .. 'waiters', rid) or '')
  if ok and type(waiter) == 'table' and type(waiter.task) == 'string' and waiter.task ~= '' then
    tasks[#tasks + 1] = waiter.task
  end
  for _, twin in ipairs(redis.call('SMEMBERS', p .. 'twins:' .. rid)) do
    tasks[#tasks + 1] = twin
  end
  return tasks
end
