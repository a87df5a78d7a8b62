"""How the shim talks to Celery: send a task, wait (bounded) for its result, know whether the
workers are there at all.

- Tasks are sent with a Celery client app whose result backend is disabled: the shim never
  uses `AsyncResult.get()` (blocking, one thread per waiter). Instead it reads the result
  backend's records itself (`celery-task-meta-<id>`, written by the workers) and wakes up on the
  backend's own pub/sub notification for that key, with one shared subscriber connection for
  all waiting requests (`ResultHub`). Thousands of requests can wait without a thread each.
- Worker liveness (`Liveness`) is a cached Celery control ping of the workers known to consume a
  queue (discovered with `active_queues`). A request for a queue whose workers did not answer
  within a second or so gets 503 at once; a request already waiting gets 503 as soon as its
  worker stops answering.
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
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio as aredis
from celery import Celery
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from tasks import results

from .errors import ApiError
from .settings import ApiSettings

log = logging.getLogger("vcm.api")

READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
WAITS = frozenset({"vcm.acquire"})  # tasks that can wait in line (request `wait`)
PARKED = frozenset({"STARTED", "WAITING", "RETRY"})  # a worker holds it: it is not lost
QUEUES = ("placement", "queries")
RECORD = "vcm-api:task:"
HUB_CHANNEL = "vcm-api:hub"


def meta_prefix() -> str:
    """The result records' key prefix: the task id follows it."""
    return results.key_prefix()


def make_celery(redis_url: str, pool_limit: int = 64) -> Celery:
    """A sending-only Celery client: the contract's settings, no result consumer."""
    app = Celery("vcm-api", set_as_current=False)
    app.config_from_object("celeryconfig")
    transport = dict(app.conf.broker_transport_options or {})
    transport.update(socket_connect_timeout=1.0, socket_timeout=5.0)
    app.conf.update(
        broker_url=redis_url,
        result_backend="disabled",  # results are read by the shim itself, see the module doc
        broker_pool_limit=pool_limit,
        broker_connection_timeout=2.0,
        broker_transport_options=transport,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0,
                                   "interval_step": 0.2, "interval_max": 0.5},
    )
    return app


# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Watch:
    """One waiting request's view of its task: woken by the hub when the record changes."""

    task_id: str
    event: asyncio.Event = field(default_factory=asyncio.Event)
    payload: bytes | None = None
    subscribed: bool = False

    def take(self) -> bytes | None:
        data, self.payload = self.payload, None
        self.event.clear()
        return data

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)


