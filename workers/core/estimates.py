"""Estimates: how many more of a request fit now, per pool and in all, and what stops the
next one. Read-only: nothing here changes the fleet it is given."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from .errors import NoCapacity
from .fleet import Fleet
from .models import Pool, Request
from .placement import place
from .reasons import eligibility, shortfall, sick


def fits_alone(req: Request, pool: Pool, fleet: Fleet) -> tuple[int, str]:
    """How many more of `req` this pool alone could take now, and what stops the next one."""
    why = eligibility(req, pool) or sick(pool, fleet)
    if why:
        return 0, why
    used = fleet.used(pool.name)
    limits = []  # a network-only request asks for no vCPUs or memory
    if req.vcpus:
        limits.append(((pool.vcpu_capacity - used.vcpus) // req.vcpus, "vcpus"))
    if req.memory:
        limits.append(((pool.memory - used.memory) // req.memory, "memory"))
    if req.storage:
        limits.append(((pool.storage - used.storage) // req.storage, "storage"))
    if req.networks:
        free = fleet.free_count(pool, req.network_type)
        limits.append((free // req.networks, f"networks of type {req.network_type}"))
    count, dim = min(limits)
    count = max(count, 0)
    after = replace(fleet, usage={**fleet.usage, pool.name: used.plus(
        req.vcpus * count, req.memory * count, req.storage * count, count)}, free=None)
    after.used_nets = set(fleet.used_nets) | {
        pool.net_key(n) for n in fleet.free_networks(pool, req.network_type)[
            : req.networks * count]}
    return count, shortfall(req, pool, after) or f"{dim} exhausted"


def max_groups(per_vcenter: Iterable[int], n: int) -> int:
    """Largest k such that k groups of n distinct vCenters fit: sum(min(c_v, k)) >= n*k."""
    caps = [c for c in per_vcenter if c > 0]
    lo, hi = 0, sum(caps) // max(n, 1)
    while lo < hi:
        k = (lo + hi + 1) // 2
        if sum(min(c, k) for c in caps) >= n * k:
            lo = k
        else:
            hi = k - 1
    return lo


def estimate(req: Request, fleet: Fleet) -> dict:
    """How many more such requests fit now, per pool, and what stops the next one."""
    pools: dict[str, dict] = {}
    per_vcenter: dict[str, int] = {}
    for pool in fleet.pools.values():
        count, limit = fits_alone(req, pool, fleet)
        pools[pool.name] = {"vcenter": pool.vcenter, "fits": count, "next-blocked-by": limit}
        per_vcenter[pool.vcenter] = per_vcenter.get(pool.vcenter, 0) + count
    if req.pools:  # P distinct pools per request (the vCenter cap is not counted here)
        total = max_groups([p["fits"] for p in pools.values()], req.pools)
    else:
        total = max_groups(per_vcenter.values(), req.vcenters)
    if total == 0:
        try:
            place(req, fleet)
        except NoCapacity as exc:
            blocked = exc.message
        else:  # pragma: no cover - consistent with the counts above
            blocked = ""
    else:
        blocked = (f"after {total} more, no pool would have room" if req.pool_count == 1 else
                   f"after {total} more, fewer than {req.pool_count} pools would have room"
                   if req.pools else
                   f"after {total} more, fewer than {req.vcenters} vCenters would have room")
    return {"request": req.spec(), "fits": total, "per-vcenter": per_vcenter, "pools": pools,
            "next-blocked-by": blocked}
