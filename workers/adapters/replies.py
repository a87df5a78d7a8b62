"""Answers to tasks that finish later (parked, or held until the mirror covers them): written
straight into the Celery result backend, with task events so Flower sees them finish."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, states

from ..contract import WAITING

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

    def deliver(self, task_id: str, result: Any) -> None:
        self.app.backend.store_result(task_id, result, states.SUCCESS)
        self._event("task-succeeded", uuid=task_id, result=repr(result)[:1000],
                    runtime=0.0, timestamp=time.time())

    def waiting(self, task_id: str, meta: dict[str, Any]) -> None:
        self.app.backend.store_result(task_id, meta, WAITING)

    def fail(self, task_id: str, exc: Exception) -> None:
        self.app.backend.mark_as_failure(task_id, exc)
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
            self.ledger.defer(task_id, result)

    def waiting(self, task_id: str, meta: dict[str, Any]) -> None:
        self.direct.waiting(task_id, meta)

    def fail(self, task_id: str, exc: Exception) -> None:
        self.direct.fail(task_id, exc)
