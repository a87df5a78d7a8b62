"""Request validation and the lease shape."""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.core.errors import InvalidRequest
from workers.core.grants import make_lease
from workers.core.lease import parse_rfc3339, rfc3339
from workers.core.models import DEFAULT_TTL, Network, Request
from workers.core.parsing import (
    MAX_INT,
    MAX_POOLS,
    REQUEST_FIELDS,
    parse_duration,
    parse_request,
)
from workers.core.pools import parse_pools
from workers.core.text import escaped

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pools.yaml"
BASE = {"vcpus": 24, "memory": 96}
WEEK = 7 * 86400
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bad(raw, field: str, **kw) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request(raw, **kw)
    err = info.value
    assert err.field == field, (err.field, err.message)
    assert field in err.message
    assert err.to_dict()["error"] == "InvalidRequest"
    return err


# ---------------------------------------------------------------------------------------------
# accepted


def test_defaults():
    req = parse_request(dict(BASE), default_owner="tok", default_request_id="rid-1")
    assert req == Request(vcpus=24, memory=96, storage=0, vcenters=1, networks=1,
                          network_type="single-tenant", owner="tok", boskos_lease_id="",
                          request_id="rid-1", ttl=DEFAULT_TTL, required_pool=None,
                          pool_selector=(), wait=0.0)
    assert parse_request(dict(BASE)).owner == "anonymous"


FULL = {
    "vcpus": 24, "memory": 96, "storage": 700, "vcenters": 2, "networks": 2,
    "network-type": "multi-tenant", "owner": "ci-job-123", "boskos-lease-id": "b-1",
    "request-id": "req.1:a@b/c+d=e-f", "ttl": "90m", "required-pool": "pool1",
    "pool-selector": {"region": "east", "gpu": "true"}, "wait": "1h",
}


def test_every_field_hyphenated_and_snake_case_give_the_same_request():
    req = parse_request(FULL)
    assert req == Request(vcpus=24, memory=96, storage=700, vcenters=2, networks=2,
                          network_type="multi-tenant", owner="ci-job-123", boskos_lease_id="b-1",
                          request_id="req.1:a@b/c+d=e-f", ttl=5400, required_pool="pool1",
                          pool_selector=(("gpu", "true"), ("region", "east")), wait=3600.0)
    snake = {k.replace("-", "_"): v for k, v in FULL.items()}
    assert parse_request(snake) == req
    assert parse_request(req.to_dict()) == req  # to_dict round-trips


def test_vcenters_zero_means_one_and_storage_networks_may_be_zero():
    req = parse_request({**BASE, "vcenters": 0, "storage": 0, "networks": 0})
    assert (req.vcenters, req.storage, req.networks) == (1, 0, 0)


def test_empty_optional_strings_fall_back_to_defaults():
    req = parse_request({**BASE, "owner": "", "request-id": "", "required-pool": "",
                         "network-type": "", "boskos-lease-id": None},
                        default_owner="tok", default_request_id="gen")
    assert (req.owner, req.request_id, req.required_pool, req.network_type,
            req.boskos_lease_id) == ("tok", "gen", None, "single-tenant", "")


def test_integral_floats_are_accepted_as_ints():
    req = parse_request({"vcpus": 24.0, "memory": 96.0, "storage": 0.0})
    assert (req.vcpus, req.memory, req.storage) == (24, 96, 0)
    assert type(req.vcpus) is int


def test_boundaries_are_accepted():
    req = parse_request({"vcpus": MAX_INT, "memory": 1, "request-id": "a" * 128,
                         "owner": "o" * 253, "ttl": WEEK, "wait": "7d"})
    assert req.vcpus == MAX_INT and req.ttl == WEEK and req.wait == WEEK
    assert parse_request({**BASE, "ttl": 1}).ttl == 1


@pytest.mark.parametrize(("value", "seconds"), [
    ("24h", 86400), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("1d", 86400),
    ("1d2h3m4s", 93784), (" 2H ", 7200), ("3600", 3600), ("1.5", 1), (3600, 3600),
    (90.9, 90), ("0h1m", 60), ("1.5s", 1),
])
def test_ttl_durations(value, seconds):
    assert parse_request({**BASE, "ttl": value}).ttl == seconds


