"""Namespace-bound leases: a lease labelled `vsphere-capacity-manager.splat-team.io/
lease-namespace=<ns>` is released, with reason `namespace-gone`, once namespace <ns> no longer
exists in the Kubernetes cluster (the CI job's namespace was deleted). Beat sends
`vcm.prune_namespaces` to the queries queue every VCM_NAMESPACE_PRUNE_INTERVAL (5m; `0` or
`off`: never): however slowly the Kubernetes API answers, the placement worker never waits
for it.

One run (`Pruner`, on a queries worker) makes one list call of every namespace, which ends
within VCM_NAMESPACE_TIMEOUT whole answer included (`Deadline`), with no retries; then
compares it with the labels of the active leases, read through the service, and sends the ids
of the leases of the namespaces that are gone to the placement worker
(`vcm.release_namespace_gone`, `release_gone` there: `Capacity.release` with reason
`namespace-gone`, one atomic ledger step per batch; waiters get the room), and waits for its
answer. A release by lease id is safe to run late or twice: it releases those leases and no
other, never one granted since. The release script counts them in the stats as
`namespace-pruned` and records them in the `reaped` list, beside the reaper's.

Never releasing by mistake comes first:
- when the list cannot be had (API down, 403, a timeout, an answer that does not parse),
  nothing is released: the error is logged, counted (`namespace-errors` in the stats) and
  shown on /readyz; the next run tries again;
- an answer with no namespace at all is taken for an error too (a cluster always has some);
- a Terminating namespace still exists: its leases stay until it is gone;
- only leases read before the list was asked for are compared, so a lease in a namespace
  created after the list started stays, however far the queries worker's clock is from the
  placement worker's (which stamps `leased-at`); those must also be older than the list by
  VCM_NAMESPACE_GRACE (2 s) on this worker's clock (`leased-at` has whole seconds);
- a label value that cannot be a namespace name never named one: such leases are left alone.

Without a Kubernetes configuration (not in a cluster, no usable kubeconfig) the feature is off:
logged once at INFO, not an error. The client is built as the ConfigMap mirror builds its own
(in-cluster service account, else $KUBECONFIG or ~/.kube/config, read at each run) and closed
after the run, so no idle connection is reused across runs.

What the last runs did is kept in the ledger's namespace status hash (`Keys.namespaces`;
/readyz shows it: adapters/ledger/reports.py).
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.errors import InvalidRequest, LeaseNotFound
from .releasing import parse_lease_ids

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from ..core.lease import Lease
    from ..settings import Settings
    from .capacity import Capacity

log = logging.getLogger(__name__)

NAMESPACE_LABEL = "vsphere-capacity-manager.splat-team.io/lease-namespace"
REASON = "namespace-gone"
PRUNED_STAT = "namespace-pruned"  # counted by the release script (lua/release.lua)
ERRORS_STAT = "namespace-errors"
BATCH = 500
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_said_off = threading.Event()  # "no Kubernetes configuration" is logged once per process


class NoKubernetes(Exception):
    """No Kubernetes configuration: the feature is off."""


class ListFailed(Exception):
    """The namespaces could not be listed (or the answer cannot be trusted)."""


def api_client_from_env() -> ApiClient:
    """In-cluster service account, else kubeconfig ($KUBECONFIG or ~/.kube/config); no
    retries: one run is one list call, and a failed run is simply the next run's to redo."""
    import urllib3
    from kubernetes import client as k8s_client

    from ..adapters.kube_config import NoKubeConfig, kube_configuration

    try:
        cfg = kube_configuration()
    except NoKubeConfig as exc:
        raise NoKubernetes(str(exc)) from exc
    cfg.retries = urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0)
    return k8s_client.ApiClient(configuration=cfg)


