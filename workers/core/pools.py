"""Pools configuration: parsed and validated from plain data, no I/O.

A port group is one network of its vCenter and pod (the pool's `pod`, or the network's own):
every pool of that vCenter and pod may list it, and all of them share one `Network`. The
listings are merged field by field; a field given differently in two listings is an error
naming both (file, pool, field), and a network listed without a pod where another listing of
the same vCenter gives it one is an error too (which network it is would be ambiguous)."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ConfigError
from .labels import key_problem, label_problem, value_problem
from .models import DEFAULT_NETWORK_TYPE, DIMENSIONS, Network, Pool, derived_addresses
from .taints import Taint, taint_problem
from .text import MAX_TEXT, escaped, text_problem

MAX_BUDGET = 10**15  # more than any vCenter has, and exact in the ledger's Lua numbers
DOMAIN_KEYS = ("region", "zone", "short-name", "resource-pool", "folder", "template")
# optional subnet details, each shown in a lease's network as configured: netmask,
# machine-network-cidr, ip-addresses (else derived from the cidr: models.derived_addresses),
# ipv6-cidr, ipv6-start and ipv6-gateway (inside ipv6-cidr), dns or nameservers (addresses),
# router (the primary router's host name), datacenter (the physical one: upstream's
# datacenterName, phydc)
NETWORK_DETAILS = ("netmask", "machine-network-cidr", "ip-addresses", "ipv6-cidr", "ipv6-start",
                   "ipv6-gateway", "dns", "nameservers", "router", "datacenter")
MAX_ADDRESSES = 4096
POOL_KEYS = {
    "name", "vcenter", "datacenter", "cluster", "datastore", "vcpus", "memory", "storage",
    "vcpu-overcommit", "exclude", "no-schedule", "labels", "networks", "taints", "pod",
    "annotations", *DOMAIN_KEYS,
}
# a pool's annotations ride along in every lease of the pool: bounded well below Kubernetes'
# own limit (256 KiB for all of an object's annotations)
SHORT_NAME = re.compile(r"[a-zA-Z0-9]([-_a-zA-Z0-9]{0,28}[a-zA-Z0-9])?")
MAX_ANNOTATIONS = 64
MAX_ANNOTATION_VALUE = 4096
MAX_ANNOTATIONS_BYTES = 16384
NETWORK_KEYS = {"port-group", "vlan", "cidr", "gateway", "type", "pod", "slices",
                *NETWORK_DETAILS}
SLICEABLE = ("multi-tenant", "nested-multi-tenant")  # network types that may be split
MAX_SLICES = 256
REQUIRED_STR = ("name", "vcenter", "datacenter", "cluster", "datastore")


@dataclass
class _Listing:
    """One pool's listing of a network: the fields it gives (parsed), and where it is."""

    pool: str
    index: int
    vcenter: str
    values: dict[str, Any]
    origin: dict[str, tuple[str, int]] = field(default_factory=dict)  # field -> (pool, index)

    @property
    def identity(self) -> tuple[str, str, str]:
        return self.vcenter, self.values.get("pod", ""), self.values["port-group"]


