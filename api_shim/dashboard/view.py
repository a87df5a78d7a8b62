"""The dashboard's view-model builders: the sections (sections.py) made from the fetched data.

Every value they hold is plain text or a number already formatted; the template only lays it
out (and escapes it). Each section is built on its own: one that fails on odd data becomes a
`Broken` section saying why, and the rest of the page still renders."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.core.lease import Lease

from ..fleet_metrics import FleetSnapshot
from .charts import chart, series
from .sections import (
    REFRESH,
    Badge,
    Bar,
    Broken,
    History,
    LeaseRow,
    Leases,
    Missing,
    Notice,
    Notices,
    Page,
    PoolCard,
    Pools,
    Summary,
    Tile,
    VCenter,
    Waiting,
    WaitRow,
)
from .text import (
    clock,
    int_text,
    moment,
    num,
    pct,
    seconds_text,
    span,
    stamp,
    text,
    ts_of,
)

log = logging.getLogger(__name__)


@dataclass
class Data:
    """What the dashboard shows, as gathered (None: that part could not be had)."""

    now: float
    pools: list[dict[str, Any]] | None = None
    waiting: list[dict[str, Any]] | None = None
    history: list[dict[str, Any]] | None = None
    fleet: FleetSnapshot | None = None
    problems: dict[str, str] = field(default_factory=dict)
    redis_down: bool = False  # the bridge could not reach Redis (not just a missing worker)


MAX_LEASE_ROWS = 300
MAX_WAITING_ROWS = 200
# resource -> (label, colour); the same colours in bars, charts and legends
RESOURCES = {
    "vcpus": ("vCPU", "#2563eb"),
    "memory": ("Memory", "#9333ea"),
    "storage": ("Storage", "#d97706"),
    "networks": ("Networks", "#059669"),
}
FLEET_KEYS = {"leases": ("Leases", "#0f766e"), "waiting": ("Waiting", "#dc2626")}
FULL = "#dc2626"  # a bar at or above 90 %
HOT = 0.9


def _bar(resource: str, used: Any, total: Any, fraction: Any, unit: str = "") -> Bar:
    label, colour = RESOURCES[resource]
    frac = num(fraction)
    width = max(0.0, min(frac, 1.0)) * 100
    return Bar(label, FULL if frac >= HOT else colour, f"{width:.1f}", pct(frac),
               f"{int_text(used)} / {int_text(total)}{unit}", frac >= HOT)


def _pool_card(pool: dict[str, Any]) -> PoolCard:
    spec = pool.get("spec") if isinstance(pool.get("spec"), dict) else {}
    st = pool.get("status") if isinstance(pool.get("status"), dict) else {}
    leases = st.get("lease-count", len(st.get("leases") or []))
    card = PoolCard(text(spec.get("name", "?")),
                    f"{int_text(leases)} lease{'s' if leases != 1 else ''}",
                    bool(st.get("removed")))
    if st.get("removed"):
        card.badges.append(Badge("removed", "no longer in the pools file; its leases stay until "
                                 "released", True))
    if spec.get("exclude"):
        card.badges.append(Badge("exclude", "only for requests that name it in required-pool",
                                 False))
    if spec.get("no-schedule"):
        card.badges.append(Badge("no-schedule", "takes no new leases", True))
    health = st.get("health") if isinstance(st.get("health"), dict) else {}
    if health.get("state") == "degraded":
        card.badges.append(Badge("degraded", text(f"live vCenter health: {health.get('reason')}"
                                                  " (no new leases)"), True))
    for taint in spec.get("taints") or []:
        if not isinstance(taint, dict):
            continue
        effect = str(taint.get("effect", ""))
        shown = f"{taint.get('key', '')}={taint.get('value', '')}" if taint.get("value") \
            else str(taint.get("key", ""))
        card.badges.append(Badge(text(f"{shown}:{effect}"), "tainted: only requests that "
                                 "tolerate it" if effect == "NoSchedule" else "tainted: used "
                                 "only when no other pool fits", effect == "NoSchedule"))
    if card.removed:
        return card
    # placeable vCPUs as placement counts them (floor(vcpus × overcommit)), from the worker
    capacity = st.get("vcpus-capacity", spec.get("vcpus"))
    networks = spec.get("networks") or []
    card.bars = [
        _bar("vcpus", st.get("vcpus-used"), capacity, st.get("vcpus-usage")),
        _bar("memory", st.get("memory-used"), spec.get("memory"), st.get("memory-usage"), " GB"),
        _bar("storage", st.get("storage-used"), spec.get("storage"), st.get("datastore-usage"),
             " GB"),
        _bar("networks", st.get("networks-used"), st.get("networks-total", len(networks)),
             st.get("network-usage")),
    ]
    return card


def by_vcenter(pools: list[Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for pool in pools:
        if not isinstance(pool, dict):
            continue
        spec = pool.get("spec") if isinstance(pool.get("spec"), dict) else {}
        groups.setdefault(str(spec.get("vcenter", "?")), []).append(pool)
    for members in groups.values():
        members.sort(key=lambda p: str((p.get("spec") or {}).get("name", "")))
    return dict(sorted(groups.items()))


def pools_section(data: Data) -> Pools | Missing:
    if data.pools is None:
        return Missing("Pools")
    vcenters = []
    for name, pools in by_vcenter(data.pools).items():
        live = [p for p in pools if not (p.get("status") or {}).get("removed")]
        leases = sum(int(num((p.get("status") or {}).get("lease-count"))) for p in pools)
        vcenters.append(VCenter(name, f"{len(live)} pool{'s' if len(live) != 1 else ''} · "
                                f"{leases} lease{'s' if leases != 1 else ''}",
                                [_pool_card(p) for p in pools]))
    return Pools(bool(data.pools), vcenters)


def _size(vcpus: Any, memory: Any, storage: Any) -> tuple[str, str, str]:
    return int_text(vcpus), f"{int_text(memory)} GB", f"{int_text(storage)} GB"


def leases_section(data: Data) -> Leases | Missing:
    if data.pools is None:
        return Missing("Active leases")
    leases = [Lease.from_wire(lease) for pool in data.pools
              for lease in ((pool.get("status") if isinstance(pool, dict) else None) or {}
                            ).get("leases") or []
              if isinstance(lease, dict)]
    leases.sort(key=lambda x: (str(x.leased_at), str(x.id)), reverse=True)
    rows = []
    for lease in leases[:MAX_LEASE_ROWS]:
        lease_id = str(lease.id)
        vcpus, memory, storage = _size(lease.vcpus, lease.memory, lease.storage)
        nets = ", ".join(str(n.get("port-group", "")) for n in lease.networks
                         if isinstance(n, dict))
        rows.append(LeaseRow(text(lease.owner), lease_id, lease_id[:10], text(lease.pool),
                             text(lease.vcenter), vcpus, memory, storage, nets,
                             moment(lease.leased_at, data.now),
                             moment(lease.expires_at, data.now), _link(lease.job_link)))
    return Leases(len(leases), rows, max(0, len(leases) - MAX_LEASE_ROWS))


def _link(value: Any) -> str:
    """Only http(s) links are linked (the worker checks them; older records may not be)."""
    return value if isinstance(value, str) and re.match(r"^https?://\S+$", value) else ""


def waiting_section(data: Data) -> Waiting | Missing:
    if data.waiting is None:
        return Missing("Waiting line")
    rows = []
    for item in data.waiting[:MAX_WAITING_ROWS]:
        if not isinstance(item, dict):
            continue
        req = item.get("request") if isinstance(item.get("request"), dict) else {}
        vcpus, memory, storage = _size(req.get("vcpus"), req.get("memory"), req.get("storage"))
        extra = []
        if num(req.get("vcenters"), 1) > 1:
            extra.append(f"{int_text(req.get('vcenters'))} vCenters")
        if num(req.get("networks"), 1) != 1:
            extra.append(f"{int_text(req.get('networks'))} networks")
        if req.get("network-type") not in (None, "", "single-tenant"):
            extra.append(str(req.get("network-type")))
        if req.get("required-pool"):
            extra.append(f"pool {req.get('required-pool')}")
        what = f"{vcpus} vCPU · {memory} memory · {storage} storage" + "".join(
            f" · {x}" for x in extra)
        request_id = item.get("request-id", "")
        rows.append(WaitRow(text(item.get("position", "")), text(req.get("owner", "")), what,
                            text(request_id), str(request_id)[:12],
                            moment(item.get("since"), data.now),
                            moment(item.get("deadline"), data.now)))
    hidden = max(0, len(data.waiting) - MAX_WAITING_ROWS)
    return Waiting(len(data.waiting), rows, hidden)


def history_section(data: Data) -> History | Missing:
    if data.history is None:
        return Missing("Usage history")
    history = [row for row in data.history if isinstance(row, dict)]
    vcenters = list(by_vcenter(data.pools or []))
    if not vcenters:  # the pools are not known: the vCenters the history knows
        vcenters = sorted({str(vc) for row in history if isinstance(row.get("vcenters"), dict)
                           for vc in row["vcenters"]})
    first = min((t for t in (ts_of(r.get("ts")) for r in history) if t is not None),
                default=None)
    if first is None or data.now - first >= 86400 - 120:
        when = "last 24 h"
    else:
        when = f"since {clock(first)} UTC, when the history starts"
    charts = [chart(vc, series(history, lambda row, vc=vc: (row.get("vcenters") or {}).get(vc)),
                    RESOURCES, data.now)
              for vc in vcenters]
    fleet = series(history, lambda row: {
        "leases": sum(num(v.get("leases")) for v in (row.get("vcenters") or {}).values()
                      if isinstance(v, dict)),
        "waiting": num(row.get("waiting"))})
    charts.append(chart("Fleet: leases and waiting requests", fleet, FLEET_KEYS, data.now,
                        percent=False))
    return History(when, not history, charts)


def summary_section(data: Data) -> Summary | None:
    snap = data.fleet
    if snap is None:
        return None
    refusals = snap.refusals
    refused = sum(refusals.values())
    why = ", ".join(f"{k} {v}" for k, v in sorted(refusals.items()) if v) or "none"
    p50, p99 = snap.latency_quantile(0.5), snap.latency_quantile(0.99)
    if snap.mirror_lag is None and not snap.mirror_failing:
        mirror, mirror_cls = "not written yet (or off)", ""
    elif snap.mirror_failing:
        since = num(snap.mirror.get("failing-since"), 0.0)
        state = snap.mirror.get("state") or "failing"
        mirror = f"{state}{f' for {span(data.now - since)}' if since else ''}"
        mirror_cls = "bad"
    else:
        age = snap.mirror_write_age
        mirror = f"ok, lag {snap.mirror_lag}" + (f", written {span(age)} ago" if age else "")
        mirror_cls = ""
    tiles = [
        Tile("Active leases", int_text(snap.leases)),
        Tile("Waiting", int_text(snap.waiting), "warn" if snap.waiting else ""),
        Tile("Placements", int_text(snap.stats.get("placements", 0))),
        Tile("Releases", int_text(snap.stats.get("releases", 0))),
        Tile("Reaped", int_text(snap.stats.get("reaps", 0))),
        Tile("After waiting", int_text(snap.stats.get("granted-after-wait", 0))),
        Tile("Refusals", int_text(refused)),
        Tile("Acquire p50 / p99", f"≤{seconds_text(p50)} / ≤{seconds_text(p99)}"
             if p50 is not None else "–", "tight"),
    ]
    error = snap.mirror.get("error") if snap.mirror_failing else ""
    return Summary(tiles, why, mirror, mirror_cls, text(error))


def notices(data: Data) -> Notices | None:
    if not data.problems:
        return None
    items = []
    worker = [data.problems[k] for k in ("pools", "waiting", "history") if k in data.problems]
    missing = [name for key, name in (("pools", "pools and leases"),
                                      ("waiting", "the waiting line"),
                                      ("history", "the usage history"))
               if key in data.problems]
    if worker and data.redis_down and "redis" in data.problems:
        items.append(Notice("Redis did not answer", ", so nothing can be shown right now: "
                            f"{data.problems['redis']}"))
    else:
        if worker:
            what = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
            who = "Redis (the broker)" if data.redis_down else "The queries worker"
            items.append(Notice(f"{who} did not answer", f", so {what} cannot be shown right "
                                f"now: {worker[0]}"))
        if "redis" in data.problems:
            items.append(Notice("Redis did not answer", ", so the counters are missing: "
                                f"{data.problems['redis']}"))
    return Notices(items)


def _guard(build: Callable[[Data], Any], data: Data, title: str) -> Any:
    try:
        return build(data)
    except Exception as exc:  # noqa: BLE001 - one bad section must not take the page down
        log.exception("dashboard: could not render %s", title)
        return Broken(title, f"{type(exc).__name__}: {exc}")


def page(data: Data) -> Page:
    sections = [
        _guard(summary_section, data, "Summary"),
        notices(data),
        _guard(pools_section, data, "Pools"),
        _guard(history_section, data, "Usage history"),
        _guard(waiting_section, data, "Waiting line"),
        _guard(leases_section, data, "Active leases"),
    ]
    return Page(stamp(data.now), REFRESH, [s for s in sections if s is not None])
