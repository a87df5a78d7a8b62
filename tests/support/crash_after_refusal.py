"""The Celery app of a placement worker that dies right after it stored its first refusal,
before the broker is told the task is done (`task_acks_late`): `celery -A
tests.support.crash_after_refusal worker -Q placement -P solo`. The client has read the refusal;
the message is given again a visibility timeout later. For the crash tests only; production
code carries no such hook."""

from __future__ import annotations

import os
from typing import Any

from celery import signals

from tasks import app

__all__ = ["app"]


@signals.task_failure.connect
def _die_after_the_refusal_is_stored(**_: Any) -> None:
    os._exit(137)  # Celery stores the failure before it sends task_failure, and acks after