@pytest.mark.parametrize(("value", "seconds"), [
    (0, 0.0), ("0s", 0.0), ("90m", 5400.0), (2.5, 2.5), ("1.5s", 1.5),
])
def test_wait_durations(value, seconds):
    assert parse_request({**BASE, "wait": value}).wait == seconds


def test_parse_duration_directly():
    assert parse_duration("1h30m", "x", maximum=10**6) == 5400
    with pytest.raises(InvalidRequest, match=r"^x: .*maximum"):
        parse_duration("2h", "x", maximum=3600)
    with pytest.raises(InvalidRequest, match=r"^x: "):
        parse_duration(math.nan, "x", maximum=3600)
    with pytest.raises(InvalidRequest, match=r"^x: "):
        parse_duration(math.inf, "x", maximum=math.inf)


# ---------------------------------------------------------------------------------------------
# rejected, naming the field

NOT_INT = [True, False, 1.5, "24", "", [], {}, [24], math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("field", ["vcpus", "memory", "storage", "vcenters", "networks"])
@pytest.mark.parametrize("value", NOT_INT, ids=repr)
def test_int_fields_reject_other_types(field, value):
    err = bad({**BASE, field: value}, field)
    assert "integer" in err.message


@pytest.mark.parametrize(("field", "value"), [
    ("vcpus", -1), ("memory", -96), ("storage", -1),
    ("vcenters", -1), ("networks", -1), ("vcpus", MAX_INT + 1), ("memory", 10**30),
    ("storage", 10**400), ("vcenters", 10**10), ("networks", 10**12),
])
def test_int_fields_reject_negative_and_absurd(field, value):
    bad({**BASE, field: value}, field)


def test_network_only_leases_need_a_network():
    req = parse_request({"vcpus": 0, "memory": 0, "networks": 1})
    assert (req.vcpus, req.memory, req.networks) == (0, 0, 1)
    assert parse_request({"vcpus": 0, "memory": 8}).memory == 8
    err = bad({"vcpus": 0, "memory": 0, "networks": 0}, "networks")
    assert "network-only" in err.message


def test_pools_up_to_the_limit_are_accepted():
    assert MAX_POOLS == 16
    assert parse_request({**BASE, "pools": MAX_POOLS}).pools == MAX_POOLS
    assert parse_request({**BASE, "pools": float(MAX_POOLS)}).pools == MAX_POOLS


@pytest.mark.parametrize("value", [MAX_POOLS + 1, 50, 200, MAX_INT, 17.0])
def test_pools_above_the_limit_are_refused_naming_the_limit(value):
    """Every lease of a multi-pool request carries every pool's pool-info: the answer and
    its mirror record grow with the square of `pools`."""
    err = bad({**BASE, "pools": value}, "pools")
    assert f"at most {MAX_POOLS}" in err.message
    assert err.to_dict()["details"]["field"] == "pools"
    err = bad({**BASE, "pools": value}, "requests[1].pools", where="requests[1]")
    assert f"at most {MAX_POOLS}" in err.message


def test_the_pools_limit_can_be_lifted_for_a_request_granted_before_it():
    assert parse_request({**BASE, "pools": 40}, max_pools=MAX_INT).pools == 40
    bad({**BASE, "pools": 10**10}, "pools", max_pools=MAX_INT)  # absurd all the same


@pytest.mark.parametrize("field", ["vcpus", "memory"])
def test_required_fields(field):
    raw = dict(BASE)
    del raw[field]
    err = bad(raw, field)
    assert "required" in err.message
    bad({**BASE, field: None}, field)


@pytest.mark.parametrize(("field", "value"), [
    ("network-type", 5), ("network-type", "x" * 64), ("network-type", "a\nb"),
    ("owner", 5), ("owner", ["me"]), ("owner", "x" * 254), ("owner", "job\x00"),
    ("owner", "job\r\nX-Injected: 1"), ("owner", "a\tb"), ("owner", "\x1b[31mred"),
    ("boskos-lease-id", 5), ("boskos-lease-id", "a\tb"), ("boskos-lease-id", "x" * 254),
    ("required-pool", 5), ("required-pool", True), ("required-pool", "a\x01"),
    ("required-pool", "p" * 254),
    ("request-id", 5), ("request-id", "bad id"), ("request-id", "-leading"),
    ("request-id", ".leading"), ("request-id", "é"), ("request-id", "a" * 129),
    ("request-id", "a\n"), ("request-id", "a;b"), ("request-id", "a*"), ("request-id", "a b"),
    ("request-id", "ǅ"), ("request-id", "a\u2028"),
])
def test_string_fields(field, value):
    bad({**BASE, field: value}, field)


@pytest.mark.parametrize(("field", "value"), [
    ("ttl", -1), ("ttl", "-1h"), ("ttl", "1.5h"), ("ttl", "forever"), ("ttl", ""), ("ttl", True),
    ("ttl", []), ("ttl", {}), ("ttl", 0), ("ttl", "0s"), ("ttl", 0.5), ("ttl", WEEK + 1),
    ("ttl", "8d"), ("ttl", math.nan), ("ttl", math.inf), ("ttl", "h"), ("ttl", "1h1h"),
    ("ttl", "1m1h"), ("ttl", "1e3"), ("ttl", "1,5"), ("ttl", "24 h"),
    ("wait", -1), ("wait", "later"), ("wait", True), ("wait", WEEK + 1), ("wait", "-5s"),
    ("wait", "8d"), ("wait", math.inf), ("wait", {"s": 1}), ("wait", [5]),
])
def test_durations_rejected(field, value):
    bad({**BASE, field: value}, field)


@pytest.mark.parametrize("value", ["east", ["region"], {"region": 1}, {"region": True},
                                   {"region": None}, {1: "a"}, 5, True])
def test_pool_selector_must_be_a_string_map(value):
    bad({**BASE, "pool-selector": value}, "pool-selector")


@pytest.mark.parametrize(("raw", "field"), [
    ({**BASE, "cpu": 4}, "cpu"),
    ({**BASE, "vcpu": 4}, "vcpu"),
    ({**BASE, "Vcpus": 4}, "Vcpus"),
    ({**BASE, "lease-ttl": 4}, "lease-ttl"),
    ({**BASE, "": 4}, ""),
])
def test_unknown_fields(raw, field):
    with pytest.raises(InvalidRequest) as info:
        parse_request(raw)
    assert info.value.field == field
    assert "unknown field" in info.value.message


def test_unknown_snake_case_field_is_named():
    with pytest.raises(InvalidRequest) as info:
        parse_request({**BASE, "lease_ttl": 4})
    assert info.value.field in ("lease_ttl", "lease-ttl")


@pytest.mark.parametrize("raw", [None, [], [BASE], "vcpus=1", 5, True])
def test_request_must_be_an_object(raw):
    bad(raw, "request")
    bad(raw, "requests[3]", where="requests[3]")


def test_where_prefixes_the_field():
    err = bad({**BASE, "memory": -1}, "requests[2].memory", where="requests[2]")
    assert err.message.startswith("requests[2].memory: ")
    bad({**BASE, "cpu": 1}, "requests[0].cpu", where="requests[0]")


def test_ttl_and_wait_maximum_are_configurable():
    bad({**BASE, "ttl": "2h"}, "ttl", max_ttl=3600)
    bad({**BASE, "wait": "2h"}, "wait", max_wait=3600)
    assert parse_request({**BASE}, default_ttl=60).ttl == 60


# ---------------------------------------------------------------------------------------------
# bugs found by these tests, now fixed


@pytest.mark.parametrize("field", ["ttl", "wait"])
def test_unicode_digit_duration_is_invalid_request(field):
    bad({**BASE, field: "²"}, field)


@pytest.mark.parametrize("field", ["ttl", "wait"])
def test_huge_integer_duration_is_invalid_request(field):
    bad({**BASE, field: 10**400}, field)


@pytest.mark.parametrize(("field", "value"), [
    ("wait", False), ("wait", []), ("wait", {}), ("wait", ""),
    ("pool-selector", []), ("pool-selector", ""), ("pool-selector", 0), ("pool-selector", False),
])
def test_falsy_values_of_the_wrong_type_are_rejected(field, value):
    bad({**BASE, field: value}, field)


@pytest.mark.parametrize("value", ["job\x7f", "job\x85forged-line", "job\x9b31m"])
def test_del_and_c1_control_characters_are_rejected(value):
    bad({**BASE, "owner": value}, "owner")


@pytest.mark.parametrize("value", ["alice\u202e", "\u2066bob\u2069", "x\u202a"])
def test_bidirectional_controls_are_rejected(value):
    """They reorder what is shown: 'mallory\u202eecila' reads as an owner ending in 'alice'."""
    bad({**BASE, "owner": value}, "owner")


# ---------------------------------------------------------------------------------------------
# property: garbage in, InvalidRequest (or a valid Request) out

FIELD_KEYS = list(REQUEST_FIELDS) + [f.replace("-", "_") for f in REQUEST_FIELDS if "-" in f]
TRICKY = st.sampled_from([
    "24h", "90m", "1h30m", "45s", "7d", "8d", "", " ", "-1", "0", "1e5", "nan", "inf", "1.5.5",
    "٣", "١h", "²", "³h", "24", "\x00", "a\nb", "é", "x" * 300, "pool1", "single-tenant", "east",
    "alice\u202eecila", "bob\u2067",
])
EDGE = TRICKY | st.sampled_from([10**400, -(10**400), -1, 0, 3600, 1.5, True, math.nan])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | TRICKY
    | st.sampled_from([0, 1, -1, MAX_INT, MAX_INT + 1, 10**30, 10**400, 2**63, 0.5, 24.0, -0.0]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)
RAW = st.one_of(
    st.dictionaries(st.sampled_from(FIELD_KEYS) | st.text(max_size=8), JSON, max_size=8),
    st.fixed_dictionaries({"vcpus": JSON, "memory": JSON},
                          optional={k: JSON for k in REQUEST_FIELDS if k not in BASE}),
    st.fixed_dictionaries({"vcpus": st.integers(-2, 50), "memory": st.integers(-2, 500)},
                          optional={"ttl": EDGE | JSON, "wait": EDGE | JSON,
                                    "pool-selector": JSON,
                                    "request-id": st.text(max_size=130) | JSON,
                                    "owner": st.text(max_size=30)}),
    st.fixed_dictionaries({"vcpus": st.just(1), "memory": st.just(1)},
                          optional={"ttl": EDGE, "wait": EDGE, "ttl_": EDGE}),
    JSON,
)


BIDI_FORMATTING = {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}


@PROPS
@given(RAW)
def test_arbitrary_input_raises_only_invalid_request(raw):
    try:
        req = parse_request(raw)
    except InvalidRequest as exc:
        sent = {str(k).replace("_", "-") for k in raw} | set(raw) if isinstance(raw, dict) \
            else set()
        sent |= {escaped(k) for k in sent if isinstance(k, str)}  # invalid text is escaped
        assert exc.field in sent | {"vcpus", "memory", "request"}, (exc.field, raw)
        assert exc.message.startswith(f"{exc.field}: ")
        return
    assert isinstance(raw, dict)
    for name in ("vcpus", "memory", "storage", "vcenters", "networks"):
        value = getattr(req, name)
        assert type(value) is int and 0 <= value <= MAX_INT
    assert req.vcpus >= 0 and req.memory >= 0
    assert 0 <= req.pools <= MAX_POOLS
    assert req.vcenters >= 1 or (req.pools and req.vcenters == 0)  # with pools: no cap
    assert req.vcpus + req.memory > 0 or req.networks >= 1
    assert 1 <= req.ttl <= WEEK and 0 <= req.wait <= WEEK
    for text in (req.owner, req.network_type, req.boskos_lease_id, req.request_id,
                 req.required_pool or ""):
        assert isinstance(text, str)
        assert not any(unicodedata.category(c) == "Cc" for c in text), text
        # bidirectional formatting (class LRE/RLE/PDF/LRO/RLO/LRI/RLI/FSI/PDI) reorders display
        assert not any(unicodedata.bidirectional(c) in BIDI_FORMATTING for c in text), text
    assert req.request_id == "" or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}",
                                                req.request_id)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in req.pool_selector)
    assert parse_request(req.to_dict()) == req


