"""Pure ASGI middleware: the body size limit (413) and Prometheus request metrics."""

from __future__ import annotations

import time
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError


class Metrics:
    """The shim's own registry, so that two apps in one process don't collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("vcm_api_requests", "HTTP requests answered",
                                ["method", "endpoint", "status"], registry=r)
        self.latency = Histogram(
            "vcm_api_request_duration_seconds", "HTTP request latency", ["method", "endpoint"],
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300,
                     3600), registry=r)
        self.in_flight = Gauge("vcm_api_requests_in_flight", "HTTP requests being answered",
                               registry=r)
        self.tasks_sent = Counter("vcm_api_tasks_sent", "Celery tasks sent", ["task"],
                                  registry=r)
        self.task_results = Counter("vcm_api_task_results", "Results of tasks the shim waited "
                                    "for, by outcome (success or the error name)",
                                    ["task", "outcome"], registry=r)
        self.worker_up = Gauge("vcm_api_worker_up", "1 if a worker of the queue answered the "
                               "last check", ["queue"], registry=r)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def endpoint(self, scope: Scope) -> str:
        partial = None
        for route in self.routes():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
            if match == Match.PARTIAL and partial is None:
                partial = getattr(route, "path", "other")
        return partial or "unmatched"  # a bounded label: unknown paths don't each get a series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.endpoint(scope)
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        status = [500]
        m = self.metrics

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        m.in_flight.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m.in_flight.dec()
            m.latency.labels(method, endpoint).observe(time.perf_counter() - start)
            m.requests.labels(method, endpoint, str(status[0])).inc()


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class BodyLimitMiddleware:
    """413 for bodies over `limit` bytes, by Content-Length and by what actually arrives.

    The body (at most `limit` bytes) is read here and replayed to the app; a chunked upload
    that grows past the limit is cut off with 413 without reading the rest."""

    def __init__(self, app: ASGIApp, limit: int, read_timeout: float = 30.0) -> None:
        self.app = app
        self.limit = limit
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
                if declared < 0:
                    raise ValueError
            except ValueError:
                await ApiError(400, "InvalidRequest", "Content-Length: not a number",
                               {"field": "Content-Length"}).response()(scope, receive, send)
                return
            if declared > self.limit:
                await self.too_large(declared, scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        with anyio.move_on_after(self.read_timeout) as late:
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    await self.too_large(size, scope, receive, send)
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
        if late.cancelled_caught:  # a client trickling its body does not hold a request forever
            await ApiError(408, "RequestTimeout", f"body: not received within "
                           f"{self.read_timeout:g}s", {"field": "body"},
                           headers={"Connection": "close"}).response()(scope, receive, send)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as usual

        await self.app(scope, replay, send)

    async def too_large(self, size: int, scope: Scope, receive: Receive, send: Send) -> None:
        err = ApiError(413, "PayloadTooLarge",
                       f"body: larger than the limit of {self.limit} bytes",
                       {"field": "body", "limit": self.limit, "size-at-least": size},
                       headers={"Connection": "close"})
        await err.response()(scope, receive, send)
