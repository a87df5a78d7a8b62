"""The ledger survives Redis losing everything: the worker restores it from the mirror."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import ApiServer
from tests.support.audit import audit
from tests.support.helpers import call, check_invariants, failure, go_back, keep_ledger
from tests.support.procs import ROOT, Stack, Worker, wait_for
from tests.support.restore import (
    fill_until_refused,
    lease_record,
    port_groups_of,
    stack_on_mirror,
)
from workers.adapters.ledger import Ledger
from workers.adapters.mirror.file import FileMirror
from workers.adapters.pools_file import load_pools
from workers.publisher.status import read_status

POOLS = yaml.safe_dump({"pools": [
    {"name": f"p{i}", "vcenter": f"vc{i % 3}", "datacenter": "dc", "cluster": f"c{i}",
     "datastore": "ds", "vcpus": 200, "memory": 2000, "storage": 5000,
     "networks": [{"port-group": f"pg{i}-{j}", "vlan": j} for j in range(30)]}
    for i in range(4)]})


def test_mirror_matches_ledger_and_redis_wipe_restores_everything(tmp_path):
    s = Stack(tmp_path, POOLS, queries=False)  # no query task sent
    try:
        pools = {p.name: p for p in load_pools(str(s.pools))}
        ledger = Ledger(s.redis.client())
        granted = {}
        for i in range(25):
            req = {"vcpus": 1 + i % 5, "memory": 4, "storage": 10 * (i % 3),
                   "vcenters": 1 + i % 2, "owner": f"job-{i % 4}", "request-id": f"rid-{i}"}
            granted[f"rid-{i}"] = [x["metadata"]["name"] for x in
                                   call(s.app, "vcm.acquire", request=req)]
        call(s.app, "vcm.release", owner="job-3")
        before = check_invariants(ledger, pools)
        # every reply was sent only once the mirror covered it: the mirror equals the ledger
        mirrored = FileMirror(s.env["VCM_MIRROR_FILE"]).load()
        assert {x["metadata"]["name"]: x for x in mirrored["leases"]} == before["leases"]

        s.redis.wipe()
        assert not s.redis.client().exists("vcm:leases")
        wait_for(lambda: Ledger(s.redis.client()).is_ready(), timeout=20,
                 what="the worker restoring the ledger")
        ledger = Ledger(s.redis.client())
        after = check_invariants(ledger, pools)
        assert after["leases"] == before["leases"]
        assert after["nets"] == before["nets"]
        assert {k: v for k, v in after["counters"].items() if any(v)} == \
            {k: v for k, v in before["counters"].items() if any(v)}
        # request-ids are still idempotent, and new placements respect restored usage
        again = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 4, "owner": "job-0",
                                                    "request-id": "rid-0"}, timeout=30)
        assert [x["metadata"]["name"] for x in again] == granted["rid-0"]
        fresh = call(s.app, "vcm.acquire", request={"vcpus": 3, "memory": 3, "vcenters": 3})
        used_nets = set(before["nets"])
        for lease in fresh:
            key = f"{lease['status']['vcenter']}|{lease['status']['networks'][0]['port-group']}"
            assert key not in used_nets
        check_invariants(ledger, pools)
        log = s.procs[0].output()
        assert "restored" in log and "leases from the mirror" in log
    finally:
        s.stop()


@pytest.mark.parametrize("marker", ["kept", "lost"])
def test_redis_wins_at_start_when_it_has_leases_the_mirror_lacks(tmp_path, marker):
    """The placement worker starts (the documented command) on a Redis that holds a lease
    and a mirror that does not (an old copy put back): Redis is kept, whether it is still
    marked ready or not, and the mirror is rewritten from it before any task arrives."""
    s = Stack(tmp_path, POOLS, queries=False)  # no query task sent
    try:
        lease = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1})[0]
        name = lease["metadata"]["name"]
        s.procs[0].kill()  # answered: the lease is in Redis and the mirror; no drain looked at
        path = s.env["VCM_MIRROR_FILE"]
        FileMirror(path).save({"format": 1, "seq": 0, "leases": []})  # a stale mirror
        Path(path + ".journal").unlink(missing_ok=True)
        if marker == "lost":
            s.redis.client().delete("vcm:ready")
        s.procs[0] = Worker(s.env, "placement").start()
        wait_for(lambda: [x["metadata"]["name"] for x in FileMirror(path).load()["leases"]]
                 == [name], timeout=20, what="the mirror rewritten from Redis at start")
        assert list(audit(Ledger(s.redis.client()))["leases"]) == [name]
        if marker == "lost":
            assert "Redis wins" in s.procs[0].output_of_this_run()
        fresh = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1,
                                                    "required-pool": lease["status"]["pool"]})
        assert fresh[0]["status"]["networks"] != lease["status"]["networks"]
    finally:
        s.stop()


def test_a_set_aside_record_keeps_its_capacity_and_port_group_after_a_restore(
        tmp_path, mirror_kind, cli):
    """The mirror holds a good lease (2 vCPUs, pg-1), a record whose owner cannot be read
    (3 vCPUs, pg-2) and a record of a pool since removed whose expires-at cannot be read
    (pg-3, on the same vCenter).
    Started on an empty Redis, the worker sets both records aside but keeps what they hold:
    pool p1 (10 vCPUs) takes 5 more vCPUs, and only pg-4..pg-6 are handed out. Dropping a
    record (`vcm release ID`) gives back what it held."""
    good = lease_record("good-1", 2, "pg-1")
    bad = lease_record("bad-2", 3, "pg-2")
    bad["status"]["owner"] = None  # as an older version wrote it
    gone = lease_record("bad-3", 1, "pg-3", pool="removed")
    gone["status"]["expires-at"] = "some day"
    s = stack_on_mirror(tmp_path, mirror_kind, {"format": 1, "seq": 5,
                                          "leases": [good, bad, gone]})
    try:
        cpu, refused = fill_until_refused(s, {"vcpus": 1, "memory": 1, "networks": 0})
        assert len(cpu) == 10 - 2 - 3, f"{len(cpu)} vCPUs granted"
        assert type(refused).__name__ == "NoCapacity" and "insufficient vcpus" in str(refused)
        nets, refused = fill_until_refused(s, {"vcpus": 0, "memory": 0, "networks": 1})
        assert port_groups_of(nets) == ["pg-4", "pg-5", "pg-6"]
        assert type(refused).__name__ == "NoCapacity"
        p1 = call(s.app, "vcm.show_pools")[0]["status"]
        assert (p1["vcpus-used"], p1["networks-used"]) == (10, 6)
        # a record whose owner and request-id can be read: a repeat is never granted anew
        exc = failure(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "networks": 0,
                                                     "owner": "job-bad-3", "request-id": "bad-3"})
        assert type(exc).__name__ == "LeaseNotFound" and "bad-3 set aside" in str(exc), exc
        check_invariants(Ledger(s.redis.client()), {p.name: p for p in load_pools(str(s.pools))})
        # the mirror keeps them set aside: a second wipe holds the same
        s.redis.wipe()
        wait_for(lambda: Ledger(s.redis.client()).is_ready(), timeout=30, what="the restore")
        exc = failure(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "networks": 0})
        assert type(exc).__name__ == "NoCapacity"
        # the operator drops the record once nothing runs on it: its room and port group
        # are free again, the other record's port group stays taken
        drop = cli.run("release", "bad-2", "--redis-url", s.redis.url, env=s.env)
        assert drop.returncode == 0 and drop.stdout.split() == ["bad-2"], drop
        again = call(s.app, "vcm.acquire", request={"vcpus": 3, "memory": 3, "networks": 1})
        assert port_groups_of(again) == ["pg-2"]
        check_invariants(Ledger(s.redis.client()), {p.name: p for p in load_pools(str(s.pools))})
    finally:
        s.stop()


def test_port_groups_a_network_only_lease_shares_from_the_mirror_stay_held_as_they_were(
        tmp_path):
    """A mirror written when network-only leases shared their install's port groups: c1 (the
    install's compute lease) and x1 (network-only) on pg-1, x2 and x3 (network-only) on
    pg-2, all of owner ci and boskos-lease-id job. Restored, each port group keeps its
    holders and stays taken until the last ends; the install's new leases follow the rule:
    a network-only one takes a free port group, a compute one shares pg-1 through c1 (never
    pg-2, which only network-only leases hold), and once c1 is gone, pg-1 is x1's alone."""
    job = {"owner": "ci", "labels": {"boskos-lease-id": "job"}}
    records = [lease_record("c1", 1, "pg-1", **job), lease_record("x1", 0, "pg-1", **job),
               lease_record("x2", 0, "pg-2", **job), lease_record("x3", 0, "pg-2", **job)]
    s = stack_on_mirror(tmp_path, None, {"format": 1, "seq": 5, "leases": records},
                        queries=False)  # no query task sent
    try:
        ledger = Ledger(s.redis.client())
        asked = {"owner": "ci", "labels": {"boskos-lease-id": "job"}}
        # the worker restored the mirror before its first answer
        (x4,) = call(s.app, "vcm.acquire", request={"vcpus": 0, "memory": 0, **asked})
        assert port_groups_of([x4]) == ["pg-3"]
        nets = {k: sorted(v.split()) for k, v in audit(ledger)["nets"].items()}
        assert nets == {"vc1|pg-1": ["c1", "x1"], "vc1|pg-2": ["x2", "x3"],
                        "vc1|pg-3": [x4["metadata"]["name"]]}
        (c2,) = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "networks": 2,
                                                    **asked})
        assert port_groups_of([c2]) == ["pg-1", "pg-4"]
        assert sorted(audit(ledger)["nets"]["vc1|pg-1"].split()) == sorted(
            ["c1", "x1", c2["metadata"]["name"]])
        # wiped and restored again (from the mirror the worker keeps): the same holders
        before = audit(ledger)["nets"]
        s.redis.wipe()
        wait_for(lambda: Ledger(s.redis.client()).is_ready(), timeout=30, what="the restore")
        ledger = Ledger(s.redis.client())
        assert {k: sorted(v.split()) for k, v in audit(ledger)["nets"].items()} == {
            k: sorted(v.split()) for k, v in before.items()}
        call(s.app, "vcm.release", lease_ids=["c1", c2["metadata"]["name"]], owner="ci")
        assert audit(ledger)["nets"]["vc1|pg-1"] == "x1"  # still taken, by x1 alone
        (c3,) = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, **asked})
        assert port_groups_of([c3]) == ["pg-4"]  # pg-1 is no longer the install's to share
        call(s.app, "vcm.release", lease_ids=["x1", "x2"], owner="ci")
        assert audit(ledger)["nets"]["vc1|pg-2"] == "x3" and "vc1|pg-1" not in \
            audit(ledger)["nets"]
        check_invariants(ledger, {p.name: p for p in load_pools(str(s.pools))})
        call(s.app, "vcm.release", owner="ci")
        assert audit(ledger)["nets"] == {}
    finally:
        s.stop()


