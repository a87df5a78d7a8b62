"""`vcm pools cordon|uncordon|exclude|include|set-capacity`, `vcm networks add|drop|split|list`,
`vcm status` and `vcm jobs`: against a real pools file with comments (only the edited lines
change, byte for byte), against its ConfigMap on the test apiserver (compare-and-swap under
deploy/'s RBAC and the operator example's), and with running workers that follow each change
without a restart (the ConfigMap through a kubelet-style volume). Each command family runs as a
real `vcm` process; where a test checks what a command writes and says, its command lines run
one after another in one process (the `cli` fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.support.cli_session import CliSession
from tests.support.kube_apiserver import KubeApiServer
from tests.support.kubelet import ConfigMapVolume
from tests.support.procs import ROOT, Stack, env_for, wait_for
from tests.support.rbac import RbacPolicy
from workers.adapters.pools_file import load_pools

NAMESPACE = "vsphere-capacity-manager"
POOLS_CM = "vcm-pools"
OPERATORS = "vcm-pool-operators"  # the group deploy/examples/pool-operators-rbac.yaml binds
RBAC_FILES = (ROOT / "deploy" / "rbac.yaml",
              ROOT / "deploy" / "examples" / "pool-operators-rbac.yaml")

POOLS = """\
# Pools for the operator-command tests: comments, flow and block styles, a wrapped line.
pools:
  # the east pool
  - name: east   # first
    vcenter: vc1.example.com
    datacenter: dc1
    cluster: c1
    datastore: ds1
    vcpus: 48          # budget
    memory: 192        # GB
    storage: 1000
    labels: {region: east}
    # its networks
    networks:
      - {port-group: east-1, vlan: 101, cidr: 10.1.1.0/24, gateway: 10.1.1.1,
         netmask: 255.255.255.0}
      - {port-group: east-2, vlan: 102, cidr: 10.1.2.0/24, gateway: 10.1.2.1}
      # a multi-tenant VLAN
      - {port-group: east-mt, vlan: 103, cidr: 10.1.3.0/28, gateway: 10.1.3.1, type: multi-tenant}

  - name: west
    vcenter: vc2.example.com
    datacenter: dc2
    cluster: c2
    datastore: ds2
    vcpus: 48
    memory: 192
    storage: 1000
    vcpu-overcommit: 1.0   # no overcommit
    networks:
      - port-group: west-1
        vlan: 201
        cidr: 10.2.1.0/24
        gateway: 10.2.1.1
      - port-group: west-2   # spare
        vlan: 202
        cidr: 10.2.2.0/24
        gateway: 10.2.2.1
"""


def replaced(text: str, old: str, new: str) -> str:
    """`text` with `old` (found exactly once) replaced: the expected file after an edit."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


