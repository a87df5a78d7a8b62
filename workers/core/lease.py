"""A lease, typed. The wire shape (`{"spec", "status", "metadata"}`, hyphenated keys) is what
Redis, the mirror, Celery results and the HTTP API carry; the service reads a `Lease`.

`Lease.from_wire(d).to_wire() == d` for any lease, key order included: the record a lease was
read from rides along (`raw`), so keys not modelled here (and keys added by later versions)
are never lost, and a lease written back is byte-for-byte what was read but for the fields
changed. Pure Python, no I/O, no imports from the rest of the core (the others build on it)."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def port_group_key(vcenter: str, port_group: str, pod: str = "", slice_: str = "") -> str:
    """Ledger key of a network: "<vcenter>|<port group>[|<pod>[|<slice>]]", trailing empty
    parts left out (a network of no pod and no slice keeps the key it always had). A port
    group is one network of its vCenter and pod, whichever pools list it; a slice of a
    multi-tenant network is keyed by its address range ("<first>-<last>"). No part holds
    '|' (the pools file refuses it). The Lua prelude's net_key builds the same string."""
    if slice_:
        return f"{vcenter}|{port_group}|{pod}|{slice_}"
    if pod:
        return f"{vcenter}|{port_group}|{pod}"
    return f"{vcenter}|{port_group}"


def network_key(vcenter: str, entry: Mapping[str, Any]) -> str:
    """The ledger key of one entry of a lease's `networks` (its pod and slice, when they are
    strings: anything else reads as unset, as in the Lua scripts)."""
    pod, slice_ = entry.get("pod"), entry.get("slice")
    return port_group_key(vcenter, entry["port-group"], pod if isinstance(pod, str) else "",
                          slice_ if isinstance(slice_, str) else "")


@lru_cache(maxsize=65536)
def key_parts(key: str) -> tuple[str, str, str]:
    """(family, pod, slice) of a ledger key; the family is "<vcenter>|<port group>"."""
    parts = key.split("|", 3)
    family = "|".join(parts[:2])
    return family, parts[2] if len(parts) > 2 else "", parts[3] if len(parts) > 3 else ""


@lru_cache(maxsize=65536)
def _span(slice_: str) -> tuple[int, int, int] | None:
    """(IP version, first, last) of a slice "<first>-<last>"; None if it is not one."""
    first, sep, last = slice_.partition("-")
    try:
        a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
    except ValueError:
        return None
    return (a.version, int(a), int(b)) if sep and a.version == b.version else None


def keys_clash(a: str, b: str) -> bool:
    """Whether two ledger keys may not be held at once: the same port group of one vCenter,
    in the same pod (a key of no pod, written before pods were configured, clashes with every
    pod's), and overlapping addresses (a whole network overlaps each of its slices; slices
    overlap when their address ranges do, so a network split anew never hands out addresses
    a slice of the old split still holds)."""
    if a == b:
        return True
    fa, pa, sa = key_parts(a)
    fb, pb, sb = key_parts(b)
    if fa != fb or (pa and pb and pa != pb):
        return False
    if not sa or not sb:
        return True
    ra, rb = _span(sa), _span(sb)
    if ra is None or rb is None:  # not a range: only the same slice clashes
        return sa == sb
    return ra[0] == rb[0] and ra[1] <= rb[2] and rb[1] <= ra[2]


def port_group_keys(vcenter: str, networks: Iterable[Mapping[str, Any]] | None) -> list[str]:
    """The ledger keys of the networks in a lease's `networks`."""
    return [network_key(vcenter, n) for n in networks or ()]


def lease_port_groups(lease: Mapping[str, Any]) -> list[str]:
    """The ledger keys of the port groups a lease in the wire shape holds (the ledger, an
    edge, stays wire-shaped)."""
    st = lease["status"]
    return port_group_keys(st["vcenter"], st.get("networks"))


