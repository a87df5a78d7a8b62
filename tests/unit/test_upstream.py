"""Upstream's shapes (workers/core/upstream.py) against what upstream's types and CI step
expect: field names from the Go types written out here again, the envVars template's
variables, network paths, Kubernetes names, and envVars sourced by a real bash."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.strategies import ints, pick
from workers.core.errors import ConfigError
from workers.core.grants import make_lease, make_leases
from workers.core.lease import network_key
from workers.core.models import Network, Pool, Request
from workers.core.parsing import parse_request
from workers.core.pools import parse_pools
from workers.core.topology import network_path, port_group_of
from workers.core.upstream import (
    API_VERSION,
    NETWORK_TYPE_LABEL,
    env_values,
    env_vars,
    failure_domain_spec,
    held_objects,
    is_object_name,
    lease_spec,
    lease_status,
    network_object_name,
    network_objects,
    network_spec,
    pool_object,
    pool_object_name,
    pool_objects,
    pool_status,
    pools_from_show_pools,
    render_env,
    shell_value,
)

ROOT = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash")

# upstream's pkg/utils/util.go template, in its order
REFERENCE_VARIABLES = [
    "vsphere_url", "GOVC_URL", "GOVC_DATACENTER", "GOVC_DATASTORE", "GOVC_NETWORK",
    "vsphere_cluster", "vsphere_resource_pool", "vsphere_datacenter", "vsphere_datastore",
    "vsphere_portgroup", "gateway", "dns_server", "vlanid", "phydc", "primaryrouterhostname",
]
# json keys of upstream's types (pkg/apis/vspherecapacitymanager.splat.io/v1)
FAILURE_DOMAIN_KEYS = {"name", "region", "zone", "server", "topology", "shortName"}
TOPOLOGY_KEYS = {"datacenter", "computeCluster", "networks", "datastore", "resourcePool",
                 "folder", "template"}
POOL_SPEC_KEYS = FAILURE_DOMAIN_KEYS | {"ibmPoolSpec", "vcpus", "overCommitRatio", "memory",
                                        "storage", "exclude", "noSchedule", "taints"}
POOL_STATUS_KEYS = {"vcpus-available", "memory-available", "datastore-available",
                    "network-available", "lease-count", "initialized"}
NETWORK_SPEC_KEYS = {"portGroupName", "vlanId", "podName", "datacenterName", "cidr", "gateway",
                     "ipAddressCount", "netmask", "subnetType", "machineNetworkCidr",
                     "ipAddresses", "cidrIPv6", "gatewayipv6", "ipv6prefix",
                     "startIPv6Address", "primaryRouterHostname", "nameservers"}
LEASE_SPEC_KEYS = {"vcpus", "memory", "pools", "vcenters", "storage", "networks",
                   "required-pool", "poolSelector", "tolerations", "network-type",
                   "boskos-lease-id"}
LEASE_STATUS_KEYS = FAILURE_DOMAIN_KEYS | {"poolInfo", "envVars", "envVarsMap", "phase",
                                           "conditions", "job-link"}


def dns_subdomain(name: str) -> bool:
    """Kubernetes' IsDNS1123Subdomain, said another way: at most 253 characters, labels of
    lower-case letters, digits and '-' separated by single dots, each starting and ending
    with a letter or digit."""
    if not 0 < len(name) <= 253:
        return False
    for label in name.split("."):
        if not label or not set(label) <= set("abcdefghijklmnopqrstuvwxyz0123456789-"):
            return False
        if label[0] == "-" or label[-1] == "-":
            return False
    return True


def escaped(name: str) -> str:
    """A name as vSphere writes it in an inventory path: '/' as %2f, '\\' as %5c, and '%' as
    %25 unless it starts one of these escapes (a name as vSphere's API gives it is escaped
    already)."""
    out = []
    for i, c in enumerate(name):
        if c == "%":
            out.append(c if name[i + 1:i + 3].lower() in ("2f", "5c", "25") else "%25")
        else:
            out.append({"/": "%2f", "\\": "%5c"}.get(c, c))
    return "".join(out)


# text anyone may have put in a pools file or a record (no NUL, no lone surrogate: a pools file
# refuses both, and no shell variable holds a NUL), and what would break a careless template
PAYLOADS = ['"', "'", "\\", "$", "`", "\n", "\r", "!", "$(touch pwned)", "`touch pwned`",
            '"; touch pwned; "', "'; touch pwned; '", "${IFS}", "$HOME", "!!", "\\\n", "%2f",
            "/", "#", ";", "&", "|", "*", "~", " ", "\t", "é", "日本", "\U0001f600"]
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",),
                              exclude_characters="\x00"), max_size=12)
hostile = st.lists(st.sampled_from(PAYLOADS) | texts, max_size=5).map("".join)
nonempty = hostile.filter(bool)


def bash_values(tmp: Path, script: str, names: list[str]) -> list[str]:
    """Sources `script` in a real bash (history expansion on, in `tmp`) and reads back each
    variable, NUL-separated."""
    (tmp / "env.sh").write_text(script, encoding="utf-8")
    reader = 'for v in "$@"; do printf "%s\\0" "${!v}"; done'
    out = subprocess.run(
        [BASH, "--noprofile", "--norc", "-c",
         f'set -euo pipefail; set -o history -H; source ./env.sh; {reader}', "bash", *names],
        cwd=tmp, capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp)})
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert not (tmp / "pwned").exists(), "a value ran a command"
    return out.stdout.decode("utf-8").split("\0")[:-1]


# names -----------------------------------------------------------------------------------------
@given(texts | hostile)
def test_pool_object_names_are_valid_kubernetes_names_and_keep_valid_ones(name):
    out = pool_object_name(name)
    assert dns_subdomain(out) and is_object_name(out)
    assert pool_object_name(name) == out
    if dns_subdomain(name):
        assert out == name  # a lease's status.name is the pool's own name
    else:
        assert out.endswith("-" + hashlib.sha256(name.encode()).hexdigest()[:10])


@given(st.lists(texts | hostile, min_size=2, max_size=6, unique=True))
def test_distinct_pools_get_distinct_object_names(names):
    assert len({pool_object_name(n) for n in names}) == len(names)


keys = st.builds(lambda vc, pg, pod, sl: "|".join([vc, pg, pod, sl]).rstrip("|"),
                 nonempty.filter(lambda s: "|" not in s), nonempty.filter(lambda s: "|" not in s),
                 st.sampled_from(["", "dal10.pod03", "Pod_B"]),
                 st.sampled_from(["", "10.0.0.4-10.0.0.9", "fd00::4-fd00::9"]))


@given(st.lists(keys, min_size=1, max_size=6, unique=True))
def test_network_object_names_are_valid_stable_and_distinct(ledger_keys):
    names = [network_object_name(k) for k in ledger_keys]
    assert all(dns_subdomain(n) for n in names)
    assert len(set(names)) == len(names)
    for key, name in zip(ledger_keys, names, strict=True):
        assert name.endswith("-" + hashlib.sha256(key.encode()).hexdigest()[:10])
        assert network_object_name(key) == name


def test_a_network_name_reads_as_its_port_group_and_pod():
    key = "vcenter-1.example.com|ci-vlan-1148|dal10.pod03"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    assert network_object_name(key) == f"ci-vlan-1148-dal10.pod03-{digest}"


# paths -----------------------------------------------------------------------------------------
@given(nonempty, nonempty)
def test_every_network_path_ends_in_its_port_group(datacenter, port_group):
    path = network_path(datacenter, port_group)
    assert path == f"/{datacenter}/network/{escaped(port_group)}"
    last = path.rsplit("/", 1)[1]
    assert network_path(datacenter, last) == path  # escaped once: as it is, it stays
    if "%" not in port_group:
        assert port_group_of(path) == port_group
    assert "/" not in path.rsplit("/", 1)[1]


# pools and networks from a pools file ----------------------------------------------------------
# strategies built once rather than on every draw (see tests/support/strategies.py)
VCENTERS = st.sampled_from(["vc1.example.com", "vc2.example.com"])
PODS = st.sampled_from(["", "dal10.pod03", "dal12.pod01"])
DATACENTERS = st.sampled_from(["dc1", "IBM Cloud", "dc/2"])
OVERCOMMITS = st.sampled_from([1.0, 2.5])


@st.composite
def pools_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid pools file: pools over a few vCenters and pods sharing port groups, some
    multi-tenant networks split into slices; a network's details follow from its identity,
    so listings never disagree."""
    pgs = ["ci-vlan-1", "ci-vlan-2", "ci/vlan%3", "ci-mt-4"]
    pools = []
    for i in range(draw(ints(1, 4))):
        vc = draw(VCENTERS)
        pod = draw(PODS)
        nets = []
        for j, pg in enumerate(pgs):
            if not draw(st.booleans()):
                continue
            net: dict[str, Any] = {"port-group": pg, "vlan": 100 + j,
                                   "cidr": f"10.{j}.{len(pod)}.0/24",
                                   "gateway": f"10.{j}.{len(pod)}.1",
                                   "router": f"r{j}.{pod or 'nopod'}", "datacenter": "dal10"}
            if pg == "ci-mt-4":
                net.update(type="multi-tenant", slices=4)
            nets.append(net)
        pool: dict[str, Any] = {
            "name": pick(draw, [f"pool-{i}", f"Pool {i}", f"p{i}.example"]),
            "vcenter": vc, "datacenter": draw(DATACENTERS),
            "cluster": f"cluster {i}", "datastore": f"ds/{i}", "vcpus": 10 + i, "memory": 64,
            "storage": 100, "vcpu-overcommit": draw(OVERCOMMITS),
            "networks": nets}
        if pod:
            pool["pod"] = pod
        if draw(st.booleans()):
            pool.update({"short-name": f"s{i}", "zone": "z1", "region": "r1", "folder": "ci",
                         "template": "rhcos", "annotations": {"ci-auth-path": f"/auth/{i}.sh"},
                         "labels": {"region": "r1"},
                         "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]})
        pools.append(pool)
    return {"pools": pools}


def parsed(config: dict[str, Any]) -> tuple[Pool, ...]:
    try:
        return parse_pools(config, "pools.yaml")
    except ConfigError:
        assume(False)  # two pools of one name, one port group with and without a pod
        raise


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools_configs())
def test_pool_and_network_objects_have_upstreams_shape(config):
    pools = parsed(config)
    for pool in pools:
        obj = pool_object(pool)
        assert (obj["apiVersion"], obj["kind"]) == (API_VERSION, "Pool")
        spec, meta = obj["spec"], obj["metadata"]
        assert dns_subdomain(meta["name"]) and spec["name"] == meta["name"]
        assert set(spec) <= POOL_SPEC_KEYS and set(spec["topology"]) <= TOPOLOGY_KEYS
        assert set(obj["status"]) == POOL_STATUS_KEYS
        assert spec["server"] == pool.vcenter
        assert spec["overCommitRatio"] == str(float(pool.vcpu_overcommit))
        assert spec["ibmPoolSpec"]["pod"] == pool.pod
        # every port group it lists, once, as a path of its datacenter
        assert [p.rsplit("/", 1)[1] for p in spec["topology"]["networks"]] == \
            list(dict.fromkeys(escaped(n.port_group) for n in pool.networks))
        assert all(p.startswith(f"/{pool.datacenter}/network/")
                   for p in spec["topology"]["networks"])
        assert meta.get("annotations", {}) == dict(pool.annotations)
        assert spec.get("shortName") == pool.domain_map().get("short-name")
    objects = network_objects(pools)
    names = [o["metadata"]["name"] for o in objects]
    assert len(set(names)) == len(names) and all(map(dns_subdomain, names))
    expected = {k for p in pools for _, k in p.all_keyed()}
    assert len(objects) == len(expected)  # each network (slice) once
    for o in objects:
        assert set(o["spec"]) <= NETWORK_SPEC_KEYS
        assert o["metadata"]["labels"][NETWORK_TYPE_LABEL] in ("single-tenant", "multi-tenant")
        assert isinstance(o["spec"]["cidr"], int) and isinstance(o["spec"]["vlanId"], str)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools_configs(), st.data())
