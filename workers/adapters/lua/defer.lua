-- Hold an answer until the mirror covers the current seq.
-- KEYS: none (derived from the prefix: seq, outbox, kick)
-- ARGV: [1] prefix, [2] task id, [3] the answer JSON
-- Returns (decoded into ledger.scripts.Deferred): the seq the answer waits for
local p = ARGV[1]
local seq = redis.call('GET', p .. 'seq') or '0'
redis.call('HSET', p .. 'outbox', ARGV[2], seq .. '|' .. ARGV[3])
kick(p, seq)
return seq
