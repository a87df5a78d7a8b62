"""The typed Lease against the wire shape: every lease the service makes (and any record with
keys it does not model) goes wire -> Lease -> wire byte-for-byte, and every attribute holds
what the wire dict holds."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from api_shim.schemas import LEASE
from tests.support.strategies import permutation, subset
from workers.core.grants import make_lease, new_lease
from workers.core.lease import Lease, lease_port_groups, port_group_key, rfc3339
from workers.core.models import Network, Pool, Request
from workers.core.taints import Toleration
from workers.core.topology import env_values, failure_domain, lease_env, platform_vsphere
from workers.core.upstream import env_vars

# wire (section, key) -> (attribute, value when the key is absent or null): written out here
# again on purpose, so the test does not trust lease.py's own table
WIRE = {
    ("metadata", "name"): ("id", ""),
    ("metadata", "creationTimestamp"): ("created_at", ""),
    ("spec", "vcpus"): ("vcpus", 0),
    ("spec", "memory"): ("memory", 0),
    ("spec", "storage"): ("storage", 0),
    ("spec", "vcenters"): ("vcenters", 0),
    ("spec", "networks"): ("network_count", 0),
    ("spec", "pools"): ("pools", 0),
    ("spec", "required-pool"): ("required_pool", ""),
    ("spec", "pool-selector"): ("pool_selector", {}),
    ("spec", "tolerations"): ("tolerations", []),
    ("status", "leased-at"): ("leased_at", ""),
    ("status", "expires-at"): ("expires_at", ""),
    ("status", "boskos-lease-id"): ("boskos_lease_id", ""),
    ("status", "pool"): ("pool", ""),
    ("status", "vcenter"): ("vcenter", ""),
    ("status", "datacenter"): ("datacenter", ""),
    ("status", "cluster"): ("cluster", ""),
    ("status", "datastore"): ("datastore", ""),
    ("status", "networks"): ("networks", []),
    ("status", "owner"): ("owner", ""),
    ("status", "request-id"): ("request_id", ""),
    ("status", "state"): ("state", ""),
    ("status", "labels"): ("labels", {}),
    ("status", "job-link"): ("job_link", ""),
    ("status", "failure-domain"): ("failure_domain", None),
    ("status", "env"): ("env", ""),
    ("status", "env-vars"): ("env_vars", ""),
    ("status", "pool-info"): ("pool_info", []),
    ("status", "pool-annotations"): ("pool_annotations", {}),
    ("status", "released-at"): ("released_at", ""),
    ("status", "release-reason"): ("release_reason", ""),
}

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=12)
# what a pool and its networks are named: no NUL, which the pools file refuses and no shell
# variable (upstream's envVars) can hold
pool_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",),
                                   exclude_characters="\x00"), min_size=1, max_size=12)
keys = st.text("abcdefghijklmnopqrstuvwxyz-./", min_size=1, max_size=10)
sizes = st.integers(0, 10**6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | names,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=6)


# Strategies are built once, here, rather than in the composites' bodies (see
# tests/support/strategies.py).
NETWORK_DETAILS = st.dictionaries(
    st.sampled_from(["dns", "mtu", "ipv6-cidr", "machine-cidr"]),
    st.lists(pool_names, max_size=2) | pool_names | sizes, max_size=2)
VLANS = st.none() | st.integers(1, 4094)
CIDRS = st.sampled_from(["", "10.0.0.0/24"])
GATEWAYS = st.sampled_from(["", "10.0.0.1"])
NETWORK_TYPES = st.sampled_from(["single-tenant", "multi-tenant"])
DOMAINS = st.dictionaries(st.sampled_from(["short-name", "resource-pool", "folder"]), pool_names,
                          max_size=3)
POOL_LABELS = st.dictionaries(st.sampled_from(["region", "zone", "team"]), pool_names,
                              max_size=3)
ANNOTATIONS = st.dictionaries(st.sampled_from(["ci-auth-path", "a.example/b"]), pool_names,
                              max_size=2)
REQUEST_LABELS = st.dictionaries(keys, names, max_size=3)
COUNTS = st.integers(0, 4)
OPTIONAL_NAMES = st.just("") | names
TTLS = st.integers(1, 7 * 86400)
JOB_LINKS = st.sampled_from(["", "https://ci.example/job/1"])
TIMES = st.integers(0, 4 * 10**9)
EXTRA_KEYS = {n: st.dictionaries(keys, json_values, max_size=n) for n in (2, 3)}


OPTIONAL_POOLS = st.none() | names
POOL_SELECTORS = st.dictionaries(keys, names, max_size=2)
TOLERATIONS = st.lists(st.builds(
    Toleration, key=keys, operator=st.sampled_from(["Exists", "Equal"]),
    value=names, effect=st.sampled_from(["", "NoSchedule"])), max_size=2)


@st.composite
def networks(draw: st.DrawFn) -> Network:
    details = draw(NETWORK_DETAILS)
    return Network(port_group=draw(pool_names), vlan=draw(VLANS),
                   cidr=draw(CIDRS),
                   gateway=draw(GATEWAYS),
                   type=draw(NETWORK_TYPES),
                   details=tuple((k, tuple(v) if isinstance(v, list) else v)
                                 for k, v in details.items()))


NETWORK_LISTS = st.lists(networks(), max_size=4)


@st.composite
def pools(draw: st.DrawFn) -> Pool:
    domain = draw(DOMAINS)
    labels = draw(POOL_LABELS)
    annotations = draw(ANNOTATIONS)
    return Pool(annotations=tuple(sorted(annotations.items())),
                name=draw(pool_names), vcenter=draw(pool_names), datacenter=draw(pool_names),
                cluster=draw(pool_names), datastore=draw(pool_names), vcpus=draw(sizes),
                memory=draw(sizes), storage=draw(sizes),
                labels=tuple(sorted(labels.items())),
                networks=tuple(draw(NETWORK_LISTS)),
                domain=tuple(domain.items()))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    labels = draw(REQUEST_LABELS)
    return Request(vcpus=draw(sizes), memory=draw(sizes), storage=draw(sizes),
                   vcenters=draw(COUNTS), networks=draw(COUNTS),
                   owner=draw(names), boskos_lease_id=draw(OPTIONAL_NAMES),
                   request_id=draw(OPTIONAL_NAMES), ttl=draw(TTLS),
                   labels=tuple(sorted(labels.items())),
                   job_link=draw(JOB_LINKS),
                   pools=draw(COUNTS), required_pool=draw(OPTIONAL_POOLS),
                   pool_selector=tuple(sorted(draw(POOL_SELECTORS).items())),
                   tolerations=tuple(draw(TOLERATIONS)))


POOLS, REQUESTS = pools(), requests()


@st.composite
def granted(draw: st.DrawFn) -> tuple[dict[str, Any], Lease]:
    """A lease as make_lease makes it (checked against the hand-built layout), and as
    new_lease makes it."""
    pool, req = draw(POOLS), draw(REQUESTS)
    # the pool's distinct networks, any of them (equal networks are one network)
    nets = subset(draw, list(dict.fromkeys(pool.networks))) if pool.networks else []
    args = (draw(names), req, pool, nets, draw(TIMES))
    wire = make_lease(*args)
    assert same(wire, wire_lease(*args))
    return wire, new_lease(*args)


def wire_lease(lease_id: str, req: Request, pool: Pool, nets: list[Network], now: float
               ) -> dict[str, Any]:
    """A new lease as it was built by hand before Lease existed: the layout to keep."""
    spec = req.spec()
    if req.required_pool:
        spec["required-pool"] = req.required_pool
    if req.pool_selector:
        spec["pool-selector"] = dict(req.pool_selector)
    if req.tolerations:
        spec["tolerations"] = [t.to_dict() for t in req.tolerations]
    lease = {
        "spec": spec,
        "status": {
            "leased-at": rfc3339(now), "expires-at": rfc3339(now + req.ttl),
            "boskos-lease-id": req.boskos_lease_id, "pool": pool.name,
            "vcenter": pool.vcenter, "datacenter": pool.datacenter, "cluster": pool.cluster,
            "datastore": pool.datastore, "networks": [n.to_dict() for n in nets],
            "owner": req.owner, "request-id": req.request_id, "state": "leased",
            "labels": dict(req.labels), "job-link": req.job_link,
            "failure-domain": failure_domain(pool, nets),
        },
        "metadata": {"name": lease_id, "creationTimestamp": rfc3339(now)},
    }
    lease["status"]["env"] = lease_env(lease)
    lease["status"]["env-vars"] = env_vars(lease)
    if pool.annotations:
        lease["status"]["pool-annotations"] = dict(pool.annotations)
    return lease


def released(wire: dict[str, Any], at: str, reason: str) -> dict[str, Any]:
    """A released lease's record as the ledger shows it (state set, two keys added)."""
    out = copy.deepcopy(wire)
    out["status"].update(state="released", **{"released-at": at, "release-reason": reason})
    return out