def parse_pools(data: Any, file: str = "pools.yaml") -> tuple[Pool, ...]:
    """Validate the loaded YAML; the first problem raises ConfigError naming file, pool, field."""
    if not isinstance(data, dict) or set(data) - {"pools"}:
        # YAML keys need not be text (`1:`, `null:`): named as written, never compared as is
        extra = sorted(map(str, set(data) - {"pools"})) if isinstance(data, dict) else []
        field = extra[0] if extra else None
        raise ConfigError.of(file, None, field, "the top level must be a map with only 'pools'")
    raw_pools = data.get("pools")
    if not isinstance(raw_pools, list) or not raw_pools:
        raise ConfigError.of(file, None, "pools", "must be a non-empty list")
    pools: list[Pool] = []
    listings: list[list[_Listing]] = []
    names: set[str] = set()
    vcenters: dict[str, tuple[str, str]] = {}  # lower-cased host → (as written, first pool)
    domains: dict[str, str] = {}  # failure-domain name → the pool it names
    for index, raw in enumerate(raw_pools):
        pool, listed = _parse_pool(raw, index, file)
        if pool.name in names:
            raise ConfigError.of(file, pool.name, "name", "duplicate pool name")
        names.add(pool.name)
        # a lease's install-config failure domain is named by its pool's short-name, else the
        # pool's name: one name per pool, or two pools make one failure domain
        short = dict(pool.domain).get("short-name")
        holder = domains.setdefault(short or pool.name, pool.name)
        if holder != pool.name:
            raise ConfigError.of(
                file, pool.name, "short-name" if short else "name",
                f"{short or pool.name!r} already names pool {holder!r}'s failure domain (a "
                "pool's short-name, else its name): give each pool its own")
        spelled, first = vcenters.setdefault(pool.vcenter.lower(), (pool.vcenter, pool.name))
        if spelled != pool.vcenter:  # one vCenter counted as two would break spreading
            raise ConfigError.of(
                file, pool.name, "vcenter",
                f"{pool.vcenter!r} is {spelled!r} (pool {first!r}) in another case: host names "
                "are case-insensitive, so write them the same way")
        pools.append(pool)
        listings.append(listed)
    shared = _merge_listings([x for listed in listings for x in listed], file)
    return tuple(replace(pool, networks=tuple(shared[x.identity] for x in listed))
                 for pool, listed in zip(pools, listings, strict=True))


def label_warnings(pools: Iterable[Pool], file: str = "pools.yaml") -> list[str]:
    """One line per pool label that is not a Kubernetes label, naming file, pool and
    `labels.<key>`: pool-selector matches it, and the pool's Kubernetes object is published
    without it (upstream.pool_object)."""
    out = []
    for pool in pools:
        for key, value in pool.labels:
            problem = label_problem(key, value)
            if problem:
                where = ConfigError.of(file, pool.name, f"labels.{key}", "").message
                out.append(f"{where}left off the Pool object, pool-selector still matches "
                           f"it: {problem}")
    return out


def _merge_listings(listings: list[_Listing], file: str) -> dict[tuple[str, str, str], Network]:
    """One Network per (vCenter, pod, port group), from every pool's listing of it."""
    merged: dict[tuple[str, str, str], _Listing] = {}
    pods: dict[tuple[str, str], _Listing] = {}  # (vCenter, port group) -> a first listing
    for x in listings:
        vcenter, pod, pg = x.identity
        other = pods.setdefault((vcenter, pg), x)
        other_pod = other.values.get("pod", "")
        if (pod or other_pod) and not (pod and other_pod):  # one with a pod, one without
            raise ConfigError.of(
                file, x.pool, f"networks[{x.index}].pod",
                f"port group {pg!r} of vCenter {vcenter!r} is listed "
                + (f"in pod {pod!r} here and without a pod" if pod else
                   f"without a pod here and in pod {other_pod!r}")
                + f" in pool {other.pool!r} (networks[{other.index}]): give every listing "
                "its pod")
        first = merged.get(x.identity)
        if first is None:
            merged[x.identity] = _Listing(x.pool, x.index, vcenter, dict(x.values),
                                          {k: (x.pool, x.index) for k in x.values})
            continue
        for key, value in x.values.items():
            if key not in first.values:
                first.values[key] = value
                first.origin[key] = (x.pool, x.index)
            elif first.values[key] != value:
                where, at = first.origin[key]
                raise ConfigError.of(
                    file, x.pool, f"networks[{x.index}].{key}",
                    f"port group {pg!r} of vCenter {vcenter!r}"
                    + (f" (pod {pod!r})" if pod else "")
                    + f" is one network wherever it is listed, but its {key} is "
                    f"{_shown(value)} here and {_shown(first.values[key])} in pool {where!r} "
                    f"(networks[{at}].{key})")
    out = {}
    for identity, x in merged.items():
        _check_network(x, file)
        out[identity] = _network(x.values)
    return out


