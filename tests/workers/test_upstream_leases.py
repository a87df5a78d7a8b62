"""What a job step gets through the task API (real `celery -A tasks worker` processes on a
real redis-server) for upstream's CI step: each lease's env-vars, sourced by bash, name its
own pool and network; a multi-pool lease carries every pool's failure domain (pool-info);
pool annotations pass through; failure-domain networks are inventory paths (`vcm leases -o
failure-domains` gives install-config their port groups); upstream's Lease status renders from the
leases as answered. A hostile pools file stops the worker naming the field."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helpers import call
from tests.support.procs import ROOT, RedisServer, Stack, Worker, env_for, wait_for
from workers.core.pools import parse_pools
from workers.core.upstream import held_objects, lease_status, network_objects

BASH = shutil.which("bash")
VARIABLES = ["vsphere_url", "GOVC_URL", "GOVC_DATACENTER", "GOVC_DATASTORE", "GOVC_NETWORK",
             "vsphere_cluster", "vsphere_resource_pool", "vsphere_datacenter",
             "vsphere_datastore", "vsphere_portgroup", "gateway", "dns_server", "vlanid",
             "phydc", "primaryrouterhostname"]
NASTY = 'ci-vlan-9 "$(touch pwned)" `id` \'q\' \\ $HOME'  # a port group a template must quote


def escaped(name: str) -> str:
    """A name as vSphere writes it in an inventory path."""
    return name.replace("%", "%25").replace("/", "%2f").replace("\\", "%5c")


def pool(i: int, **kw: Any) -> dict[str, Any]:
    return {
        "name": f"vc{i}-cluster", "vcenter": f"vcenter-{i}.example.com",
        "datacenter": f"dc-{i}", "cluster": f"cluster {i}", "datastore": f"vsan/{i}",
        "vcpus": 64, "memory": 256, "storage": 1000, "pod": f"dal1{i}.pod01",
        "zone": f"zone-{i}", "region": "us-east", "short-name": f"z{i}",
        "annotations": {"ci-auth-path": f"/var/run/vault/vcenter-{i}/auth.sh",
                        "example.com/note": f"pool {i}: \"quoted\" $x"},
        "networks": [{"port-group": f"ci-vlan-{i}0{j}", "vlan": i * 100 + j,
                      "cidr": f"10.{i}.{j}.0/24", "gateway": f"10.{i}.{j}.1",
                      "nameservers": [f"10.{i}.{j}.53"], "router": f"r{i}.dal1{i}",
                      "datacenter": f"dal1{i}"} for j in range(3)],
        **kw,
    }


POOLS = {"pools": [pool(1), pool(2), pool(3, networks=[
    {"port-group": NASTY, "vlan": 300, "cidr": "10.3.0.0/24", "gateway": "10.3.0.1"}])]}


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("upstream"), yaml.safe_dump(POOLS))
    yield stack
    stack.stop()


def sourced(tmp: Path, text: str) -> dict[str, str]:
    """The variables bash has after sourcing `text` (in `tmp`, where nothing may appear)."""
    (tmp / "env.sh").write_text(text)
    out = subprocess.run(
        [BASH, "--noprofile", "--norc", "-c",
         'set -eu; source ./env.sh; for v in "$@"; do printf "%s\\0" "${!v}"; done',
         "bash", *VARIABLES], cwd=tmp, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert not (tmp / "pwned").exists()
    return dict(zip(VARIABLES, out.stdout.decode().split("\0")[:-1], strict=True))


def expected_env(lease: dict[str, Any]) -> dict[str, str]:
    """What upstream's template says each variable is, for this lease's pool and network."""
    st = lease["status"]
    net = st["networks"][0]
    dc, cluster = st["datacenter"], escaped(st["cluster"])
    datastore = f"/{dc}/datastore/{escaped(st['datastore'])}"
    gateway = net.get("gateway", "")
    return {
        "vsphere_url": st["vcenter"], "GOVC_URL": st["vcenter"], "GOVC_DATACENTER": dc,
        "GOVC_DATASTORE": datastore, "GOVC_NETWORK": net["port-group"],
        "vsphere_cluster": f"/{dc}/host/{cluster}",
        "vsphere_resource_pool": f"/{dc}/host/{cluster}/Resources",
        "vsphere_datacenter": dc, "vsphere_datastore": datastore,
        "vsphere_portgroup": net["port-group"], "gateway": gateway,
        "dns_server": (net.get("nameservers") or [gateway])[0], "vlanid": str(net["vlan"]),
        "phydc": net.get("datacenter", ""), "primaryrouterhostname": net.get("router", ""),
    }


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_a_multi_pool_lease_carries_env_vars_pool_info_and_annotations(up, tmp_path):
    request = {"vcpus": 8, "memory": 32, "pools": 3, "vcenters": 3, "owner": "job-a",
               "request-id": "multi-1", "job-link": "https://prow.example/job/1"}
    leases = call(up.app, "vcm.acquire", request=request)
    assert sorted(x["status"]["pool"] for x in leases) == ["vc1-cluster", "vc2-cluster",
                                                            "vc3-cluster"]
    by_name = {p["name"]: p for p in POOLS["pools"]}
    info = leases[0]["status"]["pool-info"]
    assert [fd["name"] for fd in info] == [x["status"]["pool"] for x in leases]
    for lease, fd in zip(leases, info, strict=True):
        st = lease["status"]
        configured = by_name[st["pool"]]
        assert st["pool-info"] == info  # every lease of the request: all of its pools
        assert st["pool-annotations"] == configured["annotations"]
        assert sourced(tmp_path, st["env-vars"]) == expected_env(lease)
        paths = [f"/{st['datacenter']}/network/{escaped(n['port-group'])}"
                 for n in st["networks"]]
        assert st["failure-domain"]["topology"]["networks"] == paths
        assert (fd["server"], fd["zone"], fd["shortName"]) == (
            configured["vcenter"], configured["zone"], configured["short-name"])
        assert fd["topology"]["networks"] == paths
    # stored as granted: listed, and answered again to a copy of the request, unchanged
    listed = {x["metadata"]["name"]: x for x in call(up.app, "vcm.list_leases", owner="job-a")}
    assert all(listed[x["metadata"]["name"]] == x for x in leases)
    assert call(up.app, "vcm.acquire", request=request) == leases
    # upstream's Lease status, from the leases as a job step received them
    status = lease_status(leases)
    assert status["poolInfo"] == info and status["envVars"] == leases[0]["status"]["env-vars"]
    assert status["envVarsMap"] == {x["status"]["pool"]: x["status"]["env-vars"]
                                    for x in leases}
    assert status["job-link"] == "https://prow.example/job/1"
    pools_named, networks_named = held_objects(leases)
    assert pools_named == [x["status"]["pool"] for x in leases]
    published = {o["metadata"]["name"] for o in network_objects(parse_pools(POOLS))}
    assert set(networks_named) <= published and len(networks_named) == 3
    call(up.app, "vcm.release", lease_ids=[x["metadata"]["name"] for x in leases])


def test_a_single_pool_lease_has_env_vars_and_no_pool_info(up, tmp_path):
    (lease,) = call(up.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "owner": "job-b",
                                                    "required-pool": "vc3-cluster"})
    st = lease["status"]
    assert "pool-info" not in st and st["networks"][0]["port-group"] == NASTY
    if BASH is not None:  # the port group is quoted, whatever it holds
        assert sourced(tmp_path, st["env-vars"])["GOVC_NETWORK"] == NASTY
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "leases", "--owner", "job-b", "-o",
         "failure-domains", "--redis-url", up.redis.url],
        cwd=ROOT, env=up.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (domain,) = yaml.safe_load(out.stdout)["platform"]["vsphere"]["failureDomains"]
    assert domain["name"] == "z3"
    # install-config names the port group alone (openshift-install looks it up below the
    # computeCluster), as one inventory path element
    assert domain["topology"]["networks"] == [escaped(NASTY)]
    assert domain["topology"]["datastore"] == "/dc-3/datastore/vsan%2f3"
    call(up.app, "vcm.release", lease_ids=[lease["metadata"]["name"]])


@pytest.mark.parametrize(("annotations", "field"), [
    ({"ci-auth-path": "/auth\x1b]0;owned\x07.sh"}, "annotations.ci-auth-path"),
    ({"ci-auth-path": "x" * 50_000}, "annotations.ci-auth-path"),
    ({"ci-auth-path\n": "x"}, "annotations"),
])
def test_a_hostile_annotation_stops_the_placement_worker_naming_it(tmp_path, annotations,
                                                                   field):
    path = tmp_path / "pools.yaml"
    path.write_text(yaml.safe_dump({"pools": [pool(1, annotations=annotations)]}))
    server = RedisServer().start()
    worker = Worker(env_for(server.url, path, VCM_MIRROR_FILE=str(tmp_path / "l.json")))
    try:
        worker.start(wait=False)
        wait_for(lambda: worker.proc.poll() is not None, timeout=60, what="the worker to stop")
        out = worker.output()
        assert worker.proc.returncode != 0
        assert f"{path}: pool 'vc1-cluster': field '{field}'" in out, out[-2000:]
        assert "Traceback" not in out and "ready." not in out, out[-2000:]
    finally:
        worker.kill()
        server.stop()
