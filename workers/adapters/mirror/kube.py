"""The Kubernetes side of the ConfigMap mirror: the API client's configuration, and the
ConfigMaps of one mirror read and written through it. Every transport failure or unexpected
answer becomes a MirrorError; a 404 or 409 on a write is left to the caller (an ApiException),
which re-reads and tries again."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from ..kube_config import NoKubeConfig, kube_configuration
from .codec import FORMAT
from .errors import MirrorError, MirrorTooLarge

META_KEY = "mirror.json"
HEAD_PART_KEY = "part-0"
SHARD_PART_KEY = "part"
MIRROR_LABEL = "vsphere-capacity-manager/mirror-of"
ROLE_LABEL = "vsphere-capacity-manager/mirror-role"  # head | shard
MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "vsphere-capacity-manager"
MERGE_PATCH = "application/merge-patch+json"


T = TypeVar("T")
ConfigMap = k8s_client.V1ConfigMap


def default_api_client() -> k8s_client.ApiClient:
    """In-cluster service account, else kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    try:
        cfg = kube_configuration()
    except NoKubeConfig as exc:
        raise MirrorError(f"no Kubernetes configuration: {exc}") from exc
    # Our caller retries with backoff: urllib3 must not silently repeat timed-out requests.
    cfg.retries = urllib3.Retry(total=2, connect=2, read=0, redirect=0, status=0)
    return k8s_client.ApiClient(configuration=cfg)


def _status_of(exc: ApiException) -> tuple[str, str]:
    """(reason, message) of an apiserver Status body, as far as it parses."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return str(body.get("reason") or exc.reason or ""), str(body.get("message") or "")


def _too_long(exc: ApiException) -> bool:
    try:
        causes = json.loads(exc.body or "{}").get("details", {}).get("causes") or []
    except (ValueError, AttributeError):
        return False
    return any(c.get("reason") == "FieldValueTooLong" for c in causes if isinstance(c, dict))


def meta_of(cm: ConfigMap | None) -> dict[str, Any] | None:
    """Our metadata in a ConfigMap, or None when it holds none (missing, empty, foreign)."""
    if cm is None or not cm.data or META_KEY not in cm.data:
        return None
    try:
        meta = json.loads(cm.data[META_KEY])
    except ValueError as exc:
        raise MirrorError(f"configmap {cm.metadata.name}: {META_KEY} is not JSON") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MirrorError(
            f"configmap {cm.metadata.name}: unknown mirror format "
            f"{meta.get('format') if isinstance(meta, dict) else meta!r}"
        )
    return meta


def _compact(meta: dict[str, Any]) -> str:
    return json.dumps(meta, separators=(",", ":"))


class ConfigMaps:
    """The head ``name`` and the slots of one mirror in ``namespace``; counts the writes."""

    def __init__(self, namespace: str, name: str, api_client: k8s_client.ApiClient,
                 timeout: float) -> None:
        self.namespace = namespace
        self.name = name
        self.timeout = timeout
        self._core = k8s_client.CoreV1Api(api_client)
        # label values are at most 63 characters: long names are hashed
        self._label = name if len(name) <= 63 else hashlib.sha256(name.encode()).hexdigest()[:63]
        self.writes = 0  # write requests made (the caller resets it per save)

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one API call; 404 and 409 ApiExceptions are left to the caller."""
        try:
            return fn(*args, _request_timeout=self.timeout, **kwargs)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise
            reason, message = _status_of(exc)
            if exc.status == 422 and _too_long(exc):
                raise MirrorTooLarge(
                    f"{what}: apiserver refused the ConfigMap as too large: {message}"
                ) from exc
            raise MirrorError(
                f"{what}: apiserver answered {exc.status} {reason}: {message}".rstrip(": "),
                status=exc.status or None,
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as exc:
            raise MirrorError(f"{what}: Kubernetes API unreachable: {exc}") from exc

    def _write(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.writes += 1
        return self._call(what, fn, *args, **kwargs)

    def read(self, name: str) -> ConfigMap | None:
        try:
            return self._call(
                f"get configmap {self.namespace}/{name}",
                self._core.read_namespaced_config_map,
                name,
                self.namespace,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise MirrorError(f"get configmap {self.namespace}/{name}: {exc.status}") from exc

    def _labels(self, role: str) -> dict[str, str]:
        return {MIRROR_LABEL: self._label, MANAGED_LABEL: MANAGED_BY, ROLE_LABEL: role}

    def put_head(self, head: ConfigMap | None, meta: dict[str, Any], part: str | None
                 ) -> ConfigMap:
        """Create the head (head is None) or replace all of it, resourceVersion as the
        compare-and-swap; keeps foreign labels and annotations."""
        labels = dict(head.metadata.labels or {}) if head is not None else {}
        labels.update(self._labels("head"))
        metadata: dict[str, Any] = {"name": self.name, "labels": labels}
        if head is not None:
            metadata["resourceVersion"] = head.metadata.resource_version
            if head.metadata.annotations:
                metadata["annotations"] = head.metadata.annotations
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": {META_KEY: _compact(meta)},
        }
        if part is not None:
            body["binaryData"] = {HEAD_PART_KEY: part}
        where = f"configmap {self.namespace}/{self.name}"
        if head is None:
            return self._write(
                f"create {where}", self._core.create_namespaced_config_map, self.namespace, body
            )
        return self._write(
            f"replace {where}",
            self._core.replace_namespaced_config_map,
            self.name,
            self.namespace,
            body,
        )

    def patch_meta(self, head: ConfigMap, meta: dict[str, Any], verb: str) -> ConfigMap:
        """Replace only the head's metadata (a small merge patch: the payload stays),
        resourceVersion as the compare-and-swap."""
        patch = {
            "metadata": {"resourceVersion": head.metadata.resource_version},
            "data": {META_KEY: _compact(meta)},
        }
        return self._write(
            f"{verb} configmap {self.namespace}/{self.name}",
            self._core.patch_namespaced_config_map,
            self.name,
            self.namespace,
            patch,
            _content_type=MERGE_PATCH,
        )

    def write_slot(
        self,
        slot: str,
        token: str | None,
        index: int,
        count: int,
        chunk: bytes | None,
        *,
        exists: bool = True,
    ) -> None:
        """Replace a slot ConfigMap, or create it (first when it is not known to exist);
        chunk None blanks it."""
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": slot, "labels": self._labels("shard")},
            "data": {
                META_KEY: json.dumps(
                    {
                        "format": FORMAT,
                        "of": self.name,
                        "token": token,
                        "index": index,
                        "count": count,
                    }
                )
            },
        }
        if chunk is not None:
            body["binaryData"] = {SHARD_PART_KEY: base64.b64encode(chunk).decode("ascii")}
        where = f"configmap {self.namespace}/{slot}"
        for attempt in range(3):
            if exists or attempt:
                try:
                    self._write(
                        f"replace {where}",
                        self._core.replace_namespaced_config_map,
                        slot,
                        self.namespace,
                        body,
                    )
                    return
                except ApiException as exc:
                    if exc.status != 404:
                        raise MirrorError(
                            f"replace {where}: {exc.status}", status=exc.status
                        ) from exc
            if chunk is None:
                return  # nothing to blank
            try:
                self._write(
                    f"create {where}", self._core.create_namespaced_config_map, self.namespace, body
                )
                return
            except ApiException as exc:  # 409 AlreadyExists: created meanwhile, replace it
                if exc.status != 409:
                    raise MirrorError(f"create {where}: {exc.status}", status=exc.status) from exc
        raise MirrorError(f"cannot write {where}: it keeps appearing and disappearing")
