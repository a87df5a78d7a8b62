"""Upstream's lease phases and network types as our model has them, for the counters the
ledger keeps and the metrics named as upstream's. Pure Python, no I/O.

Upstream's Lease object is one request here (its leases share owner and request-id): it is
Pending while it waits in line and Fulfilled once granted (all or nothing, so never Partial; a
request the fleet can never hold is refused before it exists, so never Failed).

A request's network type is the one it asked for when it asked for networks, and a lease's the
type of the networks it holds (both come from the pools configuration, so their number is
bounded by it). A request or lease without networks has the type "" (NO_NETWORK): no
configured type is empty, and Prometheus treats an empty label as no label."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .models import DEFAULT_NETWORK_TYPE

PENDING = "Pending"
FULFILLED = "Fulfilled"
PHASES = (PENDING, FULFILLED)
NO_NETWORK = ""

# the counters' fields in the ledger's stats hash: "<kind>:<network type>"
COUNTED = {"pending": PENDING, "fulfilled": FULFILLED}  # field kind -> the phase it entered
DELAYED = "delayed"  # joined the waiting line behind older requests


def request_network_type(request: Mapping[str, Any]) -> str:
    """The network type of a request in its wire shape (Request.to_dict)."""
    networks = request.get("networks", 1)
    if isinstance(networks, bool) or not isinstance(networks, int) or networks <= 0:
        return NO_NETWORK
    kind = request.get("network-type")
    return kind if isinstance(kind, str) and kind else DEFAULT_NETWORK_TYPE


def lease_network_type(networks: Iterable[Any] | None) -> str:
    """The network type of a lease, from its `networks` entries (those of one lease share
    their type: placement hands out one type per request)."""
    for entry in networks or ():
        if isinstance(entry, Mapping):
            kind = entry.get("type")
            return kind if isinstance(kind, str) and kind else DEFAULT_NETWORK_TYPE
    return NO_NETWORK


def stat_field(kind: str, network_type: str) -> str:
    """The stats hash field counting `kind` ("pending", "fulfilled", DELAYED) for a type."""
    return f"{kind}:{network_type}"


def stat_parts(name: str) -> tuple[str, str] | None:
    """(kind, network type) of a stats field stat_field wrote; None for any other field."""
    kind, sep, network_type = name.partition(":")
    if not sep or (kind not in COUNTED and kind != DELAYED):
        return None
    return kind, network_type
