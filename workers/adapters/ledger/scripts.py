"""The ledger's Lua scripts (workers/adapters/lua/): loading them, and one result type per
script. Each type decodes its script's reply in `from_reply`, the one place that knows the
reply's layout (documented in the script's header as `Returns`).

Every script that may refuse answers the same way: its reply leads with a status. `unready`
(Redis lost the ledger, or went back below the writer's floor: rebuild it first) is raised as
LedgerUnready for every script (`outcome`); every other status is the result's `status`, for
the caller to match."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import redis

from ...core.errors import LedgerUnready
from ...core.fleet import Usage
from .records import text

LUA = Path(__file__).resolve().parent.parent / "lua"


def _lua(name: str) -> str:
    """A script with the shared prelude (the readiness guard, the publisher's wake-up)."""
    return (LUA / "prelude.lua").read_text() + "\n" + (LUA / f"{name}.lua").read_text()


class Scripts:
    """Every script, registered once (redis-py runs it by SHA and loads it again if Redis
    forgot it)."""

    def __init__(self, client: redis.Redis) -> None:
        self.commit = client.register_script(_lua("commit"))
        self.release = client.register_script(_lua("release"))
        self.swap = client.register_script(_lua("swap"))
        self.usage = client.register_script(_lua("usage"))
        self.park = client.register_script(_lua("park"))
        self.unpark = client.register_script(_lua("unpark"))
        self.defer = client.register_script(_lua("defer"))
        self.snapshot = client.register_script(_lua("snapshot"))
        self.restore = client.register_script(_lua("restore"))


def outcome(reply: list[Any]) -> tuple[str, list[Any]]:
    """A script's status and the rest of its reply; `unready` is raised (LedgerUnready)."""
    status, *rest = reply
    status = text(status)
    if status == "unready":
        raise LedgerUnready()
    return status, rest


# one result type per script ---------------------------------------------------------------
@dataclass(frozen=True)
class Commit:
    """commit.lua: new leases recorded, or why not."""

    status: str  # ok | answered | dup | stale | over | conflict | gone | waiters | queued |
    # blocked (detail: JSON {ids, count} of set-aside records whose holdings cannot be read) |
    # settled (detail: the waiter's key; every task waiting for it was answered otherwise)
    version: int = 0
    seq: int = 0
    existing: dict[str, list[str]] = field(default_factory=dict)
    detail: str = ""
    raws: list[str] = field(default_factory=list)  # the new leases' JSON, when ok
    answer: dict[str, Any] | None = None  # answered: what the task was answered before

    @classmethod
    def from_reply(cls, reply: list[Any], raws: list[str]) -> Commit:
        """`raws`: the leases' JSON as sent (kept for the journal when they are recorded)."""
        status, rest = outcome(reply)
        if status == "dup":
            flat = rest[0]
            existing = {text(flat[i]): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
            return cls("dup", existing=existing)
        if status == "ok":
            return cls(status, version=int(rest[0]), seq=int(rest[1]), raws=raws)
        if status == "answered":
            return cls(status, detail=text(rest[0]), answer=json.loads(rest[1]))
        if status == "stale":
            return cls(status, version=int(rest[0]))
        return cls(status, detail=text(rest[0]))


@dataclass(frozen=True)
class Released:
    """release.lua: what a release freed, or why nothing was (`lease_id` not `holder`'s, or
    missing)."""

    status: str  # ok | notowner | missing
    old_version: int = 0
    leases: list[dict[str, Any]] = field(default_factory=list)  # leases released by this call
    already: list[str] = field(default_factory=list)  # ids released earlier
    seq: int = 0
    waiting: int = 0  # requests in the waiting line after the release
    set_aside: list[str] = field(default_factory=list)  # undecodable records quarantined
    dropped: list[str] = field(default_factory=list)  # set-aside records dropped by id
    lease_id: str = ""  # notowner, missing: the lease refused
    holder: str = ""  # notowner: who holds it

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Released:
        status, rest = outcome(reply)
        if status != "ok":
            return cls(status, lease_id=text(rest[0]), holder=text(rest[1]) if len(rest) > 1
                       else "")
        return cls(status, int(rest[0]), [json.loads(x) for x in rest[1]],
                   [text(x) for x in rest[2]], int(rest[3]), int(rest[4]),
                   [text(x) for x in rest[5]], [text(x) for x in rest[6]])


@dataclass(frozen=True)
class Swapped:
    """swap.lua: a lease replaced (renewed) if it was unchanged."""

    status: str  # ok | missing | changed
    seq: int  # the ledger seq of the change (0 unless ok)
    raw: str  # the new lease JSON, as sent

    @classmethod
    def from_reply(cls, reply: list[Any], raw: str) -> Swapped:
        status, rest = outcome(reply)
        return cls(status, int(rest[0]), raw)


class UsageRead(NamedTuple):
    """usage.lua: the usage the placement decides on, read atomically. A tuple, so
    `version, pools, nets = ledger.usage()` reads it too. A ledger that is not ready is
    raised (LedgerUnready) when the caller needs it ready."""

    version: int
    pools: dict[str, Usage]
    nets: set[str]  # networks in use, by ledger key (core/lease.py port_group_key)

    @classmethod
    def from_reply(cls, reply: list[Any], require_ready: bool) -> UsageRead:
        version, rows, nets, ready = reply
        if not ready and require_ready:
            raise LedgerUnready()
        pools = {}
        for i in range(0, len(rows), 2):
            v, m, s, n = (int(x or 0) for x in rows[i + 1])
            pools[text(rows[i])] = Usage(v, m, s, n)
        return cls(int(version), pools, {text(n) for n in nets})


@dataclass(frozen=True)
class InLine:
    """park.lua: where a request waits."""

    position: int  # 1 is the head; 0: it was granted meanwhile, or answered (nothing parked)
    record: dict[str, Any]  # the record in line (the first task's, for a twin)
    answer: dict[str, Any] | None = None  # the task's answer, given before (it is a copy)

    @classmethod
    def from_reply(cls, reply: list[Any], record: dict[str, Any]) -> InLine:
        """`record`: the one sent, the answer when nothing was parked."""
        status, position, *held = reply
        if text(status) == "answered":
            return cls(0, record, json.loads(held[0]))
        if text(status) != "parked":
            return cls(0, record)
        return cls(int(position), json.loads(held[0]) if held and held[0] else record)


@dataclass(frozen=True)
class Unparked:
    """unpark.lua: a request taken out of the line."""

    left: bool  # False: it had left already
    twins: list[str]  # the other task ids waiting for it, to answer too

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Unparked:
        left, twins = reply
        return cls(bool(left), [text(x) for x in twins])


@dataclass(frozen=True)
class Deferred:
    """defer.lua: an answer held for the mirror."""

    seq: int  # it goes out once the mirror covers this seq

    @classmethod
    def from_reply(cls, reply: Any) -> Deferred:
        return cls(int(reply))


@dataclass(frozen=True)
class SnapshotRead:
    """snapshot.lua: the active leases at one seq, as stored (not decoded yet), and the
    records set aside."""

    seq: int
    raws: list[Any]  # each lease's JSON as Redis returned it (bytes, or str)
    aside: list[tuple[Any, Any]] = field(default_factory=list)  # (id, quarantine entry)

    @classmethod
    def from_reply(cls, reply: list[Any]) -> SnapshotRead:
        seq, raws, flat = reply
        return cls(int(seq), list(raws), [(flat[i], flat[i + 1])
                                          for i in range(0, len(flat), 2)])


@dataclass(frozen=True)
class Restored:
    """restore.lua: whether the snapshot was applied."""

    applied: bool  # False: nothing changed (Redis was not empty, or not behind the snapshot)

    @classmethod
    def from_reply(cls, reply: Any) -> Restored:
        return cls(bool(reply))
