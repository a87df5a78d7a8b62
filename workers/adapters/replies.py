"""Answers to tasks that finish later (parked, or held until the mirror covers them): written
straight into the Celery result backend, with task events so Flower sees them finish. An
answer a full Redis refuses is held (redis_memory.hold) until Redis takes it: the waiter it
belongs to has left the line, so it would never be answered otherwise."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, states
from celery.worker import state as worker_state

from ..contract import WAITING
from .redis_memory import hold

log = logging.getLogger(__name__)


class CeleryReplies:
    def __init__(self, app: Celery, hostname: str | None = None) -> None:
        self.app = app
        self.hostname = hostname or f"placement@{socket.gethostname()}"
        self._lock = threading.Lock()
        self._dispatcher = None

    def _event(self, kind: str, **fields: Any) -> None:
        try:
            with self._lock:
                if self._dispatcher is None:
                    self._dispatcher = self.app.events.Dispatcher(
                        self.app.connection_for_write(), hostname=self.hostname, enabled=True)
                self._dispatcher.send(kind, **fields)
        except Exception as exc:  # events are best effort; results are what matter
            log.debug("task event %s not sent: %s", kind, exc)
            self._dispatcher = None

    def _held(self, write: Callable[[], Any], task_id: str) -> None:
        hold(write, getattr(self.app.backend, "client", None), f"the answer of task {task_id}",
             shutting_down)

    def deliver(self, task_id: str, result: Any) -> None:
        self._held(lambda: self.app.backend.store_result(task_id, result, states.SUCCESS),
                   task_id)
        self._event("task-succeeded", uuid=task_id, result=repr(result)[:1000],
                    runtime=0.0, timestamp=time.time())

    def waiting(self, task_id: str, meta: dict[str, Any]) -> None:
        self._held(lambda: self.app.backend.store_result(task_id, meta, WAITING), task_id)

    def fail(self, task_id: str, exc: Exception) -> None:
        self._held(lambda: self.app.backend.mark_as_failure(task_id, exc), task_id)
        self._event("task-failed", uuid=task_id, exception=repr(exc)[:1000],
                    timestamp=time.time())


class OutboxReplies:
    """Successes wait in the ledger's outbox until the mirror covers them; the rest go now."""

    def __init__(self, ledger, direct: CeleryReplies,
                 covered: Callable[[], bool] = lambda: False) -> None:
        self.ledger = ledger
        self.direct = direct
        self.covered = covered  # the mirror already holds every change (its journal does)

    def deliver(self, task_id: str, result: Any) -> None:
        if self.covered():
            self.direct.deliver(task_id, result)
        else:
            hold(lambda: self.ledger.defer(task_id, result), self.ledger.r,
                 f"the answer of task {task_id}", shutting_down)

    def waiting(self, task_id: str, meta: dict[str, Any]) -> None:
        self.direct.waiting(task_id, meta)

    def fail(self, task_id: str, exc: Exception) -> None:
        self.direct.fail(task_id, exc)


def shutting_down() -> bool:
    """Whether this worker was asked to stop (a held answer then gives up). Celery sets the
    flag to the exit code, 0 for a warm shutdown (SIGTERM): compared by identity, as Celery
    does, since 0 == False."""
    return any(flag is not None and flag is not False
               for flag in (worker_state.should_stop, worker_state.should_terminate))
