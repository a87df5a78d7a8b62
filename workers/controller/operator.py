"""`vcm controller`: the Lease controller, a kopf operator in one process (one replica).

kopf watches the Leases of the namespaces given (`VCM_CONTROLLER_NAMESPACES`), keeps a
daemon per Lease (`leases.Leases.serve`), puts the finalizer on, and calls the deletion
handler (`leases.Leases.release`) before it takes the finalizer off. Our own code writes
(`kube.KubeApi`) and talks to the workers (`placement.Placement`); `inventory.Inventory`
publishes the Pools and Networks.

kopf's settings, and why:
- standalone (no peering): one replica, deployed with the Recreate strategy, so two never
  run at once; peering would need its own cluster-wide resources and RBAC, and a second
  controller by mistake cannot grant twice anyway (request-id = the Lease's uid);
- the finalizer is upstream's, `vsphere-capacity-manager.splat-team.io/lease-finalizer`;
- the deletion handler's progress lives in annotations under our prefix (a structural
  schema would prune kopf's default place in status); no last-handled-configuration is
  stored (`Unchanged`): no handler reacts to a spec change (a Lease's spec is its request,
  read when it is served; upstream's controller ignores later changes too), so none is
  written on every Lease, and a change is not mistaken for one to act on;
- no Kubernetes Events are posted, and no cluster-wide scanning of CRDs and namespaces:
  nothing beyond the Role in deploy/ is needed;
- the daemon is cancelled at once when its Lease is deleted (cancellation_timeout), so the
  deletion handler runs in the same cycle; handlers retry after seconds, not kopf's minute.

kopf's time-based event batching is gone in kopf 1.45 (it used to hold every event 0.1 s);
each patch's own event is awaited at most `consistency_timeout` seconds (kopf's 5 s: only the
finalizer's patch and deletion wait on it). What keeps a grant fast is that nothing waits
on kopf's cycles: the daemon starts with the Lease's first event, sends the acquire once
the finalizer is seen, and writes the grant itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import kopf

from ..settings import Settings
from .inventory import Inventory
from .kube import GROUP, VERSION, Connection, KubeApi, KubeError
from .leases import Leases
from .placement import Placement
from .requests import FINALIZER, PREFIX

log = logging.getLogger(__name__)


class Unchanged(kopf.DiffBaseStorage):
    """No last-handled state: every Lease is as it was handled (see the module's
    docstring); a deletion is still a deletion."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self.build(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=PREFIX.rstrip("/"))
    settings.persistence.diffbase_storage = Unchanged()
    settings.posting.enabled = False
    settings.scanning.disabled = True
    settings.networking.request_timeout = 60.0
    settings.execution.default_backoff = 5.0
    return settings


class Controller:
    """The controller's parts, started and closed with kopf's operator."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection = Connection.load()
        self.kube = KubeApi(self.connection)
        self.placement = Placement(settings.redis_url, settings.resend_after)
        self.leases = Leases(self.kube, self.placement, owners=_NoOwners(),
                             ttl=settings.lease_ttl,
                             renew_every=settings.controller_renew_interval,
                             retry_pauses=settings.controller_retry_pauses)
        self.inventory = Inventory(self.kube, self.placement, self.leases,
                                   settings.controller_namespaces,
                                   settings.controller_sync_interval,
                                   publish_wait=settings.controller_publish_wait,
                                   ledger_wait=settings.controller_ledger_wait)
        self.leases.owners = self.inventory

    async def start(self) -> None:
        await self.kube.start()
        await self.placement.start()
        self.inventory.start()
        waits = [e.wait() for e in self.inventory.ready.values()]
        started = time.monotonic()
        try:  # at most VCM_CONTROLLER_PUBLISH_WAIT
            await asyncio.wait_for(asyncio.gather(*waits), self.settings.controller_publish_wait)
        except TimeoutError:
            log.warning("the Pools and Networks are not published after %.1fs (is a queries "
                        "worker running?); Leases are served meanwhile",
                        time.monotonic() - started)

    async def close(self) -> None:
        await self.inventory.close()
        await self.placement.close()
        await self.kube.close()

    def login(self) -> kopf.ConnectionInfo:
        c = self.connection
        return kopf.ConnectionInfo(
            server=c.server, token=c.token, scheme="Bearer" if c.token else None,
            ca_path=c.ca_path, certificate_path=c.certificate_path,
            private_key_path=c.private_key_path, insecure=c.insecure,
            default_namespace=self.settings.controller_namespaces[0])


class _NoOwners:
    pools: tuple = ()

    async def refs(self, namespace: str, pools: list[str],
                   networks: list[str]) -> list[dict[str, Any]]:
        return []

    def usage_changed(self) -> None:
        return None

    def published(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        return None

    async def ledger_owner(self, namespace: str, uid: str) -> tuple[bool, str | None]:
        return False, None


def registry_for(controller: Controller) -> kopf.OperatorRegistry:
    """kopf's handlers, bound to this controller."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return controller.login()

    @kopf.on.startup(registry=registry)
    async def startup(**_: Any) -> None:
        await controller.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await controller.close()

    @kopf.daemon(GROUP, VERSION, "leases", registry=registry, id="lease",
                 cancellation_timeout=10.0, backoff=5.0)
    async def lease(body: kopf.Body, **_: Any) -> None:
        try:
            await controller.leases.serve(body)
        except KubeError as exc:  # refused for good (a 4xx): said in a line, tried later
            raise kopf.TemporaryError(f"the API server refused: {exc}", delay=60.0) from exc

    @kopf.on.delete(GROUP, VERSION, "leases", registry=registry, id="release",
                    backoff=2.0)
    async def release(body: kopf.Body, **_: Any) -> None:
        try:
            await controller.leases.release(body)
        except Exception as exc:  # noqa: BLE001 - the workers, the broker, Redis or the API
            # server do not answer now (their errors are many): a line, not a traceback
            raise kopf.TemporaryError(f"its ledger leases are not released yet: "
                                      f"{type(exc).__name__}: {exc}", delay=2.0) from exc

    return registry


def run(settings: Settings, liveness: str | None = None, verbose: bool = False) -> int:
    """Run the controller in the foreground until SIGINT or SIGTERM."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    controller = Controller(settings)
    with contextlib.suppress(KeyboardInterrupt):
        kopf.run(registry=registry_for(controller), settings=operator_settings(),
                 standalone=True, clusterwide=False,
                 namespaces=list(settings.controller_namespaces),
                 liveness_endpoint=liveness)
    return 0
