"""What the mirror side needs from Redis: snapshots and restores (setting aside records that
cannot be restored), answers held until the mirror covers them, and the publisher's
bookkeeping (its status hash, the ledger's epoch)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from ...core.lease import parse_rfc3339
from ...core.models import DIMENSIONS, request_key
from ...core.text import text_problem
from .base import LedgerBase
from .records import (
    aside_entry,
    aside_hold,
    aside_id,
    decoded,
    describe_hold,
    lease_name,
    lease_problem,
    stored_aside,
    text,
)
from .scripts import Deferred, Restored, SnapshotRead

log = logging.getLogger(__name__)


class MirrorStore(LedgerBase):
    # snapshots and restores --------------------------------------------------------------
    def snapshot(self, cache: dict[Any, Any] | None = None) -> dict[str, Any]:
        """Everything needed to rebuild the ledger: the active leases, at one seq, and the
        records set aside (under `aside`, when there are any: what they hold stays counted
        after a rebuild). `cache` (raw lease JSON -> parsed, kept by the caller between calls;
        treat the leases as read-only) spares re-parsing the leases that did not change."""
        read = SnapshotRead.from_reply(self.scripts.snapshot(args=[self.p]))
        # only what is not JSON at all is left out here: the mirror's codec sets aside (and
        # counts) what cannot be encoded, a restore what lacks a field
        if cache is None:
            leases = [x for x in map(decoded, read.raws) if x is not None]
        else:
            fresh = {x: cache.get(x) or decoded(x) for x in read.raws}
            cache.clear()
            cache.update({k: v for k, v in fresh.items() if v is not None})
            leases = [v for v in fresh.values() if v is not None]
        out = {"format": 1, "seq": read.seq,
               "leases": sorted(leases, key=lambda x: x["metadata"]["name"])}
        if read.aside:
            out["aside"] = sorted(
                ({"id": text(i), "record": e["record"], "problem": e["problem"]}
                 for i, e in ((i, stored_aside(v)) for i, v in read.aside)),
                key=lambda x: x["id"])
        return out

    def restore(self, snapshot: dict[str, Any], replace: bool = False) -> Restored:
        """Rebuild an empty ledger from a snapshot; not applied (and no change) if not empty.
        `replace`: the snapshot replaces the leases, usage and port groups Redis holds (the
        released-lease records, request-ids, waiting line and outbox stay), only if Redis's
        seq is below the snapshot's (checked in the same script: not applied otherwise).

        A record that cannot be restored is set aside (kept in `quarantine`, logged, counted),
        and what can be read of it stays held: its vCPUs, memory and storage on its pool, its
        port groups taken. One whose holdings cannot be read stops all placement until an
        operator drops it (a release by its id). Records the snapshot carries as set aside
        stay so. A second record under a lease's name is set aside too; a record that would
        take its pool past what the ledger counts exactly is set aside uncounted."""
        leases: list[dict[str, Any]] = []
        bad: list[tuple[Any, str]] = []
        taken: set[str] = set()
        counted = _Counted()
        for lease in snapshot.get("leases") or []:
            problem = lease_problem(lease)
            if problem is None and lease_name(lease) in taken:
                problem = "a second record under the name of a lease"
            if problem is None and not counted.take(lease["status"]["pool"], lease["spec"]):
                problem = counted.problem
            if problem:
                bad.append((lease, problem))
            else:
                leases.append(lease)
                taken.add(lease_name(lease))
        aside: list[Aside] = []
        for entry in snapshot.get("aside") or []:  # set aside before: kept under its id
            text_of, problem, wanted = _carried(entry)
            aside.append(_aside(text_of, problem, wanted, taken, fresh=False))
        for lease, problem in bad:
            aside.append(_aside(json.dumps(lease), problem, None, taken, fresh=True))
        aside = [a if a.hold is None or counted.take(a.hold["pool"], a.hold)
                 else a.uncounted(counted.problem) for a in aside]
        rids: dict[str, list[str]] = {}
        for lease in leases:
            st = lease["status"]
            key = request_key(st["owner"], st.get("request-id") or lease["metadata"]["name"])
            rids.setdefault(key, []).append(lease["metadata"]["name"])
        for a in aside:  # its request-id, when it can be read, is answered as gone, never anew
            if a.request is not None:
                rids.setdefault(request_key(*a.request), []).append(a.id)
        payload = {
            "leases": [json.dumps(x) for x in leases],
            "expiry": [parse_rfc3339(x["status"]["expires-at"]) for x in leases],
            "rids": {rid: json.dumps(ids) for rid, ids in rids.items()},
            "aside": [{"id": a.id, "entry": a.entry, **({"hold": a.hold} if a.hold else {})}
                      for a in aside],
            "fresh": sum(1 for a in aside if a.fresh),
        }
        if not rids:
            payload["rids"] = {}
        restored = Restored.from_reply(self.scripts.restore(args=[
            self.p, int(snapshot.get("seq", 0)), json.dumps(payload), "1" if replace else ""]))
        if restored.applied:
            self._log_aside(aside)
        return restored

    def _log_aside(self, aside: list[Aside]) -> None:
        for a in aside:
            if a.fresh:
                log.error("mirror record %s set aside (kept in %squarantine as %r): %s; %s",
                          a.name, self.p, a.id, a.problem, describe_hold(a.hold))
        carried = [a.id for a in aside if not a.fresh]
        if carried:
            log.warning("%d set-aside records are still held: %s", len(carried),
                        ", ".join(carried))
        blocking = [a.id for a in aside if not a.hold]
        if blocking:
            log.error("NOTHING IS PLACED while %d set-aside records whose holdings cannot be "
                      "read are left (%s): once nothing runs on what they held, drop each "
                      "with `vcm release <id>`", len(blocking), ", ".join(blocking))

    def epoch(self) -> str | None:
        """The token of this Redis ledger (made by the publisher; see Publisher.check_epoch)."""
        raw = self.r.hget(self.k.mirror, "epoch")
        return text(raw) if raw is not None else None

    def is_ready(self) -> bool:
        return bool(self.r.exists(self.k.ready))

    # answers that wait for the mirror ------------------------------------------------------
    def defer(self, task_id: str, reply: Any) -> Deferred:
        """Hold a reply until the mirror covers the current seq (the one it waits for)."""
        return Deferred.from_reply(self.scripts.defer(args=[self.p, task_id, json.dumps(reply)]))

    def outbox(self) -> list[tuple[str, int, Any]]:
        out = []
        for task_id, raw in self.r.hgetall(self.k.outbox).items():
            seq, _, payload = text(raw).partition("|")
            out.append((text(task_id), int(seq), json.loads(payload)))
        return sorted(out, key=lambda x: x[1])

    def outbox_done(self, task_ids: list[str]) -> None:
        if task_ids:
            self.r.hdel(self.k.outbox, *task_ids)

    def outbox_size(self) -> int:
        """How many answers are held for the mirror."""
        return int(self.r.hlen(self.k.outbox))

    def wait_kick(self, timeout: float) -> None:
        self.r.blpop([self.k.kick], timeout=max(timeout, 0.01))

    # the mirror publisher's bookkeeping (its status hash is described in publisher/thread.py) ----
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

    def mirror_status(self) -> dict[Any, Any]:
        """The mirror status hash, as HGETALL returns it (publisher/mirror_status.py parses
        it)."""
        return self.r.hgetall(self.k.mirror)

    def mirror_status_incr(self, field: str, n: int = 1) -> None:
        self.r.hincrby(self.k.mirror, field, n)

    def seq_and_ready(self, new_epoch: str) -> tuple[int, bool, str | None]:
        """The ledger's seq, whether it is ready, and its epoch (set to `new_epoch` when it has
        none yet), in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(self.k.ready)
        pipe.get(self.k.seq)
        pipe.hsetnx(self.k.mirror, "epoch", new_epoch)
        pipe.hget(self.k.mirror, "epoch")
        ready, seq, _, epoch = pipe.execute()
        return int(seq or 0), bool(ready), text(epoch) if epoch is not None else None

    def seq_and_epoch(self) -> tuple[int, str | None]:
        """The ledger's seq and epoch, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.k.seq)
        pipe.hget(self.k.mirror, "epoch")
        seq, epoch = pipe.execute()
        return int(seq or 0), text(epoch) if epoch is not None else None


@dataclass(frozen=True)
class Aside:
    """A record a restore sets aside (or keeps set aside), as restore.lua takes it."""

    id: str  # kept, and dropped, under this id
    name: str  # its lease name as it can be shown
    entry: str  # the quarantine entry (records.aside_entry)
    problem: str
    hold: dict[str, Any] | None  # what it holds, when that can be read
    fresh: bool  # set aside by this restore (not carried over as set aside)
    request: tuple[str, str] | None  # its (owner, request-id), when they can be read

    def uncounted(self, problem: str) -> Aside:
        """The same record, its holdings not counted (`problem` says why): it stops placement
        until dropped, like one whose holdings cannot be read."""
        if not self.problem.endswith(problem):
            problem = f"{self.problem}; {problem}"
        record = json.loads(self.entry)["record"]
        return Aside(self.id, self.name, aside_entry(record, problem, None), problem, None,
                     self.fresh, self.request)


class _Counted:
    """What a rebuild counts on each pool, kept within what the ledger's counters hold exactly
    (Redis refuses to go past 2**63 half-way through the script, and Lua's numbers are exact
    to 2**53): a record that would take a pool past that is not counted."""

    LIMIT = 2**53
    problem = f"its pool would hold more than {LIMIT} of a size: it cannot be counted"

    def __init__(self) -> None:
        self.pools: dict[str, list[int]] = {}

    def take(self, pool: str, sizes: dict[str, Any]) -> bool:
        total = self.pools.setdefault(pool, [0, 0, 0])
        after = [t + sizes[dim] for t, dim in zip(total, DIMENSIONS, strict=True)]
        if max(after) > self.LIMIT:
            return False
        total[:] = after
        return True


def _carried(entry: Any) -> tuple[str, str, str | None]:
    """(record JSON text, problem, id it was kept under) of a snapshot's `aside` item."""
    if isinstance(entry, dict) and isinstance(entry.get("record"), str):
        wanted = entry.get("id")
        problem = entry.get("problem")
        return (entry["record"], problem if isinstance(problem, str) else "set aside",
                wanted if isinstance(wanted, str) else None)
    return json.dumps(entry), "a set-aside item of the mirror that cannot be read", None


def _aside(record_text: str, problem: str, wanted: str | None, taken: set[str],
           fresh: bool) -> Aside:
    try:
        record = json.loads(record_text)
    except (ValueError, RecursionError):  # nested deeper than json goes: nothing can be read
        record = None
    hold = aside_hold(record)
    if wanted is not None and wanted not in taken and text_problem(wanted, 128) is None:
        kept = wanted
    else:
        kept = aside_id(record, record_text, taken)
    taken.add(kept)
    name = ascii(lease_name(record))[1:-1] or "(unnamed)"
    return Aside(kept, name, aside_entry(record_text, problem, hold), problem, hold, fresh,
                 _request_of(record))


def _request_of(record: Any) -> tuple[str, str] | None:
    """A record's (owner, request-id; its name when it has none), when they can be read."""
    try:
        st = record["status"]
        owner, rid = st["owner"], st.get("request-id") or lease_name(record)
    except (TypeError, KeyError, AttributeError):
        return None
    if isinstance(owner, str) and owner and isinstance(rid, str) and rid \
            and text_problem(owner) is None and text_problem(rid) is None:
        return owner, rid
    return None
