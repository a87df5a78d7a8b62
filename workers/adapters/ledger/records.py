"""Stored lease records as the ledger reads them: decoded, checked for what the scripts need,
or skipped (logged once). Pure: no Redis here."""

from __future__ import annotations

import json
import logging
from typing import Any

from ...core.models import parse_rfc3339

# one logger for the whole ledger, named as it was before the ledger became a package
log = logging.getLogger("workers.adapters.ledger")

_warned: set[str] = set()


def text(value: Any) -> str:
    """A Redis reply value as str (replies are bytes unless the client decodes them)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decoded(raw: Any) -> Any | None:
    """A stored record as JSON, or None (logged once) when it is not JSON at all."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        _skipped(raw, "not JSON")
        return None


def readable(raw: Any) -> dict[str, Any] | None:
    """A stored lease record, or None (logged once) when it cannot be read or lacks what the
    ledger needs: reads skip it; the next release or reap that meets it sets it aside."""
    lease = decoded(raw)
    if lease is None:
        return None
    problem = lease_problem(lease)
    if problem is None:
        return lease
    _skipped(raw, problem)
    return None


def _skipped(raw: Any, problem: str) -> None:
    key = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw))[:200]
    if key not in _warned and len(_warned) < 10000:
        _warned.add(key)
        log.warning("a lease record cannot be read and is skipped (%s): %s", problem,
                    ascii(key[:120]))
    return None


def lease_name(lease: Any) -> str:
    try:
        name = lease["metadata"]["name"]
    except (TypeError, KeyError):
        return ""
    return name if isinstance(name, str) else ""


def lease_problem(lease: Any) -> str | None:
    """Why a lease record cannot go into the ledger, or None. Everything the Lua scripts read
    is checked, and the whole record must encode as UTF-8 (cjson refuses lone surrogates)."""
    try:
        st, sp = lease["status"], lease["spec"]
        if not lease_name(lease):
            return "metadata.name is not a string"
        for key in ("pool", "vcenter", "owner", "expires-at"):
            if not isinstance(st.get(key), str) or not st[key]:
                return f"status.{key} is not a non-empty string"
        if not isinstance(st.get("request-id", ""), str):
            return "status.request-id is not a string"
        for key in ("vcpus", "memory", "storage"):
            if isinstance(sp.get(key), bool) or not isinstance(sp.get(key), int) \
                    or sp[key] < 0:
                return f"spec.{key} is not a whole number"
        nets = st.get("networks") or []
        if not isinstance(nets, list) or not all(
                isinstance(n, dict) and isinstance(n.get("port-group"), str) for n in nets):
            return "status.networks is not a list of port groups"
        parse_rfc3339(st["expires-at"])
        json.dumps(lease, ensure_ascii=False).encode("utf-8")
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        return f"{type(exc).__name__}: {ascii(str(exc))[1:-1]}"
    return None


def released_view(gone: dict[Any, Any]) -> dict[str, Any]:
    """A released lease, from its gone:<id> record (state released, when and why)."""
    g = {text(k): text(v) for k, v in gone.items()}
    lease = json.loads(g["lease"])
    lease["status"].update(state="released", **{"released-at": g.get("released-at", ""),
                                                 "release-reason": g.get("reason", "")})
    return lease