def _shown(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


def _parse_pool(raw: Any, index: int, file: str) -> tuple[Pool, list[_Listing]]:
    label = f"#{index + 1}"
    if not isinstance(raw, dict):
        raise ConfigError.of(file, label, None, "each pool must be a map")
    name = raw.get("name")
    label = name if isinstance(name, str) and name else label
    unknown = sorted(set(map(str, raw)) - POOL_KEYS)
    if unknown:
        raise ConfigError.of(file, label, unknown[0], "unknown key")
    for key in REQUIRED_STR:
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError.of(file, label, key, "is required and must be a non-empty string")
        _text(value, file, label, key)
    if "|" in raw["vcenter"]:  # it separates vCenter and port group in the ledger's keys
        raise ConfigError.of(file, label, "vcenter", "must not contain '|'")
    budgets = {}
    for key in DIMENSIONS:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_BUDGET:
            got = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "…"
            raise ConfigError.of(file, label, key, f"must be a positive integer (at most "
                                 f"10^15), got {got}")
        budgets[key] = value
    ratio = raw.get("vcpu-overcommit", 1.0)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio) \
            or ratio < 1.0 or ratio > 100:
        raise ConfigError.of(file, label, "vcpu-overcommit",
                             f"must be a number from 1.0 to 100, got {ratio!r}")
    flags = {}
    for key in ("exclude", "no-schedule"):
        value = raw.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError.of(file, label, key, f"must be true or false, got {value!r}")
        flags[key] = value
    labels = {} if raw.get("labels") is None else raw["labels"]
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
        for k, v in labels.items()
    ):
        raise ConfigError.of(file, label, "labels", "must be a map of strings")
    for k, v in labels.items():
        # any text: a label Kubernetes does not take is selectable all the same, and left off
        # the pool's Kubernetes object (label_warnings)
        _text(k, file, label, "labels", max_len=317)
        _text(str(v), file, label, f"labels.{k}", max_len=63)
    annotations = _annotations(raw.get("annotations"), file, label)
    taints_raw = [] if raw.get("taints") is None else raw["taints"]
    if not isinstance(taints_raw, list):
        raise ConfigError.of(file, label, "taints", "must be a list")
    taints = []
    for i, item in enumerate(taints_raw):
        taint = taint_problem(item)
        if not isinstance(taint, Taint):
            sub = f".{taint[0]}" if taint[0] else ""
            raise ConfigError.of(file, label, f"taints[{i}]{sub}", taint[1])
        taints.append(taint)
    pod = _text_field(raw, "pod", file, label) if raw.get("pod") is not None else ""
    if "|" in pod:  # it separates the parts of the ledger's keys
        raise ConfigError.of(file, label, "pod", "must not contain '|'")
    nets_raw = [] if raw.get("networks") is None else raw["networks"]
    if not isinstance(nets_raw, list):
        raise ConfigError.of(file, label, "networks", "must be a list")
    vcenter = raw["vcenter"].strip()
    listed = [_Listing(label, i, vcenter, _parse_network(n, i, label, file, pod))
              for i, n in enumerate(nets_raw)]
    seen: set[tuple[str, str, str]] = set()
    for x in listed:
        if x.identity in seen:
            raise ConfigError.of(
                file, label, "networks",
                f"port group {x.values['port-group']!r} is listed twice")
        seen.add(x.identity)
    domain = tuple((k, _text_field(raw, k, file, label)) for k in DOMAIN_KEYS if k in raw)
    short = dict(domain).get("short-name")
    if short is not None and not SHORT_NAME.fullmatch(short):
        raise ConfigError.of(file, label, "short-name", "must be 1-30 letters, digits, '-' or "
                             "'_', starting and ending with a letter or digit (upstream's "
                             "shortName)")
    pool = Pool(
        name=raw["name"].strip(),
        vcenter=vcenter,
        datacenter=raw["datacenter"].strip(),
        cluster=raw["cluster"].strip(),
        datastore=raw["datastore"].strip(),
        vcpus=budgets["vcpus"],
        memory=budgets["memory"],
        storage=budgets["storage"],
        vcpu_overcommit=float(ratio),
        exclude=flags["exclude"],
        no_schedule=flags["no-schedule"],
        labels=tuple(sorted((k, str(v)) for k, v in labels.items())),
        taints=tuple(taints),
        domain=domain,
        pod=pod,
        annotations=annotations,
    )
    return pool, listed


