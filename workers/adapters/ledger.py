"""The lease ledger in Redis. Every change is one Lua script, so it is atomic.

Keys (prefix `vcm:`):
  version          bumped by every change to usage (placement decisions check it)
  seq              bumped by every change at all (the mirror follows it)
  use:<pool>       hash vcpus, memory, storage, leases, vcenter: per-pool aggregates
  pools            set of pool names that have ever had usage
  nets             hash "<vcenter>|<port-group>" -> lease id: port groups in use
  leases           hash lease id -> lease JSON (active leases)
  owner:<owner>    set of active lease ids
  expiry           zset lease id -> expires-at (epoch seconds)
  req:<n>:<owner>:<request-id>  JSON list of lease ids: the idempotency record, per owner
                   (n: the owner's length in bytes)
  gone:<lease id>  hash lease, released-at, reason: released leases, kept `keep` seconds
  quarantine       hash lease id -> a stored record that could not be decoded, set aside
  twins:<key>      set of task ids sent again for a request waiting in line
  latency          hash acquire latency: count per bucket (smallest bound that holds it), count, sum
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from ..core.models import lease_port_groups, parse_rfc3339, request_key
from ..core.placement import Usage

log = logging.getLogger(__name__)

# Writes refuse while the ledger is not ready (Redis lost it) or is below `floor` (Redis went
# back to an older state than changes the writer already made): the worker rebuilds it first.
_UNREADY = r"""
local function unready(p, floor)
  return redis.call('EXISTS', p .. 'ready') == 0
         or tonumber(redis.call('GET', p .. 'seq') or '0') < tonumber(floor)
end
"""

_ACQUIRE = _UNREADY + r"""
local p = ARGV[1]
local d = cjson.decode(ARGV[3])
if unready(p, d.floor or 0) then return {'unready', '0'} end
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
local ver = tonumber(redis.call('GET', p .. 'version') or '-1')
if ver ~= expected then return {'stale', tostring(ver)} end
if d.lone and redis.call('EXISTS', p .. 'waiting') == 1 then return {'waiters', ''} end
for _, rid in ipairs(d.granted or {}) do
  if not redis.call('ZSCORE', p .. 'waiting', rid) then return {'gone', rid} end
end
for pool, u in pairs(d.pools) do
  local cur = redis.call('HMGET', p .. 'use:' .. pool, 'vcpus', 'memory', 'storage')
  if (tonumber(cur[1]) or 0) + u.vcpus > u.cap[1]
     or (tonumber(cur[2]) or 0) + u.memory > u.cap[2]
     or (tonumber(cur[3]) or 0) + u.storage > u.cap[3] then
    return {'over', pool}
  end
end
for key, _ in pairs(d.nets) do
  if redis.call('HEXISTS', p .. 'nets', key) == 1 then return {'over', key} end
end
for pool, u in pairs(d.pools) do
  local k = p .. 'use:' .. pool
  for _, dim in ipairs({'vcpus', 'memory', 'storage', 'leases'}) do
    redis.call('HINCRBY', k, dim, string.format('%d', u[dim]))
  end
  redis.call('HSET', k, 'vcenter', u.vcenter)
  redis.call('SADD', p .. 'pools', pool)
end
for key, id in pairs(d.nets) do redis.call('HSET', p .. 'nets', key, id) end
for i, l in ipairs(d.leases) do
  redis.call('HSET', p .. 'leases', l.id, ARGV[3 + i])  -- the lease JSON, as sent
  redis.call('SADD', p .. 'owner:' .. l.owner, l.id)
  redis.call('ZADD', p .. 'expiry', l.exp, l.id)
end
for rid, ids in pairs(d.rids) do redis.call('SET', p .. 'req:' .. rid, ids) end
for _, rid in ipairs(d.granted or {}) do
  redis.call('ZREM', p .. 'waiting', rid)
  redis.call('HDEL', p .. 'waiters', rid)
