"""Redis under memory pressure, as deployed: redis-server runs with deploy/redis.yaml's own
arguments (its maxmemory scaled down to 16 MB) under the whole stack (placement and queries
workers, beat, the HTTP shim, the CLI), and a broker backlog (task messages on a queue no
worker consumes) fills it.

- No record the service promises to keep is lost: the ledger, released request-ids and
  released leases, placement answers (kept a day).
- While Redis is full, clients are refused with RedisFull naming the cause (HTTP 503, the CLI's
  message and exit code), nothing is half-written (the ledger is unchanged and consistent),
  and every process keeps running; /metrics and /readyz show the pressure before and while.
- Once memory is freed everything works again: a released request-id is still refused, not
  granted anew; releasing a released lease is still idempotent; a task taken as Redis filled
  is answered; a placement worker started while Redis was full serves its queue.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import ApiServer
from tests.support.helpers import check_invariants
from tests.support.pressure import (
    ANSWER,
    OWNER,
    ManifestRedis,
    PausingWorker,
    fill,
    fill_to,
    free,
    lease_ids,
    logged,
    records,
    small,
)
from tests.support.procs import ROOT, Beat, LoggedProcess, Worker, env_for, wait_for
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import load_pools
from workers.adapters.redis_memory import refused_for_memory

POOLS = (ROOT / "examples" / "pools.yaml").read_text()
@dataclass
class PressureStack:
    redis: ManifestRedis
    env: dict[str, str]
    placement: Worker
    queries: Worker
    beat: Beat
    api: ApiServer
    app: Celery
    client: redis.Redis
    http: httpx.Client
    pools: dict[str, Any] = field(default_factory=dict)

    def processes(self) -> dict[str, LoggedProcess]:
        return {"placement worker": self.placement, "queries worker": self.queries,
                "beat": self.beat, "HTTP shim": self.api}

    def assert_all_alive(self) -> None:
        dead = {name: p.proc.returncode for name, p in self.processes().items()
                if p.proc is None or p.proc.poll() is not None}
        assert not dead, f"processes ended: {dead}; placement worker's log:\n" \
                         f"{self.placement.output_of_this_run()[-3000:]}"

    def send(self, name: str, queue: str = "placement", **kwargs: Any) -> Any:
        return self.app.send_task(name, kwargs=kwargs, queue=queue)

    def vcm(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "workers.cli", *args, "--redis-url",
                               self.redis.url], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=120)

    def metrics(self) -> dict[str, float]:
        resp = self.http.get("/metrics")
        assert resp.status_code == 200, resp.text
        return {s.name: s.value for f in text_string_to_metric_families(resp.text)
                for s in f.samples if not s.labels}

    def readyz(self) -> dict[str, Any]:
        resp = self.http.get("/readyz")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def invariants(self) -> dict[str, Any]:
        return check_invariants(Ledger(self.client), self.pools)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[PressureStack]:
    tmp = tmp_path_factory.mktemp("pressure")
    server = ManifestRedis("16mb").start()
    pools = tmp / "pools.yaml"
    pools.write_text(POOLS)
    # beat sends its tasks every second, so that it meets the full Redis too
    env = env_for(server.url, pools, VCM_MIRROR_FILE=str(tmp / "ledger.json"),
                  VCM_REAP_INTERVAL="1s", VCM_ROLLUP_INTERVAL="1s")
    placement = Worker(env, "placement", log=str(tmp / "placement.log")).start(wait=False)
    queries = Worker(env, "queries", pool="threads", concurrency=2,
                     log=str(tmp / "queries.log")).start(wait=False)
    beat = Beat(env, log=str(tmp / "beat.log")).start()
    placement.wait_ready()
    queries.wait_ready()
    api = ApiServer(env).start()
    app = Celery("pressure-client", broker=server.url, backend=server.url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = server.url
    s = PressureStack(server, env, placement, queries, beat, api, app, server.client(),
                      api.client(), {p.name: p for p in load_pools(str(pools))})
    yield s
    s.http.close()
    for p in s.processes().values():
        p.stop()
    app.close()
    s.client.close()
    server.stop()


@pytest.fixture(autouse=True)
def backlog_dropped(stack: PressureStack) -> Iterator[None]:
    yield
    stack.client.delete("vcm-test-backlog")  # a failed test leaves no full Redis behind


def test_a_full_redis_loses_no_record_refuses_writes_by_name_and_recovers(stack):
    s = stack
    granted: dict[str, list[str]] = {}
    answered: list[str] = []  # placement tasks whose answers are kept a day
    for i in range(6):
        r = s.send("vcm.acquire", request=small(f"r{i}"))
        granted[f"r{i}"] = lease_ids(r.get(timeout=ANSWER))
        answered.append(r.id)
    for i in range(3):  # released: their request-ids and leases are remembered, with a TTL
        r = s.send("vcm.release", lease_ids=granted[f"r{i}"], owner=OWNER)
        assert r.get(timeout=ANSWER) == granted[f"r{i}"]
        answered.append(r.id)
    resp = s.http.post("/acquire", json=small("h1"))
    assert resp.status_code == 200, resp.text
    resp = s.http.post("/release", json={"lease-ids": lease_ids(resp.json()), "owner": OWNER})
    assert resp.status_code == 200, resp.text
    before = records(s.client, answered)
    assert {k.split(b":")[1] for k in before if k.startswith(b"vcm:")} >= {b"req", b"gone"}
    audit = s.invariants()

    # pressure shows before it bites
    fill_to(s.app, s.client, 0.9)  # /readyz's default warning is from 80%
    ratio = s.metrics()["vcm_redis_memory_used_ratio"]
    assert 0.8 <= ratio < 1, ratio
    ready = s.readyz()
    assert ready["status"] == "degraded" and ready["redis-memory"]["state"] == "high", ready

    filled = fill(s.app, s.client)
    lost = before - records(s.client, answered)
    kinds = Counter(k.decode().split(":")[1] if k.startswith(b"vcm:") else "answer"
                    for k in lost)
    assert not lost, (f"records lost under maxmemory-policy {s.redis.policy}: {len(lost)} of "
                      f"{len(before)} ({dict(sorted(kinds.items()))})")

    # full: clients are refused with the cause named; a job step's own Celery client gets
    # Redis's refusal when it sends (nothing is queued)
    assert refused_for_memory(filled["refusal"])
    for path, body in (("/acquire", small("h2")),
                       ("/release", {"lease-ids": granted["r4"], "owner": OWNER})):
        resp = s.http.post(path, json=body)
        assert resp.status_code == 503, (path, resp.text)
        err = resp.json()
        assert err["error"] == "RedisFull" and err["message"].startswith("Redis is full"), err
        assert err["details"]["cause"] == "redis-out-of-memory", err
    for args in (["acquire", "--vcpus", "1", "--memory", "1", "--networks", "0",
                  "--owner", OWNER], ["release", *granted["r5"], "--owner", OWNER]):
        p = s.vcm(*args)
        assert p.returncode == 1, (args, p.returncode, p.stderr)
        assert p.stderr.startswith("vcm: RedisFull: Redis is full"), p.stderr
        assert "Traceback" not in p.stderr, p.stderr
    with pytest.raises(Exception) as raw:
        s.send("vcm.acquire", request=small("raw"))
    assert refused_for_memory(raw.value), raw.value
    ready = s.readyz()
    assert ready["ready"] is True and ready["status"] == "degraded", ready
    assert ready["redis-memory"]["state"] == "full", ready
    assert s.metrics()["vcm_redis_memory_used_ratio"] > 1
    assert s.metrics()["vcm_redis_evicted_keys_total"] == 0
    # nothing half-written: the ledger is as it was, and consistent
    assert s.invariants() == audit
    s.assert_all_alive()

    freed_at = time.time()
    free(s.client)
    # a released request-id is still refused, not granted anew
    r = s.send("vcm.acquire", request=small("r0"))
    with pytest.raises(Exception) as gone:
        r.get(timeout=ANSWER)
    assert type(gone.value).__name__ == "LeaseNotFound", gone.value
    assert granted["r0"][0] in str(gone.value.args), gone.value.args
    # releasing a released lease is still idempotent
    assert s.send("vcm.release", lease_ids=granted["r1"], owner=OWNER).get(
        timeout=ANSWER) == granted["r1"]
    # the answers kept a day are still there
    assert lease_ids(s.app.AsyncResult(answered[0]).get(timeout=ANSWER)) == granted["r0"]
    # everything works again, through every door
    resp = s.http.post("/acquire", json=small("h3"))
    assert resp.status_code == 200, resp.text
    p = s.vcm("acquire", "--vcpus", "1", "--memory", "1", "--networks", "0", "--owner", OWNER)
    assert p.returncode == 0, p.stderr
    wait_for(lambda: s.metrics().get("vcm_rollup_age_seconds", 1e9) < time.time() - freed_at,
             timeout=30, what="beat's rollup after Redis had room again")
    assert s.readyz()["status"] == "ready"
    s.invariants()
    s.assert_all_alive()


def test_an_answer_redis_refuses_is_held_and_given_once_redis_has_room(stack, tmp_path):
    """Redis fills while the placement worker runs an acquire, after its commit: Redis refuses
    the answer. The worker holds it, keeps running, and stores it once Redis has room: the
    client gets its leases, and the ledger is consistent throughout."""
    s = stack
    gate = tmp_path / "gate"
    gate.mkdir()
    s.placement.stop()
    s.placement = PausingWorker({**s.env, "VCM_TEST_GATE": str(gate)}, "placement",
                                log=s.placement.log).start()
    (gate / "armed").touch()
    r = s.send("vcm.acquire", request=small("as-it-fills"))
    wait_for((gate / "waiting").exists, timeout=ANSWER, what="the commit of the acquire")
    fill(s.app, s.client)
    (gate / "open").touch()
    # what Redis refuses first is the task's state, or (a whole mirror save being due after
    # the restart, so the answer goes through Redis's outbox) its answer: held either way
    logged(s.placement, f"holding the state of task {r.id}", f"holding the answer of task {r.id}")
    audit = s.invariants()
    assert [x["status"]["request-id"] for x in audit["leases"].values()].count(
        "as-it-fills") == 1
    resp = s.http.post("/acquire", json=small("h4"))
    assert resp.status_code == 503 and resp.json()["error"] == "RedisFull", resp.text
    assert s.invariants() == audit
    s.assert_all_alive()

    free(s.client)
    leases = r.get(timeout=ANSWER)
    assert [x["status"]["request-id"] for x in leases] == ["as-it-fills"]
    assert set(lease_ids(leases)) <= set(s.invariants()["leases"])
    s.assert_all_alive()


def test_a_placement_worker_started_while_redis_is_full_waits_then_serves(stack):
    """Tasks queued, the placement worker restarted (a rollout, a crash) while Redis is full:
    it keeps running, retrying, and serves the queue once Redis has room."""
    s = stack
    leases = lease_ids(s.send("vcm.acquire", request=small("w0")).get(timeout=ANSWER))
    s.placement.stop()
    queued = {"acquire": s.send("vcm.acquire", request=small("w1")),
              "repeat": s.send("vcm.acquire", request=small("w0")),
              "release": s.send("vcm.release", lease_ids=leases, owner=OWNER)}
    fill(s.app, s.client)
    s.placement = Worker(s.env, "placement", log=s.placement.log).start(wait=False)
    logged(s.placement, "waiting for room")
    s.assert_all_alive()
    assert all(r.state == "PENDING" for r in queued.values())

    free(s.client)
    s.placement.wait_ready(timeout=60)
    assert [x["status"]["request-id"] for x in queued["acquire"].get(timeout=ANSWER)] == ["w1"]
    assert lease_ids(queued["repeat"].get(timeout=ANSWER)) == leases
    assert queued["release"].get(timeout=ANSWER) == leases
    s.invariants()
    s.assert_all_alive()


def test_an_evicting_policy_set_at_runtime_shows_in_readyz_and_metrics(stack):
    """An operator switches Redis to an evicting maxmemory-policy at runtime (CONFIG SET):
    ledger records may then be evicted under pressure. /readyz says degraded, naming the
    policy, and /metrics has a gauge an alert can watch, before anything is evicted."""
    s = stack
    assert s.readyz()["status"] == "ready"
    s.client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        ready = s.readyz()
        assert ready["status"] == "degraded", ready
        memory = ready["redis-memory"]
        assert memory["state"] == "ok" and memory["maxmemory-policy"] == "allkeys-lru", memory
        assert memory["policy-evicts"] is True, memory
        assert any("allkeys-lru may evict" in w for w in memory["warnings"]), memory
        assert s.metrics()["vcm_redis_memory_policy_evicts"] == 1
    finally:
        s.client.config_set("maxmemory-policy", s.redis.policy)
    assert s.readyz()["status"] == "ready"
    assert s.metrics()["vcm_redis_memory_policy_evicts"] == 0


def test_a_redis_that_refuses_info_still_gives_the_ledger_metrics(stack):
    """A Redis user without INFO (an ACL without @dangerous, INFO renamed away): the memory
    numbers are unknown, but /metrics still has everything else, and /readyz answers."""
    s = stack
    leases = s.metrics()["vcm_active_leases"]
    s.client.acl_setuser("default", enabled=True, commands=["-info"])
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            s.client.info("memory")
        metrics = s.metrics()
        assert metrics["vcm_redis_up"] == 1, metrics
        assert metrics["vcm_active_leases"] == leases, metrics
        assert "vcm_redis_memory_used_ratio" not in metrics, metrics
        ready = s.readyz()
        assert ready["ready"] is True and ready["redis-memory"] == {"state": "unknown"}, ready
    finally:
        s.client.acl_setuser("default", enabled=True, commands=["+info"])
    assert "vcm_redis_memory_used_ratio" in s.metrics()


def test_a_request_that_quotes_redis_refusal_is_refused_for_its_field_not_as_redis_full(stack):
    """Hostile input: a field whose text is Redis's own refusal for memory is an invalid
    request naming the field, never RedisFull (a full Redis is told by Redis, not by the
    words of a request)."""
    s = stack
    quoted = "command not allowed when used memory > 'maxmemory'"
    p = s.vcm("acquire", "--vcpus", "1", "--memory", "1", "--networks", "0", "--owner", OWNER,
              "--required-pool", quoted)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "InvalidRequest" in p.stderr and "required-pool" in p.stderr, p.stderr
    resp = s.http.post("/acquire", json={**small("quoted"), "required-pool": quoted})
    assert resp.status_code in (400, 422), resp.text
    assert resp.json()["error"] == "InvalidRequest", resp.text
    assert resp.json()["details"]["field"] == "required-pool", resp.text
