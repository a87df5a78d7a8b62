"""What every resource of the test apiserver shares: one lock, one resourceVersion counter
(etcd's revision: every write of any object takes the next one), the history of changes that
watches are served from, the open watches, and the request counters."""

from __future__ import annotations

import bisect
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.support.kube.errors import ApiError, bad_request, now
from tests.support.kube.watch import (
    ADDED,
    DELETED,
    MODIFIED,
    Change,
    Watcher,
    bookmark,
    expired_status,
)

DEFAULT_HISTORY_LIMIT = 10_000  # changes kept for watches (the watch cache's window)
TOO_LARGE_WAIT = 3.0  # seconds a read waits for a resourceVersion from the future
# a watch without timeoutSeconds ends after this long (kube-apiserver: a random time between
# --min-request-timeout, 1800 s, and twice that)
DEFAULT_WATCH_TIMEOUT = 1800.0
DEFAULT_BOOKMARK_INTERVAL = 60.0  # the watch cache sends bookmarks about once a minute
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass
class WatchAnswer:
    """A watch request accepted: the handler streams what `StoreCore.watch_events` yields."""

    watcher: Watcher
    api_version: str
    kind: str
    timeout: float
    initial_events_end: bool = False  # a bookmark marks the end of the initial events
    render: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # e.g. as a Table
    content_type: str = "application/json"


@dataclass
class Stats:
    requests: int = 0
    writes: int = 0
    conflicts: int = 0
    faults_served: int = 0
    log: list[tuple[str, str, int]] = field(default_factory=list)


