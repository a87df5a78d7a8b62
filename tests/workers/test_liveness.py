"""The workers' liveness probe, as deploy/ runs it, against real workers started the documented
way (`-Q placement --concurrency 1`; `-Q queries --concurrency 2`, prefork, as deploy/queries.yaml
starts it; threads, as `vcm run` does).

The probe is the shell command of deploy/placement.yaml and deploy/queries.yaml, read from the
manifests, with only the liveness file's path replaced by the test worker's: it passes while
the worker's file is ahead of now (workers/liveness.py). VCM_WORKER_STUCK_AFTER is 5 s here.

- Redis stopped (the worker's consumer retries to connect, its event loop stopped), Redis full
  (idle; a task delivered, the consumer restarting again and again; an answer held in a task;
  a worker started while full, waiting for room): the probe passes throughout, 2.5 times
  the bound, and the worker serves again once Redis is back or has room.
- A task that hangs (placement: solo, the loop stopped; queries: prefork or threads, the loop
  turning), or the worker SIGSTOPped: the probe fails within the bound, and passes again once
  the task returns or the worker goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from celery.utils.nodenames import node_format

from tasks.liveness import interval
from tests.support.manifests import base_docs, worker_liveness
from tests.support.pressure import ManifestRedis, PausingWorker, fill, free, logged, small
from tests.support.procs import RedisServer, Worker, env_for, wait_for

STUCK_AFTER = 5.0  # VCM_WORKER_STUCK_AFTER of the test workers
WINDOW = 2.5 * STUCK_AFTER  # how long the probe must keep passing while Redis is down or full
ANSWER = 60.0


class Probe:
    """The liveness probe of a Deployment (vcm-placement, vcm-queries), run as the kubelet
    runs an exec probe, against `worker`'s liveness file."""

    def __init__(self, deployment: str, worker: Worker) -> None:
        command, deployed = worker_liveness(base_docs(), deployment)
        assert command[:2] == ["sh", "-c"] and len(command) == 3, command
        assert command[2].count(deployed) == 1, (deployed, command)
        self.worker = worker
        self.path = node_format(worker.env["VCM_WORKER_LIVENESS_FILE"], worker.name)
        self.command = [*command[:2], command[2].replace(deployed, self.path)]

    def passes(self) -> bool:
        return subprocess.run(self.command, capture_output=True, timeout=10).returncode == 0

    def ahead(self) -> float:
        """How far ahead of now the file's deadline is (negative: passed; no file: -inf)."""
        try:
            return os.stat(self.path).st_mtime - time.time()
        except FileNotFoundError:
            return float("-inf")


