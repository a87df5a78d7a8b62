"""Labels, selectors, job links and network-only leases, through the task API and the CLI,
against the placement worker started as documented."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.audit import audit
from tests.support.documented_stack import POOLS
from tests.support.helpers import call, failure
from tests.support.procs import ROOT
from workers.core.labels import Requirement, matches, parse_selector

BOSKOS = "boskos-lease-id"


def _names(leases: list[dict]) -> list[str]:
    return [x["metadata"]["name"] for x in leases]

NS = "vsphere-capacity-manager.splat-team.io/lease-namespace"


def _acquire(s, owner: str, boskos: str, **extra) -> list[dict]:
    req = {"vcpus": 1, "memory": 1, "networks": 0, "owner": owner,
           "labels": {BOSKOS: boskos, NS: "ci-op-1"}, **extra}
    return call(s.app, "vcm.acquire", request=req)


def test_labels_are_stored_listed_and_released_by_selector(s):
    a1 = _acquire(s, "alice", "b-1", **{"job-link": "https://prow.example/1"})
    a2 = _acquire(s, "alice", "b-1", vcenters=2)
    a3 = _acquire(s, "alice", "b-2")
    bob = _acquire(s, "bob", "b-1")
    assert a1[0]["status"]["labels"] == {BOSKOS: "b-1", NS: "ci-op-1"}
    assert a1[0]["status"]["job-link"] == "https://prow.example/1"
    mine = {x for x in _names(a1 + a2)}
    listed = call(s.app, "vcm.list_leases", owner="alice", selector=f"{BOSKOS}=b-1")
    assert set(_names(listed)) == mine
    everyone = call(s.app, "vcm.list_leases", selector=f"{BOSKOS} in (b-1)")
    assert set(_names(everyone)) == mine | set(_names(bob))
    assert _names(call(s.app, "vcm.list_leases", selector=f"{BOSKOS}!=b-1")) == _names(a3)
    # alice's b-1 leases go in one step; her b-2 lease and bob's b-1 lease stay
    released = call(s.app, "vcm.release", owner="alice", selector=f"{BOSKOS}=b-1")
    assert set(released) == mine
    left = set(audit(s.ledger)["leases"])
    assert left == set(_names(a3 + bob))
    assert call(s.app, "vcm.release", owner="alice", selector=f"{BOSKOS}=b-1") == []
    # without an owner, a selector naming a value releases every owner's matching leases
    assert call(s.app, "vcm.release", selector=f"{BOSKOS}=b-2,{NS}=ci-op-1") == _names(a3)
    s.check()


def test_bad_labels_and_selectors_name_their_field(s):
    for kwargs, field in [
        ({"selector": ""}, "selector"), ({"selector": "a b"}, "selector"),
        ({"selector": "k in ()"}, "selector"), ({"selector": 7}, "selector"),
        ({"selector": "!k"}, "selector"),  # only excludes: too broad without an owner
        ({"selector": "k=v", "lease_ids": ["x"]}, "selector"),
        ({"selector": "k=\udcff"}, "selector"), ({"selector": "k=v,"}, "selector"),
    ]:
        exc = failure(s.app, "vcm.release", **kwargs)
        assert type(exc).__name__ == "InvalidRequest" and exc.args[1]["field"] == field, \
            (kwargs, exc)
    exc = failure(s.app, "vcm.list_leases", selector="=")
    assert exc.args[1]["field"] == "selector"
    exc = failure(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1,
                                                 "labels": {"k": "has space"}})
    assert exc.args[1]["field"] == "labels"
    assert audit(s.ledger)["leases"] == {}


def test_a_network_only_lease_takes_a_port_group_and_no_capacity(s):
    full = call(s.app, "vcm.acquire", request={"vcpus": 16, "memory": 64, "networks": 0,
                                               "required-pool": "p1"})
    net = call(s.app, "vcm.acquire", request={"vcpus": 0, "memory": 0, "networks": 1,
                                              "required-pool": "p1"})[0]
    assert net["spec"]["vcpus"] == 0 and len(net["status"]["networks"]) == 1
    snap = s.check()
    assert snap["counters"]["p1"][:3] == (16, 64, 0)
    exc = failure(s.app, "vcm.acquire", request={"vcpus": 0, "memory": 0, "networks": 0})
    assert exc.args[1]["field"] == "networks"
    call(s.app, "vcm.release", lease_ids=_names(full) + _names([net]))
    assert s.check()["nets"] == {}


def test_the_cli_labels_lists_and_releases_by_selector(s):
    def vcm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "workers.cli", *args, "--redis-url",
                               s.redis.url], cwd=ROOT, env=s.env, capture_output=True,
                              text=True, timeout=60)

    for _ in range(2):
        p = vcm("acquire", "--vcpus", "1", "--memory", "1", "--networks", "0", "--owner",
                "job", "--label", f"{BOSKOS}=b-9", "--label", "job-name=e2e", "-o", "json")
        assert p.returncode == 0, p.stderr
    p = vcm("leases", "-l", f"{BOSKOS}=b-9", "-o", "json")
    listed = json.loads(p.stdout)
    assert len(listed) == 2 and all(x["status"]["labels"]["job-name"] == "e2e" for x in listed)
    p = vcm("release", "-l", f"{BOSKOS}=b-9", "-o", "json")
    assert p.returncode == 0 and sorted(json.loads(p.stdout)) == sorted(_names(listed))
    p = vcm("release", "-l", "bad selector")
    assert p.returncode == 2 and "selector" in p.stderr and "Traceback" not in p.stderr
    assert audit(s.ledger)["leases"] == {}


# the selector matcher against a plain oracle ----------------------------------------------
KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.sampled_from(["x", "y", ""])


@given(st.dictionaries(KEYS, VALUES), KEYS, st.lists(VALUES, min_size=1, max_size=2),
       st.sampled_from(["=", "!=", "in", "notin", "exists", "!exists"]))
def test_a_selector_means_what_kubernetes_says(labels, key, values, op):
    text = {"=": f"{key}={values[0]}", "!=": f"{key}!={values[0]}",
            "in": f"{key} in ({','.join(v for v in values if v) or 'x'})",
            "notin": f"{key} notin ({','.join(v for v in values if v) or 'x'})",
            "exists": key, "!exists": f"!{key}"}[op]
    (req,) = parse_selector(text)
    assert isinstance(req, Requirement)
    has = key in labels
    want = {"=": has and labels[key] == values[0],
            "!=": not has or labels[key] != values[0],
            "in": has and labels[key] in ([v for v in values if v] or ["x"]),
            "notin": not has or labels[key] not in ([v for v in values if v] or ["x"]),
            "exists": has, "!exists": not has}[op]
    assert matches((req,), labels) == want


def test_multi_pool_leases_and_tolerations_through_the_task_api(s):
    both = call(s.app, "vcm.acquire", request={"vcpus": 2, "memory": 2, "pools": 2,
                                               "vcenters": 2, "owner": "zonal",
                                               "labels": {BOSKOS: "z-1"}})
    assert sorted(x["status"]["pool"] for x in both) == ["p1", "p2"]
    assert all(x["spec"]["pools"] == 2 for x in both)
    exc = failure(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "pools": 2,
                                                 "vcenters": 1})
    assert type(exc).__name__ == "InvalidRequest" and exc.args[1]["field"] == "pools"
    # with pools, vcenters is a cap: above P it caps nothing (upstream's CI step sends it)
    (capped,) = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "pools": 1,
                                                    "vcenters": 2, "labels": {BOSKOS: "z-1"}})
    assert (capped["spec"]["pools"], capped["spec"]["vcenters"]) == (1, 2)
    both.append(capped)
    exc = failure(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "tolerations": [
        {"key": "k", "operator": "Maybe"}]})
    assert exc.args[1]["field"] == "tolerations[0]"
    assert sorted(call(s.app, "vcm.release", selector=f"{BOSKOS}=z-1")) == sorted(_names(both))
    s.check()


# two tainted pools beside p1 and p2, each on a vCenter of its own and named to come first when
# loads tie (pool name is the last tie-break): only their taints put them after p1 and p2
TAINTED = POOLS + """
  - {name: a-spot, vcenter: vc3, datacenter: dc, cluster: c3, datastore: ds, vcpus: 16,
     memory: 64, storage: 1000, networks: [{port-group: pg3-a, vlan: 5}],
     taints: [{key: spot, value: "true", effect: PreferNoSchedule}]}
  - {name: a-perf, vcenter: vc4, datacenter: dc, cluster: c4, datastore: ds, vcpus: 16,
     memory: 64, storage: 1000, networks: [{port-group: pg4-a, vlan: 6}],
     taints: [{key: dedicated, value: perf, effect: NoSchedule}]}
