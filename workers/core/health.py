"""Live vCenter health per pool, computed from an inventory read of its vCenter. Pure: no I/O.

A pool is `degraded`, with a reason, when in its vCenter
- its datacenter, cluster, datastore or one of its port groups is gone;
- no host of its cluster is usable: connected, out of maintenance mode and not red with a
  configuration issue;
- its datastore is inaccessible, or has less free space than the pool's unleased storage budget
  (the budget minus the storage the ledger says is leased on the pool).
Otherwise it is `ok`. It is `unknown` when its vCenter was never read, or its last read is older
than the staleness limit (`effective`). Unknown never degrades a pool: placement treats only
`degraded` as a problem.

What the sync stores per vCenter (the `health` hash in Redis, see adapters/keys.py) is
`{"at": last successful read or null, "pools": {pool: {"state", "reason"}}, "error": null or why
the last attempt failed, "error-at": when, "login-at": when the session in use logged in}`.
A failed attempt keeps `at` and `pools` of the last successful read.

Sizes are in GB = 2**30 bytes, as budgets are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .models import Pool

GIB = 1 << 30
OK, DEGRADED, UNKNOWN = "ok", "degraded", "unknown"
STATES = (OK, DEGRADED, UNKNOWN)


# the inventory, as the adapter reads it --------------------------------------------------
@dataclass(frozen=True)
class Host:
    name: str
    connection: str = "connected"  # runtime.connectionState: connected, disconnected, notResponding
    maintenance: bool = False  # runtime.inMaintenanceMode
    status: str = "green"  # overallStatus: green, yellow, red, gray
    config_issues: tuple[str, ...] = ()  # configIssue, as messages
    cpu_usage_mhz: int | None = None  # summary.quickStats; None: not reported (unknown, not idle)
    memory_usage_mb: int | None = None

    def problem(self) -> str:
        """Why this host cannot run a pool's machines; "" when it can."""
        if self.connection != "connected":
            return f"{self.name} {self.connection}"
        if self.maintenance:
            return f"{self.name} in maintenance mode"
        if self.status == "red" and self.config_issues:
            return f"{self.name} red: {self.config_issues[0]}"
        return ""


@dataclass(frozen=True)
class Cluster:
    name: str
    hosts: tuple[Host, ...] = ()
    effective_cpu_mhz: int | None = None  # summary.effectiveCpu
    effective_memory_mb: int | None = None  # summary.effectiveMemory
    # read for discovery only
    cpu_threads: int = 0
    memory_bytes: int = 0
    datastores: tuple[str, ...] = ()  # datastores its hosts mount
    networks: tuple[str, ...] = ()  # networks its hosts reach

    @property
    def cpu_usage_mhz(self) -> int | None:
        """Σ of the hosts' quick stats; None if any host did not report them."""
        values = [h.cpu_usage_mhz for h in self.hosts]
        return None if any(v is None for v in values) else sum(v or 0 for v in values)

    @property
    def memory_usage_mb(self) -> int | None:
        values = [h.memory_usage_mb for h in self.hosts]
        return None if any(v is None for v in values) else sum(v or 0 for v in values)


@dataclass(frozen=True)
class Datastore:
    name: str
    capacity_bytes: int
    free_bytes: int
    accessible: bool = True


@dataclass(frozen=True)
class PortGroup:
    name: str
    vlan: int | None = None  # None: a trunk, a private VLAN, or not known
    distributed: bool = False
    uplink: bool = False  # a distributed switch's uplink port group: never a VM network


@dataclass(frozen=True)
class Datacenter:
    name: str
    clusters: Mapping[str, Cluster] = field(default_factory=dict)
    datastores: Mapping[str, Datastore] = field(default_factory=dict)
    port_groups: Mapping[str, PortGroup] = field(default_factory=dict)


@dataclass(frozen=True)
class Inventory:
    vcenter: str
    datacenters: Mapping[str, Datacenter] = field(default_factory=dict)


# health ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolHealth:
    state: str  # ok, degraded or unknown
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"state": self.state, "reason": self.reason}


UNKNOWN_HEALTH = PoolHealth(UNKNOWN, "vCenter not read")


