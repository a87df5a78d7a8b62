"""Whether a queue has a worker that answers: a cached Celery control ping.

The workers known to consume a queue are discovered with `active_queues`. A request for a queue
whose workers did not answer within a second or so gets 503 at once; a request already waiting
gets 503 as soon as its worker stops answering.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aredis
from celery import Celery

from workers.adapters.redis_memory import MemoryUse
from workers.contract import QUEUES

from .errors import ApiError
from .settings import ApiSettings

log = logging.getLogger(__name__)



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
        # Redis's memory at the last look: a full Redis refuses the workers' replies (writes),
        # so a worker that cannot answer then is not missing
        self.memory: MemoryUse | None = None
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
        # nobody answered while Redis was full: look again now, it may have room by now
        if failed >= self.NEGATIVE_TTL or (self.memory is not None and self.memory.full):
            await self.refresh({queue})
            if self.age(queue) <= max(fresh, 0.1):
                return
        elif failed > self.NEGATIVE_TTL / 2:
            self._kick({queue})  # look again in the background: notice a recovery soon
        self._unavailable(queue)

    def _unavailable(self, queue: str) -> None:
        if self.memory is not None and self.memory.full:
            raise ApiError.of(self.memory.error(
                f"no {queue} worker can take a task or answer now",
                then="send it again once Redis has room (a task already sent is answered "
                     "then: GET /tasks/{task-id})"))
        if time.monotonic() - self.redis_seen > self.s.worker_fresh:
            raise ApiError.unavailable(f"Redis (broker and result backend) does not answer: "
                                       f"{self.redis_error or 'no reply'}", component="redis")
        raise ApiError.unavailable(f"no {queue} worker answers; start one with "
                                   f"`celery -A tasks worker -Q {queue}`", component="worker",
                                   queue=queue)

    async def look_at_memory(self) -> MemoryUse | None:
        """Redis's memory now (INFO answers while Redis is full), remembered; None when INFO
        does not answer."""
        try:
            info = await asyncio.wait_for(self.client.info("memory"), 1.0)
        except Exception as exc:  # noqa: BLE001 - the numbers are a report, not a check
            log.info("INFO memory failed: %s", exc)
            self.memory = None
            return None
        self.memory = MemoryUse.from_info(info)
        return self.memory

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
        await self.look_at_memory()
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
