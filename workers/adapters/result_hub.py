"""Waiting for task results without a thread per waiter.

The workers write a task's result into the result backend (`celery-task-meta-<id>`), and the
backend publishes each write on a pub/sub channel of the same name. `ResultHub` keeps one
subscriber connection for every waiting request and wakes the request's `Watch` when its record
changes; a request that could not subscribe (Redis went away) falls back to polling. The HTTP
shim (api_shim/bridge.py) and the Lease controller (workers/controller) each keep one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis

from ..backoff import Backoff, doubling

log = logging.getLogger(__name__)


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

    def __init__(self, client: aredis.Redis, prefix: str, channel: str,
                 name: str = "result-hub") -> None:
        """`prefix`: what comes before the task id in a result key (tasks.results.key_prefix);
        `channel`: a channel of the reader's own, subscribed at once so that the connection
        exists to read; `name`: its asyncio task's."""
        self.client = client
        self.prefix = prefix
        self.channel = channel
        self.name = name
        self.watches: dict[str, set[Watch]] = {}
        self.confirm: dict[bytes, asyncio.Future[bool]] = {}
        self.pubsub: Any = None
        self.lock = asyncio.Lock()  # one command at a time on the shared connection
        self.task: asyncio.Task | None = None
        self.healthy = False
        self.stale: set[bytes] = set()  # channels nobody waits on any more, to unsubscribe
        self.flushed = time.monotonic()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=self.name)

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
        waits = Backoff(doubling(0.1, 2.0))  # reconnects: quick at first, then every 2 s
        while True:
            ps = self.client.pubsub()
            self.stale.clear()  # a new connection has none of the old subscriptions
            try:
                async with self.lock:
                    await ps.subscribe(self.channel)  # so that the connection exists to read
                    if self.watches:
                        await ps.subscribe(*[self.prefix + t for t in self.watches])
                        for watches in self.watches.values():
                            for w in watches:
                                w.subscribed = True
                self.pubsub, self.healthy = ps, True
                waits.reset()
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
                await asyncio.sleep(waits.next())

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
