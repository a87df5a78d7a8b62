"""Live vCenter health (pyvmomi): the inventory sync (beat, queries side).

`sync` reads every vCenter that its access plan (access.py) allows, in parallel,
computes each pool's health (core/health.py) and stores it in Redis through the ledger; a
vCenter that cannot be read records its error and keeps its last known health, and so does one
that may not be contacted (no credential meant for it, no usable certificate check), with the
reason, once any credential is set. The sessions it reuses are in
sessions.py, the read in inventory_read.py; `vcm pools discover` is discovery.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyVmomi import vmodl

from ...core import health
from ...core.models import Pool
from ...settings import Settings
from .access import AccessPlan
from .client import VCenterUnavailable, problem
from .inventory_read import read_inventory
from .sessions import SESSIONS, Sessions

# imported from here by the tasks, the CLI and the tests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InventorySettings:
    interval: float  # seconds between syncs; 0: no sync
    stale: float  # health older than this counts as unknown
    timeout: float  # each vCenter call

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InventorySettings:
        """VCM_INVENTORY_INTERVAL (5m; 0 or off: never), VCM_INVENTORY_STALE (30m),
        VCM_INVENTORY_TIMEOUT (30s, at least 1s), from the environment (or `env`). A bad value
        stops start-up naming the variable (workers.settings)."""
        return cls.from_settings(Settings.from_env(env))

    @classmethod
    def from_settings(cls, settings: Settings) -> InventorySettings:
        return cls(settings.inventory_interval, settings.inventory_stale,
                   settings.inventory_timeout)


class HealthStore(Protocol):
    """What sync needs from the ledger (adapters/ledger.py)."""

    def store_health(self, vcenter: str, pools: dict[str, dict[str, str]], at: float,
                     login_at: float | None = None) -> None: ...

    def store_health_error(self, vcenter: str, error: str, at: float,
                           pools: list[str] | tuple[str, ...] = ()) -> None: ...


@dataclass
class SyncResult:
    synced: dict[str, int] = field(default_factory=dict)  # vcenter -> pools assessed
    errors: dict[str, str] = field(default_factory=dict)  # vcenter -> why it was not read
    skipped: dict[str, str] = field(default_factory=dict)  # vcenter -> why not contacted

    def to_dict(self) -> dict[str, Any]:
        return {"synced": self.synced, "errors": self.errors, "skipped": self.skipped}


def sync(pools: Iterable[Pool], access: AccessPlan, store: HealthStore,
         leased_storage: Mapping[str, int] | None, *, timeout: float = 30.0,
         sessions: Sessions = SESSIONS, clock: Callable[[], float] = time.time) -> SyncResult:
    """Read every vCenter of `pools` that `access` allows (in parallel) and store its pools'
    health. A vCenter that fails, or answers nothing within 4 × timeout, records its error and
    keeps its last health; the others are stored as they finish. One that `access` refuses is
    not contacted: skipped, its reason recorded as its error unless no credential is set at
    all (then syncing is off, not failing)."""
    by_vcenter: dict[str, list[Pool]] = {}
    for pool in pools:
        by_vcenter.setdefault(pool.vcenter, []).append(pool)
    result = SyncResult()
    for vcenter in sorted(vc for vc in by_vcenter if vc not in access.access):
        reason = access.refused.get(vcenter, "not contacted: no access to it was planned")
        result.skipped[vcenter] = reason
        if access.configured:
            log.warning("vcenter %s: health not read: %s", vcenter, reason)
            store.store_health_error(vcenter, reason, clock(),
                                     [p.name for p in by_vcenter[vcenter]])
    todo = {vc: members for vc, members in by_vcenter.items() if vc in access.access}
    if not todo:
        return result

    def one(vcenter: str) -> tuple[dict[str, dict[str, str]], float, float | None]:
        session = sessions.get(access.access[vcenter], timeout)
        inventory = read_inventory(session)
        assessed = health.assess(todo[vcenter], inventory, leased_storage)
        return health.as_json(assessed), clock(), session.login_at

    pool_ = ThreadPoolExecutor(max_workers=min(8, len(todo)), thread_name_prefix="vcm-sync")
    try:
        futures = {vc: pool_.submit(one, vc) for vc in sorted(todo)}
        deadline = time.monotonic() + 4 * timeout
        for vcenter, future in futures.items():
            names = [p.name for p in todo[vcenter]]
            try:
                assessed, at, login_at = future.result(max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                error = f"no answer within {4 * timeout:g}s"
            except Exception as exc:  # noqa: BLE001 - recorded for the vCenter, never raised
                error = _problem(exc)
            else:
                store.store_health(vcenter, assessed, at, login_at)
                result.synced[vcenter] = len(assessed)
                continue
            log.warning("vcenter %s: health not read: %s", vcenter, error)
            store.store_health_error(vcenter, error, clock(), names)
            result.errors[vcenter] = error
    finally:
        pool_.shutdown(wait=False, cancel_futures=True)
    return result


def _problem(exc: BaseException) -> str:
    if isinstance(exc, VCenterUnavailable):
        return str(exc)
    if isinstance(exc, OSError):
        return problem(exc)
    detail = exc.msg if isinstance(exc, vmodl.MethodFault) else str(exc)
    return f"cannot read the inventory: {type(exc).__name__}: {detail}"
