"""The ledger survives Redis losing everything: the worker restores it from the mirror."""

from __future__ import annotations

import json
import signal

import yaml

from tests.helpers import call, check_invariants, go_back, keep_ledger
from tests.support.procs import Stack, Worker, wait_for
from workers.adapters.ledger import Ledger
from workers.adapters.mirror import FileMirror
from workers.adapters.pools_file import load_pools
from workers.publisher import read_status

POOLS = yaml.safe_dump({"pools": [
    {"name": f"p{i}", "vcenter": f"vc{i % 3}", "datacenter": "dc", "cluster": f"c{i}",
     "datastore": "ds", "vcpus": 200, "memory": 2000, "storage": 5000,
     "networks": [{"port-group": f"pg{i}-{j}", "vlan": j} for j in range(30)]}
    for i in range(4)]})


def test_mirror_matches_ledger_and_redis_wipe_restores_everything(tmp_path):
    s = Stack(tmp_path, POOLS)
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


def test_redis_wins_when_it_has_leases_the_mirror_lacks(tmp_path):
    s = Stack(tmp_path, POOLS)
    try:
        lease = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1})[0]
        path = s.env["VCM_MIRROR_FILE"]
        FileMirror(path).save({"format": 1, "seq": 0, "leases": []})  # a stale mirror
        call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1})
        wait_for(lambda: len(json.loads(open(path).read())["leases"]) == 2, timeout=10,
                 what="the mirror rewritten from Redis")
        names = {x["metadata"]["name"] for x in FileMirror(path).load()["leases"]}
        assert lease["metadata"]["name"] in names
    finally:
        s.stop()


def test_answered_leases_survive_a_worker_sigkill_and_a_redis_wipe(tmp_path):
    """With the file mirror each change is journaled before it is answered: kill -9 the
    worker right after the answers, wipe Redis, start a new worker: every answered lease is
    back, none that was released, and no whole save was needed in between."""
    s = Stack(tmp_path, POOLS)
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
        assert sorted(ledger.audit()["leases"]) == sorted(kept)
        check_invariants(ledger, {p.name: p for p in load_pools(str(s.pools))})
        assert call(s.app, "vcm.release", lease_ids=kept[:1], owner="o1") == kept[:1]
    finally:
        s.stop()


def test_a_release_is_synced_by_the_publisher_within_its_round(tmp_path):
    """Releases are answered once written to the journal; the publisher fdatasyncs them in
    its next round, and only then does the mirror status show their seq."""
    s = Stack(tmp_path, POOLS)
    try:
        mirror = FileMirror(s.env["VCM_MIRROR_FILE"])
        wait_for(lambda: mirror.path.exists(), what="the first whole save")
        leases = call(s.app, "vcm.acquire", request={"vcpus": 2, "memory": 4, "owner": "o"})
        ids = [x["metadata"]["name"] for x in leases]
        assert call(s.app, "vcm.release", lease_ids=ids, owner="o") == ids
        r = s.redis.client()
        seq = int(r.get("vcm:seq"))

        def synced() -> bool:
            st = read_status(r)
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
    s = Stack(tmp_path, POOLS)
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
        assert sorted(Ledger(client).audit()["leases"]) == sorted(a)
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
    s = Stack(tmp_path, POOLS)
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
        assert sorted(Ledger(client).audit()["leases"]) == sorted(b)
        check_invariants(Ledger(client), pools)
        assert "went back" in s.procs[0].output()
    finally:
        s.stop()