end
redis.call('HINCRBY', p .. 'stats', 'placements', #d.leases)
if d.latency then
  if d.latency.bucket then redis.call('HINCRBY', p .. 'latency', d.latency.bucket, 1) end
  redis.call('HINCRBY', p .. 'latency', 'count', 1)
  redis.call('HINCRBYFLOAT', p .. 'latency', 'sum', d.latency.seconds)
end
redis.call('SET', p .. 'version', ver + 1)
local seq = redis.call('INCR', p .. 'seq')
if not d.quiet then
  redis.call('LPUSH', p .. 'kick', seq)
  redis.call('LTRIM', p .. 'kick', 0, 0)
end
return {'ok', tostring(ver + 1), seq}
"""

_RELEASE = _UNREADY + r"""
-- ARGV: prefix, ids JSON, owner to check ('' none), owner whose leases all go ('' none),
--       reason, now (RFC 3339), keep (s), quiet ('1'), floor, reap cutoff (epoch s; '' none)
-- A lease whose record cannot be decoded is set aside in `quarantine` (its usage stays
-- counted: safe, never over-allocating) instead of failing every release that meets it.
local p = ARGV[1]
if unready(p, ARGV[9]) then return {'unready', ''} end
local cutoff = tonumber(ARGV[10])
local ids = cjson.decode(ARGV[2])
local owner = ARGV[3]
local by_owner = ARGV[4]
local reason = ARGV[5]
local now = ARGV[6]
local keep = tonumber(ARGV[7])
if by_owner ~= '' then
  for _, id in ipairs(redis.call('SMEMBERS', p .. 'owner:' .. by_owner)) do ids[#ids + 1] = id end
end
local seen, found, gone, missing, bad = {}, {}, {}, {}, {}
for _, id in ipairs(ids) do
  if not seen[id] then
    seen[id] = true
    local raw = redis.call('HGET', p .. 'leases', id)
    local ok, l = false, nil
    if raw then ok, l = pcall(cjson.decode, raw) end
    if raw and not ok then
      bad[#bad + 1] = {id, raw}
    elseif raw then
      if owner ~= '' and l.status.owner ~= owner then
        return {'notowner', id, tostring(l.status.owner)}
      end
      local exp = redis.call('ZSCORE', p .. 'expiry', id)
      -- reaping: a lease renewed since the reaper read it stays
      if not cutoff or not exp or tonumber(exp) <= cutoff then found[#found + 1] = {id, l, raw} end
    elseif redis.call('EXISTS', p .. 'gone:' .. id) == 1 then
      gone[#gone + 1] = id
    else
      missing[#missing + 1] = id
    end
  end
end
if #missing > 0 then return {'missing', missing[1]} end
local set_aside = {}
for _, b in ipairs(bad) do
  redis.call('HSET', p .. 'quarantine', b[1], b[2])
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
    for _, n in ipairs(st.networks) do
      redis.call('HDEL', p .. 'nets', st.vcenter .. '|' .. n['port-group'])
    end
  end
  redis.call('HDEL', p .. 'leases', id)
  redis.call('SREM', p .. 'owner:' .. st.owner, id)
  redis.call('ZREM', p .. 'expiry', id)
  redis.call('HSET', p .. 'gone:' .. id, 'lease', raw, 'released-at', now, 'reason', reason)
  redis.call('EXPIRE', p .. 'gone:' .. id, keep)
  local rk = p .. 'req:' .. string.len(st.owner) .. ':' .. st.owner .. ':' .. st['request-id']
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
local seq = tonumber(redis.call('GET', p .. 'seq') or '0')
if #found > 0 then
  redis.call('SET', p .. 'version', ver + 1)
  seq = redis.call('INCR', p .. 'seq')
  redis.call('HINCRBY', p .. 'stats', reason == 'expired' and 'reaps' or 'releases', #found)
  if reason == 'expired' then
    for _, f in ipairs(found) do
      redis.call('LPUSH', p .. 'reaped', cjson.encode({id = f[1], owner = f[2].status.owner,
        pool = f[2].status.pool, at = now, ['expires-at'] = f[2].status['expires-at']}))
    end
    redis.call('LTRIM', p .. 'reaped', 0, 999)
  end
  if ARGV[8] ~= '1' then
    redis.call('LPUSH', p .. 'kick', seq)
    redis.call('LTRIM', p .. 'kick', 0, 0)
  end
end
return {'ok', tostring(ver), raws, gone, seq, redis.call('ZCARD', p .. 'waiting'), set_aside}
"""

_SWAP = _UNREADY + r"""
local p = ARGV[1]
if unready(p, ARGV[7]) then return {'unready', 0} end
local cur = redis.call('HGET', p .. 'leases', ARGV[2])
if not cur then return {'missing', 0} end
if cur ~= ARGV[3] then return {'changed', 0} end
redis.call('HSET', p .. 'leases', ARGV[2], ARGV[4])
redis.call('ZADD', p .. 'expiry', ARGV[5], ARGV[2])
local seq = redis.call('INCR', p .. 'seq')
if ARGV[6] ~= '1' then
  redis.call('LPUSH', p .. 'kick', seq)
  redis.call('LTRIM', p .. 'kick', 0, 0)
end
return {'ok', seq}
"""

_USAGE = r"""
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
"""

_AUDIT = r"""
local p = ARGV[1]
local leases = redis.call('HGETALL', p .. 'leases')
local usage = {}
for _, pool in ipairs(redis.call('SMEMBERS', p .. 'pools')) do
  usage[#usage + 1] = pool
  usage[#usage + 1] = redis.call('HMGET', p .. 'use:' .. pool,
    'vcpus', 'memory', 'storage', 'leases')
end
return {leases, usage, redis.call('HGETALL', p .. 'nets')}
"""


_PARK = r"""
-- ARGV: prefix, request key, waiter record JSON, task id
local p = ARGV[1]
local rid = ARGV[2]
if redis.call('EXISTS', p .. 'req:' .. rid) == 1 then return {'dup', 0} end
if not redis.call('ZSCORE', p .. 'waiting', rid) then
  redis.call('ZADD', p .. 'waiting', redis.call('INCR', p .. 'arrivals'), rid)
  redis.call('HSET', p .. 'waiters', rid, ARGV[3])
else
  -- the same request sent again while it waits: that task gets the same answer
  redis.call('SADD', p .. 'twins:' .. rid, ARGV[4])
end
return {'parked', redis.call('ZRANK', p .. 'waiting', rid) + 1,
        redis.call('HGET', p .. 'waiters', rid)}
"""

_UNPARK = r"""
-- ARGV: prefix, request key. Returns {left (0/1), the twin task ids}
local p = ARGV[1]
local twins = redis.call('SMEMBERS', p .. 'twins:' .. ARGV[2])
redis.call('DEL', p .. 'twins:' .. ARGV[2])
if redis.call('ZREM', p .. 'waiting', ARGV[2]) == 1 then
  redis.call('HDEL', p .. 'waiters', ARGV[2])
  return {1, twins}
end
return {0, twins}
"""

_DEFER = r"""
local p = ARGV[1]
local seq = redis.call('GET', p .. 'seq') or '0'
redis.call('HSET', p .. 'outbox', ARGV[2], seq .. '|' .. ARGV[3])
redis.call('LPUSH', p .. 'kick', seq)
redis.call('LTRIM', p .. 'kick', 0, 0)
return seq
"""

_SNAPSHOT = r"""
local p = ARGV[1]
return {redis.call('GET', p .. 'seq') or '0', redis.call('HVALS', p .. 'leases')}
"""

_RESTORE = r"""
-- ARGV: prefix, snapshot seq, {leases: [raw JSON], expiry: [epoch s], rids: {key: ids JSON}},
--       replace ('1': Redis went back below the snapshot)
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
      redis.call('HSET', p .. 'nets', st.vcenter .. '|' .. n['port-group'], id)
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
"""


# acquire latency histogram (seconds, including time spent waiting in line)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 900, 3600,
                   14400, 86400)


@dataclass
class Commit:
    status: str  # ok | dup | stale | over | conflict | gone | unready | waiters | queued
    version: int = 0
    seq: int = 0
    existing: dict[str, list[str]] = field(default_factory=dict)
    detail: str = ""
    raws: list[str] = field(default_factory=list)  # the new leases' JSON, when ok


@dataclass
class Released:
    old_version: int
    leases: list[dict[str, Any]]  # leases released by this call
    already: list[str]  # ids released earlier
    seq: int = 0
    waiting: int = 0  # requests in the waiting line after the release
    set_aside: list[str] = field(default_factory=list)  # undecodable records quarantined


class LedgerUnready(Exception):
    """Redis lost the ledger (or never had one): restore from the mirror before writing."""


class LedgerConflict(Exception):
    """A Lua check refused the change (missing lease, not the owner)."""

    def __init__(self, kind: str, lease_id: str, holder: str = "") -> None:
        super().__init__(kind, lease_id, holder)
        self.kind, self.lease_id, self.holder = kind, lease_id, holder


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Ledger:
    def __init__(self, client: redis.Redis, prefix: str = "vcm:", keep: int = 7 * 86400) -> None:
        self.r = client
        self.p = prefix
        self.keep = keep
        self.quiet = False  # True: changes do not kick the publisher (the caller journals them)
        self.floor = 0  # writes refuse below this seq (see _UNREADY, Capacity.ensure_ready)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._swap = client.register_script(_SWAP)
        self._usage = client.register_script(_USAGE)
        self._audit = client.register_script(_AUDIT)
        self._park = client.register_script(_PARK)
        self._unpark = client.register_script(_UNPARK)
        self._defer = client.register_script(_DEFER)
        self._snapshot = client.register_script(_SNAPSHOT)
        self._restore = client.register_script(_RESTORE)

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> Ledger:
        return cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5), **kw)

    # reads -----------------------------------------------------------------------------
    def usage(self, require_ready: bool = True) -> tuple[int, dict[str, Usage], set[str]]:
        """Version, per-pool usage and used port groups, read atomically. O(pools + networks)."""
        version, rows, nets, ready = self._usage(args=[self.p])
        if not ready and require_ready:
            raise LedgerUnready()
        usage = {}
        for i in range(0, len(rows), 2):
            v, m, s, n = (int(x or 0) for x in rows[i + 1])
            usage[_text(rows[i])] = Usage(v, m, s, n)
        return int(version), usage, {_text(n) for n in nets}

    def seq(self) -> int:
        return int(self.r.get(self.p + "seq") or 0)

    def get(self, lease_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.p + "leases", lease_id)
        return json.loads(raw) if raw else None

    def get_many(self, ids: list[str]) -> list[dict[str, Any]]:
        """Active or released leases by id, in order (released ones from their gone record)."""
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.p + "leases", ids)
        for i in ids:
            pipe.hgetall(self.p + "gone:" + i)
        active, *gone = pipe.execute()
        out = []
        for lease_id, raw, g in zip(ids, active, gone, strict=True):
            if raw:
                out.append(json.loads(raw))
            elif g:
                out.append(released_view(g))
            else:
                out.append({"metadata": {"name": lease_id}, "status": {"state": "unknown"}})
        return out

    def granted_at(self, request_ids: list[str]) -> tuple[int, list[list[str] | None]]:
        """The usage version, and the lease ids recorded for each request-id (None where it
        is unknown), read in one round trip."""
        pipe = self.r.pipeline(transaction=True)
        pipe.get(self.p + "version")
        pipe.mget([self.p + "req:" + r for r in request_ids])
        version, raws = pipe.execute()
        return int(version or -1), [json.loads(x) if x else None for x in raws]

    def leases(self, owner: str | None = None) -> list[dict[str, Any]]:
        if owner is not None:
            ids = sorted(_text(x) for x in self.r.smembers(f"{self.p}owner:{owner}"))
            raws = self.r.hmget(self.p + "leases", ids) if ids else []
        else:
            raws = self.r.hvals(self.p + "leases")
        return [json.loads(x) for x in raws if x]

    def expired(self, now: float, limit: int = 1000) -> list[str]:
        return [_text(x) for x in self.r.zrangebyscore(self.p + "expiry", 0, now, 0, limit)]

    def audit(self) -> dict[str, Any]:
        """Leases, counters and port groups read in one atomic step (for tests and checks)."""
        leases, usage, nets = self._audit(args=[self.p])
        counters = {}
        for i in range(0, len(usage), 2):
            counters[_text(usage[i])] = tuple(int(x or 0) for x in usage[i + 1])
        parsed = {_text(leases[i]): json.loads(leases[i + 1]) for i in range(0, len(leases), 2)}
        netmap = {_text(nets[i]): _text(nets[i + 1]) for i in range(0, len(nets), 2)}
        return {"leases": parsed, "counters": counters, "nets": netmap}

    # writes ----------------------------------------------------------------------------
    def commit(self, expected_version: int, groups: dict[str, list[dict[str, Any]]],
               caps: dict[str, tuple[int, int, int]], granted: list[str] | None = None,
               latency: float | None = None, lone: bool = False) -> Commit:
        """Record new leases for each request-id, if the ledger is still at expected_version.
        `lone`: placed assuming nobody waits in line; refused ('waiters') if someone does."""
        pools: dict[str, dict[str, Any]] = {}
        nets: dict[str, str] = {}
        leases = []
        raws: list[str] = []
        for group in groups.values():
            for lease in group:
                st, sp, lid = lease["status"], lease["spec"], lease["metadata"]["name"]
                u = pools.setdefault(st["pool"], {
                    "vcpus": 0, "memory": 0, "storage": 0, "leases": 0,
                    "vcenter": st["vcenter"], "cap": list(caps[st["pool"]])})
                u["vcpus"] += sp["vcpus"]
                u["memory"] += sp["memory"]
                u["storage"] += sp["storage"]
                u["leases"] += 1
                for key in lease_port_groups(lease):
                    nets[key] = lid
                raw = json.dumps(lease)
                raws.append(raw)
                leases.append({"id": lid, "owner": st["owner"],
                               "exp": parse_rfc3339(st["expires-at"])})
        payload = {
            "rids": {rid: json.dumps([x["metadata"]["name"] for x in g]) for rid, g in
                     groups.items()},
            "pools": pools, "nets": nets, "leases": leases, "granted": granted or [],
        }
        if not granted:
            del payload["granted"]
        if lone:
            payload["lone"] = True
        if self.quiet:
            payload["quiet"] = True
        if self.floor > 0:
            payload["floor"] = self.floor
        if latency is not None:
            bucket = next((str(b) for b in LATENCY_BUCKETS if latency <= b), None)
            payload["latency"] = {"seconds": latency, **({"bucket": bucket} if bucket else {})}
        status, *rest = self._acquire(args=[self.p, expected_version, json.dumps(payload),
                                            *raws])
        status = _text(status)
        if status == "dup":
            flat = rest[0]
            existing = {_text(flat[i]): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
            return Commit("dup", existing=existing)
        if status == "ok":
            return Commit(status, version=int(rest[0]), seq=int(rest[1]), raws=raws)
        if status == "stale":
            return Commit(status, version=int(rest[0]))
        return Commit(status, detail=_text(rest[0]))

    def release(self, ids: list[str], owner: str = "", by_owner: str = "",
                reason: str = "released", now: str = "",
                expired_by: float | None = None) -> Released:
        """Release leases by id and/or all of an owner's. `expired_by` (reaping): only those
        whose expires-at is still at or before it, checked in the script (a renewal wins)."""
        res = self._release(args=[self.p, json.dumps(list(ids)) if ids else "[]", owner,
                                  by_owner, reason, now, self.keep, "1" if self.quiet else "",
                                  self.floor, "" if expired_by is None else repr(expired_by)])
        status = _text(res[0])
        if status == "unready":
            raise LedgerUnready()
        if status != "ok":
            raise LedgerConflict(status, _text(res[1]), _text(res[2]) if len(res) > 2 else "")
        return Released(int(res[1]), [json.loads(x) for x in res[2]], [_text(x) for x in res[3]],
                        int(res[4]), int(res[5]), [_text(x) for x in res[6]])

    def swap(self, lease_id: str, old_raw: str, new: dict[str, Any], expires: float
             ) -> tuple[str, int, str]:
        """Replace a lease if unchanged: (status, seq, the new raw JSON)."""
        raw = json.dumps(new)
        status, seq = self._swap(args=[self.p, lease_id, old_raw, raw, expires,
                                       "1" if self.quiet else "", self.floor])
        return _text(status), int(seq), raw

    def active_at(self, ids: list[str]) -> tuple[int, list[str]]:
        """The ledger seq and the raw JSON of those of `ids` still active, read atomically."""
        pipe = self.r.pipeline(transaction=True)
        pipe.get(self.p + "seq")
        pipe.hmget(self.p + "leases", ids)
        seq, raws = pipe.execute()
        return int(seq or 0), [_text(x) for x in raws if x]

    def raw(self, lease_id: str) -> str | None:
        raw = self.r.hget(self.p + "leases", lease_id)
        return _text(raw) if raw is not None else None

    def is_gone(self, lease_id: str) -> bool:
        return bool(self.r.exists(self.p + "gone:" + lease_id))

    # waiting line ------------------------------------------------------------------------
    def park(self, key: str, record: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Join the line (once per request key; a later task with the same key becomes a
        twin that gets the same answer): (position, the record in line), position 0 if the
        request was granted meanwhile."""
        status, position, *held = self._park(args=[self.p, key, json.dumps(record),
                                                   record["task"]])
        if _text(status) != "parked":
            return 0, record
        return int(position), json.loads(held[0]) if held and held[0] else record

    def is_waiting(self, key: str) -> bool:
        return self.r.zscore(self.p + "waiting", key) is not None

    def unpark(self, key: str) -> tuple[bool, list[str]]:
        """Leave the line: (False if it already left, the twin task ids to answer too)."""
        left, twins = self._unpark(args=[self.p, key])
        return bool(left), [_text(x) for x in twins]

    def twins(self, key: str) -> list[str]:
        """The other tasks waiting for the same request (see park)."""
        return [_text(x) for x in self.r.smembers(self.p + "twins:" + key)]

    def rewait(self, key: str, record: dict[str, Any]) -> None:
        """Replace a waiter's record, keeping its place in line."""
        self.r.hset(self.p + "waiters", key, json.dumps(record))

    def drop_twin(self, key: str, task_id: str) -> bool:
        return bool(self.r.srem(self.p + "twins:" + key, task_id))

    def waiters(self) -> list[tuple[str, dict[str, Any]]]:
        ids = [_text(x) for x in self.r.zrange(self.p + "waiting", 0, -1)]
        if not ids:
            return []
        raws = self.r.hmget(self.p + "waiters", ids)
        return [(i, json.loads(raw)) for i, raw in zip(ids, raws, strict=True) if raw]

    def waiting_count(self) -> int:
        return int(self.r.zcard(self.p + "waiting"))

    # replies that wait for the mirror -----------------------------------------------------
    def defer(self, task_id: str, reply: Any) -> int:
        """Hold a reply until the mirror covers the current seq; returns that seq."""
        return int(self._defer(args=[self.p, task_id, json.dumps(reply)]))

    def outbox(self) -> list[tuple[str, int, Any]]:
        out = []
        for task_id, raw in self.r.hgetall(self.p + "outbox").items():
            seq, _, payload = _text(raw).partition("|")
            out.append((_text(task_id), int(seq), json.loads(payload)))
        return sorted(out, key=lambda x: x[1])

    def outbox_done(self, task_ids: list[str]) -> None:
        if task_ids:
            self.r.hdel(self.p + "outbox", *task_ids)

    def wait_kick(self, timeout: float) -> None:
        self.r.blpop([self.p + "kick"], timeout=max(timeout, 0.01))

    # mirror ------------------------------------------------------------------------------
    def snapshot(self, cache: dict[Any, Any] | None = None) -> dict[str, Any]:
        """Everything needed to rebuild the ledger: the active leases, at one seq. `cache`
        (raw lease JSON -> parsed, kept by the caller between calls; treat the leases as
        read-only) spares re-parsing the leases that did not change."""
        seq, raws = self._snapshot(args=[self.p])
        if cache is None:
            leases = [json.loads(x) for x in raws]
        else:
            fresh = {x: cache.get(x) or json.loads(x) for x in raws}
            cache.clear()
            cache.update(fresh)
            leases = list(fresh.values())
        return {"format": 1, "seq": int(seq),
                "leases": sorted(leases, key=lambda x: x["metadata"]["name"])}

    def restore(self, snapshot: dict[str, Any], replace: bool = False) -> bool:
        """Rebuild an empty ledger from a snapshot; False (and no change) if not empty.
        `replace`: the snapshot replaces the leases, usage and port groups Redis holds (the
        released-lease records, request-ids, waiting line and outbox stay), only if Redis's
        seq is below the snapshot's (checked in the same script: False otherwise)."""
        leases, bad = [], []
        for lease in snapshot.get("leases") or []:
            problem = lease_problem(lease)
            (bad.append((lease, problem)) if problem else leases.append(lease))
        if bad:
            self.set_aside(bad)
        rids: dict[str, list[str]] = {}
        for lease in leases:
            st = lease["status"]
            key = request_key(st["owner"], st.get("request-id") or lease["metadata"]["name"])
            rids.setdefault(key, []).append(lease["metadata"]["name"])
        payload = {
            "leases": [json.dumps(x) for x in leases],
            "expiry": [parse_rfc3339(x["status"]["expires-at"]) for x in leases],
            "rids": {rid: json.dumps(ids) for rid, ids in rids.items()},
        }
        if not rids:
            payload["rids"] = {}
        return bool(self._restore(args=[self.p, int(snapshot.get("seq", 0)),
                                        json.dumps(payload), "1" if replace else ""]))

    def set_aside(self, bad: list[tuple[Any, str]]) -> None:
        """Keep records that cannot be restored in `quarantine` (logged and counted), so one
        bad record neither blocks the rest nor vanishes unseen."""
        pipe = self.r.pipeline(transaction=True)
        for i, (lease, problem) in enumerate(bad):
            name = lease_name(lease) or f"unnamed-{i}"
            log.error("mirror record %s set aside (kept in %squarantine): %s", ascii(name),
                      self.p, problem)
            pipe.hset(self.p + "quarantine", ascii(name)[1:-1],
                      json.dumps({"record": lease, "problem": problem}))
        pipe.hincrby(self.p + "stats", "quarantined", len(bad))
        pipe.execute()

    def epoch(self) -> str | None:
        """The token of this Redis ledger (made by the publisher; see Publisher.check_epoch)."""
        raw = self.r.hget(self.p + "mirror", "epoch")
        return _text(raw) if raw is not None else None

    def is_ready(self) -> bool:
        return bool(self.r.exists(self.p + "ready"))

    # stats -------------------------------------------------------------------------------
    def count(self, field: str, n: int = 1) -> None:
        self.r.hincrby(self.p + "stats", field, n)

    def stats(self) -> dict[str, int]:
        return {_text(k): int(v) for k, v in self.r.hgetall(self.p + "stats").items()}

    def latency(self) -> dict[str, float]:
        """The acquire latency histogram: cumulative bucket counts by bound, count, sum."""
        raw = {_text(k): float(v) for k, v in self.r.hgetall(self.p + "latency").items()}
        running = 0.0
        for bound in LATENCY_BUCKETS:
            running += raw.get(str(bound), 0.0)
            raw[str(bound)] = running
        return raw

    # usage history (a bounded Redis stream) -------------------------------------------------
    def append_usage(self, snapshot: dict[str, Any], retention: float) -> str:
        """Add a rollup; entries older than `retention` seconds are trimmed in the same call."""
        oldest_ms = int((time.time() - retention) * 1000)
        entry_id = self.r.xadd(self.p + "usage", {"s": json.dumps(snapshot)},
                               minid=oldest_ms, approximate=False)
        return _text(entry_id)

    def usage_history(self, since: float = 0.0, limit: int = 10000) -> list[dict[str, Any]]:
        start = f"{int(since * 1000)}-0" if since else "-"
        rows = self.r.xrevrange(self.p + "usage", max="+", min=start, count=limit)
        return [json.loads(fields[b"s"]) for _, fields in reversed(rows)]  # newest kept

    def usage_history_from(self, since: float, limit: int) -> list[dict[str, Any]]:
        """At most `limit` rollups from `since` on, oldest first (for paging)."""
        rows = self.r.xrange(self.p + "usage", min=f"{int(since * 1000)}-0", max="+",
                             count=limit)
        return [json.loads(fields[b"s"]) for _, fields in rows]

    def usage_len(self) -> int:
        return int(self.r.xlen(self.p + "usage"))

    def reaped(self, limit: int = 100) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.r.lrange(self.p + "reaped", 0, limit - 1)]


def lease_name(lease: Any) -> str:
    try:
        name = lease["metadata"]["name"]
    except (TypeError, KeyError):
        return ""
    return name if isinstance(name, str) else ""


def lease_problem(lease: Any) -> str | None:
    """Why a lease record cannot go into the ledger, or None. Everything the Lua scripts read
    is checked, and the whole record must encode as UTF-8 (cjson refuses lone surrogates)."""
    try:
        st, sp = lease["status"], lease["spec"]
        if not lease_name(lease):
            return "metadata.name is not a string"
        for key in ("pool", "vcenter", "owner", "expires-at"):
            if not isinstance(st.get(key), str) or not st[key]:
                return f"status.{key} is not a non-empty string"
        if not isinstance(st.get("request-id", ""), str):
            return "status.request-id is not a string"
        for key in ("vcpus", "memory", "storage"):
            if isinstance(sp.get(key), bool) or not isinstance(sp.get(key), int) \
                    or sp[key] < 0:
                return f"spec.{key} is not a whole number"
        nets = st.get("networks") or []
        if not isinstance(nets, list) or not all(
                isinstance(n, dict) and isinstance(n.get("port-group"), str) for n in nets):
            return "status.networks is not a list of port groups"
        parse_rfc3339(st["expires-at"])
        json.dumps(lease, ensure_ascii=False).encode("utf-8")
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        return f"{type(exc).__name__}: {ascii(str(exc))[1:-1]}"
    return None


def released_view(gone: dict[Any, Any]) -> dict[str, Any]:
    g = {_text(k): _text(v) for k, v in gone.items()}
    lease = json.loads(g["lease"])
    lease["status"].update(state="released", **{"released-at": g.get("released-at", ""),
                                                 "release-reason": g.get("reason", "")})
    return lease
