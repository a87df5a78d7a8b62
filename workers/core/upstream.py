"""Upstream's Kubernetes shapes, rendered from our leases and pools: the `Lease`, `Pool` and
`Network` kinds of `vspherecapacitymanager.splat.io/v1` with upstream's field names, and its
`envVars` shell text. Pure Python, no I/O: what a controller publishes and what a job step
sources are built here, and nowhere else.

Object names are valid Kubernetes names and stable: a pool keeps its own name when that is
already one (so a lease's `status.name` is the pool's name), else a name made from it plus a
digest; a network is named from its ledger key (port group, pod, slice) plus a digest of that
key, so the same network has the same name whichever pool or lease it is seen through.

Upstream fills a Lease's inline failure domain from the first pool and keeps `envVars` as
the shell text of one pool; here both are the first pool's, so `status.server` and
`GOVC_URL` always name the same vCenter."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from .labels import label_problem
from .lease import Lease, network_key
from .models import DEFAULT_NETWORK_TYPE, Network, Pool
from .pools import parse_pools
from .topology import inventory_path, network_path, topology

GROUP = "vspherecapacitymanager.splat.io"
API_VERSION = f"{GROUP}/v1"
PREFIX = "vsphere-capacity-manager.splat-team.io/"  # upstream's labels and finalizers
NETWORK_TYPE_LABEL = f"{PREFIX}network-type"
CI_AUTH_PATH = "ci-auth-path"  # the pool annotation naming where a job finds credentials
# upstream's envVars template, in its order
ENV_VARIABLES = (
    "vsphere_url", "GOVC_URL", "GOVC_DATACENTER", "GOVC_DATASTORE", "GOVC_NETWORK",
    "vsphere_cluster", "vsphere_resource_pool", "vsphere_datacenter", "vsphere_datastore",
    "vsphere_portgroup", "gateway", "dns_server", "vlanid", "phydc", "primaryrouterhostname",
)
PHASES = ("Pending", "Partial", "Fulfilled", "Failed")

MAX_NAME = 253
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NOT_NAME = re.compile(r"[^a-z0-9-]+")
_DIGEST = 10  # hex digits: 40 bits, no two of a fleet's networks share one


# names -------------------------------------------------------------------------------------
def is_object_name(name: str) -> bool:
    """Whether `name` is a valid Kubernetes object name (a DNS-1123 subdomain)."""
    return 0 < len(name) <= MAX_NAME and _SUBDOMAIN.fullmatch(name) is not None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST]


def _slug(text: str) -> str:
    """`text` made a DNS-1123 subdomain as far as it goes (possibly empty): lower case, each
    dot-separated part reduced to letters, digits and inner '-'."""
    parts = (_NOT_NAME.sub("-", part).strip("-") for part in text.lower().split("."))
    return ".".join(p for p in parts if p)


def _named(readable: str, identity: str, fallback: str) -> str:
    """A slug of `readable` with the digest of `identity` after it."""
    slug = _slug(readable)[:MAX_NAME - _DIGEST - 1].rstrip("-.")
    return f"{slug or fallback}-{_digest(identity)}"


@lru_cache(maxsize=4096)  # a pool's name is asked for with each of its leases
def pool_object_name(pool_name: str) -> str:
    """The name of a pool's `Pool` object: its own name when that is a valid object name,
    else a slug of it with a digest of the whole name."""
    return pool_name if is_object_name(pool_name) else _named(pool_name, pool_name, "pool")


def network_object_name(key: str) -> str:
    """The name of the `Network` object of the network with this ledger key
    (`lease.port_group_key`: "<vcenter>|<port group>[|<pod>[|<slice>]]"): port group, pod
    and slice made a slug, then a digest of the key."""
    readable = "-".join(part for part in key.split("|")[1:] if part)
    return _named(readable, key, "network")


# values --------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    """A value as the text a template writes: None is ""."""
    return "" if value is None else str(value)


def _first(value: Any) -> str:
    """The first of a list (or the value itself), as text."""
    if isinstance(value, list | tuple):
        return _text(value[0]) if value else ""
    return _text(value)


def _typed(lease: Lease | Mapping[str, Any]) -> Lease:
    return lease if isinstance(lease, Lease) else Lease.from_wire(lease)


# Network ---------------------------------------------------------------------------------------
def network_spec(network: Network) -> dict[str, Any]:
    """A network (or a slice of one) as upstream's `Network` spec: `cidr` and `cidrIPv6` are
    prefix lengths, `vlanId` is text, `ipAddresses` the configured or derived addresses
    ([2] and [3]: the VIPs a job step reads); podName, datacenterName, gateway and netmask
    only when known."""
    net = ipaddress.ip_network(network.cidr, strict=False) if network.cidr else None
    out: dict[str, Any] = {"portGroupName": network.port_group,
                           "vlanId": _text(network.vlan)}
    if network.pod:
        out["podName"] = network.pod
    if network.detail("datacenter"):
        out["datacenterName"] = network.detail("datacenter")
    if net is not None:
        out["cidr"] = net.prefixlen
    if network.gateway:
        out["gateway"] = network.gateway
    netmask = network.detail("netmask") or (str(net.netmask) if net and net.version == 4
                                            else "")
    if netmask:
        out["netmask"] = netmask
    v6 = network.detail("ipv6-cidr")
    v6net = ipaddress.IPv6Network(v6, strict=False) if v6 else None
    out.update({
        "machineNetworkCidr": network.detail("machine-network-cidr") or (str(net) if net
                                                                         else ""),
        "ipAddresses": list(network.addresses()),
        "cidrIPv6": v6net.prefixlen if v6net else 0,
        "gatewayipv6": network.detail("ipv6-gateway") or "",
        "ipv6prefix": str(v6net) if v6net else "",
        "startIPv6Address": network.detail("ipv6-start") or "",
        "primaryRouterHostname": network.detail("router") or "",
        "nameservers": list(network.nameservers()),
    })
    return out


def network_labels(network: Network) -> dict[str, str]:
    """A `Network` object's labels: its type (upstream's network-type label)."""
    return {NETWORK_TYPE_LABEL: network.type or DEFAULT_NETWORK_TYPE}


def network_object(vcenter: str, network: Network) -> dict[str, Any]:
    """One network of `vcenter` (a whole network, or one slice) as a `Network` object
    (no namespace: the publisher's)."""
    return {"apiVersion": API_VERSION, "kind": "Network",
            "metadata": {"name": network_object_name(network.key(vcenter)),
                         "labels": network_labels(network)},
            "spec": network_spec(network)}


def network_objects(pools: Iterable[Pool]) -> list[dict[str, Any]]:
    """Every network the pools hand out (a split network slice by slice) as a `Network`
    object, each once however many pools list it, in the pools' order."""
    out: dict[str, dict[str, Any]] = {}
    for pool in pools:
        for net, key in pool.all_keyed():
            if key not in out:
                out[key] = network_object(pool.vcenter, net)
    return list(out.values())


# Pool ------------------------------------------------------------------------------------------
def _port_groups(pool: Pool) -> list[str]:
    return [n.port_group for n in pool.networks]


def _physical_datacenter(pool: Pool) -> str:
    """The physical datacenter of a pool's networks (upstream's ibmPoolSpec.datacenter,
    phydc): the first network's that names one."""
    return next((n.detail("datacenter") for n in pool.networks if n.detail("datacenter")), "")


def pool_failure_domain(pool: Pool, port_groups: Iterable[str]) -> dict[str, Any]:
    """upstream's FailureDomainSpec of a pool (name: its `Pool` object's name; shortName:
    its short-name) with these port groups as its networks."""
    domain = pool.domain_map()
    out: dict[str, Any] = {
        "name": pool_object_name(pool.name),
        "region": domain.get("region", ""),
        "zone": domain.get("zone", ""),
        "server": pool.vcenter,
        "topology": topology(pool, port_groups),
    }
    if domain.get("short-name"):
        out["shortName"] = domain["short-name"]
    return out


def pool_spec(pool: Pool) -> dict[str, Any]:
    """A pool as upstream's `Pool` spec: its failure domain with every port group it lists,
    ibmPoolSpec (pod, physical datacenter), budgets, `overCommitRatio` as text, flags and
    taints."""
    pod = pool.pod or next((n.pod for n in pool.networks if n.pod), "")
    out = pool_failure_domain(pool, _port_groups(pool))
    out.update({
        "ibmPoolSpec": {"pod": pod, "datacenter": _physical_datacenter(pool)},
        "vcpus": pool.vcpus,
        "overCommitRatio": repr(float(pool.vcpu_overcommit)),
        "memory": pool.memory,
        "storage": pool.storage,
        "exclude": pool.exclude,
        "noSchedule": pool.no_schedule,
    })
    if pool.taints:
        out["taints"] = [t.to_dict() for t in pool.taints]
    return out


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def pool_status(pool: Pool, usage: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """upstream's `Pool` status from a pool's usage as `vcm.show_pools` reports it (its
    `status`: vcpus-used, memory-used, storage-used, networks-used, networks-total,
    lease-count): what is left (never below 0), placeable vCPUs counting the overcommit.
    No usage: nothing known yet (`initialized` false, everything free)."""
    u = usage or {}
    nets = _count(u, "networks-total") if "networks-total" in u else len(pool.all_keyed())
    return {
        "vcpus-available": max(0, pool.vcpu_capacity - _count(u, "vcpus-used")),
        "memory-available": max(0, pool.memory - _count(u, "memory-used")),
        "datastore-available": max(0, pool.storage - _count(u, "storage-used")),
        "network-available": max(0, nets - _count(u, "networks-used")),
        "lease-count": _count(u, "lease-count"),
        "initialized": usage is not None,
    }


def pool_object(pool: Pool, usage: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A pool as a `Pool` object: its labels (those that are Kubernetes labels: the pools file
    takes any text, pools.label_warnings names the others) and annotations (ci-auth-path) on
    the object, spec and status (no namespace: the publisher's)."""
    meta: dict[str, Any] = {"name": pool_object_name(pool.name)}
    labels = {k: v for k, v in pool.labels if not label_problem(k, v)}
    if labels:
        meta["labels"] = labels
    if pool.annotations:
        meta["annotations"] = dict(pool.annotations)
    return {"apiVersion": API_VERSION, "kind": "Pool", "metadata": meta,
            "spec": pool_spec(pool), "status": pool_status(pool, usage)}


def pools_from_show_pools(views: Iterable[Mapping[str, Any]],
                          source: str = "vcm.show_pools") -> tuple[Pool, ...]:
    """The pools configuration again, from what `vcm.show_pools` answers (each view's
    `spec` is the pool as configured; pools removed while they still hold leases are left
    out). Checked like the pools file: ConfigError naming `source`, the pool and the field."""
    specs = []
    for view in views:
        spec, status = view.get("spec"), view.get("status")
        if isinstance(status, Mapping) and status.get("removed"):
            continue
        if isinstance(spec, Mapping):
            specs.append({k: v for k, v in spec.items() if k != "vcenters"})
    return parse_pools({"pools": specs}, source) if specs else ()


def pool_objects(views: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`Pool` objects, with their status, from what `vcm.show_pools` answers."""
    views = list(views)
    status = {v["spec"].get("name"): v.get("status") for v in views
              if isinstance(v.get("spec"), Mapping)}
    return [pool_object(p, status.get(p.name)) for p in pools_from_show_pools(views)]


# Lease -----------------------------------------------------------------------------------------
def failure_domain_spec(lease: Lease | Mapping[str, Any]) -> dict[str, Any]:
    """upstream's FailureDomainSpec of one of our leases: its pool (name: the `Pool`
    object's name, shortName: the pool's short-name), its topology with the networks it
    holds as /<datacenter>/network/<port group> paths. From the lease alone: its failure
    domain as granted, or (a record without one) its datacenter, cluster and datastore."""
    x = _typed(lease)
    fd = x.failure_domain if isinstance(x.failure_domain, dict) else {}
    topo = fd.get("topology") if isinstance(fd.get("topology"), dict) else None
    if topo is None:
        cluster = inventory_path(x.datacenter, "host", x.cluster)
        topo = {"datacenter": x.datacenter, "computeCluster": cluster,
                "datastore": inventory_path(x.datacenter, "datastore", x.datastore),
                "resourcePool": f"{cluster}/Resources"}
    dc = _text(topo.get("datacenter", x.datacenter))
    paths = list(dict.fromkeys(network_path(dc, _text(n.get("port-group")))
                               for n in x.networks if isinstance(n, Mapping)))
    out: dict[str, Any] = {
        "name": pool_object_name(_text(x.pool)),
        "region": _text(fd.get("region", "")),
        "zone": _text(fd.get("zone", "")),
        "server": x.vcenter,
        "topology": {**topo, "networks": paths},
    }
    short = fd.get("name")
    if isinstance(short, str) and short and short != x.pool:
        out["shortName"] = short
    return out


def env_values(lease: Lease | Mapping[str, Any]) -> dict[str, str]:
    """upstream's envVars variables for one lease, in the template's order: its pool's
    vCenter and inventory paths, and its first network (dns_server: the first nameserver,
    else the gateway; phydc: the network's physical datacenter)."""
    x = _typed(lease)
    topo = failure_domain_spec(x)["topology"]
    net = next((n for n in x.networks if isinstance(n, Mapping)), {})
    gateway = _text(net.get("gateway"))
    dns = _first(net.get("nameservers")) or _first(net.get("dns"))
    port_group = _text(net.get("port-group"))
    values = {
        "vsphere_url": x.vcenter, "GOVC_URL": x.vcenter,
        "GOVC_DATACENTER": topo.get("datacenter"), "GOVC_DATASTORE": topo.get("datastore"),
        "GOVC_NETWORK": port_group,
        "vsphere_cluster": topo.get("computeCluster"),
        "vsphere_resource_pool": topo.get("resourcePool"),
        "vsphere_datacenter": topo.get("datacenter"), "vsphere_datastore": topo.get("datastore"),
        "vsphere_portgroup": port_group,
        "gateway": gateway, "dns_server": dns or gateway,
        "vlanid": _text(net.get("vlan")), "phydc": _text(net.get("datacenter")),
        "primaryrouterhostname": _text(net.get("router")),
    }
    return {k: _text(v) for k, v in values.items()}


_PLAIN = re.compile(r"[A-Za-z0-9_.,:/@%+=-]*")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TEMPLATE = frozenset(ENV_VARIABLES)


@lru_cache(maxsize=16384)  # a pool's values come back with each of its leases
def shell_value(value: str) -> str:
    """`value` as one shell word that bash reads back exactly: in double quotes as upstream
    writes it when nothing in it is special, else in single quotes (a quote in it closed,
    escaped and reopened). ValueError for a NUL, which no shell variable can hold."""
    if "\x00" in value:
        raise ValueError("a shell variable cannot hold a NUL character")
    if _PLAIN.fullmatch(value):
        return f'"{value}"'
    return "'" + value.replace("'", "'\\''") + "'"


def render_env(values: Mapping[str, str]) -> str:
    """`export NAME="value"` lines, one per variable, for `source`."""
    lines = []
    for name, value in values.items():
        if name not in _TEMPLATE and not _VARIABLE.fullmatch(name):
            raise ValueError(f"{name!r} is not a shell variable name")
        lines.append(f"export {name}={shell_value(value)}")
    return "\n".join(lines)


def env_vars(lease: Lease | Mapping[str, Any]) -> str:
    """upstream's envVars text for one lease (render_env of env_values)."""
    return render_env(env_values(lease))


def _env_of(x: Lease) -> str:
    """A lease's envVars: as written when it was granted, else rendered now."""
    return x.env_vars if isinstance(x.env_vars, str) and x.env_vars else env_vars(x)


def pool_info(leases: Sequence[Lease | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """upstream's poolInfo for the leases of one request: one FailureDomainSpec per pool,
    in the leases' order (two leases on one pool: one entry, with both leases' networks)."""
    out: dict[str, dict[str, Any]] = {}
    for lease in leases:
        fd = failure_domain_spec(lease)
        seen = out.get(fd["name"])
        if seen is None:
            out[fd["name"]] = fd
            continue
        nets = seen["topology"]["networks"]
        nets.extend(p for p in fd["topology"]["networks"] if p not in nets)
    return list(out.values())


def _text_map(value: Any) -> dict[str, str]:
    """The text-to-text pairs of a recorded map ({} for anything else)."""
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect"})


def _toleration(value: Any) -> bool:
    """Whether a recorded toleration is one: a map of text under its four keys only."""
    return isinstance(value, Mapping) and bool(value) and set(value) <= TOLERATION_KEYS \
        and all(isinstance(v, str) for v in value.values())


def lease_spec(leases: Sequence[Lease | Mapping[str, Any]]) -> dict[str, Any]:
    """upstream's `Lease` spec for the leases of one request: vcpus, memory and storage
    only when not 0 (a network-only lease carries neither), `pools` (how many it got when
    it asked by vcenters), `vcenters` only when set, networks, network-type (of its first
    network); required-pool, poolSelector, tolerations and boskos-lease-id when the request
    set them."""
    xs = [_typed(x) for x in leases]
    if not xs:
        raise ValueError("a Lease spec needs at least one lease")
    x = xs[0]
    out: dict[str, Any] = {k: v for k, v in (("vcpus", x.vcpus), ("memory", x.memory))
                           if v}
    out["pools"] = x.pools or len(xs)
    if x.vcenters:
        out["vcenters"] = x.vcenters
    if x.storage:
        out["storage"] = x.storage
    out["networks"] = x.network_count
    first = next((n for n in x.networks if isinstance(n, Mapping)), {})
    out["network-type"] = _text(first.get("type")) or DEFAULT_NETWORK_TYPE
    # as recorded; a record holding something else there (or in a pair, or a toleration)
    # reads as unset: the Lease CRD's schema takes only text there
    if x.required_pool and isinstance(x.required_pool, str):
        out["required-pool"] = x.required_pool
    selector = _text_map(x.pool_selector)
    if selector:
        out["poolSelector"] = selector
    tolerations = [t for t in x.tolerations if _toleration(t)] \
        if isinstance(x.tolerations, list) else []
    if tolerations:
        out["tolerations"] = [dict(t) for t in tolerations]
    if x.boskos_lease_id:
        out["boskos-lease-id"] = x.boskos_lease_id
    return out


def lease_status(leases: Sequence[Lease | Mapping[str, Any]],
                 phase: str = "Fulfilled") -> dict[str, Any]:
    """upstream's `Lease` status for the leases of one request: the first pool's failure
    domain inline (its topology's networks: every network held, each once), poolInfo,
    envVars (the first pool's) and envVarsMap (per `Pool` object name), phase and job-link
    (when set). No leases: the phase alone. Conditions are the controller's."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, not {phase!r}")
    xs = [_typed(x) for x in leases]
    if not xs:
        return {"phase": phase}
    info = pool_info(xs)
    first = info[0]
    networks = list(dict.fromkeys(p for fd in info for p in fd["topology"]["networks"]))
    env_map: dict[str, str] = {}
    for x in xs:
        env_map.setdefault(pool_object_name(_text(x.pool)), _env_of(x))
    out: dict[str, Any] = {**first, "topology": {**first["topology"], "networks": networks},
                           "poolInfo": info, "envVars": env_map[first["name"]],
                           "envVarsMap": env_map, "phase": phase}
    job_link = next((x.job_link for x in xs if x.job_link), "")
    if job_link:
        out["job-link"] = job_link
    return out


def held_objects(leases: Iterable[Lease | Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """The `Pool` and `Network` objects the leases hold (for a Lease's ownerReferences):
    their names, each once, in the leases' order."""
    pools: dict[str, None] = {}
    networks: dict[str, None] = {}
    for lease in leases:
        x = _typed(lease)
        pools.setdefault(pool_object_name(_text(x.pool)))
        for n in x.networks:
            if isinstance(n, Mapping) and isinstance(n.get("port-group"), str):
                networks.setdefault(network_object_name(network_key(x.vcenter, n)))
    return list(pools), list(networks)


def held_network(entry: Mapping[str, Any]) -> Network:
    """One entry of a lease's `networks` as the Network it holds, as granted (the pools
    configuration may have changed since): its details as recorded, lists as tuples."""
    known = {"port-group", "vlan", "cidr", "gateway", "type", "pod", "slices", "slice"}
    details = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in entry.items()
                    if k not in known and v is not None)
    vlan = entry.get("vlan")
    return Network(port_group=_text(entry.get("port-group")),
                   vlan=vlan if isinstance(vlan, int) and not isinstance(vlan, bool) else None,
                   cidr=_text(entry.get("cidr")), gateway=_text(entry.get("gateway")),
                   type=_text(entry.get("type")) or DEFAULT_NETWORK_TYPE, details=details,
                   pod=entry["pod"] if isinstance(entry.get("pod"), str) else "",
                   slice=entry["slice"] if isinstance(entry.get("slice"), str) else "")


def held_network_objects(lease: Lease | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `Network` objects of the networks one lease holds, as granted, in its order (the
    names held_objects gives them)."""
    x = _typed(lease)
    return [network_object(x.vcenter, held_network(n)) for n in x.networks
            if isinstance(n, Mapping) and isinstance(n.get("port-group"), str)]


def lease_object(leases: Sequence[Lease | Mapping[str, Any]],
                 phase: str = "Fulfilled") -> dict[str, Any]:
    """The leases of one request as one `Lease` object, as a job step reads it with
    `oc get leases -o json`: named by its first lease, its labels, ownerReferences to the
    `Pool` and `Network` objects it holds (no uids: there are no such objects to point at),
    spec and status."""
    xs = [_typed(x) for x in leases]
    if not xs:
        raise ValueError("a Lease object needs at least one lease")
    pools, networks = held_objects(xs)
    refs = [{"apiVersion": API_VERSION, "kind": kind, "name": name}
            for kind, names in (("Pool", pools), ("Network", networks)) for name in names]
    meta: dict[str, Any] = {"name": xs[0].id}
    if xs[0].labels:
        meta["labels"] = dict(xs[0].labels)
    if xs[0].created_at:
        meta["creationTimestamp"] = xs[0].created_at
    meta["ownerReferences"] = refs
    return {"apiVersion": API_VERSION, "kind": "Lease", "metadata": meta,
            "spec": lease_spec(xs), "status": lease_status(xs, phase)}
