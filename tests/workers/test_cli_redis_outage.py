"""`vcm` waiting for an answer while Redis restarts under it.

A job step runs `vcm acquire --wait ...` for minutes; the deployment restarts Redis (AOF keeps
the data) and a failover takes a few seconds. While its deadline has not passed, `vcm` says once
that Redis is not answering, keeps polling (backing off), sends a lost task again once Redis
answers, and says when Redis is back. Redis down past the deadline: exit 1, naming Redis (as
when it cannot be reached at the send), never its password. The same task id sent again is
answered once: the ledger holds exactly the leases granted.

Each test has its own redis-server with an AOF (`persist=True`), killed (SIGKILL: what a node
loss leaves; a redis-server writes its AOF before it answers, so nothing answered is lost) and
started again on the same port from the same directory."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.signals import before_task_publish

from tests.support.audit import audit
from tests.support.helpers import call, placement_barrier
from tests.support.procs import ROOT, RedisServer, Worker, env_for, wait_for
from workers.adapters.ledger import Ledger

POOLS = """\
pools:
  - name: pool1
    vcenter: vcenter1.example.com
    datacenter: datacenter1
    cluster: cluster1
    datastore: datastore1
    vcpus: 8
    memory: 8
    storage: 100
    networks:
      - {port-group: ci-vlan-1001, vlan: 1001, cidr: 192.168.1.0/24, gateway: 192.168.1.1}
      - {port-group: ci-vlan-1002, vlan: 1002, cidr: 192.168.2.0/24, gateway: 192.168.2.1}
