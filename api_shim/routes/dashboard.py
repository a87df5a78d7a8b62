"""The dashboard at GET / (HTML, kept out of the OpenAPI document: it is not the API)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from starlette.responses import HTMLResponse, Response

from ..dashboard import HEADERS, fallback, gather, render
from ..deps import BridgeDep, FleetDep

log = logging.getLogger(__name__)

router = APIRouter()
TIMEOUT = 3.0  # each query task's answer; the page itself never waits much longer


@router.get("/", include_in_schema=False, response_class=HTMLResponse, name="dashboard")
async def dashboard(bridge: BridgeDep, fleet: FleetDep) -> Response:
    try:
        page = render(await gather(bridge, fleet, TIMEOUT))
    except Exception as exc:  # noqa: BLE001 - never a 5xx for the dashboard
        log.exception("dashboard failed")
        page = fallback(exc)
    return HTMLResponse(page, headers=HEADERS)
