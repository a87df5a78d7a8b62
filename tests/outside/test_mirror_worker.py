"""The placement worker with the ConfigMap mirror, end to end: real redis-server, real Celery
workers, the unmodified kubernetes client talking HTTP to tests.support.kube_apiserver.

Figures (API writes of a burst of placements, outage catch-up, the size of sharded leases) are
printed; run with -s to see them (bench/bench_mirror.py measures the mirror's cost).
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import signal
import string
import threading
import time
import zlib
from pathlib import Path

import pytest
import yaml
from celery import Celery

from tests.support.audit import audit
from tests.support.configmap_mirror import chunk_sizes
from tests.support.helpers import call, check_invariants, go_back, keep_ledger
from tests.support.kube_apiserver import KubeApiServer
from tests.support.procs import RedisServer, Stack, Worker, wait_for
from tests.support.rbac import deploy_rbac, kube_env_as_deployed, mirror_configmap
from workers.adapters.ledger import Ledger
from workers.adapters.mirror.configmap import ConfigMapMirror
from workers.adapters.pools_file import PoolsFile, load_pools
from workers.adapters.replies import CeleryReplies, OutboxReplies
from workers.publisher.status import read_status
from workers.publisher.thread import Publisher
from workers.service.capacity import Capacity
from workers.settings import Settings

NS, NAME = mirror_configmap()  # as deploy/ names it: its RBAC Role grants exactly these

# small pools with port groups (for the contents and the wipe tests)
NET_POOLS = yaml.safe_dump({"pools": [
    {"name": f"p{i}", "vcenter": f"vc{i % 3}", "datacenter": "dc", "cluster": f"c{i}",
     "datastore": "ds", "vcpus": 400, "memory": 4000, "storage": 50000,
     "networks": [{"port-group": f"pg{i}-{j}", "vlan": j + 1} for j in range(40)]}
    for i in range(4)]})
# room for thousands of small leases without port groups
BIG_POOLS = yaml.safe_dump({"pools": [
    {"name": f"pool-{i}", "vcenter": f"vc{i % 3}.example.com", "datacenter": f"dc{i % 3}",
     "cluster": f"cluster-{i}", "datastore": f"datastore-{i}", "vcpus": 2000,
     "memory": 20000, "storage": 200000, "networks": []}
    for i in range(10)]})
SMALL = {"vcpus": 1, "memory": 1, "networks": 0}
ALNUM = string.ascii_letters + string.digits
# VCM_MIRROR_SHARD_BYTES of the sharding and too-large tests: about 50 of big_request's
# leases fill a ConfigMap (at the default size, 1 MiB - 32 KiB, it takes some 3,000; the
# ConfigMap mirror's own tests, test_mirror.py, shard and refuse at that size)
SHARD = 16 * 1024


@pytest.fixture
def kube():
    """The test apiserver enforcing deploy/rbac.yaml (the test's own client is an admin)."""
    with KubeApiServer(rbac=deploy_rbac()) as server:
        yield server


def cm_stack(tmp_path, kube: KubeApiServer, pools: str, **env: str) -> Stack:
    """The placement worker talks to the apiserver with the token of the service account
    deploy/ gives it. No queries worker: no test here sends a query task."""
    return Stack(tmp_path, pools, env_of=kube_env_as_deployed(kube, tmp_path), queries=False,
                 VCM_CONFIGMAP=f"{NS}/{NAME}", **env)


def mirrored(kube: KubeApiServer) -> dict[str, dict]:
    """The active leases in the ConfigMap mirror, read through the test apiserver."""
    with ConfigMapMirror(NS, NAME, api_client=kube.api_client()) as mirror:
        snapshot = mirror.load()
    assert snapshot is not None, "the mirror holds no save"
    return {x["metadata"]["name"]: x for x in snapshot["leases"]}


def stored_leases(kube: KubeApiServer) -> dict[str, dict]:
    """The leases in the head ConfigMap, read from the test server's store (works while the
    API answers errors; a head-only save)."""
    head = kube.get(NS, NAME)
    assert not json.loads(head["data"]["mirror.json"])["shards"]
    snapshot = json.loads(zlib.decompress(base64.b64decode(head["binaryData"]["part-0"])))
    return {x["metadata"]["name"]: x for x in snapshot["leases"]}


def status(stack: Stack) -> dict:
    return read_status(Ledger(stack.redis.client()))


def settled(stack: Stack, ok) -> dict:
    """The status once `ok(status)`: the publisher writes it after the save's replies."""
    return wait_for(lambda: ok(st := status(stack)) and st, timeout=10,
                    what="the publisher's status of the last save")


def names(leases: list[dict]) -> list[str]:
    return [x["metadata"]["name"] for x in leases]


def big_request(rnd: random.Random, owner: str, rid: str) -> dict:
    """A lease that compresses badly: 253 random characters of boskos-lease-id and a long
    random request-id (about 310 bytes per lease in the compressed mirror)."""
    return dict(SMALL, owner=owner, **{"boskos-lease-id": "".join(rnd.choices(ALNUM, k=253)),
                                       "request-id": rid + "-" + "".join(rnd.choices(ALNUM,
                                                                                     k=100))})


def batch(stack: Stack, requests: list[dict], timeout: float = 120) -> list[list[dict]]:
    return call(stack.app, "vcm.acquire_batch", timeout=timeout, requests=requests)


def counters_in_use(snap: dict) -> dict:
    return {k: v for k, v in snap["counters"].items() if any(v)}


def test_mirror_equals_ledger_after_every_answer(tmp_path, kube):
    """Each answer is sent only once the mirror covers it, so right after any reply the
    ConfigMap holds exactly the ledger's active leases."""
    s = cm_stack(tmp_path, kube, NET_POOLS)
    try:
        pools = {p.name: p for p in load_pools(str(s.pools))}
        ledger = Ledger(s.redis.client())

        def same() -> None:
            assert mirrored(kube) == check_invariants(ledger, pools)["leases"]

        held = []
        for i in range(12):
            req = {"vcpus": 1 + i % 4, "memory": 2, "storage": 5 * (i % 3),
                   "vcenters": 1 + i % 2, "owner": f"job-{i % 3}", "request-id": f"rid-{i}"}
            held += call(s.app, "vcm.acquire", request=req)
            same()
        batched = [x for leases in batch(s, [dict(SMALL, owner="batch")] * 20) for x in leases]
        same()
        call(s.app, "vcm.release", lease_ids=names(batched[:3]), owner="batch")
        same()
        call(s.app, "vcm.release", owner="job-1")
        same()
        renewed = call(s.app, "vcm.renew", lease_id=batched[5]["metadata"]["name"],
                       owner="batch", ttl="2h")
        assert mirrored(kube)[renewed["metadata"]["name"]] == renewed
        same()
        # the status of a save is written after it: settle on the last one
        st = settled(s, lambda x: x.get("behind") == 0 and x.get("leases") == len(mirrored(kube))
                     and x.get("writes") == kube.writes)
        assert st["state"] == "ok" and st["error"] == ""
        assert st["leases"] > 0
        assert st["configmaps"] == 1 and st["max-configmaps"] == 9
        assert 0 < st["encoded-bytes"] < st["raw-bytes"]
    finally:
        s.stop()


BURST_CLIENTS, BURST_EACH = 10, 15


def test_a_burst_of_placements_is_group_committed(tmp_path, kube):
    """150 placements sent at once by 10 clients: a save covers every change made while the
    one before was in flight, so they take far fewer ConfigMap writes than placements
    (docs/durability.md). The API answers after 0.1 s, as a remote apiserver's round trips
    take their time: saves, not placements, are what holds the answers back, however slowly
    a busy machine runs the worker (the test apiserver answers at once: each save could
    cover one placement). The queue stays full through several saves, as in a longer burst:
    the writes per placement are what is checked (bench/bench_mirror.py counts them for
    1,000)."""
    s = cm_stack(tmp_path, kube, BIG_POOLS)
    try:
        call(s.app, "vcm.acquire", request=SMALL)  # warm up: first save, connections
        kube.set_latency(0.1)
        before = kube.writes
        results, errors = [], []

        def client(k: int) -> None:
            try:  # a burst: every request is sent before any answer is read
                sent = [s.app.send_task("vcm.acquire", queue="placement",
                                        kwargs={"request": dict(SMALL, owner=f"burst-{k}")})
                        for _ in range(BURST_EACH)]
                results.extend(r.get(timeout=300) for r in sent)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(BURST_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - started
        writes = kube.writes - before
        assert not errors, errors[:3]
        placements = BURST_CLIENTS * BURST_EACH
        assert len(results) == placements and all(len(x) == 1 for x in results)
        print(f"\n{placements} placements ({BURST_CLIENTS} clients x {BURST_EACH}, sent at "
              f"once): {writes} ConfigMap writes in {took:.1f}s ({status(s)['saves']} saves "
              "in all)")
        # one write per placement would be one each; grouped, a save covers every change made
        # since the one before (10-20 per save)
        assert writes <= placements // 2, \
            f"{writes} API writes for {placements} placements: not group-committed"
        got = mirrored(kube)
        assert {x[0]["metadata"]["name"] for x in results} <= set(got)
        assert got == audit(Ledger(s.redis.client()))["leases"]
    finally:
        s.stop()


def test_api_down_placement_goes_on_replies_wait_and_the_mirror_catches_up(tmp_path, kube):
    """The API down, first hanging past the requests' timeout (VCM_MIRROR_TIMEOUT), then
    answering 503: placement goes on in Redis, the answers wait for the mirror, the status
    shows the outage, and once the API is back every answer goes out."""
    s = cm_stack(tmp_path, kube, BIG_POOLS, VCM_MIRROR_TIMEOUT="1")
    try:
        first = call(s.app, "vcm.acquire", request=dict(SMALL, owner="before"))
        # the API goes down: first slow (requests hang past the mirror's 1 s timeout, and
        # answer 503 before the default 5 s) until a save has failed so, then failing fast
        kube.inject_fault(503, hang=2.5, count=None)
        results: list = []
        errors: list = []

        def client(k: int) -> None:
            try:
                for _ in range(10):
                    r = s.app.send_task("vcm.acquire", queue="placement",
                                        kwargs={"request": dict(SMALL, owner=f"out-{k}")})
                    results.append(r)
                    time.sleep(0.2)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
        for t in threads:
            t.start()
        release = s.app.send_task("vcm.release", queue="placement",
                                  kwargs={"lease_ids": names(first), "owner": "before"})
        for t in threads:
            t.join()
        assert not errors
        # placement goes on in Redis, every answer is held, the status shows the outage
        ledger = Ledger(s.redis.client())
        wait_for(lambda: len(ledger.leases()) == 100, timeout=20, what="100 placements")
        wait_for(lambda: status(s).get("state") == "failing", timeout=20,
                 what="vcm:mirror showing the failure (a save that timed out)")
        assert "timed out" in status(s)["error"], status(s)["error"]
        kube.clear_faults()
        kube.inject_fault(503, count=None)  # down, but answering fast now
        # the publisher writes its status between save attempts: under load the count of
        # held replies it last wrote may trail the 100 answers already waiting
        wait_for(lambda: status(s).get("held-replies", 0) >= 100, timeout=20,
                 what="vcm:mirror counting the 100 held replies")
        st = status(s)
        assert st["state"] == "failing" and st["error"] and st["failing-since"] > 0
        assert st["behind"] > 0 and st["held-replies"] >= 100 and st["failures"] >= 1
        assert st["lag-seconds"] > 0
        assert not any(r.ready() for r in results) and not release.ready()
        failures = st["failures"]
        # the saves go on being retried (with backoff) while the API stays down
        wait_for(lambda: status(s)["failures"] > failures, timeout=60, what="another retry")
        st = status(s)
        assert st["state"] == "failing" and st["seq"] < st["ledger-seq"]
        assert not any(r.ready() for r in results)
        # the API is back
        kube.clear_faults()
        up_at = time.monotonic()
        leases = [r.get(timeout=60) for r in results]
        assert release.get(timeout=60) == names(first)
        catch_up = time.monotonic() - up_at
        assert len(leases) == 100 and all(len(x) == 1 for x in leases)
        assert mirrored(kube) == audit(ledger)["leases"]
        st = settled(s, lambda x: x.get("state") == "ok" and x.get("behind") == 0)
        assert st["lag-seconds"] == 0 and st["held-replies"] == 0
        assert st["caught-up-after"] > 0 and st["failing-since"] == 0
        print(f"\nAPI down: 100 placements held, all answered {catch_up:.1f}s after the "
              f"API came back (outage seen by the mirror: {st['caught-up-after']:.1f}s, "
              f"{st['failures']} failed saves)")
        log = s.procs[0].output()
        assert "mirror save failed" in log and "mirror written again after" in log
    finally:
        s.stop()


def test_max_delay_releases_replies_unmirrored_loudly_and_counted(tmp_path, kube):
    """VCM_MIRROR_MAX_DELAY trades the promise for liveness: with the API down, an answer goes
    out after that long, with an ERROR in the log and the unmirrored-replies counter."""
    s = cm_stack(tmp_path, kube, BIG_POOLS, VCM_MIRROR_MAX_DELAY="1s")
    try:
        call(s.app, "vcm.acquire", request=SMALL)
        kube.inject_fault(503, count=None)
        lease = call(s.app, "vcm.acquire", request=SMALL, timeout=30)
        # it went out because the mirror had been failing for VCM_MIRROR_MAX_DELAY (counted
        # just after the answer went out)
        st = settled(s, lambda x: x.get("unmirrored-replies") == 1)
        assert st["state"] == "failing"
        assert st["failures"] >= 1 and st["seq"] < st["ledger-seq"]
        assert lease[0]["metadata"]["name"] not in stored_leases(kube)
        wait_for(lambda: "releasing replies the mirror does not cover" in s.procs[0].output(),
                 what="the ERROR line (logged just after the answers)")
        kube.clear_faults()
        wait_for(lambda: status(s)["state"] == "ok", timeout=20, what="the mirror back")
        assert mirrored(kube) == audit(Ledger(s.redis.client()))["leases"]
    finally:
        s.stop()


def test_redis_wiped_the_worker_restores_everything_from_the_configmap(tmp_path, kube):
    s = cm_stack(tmp_path, kube, NET_POOLS)
    try:
        pools = {p.name: p for p in load_pools(str(s.pools))}
        granted = {}
        for i in range(25):
            req = {"vcpus": 1 + i % 5, "memory": 4, "storage": 10 * (i % 3),
                   "vcenters": 1 + i % 2, "owner": f"job-{i % 4}", "request-id": f"rid-{i}"}
            granted[f"rid-{i}"] = names(call(s.app, "vcm.acquire", request=req))
        call(s.app, "vcm.release", owner="job-3")
        before = check_invariants(Ledger(s.redis.client()), pools)
        assert mirrored(kube) == before["leases"]

        s.redis.wipe()
        assert not s.redis.client().exists("vcm:leases")
        wait_for(lambda: Ledger(s.redis.client()).is_ready(), timeout=20,
                 what="the worker restoring the ledger")
        ledger = Ledger(s.redis.client())
        after = check_invariants(ledger, pools)
        assert after["leases"] == before["leases"]
        assert after["nets"] == before["nets"]
        assert counters_in_use(after) == counters_in_use(before)
        # request-ids are still idempotent (a multi-vCenter answer may come back in another
        # order: the snapshot does not record the order of a request's leases)
        for i in (0, 1, 5):  # idempotency is per (owner, request-id)
            rid = f"rid-{i}"
            again = call(s.app, "vcm.acquire", timeout=30,
                         request={"vcpus": 1, "memory": 4, "owner": f"job-{i % 4}",
                                  "request-id": rid})
            assert sorted(names(again)) == sorted(granted[rid])
        # new placements respect the restored port groups, and are mirrored again
        fresh = call(s.app, "vcm.acquire", request={"vcpus": 3, "memory": 3, "vcenters": 3})
        for lease in fresh:
            key = f"{lease['status']['vcenter']}|{lease['status']['networks'][0]['port-group']}"
            assert key not in before["nets"]
        assert mirrored(kube) == check_invariants(ledger, pools)["leases"]
        log = s.procs[0].output()
        assert re.search(r"restored \d+ leases from the mirror", log)
    finally:
        s.stop()


def test_leases_past_one_configmap_are_mirrored_sharded_and_restored(tmp_path, kube):
    """200 badly compressible leases (about 60 KB compressed: more than one ConfigMap of
    VCM_MIRROR_SHARD_BYTES holds; test_too_large_fails_loudly_and_drops_nothing shows the head
    alone cannot) are mirrored in shards of that size, and restored from them."""
    s = cm_stack(tmp_path, kube, BIG_POOLS, VCM_MIRROR_SHARD_BYTES=str(SHARD))
    try:
        rnd = random.Random(5000)
        granted: dict[str, str] = {}
        for b in range(4):
            reqs = [big_request(rnd, f"owner-{b}", f"b{b}-{i}") for i in range(50)]
            for req, leases in zip(reqs, batch(s, reqs), strict=True):
                granted[req["request-id"]] = leases[0]["metadata"]["name"]
        ledger = Ledger(s.redis.client())
        before = audit(ledger)
        assert len(before["leases"]) == 200
        assert mirrored(kube) == before["leases"]
        st = settled(s, lambda x: x.get("leases") == 200)
        print(f"\n200 leases (253-character random boskos-lease-ids): {st['raw-bytes']:,} "
              f"bytes of JSON, {st['encoded-bytes']:,} compressed, in {st['configmaps']} "
              f"ConfigMaps of {SHARD:,} bytes; save {st['save-seconds'] * 1000:.0f} ms")
        assert st["leases"] == 200 and st["configmaps"] >= 3  # sharded
        # the payload is cut in chunks of VCM_MIRROR_SHARD_BYTES: full ones, then the rest
        sizes = chunk_sizes(kube, NS, NAME)
        assert len(sizes) == st["configmaps"] and sum(sizes) == st["encoded-bytes"]
        assert sizes[:-1] == [SHARD] * (len(sizes) - 1) and 0 < sizes[-1] <= SHARD, sizes

        s.redis.wipe()
        wait_for(lambda: Ledger(s.redis.client()).is_ready(), timeout=20,
                 what="the worker restoring 200 leases")
        ledger = Ledger(s.redis.client())
        after = audit(ledger)
        assert after["leases"] == before["leases"]
        assert counters_in_use(after) == counters_in_use(before)
        rid = next(iter(granted))  # made by owner-0
        again = call(s.app, "vcm.acquire", timeout=30,
                     request=dict(SMALL, **{"request-id": rid, "owner": "owner-0"}))
        assert names(again) == [granted[rid]]
    finally:
        s.stop()


def publisher_rounds(s: Stack) -> int:
    """How many rounds the placement worker's publisher has begun, as the stack's Redis counts
    them: each round reads the ledger's seq and epoch in one pipeline, with its one HSETNX."""
    client = s.redis.client()
    try:
        return int(client.info("commandstats").get("cmdstat_hsetnx", {}).get("calls", 0))
    finally:
        client.close()


EARLY, LATE = 3 * 10, 30  # of big_request's leases: in one ConfigMap of SHARD bytes, then not


def test_too_large_fails_loudly_and_drops_nothing(tmp_path, kube):
    """With the head ConfigMap only (VCM_MIRROR_MAX_SHARDS=0, VCM_MIRROR_SHARD_BYTES bytes),
    60 badly compressible leases do not fit: the worker says so (ERROR, status, counter), holds
    the replies, keeps every lease, and goes on once releases make the snapshot fit."""
    s = cm_stack(tmp_path, kube, BIG_POOLS, VCM_MIRROR_MAX_SHARDS="0",
                 VCM_MIRROR_SHARD_BYTES=str(SHARD))
    try:
        rnd = random.Random(4000)
        for b in range(3):  # about 70% of SHARD compressed: fits
            batch(s, [big_request(rnd, "early", f"e{b}-{i}") for i in range(EARLY // 3)])
        st = settled(s, lambda x: x.get("leases") == EARLY)
        print(f"\n{EARLY} leases: {st['encoded-bytes']:,} bytes compressed")
        assert st["state"] == "ok" and st["max-configmaps"] == 1
        writes_before = kube.writes
        late = [big_request(rnd, "late", f"l-{i}") for i in range(LATE)]
        pending = s.app.send_task("vcm.acquire_batch", queue="placement",
                                  kwargs={"requests": late})
        wait_for(lambda: status(s).get("state") == "too-large", timeout=20,
                 what="vcm:mirror showing too-large")
        rounds = publisher_rounds(s)
        wait_for(lambda: publisher_rounds(s) >= rounds + 3, timeout=30,
                 what="three more publisher rounds")  # still held, logged once
        st = status(s)
        assert st["too-large"] >= 1 and st["failures"] >= 1
        assert st["error"].startswith("too large") and "needs 2 ConfigMaps" in st["error"]
        print(f"{EARLY + LATE} leases: {st['encoded-bytes']:,} bytes compressed")
        assert st["needed-configmaps"] == 2 and SHARD < st["encoded-bytes"] <= 2 * SHARD
        assert st["seq"] < st["ledger-seq"] and st["held-replies"] == 1
        assert not pending.ready(), "a reply the mirror does not cover was released"
        assert kube.writes == writes_before  # nothing was written
        ledger = Ledger(s.redis.client())
        assert len(ledger.leases()) == EARLY + LATE  # nothing dropped
        assert len(mirrored(kube)) == EARLY  # the last complete save is intact
        log = s.procs[0].output()
        errors = [x for x in log.splitlines() if "MIRROR TOO LARGE" in x]
        assert len(errors) == 1 and "ERROR" in errors[0], errors

        # releases make it fit again: the held reply goes out, mirror == ledger
        call(s.app, "vcm.release", owner="early", timeout=30)
        leases = pending.get(timeout=30)
        assert len(leases) == LATE
        assert mirrored(kube) == audit(ledger)["leases"]
        assert len(ledger.leases()) == LATE
        st = settled(s, lambda x: x.get("state") == "ok")
        assert st["error"] == "" and "needed-configmaps" not in st
    finally:
        s.stop()


def test_redis_going_back_to_an_older_state_takes_the_newer_configmap(tmp_path, kube):
    """Answers wait for the ConfigMap save that covers them, so after Redis comes back with an
    older state (AOF everysec, node crash) the ConfigMap is the newer truth: it wins."""
    s = cm_stack(tmp_path, kube, NET_POOLS)
    try:
        pools = {p.name: p for p in load_pools(str(s.pools))}
        client = s.redis.client()
        a = names(call(s.app, "vcm.acquire", request={"vcpus": 2, "memory": 4, "owner": "o"}))
        old = keep_ledger(client)
        b = names(call(s.app, "vcm.acquire", request={"vcpus": 3, "memory": 4, "owner": "o",
                                                      "vcenters": 2}))
        assert call(s.app, "vcm.release", lease_ids=a, owner="o") == a
        go_back(client, old)
        wait_for(lambda: sorted(audit(Ledger(client))["leases"]) == sorted(b), timeout=20,
                 what="the ledger replaced with the ConfigMap's")
        c = names(call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "owner": "p"}))
        snap = check_invariants(Ledger(client), pools)
        assert sorted(snap["leases"]) == sorted(b + c)
        assert sorted(mirrored(kube)) == sorted(b + c)
        assert "went back" in s.procs[0].output()
    finally:
        s.stop()


def test_a_placement_worker_starts_while_the_api_is_down(tmp_path, kube):
    """At start the worker compares Redis with the mirror; with the API down it cannot, and
    Redis is ready: it says so and places (answers wait for the mirror, as always)."""
    s = cm_stack(tmp_path, kube, NET_POOLS)
    try:
        first = names(call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1}))
        s.procs[0].stop(signal.SIGKILL)
        kube.inject_fault(503, count=None)
        s.procs[0] = Worker(s.procs[0].env, "placement").start()
        pending = s.app.send_task("vcm.acquire", queue="placement",
                                  kwargs={"request": {"vcpus": 1, "memory": 1}})
        wait_for(lambda: audit(Ledger(s.redis.client()))["leases"].keys() - set(first),
                 what="the placement in Redis")
        kube.clear_faults()
        second = names(pending.get(timeout=30))
        assert sorted(mirrored(kube)) == sorted(first + second)
        assert "cannot compare the Redis ledger with the mirror" in s.procs[0].output()
    finally:
        s.stop()


def _bad_lease(name: str) -> str:
    """A stored lease record holding a lone surrogate, as json.dumps writes it (an escape:
    valid JSON text, but no UTF-8 encoding of the decoded string exists)."""
    return json.dumps({
        "spec": {"vcpus": 1, "memory": 1, "storage": 0, "vcenters": 1, "networks": 0},
        "status": {"pool": "p0", "vcenter": "vc0", "datacenter": "dc", "cluster": "c0",
                   "datastore": "ds", "networks": [], "owner": "job-\udcff",
                   "request-id": name, "leased-at": "2026-01-01T00:00:00Z",
                   "expires-at": "2099-01-01T00:00:00Z", "state": "leased"},
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"}})


def test_a_lease_that_cannot_be_encoded_is_kept_escaped_and_answers_go_on(tmp_path, kube):
    """A stored lease holding a lone surrogate cannot be written as UTF-8: the mirror keeps it
    escaped (logged with its id, counted), so a rebuild still holds its capacity, and every
    other change is mirrored and answered."""
    s = cm_stack(tmp_path, kube, NET_POOLS)
    try:
        first = names(call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1}))
        raw = _bad_lease("bad-lease-1")
        assert "\\udcff" in raw
        s.redis.client().hset("vcm:leases", "bad-lease-1", raw)
        acquired = s.app.send_task("vcm.acquire", queue="placement",
                                   kwargs={"request": {"vcpus": 2, "memory": 2, "owner": "o"}})
        second = names(acquired.get(timeout=30))
        released = s.app.send_task("vcm.release", queue="placement",
                                   kwargs={"lease_ids": first})
        assert released.get(timeout=30) == first
        st = settled(s, lambda x: x.get("behind") == 0 and x.get("held-replies") == 0)
        assert st["state"] == "ok" and st["set-aside"] == 1
        assert sorted(mirrored(kube)) == sorted([*second, "bad-lease-1"])
        assert mirrored(kube)["bad-lease-1"]["status"]["owner"] == "job-\udcff"
        assert s.redis.client().hexists("vcm:leases", "bad-lease-1")
        log = [x for x in s.procs[0].output().splitlines() if "the mirror has them escaped" in x]
        assert len(log) == 1 and "bad-lease-1" in log[0], log  # once, with the lease id
        # Redis lost: the rebuild sets the record aside and keeps its vCPU counted on p0
        s.redis.wipe()
        wait_for(lambda: Ledger(s.redis.client()).is_ready(), timeout=30, what="the restore")
        snap = check_invariants(Ledger(s.redis.client()),
                                {p.name: p for p in load_pools(str(s.pools))})
        hold = snap["aside"]["bad-lease-1"]["hold"]  # check_invariants: counted on p0
        assert (hold["pool"], hold["vcpus"], hold["memory"]) == ("p0", 1, 1)
    finally:
        s.stop()


class SaveFailsFirst(ConfigMapMirror):
    """The real ConfigMap mirror, whose first saves raise what no mirror error is (a bug)."""

    fail = 3

    def save(self, snapshot: dict, mark: int | None = None) -> int:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("a bug in the save")
        return super().save(snapshot, mark)


def mirrored_service(tmp_path, monkeypatch, server, pools_text: str, mirror):
    """The placement service in this process, as a worker assembles it, on `server` with
    `mirror`, answering through the outbox: (ledger, Celery app, direct replies, service)."""
    pools = tmp_path / "pools.yaml"
    pools.write_text(pools_text)
    monkeypatch.setenv("VCM_REDIS_URL", server.url)
    monkeypatch.setenv("VCM_POOLS_FILE", str(pools))
    monkeypatch.setenv("VCM_MIRROR_FILE", "off")
    ledger = Ledger.from_url(server.url)
    app = Celery("t", broker=server.url, backend=server.url)
    direct = CeleryReplies(app)
    replies = OutboxReplies(ledger, direct)
    svc = Capacity(ledger, PoolsFile(str(pools)), Settings.from_env(), replies, mirror)
    replies.covered = svc.covered
    svc.ensure_ready()
    return ledger, app, direct, svc


def test_the_publisher_survives_any_exception_and_releases_the_answers_later(
        tmp_path, kube, monkeypatch, caplog):
    server = RedisServer().start()
    api = kube.api_client()
    pub = None
    try:
        mirror = SaveFailsFirst(NS, NAME, api_client=api, timeout=2.0)
        ledger, app, direct, svc = mirrored_service(tmp_path, monkeypatch, server, NET_POOLS,
                                                    mirror)
        caplog.set_level(logging.INFO, logger="workers.publisher")
        pub = Publisher(svc, mirror, direct)
        pub.start()
        leases = svc.acquire({"vcpus": 1, "memory": 1}, "task-1")
        svc.replies.deliver("task-1", leases)
        assert ledger.outbox(), "the answer is not held for the mirror"
        assert app.AsyncResult("task-1").get(timeout=30) == leases
        assert pub.is_alive() and mirror.fail == 0
        # the status is written after the answers go out
        st = wait_for(lambda: (x := read_status(Ledger(server.client())))["state"] == "ok" and x,
                      timeout=10, what="the publisher's status after the save")
        assert st["errors"] == 3 and st["failures"] >= 3
        assert st["last-error"] == "RuntimeError: a bug in the save"
        assert st["state"] == "ok" and st["error"] == "" and st["held-replies"] == 0
        assert sorted(mirrored(kube)) == names(leases)
        # the traceback is logged once for the streak, then quieter; the recovery is said
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is not None, errors
        assert any("succeed again after 3 failed" in r.getMessage() for r in caplog.records)
    finally:
        if pub is not None:
            pub.stop()
            pub.join(10)
        api.close()
        server.stop()


def test_an_answer_held_after_a_too_large_attempt_is_shown_in_the_status(
        tmp_path, kube, monkeypatch):
    """The publisher wakes at a change's commit, so it may try the save before the change's
    answer is held: the status of a snapshot too large to mirror still comes to show that
    answer, though the same snapshot is not tried again until the ledger changes. The
    publisher's rounds are run here one at a time, in that order."""
    server = RedisServer().start()
    api = kube.api_client()
    try:
        mirror = ConfigMapMirror(NS, NAME, api_client=api, timeout=2.0, max_shards=0,
                                 shard_bytes=SHARD)
        ledger, app, direct, svc = mirrored_service(tmp_path, monkeypatch, server, BIG_POOLS,
                                                    mirror)
        pub = Publisher(svc, mirror, direct)  # not started: its rounds are run here
        rnd = random.Random(7)
        leases = svc.acquire_batch(
            [big_request(rnd, "o", f"r-{i}") for i in range(EARLY + LATE)], "task-1")
        pub.step()  # the save, tried before the answer is held
        st = read_status(ledger)
        assert st["state"] == "too-large" and st["too-large"] == 1
        assert st["held-replies"] == 0 and not ledger.outbox()
        svc.replies.deliver("task-1", leases)
        pub.step()
        st = read_status(ledger)
        assert st["state"] == "too-large" and st["too-large"] == 1  # not tried again
        assert st["held-replies"] == 1 and [x[0] for x in ledger.outbox()] == ["task-1"]
        assert app.AsyncResult("task-1").state == "PENDING"  # held
    finally:
        api.close()
        server.stop()


def test_after_redis_went_back_past_the_file_mirror_a_new_answer_waits_for_its_save(
        tmp_path, monkeypatch):
    """Redis went back (same epoch) past what the publisher last saved whole, and the file
    mirror holds nothing newer: the placement thread notices first and writes the next change
    at a seq the publisher's last whole save already had (in the history that was lost). That
    save does not cover the new change: its answer waits until the mirror holds it.

    The publisher's rounds are run by hand (Publisher.step), so the interleaving is exact:
    the one a loaded worker meets when its first round after a reset saves before the reset's
    empty mirror lands (the first answer then waits for a whole save)."""
    from workers.adapters.mirror.file import FileMirror

    server = RedisServer().start()
    try:
        path = tmp_path / "ledger.json"
        mirror = FileMirror(path)
        ledger, _, direct, svc = mirrored_service(tmp_path, monkeypatch, server, NET_POOLS,
                                                  mirror)
        pub = Publisher(svc, mirror, direct)
        client = server.client()

        def answered(task_id: str) -> bool:
            return task_id not in {t for t, _, _ in ledger.outbox()}

        def acquire(task_id: str) -> str:
            leases = svc.acquire(dict(SMALL, owner=task_id), task_id)
            svc.replies.deliver(task_id, leases)  # what the task's _answer does
            return leases[0]["metadata"]["name"]

        def in_mirror() -> set[str]:
            return {x["metadata"]["name"] for x in FileMirror(path).load()["leases"]}

        pub.step()  # the first round: the ledger's epoch, a whole save at seq 0
        FileMirror(path).save({"format": 1, "seq": 0, "leases": []})  # another writer's
        start = keep_ledger(client)
        acquire("l0")  # the journal extends only this worker's snapshot: held
        assert not answered("l0")
        pub.step()  # a whole save at seq 1 answers it
        assert answered("l0")
        acquire("l1")
        acquire("l2")  # journaled: answered at once
        assert answered("l2") and ledger.seq() == 3
        # Redis goes back to seq 0 (same epoch); the mirror is reset and holds none of it
        go_back(client, start)
        FileMirror(path).save({"format": 1, "seq": 0, "leases": []})
        Path(str(path) + ".journal").unlink()
        name = acquire("n0")  # at seq 1 again
        assert ledger.seq() == 1 and not answered("n0")
        for _ in range(3):
            pub.step()
            if answered("n0"):
                break
        assert answered("n0"), "the publisher never answered"
        assert name in in_mirror(), "answered before the mirror held it"
    finally:
        server.stop()
