"""Capacity, the service layer's face: what tasks, the HTTP shim and the CLI call. It composes
the modules of this package, each doing one job (listed in __init__.py), and holds the one lock
that makes changes one at a time."""

from __future__ import annotations

import threading
from typing import Any

from ..core.errors import InvalidRequest, VcmError
from ..core.fleet import Fleet
from ..core.labels import matches, narrows, parse_selector
from ..core.lease import Lease
from ..core.parsing import text_arg
from ..ports import Ledger, Mirror, Pools, Replies
from ..settings import Settings
from .adopting import Adopting
from .placing import REFUSALS, Placing
from .queries import Queries
from .recovery import Recovery
from .releasing import Releasing, parse_lease_ids
from .usage_cache import UsageCache
from .waiting import Parked, WaitingLine


class Capacity:
    def __init__(self, ledger: Ledger, pools: Pools, settings: Settings,
                 replies: Replies | None = None, mirror: Mirror | None = None,
                 writer: bool = True) -> None:
        self.ledger = ledger
        self.pools = pools
        self.settings = settings
        self.replies = replies
        self.mirror = mirror
        self.writer = writer
        self.lock = threading.RLock()
        self.cache = UsageCache(ledger, pools, writer, lambda: self.ensure_ready(),
                                settings.inventory_stale, settings.health_refresh)
        self.recovery = Recovery(ledger, mirror, writer, self.lock, self.cache.forget)
        self.placing = Placing(ledger, pools, settings, self.cache, self.recovery)
        self.adopting = Adopting(ledger, pools, settings, self.cache, self.recovery,
                                 self.placing)
        self.line = WaitingLine(ledger, pools, settings, self.cache, self.placing, replies)
        self.releasing = Releasing(ledger, settings, self.cache, self.recovery)
        self.queries = Queries(ledger, pools, self.cache, self.placing)
        self._pools_generation = pools.generation

    # the seq bookkeeping (the publisher reads it) -------------------------------------------
    @property
    def last_seq(self) -> int:
        return self.recovery.last_seq

    @property
    def restarts(self) -> int:
        return self.recovery.restarts

    def covered(self) -> bool:
        return self.recovery.covered()

    def ensure_ready(self, check_mirror: bool = False) -> bool:
        return self.recovery.ensure_ready(check_mirror)

    def fleet(self, fresh: bool = False, indexed: bool = False) -> tuple[int, Fleet]:
        return self.cache.fleet(fresh, indexed)

    # changes ---------------------------------------------------------------------------------
    def acquire(self, raw: Any, task_id: str, owner: str = "anonymous"
                ) -> list[dict[str, Any]] | Parked:
        with self.lock:
            return self.line.acquire(raw, task_id, owner)

    def acquire_batch(self, raws: Any, task_id: str,
                      owner: str = "anonymous") -> list[list[dict[str, Any]]]:
        try:
            reqs = self.placing.parse_batch(raws, task_id, owner)
        except REFUSALS as exc:
            return self.placing.refuse(task_id, exc)
        with self.lock:
            return self.placing.acquire_batch(reqs, task_id, self.line)

    def adopt(self, raw: Any, holdings: Any) -> list[dict[str, Any]]:
        """Record what a lease granted elsewhere holds, under its request-id (adopting.py)."""
        with self.lock:
            return self.adopting.adopt(raw, holdings)

    def refuse(self, task_id: str, exc: VcmError) -> list[list[dict[str, Any]]]:
        """Refuse an acquire's task with `exc`, or answer what a copy of it was answered
        first (see Placing.refuse)."""
        return self.placing.refuse(task_id, exc)

    def release(self, lease_ids: Any = None, owner: Any = None, selector: Any = None,
                reason: str = "released") -> list[str]:
        """Release by lease id, by owner, or by label selector (every matching lease, of
        `owner` when given, in one atomic step)."""
        ids = parse_lease_ids(lease_ids)
        if owner is not None:
            owner = text_arg(owner, "owner")
        wanted = parse_selector(selector) if selector is not None else ()
        if wanted and ids:
            raise InvalidRequest.of("selector", "give lease ids or a selector, not both")
        if wanted and not owner and not narrows(wanted):
            raise InvalidRequest.of("selector", "without an owner it must name a value a lease "
                                    "must have (k=v or k in (...))")
        if not ids and not owner and not wanted:
            raise InvalidRequest.of("lease_ids", "give lease ids, an owner or a selector")
        with self.lock:
            if wanted:  # labels never change on a lease: the ids read now still match
                ids = [x.id for x in map(Lease.from_wire, self.ledger.leases(owner or None))
                       if matches(wanted, x.labels)]
                if not ids:
                    return []
            res = self.releasing.release(ids, owner, reason)
            if (res.leases or res.dropped) and res.waiting:
                self.line.serve()  # never raises: a failure there is the line's, not ours
        released = [x.id for x in res.leases] + res.already + res.dropped
        return [i for i in ids if i in released] if ids else released

    def reap_expired(self) -> list[str]:
        """Release every lease past expires-at with reason `expired`; waiters get the room."""
        with self.lock:
            reaped = self.releasing.reap()
            self.line.serve()
        return reaped

    def renew(self, lease_id: Any, owner: Any = None, ttl: Any = None) -> dict[str, Any]:
        return self.releasing.renew(lease_id, owner, ttl)

    # the waiting line ----------------------------------------------------------------------
    def serve_waiters(self) -> int:
        with self.lock:
            return self.line.serve()

    def serving_owed(self) -> bool:
        """A serve or an expiry failed part-way: the worker's housekeeping serves the line
        again (waiting.py)."""
        return self.line.owed

    def cancel_wait(self, task_id: Any) -> bool:
        with self.lock:
            return self.line.cancel(task_id)

    def expire_waiters(self) -> int:
        with self.lock:  # never between a serve's commit and its answer to the twins
            return self.line.expire_due()

    def pools_changed(self) -> bool:
        self.pools.current()
        if self.pools.generation != self._pools_generation:
            self._pools_generation = self.pools.generation
            return True
        return False

    # queries -------------------------------------------------------------------------------
    def show_pools(self) -> list[dict[str, Any]]:
        return self.queries.show_pools()

    def list_leases(self, owner: Any = None, pool: Any = None, after: Any = None,
                    limit: Any = None, selector: Any = None) -> list[dict[str, Any]]:
        """The leases, in the wire shape (for tasks, the shim and the CLI)."""
        return [x.to_wire() for x in self.queries.leases(owner, pool, after, limit, selector)]

    def leases(self, selector: Any = None) -> list[Lease]:
        """list_leases, typed: for the service's own jobs (the namespace pruning)."""
        return self.queries.leases(selector=selector)

    def estimate(self, raw: Any) -> dict[str, Any]:
        return self.queries.estimate(raw)

    def rollup(self, retention: float) -> dict[str, Any]:
        return self.queries.rollup(retention)

    def usage_history(self, pool: Any = None, since: Any = None, after: Any = None,
                      limit: Any = None) -> list[dict[str, Any]]:
        return self.queries.usage_history(pool, since, after, limit)

    def waiting(self) -> list[dict[str, Any]]:
        return self.line.listing()
