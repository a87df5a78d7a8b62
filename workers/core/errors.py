"""Domain errors. Their names are part of the task API: clients match on them.

Every error is built as ``cls(message, details)`` because Celery's JSON result backend
re-creates exceptions as ``cls(*args)``; use the ``of`` factories to build them.
"""

from __future__ import annotations

from typing import Any

from .text import escaped, text_problem


class LedgerUnready(Exception):
    """Redis lost the ledger (or never had one, or went back below the writer's floor):
    restore it from the mirror before writing. Raised by every ledger script that meets it;
    the shim answers it 503 should it reach a client."""


class VcmError(Exception):
    http_status = 400
    exit_code = 1

    def __init__(self, message: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details or {})

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def details(self) -> dict[str, Any]:
        return self.args[1] if len(self.args) > 1 and isinstance(self.args[1], dict) else {}

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "message": self.message, "details": self.details}


class InvalidRequest(VcmError):
    http_status = 422
    exit_code = 2

    @classmethod
    def of(cls, field: str, problem: str, **extra: Any) -> InvalidRequest:
        return cls(f"{field}: {problem}", {"field": field, **extra})

    @property
    def field(self) -> str:
        return str(self.details.get("field", ""))


class NoCapacity(VcmError):
    http_status = 409
    exit_code = 3

    @classmethod
    def of(cls, reasons: dict[str, str], summary: str = "no pool fits") -> NoCapacity:
        text = "; ".join(f"{pool}: {why}" for pool, why in sorted(reasons.items()))
        return cls(f"{summary}: {text}" if text else summary, {"reasons": reasons})

    @property
    def reasons(self) -> dict[str, str]:
        return dict(self.details.get("reasons", {}))


class LeaseNotFound(VcmError):
    http_status = 404

    @classmethod
    def of(cls, lease_id: str) -> LeaseNotFound:
        return cls(f"lease {lease_id!r} not found", {"lease-id": lease_id})


class NotOwner(VcmError):
    http_status = 403

    @classmethod
    def of(cls, lease_id: str, owner: str, holder: str) -> NotOwner:
        return cls(
            f"lease {lease_id!r} is held by {holder!r}, not {owner!r}",
            {"lease-id": lease_id, "owner": owner, "holder": holder},
        )


class WaitTimeout(VcmError):
    http_status = 504
    exit_code = 3

    @classmethod
    def of(cls, waited: float, reasons: dict[str, str] | None = None,
           why: str = "") -> WaitTimeout:
        text = (f"cancelled after {waited:g}s in line: {why}" if why
                else f"waited {waited:g}s and no capacity freed up")
        return cls(text, {"waited": waited, "reasons": reasons or {}})


class ConfigError(VcmError):
    """Invalid pools file: names the file, the pool and the field."""

    @classmethod
    def of(cls, file: str, pool: str | None, field: str | None, problem: str) -> ConfigError:
        # names taken from a broken file are shown escaped: the message is logged and printed
        pool = _readable(pool)
        field = _readable(field)
        where = file
        if pool:
            where += f": pool {pool!r}"
        if field:
            where += f": field {field!r}"
        return cls(f"{where}: {problem}", {"file": file, "pool": pool, "field": field})


class RedisFull(VcmError):
    """Redis refused a write because it is full: it holds its maxmemory and evicts nothing
    (maxmemory-policy noeviction), so no ledger record is ever lost to make room. Reads and
    deletes still work; writes resume once memory is freed (a queue backlog drained, or a
    larger maxmemory)."""

    http_status = 503
    exit_code = 1

    @classmethod
    def of(cls, refused: str, used: int | None = None, limit: int | None = None,
           policy: str = "", then: str = "send it again once Redis has room") -> RedisFull:
        """`refused`: what did not happen (``"vcm.acquire was not sent"``); `used`, `limit`,
        `policy`: Redis's used_memory, maxmemory and maxmemory-policy, when known; `then`:
        what the client should do."""
        where = ""
        if used is not None and limit:
            where = f" ({_mib(used)} used of maxmemory {_mib(limit)}"
            where += f", policy {policy})" if policy else ")"
        return cls(f"Redis is full{where}: it refuses writes until memory is freed, so "
                   f"{refused}; {then} (operators: drain the queue backlog or raise "
                   "maxmemory)",
                   {"cause": "redis-out-of-memory", "refused": refused, "used-memory": used,
                    "maxmemory": limit, "maxmemory-policy": policy or None})


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _readable(name: str | None) -> str | None:
    return escaped(name) if name is not None and text_problem(name, 64) else name


ERRORS: dict[str, type[VcmError]] = {
    c.__name__: c
    for c in (InvalidRequest, NoCapacity, LeaseNotFound, NotOwner, WaitTimeout, ConfigError,
              RedisFull)
}
