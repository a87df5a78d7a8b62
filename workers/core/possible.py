"""Whether a request could ever be placed, on an empty fleet with every pool open: checked
when a request is parsed, so one that can never fit is refused naming its field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from .errors import InvalidRequest
from .fleet import Fleet
from .models import DIMENSIONS, Pool, Request
from .reasons import deficit, eligibility, shortfall


def check_possible(req: Request, pools: Mapping[str, Pool]) -> None:
    """Reject requests that could never be placed, even on an empty fleet with no pool cordoned
    or excluded (InvalidRequest naming the field). Fits now or not is place()'s business."""
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
    if req.required_pool and req.vcenters > 1 and not req.pools:
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
    empty = Fleet({p.name: p for p in candidates})
    if req.networks:
        most = max(len(p.networks_of(req.network_type)) for p in candidates)
        if most == 0:
            raise InvalidRequest.of("network-type", f"no pool has networks of type "
                                    f"{req.network_type!r}")
        if req.networks > most:
            raise InvalidRequest.of("networks", f"{req.networks} is more than any pool has of type "
                                    f"{req.network_type} (most {most})")
        vlans = max(len(empty.free_vlans(p, req.network_type)) for p in candidates)
        if req.networks > vlans:  # a lease takes one network per VLAN
            raise InvalidRequest.of("networks", f"{req.networks} is more than any pool has of type "
                                    f"{req.network_type} on distinct VLANs (most {vlans})")
    fits = [p for p in candidates if shortfall(req, p, empty) is None]
    if not fits:
        closest = min(candidates, key=lambda p: (deficit(req, p, empty), p.name))
        why = shortfall(req, closest, empty) or ""
        field = next((n for n in (*DIMENSIONS, "networks") if f" {n} " in why),
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