class ResultHub:
    """One pub/sub connection; subscribe to `celery-task-meta-<id>` while someone waits on it."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self.prefix = meta_prefix()
        self.watches: dict[str, set[Watch]] = {}
        self.confirm: dict[bytes, asyncio.Future[bool]] = {}
        self.pubsub: Any = None
        self.lock = asyncio.Lock()  # one command at a time on the shared connection
        self.task: asyncio.Task | None = None
        self.healthy = False
        self.stale: set[bytes] = set()  # channels nobody waits on any more, to unsubscribe
        self.flushed = time.monotonic()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="vcm-api-result-hub")

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    def _wake_all(self) -> None:
        for watches in self.watches.values():
            for w in watches:
                w.event.set()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            ps = self.client.pubsub()
            self.stale.clear()  # a new connection has none of the old subscriptions
            try:
                async with self.lock:
                    await ps.subscribe(HUB_CHANNEL)  # so that the connection exists to read
                    if self.watches:
                        await ps.subscribe(*[self.prefix + t for t in self.watches])
                        for watches in self.watches.values():
                            for w in watches:
                                w.subscribed = True
                self.pubsub, self.healthy, backoff = ps, True, 0.1
                self._wake_all()  # whatever happened while we were away: look again
                while True:
                    msg = await ps.get_message(timeout=1.0)
                    if msg:
                        self._dispatch(msg)
                    if self.stale and (len(self.stale) >= 256
                                       or time.monotonic() - self.flushed > 1.0):
                        await self._unsubscribe_stale(ps)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await ps.aclose()
                raise
            except Exception as exc:  # noqa: BLE001 - Redis went away: retry, waiters poll
                if self.healthy:
                    log.warning("result subscriber lost its connection: %s", exc)
                self.healthy, self.pubsub = False, None
                for fut in self.confirm.values():
                    if not fut.done():
                        fut.set_result(False)
                self.confirm.clear()
                for watches in self.watches.values():
                    for w in watches:
                        w.subscribed = False
                        w.event.set()
                with contextlib.suppress(Exception):
                    await ps.aclose()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _unsubscribe_stale(self, ps: Any) -> None:
        """One UNSUBSCRIBE for many finished waits (a result is final: nothing more comes on
        its channel, so a late unsubscribe costs nothing but a set entry in Redis)."""
        channels, self.stale = list(self.stale), set()
        self.flushed = time.monotonic()
        async with self.lock:
            await ps.unsubscribe(*channels)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind, channel = msg.get("type"), msg.get("channel")
        if isinstance(channel, str):
            channel = channel.encode()
        if kind == "subscribe":
            fut = self.confirm.pop(channel, None)
            if fut and not fut.done():
                fut.set_result(True)
        elif kind == "message" and channel:
            task_id = channel.decode("utf-8", "replace")[len(self.prefix):]
            for w in self.watches.get(task_id, ()):
                w.payload = msg.get("data")
                w.event.set()

    @contextlib.asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[Watch]:
        w = Watch(task_id)
        first = task_id not in self.watches
        self.watches.setdefault(task_id, set()).add(w)
        channel = (self.prefix + task_id).encode()
        self.stale.discard(channel)
        try:
            if not first:
                w.subscribed = any(x.subscribed for x in self.watches[task_id])
            elif self.pubsub is not None:
                fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self.confirm[channel] = fut
                try:
                    async with self.lock:
                        await self.pubsub.subscribe(channel)
                    # once Redis confirms, every later change is published to us, and a read of
                    # the record after this point sees every earlier one: nothing falls between
                    w.subscribed = await asyncio.wait_for(fut, 2.0)
                except Exception:  # noqa: BLE001 - the waiter falls back to polling
                    w.subscribed = False
                finally:
                    self.confirm.pop(channel, None)
            yield w
        finally:
            watches = self.watches.get(task_id)
            if watches is not None:
                watches.discard(w)
                if not watches:
                    del self.watches[task_id]
                    if self.pubsub is not None:
                        self.stale.add(channel)  # unsubscribed in a batch by the reader


# ---------------------------------------------------------------------------------------------
class Liveness:
    """Which queues have a worker that answers.

    A queue counts as served for `worker_fresh` seconds after a worker consuming it answered a
    ping, or after a task of ours on it changed state (a worker wrote that just now: under load
    no ping is needed at all). A check that found nobody is remembered for a second, so that a
    burst of requests during an outage is refused at once instead of each asking again."""

    NEGATIVE_TTL = 1.0

    def __init__(self, settings: ApiSettings, celery: Celery, client: aredis.Redis,
                 on_change: Callable[[str, bool], None] | None = None) -> None:
        self.s = settings
        self.celery = celery
        self.client = client
        self.known: dict[str, tuple[str, ...]] = {}  # worker name -> queues it consumes
        self.seen: dict[str, float] = {}  # queue -> when a consumer last showed life (monotonic)
        self.failed: dict[str, float] = {}  # queue -> when a check last found nobody
        self.redis_seen = -math.inf
        self.redis_error = ""
        self._refresh: asyncio.Task | None = None
        self._refresh_wanted: set[str] = set()
        self._discovery: asyncio.Task | None = None
        self._threads = 0  # control calls running in threads (they can outlive a timeout)
        self._lock = threading.Lock()
        self._on_change = on_change or (lambda q, up: None)

    def age(self, queue: str) -> float:
        return time.monotonic() - self.seen.get(queue, -math.inf)

    def workers(self, queue: str) -> list[str]:
        return sorted(n for n, qs in self.known.items() if queue in qs)

    def saw(self, queue: str) -> None:
        """A worker of `queue` just did something (wrote a state of one of our tasks)."""
        self.seen[queue] = time.monotonic()
        self.failed.pop(queue, None)

    async def check(self, queue: str, fresh: float | None = None) -> None:
        """Return if a worker of `queue` showed life within `fresh` s; else ask; else 503."""
        fresh = self.s.worker_fresh if fresh is None else fresh
        if self.age(queue) <= fresh:
            return
        failed = time.monotonic() - self.failed.get(queue, -math.inf)
        if failed >= self.NEGATIVE_TTL:
            await self.refresh({queue})
            if self.age(queue) <= max(fresh, 0.1):
                return
        elif failed > self.NEGATIVE_TTL / 2:
            self._kick({queue})  # look again in the background: notice a recovery soon
        self._unavailable(queue)

    def _unavailable(self, queue: str) -> None:
        if time.monotonic() - self.redis_seen > self.s.worker_fresh:
            raise ApiError.unavailable(f"Redis (broker and result backend) does not answer: "
                                       f"{self.redis_error or 'no reply'}", component="redis")
        raise ApiError.unavailable(f"no {queue} worker answers; start one with "
                                   f"`celery -A tasks worker -Q {queue}`", component="worker",
                                   queue=queue)

    def _kick(self, wanted: set[str]) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh_wanted = set(wanted)
            self._refresh = asyncio.create_task(self._do_refresh(set(wanted)))

    async def refresh(self, wanted: set[str] | frozenset[str] = frozenset(QUEUES)) -> None:
        """Ask the workers now; one check at a time, shared by everyone who asks meanwhile."""
        wanted = set(wanted)
        while True:
            task = self._refresh
            if task is None or task.done():
                self._refresh_wanted = wanted
                task = self._refresh = asyncio.create_task(self._do_refresh(wanted))
                await asyncio.shield(task)
                return
            covers = wanted <= self._refresh_wanted
            await asyncio.shield(task)
            if covers:
                return

    async def _do_refresh(self, wanted: set[str]) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), 1.0)
            self.redis_seen, self.redis_error = time.monotonic(), ""
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            self.redis_error = str(exc) or type(exc).__name__
            self._set_seen(set(), wanted)
            return
        if self._threads > 2:  # control calls are stuck from before: don't pile up
            self._set_seen(set(), wanted)
            return
        # ask everyone which queues they consume (slow: it waits out its timeout) while the
        # workers already known are pinged (fast when they answer): a worker that went away is
        # noticed within the discovery's timeout, and one that came back under a new name too
        if self._discovery is None or self._discovery.done():
            self._discovery = asyncio.create_task(self._discover_all())
        discovery = self._discovery
        answered: set[str] = set()
        names = sorted(n for n, qs in self.known.items() if wanted & set(qs))
        if names:
            answered = await self._in_thread(self._ping, names, self.s.ping_timeout + 1.5) or set()
        if not wanted <= {q for n in answered for q in self.known.get(n, ())}:
            found = await asyncio.shield(discovery)
            answered = set(found) if found is not None else answered
        self._set_seen(answered, wanted)

    async def _discover_all(self) -> dict[str, tuple[str, ...]] | None:
        found = await self._in_thread(self._discover, None, self.s.discover_timeout + 1.5)
        if found is not None:
            self.known = found
            for queue in {q for qs in found.values() for q in qs} & set(QUEUES):
                self.saw(queue)
        return found

    def _set_seen(self, answered: set[str], wanted: set[str]) -> None:
        now = time.monotonic()
        up = {q for n in answered for q in self.known.get(n, ())}
        for q in QUEUES:
            if q in up:
                self.saw(q)
            elif q in wanted:
                self.failed[q] = now
            self._on_change(q, self.age(q) <= self.s.worker_fresh)

    async def _in_thread(self, fn: Callable[..., Any], arg: Any, limit: float) -> Any:
        with self._lock:
            self._threads += 1

        def run() -> Any:
            try:
                return fn(arg)
            finally:
                with self._lock:
                    self._threads -= 1

        try:
            return await asyncio.wait_for(asyncio.to_thread(run), limit)
        except Exception as exc:  # noqa: BLE001 - the broker is unwell; treated as no answer
            log.info("worker check failed: %s", exc)
            return None

    def _ping(self, names: list[str]) -> set[str]:
        replies = self.celery.control.ping(destination=names, timeout=self.s.ping_timeout,
                                           limit=len(names)) or []
        return {name for reply in replies for name in reply}

    def _discover(self, _: Any) -> dict[str, tuple[str, ...]]:
        inspect = self.celery.control.inspect(timeout=self.s.discover_timeout)
        replies = inspect.active_queues() or {}
        return {name: tuple(str(q.get("name")) for q in queues or () if isinstance(q, dict))
                for name, queues in replies.items()}


# ---------------------------------------------------------------------------------------------
class Bridge:
    """Send tasks and wait for them; the only place the shim touches Celery and Redis."""

    def __init__(self, settings: ApiSettings, metrics: Any = None) -> None:
        self.s = settings
        self.metrics = metrics
        self.celery = make_celery(settings.redis_url)
        self.client: aredis.Redis | None = None
        self.hub: ResultHub | None = None
        self.live: Liveness | None = None
        self.prefix = meta_prefix()
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
        self.hub = ResultHub(hub_client)
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
                raise ApiError.unavailable(f"Redis does not answer: {exc or type(exc).__name__}",
                                           component="redis") from None

        def publish() -> None:
            self.celery.send_task(name, kwargs=kwargs, queue=queue, task_id=task_id,
                                  expires=expires)

        try:
            await asyncio.wait_for(
                anyio.to_thread.run_sync(publish, limiter=self.send_limiter), 5.0)
        except Exception as exc:  # noqa: BLE001 - kombu raises many kinds when Redis is gone
            raise ApiError.unavailable(f"could not send {name} to the broker: "
                                       f"{exc or type(exc).__name__}", component="redis") from None
        if self.metrics is not None:
            self.metrics.tasks_sent.labels(name).inc()
        return task_id

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
                        await self.send("vcm.cancel_wait", {"task_id": w.task_id}, queue)
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
        if redis_ok and self.live.age("placement") > self.s.worker_fresh:
            await self.live.refresh({"placement"})
        fresh = self.s.worker_fresh + 1.0
        report: dict[str, Any] = {
            "redis": "ok" if redis_ok else f"down: {self.live.redis_error}",
            "workers": {q: self.live.workers(q) if self.live.age(q) <= fresh else []
                        for q in QUEUES},
        }
        report["ready"] = bool(redis_ok and report["workers"]["placement"])
        report["mirror"] = await self._mirror_status() if redis_ok else {"state": "unknown"}
        return report

    async def _mirror_status(self) -> dict[str, Any]:
        """The ledger mirror's state and lag (it does not decide readiness: placement goes on
        while the mirror catches up; answers wait for it)."""
        assert self.client
        try:
            raw = await asyncio.wait_for(self.client.hgetall("vcm:mirror"), 1.0)
        except Exception:  # noqa: BLE001 - readiness must answer
            return {"state": "unknown"}
        m = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                             else v) for k, v in raw.items()}
        keep = ("state", "seq", "ledger-seq", "behind", "held-replies", "error",
                "failing-since", "written-at", "configmaps", "encoded-bytes")
        out = {k: m[k] for k in keep if m.get(k) not in (None, "")}
        if "written-at" in out:
            try:
                out["last-write-age-seconds"] = round(time.time() - float(out["written-at"]), 1)
            except ValueError:
                pass
        return out or {"state": "off or not written yet"}


def _load(raw: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