GROUP_LABEL = "boskos-lease-id"
# on the leases `vcm.adopt` recorded (a lease granted elsewhere, before a cut-over)
ADOPTED_LABEL = "vsphere-capacity-manager.splat-team.io/adopted"


Install = tuple[str, str]  # (owner, boskos-lease-id): the leases of one install


def install_group(labels: Mapping[str, Any] | None, boskos_lease_id: Any) -> str:
    """The group a lease (or request) belongs to beyond itself: its `boskos-lease-id` label,
    else its `boskos-lease-id` field; "" when it has neither (then it is an install alone,
    with the other leases of its own request). The leases of one owner with one group are one
    install (`Install`): they may share networks and prefer the VLANs they hold. The owner is
    part of it, so that nobody joins another owner's install by naming its group."""
    label = (labels or {}).get(GROUP_LABEL) if isinstance(labels, Mapping) else None
    if isinstance(label, str) and label:
        return label
    return boskos_lease_id if isinstance(boskos_lease_id, str) else ""


def network_only(vcpus: Any, memory: Any) -> bool:
    """Whether a lease (or request) asks for port groups alone: no vCPUs, no memory (an
    install's extra NICs, its bastion). It takes no part in its install's common network:
    it gets free port groups of its own, and the install's later leases never share them."""
    return vcpus == 0 and memory == 0


def sharing_install(owner: str, group: str, vcpus: Any, memory: Any) -> Install | None:
    """The install whose networks a lease (or request) shares: (owner, group) when it has a
    group and vCPUs or memory; None otherwise (its networks are its own request's)."""
    return (owner, group) if group and not network_only(vcpus, memory) else None


def entry_vlan(entry: Mapping[str, Any]) -> tuple[str, int] | None:
    """The VLAN of one of a lease's networks, as (pod, vlan); None when it has no vlan."""
    vlan, pod = entry.get("vlan"), entry.get("pod")
    if isinstance(vlan, bool) or not isinstance(vlan, int):
        return None
    return (pod if isinstance(pod, str) else "", vlan)


# The wire shape's sections, in the order a new lease writes them.
SECTIONS = ("spec", "status", "metadata")
NETWORK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "port-group": {"type": "string"}, "vlan": {"type": ["integer", "null"]},
        "cidr": {"type": "string"}, "gateway": {"type": "string"}, "type": {"type": "string"},
        "pod": {"type": "string"}, "machine-network-cidr": {"type": "string"},
        "ip-addresses": {"type": "array", "items": {"type": "string"}, "description":
                         "when configured, or a slice's; else the cidr's addresses from the "
                         "network address on ([2] and [3]: the VIPs)"},
        "ipv6-cidr": {"type": "string"}, "ipv6-start": {"type": "string"},
        "nameservers": {"type": "array", "items": {"type": "string"}},
        "router": {"type": "string"}, "datacenter": {"type": "string"},
    },
}
_TEXT = {"type": "string"}
_COUNT = {"type": "integer"}
_TIME = {"type": "string", "format": "date-time"}


@dataclass(frozen=True)
class _Field:
    section: str
    key: str  # the wire key
    attr: str  # the Lease attribute (set once the class is built)
    default: Any  # the value when absent or null
    new: bool  # a new lease writes it even when it holds `default`
    schema: dict[str, Any]
    request: str  # a new lease takes the request's attribute of this name
    pool: str  # ... or the pool's