GRANTED = granted()


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """Records as stored or answered: granted, released, renewed, older ones lacking keys,
    newer ones with keys not modelled, nulls; sections possibly in another order."""
    wire = copy.deepcopy(draw(GRANTED)[0])
    if draw(st.booleans()):
        wire = released(wire, rfc3339(draw(TIMES)), draw(names))
    for name in ("spec", "status", "metadata"):
        sec = wire[name]
        for key in some(draw, sec, 3):
            del sec[key]  # an older record
        for key in some(draw, sec, 2):
            sec[key] = None
        for key, value in draw(EXTRA_KEYS[3]).items():
            sec.setdefault(key, value)  # a later version's keys, at the end
        if draw(st.booleans()):  # and in another order
            items = list(sec.items())
            wire[name] = dict(permutation(draw, items))
    for key, value in draw(EXTRA_KEYS[2]).items():
        wire.setdefault(key, value)
    order = permutation(draw, list(wire))
    wire = {k: wire[k] for k in order}
    for key in some(draw, wire, 1):
        del wire[key]
    return wire


def some(draw: st.DrawFn, d: dict[str, Any], n: int) -> list[str]:
    """Up to n of d's keys."""
    if not d:
        return []
    return subset(draw, sorted(d), max_size=n)


RECORDS = records()


