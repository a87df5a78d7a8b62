"""The worker processes a benchmark starts, and what their logs tell.

PlacementWorker: the placement worker as the tests start it (tests.support's Worker: the
documented command line, `celery -A tasks worker -Q placement --concurrency 1`, with -P when a
pool is given, and -n, -l info, --without-mingle, --without-gossip, -E) on the bench's app,
`-A bench.placement_app`: the product's app plus the bench no-op (and VCM_BENCH_CELERY_CONF's
overrides, when the environment has them). minimal_worker: the minimal app's worker.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict

from bench.minimal_app import QUEUE as MINIMAL_QUEUE
from tests.support.procs import Worker, env_for

PLACEMENT_APP = "bench.placement_app"


class PlacementWorker(Worker):
    """tests.support's Worker started with `-A bench.placement_app` instead of `-A tasks`;
    `events = False` drops -E (for a variant with worker_send_task_events off)."""

    events = True

    def command(self) -> list[str]:
        args = super().command()
        args[args.index("-A") + 1] = PLACEMENT_APP
        if not self.events:
            args.remove("-E")
        return args


def minimal_worker(url: str, name: str) -> Worker:
    """`celery -A bench.minimal_app worker -Q minimal -P solo -c 1`, with the same logging and
    start-up flags as the placement worker (-n, -l info, --without-mingle, --without-gossip)
    but without -E: the minimal app sends no events."""

    class MinimalWorker(Worker):
        def command(self) -> list[str]:
            return [sys.executable, "-m", "celery", "-A", "bench.minimal_app", "worker", "-Q",
                    MINIMAL_QUEUE, "-P", "solo", "-c", "1", "-n", self.name, "-l", "info",
                    "--without-mingle", "--without-gossip"]

    return MinimalWorker(env_for(url), MINIMAL_QUEUE, name=name)


def task_runtimes(log: str) -> dict[str, float]:
    """Mean 'succeeded in' runtime per task name, from a worker's info log."""
    times: dict[str, list[float]] = defaultdict(list)
    for m in re.finditer(r"Task ((?:vcm|bench|minimal)\.\w+)\[[^\]]+\] succeeded in "
                         r"([0-9.e-]+)s", log):
        times[m.group(1)].append(float(m.group(2)))
    return {k: sum(v) / len(v) for k, v in times.items()}


def banner_pool(log: str) -> str:
    """The worker banner's concurrency line, e.g. '1 (solo)'."""
    m = re.search(r"concurrency:\s*(.+)", log)
    return m.group(1).strip() if m else "?"
