"""Durable mirror of the lease ledger: Kubernetes ConfigMap(s), or a local JSON file.

The ledger hands over a snapshot (a JSON-able dict; treated as opaque) and gets back the number
of API writes it took. ``load()`` returns the last complete snapshot, or None.

ConfigMap layout (``namespace/name``):

* the *head* ConfigMap ``name``: ``data["mirror.json"]`` = {format, generation, encoding,
  sha256, bytes, raw_bytes, token, shards, version, saved_at} and ``binaryData["part-0"]`` =
  the first chunk of the encoded payload (compact JSON, zlib-compressed);
* when the payload does not fit in one ConfigMap, the rest goes to *shard* ConfigMaps named
  ``{name}-{token}-{i}`` (``token`` is unique per save), written before the head;
* the head is replaced with optimistic concurrency (resourceVersion, re-read on 409 Conflict),
  created when missing (409 AlreadyExists → re-read); shards of the replaced head are deleted.

A save is therefore atomic: readers start from the head, and a head only ever names shards that
were fully written for it; shard names are never reused, and ``load()`` checks the sha256 of
the reassembled payload, re-reading the head if shards vanished under it (a newer save).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import random
import re
import secrets
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

FORMAT = 1
ENCODING = "json+zlib"
META_KEY = "mirror.json"
HEAD_PART_KEY = "part-0"
SHARD_PART_KEY = "part"
MIRROR_LABEL = "vsphere-capacity-manager/mirror-of"
ROLE_LABEL = "vsphere-capacity-manager/mirror-role"  # head | shard
MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "vsphere-capacity-manager"

CONFIGMAP_LIMIT = 1_048_576  # apiserver: data + binaryData (keys and decoded values)
DEFAULT_SHARD_BYTES = CONFIGMAP_LIMIT - 32 * 1024  # room for keys and the head's meta
DEFAULT_MAX_SHARDS = 16  # ConfigMaps per mirror, head included
_SHARD_SUFFIX_MAX = 1 + 8 + 1 + 3  # "-{token}-{i}"
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

T = TypeVar("T")


class MirrorError(Exception):
    """The mirror could not be written or read (network, timeout, 5xx, damaged data)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # HTTP status when the apiserver answered


class MirrorTooLarge(MirrorError):
    """The snapshot does not fit even when sharded; nothing was written."""

    def __init__(
        self, message: str, *, encoded_bytes: int = 0, raw_bytes: int = 0, needed: int = 0
    ) -> None:
        super().__init__(message)
        self.encoded_bytes = encoded_bytes
        self.raw_bytes = raw_bytes
        self.needed = needed


@dataclass(frozen=True)
class SaveStats:
    """What the last save did (for metrics and logs)."""

    writes: int  # API write requests made (including ones answered 409)
    raw_bytes: int  # compact JSON size
    encoded_bytes: int  # compressed size
    configmaps: int  # head + shards holding this snapshot
    generation: int  # head generation after the save (0 for the file mirror)
    skipped: bool  # True when the mirror already held exactly this snapshot
    seconds: float


def encode_snapshot(snapshot: dict[str, Any], level: int = 6) -> tuple[bytes, int]:
    """Compact JSON then zlib; returns (blob, raw JSON size)."""
    if not isinstance(snapshot, dict):
        raise TypeError(f"snapshot must be a dict, not {type(snapshot).__name__}")
    raw = json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return zlib.compress(raw, level), len(raw)


def decode_snapshot(blob: bytes) -> dict[str, Any]:
    try:
        snapshot = json.loads(zlib.decompress(blob))
    except (zlib.error, ValueError) as exc:
        raise MirrorError(f"mirror payload does not decode: {exc}") from exc
    if not isinstance(snapshot, dict):
        raise MirrorError("mirror payload is not a JSON object")
    return snapshot


