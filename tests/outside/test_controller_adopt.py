"""The cut-over: a cluster that switches to our controller already holds upstream's Pools,
Networks and Fulfilled Leases, written as upstream's Go controller writes them
(pkg/controller/leases.go: ownerReferences to the Pool and to each Network it gives, the
failure domain of the first pool inline, poolInfo, envVars, phase Fulfilled and conditions
Fulfilled True, Pending False, Partial False; its finalizer, the same name as ours). Our
controller, started over them (a process, with real workers and the test apiserver), must
never place such a Lease again nor rewrite its status: it records what the Lease holds in the
ledger (`vcm.adopt`) or, when it cannot, says so on the Lease and leaves it as it is."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import yaml

from tasks.results import key_prefix
from tests.support.controller import GROUP, VERSION, CrdStack, age, condition, unique
from tests.support.helpers import check_invariants
from tests.support.procs import wait_for
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import load_pools
from workers.core.text import text_problem
from workers.settings import Settings

PREFIX = "vsphere-capacity-manager.splat-team.io/"
UID_LABEL = PREFIX + "lease-uid"
ADOPTED_LABEL = PREFIX + "adopted"
FINALIZER = PREFIX + "lease-finalizer"
API_VERSION = f"{GROUP}/{VERSION}"
# upstream's names (doc/doc.md): a Pool per vCenter, datacenter and cluster; a Network per
# port group and pod
POOL = "vcenter-1.ci.example.com-cidatacenter-cicluster"
VCENTER = "vcenter-1.ci.example.com"
POD = "dal10.pod03"
VLANS = (1001, 1002, 1003)


def network_name(vlan: int) -> str:
    return f"ci-vlan-{vlan}-dal10-{POD}"


def pools_yaml() -> str:
    """The pools configuration the cluster switches to: upstream's pool, by its name, with
    its three port groups; and a second pool elsewhere."""
    nets = [{"port-group": f"ci-vlan-{v}", "vlan": v, "cidr": f"10.93.{v % 250}.0/25",
             "gateway": f"10.93.{v % 250}.1", "router": "bcr03a.dal10", "datacenter": "dal10",
             "nameservers": ["10.0.80.11"]} for v in VLANS]
    return yaml.safe_dump({"pools": [
        {"name": POOL, "vcenter": VCENTER, "datacenter": "cidatacenter",
         "cluster": "/cidatacenter/host/cicluster",
         "datastore": "/cidatacenter/datastore/vsanDatastore", "pod": POD, "vcpus": 224,
         "memory": 2944, "storage": 10000, "zone": "dal10-a", "labels": {"region": "us-south"},
         "networks": nets},
        {"name": "other-pool", "vcenter": "vcenter-2.ci.example.com", "datacenter": "dc2",
         "cluster": "c2", "datastore": "ds2", "pod": "dal12.pod01", "vcpus": 64, "memory": 256,
         "storage": 1000, "networks": [{"port-group": "ci-vlan-2001", "vlan": 2001,
                                        "cidr": "10.94.1.0/25", "gateway": "10.94.1.1"}]},
    ]})


@pytest.fixture(scope="module")
def crd(tmp_path_factory):
    stack = CrdStack(tmp_path_factory.mktemp("adopt"), pools_yaml(),
                     VCM_CONTROLLER_RENEW_INTERVAL="2")
    yield stack
    stack.stop()


@pytest.fixture(autouse=True)
def invariants(crd):
    """After each test, the ledger's invariants (tests/support/helpers.check_invariants)."""
    yield
    check_invariants(Ledger(crd.stack.redis.client()),
                     {p.name: p for p in load_pools(str(crd.stack.pools))})