def test_a_leases_objects_are_among_the_published_ones(config, data):
    """What a lease holds (its ownerReferences) names the Pool and Network objects published
    from the same pools: a network is named alike whether seen in the pools or in a lease."""
    pools = parsed(config)
    published = {o["metadata"]["name"] for o in network_objects(pools)}
    pool = data.draw(st.sampled_from(pools))
    pieces = [n for n, _ in pool.all_keyed()]
    held = data.draw(st.lists(st.sampled_from(pieces), unique_by=lambda n: n.key(pool.vcenter),
                              max_size=3)) if pieces else []
    lease = make_lease("l1", Request(vcpus=1, memory=1, networks=len(held)), pool, held, 0)
    pool_names, network_names = held_objects([lease])
    assert pool_names == [pool_object(pool)["metadata"]["name"]]
    assert set(network_names) <= published and len(network_names) == len(held)
    for entry, name in zip(lease["status"]["networks"], network_names, strict=True):
        assert name == network_object_name(network_key(pool.vcenter, entry))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools_configs())
def test_pools_come_back_whole_from_show_pools(config):
    pools = parsed(config)
    views = [{"spec": p.spec(), "status": {"lease-count": 0}} for p in pools]
    views.append({"spec": {"name": "gone", "vcenter": "vc9"},
                  "status": {"removed": True, "leases": []}})
    assert pools_from_show_pools(views) == pools
    assert [o["metadata"]["name"] for o in pool_objects(views)] == \
        [pool_object_name(p.name) for p in pools]


