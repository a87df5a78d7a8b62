"""A worker holds the states and answers a full Redis refuses, instead of losing them.

Redis evicts nothing (maxmemory-policy noeviction, see workers/adapters/redis_memory.py):
when it is full it refuses every write, the result backend's too. Celery's worker would then
fail to store a task's STARTED state or its answer, fail again storing that failure, and on
the placement worker (one process) end the worker. Instead, what a task stores through its
result backend is stored again, with the project's backoff (0.2 s doubling to 2 s), until
Redis takes it:

- a task that comes while Redis is full waits at its STARTED state, before it changes
  anything, and then runs as usual once Redis has room: its client gets the real answer;
- an answer made just before Redis filled (or RedisFull itself, when a ledger write was
  refused mid-task) is stored once Redis has room;
- a worker asked to shut down stops holding: the task's message is still unacked, so it is
  delivered again later and answered from the ledger's request-id record;
- a worker that starts while Redis is full waits for room before it takes tasks
  (``wait_for_room``): its consumer could not even look at its queues (Redis refuses every
  command sent in MULTI then).

Answers stored later (a waiter granted or timed out, an answer held for the mirror) are held
the same way by workers/adapters/replies.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from workers import backoff
from workers.adapters.redis_memory import HOLD_CAP, MemoryUse, hold
from workers.adapters.replies import shutting_down
from workers.liveness import waiting

log = logging.getLogger(__name__)

# the backend's methods that write a task's state or answer
WRITES = frozenset({"store_result", "mark_as_done", "mark_as_failure", "mark_as_retry",
                    "mark_as_started", "mark_as_revoked"})


class HeldAnswers:
    """The app's result backend with its writes held through a refusal for memory; anything
    else is the backend's own."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._backend, name)
        if name not in WRITES:
            return value

        def write(*args: Any, **kwargs: Any) -> Any:
            task_id = args[0] if args else kwargs.get("task_id")
            return hold(lambda: value(*args, **kwargs), getattr(self._backend, "client", None),
                        f"the state of task {task_id}", shutting_down)

        return write


def wait_for_room(memory_now: Callable[[], MemoryUse | None]) -> None:
    """Return once Redis is not full (or does not say: the consumer's own retries take over);
    meanwhile log once, and look again with backoff. `memory_now`: the ledger's look at
    Redis's memory."""
    delays = backoff.Backoff(backoff.doubling(cap=HOLD_CAP))
    started = time.monotonic()
    waited = False
    while True:
        memory = memory_now()
        if memory is None or not memory.full:
            break
        waiting()  # the worker waits as it should: its liveness file says so
        if not waited:
            waited = True
            log.warning("Redis is full (%d of maxmemory %d bytes, policy %s): waiting for "
                        "room before taking tasks", memory.used, memory.limit, memory.policy)
        time.sleep(delays.next())
    if waited:
        log.warning("Redis has room again after %.1fs: taking tasks", time.monotonic() - started)
