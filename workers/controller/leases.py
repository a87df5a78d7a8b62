"""One Lease's life, as the controller answers it.

`serve` runs as the Lease's kopf daemon (an asyncio task of its own: waiting in line never
holds one of kopf's workers, and kopf cancels it when the Lease is deleted or the process
stops). It is the same whether the Lease is new or the controller restarted:

1. wait until kopf has put the finalizer on the Lease (so nothing is granted to a Lease that
   could vanish without its release); a Failed Lease is left as it is;
2. turn the spec into a `vcm.acquire` request (a field it refuses: Failed, InvalidSpec);
3. write phase Pending (a new Lease) while the request goes out under task id = uid and
   request-id = uid: whatever number of times it is sent, it is granted once. Its answer is
   awaited on the result hub; while it waits in line, condition Delayed shows its place;
4. granted: ownerReferences to the Pool and Network objects held (and a network-only
   Lease's zero vcpus/memory taken out of its spec, as upstream's controller writes it),
   then phase Fulfilled with the failure domain inline, poolInfo, envVars, envVarsMap;
   refused as something the inventory can never hold: Failed, Unschedulable, pool by pool;
   answered with leases that are gone: Failed, Released; a grant whose status the API server
   refuses for good: its leases released, Failed, InvalidStatus;
   A Lease found Fulfilled (granted before, here or by another controller) is never placed
   again: `vcm.adopt` answers the leases its request-id has, or records what it holds
   (its Pools and Networks, as that controller counts them) under its uid; an adopted
   Lease keeps its status as it is, with condition Adopted True; one that cannot be adopted
   is left as it is, with condition Adopted False (NotAdopted) naming why, and tried again;
5. then it renews the ledger leases every `VCM_CONTROLLER_RENEW_INTERVAL` (sooner when the
   sync loop sees one of them gone) until the Lease is deleted; a renewal that finds them
   released elsewhere shows it on the Lease (Failed, Released; ownerReferences dropped).

Every write to the API server that is answered 5xx or 429, or whose connection fails, is
sent again after the pauses of `VCM_CONTROLLER_RETRY_PAUSES` (`retrying`): a moment of
trouble never leaves a Lease without its status, nor restarts the daemon.

`release` is kopf's deletion handler: the Lease's attempt still in line is taken out of it,
its ledger leases are released (owner and the uid label), then kopf removes the finalizer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..contract import Task
from ..core.errors import InvalidRequest, LeaseNotFound, NoCapacity, VcmError, WaitTimeout
from ..core.lease import ADOPTED_LABEL
from ..core.models import Pool
from ..core.text import said
from ..core.upstream import held_objects, lease_status
from . import status as st
from .kube import GROUP, TRANSIENT, VERSION, KubeApi, KubeError
from .placement import READY, NoAnswer, Placement
from .requests import (
    FINALIZER,
    UID_LABEL,
    granted_owner,
    job_link,
    lease_ref,
    lease_request,
    lease_worded,
    never_reasons,
    owner_of,
    task_id,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER_WAIT = 10.0  # seconds the daemon waits for kopf's finalizer before looking itself
DELAYED_EVERY = 0.5  # seconds: the least time between two Delayed writes of one Lease
ADOPT_RETRY = 60.0  # seconds between two tries to adopt a Lease another controller fulfilled
MAX_HELD_REFS = 256  # ownerReferences a Lease fulfilled elsewhere may name


class Pauses:
    """The pauses between tries (`VCM_CONTROLLER_RETRY_PAUSES`, the last one repeated)
    through one streak of failures, each announced in the log."""

    def __init__(self, where: str, pauses: tuple[float, ...]) -> None:
        self.where = where
        self.pauses = pauses
        self.failures = 0

    async def after(self, what: str) -> None:
        """`what` went wrong: a warning line, then the streak's next pause."""
        pause = self.pauses[min(self.failures, len(self.pauses) - 1)]
        self.failures += 1
        log.warning("Lease %s: %s; trying again in %gs", self.where, what, pause)
        await asyncio.sleep(pause)

    def reset(self) -> None:
        self.failures = 0