# -- upstream's objects, as its controller and its operator CLI write them --------------------
def upstream_network(crd: CrdStack, vlan: int, pod: str = POD,
                     port_group: str | None = None) -> dict[str, Any]:
    """A Network as upstream's inventory has it (doc/doc.md), made if it is not there."""
    name = network_name(vlan) if port_group is None else unique("net")
    found = [x for x in crd.objects("networks") if x["metadata"]["name"] == name]
    if found:
        return found[0]
    third = vlan % 250
    body = {"apiVersion": API_VERSION, "kind": "Network",
            "metadata": {"name": name,
                         "labels": {PREFIX + "network-type": "single-tenant"}},
            "spec": {"portGroupName": port_group or f"ci-vlan-{vlan}", "vlanId": str(vlan),
                     "podName": pod, "datacenterName": "dal10", "cidr": 25,
                     "gateway": f"10.93.{third}.1", "netmask": "255.255.255.128",
                     "machineNetworkCidr": f"10.93.{third}.0/25",
                     "ipAddresses": [f"10.93.{third}.{i}" for i in range(8)],
                     "primaryRouterHostname": "bcr03a.dal10", "nameservers": ["10.0.80.11"],
                     "subnetType": "SECONDARY_ON_VLAN", "ipAddressCount": 128}}
    return crd.api.create_namespaced_custom_object(GROUP, VERSION, crd.namespace, "networks",
                                                   body)


def upstream_pool(crd: CrdStack, name: str) -> dict[str, Any]:
    """The Pool object of that name (ours publishes upstream's pool under its own name; a
    pool our configuration lacks is made as upstream's inventory had it)."""
    found = [x for x in crd.objects("pools") if x["metadata"]["name"] == name]
    if found:
        return found[0]
    body = {"apiVersion": API_VERSION, "kind": "Pool", "metadata": {"name": name},
            "spec": {"name": name, "server": "vcenter-9.ci.example.com", "region": "r",
                     "zone": "z", "topology": {"datacenter": "dc9",
                                               "computeCluster": "/dc9/host/c9",
                                               "datastore": "/dc9/datastore/ds9",
                                               "networks": ["/dc9/network/ci-vlan-1003"]},
                     "ibmPoolSpec": {"pod": POD, "datacenter": "dal10"},
                     "vcpus": 64, "memory": 256, "storage": 1000, "exclude": False}}
    return crd.api.create_namespaced_custom_object(GROUP, VERSION, crd.namespace, "pools",
                                                   body)


def fulfilled_status(pool: str, port_groups: list[str]) -> dict[str, Any]:
    """A Lease's status as upstream's controller writes it on fulfilment (leases.go: the first
    pool's FailureDomainSpec inline, poolInfo with each pool's networks, envVars from
    utils.GenerateEnvVars' template, phase Fulfilled, its three conditions)."""
    paths = [f"/cidatacenter/network/{pg}" for pg in port_groups]
    domain = {"name": pool, "server": VCENTER, "region": "us-south", "zone": "dal10-a",
              "topology": {"datacenter": "cidatacenter",
                           "computeCluster": "/cidatacenter/host/cicluster",
                           "datastore": "/cidatacenter/datastore/vsanDatastore",
                           "networks": paths}}
    env = (f"export vsphere_url=\"{VCENTER}\"\nexport GOVC_URL=\"{VCENTER}\"\n"
           f"export vsphere_portgroup=\"{port_groups[0] if port_groups else ''}\"\n"
           "export vlanid=\"1001\"\nexport phydc=\"dal10\"\n")
    at = "2026-08-01T10:00:00Z"
    return {**copy.deepcopy(domain), "poolInfo": [copy.deepcopy(domain)], "envVars": env,
            "envVarsMap": {pool: env}, "phase": "Fulfilled",
            "conditions": [
                {"type": "Fulfilled", "status": "True", "lastTransitionTime": at},
                {"type": "Pending", "status": "False", "lastTransitionTime": at},
                {"type": "Partial", "status": "False", "lastTransitionTime": at}]}


def foreign_lease(crd: CrdStack, pool: dict[str, Any], networks: list[dict[str, Any]],
                  status: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
                  boskos: str | None = None) -> dict[str, Any]:
    """A Lease upstream's controller fulfilled: its finalizer, ownerReferences to its Pool and
    Networks, then its status (written through the status subresource, as upstream's is)."""
    refs = [{"apiVersion": API_VERSION, "kind": x["kind"], "name": x["metadata"]["name"],
             "uid": x["metadata"]["uid"]} for x in [pool, *networks]]
    boskos = boskos or unique("vsphere-elastic")
    body = {"apiVersion": API_VERSION, "kind": "Lease",
            "metadata": {"generateName": f"{boskos}-", "finalizers": [FINALIZER],
                         "ownerReferences": refs,
                         "labels": {"boskos-lease-id": boskos, "job-name": "e2e-vsphere",
                                    PREFIX + "lease-namespace": "ci-op-abc"}},
            "spec": spec or {"vcpus": 24, "memory": 96, "storage": 200, "networks": 1,
                             "pools": 1, "network-type": "", "boskos-lease-id": boskos}}
    made = crd.api.create_namespaced_custom_object(GROUP, VERSION, crd.namespace, "leases",
                                                   body)
    if status is None:
        status = fulfilled_status(pool["metadata"]["name"],
                                  [n["spec"]["portGroupName"] for n in networks])
    return crd.api.patch_namespaced_custom_object_status(
        GROUP, VERSION, crd.namespace, "leases", made["metadata"]["name"], {"status": status})


