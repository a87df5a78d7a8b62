"""How the shim talks to Celery: send a task, wait (bounded) for its result, know whether the
workers are there at all.

- Tasks are sent with a Celery client app whose result backend is disabled: the shim never
  uses `AsyncResult.get()` (blocking, one thread per waiter). Instead it reads the result
  backend's records itself (`celery-task-meta-<id>`, written by the workers) and wakes up on the
  backend's own pub/sub notification for that key, with one shared subscriber connection for
  all waiting requests (`ResultHub`, workers/adapters/result_hub.py). Thousands of requests
  can wait without a thread each.
- Worker liveness (`Liveness`, liveness.py) is a cached Celery control ping of the workers known
  to consume a queue (discovered with `active_queues`). A request for a queue whose workers did
  not answer within a second or so gets 503 at once; a request already waiting gets 503 as soon
  as its worker stops answering.
- A query task's result (pools, leases, usage history: possibly megabytes) is deleted as soon
  as the shim has read it; one it did not wait for long enough expires within minutes
  (tasks/results.py). Placement results stay for polling clients.
- Every placement task the shim sends is recorded in Redis (`vcm-api:task:<id>`) so that
  `GET /tasks/{id}` can tell "sent, still queued" (PENDING) from "never heard of it" (404):
  Celery itself reports PENDING for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import redis.asyncio as aredis
from celery import Celery
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from tasks import results
from workers.adapters.keys import API_HUB_CHANNEL, API_TASK_RECORD
from workers.adapters.ledger.reports import mirror_status
from workers.adapters.redis_memory import refused_for_memory
from workers.adapters.result_hub import ResultHub, Watch
from workers.contract import PLACEMENT, QUEUES, WAITING, Task
from workers.core.errors import RedisFull
from workers.publisher.mirror_status import parse_status
from workers.redis_url import celery_settings

from .errors import ApiError
from .liveness import Liveness
from .settings import ApiSettings

log = logging.getLogger(__name__)

READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
WAITS = frozenset({Task.ACQUIRE})  # tasks that can wait in line (request `wait`)
PARKED = frozenset({"STARTED", WAITING, "RETRY"})  # a worker holds it: it is not lost
RECORD = API_TASK_RECORD
# what /readyz shows of the mirror's status (workers/publisher/thread.py lists every field)
MIRROR_SHOWN = ("state", "seq", "ledger-seq", "held-replies", "error", "failing-since",
                "written-at", "configmaps", "encoded-bytes")
MIRROR_COUNTERS = ("errors", "last-error", "set-aside", "failures")


def make_celery(redis_url: str, pool_limit: int = 64) -> Celery:
    """A sending-only Celery client: the contract's settings, no result consumer."""
    app = Celery("vcm-api", set_as_current=False)
    app.config_from_object("celeryconfig")
    # the broker's socket timeouts short (a Redis that is down is a prompt 503), unless the
    # URL's query sets them (workers/redis_url.py)
    app.conf.update(celery_settings(redis_url, app.conf.broker_transport_options or {},
                                    results=False, broker_defaults={
                                        "socket_connect_timeout": 1.0, "socket_timeout": 5.0}))
    app.conf.update(
        result_backend="disabled",  # results are read by the shim itself, see the module doc
        broker_pool_limit=pool_limit,
        broker_connection_timeout=2.0,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0,
                                   "interval_step": 0.2, "interval_max": 0.5},
    )
    return app



