"""Placing: parse a request, decide on the cached usage, commit in one Lua script, answer.

A decision is pure (`core.placement`); the commit re-checks it inside Redis against the ledger
version it was based on, so a stale decision is retried on fresh data and can never
over-allocate. A known (owner, request-id) answers with its leases instead of placing again.

A task id is answered once: its answer (leases or a refusal) is recorded with the grant, in
the commit, or in place of one (first answer wins), and every copy of the task (sent again,
delivered again) gets that answer and is never placed."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, Protocol

from ..core.errors import (
    ERRORS,
    InvalidRequest,
    LeaseNotFound,
    LedgerUnready,
    NoCapacity,
    VcmError,
    WaitTimeout,
)
from ..core.fleet import Fleet
from ..core.grants import make_leases
from ..core.lease import Lease
from ..core.models import Request
from ..core.parsing import MAX_INT, MAX_POOLS, parse_request
from ..core.placement import place_batch
from ..core.possible import check_possible
from ..ports import Ledger, Pools
from ..settings import Settings
from .recovery import Recovery
from .usage_cache import UsageCache

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 50
Leases = list[dict[str, Any]]
# what acquire answers instead of leases; each is recorded as the task's answer
REFUSALS = (InvalidRequest, NoCapacity, WaitTimeout, LeaseNotFound)


class Queued(Exception):
    """The request is already waiting in line (sent again): join it there."""


class Line(Protocol):
    """What a decision keeps for the waiting line, asked of the caller's line (waiting.py)."""

    empty: bool  # nobody was seen waiting at the last look (the commit re-checks)

    def held(self, fleet: Fleet, skip: str = "") -> dict[str, str]:
        """Pools kept for the head of the line on `fleet` (none when nobody waits)."""
        ...


class Settled(Exception):
    """A waiter being served whose every task was answered otherwise (a copy of the task that
    asked for another request was granted or refused): it is never granted, it leaves the
    line."""


