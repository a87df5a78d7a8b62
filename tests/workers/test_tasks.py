"""The task API through a real Celery worker on a real redis-server."""

from __future__ import annotations

import re
import threading

import pytest
import yaml

from tests.support.audit import audit
from tests.support.helpers import call, check_invariants, failure
from tests.support.procs import wait_for
from workers.adapters.pools_file import load_pools

UPSTREAM = {"vcpus": 24, "memory": 96, "storage": 700, "vcenters": 1}


def pools_of(path):
    return {p.name: p for p in load_pools(str(path))}


def three_equal(path, extra: dict | None = None):
    pools = []
    for i in (1, 2, 3):
        pools.append({
            "name": f"p{i}", "vcenter": f"vc{i}", "datacenter": "dc", "cluster": "c",
            "datastore": "ds", "vcpus": 100, "memory": 1000, "storage": 1000,
            "networks": [{"port-group": f"pg{i}-{j}", "vlan": j} for j in range(10)],
            **(extra or {}),
        })
    path.write_text(yaml.safe_dump({"pools": pools}))


def test_upstream_example(client_app, ledger, pools_file):
    leases = call(client_app, "vcm.acquire", request=UPSTREAM)
    assert len(leases) == 1
    lease = leases[0]
    assert lease["spec"] == {**UPSTREAM, "networks": 1}
    assert lease["status"]["pool"] == "pool1"
    assert lease["status"]["vcenter"] == "vcenter1.example.com"
    assert lease["status"]["networks"][0]["port-group"] == "ci-vlan-1001"
    assert lease["status"]["owner"] == "anonymous"
    assert lease["status"]["state"] == "leased"
    assert re.fullmatch(r"[0-9a-f]{20}", lease["metadata"]["name"])
    snap = check_invariants(ledger, pools_of(pools_file))
    assert list(snap["leases"]) == [lease["metadata"]["name"]]
    assert snap["counters"]["pool1"] == (24, 96, 700, 1)


def test_two_vcenters_then_release_to_zero(client_app, ledger, pools_file):
    leases = call(client_app, "vcm.acquire", request={**UPSTREAM, "vcenters": 2, "owner": "j2"})
    assert len(leases) == 2
    assert len({x["status"]["vcenter"] for x in leases}) == 2
    ids = [x["metadata"]["name"] for x in leases]
    assert sorted(call(client_app, "vcm.release", lease_ids=ids, owner="j2")) == sorted(ids)
    snap = check_invariants(ledger, pools_of(pools_file))
    assert snap["leases"] == {} and snap["nets"] == {}
    assert all(c == (0, 0, 0, 0) for c in snap["counters"].values())


def test_spreading_takes_turns_and_prefers_the_emptier_vcenter(client_app, ledger, pools_file):
    three_equal(pools_file)
    small = {"vcpus": 10, "memory": 10, "storage": 10}
    first = [call(client_app, "vcm.acquire", request=small)[0]["status"]["vcenter"]
             for _ in range(3)]
    assert sorted(first) == ["vc1", "vc2", "vc3"]
    # load vc1 and vc3 more heavily than vc2: the next one goes to vc2
    call(client_app, "vcm.acquire", request={**small, "required-pool": "p1", "vcpus": 50})
    call(client_app, "vcm.acquire", request={**small, "required-pool": "p3", "vcpus": 30})
    nxt = call(client_app, "vcm.acquire", request=small)[0]["status"]["vcenter"]
    assert nxt == "vc2"
    check_invariants(ledger, pools_of(pools_file))


def test_nothing_fits_gives_reasons_and_changes_nothing(client_app, ledger, pools_file):
    call(client_app, "vcm.acquire", request={"vcpus": 100, "memory": 100, "required-pool": "pool1"})
    before = audit(ledger)
    exc = failure(client_app, "vcm.acquire", request={"vcpus": 40, "memory": 900})
    assert type(exc).__name__ == "NoCapacity"
    reasons = exc.details["reasons"]
    assert reasons["pool1"] == "insufficient vcpus (need 40, free 20)"
    assert reasons["pool2"] == "insufficient memory (need 900, free 800)"
    assert "insufficient memory (need 900, free 600)" in reasons["pool3"]
    assert "excluded" in reasons["pool4"]
    assert "pool2: insufficient memory (need 900, free 800)" in str(exc)
    assert audit(ledger) == before
    # counted by the worker just after it stores the failure
    wait_for(lambda: ledger.stats().get("refused:NoCapacity") == 1, timeout=5,
             what="the refusal counted")
    lat = ledger.latency()
    assert lat["count"] == 1 and lat["86400"] == 1  # the one grant above, seen by the histogram


