"""What the service needs from the outside world, as typed Protocols. The adapters in
`workers/adapters/` provide them; the service modules depend only on these."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .core.models import Pool


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
    """The durable copy of the ledger (a ConfigMap, or a file)."""

    def load(self) -> dict[str, Any] | None: ...


@runtime_checkable
class JournaledMirror(Protocol):
    """A mirror that takes each change as a journal record before its answer goes out (the
    file mirror). `covered`: every change up to this ledger seq is written; `durable`: and
    synced; `holds`: what answers may rely on (-1 while a whole save is due)."""

    covered: int
    durable: int

    @property
    def holds(self) -> int: ...

    @property
    def started(self) -> bool: ...

    def append(self, seq: int, put: list[str], deleted: list[str], sync: bool = True) -> None: ...

    def load(self) -> dict[str, Any] | None: ...
