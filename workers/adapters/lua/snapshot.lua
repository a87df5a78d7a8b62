-- The active leases at one seq, and the records set aside, for the mirror.
-- KEYS: none (derived from the prefix: seq, leases, quarantine)
-- ARGV: [1] prefix
-- Returns (decoded into ledger.scripts.SnapshotRead):
--   {seq, [lease JSON, ...], [set-aside id, its quarantine entry, ...]}
local p = ARGV[1]
return {redis.call('GET', p .. 'seq') or '0', redis.call('HVALS', p .. 'leases'),
        redis.call('HGETALL', p .. 'quarantine')}