def wire(section: str, key: str, default: Any, schema: Mapping[str, Any], *,
         new: bool = True, request: str = "", pool: str = "") -> Any:
    """A Lease field and everything that follows from it: where the wire shape keeps it
    (`section`, `key`; the field order is the order within the section), its value when a
    record lacks it (or holds null), its JSON Schema for the OpenAPI document, whether a new
    lease writes it when it holds that value (`new`; False: only when it holds something), and
    where a new lease takes its value: the `request` attribute or the `pool` attribute of that
    name (neither: the lease factory sets it)."""
    meta = {"wire": _Field(section, key, "", default, new, dict(schema), request, pool)}
    if isinstance(default, list | dict):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Lease:
    """What the service reads of a lease: each field declared once, with its place in the wire
    shape. Absent (or null) keys read as their empty value."""

    id: str = wire("metadata", "name", "", {**_TEXT, "description": "the lease id"})
    created_at: str = wire("metadata", "creationTimestamp", "", _TEXT)
    # spec: the request's sizes
    vcpus: int = wire("spec", "vcpus", 0, _COUNT, request="vcpus")
    memory: int = wire("spec", "memory", 0, _COUNT, request="memory")
    storage: int = wire("spec", "storage", 0, _COUNT, request="storage")
    vcenters: int = wire("spec", "vcenters", 0, _COUNT, request="vcenters")
    network_count: int = wire("spec", "networks", 0,  # how many port groups were asked for
                              _COUNT, request="networks")
    pools: int = wire("spec", "pools", 0,  # only when the request asked for P pools
                      {**_COUNT, "description": "P distinct pools were asked for"},
                      new=False, request="pools")
    required_pool: str = wire("spec", "required-pool", "",  # the pool the request named
                              {**_TEXT, "description": "the one pool the request named"},
                              new=False, request="required_pool")
    pool_selector: dict[str, str] = wire(
        "spec", "pool-selector", {},
        {"type": "object", "additionalProperties": {"type": "string"},
         "description": "the labels the request's pools had to carry"},
        new=False, request="pool_selector")
    tolerations: list[dict[str, str]] = wire(
        "spec", "tolerations", [],
        {"type": "array", "items": {"type": "object", "additionalProperties": {
            "type": "string"}}, "description": "the request's tolerations (key, operator, "
         "value, effect)"}, new=False, request="toleration_dicts")
    # status
    leased_at: str = wire("status", "leased-at", "", _TIME)  # RFC 3339, whole seconds
    expires_at: str = wire("status", "expires-at", "", _TIME)
    boskos_lease_id: str = wire("status", "boskos-lease-id", "", _TEXT,
                                request="boskos_lease_id")
    pool: str = wire("status", "pool", "", _TEXT, pool="name")
    vcenter: str = wire("status", "vcenter", "", _TEXT, pool="vcenter")
    datacenter: str = wire("status", "datacenter", "", _TEXT, pool="datacenter")
    cluster: str = wire("status", "cluster", "", _TEXT, pool="cluster")
    datastore: str = wire("status", "datastore", "", _TEXT, pool="datastore")
    networks: list[dict[str, Any]] = wire("status", "networks", [],  # wire dicts (port-group...)
                                          {"type": "array", "items": NETWORK_SCHEMA})
    owner: str = wire("status", "owner", "", _TEXT, request="owner")
    request_id: str = wire("status", "request-id", "", _TEXT, request="request_id")
    state: str = wire("status", "state", "",
                      {**_TEXT, "description": "leased | released | set-aside | unknown"})
    labels: dict[str, str] = wire("status", "labels", {},
                                  {"type": "object", "additionalProperties": {"type": "string"},
                                   "description": "the request's labels"}, request="labels")
    job_link: str = wire("status", "job-link", "",
                         {**_TEXT, "description": "a link to the job holding the lease"},
                         request="job_link")
    failure_domain: dict[str, Any] | None = wire(
        "status", "failure-domain", None,
        {"type": ["object", "null"], "description": "the pool as an install-config "
         "failure domain (platform.vsphere.failureDomains); topology.networks as "
         "/<datacenter>/network/<port group> paths"})
    env: str = wire("status", "env", "",  # the shell lines, as written when granted
                    {**_TEXT, "description": "`export VCM_...` lines for a job step"})
    env_vars: str = wire("status", "env-vars", "",  # upstream's envVars, as written when granted
                         {**_TEXT, "description": "upstream's envVars: `export vsphere_url=...`, "
                          "GOVC_URL, ... lines for the lease's pool and first network"})
    pool_info: list[dict[str, Any]] = wire(
        "status", "pool-info", [],
        {"type": "array", "items": {"type": "object"}, "description": "upstream's poolInfo: "
         "the failure domain (name: the Pool object's name) of each pool of the request, in "
         "the order of its leases; only when it asked for more than one pool"}, new=False)
    pool_annotations: dict[str, str] = wire(
        "status", "pool-annotations", {},
        {"type": "object", "additionalProperties": {"type": "string"},
         "description": "the pool's annotations, as configured (ci-auth-path: where the job "
         "finds the vCenter's credentials)"}, new=False, pool="annotations")
    released_at: str = wire("status", "released-at", "", _TEXT, new=False)  # a released lease
    release_reason: str = wire("status", "release-reason", "", _TEXT, new=False)
    # the record this lease was read from: unknown keys and the key order (not copied: the
    # caller does not change it afterwards)
    raw: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    # set by from_wire only: every field still holds what `raw` holds (replace() clears it)
    _verbatim: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Lease:
        values: dict[str, Any] = {}
        for name, fields in _SECTIONS:
            sec = wire.get(name)
            get = sec.get if isinstance(sec, dict) else {}.get
            for key, attr, default, _ in fields:
                v = get(key)
                values[attr] = _absent(default) if v is None else v
        values["raw"] = wire
        values["_verbatim"] = True
        return cls._of(values)

    @classmethod
    def _of(cls, values: dict[str, Any]) -> Lease:
        """A lease from a value for every field. A frozen __init__ sets each of them through
        object.__setattr__: several times slower, and leases are read by the thousand."""
        lease = object.__new__(cls)
        lease.__dict__.update(values)
        return lease

    @classmethod
    def of(cls, **fields: Any) -> Lease:
        """Lease(**fields) (a new lease, read from no record) at a fraction of the cost: a
        frozen __init__ sets each field through object.__setattr__. For the acquire path."""
        _known(fields)
        return cls._of({**_SCALARS, **{attr: kind() for attr, kind in _CONTAINERS}, **fields,
                        "raw": None, "_verbatim": False})

    def evolve(self, **changes: Any) -> Lease:
        """dataclasses.replace without the frozen __init__'s cost; the record it was read
        from still rides along (its other keys, its order)."""
        _known(changes)
        return self._of({**self.__dict__, **changes, "_verbatim": False})

    def to_wire(self) -> dict[str, Any]:
        """The wire shape: new dicts at the top and per section (values below are shared)."""
        raw = self.raw
        if raw is None:  # a new lease: the layout make_lease has always written
            return {name: self._new_section(always, optional)
                    for name, always, optional in _NEW}
        if self._verbatim:  # read and unchanged: as it came
            return {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
        out: dict[str, Any] = {}
        for name, old in raw.items():
            if name not in _KEYS:
                out[name] = old
                continue
            sec = self._overlay(name, old if isinstance(old, dict) else {})
            out[name] = sec if sec or isinstance(old, dict) else old
        for name, _ in _SECTIONS:
            if name not in raw:
                sec = self._overlay(name, {})
                if sec:
                    out[name] = sec
        return out

    def _new_section(self, always: tuple[tuple[str, str], ...],
                     optional: tuple[tuple[str, str, Any], ...]) -> dict[str, Any]:
        values = self.__dict__
        out = {key: values[attr] for key, attr in always}
        for key, attr, default in optional:
            if values[attr] != default:
                out[key] = values[attr]
        return out

    def _overlay(self, name: str, old: Mapping[str, Any]) -> dict[str, Any]:
        """`old` with this lease's fields written over it, in its order; a field `old` lacks
        is added (at the end) only when it holds something."""
        known = _KEYS[name]
        values = self.__dict__
        out: dict[str, Any] = {}
        for key, was in old.items():
            f = known.get(key)
            if f is None:
                out[key] = was
                continue
            v = values[f[1]]
            out[key] = was if was is v or (was is None and v == f[2]) else v
        for key, attr, default, _ in _BY_SECTION[name]:
            if key not in old:
                v = values[attr]
                if v != default:
                    out[key] = v
        return out

    # derived ---------------------------------------------------------------------------
    @property
    def port_groups(self) -> list[str]:
        """The ledger keys of the port groups this lease holds."""
        return port_group_keys(self.vcenter, self.networks)

    @property
    def group(self) -> str:
        """Its install's `boskos-lease-id` ("" none): lease.install_group."""
        return install_group(self.labels, self.boskos_lease_id)

    @property
    def install(self) -> Install | None:
        """The install whose networks it shares (lease.sharing_install): (owner, group) when
        it has a group and is not network-only, else None."""
        return sharing_install(self.owner, self.group, self.vcpus, self.memory)

    @property
    def vlans(self) -> list[tuple[str, int]]:
        """The VLANs of its networks, as (pod, vlan) (networks with no vlan left out)."""
        return [v for v in map(entry_vlan, self.networks) if v is not None]

    @property
    def leased_epoch(self) -> float:
        """leased-at in seconds since the epoch (ValueError if it is not RFC 3339)."""
        return parse_rfc3339(self.leased_at)

    @property
    def expires_epoch(self) -> float:
        return parse_rfc3339(self.expires_at)

    @property
    def active(self) -> bool:
        return self.state == "leased"

    @property
    def order(self) -> tuple[str, str]:
        """The order leases are listed and paged in: (leased-at, id)."""
        return self.leased_at, self.id


# what the methods above read, derived from the fields' declarations ------------------------
FIELDS: tuple[_Field, ...] = tuple(replace(f.metadata["wire"], attr=f.name)
                                   for f in dataclasses.fields(Lease) if "wire" in f.metadata)
# per section, in wire order: (wire key, attribute, value when absent or null, written by a
# new lease even when so)
_Row = tuple[str, str, Any, bool]
_SECTIONS: tuple[tuple[str, tuple[_Row, ...]], ...] = tuple(
    (name, tuple((f.key, f.attr, f.default, f.new) for f in FIELDS if f.section == name))
    for name in SECTIONS)
_BY_SECTION = dict(_SECTIONS)
_KEYS = {name: {f[0]: f for f in rows} for name, rows in _SECTIONS}
_ATTRS = frozenset(f.attr for f in FIELDS)
_SCALARS = {f.attr: f.default for f in FIELDS if not isinstance(f.default, list | dict)}
_CONTAINERS = tuple((f.attr, type(f.default)) for f in FIELDS if isinstance(f.default, list | dict))
# a new lease's layout: per section the keys always written, then those written when set
_NEW = tuple((name, tuple((f[0], f[1]) for f in rows if f[3]),
              tuple((f[0], f[1], f[2]) for f in rows if not f[3]))
             for name, rows in _SECTIONS)


def _known(fields: Mapping[str, Any]) -> None:
    if not fields.keys() <= _ATTRS:
        raise TypeError(f"Lease has no field {sorted(fields.keys() - _ATTRS)[0]!r}")


def _absent(default: Any) -> Any:
    """The value of a key a record lacks: a fresh container, never the shared default."""
    return type(default)() if isinstance(default, list | dict) else default


def granted(req: Any, pool: Any) -> dict[str, Any]:
    """The fields a new lease takes from its request and its pool (see `wire`)."""
    out = {}
    for f in FIELDS:
        if f.request or f.pool:
            value = getattr(req, f.request) if f.request else getattr(pool, f.pool)
            if value is None:  # not asked for (a request's required_pool)
                value = _absent(f.default)
            out[f.attr] = dict(value) if isinstance(f.default, dict) else value
    return out


def lease_schema() -> dict[str, Any]:
    """The wire shape as a JSON Schema: the OpenAPI document's Lease."""
    return {"type": "object", "title": "Lease", "required": list(SECTIONS),
            "properties": {name: {"type": "object", "properties": {
                f.key: f.schema for f in FIELDS if f.section == name}} for name in SECTIONS}}
