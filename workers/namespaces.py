"""Namespace-bound leases: a lease labelled `vsphere-capacity-manager.splat-team.io/
lease-namespace=<ns>` is released, with reason `namespace-gone`, once namespace <ns> no longer
exists in the Kubernetes cluster (the CI job's namespace was deleted). Beat sends
`vcm.prune_namespaces` to the placement queue every VCM_NAMESPACE_PRUNE_INTERVAL (5m; `0` or
`off`: never).

One run makes one list call of every namespace, with a timeout (VCM_NAMESPACE_TIMEOUT) and no
retries, then compares it with the labels of the active leases, read through the service, and
releases the leases of the namespaces that are gone through `Capacity.release` (one atomic
ledger step per batch; waiters get the room). The release script counts them in the stats as
`namespace-pruned` and records them in the `reaped` list, beside the reaper's.

Never releasing by mistake comes first:
- when the list cannot be had (API down, 403, a timeout, an answer that does not parse),
  nothing is released: the error is logged, counted (`namespace-errors` in the stats) and
  shown on /readyz; the next run tries again;
- an answer with no namespace at all is taken for an error too (a cluster always has some);
- a Terminating namespace still exists: its leases stay until it is gone;
- only leases taken before the list was asked for (by VCM_NAMESPACE_GRACE, 2 s; `leased-at`
  has whole seconds) are compared, so a lease in a namespace created after the list started
  stays;
- a label value that cannot be a namespace name never named one: such leases are left alone.

Without a Kubernetes configuration (not in a cluster, no usable kubeconfig) the feature is off:
logged once at INFO, not an error. The client is built as the ConfigMap mirror builds its own
(in-cluster service account, else $KUBECONFIG or ~/.kube/config, read at each run) and closed
after the run, so no idle connection is reused across runs.

What the last runs did is kept in the Redis hash `<prefix>namespaces` (see `describe`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .core.models import rfc3339

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from .service import Capacity
    from .settings import Settings

log = logging.getLogger("workers.namespaces")

NAMESPACE_LABEL = "vsphere-capacity-manager.splat-team.io/lease-namespace"
REASON = "namespace-gone"
PRUNED_STAT = "namespace-pruned"  # counted by the release script (lua/release.lua)
ERRORS_STAT = "namespace-errors"
STATUS = "namespaces"  # the status hash, after the ledger's key prefix
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

    from .adapters.kube_config import NoKubeConfig, kube_configuration

    try:
        cfg = kube_configuration()
    except NoKubeConfig as exc:
        raise NoKubernetes(str(exc)) from exc
    cfg.retries = urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0)
    return k8s_client.ApiClient(configuration=cfg)


def list_namespaces(api: ApiClient, timeout: float) -> set[str]:
    """The names of every namespace that exists (Terminating ones too), in one call.
    ListFailed on any failure, and on an answer that lists none."""
    import http.client

    import urllib3
    from kubernetes import client as k8s_client
    from kubernetes.client.exceptions import ApiException

    try:
        answer = k8s_client.CoreV1Api(api).list_namespace(_request_timeout=timeout)
    except ApiException as exc:
        reason = (exc.reason or "").strip()
        raise ListFailed(f"list namespaces: the apiserver answered {exc.status} {reason}"
                         .rstrip()) from exc
    except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as exc:
        why = "timed out" if _timed_out(exc) else f"unreachable: {exc}"
        raise ListFailed(f"list namespaces: the Kubernetes API {why}") from exc
    except (ValueError, TypeError) as exc:  # an answer that does not parse as a NamespaceList
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


class Pruner:
    """One run of `vcm.prune_namespaces` for a service (the placement worker's)."""

    def __init__(self, service: Capacity,
                 client_factory: Callable[[], ApiClient] = api_client_from_env,
                 settings: Settings | None = None) -> None:
        self.service = service
        self.client_factory = client_factory
        settings = settings or service.settings
        self.interval = settings.namespace_prune_interval  # None: off
        self.timeout = settings.namespace_timeout
        self.grace = settings.namespace_grace
        ledger = service.ledger
        self.redis = ledger.r
        self.key = ledger.k.prefix + STATUS

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
            names = list_namespaces(api, self.timeout)
        except ListFailed as exc:
            return self._failed(str(exc), started)
        finally:
            api.close()
        released, by_namespace = self._prune(names, started - self.grace)
        self._store({"state": "ok", "checked-at": started, "pruned-at": started,
                     "namespaces": len(names), "released": len(released), "error": ""},
                    runs=1)
        return {"state": "ok", "namespaces": len(names), "released": released,
                "by-namespace": by_namespace}

    def _prune(self, names: set[str], cutoff: float) -> tuple[list[str], dict[str, list[str]]]:
        """Release the leases of the namespaces not in `names` taken before `cutoff`."""
        doomed: dict[str, list[str]] = {}
        for lease in self.service.leases(selector=NAMESPACE_LABEL):
            namespace = lease.labels.get(NAMESPACE_LABEL, "")
            if namespace in names or not _NAMESPACE.match(namespace):
                continue
            try:  # leased-at has whole seconds: the lease was taken before leased-at + 1
                if lease.leased_epoch + 1 > cutoff:
                    continue
            except (TypeError, ValueError):  # no leased-at (""), or not RFC 3339
                continue
            doomed.setdefault(namespace, []).append(lease.id)
        ids = [i for group in doomed.values() for i in group]
        released: list[str] = []
        for start in range(0, len(ids), BATCH):
            released += self.service.release(lease_ids=ids[start:start + BATCH], reason=REASON)
        if released:
            log.info("released %d leases of namespaces that are gone: %s", len(released),
                     "; ".join(f"{ns}: {', '.join(group)}" for ns, group in doomed.items()))
        done = set(released)
        return released, {ns: [i for i in group if i in done] for ns, group in doomed.items()}

    def _failed(self, error: str, started: float) -> dict[str, Any]:
        log.warning("namespace-bound leases not pruned (nothing released): %s", error)
        self.service.ledger.count(ERRORS_STAT)
        self._store({"state": "failing", "checked-at": started, "error": error,
                     "last-error": error, "last-error-at": started}, runs=1, errors=1)
        return {"state": "failing", "error": error, "released": []}

    def _store(self, fields: dict[str, Any], runs: int = 0, errors: int = 0) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key, mapping={k: str(v) for k, v in fields.items()})
        if runs:
            pipe.hincrby(self.key, "runs", runs)
        if errors:
            pipe.hincrby(self.key, "errors", errors)
        pipe.execute()


