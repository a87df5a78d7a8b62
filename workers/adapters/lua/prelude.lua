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