def test_a_network_spec_is_upstreams():
    (pool,) = parse_pools({"pools": [{
        "name": "p", "vcenter": "vc", "datacenter": "dc", "cluster": "c", "datastore": "ds",
        "vcpus": 1, "memory": 1, "storage": 1, "pod": "dal10.pod03",
        "networks": [{"port-group": "ci-vlan-1148", "vlan": 1148, "cidr": "10.93.43.128/25",
                      "gateway": "10.93.43.129", "ipv6-cidr": "fd65:a1a8:60ad:1148::/64",
                      "ipv6-start": "fd65:a1a8:60ad:1148::4",
                      "ipv6-gateway": "fd65:a1a8:60ad:1148::2", "router": "bcr03a.dal10",
                      "datacenter": "dal10", "nameservers": ["10.0.0.53"]},
                     {"port-group": "ci-mt", "vlan": 7, "cidr": "10.0.7.0/28",
                      "type": "multi-tenant", "slices": 2}]}]})
    spec = network_spec(pool.networks[0])
    assert {k: v for k, v in spec.items() if k != "ipAddresses"} == {
        "portGroupName": "ci-vlan-1148", "vlanId": "1148", "podName": "dal10.pod03",
        "datacenterName": "dal10", "cidr": 25, "gateway": "10.93.43.129",
        "netmask": "255.255.255.128", "machineNetworkCidr": "10.93.43.128/25",
        "cidrIPv6": 64, "gatewayipv6": "fd65:a1a8:60ad:1148::2",
        "ipv6prefix": "fd65:a1a8:60ad:1148::/64", "startIPv6Address": "fd65:a1a8:60ad:1148::4",
        "primaryRouterHostname": "bcr03a.dal10", "nameservers": ["10.0.0.53"]}
    assert spec["ipAddresses"][:4] == ["10.93.43.128", "10.93.43.129", "10.93.43.130",
                                       "10.93.43.131"] and len(spec["ipAddresses"]) == 127
    first, second = (network_spec(n) for n in pool.networks[1].pieces)
    # each slice is a Network of its own: the VIPs ([2], [3]) are its own addresses
    assert first["ipAddresses"][:2] == second["ipAddresses"][:2] == ["10.0.7.0", "10.0.7.1"]
    assert set(first["ipAddresses"][2:]).isdisjoint(second["ipAddresses"][2:])
    assert "nameservers" in first and first["nameservers"] == []


