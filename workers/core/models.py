"""Domain model: pools, networks, requests and leases. Pure Python, no I/O."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Any

from .errors import InvalidRequest
from .labels import parse_labels
from .lease import Lease, granted, port_group_key, rfc3339
from .taints import Taint, Toleration, parse_tolerations
from .text import MAX_TEXT, escaped, shown, text_problem
from .topology import failure_domain, lease_env

DEFAULT_NETWORK_TYPE = "single-tenant"
DEFAULT_TTL = 24 * 3600
MAX_INT = 10**9  # "absurd" guard for sizes before pool limits are applied
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


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$", re.ASCII)
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$", re.ASCII)
_LINK = re.compile(r"^https?://[^\s]+$", re.ASCII)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$")
REQUEST_FIELDS = (
    "vcpus", "memory", "storage", "vcenters", "networks", "network-type", "owner",
    "boskos-lease-id", "request-id", "ttl", "required-pool", "pool-selector", "wait",
    "labels", "job-link", "pools", "tolerations",
)


def parse_duration(value: Any, name: str, *, maximum: float) -> float:
    """Seconds from a number or a Go-style duration ("24h", "90m", "1h30m", "45s")."""
    if isinstance(value, bool):
        raise InvalidRequest.of(name, "must be seconds or a duration like '24h', not a boolean")
    if isinstance(value, int) and abs(value) > 10**12:
        raise InvalidRequest.of(name, f"{value} is absurdly large")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        m = _DURATION.match(text)
        if _NUMBER.match(text):
            seconds = float(text)
        elif text and m:
            d, h, mi, s = (float(x) if x else 0.0 for x in m.groups())
            seconds = d * 86400 + h * 3600 + mi * 60 + s
        else:
            raise InvalidRequest.of(name, f"{value!r} is not seconds or a duration like '24h'")
    else:
        raise InvalidRequest.of(name, f"must be seconds or a duration like '24h', got {_tn(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest.of(name, "must not be negative")
    if seconds > maximum:
        raise InvalidRequest.of(name, f"{seconds:g}s is more than the maximum {maximum:g}s")
    return seconds


def _tn(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _int(raw: dict[str, Any], name: str, default: int | None, minimum: int) -> int:
    value = raw.get(name, default)
    if value is None:
        raise InvalidRequest.of(name, "is required")
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequest.of(name, f"must be an integer, got {_tn(value)}")
    if value < minimum:
        raise InvalidRequest.of(name, f"must be at least {minimum}, got {value}")
    if value > MAX_INT:
        raise InvalidRequest.of(name, f"{value} is absurdly large")
    return value


def _str(raw: dict[str, Any], name: str, default: str, *, pattern: re.Pattern[str] | None = None,
         max_len: int = 253) -> str:
    value = raw.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidRequest.of(name, f"must be a string, got {_tn(value)}")
    problem = text_problem(value, max_len)
    if problem:
        raise InvalidRequest.of(name, problem)
    if value and pattern is not None and not pattern.match(value):
        raise InvalidRequest.of(name, f"{shown(value)} has characters outside "
                                "[A-Za-z0-9._:@/+=-] or does not start with a letter or digit")
    return value


def text_arg(value: Any, name: str, *, max_len: int = MAX_TEXT, required: bool = True) -> str:
    """A string argument of a task (owner, lease id, pool, task id): valid text, bounded."""
    if not isinstance(value, str) or (required and not value):
        raise InvalidRequest.of(name, f"must be a non-empty string, got {_tn(value)}"
                                if not isinstance(value, str) else "must not be empty")
    problem = text_problem(value, max_len)
    if problem:
        raise InvalidRequest.of(name, problem)
    return value


def _default_id(task_id: str) -> str:
    """The task id as the request-id when none is given: it must be one a client could send."""
    if task_id and not _ID.match(task_id):
        raise InvalidRequest.of("request-id", f"none given, and the task id {shown(task_id)} "
                                "cannot serve as one: give a request-id")
    return task_id


def _link(data: dict[str, Any]) -> str:
    """job-link: a link to the job holding the lease (http or https), or empty."""
    link = _str(data, "job-link", "", max_len=2048)
    if link and not _LINK.match(link):
        raise InvalidRequest.of("job-link", "must be an http:// or https:// URL")
    return link


def normalize_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept snake_case spellings of the hyphenated contract keys."""
    return {str(k).replace("_", "-"): v for k, v in raw.items()}


