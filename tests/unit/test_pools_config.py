"""Pools configuration: every invalid file names the file, the pool and the field."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.strategies import ints
from workers.core.errors import ConfigError
from workers.core.models import Network
from workers.core.pools import parse_pools

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pools.yaml"
FILE = "/etc/vcm/my-pools.yaml"


def pool(name: str = "pool1", vcenter: str = "vc1.example.com", **kw) -> dict:
    out = {
        "name": name, "vcenter": vcenter, "datacenter": "dc1", "cluster": "cl1",
        "datastore": "ds1", "vcpus": 120, "memory": 1600, "storage": 10000,
        "networks": [{"port-group": f"{name}-pg1", "vlan": 1001, "cidr": "192.168.1.0/24",
                      "gateway": "192.168.1.1"}],
    }
    out.update(kw)
    return out


def config(*pools: dict) -> dict:
    return {"pools": list(pools) or [pool()]}


def rejected(data, pool_name: str | None, field: str | None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_pools(data, FILE)
    err = info.value
    text = str(err)
    assert FILE in text, text
    assert err.details["file"] == FILE
    if pool_name is not None:
        assert repr(pool_name) in text, text
        assert err.details["pool"] == pool_name
    if field is not None:
        assert repr(field) in text, text
        assert err.details["field"] == field
    return err


# ---------------------------------------------------------------------------------------------
# valid


def test_example_pools_load():
    pools = parse_pools(yaml.safe_load(EXAMPLE.read_text()), str(EXAMPLE))
    assert len(pools) >= 4
    assert len({p.vcenter for p in pools}) >= 3
    assert all(p.networks for p in pools)
    assert len({p.name for p in pools}) == len(pools)
    for p in pools:
        keys = [(p.vcenter, n.port_group) for n in p.networks]
        assert len(set(keys)) == len(keys)


def test_defaults_and_normalisation():
    raw = pool(labels={"region": "east", "rack": 7})
    raw["vcpu-overcommit"] = 2
    raw["networks"].append({"port-group": " pg2 "})
    (p,) = parse_pools(config(raw), FILE)
    assert p.vcpu_overcommit == 2.0 and isinstance(p.vcpu_overcommit, float)
    assert p.vcpu_capacity == 240
    assert (p.exclude, p.no_schedule) == (False, False)
    assert p.labels == (("rack", "7"), ("region", "east"))
    assert p.networks[0] == Network("pool1-pg1", 1001, "192.168.1.0/24", "192.168.1.1",
                                    "single-tenant")
    assert p.networks[1] == Network("pg2", None, "", "", "single-tenant")


def test_minimal_pool_without_networks_or_labels():
    raw = pool()
    del raw["networks"]
    (p,) = parse_pools(config(raw), FILE)
    assert p.networks == () and p.labels == ()


def test_flags_and_types():
    raw = pool(exclude=True, **{"no-schedule": True}, networks=[
        {"port-group": "a", "type": "multi-tenant", "vlan": 0},
        {"port-group": "b", "vlan": 4094, "cidr": "2001:db8::/64", "gateway": "2001:db8::1"},
    ])
    (p,) = parse_pools(config(raw), FILE)
    assert p.exclude and p.no_schedule
    assert [n.type for n in p.networks] == ["multi-tenant", "single-tenant"]


def test_same_port_group_on_two_vcenters_is_allowed():
    nets = [{"port-group": "ci-vlan-1001", "vlan": 1001}]
    pools = parse_pools(config(pool("a", "vc1", networks=nets), pool("b", "vc2", networks=nets)),
                        FILE)
    assert [p.networks[0].port_group for p in pools] == ["ci-vlan-1001"] * 2


# ---------------------------------------------------------------------------------------------
# invalid: top level


@pytest.mark.parametrize("data", [None, [], "pools", 5, [pool()]])
def test_top_level_must_be_a_map(data):
    rejected(data, None, None)


def test_unknown_top_level_key():
    rejected({**config(), "pool": []}, None, "pool")
    rejected({**config(), "strategy": "pack"}, None, "strategy")


@pytest.mark.parametrize("pools", [None, [], {}, "pool1", {"pool1": pool()}])
def test_pools_must_be_a_non_empty_list(pools):
    rejected({"pools": pools}, None, "pools")


def test_missing_pools_key():
    rejected({}, None, "pools")


# ---------------------------------------------------------------------------------------------
# invalid: pool fields

BAD_POOL_FIELDS = [
    # unknown keys (incl. snake_case spellings and typos)
    ("vcpu_overcommit", 2.0), ("no_schedule", True), ("cpus", 4), ("Name", "x"),
    # budgets
    ("vcpus", 0), ("vcpus", -1), ("memory", 0), ("memory", -1600), ("storage", 0),
    ("storage", -5), ("vcpus", "120"), ("vcpus", 1.5), ("vcpus", 120.0), ("vcpus", True),
    ("memory", None), ("storage", []), ("storage", math.inf),
    # overcommit
    ("vcpu-overcommit", 0.5), ("vcpu-overcommit", 0), ("vcpu-overcommit", -1),
    ("vcpu-overcommit", "2"), ("vcpu-overcommit", True), ("vcpu-overcommit", math.nan),
    ("vcpu-overcommit", math.inf), ("vcpu-overcommit", None), ("vcpu-overcommit", 101),
    # flags
    ("exclude", "yes"), ("exclude", 1), ("exclude", None), ("no-schedule", "true"),
    ("no-schedule", 0),
    # required strings
    ("vcenter", ""), ("vcenter", None), ("datacenter", "  "), ("cluster", 5),
    ("datastore", ["ds1"]),
    # labels
    ("labels", ["region"]), ("labels", "east"), ("labels", {"region": None}),
    ("labels", {"region": True}), ("labels", {1: "a"}), ("labels", {"r": ["a"]}),
    # networks
    ("networks", "pg1"), ("networks", {"port-group": "pg1"}), ("networks", 5),
]


@pytest.mark.parametrize(("field", "value"), BAD_POOL_FIELDS,
                         ids=[f"{f}={v!r}" for f, v in BAD_POOL_FIELDS])
def test_bad_pool_field(field, value):
    raw = pool("bad-pool", "vc2")
    raw[field] = value
    rejected(config(pool("good"), raw), "bad-pool", field)


@pytest.mark.parametrize("field", ["vcenter", "datacenter", "cluster", "datastore", "vcpus",
                                   "memory", "storage"])
def test_missing_required_field(field):
    raw = pool("p7")
    del raw[field]
    rejected(config(raw), "p7", field)


@pytest.mark.parametrize("name", [None, "", 5, ["pool1"]])
def test_missing_or_bad_pool_name_names_the_pool_by_position(name):
    raw = pool()
    raw["name"] = name
    rejected(config(pool("first"), raw), "#2", "name")
    del raw["name"]
    rejected(config(pool("first"), raw), "#2", "name")


def test_blank_pool_name_is_rejected():
    rejected(config(pool("first"), pool("   ")), None, "name")


@pytest.mark.parametrize("raw", ["pool1", 5, None, ["name", "pool1"]])
def test_pool_must_be_a_map(raw):
    rejected(config(pool("first"), pool("second", "vc2"), raw), "#3", None)


def test_duplicate_pool_names():
    err = rejected(config(pool("pool1"), pool("pool2", "vc2"), pool("pool1", "vc3",
                   networks=[])), "pool1", "name")
    assert "duplicate" in str(err)
    rejected(config(pool("pool1"), pool(" pool1", "vc3", networks=[])), "pool1", "name")


# ---------------------------------------------------------------------------------------------
# invalid: networks and port groups


def test_a_port_group_listed_by_two_pools_of_one_vcenter_is_one_network():
    net = {"port-group": "ci-vlan-1001", "vlan": 1001, "cidr": "10.0.0.0/24"}
    a, b, c = parse_pools(config(pool("a", "vc1", networks=[net]),
                                 pool("b", "vc2", networks=[]),
                                 pool("c", "vc1", networks=[{"port-group": "ci-vlan-1001"}])),
                          FILE)
    # the bare listing in c is the network a describes: one Network, one ledger key
    assert c.networks == a.networks and c.networks[0].vlan == 1001
    assert a.net_key(a.networks[0]) == c.net_key(c.networks[0]) == "vc1|ci-vlan-1001"


def test_a_port_group_given_different_details_names_both_places():
    nets = [{"port-group": "ci-vlan-1001", "vlan": 1001}]
    other = [{"port-group": "x"}, {"port-group": "ci-vlan-1001", "vlan": 1002}]
    err = rejected(config(pool("a", "vc1", networks=nets), pool("b", "vc2", networks=[]),
                          pool("c", "vc1", networks=other)), "c", "networks[1].vlan")
    text = str(err)
    assert "ci-vlan-1001" in text and "1002" in text and "1001" in text
    assert "pool 'a' (networks[0].vlan)" in text, text


def test_port_group_twice_within_one_pool():
    err = rejected(config(pool("a", networks=[{"port-group": "pg"}, {"port-group": "pg"}])),
                   "a", "networks")
    assert "'pg'" in str(err)
    rejected(config(pool("a", networks=[{"port-group": "pg"}, {"port-group": " pg "}])),
             "a", "networks")


def test_one_vcenter_with_whitespace_shares_its_port_groups():
    nets = [{"port-group": "pg", "vlan": 1}]
    a, b = parse_pools(config(pool("a", "vc1", networks=nets), pool("b", " vc1 ", networks=nets)))
    assert a.net_key(a.networks[0]) == b.net_key(b.networks[0])
    rejected(config(pool("a", "vc1", networks=nets),
                    pool("b", " vc1 ", networks=[{"port-group": "pg", "vlan": 2}])),
             "b", "networks[0].vlan")


def test_pods_make_networks_of_one_vcenter_distinct():
    net = [{"port-group": "pg", "vlan": 7}]
    a, b, c = parse_pools(config(pool("a", "vc1", pod="pod-a", networks=net),
                                 pool("b", "vc1", pod="pod-b",
                                      networks=[{"port-group": "pg", "vlan": 8}]),
                                 pool("c", "vc1", networks=[{"port-group": "pg", "pod": "pod-a"}])))
    assert a.net_key(a.networks[0]) == "vc1|pg|pod-a" == c.net_key(c.networks[0])
    assert b.net_key(b.networks[0]) == "vc1|pg|pod-b"
    assert c.networks[0].vlan == 7 and a.spec()["pod"] == "pod-a" and "pod" not in c.spec()
    assert a.networks[0].to_dict()["pod"] == "pod-a"
    # one listing with a pod and one without: which network is meant is ambiguous
    err = rejected(config(pool("a", "vc1", pod="pod-a", networks=net),
                          pool("b", "vc1", networks=net)), "b", "networks[0].pod")
    assert "pool 'a'" in str(err)
    # a pool hands out its own pod's networks
    rejected(config(pool("a", "vc1", pod="pod-a", networks=[{"port-group": "pg", "pod": "x"}])),
             "a", "networks[0].pod")
    for bad in ("", 7, "a|b"):
        rejected(config(pool("a", pod=bad)), "a", "pod")
        rejected(config(pool("a", networks=[{"port-group": "pg", "pod": bad}])), "a",
                 "networks[0].pod")


def test_one_vcenter_spelled_in_two_cases_is_rejected():
    """Spreading and `vcenters: N` count vCenters by name: VC1 and vc1 would be two."""
    err = rejected(config(pool("a", "vc1.example.com"), pool("b", "vc2.example.com"),
                          pool("c", "VC1.Example.com")), "c", "vcenter")
    assert "'vc1.example.com'" in str(err) and "'a'" in str(err)


BAD_NETWORKS = [
    ({"port-group": "pg", "colour": "red"}, "networks[0].colour"),
    ({"port-group": "pg", "port_group": "pg"}, "networks[0].port_group"),
    ({"portgroup": "pg"}, "networks[0].portgroup"),
    ({"vlan": 5}, "networks[0].port-group"),
    ({"port-group": ""}, "networks[0].port-group"),
    ({"port-group": "  "}, "networks[0].port-group"),
    ({"port-group": 1001}, "networks[0].port-group"),
    ({"port-group": "pg", "vlan": -1}, "networks[0].vlan"),
    ({"port-group": "pg", "vlan": 4095}, "networks[0].vlan"),
    ({"port-group": "pg", "vlan": "1001"}, "networks[0].vlan"),
    ({"port-group": "pg", "vlan": True}, "networks[0].vlan"),
    ({"port-group": "pg", "vlan": 10.5}, "networks[0].vlan"),
    ({"port-group": "pg", "cidr": "not-a-cidr"}, "networks[0].cidr"),
    ({"port-group": "pg", "cidr": "300.1.1.0/24"}, "networks[0].cidr"),
    ({"port-group": "pg", "cidr": "10.0.0.0/33"}, "networks[0].cidr"),
    ({"port-group": "pg", "cidr": ["10.0.0.0/8"]}, "networks[0].cidr"),
    ({"port-group": "pg", "gateway": "10.0.0.300"}, "networks[0].gateway"),
    ({"port-group": "pg", "gateway": "gw"}, "networks[0].gateway"),
    ({"port-group": "pg", "cidr": "10.0.0.0/24", "gateway": "10.0.1.1"}, "networks[0].gateway"),
    ({"port-group": "pg", "cidr": "10.0.0.0/24", "gateway": "2001:db8::1"},
     "networks[0].gateway"),
    ({"port-group": "pg", "type": ""}, "networks[0].type"),
    ({"port-group": "pg", "type": 5}, "networks[0].type"),
    ({"port-group": "pg", "type": None}, "networks[0].type"),
    ("pg", "networks[0]"),
    (["pg"], "networks[0]"),
]


@pytest.mark.parametrize(("net", "field"), BAD_NETWORKS, ids=[f for _, f in BAD_NETWORKS])
def test_bad_network(net, field):
    rejected(config(pool("good"), pool("bad-pool", "vc2", networks=[net])), "bad-pool", field)


def test_bad_second_network_is_indexed():
    nets = [{"port-group": "a"}, {"port-group": "b", "vlan": 9999}]
    rejected(config(pool("p", networks=nets)), "p", "networks[1].vlan")


# ---------------------------------------------------------------------------------------------
# bugs found by these tests, now fixed


@pytest.mark.parametrize(("field", "value"), [
    ("networks", {}), ("networks", ""), ("networks", 0), ("networks", False),
    ("labels", []), ("labels", ""), ("labels", 0), ("labels", False),
])
def test_falsy_wrong_type_networks_and_labels_are_rejected(field, value):
    rejected(config(pool("p", **{field: value})), "p", field)


@pytest.mark.parametrize(("net", "field"), [
    ({"port-group": "pg", "cidr": 123}, "networks[0].cidr"),
    ({"port-group": "pg", "cidr": True}, "networks[0].cidr"),
    ({"port-group": "pg", "gateway": 3232235777}, "networks[0].gateway"),
])
def test_non_string_cidr_or_gateway_is_rejected(net, field):
    rejected(config(pool("p", networks=[net])), "p", field)


# ---------------------------------------------------------------------------------------------
# property: one broken field in an otherwise valid file is always reported precisely

MUTATIONS = [(f, v) for f, v in BAD_POOL_FIELDS] + [
    (("networks", 0, "vlan"), 5000), (("networks", 0, "cidr"), "10.0.0.0/99"),
    (("networks", 0, "unknown"), 1), (("networks", 0, "port-group"), ""),
]


# strategies built once rather than on every draw (see tests/support/strategies.py)
NET_TYPES = st.sampled_from(["single-tenant", "multi-tenant"])
OVERCOMMITS = st.floats(1.0, 100.0)


@st.composite
def valid_configs(draw):
    n = draw(ints(1, 6))
    pools = []
    for i in range(n):
        vc = f"vc{draw(ints(0, 2))}"
        nets = [{"port-group": f"pg-{i}-{j}", "vlan": draw(ints(0, 4094)),
                 "cidr": f"10.{i}.{j}.0/24", "gateway": f"10.{i}.{j}.1",
                 "type": draw(NET_TYPES)}
                for j in range(draw(ints(1, 4)))]
        pools.append(pool(f"pool-{i}", vc, networks=nets,
                          vcpus=draw(ints(1, 10**6)), memory=draw(ints(1, 10**6)),
                          storage=draw(ints(1, 10**7)),
                          **{"vcpu-overcommit": draw(OVERCOMMITS)}))
    return {"pools": pools}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_configs(), st.data())
def test_one_broken_field_is_named(cfg, data):
    parsed = parse_pools(copy.deepcopy(cfg), FILE)
    assert [p.name for p in parsed] == [p["name"] for p in cfg["pools"]]
    for got, raw in zip(parsed, cfg["pools"], strict=True):
        assert (got.vcpus, got.memory, got.storage) == (raw["vcpus"], raw["memory"],
                                                         raw["storage"])
        assert [n.port_group for n in got.networks] == [n["port-group"] for n in raw["networks"]]
    index = data.draw(st.integers(0, len(cfg["pools"]) - 1))
    where, value = data.draw(st.sampled_from(MUTATIONS))
    broken = copy.deepcopy(cfg)
    target = broken["pools"][index]
    if isinstance(where, tuple):
        _, net_index, key = where
        target["networks"][net_index][key] = value
        field = f"networks[{net_index}].{key}"
    else:
        target[where] = value
        field = where
    rejected(broken, target["name"], field)


@settings(max_examples=60, deadline=None)
@given(valid_configs(), st.data())
def test_a_port_group_listed_again_in_its_vcenter_is_shared_or_named(cfg, data):
    """Listed again with the same details (or none), a port group is the same network in
    both pools; with a different vlan, the listing is refused naming it and the first one."""
    cfg = copy.deepcopy(cfg)
    pools = cfg["pools"]
    src = data.draw(st.integers(0, len(pools) - 1))
    dst = data.draw(st.integers(0, len(pools) - 1))
    first = pools[src]["networks"][0]
    same = data.draw(st.booleans())
    listing = {"port-group": first["port-group"]}
    if not same:
        listing["vlan"] = (first["vlan"] + 1) % 4095
    pools[dst]["networks"].append(listing)
    at = f"networks[{len(pools[dst]['networks']) - 1}]"
    if src == dst:
        rejected(cfg, pools[dst]["name"], "networks")
    elif pools[src]["vcenter"] != pools[dst]["vcenter"]:
        parsed = {p.name: p for p in parse_pools(cfg, FILE)}  # another vCenter: its own
        assert parsed[pools[dst]["name"]].networks[-1].vlan == listing.get("vlan")
    elif same:
        parsed = {p.name: p for p in parse_pools(cfg, FILE)}
        assert parsed[pools[dst]["name"]].networks[-1] == parsed[pools[src]["name"]].networks[0]
    else:
        later = pools[max(src, dst)]["name"]
        err = rejected(cfg, later, f"{at}.vlan" if later == pools[dst]["name"]
                       else "networks[0].vlan")
        assert repr(pools[min(src, dst)]["name"]) in str(err)


def test_failure_domain_fields_and_network_details():
    net = {"port-group": "pg", "vlan": 7, "cidr": "10.0.0.0/24", "gateway": "10.0.0.1",
           "netmask": "255.255.255.0", "ipv6-cidr": "fd00::/64", "ipv6-gateway": "fd00::1",
           "dns": ["10.0.0.2", "fd00::53"], "router": "r7.example.com"}
    (p,) = parse_pools(config(pool(region="us-east", zone="us-east-1a", **{
        "short-name": "use1a", "resource-pool": "/dc1/host/c1/Resources/ci", "folder": "ci"},
        networks=[net])))
    assert p.domain_map() == {"region": "us-east", "zone": "us-east-1a", "short-name": "use1a",
                              "resource-pool": "/dc1/host/c1/Resources/ci", "folder": "ci"}
    assert p.networks[0].to_dict() == {**net, "type": "single-tenant"}
    assert p.spec()["zone"] == "us-east-1a"


@pytest.mark.parametrize(("field", "value"), [
    ("netmask", "255.0.255.0"), ("ipv6-cidr", "10.0.0.0/8"), ("ipv6-gateway", "10.0.0.1"),
    ("dns", ["not-an-ip"]), ("dns", 7), ("router", ""), ("router", "r\x00"),
])
def test_bad_network_details_name_the_field(field, value):
    rejected(config(pool(networks=[{"port-group": "pg", field: value}])), "pool1",
             f"networks[0].{field}")


@pytest.mark.parametrize("field", ["region", "zone", "short-name", "resource-pool", "folder"])
def test_bad_failure_domain_fields_name_the_field(field):
    rejected(config(pool(**{field: ""})), "pool1", field)
    rejected(config(pool(**{field: 7})), "pool1", field)


def test_a_bar_in_a_vcenter_or_port_group_name_is_refused():
    """'|' joins vCenter and port group in the ledger's keys: vc|x + y and vc + x|y collide."""
    rejected(config(pool(vcenter="vc|x")), "pool1", "vcenter")
    rejected(config(pool(networks=[{"port-group": "x|y"}])), "pool1", "networks[0].port-group")