def same(a: Any, b: Any) -> bool:
    """Equal, key order included (what the stored JSON bytes depend on)."""
    return json.dumps(a, sort_keys=False) == json.dumps(b, sort_keys=False) and a == b


def assert_attributes(lease: Lease, wire: dict[str, Any]) -> None:
    for (name, key), (attr, absent) in WIRE.items():
        sec = wire.get(name) if isinstance(wire.get(name), dict) else {}
        value = sec.get(key)
        assert getattr(lease, attr) == (absent if value is None else value), (name, key)


@settings(max_examples=150, deadline=None)
@given(GRANTED)
def test_a_new_lease_round_trips_byte_for_byte(made: tuple[dict[str, Any], Lease]) -> None:
    wire, lease = made
    assert same(lease.to_wire(), wire)
    read = Lease.from_wire(wire)
    assert same(read.to_wire(), wire)
    assert read == lease
    stored = json.loads(json.dumps(wire))  # as it comes back from Redis or Celery
    assert same(Lease.from_wire(stored).to_wire(), wire)
    assert_attributes(read, wire)
    assert list(wire) == ["spec", "status", "metadata"]
    assert ("pools" in wire["spec"]) == bool(lease.pools)


@settings(max_examples=150, deadline=None)
@given(RECORDS)
def test_any_record_round_trips_with_the_keys_it_was_not_built_for(wire: dict[str, Any]
                                                                   ) -> None:
    before = copy.deepcopy(wire)
    lease = Lease.from_wire(wire)
    assert same(lease.to_wire(), wire)
    assert_attributes(lease, wire)
    assert same(wire, before)  # reading changes nothing
    # nothing changed: evolving with the same values writes the same record
    assert same(lease.evolve(owner=lease.owner, labels=dict(lease.labels)).to_wire(), wire)


@settings(max_examples=100, deadline=None)
@given(RECORDS, TIMES)
def test_a_renewal_changes_expires_at_only_in_place(wire: dict[str, Any], ts: int) -> None:
    """What renew did to the dict by hand: the key keeps its place, or is added at the end."""
    lease = Lease.from_wire(wire)
    new = rfc3339(ts)
    expected = copy.deepcopy(wire)
    if not isinstance(expected.get("status"), dict):
        expected["status"] = {}
    expected["status"]["expires-at"] = new
    out = lease.evolve(expires_at=new).to_wire()
    assert same(out, expected)
    assert same(lease.to_wire(), wire)  # the lease it came from is unchanged


@settings(max_examples=100, deadline=None)
@given(GRANTED, TIMES, names)
def test_released_records_read_as_released(made: tuple[dict[str, Any], Lease], ts: int,
                                           reason: str) -> None:
    wire = released(made[0], rfc3339(ts), reason)
    lease = Lease.from_wire(wire)
    assert (lease.state, lease.released_at, lease.release_reason) == (
        "released", rfc3339(ts), reason)
    assert not lease.active and Lease.from_wire(made[0]).active
    assert same(lease.to_wire(), wire)