def test_pool_status_counts_whats_left_with_the_overcommit():
    (pool,) = parse_pools({"pools": [{
        "name": "p", "vcenter": "vc", "datacenter": "dc", "cluster": "c", "datastore": "ds",
        "vcpus": 100, "vcpu-overcommit": 1.5, "memory": 64, "storage": 500,
        "networks": [{"port-group": f"pg{i}", "vlan": i} for i in range(3)]}]})
    assert pool_status(pool, {"vcpus-used": 40, "memory-used": 80, "storage-used": 100,
                              "networks-used": 1, "networks-total": 3, "lease-count": 2}) == {
        "vcpus-available": 110, "memory-available": 0, "datastore-available": 400,
        "network-available": 2, "lease-count": 2, "initialized": True}
    assert pool_status(pool)["initialized"] is False
    assert pool_status(pool)["network-available"] == 3


# leases ----------------------------------------------------------------------------------------
def example_pools() -> tuple[Pool, ...]:
    path = ROOT / "examples" / "pools-upstream.yaml"
    return parse_pools(yaml.safe_load(path.read_text()), str(path))


def test_lease_spec_leaves_out_vcpus_and_memory_of_a_network_only_lease():
    pools = example_pools()
    net_only = make_lease("n", Request(vcpus=0, memory=0, networks=1), pools[0],
                          [pools[0].networks[0]], 0)
    spec = lease_spec([net_only])
    assert set(spec) <= LEASE_SPEC_KEYS and "vcpus" not in spec and "memory" not in spec
    assert spec["networks"] == 1 and spec["network-type"] == "single-tenant"
    full = make_lease("f", Request(vcpus=24, memory=96, vcenters=3, pools=2,
                                   boskos_lease_id="b-1"), pools[0], [], 0)
    assert lease_spec([full]) == {"vcpus": 24, "memory": 96, "pools": 2, "vcenters": 3,
                                  "networks": 1, "network-type": "single-tenant",
                                  "boskos-lease-id": "b-1"}
    with pytest.raises(ValueError):
        lease_spec([])


