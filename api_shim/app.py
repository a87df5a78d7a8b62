"""The HTTP shim (CONTRACT §6): the upstream API over the Celery tasks of §5.

`create_app()` builds the FastAPI app, `serve()` runs it with uvicorn (`vcm api`).
Every request is bounded: placement and query tasks are awaited at most the request's `wait`
(capped by VCM_API_MAX_SYNC_WAIT) plus VCM_API_TIMEOUT, and a missing worker or Redis is a
prompt 503 rather than a hang.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from workers.core.errors import InvalidRequest
from workers.core.models import parse_duration
from workers.settings import Settings

from . import schemas as S
from .bridge import Bridge
from .errors import JSON, ApiError, from_task_failure
from .middleware import BodyLimitMiddleware, Metrics, MetricsMiddleware
from .settings import ApiSettings, Token, TokenStore

log = logging.getLogger("vcm.api")

TASK_ID = re.compile(r"^[A-Za-z0-9._:@+=-]{1,200}$")
INT_FIELDS = ("vcpus", "memory", "storage", "vcenters", "networks")


# -- request helpers --------------------------------------------------------------------------
async def read_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; 400 when it is not JSON, 422 when it is not an object."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError.invalid("body", "is empty; send a JSON object", status=400)
    try:
        text = raw.decode("utf-8-sig")
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise ApiError.invalid("body", "is not UTF-8 text", status=400) from None
    except RecursionError:
        raise ApiError.invalid("body", "is nested too deeply", status=400) from None
    except ValueError as exc:
        raise ApiError.invalid("body", f"is not valid JSON: {exc}", status=400) from None
    try:  # "\ud800" is valid JSON but not Unicode: it could not be passed on as UTF-8
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end].encode("unicode_escape").decode()
        raise ApiError.invalid("body", f"contains {bad}, which is not a Unicode character",
                               status=400) from None
    if not isinstance(value, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(value), "a number")
        raise ApiError.invalid("body", f"must be a JSON object, got {kind}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def only_query(request: Request, allowed: set[str]) -> None:
    extra = sorted(set(request.query_params) - allowed)
    if extra:
        known = ", ".join(sorted(allowed)) or "none"
        raise ApiError.invalid(extra[0], f"unknown query parameter (known: {known})")


def pick(body: dict[str, Any], allowed: dict[str, str]) -> dict[str, Any]:
    """Map body keys (hyphenated, snake_case also accepted) onto task argument names."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        arg = allowed.get(key)
        if arg is None:
            shown = sorted({k for k in allowed if "_" not in k})
            raise ApiError.invalid(key, f"unknown field (known: {', '.join(shown)})")
        if arg in out:
            raise ApiError.invalid(key, "given twice (hyphenated and with underscores)")
        out[arg] = value
    return out


def forbidden(message: str, **details: Any) -> ApiError:
    return ApiError(403, "Forbidden", message, details)


# -- pages of GET /leases and GET /usage ------------------------------------------------------
# A page ends at a key (not an offset): a lease granted or a rollup taken meanwhile does not
# shift the next page. The token is that key, tagged with the endpoint, in base64url JSON.
def lease_key(lease: Any) -> list[Any]:
    status = lease.get("status") if isinstance(lease, dict) else None
    meta = lease.get("metadata") if isinstance(lease, dict) else None
    return ["leases", str((status or {}).get("leased-at", "")), str((meta or {}).get("name", ""))]


def usage_key(row: Any) -> list[Any]:
    ts = row.get("ts") if isinstance(row, dict) else None
    return ["usage", float(ts) if isinstance(ts, int | float) else 0.0]


LIMIT_TEXT = f"at most this many items (default {S.PAGE_LIMIT}, at most {S.PAGE_LIMIT_MAX})"
CONTINUE_TEXT = "the next page: the token in the previous page's X-Continue (or Link) header"


