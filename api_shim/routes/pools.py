"""Pools: GET /show-pools, /usage (the rollups beat takes) and /estimate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from workers.contract import QUERIES, Task

from .. import schemas as S
from ..deps import TasksDep
from ..errors import JSON, ApiError
from ..inputs import only_query
from ..paging import CONTINUE_TEXT, LIMIT_TEXT, page, read_token, usage_key

router = APIRouter(default_response_class=JSON)


@router.get("/show-pools", tags=["pools"], summary="Pools and their usage (upstream API)",
            responses={200: S.answer("pools", {"type": "array", "items": S.POOL}),
                       **S.errors(422, 502, 503, 504)})
async def show_pools(request: Request, tasks: TasksDep) -> Response:
    only_query(request, set())
    return await tasks.answer(Task.SHOW_POOLS, {}, QUERIES)


@router.get("/usage", tags=["pools"], summary="Usage history: the rollups beat takes",
            responses={200: S.answer("usage snapshots, oldest first (a Link header points to "
                                     "the next page)",
                                     {"type": "array", "items": {"type": "object"}},
                                     S.PAGE_HEADERS),
                       **S.errors(422, 502, 503, 504)})
async def usage(
    request: Request,
    tasks: TasksDep,
    pool: Annotated[str | None, Query(description="only this pool")] = None,
    since: Annotated[str, Query(pattern=S.DURATION_TEXT,
                                description="how far back, e.g. 6h or 7d")] = "6h",
    limit: Annotated[int, Query(
        ge=1, le=S.PAGE_LIMIT_MAX, description=LIMIT_TEXT)] = S.PAGE_LIMIT,
    after: Annotated[str | None, Query(
        alias="continue", max_length=512, description=CONTINUE_TEXT)] = None,
) -> Response:
    only_query(request, {"pool", "since", "limit", "continue"})
    start = read_token(after, usage_key({}))
    rows, headers = await tasks.result(Task.USAGE_HISTORY,
                                       {"pool": pool, "since": since, "limit": limit + 1,
                                        "after": start[1] if start else None}, QUERIES)
    return page(request, rows if isinstance(rows, list) else [], usage_key, limit, start,
                headers)


@router.get("/estimate", tags=["pools"], summary="How many more such requests fit now",
            responses={200: S.answer("per pool and in all", S.ESTIMATE),
                       **S.errors(422, 502, 503, 504)})
async def estimate(
    request: Request,
    tasks: TasksDep,
    vcpus: Annotated[int, Query(ge=0, description="vCPUs per pool")],
    memory: Annotated[int, Query(ge=0, description="GB per pool")],
    storage: Annotated[int | None, Query(ge=0)] = None,
    vcenters: Annotated[int | None, Query(ge=0)] = None,
    networks: Annotated[int | None, Query(ge=0)] = None,
    network_type: Annotated[str | None, Query(alias="network-type")] = None,
    required_pool: Annotated[str | None, Query(alias="required-pool")] = None,
    pool_selector: Annotated[list[str] | None, Query(
        alias="pool-selector", description="label=value; repeat, or comma-separate")] = None,
    ttl: Annotated[str | None, Query(pattern=S.DURATION_TEXT)] = None,
    wait: Annotated[str | None, Query(pattern=S.DURATION_TEXT)] = None,
    owner: Annotated[str | None, Query()] = None,
    boskos_lease_id: Annotated[str | None, Query(alias="boskos-lease-id")] = None,
    request_id: Annotated[str | None, Query(alias="request-id")] = None,
) -> Response:
    values = {
        "vcpus": vcpus, "memory": memory, "storage": storage, "vcenters": vcenters,
        "networks": networks, "network-type": network_type, "required-pool": required_pool,
        "ttl": ttl, "wait": wait, "owner": owner, "boskos-lease-id": boskos_lease_id,
        "request-id": request_id,
    }
    only_query(request, set(values) | {"pool-selector"})
    req = {k: v for k, v in values.items() if v is not None}
    if pool_selector:
        selector: dict[str, str] = {}
        for item in (x.strip() for raw in pool_selector for x in raw.split(",")):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ApiError.invalid("pool-selector", f"{item!r} is not label=value")
            selector[key.strip()] = value.strip()
        req["pool-selector"] = selector
    return await tasks.answer(Task.ESTIMATE, {"request": req}, QUERIES)
