"""Every task message is checked before a worker runs it.

A message anyone can put on a queue (a client of the broker, a hand-made one) whose task id is
not valid text, or whose body is not Celery's `[args, kwargs, options]`, would fail outside the
task body: storing its state raises, and on the placement worker (one process, the solo pool)
that ends the worker, which then takes the same message again after a restart. Such a message
is refused as an invalid task instead: Celery logs it and drops it, and the worker goes on.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import InvalidTaskError
from celery.worker.request import Request

from tasks.holding import HeldAnswers
from workers.adapters.redis_memory import full_error, refused_for_memory
from workers.core.errors import RedisFull
from workers.core.text import text_problem

MAX_TASK_ID = 255


def message_problem(headers: Any, body: Any) -> str | None:
    """Why a task message cannot be run, or None."""
    task_id = headers.get("id") if isinstance(headers, dict) else None
    if not isinstance(task_id, str) or not task_id:
        return "its task id is missing or not a string"
    problem = text_problem(task_id, MAX_TASK_ID)
    if problem:
        return f"its task id {ascii(task_id[:80])} {problem}"
    if not (isinstance(body, list | tuple) and len(body) == 3 and isinstance(body[0], list | tuple)
            and isinstance(body[1], dict) and isinstance(body[2], dict | type(None))):
        return "its body is not [args, kwargs, options]"
    return None


class CheckedRequest(Request):
    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        headers = kwargs.get("headers")
        headers = message.headers if headers is None else headers
        body = kwargs.get("body") if kwargs.get("decoded") else message.payload
        problem = message_problem(headers, body)
        if problem:
            raise InvalidTaskError(f"refused a task message: {problem}")
        super().__init__(message, *args, **kwargs)


class CheckedTask(Task):
    """The base of every task here: its messages go through CheckedRequest; what it stores
    in the result backend is held through a full Redis (tasks/holding.py), and a write Redis
    refuses for memory in its body is RedisFull, naming the cause."""

    Request = "tasks.messages:CheckedRequest"

    @property
    def backend(self) -> Any:
        own = self._backend
        return own if own is not None else HeldAnswers(self.app.backend)

    @backend.setter
    def backend(self, value: Any) -> None:
        self._backend = value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except RedisFull:
            raise
        except Exception as exc:
            if not refused_for_memory(exc):
                raise
            client = getattr(self.app.backend, "client", None)
            raise full_error(client, f"{self.name} could not be completed", then=(
                "send it again once Redis has room (the same task id or request-id: it is "
                "answered once, never granted twice)")) from None
