"""Placement: which pools get a request. Pure Python, deterministic for a given state.

least-utilized (default) ranks fitting pools by
    (load(vCenter), load(pool), pool name)        lowest first
where load(x) = (used vCPUs / placeable vCPUs + used memory / memory + used storage / storage) / 3
summed over every configured pool of the vCenter for load(vCenter). `pack` ranks the other way
round; `random` ranks by a hash of (request-id, pool name), so it is repeatable too.
`vcenters: N` takes the best-ranked pool of each of the N best-ranked distinct vCenters.
`pools: P` (with `vcenters: V`, at most V distinct vCenters) takes the best-ranked pool of new
vCenters first, then, once V vCenters are used, the best-ranked other pools of those vCenters.
A pool with a PreferNoSchedule taint the request does not tolerate ranks after every pool
without one; an untolerated NoSchedule taint keeps the request off the pool. A pool that its
vCenter's live health calls degraded takes no new leases (budgets still drive the spreading).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from .errors import NoCapacity
from .models import Network, Pool, Request
from .taints import untolerated

STRATEGIES = ("least-utilized", "pack", "random")


@dataclass(frozen=True)
class Usage:
    vcpus: int = 0
    memory: int = 0
    storage: int = 0
    leases: int = 0

    def plus(self, vcpus: int, memory: int, storage: int, leases: int = 1) -> Usage:
        return Usage(self.vcpus + vcpus, self.memory + memory, self.storage + storage,
                     self.leases + leases)


NO_USAGE = Usage()


@dataclass(frozen=True)
class Placement:
    pool: Pool
    networks: tuple[Network, ...]


class FreeNets:
    """Free port groups per (pool, network type), in configuration order: an aggregate kept
    up to date as port groups are taken and given back, so that placement does not scan the
    port groups in use (their number grows with the leases)."""

    def __init__(self, pools: Mapping[str, Pool], used: set[str]) -> None:
        self.pools = pools
        self._where: dict[str, list[tuple[tuple[str, str], int]]] = {}  # key -> (slot, index)
        self._free: dict[tuple[str, str], list[int]] = {}  # slot -> sorted free indices
        for pool in pools.values():
            for net_type in {n.type for n in pool.networks}:
                slot = (pool.name, net_type)
                free = self._free[slot] = []
                for i, (_, key) in enumerate(pool.keyed_networks(net_type)):
                    self._where.setdefault(key, []).append((slot, i))
                    if key not in used:
                        free.append(i)

    def take(self, key: str) -> None:
        for slot, i in self._where.get(key, ()):
            free = self._free[slot]
            j = bisect.bisect_left(free, i)
            if j < len(free) and free[j] == i:
                del free[j]

    def give(self, key: str) -> None:
        for slot, i in self._where.get(key, ()):
            free = self._free[slot]
            j = bisect.bisect_left(free, i)
            if j == len(free) or free[j] != i:
                free.insert(j, i)

    def count(self, pool: Pool, net_type: str) -> int:
        return len(self._free.get((pool.name, net_type), ()))

    def first(self, pool: Pool, net_type: str, n: int | None = None) -> list[Network]:
        pairs = pool.keyed_networks(net_type)
        return [pairs[i][0] for i in self._free.get((pool.name, net_type), ())[:n]]


@dataclass
class Fleet:
    """What placement needs to know: configured pools, per-pool usage and used port groups.
    `free`, when given, is the FreeNets aggregate of exactly these pools and used_nets."""

    pools: Mapping[str, Pool]
    usage: dict[str, Usage] = field(default_factory=dict)
    used_nets: set[str] = field(default_factory=set)
    free: FreeNets | None = None
    degraded: Mapping[str, str] = field(default_factory=dict)  # pool -> why (live health)

    def copy(self) -> Fleet:
        return Fleet(self.pools, dict(self.usage), set(self.used_nets), degraded=self.degraded)

    def used(self, name: str) -> Usage:
        return self.usage.get(name, NO_USAGE)

    def apply(self, req: Request, placements: Iterable[Placement]) -> None:
        for p in placements:
            self.usage[p.pool.name] = self.used(p.pool.name).plus(req.vcpus, req.memory,
                                                                   req.storage)
            for n in p.networks:
                key = p.pool.net_key(n)
                self.used_nets.add(key)
                if self.free is not None:
                    self.free.take(key)

    def remove(self, pool: str, vcpus: int, memory: int, storage: int,
               net_keys: Iterable[str]) -> None:
        """The reverse of apply, for one released lease."""
        self.usage[pool] = self.used(pool).plus(-vcpus, -memory, -storage, -1)
        for key in net_keys:
            self.used_nets.discard(key)
            if self.free is not None:
                self.free.give(key)

    def free_networks(self, pool: Pool, net_type: str, limit: int | None = None
                      ) -> list[Network]:
        """Free port groups of this type, in configuration order (the first `limit`)."""
        if self.free is not None:
            return self.free.first(pool, net_type, limit)
        used = self.used_nets
        free = [n for n, key in pool.keyed_networks(net_type) if key not in used]
        return free[:limit]

    def free_count(self, pool: Pool, net_type: str) -> int:
        if self.free is not None:
            return self.free.count(pool, net_type)
        used = self.used_nets
        return sum(1 for _, key in pool.keyed_networks(net_type) if key not in used)

    def has_free_networks(self, pool: Pool, net_type: str, need: int) -> bool:
        """Whether `need` port groups of this type are free (stops counting at `need`)."""
        if need <= 0:
            return True
        if self.free is not None:
            return self.free.count(pool, net_type) >= need
        used = self.used_nets
        for _, key in pool.keyed_networks(net_type):
            if key not in used:
                need -= 1
                if need == 0:
                    return True
        return False

    def vcenters(self) -> set[str]:
        return {p.vcenter for p in self.pools.values()}


def pool_load(pool: Pool, used: Usage) -> float:
    return (used.vcpus / pool.vcpu_capacity + used.memory / pool.memory
            + used.storage / pool.storage) / 3


def vcenter_loads(fleet: Fleet) -> dict[str, float]:
    caps: dict[str, list[int]] = {}
    used: dict[str, list[int]] = {}
    for pool in fleet.pools.values():
        c = caps.setdefault(pool.vcenter, [0, 0, 0])
        u = used.setdefault(pool.vcenter, [0, 0, 0])
        w = fleet.used(pool.name)
        c[0] += pool.vcpu_capacity
        c[1] += pool.memory
        c[2] += pool.storage
        u[0] += w.vcpus
        u[1] += w.memory
        u[2] += w.storage
    return {vc: sum(u / c for u, c in zip(used[vc], caps[vc], strict=True)) / 3 for vc in caps}


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
    if req.networks and not fleet.has_free_networks(pool, req.network_type, req.networks):
        problems.append(f"insufficient networks of type {req.network_type} (need "
                        f"{req.networks}, free {fleet.free_count(pool, req.network_type)})")
    return ", ".join(problems) or None


def sick(pool: Pool, fleet: Fleet) -> str | None:
    """Why the pool's vCenter says it cannot take new leases now (live health), or None."""
    why = fleet.degraded.get(pool.name)
    return f"degraded: {why}" if why is not None else None


