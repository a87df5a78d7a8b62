"""The lease ledger in Redis. Every change is one Lua script (in lua/, with its KEYS/ARGV
header), so it is atomic; a script checks everything before its first write, because Redis does
not roll back a script that fails half-way. The keys are listed in keys.py.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from ..core.models import lease_port_groups, parse_rfc3339, request_key
from ..core.placement import Usage
from .keys import Keys

log = logging.getLogger(__name__)
LUA = Path(__file__).resolve().parent / "lua"


def _lua(name: str) -> str:
    """A script with the shared prelude (the readiness guard, the publisher's wake-up)."""
    return (LUA / "prelude.lua").read_text() + "\n" + (LUA / f"{name}.lua").read_text()


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
        self.p = prefix  # the scripts derive every key from it
        self.k = Keys(prefix)
        self.keep = keep
        self.quiet = False  # True: changes do not kick the publisher (the caller journals them)
        self.floor = 0  # writes refuse below this seq (see _UNREADY, Capacity.ensure_ready)
        self._acquire = client.register_script(_lua("commit"))
        self._release = client.register_script(_lua("release"))
        self._swap = client.register_script(_lua("swap"))
        self._usage = client.register_script(_lua("usage"))
        self._audit = client.register_script(_lua("audit"))
        self._park = client.register_script(_lua("park"))
        self._unpark = client.register_script(_lua("unpark"))
        self._defer = client.register_script(_lua("defer"))
        self._snapshot = client.register_script(_lua("snapshot"))
        self._restore = client.register_script(_lua("restore"))

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
        return int(self.r.get(self.k.seq) or 0)

    def get(self, lease_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.k.leases, lease_id)
        return readable(raw) if raw else None

    def get_many(self, ids: list[str]) -> list[dict[str, Any]]:
        """Active or released leases by id, in order (released ones from their gone record)."""
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.k.leases, ids)
        for i in ids:
            pipe.hgetall(self.k.gone(i))
        active, *gone = pipe.execute()
        out = []
        for lease_id, raw, g in zip(ids, active, gone, strict=True):
            lease = readable(raw) if raw else None
            if lease is not None:
                out.append(lease)
            elif g:
                out.append(released_view(g))
            else:
                out.append({"metadata": {"name": lease_id}, "status": {"state": "unknown"}})
        return out

    def granted_at(self, request_ids: list[str]) -> tuple[int, list[list[str] | None]]:
        """The usage version, and the lease ids recorded for each request-id (None where it
        is unknown), read in one round trip."""
        pipe = self.r.pipeline(transaction=True)
        pipe.get(self.k.version)
        pipe.mget([self.k.request(r) for r in request_ids])
        version, raws = pipe.execute()
        return int(version or -1), [json.loads(x) if x else None for x in raws]

    def leases(self, owner: str | None = None) -> list[dict[str, Any]]:
        if owner is not None:
            ids = sorted(_text(x) for x in self.r.smembers(self.k.owner(owner)))
            raws = self.r.hmget(self.k.leases, ids) if ids else []
        else:
            raws = self.r.hvals(self.k.leases)
        return [lease for lease in map(readable, filter(None, raws)) if lease is not None]

    def expired(self, now: float, limit: int = 1000) -> list[str]:
        return [_text(x) for x in self.r.zrangebyscore(self.k.expiry, 0, now, 0, limit)]

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
        pipe.get(self.k.seq)
        pipe.hmget(self.k.leases, ids)
        seq, raws = pipe.execute()
        return int(seq or 0), [_text(x) for x in raws if x]

    def raw(self, lease_id: str) -> str | None:
        raw = self.r.hget(self.k.leases, lease_id)
        return _text(raw) if raw is not None else None

    def is_gone(self, lease_id: str) -> bool:
        return bool(self.r.exists(self.k.gone(lease_id)))

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
        return self.r.zscore(self.k.waiting, key) is not None

    def unpark(self, key: str) -> tuple[bool, list[str]]:
        """Leave the line: (False if it already left, the twin task ids to answer too)."""
        left, twins = self._unpark(args=[self.p, key])
        return bool(left), [_text(x) for x in twins]

    def twins(self, key: str) -> list[str]:
        """The other tasks waiting for the same request (see park)."""
        return [_text(x) for x in self.r.smembers(self.k.twins(key))]

    def rewait(self, key: str, record: dict[str, Any]) -> None:
        """Replace a waiter's record, keeping its place in line."""
        self.r.hset(self.k.waiters, key, json.dumps(record))

    def drop_twin(self, key: str, task_id: str) -> bool:
        return bool(self.r.srem(self.k.twins(key), task_id))

    def waiters(self) -> list[tuple[str, dict[str, Any]]]:
        ids = [_text(x) for x in self.r.zrange(self.k.waiting, 0, -1)]
        if not ids:
            return []
        raws = self.r.hmget(self.k.waiters, ids)
        return [(i, json.loads(raw)) for i, raw in zip(ids, raws, strict=True) if raw]

    def waiting_count(self) -> int:
        return int(self.r.zcard(self.k.waiting))

    # replies that wait for the mirror -----------------------------------------------------
    def defer(self, task_id: str, reply: Any) -> int:
        """Hold a reply until the mirror covers the current seq; returns that seq."""
        return int(self._defer(args=[self.p, task_id, json.dumps(reply)]))

    def outbox(self) -> list[tuple[str, int, Any]]:
        out = []
        for task_id, raw in self.r.hgetall(self.k.outbox).items():
            seq, _, payload = _text(raw).partition("|")
            out.append((_text(task_id), int(seq), json.loads(payload)))
        return sorted(out, key=lambda x: x[1])

    def outbox_done(self, task_ids: list[str]) -> None:
        if task_ids:
            self.r.hdel(self.k.outbox, *task_ids)

    def wait_kick(self, timeout: float) -> None:
        self.r.blpop([self.k.kick], timeout=max(timeout, 0.01))

    # mirror ------------------------------------------------------------------------------
    def snapshot(self, cache: dict[Any, Any] | None = None) -> dict[str, Any]:
        """Everything needed to rebuild the ledger: the active leases, at one seq. `cache`
        (raw lease JSON -> parsed, kept by the caller between calls; treat the leases as
        read-only) spares re-parsing the leases that did not change."""
        seq, raws = self._snapshot(args=[self.p])
        # only what is not JSON at all is left out here: the mirror's codec sets aside (and
        # counts) what cannot be encoded, a restore what lacks a field
        if cache is None:
            leases = [x for x in map(decoded, raws) if x is not None]
        else:
            fresh = {x: cache.get(x) or decoded(x) for x in raws}
            cache.clear()
            cache.update({k: v for k, v in fresh.items() if v is not None})
            leases = [v for v in fresh.values() if v is not None]
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
            pipe.hset(self.k.quarantine, ascii(name)[1:-1],
                      json.dumps({"record": lease, "problem": problem}))
        pipe.hincrby(self.k.stats, "quarantined", len(bad))
        pipe.execute()

    def epoch(self) -> str | None:
        """The token of this Redis ledger (made by the publisher; see Publisher.check_epoch)."""
        raw = self.r.hget(self.k.mirror, "epoch")
        return _text(raw) if raw is not None else None

    def is_ready(self) -> bool:
        return bool(self.r.exists(self.k.ready))

    # stats -------------------------------------------------------------------------------
    def count(self, field: str, n: int = 1) -> None:
        self.r.hincrby(self.k.stats, field, n)

    def stats(self) -> dict[str, int]:
        return {_text(k): int(v) for k, v in self.r.hgetall(self.k.stats).items()}

    def latency(self) -> dict[str, float]:
        """The acquire latency histogram: cumulative bucket counts by bound, count, sum."""
        raw = {_text(k): float(v) for k, v in self.r.hgetall(self.k.latency).items()}
        running = 0.0
        for bound in LATENCY_BUCKETS:
            running += raw.get(str(bound), 0.0)
            raw[str(bound)] = running
        return raw

    # usage history (a bounded Redis stream) -------------------------------------------------
    def append_usage(self, snapshot: dict[str, Any], retention: float) -> str:
        """Add a rollup; entries older than `retention` seconds are trimmed in the same call."""
        oldest_ms = int((time.time() - retention) * 1000)
        entry_id = self.r.xadd(self.k.usage, {"s": json.dumps(snapshot)},
                               minid=oldest_ms, approximate=False)
        return _text(entry_id)

    def usage_history(self, since: float = 0.0, limit: int = 10000) -> list[dict[str, Any]]:
        start = f"{int(since * 1000)}-0" if since else "-"
        rows = self.r.xrevrange(self.k.usage, max="+", min=start, count=limit)
        return [json.loads(fields[b"s"]) for _, fields in reversed(rows)]  # newest kept

    def usage_history_from(self, since: float, limit: int) -> list[dict[str, Any]]:
        """At most `limit` rollups from `since` on, oldest first (for paging)."""
        rows = self.r.xrange(self.k.usage, min=f"{int(since * 1000)}-0", max="+",
                             count=limit)
        return [json.loads(fields[b"s"]) for _, fields in rows]

    def usage_len(self) -> int:
        return int(self.r.xlen(self.k.usage))

    def reaped(self, limit: int = 100) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.r.lrange(self.k.reaped, 0, limit - 1)]

    # live vCenter health (written by vcm.sync_inventory; see core/health.py) -----------------
    def store_health(self, vcenter: str, pools: dict[str, dict[str, str]], at: float,
                     login_at: float | None = None) -> None:
        """A successful read of `vcenter` at `at`: its pools' health ({pool: {state, reason}},
        core.health.as_json), replacing the vCenter's record and clearing its error."""
        record = {"at": at, "pools": pools, "error": None, "error-at": None,
                  "login-at": login_at}
        self.r.hset(self.k.health, vcenter, json.dumps(record, sort_keys=True))

    def store_health_error(self, vcenter: str, error: str, at: float,
                           pools: list[str] | tuple[str, ...] = ()) -> None:
        """A failed read of `vcenter`: records why and when, and keeps the last successful
        read's pools and time. `pools` not in that read are added as unknown (with the error as
        the reason), so a vCenter never read still names its pools. Atomic (WATCH)."""

        def merge(pipe: Any) -> None:
            raw = pipe.hget(self.k.health, vcenter)
            try:
                record = json.loads(raw) if raw else {}
            except ValueError:
                record = {}
            if not isinstance(record, dict) or not isinstance(record.get("pools"), dict):
                record = {"at": None, "pools": {}, "login-at": None}
            for name in pools:
                record["pools"].setdefault(name, {"state": "unknown", "reason": error})
            record.update({"error": error, "error-at": at})
            pipe.multi()
            pipe.hset(self.k.health, vcenter, json.dumps(record, sort_keys=True))

        self.r.transaction(merge, self.k.health)

    def health(self) -> dict[str, dict[str, Any]]:
        """vCenter -> its health record (see core/health.py); records that cannot be decoded
        are left out (core.health.effective then counts their pools as unknown)."""
        out: dict[str, dict[str, Any]] = {}
        for vcenter, raw in self.r.hgetall(self.k.health).items():
            try:
                record = json.loads(raw)
            except ValueError:
                log.warning("health record of %s cannot be decoded; ignored", _text(vcenter))
                continue
            if isinstance(record, dict):
                out[_text(vcenter)] = record
        return out

    def forget_health(self, vcenter: str) -> bool:
        """Drop a vCenter's health record (its pools become unknown)."""
        return bool(self.r.hdel(self.k.health, vcenter))

    # the mirror publisher's bookkeeping (its status hash is described in publisher.py) ----
    def mirror_status_write(self, fields: dict[str, Any], *, incr: dict[str, int] | None = None,
                            clear: tuple[str, ...] | list[str] = ()) -> None:
        """Set fields of the mirror status hash, add to its counters, drop fields: one round
        trip, not atomic (it is a report)."""
        pipe = self.r.pipeline(transaction=False)
        if fields:
            pipe.hset(self.k.mirror, mapping=fields)
        for name in clear:
            pipe.hdel(self.k.mirror, name)
        for name, n in (incr or {}).items():
            pipe.hincrby(self.k.mirror, name, n)
        pipe.execute()

    def mirror_status_incr(self, field: str, n: int = 1) -> None:
        self.r.hincrby(self.k.mirror, field, n)

    def outbox_size(self) -> int:
        """How many answers are held for the mirror."""
        return int(self.r.hlen(self.k.outbox))

    def seq_and_ready(self, new_epoch: str) -> tuple[int, bool, str | None]:
        """The ledger's seq, whether it is ready, and its epoch (set to `new_epoch` when it has
        none yet), in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(self.k.ready)
        pipe.get(self.k.seq)
        pipe.hsetnx(self.k.mirror, "epoch", new_epoch)
        pipe.hget(self.k.mirror, "epoch")
        ready, seq, _, epoch = pipe.execute()
        return int(seq or 0), bool(ready), _text(epoch) if epoch is not None else None

    def seq_and_epoch(self) -> tuple[int, str | None]:
        """The ledger's seq and epoch, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.k.seq)
        pipe.hget(self.k.mirror, "epoch")
        seq, epoch = pipe.execute()
        return int(seq or 0), _text(epoch) if epoch is not None else None


_warned: set[str] = set()


def decoded(raw: Any) -> Any | None:
    """A stored record as JSON, or None (logged once) when it is not JSON at all."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        _skipped(raw, "not JSON")
        return None


def readable(raw: Any) -> dict[str, Any] | None:
    """A stored lease record, or None (logged once) when it cannot be read or lacks what the
    ledger needs: reads skip it; the next release or reap that meets it sets it aside."""
    lease = decoded(raw)
    if lease is None:
        return None
    problem = lease_problem(lease)
    if problem is None:
        return lease
    _skipped(raw, problem)
    return None


def _skipped(raw: Any, problem: str) -> None:
    key = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw))[:200]
    if key not in _warned and len(_warned) < 10000:
        _warned.add(key)
        log.warning("a lease record cannot be read and is skipped (%s): %s", problem,
                    ascii(key[:120]))
    return None


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
