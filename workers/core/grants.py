"""The lease factory: the leases a grant makes for a request, each on a pool and holding some
of its networks (what each field takes from the request and the pool is declared with the
field, in lease.py). Pure Python, no I/O."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from .lease import Lease, granted, rfc3339
from .models import Network, Pool, Request
from .topology import failure_domain, lease_env
from .upstream import env_vars, pool_info


def new_lease(lease_id: str, req: Request, pool: Pool, networks: list[Network],
              now: float) -> Lease:
    """A lease granted now on `pool` for `req`, holding `networks`."""
    at = rfc3339(now)
    lease = Lease.of(
        **granted(req, pool),  # what the lease's fields take from the request and the pool
        id=lease_id, created_at=at, leased_at=at, expires_at=rfc3339(now + req.ttl),
        networks=[n.to_dict() for n in networks], state="leased",
        failure_domain=failure_domain(pool, networks),
    )
    # the env lines and upstream's envVars read the lease itself
    return lease.evolve(env=lease_env(lease), env_vars=env_vars(lease))


def make_lease(
    lease_id: str, req: Request, pool: Pool, networks: list[Network], now: float
) -> dict[str, Any]:
    """A new lease in the wire shape, upstream keys first."""
    return new_lease(lease_id, req, pool, networks, now).to_wire()


def make_leases(lease_ids: Sequence[str], req: Request,
                grants: Sequence[tuple[Pool, list[Network]]], now: float
                ) -> list[dict[str, Any]]:
    """The leases of one request granted now, one per (pool, networks), in the wire shape.
    With more than one, each carries the `pool-info` of them all (upstream's poolInfo)."""
    if len(lease_ids) != len(grants):
        raise ValueError(f"{len(lease_ids)} lease ids for {len(grants)} grants")
    leases = [new_lease(i, req, pool, nets, now)
              for i, (pool, nets) in zip(lease_ids, grants, strict=True)]
    if len(leases) > 1:
        info = pool_info(leases)
        leases = [x.evolve(pool_info=copy.deepcopy(info)) for x in leases]
    return [x.to_wire() for x in leases]
