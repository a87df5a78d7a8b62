"""What the service needs from the outside world, as typed Protocols. The adapters in
`workers/adapters/` provide them; the service modules depend only on these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .core.models import Pool


class LedgerUnready(Exception):
    """Redis lost the ledger (or never had one, or went back below the writer's floor):
    restore it from the mirror before writing."""


@dataclass(frozen=True)
class Guard:
    """What every ledger write is given: it refuses (unready) while Redis's seq is below
    `floor` (Redis went back to an older state than changes this worker already answered);
    `quiet`: it does not wake the publisher (the caller journals the change itself)."""

    floor: int = 0
    quiet: bool = False


class Replies(Protocol):
    """Where answers to tasks that finish later go (the Celery result backend)."""

    def deliver(self, task_id: str, result: Any) -> None: ...
    def waiting(self, task_id: str, meta: dict[str, Any]) -> None: ...
    def fail(self, task_id: str, exc: Exception) -> None: ...


class Pools(Protocol):
    """The configured pools; `generation` changes when they do."""

    generation: int

    def current(self) -> dict[str, Pool]: ...


class Mirror(Protocol):
    """The durable copy of the ledger (a ConfigMap, or a file). `save` writes a whole snapshot
    and returns the writes it took (`mark`: see JournaledMirror); `last_stats` says what the
    last save did; `max_configmaps` how many ConfigMaps one snapshot may use (None: not a
    ConfigMap mirror)."""

    last_stats: Any

    @property
    def max_configmaps(self) -> int | None: ...

    def save(self, snapshot: dict[str, Any], mark: int | None = None) -> int: ...

    def load(self) -> dict[str, Any] | None: ...


@runtime_checkable
class JournaledMirror(Mirror, Protocol):
    """A mirror that takes each change as a journal record before its answer goes out (the
    file mirror). `covered`: every change up to this ledger seq is written; `durable`: and
    synced; `holds`: what answers may rely on (-1 while a whole save is due); `failed`: the
    seq of an append that failed (a whole save is due); `records`: journal records since the
    last whole save. `mark()` is where the journal ends: taken before the snapshot is read and
    passed to `save`, it lets the save keep only the later records."""

    covered: int
    durable: int
    failed: int | None
    records: int

    @property
    def holds(self) -> int: ...

    @property
    def started(self) -> bool: ...

    def append(self, seq: int, put: list[str], deleted: list[str], sync: bool = True) -> None: ...

    def sync(self) -> None: ...

    def mark(self) -> int: ...
