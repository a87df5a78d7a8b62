"""Bench only: the product's Celery app (tasks.app, configured by celeryconfig) with some settings
overridden from VCM_BENCH_CELERY_CONF, a JSON object of Celery setting names and values, e.g.
`{"task_track_started": false}` or `{"task_annotations": {"vcm.acquire": {"track_started":
false}}}`. `bench/bench_celery.py --settings` starts placement workers with
`celery -A bench.placement_variant worker ...` to measure what each setting costs; the product
never reads this variable.

The overrides are applied at import, before the worker finalizes the app (annotations are
applied to the task classes then) and before it reads its worker settings.
"""

from __future__ import annotations

import json
import os

from tasks import app

OVERRIDES: dict = json.loads(os.environ.get("VCM_BENCH_CELERY_CONF") or "{}")
if not isinstance(OVERRIDES, dict):
    raise SystemExit("VCM_BENCH_CELERY_CONF must be a JSON object of Celery settings")
app.conf.update(OVERRIDES)

__all__ = ["app"]