class Owners(Protocol):
    """What the Leases need of the published Pools and Networks."""

    pools: tuple[Pool, ...]  # the pools configuration, as the workers last showed it

    async def refs(self, namespace: str, pools: list[str],
                   networks: list[str]) -> list[dict[str, Any]]:
        """ownerReferences to these Pool and Network objects of the namespace."""
        ...

    def usage_changed(self) -> None:
        """A grant or release happened: refresh the Pools' status soon."""
        ...

    def published(self, namespace: str, kind: str, name: str) -> Mapping[str, Any] | None:
        """A Pool or Network object as this controller last published it, or None."""
        ...

    async def ledger_owner(self, namespace: str, uid: str) -> tuple[bool, str | None]:
        """(read, owner): the owner (of the namespace) the ledger holds Lease `uid`'s leases
        for, None when it holds none; read False when the ledger could not be read."""
        ...


@dataclass
class Held:
    """A granted Lease, as the renewals and the sync loop see it."""

    namespace: str
    name: str
    owner: str
    ids: list[str]
    pools: list[str] = field(default_factory=list)  # the Pool and Network objects it holds
    networks: list[str] = field(default_factory=list)
    check: asyncio.Event = field(default_factory=asyncio.Event)  # look now: one may be gone
    repoint: bool = False  # one of its objects was made again: its ownerReferences too


class Leases:
    def __init__(self, kube: KubeApi, placement: Placement, owners: Owners, *, ttl: float,
                 renew_every: float, retry_pauses: tuple[float, ...]) -> None:
        self.kube = kube
        self.placement = placement
        self.owners = owners
        self.ttl = ttl
        self.renew_every = renew_every
        self.retry_pauses = retry_pauses  # between the tries of a call that failed
        self.held: dict[str, Held] = {}  # uid -> granted Lease being served
        self.serving: set[str] = set()  # uids whose daemon runs
        self.attempts: dict[str, int] = {}  # uid -> its current acquire attempt
        self.sending: dict[str, asyncio.Future[None]] = {}  # uid -> acquire being published

    # -- the daemon --------------------------------------------------------------------------
    async def serve(self, body: Mapping[str, Any]) -> None:
        """A Lease's daemon (see the module's docstring). `body` is kopf's live view of it."""
        try:
            namespace, name, uid = lease_ref(body)
        except InvalidRequest as exc:
            log.error("Lease %s is not served: %s", (body.get("metadata") or {}).get("name"),
                      exc)
            return
        self.serving.add(uid)
        run = LeaseRun(self, body, namespace, name, uid)
        try:
            await run.serve()
        finally:
            self.serving.discard(uid)
            self.held.pop(uid, None)
            if run.delayed_write is not None:
                run.delayed_write.cancel()

    # -- deletion ----------------------------------------------------------------------------
    async def release(self, body: Mapping[str, Any]) -> list[str]:
        """A deleted Lease's ledger leases released (its attempt in line cancelled first);
        raises (kopf retries) while the workers do not answer. Also for a Lease that can no
        longer hold them (edited into a refused one, its grant refused by the API server)."""
        try:
            namespace, _, uid = lease_ref(body)
        except InvalidRequest:
            return []  # it could never have been granted
        held = self.held.pop(uid, None)
        recorded = held.owner if held is not None else None
        sending = self.sending.get(uid)
        if sending is not None:  # an acquire being published: it goes first, then its cancel
            with contextlib.suppress(Exception):
                await asyncio.shield(sending)
        attempt = self.attempts.pop(uid, None)
        if attempt is None:  # not served in this process: the first attempt not answered
            attempt = 0
            while (meta := await self.placement.meta(task_id(uid, attempt))) is not None \
                    and meta.get("status") in READY and _waited_out(meta):
                attempt += 1
        meta = await self.placement.meta(task_id(uid, attempt))
        answered = meta is not None and meta.get("status") in READY
        if not answered:
            # in line (or still queued: the queue is one line, the cancel comes after it)
            await self.placement.call(Task.CANCEL_WAIT, {"task_id": task_id(uid, attempt)},
                                      timeout=30)
        elif recorded is None and meta and meta.get("status") == "SUCCESS":
            recorded = granted_owner(meta.get("result"), namespace)
        owner = recorded or owner_of(body)
        released = list(await self.release_granted(owner, uid))
        if not released and recorded is None and not answered:
            # no answer says who holds them, and the Lease may name another owner now (its
            # boskos-lease-id label changed): the ledger says
            for other in sorted(await self._ledger_owners(namespace, uid) - {owner}):
                released += await self.release_granted(other, uid)
        if released:
            log.info("Lease %s/%s: released %s", body["metadata"].get("namespace"),
                     body["metadata"].get("name"), ", ".join(released))
            self.owners.usage_changed()
        return released

    async def release_granted(self, owner: str, uid: str) -> list[str]:
        """Release the ledger leases of Lease `uid` that `owner` holds."""
        released = await self.placement.call(
            Task.RELEASE, {"owner": owner, "selector": f"{UID_LABEL}={uid}"}, timeout=30)
        return list(released or [])

    async def _ledger_owners(self, namespace: str, uid: str) -> set[str]:
        """The owners (of this namespace) of the ledger leases granted to Lease `uid`."""
        found = await self.placement.call(Task.LIST_LEASES,
                                          {"selector": f"{UID_LABEL}={uid}"}, timeout=30)
        owners = {granted_owner([x], namespace) for x in found or [] if isinstance(x, Mapping)}
        return {o for o in owners if o}


