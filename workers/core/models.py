"""The domain's types: pools and their networks, and the requests for their capacity. Pure
Python, no I/O. A request is parsed from what a client sent in parsing.py; the lease a grant
makes is built in grants.py, the lease itself is lease.py's."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Any

from .lease import port_group_key
from .taints import Taint, Toleration

DEFAULT_NETWORK_TYPE = "single-tenant"
DEFAULT_TTL = 24 * 3600
# the capacity a pool has, a request asks for and a lease holds (port groups are counted apart)
DIMENSIONS = ("vcpus", "memory", "storage")


@dataclass(frozen=True)
class Network:
    port_group: str
    vlan: int | None = None
    cidr: str = ""
    gateway: str = ""
    type: str = DEFAULT_NETWORK_TYPE
    # optional subnet details, returned when configured
    details: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "port-group": self.port_group,
            "vlan": self.vlan,
            "cidr": self.cidr,
            "gateway": self.gateway,
            "type": self.type,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in self.details},
        }


@dataclass(frozen=True)
class Pool:
    name: str
    vcenter: str
    datacenter: str
    cluster: str
    datastore: str
    vcpus: int
    memory: int
    storage: int
    vcpu_overcommit: float = 1.0
    exclude: bool = False
    no_schedule: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    networks: tuple[Network, ...] = ()
    taints: tuple[Taint, ...] = ()
    # failure-domain fields (region and zone may also come from the labels)
    domain: tuple[tuple[str, str], ...] = ()

    def domain_map(self) -> dict[str, str]:
        """region, zone, short-name, resource-pool and folder, as configured."""
        labels = self.label_map()
        out = {k: labels[k] for k in ("region", "zone") if k in labels}
        return {**out, **dict(self.domain)}

    @cached_property
    def vcpu_capacity(self) -> int:
        """Placeable vCPUs: floor(vcpus × vcpu-overcommit)."""
        return math.floor(self.vcpus * Fraction(repr(self.vcpu_overcommit)))

    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @cached_property
    def _keyed(self) -> dict[str, tuple[tuple[Network, str], ...]]:
        """Network type -> (network, ledger key) pairs, in configuration order."""
        out: dict[str, list[tuple[Network, str]]] = {}
        for n in self.networks:
            out.setdefault(n.type, []).append((n, self.net_key(n)))
        return {t: tuple(pairs) for t, pairs in out.items()}

    def networks_of(self, net_type: str) -> tuple[Network, ...]:
        return tuple(n for n, _ in self._keyed.get(net_type, ()))

    def keyed_networks(self, net_type: str) -> tuple[tuple[Network, str], ...]:
        """(network, ledger key) pairs of one type."""
        return self._keyed.get(net_type, ())

    def net_key(self, net: Network) -> str:
        return port_group_key(self.vcenter, net.port_group)

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vcenter": self.vcenter,
            "datacenter": self.datacenter,
            "cluster": self.cluster,
            "datastore": self.datastore,
            "vcpus": self.vcpus,
            "memory": self.memory,
            "storage": self.storage,
            "vcenters": 0,
            "vcpu-overcommit": self.vcpu_overcommit,
            "exclude": self.exclude,
            "no-schedule": self.no_schedule,
            "labels": self.label_map(),
            **dict(self.domain),
            "taints": [t.to_dict() for t in self.taints],
            "networks": [n.to_dict() for n in self.networks],
        }


@dataclass(frozen=True)
class Request:
    vcpus: int
    memory: int
    storage: int = 0
    vcenters: int = 1
    networks: int = 1
    network_type: str = DEFAULT_NETWORK_TYPE
    owner: str = "anonymous"
    boskos_lease_id: str = ""
    request_id: str = ""
    ttl: int = DEFAULT_TTL
    required_pool: str | None = None
    pool_selector: tuple[tuple[str, str], ...] = ()
    wait: float = 0.0
    labels: tuple[tuple[str, str], ...] = ()
    job_link: str = ""
    pools: int = 0  # P pools over at most `vcenters` vCenters (0 = cap none); 0: one pool
    # on each of `vcenters` distinct vCenters
    tolerations: tuple[Toleration, ...] = ()

    @property
    def pool_count(self) -> int:
        return self.pools or self.vcenters

    def spec(self) -> dict[str, Any]:
        out = {
            "vcpus": self.vcpus,
            "memory": self.memory,
            "storage": self.storage,
            "vcenters": self.vcenters,
            "networks": self.networks,
        }
        if self.pools:
            out["pools"] = self.pools
        return out

    @property
    def key(self) -> str:
        return request_key(self.owner, self.request_id)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.spec(),
            "network-type": self.network_type,
            "owner": self.owner,
            "boskos-lease-id": self.boskos_lease_id,
            "request-id": self.request_id,
            "ttl": self.ttl,
            "wait": self.wait,
        }
        if self.required_pool:
            out["required-pool"] = self.required_pool
        if self.pool_selector:
            out["pool-selector"] = dict(self.pool_selector)
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.job_link:
            out["job-link"] = self.job_link
        if self.tolerations:
            out["tolerations"] = [t.to_dict() for t in self.tolerations]
        return out


def request_key(owner: str, request_id: str) -> str:
    """Idempotency is per (owner, request-id): two owners may use the same request-id. The
    owner's length (in UTF-8 bytes, as Lua counts) keeps the pair unambiguous."""
    return f"{len(owner.encode())}:{owner}:{request_id}"