def adopted_state(crd: CrdStack, name: str, timeout: float = 60.0) -> dict[str, Any]:
    """The Lease once our controller wrote its condition Adopted."""
    return wait_for(lambda: (x := crd.lease(name)) and condition(x, "Adopted") and x,
                    timeout=timeout, what=f"Lease {name}'s condition Adopted")


def assert_untouched(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Everything upstream wrote is as it wrote it: the status but for the added condition
    (compared as JSON text), upstream's conditions themselves, the spec, the ownerReferences
    and the finalizer."""
    def text(x: Any) -> str:
        return json.dumps(x, sort_keys=True)

    b, a = dict(before["status"]), dict(after["status"])
    b_conditions, a_conditions = b.pop("conditions"), a.pop("conditions")
    assert text(a) == text(b)
    assert [c for c in a_conditions if c["type"] != "Adopted"] == b_conditions
    assert text(after["spec"]) == text(before["spec"])
    assert after["metadata"]["ownerReferences"] == before["metadata"]["ownerReferences"]
    assert after["metadata"]["finalizers"] == [FINALIZER]


def ledger_of(crd: CrdStack, lease: dict[str, Any]) -> list[dict[str, Any]]:
    return crd.ledger_leases(f"{UID_LABEL}={lease['metadata']['uid']}")


def test_upstream_leases_are_adopted_in_place_and_their_port_groups_held(crd):
    """Cut-over: three Leases upstream fulfilled (two of them say they hold the same port
    group), one naming a pool our configuration lacks, one whose Network is gone and whose
    status is garbage, all made while our controller is down; then it starts."""
    crd.kill_controller()
    pool = upstream_pool(crd, POOL)
    net1, net2 = upstream_network(crd, 1001), upstream_network(crd, 1002)
    kept = foreign_lease(crd, pool, [net1])
    twins = [foreign_lease(crd, pool, [net2]) for _ in range(2)]  # two say they hold 1002
    unknown = foreign_lease(crd, upstream_pool(crd, "vcenter-9.ci.example.com-dc9-c9"),
                            [upstream_network(crd, 1003)])
    # a spec our requests refuse, and a Network whose port group is not text
    absurd = foreign_lease(crd, pool, [upstream_network(crd, 1003)],
                           spec={"vcpus": 10**12, "memory": 96, "networks": 1})
    hostile = foreign_lease(crd, pool, [upstream_network(
        crd, 1003, port_group="ci-vlan-1003\x00\u202e")])
    gone_net = upstream_network(crd, 1999, port_group="ci-vlan-1999")
    garbage_status = fulfilled_status(POOL, ["ci-vlan-1003"])
    garbage_status.update({"name": "\x07\t" * 100, "envVars": "x" * 100000, "poolInfo": [],
                           "envVarsMap": {"\x1b[31m": "\x00"}})
    garbage = foreign_lease(crd, pool, [gone_net], status=garbage_status)
    crd.api.delete_namespaced_custom_object(GROUP, VERSION, crd.namespace, "networks",
                                            gone_net["metadata"]["name"])
    # the garbage collector takes the reference to the deleted Network away: the Lease says
    # it holds a port group and names none
    garbage = wait_for(lambda: (x := crd.lease(garbage["metadata"]["name"])) and len(
        x["metadata"]["ownerReferences"]) == 1 and x, timeout=30, what="the collector")
    crd.start_controller()

    # adopted: untouched but for condition Adopted True, and in the ledger as it holds it
    after = adopted_state(crd, kept["metadata"]["name"])
    got = condition(after, "Adopted")
    assert (got["status"], got["reason"]) == ("True", "Adopted"), got
    assert "ci-vlan-1001" in got["message"] and POOL in got["message"]
    assert_untouched(kept, after)
    [held] = ledger_of(crd, kept)  # one record, never a second grant
    assert held["status"]["pool"] == POOL
    assert [n["port-group"] for n in held["status"]["networks"]] == ["ci-vlan-1001"]
    assert (held["spec"]["vcpus"], held["spec"]["memory"], held["spec"]["storage"]) == \
        (24, 96, 200)
    assert held["status"]["labels"][ADOPTED_LABEL] == "true"
    assert held["status"]["request-id"] == kept["metadata"]["uid"]

    # two Leases say they hold one port group: one is adopted, the other named as a conflict
    states = [adopted_state(crd, x["metadata"]["name"]) for x in twins]
    by = {condition(x, "Adopted")["status"]: x for x in states}
    assert set(by) == {"True", "False"}, [condition(x, "Adopted") for x in states]
    refused = condition(by["False"], "Adopted")
    assert refused["reason"] == "NotAdopted"
    winner = ledger_of(crd, by["True"])[0]["metadata"]["name"]
    assert "ci-vlan-1002" in refused["message"] and winner in refused["message"]
    assert ledger_of(crd, by["False"]) == []
    for before, after in zip(twins, states, strict=True):
        assert_untouched(before, after)

    # a pool our configuration lacks: named, nothing recorded, nothing changed
    after = adopted_state(crd, unknown["metadata"]["name"])
    got = condition(after, "Adopted")
    assert (got["status"], got["reason"]) == ("False", "NotAdopted")
    assert "vcenter-9.ci.example.com-dc9-c9" in got["message"]
    assert "is not in the pools configuration" in got["message"]
    assert ledger_of(crd, unknown) == []
    assert_untouched(unknown, after)

    # its Network is gone and its status is garbage: it holds fewer port groups than it asked
    after = adopted_state(crd, garbage["metadata"]["name"])
    got = condition(after, "Adopted")
    assert (got["status"], got["reason"]) == ("False", "NotAdopted")
    assert f"pool '{POOL}' holds 0 of the 1 port groups" in got["message"]
    assert ledger_of(crd, garbage) == []
    assert_untouched(garbage, after)
    for lease, words in ((absurd, "spec.vcpus: 1000000000000 is absurdly large"),
                         (hostile, "holdings.networks[0].port-group: ")):
        after = adopted_state(crd, lease["metadata"]["name"])
        got = condition(after, "Adopted")
        assert (got["status"], got["reason"]) == ("False", "NotAdopted")
        assert words in got["message"], got
        # what it holds is said as text: escaped, never a control or bidi character raw
        assert text_problem(got["message"], 10**6) is None, got["message"]
        assert ledger_of(crd, lease) == []
        assert_untouched(lease, after)
    log = crd.controller.output()
    assert "\x00" not in log and "\u202e" not in log
    assert f"Lease {crd.namespace}/{kept['metadata']['name']} adopted" in log
    assert f"Lease {crd.namespace}/{unknown['metadata']['name']}: fulfilled by another " \
        "controller and not adopted" in log

    # a new Lease gets the one free port group (1003), never 1001 or 1002
    new = crd.create_lease({"vcpus": 8, "memory": 32, "networks": 1, "required-pool": POOL})
    new = crd.wait_phase(new["metadata"]["name"], "Fulfilled", timeout=60)
    assert new["status"]["topology"]["networks"] == ["/cidatacenter/network/ci-vlan-1003"]
    # and the next one waits: the adopted Leases hold the others
    waiting = crd.create_lease({"vcpus": 8, "memory": 32, "networks": 1,
                                "required-pool": POOL})
    name = waiting["metadata"]["name"]
    wait_for(lambda: condition(crd.lease(name) or {}, "Delayed").get("status") == "True",
             timeout=60, what=f"Lease {name} to wait in line")
    assert (crd.lease(name)["status"]["phase"]) == "Pending"

    # a restart changes nothing: adopted again from the ledger's record, never twice
    crd.kill_controller()
    crd.start_controller()
    line = f"Lease {crd.namespace}/{kept['metadata']['name']} adopted"
    wait_for(lambda: line in crd.controller.output_of_this_run(), timeout=30,
             what="the restarted controller to serve the adopted Lease")
    assert_untouched(kept, crd.lease(kept["metadata"]["name"]))
    assert len(ledger_of(crd, kept)) == 1

    # deleting the adopted Lease frees its port group: the waiting Lease gets it
    crd.delete_lease(kept["metadata"]["name"])
    crd.wait_gone(kept["metadata"]["name"])
    got = crd.wait_phase(name, "Fulfilled", timeout=60)
    assert got["status"]["topology"]["networks"] == ["/cidatacenter/network/ci-vlan-1001"]
    assert ledger_of(crd, kept) == []


def test_adopt_task_refuses_hostile_holdings_and_answers_a_replay_with_the_same_leases(crd):
    """`vcm.adopt` through the task API, as the controller sends it: holdings of the wrong
    shape are refused naming the field, with nothing recorded; the same request sent again
    is answered with the leases recorded the first time, never a second record."""
    def adopt(request: Any, holdings: Any) -> Any:
        return crd.stack.app.send_task("vcm.adopt", kwargs={"request": request,
                                                             "holdings": holdings},
                                       queue="placement")

    rid = unique("uid")
    request = {"vcpus": 4, "memory": 16, "networks": 0, "owner": f"{crd.namespace}/{rid}",
               "request-id": rid, "labels": {UID_LABEL: rid}}
    for holdings, field in (
            (None, "holdings"), ([POOL], "holdings"), ({"pools": []}, "holdings.pools"),
            ({"pools": [7]}, "holdings.pools[0]"), ({"pools": ["x" * 100000]}, "holdings.pools[0]"),
            ({"pools": [POOL], "networks": "ci-vlan-1003"}, "holdings.networks"),
            ({"pools": [POOL], "networks": [{"port-group": ["ci-vlan-1003"]}]},
             "holdings.networks[0].port-group"),
            ({"pools": [POOL], "networks": [{"port-group": "ci-vlan-2001"}]},
             "holdings.networks[0]"),  # another pool's (and pod's) port group
            ({"pools": [POOL], "problem": "its Network n1 cannot be read"}, "holdings")):
        with pytest.raises(Exception) as refused:
            adopt(request, holdings).get(timeout=30)
        assert type(refused.value).__name__ == "InvalidRequest", refused.value
        assert str(refused.value).startswith(f"{field}:"), refused.value
    assert crd.ledger_leases(f"{UID_LABEL}={rid}") == []
    first = adopt(request, {"pools": ["other-pool"]}).get(timeout=30)
    again = adopt({**request, "vcpus": 64}, {"pools": [POOL]}).get(timeout=30)
    assert [x["metadata"]["name"] for x in again] == [x["metadata"]["name"] for x in first]
    [held] = crd.ledger_leases(f"{UID_LABEL}={rid}")
    assert (held["status"]["pool"], held["spec"]["vcpus"]) == ("other-pool", 4)
    assert crd.release(owner=request["owner"], selector=f"{UID_LABEL}={rid}") == \
        [held["metadata"]["name"]]


def test_a_lease_granted_here_relabelled_and_its_answer_expired_keeps_its_grant(crd):
    """A Lease this controller granted, its `boskos-lease-id` label changed since and its
    acquire's answer gone from the result backend (older than a day): a restart finds it
    Fulfilled, and the ledger, not the Lease's new label, says whose leases it holds. It is
    never refused as a conflict with its own grant (its renewals would stop and its port
    group go to someone else while its job runs), nor recorded a second time. While the
    query workers (which read the ledger by label) are stopped, a Lease whose label did not
    change is renewed all the same, and a relabelled one is not marked: it waits for them."""
    boskos = unique("vsphere-elastic")
    name = crd.create_lease({"vcpus": 1, "memory": 1, "networks": 1,
                             "required-pool": "other-pool"},
                            labels={"boskos-lease-id": boskos})["metadata"]["name"]
    plain = crd.create_lease({"vcpus": 1, "memory": 1, "networks": 0,
                              "required-pool": "other-pool"})["metadata"]["name"]
    granted = crd.wait_phase(name, "Fulfilled", timeout=60)
    plain_granted = crd.wait_phase(plain, "Fulfilled", timeout=60)
    crd.kubectl("label", f"leases.{GROUP}", name, "boskos-lease-id=someone-else", "--overwrite")
    crd.kill_controller()
    for lease in (granted, plain_granted):
        assert redis.Redis.from_url(crd.stack.redis.url).delete(
            key_prefix() + lease["metadata"]["uid"]) == 1
    (first,) = ledger_of(crd, granted)
    assert first["status"]["owner"] == f"{crd.namespace}/{boskos}"
    crd.start_controller()
    try:
        wait_for(lambda: ledger_of(crd, granted)[0]["status"]["expires-at"]
                 > first["status"]["expires-at"], timeout=30, what="a renewal")
    finally:
        after = crd.lease(name)
        assert condition(after, "Adopted") == {}, condition(after, "Adopted")
    assert after["status"]["phase"] == "Fulfilled"
    assert [x["metadata"]["name"] for x in ledger_of(crd, granted)] == \
        [first["metadata"]["name"]]
    assert "not adopted" not in crd.controller.output_of_this_run()

    crd.kill_controller()
    ledger = Ledger(crd.stack.redis.client())  # read directly: the query workers are stopped

    ids = {x["metadata"]["name"]: [y["metadata"]["name"] for y in ledger_of(crd, x)]
           for x in (granted, plain_granted)}
    assert all(len(x) == 1 for x in ids.values()), ids

    def expires(lease: dict[str, Any]) -> str:
        (held,) = ledger.get_many(ids[lease["metadata"]["name"]])
        return held["status"]["expires-at"]

    before = {x["metadata"]["name"]: expires(x) for x in (granted, plain_granted)}
    refused = f"Lease {crd.namespace}/{name}: not adopted yet (the ledger not read)"
    with stopped(crd, "queries"):
        crd.start_controller()
        wait_for(lambda: expires(plain_granted) > before[plain], timeout=90,
                 what="a renewal while the query workers are stopped")
        # the relabelled Lease's adopt, sent for its label's owner, was refused: not shown
        wait_for(lambda: refused in crd.controller.output_of_this_run(), timeout=30,
                 what="the relabelled Lease's adopt to be refused")
        assert condition(crd.lease(name), "Adopted") == {}
    wait_for(lambda: expires(granted) > before[name], timeout=60,
             what="a renewal once the query workers are back")
    for lease in (name, plain):
        assert condition(crd.lease(lease), "Adopted") == {}
        crd.delete_lease(lease)
    for lease, body in ((name, granted), (plain, plain_granted)):
        crd.wait_gone(lease)
        assert ledger_of(crd, body) == []


def test_while_nothing_is_published_the_controller_waits_as_long_as_its_settings_say(crd):
    """While the query workers are stopped (the Pools and Networks are not published, the
    ledger not read), the controller's start waits VCM_CONTROLLER_PUBLISH_WAIT for them, then
    serves the Leases all the same; the adopt of a Lease upstream fulfilled waits
    VCM_CONTROLLER_LEDGER_WAIT for the ledger's first read, then is sent for the Lease's own
    owner; a new Lease's grant waits VCM_CONTROLLER_PUBLISH_WAIT, then names the Pool it finds.
    Each as long as its setting says (3 s and 2 s here, tests/support/controller.py): at
    least that long, and less than the default (30 s and 10 s). The start's wait is read from
    the controller's log (it says how long it waited): the process's own start, before it,
    takes many seconds on a busy machine."""
    publish_wait = float(crd.env["VCM_CONTROLLER_PUBLISH_WAIT"])
    ledger_wait = float(crd.env["VCM_CONTROLLER_LEDGER_WAIT"])
    defaults = Settings.from_env({})
    assert publish_wait < defaults.controller_publish_wait - 20
    assert ledger_wait < defaults.controller_ledger_wait - 5
    crd.kill_controller()
    foreign = other_pool_lease(crd)
    with stopped(crd, "queries"):
        started = time.monotonic()
        crd.start_controller()
        assert age(started) >= publish_wait
        (waited,) = re.findall(r"the Pools and Networks are not published after ([\d.]+)s",
                               crd.controller.output_of_this_run())
        assert publish_wait <= float(waited) < defaults.controller_publish_wait - 20, waited
        served = time.monotonic()
        after = adopted_state(crd, foreign["metadata"]["name"],
                              timeout=defaults.controller_ledger_wait - 1)
        assert ledger_wait - 0.5 <= age(served), age(served)
        assert condition(after, "Adopted")["status"] == "True", condition(after, "Adopted")
        assert_untouched(foreign, after)
        asked = time.monotonic()
        name = crd.create_lease({"vcpus": 1, "memory": 1, "networks": 0,
                                 "required-pool": "other-pool"})["metadata"]["name"]
        granted = crd.wait_phase(name, "Fulfilled",
                                 timeout=defaults.controller_publish_wait - 1)
        assert age(asked) >= publish_wait, age(asked)
        assert [(r["kind"], r["name"]) for r in granted["metadata"]["ownerReferences"]] == \
            [("Pool", "other-pool")]
    for lease in (name, foreign["metadata"]["name"]):
        crd.delete_lease(lease)
        crd.wait_gone(lease)
    assert ledger_of(crd, foreign) == [] and ledger_of(crd, granted) == []


def test_a_ci_client_cannot_forge_a_fulfilled_lease_to_take_a_port_group(crd):
    """A CI job may create Leases (ClusterRole vcm-lease-client), never write their status. A
    Lease it creates with a status saying Fulfilled, ownerReferences to a Pool and Network it
    wants, and the adopted and lease-uid labels: the API server drops the status at create
    (the status subresource is on: CRD docs, "PUT/POST/PATCH requests to the custom resource
    ignore changes to the status stanza"), its status patch is 403, so the controller places
    it as any new Lease: what its spec asks for, never what its ownerReferences name, not
    adopted, its request-id its own uid."""
    ci = ["--kubeconfig", str(crd.ci_kubeconfig)]
    wanted = next(x for x in crd.objects("networks")
                  if x["spec"].get("portGroupName") == "ci-vlan-1003")
    pool = next(x for x in crd.objects("pools") if x["spec"]["name"] == POOL)
    refs = [{"apiVersion": API_VERSION, "kind": x["kind"], "name": x["metadata"]["name"],
             "uid": x["metadata"]["uid"]} for x in (pool, wanted)]
    boskos = unique("vsphere-elastic")
    body = {"apiVersion": API_VERSION, "kind": "Lease",
            "metadata": {"generateName": "forged-", "ownerReferences": refs,
                         "labels": {"boskos-lease-id": boskos, ADOPTED_LABEL: "true",
                                    UID_LABEL: "someone-else"}},
            "spec": {"vcpus": 1, "memory": 1, "networks": 1, "required-pool": "other-pool"},
            "status": fulfilled_status(POOL, ["ci-vlan-1003"])}
    made = json.loads(crd.kubectl(*ci, "create", "-o", "json", "-f", "-",
                                  input=json.dumps(body)).stdout)
    name, uid = made["metadata"]["name"], made["metadata"]["uid"]
    assert "status" not in made
    patched = crd.kubectl(*ci, "patch", f"leases.{GROUP}", name, "--subresource=status",
                          "--type=merge", "-p", json.dumps({"status": {"phase": "Fulfilled"}}),
                          check=False)
    assert patched.returncode != 0 and "forbidden" in patched.stderr.lower(), patched.stderr
    got = crd.wait_phase(name, "Fulfilled", "Failed", timeout=60)
    assert got["status"]["phase"] == "Fulfilled", got["status"]
    assert condition(got, "Adopted") == {}
    (held,) = crd.ledger_leases(f"{UID_LABEL}={uid}")
    assert held["status"]["pool"] == "other-pool"
    assert [n["port-group"] for n in held["status"]["networks"]] == ["ci-vlan-2001"]
    assert held["status"]["request-id"] == uid
    assert ADOPTED_LABEL not in held["status"]["labels"]
    assert crd.ledger_leases(f"{UID_LABEL}=someone-else") == []
    assert wanted["metadata"]["name"] not in [
        r["name"] for r in got["metadata"]["ownerReferences"]]
    crd.delete_lease(name)
    crd.wait_gone(name)
    assert crd.ledger_leases(f"{UID_LABEL}={uid}") == []


@contextlib.contextmanager
def stopped(crd: CrdStack, queue: str = "placement") -> Iterator[None]:
    """The worker of `queue` (its main process and its pool) frozen with SIGSTOP: what is
    sent to it waits in the queue until the block ends (SIGCONT)."""
    (worker,) = [w for w in crd.stack.procs if w.queues == queue]
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)


def adopt_queued(crd: CrdStack, lease: dict[str, Any]) -> bool:
    """Whether a `vcm.adopt` of this Lease waits in the placement queue (kombu's Redis
    transport: a list of messages, each naming its task and arguments in its headers)."""
    for raw in redis.Redis.from_url(crd.stack.redis.url).lrange("placement", 0, -1):
        headers = json.loads(raw).get("headers") or {}
        if headers.get("task") == "vcm.adopt" and \
                lease["metadata"]["uid"] in str(headers.get("kwargsrepr")):
            return True
    return False


def other_pool_lease(crd: CrdStack) -> dict[str, Any]:
    """A Lease upstream fulfilled on other-pool, holding its one port group (free here)."""
    net = upstream_network(crd, 2001, pod="dal12.pod01", port_group="ci-vlan-2001")
    return foreign_lease(crd, upstream_pool(crd, "other-pool"), [net],
                         spec={"vcpus": 2, "memory": 4, "storage": 0, "networks": 1})


def test_a_controller_killed_while_its_adopt_is_queued_adopts_once_on_restart(crd):
    """The controller sends `vcm.adopt` and is killed before the answer: the worker records
    the holdings with nobody waiting; the restarted controller sends it again and is
    answered the same ledger lease, never a second one."""
    crd.kill_controller()
    lease = other_pool_lease(crd)
    with stopped(crd):
        crd.start_controller()
        wait_for(lambda: adopt_queued(crd, lease), timeout=30, what="the adopt to be sent")
        crd.kill_controller()
    wait_for(lambda: ledger_of(crd, lease), timeout=30, what="the queued adopt to be recorded")
    crd.start_controller()
    after = adopted_state(crd, lease["metadata"]["name"])
    assert condition(after, "Adopted")["status"] == "True", condition(after, "Adopted")
    assert_untouched(lease, after)
    (held,) = ledger_of(crd, lease)
    assert [n["port-group"] for n in held["status"]["networks"]] == ["ci-vlan-2001"]
    crd.delete_lease(lease["metadata"]["name"])
    crd.wait_gone(lease["metadata"]["name"])
    assert ledger_of(crd, lease) == []


def test_a_lease_deleted_with_its_adopt_in_the_queue_or_while_retried_holds_nothing(crd):
    """Deleted while its `vcm.adopt` waits in the queue: its release comes after it, so what
    was recorded goes, and a copy of that adopt arriving later (a redelivery) is refused,
    never recorded again. Deleted while refused and tried again every minute: it goes at
    once, nothing recorded; an adopt for it that reaches a worker only after it is gone is
    released by the controller's sweep (its Lease no longer exists)."""
    crd.kill_controller()
    lease = other_pool_lease(crd)
    name = lease["metadata"]["name"]
    refused = foreign_lease(crd, upstream_pool(crd, "vcenter-9.ci.example.com-dc9-c9"),
                            [upstream_network(crd, 1003)])
    with stopped(crd):
        crd.start_controller()
        wait_for(lambda: adopt_queued(crd, lease), timeout=30, what="the adopt to be sent")
        crd.delete_lease(name)
    crd.wait_gone(name, timeout=60)
    assert ledger_of(crd, lease) == []

    def adopt(of: dict[str, Any]) -> Any:
        """`vcm.adopt` of that Lease, as the controller sends it."""
        uid, labels = of["metadata"]["uid"], of["metadata"]["labels"]
        return crd.stack.app.send_task("vcm.adopt", queue="placement", kwargs={
            "request": {"vcpus": 2, "memory": 4, "networks": 1, "request-id": uid,
                        "owner": f"{crd.namespace}/{labels['boskos-lease-id']}",
                        "labels": {**labels, UID_LABEL: uid}},
            "holdings": {"pools": ["other-pool"],
                         "networks": [{"port-group": "ci-vlan-2001"}]}})

    with pytest.raises(Exception) as late:
        adopt(lease).get(timeout=30)
    assert type(late.value).__name__ == "LeaseNotFound", late.value
    assert ledger_of(crd, lease) == []
    after = adopted_state(crd, refused["metadata"]["name"])
    assert condition(after, "Adopted")["status"] == "False"
    crd.delete_lease(refused["metadata"]["name"])
    crd.wait_gone(refused["metadata"]["name"], timeout=30)
    assert ledger_of(crd, refused) == []
    assert [x["status"]["pool"] for x in adopt(refused).get(timeout=30)] == ["other-pool"]
    wait_for(lambda: ledger_of(crd, refused) == [], timeout=30, what="the sweep to release it")
    assert "Traceback" not in crd.controller.output_of_this_run()