@pytest.mark.parametrize(("raw", "why"), [
    (b"pools:\n  - name: \xff\xfe\n", "not UTF-8"),
    (b"pools:\n  - {name: p, vcpus: " + b"9" * 5000 + b"}\n", "cannot be read"),
    (b"pools: " + b"[" * 10000 + b"]" * 10000 + b"\n", ""),
])
def test_an_unreadable_pools_file_is_a_config_error(tmp_path, raw, why):
    from workers.adapters.pools_file import load_pools

    path = tmp_path / "pools.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_pools(str(path))
    assert str(path) in str(info.value) and why in str(info.value)


@pytest.mark.parametrize(("raw", "field", "lines"), [
    ("pools:\n  - name: p\n    vcenter: vc\n    vcpus: 4\n    vcpus: 8\n", "vcpus",
     "line 4, again at line 5"),
    ("pools:\n  - name: p\npools:\n  - name: q\n", "pools", "line 1, again at line 3"),
    ("pools:\n  - name: p\n    labels: {zone: a, zone: b}\n", "zone", "line 3, again at line 3"),
])
def test_a_key_given_twice_is_refused_naming_it_and_its_lines(tmp_path, raw, field, lines):
    """PyYAML keeps the last of two equal keys silently: the pool would run on whichever came
    last."""
    from workers.adapters.pools_file import load_pools

    path = tmp_path / "pools.yaml"
    path.write_text(raw)
    with pytest.raises(ConfigError) as info:
        load_pools(str(path))
    assert info.value.details["field"] == field and lines in str(info.value), str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("doc", [
    "base: &b {vcpus: 4, memory: 8}\npool:\n  <<: *b\n  vcpus: 6\nx: [1, 1]\n",
    # a chain: `big` overrides `small`, and is merged itself where it is used
    "t:\n  small: &small {vcpus: 4, memory: 16}\n  big: &big\n    <<: *small\n    vcpus: 16\n"
    "requests:\n  - <<: *big\n    request-id: r1\n",
    "a: {=: 1}\n",
    "s: !!set {a, b}\n",
])
def test_valid_yaml_loads_as_safe_load_does(doc):
    """Merges and overrides are not keys given twice."""
    import yaml

    from workers.adapters.yaml_files import load_yaml

    assert load_yaml(doc) == yaml.safe_load(doc)


