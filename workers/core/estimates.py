"""Estimates: how many more of a request fit now, per pool and in all, and what stops the
next one. Read-only: nothing here changes the fleet it is given."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import replace

from .errors import NoCapacity
from .fleet import Fleet, UsedNets
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
        limits.append((network_room(fleet, [pool], req), f"networks of type {req.network_type}"))
    count, dim = min(limits)
    count = max(count, 0)
    after = replace(fleet, usage={**fleet.usage, pool.name: used.plus(
        req.vcpus * count, req.memory * count, req.storage * count, count)}, free=None)
    after.used_nets = UsedNets(fleet.used_nets)
    after.used_nets.update(_taken_by(fleet, pool, req, count))
    return count, shortfall(req, pool, after) or f"{dim} exhausted"


def network_room(fleet: Fleet, pools: Iterable[Pool], req: Request) -> int:
    """How many leases of `req.networks` networks each (on distinct VLANs) the free networks
    of these pools could give, a network shared by several of them counted once."""
    per_vlan: dict[Hashable, set[str]] = {}
    for pool in pools:
        for n in fleet.free_networks(pool, req.network_type):
            key = pool.net_key(n)
            per_vlan.setdefault(n.vlan_token(pool.vcenter), set()).add(key)
    return max_groups([len(keys) for keys in per_vlan.values()], req.networks)


def _taken_by(fleet: Fleet, pool: Pool, req: Request, count: int) -> list[str]:
    """The networks `count` more such leases would take in this pool, one VLAN each per
    lease (for what stops the next one)."""
    left: dict[Hashable, list[str]] = {}
    for n in fleet.free_networks(pool, req.network_type):
        key = pool.net_key(n)
        left.setdefault(n.vlan_token(pool.vcenter), []).append(key)
    taken: list[str] = []
    for _ in range(count):
        fullest = sorted(left, key=lambda t: -len(left[t]))[: req.networks]
        taken.extend(left[t].pop() for t in fullest if left[t])
        left = {t: keys for t, keys in left.items() if keys}
    return taken


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
    taking: dict[str, list[Pool]] = {}  # vCenter -> its pools that could take one more
    for pool in fleet.pools.values():
        count, limit = fits_alone(req, pool, fleet)
        pools[pool.name] = {"vcenter": pool.vcenter, "fits": count, "next-blocked-by": limit}
        per_vcenter[pool.vcenter] = per_vcenter.get(pool.vcenter, 0) + count
        if count:
            taking.setdefault(pool.vcenter, []).append(pool)
    room = {}
    if req.networks:  # pools of one vCenter may share networks: each serves one install
        room = {vc: network_room(fleet, ps, req) for vc, ps in taking.items()}
        per_vcenter = {vc: min(n, room.get(vc, 0)) for vc, n in per_vcenter.items()}
    if req.pools:  # P distinct pools per request (the vCenter cap is not counted here)
        total = max_groups([p["fits"] for p in pools.values()], req.pools)
        if req.networks:  # each request needs its networks on some vCenter
            total = min(total, sum(room.values()))
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