def why_not(req: Request, pool: Pool, fleet: Fleet) -> str | None:
    return eligibility(req, pool) or sick(pool, fleet) or shortfall(req, pool, fleet)


def _rank_key(strategy: str, req: Request, vc_load: dict[str, float], fleet: Fleet):
    def key(pool: Pool) -> tuple:
        # an untolerated PreferNoSchedule taint: only when no other pool fits
        shunned = bool(untolerated(pool.taints, req.tolerations, "PreferNoSchedule"))
        load = pool_load(pool, fleet.used(pool.name))
        if strategy == "pack":
            return (shunned, -vc_load[pool.vcenter], -load, pool.name)
        if strategy == "random":
            digest = hashlib.sha256(f"{req.request_id}/{pool.name}".encode()).digest()
            return (shunned, digest, pool.name)
        return (shunned, vc_load[pool.vcenter], load, pool.name)

    return key


def choose(ranked: list[Pool], req: Request) -> list[Pool]:
    """The pools a request gets from the fitting pools in rank order (fewer when not enough).

    Without `pools`: the best pool of each of the `vcenters` best distinct vCenters. With
    `pools: P` and a cap of V vCenters: k = min(P, V, vCenters with a fitting pool) vCenters,
    taken in rank order except where a vCenter would leave too few pools to reach P; the best
    pool of each, then the best of the rest of their pools."""
    want = req.pool_count
    if not req.pools:
        chosen: list[Pool] = []
        taken: set[str] = set()
        for pool in ranked:
            if pool.vcenter not in taken:
                chosen.append(pool)
                taken.add(pool.vcenter)
                if len(chosen) == want:
                    break
        return chosen
    by_vc: dict[str, list[Pool]] = {}  # vCenters in the rank of their best pool
    for pool in ranked:
        by_vc.setdefault(pool.vcenter, []).append(pool)
    order = list(by_vc)
    k = min(req.vcenters or len(order), want, len(order))
    if sum(sorted((len(x) for x in by_vc.values()), reverse=True)[:k]) < want:
        return []  # no k vCenters hold P fitting pools
    picked: list[str] = []
    total = 0
    for i, vc in enumerate(order):
        slots = k - len(picked)
        if slots == 0:
            break
        rest = sorted((len(by_vc[x]) for x in order[i + 1:]), reverse=True)[:slots - 1]
        if total + len(by_vc[vc]) + sum(rest) >= want:
            picked.append(vc)
            total += len(by_vc[vc])
    chosen = [by_vc[vc][0] for vc in picked]
    extra = [p for p in ranked if p.vcenter in picked and p not in chosen]
    return chosen + extra[: want - len(chosen)]


