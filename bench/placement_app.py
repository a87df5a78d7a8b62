"""Bench only: the product's Celery app (tasks.app, configured by celeryconfig) plus a no-op task
on the placement queue, `bench.noop_placement`, and optionally some settings overridden.

`celery -A bench.placement_app worker -Q placement ...` is the placement worker with one task
more: the no-op runs on that worker and pays our configuration (task_track_started, worker
events, result_extended), so the benchmarks can tell the cost of Celery as configured from the
cost of placing. The product never registers it.

VCM_BENCH_CELERY_CONF: a JSON object of Celery setting names and values applied over
celeryconfig, e.g. `{"task_track_started": false}` or `{"task_annotations": {"vcm.acquire":
{"track_started": false}}}` (bench/bench_celery_settings.py measures what each costs). They are
applied at import, before the worker finalizes the app (annotations are applied to the task
classes then) and before it reads its worker settings. The product never reads this variable.
"""

from __future__ import annotations

import json
import os

from tasks import app

NOOP = "bench.noop_placement"
QUEUE = "placement"

OVERRIDES: dict = json.loads(os.environ.get("VCM_BENCH_CELERY_CONF") or "{}")
if not isinstance(OVERRIDES, dict):
    raise SystemExit("VCM_BENCH_CELERY_CONF must be a JSON object of Celery settings")
app.conf.update(OVERRIDES)


@app.task(name=NOOP)
def noop_placement() -> None:
    """Does nothing, on the placement worker: Celery as we configure it, and no placement."""


__all__ = ["NOOP", "QUEUE", "app"]