class Placing:
    def __init__(self, ledger: Ledger, pools: Pools, settings: Settings, cache: UsageCache,
                 recovery: Recovery) -> None:
        self.ledger = ledger
        self.pools = pools
        self.settings = settings
        self.cache = cache
        self.recovery = recovery
        self._checked_pools: object = None  # the pools self._checked was computed for
        self._checked: dict[tuple, tuple] = {}  # request shape -> () or InvalidRequest args

    def parse(self, raw: Any, default_id: str, owner: str = "anonymous",
              where: str = "", granted: bool = False) -> Request:
        """The request, refused when the pools could never hold it. `granted`: a request-id
        the ledger granted before is parsed whatever the pools say now (a pool removed since
        while it still holds its leases) and whatever its `pools` (more than MAX_POOLS), so
        that placing answers it with its leases."""
        s = self.settings

        def parsed(max_pools: int = MAX_POOLS) -> Request:
            return parse_request(raw, default_owner=owner, default_request_id=default_id,
                                 default_ttl=s.lease_ttl, max_ttl=s.max_lease_lifetime,
                                 max_pools=max_pools, where=where)

        try:
            req = parsed()
        except InvalidRequest as exc:
            if not granted or exc.field != (f"{where}.pools" if where else "pools"):
                raise
            req = parsed(MAX_INT)  # the rest of it checked as ever
            if self.ledger.granted_at([req.key])[1][0] is None:
                raise exc from None
            return req
        try:
            self._check_possible(req)
        except InvalidRequest:
            if not granted or self.ledger.granted_at([req.key])[1][0] is None:
                raise
        return req

    def _check_possible(self, req: Request) -> None:
        """check_possible, remembered per request shape until the pools change."""
        pools = self.pools.current()
        if pools is not self._checked_pools or len(self._checked) > 4096:
            self._checked_pools, self._checked = pools, {}
        shape = (req.vcpus, req.memory, req.storage, req.vcenters, req.pools, req.networks,
                 req.network_type, req.required_pool, req.pool_selector, req.tolerations)
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

    def acquire_batch(self, reqs: list[Request], task_id: str, line: Line) -> list[Leases]:
        """All the parsed requests' leases, or none (see parse_batch)."""
        try:
            return self.place(reqs, line, task=task_id)
        except Queued as queued:  # a batch never waits: one of its requests waits in line
            return self.refuse(task_id, _in_line(reqs, str(queued)))
        except REFUSALS as exc:
            return self.refuse(task_id, exc)

    def refuse(self, task_id: str, exc: VcmError) -> list[Leases]:
        """Refuse a task with `exc`, for it and every copy of it: raises `exc`, or the answer
        a copy of the task was given first (its leases, when a copy was granted meanwhile)."""
        if task_id:
            earlier = self.ledger.answer_once(task_id, exc.to_dict())
            if earlier is not None:
                return self.replay(earlier)
        raise exc

    def replay(self, answer: dict[str, Any]) -> list[Leases]:
        """The answer a task was given, for a copy of it: its leases (an error naming those
        that are gone), or its refusal raised again."""
        if "granted" in answer:
            return self.answer_with(answer["request-ids"], answer["granted"])
        cls = ERRORS.get(answer.get("error", ""), NoCapacity)
        raise cls(answer.get("message", ""), answer.get("details") or {})

    def parse_batch(self, raws: Any, task_id: str, owner: str = "anonymous") -> list[Request]:
        if not isinstance(raws, list) or not raws:
            raise InvalidRequest.of("requests", "must be a non-empty list of requests")
        if len(raws) > 1000:
            raise InvalidRequest.of("requests", "at most 1000 requests in one batch")
        base = task_id or uuid.uuid4().hex
        reqs = [self.parse(r, f"{base}-{i}", owner, where=f"requests[{i}]", granted=True)
                for i, r in enumerate(raws)]
        keys = [r.key for r in reqs]
        dupes = sorted(r.request_id for r in reqs if keys.count(r.key) > 1)
        if dupes:
            raise InvalidRequest.of("request-id", f"{dupes[0]!r} appears twice in the batch "
                                    "for the same owner")
        return reqs

    def place(self, reqs: list[Request], line: Line, granted: str = "",
              held: dict[str, str] | None = None, since: float | None = None,
              task: str = "") -> list[Leases]:
        """Place all requests or none, commit atomically; a known request-id returns its leases.

        `line`: the caller's waiting line, which says what each attempt keeps for its head.
        `granted` is the request key of a waiter being served: it leaves the line in the commit.
        `held`: pools kept for the head of the line at the first attempt (asked of `line`
        when None).
        `task`: the task asking; answered before (this is a copy), it gets that answer.
        """
        for attempt in range(MAX_ATTEMPTS):
            version, fleet = self.cache.fleet(fresh=attempt > 0, indexed=True)
            # with nobody seen waiting, assume the line is still empty: the commit checks it
            lone = held is None and line.empty
            if lone:
                held = {}
            elif held is None or attempt > 0:
                held = line.held(fleet, skip=granted)
            try:
                plan = place_batch(reqs, fleet, self.settings.strategy, held)
            except NoCapacity:
                earlier = self.ledger.answered(task) if task else None
                if earlier is not None:
                    return self.replay(earlier)
                current, found = self.ledger.granted_at([r.key for r in reqs])
                existing = self.existing(reqs, found)
                if existing is not None:
                    return existing
                # never refuse on a stale cache: when the ledger moved, re-read it and try
                # again (a current cache is exact, so a refusal costs one read, not O(leases))
                if attempt == 0 and current != version:
                    self.cache.forget()
                    continue
                raise
            now = time.time()
            groups = {
                req.key: make_leases([uuid.uuid4().hex[:20] for _ in placements], req,
                                     [(p.pool, list(p.networks)) for p in placements], now)
                for req, placements in zip(reqs, plan, strict=True)
            }
            caps = {p.pool.name: (p.pool.vcpu_capacity, p.pool.memory, p.pool.storage)
                    for placements in plan for p in placements}
            latency = now - since if since is not None else None
            answer = {"granted": [[x["metadata"]["name"] for x in groups[r.key]] for r in reqs],
                      "request-ids": [r.request_id for r in reqs]}
            # networks already in use that the plan gives out: its install holds them
            held = [key for placements in plan for p in placements for n in p.networks
                    if not fleet.is_free(key := p.pool.net_key(n))]
            try:
                commit = self.ledger.commit(version, groups, caps,
                                            [granted] if granted else None, latency, lone=lone,
                                            tasks=[task] if task else None, answer=answer,
                                            held=held, guard=self.recovery.guard)
            except LedgerUnready:
                self.recovery.ensure_ready()
                log.info("ledger moved under us (unready), re-reading")
                self.cache.forget()
                continue
            match commit.status:
                case "answered" if commit.answer is not None:
                    return self.replay(commit.answer)
                case "ok":
                    self.cache.placed(fleet, reqs, plan, commit.version)
                    self.recovery.record(commit.seq, commit.raws, [])
                    return [groups[r.key] for r in reqs]
                case "dup":
                    existing = self.existing(reqs, [commit.existing[r.key] for r in reqs])
                    if existing is not None:
                        return existing
                    # released meanwhile: the next read sees it
                case "conflict":
                    raise InvalidRequest.of("request-id", f"{_rid(reqs, commit.detail)!r} was "
                                            "already used by another request of this owner")
                case "queued" if len(reqs) > 1:
                    raise _in_line(reqs, commit.detail)
                case "queued":
                    raise Queued(commit.detail)
                case "blocked":
                    raise self._blocked(commit.detail)
                case "settled":
                    raise Settled(commit.detail)
                case "gone":
                    raise WaitTimeout.of(0)  # the waiter left the line meanwhile (expired)
                case "waiters":  # someone joined the line: hold pools for them
                    line.empty = False
                case _:  # stale, over: decided on an old read
                    log.info("ledger moved under us (%s %s), re-reading", commit.status,
                             commit.detail)
                    self.cache.forget()
        raise NoCapacity.of({}, f"the ledger kept changing; gave up after {MAX_ATTEMPTS} tries")

    def _blocked(self, detail: str) -> NoCapacity:
        """The refusal while set-aside records whose holdings cannot be read are left: they
        could hold any pool's capacity or port group."""
        found = json.loads(detail)
        ids = sorted(str(x) for x in found.get("ids") or [])
        count = int(found.get("count") or len(ids))
        named = ", ".join(ids) + (f" and {count - len(ids)} more" if count > len(ids) else "")
        why = f"held back: set-aside record(s) {named} cannot be read"
        return NoCapacity.of(
            dict.fromkeys(self.pools.current(), why),
            f"nothing is placed while {count} set-aside record(s) whose holdings cannot be "
            f"read are left ({named}): once nothing runs on what they held, drop each with "
            "`vcm release <id>`")

    def existing(self, reqs: list[Request], found: list[list[str] | None] | None = None
                 ) -> list[Leases] | None:
        """The leases already granted to these request-ids, if all of them were granted
        (`found`: their lease ids, when already read). Leases that are gone since are an
        error naming them: they are never answered as a grant."""
        if found is None:
            found = self.ledger.granted_at([r.key for r in reqs])[1]
        if not all(ids is not None for ids in found):
            return None
        return self.answer_with([r.request_id for r in reqs], [ids or [] for ids in found])

    def answer_with(self, request_ids: list[str], found: list[list[str]]) -> list[Leases]:
        """The leases granted to these request-ids (their lease ids `found`); leases that are
        gone since are an error naming them, never answered as a grant."""
        answers = [self.ledger.get_many(ids) for ids in found]
        for request_id, leases in zip(request_ids, answers, strict=True):
            gone = {x.id: _why_gone(x) for x in map(Lease.from_wire, leases) if not x.active}
            if gone:
                raise LeaseNotFound(
                    f"request-id {request_id!r} was answered before with leases that are "
                    f"gone: {'; '.join(f'{k} {v}' for k, v in gone.items())}; "
                    "send a new request-id for new leases",
                    {"request-id": request_id, "gone": gone})
        self.recovery.record_existing([i for ids in found if ids for i in ids])
        return answers


def _rid(reqs: list[Request], key: str) -> str:
    return next(r.request_id for r in reqs if r.key == key)


def _in_line(reqs: list[Request], key: str) -> InvalidRequest:
    """The refusal of a batch holding a request that waits in line (a batch never waits)."""
    return InvalidRequest.of("request-id", f"{_rid(reqs, key)!r} is waiting in line: its task "
                             "gets the leases")


def _why_gone(lease: Lease) -> str:
    """How a lease that a request-id was answered with went away."""
    if lease.state == "released":
        how = "reaped (expired)" if lease.release_reason == "expired" else "released"
        return f"{how} at {lease.released_at or 'an unknown time'}"
    if lease.state == "set-aside":
        return "set aside (its record cannot be read; its capacity stays held)"
    return "released (no record of it is kept any more)"