def backoff_delays(base: float = 0.2, cap: float = 10.0) -> Any:
    """Endless 'full jitter' exponential backoff delays: uniform(0, min(cap, base * 2**n))."""
    attempt = 0
    while True:
        yield random.uniform(0, min(cap, base * (2**attempt)))
        attempt += 1


def retry_backoff(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base: float = 0.2,
    cap: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, MirrorError, float], None] | None = None,
) -> T:
    """Call fn, retrying MirrorError (not MirrorTooLarge: retrying cannot help) with backoff."""
    delays = backoff_delays(base, cap)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except MirrorTooLarge:
            raise
        except MirrorError as exc:
            if attempt == attempts:
                raise
            delay = next(delays)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def _default_api_client() -> k8s_client.ApiClient:
    """In-cluster service account, else kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)
    except k8s_config.ConfigException as in_cluster:
        try:
            # $KUBECONFIG is read now (the library reads it once, at import time)
            k8s_config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg
            )
        except (k8s_config.ConfigException, OSError) as kubeconfig:
            raise MirrorError(
                f"no Kubernetes configuration: not in a cluster ({in_cluster}) and no usable "
                f"kubeconfig ({kubeconfig})"
            ) from kubeconfig
    # Our caller retries with backoff: do not let urllib3 silently repeat timed-out requests.
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


class ConfigMapMirror:
    """The ledger snapshot in ConfigMap ``namespace/name`` (plus shards), compressed."""

    def __init__(
        self,
        namespace: str,
        name: str,
        api_client: k8s_client.ApiClient | None = None,
        timeout: float = 5.0,
        *,
        max_shards: int = DEFAULT_MAX_SHARDS,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        compress_level: int = 6,
        max_conflict_retries: int = 20,
    ) -> None:
        if not _DNS1123_LABEL.match(namespace or "") or len(namespace) > 63:
            raise ValueError(f"invalid namespace {namespace!r}")
        if not _DNS1123_SUBDOMAIN.match(name or "") or len(name) > 253 - _SHARD_SUFFIX_MAX:
            raise ValueError(
                f"invalid ConfigMap name {name!r} (DNS-1123 subdomain, at most "
                f"{253 - _SHARD_SUFFIX_MAX} characters)"
            )
        if not 1 <= max_shards <= 999:
            raise ValueError("max_shards must be within 1..999")
        if not 1024 <= shard_bytes <= CONFIGMAP_LIMIT - 16 * 1024:
            raise ValueError(f"shard_bytes must be within 1024..{CONFIGMAP_LIMIT - 16 * 1024}")
        self.namespace = namespace
        self.name = name
        self.timeout = timeout
        self.max_shards = max_shards
        self.shard_bytes = shard_bytes
        self.compress_level = compress_level
        self.max_conflict_retries = max_conflict_retries
        self._own_client = api_client is None
        self.api_client = api_client if api_client is not None else _default_api_client()
        self._core = k8s_client.CoreV1Api(self.api_client)
        # label values are at most 63 characters: long names are hashed
        self._label = name if len(name) <= 63 else hashlib.sha256(name.encode()).hexdigest()[:63]
        self._pending_cleanup: set[str] = set()  # shards we wrote that no head may reference
        self.last_stats: SaveStats | None = None

    def __repr__(self) -> str:
        return f"ConfigMapMirror({self.namespace}/{self.name})"

    def close(self) -> None:
        if self._own_client:
            self.api_client.close()

    def __enter__(self) -> ConfigMapMirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- API calls: transport failures and unexpected answers become MirrorError -------------

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

    def _read(self, name: str) -> k8s_client.V1ConfigMap | None:
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

    @staticmethod
    def _meta_of(cm: k8s_client.V1ConfigMap | None) -> dict[str, Any] | None:
        """Our metadata in a ConfigMap, or None when it holds no mirror (empty or foreign)."""
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

    def _labels(self, role: str) -> dict[str, str]:
        return {MIRROR_LABEL: self._label, MANAGED_LABEL: MANAGED_BY, ROLE_LABEL: role}

    # ---- save ------------------------------------------------------------------------------

    def save(self, snapshot: dict[str, Any]) -> int:
        """Write the snapshot; returns the number of API write requests made.

        Raises MirrorTooLarge (nothing written) when it cannot fit in max_shards ConfigMaps and
        MirrorError on network errors, timeouts and 5xx (the mirror then still holds a complete
        earlier snapshot; retry later).
        """
        started = time.monotonic()
        blob, raw_bytes = encode_snapshot(snapshot, self.compress_level)
        chunks = [blob[i : i + self.shard_bytes] for i in range(0, len(blob), self.shard_bytes)]
        chunks = chunks or [b""]
        if len(chunks) > self.max_shards:
            raise MirrorTooLarge(
                f"mirror {self.namespace}/{self.name}: snapshot is {raw_bytes} bytes of JSON, "
                f"{len(blob)} compressed; that needs {len(chunks)} ConfigMaps of "
                f"{self.shard_bytes} bytes but at most {self.max_shards} are allowed",
                encoded_bytes=len(blob),
                raw_bytes=raw_bytes,
                needed=len(chunks),
            )
        digest = hashlib.sha256(blob).hexdigest()
        head = self._read(self.name)
        head_meta = self._meta_of(head)
        if head_meta is not None and head_meta.get("sha256") == digest:
            self._finish(0, raw_bytes, blob, len(chunks), head_meta["generation"], True, started)
            return 0

        writes = 0
        token = secrets.token_hex(4)
        shard_names = [f"{self.name}-{token}-{i}" for i in range(1, len(chunks))]
        try:
            for index, (shard, chunk) in enumerate(zip(shard_names, chunks[1:], strict=True), 1):
                self._pending_cleanup.add(shard)  # until a head names it
                writes += 1
                self._create_shard(shard, token, index, len(chunks), chunk)
            writes, head, generation = self._write_head(
                head, writes, token, digest, blob, raw_bytes, chunks[0], shard_names, snapshot
            )
        except MirrorError:
            self.last_stats = None
            raise
        self._pending_cleanup.difference_update(shard_names)
        # shards of the head we replaced, and leftovers of our failed saves, are now unreferenced
        old_shards = set((self._meta_of(head) or {}).get("shards") or []) if head else set()
        writes += self._delete_shards((old_shards | self._pending_cleanup) - set(shard_names))[0]
        self._finish(writes, raw_bytes, blob, len(chunks), generation, False, started)
        return writes

    def _finish(
        self,
        writes: int,
        raw_bytes: int,
        blob: bytes,
        configmaps: int,
        generation: int,
        skipped: bool,
        started: float,
    ) -> None:
        self.last_stats = SaveStats(
            writes=writes,
            raw_bytes=raw_bytes,
            encoded_bytes=len(blob),
            configmaps=configmaps,
            generation=generation,
            skipped=skipped,
            seconds=time.monotonic() - started,
        )

    def _create_shard(self, shard: str, token: str, index: int, count: int, chunk: bytes) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": shard, "labels": self._labels("shard")},
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
            "binaryData": {SHARD_PART_KEY: base64.b64encode(chunk).decode("ascii")},
        }
        try:
            self._call(
                f"create shard {self.namespace}/{shard}",
                self._core.create_namespaced_config_map,
                self.namespace,
                body,
            )
        except ApiException as exc:  # 409: a name we never reuse already exists
            raise MirrorError(
                f"create shard {self.namespace}/{shard}: {exc.status} {_status_of(exc)[0]}",
                status=exc.status,
            ) from exc

    def _write_head(
        self,
        head: k8s_client.V1ConfigMap | None,
        writes: int,
        token: str,
        digest: str,
        blob: bytes,
        raw_bytes: int,
        first_chunk: bytes,
        shard_names: list[str],
        snapshot: dict[str, Any],
    ) -> tuple[int, k8s_client.V1ConfigMap | None, int]:
        """Create or replace the head (re-reading on 409); returns (writes, replaced head, gen)."""
        part = base64.b64encode(first_chunk).decode("ascii")
        version = snapshot.get("version")
        for _ in range(self.max_conflict_retries):
            prev_meta = self._meta_of(head) or {}
            generation = int(prev_meta.get("generation") or 0) + 1
            meta = {
                "format": FORMAT,
                "generation": generation,
                "encoding": ENCODING,
                "sha256": digest,
                "bytes": len(blob),
                "raw_bytes": raw_bytes,
                "token": token,
                "shards": shard_names,
                "version": version if isinstance(version, int | str) else None,
                "saved_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            labels = dict(head.metadata.labels or {}) if head is not None else {}
            labels.update(self._labels("head"))
            metadata: dict[str, Any] = {"name": self.name, "labels": labels}
            if head is not None:
                metadata["resourceVersion"] = head.metadata.resource_version
                if head.metadata.annotations:
                    metadata["annotations"] = head.metadata.annotations
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": metadata,
                "data": {META_KEY: json.dumps(meta, separators=(",", ":"))},
                "binaryData": {HEAD_PART_KEY: part},
            }
            writes += 1
            try:
                if head is None:
                    self._call(
                        f"create configmap {self.namespace}/{self.name}",
                        self._core.create_namespaced_config_map,
                        self.namespace,
                        body,
                    )
                else:
                    self._call(
                        f"replace configmap {self.namespace}/{self.name}",
                        self._core.replace_namespaced_config_map,
                        self.name,
                        self.namespace,
                        body,
                    )
                return writes, head, generation
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise MirrorError(f"write head: {exc.status}", status=exc.status) from exc
                # 409 Conflict / AlreadyExists, or 404 (deleted meanwhile): re-read and retry
                head = self._read(self.name)
        raise MirrorError(
            f"mirror {self.namespace}/{self.name}: still conflicting after "
            f"{self.max_conflict_retries} attempts",
            status=409,
        )

    def _delete_shards(self, names: set[str]) -> tuple[int, int]:
        """Best effort: a failed delete is retried after the next save (or by gc()).
        Returns (write requests made, shards gone)."""
        writes = gone = 0
        for shard in sorted(names):
            writes += 1
            try:
                self._call(
                    f"delete shard {self.namespace}/{shard}",
                    self._core.delete_namespaced_config_map,
                    shard,
                    self.namespace,
                )
            except ApiException as exc:
                if exc.status != 404:
                    self._pending_cleanup.add(shard)
                    continue
            except MirrorError:
                self._pending_cleanup.add(shard)
                continue
            self._pending_cleanup.discard(shard)
            gone += 1
        return writes, gone

    def gc(self, min_age: float = 600.0) -> int:
        """Delete shards of this mirror that the head does not name and that are older than
        min_age seconds (younger ones may belong to a save in progress). Needs the `list`
        verb. Returns the number of shards removed."""
        head_meta = self._meta_of(self._read(self.name)) or {}
        keep = set(head_meta.get("shards") or [])
        listing = self._call(
            f"list configmaps {self.namespace}",
            self._core.list_namespaced_config_map,
            self.namespace,
            label_selector=f"{MIRROR_LABEL}={self._label},{ROLE_LABEL}=shard",
        )
        now = datetime.now(UTC)
        stale = set()
        for item in listing.items:
            created = item.metadata.creation_timestamp
            old_enough = created is None or (now - created).total_seconds() >= min_age
            if item.metadata.name not in keep and old_enough:
                stale.add(item.metadata.name)
        return self._delete_shards(stale)[1]

    # ---- load ------------------------------------------------------------------------------

    def load(self) -> dict[str, Any] | None:
        """The last complete snapshot, or None when there is no mirror yet."""
        last_rv = None
        for _ in range(10):
            head = self._read(self.name)
            meta = self._meta_of(head)
            if meta is None:
                return None
            if meta.get("encoding") != ENCODING:
                raise MirrorError(f"mirror {self.name}: unknown encoding {meta.get('encoding')}")
            parts = [base64.b64decode((head.binary_data or {}).get(HEAD_PART_KEY, ""))]
            problem = None
            for shard_name in meta.get("shards") or []:
                shard = self._read(shard_name)
                shard_meta = self._meta_of(shard)
                if shard_meta is None or shard_meta.get("token") != meta.get("token"):
                    problem = f"shard {shard_name} is missing or belongs to another save"
                    break
                parts.append(base64.b64decode((shard.binary_data or {}).get(SHARD_PART_KEY, "")))
            blob = b"".join(parts)
            if problem is None and hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
                problem = "sha256 of the payload does not match the head"
            if problem is None:
                return decode_snapshot(blob)
            rv = head.metadata.resource_version
            if rv == last_rv:  # the head did not move: the mirror is damaged
                raise MirrorError(f"mirror {self.namespace}/{self.name} is damaged: {problem}")
            last_rv = rv  # a newer save replaced the shards while we read: start again
        raise MirrorError(f"mirror {self.namespace}/{self.name}: no consistent read (busy)")


class FileMirror:
    """The snapshot as a local JSON file, replaced atomically (temp file, fsync, rename)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.last_stats: SaveStats | None = None

    def __repr__(self) -> str:
        return f"FileMirror({str(self.path)!r})"

    def save(self, snapshot: dict[str, Any]) -> int:
        """Write the snapshot atomically; returns 1 (one file write)."""
        started = time.monotonic()
        if not isinstance(snapshot, dict):
            raise TypeError(f"snapshot must be a dict, not {type(snapshot).__name__}")
        raw = json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(raw)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise MirrorError(f"cannot write mirror file {self.path}: {exc}") from exc
        self._remove_stale_temps()
        self.last_stats = SaveStats(1, len(raw), len(raw), 1, 0, False, time.monotonic() - started)
        return 1

    def _remove_stale_temps(self, min_age: float = 300.0) -> None:
        """Temp files left by a writer killed mid-save (old enough not to be in progress)."""
        now = time.time()
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                if now - leftover.stat().st_mtime > min_age:
                    leftover.unlink()

    def load(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MirrorError(f"cannot read mirror file {self.path}: {exc}") from exc
        try:
            snapshot = json.loads(raw)
        except ValueError as exc:
            raise MirrorError(f"mirror file {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(snapshot, dict):
            raise MirrorError(f"mirror file {self.path} does not hold a JSON object")
        return snapshot


def mirror_from_env(
    configmap: str | None,
    path: str,
    *,
    api_client: k8s_client.ApiClient | None = None,
    timeout: float = 5.0,
) -> ConfigMapMirror | FileMirror:
    """VCM_CONFIGMAP ("namespace/name") → ConfigMapMirror; unset or empty → FileMirror(path)."""
    if configmap is None or not configmap.strip():
        return FileMirror(path)
    namespace, sep, name = configmap.strip().partition("/")
    if (
        not sep
        or "/" in name
        or not _DNS1123_LABEL.match(namespace)
        or len(namespace) > 63
        or not _DNS1123_SUBDOMAIN.match(name)
        or len(name) > 253 - _SHARD_SUFFIX_MAX
    ):
        raise ValueError(
            f"VCM_CONFIGMAP must be 'namespace/name' (a DNS-1123 namespace and ConfigMap "
            f"name), got {configmap!r}"
        )
    return ConfigMapMirror(namespace, name, api_client=api_client, timeout=timeout)


__all__ = [
    "ConfigMapMirror",
    "FileMirror",
    "MirrorError",
    "MirrorTooLarge",
    "SaveStats",
    "backoff_delays",
    "decode_snapshot",
    "encode_snapshot",
    "mirror_from_env",
    "retry_backoff",
]