def _parse_network(raw: Any, index: int, pool: str, file: str, pool_pod: str
                   ) -> dict[str, Any]:
    """The fields one listing gives, each checked on its own (their agreement with each
    other is checked on the merged network: another pool may give the rest)."""
    where = f"networks[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError.of(file, pool, where, "each network must be a map")
    unknown = sorted(set(map(str, raw)) - NETWORK_KEYS)
    if unknown:
        raise ConfigError.of(file, pool, f"{where}.{unknown[0]}", "unknown key")
    pg = raw.get("port-group")
    if not isinstance(pg, str) or not pg.strip():
        raise ConfigError.of(file, pool, f"{where}.port-group", "is required")
    _text(pg, file, pool, f"{where}.port-group")
    if "|" in pg:  # it separates vCenter and port group in the ledger's keys
        raise ConfigError.of(file, pool, f"{where}.port-group", "must not contain '|'")
    values: dict[str, Any] = {"port-group": pg.strip()}
    pod = pool_pod
    if raw.get("pod") is not None:
        value = raw["pod"]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError.of(file, pool, f"{where}.pod", "must be a non-empty string")
        _text(value, file, pool, f"{where}.pod")
        if "|" in value:
            raise ConfigError.of(file, pool, f"{where}.pod", "must not contain '|'")
        if pool_pod and value.strip() != pool_pod:
            raise ConfigError.of(file, pool, f"{where}.pod",
                                 f"{value.strip()!r} is not the pool's pod {pool_pod!r}: a "
                                 "pool hands out the networks of its own pod")
        pod = value.strip()
    if pod:
        values["pod"] = pod
    vlan = raw.get("vlan")
    if vlan is not None and (isinstance(vlan, bool) or not isinstance(vlan, int)
                             or not 0 <= vlan <= 4094):
        raise ConfigError.of(file, pool, f"{where}.vlan", f"must be 0..4094, got {vlan!r}")
    if vlan is not None:
        values["vlan"] = vlan
    for key in ("cidr", "gateway"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ConfigError.of(file, pool, f"{where}.{key}", f"must be a string, got {value!r}")
        _text(value, file, pool, f"{where}.{key}")
        if value:
            values[key] = value
    if "cidr" in values:
        try:
            ipaddress.ip_network(values["cidr"], strict=False)
        except ValueError:
            raise ConfigError.of(file, pool, f"{where}.cidr",
                                 f"{values['cidr']!r} is not a CIDR") from None
    if "gateway" in values:
        try:
            ipaddress.ip_address(values["gateway"])
        except ValueError:
            raise ConfigError.of(file, pool, f"{where}.gateway",
                                 f"{values['gateway']!r} is not an IP address") from None
    if "type" in raw:
        net_type = raw["type"]
        if not isinstance(net_type, str) or not net_type:
            raise ConfigError.of(file, pool, f"{where}.type", "must be a non-empty string")
        _text(net_type, file, pool, f"{where}.type", max_len=63)
        problem = value_problem(net_type)  # the value of the Network's network-type label
        if problem:
            raise ConfigError.of(file, pool, f"{where}.type", problem)
        values["type"] = net_type
    for key in NETWORK_DETAILS:
        if raw.get(key) is not None:
            values[key] = _detail(raw, key, file, pool, where)
    if raw.get("slices") is not None:
        n = raw["slices"]
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_SLICES:
            raise ConfigError.of(file, pool, f"{where}.slices",
                                 f"must be a whole number from 2 to {MAX_SLICES}, got {n!r}")
        values["slices"] = n
    return values


def _check_network(x: _Listing, file: str) -> None:
    """Checks across the fields of one (merged) network; errors name the listing that gave
    the field found wrong."""
    v = x.values

    def fail(key: str, problem: str) -> ConfigError:
        pool, index = x.origin[key]
        return ConfigError.of(file, pool, f"networks[{index}].{key}", problem)

    net = ipaddress.ip_network(v["cidr"], strict=False) if "cidr" in v else None
    if net is not None and "gateway" in v and ipaddress.ip_address(v["gateway"]) not in net:
        raise fail("gateway", f"{v['gateway']} is not in {v['cidr']}")
    if net is not None and "netmask" in v and str(net.netmask) != v["netmask"]:
        raise fail("netmask", f"{v['netmask']} is not the netmask of {v['cidr']} "
                   f"({net.netmask})")
    if net is not None and "machine-network-cidr" in v:
        machine = ipaddress.ip_network(v["machine-network-cidr"], strict=False)
        if machine.version != net.version or not machine.overlaps(net):
            raise fail("machine-network-cidr", f"{v['machine-network-cidr']} does not "
                       f"overlap {v['cidr']}")
    listed = v.get("ip-addresses")
    if net is not None and listed:
        for i, a in enumerate(listed):
            if ipaddress.ip_address(a) not in net:
                pool, index = x.origin["ip-addresses"]
                raise ConfigError.of(file, pool, f"networks[{index}].ip-addresses[{i}]",
                                     f"{a} is not in {v['cidr']}")
    addresses = listed or (derived_addresses(v["cidr"]) if net is not None else ())
    if "gateway" in v and v["gateway"] in addresses[2:4]:
        raise fail("gateway", f"{v['gateway']} is ip-addresses[{addresses.index(v['gateway'])}]"
                   ", an address the job step takes as a VIP (ip-addresses[2] and [3])")
    v6 = ipaddress.IPv6Network(v["ipv6-cidr"], strict=False) if "ipv6-cidr" in v else None
    for key in ("ipv6-start", "ipv6-gateway"):
        if v6 is not None and key in v and ipaddress.IPv6Address(v[key]) not in v6:
            raise fail(key, f"{v[key]} is not in {v['ipv6-cidr']}")
    if "slices" in v:
        if v.get("type", DEFAULT_NETWORK_TYPE) not in SLICEABLE:
            raise fail("slices", f"only a network of type {' or '.join(SLICEABLE)} is split "
                       f"into slices, not {v.get('type', DEFAULT_NETWORK_TYPE)}")
        try:
            _network(v).pieces  # noqa: B018 - split now, so that a bad split names its field
        except ValueError as exc:
            raise fail("slices", str(exc)) from None
    if "dns" in v and "nameservers" in v:
        dns = list(v["dns"]) if isinstance(v["dns"], tuple) else [v["dns"]]
        if dns != list(v["nameservers"]):
            raise fail("nameservers", f"{list(v['nameservers'])} is not dns {dns}: give one "
                       "of them (nameservers is upstream's name)")


def _network(v: dict[str, Any]) -> Network:
    return Network(port_group=v["port-group"], vlan=v.get("vlan"), cidr=v.get("cidr", ""),
                   gateway=v.get("gateway", ""), type=v.get("type", DEFAULT_NETWORK_TYPE),
                   details=tuple((k, v[k]) for k in NETWORK_DETAILS if k in v),
                   pod=v.get("pod", ""), slices=v.get("slices", 0))


def _annotations(raw: Any, file: str, pool: str) -> tuple[tuple[str, str], ...]:
    """A pool's annotations, as Kubernetes takes them (keys like label keys, string values),
    and text by our rules (no control characters: they are written into shell lines and
    logs), bounded: (key, value) pairs sorted by key."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError.of(file, pool, "annotations", "must be a map of keys to strings")
    if len(raw) > MAX_ANNOTATIONS:
        raise ConfigError.of(file, pool, "annotations", f"at most {MAX_ANNOTATIONS} annotations")
    out, size = [], 0
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError.of(file, pool, "annotations",
                                 f"key {_shown(key)[:40]} must be a string")
        problem = text_problem(key, 317) or key_problem(key)
        if problem:
            shown = escaped(key) if text_problem(key, 317) else key
            raise ConfigError.of(file, pool, "annotations", f"key {shown!r}: {problem}")
        field = f"annotations.{key}"
        if not isinstance(value, str):
            raise ConfigError.of(file, pool, field, "must be a string (quote it in YAML), got "
                                 f"{type(value).__name__}")
        _text(value, file, pool, field, max_len=MAX_ANNOTATION_VALUE)
        size += len(key.encode()) + len(value.encode())
        if size > MAX_ANNOTATIONS_BYTES:
            raise ConfigError.of(file, pool, field, f"the annotations add up to more than "
                                 f"{MAX_ANNOTATIONS_BYTES} bytes")
        out.append((key, value))
    return tuple(sorted(out))


def _text(value: str, file: str, pool: str, field: str, max_len: int = MAX_TEXT) -> None:
    problem = text_problem(value, max_len)
    if problem:
        raise ConfigError.of(file, pool, field, problem)


def _text_field(raw: dict[str, Any], key: str, file: str, pool: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError.of(file, pool, key, "must be a non-empty string")
    _text(value, file, pool, key)
    return value.strip()


def _detail(raw: dict[str, Any], key: str, file: str, pool: str, where: str) -> Any:
    """A network's optional subnet detail, checked for what it is on its own."""
    value, field = raw[key], f"{where}.{key}"
    if key in ("dns", "nameservers", "ip-addresses"):  # addresses: a list (dns: or one)
        if key == "ip-addresses" and len(value if isinstance(value, list) else ()) \
                > MAX_ADDRESSES:
            raise ConfigError.of(file, pool, field, f"at most {MAX_ADDRESSES} addresses")
        values = value if isinstance(value, list) else [value]
        if key != "dns" and (not isinstance(value, list) or not value):
            raise ConfigError.of(file, pool, field, "must be a non-empty list of IP addresses")
        for i, v in enumerate(values):
            at = f"{field}[{i}]" if key != "dns" else field
            try:
                ipaddress.ip_address(v if isinstance(v, str) else "")
            except ValueError:
                raise ConfigError.of(file, pool, at, f"{v!r} is not an IP address") from None
            _text(v, file, pool, at)
        if key == "ip-addresses":
            seen: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int] = {}
            for i, v in enumerate(values):
                first = seen.setdefault(ipaddress.ip_address(v), i)
                if first != i:
                    raise ConfigError.of(file, pool, f"{field}[{i}]",
                                         f"{v} is listed twice (also ip-addresses[{first}])")
        return tuple(values) if isinstance(value, list) else value  # hashable, like Pool
    if not isinstance(value, str) or not value:
        raise ConfigError.of(file, pool, field, "must be a non-empty string")
    _text(value, file, pool, field)
    try:
        if key == "netmask":
            ipaddress.IPv4Network(f"0.0.0.0/{value}")
        elif key == "ipv6-cidr":
            ipaddress.IPv6Network(value, strict=False)
        elif key in ("ipv6-gateway", "ipv6-start"):
            ipaddress.IPv6Address(value)
        elif key == "machine-network-cidr":
            ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError.of(file, pool, field, f"{value!r} is not a valid {key}") from None
    return value