@settings(max_examples=100, deadline=None)
@given(GRANTED)
def test_derived_values_match_the_wire(made: tuple[dict[str, Any], Lease]) -> None:
    wire, lease = made
    st_ = wire["status"]
    assert lease.port_groups == lease_port_groups(wire) == [
        port_group_key(st_["vcenter"], n["port-group"]) for n in st_["networks"]]
    assert lease.env == st_["env"] == lease_env(lease) == lease_env(wire)
    assert env_values(lease) == env_values(wire)
    assert env_values(lease)["LEASE_ID"] == wire["metadata"]["name"]
    assert platform_vsphere([lease]) == platform_vsphere([wire])
    assert rfc3339(lease.leased_epoch) == st_["leased-at"]
    assert rfc3339(lease.expires_epoch) == st_["expires-at"]
    assert lease.order == (st_["leased-at"], wire["metadata"]["name"])


@settings(max_examples=50, deadline=None)
@given(GRANTED, st.integers(0, 2**31), names)
def test_the_openapi_lease_schema_names_every_key_a_lease_carries(
        made: tuple[dict[str, Any], Lease], ts: int, reason: str) -> None:
    schema = LEASE["properties"]
    assert {(s, k) for s, body in schema.items() for k in body["properties"]} == set(WIRE)
    for wire in (made[0], released(made[0], rfc3339(ts), reason)):
        for section, body in wire.items():
            assert set(body) <= set(schema[section]["properties"]), section


def test_nulls_read_as_empty_and_are_written_back_as_null() -> None:
    wire = {"metadata": {"name": "x"}, "status": {"state": "unknown", "labels": None,
                                                  "networks": None}}
    lease = Lease.from_wire(wire)
    assert (lease.id, lease.state, lease.labels, lease.networks, lease.vcpus) == (
        "x", "unknown", {}, [], 0)
    assert same(lease.to_wire(), wire)
    assert lease.port_groups == []
    # a field set that the record lacked is added at the end of its section
    assert same(lease.evolve(owner="o").to_wire(), {
        "metadata": {"name": "x"},
        "status": {"state": "unknown", "labels": None, "networks": None, "owner": "o"}})


def test_evolve_refuses_a_field_it_does_not_have() -> None:
    try:
        Lease().evolve(expires="x")
    except TypeError as exc:
        assert "expires" in str(exc)
    else:
        raise AssertionError("evolve took an unknown field")
    try:
        Lease.of(expires="x")
    except TypeError as exc:
        assert "expires" in str(exc)
    else:
        raise AssertionError("of took an unknown field")


def test_of_equals_the_dataclass_constructor() -> None:
    fields = {"id": "a", "pool": "p", "vcpus": 2, "labels": {"k": "v"}, "networks": [{}]}
    assert Lease.of(**fields) == Lease(**fields)
    assert Lease.of().labels is not Lease.of().labels  # no shared containers
    assert same(Lease.of(**fields).to_wire(), Lease(**fields).to_wire())


def test_platform_vsphere_is_sorted_and_leaves_out_what_a_pool_does_not_set():
    from workers.core.grants import make_lease
    from workers.core.models import Network, Pool, Request

    bare = Pool("b-pool", "vc-b", "dc2", "c2", "ds2", 8, 8, 8, networks=(Network("pg2", 2),))
    full = Pool("a-pool", "vc-a", "dc1", "c1", "ds1", 8, 8, 8, networks=(Network("pg1", 1),),
                labels=(("region", "east"), ("zone", "east-1a")), domain=(("folder", "ci"),))
    req = Request(vcpus=1, memory=1)
    leases = [make_lease(f"id{i}", req, p, list(p.networks), 0.0)
              for i, p in enumerate((bare, full))]
    out = platform_vsphere(leases)["platform"]["vsphere"]
    assert out == platform_vsphere(leases[::-1])["platform"]["vsphere"]
    assert [v["server"] for v in out["vcenters"]] == ["vc-a", "vc-b"]
    first, second = out["failureDomains"]
    assert (first["name"], first["zone"], first["topology"]["folder"]) == \
        ("a-pool", "east-1a", "/dc1/vm/ci")
    assert second["name"] == "b-pool" and "folder" not in second["topology"]
    assert "region" not in second and "zone" not in second
    assert second["topology"]["resourcePool"] == "/dc2/host/c2/Resources"