@pytest.mark.parametrize("request_, field", [
    ({"vcpus": "24", "memory": 96}, "vcpus"),
    ({"vcpus": 24}, "memory"),
    ({"vcpus": 24, "memory": 96, "colour": "red"}, "colour"),
    ({"vcpus": 24, "memory": 96, "vcenters": 4}, "vcenters"),
    ({"vcpus": 24000, "memory": 96}, "vcpus"),
    ({"vcpus": 24, "memory": 96, "storage": -1}, "storage"),
    ({"vcpus": 24, "memory": 96, "ttl": "forever"}, "ttl"),
    ({"vcpus": 24, "memory": 96, "required-pool": "nope"}, "required-pool"),
    ({"vcpus": 24, "memory": 96, "network-type": "nope"}, "network-type"),
    ({"vcpus": 24, "memory": 96, "networks": 9}, "networks"),
    ([1, 2], "request"),
])
def test_bad_requests_name_the_field(client_app, ledger, request_, field):
    before = audit(ledger)
    exc = failure(client_app, "vcm.acquire", request=request_)
    assert type(exc).__name__ == "InvalidRequest", exc
    assert exc.details["field"] == field
    assert audit(ledger) == before


def test_garbage_kwargs_are_invalid_requests(client_app, ledger):
    exc = failure(client_app, "vcm.acquire", bogus=1)
    assert type(exc).__name__ == "InvalidRequest" and exc.details["field"] == "bogus"
    exc = failure(client_app, "vcm.release", lease_ids=42)
    assert type(exc).__name__ == "InvalidRequest" and exc.details["field"] == "lease_ids"
    exc = failure(client_app, "vcm.acquire")
    assert type(exc).__name__ == "InvalidRequest"


