"""The lease factory: the lease a grant makes for a request on a pool, holding some of its
networks (what each field takes from the request and the pool is declared with the field, in
lease.py). Pure Python, no I/O."""

from __future__ import annotations

from typing import Any

from .lease import Lease, granted, rfc3339
from .models import Network, Pool, Request
from .topology import failure_domain, lease_env


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
    return lease.evolve(env=lease_env(lease))  # the env lines read the lease itself


def make_lease(
    lease_id: str, req: Request, pool: Pool, networks: list[Network], now: float
) -> dict[str, Any]:
    """A new lease in the wire shape, upstream keys first."""
    return new_lease(lease_id, req, pool, networks, now).to_wire()
