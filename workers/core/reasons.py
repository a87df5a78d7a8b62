"""Why a pool may not take a request: not eligible, degraded, or short of room; and how far
it is from fitting. Each reason is the text a refusal shows for that pool."""

from __future__ import annotations

from .fleet import Fleet
from .models import Pool, Request
from .taints import untolerated


def eligibility(req: Request, pool: Pool) -> str | None:
    """Why a pool may not take this request at all (independent of usage), or None."""
    if req.required_pool and pool.name != req.required_pool:
        return f"not the required pool {req.required_pool!r}"
    if pool.no_schedule:
        return "cordoned (no-schedule)"
    if pool.exclude and req.required_pool != pool.name:
        return "excluded (name it in required-pool to use it)"
    repels = untolerated(pool.taints, req.tolerations, "NoSchedule")
    if repels:
        return f"tainted {repels[0]} (not tolerated)"
    labels = pool.label_map()
    for key, value in req.pool_selector:
        if labels.get(key) != value:
            return f"labels do not match pool-selector {key}={value}"
    return None


def shortfall(req: Request, pool: Pool, fleet: Fleet) -> str | None:
    """Why the pool cannot take one more of this request now, or None if it fits."""
    used = fleet.used(pool.name)
    problems = []
    for name, need, free in (
        ("vcpus", req.vcpus, pool.vcpu_capacity - used.vcpus),
        ("memory", req.memory, pool.memory - used.memory),
        ("storage", req.storage, pool.storage - used.storage),
    ):
        if need > free:
            problems.append(f"insufficient {name} (need {need}, free {max(free, 0)})")
    install = req.install  # networks its install holds are open to it too
    if req.networks and not fleet.has_free_networks(pool, req.network_type, req.networks,
                                                    install):
        # one lease takes one network per VLAN: with more than one asked, VLANs count
        free = fleet.free_count(pool, req.network_type, install)
        vlans = (len(fleet.free_vlans(pool, req.network_type, install)) if req.networks > 1
                 else free)
        problems.append(f"insufficient networks of type {req.network_type} (need "
                        f"{req.networks}, free {free})" if vlans == free else
                        f"insufficient networks of type {req.network_type} (need "
                        f"{req.networks} on distinct VLANs, free {vlans} VLANs)")
    return ", ".join(problems) or None


def sick(pool: Pool, fleet: Fleet) -> str | None:
    """Why the pool's vCenter says it cannot take new leases now (live health), or None."""
    why = fleet.degraded.get(pool.name)
    return f"degraded: {why}" if why is not None else None


def why_not(req: Request, pool: Pool, fleet: Fleet) -> str | None:
    return eligibility(req, pool) or sick(pool, fleet) or shortfall(req, pool, fleet)


def deficit(req: Request, pool: Pool, fleet: Fleet) -> float:
    """How far the pool is from fitting req: the sum of missing fractions (0 when it fits)."""
    used = fleet.used(pool.name)
    missing = (max(0, req.vcpus - (pool.vcpu_capacity - used.vcpus)) / pool.vcpu_capacity
               + max(0, req.memory - (pool.memory - used.memory)) / pool.memory
               + max(0, req.storage - (pool.storage - used.storage)) / pool.storage)
    if req.networks:
        free = fleet.free_count(pool, req.network_type)
        total = max(len(pool.networks_of(req.network_type)), 1)
        missing += max(0, req.networks - free) / total
    return missing
