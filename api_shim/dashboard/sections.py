"""The dashboard's sections: what templates/dashboard.html shows, as plain data.

Each section type has a `kind`, the template's name for how to draw it; the smaller types
(tiles, bars, badges, rows) are parts of a section. Every value is plain text or a number
already formatted: view.py builds them from the fetched data, the template only lays them out
(and escapes them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .charts import Chart
from .text import Moment

REFRESH = 30  # seconds between reloads (a meta refresh: no script needed)


@dataclass(frozen=True)
class Missing:
    """A section whose data did not come (the notice above says why)."""

    title: str
    kind: str = "missing"


@dataclass(frozen=True)
class Broken:
    """A section that could not be built."""

    title: str
    error: str
    kind: str = "broken"


@dataclass(frozen=True)
class Tile:
    label: str
    value: str
    cls: str = ""


@dataclass
class Summary:
    tiles: list[Tile]
    refusals: str
    mirror: str
    mirror_cls: str
    mirror_error: str
    kind: str = "summary"


@dataclass(frozen=True)
class Notice:
    headline: str  # shown in bold
    rest: str


@dataclass
class Notices:
    """What could not be shown, and why (the sections say "Not available right now")."""

    items: list[Notice]
    refresh: int = REFRESH
    kind: str = "notices"


@dataclass(frozen=True)
class Bar:
    label: str
    colour: str
    width: str  # percent of the track
    percent: str
    amount: str
    hot: bool


@dataclass(frozen=True)
class Badge:
    text: str
    title: str
    warn: bool


@dataclass
class PoolCard:
    name: str
    leases: str
    removed: bool
    badges: list[Badge] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)


@dataclass
class VCenter:
    name: str
    summary: str
    pools: list[PoolCard]


@dataclass
class Pools:
    configured: bool  # any pools at all
    vcenters: list[VCenter]
    kind: str = "pools"


@dataclass(frozen=True)
class LeaseRow:
    owner: str
    lease_id: str
    short_id: str
    pool: str
    vcenter: str
    vcpus: str
    memory: str
    storage: str
    networks: str
    leased: Moment
    expires: Moment
    job_link: str = ""  # an http(s) link to the job holding the lease, or ""


@dataclass
class Leases:
    count: int
    rows: list[LeaseRow]
    hidden: int
    kind: str = "leases"


@dataclass(frozen=True)
class WaitRow:
    position: str
    owner: str
    request: str
    request_id: str
    short_id: str
    since: Moment
    deadline: Moment


@dataclass
class Waiting:
    count: int
    rows: list[WaitRow]
    hidden: int
    kind: str = "waiting"


@dataclass
class History:
    span: str
    empty: bool
    charts: list[Chart]
    kind: str = "history"


@dataclass
class Page:
    stamp: str
    refresh: int
    sections: list[Any]  # in page order
