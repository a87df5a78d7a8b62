"""The Celery app (`celery -A tasks ...`) and the contract's tasks (CONTRACT §5). Thin: each
task translates its arguments and calls workers.service."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from celery import Celery, signals

from workers.core.errors import ERRORS, InvalidRequest

app = Celery("vcm")
app.config_from_object("celeryconfig")
log = logging.getLogger("vcm.tasks")
# domain failures are answers, not crashes: Celery logs them without a traceback
EXPECTED = tuple(ERRORS.values())


@cache
def service():
    from workers.adapters.ledger import Ledger
    from workers.adapters.pools_file import PoolsFile
    from workers.service import Capacity
    from workers.settings import Settings

    settings = Settings.from_env()
    ledger = Ledger.from_url(settings.redis_url, keep=int(settings.keep_released))
    return Capacity(ledger, PoolsFile(settings.pools_file), settings)


@signals.worker_init.connect
def _check_config(**_: Any) -> None:
    service()  # an invalid pools file or setting stops start-up here, with the file's message


def _no_extra(extra: dict[str, Any]) -> None:
    if extra:
        name = sorted(extra)[0]
        raise InvalidRequest.of(name, "unknown argument for this task")


@app.task(name="vcm.acquire", bind=True, throws=EXPECTED)
def acquire(self, request: Any = None, **extra: Any) -> list[dict[str, Any]]:
    _no_extra(extra)
    return service().acquire(request, self.request.id)


@app.task(name="vcm.acquire_batch", bind=True, throws=EXPECTED)
def acquire_batch(self, requests: Any = None, **extra: Any) -> list[list[dict[str, Any]]]:
    _no_extra(extra)
    return service().acquire_batch(requests, self.request.id)


@app.task(name="vcm.release", throws=EXPECTED)
def release(lease_ids: Any = None, owner: Any = None, **extra: Any) -> list[str]:
    _no_extra(extra)
    return service().release(lease_ids, owner)


@app.task(name="vcm.renew", throws=EXPECTED)
def renew(lease_id: Any = None, owner: Any = None, ttl: Any = None, **extra: Any) -> dict:
    _no_extra(extra)
    return service().renew(lease_id, owner, ttl)


@app.task(name="vcm.show_pools", throws=EXPECTED)
def show_pools(**extra: Any) -> list[dict[str, Any]]:
    _no_extra(extra)
    return service().show_pools()


@app.task(name="vcm.list_leases", throws=EXPECTED)
def list_leases(owner: Any = None, pool: Any = None, **extra: Any) -> list[dict[str, Any]]:
    _no_extra(extra)
    return service().list_leases(owner, pool)


@app.task(name="vcm.estimate", throws=EXPECTED)
def estimate(request: Any = None, **extra: Any) -> dict[str, Any]:
    _no_extra(extra)
    return service().estimate(request)


@app.task(name="vcm.noop_placement")
def noop_placement() -> None:
    """Benchmark baseline: a task that does nothing, on the placement queue."""
