"""The Pool and Network objects, and the controller's look at the ledger.

`Inventory.run` is one loop, started with the controller:

- It publishes a `Pool` per pool and a `Network` per network (a split network slice by
  slice) into every namespace the controller serves, from what `vcm.show_pools` answers:
  the placement workers' own view of the pools configuration, so a reload shows here as it
  shows there. Each round makes the objects what the configuration says (specs, labels,
  annotations, and the Pools' status: available vCPUs, memory, storage, networks, lease
  count): they are read-only mirrors, a hand edit is undone; one deleted by hand is made
  again, and the Leases holding it are told to name the new one. An object whose pool or network
  left the configuration is deleted once no Lease holds it (a Lease's ownerReferences name
  it: deleting it would let Kubernetes' garbage collector delete the Lease).
- It compares the ledger's leases that carry a Lease uid with the Leases being served
  (`vcm.list_leases`): a Lease whose ledger lease is gone is told to look (its renewal finds
  it released elsewhere); a ledger lease whose Lease no longer exists (a Lease whose
  finalizer someone removed by hand, or a grant that came after its Lease's deletion) is
  released.

A round runs every `VCM_CONTROLLER_SYNC_INTERVAL`, and a second after a grant or release (the
Pools' status follows the ledger; a burst of grants is one round)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from ..contract import Task
from ..core.errors import VcmError
from ..core.lease import parse_rfc3339
from ..core.models import Pool
from ..core.upstream import API_VERSION, network_objects, pool_object, pools_from_show_pools
from .kube import TRANSIENT, KubeApi, KubeError
from .leases import Leases
from .placement import NoAnswer, Placement
from .requests import UID_LABEL

log = logging.getLogger(__name__)

KINDS = ("Pool", "Network")
SETTLE = 1.0  # seconds a grant or release waits for others before the Pools' status is read


def merge_patch(current: Any, desired: Any) -> Any:
    """The JSON merge patch that makes `current` `desired` (maps key by key, a key `desired`
    lacks removed; anything else replaced), or None when they are equal."""
    if not isinstance(desired, Mapping) or not isinstance(current, Mapping):
        return None if current == desired else desired
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        if key not in current:
            patch[key] = value
        else:
            sub = merge_patch(current[key], value)
            if sub is not None or (value is None and current[key] is not None):
                patch[key] = sub
    for key in current:
        if key not in desired:
            patch[key] = None
    return patch or None


def _meta_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """labels and annotations of `desired`, set on top of whatever else the object carries
    (kubectl's, or the garbage collector's)."""
    out: dict[str, Any] = {}
    for key in ("labels", "annotations"):
        want = desired.get(key) or {}
        have = current.get(key) or {}
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        if changed:
            out[key] = changed
    return out


class Inventory:
    def __init__(self, kube: KubeApi, placement: Placement, leases: Leases,
                 namespaces: tuple[str, ...], every: float, *, publish_wait: float,
                 ledger_wait: float) -> None:
        self.kube = kube
        self.placement = placement
        self.leases = leases
        self.namespaces = namespaces
        self.every = every
        # seconds a grant waits for its namespace's first publishing
        # (VCM_CONTROLLER_PUBLISH_WAIT), and a Fulfilled Lease's adopt for the first read of
        # the ledger (VCM_CONTROLLER_LEDGER_WAIT)
        self.publish_wait = publish_wait
        self.ledger_wait = ledger_wait
        self.uids: dict[tuple[str, str, str], str] = {}  # (namespace, kind, name) -> uid
        # (namespace, kind, name) -> the object as last read or written
        self.seen: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.ready = {ns: asyncio.Event() for ns in namespaces}  # published once
        # the configuration as last rendered: the workers' pool specs, their pools, the
        # Network objects
        self.specs: list[Any] | None = None
        self.pools: tuple[Pool, ...] = ()
        self.networks: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.rounds = 0
        # Lease uid -> the owner the ledger holds its leases for, as the last sweep read it
        self.recorded: dict[str, str] = {}
        self.swept = asyncio.Event()  # the ledger was read once

    # -- what the Leases ask ---------------------------------------------------------------
    def published(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        """An object as last published (read or written) here, or None."""
        return self.seen.get((namespace, kind, name))

    def usage_changed(self) -> None:
        self.changed.set()

    async def ledger_owner(self, namespace: str, uid: str) -> tuple[bool, str | None]:
        """(read, owner): the owner (of `namespace`) the ledger held Lease `uid`'s leases
        for at the last sweep, None when it held none; not read while no sweep has read the
        ledger yet (waited for at most `ledger_wait`: one read of the ledger for all the
        Leases)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.swept.wait(), self.ledger_wait)
        if not self.swept.is_set():
            return False, None
        owner = self.recorded.get(uid)
        return True, owner if owner and owner.startswith(f"{namespace}/") else None

    async def refs(self, namespace: str, pools: list[str],
                   networks: list[str]) -> list[dict[str, Any]]:
        """ownerReferences to these objects of the namespace, once it was published (waited
        for at most `publish_wait`; one not published yet is looked up; one that does not
        exist is left out)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready[namespace].wait(), self.publish_wait)
        out = []
        for kind, names in (("Pool", pools), ("Network", networks)):
            for name in names:
                uid = self.uids.get((namespace, kind, name))
                if uid is None:
                    try:
                        obj = await self.kube.get(kind, namespace, name)
                    except KubeError as exc:
                        if not exc.not_found:
                            raise
                        log.warning("%s %s/%s is not published: the Lease does not name it",
                                    kind, namespace, name)
                        continue
                    uid = str((obj.get("metadata") or {}).get("uid") or "")
                    self.uids[(namespace, kind, name)] = uid
                out.append({"apiVersion": API_VERSION, "kind": kind, "name": name, "uid": uid})
        return out

    # -- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="vcm-controller-inventory")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def run(self) -> None:
        last_full = -self.every
        while True:
            self.changed.clear()
            started = time.monotonic()
            try:
                full = started - last_full >= self.every
                await self.publish(full)
                if full:
                    await self.sweep()
                    last_full = started
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a round that fails is tried again
                log.warning("inventory round failed: %s: %s", type(exc).__name__, exc)
            self.rounds += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.every)
                await asyncio.sleep(SETTLE)  # a burst of grants is one round

    async def publish(self, full: bool = True) -> None:
        """One round of publishing (see the module's docstring). Not `full`: only the Pools,
        compared with what this process last read or wrote of them (their status follows the
        ledger), not listed again. The configuration's objects are rendered again only when
        it changed, in a thread (a fleet's networks with their addresses take a while): the
        event loop stays free for the Leases."""
        views = await self.placement.call(Task.SHOW_POOLS, {}, timeout=60)
        if not isinstance(views, list):
            raise VcmError(f"vcm.show_pools answered {type(views).__name__}, not a list")
        specs = [v.get("spec") for v in views if isinstance(v, Mapping)]
        if specs != self.specs:
            self.pools, self.networks = await asyncio.to_thread(_render_configuration, views)
            self.specs = specs
            full = True
        usage = {v["spec"].get("name"): v.get("status") for v in views
                 if isinstance(v, Mapping) and isinstance(v.get("spec"), Mapping)}
        pools = [pool_object(p, usage.get(p.name)) for p in self.pools]
        for namespace in self.namespaces:
            first = not self.ready[namespace].is_set()
            await self.publish_in(namespace, pools + (self.networks if full or first else []),
                                  full or first)
            self.ready[namespace].set()

    async def publish_in(self, namespace: str, wanted: list[dict[str, Any]],
                         full: bool) -> None:
        have: dict[tuple[str, str], dict[str, Any]] = {}
        if full:
            for kind in KINDS:
                for obj in await self.kube.list(kind, namespace):
                    have[(kind, obj["metadata"]["name"])] = obj
        else:
            have = {(k, n): obj for (ns, k, n), obj in self.seen.items() if ns == namespace}
        for obj in wanted:
            kind, name = obj["kind"], obj["metadata"]["name"]
            current = have.pop((kind, name), None)
            before = self.uids.get((namespace, kind, name))
            try:
                current = await self._make(namespace, obj, current)
            except KubeError as exc:
                log.warning("%s %s/%s not published: %s", kind, namespace, name, exc)
                continue
            uid = str(current["metadata"].get("uid") or "")
            self.uids[(namespace, kind, name)] = uid
            self.seen[(namespace, kind, name)] = current
            if before is not None and before != uid:
                self._made_again(namespace, kind, name)
        if have and full:
            await self._drop(namespace, have)

    async def _make(self, namespace: str, obj: dict[str, Any],
                    current: dict[str, Any] | None) -> dict[str, Any]:
        """Create the object, or make it what it should be; its status too (a Pool's is a
        subresource: written on its own)."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        status = obj.get("status")
        if current is None:
            body = {k: v for k, v in obj.items() if k != "status"}
            body["metadata"] = {**obj["metadata"], "namespace": namespace}
            try:
                current = await self.kube.create(kind, namespace, body)
            except KubeError as exc:
                if not exc.conflict:
                    raise
                current = await self.kube.get(kind, namespace, name)  # made meanwhile
        patch: dict[str, Any] = {}
        meta = _meta_patch(current.get("metadata") or {}, obj["metadata"])
        if meta:
            patch["metadata"] = meta
        spec = merge_patch(current.get("spec") or {}, obj.get("spec") or {})
        if spec is not None:
            patch["spec"] = spec
        if patch:
            current = await self.kube.patch(kind, namespace, name, patch)
        if status is not None:
            change = merge_patch(current.get("status") or {}, status)
            if change is not None:
                current = await self.kube.patch(kind, namespace, name, {"status": change},
                                                status=kind == "Pool")
        return current

    def _made_again(self, namespace: str, kind: str, name: str) -> None:
        """An object deleted by hand was published again: the Leases holding it name the
        new one (the garbage collector dropped their references to the old)."""
        log.info("%s %s/%s was deleted by hand: published again", kind, namespace, name)
        for held in self.leases.held.values():
            if held.namespace == namespace and name in (held.pools if kind == "Pool"
                                                        else held.networks):
                held.repoint = True
                held.check.set()

    async def _drop(self, namespace: str, left: dict[tuple[str, str], dict[str, Any]]) -> None:
        """Delete the objects the configuration no longer has, but those a Lease holds."""
        held: set[str] = set()
        for lease in await self.kube.list("Lease", namespace):
            for ref in (lease.get("metadata") or {}).get("ownerReferences") or []:
                if isinstance(ref, Mapping):
                    held.add(str(ref.get("uid")))
        for (kind, name), obj in left.items():
            uid = str(obj["metadata"].get("uid") or "")
            if uid in held:
                continue
            log.info("%s %s/%s left the pools configuration: deleted", kind, namespace, name)
            await self.kube.delete(kind, namespace, name, uid=uid)
            self.uids.pop((namespace, kind, name), None)
            self.seen.pop((namespace, kind, name), None)

    async def sweep(self) -> None:
        """The ledger against the Leases (see the module's docstring)."""
        ledger = await self.placement.call(Task.LIST_LEASES, {"selector": UID_LABEL},
                                           timeout=60)
        by_uid: dict[str, list[dict[str, Any]]] = {}
        for lease in ledger or []:
            labels = (lease.get("status") or {}).get("labels") or {}
            uid = labels.get(UID_LABEL)
            if isinstance(uid, str):
                by_uid.setdefault(uid, []).append(lease)
        self.recorded = {uid: str((xs[0].get("status") or {}).get("owner") or "")
                         for uid, xs in by_uid.items()}
        self.swept.set()
        for uid, held in list(self.leases.held.items()):
            active = {x["metadata"]["name"] for x in by_uid.get(uid, [])}
            if not set(held.ids) <= active:
                held.check.set()
        await self._orphans({u: xs for u, xs in by_uid.items()
                             if u not in self.leases.serving and u not in self.leases.held})

    async def _orphans(self, candidates: dict[str, list[dict[str, Any]]]) -> None:
        """Release the ledger leases of Leases that do not exist (an authoritative list of
        each namespace, read after the ledger's)."""
        if not candidates:
            return
        old = time.time() - 2 * self.every  # a Lease made since the list: not yet served
        lists: dict[str, set[str]] = {}
        for uid, leases in candidates.items():
            owner = str((leases[0].get("status") or {}).get("owner") or "")
            namespace = owner.partition("/")[0]
            if namespace not in self.namespaces:
                continue
            if any(_leased_at(x) > old for x in leases):
                continue
            if namespace not in lists:
                lists[namespace] = {str((x.get("metadata") or {}).get("uid"))
                                    for x in await self.kube.list("Lease", namespace)}
            if uid in lists[namespace]:
                continue
            try:
                released = await self.placement.call(
                    Task.RELEASE, {"owner": owner, "selector": f"{UID_LABEL}={uid}"},
                    timeout=30)
            except (VcmError, NoAnswer, *TRANSIENT) as exc:
                log.warning("ledger leases of the missing Lease %s not released: %s", uid, exc)
                continue
            log.warning("released %s: ledger leases of Lease uid %s, which no longer exists",
                        ", ".join(released or []), uid)
            self.changed.set()


def _render_configuration(views: list[Any]) -> tuple[tuple[Pool, ...], list[dict[str, Any]]]:
    """The pools of `vcm.show_pools`'s answer, and their Network objects."""
    pools = pools_from_show_pools(views)
    return pools, network_objects(pools)


def _leased_at(lease: Mapping[str, Any]) -> float:
    try:
        return parse_rfc3339(str((lease.get("status") or {}).get("leased-at")))
    except ValueError:
        return time.time()
