"""The application service: validates, places and commits. Tasks, HTTP and CLI call this."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .adapters.ledger import Ledger, LedgerConflict, LedgerUnready
from .adapters.mirror import MirrorError
from .adapters.pools_file import PoolsFile
from .core.errors import InvalidRequest, LeaseNotFound, NoCapacity, NotOwner, WaitTimeout
from .core.models import (
    Pool,
    Request,
    make_lease,
    parse_duration,
    parse_request,
    parse_rfc3339,
    rfc3339,
    text_arg,
)
from .core.placement import (
    Fleet,
    FreeNets,
    Usage,
    check_possible,
    estimate,
    place_batch,
    reserve_for,
)
from .settings import Settings

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 50


class Replies(Protocol):
    """Where answers to parked tasks go (the Celery result backend, in the worker)."""

    def deliver(self, task_id: str, result: Any) -> None: ...
    def waiting(self, task_id: str, meta: dict[str, Any]) -> None: ...
    def fail(self, task_id: str, exc: Exception) -> None: ...


class MirrorSource(Protocol):
    def load(self) -> dict[str, Any] | None: ...


@dataclass
class Parked:
    """The request waits in line; its task completes later through Replies."""

    position: int
    reasons: dict[str, str]
    deadline: str

    def meta(self) -> dict[str, Any]:
        return {"position": self.position, "reasons": self.reasons, "deadline": self.deadline}


class Queued(Exception):
    """The request is already waiting in line (sent again): join it there."""


class Capacity:
    def __init__(self, ledger: Ledger, pools: PoolsFile, settings: Settings,
                 replies: Replies | None = None, mirror: MirrorSource | None = None,
                 writer: bool = True) -> None:
        self.ledger = ledger
        self.pools = pools
        self.settings = settings
        self.replies = replies
        self.mirror = mirror
        self.writer = writer  # only the placement side restores the ledger from the mirror
        # a mirror with a journal (the file) takes each change before its answer goes out
        self.journal = mirror if writer and hasattr(mirror, "append") else None
        if self.journal is not None:
            ledger.quiet = True  # no publisher wake-up per change: the journal has it
        self.last_seq = -1  # ledger seq of the last change made here
        self._journal_warned = False
        self.lock = threading.RLock()
        # cache of the ledger's usage, valid while the ledger is at self._version
        self._version = -1
        self._usage: dict[str, Usage] = {}
        self._nets: set[str] = set()
        self._free: FreeNets | None = None  # free port groups of self._nets, when built
        self._pools_generation = pools.generation
        self._line_empty = False  # nobody waited at the last look (the commit re-checks)
        self._checked_pools: object = None  # the pools self._checked was computed for
        self._checked: dict[tuple, tuple] = {}  # request shape -> () or InvalidRequest args
        self._shown: dict[str, tuple[int, str]] = {}  # task id -> last (position, reasons)
        # fault injection for the crash tests: die right after a commit, before replying
        self._crash_after_commit = os.environ.get("VCM_TEST_CRASH_AFTER_COMMIT") == "1"

    # helpers ---------------------------------------------------------------------------
    def parse(self, raw: Any, default_id: str, owner: str = "anonymous",
              where: str = "") -> Request:
        s = self.settings
        req = parse_request(raw, default_owner=owner, default_request_id=default_id,
                            default_ttl=s.lease_ttl, max_ttl=s.max_lease_lifetime, where=where)
        self._check_possible(req)
        return req

    def _check_possible(self, req: Request) -> None:
        """check_possible, remembered per request shape until the pools change."""
        pools = self.pools.current()
        if pools is not self._checked_pools or len(self._checked) > 4096:
            self._checked_pools, self._checked = pools, {}
        shape = (req.vcpus, req.memory, req.storage, req.vcenters, req.networks,
                 req.network_type, req.required_pool, req.pool_selector)
        known = self._checked.get(shape)
        if known is None:
            try:
                check_possible(req, pools)
            except InvalidRequest as exc:
                known = self._checked[shape] = (exc.message, exc.details)
            else:
                known = self._checked[shape] = ()
        if known:
            raise InvalidRequest(known[0], dict(known[1]))

    def _journal(self, seq: int, put: list[str], deleted: list[str], sync: bool = True) -> None:
        """Append a change to the mirror's journal; a failure only holds the answers back
        (the publisher then writes the whole snapshot, with retries). Releases pass
        sync=False: a power loss before the next synced write can only bring a released
        lease back, never double-book (a grant's fdatasync also flushes the release)."""
        self.last_seq = max(self.last_seq, seq)
        self.ledger.floor = self.last_seq
        if self.journal is None:
            return
        try:
            self.journal.append(seq, put, deleted, sync=sync)
        except MirrorError as exc:
            # once per streak; before this worker's first whole save (start-up) it is expected
            quiet = self._journal_warned or not self.journal.started
            (log.info if quiet else log.warning)(
                "mirror journal: %s; answers wait for a whole mirror save", exc)
            self._journal_warned = True
        else:
            self._journal_warned = False

    def covered(self) -> bool:
        """Whether the mirror already holds every change made here (answers may go out)."""
        return self.journal is not None and self.journal.holds >= self.last_seq

    def _journal_existing(self, ids: list[str]) -> None:
        """A request answered again (redelivered, or sent twice): journal its live leases."""
        if self.journal is not None:
            seq, raws = self.ledger.active_at(ids)
            self._journal(seq, raws, [])

    def ensure_ready(self, check_mirror: bool = False) -> bool:
        """Before any write: if Redis lost the ledger, rebuild it from the mirror. If Redis went
        back to an older state (restarted from an AOF that missed its last writes) than the
        changes made here, or, with `check_mirror` (at start), than the mirror of the same
        Redis ledger holds, the mirror's newer state replaces it: those changes were answered."""
        with self.lock:
            if self.ledger.is_ready():
                return self._catch_up(check_mirror)
            snapshot = self.mirror.load() if self.mirror is not None else None
            snapshot = snapshot or {"seq": 0, "leases": []}
            restored = self.ledger.restore(snapshot)
            if restored and self.journal is not None:  # the mirror holds what Redis now has
                self.journal.covered = max(self.journal.covered, int(snapshot.get("seq", 0)))
            if restored and snapshot["leases"]:
                log.warning("the Redis ledger was empty: restored %d leases from the mirror "
                            "(seq %s)", len(snapshot["leases"]), snapshot.get("seq"))
            elif not restored and self.ledger.is_ready():
                log.warning("Redis holds leases the mirror does not know: Redis wins, the "
                            "mirror will be rewritten")
            self._restart_at(self.ledger.seq())
            return restored

    def _catch_up(self, check_mirror: bool) -> bool:
        known = self.last_seq  # read before Redis's seq: a change made meanwhile is not a loss
        seq = self.ledger.seq()
        if seq >= known and not check_mirror:
            return False
        try:
            snapshot = self.mirror.load() if self.mirror is not None and self.writer else None
        except MirrorError as exc:
            if seq >= known:  # at start, with nothing to suggest Redis went back
                log.warning("cannot compare the Redis ledger with the mirror: %s", exc)
                return False
            raise NoCapacity.of({}, f"the Redis ledger went back to an older state (seq {seq} "
                                f"< {known}) and the mirror, which holds the newer "
                                f"one, cannot be read ({exc}): no changes until it can") from None
        mirrored = int(snapshot.get("seq", 0)) if snapshot else -1
        same = snapshot is not None and snapshot.get("epoch") == self.ledger.epoch()
        if snapshot is None or mirrored <= seq or (seq >= known and not same):
            if seq < known:  # nothing newer to go back to
                log.error("the Redis ledger went back from seq %d to %d and the mirror holds "
                          "only seq %d: the changes in between are lost", known, seq,
                          mirrored)
                self._restart_at(seq)
            return False
        if not self.ledger.restore(snapshot, replace=True):
            return False  # another writer moved it past the mirror meanwhile: it is live
        log.warning("the Redis ledger went back to seq %d (restarted from an older state): "
                    "replaced it with the mirror's %d leases at seq %d", seq,
                    len(snapshot.get("leases") or []), mirrored)
        if mirrored < self.last_seq:
            log.error("changes from seq %d to %d were answered unmirrored and are lost",
                      mirrored + 1, self.last_seq)
        if self.journal is not None:
            self.journal.covered = max(self.journal.covered, mirrored)
        self._restart_at(mirrored)
        return True

    def _restart_at(self, seq: int) -> None:
        """The ledger was rebuilt: writes go on from its seq, decisions from a fresh read."""
        self.last_seq = min(self.last_seq, seq)
        self.ledger.floor = max(self.last_seq, 0)
        self._version = -1
        if self.journal is not None and self.journal.covered > seq:
            # the seqs above were this ledger's before it went back: the changes that now
            # take them are not written anywhere yet
            self.journal.covered = seq
            self.journal.durable = min(self.journal.durable, seq)

    def fleet(self, fresh: bool = False, indexed: bool = False) -> tuple[int, Fleet]:
        """The cached usage as a Fleet; `indexed` adds the free port-group aggregate (kept
        up to date with the cache, rebuilt when the usage is re-read or the pools change)."""
        if fresh or self._version < 0:
            self._free = None
            try:
                self._version, self._usage, self._nets = self.ledger.usage(self.writer)
            except LedgerUnready:
                self.ensure_ready()
                self._version, self._usage, self._nets = self.ledger.usage()
        pools = self.pools.current()
        if self._free is not None and self._free.pools is not pools:
            self._free = None
        if indexed and self._free is None:
            self._free = FreeNets(pools, self._nets)
        return self._version, Fleet(pools, self._usage, self._nets, self._free)

    def _forget(self) -> None:
        self._version = -1

    def _held(self, fleet: Fleet, skip: str = "") -> dict[str, str]:
        """Pools kept for the head of the waiting line (none when nobody waits)."""
        waiters = self.ledger.waiters()
        self._line_empty = not waiters
        for position, (rid, record) in enumerate(waiters, start=1):
            if rid == skip:
                return {}
            try:
                head = self.parse(record["request"], rid)
            except InvalidRequest:
                continue
            return reserve_for(head, fleet, position)
        return {}

    # acquire ---------------------------------------------------------------------------
    def acquire(self, raw: Any, task_id: str, owner: str = "anonymous"
                ) -> list[dict[str, Any]] | Parked:
        received = time.time()
        req = self.parse(raw, task_id or uuid.uuid4().hex, owner)
        with self.lock:
            try:
                return self.place([req], since=received)[0]
            except Queued:  # sent again while it waits: wait with it, whatever `wait` says
                return self.park(req, task_id, {})
            except NoCapacity as exc:
                if req.wait <= 0 and not self.ledger.is_waiting(req.key):
                    raise
                return self.park(req, task_id, exc.reasons)

    def acquire_batch(self, raws: Any, task_id: str,
                      owner: str = "anonymous") -> list[list[dict[str, Any]]]:
        if not isinstance(raws, list) or not raws:
            raise InvalidRequest.of("requests", "must be a non-empty list of requests")
        if len(raws) > 1000:
            raise InvalidRequest.of("requests", "at most 1000 requests in one batch")
        base = task_id or uuid.uuid4().hex
        reqs = [self.parse(r, f"{base}-{i}", owner, where=f"requests[{i}]")
                for i, r in enumerate(raws)]
        keys = [r.key for r in reqs]
        dupes = sorted(r.request_id for r in reqs if keys.count(r.key) > 1)
        if dupes:
            raise InvalidRequest.of("request-id", f"{dupes[0]!r} appears twice in the batch "
                                    "for the same owner")
        with self.lock:
            return self.place(reqs)

    def place(self, reqs: list[Request], granted: str = "",
              held: dict[str, str] | None = None,
              since: float | None = None) -> list[list[dict[str, Any]]]:
        """Place all requests or none, commit atomically; a known request-id returns its leases.

        `granted` is the request-id of a waiter being served: it leaves the line in the commit.
        `held`: pools kept for the head of the line (computed here when None).
        """
        for attempt in range(MAX_ATTEMPTS):
            version, fleet = self.fleet(fresh=attempt > 0, indexed=True)
            # with nobody seen waiting, assume the line is still empty: the commit checks it
            lone = held is None and self._line_empty
            if lone:
                held = {}
            elif held is None or attempt > 0:
                held = self._held(fleet, skip=granted)
            try:
                plan = place_batch(reqs, fleet, self.settings.strategy, held)
            except NoCapacity:
                current, found = self.ledger.granted_at([r.key for r in reqs])
                existing = self.existing(reqs, found)
                if existing is not None:
                    return existing
                # never refuse on a stale cache: when the ledger moved, re-read it and try
                # again (a current cache is exact, so a refusal costs one read, not O(leases))
                if attempt == 0 and current != version:
                    self._forget()
                    continue
                raise
            now = time.time()
            groups = {
                req.key: [
                    make_lease(uuid.uuid4().hex[:20], req, p.pool, list(p.networks), now)
                    for p in placements
                ]
                for req, placements in zip(reqs, plan, strict=True)
            }
            caps = {p.pool.name: (p.pool.vcpu_capacity, p.pool.memory, p.pool.storage)
                    for placements in plan for p in placements}
            latency = now - since if since is not None else None
            commit = self.ledger.commit(version, groups, caps, [granted] if granted else None,
                                        latency, lone=lone)
            if commit.status == "ok":
                if self._crash_after_commit:
                    os._exit(137)
                for req, placements in zip(reqs, plan, strict=True):
                    fleet.apply(req, placements)
                self._version = commit.version
                self._journal(commit.seq, commit.raws, [])
                return [groups[r.key] for r in reqs]
            if commit.status == "dup":
                found = [commit.existing[r.key] for r in reqs]
                existing = self.existing(reqs, found)
                if existing is not None:
                    return existing
                continue  # released meanwhile: the next read sees it
            if commit.status == "conflict":
                rid = next(r.request_id for r in reqs if r.key == commit.detail)
                raise InvalidRequest.of("request-id", f"{rid!r} was already used by another "
                                        "request of this owner")
            if commit.status == "queued":
                rid = next(r.request_id for r in reqs if r.key == commit.detail)
                if len(reqs) > 1:
                    raise InvalidRequest.of("request-id", f"{rid!r} is waiting in line: its "
                                            "task gets the leases")
                raise Queued(rid)
            if commit.status == "gone":
                raise WaitTimeout.of(0)  # the waiter left the line meanwhile (expired)
            if commit.status == "waiters":  # someone joined the line: hold pools for them
                self._line_empty = False
                continue
            if commit.status == "unready":
                self.ensure_ready()
            log.info("ledger moved under us (%s %s), re-reading", commit.status, commit.detail)
            self._forget()
        raise NoCapacity.of({}, f"the ledger kept changing; gave up after {MAX_ATTEMPTS} tries")

    def existing(self, reqs: list[Request], found: list[list[str] | None] | None = None
                 ) -> list[list[dict[str, Any]]] | None:
        """The leases already granted to these request-ids, if all of them were granted
        (`found`: their lease ids, when already read)."""
        if found is None:
            found = self.ledger.granted_at([r.key for r in reqs])[1]
        if not all(ids is not None for ids in found):
            return None
        answers = [self.ledger.get_many(ids or []) for ids in found]
        for req, leases in zip(reqs, answers, strict=True):
            gone = {x["metadata"]["name"]: _why_gone(x["status"]) for x in leases
                    if x["status"].get("state") != "leased"}
            if gone:
                raise LeaseNotFound(
                    f"request-id {req.request_id!r} was answered before with leases that are "
                    f"gone: {'; '.join(f'{k} {v}' for k, v in gone.items())}; "
                    "send a new request-id for new leases",
                    {"request-id": req.request_id, "gone": gone})
        self._journal_existing([i for ids in found if ids for i in ids])
        return answers

    # the waiting line ------------------------------------------------------------------
    def park(self, req: Request, task_id: str, reasons: dict[str, str]) -> Parked | list:
        # a request that cannot fit even the empty fleet (excluded pools stay excluded) would
        # sit at the head of the line forever, holding pools from everyone: refuse it now
        empty = Fleet({n: replace(p, no_schedule=False) for n, p in self.pools.current().items()})
        try:
            place_batch([req], empty, self.settings.strategy)
        except NoCapacity as exc:
            raise NoCapacity.of(exc.reasons, "not waiting: this request cannot fit even when "
                                "every pool is empty") from None
        deadline = time.time() + req.wait
        record = {"task": task_id, "request": req.to_dict(), "since": time.time(),
                  "deadline": deadline}
        self._line_empty = False
        position, record = self.ledger.park(req.key, record)
        if position == 0:  # granted meanwhile (a redelivered task): answer with the leases
            existing = self.existing([req])
            return existing[0] if existing else []
        parked = Parked(position, reasons, rfc3339(record["deadline"]))
        self._shown[task_id] = _shown_key(position, reasons)
        return parked

    def serve_waiters(self) -> int:
        """Place waiting requests in arrival order; the head keeps its pools (no starvation)."""
        granted = 0
        with self.lock:
            position = 0
            held: dict[str, str] = {}  # nobody ahead of the first waiter
            for key, record in self.ledger.waiters():
                if record["deadline"] <= time.time():
                    self._expire(key, record)
                    continue
                try:
                    req = self.parse(record["request"], key)
                    leases = self.place([req], granted=key, held=held,
                                        since=record["since"])[0]
                except NoCapacity as exc:
                    position += 1
                    if position == 1:
                        held = reserve_for(req, self.fleet()[1], 1)
                    self._show_waiting(key, record, position, exc.reasons)
                    continue
                except (InvalidRequest, WaitTimeout, LeaseNotFound) as exc:
                    left, twins = self.ledger.unpark(key)
                    if left:
                        self._answer([record["task"], *twins], fail=exc)
                    continue
                granted += 1
                self.ledger.count("granted-after-wait")
                self._answer([record["task"], *self.ledger.unpark(key)[1]], leases=leases)
        return granted

    def _answer(self, tasks: list[str], leases: list[dict[str, Any]] | None = None,
                fail: Exception | None = None) -> None:
        """Answer every task that waited for one request (the first and its twins)."""
        for task_id in dict.fromkeys(tasks):
            self._shown.pop(task_id, None)
            if self.replies is None:
                continue
            if fail is not None:
                self.replies.fail(task_id, fail)
            else:
                self.replies.deliver(task_id, leases)

    def _show_waiting(self, key: str, record: dict[str, Any], position: int,
                      reasons: dict[str, str]) -> None:
        shown = _shown_key(position, reasons)
        if self._shown.get(record["task"]) == shown or self.replies is None:
            return
        meta = Parked(position, reasons, rfc3339(record["deadline"])).meta()
        for task_id in dict.fromkeys([record["task"], *self.ledger.twins(key)]):
            self._shown[task_id] = shown
            self.replies.waiting(task_id, meta)

    def _expire(self, key: str, record: dict[str, Any], why: str = "") -> bool:
        """Take a waiter out of the line and fail its tasks with WaitTimeout (False: it had
        left already)."""
        left, twins = self.ledger.unpark(key)
        if not left:
            return False
        self.ledger.count("refused:WaitTimeout")
        waited = round(time.time() - record["since"], 1)
        self._answer([record["task"], *twins], fail=WaitTimeout.of(waited, why=why))
        return True

    def cancel_wait(self, task_id: Any) -> bool:
        """Take a parked acquire out of the line (its synchronous HTTP client went away), so
        it is not granted leases nobody will see; its task fails with WaitTimeout. When other
        tasks wait for the same request, only this one leaves. False if it is not waiting
        (granted, failed, or not parked yet)."""
        task_id = text_arg(task_id, "task_id", max_len=255)
        gone = WaitTimeout.of(0, why="the client went away")
        with self.lock:
            for key, record in self.ledger.waiters():
                twins = self.ledger.twins(key)
                primary = record.get("task") == task_id
                if task_id in twins and self.ledger.drop_twin(key, task_id) and not primary:
                    self._answer([task_id], fail=gone)
                    return True
                if not primary:
                    continue
                others = [t for t in twins if t != task_id]
                if others:  # someone else still waits for this request: they take its place
                    self.ledger.drop_twin(key, others[0])
                    self.ledger.rewait(key, {**record, "task": others[0]})
                    self._answer([task_id], fail=gone)
                    return True
                if self._expire(key, record, "the client went away"):
                    log.info("cancelled the wait of %s: its client went away", task_id)
                    return True
        return False

    def expire_waiters(self) -> int:
        """Fail waiters whose wait ran out (the worker calls this about once a second)."""
        n = 0
        now = time.time()
        for rid, record in self.ledger.waiters():
            if record["deadline"] <= now:
                self._expire(rid, record)
                n += 1
        return n

    def pools_changed(self) -> bool:
        self.pools.current()
        if self.pools.generation != self._pools_generation:
            self._pools_generation = self.pools.generation
            return True
        return False

    # release / renew / reap ------------------------------------------------------------
    def release(self, lease_ids: Any = None, owner: Any = None,
                reason: str = "released") -> list[str]:
        ids = _id_list(lease_ids)
        if owner is not None:
            owner = text_arg(owner, "owner")
        if not ids and not owner:
            raise InvalidRequest.of("lease_ids", "give lease ids and/or an owner")
        with self.lock:
            res = self._release(ids, owner, reason)
            if res.leases and res.waiting:
                self.serve_waiters()
        released = [x["metadata"]["name"] for x in res.leases] + res.already
        return [i for i in ids if i in released] if ids else released

    def _release(self, ids: list[str], owner: str | None, reason: str,
                 expired_by: float | None = None):
        for _ in range(2):
            try:
                res = self.ledger.release(ids, owner=owner or "" if ids else "",
                                          by_owner="" if ids else owner, reason=reason,
                                          now=rfc3339(time.time()), expired_by=expired_by)
            except LedgerUnready:
                self.ensure_ready()
                continue
            except LedgerConflict as exc:
                if exc.kind == "notowner":
                    raise NotOwner.of(exc.lease_id, str(owner), exc.holder) from None
                raise LeaseNotFound.of(exc.lease_id) from None
            if res.set_aside:
                log.error("set aside %d lease records that cannot be decoded (kept in the "
                          "quarantine hash; their usage stays counted): %s",
                          len(res.set_aside), ", ".join(ascii(x) for x in res.set_aside))
            self._after_release(res.old_version, res.leases)
            self._journal(res.seq, [], [x["metadata"]["name"] for x in res.leases] + res.already,
                          sync=False)
            return res
        raise LeaseNotFound.of(ids[0] if ids else str(owner))

    def _after_release(self, old_version: int, leases: list[dict[str, Any]]) -> None:
        if not leases:
            return
        if old_version != self._version:
            self._forget()
            return
        fleet = Fleet({}, self._usage, self._nets, self._free)  # the cache, as a Fleet
        for lease in leases:
            st, sp = lease["status"], lease["spec"]
            fleet.remove(st["pool"], sp["vcpus"], sp["memory"], sp["storage"],
                         (f"{st['vcenter']}|{n['port-group']}" for n in st.get("networks") or []))
        self._version = old_version + 1

    def reap_expired(self) -> list[str]:
        """Release every lease past expires-at with reason `expired`; waiters get the room."""
        reaped: list[str] = []
        with self.lock:
            while True:
                now = time.time()
                ids = self.ledger.expired(now, limit=500)
                if not ids:
                    break
                res = self._release(ids, None, "expired", expired_by=now)
                reaped.extend(x["metadata"]["name"] for x in res.leases)
                if len(ids) < 500 or not res.leases:
                    break
            if reaped:
                log.info("reaped %d expired leases: %s", len(reaped), ", ".join(reaped))
            self.serve_waiters()
        return reaped

    def renew(self, lease_id: Any, owner: Any = None, ttl: Any = None) -> dict[str, Any]:
        lease_id = text_arg(lease_id, "lease_id", max_len=128)
        if owner is not None:  # without one, the lease id is the capability (as for release)
            owner = text_arg(owner, "owner")
        req = parse_request({"vcpus": 1, "memory": 1, **({"ttl": ttl} if ttl is not None else {})},
                            default_ttl=self.settings.lease_ttl,
                            max_ttl=self.settings.max_lease_lifetime)
        for _ in range(MAX_ATTEMPTS):
            raw = self.ledger.raw(lease_id)
            if raw is None:
                if self.ledger.is_gone(lease_id):
                    raise LeaseNotFound(f"lease {lease_id!r} was already released",
                                        {"lease-id": lease_id})
                if not self.ledger.is_ready():
                    self.ensure_ready()
                    continue
                raise LeaseNotFound.of(lease_id)
            lease = json.loads(raw)
            holder = lease["status"]["owner"]
            if owner is not None and holder != owner:
                raise NotOwner.of(lease_id, owner, holder)
            leased = parse_rfc3339(lease["status"]["leased-at"])
            current = parse_rfc3339(lease["status"]["expires-at"])
            new = max(current, min(time.time() + req.ttl,
                                   leased + self.settings.max_lease_lifetime))
            lease["status"]["expires-at"] = rfc3339(new)
            status, seq, new_raw = self.ledger.swap(lease_id, raw, lease, new)
            if status == "ok":
                self._journal(seq, [new_raw], [])
                return lease
            if status == "unready":
                self.ensure_ready()
        raise LeaseNotFound.of(lease_id)

    # queries ---------------------------------------------------------------------------
    def show_pools(self) -> list[dict[str, Any]]:
        pools = self.pools.current()
        _, fleet = self.fleet(fresh=True)
        by_pool: dict[str, list[dict[str, Any]]] = {}
        for lease in self.ledger.leases():
            by_pool.setdefault(lease["status"]["pool"], []).append(lease)
        out = [pool_view(p, fleet, by_pool.get(p.name, [])) for p in pools.values()]
        for name in sorted(set(by_pool) - set(pools)):
            leases = by_pool[name]
            out.append({"spec": {"name": name, "vcenter": leases[0]["status"]["vcenter"]},
                        "status": {"removed": True, "leases": leases}})
        return out

    def list_leases(self, owner: Any = None, pool: Any = None) -> list[dict[str, Any]]:
        for name, value in (("owner", owner), ("pool", pool)):
            if value is not None:
                text_arg(value, name, required=False)
        leases = self.ledger.leases(owner or None)
        if pool:
            leases = [x for x in leases if x["status"]["pool"] == pool]
        return sorted(leases, key=lambda x: (x["status"]["leased-at"], x["metadata"]["name"]))

    def estimate(self, raw: Any) -> dict[str, Any]:
        req = self.parse(raw, "estimate")
        _, fleet = self.fleet(fresh=True)
        return estimate(req, fleet)

    def rollup(self, retention: float) -> dict[str, Any]:
        """A usage snapshot per pool and per vCenter, appended to the bounded history."""
        pools = self.show_pools()
        waiting = self.ledger.waiting_count()
        snap: dict[str, Any] = {"at": rfc3339(time.time()), "ts": time.time(),
                                "waiting": waiting, "pools": {}, "vcenters": {}}
        totals: dict[str, list[float]] = {}
        for p in pools:
            spec, st = p["spec"], p["status"]
            if st.get("removed"):
                continue
            snap["pools"][spec["name"]] = {
                "vcenter": spec["vcenter"], "vcpus": st["vcpus-usage"],
                "memory": st["memory-usage"], "storage": st["datastore-usage"],
                "networks": st["network-usage"], "leases": st["lease-count"],
            }
            t = totals.setdefault(spec["vcenter"], [0.0] * 9)
            cap = st["vcpus-capacity"]
            for i, (used, total) in enumerate((
                (st["vcpus-used"], cap), (st["memory-used"], spec["memory"]),
                (st["storage-used"], spec["storage"]),
                (st["networks-used"], len(spec["networks"])),
            )):
                t[2 * i] += used
                t[2 * i + 1] += total
            t[8] += st["lease-count"]
        for vc, t in totals.items():
            snap["vcenters"][vc] = {
                "vcpus": round(t[0] / t[1], 4) if t[1] else 0,
                "memory": round(t[2] / t[3], 4) if t[3] else 0,
                "storage": round(t[4] / t[5], 4) if t[5] else 0,
                "networks": round(t[6] / t[7], 4) if t[7] else 0,
                "leases": int(t[8]),
            }
        self.ledger.append_usage(snap, retention)
        return snap

    def usage_history(self, pool: Any = None, since: Any = None) -> list[dict[str, Any]]:
        if pool is not None:
            text_arg(pool, "pool", required=False)
        seconds = parse_duration(since if since is not None else "24h", "since",
                                 maximum=366 * 86400)
        rows = self.ledger.usage_history(time.time() - seconds)
        if pool:
            rows = [{"at": r["at"], "ts": r["ts"], "waiting": r["waiting"],
                     "pools": {pool: r["pools"][pool]}} for r in rows if pool in r["pools"]]
        return rows

    def waiting(self) -> list[dict[str, Any]]:
        out = []
        for position, (_, record) in enumerate(self.ledger.waiters(), start=1):
            out.append({"position": position,
                        "request-id": record["request"].get("request-id", ""),
                        "task-id": record["task"],
                        "request": record["request"], "since": rfc3339(record["since"]),
                        "deadline": rfc3339(record["deadline"])})
        return out


def _why_gone(status: dict[str, Any]) -> str:
    """How a lease that a request-id was answered with went away."""
    if status.get("state") == "released":
        how = "reaped (expired)" if status.get("release-reason") == "expired" else "released"
        return f"{how} at {status.get('released-at') or 'an unknown time'}"
    return "released (no record of it is kept any more)"


def _shown_key(position: int, reasons: dict[str, str]) -> tuple[int, str]:
    """What a parked task last showed, so its WAITING state is only rewritten on change."""
    return position, json.dumps(reasons, sort_keys=True)


def _id_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise InvalidRequest.of("lease_ids", "must be a list of lease id strings")
    if len(value) > 10000:
        raise InvalidRequest.of("lease_ids", "at most 10000 ids at once")
    for x in value:
        text_arg(x, "lease_ids", max_len=128)
    return value


def pool_view(pool: Pool, fleet: Fleet, leases: list[dict[str, Any]]) -> dict[str, Any]:
    """A pool in the upstream /show-pools shape, usage as fractions 0..1."""
    u = fleet.used(pool.name)
    nets_used = sum(1 for n in pool.networks if pool.net_key(n) in fleet.used_nets)
    return {
        "spec": pool.spec(),
        "status": {
            "vcpus-usage": round(u.vcpus / pool.vcpu_capacity, 4),
            "memory-usage": round(u.memory / pool.memory, 4),
            "datastore-usage": round(u.storage / pool.storage, 4),
            "network-usage": round(nets_used / len(pool.networks), 4) if pool.networks else 0,
            "vcpus-capacity": pool.vcpu_capacity,  # placeable: floor(vcpus × overcommit)
            "vcpus-used": u.vcpus, "memory-used": u.memory, "storage-used": u.storage,
            "networks-used": nets_used, "lease-count": u.leases,
            "leases": leases,
        },
    }