# ---------------------------------------------------------------------------------------------
# network details a job step reads


FULL = {"port-group": "pg", "vlan": 7, "cidr": "10.0.0.0/29", "gateway": "10.0.0.1",
        "netmask": "255.255.255.248", "machine-network-cidr": "10.0.0.0/29",
        "ip-addresses": ["10.0.0.0", "10.0.0.1", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
        "ipv6-cidr": "fd00:7::/64", "ipv6-start": "fd00:7::10", "ipv6-gateway": "fd00:7::1",
        "nameservers": ["10.9.9.9", "fd00::53"], "router": "r7.example.com",
        "datacenter": "dal10", "pod": "dal10.pod01"}


def test_every_network_detail_is_checked_and_shown_as_configured():
    from workers.core.grants import make_lease
    from workers.core.models import entry_addresses
    from workers.core.parsing import parse_request

    (p,) = parse_pools(config(pool(networks=[FULL])))
    net = p.networks[0]
    assert net.to_dict() == {**FULL, "type": "single-tenant"}
    assert net.addresses()[2:4] == ("10.0.0.4", "10.0.0.5")  # the VIPs, as listed
    assert net.nameservers() == ("10.9.9.9", "fd00::53")
    entry = make_lease("l", parse_request({"vcpus": 1, "memory": 1}), p, [net], 0)[
        "status"]["networks"][0]
    assert entry == {**FULL, "type": "single-tenant"}
    assert entry_addresses(entry)[2:4] == ["10.0.0.4", "10.0.0.5"]


def test_without_a_list_the_addresses_come_from_the_cidr():
    from workers.core.models import derived_addresses, entry_addresses

    (p,) = parse_pools(config(pool(networks=[{"port-group": "pg", "cidr": "10.1.2.0/29",
                                              "gateway": "10.1.2.1", "dns": "10.1.2.6"}])))
    net = p.networks[0]
    # the network address, then each host: [1] the usual gateway, [2] and [3] the VIPs
    assert net.addresses() == ("10.1.2.0", "10.1.2.1", "10.1.2.2", "10.1.2.3", "10.1.2.4",
                               "10.1.2.5", "10.1.2.6")
    assert "ip-addresses" not in net.to_dict()  # derived, not copied into every lease
    assert entry_addresses(net.to_dict()) == list(net.addresses())
    assert net.nameservers() == ("10.1.2.6",)
    assert derived_addresses("fd00::/126") == ("fd00::", "fd00::1", "fd00::2", "fd00::3")
    assert derived_addresses("10.0.0.0/19") == ()  # more than 4,096 addresses: list them


BAD_DETAILS = [
    ({"ip-addresses": ["10.0.0.0", "10.0.0.1", "10.0.1.9"]}, "networks[0].ip-addresses[2]",
     "10.0.1.9 is not in 10.0.0.0/29"),
    ({"ip-addresses": ["10.0.0.2", "10.0.0.2"]}, "networks[0].ip-addresses[1]", "twice"),
    ({"ip-addresses": ["10.0.0.2", "nope"]}, "networks[0].ip-addresses[1]", "not an IP"),
    ({"ip-addresses": "10.0.0.2"}, "networks[0].ip-addresses", "list"),
    ({"ip-addresses": []}, "networks[0].ip-addresses", "list"),
    ({"ip-addresses": ["10.0.0.1"] * 4097}, "networks[0].ip-addresses", "4096"),
    ({"nameservers": ["10.9.9.9", "x"]}, "networks[0].nameservers[1]", "not an IP"),
    ({"nameservers": "10.9.9.9"}, "networks[0].nameservers", "list"),
    ({"ipv6-cidr": "fd00:7::/64", "ipv6-start": "fd00:8::10"}, "networks[0].ipv6-start",
     "not in fd00:7::/64"),
    ({"ipv6-start": "10.0.0.5"}, "networks[0].ipv6-start", "not a valid"),
    ({"ipv6-cidr": "fd00:7::/64", "ipv6-gateway": "fd00:8::1"}, "networks[0].ipv6-gateway",
     "not in"),
    ({"machine-network-cidr": "10.9.0.0/24"}, "networks[0].machine-network-cidr",
     "does not overlap"),
    ({"machine-network-cidr": "fd00::/64"}, "networks[0].machine-network-cidr", "overlap"),
    ({"machine-network-cidr": "10.0.0.0/40"}, "networks[0].machine-network-cidr", "valid"),
    ({"netmask": "255.255.255.0"}, "networks[0].netmask", "not the netmask of"),
    ({"gateway": "10.0.0.2"}, "networks[0].gateway", "VIP"),
    ({"gateway": "10.0.0.3"}, "networks[0].gateway", "VIP"),
    ({"datacenter": ""}, "networks[0].datacenter", "non-empty"),
    ({"router": "r\ud800"}, "networks[0].router", ""),
    ({"dns": ["10.9.9.9"], "nameservers": ["10.9.9.8"]}, "networks[0].nameservers", "dns"),
]


@pytest.mark.parametrize(("details", "field", "why"), BAD_DETAILS,
                         ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(BAD_DETAILS)])
