"""The shim when things break: no placement worker, Redis down, a backlog longer than the wait.

Each test has its own redis-server, workers and API server, so the shared stack stays whole."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.support.api import ApiServer, assert_error
from tests.support.audit import audit
from tests.support.helpers import EXAMPLE_POOLS
from tests.support.procs import RedisServer, Worker, env_for, wait_for
from workers.adapters.ledger import Ledger

SMALL = {"vcpus": 1, "memory": 1, "networks": 0}
HANG = 15.0  # seconds: a client's patience; a shim that waits this long hangs


@pytest.fixture()
def own(tmp_path):
    redis = RedisServer().start()
    pools = tmp_path / "pools.yaml"
    pools.write_text(EXAMPLE_POOLS.read_text())
    env = env_for(redis.url, pools, VCM_MIRROR_FILE=str(tmp_path / "ledger.json"))
    placement = Worker(env, "placement").start(wait=False)
    queries = Worker(env, "queries", pool="threads", concurrency=2).start(wait=False)
    placement.wait_ready()
    queries.wait_ready()
    parts = {"redis": redis, "env": env, "placement": placement, "queries": queries}
    try:
        yield parts
    finally:
        for name in ("api", "placement", "queries"):  # thrown away: SIGKILL (a test that
            if name in parts:                          # looks at a stop stops it itself)
                parts[name].kill()
        redis.stop()


def tasks_sent(c) -> float:
    """The shim's count of tasks it sent (its /metrics), all tasks together."""
    text = c.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vcm_api_tasks_sent_total{"))


class ControlWatch:
    """Collects the Celery control commands (ping, active_queues, ...) broadcast through
    Redis while it is open: the pidbox fanout is a Redis pub/sub channel."""

    def __init__(self, redis: RedisServer) -> None:
        self.client = redis.client()
        self.sub = self.client.pubsub()

    def __enter__(self) -> ControlWatch:
        self.sub.psubscribe("*celery.pidbox*")
        msg = self.sub.get_message(timeout=5)
        assert msg and msg["type"] == "psubscribe", msg
        return self

    def methods(self) -> list[str]:
        seen: dict[str, str] = {}  # one broadcast can go out on two topics: by ticket
        while (msg := self.sub.get_message(timeout=0.5)) is not None:
            envelope = json.loads(msg["data"])
            body = json.loads(base64.b64decode(envelope["body"]))
            seen[str(body.get("ticket") or len(seen))] = body["method"]
        return sorted(seen.values())

    def __exit__(self, *_: object) -> None:
        self.sub.close()
        self.client.close()


def start_api(own, **env) -> ApiServer:
    own["api"] = ApiServer(own["env"], **env).start()
    return own["api"]


def test_503_promptly_without_a_placement_worker_and_back_when_it_returns(own):
    api = start_api(own, VCM_API_TIMEOUT="2")
    worker = own["placement"]
    with api.client() as c:
        assert c.post("/acquire", json=SMALL).status_code == 200  # the worker was just seen

        # frozen right after it answered: the shim still trusts it and sends, but notices soon
        os.kill(worker.proc.pid, signal.SIGSTOP)
        try:
            # 503 (the shim noticed), not the 504 its 2 s wait would end in
            resp = c.post("/acquire", json=SMALL)
            answered = time.time()
            body = assert_error(resp, 503, "Unavailable")
            assert body["details"]["queue"] == "placement"
            sent = body["details"]["task-id"]
            assert body["details"]["state"] == "PENDING"
            # the message expires VCM_API_TIMEOUT after the shim sent it, which was before it
            # answered (the frozen worker may hold it already: the broker cannot tell when)
            wait_for(lambda: time.time() > answered + 2.0, timeout=10,
                     what="the message's expiry")
        finally:
            os.kill(worker.proc.pid, signal.SIGCONT)
        # the worker gets to it too late: it expired, so it places nothing
        state = wait_for(lambda: (s := c.get(f"/tasks/{sent}").json())["state"] != "PENDING"
                         and s, timeout=20, what="the expired task")
        assert state["state"] == "REVOKED", state

        # (no query before the stop: its worker check would discover the placement worker
        # alive, and the shim counts a queue as served for 2 s after it last saw a worker)
        worker.kill()  # gone at once, as when its pod is killed (no drain looked at here)
        assert_error(c.post("/acquire", json=SMALL), 503, "Unavailable")
        # the shim remembers that nobody is there: a burst right after is refused without
        # sending a task, and without asking the workers again for every request
        sent = tasks_sent(c)
        with ControlWatch(own["redis"]) as control:
            for path, payload in (("/acquire", SMALL), ("/acquire?async=true", SMALL),
                                  ("/release", {"owner": "x"}), ("/renew", {"lease-id": "x"}),
                                  ("/acquire", SMALL), ("/release", {"owner": "x"})):
                body = assert_error(c.post(path, json=payload), 503, "Unavailable")
                assert body["details"]["queue"] == "placement", (path, body)
            asked = control.methods()
        assert tasks_sent(c) == sent
        assert len(c.get("/leases").json()) == 1  # the expired task placed nothing
        # at most one look (a ping of the known workers and a discovery) for six requests
        assert asked.count("active_queues") <= 1 and asked.count("ping") <= 1, asked
        with ControlWatch(own["redis"]) as control:  # what the watch above would see
            def readiness_asked() -> bool:
                body = assert_error(c.get("/readyz"), 503, "Unavailable")
                assert body["details"]["workers"]["placement"] == []
                return "active_queues" in control.methods()

            # readiness asks the workers; while a discovery the burst started is still under
            # way it waits for that one instead, so it may take a second look to see a new one
            wait_for(readiness_asked, timeout=10, what="readiness to ask the workers")
        assert c.get("/healthz").status_code == 200
        assert c.get("/show-pools").status_code == 200  # the queries worker is still there

        # a new placement worker (another name) is found without restarting the shim
        own["placement"] = Worker(own["env"], "placement").start()
        wait_for(lambda: c.post("/acquire", json=SMALL).status_code == 200, timeout=20,
                 what="the shim to find the new worker")
        assert c.get("/readyz").status_code == 200
    snap = audit(Ledger(own["redis"].client()))
    assert len(snap["leases"]) == 2  # the first and the last acquire, nothing in between


def test_503_promptly_when_redis_is_down_and_recovery(own):
    api = start_api(own)
    with api.client() as c:
        assert c.post("/acquire", json=SMALL).status_code == 200
        own["redis"].kill()
        for method, path, payload in (
            ("POST", "/acquire", SMALL), ("POST", "/acquire?async=true", SMALL),
            ("GET", "/show-pools", None), ("GET", "/leases", None),
            ("GET", "/tasks/0b4e8d1c-0000-4000-8000-000000000000", None),
            ("GET", "/estimate?vcpus=1&memory=1", None), ("GET", "/readyz", None),
            ("POST", "/release", {"owner": "x"}),
        ):
            # answered from what the shim knows (Redis refuses connections), not after a wait:
            # the hang guard is the client's timeout, far below the shim's own
            body = assert_error(c.request(method, path, json=payload, timeout=HANG), 503)
            assert body["error"] == "Unavailable", (path, body)
        assert c.get("/healthz").status_code == 200

        own["redis"].start()  # the same port, empty: the workers restore from the mirror
        # retried the way a job step should: with a request-id, so that an attempt that was
        # placed but not answered in time is not placed twice
        retry = {**SMALL, "request-id": "after-the-outage"}
        wait_for(lambda: c.post("/acquire", json=retry).status_code == 200, timeout=45,
                 interval=0.5, what="the stack to recover")
        assert c.get("/readyz").status_code == 200
        leases = c.get("/leases").json()
        assert len(leases) == 2  # the one from before (from the mirror) and the new one


def test_504_when_the_answer_does_not_come_in_time_and_the_task_id_tells_the_rest(own):
    """The worker places, but holds the reply until the mirror has it; the mirror is broken."""
    api = start_api(own, VCM_API_TIMEOUT="1.5")
    mirror = Path(own["env"]["VCM_MIRROR_FILE"])
    with api.client() as c:
        assert c.post("/acquire", json=SMALL).status_code == 200
        mirror.unlink(missing_ok=True)
        mirror.mkdir()  # the mirror can no longer be written
        (mirror / "in-the-way").write_text("")
        try:
            resp = c.post("/acquire", json={**SMALL, "owner": "late"}, timeout=HANG)
            body = assert_error(resp, 504, "GatewayTimeout")
            assert body["details"]["waited"] >= 1.5, body  # its own timeout, as the shim counted
            assert body["details"]["state"] == "STARTED"
            task_id = body["details"]["task-id"]
            assert c.get(f"/tasks/{task_id}").json()["state"] == "STARTED"
        finally:
            shutil.rmtree(mirror)
        state = wait_for(lambda: (s := c.get(f"/tasks/{task_id}").json())["state"] == "SUCCESS"
                         and s, timeout=30, what="the reply once the mirror is back")
        assert state["result"][0]["status"]["owner"] == "late"
