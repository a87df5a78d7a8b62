"""The ledger mirror's status: the hash the placement worker's publisher keeps in the ledger
(`Keys.mirror`; its fields are listed in workers/publisher/thread.py), parsed in one place for
every reader: the publisher's `read_status`, the shim's /readyz and its fleet metrics and
dashboard hand what the ledger read to `parse_status`. Pure: no Redis, and it never raises (odd
values stay text).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

# fields that are text even when they look like numbers
TEXT_FIELDS = frozenset({"state", "error", "last-error", "epoch"})


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_status(raw: Mapping[Any, Any], now: float | None = None) -> dict[str, Any]:
    """The hash (bytes or text, as HGETALL returns it) with numbers as int or float, plus
    `lag-seconds` (how long the mirror has been failing, 0 when it is not) and `behind` (the
    ledger's seq minus the mirrored seq at the last update, when both are known)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name, text = _text(key), _text(value)
        if name in TEXT_FIELDS:
            out[name] = text
            continue
        try:
            number = float(text)
        except ValueError:
            out[name] = text
            continue
        out[name] = int(number) if number.is_integer() and "." not in text else number
    now = time.time() if now is None else now
    since = out.get("failing-since")
    out["lag-seconds"] = max(0.0, now - since) if _is_number(since) and since else 0.0
    seq, ledger_seq = out.get("seq"), out.get("ledger-seq")
    if _is_number(seq) and _is_number(ledger_seq):
        try:
            out["behind"] = max(0, int(ledger_seq) - int(seq))
        except (OverflowError, ValueError):  # inf or nan
            pass
    return out
