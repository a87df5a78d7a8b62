"""How `vcm` polls a task's record in the result backend while the task waits in line.

The record changes under the poller: WAITING (a dict: place in line, reasons) until the
grant replaces it with the leases (a list). A poll that reads the record twice can see
WAITING, then the leases, and treat the list as the dict: `vcm` died with
`AttributeError: 'list' object has no attribute 'get'` while its waiter was being granted.
Here the test plays the worker on a real redis-server: it takes the task's message off the
broker's queue and writes its record through Celery's result backend, switching it between
WAITING and the grant as fast as Redis takes the writes, then leaves the grant."""

from __future__ import annotations

import argparse
import json
import threading
import time

import pytest

from tests.support.procs import RedisServer
from workers.cli.client import call, celery_app
from workers.contract import PLACEMENT, WAITING

LEASES = [{"metadata": {"name": "lease-1"}, "spec": {}, "status": {"pool": "pool1"}}]


ROUNDS = 60  # one round's chance of a poll between the two reads is a few percent


@pytest.fixture()
def redis_server():
    """A redis-server of this test's own: no worker consumes its queue but the test."""
    server = RedisServer().start()
    yield server
    server.stop()


def test_a_record_that_changes_between_reads_of_one_poll_is_read_as_one(redis_server):
    app = celery_app(redis_server.url)
    client = redis_server.client()
    answered = threading.Event()
    flips: list[int] = []

    def worker() -> None:
        backend = app.backend
        waiting = {"position": 1, "reasons": {"pool1": "insufficient vcpus"}}
        for _ in range(ROUNDS):
            popped = client.brpop([PLACEMENT], timeout=10)
            if popped is None:
                return
            task_id = json.loads(popped[1])["headers"]["id"]
            n, deadline = 0, time.monotonic() + 5
            while not answered.is_set() and time.monotonic() < deadline:
                backend.store_result(task_id, waiting, WAITING)
                backend.store_result(task_id, LEASES, "SUCCESS")
                n += 1
            backend.store_result(task_id, LEASES, "SUCCESS")
            flips.append(n)
            answered.clear()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    args = argparse.Namespace(redis_url=redis_server.url, quiet=True)
    try:
        for _ in range(ROUNDS):
            answer = call(args, "vcm.acquire", timeout=30,
                          request={"vcpus": 1, "memory": 1, "owner": "poller"})
            assert answer == LEASES
            answered.set()
            while answered.is_set() and thread.is_alive():
                time.sleep(0.001)
    finally:
        answered.set()
        thread.join(timeout=10)
    assert len(flips) == ROUNDS and sum(flips) > ROUNDS, flips  # it did change under the poller