def make_token(key: list[Any]) -> str:
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_token(token: str | None, like: list[Any]) -> list[Any] | None:
    """The key a `continue` token carries; 422 unless it is one of this endpoint's."""
    if token is None:
        return None
    bad = ApiError.invalid("continue", "is not a token from this endpoint's X-Continue or "
                           "Link header")
    try:
        key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)),
                         parse_constant=_no_constant)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise bad from None
    if (not isinstance(key, list) or len(key) != len(like) or key[0] != like[0]
            or not all(type(a) is type(b) for a, b in zip(key, like, strict=True))):
        raise bad
    return key


def page(request: Request, items: list[Any], key: Any, limit: int,
         after: list[Any] | None, headers: dict[str, str]) -> Response:
    """At most `limit` items after `after`, in `key` order; a next link when there are more."""
    items = sorted(items, key=key)  # the order the worker gives; the pages rely on it
    if after is not None:
        items = [x for x in items if key(x) > after]
    shown = items[:limit]
    if len(items) > limit:
        token = make_token(key(shown[-1]))
        url = request.url.include_query_params(**{"continue": token})
        headers = {**headers, "X-Continue": token,
                   "Link": f'<{url.path}?{url.query}>; rel="next"'}
    return JSON(shown, headers=headers)


# -- the app ----------------------------------------------------------------------------------
def create_app(settings: ApiSettings | Settings | None = None) -> FastAPI:
    if settings is None:
        settings = ApiSettings.from_env()
    elif isinstance(settings, Settings):
        settings = ApiSettings.from_settings(settings)
    s: ApiSettings = settings
    metrics = Metrics()
    bridge = Bridge(s, metrics)
    tokens = TokenStore(s.tokens, s.tokens_file)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await bridge.start()
        assert bridge.live
        warm = asyncio.create_task(bridge.live.refresh())  # discover the workers early
        try:
            yield
        finally:
            warm.cancel()
            await bridge.close()

    app = FastAPI(
        title="vsphere-capacity-manager",
        version="1",
        summary="Leases slices of vCenter capacity to CI jobs (the upstream HTTP API over "
                "Celery tasks)",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        default_response_class=JSON,
    )
    app.state.settings = s
    app.state.bridge = bridge
    app.state.metrics = metrics
    # fleet metrics (read from the ledger at scrape time) and the dashboard at GET /
    from .dashboard import install_dashboard
    from .fleet_metrics import FleetCollector, FleetReader

    fleet = FleetReader(s.redis_url)
    metrics.registry.register(FleetCollector(fleet))
    install_dashboard(app, bridge, fleet)

    # outermost first: metrics see every answer, 413s included
    app.add_middleware(BodyLimitMiddleware, limit=s.max_body, read_timeout=s.body_timeout)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.router.routes)

    # -- auth --------------------------------------------------------------------------------
    def who(request: Request) -> Token | None:
        """The caller's token when auth is on (None when it is off); 401 otherwise."""
        if not s.auth:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.strip().partition(" ")
        if not header:
            raise ApiError(401, "Unauthorized", "writes need 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": 'Bearer realm="vcm"'})
        if scheme.lower() != "bearer" or not credential.strip():
            raise ApiError(401, "Unauthorized", "Authorization: use the Bearer scheme",
                           headers={"WWW-Authenticate": 'Bearer realm="vcm"'})
        given = credential.strip().encode("utf-8", "replace")
        found = None
        for token in tokens.current():  # compare with every one, in constant time each
            if hmac.compare_digest(given, token.secret.encode()):
                found = token
        if found is None:
            raise ApiError(401, "Unauthorized", "unknown token", headers={
                "WWW-Authenticate": 'Bearer realm="vcm", error="invalid_token"'})
        return found

    def as_owner(token: Token | None, owner: Any, action: str) -> Any:
        """The owner to act as: the token's name unless an admin token says otherwise."""
        if token is None:
            return owner
        if owner is None or owner == "" or owner == token.name:
            return token.name
        if token.admin or not isinstance(owner, str):
            return owner  # the worker rejects a non-string owner, naming the field
        raise forbidden(f"the token of {token.name!r} may not {action} as {owner!r}",
                        owner=owner, token=token.name)

    # -- results -----------------------------------------------------------------------------
    def outcome(meta: dict[str, Any], task: str) -> Any:
        state = meta.get("status")
        if state == "SUCCESS":
            metrics.task_results.labels(task, "success").inc()
            return meta.get("result")
        task_id = str(meta.get("task_id", ""))
        if state == "REVOKED":
            metrics.task_results.labels(task, "Revoked").inc()
            raise ApiError(503, "Revoked", f"{task} was revoked before a worker ran it",
                           {"task-id": task_id})
        err = from_task_failure(meta.get("result"), task_id)
        metrics.task_results.labels(task, err.error).inc()
        raise err

    async def result_of(request: Request, task: str, kwargs: dict[str, Any], queue: str,
                        wait: float = 0.0) -> tuple[Any, dict[str, str]]:
        """Send the task, wait for it (bounded): its result (or its error raised), and the
        headers that name the task."""
        meta = await bridge.call(task, kwargs, queue, timeout=wait + s.task_timeout,
                                 disconnected=request.is_disconnected)
        return outcome(meta, task), {"X-VCM-Task-Id": str(meta.get("task_id", ""))}

    async def run(request: Request, task: str, kwargs: dict[str, Any], queue: str,
                  wait: float = 0.0) -> Response:
        """Send the task, wait for it (bounded), answer with its result or its error."""
        result, headers = await result_of(request, task, kwargs, queue, wait)
        return JSON(result, headers=headers)

    def sync_wait(req: dict[str, Any]) -> float:
        try:
            wait = parse_duration(req.get("wait") or 0, "wait", maximum=math.inf)
        except InvalidRequest:
            return 0.0  # the worker says what is wrong with it
        if wait > s.max_sync_wait:
            raise ApiError.invalid(
                "wait", f"{wait:g}s is longer than this server holds a request open "
                f"({s.max_sync_wait:g}s): use POST /acquire?async=true and poll "
                "GET /tasks/{task-id}", maximum=s.max_sync_wait)
        return wait

    # -- writes ------------------------------------------------------------------------------
    write_security = {"security": [{"bearer": []}]}

    @app.post(
        "/acquire", tags=["leases"], summary="Acquire leases (upstream API)",
        openapi_extra={**S.body(S.ACQUIRE_REQUEST), **write_security},
        responses={200: S.answer("the leases, one per vCenter", S.LEASES),
                   202: S.answer("accepted (?async=true): poll GET /tasks/{task-id}", {
                       "type": "object", "required": ["task-id"],
                       "properties": {"task-id": {"type": "string"}}}),
                   **S.errors(400, 401, 403, 409, 413, 422, 502, 503, 504)},
    )
    async def acquire(
        request: Request,
        async_: Annotated[bool, Query(
            alias="async", description="answer 202 with a task id at once, don't wait")] = False,
    ) -> Response:
        only_query(request, {"async"})
        token = who(request)
        req = await read_object(request)
        if token is not None:
            req["owner"] = as_owner(token, req.get("owner"), "acquire")
        if async_:
            task_id = await bridge.send("vcm.acquire", {"request": req}, "placement",
                                        record=True)
            return JSON({"task-id": task_id}, status_code=202,
                        headers={"Location": f"/tasks/{task_id}"})
        wait = sync_wait(req)
        return await run(request, "vcm.acquire", {"request": req}, "placement", wait)

    @app.post(
        "/release", tags=["leases"], summary="Release leases by id and/or owner",
        openapi_extra={**S.body(S.RELEASE_REQUEST), **write_security},
        responses={200: S.answer("the released lease ids (releasing twice is fine)",
                                 {"type": "array", "items": {"type": "string"}}),
                   **S.errors(400, 401, 403, 404, 413, 422, 502, 503, 504)},
    )
    async def release(request: Request) -> Response:
        only_query(request, set())
        token = who(request)
        args = pick(await read_object(request), {"lease-ids": "lease_ids",
                                                 "lease_ids": "lease_ids", "owner": "owner"})
        if token is not None and not token.admin and ("owner" in args or "lease_ids" in args):
            # a non-admin releases as itself: the worker refuses other owners' leases
            args["owner"] = as_owner(token, args.get("owner"), "release leases")
        return await run(request, "vcm.release", args, "placement")

    @app.post(
        "/renew", tags=["leases"], summary="Extend a lease",
        openapi_extra={**S.body(S.RENEW_REQUEST), **write_security},
        responses={200: S.answer("the renewed lease", S.LEASE),
                   **S.errors(400, 401, 403, 404, 413, 422, 502, 503, 504)},
    )
    async def renew(request: Request) -> Response:
        only_query(request, set())
        token = who(request)
        args = pick(await read_object(request), {"lease-id": "lease_id", "lease_id": "lease_id",
                                                 "owner": "owner", "ttl": "ttl"})
        admin_any = token is not None and token.admin and args.get("owner") in (None, "")
        if token is not None:
            args["owner"] = as_owner(token, args.get("owner"), "renew leases")
        try:
            return await run(request, "vcm.renew", args, "placement")
        except ApiError as exc:
            holder = exc.details.get("holder")
            if not (admin_any and exc.error == "NotOwner" and isinstance(holder, str)):
                raise
        # an admin token renews anyone's lease: again, as its holder
        args["owner"] = holder
        return await run(request, "vcm.renew", args, "placement")

    # -- reads -------------------------------------------------------------------------------
    @app.get("/show-pools", tags=["pools"], summary="Pools and their usage (upstream API)",
             responses={200: S.answer("pools", {"type": "array", "items": S.POOL}),
                        **S.errors(422, 502, 503, 504)})
    async def show_pools(request: Request) -> Response:
        only_query(request, set())
        return await run(request, "vcm.show_pools", {}, "queries")

    @app.get("/leases", tags=["leases"], summary="Active leases, oldest first, in pages",
             responses={200: S.answer("leases (a Link header points to the next page)",
                                      S.LEASES, S.PAGE_HEADERS),
                        **S.errors(422, 502, 503, 504)})
    async def leases(
        request: Request,
        owner: Annotated[str | None, Query(description="only this owner's leases")] = None,
        pool: Annotated[str | None, Query(description="only leases on this pool")] = None,
        limit: Annotated[int, Query(
            ge=1, le=S.PAGE_LIMIT_MAX, description=LIMIT_TEXT)] = S.PAGE_LIMIT,
        after: Annotated[str | None, Query(
            alias="continue", max_length=512, description=CONTINUE_TEXT)] = None,
    ) -> Response:
        only_query(request, {"owner", "pool", "limit", "continue"})
        start = read_token(after, lease_key({}))
        # the worker pages too (one more than asked, to know whether a next page exists)
        found, headers = await result_of(request, "vcm.list_leases",
                                         {"owner": owner, "pool": pool, "limit": limit + 1,
                                          "after": start[1:] if start else None}, "queries")
        return page(request, found if isinstance(found, list) else [], lease_key, limit, start,
                    headers)

    @app.get("/usage", tags=["pools"], summary="Usage history: the rollups beat takes",
             responses={200: S.answer("usage snapshots, oldest first (a Link header points to "
                                      "the next page)",
                                      {"type": "array", "items": {"type": "object"}},
                                      S.PAGE_HEADERS),
                        **S.errors(422, 502, 503, 504)})
    async def usage(
        request: Request,
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
        rows, headers = await result_of(request, "vcm.usage_history",
                                        {"pool": pool, "since": since, "limit": limit + 1,
                                         "after": start[1] if start else None}, "queries")
        return page(request, rows if isinstance(rows, list) else [], usage_key, limit, start,
                    headers)

    @app.get("/estimate", tags=["pools"], summary="How many more such requests fit now",
             responses={200: S.answer("per pool and in all", S.ESTIMATE),
                        **S.errors(422, 502, 503, 504)})
    async def estimate(
        request: Request,
        vcpus: Annotated[int, Query(ge=1, description="vCPUs per vCenter")],
        memory: Annotated[int, Query(ge=1, description="GB per vCenter")],
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
        return await run(request, "vcm.estimate", {"request": req}, "queries")

    @app.get("/tasks/{task_id}", tags=["tasks"], summary="State of a task sent through the API",
             responses={200: S.answer("the task's state", S.TASK_STATE),
                        **S.errors(404, 503)})
    async def task_state(request: Request, task_id: Annotated[str, Path(
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

    # -- operations --------------------------------------------------------------------------
    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers",
             responses={200: S.answer("alive", {"type": "object"})})
    async def healthz() -> Response:
        return JSON({"status": "ok"})

    @app.get("/readyz", tags=["operations"],
             summary="Readiness: Redis and a placement worker answer",
             responses={200: S.answer("ready", {"type": "object"}), **S.errors(503)})
    async def readyz() -> Response:
        report = await bridge.ready()
        if not report["ready"]:
            why = ("Redis does not answer" if report["redis"] != "ok"
                   else "no placement worker answers")
            raise ApiError(503, "Unavailable", why, report, headers={"Retry-After": "2"})
        mirror = report.get("mirror")
        if isinstance(mirror, dict) and mirror.get("state") not in (None, "unknown"):
            mirror.update(await run_in_threadpool(mirror_details))
        # placement goes on while the mirror (or its publisher) fails, answers wait: still
        # ready, but degraded
        failing = isinstance(mirror, dict) and mirror.get("state") in ("failing", "too-large")
        return JSON({"status": "degraded" if failing else "ready", **report})

    def mirror_details() -> dict[str, Any]:
        """The publisher's error counters and last unexpected error (best effort)."""
        keys = ("errors", "last-error", "set-aside", "failures")
        try:
            values = fleet.client.hmget(fleet.p + "mirror", keys)
        except Exception:  # noqa: BLE001 - readiness must answer
            return {}
        out: dict[str, Any] = {}
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            out[key] = int(text) if text.isdigit() else text
        return out

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response,
             responses={200: {"description": "Prometheus text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        # the fleet collector reads Redis: keep it off the event loop
        text = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    # -- errors ------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> Response:
        problems = []
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ())]
            where = loc[0] if loc else "request"
            field = loc[1] if len(loc) > 1 else where  # the parameter (not an index in it)
            problems.append({"field": field, "in": where, "problem": str(e.get("msg", ""))})
        first = problems[0] if problems else {"field": "request", "problem": "invalid"}
        return ApiError(422, "InvalidRequest", f"{first['field']}: {first['problem']}",
                        {"field": first["field"], "errors": problems}).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        names = {404: "NotFound", 405: "MethodNotAllowed"}
        if exc.status_code == 404:
            message = (f"no such endpoint: {request.method} {request.url.path} "
                       "(see /openapi.json)")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return ApiError(exc.status_code, names.get(exc.status_code, "HTTPError"), message,
                        {"path": request.url.path}, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return ApiError(500, "InternalError", f"unexpected {type(exc).__name__}; see the "
                        "server log").response()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=app.title, version=app.version, summary=app.summary,
                              routes=app.routes, description=(
                                  "Errors are JSON {error, message, details}. Writes need "
                                  "'Authorization: Bearer <token>' when VCM_API_TOKENS is set."))
            doc.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve(host: str = "127.0.0.1", port: int = 8080, settings: ApiSettings | None = None,
          log_level: str = "info") -> None:
    """Run the shim with uvicorn in the foreground (`vcm api`)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s "
                        "%(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=10, server_header=False, timeout_keep_alive=30)