def place(req: Request, fleet: Fleet, strategy: str = "least-utilized",
          held: Mapping[str, str] | None = None) -> list[Placement]:
    """Pick `req.vcenters` pools on distinct vCenters, or raise NoCapacity with per-pool reasons.

    Pools in `held` (pool -> why) are kept for the request at the head of the waiting line.
    Does not change `fleet`.
    """
    reasons: dict[str, str] = {}
    fitting: list[Pool] = []
    for pool in fleet.pools.values():
        why = why_not(req, pool, fleet) or (held or {}).get(pool.name)
        if why:
            reasons[pool.name] = why
        else:
            fitting.append(pool)
    if req.required_pool and req.required_pool not in fleet.pools:
        reasons[req.required_pool] = "not in the pools configuration (removed or unknown)"
    fitting.sort(key=_rank_key(strategy, req, vcenter_loads(fleet), fleet))
    chosen = choose(fitting, req)
    if len(chosen) < req.pool_count:
        summary = "no pool fits"
        vcs = len({p.vcenter for p in fitting})
        if fitting and not req.pools:
            summary = f"only {vcs} distinct vCenter(s) have a fitting pool, need {req.vcenters}"
        elif fitting:
            within = f" within {req.vcenters} vCenter(s)" if req.vcenters else ""
            summary = (f"{len(fitting)} pool(s) fit, on {vcs} vCenter(s): not {req.pools} "
                       f"distinct pools{within}")
        raise NoCapacity.of(reasons, summary)
    return [
        Placement(pool, tuple(fleet.free_networks(pool, req.network_type, req.networks)))
        for pool in chosen
    ]


def place_batch(
    reqs: list[Request], fleet: Fleet, strategy: str = "least-utilized",
    held: Mapping[str, str] | None = None,
) -> list[list[Placement]]:
    """All or nothing: every request is placed in order on a scratch copy, or NoCapacity."""
    scratch = fleet  # copied before the first change: a lone request copies nothing
    out = []
    for i, req in enumerate(reqs):
        try:
            placements = place(req, scratch, strategy, held)
        except NoCapacity as exc:
            if len(reqs) == 1:
                raise
            raise NoCapacity.of(exc.reasons, f"request #{i + 1} of the batch: "
                                + exc.message.split(":", 1)[0]) from None
        out.append(placements)
        if i + 1 < len(reqs):
            if scratch is fleet:
                scratch = fleet.copy()
            scratch.apply(req, placements)
    return out


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


