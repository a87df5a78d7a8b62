"""Error answers of the test apiserver: ``Status`` objects shaped like kube-apiserver's
(k8s.io/apimachinery/pkg/api/errors)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

CONFLICT_MESSAGE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


class ApiError(Exception):
    """An error answer: rendered as a v1 Status object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def qualified(resource: str, group: str) -> str:
    """`leases.vspherecapacitymanager.splat.io`, or `configmaps` in the core group."""
    return f"{resource}.{group}" if group else resource


def _details(name: str, resource: str, group: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = resource
    return details


def not_found(name: str, resource: str = "configmaps", group: str = "") -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(resource, group)} "{name}" not found',
                    _details(name, resource, group))


def already_exists(name: str, resource: str = "configmaps", group: str = "") -> ApiError:
    return ApiError(409, "AlreadyExists", f'{qualified(resource, group)} "{name}" already exists',
                    _details(name, resource, group))


def conflict(name: str, why: str = CONFLICT_MESSAGE, resource: str = "configmaps",
             group: str = "") -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": {why}',
        _details(name, resource, group),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def not_found_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed",
                    "the server does not allow this method on the requested resource")


def invalid(name: str, causes: list[tuple[str, str, str]], kind: str = "ConfigMap",
            group: str = "") -> ApiError:
    """422 Invalid; causes are (reason, field, message) like field.ErrorList. The message
    names the kind qualified by its group (`Lease.vspherecapacitymanager.splat.io "x" is
    invalid: ...`), as apimachinery's NewInvalid does with a GroupKind."""
    parts = [f"{f}: {m}" if f else m for _, f, m in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [{"reason": r, "message": m, "field": f} for r, f, m in causes]
    return ApiError(422, "Invalid", f'{qualified(kind, group)} "{name}" is invalid: {summary}',
                    details)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
