"""The Lease controller when the apiserver has a bad moment or a client edits what the
controller wrote: status writes answered 503 are written again (a waiting Lease still shows
its place, a grant lands without a traceback), a Lease whose boskos-lease-id label was
changed is renewed and released as the ledger holds it, and a Lease the inventory can never
meet names its own spec field.

The comparison of the ledger with the Leases runs only every 5 s here (and releases only
ledger leases older than 10 s), so that it does not release for the deletion handler what the
handler left held."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest
import redis
import yaml

from tasks.results import key_prefix
from tests.support.controller import GROUP, VERSION, CrdStack, condition, unique
from tests.support.procs import wait_for

PREFIX = "vsphere-capacity-manager.splat-team.io/"
UID_LABEL = PREFIX + "lease-uid"
HOOKS: list[Callable[[str, str, str | None], None]] = []  # this test's apiserver hooks


def pools_yaml() -> str:
    """A roomy pool, a small one that one Lease fills, and one only a Lease naming it gets."""

    def pool(name: str, n: int, vcpus: int, memory: int) -> dict:
        return {"name": name, "vcenter": f"vc{n}.example.com", "datacenter": f"dc{n}",
                "cluster": f"c{n}", "datastore": f"ds{n}", "vcpus": vcpus, "memory": memory,
                "storage": 10000, "labels": {"region": "east"},
                "networks": [{"port-group": f"ci-vlan-{n}{i:03d}", "vlan": n * 1000 + i,
                              "cidr": f"10.{n}.{i}.0/24", "gateway": f"10.{n}.{i}.1"}
                             for i in range(4)]}

    # a zone longer than the CRDs' 80 characters: its Pool and a Lease's status cannot hold it
    odd = {**pool("odd", 3, 16, 64), "zone": "z" * 100, "exclude": True}
    return yaml.safe_dump({"pools": [pool("big", 1, 96, 384), pool("small", 2, 16, 64), odd]})


@pytest.fixture(scope="module")
def crd(tmp_path_factory):
    stack = CrdStack(tmp_path_factory.mktemp("crd-faults"), pools_yaml(),
                     VCM_CONTROLLER_RENEW_INTERVAL="1", VCM_CONTROLLER_SYNC_INTERVAL="5")
    yield stack
    stack.stop()


@pytest.fixture()
def clean(crd):
    yield crd
    for hook in HOOKS:
        crd.kube.remove_hook(hook)
    HOOKS.clear()
    crd.kube.clear_faults()
    for lease in crd.objects("leases"):
        crd.delete_lease(lease["metadata"]["name"], missing_ok=True)
    wait_for(lambda: not crd.objects("leases"), timeout=60, what="the Leases to be deleted")


def create_named(crd: CrdStack, name: str, spec: dict, labels: dict | None = None) -> dict:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Lease",
            "metadata": {"name": name, "labels": labels or {}}, "spec": spec}
    return crd.api.create_namespaced_custom_object(GROUP, VERSION, crd.namespace, "leases",
                                                   body)


def after_patch(crd: CrdStack, name: str, which: Callable[[str], bool], nth: int,
                count: int) -> list[str]:
    """From the `nth` PATCH of Lease `name` whose path `which` picks on, the apiserver answers
    its next `count` PATCHes 503 (the one that triggers it goes through)."""
    seen: list[str] = []

    def hook(method: str, path: str, obj: str | None) -> None:
        if obj == name and method == "PATCH" and which(path):
            seen.append(path)
            if len(seen) == nth:
                crd.kube.inject_fault(503, resource="leases", methods=["PATCH"], name=name,
                                      count=count)

    crd.kube.add_hook(hook)
    HOOKS.append(hook)
    return seen


def status(path: str) -> bool:
    return path.endswith("/status")


def not_status(path: str) -> bool:
    return not path.endswith("/status")


def test_a_waiting_lease_shows_its_place_although_its_status_writes_failed_once(clean):
    crd = clean
    small = {"vcpus": 16, "memory": 64, "networks": 1, "required-pool": "small"}
    blocker = crd.create_lease(small)["metadata"]["name"]
    crd.wait_phase(blocker, "Fulfilled")
    waiter = unique("waiter")
    after_patch(crd, waiter, not_status, 1, 2)  # after kopf's finalizer: Pending, Delayed
    create_named(crd, waiter, small)
    wait_for(lambda: condition(crd.lease(waiter) or {}, "Delayed").get("status") == "True",
             timeout=30, what="the waiting Lease to show its place")
    lease = crd.lease(waiter)
    assert lease["status"]["phase"] == "Pending"
    assert "position 1" in condition(lease, "Delayed")["message"]
    assert crd.kube.faults_served >= 2


def test_a_grant_is_written_through_apiserver_faults_without_a_traceback(clean):
    crd = clean
    before = len(crd.controller.output())
    name = unique("granted")
    after_patch(crd, name, status, 1, 3)  # after Pending: ownerReferences, Fulfilled, ...
    create_named(crd, name, {"vcpus": 2, "memory": 4, "networks": 1})
    lease = crd.wait_phase(name, "Fulfilled")
    assert {r["kind"] for r in lease["metadata"]["ownerReferences"]} == {"Pool", "Network"}
    assert len(crd.ledger_leases(f"{UID_LABEL}={lease['metadata']['uid']}")) == 1
    log = crd.controller.output()[before:]
    assert "ServiceUnavailable" in log  # the faults were met, and said in a line each
    # tried again after the pauses VCM_CONTROLLER_RETRY_PAUSES says (tests/support/controller.py)
    for pause in crd.env["VCM_CONTROLLER_RETRY_PAUSES"].split(",")[:3]:
        assert f"trying again in {pause}s" in log, log[-3000:]
    assert "Traceback" not in log and "failed with an exception" not in log, log[-3000:]


def test_a_lease_released_elsewhere_through_apiserver_faults_stays_released(clean):
    crd = clean
    name = crd.create_lease({"vcpus": 2, "memory": 4, "networks": 1})["metadata"]["name"]
    uid = crd.wait_phase(name, "Fulfilled")["metadata"]["uid"]
    (held,) = crd.ledger_leases(f"{UID_LABEL}={uid}")
    before = len(crd.controller.output())
    crd.kube.inject_fault(503, resource="leases", methods=["PATCH"], name=name, count=3)
    crd.release(lease_ids=[held["metadata"]["name"]])
    phases: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            phases.append(((crd.lease(name) or {}).get("status") or {}).get("phase"))
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        gone = crd.wait_phase(name, "Failed", timeout=30)
        stop.wait(3)  # a daemon started again would grant the old answer once more
    finally:
        stop.set()
        watcher.join(5)
    assert condition(gone, "Fulfilled")["reason"] == "Released"
    assert phases[phases.index("Failed"):] == ["Failed"] * (len(phases) - phases.index("Failed"))
    assert crd.lease(name)["status"]["phase"] == "Failed"
    assert "Traceback" not in crd.controller.output()[before:]


def test_a_relabelled_lease_is_renewed_and_released_as_the_ledger_holds_it(clean):
    crd = clean
    spec = {"vcpus": 1, "memory": 1, "networks": 1}
    boskos = unique()
    name = crd.create_lease(spec, labels={"boskos-lease-id": boskos})["metadata"]["name"]
    # a second one, deleted while the controller is down, and old enough that its acquire's
    # answer has expired from the result backend
    other = crd.create_lease(spec, labels={"boskos-lease-id": boskos})["metadata"]["name"]
    uid = crd.wait_phase(name, "Fulfilled")["metadata"]["uid"]
    other_uid = crd.wait_phase(other, "Fulfilled")["metadata"]["uid"]
    for lease in (name, other):
        crd.kubectl("label", f"leases.{GROUP}", lease, "boskos-lease-id=someone-else",
                    "--overwrite")
    crd.kill_controller()  # a restart reads the Leases again, with their new label
    crd.delete_lease(other)
    assert redis.Redis.from_url(crd.stack.redis.url).delete(key_prefix() + other_uid) == 1
    crd.start_controller()
    crd.wait_gone(other)
    assert crd.ledger_leases(f"{UID_LABEL}={other_uid}") == []
    (first,) = crd.ledger_leases(f"{UID_LABEL}={uid}")
    assert first["status"]["owner"] == f"{crd.namespace}/{boskos}"
    wait_for(lambda: crd.ledger_leases(f"{UID_LABEL}={uid}")[0]["status"]["expires-at"]
             > first["status"]["expires-at"], timeout=20, what="a renewal")
    assert "is held by" not in crd.controller.output_of_this_run()
    crd.delete_lease(name)
    crd.wait_gone(name)
    assert crd.ledger_leases(f"{UID_LABEL}={uid}") == []  # released before the finalizer went


def test_a_grant_its_status_cannot_hold_fails_naming_the_field_and_is_released(clean):
    crd = clean
    before = len(crd.controller.output())
    name = crd.create_lease({"vcpus": 1, "memory": 1, "networks": 1,
                             "required-pool": "odd"})["metadata"]["name"]
    failed = crd.wait_phase(name, "Failed", "Fulfilled", timeout=30)
    why = condition(failed, "Fulfilled")
    assert failed["status"]["phase"] == "Failed"
    assert why["reason"] == "InvalidStatus" and "status.zone" in why["message"], why
    assert crd.ledger_leases(f"{UID_LABEL}={failed['metadata']['uid']}") == []
    assert "Traceback" not in crd.controller.output()[before:]


@pytest.mark.parametrize(("spec", "field"), [
    ({"vcpus": 500, "memory": 1, "networks": 1}, "spec.vcpus"),
    ({"vcpus": 1, "memory": 1, "networks": 1, "poolSelector": {"region": "mars"}},
     "spec.poolSelector"),
    ({"vcpus": 1, "memory": 1, "networks": 1, "required-pool": "nowhere"},
     "spec.required-pool"),
    ({"vcpus": 1, "memory": 1, "networks": 1, "pools": 4}, "spec.pools"),
    ({"vcpus": 1, "memory": 1, "networks": 9}, "spec.networks"),
    ({"vcpus": 1, "memory": 1, "networks": 1, "network-type": "public-ipv6"},
     "spec.network-type"),
])
def test_a_lease_the_inventory_can_never_meet_names_its_own_field(clean, spec, field):
    crd = clean
    name = crd.create_lease(spec)["metadata"]["name"]
    failed = crd.wait_phase(name, "Failed", "Fulfilled")
    why = condition(failed, "Fulfilled")
    assert failed["status"]["phase"] == "Failed", json.dumps(failed["status"])
    assert why["reason"] == "Unschedulable"
    assert why["message"].startswith(f"{field}:"), why["message"]



def test_pools_and_networks_deleted_by_hand_are_published_again_and_named_again(clean):
    crd = clean
    spec = {"vcpus": 1, "memory": 1, "networks": 1, "required-pool": "small"}
    with_network = crd.create_lease(spec)["metadata"]["name"]
    pool_only = crd.create_lease({**spec, "networks": 0})["metadata"]["name"]
    lease = crd.wait_phase(with_network, "Fulfilled")
    pool_only_uid = crd.wait_phase(pool_only, "Fulfilled")["metadata"]["uid"]
    (network,) = [r["name"] for r in lease["metadata"]["ownerReferences"]
                  if r["kind"] == "Network"]

    def refs(kind: str) -> dict[str, str]:
        return {r["name"]: r["uid"] for r in crd.lease(with_network)["metadata"]
                .get("ownerReferences") or [] if r["kind"] == kind}

    def published(plural: str, name: str) -> str | None:
        return next((x["metadata"]["uid"] for x in crd.objects(plural)
                     if x["metadata"]["name"] == name), None)

    for kind, plural, name in (("Pool", "pools", "small"), ("Network", "networks", network)):
        old = published(plural, name)
        assert refs(kind) == {name: old}
        crd.kubectl("delete", f"{plural}.{GROUP}", name)
        wait_for(lambda p=plural, n=name, o=old: published(p, n) not in (None, o), timeout=30,
                 what=f"{kind} {name} published again")
        wait_for(lambda k=kind, p=plural, n=name: refs(k) == {n: published(p, n)}, timeout=30,
                 what=f"the Lease to name the new {kind}")
    # the Lease whose only owner was its Pool went with it (the garbage collector deletes a
    # dependent whose owners are all gone): it was released as any deleted Lease is
    crd.wait_gone(pool_only)
    assert crd.ledger_leases(f"{UID_LABEL}={pool_only_uid}") == []
    assert crd.lease(with_network)["status"]["phase"] == "Fulfilled"


def test_a_served_lease_edited_into_one_refused_fails_and_holds_nothing(clean):
    crd = clean
    name = crd.create_lease({"vcpus": 1, "memory": 1, "networks": 1})["metadata"]["name"]
    uid = crd.wait_phase(name, "Fulfilled")["metadata"]["uid"]
    # an administrator's edit (a CI job may not patch Leases); a restart reads it
    crd.api.patch_namespaced_custom_object(GROUP, VERSION, crd.namespace, "leases", name,
                                           {"spec": {"boskos-lease-id": "bad\u0007id"}})
    crd.kill_controller()
    crd.start_controller()
    failed = crd.wait_phase(name, "Failed", timeout=30)
    why = condition(failed, "Fulfilled")
    assert why["reason"] == "InvalidSpec" and why["message"].startswith("spec.boskos-lease-id")
    assert crd.ledger_leases(f"{UID_LABEL}={uid}") == []
    assert not [r for r in failed["metadata"].get("ownerReferences") or []
                if r["kind"] in ("Pool", "Network")]