def test_a_record_whose_holdings_cannot_be_read_stops_placement_until_dropped(
        tmp_path, mirror_kind):
    """Nothing of the record says which pool or port group it holds: the worker restores the
    rest and places nothing (NoCapacity naming the record and how to drop it; a request that
    may wait waits in line) while renews and releases go on; `vcm release ID` (a real
    process) drops it and the waiting request is served."""
    good = lease_record("good-1", 2, "pg-1")
    lost = {"metadata": {"name": "lost-1"}, "status": {"pool": ["p1"]}, "spec": "?"}
    s = stack_on_mirror(tmp_path, mirror_kind, {"format": 1, "seq": 5, "leases": [good, lost]},
                        queries=False)  # no query task sent
    api = ApiServer(s.env).start()
    try:
        exc = failure(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "wait": 0})
        assert type(exc).__name__ == "NoCapacity"
        assert "lost-1" in str(exc) and "vcm release" in str(exc)
        assert set(exc.args[1]["reasons"]) == {"p1"}
        assert call(s.app, "vcm.renew", lease_id="good-1")["metadata"]["name"] == "good-1"
        assert "lost-1" in s.procs[0].output()
        assert _set_aside_metric(api) == {"counted": 0, "unreadable": 1}
        waiter = s.app.send_task("vcm.acquire", queue="placement",
                                 kwargs={"request": {"vcpus": 1, "memory": 1, "wait": 120}})
        wait_for(lambda: waiter.state == "WAITING", what="the request to wait in line")
        drop = subprocess.run([sys.executable, "-m", "workers.cli", "release", "lost-1",
                               "--redis-url", s.redis.url], cwd=ROOT, env=s.env,
                              capture_output=True, text=True, timeout=60)
        assert drop.returncode == 0 and drop.stdout.split() == ["lost-1"], drop
        assert port_groups_of(waiter.get(timeout=30)) == ["pg-2"]  # served once it was dropped
        assert call(s.app, "vcm.release", lease_ids=["good-1"]) == ["good-1"]
        assert _set_aside_metric(api) == {"counted": 0, "unreadable": 0}
    finally:
        api.stop()
        s.stop()


