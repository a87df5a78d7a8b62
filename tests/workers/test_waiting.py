"""Waiting in line, the reaper and the rollup on a real beat."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from tests.support.audit import audit
from tests.support.helpers import call, check_invariants, reset_ledger
from tests.support.procs import Stack, wait_for
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import load_pools


def pools_yaml(n: int = 1, vcpus: int = 10) -> str:
    return yaml.safe_dump({"pools": [
        {"name": f"p{i}", "vcenter": f"vc{i}", "datacenter": "dc", "cluster": "c",
         "datastore": "ds", "vcpus": vcpus, "memory": 1000, "storage": 1000,
         "networks": [{"port-group": f"pg{i}-{j}", "vlan": j} for j in range(20)]}
        for i in range(1, n + 1)]})


@pytest.fixture(scope="module")
def shared_stack2(tmp_path_factory):
    """Two pools, started once for the tests that need nothing else."""
    s = Stack(tmp_path_factory.mktemp("waiting"), pools_yaml(2))
    yield s
    s.stop()


@pytest.fixture()
def stack2(shared_stack2):
    """That stack with an empty ledger, line and mirror."""
    reset_ledger(shared_stack2.redis.client(), shared_stack2.env["VCM_MIRROR_FILE"])
    return shared_stack2


def send(app, name: str, **kw):
    queue = "queries" if name in ("vcm.show_pools", "vcm.waiting", "vcm.usage_history") \
        else "placement"
    return app.send_task(name, kwargs=kw, queue=queue)


def fill_and_park(app):
    """Fill both pools, then send an acquire (owner w) that waits in line: (held, its result)."""
    held = [call(app, "vcm.acquire", request={"vcpus": 10, "memory": 1, "required-pool": p})[0]
            for p in ("p1", "p2")]
    r = send(app, "vcm.acquire", request={"vcpus": 6, "memory": 1, "wait": 60, "owner": "w"})
    wait_for(lambda: r.state == "WAITING", timeout=10, what="WAITING state")
    return held, r


def test_waiting_acquire_is_granted_right_after_release(stack2):
    app = stack2.app
    ledger = Ledger(stack2.redis.client())
    held, r = fill_and_park(app)
    assert r.info["position"] == 1
    assert r.info["reasons"]["p1"] == "insufficient vcpus (need 6, free 0)"
    assert len(call(app, "vcm.waiting")) == 1
    assert "granted-after-wait" not in ledger.stats()
    call(app, "vcm.release", lease_ids=[held[1]["metadata"]["name"]])
    # the release itself granted the waiter (not a later round): when the release task has
    # answered, the waiter's lease is already in the ledger and the line is empty
    mine = [x for x in audit(ledger)["leases"].values() if x["status"]["owner"] == "w"]
    assert [(x["status"]["pool"], x["spec"]["vcpus"]) for x in mine] == [("p2", 6)]
    assert ledger.waiters() == []
    assert ledger.stats()["granted-after-wait"] == 1
    leases = r.get(timeout=10)
    assert [x["metadata"]["name"] for x in leases] == [mine[0]["metadata"]["name"]]
    assert leases[0]["status"]["pool"] == "p2" and leases[0]["status"]["owner"] == "w"
    assert call(app, "vcm.waiting") == []
    check_invariants(ledger, {p.name: p for p in load_pools(str(stack2.pools))})
    assert ledger.stats()["granted-after-wait"] == 1


def test_wait_runs_out_with_wait_timeout_and_holds_nothing(stack2):
    app = stack2.app
    ledger = Ledger(stack2.redis.client())
    for p in ("p1", "p2"):
        call(app, "vcm.acquire", request={"vcpus": 10, "memory": 1, "required-pool": p})
    before = audit(ledger)
    r = send(app, "vcm.acquire", request={"vcpus": 6, "memory": 1, "wait": 2})
    with pytest.raises(Exception) as info:
        r.get(timeout=15)
    assert type(info.value).__name__ == "WaitTimeout"
    assert audit(ledger) == before
    assert call(app, "vcm.waiting") == []


def test_cancel_wait_takes_a_parked_acquire_out_of_the_line(stack2):
    """vcm.cancel_wait (sent by the HTTP shim when a waiting client hangs up): the task fails
    with WaitTimeout, the line is empty, and a later release grants it nothing."""
    app = stack2.app
    ledger = Ledger(stack2.redis.client())
    held, r = fill_and_park(app)
    assert call(app, "vcm.cancel_wait", task_id="no-such-task") is False
    assert call(app, "vcm.cancel_wait", task_id=r.id) is True
    with pytest.raises(Exception) as info:
        r.get(timeout=10)
    assert type(info.value).__name__ == "WaitTimeout" and "went away" in str(info.value)
    assert call(app, "vcm.waiting") == []
    assert call(app, "vcm.cancel_wait", task_id=r.id) is False  # twice is harmless
    call(app, "vcm.release", lease_ids=[held[1]["metadata"]["name"]])
    assert "w" not in {x["status"]["owner"] for x in audit(ledger)["leases"].values()}
    # all of p2's room is still free: nobody was granted it after the cancel
    room = call(app, "vcm.acquire", request={"vcpus": 10, "memory": 1, "required-pool": "p2"})
    assert [x["status"]["pool"] for x in room] == ["p2"]
    assert "granted-after-wait" not in ledger.stats()
    bad = send(app, "vcm.cancel_wait", task_id=7)
    with pytest.raises(Exception) as info:
        bad.get(timeout=10)
    assert type(info.value).__name__ == "InvalidRequest" and "task_id" in str(info.value)


def test_large_request_at_the_head_is_not_starved_by_small_ones(stack2):
    """Small requests keep arriving and backfill p2; the head keeps p1 until it fits."""
    app = stack2.app
    ledger = Ledger(stack2.redis.client())
    small = {"vcpus": 2, "memory": 1}
    mine = {p: [call(app, "vcm.acquire", request={**small, "required-pool": p})[0]
                ["metadata"]["name"] for _ in range(5)] for p in ("p1", "p2")}
    big = send(app, "vcm.acquire", request={"vcpus": 8, "memory": 1, "wait": 60})
    wait_for(lambda: big.state == "WAITING", timeout=10, what="big parked")
    stop = threading.Event()
    placed_small: list[str] = []

    def stream() -> None:
        turn = 0
        while not stop.is_set():
            pool = ("p1", "p2")[turn % 2]
            turn += 1
            if mine[pool]:
                call(app, "vcm.release", lease_ids=[mine[pool].pop(0)])
            r = send(app, "vcm.acquire", request=small)
            try:
                lease = r.get(timeout=10)[0]
            except Exception as exc:  # noqa: BLE001
                assert type(exc).__name__ == "NoCapacity", exc
            else:
                placed_small.append(lease["status"]["pool"])
                mine[lease["status"]["pool"]].append(lease["metadata"]["name"])
            time.sleep(0.05)

    t = threading.Thread(target=stream)
    t.start()
    try:
        leases = big.get(timeout=30)
    finally:
        stop.set()
        t.join()
    assert leases[0]["spec"]["vcpus"] == 8
    held_pool = leases[0]["status"]["pool"]
    assert placed_small, "small requests should have backfilled the other pool"
    # while the big one waited, no small request took room on the pool held for it
    assert held_pool not in placed_small[: len(placed_small) // 2 or 1]
    check_invariants(ledger, {p.name: p for p in load_pools(str(stack2.pools))})


def rollup_ids(client) -> list[bytes]:
    return [entry_id for entry_id, _ in client.xrange("vcm:usage")]


def test_beat_reaps_expired_leases_and_the_waiter_gets_the_room(tmp_path):
    s = Stack(tmp_path, pools_yaml(1), beat=True, VCM_REAP_INTERVAL="1s",
              VCM_ROLLUP_INTERVAL="1s", VCM_USAGE_RETENTION="3s")
    try:
        app = s.app
        ledger = Ledger(s.redis.client())
        short = call(app, "vcm.acquire", request={"vcpus": 10, "memory": 1, "ttl": 2,
                                                  "owner": "sleepy"})[0]
        waiter = send(app, "vcm.acquire", request={"vcpus": 5, "memory": 1, "wait": 30})
        leases = waiter.get(timeout=20)
        assert leases[0]["status"]["pool"] == "p1"
        assert short["metadata"]["name"] not in audit(ledger)["leases"]
        record = ledger.reaped()[0]
        assert record["id"] == short["metadata"]["name"] and record["owner"] == "sleepy"
        assert ledger.stats()["reaps"] == 1
        gone = ledger.get_many([short["metadata"]["name"]])[0]
        assert gone["status"]["release-reason"] == "expired"
        # rollup history grows, and stays bounded by the retention (3 s at 1 s intervals)
        wait_for(lambda: ledger.usage_len() >= 3, timeout=15, what="rollups")
        first = rollup_ids(ledger.r)[0]
        wait_for(lambda: first not in rollup_ids(ledger.r), timeout=15,
                 what="the oldest rollup trimmed")
        # each rollup trims what is older than the retention before it: what is kept is never
        # older than 3 s before the newest rollup's snapshot (read in one XRANGE)
        rows = ledger.r.xrange("vcm:usage")
        newest = json.loads(rows[-1][1][b"s"])["ts"]
        assert int(rows[0][0].split(b"-")[0]) >= int(newest * 1000) - 3000 - 1, rows[0][0]
        history = call(app, "vcm.usage_history", pool="p1", since="1m")
        assert history and history[-1]["pools"]["p1"]["vcpus"] == 0.5
    finally:
        s.stop()


def test_renew_is_capped_by_the_maximum_lifetime(tmp_path):
    s = Stack(tmp_path, pools_yaml(1), VCM_MAX_LEASE_LIFETIME="2h")
    try:
        lease = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "ttl": "1h"})[0]
        renewed = call(s.app, "vcm.renew", lease_id=lease["metadata"]["name"],
                       owner="anonymous", ttl="90m")
        from workers.core.lease import parse_rfc3339 as t

        st = renewed["status"]
        assert t(st["expires-at"]) > t(lease["status"]["expires-at"])
        assert t(st["expires-at"]) - t(st["leased-at"]) <= 2 * 3600
        renewed = call(s.app, "vcm.renew", lease_id=lease["metadata"]["name"],
                       owner="anonymous", ttl="2h")
        assert t(renewed["status"]["expires-at"]) - t(st["leased-at"]) == 2 * 3600
    finally:
        s.stop()


def test_usage_over_http(tmp_path):
    """GET /usage serves the rollups (same data as `vcm usage`)."""
    import subprocess
    import sys

    import httpx

    from tests.support.procs import ROOT, free_port

    s = Stack(tmp_path, pools_yaml(1))
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "workers.cli", "api", "--port", str(port)],
                           env=s.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        call(s.app, "vcm.acquire", request={"vcpus": 5, "memory": 1})
        call(s.app, "vcm.rollup_usage")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(url + "/healthz").status_code == 200, timeout=20,
                 what="the API")
        rows = httpx.get(url + "/usage", params={"pool": "p1", "since": "1h"}).json()
        assert rows[-1]["pools"]["p1"]["vcpus"] == 0.5
        bad = httpx.get(url + "/usage", params={"since": "forever"})
        assert bad.status_code == 422 and bad.json()["details"]["field"] == "since"
    finally:
        api.terminate()
        api.wait(10)
        s.stop()
