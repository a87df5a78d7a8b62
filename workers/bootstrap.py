"""The composition root: builds what a process needs for its role, from the settings.

- placement: the ledger, the mirror (ConfigMap or file), answers held until the mirror covers
  them, the service, and the publisher thread (started once the worker is ready);
- queries: the ledger and the service, read-only (no mirror, no publisher).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from celery import Celery

from .adapters.ledger import Ledger
from .adapters.pools_file import PoolsFile, load_pools
from .adapters.replies import CeleryReplies, OutboxReplies
from .contract import PLACEMENT
from .core.errors import ConfigError
from .service.capacity import Capacity
from .settings import Settings

if TYPE_CHECKING:
    from .publisher.thread import Publisher



def cannot_start(exc: BaseException) -> NoReturn:
    """Stop a process's start-up: SystemExit with the problem, so the process exits 1 with it
    on stderr (in Kubernetes a crash loop, never a ready pod that refuses every task). Celery
    logs an Exception raised by a signal handler and starts anyway; SystemExit passes its
    signal dispatch, its worker and its beat."""
    if isinstance(exc, ConfigError):
        raise SystemExit(f"invalid configuration: {exc}") from None
    raise SystemExit(f"cannot start: {type(exc).__name__}: {exc}") from None


def require_valid_pools(settings: Settings | None = None) -> None:
    """At start, for a process that does not otherwise read the pools file (beat, the HTTP
    shim, `vcm run`): it must be valid, or start-up stops naming the file, pool and field."""
    settings = settings or Settings.from_env()
    try:
        load_pools(settings.pools_file)
    except Exception as exc:  # noqa: BLE001 - every cause stops start-up, with its message
        cannot_start(exc)


@dataclass
class Runtime:
    role: str
    service: Capacity
    direct: CeleryReplies  # answers straight into the result backend (the publisher's)
    publisher: Publisher | None = field(default=None)

    def start_publisher(self) -> None:
        """The placement side's background thread: mirror saves, held answers, expiries."""
        if self.role != PLACEMENT or self.publisher is not None:
            return
        from .publisher.thread import Publisher

        svc = self.service
        self.publisher = Publisher(svc, svc.mirror, self.direct, svc.settings.mirror_max_delay)
        self.publisher.start()

    def stop(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()


def build(app: Celery, role: str, settings: Settings | None = None) -> Runtime:
    settings = settings or Settings.from_env()
    # A task id's answer is kept for copies of the task as long as its result is kept, plus a
    # visibility timeout: a copy exists only while its task shows no answer (`vcm` and the
    # README's loop send again while it is PENDING), or when a worker answered and died before
    # its ack: the broker gives that message again once it is a visibility timeout old (plus
    # its restore interval and the queue), when a result kept only that long is gone already.
    ledger = Ledger.from_url(settings.redis_url, keep=int(settings.keep_released),
                             answer_ttl=int(settings.result_ttl + settings.visibility_timeout))
    writer = role == PLACEMENT
    mirror: Any = None
    if settings.mirror_enabled and writer:
        from .adapters.mirror.factory import build_mirror

        mirror = build_mirror(settings)
    direct = CeleryReplies(app)
    svc: Capacity
    replies = (OutboxReplies(ledger, direct, covered=lambda: svc.covered())
               if mirror is not None else direct)
    svc = Capacity(ledger, PoolsFile(settings.pools_file), settings, replies, mirror, writer)
    return Runtime(role, svc, direct)
