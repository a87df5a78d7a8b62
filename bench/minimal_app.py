"""Bench (b)'s baseline: a minimal Celery app with one no-op task, sharing nothing with ours.

`celery -A bench.minimal_app worker -Q minimal -P solo -c 1` serves it; bench/bench_celery.py
starts that worker against the same redis-server as the placement worker, and sends to it from
a client app built by `make_app` (the same settings).

Settings: the Redis URL as broker and result backend (VCM_REDIS_URL), JSON serializers, and
task_acks_late as the placement worker has it. Everything else is Celery's default: no
task_track_started (no STARTED result write), no task events (neither the worker's nor the
client's task-sent), no result_extended (no task name and arguments in results), default
prefetch (4 messages), default result expiry (1 day), no transport options. Nothing from
celeryconfig.py or tasks/ is imported.
"""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "minimal"
NOOP = "minimal.noop"


def make_app(url: str | None = None) -> Celery:
    url = url or os.environ.get("VCM_REDIS_URL", "redis://127.0.0.1:6379/0")
    app = Celery("minimal", broker=url, backend=url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,  # as the placement worker: the ack after the task, not before
    )
    return app


app = make_app()


@app.task(name=NOOP)
def noop() -> None:
    """Does nothing: the round trip is Celery's and Redis's alone."""
    return None
