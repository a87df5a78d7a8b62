"""What a request hands over: its JSON body and its query, checked before anything is sent on.

The body is passed to the worker as it came (the worker's validation names the field); the shim
refuses only what it could not pass on: not JSON (400), not a JSON object (422)."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request

from .errors import ApiError


async def read_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; 400 when it is not JSON, 422 when it is not an object."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError.invalid("body", "is empty; send a JSON object", status=400)
    try:
        text = raw.decode("utf-8-sig")
        value = json.loads(text, parse_constant=no_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise ApiError.invalid("body", "is not UTF-8 text", status=400) from None
    except RecursionError:
        raise ApiError.invalid("body", "is nested too deeply", status=400) from None
    except ValueError as exc:
        raise ApiError.invalid("body", f"is not valid JSON: {exc}", status=400) from None
    try:  # "\ud800" is valid JSON but not Unicode: it could not be passed on as UTF-8
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end].encode("unicode_escape").decode()
        raise ApiError.invalid("body", f"contains {bad}, which is not a Unicode character",
                               status=400) from None
    if not isinstance(value, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(value), "a number")
        raise ApiError.invalid("body", f"must be a JSON object, got {kind}")
    return value


def no_constant(name: str) -> Any:
    """For json.loads: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def only_query(request: Request, allowed: set[str]) -> None:
    """422 naming the first query parameter the endpoint does not know."""
    extra = sorted(set(request.query_params) - allowed)
    if extra:
        known = ", ".join(sorted(allowed)) or "none"
        raise ApiError.invalid(extra[0], f"unknown query parameter (known: {known})")


def pick(body: dict[str, Any], allowed: dict[str, str]) -> dict[str, Any]:
    """Map body keys (hyphenated, snake_case also accepted) onto task argument names."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        arg = allowed.get(key)
        if arg is None:
            shown = sorted({k for k in allowed if "_" not in k})
            raise ApiError.invalid(key, f"unknown field (known: {', '.join(shown)})")
        if arg in out:
            raise ApiError.invalid(key, "given twice (hyphenated and with underscores)")
        out[arg] = value
    return out