def keep_passing(probes: list[Probe], seconds: float = WINDOW) -> None:
    """Every probe passes, run every quarter second for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for p in probes:
            assert p.passes(), (f"{p.worker.name}: the probe failed ({p.ahead():.1f}s ahead); "
                                f"its log:\n{p.worker.output_of_this_run()[-3000:]}")
        time.sleep(0.25)


def env_with(redis_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    return env_for(redis_url, VCM_MIRROR_FILE=str(tmp / "ledger.json"),
                   VCM_WORKER_LIVENESS_FILE=str(tmp / "%n.alive"),
                   VCM_WORKER_STUCK_AFTER=f"{STUCK_AFTER:g}s", **extra)


def client(url: str) -> Celery:
    app = Celery("liveness-client", broker=url, backend=url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = url
    return app


def started(*workers: Worker) -> list[Worker]:
    for w in workers:
        w.start(wait=False)
    for w in workers:
        w.wait_ready()
    return list(workers)


# Redis stopped ---------------------------------------------------------------------------------


def test_the_probe_passes_while_redis_is_stopped_and_the_workers_reconnect(tmp_path):
    redis = RedisServer().start()
    env = env_with(redis.url, tmp_path)
    workers = started(Worker(env, "placement"), Worker(env, "queries", concurrency=2))
    app = client(redis.url)
    try:
        probes = [Probe("vcm-placement", workers[0]), Probe("vcm-queries", workers[1])]
        wait_for(lambda: all(p.passes() for p in probes), what="the probes")
        redis.kill()
        keep_passing(probes)
        for w in workers:  # the consumer was in its retry, its event loop stopped
            assert w.output_of_this_run().count("Cannot connect to") >= 2, w.output_of_this_run()
        redis.start()  # empty, on the same port: the placement worker restores the ledger
        for w in workers:
            wait_for(lambda w=w: w.output_of_this_run().count("Connected to redis") >= 2,
                     timeout=ANSWER, what=f"{w.name} reconnected")
        for queue in ("placement", "queries"):
            assert app.send_task("vcm.show_pools", queue=queue).get(timeout=ANSWER)
        assert all(p.passes() for p in probes)
    finally:
        for w in workers:
            w.kill()
        app.close()
        redis.stop()


# Redis full ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_redis() -> Iterator[ManifestRedis]:
    server = ManifestRedis("16mb").start()
    yield server
    server.stop()


@pytest.fixture()
def room(full_redis: ManifestRedis) -> Iterator[Celery]:
    """A client of the full_redis, which has room again after the test."""
    app = client(full_redis.url)
    yield app
    full_redis.client().delete("vcm-test-backlog")
    app.close()


def test_the_probe_passes_while_redis_is_full_idle_or_with_a_task_delivered(
        tmp_path, full_redis, room):
    env = env_with(full_redis.url, tmp_path)
    workers = started(Worker(env, "placement"), Worker(env, "queries", concurrency=2))
    probes = [Probe("vcm-placement", workers[0]), Probe("vcm-queries", workers[1])]
    redis = full_redis.client()
    try:
        wait_for(lambda: all(p.passes() for p in probes), what="the probes")
        fill(room, redis)  # idle: the event loops turn, their timers' writes refused
        keep_passing(probes)

        # a task reaches each worker while Redis is full: Redis refuses the consumer's record
        # of it, and the consumer restarts again and again, its event loop stopped, until
        # Redis has room (what becomes of that task is not this test's subject)
        free(redis)
        for w in workers:
            os.kill(w.proc.pid, signal.SIGSTOP)
        for queue in ("placement", "queries"):
            room.send_task("vcm.show_pools", queue=queue)
        fill(room, redis)
        for w in workers:
            os.kill(w.proc.pid, signal.SIGCONT)
        for w in workers:
            logged(w, "Frequent restarts detected")
        keep_passing(probes)
        free(redis)
        for queue in ("placement", "queries"):
            assert room.send_task("vcm.show_pools", queue=queue).get(timeout=ANSWER)
        assert all(p.passes() for p in probes)
    finally:
        for w in workers:
            w.kill()


def test_the_probe_passes_while_an_answer_is_held_for_a_full_redis(tmp_path, full_redis, room):
    """The placement worker commits an acquire, then Redis fills: the task holds its answer
    (the solo pool: the event loop waits for the task), and says so to the liveness file."""
    gate = tmp_path / "gate"
    gate.mkdir()
    env = env_with(full_redis.url, tmp_path, VCM_TEST_GATE=str(gate))
    (worker,) = started(PausingWorker(env, "placement"))
    probe = Probe("vcm-placement", worker)
    redis = full_redis.client()
    try:
        wait_for(probe.passes, what="the probe")
        (gate / "armed").touch()
        r = room.send_task("vcm.acquire", kwargs={"request": small("held-answer")},
                           queue="placement")
        wait_for((gate / "waiting").exists, timeout=ANSWER, what="the commit of the acquire")
        fill(room, redis)
        (gate / "open").touch()
        logged(worker, f"holding the state of task {r.id}", f"holding the answer of task {r.id}")
        keep_passing([probe])
        free(redis)
        assert [x["status"]["request-id"] for x in r.get(timeout=ANSWER)] == ["held-answer"]
        assert probe.passes()
    finally:
        worker.kill()


def test_the_probe_passes_while_a_worker_started_on_a_full_redis_waits_for_room(
        tmp_path, full_redis, room):
    env = env_with(full_redis.url, tmp_path)
    redis = full_redis.client()
    fill(room, redis)
    worker = Worker(env, "placement").start(wait=False)
    try:
        probe = Probe("vcm-placement", worker)
        logged(worker, "waiting for room")
        keep_passing([probe])
        free(redis)
        worker.wait_ready(timeout=ANSWER)
        assert room.send_task("vcm.show_pools", queue="placement").get(timeout=ANSWER)
        assert probe.passes()
    finally:
        worker.kill()


# A worker stuck --------------------------------------------------------------------------------


class HangingWorker(Worker):
    """A worker of tests/support/pause_in_task.py: its vcm.show_pools hangs once armed."""

    def command(self) -> list[str]:
        args = super().command()
        args[args.index("tasks")] = "tests.support.pause_in_task"
        return args


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.mark.parametrize("deployment,queue,pool", [
    ("vcm-placement", "placement", None),  # solo, whatever the command says
    ("vcm-queries", "queries", None),  # prefork, as deploy/queries.yaml starts it
    ("vcm-queries", "queries", "threads"),  # as `vcm run` starts it
], ids=["placement", "queries-prefork", "queries-threads"])
def test_the_probe_fails_once_a_task_has_hung_that_long_and_passes_when_it_returns(
        tmp_path, redis_server, deployment, queue, pool):
    gate = tmp_path / "gate"
    gate.mkdir()
    env = env_with(redis_server.url, tmp_path, VCM_TEST_GATE=str(gate))
    (worker,) = started(HangingWorker(env, queue, pool=pool, concurrency=2))
    probe = Probe(deployment, worker)
    app = client(redis_server.url)
    try:
        wait_for(probe.passes, what="the probe")
        (gate / "armed").touch()
        hung = app.send_task("vcm.show_pools", queue=queue)
        wait_for((gate / "waiting").exists, timeout=ANSWER, what="the task hanging")
        began = time.monotonic()
        # the other pool process or thread serves meanwhile, the loop turning (not placement)
        if queue == "queries":
            assert app.send_task("vcm.show_pools", queue=queue).get(timeout=ANSWER)
        wait_for(lambda: not probe.passes(), timeout=STUCK_AFTER + 5, interval=0.1,
                 what="the probe to fail")
        # not before the bound, give or take the loop's period and the probe's whole seconds
        assert time.monotonic() - began >= STUCK_AFTER - interval(STUCK_AFTER) - 1
        (gate / "open").touch()
        assert hung.get(timeout=ANSWER)
        wait_for(probe.passes, timeout=STUCK_AFTER, what="the probe to pass again")
    finally:
        worker.kill()
        app.close()


def test_the_probe_fails_while_the_worker_is_stopped(tmp_path, redis_server):
    env = env_with(redis_server.url, tmp_path)
    (worker,) = started(Worker(env, "placement"))
    probe = Probe("vcm-placement", worker)
    try:
        wait_for(probe.passes, what="the probe")
        os.kill(worker.proc.pid, signal.SIGSTOP)
        wait_for(lambda: not probe.passes(), timeout=STUCK_AFTER + 5, interval=0.1,
                 what="the probe to fail")
        os.kill(worker.proc.pid, signal.SIGCONT)
        wait_for(probe.passes, timeout=STUCK_AFTER, what="the probe to pass again")
    finally:
        worker.kill()
