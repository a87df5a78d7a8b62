"""Flower: task events are on, and Flower's /api/tasks lists a `vcm.acquire`
with readable arguments (owner, sizes) and its result, behind basic auth. A private
redis-server, real placement and queries workers and a real `celery -A tasks flower`.

The acquire's answer is deferred until the ledger mirror covers it, so its SUCCESS reaches
Flower as a task-succeeded event sent by the placement worker's publisher, not by Celery."""

from __future__ import annotations

import sys
import tempfile

import httpx
import pytest

from tests.support.procs import ROOT, LoggedProcess, Stack, free_port, wait_for

POOLS = (ROOT / "examples" / "pools.yaml").read_text()
AUTH = ("flower-user", "flower-pass")


class Flower(LoggedProcess):
    def __init__(self, env: dict) -> None:
        self.port = free_port()
        self.env = {**env, "FLOWER_BASIC_AUTH": ":".join(AUTH)}
        self.log = tempfile.mktemp(prefix="vcm-flower-", suffix=".log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Flower:
        self.spawn([sys.executable, "-m", "celery", "-A", "tasks", "flower",
                    f"--port={self.port}", "--address=127.0.0.1"], self.env)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower exited {self.proc.returncode}: {self.output()}")
            return httpx.get(self.url + "/api/tasks", auth=AUTH, timeout=2).status_code == 200

        wait_for(up, timeout=30, interval=0.2, what="Flower")
        return self

    def output(self) -> str:
        return super().output()[-3000:]



@pytest.fixture(scope="module")
def flower(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("flower"), POOLS)
    flower = Flower(stack.env).start()
    yield stack, flower
    flower.stop()
    stack.stop()


def test_flower_lists_an_acquire_with_readable_arguments_and_its_result(flower):
    stack, fl = flower

    def listed(task_id: str) -> dict | None:
        resp = httpx.get(fl.url + "/api/tasks", params={"taskname": "vcm.acquire"}, auth=AUTH,
                         timeout=5)
        resp.raise_for_status()
        task = resp.json().get(task_id)
        return task if task and task.get("state") == "SUCCESS" and task.get("kwargs") else None

    # Flower sees only the events sent after it subscribed, a moment after its HTTP port
    # answers: wait until it has heard the placement worker's heartbeat (an event) first
    placement = next(p.name for p in stack.procs if p.queues == "placement")

    def heard() -> bool:
        resp = httpx.get(fl.url + "/api/workers", params={"status": "true"}, auth=AUTH,
                         timeout=5)
        return resp.status_code == 200 and resp.json().get(placement) is True

    wait_for(heard, timeout=30, interval=0.2, what="Flower to receive worker events")
    task = None
    for attempt in range(5):
        owner = f"flower-test-{attempt}"
        request = {"vcpus": 2, "memory": 8, "storage": 16, "owner": owner}
        r = stack.app.send_task("vcm.acquire", kwargs={"request": request}, queue="placement")
        leases = r.get(timeout=30)
        try:
            task = wait_for(lambda r=r: listed(r.id), timeout=10, interval=0.2,
                            what="vcm.acquire in Flower")
            break
        except TimeoutError:
            continue
    assert task is not None, fl.output()
    assert task["name"] == "vcm.acquire"
    assert f"'owner': '{owner}'" in task["kwargs"] and "'vcpus': 2" in task["kwargs"], task
    assert "'memory': 8" in task["kwargs"]
    assert leases[0]["metadata"]["name"] in str(task.get("result")), task
    assert owner in str(task.get("result"))


def test_flower_needs_basic_auth(flower):
    _, fl = flower
    for path in ("/api/tasks", "/", "/api/workers"):
        assert httpx.get(fl.url + path, timeout=5).status_code == 401, path
    wrong = httpx.get(fl.url + "/api/tasks", auth=(AUTH[0], "nope"), timeout=5)
    assert wrong.status_code == 401
    assert httpx.get(fl.url + "/api/tasks", auth=AUTH, timeout=5).status_code == 200