def vcm(*args: str | bytes, env: dict[str, str], timeout: float = 60
        ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def file_env(path: Path, **extra: str) -> dict[str, str]:
    # no Redis and no cluster: the configuration commands need neither
    return env_for("redis://127.0.0.1:1/0", path, **extra)


@pytest.fixture(scope="module")
def cli() -> Iterator[CliSession]:
    """One process that runs command lines one after another, each with its own environment
    (tests/support/cli_session.py): a change, a refusal or a listing checked for what it
    writes and says costs no interpreter start of its own. Each command family still runs
    as a real `vcm` process here: the concurrent changes (pools cordon, exclude and
    set-capacity; networks drop and add; the ConfigMap's cordon and exclude), refusals
    (exit 2: a split of a single-tenant network; exit 1: the read-back and RBAC tests),
    networks split, status, jobs and networks list."""
    with CliSession(file_env(ROOT / "no-such-pools.yaml")) as session:
        yield session


@pytest.fixture()
def pools_path(tmp_path) -> Path:
    path = tmp_path / "conf" / "pools.yaml"
    path.parent.mkdir()
    path.write_text(POOLS)
    path.chmod(0o640)
    return path


# ---------------------------------------------------------------------------------------------
# the pools file


def test_each_change_touches_only_its_own_lines(cli, pools_path):
    env = file_env(pools_path)
    text = POOLS
    p = cli.run("pools", "cordon", "east", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "east: cordoned",
        f"{pools_path}: written; running workers pick it up without a restart"]
    text = replaced(text, "    storage: 1000\n    labels: {region: east}\n",
                    "    storage: 1000\n    no-schedule: true\n    labels: {region: east}\n")
    assert pools_path.read_text() == text

    p = cli.run("pools", "set-capacity", "west", "--vcpus", "64", "--vcpu-overcommit", "1.5",
                env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[:2] == ["west: vcpus 48 -> 64",
                                         "west: vcpu-overcommit 1.0 -> 1.5"]
    text = replaced(text, "    vcpus: 48\n    memory: 192\n    storage: 1000\n    vcpu-",
                    "    vcpus: 64\n    memory: 192\n    storage: 1000\n    vcpu-")
    text = replaced(text, "vcpu-overcommit: 1.0   # no overcommit",
                    "vcpu-overcommit: 1.5   # no overcommit")
    assert pools_path.read_text() == text

    p = cli.run("networks", "drop", "east-1", env=env)  # a flow map written over two lines
    assert p.returncode == 0, p.stderr
    text = replaced(text, "      - {port-group: east-1, vlan: 101, cidr: 10.1.1.0/24, "
                    "gateway: 10.1.1.1,\n         netmask: 255.255.255.0}\n", "")
    assert pools_path.read_text() == text

    p = cli.run("networks", "add", "west-3", "--pool", "west", "--gateway", "10.2.3.1",
                "--cidr", "10.2.3.0/24", "--vlan", "203", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "west: added west-3"
    text = replaced(text, "        gateway: 10.2.2.1\n",  # block style, as the items above
                    "        gateway: 10.2.2.1\n      - port-group: west-3\n        vlan: 203\n"
                    "        cidr: 10.2.3.0/24\n        gateway: 10.2.3.1\n")
    assert pools_path.read_text() == text

    p = cli.run("networks", "drop", "west-1", "--pool", "west", env=env)  # a block map item
    assert p.returncode == 0, p.stderr
    text = replaced(text, "      - port-group: west-1\n        vlan: 201\n        cidr: "
                    "10.2.1.0/24\n        gateway: 10.2.1.1\n", "")
    assert pools_path.read_text() == text

    p = cli.run("networks", "add", "east-4", "--pool", "east", "--vlan", "104", "--dns",
                "10.1.4.2,10.1.4.3", env=env)
    assert p.returncode == 0, p.stderr
    text = replaced(text, "type: multi-tenant}\n", "type: multi-tenant}\n"
                    "      - {port-group: east-4, vlan: 104, dns: [10.1.4.2, 10.1.4.3]}\n")
    assert pools_path.read_text() == text

    for command in ("uncordon", "exclude"):
        p = cli.run("pools", command, "east", env=env)
        assert p.returncode == 0, p.stderr
    text = replaced(text, "    no-schedule: true\n",
                    "    exclude: true\n    no-schedule: false\n")
    assert pools_path.read_text() == text
    assert [p.name for p in load_pools(str(pools_path))] == ["east", "west"]
    assert (pools_path.stat().st_mode & 0o777) == 0o640  # the new file keeps the mode
    assert sorted(os.listdir(pools_path.parent)) == ["pools.yaml"]  # no temporary file left


def test_nothing_to_change_and_dry_run_write_nothing(cli, pools_path):
    env = file_env(pools_path)
    before = pools_path.stat()
    p = cli.run("pools", "uncordon", "east", "west", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["east: already uncordoned", "west: already uncordoned",
                                     f"{pools_path}: nothing to change"]
    p = cli.run("pools", "exclude", "west", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    assert "+    exclude: true\n" in p.stdout
    assert p.stdout.rstrip().endswith("dry run, nothing written")
    after = pools_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert pools_path.read_text() == POOLS


HOSTILE = [
    (["pools", "cordon", "ea\x07st"], "pool: must not contain control characters"),
    (["pools", "cordon", b"east\xff"], "pool: is not valid Unicode text (lone surrogate"),
    (["pools", "exclude", "east\u202e"], "pool: must not contain bidirectional control"),
    (["pools", "cordon", "x" * 300], "pool: is longer than 253 characters"),
    (["pools", "cordon", "east", "nowhere"], "pool: no pool 'nowhere' in"),
    (["pools", "set-capacity", "east", "--vcpus", "-1"],
     "pool 'east': field 'vcpus': must be a positive integer"),
    (["pools", "set-capacity", "east", "--memory", "0"], "field 'memory'"),
    (["pools", "set-capacity", "east", "--storage", str(10**15 + 1)],
     "field 'storage': must be a positive integer (at most 10^15), got 1000000000000001"),
    (["pools", "set-capacity", "east", "--vcpus", "1" + "0" * 400], "field 'vcpus'"),
    (["pools", "set-capacity", "east", "--vcpus", "9" * 5000], "--vcpus: invalid int value"),
    (["pools", "set-capacity", "east", "--vcpu-overcommit", "nan"],
     "--vcpu-overcommit: 'nan' is not a finite number"),
    (["pools", "set-capacity", "east", "--vcpu-overcommit", "1e999"], "--vcpu-overcommit"),
    (["pools", "set-capacity", "east", "--vcpu-overcommit", "0.5"], "field 'vcpu-overcommit'"),
    (["pools", "set-capacity", "east"], "capacity: give at least one of --vcpus"),
    (["networks", "add", "east-9", "--pool", "east", "--cidr", "10.1.9.0/24", "--gateway",
      "10.9.9.1"], "field 'networks[3].gateway': 10.9.9.1 is not in 10.1.9.0/24"),
    (["networks", "add", "east-9", "--pool", "east", "--vlan", "5000"],
     "field 'networks[3].vlan'"),
    (["networks", "add", "east-2", "--pool", "east"], "port-group: pool 'east' lists 'east-2'"),
    (["networks", "add", "pg\x1b[2J", "--pool", "east"], "port-group: must not contain control"),
    (["networks", "add", "a|b", "--pool", "east"], "must not contain '|'"),
    (["networks", "add", "east-9", "--pool", "nowhere"], "pool: no pool 'nowhere'"),
    (["networks", "drop", "nowhere"], "port-group: 'nowhere' is not listed"),
    (["networks", "drop", "east-2", "--pool", "west"], "'east-2' is not listed in the pools"),
    (["pools", "cordon", "east", "--configmap", "Bad/Name"], "--configmap: 'Bad/Name' is not"),
    (["pools", "cordon", "east", "--configmap", "ns/name", "--key", "a/b"], "--key: 'a/b'"),
    (["pools", "cordon", "east", "-f", "/nonexistent/pools.yaml"], "no such file"),
]


@pytest.mark.parametrize(("args", "says"), HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_a_bad_change_is_refused_with_its_reason_and_nothing_is_written(cli, pools_path, args,
                                                                          says):
    before = pools_path.stat()
    p = cli.run(*args, env=file_env(pools_path))
    stderr = p.stderr
    assert p.returncode == 2, (p.stdout, stderr)
    assert says in stderr, stderr
    assert "Traceback" not in stderr
    after = pools_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert pools_path.read_text() == POOLS


def test_a_list_shared_through_an_anchor_is_changed_once_for_all_its_pools(cli, tmp_path):
    """west's networks are written once (&west-nets) and are south's too (*west-nets): a
    network is added to or dropped from that list when both pools are meant, never behind
    the other's back."""
    path = tmp_path / "pools.yaml"
    text = replaced(POOLS, "    labels: {region: east}\n", "    labels: &east {region: east}\n")
    text = replaced(text, "    vcpu-overcommit: 1.0   # no overcommit\n    networks:\n",
                    "    vcpu-overcommit: 1.0   # no overcommit\n    networks: &west-nets\n")
    text += ("  - name: south\n    vcenter: vc3.example.com\n    datacenter: dc3\n"
             "    cluster: c3\n    datastore: ds3\n    vcpus: 8\n    memory: 8\n"
             "    storage: 8\n    labels: *east\n    networks: *west-nets\n")
    path.write_text(text)
    env = file_env(path)
    p = cli.run("pools", "cordon", "south", env=env)  # after an alias: found where it ends
    assert p.returncode == 0, p.stderr
    text = replaced(text, "    storage: 8\n", "    storage: 8\n    no-schedule: true\n")
    assert path.read_text() == text
    for args in (("networks", "drop", "west-2", "--pool", "south"),
                 ("networks", "add", "west-3", "--pool", "south")):
        p = cli.run(*args, env=env)
        assert p.returncode == 2, p.stderr
        assert ("pool: the networks of pool 'south' are one list with those of pools 'west' "
                "(a YAML anchor and its aliases)") in p.stderr
        assert path.read_text() == text
    p = cli.run("networks", "add", "west-3", "--pool", "south", "--pool", "west", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[:2] == ["west: added west-3", "south: added west-3"]
    text = replaced(text, "        gateway: 10.2.2.1\n",
                    "        gateway: 10.2.2.1\n      - port-group: west-3\n")
    assert path.read_text() == text
    p = cli.run("networks", "drop", "west-1", env=env)  # every pool that lists it: both
    assert p.returncode == 0, p.stderr
    text = replaced(text, "      - port-group: west-1\n        vlan: 201\n        cidr: "
                    "10.2.1.0/24\n        gateway: 10.2.1.1\n", "")
    assert path.read_text() == text
    pools = load_pools(str(path))
    assert [n.port_group for n in pools[1].networks] == ["west-2", "west-3"]
    assert pools[2].networks == pools[1].networks


def test_a_change_that_would_read_back_otherwise_is_refused(tmp_path):
    """south takes its networks through a merge key: a list of its own would hide them. The
    result is read back and compared with what was asked before anything is written."""
    path = tmp_path / "pools.yaml"
    text = POOLS + ("  - name: south\n    vcenter: vc3.example.com\n    datacenter: dc3\n"
                    "    cluster: c3\n    datastore: ds3\n    vcpus: 8\n    memory: 8\n"
                    "    storage: 8\n    <<: {networks: [{port-group: s-1}]}\n")
    path.write_text(text)
    p = vcm("networks", "add", "s-2", "--pool", "south", env=file_env(path))
    assert p.returncode == 1, p.stderr
    assert "the change could not be made in place without changing something else" in p.stderr
    assert path.read_text() == text


def test_concurrent_changes_to_the_file_lose_nothing(pools_path):
    env = file_env(pools_path)
    commands = [("pools", "cordon", "east"), ("pools", "exclude", "west"),
                ("pools", "set-capacity", "west", "--memory", "100"),
                ("pools", "set-capacity", "east", "--storage", "900"),
                ("networks", "drop", "east-2"), ("networks", "add", "west-9", "--pool", "west")]
    procs = [subprocess.Popen([sys.executable, "-m", "workers.cli", *c], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)
    pools = {p.name: p for p in load_pools(str(pools_path))}
    assert pools["east"].no_schedule and pools["west"].exclude
    assert (pools["west"].memory, pools["east"].storage) == (100, 900)
    assert [n.port_group for n in pools["east"].networks] == ["east-1", "east-mt"]
    assert [n.port_group for n in pools["west"].networks] == ["west-1", "west-2", "west-9"]
    assert "# a multi-tenant VLAN\n" in pools_path.read_text()


def test_split_writes_the_slices_of_a_multi_tenant_network(cli, pools_path):
    env = file_env(pools_path)
    p = cli.run("networks", "split", "east-mt", "--slices", "2", env=env)
    assert p.returncode == 0, p.stderr
    assert pools_path.read_text() == replaced(POOLS, "type: multi-tenant}",
                                              "type: multi-tenant, slices: 2}")
    p = vcm("networks", "split", "east-2", "--slices", "2", env=env)  # single-tenant
    assert p.returncode == 2 and "slices" in p.stderr, p.stderr
    p = cli.run("networks", "split", "east-mt", "--slices", "100", env=env)  # 13 addresses
    assert p.returncode == 2 and "networks[2].slices" in p.stderr, p.stderr
    assert "slices: 2}" in pools_path.read_text()


def test_split_of_a_network_two_pools_share_is_written_once(tmp_path):
    path = tmp_path / "pools.yaml"
    pool = ("  - name: {name}\n    vcenter: vc1.example.com\n    datacenter: dc1\n"
            "    cluster: {name}\n    datastore: ds1\n    pod: pod-a\n    vcpus: 8\n"
            "    memory: 8\n    storage: 8\n")
    text = ("pools:\n" + pool.format(name="a") + "    networks: &pod-a\n"
            "      - {port-group: mt, vlan: 7, cidr: 10.7.0.0/27, type: multi-tenant}  # shared\n"
            + pool.format(name="b") + "    networks: *pod-a\n")
    path.write_text(text)
    p = vcm("networks", "split", "mt", "--slices", "3", env=file_env(path))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "a, b: mt split into 3 slices"
    assert path.read_text() == replaced(text, "type: multi-tenant}", "type: multi-tenant, "
                                        "slices: 3}")
    assert [n.slices for p in load_pools(str(path)) for n in p.networks] == [3, 3]


# ---------------------------------------------------------------------------------------------
# running workers follow the pools file


@pytest.fixture(scope="module")
def file_stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("pools-file-stack"), POOLS)
    yield stack
    stack.stop()


def acquire(stack: Stack, **request) -> list[dict]:
    request = {"vcpus": 8, "memory": 8, "owner": "ops-test", **request}
    return stack.app.send_task("vcm.acquire", kwargs={"request": request},
                               queue="placement").get(timeout=60)


def show_pools(stack: Stack) -> dict[str, dict]:
    pools = stack.app.send_task("vcm.show_pools", queue="queries").get(timeout=60)
    return {p["spec"]["name"]: p for p in pools}


def release_all(stack: Stack) -> None:
    stack.app.send_task("vcm.release", kwargs={"owner": "ops-test"},
                        queue="placement").get(timeout=60)


def test_running_workers_follow_the_pools_file(cli, file_stack):
    stack = file_stack
    env = {**stack.env, "VCM_POOLS_FILE": str(stack.pools)}
    try:
        p = cli.run("pools", "cordon", "east", env=env)
        assert p.returncode == 0, p.stderr
        placed = [acquire(stack)[0]["status"]["pool"] for _ in range(2)]
        assert placed == ["west", "west"]  # the spread would have taken east
        assert show_pools(stack)["east"]["spec"]["no-schedule"] is True

        p = cli.run("pools", "set-capacity", "west", "--vcpus", "96", env=env)
        assert p.returncode == 0, p.stderr
        west = show_pools(stack)["west"]
        assert west["spec"]["vcpus"] == 96 and west["status"]["vcpus-capacity"] == 96
        assert west["status"]["vcpus-used"] == 16

        p = cli.run("pools", "uncordon", "east", env=env)
        assert p.returncode == 0, p.stderr
        assert acquire(stack)[0]["status"]["pool"] == "east"

        p = cli.run("networks", "add", "east-9", "--pool", "east", "--vlan", "109", env=env)
        assert p.returncode == 0, p.stderr
        east = show_pools(stack)["east"]["spec"]
        assert [n["port-group"] for n in east["networks"]][-1] == "east-9"
        # east-1 is held by the lease above; east-mt is multi-tenant
        lease = acquire(stack, **{"required-pool": "east", "networks": 2})[0]
        assert [n["port-group"] for n in lease["status"]["networks"]] == ["east-2", "east-9"]
    finally:
        release_all(stack)
        stack.pools.write_text(POOLS)


def test_status_jobs_and_networks_list(cli, file_stack):
    stack = file_stack
    env = {**stack.env, "VCM_POOLS_FILE": str(stack.pools)}
    try:
        acquire(stack, labels={"boskos-lease-id": "job-a"}, **{"job-link": "https://ci/a"})
        acquire(stack, labels={"boskos-lease-id": "job-a"}, **{"job-link": "https://ci/a"})
        acquire(stack, labels={"boskos-lease-id": "job-b"})
        acquire(stack)
        p = cli.run("pools", "exclude", "west", env=env)
        assert p.returncode == 0, p.stderr
        p = cli.run("status", "-o", "json", "--redis-url", stack.redis.url, env=env)
        assert p.returncode == 0, p.stderr
        view = json.loads(p.stdout)
        assert (view["leases"], view["jobs"]) == (4, 3)
        assert view["networks"] == {"multi-tenant": {"total": 1, "leased": 0, "free": 1},
                                    "single-tenant": {"total": 4, "leased": 4, "free": 0}}
        rows = {r["name"]: r for r in view["pools"]}
        assert rows["west"]["state"] == ["excluded"] and rows["east"]["state"] == ["schedulable"]
        assert rows["east"]["networks"]["leased"] + rows["west"]["networks"]["leased"] == 4
        assert rows["east"]["vcpus"]["used"] + rows["west"]["vcpus"]["used"] == 32
        p = vcm("status", "--redis-url", stack.redis.url, env=env)
        assert p.returncode == 0, p.stderr
        assert "2 pools (0 cordoned, 1 excluded), 4 leases, 3 jobs" in p.stdout
        west_row = next(line.split() for line in p.stdout.splitlines()
                        if line.startswith("west "))
        assert west_row[:3] == ["west", "vc2.example.com", "excluded"]
        assert west_row[6:] == ["0", "free", "of", "2", str(rows["west"]["leases"])]

        p = vcm("jobs", "-o", "json", "--redis-url", stack.redis.url, env=env)
        assert p.returncode == 0, p.stderr
        jobs = sorted(json.loads(p.stdout), key=lambda j: j["boskos-lease-id"])  # one second
        assert [(j["boskos-lease-id"], len(j["leases"]), j["job-link"]) for j in jobs] == [
            ("", 1, ""), ("job-a", 2, "https://ci/a"), ("job-b", 1, "")]
        assert jobs[1]["vcpus"] == 16 and jobs[0]["owners"] == ["ops-test"]
        assert all(0 <= j["age-seconds"] < 600 for j in jobs)
        p = cli.run("jobs", "--redis-url", stack.redis.url, env=env)
        assert p.returncode == 0 and "job-a" in p.stdout and "https://ci/a" in p.stdout

        p = vcm("networks", "list", "--pool", "east", "-o", "json", "--redis-url",
                stack.redis.url, env=env)
        assert p.returncode == 0, p.stderr
        nets = {n["port-group"]: n for n in json.loads(p.stdout)}
        assert set(nets) == {"east-1", "east-2", "east-mt"}
        assert nets["east-mt"]["leased"] == 0 and nets["east-mt"]["type"] == "multi-tenant"
        held = sorted(h for n in nets.values() for h in n["held-by"])
        assert len(held) == 2 and set(held) <= {"job-a", "job-b", "owner ops-test"}
    finally:
        release_all(stack)
        stack.pools.write_text(POOLS)


# ---------------------------------------------------------------------------------------------
# the ConfigMap the pools file is mounted from


@pytest.fixture(scope="module")
def kube():
    with KubeApiServer(rbac=RbacPolicy.from_files(*RBAC_FILES)) as server:
        yield server


@pytest.fixture(scope="module")
def cm_stack(kube, tmp_path_factory):
    """Workers whose pools file is the ConfigMap's, projected like a kubelet volume."""
    tmp = tmp_path_factory.mktemp("pools-cm-stack")
    kube.put({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": POOLS_CM, "namespace": NAMESPACE},
              "data": {"pools.yaml": POOLS}})
    volume = ConfigMapVolume(kube, NAMESPACE, POOLS_CM, tmp / "etc-vcm")
    volume.sync()
    stack = Stack(tmp, POOLS, VCM_POOLS_FILE=str(volume.dir / "pools.yaml"))
    yield stack, volume
    stack.stop()


def pools_text(kube) -> str:
    return kube.get(NAMESPACE, POOLS_CM)["data"]["pools.yaml"]


def reset_configmap(kube, volume: ConfigMapVolume) -> None:
    cm = kube.get(NAMESPACE, POOLS_CM)
    cm["data"]["pools.yaml"] = POOLS
    kube.put(cm)
    volume.sync()


def operator_env(kube, tmp: Path, stack: Stack, user: str = "alice",
                 groups: tuple[str, ...] = (OPERATORS,)) -> dict[str, str]:
    token = kube.rbac.token_for_user(user, groups)
    config = kube.write_kubeconfig(tmp / f"kubeconfig-{user}", token=token)
    return {**stack.env, "KUBECONFIG": str(config)}


def test_a_configmap_change_reaches_the_running_workers(cli, kube, cm_stack, tmp_path):
    stack, volume = cm_stack
    env = operator_env(kube, tmp_path, stack)
    try:
        p = cli.run("pools", "cordon", "east", "--configmap", f"{NAMESPACE}/{POOLS_CM}", env=env)
        assert p.returncode == 0, p.stderr
        version = kube.get(NAMESPACE, POOLS_CM)["metadata"]["resourceVersion"]
        assert (f"configmap {NAMESPACE}/{POOLS_CM} key pools.yaml: written (resourceVersion "
                f"{version})") in p.stdout
        expected = replaced(POOLS, "    storage: 1000\n    labels",
                            "    storage: 1000\n    no-schedule: true\n    labels")
        assert pools_text(kube) == expected
        assert volume.sync()  # the kubelet's next sync: `..data` swapped to the new files
        assert (volume.dir / "pools.yaml").read_text() == expected
        assert [acquire(stack)[0]["status"]["pool"] for _ in range(2)] == ["west", "west"]
        assert show_pools(stack)["east"]["spec"]["no-schedule"] is True

        env_setting = {**env, "VCM_POOLS_CONFIGMAP": f"{NAMESPACE}/{POOLS_CM}"}
        p = cli.run("pools", "set-capacity", "west", "--vcpus", "96", env=env_setting)
        assert p.returncode == 0, p.stderr
        assert volume.sync()
        assert show_pools(stack)["west"]["spec"]["vcpus"] == 96

        writes = kube.writes
        p = cli.run("pools", "set-capacity", "west", "--vcpus", "-96", env=env_setting)
        assert p.returncode == 2 and "field 'vcpus'" in p.stderr, p.stderr
        assert kube.writes == writes  # refused before anything was written
        # the operators' Role names vcm-pools alone: another ConfigMap is forbidden to them,
        # and to an admin it does not exist
        admin = {**env, "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}
        p = cli.run("pools", "cordon", "east", "--configmap", f"{NAMESPACE}/nowhere", env=admin)
        assert p.returncode == 2 and "get: apiserver answered 404 NotFound" in p.stderr
        p = cli.run("pools", "cordon", "east", "--configmap", f"{NAMESPACE}/{POOLS_CM}", "--key",
                    "other.yaml", env=env)
        assert p.returncode == 2 and "has no key 'other.yaml' (keys: pools.yaml)" in p.stderr
    finally:
        release_all(stack)
        reset_configmap(kube, volume)


def test_two_cordons_at_once_on_the_configmap_lose_nothing(kube, cm_stack, tmp_path):
    """Both read the same resourceVersion before either writes (the first write waits until
    both reads are answered): the second write is refused 409 Conflict, read again, made."""
    stack, volume = cm_stack
    env = operator_env(kube, tmp_path, stack)
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{POOLS_CM}"
    first_write = threading.Lock()

    def reads_answered() -> int:
        return sum(1 for m, p, code in kube.request_log if m == "GET" and p == path
                   and code == 200)

    def hold_first_write(method: str, url: str, name: str | None) -> None:
        if method == "PUT" and name == POOLS_CM and first_write.acquire(blocking=False):
            wait_for(lambda: reads_answered() >= 2, timeout=30, what="both reads")

    kube.reset_counters()
    kube.add_hook(hold_first_write)
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "workers.cli", "pools", command,
                                   name, "--configmap", f"{NAMESPACE}/{POOLS_CM}"],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for command, name in (("cordon", "east"), ("exclude", "west"))]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, (out, err)
        assert kube.conflicts == 1
        assert pools_text(kube) == replaced(
            replaced(POOLS, "    storage: 1000\n    labels",
                     "    storage: 1000\n    no-schedule: true\n    labels"),
            "    vcpu-overcommit: 1.0   # no overcommit\n",
            "    vcpu-overcommit: 1.0   # no overcommit\n    exclude: true\n")
    finally:
        kube.remove_hook(hold_first_write)
        reset_configmap(kube, volume)


def test_only_the_operators_may_change_the_pools_configmap(kube, cm_stack, tmp_path):
    stack, volume = cm_stack
    before = kube.get(NAMESPACE, POOLS_CM)["metadata"]["resourceVersion"]
    outsider = operator_env(kube, tmp_path, stack, user="mallory", groups=("developers",))
    p = vcm("pools", "cordon", "east", "--configmap", f"{NAMESPACE}/{POOLS_CM}", env=outsider)
    assert p.returncode == 1
    assert (f'configmaps "{POOLS_CM}" is forbidden: User "mallory" cannot get resource '
            '"configmaps"') in p.stderr
    assert "needs get and update on configmaps/vcm-pools" in p.stderr
    placement = kube.write_kubeconfig(tmp_path / "kubeconfig-vcm", token=kube.token_for(
        NAMESPACE, "vcm"))  # the placement worker's account: the ledger mirror only
    p = vcm("pools", "cordon", "east", "--configmap", f"{NAMESPACE}/{POOLS_CM}",
            env={**stack.env, "KUBECONFIG": str(placement)})
    assert p.returncode == 1 and "forbidden" in p.stderr
    assert kube.get(NAMESPACE, POOLS_CM)["metadata"]["resourceVersion"] == before

    # the operators' Role: get and update of vcm-pools, nothing more
    token = kube.rbac.token_for_user("alice", (OPERATORS,))
    core = kubernetes.client.CoreV1Api(kube.api_client(api_key={
        "BearerToken": f"Bearer {token}"}))
    kube.put({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "vcm-ledger", "namespace": NAMESPACE}, "data": {}})
    denied = [
        lambda: core.read_namespaced_config_map("vcm-ledger", NAMESPACE),
        lambda: core.list_namespaced_config_map(NAMESPACE),
        lambda: core.patch_namespaced_config_map(POOLS_CM, NAMESPACE, {"data": {"x": "y"}}),
        lambda: core.delete_namespaced_config_map(POOLS_CM, NAMESPACE),
        lambda: core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "x"}}),
        lambda: core.read_namespaced_config_map(POOLS_CM, "default"),
    ]
    for call in denied:
        with pytest.raises(ApiException) as info:
            call()
        assert info.value.status == 403
    assert core.read_namespaced_config_map(POOLS_CM, NAMESPACE).data["pools.yaml"] == POOLS