def test_a_bad_network_detail_names_its_field(details, field, why):
    net = {"port-group": "pg", "cidr": "10.0.0.0/29", **details}
    err = rejected(config(pool(networks=[net])), "pool1", field)
    assert why in str(err), str(err)


def test_a_detail_checked_against_another_pools_listing_names_its_own_listing():
    """The cidr comes from pool a, the addresses from pool b: the address outside the cidr
    is b's field."""
    err = rejected(config(pool("a", networks=[{"port-group": "pg", "cidr": "10.0.0.0/29"}]),
                          pool("b", networks=[{"port-group": "x"}, {
                              "port-group": "pg", "ip-addresses": ["10.0.0.0", "10.0.9.1"]}])),
                   "b", "networks[1].ip-addresses[1]")
    assert "10.0.9.1 is not in 10.0.0.0/29" in str(err)


@settings(max_examples=100, deadline=None)
@given(st.integers(24, 30), st.lists(st.integers(0, 511), min_size=1, max_size=12, unique=True))
def test_an_address_outside_its_cidr_is_named_by_index(prefix, offsets):
    """Oracle: the cidr 10.0.0.0/prefix holds offsets below 2^(32-prefix)."""
    size = 2 ** (32 - prefix)
    addresses = [f"10.0.{o // 256}.{o % 256}" for o in offsets]
    cfg = config(pool(networks=[{"port-group": "pg", "cidr": f"10.0.0.0/{prefix}",
                                 "ip-addresses": addresses}]))
    outside = [i for i, o in enumerate(offsets) if o >= size]
    if outside:
        err = rejected(cfg, "pool1", f"networks[0].ip-addresses[{outside[0]}]")
        assert addresses[outside[0]] in str(err)
    else:
        (p,) = parse_pools(cfg)
        assert list(p.networks[0].addresses()) == addresses


