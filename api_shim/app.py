"""The HTTP shim: the upstream API over the Celery tasks.

`create_app()` builds the FastAPI app from its parts, `serve()` runs it with uvicorn (`vcm api`).
The routes are in routes/ (leases, pools, operations, the dashboard); what they share (the
bridge to Celery, the settings, the caller's token) comes from deps.py; errors become HTTP
answers in errors.py. Every request is bounded: placement and query tasks are awaited at most
the request's `wait` (capped by VCM_API_MAX_SYNC_WAIT) plus VCM_API_TIMEOUT, and a missing
worker or Redis is a prompt 503 rather than a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.routing import BaseRoute

from workers.settings import Settings

from .bridge import Bridge
from .errors import JSON, install_handlers
from .fleet_metrics import FleetCollector, FleetReader, PoolsSource
from .middleware import BodyLimitMiddleware, Metrics, MetricsMiddleware
from .routes import dashboard, leases, ops, pools
from .settings import ApiSettings, TokenStore

log = logging.getLogger(__name__)

DESCRIPTION = ("Errors are JSON {error, message, details}. Writes need "
               "'Authorization: Bearer <token>' when VCM_API_TOKENS is set.")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    bridge: Bridge = app.state.bridge
    await bridge.start()
    assert bridge.live
    warm = asyncio.create_task(bridge.live.refresh())  # discover the workers early
    try:
        yield
    finally:
        warm.cancel()
        await bridge.close()


def create_app(settings: ApiSettings | Settings | None = None) -> FastAPI:
    if settings is None:
        settings = ApiSettings.from_env()
    elif isinstance(settings, Settings):
        settings = ApiSettings.from_settings(settings)
    app = FastAPI(
        title="vsphere-capacity-manager",
        version="1",
        summary="Leases slices of vCenter capacity to CI jobs (the upstream HTTP API over "
                "Celery tasks)",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        default_response_class=JSON,
    )
    # the parts the routes share (deps.py hands them out)
    metrics = Metrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.bridge = Bridge(settings, metrics)
    app.state.tokens = TokenStore(settings.tokens, settings.tokens_file)
    # fleet metrics (read from the ledger at scrape time; with the configured pools, those
    # named as upstream's too) and the dashboard's counters
    app.state.fleet = FleetReader(settings.redis_url)
    configured = PoolsSource((settings.base or Settings.from_env()).pools_file)
    metrics.registry.register(FleetCollector(app.state.fleet, configured,
                                             settings.metrics_namespace))

    routers = [area.router for area in (dashboard, leases, pools, ops)]
    for router in routers:
        app.include_router(router)
    install_handlers(app)

    def routes() -> list[BaseRoute]:
        """Every route with its path, in the order they are matched, to label the request
        metrics by (the routers have no prefix: a route's path is its path in the app)."""
        own = [r for r in app.router.routes if isinstance(getattr(r, "path", None), str)]
        return own + [r for router in routers for r in router.routes]

    # outermost first: metrics see every answer, 413s included
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body,
                       read_timeout=settings.body_timeout)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    return app


def serve(host: str = "127.0.0.1", port: int = 8080, settings: ApiSettings | None = None,
          log_level: str = "info", loop: str = "auto", http: str = "auto") -> None:
    """Run the shim with uvicorn in the foreground (`vcm api`). `loop` and `http` are uvicorn's
    choices: "auto" takes uvloop and httptools (uvicorn[standard]) when they import, asyncio
    and h11 otherwise; the log says which once the server is up. An invalid pools file stops
    it before it listens, as it stops the workers (naming the file, the pool and the field)."""
    import sys

    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            running = type(asyncio.get_running_loop())
            protocol = self.config.http_protocol_class
            log.info("uvicorn %s: event loop %s.%s, HTTP protocol %s.%s", uvicorn.__version__,
                     running.__module__, running.__qualname__, protocol.__module__,
                     protocol.__qualname__)

    from workers.bootstrap import require_valid_pools

    app = create_app(settings)
    require_valid_pools(app.state.settings.base)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s "
                        "%(message)s")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            loop=loop, http=http, timeout_graceful_shutdown=10,
                            server_header=False, timeout_keep_alive=30)
    server = Server(config)
    # as uvicorn.run ends: Ctrl-C after the graceful shutdown is a clean exit, and a server
    # that never started is a failed start (uvicorn's exit status 3)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(3)
