"""A send to a Redis that takes connections and never answers (a hung node, a network that
drops replies: here redis-server under SIGSTOP) fails after the sender's socket timeouts,
instead of waiting for ever: kombu's Redis transport has no socket timeout of its own, so each
long-running sender of ours (the Lease controller, the HTTP shim) gives its broker one. The
controller then tries the Lease again; the shim answers 503. `vcm`'s own bound is pinned in
workers/test_cli_redis_outage.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.support.procs import RedisServer
from workers.contract import Task

# how long a send may take against a paused Redis: kombu's publish retries (two for the
# controller's and the shim's senders), each waiting one socket timeout (5 s) to read and
# one to reconnect, with room for a loaded machine
BOUND = 45.0


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.resume()
    server.stop()


def test_the_controllers_send_to_a_redis_that_never_answers_fails(redis_server):
    from workers.controller.placement import Placement

    async def run() -> BaseException | None:
        placement = Placement(redis_server.url)
        await placement.start()
        try:
            await placement.send(Task.LIST_LEASES, {"owner": "job-1"}, "warm-up")  # connected
            redis_server.pause()
            try:
                await asyncio.wait_for(
                    placement.send(Task.LIST_LEASES, {"owner": "job-1"}, "stalled"), BOUND)
            except TimeoutError:
                pytest.fail(f"the send still waited after {BOUND:g}s")
            except Exception as exc:  # noqa: BLE001 - what the controller's caller gets
                return exc
            return None
        finally:
            redis_server.resume()
            await placement.close()

    started = time.monotonic()
    error = asyncio.run(run())
    assert error is not None, "a send to a Redis that never answered succeeded"
    assert time.monotonic() - started < BOUND + 15


def test_the_shims_send_to_a_redis_that_never_answers_fails(redis_server):
    import threading

    from api_shim.bridge import make_celery

    app = make_celery(redis_server.url)
    outcome: list[BaseException | None] = []

    def send(task_id: str) -> None:
        try:
            app.send_task(Task.LIST_LEASES, kwargs={"owner": "job-1"}, task_id=task_id)
        except Exception as exc:  # noqa: BLE001 - what the shim's caller gets
            outcome.append(exc)
        else:
            outcome.append(None)

    try:
        send("warm-up")
        assert outcome.pop() is None
        redis_server.pause()
        thread = threading.Thread(target=send, args=("stalled",), daemon=True)
        thread.start()
        thread.join(BOUND)
        assert not thread.is_alive(), f"the send still waited after {BOUND:g}s"
        assert outcome and outcome[0] is not None, "a send to a Redis that never answered succeeded"
    finally:
        redis_server.resume()
        app.close()