def _set_aside_metric(api: ApiServer) -> dict[str, float]:
    """vcm_set_aside_records by holdings, scraped from GET /metrics."""
    resp = api.client().get("/metrics")
    assert resp.status_code == 200
    return {s.labels["holdings"]: s.value
            for family in text_string_to_metric_families(resp.text)
            for s in family.samples if s.name == "vcm_set_aside_records"}


def test_answered_leases_survive_a_worker_sigkill_and_a_redis_wipe(tmp_path):
    """With the file mirror each change is journaled before it is answered: kill -9 the
    worker right after the answers, wipe Redis, start a new worker: every answered lease is
    back, none that was released, and no whole save was needed in between."""
    s = Stack(tmp_path, POOLS, queries=False)  # no query task sent
    try:
        mirror = FileMirror(s.env["VCM_MIRROR_FILE"])
        wait_for(lambda: mirror.path.exists(), what="the first whole save")
        saved_at = mirror.path.stat().st_mtime_ns
        kept, released = [], []
        for i in range(12):
            leases = call(s.app, "vcm.acquire", request={
                "vcpus": 2, "memory": 4, "owner": f"o{i % 2}", "request-id": f"k-{i}"})
            (released if i % 3 == 0 else kept).extend(x["metadata"]["name"] for x in leases)
        assert call(s.app, "vcm.release", lease_ids=released, owner=None) == released
        placement = s.procs[0]
        placement.stop(signal.SIGKILL)
        assert mirror.path.stat().st_mtime_ns == saved_at  # the journal carried every change
        assert len(mirror.journal.read_text().splitlines()) == 13
        s.redis.wipe()
        again = Worker(s.env, "placement").start()
        s.procs[0] = again
        wait_for(lambda: Ledger(s.redis.client()).is_ready(), what="the restore")
        ledger = Ledger(s.redis.client())
        assert sorted(audit(ledger)["leases"]) == sorted(kept)
        check_invariants(ledger, {p.name: p for p in load_pools(str(s.pools))})
        assert call(s.app, "vcm.release", lease_ids=kept[:1], owner="o1") == kept[:1]
    finally:
        s.stop()