"""


@pytest.fixture()
def tainted(s):
    """The running stack's pools file with the tainted pools added (picked up without a
    restart), and as it was afterwards."""
    s.pools.write_text(TAINTED)
    yield s
    s.reset()
    s.pools.write_text(POOLS)


def test_taints_keep_requests_off_or_last_through_the_task_api(tainted):
    s = tainted

    def pool_of(**request) -> str:
        leases = call(s.app, "vcm.acquire", request={"memory": 1, "networks": 0, **request})
        return leases[0]["status"]["pool"]

    # PreferNoSchedule: a-spot (no load, first by name) ranks after every untainted pool
    assert pool_of(vcpus=1) == "p1"
    assert pool_of(vcpus=1) == "p2"
    assert pool_of(vcpus=1) in ("p1", "p2")
    # only when no untainted pool fits does an untolerated request go there
    assert pool_of(vcpus=16) == "a-spot"
    # NoSchedule: never without a toleration, not even named by required-pool
    exc = failure(s.app, "vcm.acquire", request={"vcpus": 16, "memory": 1, "networks": 0})
    assert type(exc).__name__ == "NoCapacity", exc
    assert "not tolerated" in exc.args[1]["reasons"]["a-perf"], exc.args
    wrong = {"key": "dedicated", "operator": "Equal", "value": "other", "effect": "NoSchedule"}
    exc = failure(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "networks": 0,
                                                 "required-pool": "a-perf",
                                                 "tolerations": [wrong]})
    # (a request that can never be placed on the pool it names is refused as invalid)
    assert type(exc).__name__ == "InvalidRequest", exc
    assert exc.args[1]["field"] == "required-pool" and "not tolerated" in exc.args[0], exc
    perf = {**wrong, "value": "perf"}
    assert pool_of(vcpus=16, tolerations=[perf]) == "a-perf"
    s.check()
    # tolerated, a PreferNoSchedule pool ranks as any other: on an empty fleet, by name
    assert len(call(s.app, "vcm.release", owner="anonymous")) == 5
    spot = {"key": "spot", "operator": "Exists", "effect": "PreferNoSchedule"}
    assert pool_of(vcpus=1, tolerations=[spot]) == "a-spot"
    assert pool_of(vcpus=1) == "p1"
    s.check()