def test_lease_spec_carries_the_pool_the_request_named_and_its_selector_and_tolerations():
    """The CI step reads `.spec."required-pool"` of every lease (it picks the network index
    by it); poolSelector and tolerations are upstream's keys for what the request gave."""
    pools = example_pools()
    req = parse_request({"vcpus": 8, "memory": 32, "required-pool": pools[0].name,
                         "pool-selector": {"region": "us-south"},
                         "tolerations": [{"key": "k", "operator": "Exists"}]},
                        default_owner="job")
    spec = lease_spec([make_lease("p", req, pools[0], [pools[0].networks[0]], 0)])
    assert set(spec) <= LEASE_SPEC_KEYS
    assert spec["required-pool"] == pools[0].name
    assert spec["poolSelector"] == {"region": "us-south"}
    assert spec["tolerations"] == [{"key": "k", "operator": "Exists", "value": "",
                                    "effect": ""}]
    # a record written before leases kept them, or holding something else there: left out
    old = make_lease("o", Request(vcpus=8, memory=32), pools[0], [], 0)
    odd = {**old, "spec": {**old["spec"], "required-pool": 7, "pool-selector": "x",
                           "tolerations": {"a": 1}}}
    for record in (old, odd):
        assert not {"required-pool", "poolSelector", "tolerations"} & set(lease_spec([record]))
    # only the text pairs of a selector, only the tolerations that are one (the CRD's schema
    # takes text there)
    mixed = {**old, "spec": {**old["spec"], "pool-selector": {"a": "b", "n": 1, "m": {"x": []}},
                             "tolerations": [{"key": "k", "operator": "Exists"}, {"key": 5},
                                             {"key": "k", "operator": ["Equal"]},
                                             {"key": "k", "extra": "x"}, {}, "k", None]}}
    spec = lease_spec([mixed])
    assert spec["poolSelector"] == {"a": "b"}
    assert spec["tolerations"] == [{"key": "k", "operator": "Exists"}]
    junk = {**old, "spec": {**old["spec"], "pool-selector": {"n": 1}, "tolerations": [{"k": 1}]}}
    assert not {"poolSelector", "tolerations"} & set(lease_spec([junk]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools_configs(), st.data())
def test_a_multi_pool_lease_status_has_every_pool(config, data):
    pools = parsed(config)
    chosen = data.draw(st.lists(st.sampled_from(pools), min_size=1, max_size=3,
                                unique_by=lambda p: p.name))
    grants = [(p, [n for n, _ in p.all_keyed()][:1]) for p in chosen]
    req = Request(vcpus=2, memory=4, pools=len(chosen), job_link="https://ci.example/1")
    leases = make_leases([f"l{i}" for i in range(len(chosen))], req, grants, 0)
    status = lease_status(leases)
    assert set(status) <= LEASE_STATUS_KEYS and status["phase"] == "Fulfilled"
    names = [pool_object_name(p.name) for p in chosen]
    assert [fd["name"] for fd in status["poolInfo"]] == names
    assert list(status["envVarsMap"]) == names
    assert status["envVars"] == status["envVarsMap"][names[0]]
    assert (status["name"], status["server"]) == (names[0], chosen[0].vcenter)
    assert status["job-link"] == "https://ci.example/1"
    for (pool, nets), fd, lease in zip(grants, status["poolInfo"], leases, strict=True):
        assert set(fd) <= FAILURE_DOMAIN_KEYS and set(fd["topology"]) <= TOPOLOGY_KEYS
        assert fd["server"] == pool.vcenter
        assert [p.rsplit("/", 1)[1] for p in fd["topology"]["networks"]] == \
            [escaped(n.port_group) for n in nets]
        # what the lease carries itself: the same pool-info (several pools), its env-vars
        assert lease["status"].get("pool-info", status["poolInfo"]) == status["poolInfo"]
        assert lease["status"]["env-vars"] == status["envVarsMap"][fd["name"]]
        assert env_values(lease)["GOVC_URL"] == pool.vcenter
    # the inline failure domain holds every network of the lease, each in its own datacenter
    assert status["topology"]["networks"] == list(dict.fromkeys(
        f"/{p.datacenter}/network/{escaped(n.port_group)}" for p, nets in grants for n in nets))
    assert ("pool-info" in leases[0]["status"]) == (len(chosen) > 1)


def test_lease_status_without_leases_is_its_phase_and_phases_are_upstreams():
    assert lease_status([], phase="Pending") == {"phase": "Pending"}
    with pytest.raises(ValueError):
        lease_status([], phase="Granted")


def test_an_old_lease_without_a_failure_domain_still_renders():
    lease = {"spec": {"vcpus": 1}, "status": {
        "pool": "Pool One", "vcenter": "vc", "datacenter": "dc", "cluster": "c",
        "datastore": "ds", "networks": [{"port-group": "pg", "vlan": 5, "gateway": "10.0.0.1"}]},
        "metadata": {"name": "x"}}
    fd = failure_domain_spec(lease)
    assert fd["topology"] == {"datacenter": "dc", "computeCluster": "/dc/host/c",
                              "datastore": "/dc/datastore/ds",
                              "resourcePool": "/dc/host/c/Resources",
                              "networks": ["/dc/network/pg"]}
    assert dns_subdomain(fd["name"])
    assert env_values(lease)["dns_server"] == "10.0.0.1"  # no nameserver: the gateway


# envVars ---------------------------------------------------------------------------------------
def test_the_env_template_has_every_variable_of_upstreams_in_its_order():
    (pool,) = example_pools()[:1]
    text = env_vars(make_lease("l", Request(vcpus=1, memory=1), pool, [pool.networks[0]], 0))
    assert re.findall(r"^export (\w+)=", text, re.M) == REFERENCE_VARIABLES
    assert len(text.splitlines()) == len(REFERENCE_VARIABLES)


needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


@needs_bash
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(hostile, min_size=len(REFERENCE_VARIABLES), max_size=len(REFERENCE_VARIABLES)))
def test_any_value_reads_back_exactly_when_bash_sources_it(tmp_path, values):
    wanted = dict(zip(REFERENCE_VARIABLES, values, strict=True))
    assert bash_values(tmp_path, render_env(wanted), REFERENCE_VARIABLES) == values