def prune(service: Capacity) -> dict[str, Any]:
    """One run: what `vcm.prune_namespaces` does and returns."""
    return Pruner(service).run()


def status_key(prefix: str) -> str:
    return prefix + STATUS


def describe(raw: Mapping[Any, Any], now: float | None = None) -> dict[str, Any]:
    """The status hash (as HGETALL returns it) as /readyz shows it: state (ok, failing, off:
    no Kubernetes configuration), the last successful prune (time and age), namespaces seen
    and leases released then, runs, errors and the last error. Never raises."""
    now = time.time() if now is None else now
    fields = {_text(k): _text(v) for k, v in raw.items()}
    if not fields:
        return {"state": "not run yet"}
    out: dict[str, Any] = {"state": fields.get("state", "unknown")}
    pruned = _number(fields.get("pruned-at"))
    if pruned is not None:
        out["last-prune-at"] = rfc3339(pruned)
        out["last-prune-age-seconds"] = round(max(0.0, now - pruned), 1)
    for name in ("namespaces", "released", "runs", "errors"):
        value = _number(fields.get(name))
        if value is not None:
            out[name] = int(value)
    if fields.get("error"):
        out["error"] = fields["error"]
    if fields.get("last-error"):
        out["last-error"] = fields["last-error"]
        at = _number(fields.get("last-error-at"))
        if at is not None:
            out["last-error-at"] = rfc3339(at)
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None