"""
FULL = {"vcpus": 8, "memory": 8}  # the whole pool: a second one waits in line
DOWN = "is not answering"
BACK = "answers again"


@pytest.fixture()
def server() -> Iterator[RedisServer]:
    server = RedisServer(persist=True).start()
    yield server
    server.stop()


@pytest.fixture()
def env(server: RedisServer, tmp_path: Path) -> dict:
    pools = tmp_path / "pools.yaml"
    pools.write_text(POOLS)
    return env_for(server.url, pools, VCM_MIRROR_FILE=str(tmp_path / "ledger.json"),
                   VCM_RESEND_AFTER="1s")


def client_app(url: str) -> Celery:
    app = Celery("client", broker=url, backend=url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = url
    return app


def vcm(env: dict, err: Path, *args: str) -> subprocess.Popen:
    """`vcm ARGS` as a process; its stderr goes to `err` (read while it runs)."""
    with err.open("w") as fh:
        return subprocess.Popen([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=fh, text=True)


def restart(server: RedisServer, err: Path) -> None:
    """Kill Redis, let `vcm` find it gone, start it again from its AOF on the same port."""
    server.kill()
    wait_for(lambda: DOWN in err.read_text(), timeout=30, what="vcm to say Redis is gone")
    time.sleep(1)  # a few polls more while it is down
    server.start()


def ended(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
        p.communicate()


def test_an_acquire_waiting_in_line_outlives_a_redis_restart(server, env, tmp_path):
    worker = Worker(env, "placement").start()  # the documented command
    app = client_app(server.url)
    err = tmp_path / "acquire.err"
    p = None
    try:
        first = call(app, "vcm.acquire", request={**FULL, "owner": "job-1"})[0]
        app.close()
        p = vcm(env, err, "acquire", "--vcpus", "8", "--memory", "8", "--owner", "job-2",
                "--wait", "5m", "-o", "json")
        wait_for(lambda: "waiting in line: position 1" in err.read_text(), timeout=30,
                 what="the acquire to wait in line")
        restart(server, err)
        wait_for(lambda: BACK in err.read_text(), timeout=30, what="vcm to see Redis back")
        app = client_app(server.url)  # the worker takes it once it is connected again
        assert call(app, "vcm.release", timeout=60, lease_ids=[first["metadata"]["name"]],
                    owner="job-1") == [first["metadata"]["name"]]
        out, _ = p.communicate(timeout=60)
        stderr = err.read_text()
        assert p.returncode == 0, stderr
        leases = json.loads(out)
        assert [x["status"]["owner"] for x in leases] == ["job-2"], leases
        assert stderr.count(DOWN) == 1 and stderr.count(BACK) == 1, stderr
        assert f"Redis at {server.url} {DOWN}" in stderr, stderr
        placement_barrier(app, timeout=30)  # every copy of the task was answered
        assert sorted(audit(Ledger(server.client()))["leases"]) == [leases[0]["metadata"]["name"]]
        app.close()
    finally:
        if p is not None:
            ended(p)
        worker.kill()  # thrown away: no test here looks at its shutdown


def test_a_task_no_worker_took_is_sent_again_once_redis_is_back(server, env, tmp_path):
    """No worker yet: the task stays PENDING and vcm sends it again every VCM_RESEND_AFTER;
    Redis restarts meanwhile. A worker started afterwards takes every copy: one lease."""
    err = tmp_path / "acquire.err"
    client = server.client()
    p = vcm(env, err, "acquire", "--vcpus", "1", "--memory", "1", "--owner", "job-1",
            "-o", "json")
    worker = None
    try:
        wait_for(lambda: "sent it again" in err.read_text(), timeout=30, what="a copy sent")
        restart(server, err)
        wait_for(lambda: BACK in err.read_text(), timeout=30, what="vcm to see Redis back")
        sent = err.read_text().count("sent it again")
        wait_for(lambda: err.read_text().count("sent it again") > sent, timeout=30,
                 what="a copy sent after the restart")
        worker = Worker(env, "placement").start()
        out, _ = p.communicate(timeout=60)
        stderr = err.read_text()
        assert p.returncode == 0, stderr
        leases = json.loads(out)
        assert len(leases) == 1 and leases[0]["status"]["owner"] == "job-1", leases
        app = client_app(server.url)
        placement_barrier(app, timeout=30)
        app.close()
        assert client.llen("placement") == 0  # every copy was taken, and answered as one
        assert sorted(audit(Ledger(client))["leases"]) == [leases[0]["metadata"]["name"]]
    finally:
        ended(p)
        if worker is not None:
            worker.kill()


def test_a_release_by_owner_outlives_a_restart_and_is_never_sent_again(server, env, tmp_path):
    """A release by owner is not sent again (a late copy would release leases granted
    since), Redis restarting or not: it waits in the queue and is answered once."""
    worker = Worker(env, "placement").start()
    app = client_app(server.url)
    client = server.client()
    err = tmp_path / "release.err"
    p = None
    try:
        held = call(app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "owner": "job-1"})
        worker.kill()  # the release waits in the queue until a worker is back
        app.close()
        p = vcm(env, err, "release", "--owner", "job-1", "-o", "json")
        wait_for(lambda: client.llen("placement") == 1, timeout=30, what="the release queued")
        restart(server, err)
        wait_for(lambda: BACK in err.read_text(), timeout=30, what="vcm to see Redis back")
        time.sleep(2)  # two VCM_RESEND_AFTER: a resendable task would have been sent again
        client = server.client()
        assert client.llen("placement") == 1
        worker = Worker(env, "placement").start()
        out, _ = p.communicate(timeout=60)
        stderr = err.read_text()
        assert p.returncode == 0, stderr
        assert json.loads(out) == [held[0]["metadata"]["name"]]
        assert "sent it again" not in stderr
        assert audit(Ledger(client))["leases"] == {}
    finally:
        if p is not None:
            ended(p)
        worker.kill()


def test_redis_down_past_the_deadline_exits_1_naming_redis_without_its_password(
        server, env, tmp_path):
    """Redis gone for good: at the deadline vcm says Redis did not answer, not "is a worker
    running?", and exits 1, as when Redis cannot be reached at the send (3 is for a wait in
    line that ran out: the placement's answer). The URL's password is never shown."""
    secret = "s3cret-Pa55word"
    server.client().config_set("requirepass", secret)
    url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
    shown = f"redis://:**@127.0.0.1:{server.port}/0"
    err = tmp_path / "acquire.err"
    p = vcm({**env, "VCM_REDIS_URL": url}, err, "acquire", "--vcpus", "1", "--memory", "1",
            "--owner", "job-1", "--timeout", "8")
    try:
        client = redis.Redis(host="127.0.0.1", port=server.port, password=secret)
        wait_for(lambda: client.llen("placement") == 1, timeout=30, what="the task queued")
        server.kill()
        went = time.monotonic()
        out, _ = p.communicate(timeout=60)
        stderr = err.read_text()
        assert p.returncode == 1, stderr
        assert stderr.count(DOWN) == 1, stderr
        assert f"Redis at {shown} {DOWN}" in stderr, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("vcm: ") and f"Redis at {shown}" in last, stderr
        assert "did not answer" in last and "worker running" not in last, stderr
        assert "Traceback" not in stderr and secret not in stderr + out, stderr
        assert time.monotonic() - went < 15  # it gave up at its deadline, not long after
    finally:
        ended(p)


def test_a_copy_that_meets_redis_gone_is_sent_again_later(server, env, tmp_path, capsys,
                                                          monkeypatch):
    """The copy itself meets Redis gone (killed as it is published, after the poll that
    found the task PENDING): vcm says so and sends it again once Redis is back, instead of
    failing. `call` runs in this process, so the test kills Redis at that very publish."""
    from workers.cli.client import call as vcm_call

    monkeypatch.setenv("VCM_RESEND_AFTER", "1s")
    publishes: list[str] = []
    restarted = threading.Event()

    def back() -> None:
        time.sleep(2)
        server.start()
        restarted.set()

    restarter = threading.Thread(target=back, daemon=True)

    def on_publish(sender=None, headers=None, **_kw) -> None:
        publishes.append(headers["id"])
        if len(publishes) == 2:  # the first copy: Redis goes, and comes back 2 s later
            server.kill()
            restarter.start()

    before_task_publish.connect(on_publish)
    answer: list = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            answer.append(vcm_call(argparse.Namespace(redis_url=server.url, quiet=False),
                                   "vcm.acquire", timeout=60,
                                   request={"vcpus": 1, "memory": 1, "owner": "job-1"}))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    worker = None
    try:
        thread.start()
        wait_for(lambda: len(publishes) >= 3 or failed, timeout=30, what="a copy after Redis")
        assert not failed, failed
        assert restarted.is_set()
        worker = Worker(env, "placement").start()
        thread.join(timeout=60)
        assert not failed, failed
        [leases] = answer
        assert len(leases) == 1 and leases[0]["status"]["owner"] == "job-1", leases
        stderr = capsys.readouterr().err
        assert stderr.count(DOWN) == 1 and stderr.count(BACK) == 1, stderr
        assert set(publishes) == {publishes[0]}  # one task id, every time
        app = client_app(server.url)
        placement_barrier(app, timeout=30)
        app.close()
        client = server.client()
        assert client.llen("placement") == 0
        assert sorted(audit(Ledger(client))["leases"]) == [leases[0]["metadata"]["name"]]
    finally:
        before_task_publish.disconnect(on_publish)
        if restarter.is_alive():  # started again before the fixture stops it, not after
            restarter.join(timeout=30)
        if worker is not None:
            worker.kill()
        thread.join(timeout=10)


def test_a_redis_that_takes_connections_but_never_answers_fails_at_the_deadline(
        server, env, tmp_path):
    """Redis stopped (SIGSTOP: the kernel still takes connections, nothing answers: a node
    that hangs, a network that drops replies) while vcm polls: each poll's read waits for
    its socket timeout, so that timeout bounds how far past its deadline vcm gives up. It
    says for how long Redis did not answer, counted from the poll that got no answer."""
    err = tmp_path / "acquire.err"
    p = vcm({**env, "VCM_RESEND_AFTER": "5m"}, err, "acquire", "--vcpus", "1", "--memory", "1",
            "--owner", "job-1", "--timeout", "8")
    started = time.monotonic()
    client = server.client()
    try:
        wait_for(lambda: client.llen("placement") == 1, timeout=30, what="the task queued")
        time.sleep(0.5)  # a few polls that Redis answers
        server.pause()
        stopped = time.monotonic()
        out, _ = p.communicate(timeout=120)
        took = time.monotonic() - started
        stderr = err.read_text()
        assert p.returncode == 1, stderr
        last = stderr.strip().splitlines()[-1]
        assert "did not answer" in last, stderr
        assert took < 8 + 8, (took, stderr)  # its deadline, and at most one socket timeout
        quiet = float(re.search(r"did not answer for the last (\d+)s", last).group(1))
        assert quiet >= started + 8 - stopped - 1, (quiet, stderr)
    finally:
        server.resume()
        ended(p)


def test_a_copy_sent_to_a_redis_that_never_answers_gives_up_at_the_deadline(
        server, env, tmp_path, capsys, monkeypatch):
    """The copy's publish meets Redis stopped (SIGSTOP, from before_task_publish): the
    publish waits for its socket timeout, not forever, and vcm fails at its deadline naming
    Redis."""
    from workers.cli.client import call as vcm_call
    from workers.cli.exits import CliError

    monkeypatch.setenv("VCM_RESEND_AFTER", "1s")
    publishes: list[str] = []

    def on_publish(sender=None, headers=None, **_kw) -> None:
        publishes.append(headers["id"])
        if len(publishes) == 2:  # the first copy
            server.pause()

    before_task_publish.connect(on_publish)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            vcm_call(argparse.Namespace(redis_url=server.url, quiet=False), "vcm.acquire",
                     timeout=6, request={"vcpus": 1, "memory": 1, "owner": "job-1"})
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    try:
        started = time.monotonic()
        thread.start()
        thread.join(timeout=6 + 15)
        assert not thread.is_alive(), f"still waiting {time.monotonic() - started:.0f}s on"
        [exc] = failed
        assert isinstance(exc, CliError) and "did not answer" in str(exc), exc
        assert len(publishes) >= 2
    finally:
        before_task_publish.disconnect(on_publish)
        server.resume()
        thread.join(timeout=60)
