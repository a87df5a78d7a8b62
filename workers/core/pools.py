"""Pools configuration: parsed and validated from plain data, no I/O."""

from __future__ import annotations

import ipaddress
import math
from typing import Any

from .errors import ConfigError
from .models import DEFAULT_NETWORK_TYPE, Network, Pool
from .taints import Taint, taint_problem
from .text import MAX_TEXT, text_problem

MAX_BUDGET = 10**15  # more than any vCenter has, and exact in the ledger's Lua numbers
DOMAIN_KEYS = ("region", "zone", "short-name", "resource-pool", "folder")
NETWORK_DETAILS = ("netmask", "ipv6-cidr", "ipv6-gateway", "dns", "router")
POOL_KEYS = {
    "name", "vcenter", "datacenter", "cluster", "datastore", "vcpus", "memory", "storage",
    "vcpu-overcommit", "exclude", "no-schedule", "labels", "networks", "taints",
    *DOMAIN_KEYS,
}
NETWORK_KEYS = {"port-group", "vlan", "cidr", "gateway", "type", *NETWORK_DETAILS}
REQUIRED_STR = ("name", "vcenter", "datacenter", "cluster", "datastore")
BUDGETS = ("vcpus", "memory", "storage")


def parse_pools(data: Any, file: str = "pools.yaml") -> tuple[Pool, ...]:
    """Validate the loaded YAML; the first problem raises ConfigError naming file, pool, field."""
    if not isinstance(data, dict) or set(data) - {"pools"}:
        extra = sorted(set(data) - {"pools"}) if isinstance(data, dict) else []
        field = extra[0] if extra else None
        raise ConfigError.of(file, None, field, "the top level must be a map with only 'pools'")
    raw_pools = data.get("pools")
    if not isinstance(raw_pools, list) or not raw_pools:
        raise ConfigError.of(file, None, "pools", "must be a non-empty list")
    pools: list[Pool] = []
    names: set[str] = set()
    port_groups: dict[tuple[str, str], str] = {}
    vcenters: dict[str, tuple[str, str]] = {}  # lower-cased host → (as written, first pool)
    for index, raw in enumerate(raw_pools):
        pool = _parse_pool(raw, index, file)
        if pool.name in names:
            raise ConfigError.of(file, pool.name, "name", "duplicate pool name")
        names.add(pool.name)
        spelled, first = vcenters.setdefault(pool.vcenter.lower(), (pool.vcenter, pool.name))
        if spelled != pool.vcenter:  # one vCenter counted as two would break spreading
            raise ConfigError.of(
                file, pool.name, "vcenter",
                f"{pool.vcenter!r} is {spelled!r} (pool {first!r}) in another case: host names "
                "are case-insensitive, so write them the same way")
        for net in pool.networks:
            key = (pool.vcenter, net.port_group)
            if key in port_groups:
                raise ConfigError.of(
                    file, pool.name, "networks",
                    f"port group {net.port_group!r} is listed twice in vCenter {pool.vcenter!r} "
                    f"(also in pool {port_groups[key]!r})",
                )
            port_groups[key] = pool.name
        pools.append(pool)
    return tuple(pools)


def _parse_pool(raw: Any, index: int, file: str) -> Pool:
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
    for key in BUDGETS:
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
        _text(k, file, label, "labels", max_len=317)
        _text(str(v), file, label, f"labels.{k}", max_len=63)
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
    nets_raw = [] if raw.get("networks") is None else raw["networks"]
    if not isinstance(nets_raw, list):
        raise ConfigError.of(file, label, "networks", "must be a list")
    networks = tuple(_parse_network(n, i, label, file) for i, n in enumerate(nets_raw))
    seen: set[str] = set()
    for n in networks:
        if n.port_group in seen:
            raise ConfigError.of(
                file, label, "networks", f"port group {n.port_group!r} is listed twice"
            )
        seen.add(n.port_group)
    return Pool(
        name=raw["name"].strip(),
        vcenter=raw["vcenter"].strip(),
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
        networks=networks,
        taints=tuple(taints),
        domain=tuple((k, _text_field(raw, k, file, label)) for k in DOMAIN_KEYS if k in raw),
    )


def _parse_network(raw: Any, index: int, pool: str, file: str) -> Network:
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
    vlan = raw.get("vlan")
    if vlan is not None and (isinstance(vlan, bool) or not isinstance(vlan, int)
                             or not 0 <= vlan <= 4094):
        raise ConfigError.of(file, pool, f"{where}.vlan", f"must be 0..4094, got {vlan!r}")
    cidr = "" if raw.get("cidr") is None else raw["cidr"]
    gateway = "" if raw.get("gateway") is None else raw["gateway"]
    for key, value in (("cidr", cidr), ("gateway", gateway)):
        if not isinstance(value, str):
            raise ConfigError.of(file, pool, f"{where}.{key}", f"must be a string, got {value!r}")
        _text(value, file, pool, f"{where}.{key}")
    try:
        net = ipaddress.ip_network(cidr, strict=False) if cidr else None
    except ValueError:
        raise ConfigError.of(file, pool, f"{where}.cidr", f"{cidr!r} is not a CIDR") from None
    if gateway:
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise ConfigError.of(
                file, pool, f"{where}.gateway", f"{gateway!r} is not an IP address"
            ) from None
        if net is not None and gw not in net:
            raise ConfigError.of(file, pool, f"{where}.gateway", f"{gateway} is not in {cidr}")
    net_type = raw.get("type", DEFAULT_NETWORK_TYPE)
    if not isinstance(net_type, str) or not net_type:
        raise ConfigError.of(file, pool, f"{where}.type", "must be a non-empty string")
    _text(net_type, file, pool, f"{where}.type", max_len=63)
    details = tuple((k, _detail(raw, k, file, pool, where)) for k in NETWORK_DETAILS
                    if raw.get(k) is not None)
    return Network(port_group=pg.strip(), vlan=vlan, cidr=str(cidr), gateway=str(gateway),
                   type=net_type, details=details)


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
    """A network's optional subnet detail, checked for what it is."""
    value, field = raw[key], f"{where}.{key}"
    if key == "dns":  # one address or a list of them
        values = value if isinstance(value, list) else [value]
        for v in values:
            try:
                ipaddress.ip_address(v if isinstance(v, str) else "")
            except ValueError:
                raise ConfigError.of(file, pool, field,
                                     f"{v!r} is not an IP address") from None
        return tuple(values) if isinstance(value, list) else value  # hashable, like Pool
    if not isinstance(value, str) or not value:
        raise ConfigError.of(file, pool, field, "must be a non-empty string")
    _text(value, file, pool, field)
    try:
        if key == "netmask":
            ipaddress.IPv4Network(f"0.0.0.0/{value}")
        elif key == "ipv6-cidr":
            ipaddress.IPv6Network(value, strict=False)
        elif key == "ipv6-gateway":
            ipaddress.IPv6Address(value)
    except ValueError:
        raise ConfigError.of(file, pool, field, f"{value!r} is not a valid {key}") from None
    return value