DURATION_TEXT = st.text(
    st.characters(categories=["Nd", "No"]) | st.sampled_from("0123456789dhms. -"), max_size=8
)
DURATIONS = EDGE | DURATION_TEXT | JSON | st.integers() | st.floats()


@PROPS
@given(DURATIONS, st.sampled_from(["ttl", "wait"]))
def test_any_duration_gives_seconds_or_invalid_request(value, field):
    try:
        seconds = parse_duration(value, field, maximum=WEEK)
    except InvalidRequest as exc:
        assert exc.field == field
    else:
        assert isinstance(seconds, float) and 0 <= seconds <= WEEK
    try:
        req = parse_request({**BASE, field: value})
    except InvalidRequest as exc:
        assert exc.field == field
    else:
        assert 0 <= getattr(req, field) <= WEEK


# ---------------------------------------------------------------------------------------------
# leases


def example_pool():
    return parse_pools(yaml.safe_load(EXAMPLE.read_text()), str(EXAMPLE))[0]


def test_make_lease_has_the_contract_shape():
    req = parse_request({"vcpus": 24, "memory": 96, "storage": 700, "owner": "ci-job-123",
                         "boskos-lease-id": "bl-7", "request-id": "rid-9", "ttl": "24h"})
    pool = example_pool()
    now = parse_rfc3339("2026-11-22T15:32:06Z")
    lease = make_lease("lease-abc", req, pool, [pool.networks[0]], now)
    assert list(lease) == ["spec", "status", "metadata"]
    assert lease["spec"] == {"vcpus": 24, "memory": 96, "storage": 700, "vcenters": 1,
                             "networks": 1}
    assert list(lease["status"]) == [
        "leased-at", "expires-at", "boskos-lease-id", "pool", "vcenter", "datacenter",
        "cluster", "datastore", "networks", "owner", "request-id", "state", "labels",
        "job-link", "failure-domain", "env", "env-vars", "pool-annotations",
    ]
    assert lease["status"]["failure-domain"] == {
        "name": "pool1", "region": "east", "zone": "east-1a", "server": "vcenter1.example.com",
        "topology": {"datacenter": "datacenter1",
                     "computeCluster": "/datacenter1/host/cluster1",
                     "datastore": "/datacenter1/datastore/datastore1",
                     "networks": ["/datacenter1/network/ci-vlan-1001"],
                     "resourcePool": "/datacenter1/host/cluster1/Resources/ci",
                     "folder": "/datacenter1/vm/ci"}}
    assert "export VCM_LEASE_ID=lease-abc\n" in lease["status"].pop("env")
    assert lease["status"].pop("env-vars").splitlines() == [
        'export vsphere_url="vcenter1.example.com"', 'export GOVC_URL="vcenter1.example.com"',
        'export GOVC_DATACENTER="datacenter1"',
        'export GOVC_DATASTORE="/datacenter1/datastore/datastore1"',
        'export GOVC_NETWORK="ci-vlan-1001"', 'export vsphere_cluster="/datacenter1/host/cluster1"',
        'export vsphere_resource_pool="/datacenter1/host/cluster1/Resources/ci"',
        'export vsphere_datacenter="datacenter1"',
        'export vsphere_datastore="/datacenter1/datastore/datastore1"',
        'export vsphere_portgroup="ci-vlan-1001"', 'export gateway="192.168.1.1"',
        'export dns_server="192.168.1.2"', 'export vlanid="1001"', 'export phydc=""',
        'export primaryrouterhostname="r1.example.com"']
    assert lease["status"].pop("pool-annotations") == {
        "ci-auth-path": "/var/run/vault/vcenter1/auth.sh"}
    del lease["status"]["failure-domain"]
    assert lease["status"] == {
        "leased-at": "2026-11-22T15:32:06Z", "expires-at": "2026-11-23T15:32:06Z",
        "boskos-lease-id": "bl-7", "pool": "pool1", "vcenter": "vcenter1.example.com",
        "datacenter": "datacenter1", "cluster": "cluster1", "datastore": "datastore1",
        "networks": [{"port-group": "ci-vlan-1001", "vlan": 1001, "cidr": "192.168.1.0/24",
                      "gateway": "192.168.1.1", "type": "single-tenant",
                      "netmask": "255.255.255.0", "dns": ["192.168.1.2"],
                      "router": "r1.example.com"}],
        "owner": "ci-job-123", "request-id": "rid-9", "state": "leased",
        "labels": {}, "job-link": "",
    }
    assert lease["metadata"] == {"name": "lease-abc", "creationTimestamp": "2026-11-22T15:32:06Z"}