# ---------------------------------------------------------------------------------------------
# multi-tenant slices


def _mt(**kw) -> dict:
    return {"port-group": "mt", "vlan": 9, "cidr": "10.0.0.0/27", "gateway": "10.0.0.1",
            "type": "multi-tenant", **kw}


def test_a_multi_tenant_network_in_slices():
    (p,) = parse_pools(config(pool(networks=[_mt(slices=4)])))
    net = p.networks[0]
    assert net.to_dict()["slices"] == 4 and p.spec()["networks"][0]["slices"] == 4
    pieces = [n for n, _ in p.keyed_networks("multi-tenant")]
    assert [n.slice for n in pieces] == ["10.0.0.2-10.0.0.9", "10.0.0.10-10.0.0.16",
                                         "10.0.0.17-10.0.0.23", "10.0.0.24-10.0.0.30"]
    assert [p.net_key(n) for n in pieces][0] == "vc1.example.com|mt||10.0.0.2-10.0.0.9"
    first = pieces[0].to_dict()
    assert first["slice"] == "10.0.0.2-10.0.0.9" and "slices" not in first
    assert first["ip-addresses"][:4] == ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert p.networks_of("multi-tenant") == tuple(pieces)


@pytest.mark.parametrize(("net", "why"), [
    (_mt(slices=4, type="single-tenant"), "only a network of type"),
    (_mt(slices=2, cidr="10.0.0.0/30"), "fewer than 2"),
    (_mt(slices=1), "from 2 to 256"), (_mt(slices=True), "from 2 to 256"),
    (_mt(slices="4"), "from 2 to 256"), (_mt(slices=300), "from 2 to 256"),
    ({"port-group": "mt", "type": "multi-tenant", "slices": 2}, "no addresses"),
    (_mt(slices=2, cidr="10.0.0.0/16"), "no addresses"),  # too big to derive: list them
])
def test_a_bad_split_names_the_slices_field(net, why):
    err = rejected(config(pool(networks=[net])), "pool1", "networks[0].slices")
    assert why in str(err), str(err)


