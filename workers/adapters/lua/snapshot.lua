-- The active leases at one seq, for the mirror.
-- KEYS: none (derived from the prefix: seq, leases)
-- ARGV: [1] prefix
-- Returns (decoded into ledger.scripts.SnapshotRead): {seq, [lease JSON, ...]}
local p = ARGV[1]
return {redis.call('GET', p .. 'seq') or '0', redis.call('HVALS', p .. 'leases')}
