"""The usage history charts: inline SVG geometry, computed here and drawn by the template.

One chart per vCenter (utilization of each resource) and one for the fleet (leases and
waiting requests), over the last 24 h. A line has at most one point per pixel column (the
column's peak) and breaks where the history has a gap (beat or the worker was down)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .text import clock, int_text, num, pct, ts_of

W, H = 360, 150  # SVG user units
L, R, T, B = 34, 8, 8, 20  # margins: axis labels left and below
TICKS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)
PLOT_W, PLOT_H = W - L - R, H - T - B

Series = list[tuple[float, dict[str, float]]]


@dataclass(frozen=True)
class Rule:
    """A grid line with its label: horizontal (a value) or vertical (a time)."""

    x1: str
    x2: str
    y1: str
    y2: str
    label_x: str
    label_y: str
    label: str


@dataclass(frozen=True)
class Mark:
    """One series' line (`points` "x,y x,y ...") or, for a lone point, a dot at (x, y)."""

    colour: str
    label: str
    points: str = ""
    x: str = ""
    y: str = ""


@dataclass(frozen=True)
class Key:
    colour: str
    label: str
    value: str


@dataclass
class Chart:
    title: str
    empty: bool = True
    width: int = W
    height: int = H
    rows: list[Rule] = field(default_factory=list)
    columns: list[Rule] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    legend: list[Key] = field(default_factory=list)


def series(history: list[dict[str, Any]], pick: Callable[[dict[str, Any]], Any]) -> Series:
    out = []
    for row in history:
        if not isinstance(row, dict):
            continue
        ts = ts_of(row.get("ts")) or ts_of(row.get("at"))
        values = pick(row)
        if ts is not None and isinstance(values, dict):
            out.append((ts, values))
    out.sort(key=lambda x: x[0])
    return out


def polylines(points: list[tuple[float, float]], x0: float, x1: float, top: float,
              gap: float) -> list[str]:
    """Point lists for <polyline>: one per pixel column at most (the column's peak), broken
    where the history has a gap (beat or the worker was down)."""
    columns: dict[int, tuple[float, float]] = {}
    for ts, value in points:
        col = round((ts - x0) / (x1 - x0) * PLOT_W) if x1 > x0 else PLOT_W
        prev = columns.get(col)
        columns[col] = (ts, max(value, prev[1]) if prev else value)
    lines: list[list[str]] = []
    last_ts = None
    for col in sorted(columns):
        ts, value = columns[col]
        if last_ts is None or ts - last_ts > gap:
            lines.append([])
        last_ts = ts
        y = T + PLOT_H - min(max(value, 0.0), top) / top * PLOT_H
        lines[-1].append(f"{L + col:.1f},{y:.1f}")
    return [" ".join(pts) for pts in lines]


def chart(title: str, data: Series, keys: dict[str, tuple[str, str]], now: float,
          percent: bool = True) -> Chart:
    """`keys`: series key -> (label, colour). Values are fractions (`percent`) or counts."""
    out = Chart(title)
    if not data:
        return out
    out.empty = False
    x1 = now
    x0 = max(now - 86400, min(ts for ts, _ in data))
    x0 = min(x0, now - 300)  # at least five minutes wide
    steps = sorted(b - a for (a, _), (b, _) in zip(data, data[1:], strict=False))
    typical = steps[len(steps) // 2] if steps else 60.0
    gap = max(3 * typical, 90.0)
    peak = max((num(v.get(k)) for _, v in data for k in keys), default=0.0)
    top = max(1.0, peak) if percent else max(1.0, math.ceil(peak * 1.15))
    for frac in (0.0, 0.5, 1.0):  # horizontal grid with labels
        y = T + PLOT_H - frac * PLOT_H
        label = pct(frac * top) if percent else int_text(round(frac * top))
        out.rows.append(Rule(str(L), str(W - R), f"{y:.1f}", f"{y:.1f}", str(L - 4),
                             f"{y + 3:.1f}", label))
    step = next((s for s in TICKS if (x1 - x0) / s <= 6), TICKS[-1])
    tick = math.ceil(x0 / step) * step
    while tick <= x1:
        x = L + (tick - x0) / (x1 - x0) * PLOT_W
        out.columns.append(Rule(f"{x:.1f}", f"{x:.1f}", str(T), str(T + PLOT_H), f"{x:.1f}",
                                str(H - 6), clock(tick)))
        tick += step
    for key, (label, colour) in keys.items():
        points = [(ts, num(v.get(key))) for ts, v in data if key in v]
        for pts in polylines(points, x0, x1, top, gap):
            if " " not in pts:  # a single point: draw a dot
                x, y = pts.split(",")
                out.marks.append(Mark(colour, label, x=x, y=y))
            else:
                out.marks.append(Mark(colour, label, points=pts))
    latest = data[-1][1]
    out.legend = [Key(colour, label, pct(num(latest.get(key))) if percent
                      else int_text(latest.get(key)))
                  for key, (label, colour) in keys.items()]
    return out
