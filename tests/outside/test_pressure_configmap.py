"""Redis under memory pressure with the ConfigMap mirror, as deployed: redis-server with
deploy/redis.yaml's own arguments (maxmemory scaled down to 16 MB), the placement worker
mirroring to a ConfigMap (tests/support/kube_apiserver.py, the unmodified kubernetes client),
and a broker backlog that fills Redis.

With the ConfigMap mirror every answer of a change is held in Redis's outbox until the mirror
holds the change; the outbox is written after the commit. Redis filling between the two
must not turn a granted acquire into a refusal: the worker holds that answer too, and the
client gets its leases once Redis has room.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from celery import Celery

from tests.support.helpers import check_invariants
from tests.support.kube_apiserver import KubeApiServer
from tests.support.pressure import (
    ANSWER,
    OWNER,
    ManifestRedis,
    PausingWorker,
    fill,
    free,
    lease_ids,
    logged,
    small,
)
from tests.support.procs import ROOT, env_for, wait_for
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import load_pools

NS, NAME = "vcm-test", "ledger"


@dataclass
class ConfigMapStack:
    redis: ManifestRedis
    kube: KubeApiServer
    placement: PausingWorker
    app: Celery
    client: redis.Redis
    pools: dict[str, Any]

    def invariants(self) -> dict[str, Any]:
        return check_invariants(Ledger(self.client), self.pools)


@pytest.fixture
def cm_stack(tmp_path) -> Iterator[ConfigMapStack]:
    server = ManifestRedis("16mb").start()
    kube = KubeApiServer().__enter__()
    pools = tmp_path / "pools.yaml"
    pools.write_text((ROOT / "examples" / "pools.yaml").read_text())
    gate = tmp_path / "gate"
    gate.mkdir()
    env = env_for(server.url, pools, VCM_CONFIGMAP=f"{NS}/{NAME}",
                  KUBECONFIG=str(kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)),
                  VCM_TEST_GATE=str(gate))
    placement = PausingWorker(env, "placement", log=str(tmp_path / "placement.log")).start()
    app = Celery("pressure-client", broker=server.url, backend=server.url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = server.url
    s = ConfigMapStack(server, kube, placement, app, server.client(),
                       {p.name: p for p in load_pools(str(pools))})
    try:
        yield s
    finally:
        placement.kill()  # thrown away: no test looks at this stop
        app.close()
        s.client.close()
        kube.__exit__(None, None, None)
        server.stop()


def test_a_grant_whose_held_answer_redis_refuses_is_answered_once_redis_has_room(cm_stack,
                                                                                  tmp_path):
    """Redis fills right after an acquire's commit, before its answer is put in the outbox
    (where it waits for the ConfigMap save): the worker holds the answer, keeps running, and
    the client gets its leases once Redis has room, not RedisFull for a grant it holds."""
    s = cm_stack
    gate = tmp_path / "gate"
    first = s.app.send_task("vcm.acquire", kwargs={"request": small("warm")}, queue="placement")
    assert [x["status"]["request-id"] for x in first.get(timeout=ANSWER)] == ["warm"]

    (gate / "armed").touch()
    r = s.app.send_task("vcm.acquire", kwargs={"request": small("as-it-fills")},
                        queue="placement")
    wait_for((gate / "waiting").exists, timeout=ANSWER, what="the commit of the acquire")
    fill(s.app, s.client)
    (gate / "open").touch()
    logged(s.placement, f"task {r.id} until Redis takes writes again")
    audit = s.invariants()
    granted = [i for i, x in audit["leases"].items()
               if x["status"]["request-id"] == "as-it-fills"]
    assert len(granted) == 1, audit["leases"]
    assert s.placement.proc.poll() is None

    free(s.client)
    leases = r.get(timeout=ANSWER)
    assert lease_ids(leases) == granted
    # a copy of the task, sent again with its id, gets the same answer and grants nothing
    copy = s.app.send_task("vcm.acquire", kwargs={"request": small("as-it-fills")},
                           queue="placement", task_id=r.id)
    assert lease_ids(copy.get(timeout=ANSWER)) == granted
    assert s.invariants()["leases"].keys() == audit["leases"].keys()


def test_a_worker_asked_to_stop_while_it_holds_an_answer_stops_and_a_copy_is_answered(
        cm_stack, tmp_path):
    """A rollout stops the placement worker (SIGTERM) while Redis is full and it holds a
    granted acquire's answer: it stops holding and exits, the task's message stays unacked
    (the broker gives it again), and a copy of the task, sent once Redis has room, gets the
    leases granted, from the ledger."""
    s = cm_stack
    gate = tmp_path / "gate"
    (gate / "armed").touch()
    r = s.app.send_task("vcm.acquire", kwargs={"request": small("as-it-stops")},
                        queue="placement")
    wait_for((gate / "waiting").exists, timeout=ANSWER, what="the commit of the acquire")
    fill(s.app, s.client)
    (gate / "open").touch()
    logged(s.placement, f"task {r.id} until Redis takes writes again")
    s.placement.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: s.placement.proc.poll() is not None, timeout=60,
             what="the worker to stop while Redis is full")
    assert s.client.hlen("unacked") == 1, s.placement.output_of_this_run()[-3000:]
    granted = [i for i, x in s.invariants()["leases"].items()
               if x["status"]["request-id"] == "as-it-stops"]
    assert len(granted) == 1

    s.placement.start(wait=False)
    logged(s.placement, "waiting for room")
    free(s.client)
    s.placement.wait_ready(timeout=60)
    copy = s.app.send_task("vcm.acquire", kwargs={"request": small("as-it-stops")},
                           queue="placement", task_id=r.id)
    assert lease_ids(copy.get(timeout=ANSWER)) == granted
    assert lease_ids(r.get(timeout=ANSWER)) == granted
    assert [i for i, x in s.invariants()["leases"].items()
            if x["status"]["request-id"] == "as-it-stops"] == granted


def test_a_waiter_granted_as_redis_fills_gets_its_leases_after_its_worker_stopped(cm_stack,
                                                                                   tmp_path):
    """`vcm acquire --wait` waits in line; a release grants it, and Redis fills before its
    answer is stored. The worker holds the answer and is stopped (a rollout) while Redis is
    full: the answer it held is gone with it, and the waiter's task, acked when it joined the
    line, is never given again. The grant is in the ledger, recorded as the task's answer:
    vcm, seeing its task still waiting after its wait ran out, sends a copy, which gets the
    leases."""
    s = cm_stack
    gate = tmp_path / "gate"
    big = {"vcpus": 100, "memory": 1, "networks": 0, "owner": OWNER}
    held = [lease_ids(s.app.send_task("vcm.acquire", kwargs={"request": {
        **big, "request-id": f"big-{i}"}}, queue="placement").get(timeout=ANSWER))[0]
        for i in range(2)]  # pool1 and pool2: 100 vCPUs fit nowhere else
    # its wait outlasts the steps below up to free() (9-11 s with both cores busy): the copy
    # vcm sends once the wait ran out finds Redis with room
    cli = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "acquire", "--vcpus", "100", "--memory", "1",
         "--networks", "0", "--owner", OWNER, "--request-id", "waiter", "--wait", "15s",
         "--timeout", "120", "-o", "json", "--redis-url", s.redis.url],
        cwd=ROOT, env={**s.placement.env, "VCM_RESEND_AFTER": "1s"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        ledger = Ledger(s.client)
        waiting = wait_for(lambda: ledger.waiters(), timeout=ANSWER, what="the waiter in line")
        task_id = waiting[0][1]["task"]
        (gate / "armed").touch()
        s.app.send_task("vcm.release", kwargs={"lease_ids": held[:1]}, queue="placement")
        wait_for((gate / "waiting").exists, timeout=ANSWER, what="the commit of the grant")
        fill(s.app, s.client)
        (gate / "open").touch()
        logged(s.placement, f"holding the answer of task {task_id}")
        granted = [i for i, x in s.invariants()["leases"].items()
                   if x["status"]["request-id"] == "waiter"]
        assert len(granted) == 1
        s.placement.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: s.placement.proc.poll() is not None, timeout=60,
                 what="the worker to stop while Redis is full")
        s.placement.start(wait=False)
        logged(s.placement, "waiting for room")
        free(s.client)
        out, err = cli.communicate(timeout=180)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 0, err
    assert lease_ids(json.loads(out)) == granted
    assert [i for i, x in s.invariants()["leases"].items()
            if x["status"]["request-id"] == "waiter"] == granted
