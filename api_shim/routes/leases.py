"""Leases: POST /acquire, /release, /renew (the writes), GET /leases and GET /tasks/{id}."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from workers.contract import PLACEMENT, QUERIES, Task
from workers.core.errors import InvalidRequest
from workers.core.parsing import parse_duration

from .. import schemas as S
from ..deps import BridgeDep, CallerDep, SettingsDep, TasksDep, as_owner
from ..errors import JSON, ApiError, from_task_failure
from ..inputs import only_query, pick, read_object
from ..paging import CONTINUE_TEXT, LIMIT_TEXT, lease_key, page, read_token
from ..settings import ApiSettings

router = APIRouter(default_response_class=JSON)

TASK_ID = re.compile(r"^[A-Za-z0-9._:@+=-]{1,200}$")


def sync_wait(req: dict[str, Any], settings: ApiSettings) -> float:
    """How long a synchronous acquire may wait in line; 422 above VCM_API_MAX_SYNC_WAIT."""
    try:
        wait = parse_duration(req.get("wait") or 0, "wait", maximum=math.inf)
    except InvalidRequest:
        return 0.0  # the worker says what is wrong with it
    if wait > settings.max_sync_wait:
        raise ApiError.invalid(
            "wait", f"{wait:g}s is longer than this server holds a request open "
            f"({settings.max_sync_wait:g}s): use POST /acquire?async=true and poll "
            "GET /tasks/{task-id}", maximum=settings.max_sync_wait)
    return wait


# -- writes -----------------------------------------------------------------------------------
@router.post(
    "/acquire", tags=["leases"], summary="Acquire leases (upstream API)",
    openapi_extra=S.body(S.ACQUIRE_REQUEST),
    responses={200: S.answer("the leases, one per vCenter", S.LEASES),
               202: S.answer("accepted (?async=true): poll GET /tasks/{task-id}", {
                   "type": "object", "required": ["task-id"],
                   "properties": {"task-id": {"type": "string"}}}),
               **S.errors(400, 401, 403, 409, 413, 422, 502, 503, 504)},
)
async def acquire(
    request: Request,
    caller: CallerDep,
    tasks: TasksDep,
    settings: SettingsDep,
    bridge: BridgeDep,
    async_: Annotated[bool, Query(
        alias="async", description="answer 202 with a task id at once, don't wait")] = False,
) -> Response:
    only_query(request, {"async"})
    token = caller.token()
    req = await read_object(request)
    if token is not None:
        req["owner"] = as_owner(token, req.get("owner"), "acquire")
    if async_:
        task_id = await bridge.send(Task.ACQUIRE, {"request": req}, PLACEMENT, record=True)
        return JSON({"task-id": task_id}, status_code=202,
                    headers={"Location": f"/tasks/{task_id}"})
    wait = sync_wait(req, settings)
    return await tasks.answer(Task.ACQUIRE, {"request": req}, PLACEMENT, wait)


@router.post(
    "/release", tags=["leases"], summary="Release leases by id and/or owner",
    openapi_extra=S.body(S.RELEASE_REQUEST),
    responses={200: S.answer("the released lease ids (releasing twice is fine)",
                             {"type": "array", "items": {"type": "string"}}),
               **S.errors(400, 401, 403, 404, 413, 422, 502, 503, 504)},
)
async def release(request: Request, caller: CallerDep, tasks: TasksDep) -> Response:
    only_query(request, set())
    token = caller.token()
    args = pick(await read_object(request), {"lease-ids": "lease_ids",
                                             "lease_ids": "lease_ids", "owner": "owner",
                                             "selector": "selector"})
    if token is not None and not token.admin and (
            "owner" in args or "lease_ids" in args or "selector" in args):
        # a non-admin releases as itself: the worker refuses other owners' leases
        args["owner"] = as_owner(token, args.get("owner"), "release leases")
    return await tasks.answer(Task.RELEASE, args, PLACEMENT)


@router.post(
    "/renew", tags=["leases"], summary="Extend a lease",
    openapi_extra=S.body(S.RENEW_REQUEST),
    responses={200: S.answer("the renewed lease", S.LEASE),
               **S.errors(400, 401, 403, 404, 413, 422, 502, 503, 504)},
)
async def renew(request: Request, caller: CallerDep, tasks: TasksDep) -> Response:
    only_query(request, set())
    token = caller.token()
    args = pick(await read_object(request), {"lease-id": "lease_id", "lease_id": "lease_id",
                                             "owner": "owner", "ttl": "ttl"})
    admin_any = token is not None and token.admin and args.get("owner") in (None, "")
    if token is not None:
        args["owner"] = as_owner(token, args.get("owner"), "renew leases")
    try:
        return await tasks.answer(Task.RENEW, args, PLACEMENT)
    except ApiError as exc:
        holder = exc.details.get("holder")
        if not (admin_any and exc.error == "NotOwner" and isinstance(holder, str)):
            raise
    # an admin token renews anyone's lease: again, as its holder
    args["owner"] = holder
    return await tasks.answer(Task.RENEW, args, PLACEMENT)


# -- reads ------------------------------------------------------------------------------------
@router.get("/leases", tags=["leases"], summary="Active leases, oldest first, in pages",
            responses={200: S.answer("leases (a Link header points to the next page)",
                                     S.LEASES, S.PAGE_HEADERS),
                       **S.errors(422, 502, 503, 504)})
async def leases(
    request: Request,
    tasks: TasksDep,
    owner: Annotated[str | None, Query(description="only this owner's leases")] = None,
    pool: Annotated[str | None, Query(description="only leases on this pool")] = None,
    selector: Annotated[str | None, Query(
        max_length=4096, description="only leases whose labels match, e.g. k=v,k2 in (a,b)")
    ] = None,
    limit: Annotated[int, Query(
        ge=1, le=S.PAGE_LIMIT_MAX, description=LIMIT_TEXT)] = S.PAGE_LIMIT,
    after: Annotated[str | None, Query(
        alias="continue", max_length=512, description=CONTINUE_TEXT)] = None,
) -> Response:
    only_query(request, {"owner", "pool", "selector", "limit", "continue"})
    start = read_token(after, lease_key({}))
    # the worker pages too (one more than asked, to know whether a next page exists)
    found, headers = await tasks.result(Task.LIST_LEASES,
                                        {"owner": owner, "pool": pool, "selector": selector,
                                         "limit": limit + 1,
                                         "after": start[1:] if start else None}, QUERIES)
    return page(request, found if isinstance(found, list) else [], lease_key, limit, start,
                headers)


@router.get("/tasks/{task_id}", tags=["tasks"], summary="State of a task sent through the API",
            responses={200: S.answer("the task's state", S.TASK_STATE),
                       **S.errors(404, 503)})
async def task_state(request: Request, bridge: BridgeDep, task_id: Annotated[str, Path(
        description="from POST /acquire?async=true")]) -> Response:
    only_query(request, set())
    not_found = ApiError(404, "TaskNotFound", f"no task {task_id!r} was sent through this "
                         "API (or its record expired)", {"task-id": task_id})
    if not TASK_ID.match(task_id):
        raise not_found
    meta = await bridge.meta(task_id)
    record = await bridge.record(task_id) if meta is None or not meta.get("name") else None
    if meta is None:
        if record is None:
            raise not_found
        return JSON({"task-id": task_id, "task": record.get("task"), "state": "PENDING"})
    state = str(meta.get("status"))
    out: dict[str, Any] = {"task-id": task_id,
                           "task": meta.get("name") or (record or {}).get("task"),
                           "state": state}
    info = meta.get("result")
    if state == "SUCCESS":
        out["result"] = info
        out["date-done"] = meta.get("date_done")
    elif state == "FAILURE":
        err = from_task_failure(info, task_id)
        out.update({"error": err.to_dict(), "status-code": err.status,
                    "date-done": meta.get("date_done")})
    elif state == "REVOKED":
        out["error"] = {"error": "Revoked", "message": "revoked or expired before a worker "
                        "ran it", "details": {}}
    elif isinstance(info, dict):
        if state == "STARTED":
            out["worker"] = info.get("hostname")
        else:  # WAITING (position, reasons, deadline) and any other progress state
            for key, value in info.items():
                out.setdefault(str(key), value)
    return JSON(out)
