"""A task that Redis refuses (it is full) and then takes on kombu's retry is queued once, by
every sender of ours: the `vcm` CLI (a job step), the HTTP shim, the Lease controller, the
workers and beat (celeryconfig alone), and the tests' own backlog sender.

kombu's Producer.publish (retry on, Celery's default) runs its `_publish` under
Connection.ensure, and `_publish` declares the queue Celery hands it under an ensure of its
own. Redis's transport counts every Redis error, a refusal included, as a lost connection:
when Redis refuses the declare, that inner ensure closes the connection and its channel,
reconnects and declares again; when Redis takes that, `_publish` goes on with the channel it
read before the declare, now closed, and fails in kombu.transport.redis Channel._connparams
with `AttributeError: 'NoneType' object has no attribute 'client'` before anything is
queued (`vcm` printed "cannot reach Redis", the shim answered 503, test_stateful's `fill`
failed). A client declares on the first send of each connection, and again after every
reconnect: a `vcm` process always does, and so does any client once Redis had to be
reconnected to.

Here Redis is over its maxmemory (a ballast key; noeviction, as deploy/redis.yaml runs it)
when the send starts, and has room from kombu's first retry on: the retry policy's errback,
which kombu calls before it reconnects, drops the ballast. In production, room comes whenever
other clients free memory (answers expire, a worker drains a queue, connections close). Each
sender gets a fresh connection: the first send of a process, as `vcm` makes it. The test
plays the worker: it reads the queue, no Celery worker takes the message first."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from tests.support.procs import RedisServer
from workers.adapters.redis_memory import refused_for_memory
from workers.contract import PLACEMENT

BALLAST = "test-send-retry-ballast"
LEASES = [{"metadata": {"name": "lease-1"}, "spec": {}, "status": {"pool": "pool1"}}]


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own: a URL no client of this process has used, so each
    sender starts on a fresh connection, and no worker consumes its queues."""
    server = RedisServer().start()
    yield server
    server.stop()


class FullUntilRetry:
    """Redis over its maxmemory until kombu's first retry: the retry policy's `errback`
    (kombu calls it with each error it retries) drops the ballast on its first call."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.errors: list[BaseException] = []
        client.config_set("maxmemory-policy", "noeviction")
        client.setrange(BALLAST, 4 * 2**20, "x")  # 4 MB made by Redis: no 4 MB query buffer
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 2**20)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("test-send-retry-probe", "refused")

    def __call__(self, exc: BaseException, interval: float) -> None:
        self.errors.append(exc)
        if len(self.errors) == 1:
            self.client.delete(BALLAST)

    def install(self, app: Celery) -> None:
        """On `app`'s retry policy (a send's own policy is merged over it)."""
        app.conf.task_publish_retry_policy = {
            **(app.conf.task_publish_retry_policy or {}), "errback": self}

    def check_refused_then_taken(self) -> None:
        assert self.errors and refused_for_memory(self.errors[0]), \
            f"Redis did not refuse the send first: {self.errors}"
        assert self.client.get(BALLAST) is None


def _queued(client: redis.Redis, queue: str) -> list[str]:
    """The task ids of the messages on `queue`."""
    return [json.loads(m)["headers"]["id"] for m in client.lrange(queue, 0, -1)]


# -- every Celery client of ours, made as its process makes it ---------------------------------

def _shim(url: str) -> Celery:
    from api_shim.bridge import make_celery

    return make_celery(url)


def _controller(url: str) -> Celery:
    from workers.controller.placement import make_celery

    return make_celery(url)


def _celeryconfig(url: str) -> Celery:
    """The workers' and beat's settings (tasks/__init__.py: celeryconfig, nothing else)."""
    app = Celery("vcm-test", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = url
    return app


def _send_acquire(app: Celery) -> str:
    """vcm.acquire as the shim and the controller send it (and the workers their tasks)."""
    app.send_task("vcm.acquire", kwargs={"request": {"vcpus": 1, "memory": 1}},
                  queue=PLACEMENT, task_id="task-refused-then-taken")
    return PLACEMENT


def _send_backlog(app: Celery) -> str:
    """The tests' backlog message (tests/support/pressure.py), sent while Redis fills."""
    from tests.support.pressure import send_backlog

    send_backlog(app, pad=16, queue="test-send-retry-backlog")
    return "test-send-retry-backlog"


SENDERS: dict[str, tuple[Callable[[str], Celery], Callable[[Celery], str]]] = {
    "shim": (_shim, _send_acquire),
    "controller": (_controller, _send_acquire),
    "workers-and-beat": (_celeryconfig, _send_acquire),
    "tests-backlog": (_celeryconfig, _send_backlog),
}


@pytest.mark.parametrize("sender", sorted(SENDERS))
def test_a_send_refused_then_taken_on_retry_is_queued_once(redis_server, sender):
    client = redis_server.client()
    make, send = SENDERS[sender]
    app = make(redis_server.url)
    try:
        full = FullUntilRetry(client)
        full.install(app)
        queue = send(app)
        full.check_refused_then_taken()
        assert len(_queued(client, queue)) == 1, _queued(client, queue)
    finally:
        app.close()
        client.close()


def test_vcm_sends_when_redis_takes_kombus_retry(redis_server):
    """`vcm acquire`'s send (workers/cli/client.py `call`, a job step's) is queued once and
    answered; the test answers it as the placement worker would."""
    from workers.cli.client import call, celery_app

    client = redis_server.client()
    app = celery_app(redis_server.url)
    full = FullUntilRetry(client)
    full.install(app)
    taken: list[str] = []

    def worker() -> None:
        popped = client.brpop([PLACEMENT], timeout=10)
        if popped is not None:
            task_id = json.loads(popped[1])["headers"]["id"]
            taken.append(task_id)
            app.backend.store_result(task_id, LEASES, "SUCCESS")

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    args = argparse.Namespace(redis_url=redis_server.url, quiet=True)
    try:
        answer: Any = call(args, "vcm.acquire", timeout=30,
                           request={"vcpus": 1, "memory": 1, "owner": "job-1"})
        thread.join(timeout=15)
        assert answer == LEASES
        full.check_refused_then_taken()
        assert len(taken) == 1 and client.llen(PLACEMENT) == 0, taken
    finally:
        client.close()