class Deadline:
    """A deadline for a whole call of one Kubernetes API client. The client's _request_timeout
    bounds each socket operation, not the answer: an apiserver or proxy that sends its answer
    a few bytes at a time keeps every read short and the call going for as long as it likes.
    At the deadline every socket the client opened (found through its connection classes) is
    shut down, so whatever the call is doing (connecting, the TLS handshake, reading headers or
    body) ends at once with an error, in the calling thread: nothing is left running. The
    client must not be used afterwards (close it)."""

    def __init__(self, api: ApiClient, seconds: float) -> None:
        self.seconds = seconds
        self.expired = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer: threading.Timer | None = None
        manager = api.rest_client.pool_manager
        manager.clear()  # pools made before would keep untracked connections
        manager.pool_classes_by_scheme = {scheme: self._tracking(pool_cls) for scheme, pool_cls
                                          in manager.pool_classes_by_scheme.items()}

    def _tracking(self, pool_cls: type) -> type:
        """`pool_cls` whose connections report each socket they open."""
        opened = self._opened

        class Tracked(pool_cls.ConnectionCls):  # type: ignore[name-defined,misc]
            def _new_conn(self) -> Any:
                sock = super()._new_conn()
                opened(sock)
                return sock

            def connect(self) -> None:
                super().connect()
                opened(self.sock)  # with TLS, the wrapping socket

        return type(pool_cls.__name__, (pool_cls,), {"ConnectionCls": Tracked})

    def _opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            late = self.expired.is_set()
        if late:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def __enter__(self) -> Deadline:
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    """Shut a socket down for both directions: a read blocked on it in another thread returns
    at once. The base class's shutdown, so that a TLS socket's state is left to its reader."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def list_namespaces(api: ApiClient, timeout: float) -> set[str]:
    """The names of every namespace that exists (Terminating ones too), in one call that ends
    within `timeout` seconds, whole answer included. ListFailed on any failure, and on an
    answer that lists none."""
    import http.client

    import urllib3
    from kubernetes import client as k8s_client
    from kubernetes.client.exceptions import ApiException

    # the client imports its API classes and models on first use (seconds on a busy machine):
    # before the deadline starts, which is the apiserver's alone
    core = k8s_client.CoreV1Api(api)
    _ = k8s_client.V1NamespaceList
    deadline = Deadline(api, timeout)
    timed_out = (f"list namespaces: the Kubernetes API timed out (no whole answer within "
                 f"{timeout:g}s)")
    try:
        with deadline:
            answer = core.list_namespace(_request_timeout=timeout)
    except ApiException as exc:
        if deadline.expired.is_set():
            raise ListFailed(timed_out) from exc
        reason = (exc.reason or "").strip()
        raise ListFailed(f"list namespaces: the apiserver answered {exc.status} {reason}"
                         .rstrip()) from exc
    except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as exc:
        if deadline.expired.is_set() or _timed_out(exc):
            raise ListFailed(timed_out) from exc
        raise ListFailed(f"list namespaces: the Kubernetes API unreachable: {exc}") from exc
    except (ValueError, TypeError) as exc:  # an answer that does not parse as a NamespaceList
        if deadline.expired.is_set():
            raise ListFailed(timed_out) from exc
        raise ListFailed(f"list namespaces: the answer cannot be read: {exc}") from exc
    names = {item.metadata.name for item in (answer.items or [])
             if item.metadata is not None and item.metadata.name}
    if not names:
        raise ListFailed("list namespaces: the apiserver listed no namespace at all; a cluster "
                         "always has some, so nothing is pruned")
    return names


def _timed_out(exc: BaseException) -> bool:
    """Whether a transport error is a timeout (urllib3 wraps it in MaxRetryError.reason)."""
    import urllib3

    seen: object = exc
    for _ in range(10):
        if not isinstance(seen, BaseException):
            return False
        if isinstance(seen, urllib3.exceptions.TimeoutError | TimeoutError):
            return True
        reason = getattr(seen, "reason", None)
        seen = reason if isinstance(reason, BaseException) else seen.__cause__
    return False


class ReleasePending(Exception):
    """The placement worker has not answered a release in time; it stays queued and is done
    when the worker gets to it."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"release {task_id} sent, not answered yet")
        self.task_id = task_id


Release = Callable[[list[str]], list[str]]  # lease ids -> the ids the placement worker released


