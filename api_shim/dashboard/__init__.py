"""The dashboard at `GET /`: one server-rendered HTML page, inline CSS and inline SVG, no
JavaScript and no external assets.

It shows the pools grouped by vCenter with usage bars, the active leases, the waiting line and
24 h usage history charts per vCenter, plus the fleet counters. The data comes from the queries
worker (`vcm.show_pools`, `vcm.waiting`, `vcm.usage_history`, sent in parallel, each bounded;
the bridge deletes each result once read, so a reload leaves nothing behind in Redis)
and from Redis directly (the counters, the same reader as the fleet metrics). When the worker or
Redis does not answer, the page still renders, with a notice saying what is missing: it never
answers 5xx.

`gather` collects the data, `view.page` turns it into the view-model (the section types of
sections.py), and the Jinja2 template templates/dashboard.html draws it with autoescape on
(owners are user input); the Content-Security-Policy forbids scripts anyway. The route is in
routes/dashboard.py.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from typing import Any

import anyio
import jinja2

from workers.contract import QUERIES, Task

from ..bridge import Bridge
from ..errors import ApiError, from_task_failure
from ..fleet_metrics import FleetReader, FleetSnapshot
from . import view
from .view import Data

log = logging.getLogger(__name__)

REFRESH = view.REFRESH
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("api_shim", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt field fails the page (and the tests)
    trim_blocks=True,
    lstrip_blocks=True,
)


async def gather(bridge: Bridge, fleet: FleetReader, timeout: float) -> Data:
    """Ask the queries worker and Redis in parallel; every part bounded, none may raise."""

    redis_down = False

    async def task(name: str, kwargs: dict[str, Any]) -> tuple[Any, str | None]:
        nonlocal redis_down
        try:
            meta = await asyncio.wait_for(
                bridge.call(name, kwargs, QUERIES, timeout=timeout), timeout + 1.0)
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
        task(Task.SHOW_POOLS, {}), task(Task.WAITING, {}),
        task(Task.USAGE_HISTORY, {"since": "24h"}), counters())
    data = Data(now=time.time(), fleet=snap, redis_down=redis_down or snap is None)
    data.pools = pools if isinstance(pools, list) else None
    data.waiting = waiting if isinstance(waiting, list) else None
    data.history = history if isinstance(history, list) else None
    for key, problem in (("pools", p1), ("waiting", p2), ("history", p3), ("redis", p4)):
        if problem:
            data.problems[key] = problem
    return data


def render(data: Data) -> str:
    """The page: the view-model drawn by templates/dashboard.html."""
    return TEMPLATES.get_template("dashboard.html").render(page=view.page(data))


def fallback(exc: BaseException) -> str:
    """The page when the dashboard itself fails: plain HTML, independent of the template."""
    e = html.escape
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="refresh" content="{REFRESH}"><title>vsphere-capacity-manager'
            "</title></head><body><h1>vsphere-capacity-manager</h1><p>The dashboard could not "
            f"be rendered: {e(type(exc).__name__)}: {e(str(exc))}. It reloads every {REFRESH} s."
            "</p></body></html>")
