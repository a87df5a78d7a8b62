"""Fleet metrics on GET /metrics: after acquires, a refusal, a waited grant, a
release and a reap, the values read from the ledger are exactly right. A private redis-server,
real workers and the real HTTP server; the scrape is parsed with prometheus_client's parser."""

from __future__ import annotations

import math
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api_shim.fleet_metrics import FleetCollector, FleetReader
from tests.support.api import ApiServer
from tests.support.helpers import call
from tests.support.procs import ROOT, Stack, wait_for

POOLS = (ROOT / "examples" / "pools.yaml").read_text()
RESOURCES = ("vcpus", "memory", "storage", "networks")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("metrics"), POOLS)
    api = ApiServer(stack.env).start()
    yield stack, api
    api.stop()
    stack.stop()


def scrape(http) -> dict[tuple[str, tuple], float]:
    resp = http.get("/metrics")
    assert resp.status_code == 200
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def acquire(http, **body) -> list[dict]:
    resp = http.post("/acquire", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def task_state(http, task_id: str) -> dict:
    return http.get(f"/tasks/{task_id}").json()


def test_fleet_metrics_after_a_day_in_the_life(env):
    stack, api = env
    http = api.client()
    m = scrape(http)
    assert value(m, "vcm_redis_up") == 1
    assert value(m, "vcm_active_leases") == 0 and value(m, "vcm_waiting_requests") == 0
    assert value(m, "vcm_placements_total") == 0
    assert value(m, "vcm_refusals_total", reason="NoCapacity") == 0  # known reasons start at 0
    assert value(m, "vcm_acquire_latency_seconds_count") == 0

    acquire(http, vcpus=10, memory=100, storage=100, owner="m-a", **{"required-pool": "pool2"})
    acquire(http, vcpus=20, memory=200, storage=200, owner="m-b", **{"required-pool": "pool3"})
    big = {"vcpus": 100, "memory": 1500, "storage": 1000, "required-pool": "pool1"}
    c = acquire(http, owner="m-big", **big)
    # refused twice: no room now (NoCapacity), and could never fit (InvalidRequest, by the worker)
    resp = http.post("/acquire", json={**big, "owner": "m-refused"})
    assert resp.status_code == 409 and resp.json()["error"] == "NoCapacity", resp.text
    resp = http.post("/acquire", json={"vcpus": 100000, "memory": 1, "owner": "m-huge"})
    assert resp.status_code == 422 and resp.json()["error"] == "InvalidRequest", resp.text

    # a waiting request, granted when the big lease is released
    resp = http.post("/acquire?async=true", json={**big, "owner": "m-wait", "wait": "60s"})
    assert resp.status_code == 202, resp.text
    waiter = resp.json()["task-id"]
    wait_for(lambda: task_state(http, waiter)["state"] == "WAITING", what="the request to park")
    wait_for(lambda: value(scrape(http), "vcm_waiting_requests") == 1, what="waiting == 1")
    time.sleep(0.4)  # so that its latency (incl. waiting) is clearly above the quick ones'
    resp = http.post("/release", json={"lease-ids": [c[0]["metadata"]["name"]],
                                       "owner": "m-big"})
    assert resp.status_code == 200, resp.text
    wait_for(lambda: task_state(http, waiter)["state"] == "SUCCESS", what="the waited grant")

    # a lease that expires, reaped (as beat would)
    acquire(http, vcpus=1, memory=1, networks=0, owner="m-ttl", ttl="1s")
    time.sleep(2.1)
    assert len(call(stack.app, "vcm.reap_expired")) == 1

    snap = call(stack.app, "vcm.rollup_usage", timeout=20)  # what beat does every minute
    pools = {p["spec"]["name"]: p for p in http.get("/show-pools").json()}

    expected = {
        "vcm_placements_total": 5,  # a, b, big, the waiter, the one reaped
        "vcm_releases_total": 1,
        "vcm_reaps_total": 1,
        "vcm_granted_after_wait_total": 1,
        "vcm_active_leases": 3,
        "vcm_waiting_requests": 0,
        "vcm_acquire_latency_seconds_count": 5,
        "vcm_mirror_lag_seq": 0,
        "vcm_mirror_failing": 0,
    }

    want = {**expected, "NoCapacity": 1, "InvalidRequest": 1}
    got: dict = {}

    def settled():  # refusals are counted just after the failure is stored: poll briefly
        m = scrape(http)
        got.update({name: value(m, name) for name in expected})
        for reason in ("NoCapacity", "InvalidRequest"):
            got[reason] = value(m, "vcm_refusals_total", reason=reason)
        return m if got == want else None

    try:
        m = wait_for(settled, timeout=10, interval=0.2, what="the counters")
    except TimeoutError:
        assert got == want
    assert value(m, "vcm_refusals_total", reason="WaitTimeout") == 0
    assert value(m, "vcm_redis_up") == 1

    # the histogram: cumulative, +Inf is the count, the waited one is above 0.25 s
    buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in m.items()
                      if name == "vcm_acquire_latency_seconds_bucket"))
    assert buckets[-1] == (math.inf, 5)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert dict(buckets)[0.25] <= 4 and dict(buckets)[3600.0] == 5
    assert value(m, "vcm_acquire_latency_seconds_sum") >= 0.4

    # utilization: exactly the latest rollup, which agrees with show-pools
    for name, pool in pools.items():
        st, vc = pool["status"], pool["spec"]["vcenter"]
        want = {"vcpus": st["vcpus-usage"], "memory": st["memory-usage"],
                "storage": st["datastore-usage"], "networks": st["network-usage"]}
        for resource in RESOURCES:
            got = value(m, "vcm_pool_utilization", pool=name, vcenter=vc, resource=resource)
            assert got == pytest.approx(want[resource]), (name, resource)
            assert got == snap["pools"][name][resource]
    assert value(m, "vcm_pool_utilization", pool="pool2", vcenter="vcenter2.example.com",
                 resource="vcpus") == pytest.approx(10 / 120, abs=1e-4)
    for vc, row in snap["vcenters"].items():
        for resource in RESOURCES:
            assert value(m, "vcm_vcenter_utilization", vcenter=vc,
                         resource=resource) == row[resource]
    # vcenter3 is pool3 (20 of 40 vCPUs used) plus the idle pool4 (80)
    assert value(m, "vcm_vcenter_utilization", vcenter="vcenter3.example.com",
                 resource="vcpus") == pytest.approx(20 / 120, abs=1e-4)
    # pool1 holds the waiter's lease now (big, granted after the release)
    assert value(m, "vcm_pool_utilization", pool="pool1", vcenter="vcenter1.example.com",
                 resource="memory") == pytest.approx(1500 / 1600, abs=1e-4)
    assert 0 <= value(m, "vcm_rollup_age_seconds") < 30
    assert 0 <= value(m, "vcm_mirror_last_write_age_seconds") < 30


