"""The domain's types: pools and their networks, and the requests for their capacity. Pure
Python, no I/O. A request is parsed from what a client sent in parsing.py; the lease a grant
makes is built in grants.py, the lease itself is lease.py's."""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cached_property
from typing import Any

from .lease import Install, install_group, port_group_key, sharing_install
from .taints import Taint, Toleration

DEFAULT_NETWORK_TYPE = "single-tenant"
DEFAULT_TTL = 24 * 3600
# the capacity a pool has, a request asks for and a lease holds (port groups are counted apart)
DIMENSIONS = ("vcpus", "memory", "storage")


MAX_DERIVED = 4096  # a larger cidr has no derived list (give ip-addresses)


# pure, and asked for again and again for the same few cidrs (checking a pools file, cutting
# slices, every listing of a network, every lease's addresses): worked out once each
@functools.lru_cache(maxsize=128)
def derived_addresses(cidr: str, limit: int = MAX_DERIVED) -> tuple[str, ...]:
    """A cidr's addresses in the order upstream's inventories list them: the network address,
    then each host address (IPv4's broadcast address left out), so [1] is the usual gateway
    and [2] and [3] are the VIPs; ip-addresses[i] is the network address + i. () for a
    cidr of more than `limit` addresses."""
    net = ipaddress.ip_network(cidr, strict=False)
    count = net.num_addresses - (1 if net.version == 4 and net.num_addresses > 2 else 0)
    if count > limit:
        return ()
    first = net.network_address
    return tuple(str(first + i) for i in range(count))


def entry_addresses(entry: Mapping[str, Any]) -> list[str]:
    """The addresses of one network of a lease (its `networks` entry): its `ip-addresses`
    when it has them (configured, or a slice's), else derived from its `cidr`."""
    listed = entry.get("ip-addresses")
    if isinstance(listed, list) and listed:
        return [str(a) for a in listed]
    cidr = entry.get("cidr")
    try:
        return list(derived_addresses(cidr)) if isinstance(cidr, str) and cidr else []
    except ValueError:
        return []


@dataclass(frozen=True)
class Network:
    """A port group as a pool hands it out. It is one network of its vCenter and pod: pools
    of that vCenter and pod that list it share it (the ledger key, `Pool.net_key`, has no
    pool in it), and one install holds it at a time.

    A multi-tenant network split into `slices` is handed out slice by slice (`pieces`): each
    slice is a Network of its own (`slice`: "<first>-<last>" of its own addresses, its key
    the network's plus that range), never the whole."""

    port_group: str
    vlan: int | None = None
    cidr: str = ""
    gateway: str = ""
    type: str = DEFAULT_NETWORK_TYPE
    # optional subnet details, returned when configured
    details: tuple[tuple[str, Any], ...] = ()
    pod: str = ""  # the network pod (from the pool's `pod` unless the network names one)
    slices: int = 0  # configured: split into this many slices (0: handed out whole)
    slice: str = ""  # a slice: the range of its own addresses, "<first>-<last>"

    @property
    def vlan_id(self) -> tuple[str, int] | None:
        """The VLAN it is on, as (pod, vlan): VLAN numbers are per pod. None: no vlan set."""
        return None if self.vlan is None else (self.pod, self.vlan)

    def vlan_token(self, vcenter: str) -> Hashable:
        """What counts as its VLAN where a lease may hold one network per VLAN: (pod, vlan),
        or with no vlan the network itself (all its slices: one VLAN)."""
        return self.vlan_id or ("net", port_group_key(vcenter, self.port_group, self.pod))

    def key(self, vcenter: str) -> str:
        """Its ledger key in `vcenter`."""
        return port_group_key(vcenter, self.port_group, self.pod, self.slice)

    @cached_property
    def pieces(self) -> tuple[Network, ...]:
        """What is handed out: itself, or its slices (split_slices)."""
        return split_slices(self) if self.slices else (self,)

    def detail(self, name: str, default: Any = None) -> Any:
        """An optional detail as configured (a list is a tuple), or `default`."""
        return next((v for k, v in self.details if k == name), default)

    def addresses(self) -> tuple[str, ...]:
        """Its addresses: `ip-addresses` as configured, else derived from the cidr
        (derived_addresses). [0] is the network address, [1] the gateway by convention,
        [2] and [3] the API and ingress VIPs the job step reads."""
        listed = self.detail("ip-addresses")
        if listed:
            return tuple(listed)
        return derived_addresses(self.cidr) if self.cidr else ()

    def nameservers(self) -> tuple[str, ...]:
        """`nameservers`, else `dns` (one address or a list), else none."""
        value = self.detail("nameservers") or self.detail("dns") or ()
        return tuple(value) if isinstance(value, tuple) else (value,)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "port-group": self.port_group,
            "vlan": self.vlan,
            "cidr": self.cidr,
            "gateway": self.gateway,
            "type": self.type,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in self.details},
        }
        if self.pod:
            out["pod"] = self.pod
        if self.slices:
            out["slices"] = self.slices
        if self.slice:
            out["slice"] = self.slice
        return out


