"""Operations: GET /healthz (liveness), /readyz (readiness) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from workers.adapters.ledger.reports import describe_namespaces, namespace_status

from .. import schemas as S
from ..bridge import Bridge
from ..deps import BridgeDep
from ..errors import JSON, ApiError

router = APIRouter(default_response_class=JSON)


@router.get("/healthz", tags=["operations"], summary="Liveness: the process answers",
            responses={200: S.answer("alive", {"type": "object"})})
async def healthz() -> Response:
    return JSON({"status": "ok"})


@router.get("/readyz", tags=["operations"],
            summary="Readiness: Redis and a placement worker answer",
            responses={200: S.answer("ready", {"type": "object"}), **S.errors(503)})
async def readyz(bridge: BridgeDep) -> Response:
    report = await bridge.ready()
    if report["redis"] == "ok":  # shown, never deciding readiness
        report["namespaces"] = await _namespaces(bridge)
    if not report["ready"]:
        why = ("Redis does not answer" if report["redis"] != "ok"
               else "no placement worker answers")
        raise ApiError(503, "Unavailable", why, report, headers={"Retry-After": "2"})
    # placement goes on while the mirror (or its publisher) fails, answers wait: still ready,
    # but degraded; so too while Redis is near or at its maxmemory (see Bridge.ready), or
    # runs with a maxmemory-policy that may evict ledger records
    mirror = report.get("mirror")
    failing = isinstance(mirror, dict) and mirror.get("state") in ("failing", "too-large")
    memory = report["redis-memory"]
    pressed = memory.get("state") in ("high", "full") or memory.get("policy-evicts") is True
    return JSON({"status": "degraded" if failing or pressed else "ready", **report})


async def _namespaces(bridge: Bridge) -> dict[str, Any]:
    """The pruning of namespace-bound leases (workers/service/namespaces.py): its state, the last
    successful prune and the last error."""
    try:
        assert bridge.client is not None
        raw = await asyncio.wait_for(namespace_status(bridge.client), 1.0)
    except Exception:  # noqa: BLE001 - readiness must answer
        return {"state": "unknown"}
    return describe_namespaces(raw)


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics",
            response_class=Response,
            responses={200: {"description": "Prometheus text format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def prometheus(request: Request) -> Response:
    # the fleet collector reads Redis: keep it off the event loop
    text = await run_in_threadpool(generate_latest, request.app.state.metrics.registry)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
