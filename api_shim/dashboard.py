"""The dashboard at `GET /`: one server-rendered HTML page, inline CSS and inline
SVG, no JavaScript and no external assets.

It shows the pools grouped by vCenter with usage bars, the active leases, the waiting line and
24 h usage history charts per vCenter, plus the fleet counters. The data comes from the queries
worker (`vcm.show_pools`, `vcm.waiting`, `vcm.usage_history`, sent in parallel, each bounded;
the bridge deletes each result once read, so a reload leaves nothing behind in Redis)
and from Redis directly (the counters, the same reader as the fleet metrics). When the worker or
Redis does not answer, the page still renders, with a notice saying what is missing: it never
answers 5xx. Every string from the ledger is HTML-escaped (owners are user input), and the
Content-Security-Policy forbids scripts anyway.

Install with `install_dashboard(app, bridge)` inside `create_app`.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse, Response

from workers.core.models import parse_rfc3339

from .bridge import Bridge
from .errors import ApiError, from_task_failure
from .fleet_metrics import FleetReader, FleetSnapshot

log = logging.getLogger("vcm.api")

REFRESH = 30  # seconds between reloads (a meta refresh: no script needed)
MAX_LEASE_ROWS = 300
MAX_WAITING_ROWS = 200
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# resource -> (label, colour); the same colours in bars, charts and legends
RESOURCES = {
    "vcpus": ("vCPU", "#2563eb"),
    "memory": ("Memory", "#9333ea"),
    "storage": ("Storage", "#d97706"),
    "networks": ("Networks", "#059669"),
}
FULL = "#dc2626"  # a bar at or above 90 %


def e(value: Any) -> str:
    """HTML-escape anything (text and attribute values alike)."""
    return html.escape("" if value is None else str(value), quote=True)


# -- data -------------------------------------------------------------------------------------
@dataclass
class Data:
    now: float
    pools: list[dict[str, Any]] | None = None
    waiting: list[dict[str, Any]] | None = None
    history: list[dict[str, Any]] | None = None
    fleet: FleetSnapshot | None = None
    problems: dict[str, str] = field(default_factory=dict)
    redis_down: bool = False  # the bridge could not reach Redis (not just a missing worker)


async def gather(bridge: Bridge, fleet: FleetReader, timeout: float) -> Data:
    """Ask the queries worker and Redis in parallel; every part bounded, none may raise."""

    redis_down = False

    async def task(name: str, kwargs: dict[str, Any]) -> tuple[Any, str | None]:
        nonlocal redis_down
        try:
            meta = await asyncio.wait_for(
                bridge.call(name, kwargs, "queries", timeout=timeout), timeout + 1.0)
        except ApiError as exc:
            redis_down = redis_down or exc.details.get("component") == "redis"
            return None, exc.message
        except TimeoutError:
            return None, f"{name} got no answer within {timeout:g}s"
        except Exception as exc:  # noqa: BLE001 - the page must render whatever happens
            return None, f"{name} failed: {type(exc).__name__}: {exc}"
        if not isinstance(meta, dict):
            return None, f"{name}: no result"
        if meta.get("status") == "SUCCESS":
            return meta.get("result"), None
        err = from_task_failure(meta.get("result"), str(meta.get("task_id", "")))
        return None, f"{name} failed: {err.error}: {err.message}"

    async def counters() -> tuple[FleetSnapshot | None, str | None]:
        try:
            snap = await asyncio.wait_for(anyio.to_thread.run_sync(fleet.read), 2.0)
        except TimeoutError:
            return None, "Redis did not answer within 2s"
        except Exception as exc:  # noqa: BLE001
            return None, f"Redis does not answer: {exc or type(exc).__name__}"
        return snap, None

    (pools, p1), (waiting, p2), (history, p3), (snap, p4) = await asyncio.gather(
        task("vcm.show_pools", {}), task("vcm.waiting", {}),
        task("vcm.usage_history", {"since": "24h"}), counters())
    data = Data(now=time.time(), fleet=snap, redis_down=redis_down or snap is None)
    data.pools = pools if isinstance(pools, list) else None
    data.waiting = waiting if isinstance(waiting, list) else None
    data.history = history if isinstance(history, list) else None
    for key, problem in (("pools", p1), ("waiting", p2), ("history", p3), ("redis", p4)):
        if problem:
            data.problems[key] = problem
    return data


# -- formatting -------------------------------------------------------------------------------
def _num(value: Any, default: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _int_text(value: Any) -> str:
    number = _num(value)
    return f"{number:,.0f}" if number == int(number) else f"{number:,.1f}"


def _ts(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    try:
        return parse_rfc3339(str(value))
    except (TypeError, ValueError):
        return None


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(seconds: float) -> str:
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


def _relative(value: Any, now: float) -> str:
    """`<time>` with a relative text ("5m ago", "in 23h 59m") and the exact time as a title."""
    ts = _ts(value)
    if ts is None:
        return e(value)
    delta = ts - now
    text = "now" if abs(delta) < 1 else (f"in {_span(delta)}" if delta > 0 else
                                         f"{_span(delta)} ago")
    return f'<time datetime="{e(value)}" title="{e(_stamp(ts))}">{e(text)}</time>'


def _seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if math.isinf(seconds):
        return "> 1 d"
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    return _span(seconds) if seconds >= 60 else f"{seconds:g} s"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


# -- sections ---------------------------------------------------------------------------------
def _bar(resource: str, used: Any, total: Any, fraction: Any, unit: str = "") -> str:
    label, colour = RESOURCES[resource]
    frac = _num(fraction)
    colour = FULL if frac >= 0.9 else colour
    width = max(0.0, min(frac, 1.0)) * 100
    amount = f"{_int_text(used)} / {_int_text(total)}{unit}"
    hot = " hot" if frac >= 0.9 else ""
    return (f'<div class="bar-row" title="{e(label)}: {e(amount)} ({e(_pct(frac))})">'
            f'<span class="bar-label">{e(label)}</span>'
            f'<span class="bar"><span class="fill" style="width:{width:.1f}%;'
            f'background:{colour}"></span></span>'
            f'<span class="bar-value{hot}">{e(_pct(frac))}</span>'
            f'<span class="bar-amount">{e(amount)}</span></div>')


def _pool_card(pool: dict[str, Any]) -> str:
    spec = pool.get("spec") if isinstance(pool.get("spec"), dict) else {}
    st = pool.get("status") if isinstance(pool.get("status"), dict) else {}
    name = spec.get("name", "?")
    badges = []
    if st.get("removed"):
        badges.append('<span class="badge warn" title="no longer in the pools file; its leases '
                      'stay until released">removed</span>')
    if spec.get("exclude"):
        badges.append('<span class="badge" title="only for requests that name it in '
                      'required-pool">exclude</span>')
    if spec.get("no-schedule"):
        badges.append('<span class="badge warn" title="takes no new leases">no-schedule</span>')
    leases = st.get("lease-count", len(st.get("leases") or []))
    head = (f'<div class="pool-head"><span class="pool-name">{e(name)}</span>{"".join(badges)}'
            f'<span class="muted">{e(_int_text(leases))} lease{"s" if leases != 1 else ""}'
            f'</span></div>')
    if st.get("removed"):
        return f'<div class="pool">{head}</div>'
    vcpus = _num(spec.get("vcpus"))
    cap = math.floor(vcpus * _num(spec.get("vcpu-overcommit"), 1.0) + 1e-9)
    networks = spec.get("networks") or []
    bars = [
        _bar("vcpus", st.get("vcpus-used"), cap, st.get("vcpus-usage")),
        _bar("memory", st.get("memory-used"), spec.get("memory"), st.get("memory-usage"), " GB"),
        _bar("storage", st.get("storage-used"), spec.get("storage"), st.get("datastore-usage"),
             " GB"),
        _bar("networks", st.get("networks-used"), len(networks), st.get("network-usage")),
    ]
    return f'<div class="pool">{head}{"".join(bars)}</div>'


def _by_vcenter(pools: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for pool in pools:
        if not isinstance(pool, dict):
            continue
        spec = pool.get("spec") if isinstance(pool.get("spec"), dict) else {}
        groups.setdefault(str(spec.get("vcenter", "?")), []).append(pool)
    for members in groups.values():
        members.sort(key=lambda p: str((p.get("spec") or {}).get("name", "")))
    return dict(sorted(groups.items()))


def section_pools(data: Data) -> str:
    if data.pools is None:
        return _missing("Pools")
    if not data.pools:
        return '<section><h2>Pools</h2><p class="muted">No pools are configured.</p></section>'
    cards = []
    for vcenter, pools in _by_vcenter(data.pools).items():
        live = [p for p in pools if not (p.get("status") or {}).get("removed")]
        leases = sum(int(_num((p.get("status") or {}).get("lease-count"))) for p in pools)
        cards.append(
            f'<article class="vcenter" data-vcenter="{e(vcenter)}">'
            f'<h3><span class="vc-name">{e(vcenter)}</span><span class="muted">'
            f'{len(live)} pool{"s" if len(live) != 1 else ""} · {leases} lease'
            f'{"s" if leases != 1 else ""}</span></h3>'
            + "".join(_pool_card(p) for p in pools) + "</article>")
    return (f'<section id="pools"><h2>Pools by vCenter</h2><div class="grid">{"".join(cards)}'
            "</div></section>")


def _leases_of(pools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for pool in pools:
        st = pool.get("status") if isinstance(pool, dict) else None
        for lease in (st or {}).get("leases") or []:
            if isinstance(lease, dict):
                out.append(lease)
    return out


def _size(spec: dict[str, Any]) -> tuple[str, str, str]:
    return (_int_text(spec.get("vcpus")), f"{_int_text(spec.get('memory'))} GB",
            f"{_int_text(spec.get('storage'))} GB")


def section_leases(data: Data) -> str:
    if data.pools is None:
        return _missing("Active leases")
    leases = _leases_of(data.pools)
    leases.sort(key=lambda x: (str((x.get("status") or {}).get("leased-at", "")),
                               str((x.get("metadata") or {}).get("name", ""))), reverse=True)
    title = f'<h2>Active leases <span class="count">{len(leases)}</span></h2>'
    if not leases:
        return f'<section id="leases">{title}<p class="muted">No active leases.</p></section>'
    rows = []
    for lease in leases[:MAX_LEASE_ROWS]:
        st = lease.get("status") if isinstance(lease.get("status"), dict) else {}
        spec = lease.get("spec") if isinstance(lease.get("spec"), dict) else {}
        lease_id = str((lease.get("metadata") or {}).get("name", ""))
        vcpus, memory, storage = _size(spec)
        nets = ", ".join(str(n.get("port-group", "")) for n in st.get("networks") or []
                         if isinstance(n, dict))
        rows.append(
            f'<tr><td class="owner">{e(st.get("owner", ""))}</td>'
            f'<td class="mono" title="{e(lease_id)}">{e(lease_id[:10])}</td>'
            f'<td>{e(st.get("pool", ""))}</td><td class="muted">{e(st.get("vcenter", ""))}</td>'
            f'<td class="num">{e(vcpus)}</td><td class="num">{e(memory)}</td>'
            f'<td class="num">{e(storage)}</td><td class="mono">{e(nets)}</td>'
            f'<td>{_relative(st.get("leased-at"), data.now)}</td>'
            f'<td>{_relative(st.get("expires-at"), data.now)}</td></tr>')
    more = ""
    if len(leases) > MAX_LEASE_ROWS:
        more = (f'<p class="muted">{len(leases) - MAX_LEASE_ROWS} more not shown; '
                f'<code>GET /leases</code> lists them all.</p>')
    return (f'<section id="leases">{title}<table><thead><tr><th>Owner</th><th>Lease</th>'
            "<th>Pool</th><th>vCenter</th><th>vCPU</th><th>Memory</th><th>Storage</th>"
            "<th>Port groups</th><th>Leased</th><th>Expires</th></tr></thead><tbody>"
            + "".join(rows) + f"</tbody></table>{more}</section>")


def section_waiting(data: Data) -> str:
    if data.waiting is None:
        return _missing("Waiting line")
    title = f'<h2>Waiting line <span class="count">{len(data.waiting)}</span></h2>'
    if not data.waiting:
        return (f'<section id="waiting">{title}<p class="muted">Nobody is waiting: every '
                "request so far fitted or was refused.</p></section>")
    rows = []
    for item in data.waiting[:MAX_WAITING_ROWS]:
        if not isinstance(item, dict):
            continue
        req = item.get("request") if isinstance(item.get("request"), dict) else {}
        vcpus, memory, storage = _size(req)
        extra = []
        if _num(req.get("vcenters"), 1) > 1:
            extra.append(f"{_int_text(req.get('vcenters'))} vCenters")
        if _num(req.get("networks"), 1) != 1:
            extra.append(f"{_int_text(req.get('networks'))} networks")
        if req.get("network-type") not in (None, "", "single-tenant"):
            extra.append(str(req.get("network-type")))
        if req.get("required-pool"):
            extra.append(f"pool {req.get('required-pool')}")
        what = f"{vcpus} vCPU · {memory} memory · {storage} storage" + "".join(
            f" · {x}" for x in extra)
        rows.append(
            f'<tr><td class="num">{e(item.get("position", ""))}</td>'
            f'<td class="owner">{e(req.get("owner", ""))}</td><td>{e(what)}</td>'
            f'<td class="mono" title="{e(item.get("request-id", ""))}">'
            f'{e(str(item.get("request-id", ""))[:12])}</td>'
            f'<td>{_relative(item.get("since"), data.now)}</td>'
            f'<td>{_relative(item.get("deadline"), data.now)}</td></tr>')
    more = ""
    if len(data.waiting) > MAX_WAITING_ROWS:
        more = f'<p class="muted">{len(data.waiting) - MAX_WAITING_ROWS} more not shown.</p>'
    return (f'<section id="waiting">{title}<table><thead><tr><th>#</th><th>Owner</th>'
            "<th>Request</th><th>Request id</th><th>Waiting since</th><th>Deadline</th></tr>"
            "</thead><tbody>" + "".join(rows) + f"</tbody></table>{more}</section>")


# -- history charts -----------------------------------------------------------------------------
W, H = 360, 150  # SVG user units
L, R, T, B = 34, 8, 8, 20  # margins: axis labels left and below
TICKS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)


def _series(history: list[dict[str, Any]], pick) -> list[tuple[float, dict[str, float]]]:
    out = []
    for row in history:
        if not isinstance(row, dict):
            continue
        ts = _ts(row.get("ts")) or _ts(row.get("at"))
        values = pick(row)
        if ts is not None and isinstance(values, dict):
            out.append((ts, values))
    out.sort(key=lambda x: x[0])
    return out


def _polylines(points: list[tuple[float, float]], x0: float, x1: float, top: float,
               gap: float) -> list[str]:
    """Point lists for <polyline>: one per pixel column at most (the column's peak), broken
    where the history has a gap (beat or the worker was down)."""
    width, height = W - L - R, H - T - B
    columns: dict[int, tuple[float, float]] = {}
    for ts, value in points:
        col = round((ts - x0) / (x1 - x0) * width) if x1 > x0 else width
        prev = columns.get(col)
        columns[col] = (ts, max(value, prev[1]) if prev else value)
    lines: list[list[str]] = []
    last_ts = None
    for col in sorted(columns):
        ts, value = columns[col]
        if last_ts is None or ts - last_ts > gap:
            lines.append([])
        last_ts = ts
        y = T + height - min(max(value, 0.0), top) / top * height
        lines[-1].append(f"{L + col:.1f},{y:.1f}")
    return [" ".join(pts) for pts in lines]


def _chart(title: str, series: list[tuple[float, dict[str, float]]], keys: dict[str, tuple],
           now: float, percent: bool = True) -> str:
    if not series:
        return (f'<figure class="chart"><figcaption>{e(title)}</figcaption>'
                '<p class="muted">No history yet.</p></figure>')
    x1 = now
    x0 = max(now - 86400, min(ts for ts, _ in series))
    x0 = min(x0, now - 300)  # at least five minutes wide
    steps = sorted(b - a for (a, _), (b, _) in zip(series, series[1:], strict=False))
    typical = steps[len(steps) // 2] if steps else 60.0
    gap = max(3 * typical, 90.0)
    peak = max((_num(v.get(k)) for _, v in series for k in keys), default=0.0)
    top = max(1.0, peak) if percent else max(1.0, math.ceil(peak * 1.15))
    width, height = W - L - R, H - T - B
    parts = [f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{e(title)}" '
             'xmlns="http://www.w3.org/2000/svg">']
    for frac in (0.0, 0.5, 1.0):  # horizontal grid with labels
        y = T + height - frac * height
        label = _pct(frac * top) if percent else _int_text(round(frac * top))
        parts.append(f'<line x1="{L}" x2="{W - R}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{L - 4}" y="{y + 3:.1f}" class="ylabel">{e(label)}</text>')
    step = next((s for s in TICKS if (x1 - x0) / s <= 6), TICKS[-1])
    tick = math.ceil(x0 / step) * step
    while tick <= x1:
        x = L + (tick - x0) / (x1 - x0) * width
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{T}" y2="{T + height}" class="vgrid"/>'
                     f'<text x="{x:.1f}" y="{H - 6}" class="xlabel">{e(_clock(tick))}</text>')
        tick += step
    for key, (label, colour) in keys.items():
        points = [(ts, _num(v.get(key))) for ts, v in series if key in v]
        for pts in _polylines(points, x0, x1, top, gap):
            if " " not in pts:  # a single point: draw a dot
                x, y = pts.split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="1.8" fill="{colour}"/>')
            else:
                parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                             f'stroke-width="1.6" stroke-linejoin="round"><title>{e(label)}'
                             "</title></polyline>")
    parts.append("</svg>")
    latest = series[-1][1]
    legend = "".join(
        f'<span class="key"><i style="background:{colour}"></i>{e(label)} '
        f'<b>{e(_pct(_num(latest.get(key))) if percent else _int_text(latest.get(key)))}</b>'
        "</span>" for key, (label, colour) in keys.items())
    return (f'<figure class="chart"><figcaption>{e(title)}</figcaption>{"".join(parts)}'
            f'<div class="legend">{legend}</div></figure>')


def section_history(data: Data) -> str:
    if data.history is None:
        return _missing("Usage history")
    history = [row for row in data.history if isinstance(row, dict)]
    vcenters = list(_by_vcenter(data.pools or []))
    if not vcenters:  # the pools are not known: the vCenters the history knows
        vcenters = sorted({str(vc) for row in history if isinstance(row.get("vcenters"), dict)
                           for vc in row["vcenters"]})
    first = min((t for t in (_ts(r.get("ts")) for r in history) if t is not None),
                default=None)
    if first is None:
        span = "last 24 h"
    elif data.now - first >= 86400 - 120:
        span = "last 24 h"
    else:
        span = f"since {_clock(first)} UTC, when the history starts"
    charts = []
    for vc in vcenters:
        series = _series(history, lambda row, vc=vc: (row.get("vcenters") or {}).get(vc))
        charts.append(_chart(vc, series, RESOURCES, data.now))
    fleet = _series(history, lambda row: {
        "leases": sum(_num(v.get("leases")) for v in (row.get("vcenters") or {}).values()
                      if isinstance(v, dict)),
        "waiting": _num(row.get("waiting"))})
    charts.append(_chart("Fleet: leases and waiting requests", fleet,
                         {"leases": ("Leases", "#0f766e"), "waiting": ("Waiting", "#dc2626")},
                         data.now, percent=False))
    note = ""
    if not history:
        note = ('<p class="muted">No rollups yet: beat takes one every VCM_ROLLUP_INTERVAL '
                "(60 s by default).</p>")
    return (f'<section id="history"><h2>Usage history <span class="muted small">{e(span)}'
            f'; utilization per vCenter</span></h2>{note}<div class="charts">'
            f'{"".join(charts)}</div></section>')


# -- the page ---------------------------------------------------------------------------------
def _missing(title: str) -> str:
    return (f'<section><h2>{e(title)}</h2><p class="muted">Not available right now '
            f"(see the notice above).</p></section>")


def section_summary(data: Data) -> str:
    snap = data.fleet
    if snap is None:
        return ""
    refusals = snap.refusals
    refused = sum(refusals.values())
    why = ", ".join(f"{k} {v}" for k, v in sorted(refusals.items()) if v) or "none"
    p50, p99 = snap.latency_quantile(0.5), snap.latency_quantile(0.99)
    if snap.mirror_lag is None and not snap.mirror_failing:
        mirror, mirror_cls = "not written yet (or off)", ""
    elif snap.mirror_failing:
        since = _num(snap.mirror.get("failing-since"), 0.0)
        state = snap.mirror.get("state") or "failing"
        mirror = f"{state}{f' for {_span(data.now - since)}' if since else ''}"
        mirror_cls = " bad"
    else:
        age = snap.mirror_write_age
        mirror = f"ok, lag {snap.mirror_lag}" + (f", written {_span(age)} ago" if age else "")
        mirror_cls = ""
    tiles = [
        ("Active leases", _int_text(snap.leases), ""),
        ("Waiting", _int_text(snap.waiting), " warn" if snap.waiting else ""),
        ("Placements", _int_text(snap.stats.get("placements", 0)), ""),
        ("Releases", _int_text(snap.stats.get("releases", 0)), ""),
        ("Reaped", _int_text(snap.stats.get("reaps", 0)), ""),
        ("After waiting", _int_text(snap.stats.get("granted-after-wait", 0)), ""),
        ("Refusals", _int_text(refused), ""),
        ("Acquire p50 / p99", f"≤{_seconds_text(p50)} / ≤{_seconds_text(p99)}"
         if p50 is not None else "–", " tight"),
    ]
    html_tiles = "".join(f'<div class="tile{cls}"><span>{e(label)}</span><b>{e(value)}</b></div>'
                         for label, value, cls in tiles)
    error = snap.mirror.get("error") if snap.mirror_failing else ""
    return (f'<section class="tiles">{html_tiles}</section><p class="muted small">Refusals by '
            f'reason: {e(why)} · Ledger mirror: <span class="{mirror_cls.strip()}">{e(mirror)}'
            f'</span>{f" ({e(error)})" if error else ""}</p>')


def notices(data: Data) -> str:
    if not data.problems:
        return ""
    items = []
    worker = [data.problems[k] for k in ("pools", "waiting", "history") if k in data.problems]
    missing = [name for key, name in (("pools", "pools and leases"),
                                      ("waiting", "the waiting line"),
                                      ("history", "the usage history"))
               if key in data.problems]
    if worker and data.redis_down and "redis" in data.problems:
        items.append(f"<li><b>Redis did not answer</b>, so nothing can be shown right now: "
                     f"{e(data.problems['redis'])}</li>")
    else:
        if worker:
            what = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
            who = "Redis (the broker)" if data.redis_down else "The queries worker"
            items.append(f"<li><b>{who} did not answer</b>, so {e(what)} cannot be shown right "
                         f"now: {e(worker[0])}</li>")
        if "redis" in data.problems:
            items.append(f"<li><b>Redis did not answer</b>, so the counters are missing: "
                         f"{e(data.problems['redis'])}</li>")
    return (f'<div class="notice" role="alert"><ul>{"".join(items)}</ul>'
            f"<p>This page reloads every {REFRESH} s.</p></div>")


CSS = """
*{box-sizing:border-box}
body{margin:0;font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 color:#111827;background:#f3f4f6}
header{background:#111827;color:#f9fafb;padding:10px 20px;display:flex;align-items:baseline;
 gap:16px;flex-wrap:wrap}
header h1{font-size:17px;margin:0;font-weight:600}
header .muted{color:#9ca3af}
header nav{margin-left:auto;display:flex;gap:12px}header a{color:#93c5fd;text-decoration:none}
main{padding:12px 20px 24px;max-width:1600px;margin:0 auto}
h2{font-size:15px;margin:18px 0 8px;font-weight:600}
h3{font-size:13px;margin:0 0 6px;display:flex;justify-content:space-between;gap:8px}
.muted{color:#6b7280;font-weight:400}.small{font-size:12px}
.count{background:#e5e7eb;border-radius:9px;padding:0 7px;font-size:12px;font-weight:500}
.notice{background:#fef2f2;border:1px solid #fca5a5;color:#7f1d1d;border-radius:6px;
 padding:8px 14px;margin:12px 0}
.notice ul{margin:0;padding-left:18px}.notice p{margin:4px 0 0;font-size:12px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(130px,1fr));gap:8px;
 margin-top:4px}
.tile{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:6px 10px}
.tile span{display:block;color:#6b7280;font-size:11px;text-transform:uppercase;
 letter-spacing:.03em}
.tile b{font-size:16px;font-weight:600;white-space:nowrap}.tile.tight b{font-size:14px}
.tile.warn b{color:#b45309}
.bad{color:#b91c1c;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:10px}
.vcenter{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:10px 12px}
.vc-name{font-weight:600}
.pool{border-top:1px solid #f3f4f6;padding:5px 0 3px}
.pool:first-of-type{border-top:0}
.pool-head{display:flex;gap:6px;align-items:baseline;margin-bottom:2px}
.pool-head .muted{margin-left:auto;font-size:12px}
.pool-name{font-weight:600}
.badge{font-size:10px;border:1px solid #d1d5db;border-radius:4px;padding:0 4px;color:#4b5563}
.badge.warn{border-color:#f59e0b;color:#92400e}
.bar-row{display:grid;grid-template-columns:64px 1fr 38px 118px;gap:6px;align-items:center;
 height:16px;font-size:12px}
.bar-label{color:#4b5563}
.bar{height:9px;background:#e5e7eb;border-radius:5px;overflow:hidden}
.fill{display:block;height:100%;border-radius:5px}
.bar-value{text-align:right;font-variant-numeric:tabular-nums}
.bar-value.hot{color:#b91c1c;font-weight:600}
.bar-amount{color:#6b7280;font-variant-numeric:tabular-nums;white-space:nowrap}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:10px}
.chart{margin:0;background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:8px 10px}
.chart figcaption{font-weight:600;margin-bottom:2px}
.chart svg{width:100%;height:auto;display:block}
.chart .grid{stroke:#e5e7eb;stroke-width:1}.chart .vgrid{stroke:#f3f4f6;stroke-width:1}
.ylabel{font-size:10px;fill:#6b7280;text-anchor:end}
.xlabel{font-size:10px;fill:#6b7280;text-anchor:middle}
.legend{display:flex;flex-wrap:wrap;gap:4px 12px;font-size:11px;color:#4b5563}
.key i{display:inline-block;width:10px;height:3px;margin-right:4px;vertical-align:middle}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid #e5e7eb;
 border-radius:6px;font-size:12px}
th,td{padding:4px 8px;text-align:left;border-bottom:1px solid #f3f4f6;white-space:nowrap}
th{background:#f9fafb;color:#4b5563;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.owner{font-weight:500;white-space:normal;overflow-wrap:anywhere;max-width:340px}
.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:11px}
footer{color:#6b7280;font-size:11px;margin-top:18px}
"""


def _guard(render, data: Data, name: str) -> str:
    try:
        return render(data)
    except Exception as exc:  # noqa: BLE001 - one bad section must not take the page down
        log.exception("dashboard: could not render %s", name)
        return (f'<section><h2>{e(name)}</h2><p class="notice">Could not render this section: '
                f"{e(type(exc).__name__)}: {e(exc)}</p></section>")


def render(data: Data) -> str:
    body = (
        _guard(section_summary, data, "Summary")
        + notices(data)
        + _guard(section_pools, data, "Pools")
        + _guard(section_history, data, "Usage history")
        + _guard(section_waiting, data, "Waiting line")
        + _guard(section_leases, data, "Active leases")
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="refresh" content="{REFRESH}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>vsphere-capacity-manager</title><style>{CSS}</style></head><body>"
        '<header><h1>vsphere-capacity-manager</h1>'
        f'<span class="muted">{e(_stamp(data.now))} · reloads every {REFRESH} s</span>'
        '<nav><a href="/show-pools">/show-pools</a> <a href="/leases">/leases</a> '
        '<a href="/metrics">/metrics</a> <a href="/docs">/docs</a></nav></header>'
        f"<main>{body}<footer>Usage is the share of each pool's budget in the pools file "
        "(vCPUs against vcpus × vcpu-overcommit). Bars turn red at 90 %. History charts show "
        "each rollup's peak per pixel.</footer></main></body></html>"
    )


def fallback(exc: BaseException) -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="refresh" content="{REFRESH}"><title>vsphere-capacity-manager'
            "</title></head><body><h1>vsphere-capacity-manager</h1><p>The dashboard could not "
            f"be rendered: {e(type(exc).__name__)}: {e(exc)}. It reloads every {REFRESH} s."
            "</p></body></html>")


# -- installing -------------------------------------------------------------------------------
def install_dashboard(app: FastAPI, bridge: Bridge, fleet: FleetReader | None = None,
                      timeout: float = 3.0) -> None:
    """Add `GET /` to the app (kept out of the OpenAPI schema: it is HTML, not the API)."""
    reader = fleet or FleetReader(bridge.s.redis_url)

    async def dashboard(request: Request) -> Response:
        try:
            data = await gather(bridge, reader, timeout)
            page = render(data)
        except Exception as exc:  # noqa: BLE001 - never a 5xx for the dashboard
            log.exception("dashboard failed")
            page = fallback(exc)
        return HTMLResponse(page, headers=HEADERS)

    app.add_api_route("/", dashboard, methods=["GET"], include_in_schema=False,
                      response_class=HTMLResponse, name="dashboard")
