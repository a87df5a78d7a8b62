"""Faults the tests inject into the test apiserver's answers."""

from __future__ import annotations

import threading
from dataclasses import dataclass

FAULT_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    502: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class Fault:
    status: int | None
    hang: float | None
    remaining: int | None  # None: until cleared
    methods: frozenset[str] | None
    name: str | None
    resource: str | None = None  # configmaps, namespaces, a custom plural; None: any
    hits: int = 0
    trickle: float | None = None  # seconds between the body's bytes
    hold: threading.Event | None = None  # the last byte waits for it