@settings(max_examples=150, deadline=None)
@given(st.integers(24, 29), st.integers(2, 16), st.booleans())
def test_slices_are_disjoint_runs_that_cover_the_addresses(prefix, n, listed):
    """Oracle: the addresses after [0] and [1] (the gateway left out), cut into n runs in
    order whose sizes differ by at most one; slices of one split never clash, and every
    slice clashes with the whole network."""
    import ipaddress

    from workers.core.lease import keys_clash

    cidr = ipaddress.ip_network(f"10.1.0.0/{prefix}")
    allof = [str(a) for a in cidr][:-1]  # no broadcast
    net = _mt(cidr=str(cidr), gateway="10.1.0.1", slices=n)
    if listed:  # an explicit list, out of order: the runs are still ascending
        net["ip-addresses"] = allof[:2] + sorted(allof[2:], reverse=True)
    own = allof[2:]
    if len(own) < 2 * n:
        rejected(config(pool(networks=[net])), "pool1", "networks[0].slices")
        return
    (p,) = parse_pools(config(pool(networks=[net])))
    pieces = [x for x, _ in p.keyed_networks("multi-tenant")]
    runs = [x.addresses()[2:] for x in pieces]
    assert [a for run in runs for a in run] == own
    assert max(map(len, runs)) - min(map(len, runs)) <= 1
    assert all(x.addresses()[:2] == tuple(allof[:2]) for x in pieces)
    keys = [p.net_key(x) for x in pieces]
    whole = "vc1.example.com|mt"
    assert all(keys_clash(whole, k) for k in keys)
    assert not any(keys_clash(a, b) for a, b in itertools.combinations(keys, 2))


@pytest.mark.parametrize(("first", "second", "field"), [
    ({"short-name": "z1"}, {"short-name": "z1"}, "short-name"),
    ({}, {"short-name": "pool1"}, "short-name"),
    ({"short-name": "pool2"}, {}, "name"),
])
def test_two_pools_may_not_name_one_failure_domain(first, second, field):
    """A lease's install-config failure domain is named by its pool's short-name, else the
    pool's name. Two pools naming one made `vcm acquire --pools 3 -o failure-domains` print
    2 failure domains for 3 pools (the second pool's cluster left out, its port group added
    to the first's) and two of one name on two vCenters, which openshift-install refuses."""
    rejected(config(pool("pool1", "vc1.example.com", **first),
                    pool("pool2", "vc2.example.com", **second)), "pool2", field)
