"""The vCenter adapter against govmomi's vCenter simulator (tests/vcsim), over real SOAP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace

import pytest

from tests.vcsim import Simulator, Unavailable
from workers.adapters.vcenter import (
    GIB,
    Finding,
    VCenterInventory,
    address,
    check_pools,
    connector,
)
from workers.core.models import Network, Pool

pytestmark = pytest.mark.timeout(600)  # the first test waits for a cold build (~1-2 min)

USER, PASSWORD = "vcm", "vcm-secret"
HOST = {"cores": 16, "threads": 32, "mhz": 2400, "memory_gb": 256}
INVENTORY = {"datacenters": [
    {"name": "datacenter1",
     "clusters": [{"name": "cluster1", "hosts": [HOST, HOST]}],  # 64 threads, 512 GB
     "datastores": [{"name": "datastore1", "capacity_gb": 4096, "free_gb": 3000}],
     "portgroups": ["ci-vlan-1001", "ci-vlan-1002", "ci-mt-1005"]},
    {"name": "datacenter2",
     "clusters": [{"name": "cluster2", "hosts": [{"cores": 8, "mhz": 2000, "memory_gb": 64}]}],
     "datastores": [{"name": "datastore2", "capacity_gb": 1000}],
     "portgroups": ["ci-vlan-2001"]},
]}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    try:
        simulator = Simulator(INVENTORY, user=USER, password=PASSWORD).start()
    except Unavailable as exc:
        from tests.support.tools import missing

        missing(f"vCenter simulator: {exc}")
    yield simulator
    simulator.stop()


def pools(vcenter: str) -> list[Pool]:
    """Two pools that match the simulator; pool2 sits exactly at its hardware."""
    return [
        Pool("pool1", vcenter, "datacenter1", "cluster1", "datastore1", vcpus=60, memory=400,
             storage=4000, networks=(Network("ci-vlan-1001", 1001), Network("ci-vlan-1002", 1002))),
        Pool("pool2", vcenter, "datacenter2", "cluster2", "datastore2", vcpus=8, memory=64,
             storage=1000, networks=(Network("ci-vlan-2001", 2001),)),
    ]


def check(sim: Simulator, pool_list: list[Pool], password: str = PASSWORD) -> list[Finding]:
    return check_pools(pool_list, connector({sim.address: (USER, password)}, timeout=10))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_inventory_reads_the_simulator(sim):
    with VCenterInventory.connect(sim.host, USER, PASSWORD, port=sim.port) as inv:
        assert inv.datacenters() == ["datacenter1", "datacenter2"]
        dc = inv.datacenter("datacenter1")
        assert inv.datacenter("nowhere") is None
    assert dc is not None
    c = dc.clusters["cluster1"]
    assert (c.hosts, c.cpu_cores, c.cpu_threads, c.cpu_mhz) == (2, 32, 64, 32 * 2400)
    assert c.memory_bytes == 512 * GIB
    ds = dc.datastores["datastore1"]
    assert (ds.capacity_bytes, ds.free_bytes) == (4096 * GIB, 3000 * GIB)
    assert set(dc.datastores) == {"datastore1"}  # datastore2 lives in datacenter2
    assert {"ci-vlan-1001", "ci-vlan-1002", "ci-mt-1005"} <= dc.networks
    assert "ci-vlan-2001" not in dc.networks


def test_matching_pools_have_no_findings(sim):
    assert check(sim, pools(sim.address)) == []


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"datastore": "datastore9"}, "datastore",
     "pool1: datastore 'datastore9' not found in datacenter 'datacenter1' on {vc} "
     "(have: datastore1)"),
    ({"datastore": "datastore2"}, "datastore",  # exists, but in the other datacenter
     "pool1: datastore 'datastore2' not found in datacenter 'datacenter1' on {vc} "
     "(have: datastore1)"),
    ({"cluster": "cluster9"}, "cluster",
     "pool1: cluster 'cluster9' not found in datacenter 'datacenter1' on {vc} (have: cluster1)"),
    ({"networks": (Network("ci-vlan-1001"), Network("ci-vlan-1009"))}, "networks[1].port-group",
     "pool1: port group 'ci-vlan-1009' not found in datacenter 'datacenter1' on {vc} (have: "),
    ({"datacenter": "datacenter9"}, "datacenter",  # and nothing else about pool1
     "pool1: datacenter 'datacenter9' not found on {vc} (have: datacenter1, datacenter2)"),
], ids=["datastore", "datastore-of-other-dc", "cluster", "port-group", "datacenter"])
def test_a_wrong_name_is_one_error_naming_pool_and_field(sim, change, field, message):
    pool1, pool2 = pools(sim.address)
    findings = check(sim, [replace(pool1, **change), pool2])
    assert len(findings) == 1, findings
    (f,) = findings
    assert (f.pool, f.field, f.severity) == ("pool1", field, "error")
    assert f.message.startswith(message.format(vc=sim.address)), f.message


def test_port_group_error_lists_the_datacenters_networks(sim):
    pool1 = replace(pools(sim.address)[0], networks=(Network("nope"),))
    (f,) = check(sim, [pool1])
    have = f.message.split("(have: ", 1)[1].rstrip(")").split(", ")
    assert {"VM Network", "ci-mt-1005", "ci-vlan-1001", "ci-vlan-1002"} <= set(have)
    assert "ci-vlan-2001" not in have and have == sorted(have)


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"memory": 1600}, "memory", "pool1: memory budget 1600 GB exceeds cluster capacity 512 GB"),
    ({"vcpus": 65}, "vcpus", "pool1: vcpus budget 65 exceeds cluster capacity 64 logical CPUs"),
    ({"storage": 4097}, "storage",
     "pool1: storage budget 4097 GB exceeds datastore capacity 4096 GB"),
], ids=["memory", "vcpus", "storage"])
def test_an_oversized_budget_is_a_warning(sim, change, field, message):
    pool1, pool2 = pools(sim.address)
    findings = check(sim, [replace(pool1, **change), pool2])
    assert findings == [Finding("pool1", field, "warning", message)]


def test_wrong_password_is_one_error_for_the_vcenter(sim):
    findings = check(sim, pools(sim.address), password="wrong")
    assert findings == [Finding(
        "pool1, pool2", "vcenter", "error",
        f"pool1, pool2: vcenter {sim.address}: login as 'vcm' failed (bad credentials)",
    )]


def test_closed_vcenter_is_unreachable_and_the_others_are_still_checked(sim):
    dead = f"127.0.0.1:{closed_port()}"
    pool3 = replace(pools(dead)[0], name="pool3", datastore="datastore9")
    bad1 = replace(pools(sim.address)[0], cluster="cluster9")
    creds = {sim.address: (USER, PASSWORD), dead: (USER, PASSWORD)}
    findings = check_pools([pool3, bad1], connector(creds, timeout=5))
    assert [(f.pool, f.field, f.severity) for f in findings] == [
        ("pool3", "vcenter", "error"), ("pool1", "cluster", "error")]
    assert findings[0].message.startswith(f"pool3: vcenter {dead}: unreachable: ")
    assert "refused" in findings[0].message


def test_missing_credentials_is_an_error_not_a_traceback(sim):
    findings = check_pools(pools(sim.address), connector({}))
    assert findings == [Finding(
        "pool1, pool2", "vcenter", "error",
        f"pool1, pool2: vcenter {sim.address}: no credentials given for it",
    )]


@pytest.mark.parametrize(("vcenter", "expected"), [
    ("vcenter1.example.com", ("vcenter1.example.com", 443)),
    ("127.0.0.1:8989", ("127.0.0.1", 8989)),
    ("[::1]:8443", ("::1", 8443)),
    ("https://vc.example.com:444/sdk", ("vc.example.com", 444)),
])
def test_address(vcenter, expected):
    assert address(vcenter) == expected


def test_cli_check_pools_as_a_process(sim, tmp_path):
    """`vcm check-pools` reads the pools file and credentials from the environment."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from tests.support.procs import ROOT

    def pool_yaml(p: Pool) -> dict:
        return {"name": p.name, "vcenter": p.vcenter, "datacenter": p.datacenter,
                "cluster": p.cluster, "datastore": p.datastore, "vcpus": p.vcpus,
                "memory": p.memory, "storage": p.storage,
                "networks": [{"port-group": n.port_group, "vlan": n.vlan} for n in p.networks]}

    good = [pool_yaml(p) for p in pools(sim.address)]
    path = tmp_path / "pools.yaml"
    env = dict(os.environ, VCM_VCENTER_CREDENTIALS=f"{sim.address}={USER}:{PASSWORD}",
               PYTHONPATH=str(ROOT))

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "workers.cli", "check-pools", "-f",
                               str(path), *extra], env=env, capture_output=True, text=True,
                              timeout=120, cwd=ROOT)

    path.write_text(yaml.safe_dump({"pools": good}))
    p = run()
    assert p.returncode == 0, p.stderr
    assert "every pool matches" in p.stdout
    good[0]["datastore"] = "datastore9"
    path.write_text(yaml.safe_dump({"pools": good}))
    p = run("-o", "json")
    assert p.returncode == 2, p.stderr
    (finding,) = json.loads(p.stdout)
    assert (finding["pool"], finding["field"], finding["severity"]) == \
        ("pool1", "datastore", "error")