def test_a_dead_redis_is_vcm_redis_up_0_not_a_failed_scrape():
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(FleetCollector("redis://127.0.0.1:1/0"))  # describe: no Redis needed
    text = generate_latest(registry).decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples == {"vcm_redis_up": 0}


def test_odd_data_in_redis_does_not_break_the_scrape(redis_server):
    from prometheus_client import CollectorRegistry, generate_latest

    client = redis_server.client()
    prefix = "vcm-odd-test:"
    try:
        client.hset(prefix + "stats", mapping={"placements": "x", "refused:NoCapacity": 3})
        client.hset(prefix + "latency", mapping={"0.005": 1, "1": 1, "count": 2, "sum": 0.5})
        client.xadd(prefix + "usage", {"s": "not json"})
        client.hset(prefix + "mirror", mapping={"seq": 4, "ledger-seq": 7, "error": "boom"})
        registry = CollectorRegistry()
        registry.register(FleetCollector(FleetReader(redis_server.url, prefix=prefix)))
        text = generate_latest(registry).decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples[("vcm_redis_up", ())] == 1
        assert samples[("vcm_placements_total", ())] == 0
        assert samples[("vcm_refusals_total", (("reason", "NoCapacity"),))] == 3
        assert samples[("vcm_acquire_latency_seconds_bucket", (("le", "0.005"),))] == 1
        assert samples[("vcm_acquire_latency_seconds_bucket", (("le", "0.5"),))] == 1
        assert samples[("vcm_acquire_latency_seconds_bucket", (("le", "1.0"),))] == 2
        assert samples[("vcm_acquire_latency_seconds_bucket", (("le", "+Inf"),))] == 2
        assert samples[("vcm_mirror_lag_seq", ())] == 3
        assert samples[("vcm_mirror_failing", ())] == 1
        assert not any(name == "vcm_pool_utilization" for name, _ in samples)
    finally:
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)
        client.close()


@pytest.mark.parametrize(("mirror", "seq", "lag", "failing"), [
    ({}, 9, None, False),  # no status hash: the mirror is off
    ({"seq": "9", "ledger-seq": "9", "error": "", "state": "ok"}, 9, 0, False),
    ({"seq": "9", "ledger-seq": "9", "written-at": "1"}, 12, 3, False),  # writes still pending
    ({"seq": "9", "ledger-seq": "11", "error": "boom"}, None, 2, True),  # no state: the error
    ({"seq": "9", "ledger-seq": "11", "error": "too big", "state": "too-large"}, 11, 2, True),
    ({"seq": "5", "ledger-seq": "3"}, 3, 0, False),  # restored from an older mirror: not < 0
])
def test_mirror_lag_and_failing(mirror, seq, lag, failing):
    from api_shim.fleet_metrics import FleetSnapshot

    snap = FleetSnapshot(at=time.time(), mirror=mirror, seq=seq)
    assert snap.mirror_lag == lag
    assert snap.mirror_failing is failing