def test_a_release_is_synced_by_the_publisher_within_its_round(tmp_path):
    """Releases are answered once written to the journal; the publisher fdatasyncs them in
    its next round, and only then does the mirror status show their seq."""
    s = Stack(tmp_path, POOLS, queries=False)  # no query task sent
    try:
        mirror = FileMirror(s.env["VCM_MIRROR_FILE"])
        wait_for(lambda: mirror.path.exists(), what="the first whole save")
        leases = call(s.app, "vcm.acquire", request={"vcpus": 2, "memory": 4, "owner": "o"})
        ids = [x["metadata"]["name"] for x in leases]
        assert call(s.app, "vcm.release", lease_ids=ids, owner="o") == ids
        r = s.redis.client()
        seq = int(r.get("vcm:seq"))

        def synced() -> bool:
            st = read_status(Ledger(r))
            return int(st.get("seq", -1)) >= seq and int(st.get("journal-records", 0)) >= 2

        wait_for(synced, timeout=10, what="the release's seq in the mirror status")
        assert mirror.load()["leases"] == []
    finally:
        s.stop()


def _ids(leases: list[dict]) -> list[str]:
    return [x["metadata"]["name"] for x in leases]


def test_answered_changes_survive_redis_going_back_to_an_older_state(tmp_path):
    """Leases granted (and a release made) after the state Redis went back to were answered:
    the mirror holds them, so it wins over the older Redis, before any new write."""
    s = Stack(tmp_path, POOLS, queries=False)  # no query task sent
    try:
        pools = {p.name: p for p in load_pools(str(s.pools))}
        client = s.redis.client()
        a = _ids(call(s.app, "vcm.acquire", request={"vcpus": 2, "memory": 4, "owner": "o",
                                                     "request-id": "a"}))
        old = keep_ledger(client)
        b = _ids(call(s.app, "vcm.acquire", request={"vcpus": 3, "memory": 4, "owner": "o",
                                                     "request-id": "b", "vcenters": 2}))
        c = _ids(call(s.app, "vcm.acquire", request={"vcpus": 4, "memory": 4, "owner": "p",
                                                     "request-id": "c"}))
        assert call(s.app, "vcm.release", lease_ids=a, owner="o") == a
        go_back(client, old)
        assert sorted(audit(Ledger(client))["leases"]) == sorted(a)
        d = _ids(call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "owner": "p",
                                                     "request-id": "d"}))
        ledger = Ledger(client)
        snap = check_invariants(ledger, pools)
        assert sorted(snap["leases"]) == sorted(b + c + d)
        again = call(s.app, "vcm.acquire", request={"vcpus": 3, "memory": 4, "owner": "o",
                                                    "request-id": "b", "vcenters": 2})
        assert sorted(_ids(again)) == sorted(b)  # rebuilt request-ids list leases by name
        wait_for(lambda: "went back" in s.procs[0].output(), what="the log line")
        mirrored = FileMirror(s.env["VCM_MIRROR_FILE"]).load()
        assert sorted(x["metadata"]["name"] for x in mirrored["leases"]) == sorted(b + c + d)
    finally:
        s.stop()


