"""What the routes share, as FastAPI dependencies.

`create_app` puts the app's parts on `app.state` (settings, bridge, metrics, tokens, the fleet
reader); the routes ask for them by type: `bridge: BridgeDep`. `CallerDep` is the sender of a
write and its bearer token, `TasksDep` sends a task and waits (bounded) for its answer.

The dependencies are coroutines although none of them awaits anything: FastAPI runs a plain
function (or a class) dependency in its thread pool, a thread hop per dependency per request,
the largest single item in a profile of the shim under load (about a fifth). None of them
blocks (the token file is stat'ed at most every 2 s, and re-read only when it changed).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from .bridge import Bridge
from .errors import JSON, ApiError, task_error
from .fleet_metrics import FleetReader
from .middleware import Metrics
from .settings import ApiSettings, Token, TokenStore


# -- the app's parts --------------------------------------------------------------------------
async def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def get_bridge(request: Request) -> Bridge:
    return request.app.state.bridge


async def get_fleet(request: Request) -> FleetReader:
    return request.app.state.fleet


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
BridgeDep = Annotated[Bridge, Depends(get_bridge)]
FleetDep = Annotated[FleetReader, Depends(get_fleet)]


# -- the caller -------------------------------------------------------------------------------
# the scheme is named "bearer" in the OpenAPI document; writes list it as their security
bearer = HTTPBearer(scheme_name="bearer", auto_error=False)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vcm"'}


def forbidden(message: str, **details: Any) -> ApiError:
    return ApiError(403, "Forbidden", message, details)


@dataclass(frozen=True)
class Caller:
    """The sender of a write: its token (None while tokens are off), or why it is refused.

    The refusal is raised by `token()`, which each write calls after checking its query: a
    request with an unknown query parameter is 422 whether or not it has a token, as the
    parameters FastAPI validates are."""

    found: Token | None
    refusal: ApiError | None = None

    def token(self) -> Token | None:
        """The caller's token when tokens are on, None when they are off; 401 otherwise."""
        if self.refusal is not None:
            raise self.refusal
        return self.found


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


async def get_caller(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Caller:
    if not settings.auth:
        return Caller(None)
    if credentials is None:  # no header, another scheme, or no token after "Bearer"
        if not request.headers.get("authorization"):
            message = "writes need 'Authorization: Bearer <token>'"
        else:
            message = "Authorization: use the Bearer scheme"
        return Caller(None, ApiError(401, "Unauthorized", message, headers=CHALLENGE))
    given = credentials.credentials.encode("utf-8", "replace")
    store: TokenStore = request.app.state.tokens
    found = None
    for token in store.current():  # compare with every one, in constant time each
        if hmac.compare_digest(given, token.secret.encode()):
            found = token
    if found is None:
        return Caller(None, ApiError(401, "Unauthorized", "unknown token", headers={
            "WWW-Authenticate": 'Bearer realm="vcm", error="invalid_token"'}))
    return Caller(found)


CallerDep = Annotated[Caller, Depends(get_caller)]


# -- tasks ------------------------------------------------------------------------------------
class Tasks:
    """Send a task for this request and wait for it, at most its `wait` plus VCM_API_TIMEOUT;
    a missing worker or Redis is a prompt 503 (the bridge), a failure its error."""

    def __init__(self, request: Request) -> None:
        state = request.app.state
        self.request = request
        self.bridge: Bridge = state.bridge
        self.settings: ApiSettings = state.settings
        self.metrics: Metrics = state.metrics

    def outcome(self, meta: dict[str, Any], task: str) -> Any:
        """The task's result, or its error raised (counted either way)."""
        if meta.get("status") == "SUCCESS":
            self.metrics.task_results.labels(task, "success").inc()
            return meta.get("result")
        err = task_error(meta, task)
        self.metrics.task_results.labels(task, err.error).inc()
        raise err

    async def result(self, task: str, kwargs: dict[str, Any], queue: str,
                     wait: float = 0.0) -> tuple[Any, dict[str, str]]:
        """Send the task, wait for it (bounded): its result (or its error raised), and the
        headers that name the task."""
        meta = await self.bridge.call(task, kwargs, queue,
                                      timeout=wait + self.settings.task_timeout,
                                      disconnected=self.request.is_disconnected)
        return self.outcome(meta, task), {"X-VCM-Task-Id": str(meta.get("task_id", ""))}

    async def answer(self, task: str, kwargs: dict[str, Any], queue: str,
                     wait: float = 0.0) -> Response:
        """Send the task, wait for it (bounded), answer with its result or its error."""
        result, headers = await self.result(task, kwargs, queue, wait)
        return JSON(result, headers=headers)


async def get_tasks(request: Request) -> Tasks:
    return Tasks(request)


TasksDep = Annotated[Tasks, Depends(get_tasks)]
