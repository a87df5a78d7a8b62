"""Watch streams of the test apiserver, as the apiserver's watch cache serves them
(k8s.io/apiserver/pkg/storage/cacher).

Every change of a stored object is an event (ADDED, MODIFIED, DELETED) with the object as it
is after the change; a DELETED event carries the object's last state with the resourceVersion of
the deletion. The store keeps a window of past events (`history_limit`, and `compact()` forgets
the events up to a resourceVersion, as etcd's compaction does): a watch from a resourceVersion
older than the window gets one ERROR event with a 410 Expired Status, `too old resource version:
N (M)`. Each watch filters the events by namespace, label and field selector against both the
old and the new state of the object: an object that starts to match is ADDED to that watch, one
that stops matching is DELETED from it (the cacher's prevObject filtering).
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.support.kube.selectors import FieldTerm, Requirement, fields_match, labels_match

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"


@dataclass(frozen=True)
class Change:
    """One change in the store: what a watch may see."""

    rv: int
    group: str
    resource: str
    namespace: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]  # the object after the change (for DELETED: its last state)
    old: dict[str, Any] | None = None  # the object before a MODIFIED change


FieldsOf = Callable[[Mapping[str, Any]], Mapping[str, str]]


@dataclass(eq=False)
class Watcher:
    """One open watch: the events meant for it, queued as the store changes."""

    group: str
    resource: str
    namespace: str | None  # None: every namespace
    labels: list[Requirement]
    fields: list[FieldTerm]
    fields_of: FieldsOf
    bookmarks: bool = False
    queue: collections.deque[dict[str, Any]] = field(default_factory=collections.deque)
    closed: bool = False  # no more events: the stream ends once the queue is drained

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        return labels_match(meta.get("labels"), self.labels) and fields_match(
            self.fields_of(obj), self.fields)

    def offer(self, change: Change) -> None:
        """Queue what this watch sees of `change` (nothing, or one event)."""
        if change.group != self.group or change.resource != self.resource or self.closed:
            return
        now = self.matches(change.obj)
        before = change.old is not None and self.matches(change.old)
        if change.type == MODIFIED:
            kind = MODIFIED if now and before else ADDED if now else DELETED if before else None
        else:
            kind = change.type if now else None
        if kind is not None:
            self.queue.append({"type": kind, "object": copy.deepcopy(change.obj)})

    def close(self, error: dict[str, Any] | None = None) -> None:
        """End the stream after what is queued, with an ERROR event carrying `error` (a
        Status) first when given."""
        if error is not None:
            self.queue.append({"type": ERROR, "object": error})
        self.closed = True


def expired_status(requested: int, oldest: int) -> dict[str, Any]:
    """The 410 Status of a watch from a compacted resourceVersion (watch_cache_history.go:
    NewResourceExpired("too old resource version: %d (%d)"))."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"too old resource version: {requested} ({oldest})",
            "reason": "Expired", "code": 410}


def bookmark(api_version: str, kind: str, rv: int,
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A BOOKMARK event: an object of the watched kind with only its resourceVersion."""
    meta: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
    if annotations:
        meta["annotations"] = annotations
    return {"type": BOOKMARK, "object": {"kind": kind, "apiVersion": api_version,
                                         "metadata": meta}}
