"""The ledger's usage (per-pool counters and port groups in use), cached between decisions.

The cache is valid while the ledger is at `version`: a decision made on it is committed with
that version, and the commit refuses if the ledger moved. So a decision reads Redis only after
a conflict, a restart, or a change made elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..core.errors import LedgerUnready
from ..core.fleet import Fleet, FreeNets, Holdings, Usage, UsedNets
from ..core.health import degraded, effective
from ..core.lease import Lease
from ..core.models import Request
from ..ports import Ledger, Pools


class UsageCache:
    def __init__(self, ledger: Ledger, pools: Pools, writer: bool,
                 ensure_ready: Callable[[], Any], health_stale: float = 1800.0,
                 health_refresh: float = 5.0) -> None:
        self.ledger = ledger
        self.pools = pools
        self.writer = writer
        self.ensure_ready = ensure_ready
        self.health_stale = health_stale
        # seconds between reads of the live health (VCM_HEALTH_REFRESH; the sync writes it
        # every few minutes)
        self.health_refresh = health_refresh
        self._health_read = float("-inf")
        self._degraded: dict[str, str] = {}
        self.health_records: dict[str, Any] = {}  # as last read (vCenter -> record)
        self.version = -1
        self._usage: dict[str, Usage] = {}
        self._nets = UsedNets()
        self._free: FreeNets | None = None  # free port groups of self._nets, when built
        self._holdings = Holdings(ledger.holdings)  # what each install holds, read on use

    def fleet(self, fresh: bool = False, indexed: bool = False) -> tuple[int, Fleet]:
        """The cached usage as a Fleet; `indexed` adds the free port-group aggregate (kept
        up to date with the cache, rebuilt when the usage is re-read or the pools change)."""
        if fresh or self.version < 0:
            self._free = None
            try:
                self.version, self._usage, nets = self.ledger.usage(self.writer)
            except LedgerUnready:
                self.ensure_ready()
                self.version, self._usage, nets = self.ledger.usage()
            self._nets = UsedNets(nets)  # placed() and released() change it in place
            self._holdings = Holdings(self.ledger.holdings)
        pools = self.pools.current()
        if self._free is not None and self._free.pools is not pools:
            self._free = None
        if indexed and self._free is None:
            self._free = FreeNets(pools, self._nets)
        return self.version, Fleet(pools, self._usage, self._nets, self._free,
                                   self.degraded(fresh), self._holdings)

    def degraded(self, fresh: bool = False) -> dict[str, str]:
        """Pools the live vCenter health calls degraded: read as data from the ledger, at
        most every `health_refresh` seconds; a failed read keeps the last one (health never
        blocks placement)."""
        now = time.monotonic()
        if fresh or now - self._health_read >= self.health_refresh:
            self._health_read = now
            try:
                self.health_records = self.ledger.health()
                self._degraded = degraded(effective(self.health_records, time.time(),
                                                    self.health_stale))
            except Exception:  # noqa: BLE001 - unreadable health is unknown, never an error
                pass
        return self._degraded

    def forget(self) -> None:
        self.version = -1

    def placed(self, fleet: Fleet, reqs: list[Request], plan: list, version: int) -> None:
        """A commit at `version` placed `plan` for `reqs` on `fleet` (this cache)."""
        for req, placements in zip(reqs, plan, strict=True):
            fleet.apply(req, placements)
        self.version = version

    def released(self, old_version: int, leases: list[Lease]) -> None:
        """A release moved the ledger from `old_version`: follow it, or re-read if the cache
        was not at that version."""
        if not leases:
            return
        if old_version != self.version:
            self.forget()
            return
        fleet = Fleet({}, self._usage, self._nets, self._free)  # the cache, as a Fleet
        keys = sorted({k for lease in leases for k in lease.port_groups})
        shared = self.ledger.nets_held(keys)  # still held by others of their install
        for lease in leases:
            fleet.remove(lease.pool, lease.vcpus, lease.memory, lease.storage,
                         [k for k in lease.port_groups if k not in shared])
            self._holdings.remove(lease.install, lease.port_groups, lease.vlans)
        self.version = old_version + 1