@needs_bash
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(vcenter=nonempty, datacenter=nonempty, cluster=nonempty, datastore=nonempty,
       port_group=nonempty, gateway=hostile, router=hostile, phydc=hostile,
       dns=st.lists(hostile, max_size=2), vlan=st.none() | st.integers(0, 4094))
def test_a_leases_env_vars_source_to_its_pool_and_network(tmp_path, vcenter, datacenter,
                                                          cluster, datastore, port_group,
                                                          gateway, router, phydc, dns, vlan):
    """Whatever the names in the pools (upstream's template would let a quote end its
    string), sourcing a lease's env-vars sets each variable to exactly its value and runs
    nothing."""
    details = tuple((k, v) for k, v in (("router", router), ("datacenter", phydc),
                                         ("nameservers", tuple(dns))) if v)
    net = Network(port_group, vlan=vlan, gateway=gateway, details=details)
    pool = Pool("p", vcenter, datacenter, cluster, datastore, 8, 8, 8, networks=(net,))
    lease = make_lease("l", Request(vcpus=1, memory=1), pool, [net], 0)
    cluster_path = f"/{datacenter}/host/{escaped(cluster)}"
    datastore_path = f"/{datacenter}/datastore/{escaped(datastore)}"
    expected = {
        "vsphere_url": vcenter, "GOVC_URL": vcenter, "GOVC_DATACENTER": datacenter,
        "GOVC_DATASTORE": datastore_path, "GOVC_NETWORK": port_group,
        "vsphere_cluster": cluster_path, "vsphere_resource_pool": f"{cluster_path}/Resources",
        "vsphere_datacenter": datacenter, "vsphere_datastore": datastore_path,
        "vsphere_portgroup": port_group, "gateway": gateway,
        "dns_server": dns[0] if dns and dns[0] else gateway,
        "vlanid": "" if vlan is None else str(vlan), "phydc": phydc,
        "primaryrouterhostname": router,
    }
    got = bash_values(tmp_path, lease["status"]["env-vars"], REFERENCE_VARIABLES)
    assert dict(zip(REFERENCE_VARIABLES, got, strict=True)) == expected


def test_a_plain_value_is_double_quoted_as_upstream_writes_it():
    assert shell_value("vcenter.example.com") == '"vcenter.example.com"'
    assert shell_value("/dc/host/c1/Resources") == '"/dc/host/c1/Resources"'
    assert shell_value("") == '""'
    assert shell_value("a'b") == "'a'\\''b'"
    assert shell_value("$x") == "'$x'"


@pytest.mark.parametrize("values", [{"ok": "a\x00b"}, {"not a name": "x"}, {"1x": "x"},
                                    {"x;touch y": "x"}])
def test_what_no_shell_variable_can_hold_is_refused(values):
    with pytest.raises(ValueError):
        render_env(values)