class StoreCore:
    """The shared state; ConfigMaps, Namespaces and CustomResources build on it."""

    def __init__(self, history_limit: int | None = DEFAULT_HISTORY_LIMIT) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # notified on every change
        self._rv = 0
        self._history: list[Change] = []
        self._compacted = 0  # changes at or below this resourceVersion are forgotten
        self.history_limit = history_limit
        self._watchers: set[Watcher] = set()
        self._stats = Stats()
        self._stopping = threading.Event()
        self.bookmark_interval = DEFAULT_BOOKMARK_INTERVAL
        self.watch_timeout = DEFAULT_WATCH_TIMEOUT
        self.too_large_wait = TOO_LARGE_WAIT  # a test may shorten it

    # ---- resourceVersions and changes --------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, group: str, resource: str, obj: dict[str, Any] | None,
              old: dict[str, Any] | None) -> None:
        """Record the change from `old` to `obj` (None: deleted, then `old` is the last state
        and takes the current resourceVersion); the caller holds the lock and has stamped the
        object with the change's resourceVersion."""
        if obj is None:
            assert old is not None
            last = self._public(old)
            last["metadata"]["resourceVersion"] = str(self._rv)
            change = Change(self._rv, group, resource, old["metadata"].get("namespace", ""),
                            DELETED, last)
        else:
            change = Change(int(obj["metadata"]["resourceVersion"]), group, resource,
                            obj["metadata"].get("namespace", ""),
                            ADDED if old is None else MODIFIED, self._public(obj),
                            None if old is None else self._public(old))
        self._history.append(change)
        if self.history_limit is not None and len(self._history) > self.history_limit:
            dropped = self._history[: len(self._history) - self.history_limit]
            del self._history[: len(dropped)]
            self._compacted = max(self._compacted, dropped[-1].rv)
        for watcher in list(self._watchers):
            watcher.offer(change)
        self._changed.notify_all()

    def compact(self, rv: int | None = None) -> int:
        """Forget the changes up to resourceVersion `rv` (default: every change so far), as
        etcd's compaction does: a watch from an older resourceVersion gets 410 Expired.
        Returns the compacted resourceVersion."""
        with self._lock:
            target = self._rv if rv is None else min(int(rv), self._rv)
            self._compacted = max(self._compacted, target)
            self._history = [c for c in self._history if c.rv > self._compacted]
            return self._compacted

    def _wait_for_rv(self, rv: int) -> None:
        """A read at a resourceVersion not reached yet waits for it (up to `too_large_wait`,
        TOO_LARGE_WAIT unless a test shortened it), then 504 Timeout with cause
        ResourceVersionTooLarge (storage.NewTooLargeResourceVersionError). The caller holds the
        lock."""
        deadline = time.monotonic() + self.too_large_wait
        while self._rv < rv:
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping.is_set():
                raise ApiError(
                    504, "Timeout",
                    f"Timeout: Too large resource version: {rv}, current: {self._rv}",
                    {"causes": [{"reason": "ResourceVersionTooLarge",
                                 "message": "Too large resource version"}],
                     "retryAfterSeconds": 1},
                    {"Retry-After": "1"})
            self._changed.wait(left)

    def _open_watch(self, watcher: Watcher, rv_param: str | None,
                    current: list[dict[str, Any]], send_initial: bool | None = None) -> None:
        """Register `watcher` and queue its first events; the caller holds the lock.

        No resourceVersion (or "0"): the current objects as ADDED, then what changes. A
        resourceVersion N: every change after N, or 410 Expired when N is older than the
        history kept. `current` is every stored object of the resource (public form)."""
        if rv_param in (None, "", "0") or send_initial:
            for obj in current:
                if watcher.matches(obj):
                    watcher.queue.append({"type": ADDED, "object": copy.deepcopy(obj)})
        else:
            try:
                since = int(rv_param)
            except ValueError as exc:
                raise bad_request(f"invalid resource version: {rv_param!r}") from exc
            if since < self._compacted:
                watcher.close(expired_status(since, self._compacted))
                return
            self._wait_for_rv(since)
            start = bisect.bisect_right([c.rv for c in self._history], since)
            for change in self._history[start:]:
                watcher.offer(change)
        self._watchers.add(watcher)

    def _watch(self, watcher: Watcher, query: dict[str, list[str]],
               current: Callable[[], list[dict[str, Any]]], api_version: str,
               kind: str) -> WatchAnswer:
        """Open a watch for a request's query (resourceVersion, timeoutSeconds,
        allowWatchBookmarks, sendInitialEvents)."""
        def flag(key: str) -> bool:
            return query.get(key, ["false"])[0].lower() in ("true", "1")

        rv = query.get("resourceVersion", [None])[0]
        timeout = self.watch_timeout
        if query.get("timeoutSeconds"):
            try:
                timeout = float(int(query["timeoutSeconds"][0]))
            except ValueError as exc:
                raise bad_request(f"invalid timeoutSeconds: {query['timeoutSeconds'][0]!r}") \
                    from exc
        watcher.bookmarks = flag("allowWatchBookmarks")
        send_initial = flag("sendInitialEvents")
        with self._lock:
            self._open_watch(watcher, rv, current() if (rv in (None, "", "0") or send_initial)
                             else [], send_initial)
        return WatchAnswer(watcher, api_version, kind, timeout,
                           initial_events_end=send_initial and watcher.bookmarks)

    def watch_events(self, answer: WatchAnswer) -> Iterator[list[dict[str, Any]]]:
        """The events of an open watch, in batches, until it times out, is closed or the
        server stops; BOOKMARK events when the client allows them, after
        `bookmark_interval` seconds without any. The watch is unregistered at the end."""
        watcher = answer.watcher
        deadline = time.monotonic() + answer.timeout
        next_bookmark = time.monotonic() + self.bookmark_interval
        try:
            while True:
                with self._lock:
                    while True:
                        now_ = time.monotonic()
                        if (watcher.queue or watcher.closed or self._stopping.is_set()
                                or now_ >= deadline or answer.initial_events_end
                                or (watcher.bookmarks and now_ >= next_bookmark)):
                            break
                        wait = deadline - now_
                        if watcher.bookmarks:
                            wait = min(wait, next_bookmark - now_)
                        self._changed.wait(max(0.0, wait))
                    batch = list(watcher.queue)
                    watcher.queue.clear()
                    if answer.initial_events_end and not watcher.closed:
                        batch.append(bookmark(answer.api_version, answer.kind, self._rv,
                                              {INITIAL_EVENTS_END: "true"}))
                        answer.initial_events_end = False
                    elif (watcher.bookmarks and not batch and not watcher.closed
                          and time.monotonic() >= next_bookmark):
                        batch.append(bookmark(answer.api_version, answer.kind, self._rv))
                    if batch:
                        next_bookmark = time.monotonic() + self.bookmark_interval
                    done = (watcher.closed or self._stopping.is_set()
                            or time.monotonic() >= deadline)
                if answer.render is not None:
                    batch = [answer.render(event) for event in batch]
                if batch:
                    yield batch
                if done:
                    return
        finally:
            self._close_watch(watcher)

    def _close_watch(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)

    def close_watches(self, error: dict[str, Any] | None = None) -> int:
        """End every open watch stream (as an apiserver restart does); with `error` (a Status
        dict) each gets it as an ERROR event first. Returns how many were open."""
        with self._lock:
            watchers = list(self._watchers)
            for watcher in watchers:
                watcher.close(error)
            self._changed.notify_all()
            return len(watchers)

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watchers)

    # ---- shared helpers ----------------------------------------------------------------------

    def _stamp(self, obj: dict[str, Any], old: dict[str, Any] | None, kind: str = "ConfigMap",
               api_version: str = "v1") -> None:
        meta = obj["metadata"]
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        meta["resourceVersion"] = self._next_rv()
        obj["apiVersion"] = api_version
        obj["kind"] = kind

    @staticmethod
    def _public(obj: dict[str, Any], *, in_list: bool = False) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}
        if in_list:  # list items of the core kinds carry no kind/apiVersion
            out.pop("kind", None)
            out.pop("apiVersion", None)
        return out

    @staticmethod
    def _json(raw: bytes) -> Any:
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise bad_request(f"error decoding request body: {exc}") from exc