def test_make_lease_times_and_networks():
    req = Request(vcpus=1, memory=1, networks=2, ttl=5400)
    pool = example_pool()
    lease = make_lease("x", req, pool, list(pool.networks[:2]), 1_000_000_000.7)
    st_ = lease["status"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", st_["leased-at"])
    assert parse_rfc3339(st_["expires-at"]) - parse_rfc3339(st_["leased-at"]) == 5400
    assert [n["port-group"] for n in st_["networks"]] == ["ci-vlan-1001", "ci-vlan-1002"]
    assert make_lease("y", replace(req, networks=0), pool, [], 0)["status"]["networks"] == []
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


def test_network_to_dict_keys():
    assert Network("pg").to_dict() == {"port-group": "pg", "vlan": None, "cidr": "",
                                      "gateway": "", "type": "single-tenant"}


@PROPS
@given(st.text(alphabet=st.characters(codec=None), max_size=300),
       st.sampled_from(["owner", "boskos-lease-id", "required-pool", "network-type"]))
def test_a_string_is_stored_only_if_it_is_text_lua_and_shells_can_carry(value, field):
    """Oracle: UTF-8 encodable, no C0/C1 control character, within the bound."""
    acceptable = (len(value) <= (63 if field == "network-type" else 253)
                  and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        acceptable = False
    try:
        req = parse_request({"vcpus": 1, "memory": 1, field: value})
    except InvalidRequest as exc:
        assert not acceptable, (value, exc)
        assert exc.field == field
        exc.message.encode("utf-8")  # the message is text too
        return
    assert acceptable, value
    attr = {"owner": req.owner, "boskos-lease-id": req.boskos_lease_id,
            "required-pool": req.required_pool, "network-type": req.network_type}[field]
    assert attr == value or not value  # empty means the default


def test_labels_and_job_link_are_stored_on_the_lease():
    req = parse_request({"vcpus": 1, "memory": 1, "job-link": "https://prow.example/job/1",
                         "labels": {"boskos-lease-id": "b-1", "job-name": "e2e",
                                    "vsphere-capacity-manager.splat-team.io/lease-namespace":
                                    "ci-op-abc"}})
    pool = example_pool()
    lease = make_lease("l1", req, pool, [], 0)
    assert lease["status"]["labels"] == {
        "boskos-lease-id": "b-1", "job-name": "e2e",
        "vsphere-capacity-manager.splat-team.io/lease-namespace": "ci-op-abc"}
    assert lease["status"]["job-link"] == "https://prow.example/job/1"


@pytest.mark.parametrize(("raw", "field"), [
    ({"labels": {"a b": "c"}}, "labels"), ({"labels": {"k": "no spaces"}}, "labels"),
    ({"labels": {"Upper.Case/k": "v"}}, "labels"), ({"labels": ["k=v"]}, "labels"),
    ({"labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
    ({"job-link": "ftp://x"}, "job-link"), ({"job-link": "https://x y"}, "job-link"),
    ({"job-link": "https://" + "x" * 3000}, "job-link"),
])
def test_bad_labels_and_links_name_their_field(raw, field):
    bad({"vcpus": 1, "memory": 1, **raw}, field)
