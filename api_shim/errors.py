"""Errors as HTTP answers: `{"error": name, "message": ..., "details": ...}`.

The one place that decides an error's HTTP status: a task's failure (`from_task_failure`,
`task_error`), and everything else the app raises or FastAPI refuses (`install_handlers`).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from workers.core.errors import ERRORS, VcmError

log = logging.getLogger(__name__)

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

    @classmethod
    def of(cls, exc: VcmError, **details: Any) -> ApiError:
        """A domain error the shim met itself (RedisFull when Redis refused its write)."""
        name = type(exc).__name__
        status = STATUS.get(name, exc.http_status)
        headers = {"Retry-After": "5"} if status == 503 else {}
        return cls(status, name, exc.message, {**exc.details, **details}, headers=headers)


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


def task_error(meta: dict[str, Any], task: str) -> ApiError:
    """The ApiError for a finished task that did not succeed (FAILURE or REVOKED)."""
    task_id = str(meta.get("task_id", ""))
    if meta.get("status") == "REVOKED":
        return ApiError(503, "Revoked", f"{task} was revoked before a worker ran it",
                        {"task-id": task_id})
    return from_task_failure(meta.get("result"), task_id)


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


def install_handlers(app: FastAPI) -> None:
    """Every error the app can meet answers in the error JSON: ApiError as raised, FastAPI's
    validation as 422 naming the parameter, unknown paths and methods as 404 and 405, and
    anything unexpected as 500 (logged)."""

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> Response:
        problems = []
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ())]
            where = loc[0] if loc else "request"
            field = loc[1] if len(loc) > 1 else where  # the parameter (not an index in it)
            problems.append({"field": field, "in": where, "problem": str(e.get("msg", ""))})
        first = problems[0] if problems else {"field": "request", "problem": "invalid"}
        return ApiError(422, "InvalidRequest", f"{first['field']}: {first['problem']}",
                        {"field": first["field"], "errors": problems}).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        names = {404: "NotFound", 405: "MethodNotAllowed"}
        if exc.status_code == 404:
            message = (f"no such endpoint: {request.method} {request.url.path} "
                       "(see /openapi.json)")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return ApiError(exc.status_code, names.get(exc.status_code, "HTTPError"), message,
                        {"path": request.url.path}, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return ApiError(500, "InternalError", f"unexpected {type(exc).__name__}; see the "
                        "server log").response()


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