def test_a_worker_started_on_a_redis_that_went_back_takes_the_newer_mirror(tmp_path):
    """The worker went down with Redis (one node): the new worker compares the mirror with
    the same Redis ledger (its epoch) before it takes any task."""
    s = Stack(tmp_path, POOLS, queries=False)  # no query task sent
    try:
        pools = {p.name: p for p in load_pools(str(s.pools))}
        client = s.redis.client()
        mirror = FileMirror(s.env["VCM_MIRROR_FILE"])
        wait_for(lambda: (mirror.load() or {}).get("epoch"), what="a whole save with its epoch")
        a = _ids(call(s.app, "vcm.acquire", request={"vcpus": 2, "memory": 4, "owner": "o"}))
        old = keep_ledger(client)
        b = _ids(call(s.app, "vcm.acquire", request={"vcpus": 3, "memory": 4, "owner": "o"}))
        assert call(s.app, "vcm.release", lease_ids=a, owner="o") == a
        s.procs[0].stop(signal.SIGKILL)
        go_back(client, old)
        s.procs[0] = Worker(s.env, "placement").start()
        assert sorted(audit(Ledger(client))["leases"]) == sorted(b)
        check_invariants(Ledger(client), pools)
        assert "went back" in s.procs[0].output()
    finally:
        s.stop()
