"""How the dashboard writes numbers, times and durations (plain text: the template escapes)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from workers.core.lease import parse_rfc3339


def text(value: Any) -> str:
    """Any value as text; nothing for None."""
    return "" if value is None else str(value)


def num(value: Any, default: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def int_text(value: Any) -> str:
    number = num(value)
    return f"{number:,.0f}" if number == int(number) else f"{number:,.1f}"


def ts_of(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    try:
        return parse_rfc3339(str(value))
    except (TypeError, ValueError):
        return None


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


def stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 60:
        return f"{int(seconds)}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if math.isinf(seconds):
        return "> 1 d"
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    return span(seconds) if seconds >= 60 else f"{seconds:g} s"


def pct(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


@dataclass(frozen=True)
class Moment:
    """A time shown relative to now ("5m ago", "in 23h 59m") with the exact time as a title;
    `when` is None for a value that is not a time (shown as it is)."""

    text: str
    when: str | None = None
    title: str = ""


def moment(value: Any, now: float) -> Moment:
    ts = ts_of(value)
    if ts is None:
        return Moment(text(value))
    delta = ts - now
    words = "now" if abs(delta) < 1 else (f"in {span(delta)}" if delta > 0 else
                                          f"{span(delta)} ago")
    return Moment(words, text(value), stamp(ts))