MIN_SLICE = 2  # a slice's own addresses: at least the two VIPs


def _address_order(address: str) -> tuple[int, int]:
    """IPv4 before IPv6, each in numeric order."""
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def split_slices(net: Network) -> tuple[Network, ...]:
    """The `slices` slices of a network: its addresses after [0] and [1] (the network address
    and the gateway by convention; the gateway left out wherever it is), in ascending order,
    cut into that many runs whose sizes differ by at most one (the larger first). A slice's
    `ip-addresses` are [0] and [1] of the network, then its own run, so its [2] and [3] (the
    VIPs a job step reads) are its own; its `slice` is the run's "<first>-<last>". ValueError
    when there are no addresses, or fewer than MIN_SLICE per slice."""
    addresses = net.addresses()
    if len(addresses) < 2:
        raise ValueError("has no addresses to split (give a cidr or ip-addresses)")
    own = [a for a in addresses[2:] if a != net.gateway]
    if net.detail("ip-addresses"):  # listed in any order (derived ones ascend already)
        own.sort(key=_address_order)
    if len(own) < MIN_SLICE * net.slices:
        raise ValueError(f"{net.slices} slices of {len(own)} addresses (after [0] and [1]) "
                         f"leave fewer than {MIN_SLICE} per slice")
    size, larger = divmod(len(own), net.slices)
    pieces, start = [], 0
    for i in range(net.slices):
        run = own[start:start + size + (1 if i < larger else 0)]
        start += len(run)
        details = tuple((k, v) for k, v in net.details if k != "ip-addresses")
        pieces.append(replace(net, slices=0, slice=f"{run[0]}-{run[-1]}", details=(
            *details, ("ip-addresses", (addresses[0], addresses[1], *run)))))
    return tuple(pieces)


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
    pod: str = ""  # the network pod (upstream's ibmPoolSpec.pod): its networks' default pod
    # Kubernetes-style annotations, passed through to its leases (`ci-auth-path`: where a job
    # finds the vCenter's credentials)
    annotations: tuple[tuple[str, str], ...] = ()

    def domain_map(self) -> dict[str, str]:
        """region, zone, short-name, resource-pool, folder and template, as configured."""
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
        for net in self.networks:
            for n in net.pieces:  # a split network: its slices
                out.setdefault(n.type, []).append((n, self.net_key(n)))
        return {t: tuple(pairs) for t, pairs in out.items()}

    def networks_of(self, net_type: str) -> tuple[Network, ...]:
        return tuple(n for n, _ in self._keyed.get(net_type, ()))

    def all_keyed(self) -> tuple[tuple[Network, str], ...]:
        """Every (network, ledger key) it hands out, slices one by one."""
        return tuple(pair for pairs in self._keyed.values() for pair in pairs)

    def keyed_networks(self, net_type: str) -> tuple[tuple[Network, str], ...]:
        """(network, ledger key) pairs of one type."""
        return self._keyed.get(net_type, ())

    def net_key(self, net: Network) -> str:
        """The ledger key of one of its networks: per (vCenter, pod, port group), so pools
        that share a network share its key."""
        return net.key(self.vcenter)

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
            **({"pod": self.pod} if self.pod else {}),
            **({"annotations": dict(self.annotations)} if self.annotations else {}),
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
    pools: int = 0  # P pools over at most `vcenters` vCenters (a cap: 0 = none, and one
    # above P caps nothing); 0: one pool on each of `vcenters` distinct vCenters
    tolerations: tuple[Toleration, ...] = ()

    @property
    def toleration_dicts(self) -> list[dict[str, str]]:
        """Its tolerations as a lease records them."""
        return [t.to_dict() for t in self.tolerations]

    @property
    def pool_count(self) -> int:
        return self.pools or self.vcenters

    @cached_property
    def group(self) -> str:
        """Its install's `boskos-lease-id` (the label, else the field; "" none): unless it
        is network-only, its leases share networks with the live leases of the same group
        (lease.install_group, `install`)."""
        return install_group(dict(self.labels), self.boskos_lease_id)

    @property
    def install(self) -> Install | None:
        """The install whose networks its leases share (lease.sharing_install): (owner,
        group) when it has a group and is not network-only; None: its leases share theirs
        with one another alone, and take only free ones."""
        return sharing_install(self.owner, self.group, self.vcpus, self.memory)

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