def test_same_request_id_same_leases_even_concurrently(client_app, ledger, pools_file):
    req = {**UPSTREAM, "request-id": "job-42-step-1"}
    first = call(client_app, "vcm.acquire", request=req)
    again = call(client_app, "vcm.acquire", request=req)
    assert [x["metadata"]["name"] for x in again] == [x["metadata"]["name"] for x in first]
    results: list = []
    req2 = {**UPSTREAM, "request-id": "job-43", "vcenters": 2}
    threads = [threading.Thread(target=lambda: results.append(
        call(client_app, "vcm.acquire", request=req2))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = {tuple(sorted(x["metadata"]["name"] for x in r)) for r in results}
    assert len(results) == 8 and len(names) == 1
    snap = check_invariants(ledger, pools_of(pools_file))
    assert len(snap["leases"]) == 3


def test_same_request_id_after_release_is_an_error_naming_the_leases(client_app, ledger):
    req = {**UPSTREAM, "request-id": "once"}
    lease = call(client_app, "vcm.acquire", request=req)[0]
    name = lease["metadata"]["name"]
    call(client_app, "vcm.release", lease_ids=[name])
    exc = failure(client_app, "vcm.acquire", request=req)
    assert type(exc).__name__ == "LeaseNotFound"
    assert exc.args[1]["request-id"] == "once"
    assert list(exc.args[1]["gone"]) == [name]
    assert exc.args[1]["gone"][name].startswith("released at ")
    assert name in str(exc)
    assert audit(ledger)["leases"] == {}


def test_release_by_owner_twice_and_renew_checks_owner(client_app, ledger, pools_file):
    a = call(client_app, "vcm.acquire", request={**UPSTREAM, "owner": "alice"})
    b = call(client_app, "vcm.acquire", request={**UPSTREAM, "owner": "alice"})
    c = call(client_app, "vcm.acquire", request={**UPSTREAM, "owner": "bob"})
    exc = failure(client_app, "vcm.renew", lease_id=c[0]["metadata"]["name"], owner="alice")
    assert type(exc).__name__ == "NotOwner"
    exc = failure(client_app, "vcm.release", lease_ids=[c[0]["metadata"]["name"]], owner="alice")
    assert type(exc).__name__ == "NotOwner"
    renewed = call(client_app, "vcm.renew", lease_id=c[0]["metadata"]["name"], owner="bob",
                   ttl="48h")
    assert renewed["status"]["expires-at"] > c[0]["status"]["expires-at"]
    released = call(client_app, "vcm.release", owner="alice")
    assert sorted(released) == sorted(x[0]["metadata"]["name"] for x in (a, b))
    assert call(client_app, "vcm.release", owner="alice") == []
    ids = [a[0]["metadata"]["name"]]
    assert call(client_app, "vcm.release", lease_ids=ids) == ids  # twice is fine
    exc = failure(client_app, "vcm.release", lease_ids=["never-existed"])
    assert type(exc).__name__ == "LeaseNotFound"
    snap = check_invariants(ledger, pools_of(pools_file))
    assert list(snap["leases"]) == [c[0]["metadata"]["name"]]


def test_removed_pool_keeps_leases_and_takes_no_new(client_app, ledger, pools_file):
    lease = call(client_app, "vcm.acquire", request={**UPSTREAM, "required-pool": "pool2"})[0]
    data = yaml.safe_load(pools_file.read_text())
    data["pools"] = [p for p in data["pools"] if p["name"] != "pool2"]
    pools_file.write_text(yaml.safe_dump(data))
    exc = failure(client_app, "vcm.acquire", request={**UPSTREAM, "required-pool": "pool2"})
    assert type(exc).__name__ == "InvalidRequest" and exc.details["field"] == "required-pool"
    for _ in range(4):
        got = call(client_app, "vcm.acquire", request={"vcpus": 1, "memory": 1})
        assert got[0]["status"]["pool"] != "pool2"
    pools = call(client_app, "vcm.show_pools")
    removed = [p for p in pools if p["spec"]["name"] == "pool2"]
    assert [p["status"]["removed"] for p in removed] == [True]
    name = lease["metadata"]["name"]
    assert call(client_app, "vcm.release", lease_ids=[name]) == [name]
    assert audit(ledger)["counters"]["pool2"] == (0, 0, 0, 0)


@pytest.mark.parametrize("text", ["pools:\n  - name: broken\n    vcpus: -1\n",
                                  "pools:\n  - name: broken\n1: 2\n"])
def test_invalid_pools_change_is_ignored(client_app, ledger, pools_file, text):
    pools_file.write_text(text)
    got = call(client_app, "vcm.acquire", request=UPSTREAM)
    assert got[0]["status"]["pool"] == "pool1"
    assert "pool1" in {p["spec"]["name"] for p in call(client_app, "vcm.show_pools")}


def test_cordoned_pool_is_skipped(client_app, ledger, pools_file):
    data = yaml.safe_load(pools_file.read_text())
    for p in data["pools"]:
        p["no-schedule"] = p["name"] != "pool3"
    pools_file.write_text(yaml.safe_dump(data))
    got = call(client_app, "vcm.acquire", request={"vcpus": 4, "memory": 4})
    assert got[0]["status"]["pool"] == "pool3"
    exc = failure(client_app, "vcm.acquire", request={"vcpus": 4, "memory": 4, "vcenters": 2})
    assert "cordoned" in exc.details["reasons"]["pool1"]


def test_queries(client_app, ledger):
    lease = call(client_app, "vcm.acquire", request={**UPSTREAM, "owner": "q"})[0]
    pools = call(client_app, "vcm.show_pools")
    p1 = next(p for p in pools if p["spec"]["name"] == "pool1")
    assert p1["status"]["vcpus-usage"] == pytest.approx(24 / 120)
    assert p1["status"]["memory-usage"] == pytest.approx(96 / 1600)
    assert p1["status"]["datastore-usage"] == pytest.approx(700 / 10000)
    assert p1["status"]["network-usage"] == pytest.approx(1 / 5)
    assert [x["metadata"]["name"] for x in p1["status"]["leases"]] == [lease["metadata"]["name"]]
    assert call(client_app, "vcm.list_leases", owner="q") == [lease]
    assert call(client_app, "vcm.list_leases", owner="nobody") == []
    assert call(client_app, "vcm.list_leases", pool="pool2") == []
    est = call(client_app, "vcm.estimate", request=UPSTREAM)
    # pool1: 4 free single-tenant port groups left minus... 96/24 vcpus -> 4; nets 3 left
    assert est["pools"]["pool1"]["fits"] == 3
    assert "networks" in est["pools"]["pool1"]["next-blocked-by"]
    assert est["pools"]["pool3"]["fits"] == 1
    assert est["pools"]["pool4"]["fits"] == 0
    assert est["fits"] == 3 + 3 + 1


def test_a_request_that_never_fits_does_not_wait_and_block_the_line(client_app, ledger):
    """pool4 is excluded and cannot be named with vcenters > 1, so vcenter3 only has pool3."""
    exc = failure(client_app, "vcm.acquire", request={"vcpus": 64, "memory": 512,
                                                      "storage": 2000, "vcenters": 3, "wait": 60})
    assert type(exc).__name__ == "NoCapacity" and "not waiting" in str(exc)
    assert "pool3" in exc.details["reasons"]
    assert call(client_app, "vcm.waiting") == []
    (got,) = call(client_app, "vcm.acquire", request={"vcpus": 1, "memory": 1})
    assert got["status"]["state"] == "leased" and got["status"]["pool"] == "pool1"
    assert list(audit(ledger)["leases"]) == [got["metadata"]["name"]]
