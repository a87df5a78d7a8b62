"""What a job step hands openshift-install, looked up in a vCenter the way the installer looks
it up: govmomi's Finder (our simulator's find control, tests/vcsim) on each path of the
failure domains `vcm acquire -o failure-domains` prints, a network joined to its
computeCluster with Go's path.Join as the installer does; and the inventory paths of the
lease itself (upstream's topology, and its envVars), looked up as they are. The leases come
from a real stack (redis-server, placement and queries workers) through the `vcm` CLI as a
process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from tests.support.helpers import call
from tests.support.procs import ROOT, Stack
from tests.vcsim import Simulator, Unavailable

pytestmark = pytest.mark.timeout(600)  # the first test may wait for a cold simulator build

HOST = {"cores": 16, "threads": 32, "mhz": 2400, "memory_gb": 256}
# vSphere's API gives a name with '/' in it escaped ("vsan%2f2" is shown as "vsan/2"): that
# is the name `vcm pools discover` writes and `vcm check-pools` checks against
INVENTORY = {"datacenters": [
    {"name": "dc1", "clusters": [{"name": "cluster1", "hosts": [HOST]}],
     "datastores": [{"name": "ds1", "capacity_gb": 1000}],
     "portgroups": ["ci-vlan-1001", "ci-vlan-1002"]},
    {"name": "dc2", "clusters": [{"name": "cluster2", "hosts": [HOST]}],
     "datastores": [{"name": "vsan%2f2", "capacity_gb": 1000}],
     "portgroups": ["ci%2fvlan-2001"]},
]}


def pools_yaml(vcenter: str) -> str:
    return yaml.safe_dump({"pools": [
        {"name": "pool1", "vcenter": vcenter, "datacenter": "dc1", "cluster": "cluster1",
         "datastore": "ds1", "vcpus": 64, "memory": 256, "storage": 1000, "short-name": "z1",
         "networks": [{"port-group": "ci-vlan-1001", "vlan": 1001},
                      {"port-group": "ci-vlan-1002", "vlan": 1002}]},
        {"name": "pool2", "vcenter": vcenter, "datacenter": "dc2", "cluster": "cluster2",
         "datastore": "vsan%2f2", "vcpus": 64, "memory": 256, "storage": 1000,
         "short-name": "z2", "networks": [{"port-group": "ci%2fvlan-2001", "vlan": 2001}]},
    ]})


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[tuple[Simulator, Stack]]:
    try:
        sim = Simulator(INVENTORY).start()
    except Unavailable as exc:
        from tests.support.tools import missing

        missing(f"vCenter simulator: {exc}")
        raise
    stack = Stack(tmp_path_factory.mktemp("install-config"), pools_yaml(sim.address))
    yield sim, stack
    stack.stop()
    sim.stop()


def exported(env_vars: str) -> dict[str, str]:
    """The variables a job step's bash has after sourcing `env_vars`."""
    out = subprocess.run(["bash", "--noprofile", "--norc", "-c", 'source /dev/stdin; env -0'],
                         input=env_vars, capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return dict(x.split("=", 1) for x in out.stdout.split("\0") if "=" in x)


def vcm(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args, "--redis-url",
                           stack.redis.url], cwd=ROOT, env=stack.env, capture_output=True,
                          text=True, timeout=120)


def missing_in(sim: Simulator, topology: dict, networks_under_cluster: bool) -> list[str]:
    """The paths of a failure domain's topology that the vCenter has no object at."""
    cluster = topology["computeCluster"]
    lookups = [("datacenter", topology["datacenter"], ""), ("cluster", cluster, ""),
               ("datastore", topology["datastore"], ""),
               ("resourcepool", topology["resourcePool"], "")]
    lookups += [("network", net, cluster if networks_under_cluster else "")
                for net in topology["networks"]]
    return [f"{kind} {path!r}" + (f" under {under!r}" if under else "")
            for kind, path, under in lookups if sim.find(kind, path, under) is None]


def test_install_config_failure_domains_resolve_as_openshift_install_resolves_them(env):
    """openshift-install finds a failure domain's network at path.Join(computeCluster,
    networks[0]), so install-config names a port group there, not an inventory path (which
    is why upstream's CI step cuts the port group out of the lease's topology before writing
    platform.yaml). The failure domains `-o failure-domains` prints gave
    /dc1/network/ci-vlan-1001: the installer looked for
    /dc1/host/cluster1/dc1/network/ci-vlan-1001 and found no network."""
    sim, stack = env
    out = vcm(stack, "acquire", "--vcpus", "8", "--memory", "16", "--pools", "2", "--owner",
              "job-fd", "-o", "failure-domains")
    try:
        assert out.returncode == 0, out.stderr
        domains = yaml.safe_load(out.stdout)["platform"]["vsphere"]["failureDomains"]
        assert sorted(d["name"] for d in domains) == ["z1", "z2"]
        for domain in domains:
            assert missing_in(sim, domain["topology"], networks_under_cluster=True) == [], \
                domain
    finally:
        call(stack.app, "vcm.release", owner="job-fd")


def test_a_lease_inventory_paths_resolve_when_names_are_as_vsphere_gives_them(env):
    """A name as vSphere's API gives it is already escaped ("vsan%2f2" for a datastore shown
    as vsan/2; the pools file holds it so, as `vcm pools discover` writes it): the lease's
    inventory paths (upstream's topology, and its envVars) use it as it is. Escaped again,
    they named /dc2/datastore/vsan%252f2 and /dc2/network/ci%252fvlan-2001, which no vCenter
    has."""
    sim, stack = env
    (lease,) = call(stack.app, "vcm.acquire", request={"vcpus": 8, "memory": 16, "owner":
                                                       "job-esc", "required-pool": "pool2"})
    try:
        topology = lease["status"]["failure-domain"]["topology"]
        assert missing_in(sim, topology, networks_under_cluster=False) == [], topology
        env_vars = exported(lease["status"]["env-vars"])
        for name, kind in (("GOVC_DATASTORE", "datastore"), ("vsphere_cluster", "cluster"),
                           ("vsphere_resource_pool", "resourcepool")):
            assert sim.find(kind, env_vars[name]) is not None, (name, env_vars[name])
    finally:
        call(stack.app, "vcm.release", owner="job-esc")