def assess_pool(pool: Pool, inventory: Inventory, leased_storage: int | None) -> PoolHealth:
    """The pool's health in this inventory. `leased_storage`: GB leased on the pool (None: not
    known, so the free-space check is skipped). Every problem found is in the reason."""
    dc = inventory.datacenters.get(pool.datacenter)
    if dc is None:
        return PoolHealth(DEGRADED, f"datacenter {pool.datacenter!r} is gone")
    reasons: list[str] = []

    cluster = dc.clusters.get(pool.cluster)
    if cluster is None:
        reasons.append(f"cluster {pool.cluster!r} is gone")
    elif not cluster.hosts:
        reasons.append(f"cluster {pool.cluster!r} has no hosts")
    else:
        problems = [h.problem() for h in sorted(cluster.hosts, key=lambda h: h.name)]
        if all(problems):
            reasons.append(f"no usable host in cluster {pool.cluster!r} ("
                           + _listed(problems) + ")")

    datastore = dc.datastores.get(pool.datastore)
    if datastore is None:
        reasons.append(f"datastore {pool.datastore!r} is gone")
    elif not datastore.accessible:
        reasons.append(f"datastore {pool.datastore!r} is inaccessible")
    elif leased_storage is not None:
        unleased = max(0, pool.storage - leased_storage)
        if datastore.free_bytes < unleased * GIB:
            reasons.append(f"datastore {pool.datastore!r} has {_gb(datastore.free_bytes)} GB "
                           f"free, less than the {unleased} GB of storage budget not leased")

    gone = [n.port_group for n in pool.networks if n.port_group not in dc.port_groups]
    if gone:
        word = "port group" if len(gone) == 1 else "port groups"
        reasons.append(f"{word} {', '.join(map(repr, gone))} gone")

    return PoolHealth(DEGRADED, "; ".join(reasons)) if reasons else PoolHealth(OK)


def assess(pools: Iterable[Pool], inventory: Inventory,
           leased_storage: Mapping[str, int] | None) -> dict[str, PoolHealth]:
    """Health of the pools on `inventory.vcenter` (pools of other vCenters are left out).
    `leased_storage`: GB leased per pool name (a missing pool: none leased); None when the
    ledger could not say, which skips the free-space check."""
    return {
        p.name: assess_pool(p, inventory,
                            None if leased_storage is None else leased_storage.get(p.name, 0))
        for p in pools if p.vcenter == inventory.vcenter
    }


def as_json(pools: Mapping[str, PoolHealth]) -> dict[str, dict[str, str]]:
    """`pools` as stored: {pool: {"state", "reason"}}."""
    return {name: h.to_dict() for name, h in sorted(pools.items())}


def effective(health: Mapping[str, Any], now: float, stale: float) -> dict[str, PoolHealth]:
    """Pool name -> health, from the stored records (`Ledger.health()`: vcenter -> record).

    A vCenter whose last successful read is more than `stale` seconds old (or that was never
    read) makes its pools `unknown`, saying why. A pool in no record is absent: look it up with
    `pool_health`, which answers `unknown`. A record that cannot be understood counts as unread.
    If two records name a pool (it moved to another vCenter), the newer read wins.
    """
    out: dict[str, tuple[float, PoolHealth]] = {}
    for vcenter, record in sorted(health.items()):
        if not isinstance(record, Mapping):
            continue
        at = record.get("at")
        pools = record.get("pools")
        if not isinstance(pools, Mapping):
            continue
        error = record.get("error")
        # a time that is not finite, or ahead of this clock by more than a minute (skew, a bad
        # record), is no read at all: it would otherwise never go stale
        read = (isinstance(at, int | float) and not isinstance(at, bool)
                and math.isfinite(at) and at <= now + 60)
        age = max(now - at, 0.0) if read else None
        for name, entry in pools.items():
            if age is None or age > stale:
                why = (f"last read of {vcenter} {ago(age)}" if age is not None
                       else f"{vcenter} never read")
                if error:
                    why += f"; {error}"
                h = PoolHealth(UNKNOWN, why)
            elif isinstance(entry, Mapping) and entry.get("state") in STATES:
                h = PoolHealth(str(entry["state"]), str(entry.get("reason") or ""))
            else:
                h = PoolHealth(UNKNOWN, f"unreadable health record for {vcenter}")
            when = at if read else float("-inf")
            if name not in out or when > out[name][0]:
                out[name] = (when, h)
    return {name: h for name, (_, h) in sorted(out.items())}


def pool_health(effective_health: Mapping[str, PoolHealth], pool: str) -> PoolHealth:
    """A pool's health from `effective(...)`; `unknown` when its vCenter was never read."""
    return effective_health.get(pool, UNKNOWN_HEALTH)


def degraded(effective_health: Mapping[str, PoolHealth]) -> dict[str, str]:
    """Pool -> reason, for the degraded pools only (ok and unknown pools are left out)."""
    return {n: h.reason for n, h in effective_health.items() if h.state == DEGRADED}


def _listed(items: list[str], most: int = 5) -> str:
    more = len(items) - most
    return ", ".join(items[:most]) + (f", … {more} more" if more > 0 else "")


def _gb(size: int) -> str:
    value = size / GIB
    return f"{value:.0f}" if value.is_integer() else f"{value:.1f}"


def ago(seconds: float) -> str:
    """A short age: 12s ago, 5m ago, 2.5h ago."""
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"