def is_adopted(leases: Any) -> bool:
    """Whether ledger leases were adopted (`vcm.adopt` labels them), not granted here."""
    return isinstance(leases, list) and bool(leases) and all(
        isinstance(x, Mapping) and ((x.get("status") or {}).get("labels") or {}).get(
            ADOPTED_LABEL) == "true" for x in leases)


def held_text(lease: Mapping[str, Any]) -> str:
    """What one ledger lease holds, for a condition or a log line."""
    st_, sp = lease.get("status") or {}, lease.get("spec") or {}
    nets = ", ".join(str(n.get("port-group")) for n in st_.get("networks") or []
                     if isinstance(n, Mapping)) or "no port group"
    return (f"{(lease.get('metadata') or {}).get('name')} on pool {st_.get('pool')} "
            f"({sp.get('vcpus')} vCPUs, {sp.get('memory')} GB memory, {sp.get('storage')} GB "
            f"storage; port groups {nets})")


def _waited_out(meta: Mapping[str, Any]) -> bool:
    """Whether a finished acquire ended because its wait ran out (then a next attempt)."""
    result = meta.get("result")
    return (meta.get("status") == "FAILURE" and isinstance(result, dict)
            and result.get("exc_type") == WaitTimeout.__name__)


class LeaseRun:
    """One daemon's state: the Lease's status as last written, and its writes in order."""

    def __init__(self, leases: Leases, body: Mapping[str, Any], namespace: str, name: str,
                 uid: str) -> None:
        self.leases = leases
        self.body = body
        self.namespace, self.name, self.uid = namespace, name, uid
        self.status: dict[str, Any] = dict(body.get("status") or {})
        self.lock = asyncio.Lock()  # status writes, one at a time, in order
        self.delayed_at = 0.0
        self.delayed_write: asyncio.Task | None = None
        self.delayed_info: dict[str, Any] | None = None
        self.times: dict[str, float] = {}  # how long each step took, for the log

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def serve(self) -> None:
        try:
            await self._serve()
        except KubeError as exc:
            if not exc.not_found:
                raise
            log.info("Lease %s is gone: %s", self.where, exc)

    async def _serve(self) -> None:
        started = time.monotonic()
        if not await self.finalized():
            return
        self.times["finalizer"] = time.monotonic() - started
        if self.status.get("phase") == "Failed":
            return  # terminal: nothing is held, nothing is asked
        meta = self.body.get("metadata") or {}
        try:
            request = lease_request(self.body, ttl=self.leases.ttl,
                                    job_link=job_link(meta.get("annotations") or {}),
                                    sent=bool(self.status.get("phase")))
        except InvalidRequest as exc:
            if self.status.get("phase") == "Fulfilled" and not await self.in_ledger():
                # fulfilled by another controller, with a spec ours refuses: left as it is
                await self.not_adopted(await self.holdings(), exc.message)
                return
            log.info("Lease %s refused: %s", self.where, exc.message)
            message = exc.message
            if self.status.get("phase") in ("Pending", "Fulfilled"):
                # served before and edited since: what its request holds or waits for goes
                released = await self.release_all()
                if released:
                    message += f"; its ledger leases were released: {', '.join(released)}"
                await self.drop_refs()
            await self.write(st.failed(self.status, "InvalidSpec", message))
            return
        if self.status.get("phase") == "Fulfilled":
            # granted here before (then its leases are answered as they are), or fulfilled by
            # another controller: what it holds is recorded, never placed again
            leases = await self.adopt(request)
            if leases is None:
                return
            if is_adopted(leases):
                await self.serve_adopted(leases, request)
                return
            await self.fulfilled(leases, request)
            return
        first = None
        if not self.status.get("phase"):
            patch = st.pending(self.status)
            if request.get("job-link"):
                patch["job-link"] = request["job-link"]
            first = asyncio.create_task(self.write(patch))
        asked = time.monotonic()
        try:
            leases = await self.acquire(request)
            self.times["placement"] = time.monotonic() - asked
        except BaseException:
            if first is not None:
                first.cancel()
            raise
        if first is not None:  # the grant's write comes after it
            try:
                await first
            except (KubeError, *TRANSIENT) as exc:
                log.warning("Lease %s: phase Pending not written: %s", self.where, exc)
        if leases is None:
            return
        await self.fulfilled(leases, request)

    async def fulfilled(self, leases: list[dict[str, Any]], request: dict[str, Any]) -> None:
        """Its grant shown on the Lease, then its ledger leases renewed until it goes."""
        owner = granted_owner(leases, self.namespace) or request["owner"]
        ids = [x["metadata"]["name"] for x in leases]
        held = Held(self.namespace, self.name, owner, ids, *held_objects(leases))
        self.leases.held[self.uid] = held
        written = time.monotonic()
        try:
            await self.grant(leases)
        except KubeError as exc:
            if exc.status not in (400, 422):
                raise
            await self.unshowable(exc)
            return
        self.times["written"] = time.monotonic() - written
        log.info("Lease %s fulfilled: %s (%s)", self.where,
                 ", ".join(f"{x['metadata']['name']} on {x['status'].get('pool')}"
                           for x in leases),
                 ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.times.items()))
        await self.keep(held)

    # -- a Lease another controller fulfilled ------------------------------------------------
    async def adopt(self, request: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The ledger leases of a Fulfilled Lease: those its request-id has (granted here, or
        adopted before), else what it holds recorded now (`vcm.adopt`). None: its leases
        were released elsewhere (shown: Failed, Released). Refused (what it holds is leased
        to someone else, or is not in the pools configuration, or cannot be read): condition
        Adopted False on it, nothing else changed, and it is tried again every
        ADOPT_RETRY seconds. It is sent for the owner the ledger holds the Lease's leases
        for, not its label's now: a Lease granted here and relabelled since is answered its
        own leases, never refused as their conflict (while the ledger cannot be read, it is
        sent for the Lease's own, and a refusal is not shown: tried again soon)."""
        granted = await self.granted_here()
        if granted is not None:
            return granted
        pauses = Pauses(self.where, self.leases.retry_pauses)
        holdings = await self.holdings()
        while True:
            read, owner = await self.leases.owners.ledger_owner(self.namespace, self.uid)
            asked = {**request, "owner": owner} if owner else request
            try:
                return await self.leases.placement.call(
                    Task.ADOPT, {"request": asked, "holdings": holdings}, timeout=120)
            except LeaseNotFound as exc:
                await self.released(exc.message)
                return None
            except (InvalidRequest, NoCapacity) as exc:
                if not read:  # perhaps its own leases, held for another owner: not shown
                    await pauses.after(f"not adopted yet (the ledger not read): {exc.message}")
                    continue
                await self.not_adopted(holdings, lease_worded(exc.message))
                pauses.reset()
                await asyncio.sleep(ADOPT_RETRY)
                holdings = await self.holdings()  # its Networks may be back
            except Exception as exc:  # noqa: BLE001 - the workers, the broker or Redis
                await pauses.after(f"not adopted yet: {type(exc).__name__}: {exc}")

    async def granted_here(self) -> list[dict[str, Any]] | None:
        """The leases this Lease's acquire was answered with, while the result backend keeps
        the answer (as an acquire sent again would be answered): those the ledger holds under
        the owner it was granted to, even if its boskos-lease-id label changed since."""
        placement, attempt = self.leases.placement, 0
        while True:
            try:
                meta = await placement.meta(task_id(self.uid, attempt))
            except Exception as exc:  # noqa: BLE001 - then the ledger answers (vcm.adopt)
                log.warning("Lease %s: its acquire's answer not read: %s: %s", self.where,
                            type(exc).__name__, exc)
                return None
            if meta is None or meta.get("status") not in READY or not _waited_out(meta):
                break
            attempt += 1
        result = meta.get("result") if meta and meta.get("status") == "SUCCESS" else None
        if isinstance(result, list) and result and all(isinstance(x, Mapping) for x in result):
            self.leases.attempts[self.uid] = attempt
            return result
        return None

    async def holdings(self) -> dict[str, Any]:
        """What a Lease fulfilled by another controller holds, as that controller counts it
        (upstream's reads its ownerReferences): the Pools it names, and the port group and
        pod of each Network it names. `problem` says why it cannot be told, when it cannot."""
        refs = [r for r in (self.body.get("metadata") or {}).get("ownerReferences") or []
                if isinstance(r, Mapping) and r.get("apiVersion") == API_VERSION]
        pools = [r.get("name") for r in refs if r.get("kind") == "Pool"]
        nets = [r for r in refs if r.get("kind") == "Network"]
        out: dict[str, Any] = {"pools": pools, "networks": []}
        if len(refs) > MAX_HELD_REFS:
            out["problem"] = f"it names {len(refs)} Pools and Networks, more than any lease holds"
            return out
        if not pools:
            out["problem"] = "it names no Pool in its ownerReferences: what it holds cannot be told"
            return out
        for ref in nets:
            name = ref.get("name")
            if not isinstance(name, str) or not name:
                out["problem"] = "an ownerReference of kind Network has no name"
                return out
            obj = self.leases.owners.published(self.namespace, "Network", name)
            if obj is None or (obj.get("metadata") or {}).get("uid") != ref.get("uid"):
                try:  # not one of ours (upstream's), or made again since
                    obj = await self.retrying(
                        f"its Network {name} not read",
                        lambda name=name: self.leases.kube.get("Network", self.namespace, name))
                except KubeError as exc:
                    if exc.status not in (400, 403, 404, 422):
                        raise
                    out["problem"] = f"its Network {name} cannot be read: {exc}"
                    return out
            if ref.get("uid") and (obj.get("metadata") or {}).get("uid") != ref.get("uid"):
                out["problem"] = (f"Network {name} is not the one it owns (uid "
                                  f"{(obj.get('metadata') or {}).get('uid')}, not {ref['uid']})")
                return out
            spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
            entry = {"name": name, "port-group": spec.get("portGroupName")}
            if spec.get("podName"):
                entry["pod"] = spec["podName"]
            out["networks"].append(entry)
        return out

    async def in_ledger(self) -> bool:
        """Whether the ledger holds leases of this Lease (granted or adopted here)."""
        pauses = Pauses(self.where, self.leases.retry_pauses)
        while True:
            try:
                found = await self.leases.placement.call(
                    Task.LIST_LEASES, {"selector": f"{UID_LABEL}={self.uid}"}, timeout=60)
                return bool(found)
            except Exception as exc:  # noqa: BLE001 - the workers, the broker or Redis
                await pauses.after(f"the ledger not read: {type(exc).__name__}: {exc}")

    async def serve_adopted(self, leases: list[dict[str, Any]],
                            request: dict[str, Any]) -> None:
        """An adopted Lease: condition Adopted True, nothing else of it changed (its status
        and ownerReferences stay the other controller's), then its ledger leases renewed
        until it goes."""
        owner = granted_owner(leases, self.namespace) or request["owner"]
        held = Held(self.namespace, self.name, owner, [x["metadata"]["name"] for x in leases])
        self.leases.held[self.uid] = held
        what = "; ".join(held_text(x) for x in leases)
        log.info("Lease %s adopted: fulfilled by another controller, its holdings are "
                 "recorded in the ledger: %s", self.where, what)
        try:  # its renewals never wait on this write (a status the schema now refuses)
            await self.write(st.adopted(self.status, True, "fulfilled by another controller; "
                                        f"recorded in the ledger as it holds it: {what}"))
        except KubeError as exc:
            if exc.not_found:
                raise
            log.warning("Lease %s: its condition Adopted not written: %s", self.where, exc)
        self.leases.owners.usage_changed()
        await self.keep(held)

    async def not_adopted(self, holdings: Mapping[str, Any], why: str) -> None:
        """Condition Adopted False, reason NotAdopted, naming what it holds and why; a log line
        when that changes. Nothing else of the Lease is touched."""
        # what the Lease and its Networks say is shown escaped where it is not valid text
        nets = ", ".join(f"{said(n.get('port-group'))} (Network {said(n.get('name'))})"
                         for n in holdings.get("networks") or []) or "no Network"
        pools = ", ".join(said(p) for p in holdings.get("pools") or []) or "no Pool"
        spec = self.body.get("spec") if isinstance(self.body.get("spec"), Mapping) else {}
        sizes = [said(spec.get(k, 0), 32) for k in ("vcpus", "memory", "storage")]
        message = (f"fulfilled by another controller and not adopted: {said(why, 4096)}; it "
                   f"holds pool(s) {pools} ({sizes[0]} vCPUs, {sizes[1]} GB memory, "
                   f"{sizes[2]} GB storage each) and {nets}; it is left as it is, and tried "
                   f"again every {ADOPT_RETRY:g}s")
        patch = st.adopted(self.status, False, message)
        if not st.unchanged(self.status, patch):
            log.warning("Lease %s: %s", self.where, message)
        try:
            await self.write(patch)
        except KubeError as exc:
            log.warning("Lease %s: its condition Adopted not written: %s", self.where, exc)

    async def finalized(self) -> bool:
        """Until kopf's finalizer is on the Lease (False: the Lease is gone)."""
        deadline = time.monotonic() + FINALIZER_WAIT
        pause = 0.002  # kopf's patch comes back in milliseconds; a burst of Leases, later
        while FINALIZER not in ((self.body.get("metadata") or {}).get("finalizers") or []):
            if time.monotonic() > deadline:
                try:
                    fresh = await self.retrying("not read", lambda: self.leases.kube.get(
                        "Lease", self.namespace, self.name))
                except KubeError as exc:
                    if exc.not_found:
                        return False
                    raise
                if (fresh.get("metadata") or {}).get("uid") != self.uid:
                    return False
                if FINALIZER in ((fresh.get("metadata") or {}).get("finalizers") or []):
                    return True
                deadline = time.monotonic() + FINALIZER_WAIT
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.1)
        return True

    async def acquire(self, request: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The leases granted (None: the Lease was answered Failed)."""
        placement = self.leases.placement
        attempt = self.leases.attempts.get(self.uid, 0)
        pauses = Pauses(self.where, self.leases.retry_pauses)
        while True:
            self.leases.attempts[self.uid] = attempt
            tid = task_id(self.uid, attempt)
            try:
                return await placement.wait(tid, send=lambda tid=tid: self.publish(tid, request),
                                            progress=self.delayed)
            except WaitTimeout:
                attempt += 1  # a week in line, or cancelled: a new attempt, same request-id
            except (InvalidRequest, NoCapacity) as exc:
                message = exc.message
                if isinstance(exc, NoCapacity) and exc.reasons:
                    message = f"{exc.message.split(':', 1)[0]}: {st.reasons_text(exc.reasons)}"
                else:
                    reasons = never_reasons(request, self.leases.owners.pools)
                    if reasons:
                        message += f"; pool by pool: {st.reasons_text(reasons)}"
                message = lease_worded(message)
                log.info("Lease %s cannot be met: %s", self.where, message)
                await self.write(st.failed(self.status, "Unschedulable", message))
                return None
            except LeaseNotFound as exc:
                await self.released(exc.message)
                return None
            except (VcmError, NoAnswer, KubeError, *TRANSIENT) as exc:
                await pauses.after(str(exc))
            except Exception as exc:  # noqa: BLE001 - redis-py and kombu raise many kinds
                await pauses.after(f"{type(exc).__name__}: {exc}")

    async def publish(self, tid: str, request: dict[str, Any]) -> None:
        """Send the acquire, remembered until it is out (a deletion waits for it)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.leases.sending[self.uid] = done
        try:
            await asyncio.shield(self.leases.placement.send(Task.ACQUIRE,
                                                            {"request": request}, tid))
        finally:
            done.set_result(None)
            if self.leases.sending.get(self.uid) is done:
                del self.leases.sending[self.uid]

    async def delayed(self, info: dict[str, Any]) -> None:
        """Progress of the attempt in line: Delayed with its place, at most every
        DELAYED_EVERY seconds (the latest place is written last)."""
        self.delayed_info = info
        if self.delayed_write is not None and not self.delayed_write.done():
            return
        wait = self.delayed_at + DELAYED_EVERY - time.monotonic()
        self.delayed_write = asyncio.create_task(self._write_delayed(max(0.0, wait)))

    async def _write_delayed(self, wait: float) -> None:
        if wait:
            await asyncio.sleep(wait)
        written = None
        while self.delayed_info is not written:  # until the latest place is the one shown
            if written is not None:
                await asyncio.sleep(DELAYED_EVERY)
            written = self.delayed_info
            info = written or {}
            self.delayed_at = time.monotonic()
            reasons = info.get("reasons") if isinstance(info.get("reasons"), dict) else {}
            try:
                await self.write(st.delayed(self.status, info.get("position", "?"), reasons))
            except (KubeError, *TRANSIENT) as exc:
                log.warning("Lease %s: its place in line not written: %s", self.where, exc)
                return

    async def grant(self, leases: list[dict[str, Any]]) -> None:
        """ownerReferences (and the spec of a network-only Lease), then Fulfilled."""
        if self.delayed_write is not None:
            self.delayed_write.cancel()
        patch: dict[str, Any] = {}
        refs = await self.refs_patch(*held_objects(leases))
        if refs is not None:
            patch["metadata"] = refs
        spec = self.body.get("spec") or {}
        if (not spec.get("vcpus") and not spec.get("memory")
                and ("vcpus" in spec or "memory" in spec)):
            patch["spec"] = {"vcpus": None, "memory": None}  # network-only: none, as upstream
        if patch:
            await self.retrying("its ownerReferences not written", lambda: self.leases.kube.patch(
                "Lease", self.namespace, self.name, patch))
        await self.write(st.fulfilled(self.status, lease_status(leases)))
        self.leases.owners.usage_changed()

    async def refs_patch(self, pools: list[str], networks: list[str]) -> dict[str, Any] | None:
        """The metadata patch that makes its ownerReferences name these Pool and Network
        objects (as they are published now; other owners kept), or None."""
        refs = await self.retrying("its Pools and Networks not looked up",
                                   lambda: self.leases.owners.refs(self.namespace, pools,
                                                                   networks))
        meta = self.body.get("metadata") or {}
        others = [r for r in meta.get("ownerReferences") or []
                  if not (isinstance(r, Mapping) and r.get("apiVersion") == API_VERSION
                          and r.get("kind") in ("Pool", "Network"))]
        if (meta.get("ownerReferences") or []) == others + refs:
            return None
        return {"ownerReferences": others + refs}

    async def repoint(self, held: Held) -> None:
        """A Pool or Network it holds was deleted by hand and published again: the garbage
        collector took the reference to the old one away, this names the new one."""
        held.repoint = False
        try:
            patch = await self.refs_patch(held.pools, held.networks)
            if patch is not None:
                await self.retrying("its ownerReferences not written",
                                    lambda: self.leases.kube.patch(
                                        "Lease", self.namespace, self.name, {"metadata": patch}))
        except KubeError as exc:
            log.warning("Lease %s: its ownerReferences not written: %s", self.where, exc)

    async def keep(self, held: Held) -> None:
        """Renew the ledger leases until the Lease goes (kopf cancels this daemon) or they
        are released elsewhere."""
        placement = self.leases.placement
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.check.wait(), self.leases.renew_every)
            held.check.clear()
            if held.repoint:
                await self.repoint(held)
            try:
                await asyncio.gather(*(
                    placement.call(Task.RENEW, {"lease_id": i, "owner": held.owner,
                                                "ttl": int(self.leases.ttl)}, timeout=60)
                    for i in held.ids))
                failures = 0
            except LeaseNotFound as exc:
                await self.released(exc.message)
                return
            except Exception as exc:  # noqa: BLE001 - try again at the next turn, sooner
                failures += 1
                log.warning("Lease %s: renewal failed: %s", self.where, exc)
                pauses = self.leases.retry_pauses
                await asyncio.sleep(pauses[min(failures, len(pauses) - 1)])
                if failures < len(pauses):
                    held.check.set()  # again soon, not after a whole interval

    async def released(self, why: str) -> None:
        """Its ledger leases went elsewhere: Failed, Released; it holds no Pool or Network."""
        log.info("Lease %s: its ledger leases were released elsewhere: %s", self.where, why)
        self.leases.held.pop(self.uid, None)
        await self.drop_refs()
        await self.write(st.failed(self.status, "Released",
                                   f"its ledger leases were released elsewhere: {why}"))
        self.leases.owners.usage_changed()

    async def unshowable(self, refused: KubeError) -> None:
        """The API server refuses the grant's status for good (a value of the pools
        configuration beyond what the CRD holds, such as a zone of 100 characters): what a
        Lease cannot show, nobody can use; its ledger leases are released, and it is Failed,
        InvalidStatus, with the API server's words (they name the field)."""
        log.error("Lease %s: the API server refused its grant: %s; its ledger leases are "
                  "released", self.where, refused.message)
        await self.release_all()
        await self.drop_refs()
        await self.write(st.failed(self.status, "InvalidStatus",
                                   "the API server refused the granted status, so its ledger "
                                   f"leases were released: {refused.message}"))
        self.leases.owners.usage_changed()

    async def release_all(self) -> list[str]:
        """Its attempt in line cancelled and its ledger leases released, as on deletion (tried
        again while the workers do not answer)."""
        pauses = Pauses(self.where, self.leases.retry_pauses)
        while True:
            try:
                return await self.leases.release(self.body)
            except Exception as exc:  # noqa: BLE001 - the workers do not answer now
                await pauses.after(f"its ledger leases not released: {type(exc).__name__}: {exc}")

    async def drop_refs(self) -> None:
        """Its ownerReferences to Pools and Networks taken away (it holds none)."""
        meta = self.body.get("metadata") or {}
        refs = meta.get("ownerReferences") or []
        kept = [r for r in refs if not (isinstance(r, Mapping)
                                        and r.get("apiVersion") == API_VERSION
                                        and r.get("kind") in ("Pool", "Network"))]
        if kept != refs:
            await self.retrying("its ownerReferences not written", lambda: self.leases.kube.patch(
                "Lease", self.namespace, self.name, {"metadata": {"ownerReferences": kept}}))

    async def write(self, patch: dict[str, Any]) -> None:
        """A status patch, in order, skipped when it changes nothing."""
        async with self.lock:
            if st.unchanged(self.status, patch):
                return
            answer = await self.retrying("its status not written", lambda: self.leases.kube.patch(
                "Lease", self.namespace, self.name, {"status": patch}, status=True))
            got = answer.get("status")
            self.status = dict(got) if isinstance(got, Mapping) else {**self.status, **patch}

    async def retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` until the apiserver answers it: an answer 5xx or 429, or a connection that
        failed, is tried again after the retry pauses (a line in the log each, no traceback);
        any other refusal is raised. kopf cancels it with the daemon."""
        pauses = Pauses(self.where, self.leases.retry_pauses)
        while True:
            try:
                return await call()
            except KubeError as exc:
                if not exc.transient:
                    raise
                error: Exception = exc
            except TRANSIENT as exc:
                error = exc
            await pauses.after(f"{what}: {str(error) or type(error).__name__}")