def check_possible(req: Request, pools: Mapping[str, Pool]) -> None:
    """Reject requests that could never be placed, even on an empty fleet with no pool cordoned
    or excluded (InvalidRequest naming the field). Fits now or not is place()'s business."""
    from .errors import InvalidRequest

    if not pools:
        raise InvalidRequest.of("request", "no pools are configured")
    vcenters = {p.vcenter for p in pools.values()}
    if req.pools and req.pools > len(pools):
        raise InvalidRequest.of("pools", f"{req.pools} is more than the {len(pools)} pools "
                                "configured")
    if req.pools and req.required_pool and req.pools > 1:
        raise InvalidRequest.of("pools", "required-pool names one pool, so pools must be 1")
    if not req.pools and req.vcenters > len(vcenters):
        raise InvalidRequest.of("vcenters", f"{req.vcenters} is more than the {len(vcenters)} "
                                "vCenters configured")
    if req.required_pool and req.required_pool not in pools:
        raise InvalidRequest.of("required-pool", f"unknown pool {req.required_pool!r} (known: "
                                + ", ".join(sorted(pools)) + ")")
    if req.required_pool and req.vcenters > 1:
        raise InvalidRequest.of("vcenters", "required-pool names one pool, on one vCenter, so "
                                "vcenters must be 1")
    # cordons are temporary and excluded pools open up when named: neither makes it impossible
    candidates = [replace(p, no_schedule=False, exclude=False) for p in pools.values()]
    if req.required_pool and req.required_pool in pools:
        why = eligibility(req, next(p for p in candidates if p.name == req.required_pool))
        if why:
            raise InvalidRequest.of("required-pool", f"{req.required_pool}: {why}")
    candidates = [p for p in candidates if eligibility(req, p) is None]
    if req.pool_selector and not candidates:
        raise InvalidRequest.of("pool-selector", "no configured pool has all these labels")
    if not candidates:
        raise InvalidRequest.of("request", "no configured pool is eligible")
    sizes = (
        ("vcpus", req.vcpus, max(p.vcpu_capacity for p in candidates)),
        ("memory", req.memory, max(p.memory for p in candidates)),
        ("storage", req.storage, max(p.storage for p in candidates)),
    )
    for name, need, cap in sizes:
        if need > cap:
            raise InvalidRequest.of(name, f"{need} is more than any pool can hold (largest {cap})")
    if req.networks:
        most = max(len(p.networks_of(req.network_type)) for p in candidates)
        if most == 0:
            raise InvalidRequest.of("network-type", f"no pool has networks of type "
                                    f"{req.network_type!r}")
        if req.networks > most:
            raise InvalidRequest.of("networks", f"{req.networks} is more than any pool has of type "
                                    f"{req.network_type} (most {most})")
    empty = Fleet({p.name: p for p in candidates})
    fits = [p for p in candidates if shortfall(req, p, empty) is None]
    if not fits:
        closest = min(candidates, key=lambda p: (deficit(req, p, empty), p.name))
        why = shortfall(req, closest, empty) or ""
        field = next((n for n in ("vcpus", "memory", "storage", "networks") if f" {n} " in why),
                     "request")
        raise InvalidRequest.of(field, f"no single pool can ever hold this request (closest: "
                                f"{closest.name}, empty: {why})")
    usable = {p.vcenter for p in fits}
    if req.pools:
        per_vc = sorted((sum(1 for p in fits if p.vcenter == vc) for vc in usable),
                        reverse=True)
        most = sum(per_vc[:req.vcenters] if req.vcenters else per_vc)
        if most < req.pools:
            within = f" within {req.vcenters} vCenter(s)" if req.vcenters else ""
            raise InvalidRequest.of("pools", f"only {most} pool(s){within} could ever hold "
                                    f"this request, need {req.pools}")
        return
    if req.vcenters > len(usable):
        raise InvalidRequest.of("vcenters", f"only {len(usable)} vCenter(s) have a pool that "
                                f"could ever hold this request, need {req.vcenters}")


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


def reserve_for(head: Request, fleet: Fleet, position: int = 1) -> dict[str, str]:
    """The pools held for the request at the head of the line: for each of its `vcenters`, the
    eligible pool closest to fitting it. Others may backfill every other pool, so they never
    delay the head, and the head's pools only drain until it fits."""
    best: dict[str, tuple[float, str]] = {}
    for pool in fleet.pools.values():
        if eligibility(head, pool) is not None:
            continue
        key = (deficit(head, pool, fleet), pool.name)
        if pool.vcenter not in best or key < best[pool.vcenter]:
            best[pool.vcenter] = key
    why = f"held for the request waiting at position {position} ({head.request_id})"
    if head.pools:  # the P eligible pools closest to fitting, wherever they are
        closest = sorted((deficit(head, p, fleet), p.name) for p in fleet.pools.values()
                         if eligibility(head, p) is None)
        return {name: why for _, name in closest[: head.pools]}
    chosen = sorted(best.values())[: head.vcenters]
    return {name: why for _, name in chosen}