class Pruner:
    """One run of `vcm.prune_namespaces` on a queries worker: `release` sends the lease ids to
    the placement worker and returns its answer (ReleasePending when it does not come in
    time)."""

    def __init__(self, service: Capacity, release: Release,
                 client_factory: Callable[[], ApiClient] = api_client_from_env,
                 settings: Settings | None = None) -> None:
        self.service = service
        self.release = release
        self.client_factory = client_factory
        settings = settings or service.settings
        self.interval = settings.namespace_prune_interval  # None: off
        self.timeout = settings.namespace_timeout
        self.ledger = service.ledger
        self.grace = settings.namespace_grace

    def run(self) -> dict[str, Any]:
        if self.interval is None:
            return {"state": "disabled"}
        try:
            api = self.client_factory()
        except NoKubernetes as exc:
            if not _said_off.is_set():
                _said_off.set()
                log.info("namespace-bound leases are not pruned: no Kubernetes configuration "
                         "(%s)", exc)
            self._store({"state": "off", "checked-at": time.time()})
            return {"state": "off"}
        started = time.time()
        try:
            # the leases first, then the list: a lease granted once the list is under way is
            # not among them, whatever this worker's clock says (leased-at is the placement
            # worker's)
            leases = self.service.leases(selector=NAMESPACE_LABEL)
            names = list_namespaces(api, self.timeout)
        except ListFailed as exc:
            return self._failed(str(exc), started)
        finally:
            api.close()
        doomed = self._doomed(leases, names, started - self.grace)
        ids = [i for group in doomed.values() for i in group]
        released: list[str] = []
        try:
            for start in range(0, len(ids), BATCH):
                released += self.release(ids[start:start + BATCH])
        except ReleasePending as exc:
            log.warning("namespace-bound leases: %s; it is done when the placement worker gets "
                        "to it", exc)
            self._store({"state": "sent", "checked-at": started, "pruned-at": started,
                         "namespaces": len(names), "released": len(released), "error": ""},
                        runs=1)
            return {"state": "sent", "namespaces": len(names), "released": released,
                    "releasing": [i for i in ids if i not in set(released)],
                    "release-task": exc.task_id, "by-namespace": doomed}
        except Exception as exc:  # noqa: BLE001 - the placement worker refused or failed
            return self._failed(f"release: {type(exc).__name__}: {exc}", started)
        if released:
            log.info("released %d leases of namespaces that are gone: %s", len(released),
                     "; ".join(f"{ns}: {', '.join(group)}" for ns, group in doomed.items()))
        self._store({"state": "ok", "checked-at": started, "pruned-at": started,
                     "namespaces": len(names), "released": len(released), "error": ""},
                    runs=1)
        done = set(released)
        return {"state": "ok", "namespaces": len(names), "released": released,
                "by-namespace": {ns: [i for i in group if i in done]
                                 for ns, group in doomed.items()}}

    @staticmethod
    def _doomed(leases: list[Lease], names: set[str], cutoff: float) -> dict[str, list[str]]:
        """Those of `leases`, by namespace, of the namespaces not in `names` taken before
        `cutoff`."""
        doomed: dict[str, list[str]] = {}
        for lease in leases:
            namespace = lease.labels.get(NAMESPACE_LABEL, "")
            if namespace in names or not _NAMESPACE.match(namespace):
                continue
            try:  # leased-at has whole seconds: the lease was taken before leased-at + 1
                if lease.leased_epoch + 1 > cutoff:
                    continue
            except (TypeError, ValueError):  # no leased-at (""), or not RFC 3339
                continue
            doomed.setdefault(namespace, []).append(lease.id)
        return doomed

    def _failed(self, error: str, started: float) -> dict[str, Any]:
        log.warning("namespace-bound leases not pruned (nothing released): %s", error)
        self.ledger.count(ERRORS_STAT)
        self._store({"state": "failing", "checked-at": started, "error": error,
                     "last-error": error, "last-error-at": started}, runs=1, errors=1)
        return {"state": "failing", "error": error, "released": []}

    def _store(self, fields: dict[str, Any], runs: int = 0, errors: int = 0) -> None:
        self.ledger.namespace_status_write(fields, runs=runs, errors=errors)


def prune(service: Capacity, release: Release) -> dict[str, Any]:
    """One run: what `vcm.prune_namespaces` does and returns (on a queries worker)."""
    return Pruner(service, release).run()


def release_gone(service: Capacity, lease_ids: Any) -> list[str]:
    """What `vcm.release_namespace_gone` does on the placement worker: release these leases
    with reason `namespace-gone`, one atomic ledger step per batch. Those already released
    count as released (a repeat answers the same); an unknown id is LeaseNotFound, as for
    `vcm.release`. Anyone can send the task: a lease that no namespace label binds (nothing a
    run would send) is refused, and nothing is released, so that no other lease is counted
    and recorded as pruned."""
    ids = parse_lease_ids(lease_ids)
    if not ids:
        raise InvalidRequest.of("lease_ids", "give the ids of the leases to release")
    for record in service.ledger.get_many(ids):  # labels never change on a lease
        status = record.get("status") or {}
        if status.get("state") == "unknown":
            raise LeaseNotFound.of(record["metadata"]["name"])
        namespace = (status.get("labels") or {}).get(NAMESPACE_LABEL)
        if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
            raise InvalidRequest.of("lease_ids", f"lease {record['metadata']['name']!r} is not "
                                    f"bound to a namespace (no {NAMESPACE_LABEL} label naming "
                                    "one): release it with vcm.release")
    released: list[str] = []
    for start in range(0, len(ids), BATCH):
        released += service.release(lease_ids=ids[start:start + BATCH], reason=REASON)
    return released