def parse_request(
    raw: Any,
    *,
    default_owner: str = "anonymous",
    default_request_id: str = "",
    default_ttl: float = DEFAULT_TTL,
    max_ttl: float = 7 * 86400,
    max_wait: float = 7 * 86400,
    where: str = "",
) -> Request:
    """Validate a raw acquire request. Errors name the field."""
    prefix = f"{where}." if where else ""
    if not isinstance(raw, dict):
        raise InvalidRequest.of(where or "request", f"must be an object, got {_tn(raw)}")
    data = normalize_keys(raw)
    unknown = sorted(set(data) - set(REQUEST_FIELDS))
    if unknown:
        name = unknown[0] if not text_problem(unknown[0], 64) else escaped(unknown[0])
        raise InvalidRequest.of(
            prefix + name, f"unknown field (known: {', '.join(REQUEST_FIELDS)})"
        )
    try:
        pools = 0
        if data.get("pools") is not None:
            pools = _int(data, "pools", None, 1)
        vcenters = _int(data, "vcenters", 1, 0) or 1
        if pools and data.get("vcenters") in (None, 0):
            vcenters = 0  # P pools on as many vCenters as spreading picks
        if pools and vcenters > pools:
            raise InvalidRequest.of("pools", f"{pools} pools cannot span {vcenters} vCenters: "
                                    "pools must be at least vcenters")
        selector = data.get("pool-selector")
        selector = {} if selector is None else selector
        if not isinstance(selector, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
        ):
            raise InvalidRequest.of("pool-selector", "must be a map of string labels to strings")
        if len(selector) > 32:
            raise InvalidRequest.of("pool-selector", "at most 32 labels")
        for k, v in selector.items():
            problem = text_problem(k, 317) or text_problem(v, 63)
            if problem or not k:
                raise InvalidRequest.of("pool-selector", f"label {shown(k)}: "
                                        f"{problem or 'the key must not be empty'}")
        required = _str(data, "required-pool", "", max_len=253) or None
        owner = _str(data, "owner", default_owner, max_len=253) or default_owner
        ttl = parse_duration(data.get("ttl", default_ttl), "ttl", maximum=max_ttl)
        if ttl < 1:
            raise InvalidRequest.of("ttl", "must be at least 1 second")
        vcpus, memory = _int(data, "vcpus", None, 0), _int(data, "memory", None, 0)
        networks = _int(data, "networks", 1, 0)
        if vcpus == 0 and memory == 0 and networks == 0:
            # a network-only lease (vcpus 0, memory 0) is for its port groups
            raise InvalidRequest.of("networks", "must be at least 1 for a network-only lease "
                                    "(vcpus 0 and memory 0)")
        if vcpus == 0 and memory == 0 and data.get("storage"):
            raise InvalidRequest.of("storage", "a network-only lease (vcpus 0 and memory 0) "
                                    "takes only port groups: storage must be 0")
        return Request(
            vcpus=vcpus,
            memory=memory,
            storage=_int(data, "storage", 0, 0),
            vcenters=vcenters,
            networks=networks,
            network_type=_str(data, "network-type", DEFAULT_NETWORK_TYPE, max_len=63)
            or DEFAULT_NETWORK_TYPE,
            owner=owner,
            boskos_lease_id=_str(data, "boskos-lease-id", "", max_len=253),
            request_id=_str(data, "request-id", "", pattern=_ID, max_len=128)
            or _default_id(default_request_id),
            ttl=int(ttl),
            required_pool=required,
            pool_selector=tuple(sorted(selector.items())),
            wait=parse_duration(0 if data.get("wait") is None else data["wait"], "wait",
                                maximum=max_wait),
            labels=parse_labels(data.get("labels")),
            job_link=_link(data),
            pools=pools,
            tolerations=parse_tolerations(data.get("tolerations")),
        )
    except InvalidRequest as exc:
        if prefix:
            raise InvalidRequest.of(prefix + exc.field, exc.message.split(": ", 1)[-1]) from None
        raise


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
