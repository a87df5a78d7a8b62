"""The Lease controller as CI jobs meet it: Leases created, waited on, read and deleted with
kubectl and the Kubernetes client against the test apiserver, answered by `vcm controller` (a
process) through real placement and queries workers; the ledger checked through the task API.

Timings are the tests' only through their waits (fast sync loops, TEST_CONTROLLER_ENV); the
figures are bench/bench_controller.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.cli_session import CliSession
from tests.support.controller import CrdStack, condition, unique
from tests.support.procs import ROOT, wait_for
from tests.support.tools import missing

SCRIPT = ROOT / "examples" / "crd-job-step.sh"
PREFIX = "vsphere-capacity-manager.splat-team.io/"
UID_LABEL = PREFIX + "lease-uid"


def pools_yaml(auth: Path) -> str:
    """Three vCenters; pool3 is small, and its networks name no physical datacenter."""

    def nets(prefix: str, first: int, count: int, router: str, **details: str) -> list[dict]:
        return [{"port-group": f"{prefix}-{first + i}", "vlan": first + i,
                 "cidr": f"10.{first % 250}.{i}.0/24", "gateway": f"10.{first % 250}.{i}.1",
                 "router": router, "nameservers": ["10.0.0.53"], **details}
                for i in range(count)]

    def pool(name: str, vcenter: str, n: int, vcpus: int, memory: int, networks: list[dict],
             **extra) -> dict:
        return {"name": name, "vcenter": vcenter, "datacenter": f"dc{n}", "cluster": f"c{n}",
                "datastore": f"ds{n}", "vcpus": vcpus, "memory": memory, "storage": 10000,
                "zone": f"zone-{n}", "labels": {"region": "east" if n < 3 else "west"},
                "annotations": {"ci-auth-path": str(auth)}, "networks": networks, **extra}

    return yaml.safe_dump({"pools": [
        pool("pool1", "vc1.example.com", 1, 96, 384,
             nets("ci-vlan", 1000, 6, "r1", datacenter="phys-dc1")),
        pool("pool2", "vc2.example.com", 2, 96, 384,
             nets("ci-vlan", 2000, 6, "r2", datacenter="phys-dc1")),
        pool("pool3", "vc3.example.com", 3, 16, 64, nets("ci-vlan", 3000, 3, "r3")),
    ]})


@pytest.fixture(scope="module")
def crd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crd")
    auth = tmp / "vcenter-auth.sh"
    auth.write_text("vcenter_usernames=(ci-user-0 ci-user-1)\n"
                    "vcenter_passwords=(secret-0 secret-1)\n")
    stack = CrdStack(tmp, pools_yaml(auth), VCM_CONTROLLER_RENEW_INTERVAL="2")
    yield stack
    stack.stop()


@pytest.fixture()
def clean(crd):
    """No Lease and no ledger lease left from an earlier test."""
    yield crd
    for lease in crd.objects("leases"):
        crd.delete_lease(lease["metadata"]["name"], missing_ok=True)
    wait_for(lambda: not crd.objects("leases"), timeout=60, what="the Leases to be deleted")
    assert crd.ledger_leases(UID_LABEL) == []


def run_step(crd: CrdStack, step: str, shared: Path, **env: str) -> subprocess.CompletedProcess:
    if not os.access(SCRIPT, os.X_OK):
        pytest.fail(f"{SCRIPT} is not executable")
    full = {**os.environ, "KUBECONFIG": str(crd.ci_kubeconfig), "OC": "kubectl",
            "LEASE_NAMESPACE": crd.namespace, "STATUS_WAIT": "0.2", "POLL": "0.2",
            "FULFILLED_TIMEOUT": "60", **env}
    return subprocess.run(["bash", str(SCRIPT), step, str(shared)], env=full,
                          capture_output=True, text=True, timeout=180)


def test_the_ci_step_leases_reads_and_releases_through_custom_resources(clean, tmp_path):
    crd = clean
    for tool in ("kubectl", "jq"):
        if not subprocess.run(["bash", "-c", f"command -v {tool}"]).returncode == 0:
            missing(f"{tool} is not installed")
    boskos = unique("vsphere-elastic")
    env = {"LEASED_RESOURCE": boskos, "NAMESPACE": "ci-op-abc", "JOB_NAME_SAFE": "e2e-vsphere",
           "UNIQUE_HASH": "x1", "POOLS": "pool1 pool2", "VSPHERE_EXTRA_LEASED_RESOURCE": "1",
           "VSPHERE_BASTION_LEASED_RESOURCE": "pool3"}
    shared = tmp_path / "shared"
    p = run_step(crd, "acquire", shared, **env)
    assert p.returncode == 0, p.stderr[-4000:]
    leases = crd.objects("leases", f"boskos-lease-id={boskos}")
    assert len(leases) == 4  # two primaries (one per pool), an extra NIC, a bastion
    assert {x["status"]["phase"] for x in leases} == {"Fulfilled"}
    for x in leases:
        assert (shared / f"LEASE_{x['metadata']['name']}.json").is_file()
    network_only = [x for x in leases if "vcpus" not in x["spec"]]
    assert len(network_only) == 2 and all("memory" not in x["spec"] for x in network_only)
    primaries = [x for x in leases if "vcpus" in x["spec"]]
    assert sorted(x["status"]["name"] for x in primaries) == ["pool1", "pool2"]
    assert all(x["spec"]["vcpus"] == 12 and x["spec"]["memory"] == 48 for x in primaries)
    bastion = [x for x in leases if "VSPHERE_BASTION_LEASED_RESOURCE" in x["metadata"]["labels"]]
    assert bastion[0]["status"]["name"] == "pool3"
    single = json.loads((shared / "LEASE_single.json").read_text())
    assert single["spec"].get("vcpus") == 12
    network = json.loads((shared / "NETWORK_single.json").read_text())
    owned = [r["name"] for r in single["metadata"]["ownerReferences"] if r["kind"] == "Network"]
    assert network["metadata"]["name"] == owned[0]
    assert network["spec"]["portGroupName"] == single["status"]["topology"]["networks"][0] \
        .rsplit("/", 1)[-1]
    assert len(network["spec"]["ipAddresses"]) > 3  # a later step reads the VIPs as [2], [3]
    # subnets.json: router, then VLAN, every network the install holds
    subnets = json.loads((shared / "subnets.json").read_text())
    held = {(n["spec"]["primaryRouterHostname"], n["spec"]["vlanId"])
            for n in (json.loads(f.read_text()) for f in shared.glob("NETWORK_*.json"))}
    assert {(r, v) for r, by_vlan in subnets.items() for v in by_vlan} == held
    some = next(iter(next(iter(subnets.values())).values()))
    assert some["dnsServer"] == some["gateway"] and "mask" in some
    # install-config's platform: one failure domain per pool, the credentials of ci-auth-path
    platform = yaml.safe_load((shared / "platform.yaml").read_text())
    assert platform == json.loads((shared / "platform.json").read_text())
    assert {d["name"] for d in platform["failureDomains"]} == {"pool1", "pool2", "pool3"}
    assert {v["server"] for v in platform["vcenters"]} == {"vc1.example.com", "vc2.example.com",
                                                          "vc3.example.com"}
    assert all(v["user"].startswith("ci-user-") for v in platform["vcenters"])
    fd = {d["name"]: d for d in platform["failureDomains"]}["pool1"]
    assert fd["topology"]["resourcePool"] == "/dc1/host/c1/Resources/ipi-ci-clusters"
    assert fd["topology"]["networks"][0].startswith("ci-vlan-1")
    govc = (shared / "govc.sh").read_text()
    out = subprocess.run(["bash", "-c", f"set -u; source {shared / 'vsphere_context.sh'}; "
                          "echo $GOVC_URL $vsphere_bastion_portgroup $vsphere_extra_portgroup_1 "
                          "$GOVC_RESOURCE_POOL $vsphere_resource_pool $cloud_where_run "
                          "$GOVC_INSECURE $GOVC_USERNAME"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == single["status"]["server"] and "GOVC_URL" in govc
    assert out[1].startswith("ci-vlan-3") and out[2].startswith("ci-vlan-")
    # as vcm leases -o lease-files writes them: the single lease's pool's IPI resource pool
    single_fd = {d["name"]: d for d in platform["failureDomains"]}[single["status"]["name"]]
    assert out[3:6] == [single_fd["topology"]["resourcePool"]] * 2 + ["IBM"]
    assert out[6] == "1" and out[7] == {v["server"]: v for v in platform["vcenters"]}[
        out[0]]["user"]
    # the ledger holds what the Leases show, one ledger lease per Lease (each one pool)
    ledger = crd.ledger_leases(f"boskos-lease-id={boskos}")
    assert len(ledger) == 4
    assert {x["status"]["labels"][UID_LABEL] for x in ledger} == \
        {x["metadata"]["uid"] for x in leases}
    # a retried step (the same Leases exist): nothing new is granted
    p = run_step(crd, "release", shared, **env)
    assert p.returncode == 0, p.stderr[-4000:]
    assert crd.objects("leases", f"boskos-lease-id={boskos}") == []
    assert crd.ledger_leases(f"boskos-lease-id={boskos}") == []


def test_a_lease_is_pending_then_fulfilled_with_owner_references_and_env(clean):
    crd = clean
    boskos = unique()
    created = crd.create_lease({"vcpus": 8, "memory": 32, "networks": 2},
                               labels={"boskos-lease-id": boskos},
                               annotations={"prow-job-type": "periodic",
                                            "prow-job-name": "periodic-e2e",
                                            "prow-build-id": "17"})
    name = created["metadata"]["name"]
    lease = crd.wait_phase(name, "Fulfilled")
    assert lease["metadata"]["finalizers"] == [PREFIX + "lease-finalizer"]
    status = lease["status"]
    assert condition(lease, "Fulfilled")["status"] == "True"
    assert condition(lease, "Pending")["status"] == "False"
    refs = lease["metadata"]["ownerReferences"]
    pools = [r for r in refs if r["kind"] == "Pool"]
    networks = [r for r in refs if r["kind"] == "Network"]
    assert [r["name"] for r in pools] == [status["name"]] and len(networks) == 2
    published = {(x["kind"], x["metadata"]["name"]): x["metadata"]["uid"]
                 for plural in ("pools", "networks") for x in crd.objects(plural)}
    assert all(published[(r["kind"], r["name"])] == r["uid"] for r in refs)
    assert len(status["topology"]["networks"]) == 2
    assert status["poolInfo"][0]["name"] == status["name"]
    assert status["envVarsMap"][status["name"]] == status["envVars"]
    assert f'GOVC_URL="{status["server"]}"' in status["envVars"]
    assert status["job-link"].endswith("/logs/periodic-e2e/17")
    (ledger,) = crd.ledger_leases(f"{UID_LABEL}={lease['metadata']['uid']}")
    assert ledger["status"]["owner"] == f"{crd.namespace}/{boskos}"
    assert ledger["status"]["request-id"] == lease["metadata"]["uid"]
    # the Pool's status follows the ledger
    pool = next(x for x in crd.objects("pools") if x["metadata"]["name"] == status["name"])
    wait_for(lambda: next(x for x in crd.objects("pools")
                          if x["metadata"]["name"] == status["name"])["status"]
             .get("lease-count") == 1, timeout=15, what="the Pool's lease count")
    assert pool["spec"]["server"] == status["server"]
    crd.delete_lease(name)
    crd.wait_gone(name)
    assert crd.ledger_leases(f"{UID_LABEL}={lease['metadata']['uid']}") == []


def test_unsatisfiable_and_hostile_leases_fail_naming_why_and_the_controller_serves_on(clean):
    crd = clean
    never = crd.create_lease({"vcpus": 500, "memory": 32, "networks": 1})
    failed = crd.wait_phase(never["metadata"]["name"], "Failed", "Fulfilled")
    assert failed["status"]["phase"] == "Failed"
    why = condition(failed, "Fulfilled")
    assert why["reason"] == "Unschedulable" and why["message"].startswith("spec.vcpus:")
    for pool in ("pool1", "pool2", "pool3"):  # pool by pool
        assert f"{pool}: insufficient vcpus (need 500" in why["message"]
    assert "ownerReferences" not in failed["metadata"]
    absurd = crd.create_lease({"vcpus": 10**12, "memory": 1, "networks": 1})
    failed = crd.wait_phase(absurd["metadata"]["name"], "Failed", "Fulfilled")
    assert condition(failed, "Fulfilled")["message"].startswith("spec.vcpus:")
    unknown = crd.create_lease({"vcpus": 1, "memory": 1, "networks": 1,
                                "required-pool": "no-such-pool"})
    failed = crd.wait_phase(unknown["metadata"]["name"], "Failed", "Fulfilled")
    assert "no-such-pool" in condition(failed, "Fulfilled")["message"]
    # wrong types never reach the controller: the schema refuses them, naming the field
    p = crd.kubectl("create", "-f", "-", check=False, input=json.dumps({
        "apiVersion": "vspherecapacitymanager.splat.io/v1", "kind": "Lease",
        "metadata": {"generateName": "bad-"}, "spec": {"vcpus": "lots", "networks": 1}}))
    assert p.returncode != 0 and "spec.vcpus" in p.stderr
    # a huge label value: refused by the apiserver, or the Lease fails naming its labels
    try:
        big = crd.create_lease({"vcpus": 1, "memory": 1, "networks": 1},
                               labels={"job-name": "j" * 5000})
    except Exception as exc:  # noqa: BLE001 - the client's ApiException
        assert "labels" in str(exc)
    else:
        failed = crd.wait_phase(big["metadata"]["name"], "Failed", "Fulfilled")
        assert condition(failed, "Fulfilled")["message"].startswith("metadata.labels")
    ok = crd.create_lease({"vcpus": 1, "memory": 1, "networks": 1})
    crd.wait_phase(ok["metadata"]["name"], "Fulfilled")
    assert crd.alive()
    assert "Traceback" not in crd.controller.output()


def test_a_waiting_lease_shows_its_place_and_is_granted_when_the_blocker_goes(clean):
    crd = clean
    big = {"vcpus": 16, "memory": 64, "networks": 1, "required-pool": "pool3"}
    first = crd.create_lease(big)["metadata"]["name"]
    crd.wait_phase(first, "Fulfilled")
    second = crd.create_lease(big)["metadata"]["name"]
    wait_for(lambda: condition(crd.lease(second) or {}, "Delayed").get("status") == "True",
             timeout=30, what="the second Lease to show Delayed")
    waiting = crd.lease(second)
    assert waiting["status"]["phase"] == "Pending"
    assert "position 1" in condition(waiting, "Delayed")["message"]
    assert "pool3" in condition(waiting, "Delayed")["message"]
    crd.delete_lease(first)
    granted = crd.wait_phase(second, "Fulfilled")
    assert condition(granted, "Delayed")["status"] == "False"
    assert granted["status"]["name"] == "pool3"


def test_a_multi_pool_lease_and_a_burst_are_each_granted_once(clean):
    crd = clean
    multi = crd.create_lease({"vcpus": 4, "memory": 8, "networks": 1, "pools": 2,
                              "poolSelector": {"region": "east"}})["metadata"]["name"]
    lease = crd.wait_phase(multi, "Fulfilled")
    status = lease["status"]
    assert sorted(x["name"] for x in status["poolInfo"]) == ["pool1", "pool2"]
    assert set(status["envVarsMap"]) == {"pool1", "pool2"}
    refs = lease["metadata"]["ownerReferences"]
    assert sorted(r["name"] for r in refs if r["kind"] == "Pool") == ["pool1", "pool2"]
    assert len([r for r in refs if r["kind"] == "Network"]) == 2
    assert len(crd.ledger_leases(f"{UID_LABEL}={lease['metadata']['uid']}")) == 2
    names = []
    threads = [threading.Thread(target=lambda: names.append(crd.create_lease(
        {"vcpus": 1, "memory": 1, "networks": 1})["metadata"]["name"]))
        for _ in range(12)]  # of the 13 networks left
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    uids = {crd.wait_phase(n, "Fulfilled", timeout=60)["metadata"]["uid"] for n in names}
    held = [x["status"]["labels"][UID_LABEL] for x in crd.ledger_leases(UID_LABEL)]
    assert sorted(u for u in held if u in uids) == sorted(uids)  # each once


def test_the_controller_renews_the_ledger_leases_while_the_lease_exists(clean):
    crd = clean
    name = crd.create_lease({"vcpus": 1, "memory": 1, "networks": 1})["metadata"]["name"]
    uid = crd.wait_phase(name, "Fulfilled")["metadata"]["uid"]
    (first,) = crd.ledger_leases(f"{UID_LABEL}={uid}")
    wait_for(lambda: crd.ledger_leases(f"{UID_LABEL}={uid}")[0]["status"]["expires-at"]
             > first["status"]["expires-at"], timeout=20, what="a renewal")
    assert crd.lease(name)["status"]["phase"] == "Fulfilled"


def test_a_lease_released_elsewhere_shows_it(clean):
    crd = clean
    name = crd.create_lease({"vcpus": 2, "memory": 4, "networks": 1})["metadata"]["name"]
    lease = crd.wait_phase(name, "Fulfilled")
    uid = lease["metadata"]["uid"]
    (held,) = crd.ledger_leases(f"{UID_LABEL}={uid}")
    assert crd.release(lease_ids=[held["metadata"]["name"]]) == [held["metadata"]["name"]]
    gone = crd.wait_phase(name, "Failed", timeout=30)
    assert condition(gone, "Fulfilled")["reason"] == "Released"
    assert held["metadata"]["name"] in condition(gone, "Fulfilled")["message"]
    assert not [r for r in gone["metadata"].get("ownerReferences") or []
                if r["kind"] in ("Pool", "Network")]
    assert "poolInfo" not in gone["status"] and "envVars" not in gone["status"]


def test_a_killed_controller_neither_loses_nor_doubles_a_grant(clean):
    crd = clean
    big = {"vcpus": 16, "memory": 64, "networks": 1, "required-pool": "pool3"}
    blocker = crd.create_lease(big)["metadata"]["name"]
    crd.wait_phase(blocker, "Fulfilled")
    waiter = crd.create_lease(big)["metadata"]["name"]
    wait_for(lambda: condition(crd.lease(waiter) or {}, "Delayed").get("status") == "True",
             timeout=30, what="the waiter to be in line")
    crd.kill_controller()
    # while it is down: a Lease is created, and the blocker is deleted (held by the finalizer)
    late = crd.create_lease({"vcpus": 1, "memory": 1, "networks": 1})["metadata"]["name"]
    crd.delete_lease(blocker)
    assert crd.lease(blocker)["metadata"]["deletionTimestamp"]
    crd.start_controller()
    crd.wait_gone(blocker)
    for name in (waiter, late):
        lease = crd.wait_phase(name, "Fulfilled")
        ledger = crd.ledger_leases(f"{UID_LABEL}={lease['metadata']['uid']}")
        assert len(ledger) == 1, ledger  # one grant, however often its request was sent
    # killed right after a create: the restart answers it, once
    quick = crd.create_lease({"vcpus": 1, "memory": 1, "networks": 1})["metadata"]["name"]
    crd.kill_controller()
    crd.start_controller()
    lease = crd.wait_phase(quick, "Fulfilled")
    assert len(crd.ledger_leases(f"{UID_LABEL}={lease['metadata']['uid']}")) == 1


def test_a_watch_cut_with_410_gone_loses_and_doubles_nothing(clean):
    crd = clean
    names: list[str] = []
    stop = threading.Event()

    def cut() -> None:  # the apiserver forgets its history and drops every watch, repeatedly
        while not stop.is_set():
            crd.kube.compact()
            crd.kube.close_watches()
            time.sleep(0.3)

    cutter = threading.Thread(target=cut, daemon=True)
    cutter.start()
    try:
        for _ in range(6):
            names.append(crd.create_lease({"vcpus": 1, "memory": 1, "networks": 1})
                         ["metadata"]["name"])
            time.sleep(0.2)
        leases = [crd.wait_phase(n, "Fulfilled", timeout=60) for n in names]
    finally:
        stop.set()
        cutter.join(10)
    uids = {x["metadata"]["uid"] for x in leases}
    held = crd.ledger_leases(UID_LABEL)
    assert sorted(x["status"]["labels"][UID_LABEL] for x in held) == sorted(uids)
    for n in names:
        crd.delete_lease(n)
    for n in names:
        crd.wait_gone(n)
    assert crd.ledger_leases(UID_LABEL) == []


def test_pools_and_networks_follow_the_configuration(clean, tmp_path):
    crd = clean
    pools = {x["metadata"]["name"]: x for x in crd.objects("pools")}
    assert set(pools) == {"pool1", "pool2", "pool3"}
    assert pools["pool3"]["spec"]["vcpus"] == 16
    assert pools["pool1"]["metadata"]["annotations"]["ci-auth-path"]
    wait_for(lambda: {x["metadata"]["name"]: x for x in crd.objects("pools")}["pool3"]
             ["status"].get("vcpus-available") == 16, timeout=15,
             what="pool3's status: nothing held")
    networks = crd.objects("networks")
    assert len(networks) == 15
    assert {x["metadata"]["labels"][PREFIX + "network-type"] for x in networks} == \
        {"single-tenant"}
    # a hand edit is undone
    crd.api.patch_namespaced_custom_object(
        "vspherecapacitymanager.splat.io", "v1", crd.namespace, "pools", "pool3",
        {"spec": {"vcpus": 9999}})
    wait_for(lambda: {x["metadata"]["name"]: x for x in crd.objects("pools")}["pool3"]
             ["spec"]["vcpus"] == 16, timeout=15, what="the hand edit undone")
    # the configuration changes (set-capacity, as an operator does it): the Pool follows
    p = subprocess.run([sys.executable, "-m", "workers.cli", "pools", "set-capacity", "pool3",
                        "--vcpus", "24"], env=crd.stack.env, cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    wait_for(lambda: {x["metadata"]["name"]: x for x in crd.objects("pools")}["pool3"]
             ["spec"]["vcpus"] == 24, timeout=30, what="the Pool to follow the pools file")


@pytest.fixture(scope="module")
def cli() -> Iterator[CliSession]:
    """One process that runs the refused `vcm controller` command lines one after another
    (each with its own environment; tests/support/cli_session.py)."""
    with CliSession(dict(os.environ)) as session:
        yield session


@pytest.mark.parametrize(("env", "says"), [
    ({"VCM_CONTROLLER_NAMESPACES": "Not_A_Namespace"}, "VCM_CONTROLLER_NAMESPACES"),
    ({"VCM_CONTROLLER_NAMESPACES": " , "}, "VCM_CONTROLLER_NAMESPACES"),
    ({"VCM_CONTROLLER_SYNC_INTERVAL": "0.001"}, "VCM_CONTROLLER_SYNC_INTERVAL"),
    ({"VCM_CONTROLLER_RENEW_INTERVAL": "soon"}, "VCM_CONTROLLER_RENEW_INTERVAL"),
    ({"VCM_CONTROLLER_PUBLISH_WAIT": "-1"}, "VCM_CONTROLLER_PUBLISH_WAIT"),
    ({"VCM_CONTROLLER_LEDGER_WAIT": "2h"}, "VCM_CONTROLLER_LEDGER_WAIT"),
    ({"VCM_CONTROLLER_RETRY_PAUSES": "1,0"}, "VCM_CONTROLLER_RETRY_PAUSES"),
    ({"KUBECONFIG": "/nonexistent/kubeconfig"}, "needs the Kubernetes API"),
])
def test_vcm_controller_refuses_bad_settings_naming_them(env, says, tmp_path, cli):
    """The first case runs as a process of its own (`python -m workers.cli`, what `vcm` runs),
    the others in the CLI session."""
    full = {**os.environ, "KUBECONFIG": str(tmp_path / "none"), "KUBERNETES_SERVICE_HOST": "",
            **env}
    if env == {"VCM_CONTROLLER_NAMESPACES": "Not_A_Namespace"}:
        p = subprocess.run([sys.executable, "-m", "workers.cli", "controller"], env=full,
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    else:
        p = cli.run("controller", env=full)
    # a bad setting is bad input (2); no Kubernetes API to talk to, another failure (1)
    assert p.returncode == (1 if "KUBECONFIG" in env else 2), p.stderr
    assert says in p.stderr and "Traceback" not in p.stderr


def test_vcm_run_starts_the_controller_only_for_a_usable_kubeconfig(tmp_path, monkeypatch):
    from workers.stack import kube_config_set

    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert kube_config_set() is False  # ~/.kube/config alone is not a wish to serve Leases
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert kube_config_set() is False
    good = tmp_path / "kubeconfig"
    good.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "c", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "c"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(good))
    assert kube_config_set() is True
