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
The chosen pools' networks are assigned by core.networks (one VLAN for the install where
there is one; its rule is in that module's docstring).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from .errors import NoCapacity
from .fleet import Fleet, Placement, Usage
from .models import Network, Pool, Request
from .networks import Option, choose_networks
from .reasons import deficit, eligibility, why_not
from .taints import untolerated

STRATEGIES = ("least-utilized", "pack", "random")


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


def _rank_key(strategy: str, req: Request, vc_load: dict[str, float], fleet: Fleet
              ) -> Callable[[Pool], tuple]:
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
    if len(chosen) == req.pool_count:
        networks = assign(req, chosen, fleet)
        if networks is not None:  # each chosen pool has room for its networks: always
            return [Placement(pool, nets) for pool, nets in zip(chosen, networks, strict=True)]
    summary = "no pool fits"
    vcs = len({p.vcenter for p in fitting})
    if fitting and not req.pools:
        summary = f"only {vcs} distinct vCenter(s) have a fitting pool, need {req.vcenters}"
    elif fitting:
        within = f" within {req.vcenters} vCenter(s)" if req.vcenters else ""
        summary = (f"{len(fitting)} pool(s) fit, on {vcs} vCenter(s): not {req.pools} "
                   f"distinct pools{within}")
    raise NoCapacity.of(reasons, summary)


def assign(req: Request, chosen: list[Pool], fleet: Fleet) -> list[tuple[Network, ...]] | None:
    """The networks each chosen pool's lease gets (core.networks): open to the request's
    install (a network-only request has none: free networks only), on distinct VLANs, one
    common VLAN for all of them where there is one, the VLANs the install's live leases hold
    first. None if a pool has too few open VLANs."""
    if not req.networks:
        return [() for _ in chosen]
    install = req.install
    hold = fleet.holdings.of(install)
    if len(chosen) == 1 and req.networks == 1 and hold is None:  # the usual case: no search
        return [tuple(fleet.free_networks(chosen[0], req.network_type, 1))] \
            if fleet.has_free_networks(chosen[0], req.network_type, 1) else None
    by_key: dict[str, Network] = {}
    options = []
    for pool in chosen:
        opts = []
        for n, held in fleet.open_networks(pool, req.network_type, install):
            key = pool.net_key(n)
            by_key[key] = n
            opts.append(Option(key, n.vlan_token(pool.vcenter), held))
        options.append(opts)
    got = choose_networks(options, req.networks, hold.preferred() if hold else ())
    if got is None:
        return None
    return [tuple(by_key[o.key] for o in opts) for opts in got]


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