class Bridge:
    """Send tasks and wait for them; the only place the shim touches Celery and Redis."""

    def __init__(self, settings: ApiSettings, metrics: Any = None) -> None:
        self.s = settings
        self.metrics = metrics
        self.celery = make_celery(settings.redis_url)
        self.client: aredis.Redis | None = None
        self.hub: ResultHub | None = None
        self.live: Liveness | None = None
        self.prefix = results.key_prefix()
        self.expires = results.RESULT_TTL  # the shim's task records live as long as results
        self.send_limiter: anyio.CapacityLimiter | None = None

    async def start(self) -> None:
        url = self.s.redis_url
        # one quick retry, not redis-py's default of seconds of backoff: a Redis that is down
        # must be a prompt 503, and callers bound every call anyway
        opts: dict[str, Any] = {"socket_connect_timeout": 1.0, "socket_timeout": 5.0}
        self.client = aredis.Redis.from_url(
            url, max_connections=256, retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
            **opts)
        hub_client = aredis.Redis.from_url(
            url, retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1), **opts)
        self.hub = ResultHub(hub_client, self.prefix, API_HUB_CHANNEL, "vcm-api-result-hub")
        self.hub.start()
        gauge = getattr(self.metrics, "worker_up", None)
        self.live = Liveness(self.s, self.celery, self.client,
                             on_change=(lambda q, up: gauge.labels(q).set(int(up)))
                             if gauge is not None else None)
        self.send_limiter = anyio.CapacityLimiter(32)

    async def close(self) -> None:
        if self.hub:
            await self.hub.close()
            with contextlib.suppress(Exception):
                await self.hub.client.aclose()
        if self.client:
            with contextlib.suppress(Exception):
                await self.client.aclose()
        with contextlib.suppress(Exception):
            self.celery.close()

    # -- sending ------------------------------------------------------------------------------
    async def send(self, name: str, kwargs: dict[str, Any], queue: str, *,
                   expires: float | None = None, record: bool = False,
                   task_id: str | None = None) -> str:
        """Check that a worker of `queue` is there (503 if not), record the id, then send."""
        assert self.live and self.client
        await self.live.check(queue)
        task_id = task_id or str(uuid.uuid4())
        if record:  # so that GET /tasks/{id} can say PENDING rather than 404
            entry = json.dumps({"task": name, "sent-at": time.time()})
            try:
                await asyncio.wait_for(
                    self.client.set(RECORD + task_id, entry, ex=self.expires), 2.0)
            except Exception as exc:  # noqa: BLE001
                if refused_for_memory(exc):
                    raise await self.full(f"{name} was not sent and nothing changed") from None
                raise ApiError.unavailable(f"Redis does not answer: {exc or type(exc).__name__}",
                                           component="redis") from None

        def publish() -> None:
            self.celery.send_task(name, kwargs=kwargs, queue=queue, task_id=task_id,
                                  expires=expires)

        try:
            await asyncio.wait_for(
                anyio.to_thread.run_sync(publish, limiter=self.send_limiter), 5.0)
        except Exception as exc:  # noqa: BLE001 - kombu raises many kinds when Redis is gone
            if refused_for_memory(exc):
                raise await self.full(f"{name} was not sent and nothing changed") from None
            raise ApiError.unavailable(f"could not send {name} to the broker: "
                                       f"{exc or type(exc).__name__}", component="redis") from None
        if self.metrics is not None:
            self.metrics.tasks_sent.labels(name).inc()
        return task_id

    async def full(self, refused: str) -> ApiError:
        """503 RedisFull for a write Redis just refused for memory, with its numbers."""
        assert self.live
        memory = await self.live.look_at_memory()
        return ApiError.of(memory.error(refused) if memory is not None
                           else RedisFull.of(refused, then="send it again once Redis has room"))

    async def call(self, name: str, kwargs: dict[str, Any], queue: str, timeout: float,
                   disconnected: Callable[[], Awaitable[bool]] | None = None) -> dict[str, Any]:
        """Send, then wait up to `timeout` s for the result record; 503/504 when that fails.

        The message expires when the wait does: if the worker only gets to it after the client
        was told 504/503, it is discarded instead of placing leases nobody will see."""
        assert self.hub
        task_id = str(uuid.uuid4())
        async with self.hub.watch(task_id) as w:
            # subscribe first, send second: the answer can not come before the question
            await self.send(name, kwargs, queue, expires=timeout, task_id=task_id)
            meta = await self._wait(w, queue, timeout, name, disconnected)
        if results.is_query(name):
            await self.forget(task_id)  # read once, by us: nobody else asks for it
        return meta

    async def forget(self, task_id: str) -> None:
        """Delete a result record now (UNLINK: a large one is freed off Redis's main thread).
        Best effort: it expires soon anyway."""
        assert self.client
        try:
            await asyncio.wait_for(self.client.unlink(self.prefix + task_id), 2.0)
        except Exception as exc:  # noqa: BLE001
            log.info("result of %s not deleted (it expires by itself): %s", task_id, exc)

    async def _wait(self, w: Watch, queue: str, timeout: float, name: str,
                    disconnected: Callable[[], Awaitable[bool]] | None) -> dict[str, Any]:
        assert self.hub and self.live
        start = time.monotonic()
        deadline = start + timeout
        state: str | None = None
        # subscribed before sending: every change is published to us, nothing to read yet
        look = not (w.subscribed and self.hub.healthy)
        while True:
            data = w.take()
            if data:
                self.live.saw(queue)  # a worker wrote this just now
                meta = _load(data)
            else:  # woken by the clock, not by a notification: read the record (a fallback)
                meta = await self.meta(w.task_id, soft=True) if look else None
            look = True
            if meta:
                state = str(meta.get("status"))
                if state in READY:
                    return meta
            now = time.monotonic()
            if now >= deadline:
                await self._remember(w.task_id, name)
                raise ApiError(504, "GatewayTimeout",
                               f"{name} got no answer within {timeout:g}s"
                               + (f" (last state {state})" if state else " (still queued)"),
                               {"task-id": w.task_id, "waited": round(now - start, 3),
                                "state": state or "PENDING"})
            if state in PARKED:
                # a worker holds it (a solo worker running a long task does not answer pings)
                fresh = self.s.parked_grace
            elif now - start > 0.25:
                # not picked up yet: look harder, so that a worker that just died is noticed
                fresh = min(self.s.worker_fresh, 0.25)
            else:
                fresh = self.s.worker_fresh
            try:
                await self.live.check(queue, fresh)
            except ApiError as exc:
                await self._remember(w.task_id, name)
                exc.details["task-id"] = w.task_id
                exc.details["state"] = state or "PENDING"
                raise
            if disconnected is not None and await disconnected():
                if name in WAITS:  # it may be in line: take it out before it is granted
                    with contextlib.suppress(Exception):
                        await self.send(Task.CANCEL_WAIT, {"task_id": w.task_id}, queue)
                raise ApiError(499, "ClientClosedRequest", "the client went away",
                               {"task-id": w.task_id})
            tick = 0.25 if state not in PARKED else 1.0
            if not (w.subscribed and self.hub.healthy):
                tick = 0.05  # no notification will come: poll
            await w.sleep(min(tick, deadline - now))

    async def _remember(self, task_id: str, name: str) -> None:
        """Record a task id the client is about to be told (GET /tasks/{id} must know it)."""
        assert self.client
        with contextlib.suppress(Exception):
            entry = json.dumps({"task": name, "sent-at": time.time()})
            await asyncio.wait_for(self.client.set(RECORD + task_id, entry, ex=self.expires), 1.0)

    # -- reading ------------------------------------------------------------------------------
    async def meta(self, task_id: str, soft: bool = False) -> dict[str, Any] | None:
        """The result backend's record of a task, or None."""
        assert self.client
        try:
            raw = await asyncio.wait_for(self.client.get(self.prefix + task_id), 2.0)
        except Exception as exc:  # noqa: BLE001
            if soft:
                return None
            raise ApiError.unavailable(f"Redis does not answer: {exc or type(exc).__name__}",
                                       component="redis") from None
        return _load(raw) if raw else None

    async def record(self, task_id: str) -> dict[str, Any] | None:
        assert self.client
        try:
            raw = await asyncio.wait_for(self.client.get(RECORD + task_id), 2.0)
        except Exception as exc:  # noqa: BLE001
            raise ApiError.unavailable(f"Redis does not answer: {exc or type(exc).__name__}",
                                       component="redis") from None
        return _load(raw) if raw else None

    async def ready(self) -> dict[str, Any]:
        """Readiness: Redis answers now, and a placement worker answered lately (or now)."""
        assert self.live and self.client
        try:
            await asyncio.wait_for(self.client.ping(), 1.0)
            self.live.redis_seen, self.live.redis_error = time.monotonic(), ""
            redis_ok = True
        except Exception as exc:  # noqa: BLE001
            self.live.redis_error = str(exc) or type(exc).__name__
            redis_ok = False
        if redis_ok and self.live.age(PLACEMENT) > self.s.worker_fresh:
            await self.live.refresh({PLACEMENT})
        memory = await self.live.look_at_memory() if redis_ok else None
        fresh = self.s.worker_fresh + 1.0
        report: dict[str, Any] = {
            "redis": "ok" if redis_ok else f"down: {self.live.redis_error}",
            "workers": {q: self.live.workers(q) if self.live.age(q) <= fresh else []
                        for q in QUEUES},
            "redis-memory": memory.report(self.s.memory_warn) if memory is not None
            else {"state": "unknown"},
        }
        # A full Redis refuses the workers' ping replies (writes) as it refuses every task:
        # the shim stays ready then and answers each request 503 RedisFull naming the cause;
        # unready, every replica would leave the Service and clients would meet connection
        # errors instead.
        full = memory is not None and memory.full
        report["ready"] = bool(redis_ok and (report["workers"][PLACEMENT] or full))
        report["mirror"] = (await self._mirror_status(counters=report["ready"]) if redis_ok
                            else {"state": "unknown"})
        return report

    async def _mirror_status(self, counters: bool) -> dict[str, Any]:
        """The ledger mirror's state and lag (it does not decide readiness: placement goes on
        while the mirror catches up; answers wait for it), and with `counters` the publisher's
        error counters and last unexpected error."""
        assert self.client
        try:
            raw = await asyncio.wait_for(mirror_status(self.client), 1.0)
        except Exception:  # noqa: BLE001 - readiness must answer
            return {"state": "unknown"}
        status = parse_status(raw)
        out = {k: status[k] for k in MIRROR_SHOWN if status.get(k) not in (None, "")}
        written = out.get("written-at")
        if isinstance(written, int | float):
            out["last-write-age-seconds"] = round(time.time() - written, 1)
        out = out or {"state": "off or not written yet"}
        if counters and out.get("state") not in (None, "unknown"):
            out.update({k: status[k] for k in MIRROR_COUNTERS if k in status})
        return out


def _load(raw: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
