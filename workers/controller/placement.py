"""The controller as a client of the workers, like any other: tasks go out with Celery's
`send_task` (in a thread: kombu publishes synchronously), answers are read from the result
backend's records, woken by their pub/sub notifications on one shared connection
(`adapters.result_hub`), so a thousand Leases waiting in line cost no thread each.

A task nobody took (its record stays absent or PENDING: a worker killed as it took the
message loses it) is sent again with the same task id after `VCM_RESEND_AFTER`: a task id is
answered once, a copy never places twice. A query's answer is deleted once read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis
from celery import Celery
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from ..adapters.result_hub import ResultHub
from ..contract import QUEUE, WAITING
from ..core.errors import ERRORS, VcmError
from ..redis_url import celery_settings

log = logging.getLogger(__name__)

READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
BIG = 256 * 1024  # bytes of a result record decoded off the event loop
HUB_CHANNEL = "vcm-controller:hub"  # the controller's own, so that its connection exists
Progress = Callable[[dict[str, Any]], Awaitable[None]]
Sender = Callable[[], Awaitable[None]]


class TaskFailed(VcmError):
    """A task failed with an error that is not one of the task API's (a worker crashed, a
    time limit): worth trying again later."""


class NoAnswer(Exception):
    """No answer within the time given."""


def result_prefix() -> str:
    from tasks.results import key_prefix

    return key_prefix()


def make_celery(redis_url: str) -> Celery:
    """A sending-only Celery client with the contract's settings."""
    app = Celery("vcm-controller", set_as_current=False)
    app.config_from_object("celeryconfig")
    # the broker's socket timeouts bounded (kombu's default waits for ever): a send to a Redis
    # that takes connections and never answers fails, and the Lease is tried again, instead
    # of holding a reconcile; unless the URL's query sets them (workers/redis_url.py)
    app.conf.update(celery_settings(redis_url, app.conf.broker_transport_options or {},
                                    results=False, broker_defaults={
                                        "socket_connect_timeout": 2.0, "socket_timeout": 5.0}))
    app.conf.update(result_backend="disabled", broker_pool_limit=16,
                    broker_connection_timeout=2.0,
                    task_publish_retry_policy={"max_retries": 2, "interval_start": 0,
                                               "interval_step": 0.2, "interval_max": 0.5})
    return app


def outcome(meta: dict[str, Any]) -> Any:
    """A finished task's result, or its error raised (the task API's own, by name)."""
    state = meta.get("status")
    result = meta.get("result")
    if state == "SUCCESS":
        return result
    result = result if isinstance(result, dict) else {}
    name = str(result.get("exc_type") or state)
    args = result.get("exc_message")
    if not isinstance(args, list | tuple):
        args = [args] if args is not None else []
    message = str(args[0]) if args else name
    details = dict(args[1]) if len(args) > 1 and isinstance(args[1], dict) else {}
    cls = ERRORS.get(name)
    if cls is None:
        raise TaskFailed(f"{name}: {message}", {"error": name})
    raise cls(message, details)


def _load(raw: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


async def _decode(raw: Any) -> dict[str, Any] | None:
    """A result record decoded; a large one (the pools with their leases) in a thread, so
    that the event loop keeps serving the Leases meanwhile."""
    if isinstance(raw, bytes | str) and len(raw) > BIG:
        return await asyncio.to_thread(_load, raw)
    return _load(raw)


class Placement:
    """Send tasks and wait for their answers (see the module's docstring)."""

    def __init__(self, redis_url: str, resend_after: float = 15.0) -> None:
        self.redis_url = redis_url
        self.resend_after = resend_after
        self.celery = make_celery(redis_url)
        self.prefix = result_prefix()
        self.client: aredis.Redis | None = None
        self.hub: ResultHub | None = None

    async def start(self) -> None:
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
        opts: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 10.0,
                                "retry": retry}
        self.client = aredis.Redis.from_url(self.redis_url, max_connections=64, **opts)
        self.hub = ResultHub(aredis.Redis.from_url(self.redis_url, **opts), self.prefix,
                             HUB_CHANNEL, "vcm-controller-result-hub")
        self.hub.start()
        try:  # the broker connection made now, not by the first Lease's send
            await asyncio.wait_for(asyncio.to_thread(self._connect), 10.0)
        except Exception as exc:  # noqa: BLE001 - the sends will try again
            log.warning("the broker is not reachable yet: %s", exc)

    def _connect(self) -> None:
        with self.celery.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)

    async def close(self) -> None:
        if self.hub is not None:
            await self.hub.close()
            with contextlib.suppress(Exception):
                await self.hub.client.aclose()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.aclose()
        with contextlib.suppress(Exception):
            self.celery.close()

    async def send(self, name: str, kwargs: dict[str, Any], task_id: str) -> None:
        """Put a task on its queue (the contract's) under `task_id`."""
        queue = QUEUE[name]
        await asyncio.to_thread(self.celery.send_task, name, kwargs=kwargs, queue=queue,
                                task_id=task_id)

    async def meta(self, task_id: str) -> dict[str, Any] | None:
        """The result backend's record of a task, or None (never sent, or expired)."""
        assert self.client is not None
        raw = await self.client.get(self.prefix + task_id)
        return await _decode(raw) if raw else None

    async def forget(self, task_id: str) -> None:
        assert self.client is not None
        with contextlib.suppress(Exception):
            await self.client.unlink(self.prefix + task_id)

    async def wait(self, task_id: str, *, send: Sender | None = None,
                   progress: Progress | None = None, timeout: float | None = None) -> Any:
        """Wait for a task's answer (its result, or its error raised). With `send`: send it
        when it has no record yet (subscribed first, so no answer falls in between), and
        again (the same task id) while nobody takes it. `progress` is called with each new
        WAITING meta (place in line, reasons)."""
        assert self.hub is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        async with self.hub.watch(task_id) as w:
            meta = await self.meta(task_id)
            last_sent = -1e9
            if send is not None and (meta is None or meta.get("status") == "PENDING"):
                await send()
                last_sent = time.monotonic()
            shown: Any = None
            while True:
                state = meta.get("status") if meta else None
                if state in READY:
                    return outcome(meta)
                if state == WAITING and progress is not None and meta:
                    info = meta.get("result") if isinstance(meta.get("result"), dict) else {}
                    if info != shown:
                        shown = info
                        await progress(info)
                now = time.monotonic()
                if (send is not None and state in (None, "PENDING")
                        and now - last_sent > self.resend_after):
                    log.info("task %s not taken in %.0fs: sent again (same task id)",
                             task_id, now - last_sent)
                    await send()
                    last_sent = now
                if deadline is not None and now >= deadline:
                    raise NoAnswer(f"task {task_id}: no answer within {timeout:g}s "
                                   f"(last state {state or 'unknown'})")
                tick = 1.0 if w.subscribed and self.hub.healthy else 0.1
                if deadline is not None:
                    tick = min(tick, max(0.0, deadline - now))
                await w.sleep(tick)
                data = w.take()
                # woken by a notification (its record), or by the clock: then read it (a
                # fallback for a notification lost with a connection)
                meta = (await _decode(data) if data else None) or await self.meta(task_id)

    async def call(self, name: str, kwargs: dict[str, Any], timeout: float = 60.0,
                   task_id: str | None = None) -> Any:
        """Send a task and wait for its answer; a query's answer is deleted once read."""
        task_id = task_id or str(uuid.uuid4())
        try:
            return await self.wait(task_id, send=lambda: self.send(name, kwargs, task_id),
                                   timeout=timeout)
        finally:
            if QUEUE[name] != "placement":
                await self.forget(task_id)
