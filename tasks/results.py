"""How long task results stay in Redis, and where they are: the one place that knows the
Celery result backend's key format.

Redis holds the broker, the result backend and the ledger, so results must not pile up there.
Celery has a single `result_expires` for every task; that is the placement results' lifetime
(`VCM_RESULT_TTL`, long enough for a job step that polls). A query task's result (pools, leases,
usage history: possibly megabytes) is only wanted by whoever waits for it right now, so a
`task_postrun` handler (it runs after Celery stored the result) shortens its lifetime to
`VCM_QUERY_RESULT_TTL`. The HTTP shim, which reads the records itself, deletes a query result
as soon as it has read it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Celery, signals

import celeryconfig
from workers.contract import QUERY_TASKS

log = logging.getLogger(__name__)

QUERIES: frozenset[str] = frozenset(QUERY_TASKS)
QUERY_RESULT_TTL: int = celeryconfig.query_result_expires
RESULT_TTL: int = celeryconfig.result_expires
_PROBE = "0"  # any task id: the prefix is what comes before it


def is_query(task_name: str | None) -> bool:
    """A read-only task whose result is wanted only by the one who waits for it now."""
    return task_name in QUERIES


def result_key(backend: Any, task_id: str) -> str:
    """The Redis key (also the pub/sub channel) of a task's result record."""
    key = backend.get_key_for_task(task_id)
    return key.decode() if isinstance(key, bytes) else str(key)


@functools.cache
def key_prefix() -> str:
    """What comes before the task id in a result key (`celery-task-meta-` and the configured
    `global_keyprefix`), for readers that have no result backend of their own (the HTTP shim
    sends with the backend disabled). The backend is built, never connected."""
    app = Celery("vcm-keys", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.result_backend = "redis://127.0.0.1:1/0"  # only the key format is used
    try:
        key = result_key(app.backend, _PROBE)
    finally:
        app.close()
    if not key.endswith(_PROBE):
        raise RuntimeError(f"unexpected Celery result key format: {key!r}")
    return key[: -len(_PROBE)]


def shorten(backend: Any, task_id: str, seconds: int = QUERY_RESULT_TTL) -> bool:
    """Let a stored result expire `seconds` from now; False when there is no such record."""
    client = getattr(backend, "client", None)
    if client is None:  # not the Redis backend: nothing to shorten
        return False
    return bool(client.expire(result_key(backend, task_id), seconds))


@signals.task_postrun.connect
def _expire_query_result(sender: Any = None, task_id: str | None = None, task: Any = None,
                         **_: Any) -> None:
    task = task or sender
    name = getattr(task, "name", None)
    if not task_id or not is_query(name) or getattr(task.request, "is_eager", False):
        return
    try:
        shorten(task.backend, task_id)
    except Exception as exc:  # noqa: BLE001 - the answer is stored; its lifetime is secondary
        log.warning("could not shorten the result lifetime of %s %s: %s", name, task_id, exc)
