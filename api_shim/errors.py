"""Errors as HTTP answers: `{"error": name, "message": ..., "details": ...}` (CONTRACT §6)."""

from __future__ import annotations

import importlib
import json
import math
from typing import Any

from starlette.responses import Response

from workers.core.errors import ERRORS

# a task's failure (its exception name) -> HTTP status; the domain errors carry their own
STATUS: dict[str, int] = {name: cls.http_status for name, cls in ERRORS.items()}
STATUS["ConfigError"] = 503  # the workers' pools file is broken: not the client's fault
STATUS["LedgerUnready"] = 503  # Redis lost the ledger and it is being restored

# the HTTP bodies use hyphens where the task arguments use underscores
HTTP_FIELD = {"lease_ids": "lease-ids", "lease_id": "lease-id"}


class ApiError(Exception):
    """An answer other than 2xx, raised anywhere in a request and rendered by a handler."""

    def __init__(self, status: int, error: str, message: str,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, "details": self.details}

    def response(self) -> Response:
        return JSON(self.to_dict(), status_code=self.status, headers=self.headers)

    @classmethod
    def invalid(cls, field: str, problem: str, status: int = 422, **extra: Any) -> ApiError:
        return cls(status, "InvalidRequest", f"{field}: {problem}", {"field": field, **extra})

    @classmethod
    def unavailable(cls, what: str, **details: Any) -> ApiError:
        return cls(503, "Unavailable", what, details, headers={"Retry-After": "2"})


def from_task_failure(result: Any, task_id: str) -> ApiError:
    """The ApiError for a FAILURE meta stored by the worker (`exc_type`, `exc_message`)."""
    if not isinstance(result, dict):
        result = {}
    name = str(result.get("exc_type") or "TaskFailed")
    args = result.get("exc_message")
    if not isinstance(args, list | tuple):
        args = [args] if args is not None else []
    message = str(args[0]) if args else name
    details = dict(args[1]) if len(args) > 1 and isinstance(args[1], dict) else {}
    if name == "InvalidRequest" and details.get("field") in HTTP_FIELD:
        old = details["field"]
        details["field"] = HTTP_FIELD[old]
        if message.startswith(old + ":"):
            message = HTTP_FIELD[old] + message[len(old):]
    status = STATUS.get(name) or _declared_status(result.get("exc_module"), name)
    if status is None:
        # not one of ours: the worker crashed, was lost, or hit a time limit. Not a client error
        # and not the shim's own fault: 502, with what the worker said.
        status = 502
        details = {"exc-type": name, **details}
    details.setdefault("task-id", task_id)
    return ApiError(status, name, message, details)


def _declared_status(module: Any, name: str) -> int | None:
    """The `http_status` an exception class of this project declares, if any."""
    if not isinstance(module, str) or not (module == "workers" or module.startswith("workers.")):
        return None
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except Exception:  # noqa: BLE001 - an unknown module is simply not ours
        return None
    status = getattr(cls, "http_status", None)
    return status if isinstance(status, int) and 400 <= status <= 599 else None


class JSON(Response):
    """JSON answers, ASCII-safe: lone surrogates a client sent in a string can be echoed back
    in an error message without breaking the encoder."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=True, allow_nan=False,
                              separators=(",", ":"), default=_default)
        except ValueError:  # NaN or infinity somewhere: JSON has no such numbers
            text = json.dumps(_finite(content), ensure_ascii=True, separators=(",", ":"),
                              default=_default)
        return text.encode("ascii")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)
