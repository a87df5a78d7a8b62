"""Durable mirror of the lease ledger: Kubernetes ConfigMap(s), or a local JSON file.

The ledger hands over a snapshot (a JSON-able dict, treated as opaque) and gets back the number
of API writes it took. ``load()`` returns the last complete snapshot, or None.

ConfigMap layout, for ``VCM_CONFIGMAP=namespace/name`` (fixed names, so that RBAC can list them
in resourceNames; only get, create, update and patch are used, never delete or list):

* the *head* ``name``: ``data["mirror.json"]`` is the metadata (format, generation, encoding,
  sha256 of the payload, token of the save, the shard ConfigMaps it uses, stale slots, the
  writer's reservation) and ``binaryData["part-0"]`` the first chunk of the payload (compact
  JSON, zlib-compressed);
* *slots* ``name-0`` … ``name-{max_shards-1}``: the rest of the payload when it does not fit
  in the head, ``binaryData["part"]`` plus ``data["mirror.json"]`` naming the save (token).

A sharded save is double-buffered and atomic: (1) reserve free slots in the head (a
compare-and-swap on resourceVersion; the reservation is also the writers' lock, taken over
when older than ``lock_ttl``), (2) write the shards into slots the committed save does not use,
(3) commit the head (new payload metadata, first chunk, reservation cleared) with a
compare-and-swap. A save that fits in the head is a single compare-and-swap. Readers start from
the head, check that every shard carries the head's token and that the sha256 of the whole
payload matches, so they never combine two saves; a crash at any point leaves the previous save
readable. Hence one save uses at most ``max_shards // 2`` slots.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import os
import random
import re
import secrets
import socket
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
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
MERGE_PATCH = "application/merge-patch+json"

CONFIGMAP_LIMIT = 1_048_576  # apiserver: data + binaryData (keys and decoded values)
DEFAULT_SHARD_BYTES = CONFIGMAP_LIMIT - 32 * 1024  # room for keys and the head's metadata
DEFAULT_MAX_SHARDS = 16  # slot ConfigMaps name-0 .. name-15 (deploy/rbac.yaml lists them)
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 253 - 4  # room for "-NNN"

T = TypeVar("T")


class MirrorError(Exception):
    """The mirror could not be written or read (network, timeout, 5xx, busy, damaged data)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # HTTP status when the apiserver answered


class MirrorSuperseded(MirrorError):
    """The mirror already holds a newer seq of the same ledger; nothing was written.

    Not a failure: everything up to ``held`` (so up to ``seq`` too) is in the mirror. Another
    writer of the same ledger got there first; retrying this snapshot cannot succeed."""

    def __init__(self, where: str, seq: int, held: int) -> None:
        super().__init__(f"{where} already holds seq {held}, newer than this save's {seq}: "
                         "left as it is")
        self.seq = seq
        self.held = held


class MirrorTooLarge(MirrorError):
    """The snapshot does not fit even when sharded; nothing was written."""

    def __init__(
        self, message: str, *, encoded_bytes: int = 0, raw_bytes: int = 0, needed: int = 0
    ) -> None:
        super().__init__(message)
        self.encoded_bytes = encoded_bytes
        self.raw_bytes = raw_bytes
        self.needed = needed  # ConfigMaps (head included) the payload would need


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
    set_aside: tuple[str, ...] = ()  # ids of leases that cannot be encoded, left out


def _seq_of(snapshot: dict[str, Any]) -> int | None:
    seq = snapshot.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _epoch_of(snapshot: dict[str, Any]) -> str | None:
    epoch = snapshot.get("epoch")
    return epoch if isinstance(epoch, str) else None


def newer_than(held: dict[str, Any] | None, snapshot: dict[str, Any]) -> int | None:
    """The seq of ``held`` (what the mirror holds: a snapshot or a head's metadata) when it is
    above the snapshot's and of the same ledger (epoch, or neither has one); else None:
    writing may go ahead. Seqs of two different Redis ledgers say nothing about which is
    newer (Redis replaced by another ledger that wins, a deliberate reset): the writer wins."""
    if not held:
        return None
    old, new = _seq_of(held), _seq_of(snapshot)
    if old is None or new is None or old <= new:
        return None
    return old if _epoch_of(held) == _epoch_of(snapshot) else None


def _lease_id(lease: Any) -> str:
    try:
        return str(lease["metadata"]["name"])
    except (TypeError, KeyError):
        return repr(lease)[:80]


def encode_json(snapshot: dict[str, Any]) -> tuple[bytes, list[str]]:
    """Compact UTF-8 JSON of the snapshot, and the ids of the leases left out of it because
    they cannot be encoded (a lone surrogate in a string): one bad record must not stop the
    whole ledger from being mirrored. The caller reports them."""
    if not isinstance(snapshot, dict):
        raise TypeError(f"snapshot must be a dict, not {type(snapshot).__name__}")
    try:
        return json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False).encode(), []
    except UnicodeEncodeError:
        leases = snapshot.get("leases")
        if not isinstance(leases, list):
            raise
    kept, aside = [], []
    for lease in leases:
        try:
            json.dumps(lease, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            aside.append(_lease_id(lease))
        else:
            kept.append(lease)
    raw = json.dumps({**snapshot, "leases": kept}, separators=(",", ":"),
                     ensure_ascii=False).encode()
    return raw, aside


def encode_snapshot(snapshot: dict[str, Any], level: int = 6) -> tuple[bytes, int]:
    """Compact JSON then zlib; returns (blob, raw JSON size). See encode_json."""
    raw, _ = encode_json(snapshot)
    return zlib.compress(raw, level), len(raw)


def decode_snapshot(blob: bytes) -> dict[str, Any]:
    try:
        snapshot = json.loads(zlib.decompress(blob))
    except (zlib.error, ValueError) as exc:
        raise MirrorError(f"mirror payload does not decode: {exc}") from exc
    if not isinstance(snapshot, dict):
        raise MirrorError("mirror payload is not a JSON object")
    return snapshot


def backoff_delays(base: float = 0.2, cap: float = 10.0) -> Iterator[float]:
    """Endless 'full jitter' exponential backoff: uniform(0, min(cap, base * 2**n))."""
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
    """Call fn, retrying MirrorError (not MirrorTooLarge or MirrorSuperseded: retrying cannot
    help) with backoff."""
    delays = backoff_delays(base, cap)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (MirrorTooLarge, MirrorSuperseded):
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


def _empty_meta() -> dict[str, Any]:
    """Head metadata with no committed save yet."""
    return {
        "format": FORMAT,
        "generation": 0,
        "encoding": ENCODING,
        "sha256": None,
        "token": None,
        "shards": [],
        "stale": [],
        "pending": None,
    }


class ConfigMapMirror:
    """The ledger snapshot in ConfigMap ``namespace/name`` (plus slot shards), compressed."""

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
        lock_ttl: float | None = None,
        lock_wait: float | None = None,
        max_conflict_retries: int = 50,
    ) -> None:
        if not _DNS1123_LABEL.match(namespace or "") or len(namespace) > 63:
            raise ValueError(f"invalid namespace {namespace!r}")
        if not _DNS1123_SUBDOMAIN.match(name or "") or len(name) > _MAX_NAME:
            raise ValueError(
                f"invalid ConfigMap name {name!r} (DNS-1123 subdomain, at most {_MAX_NAME} "
                "characters)"
            )
        if not 0 <= max_shards <= 999:
            raise ValueError("max_shards must be within 0..999")
        if not 1024 <= shard_bytes <= CONFIGMAP_LIMIT - 16 * 1024:
            raise ValueError(f"shard_bytes must be within 1024..{CONFIGMAP_LIMIT - 16 * 1024}")
        self.namespace = namespace
        self.name = name
        self.timeout = timeout
        self.max_shards = max_shards
        self.shard_bytes = shard_bytes
        self.compress_level = compress_level
        # a reservation older than lock_ttl is abandoned; its holder stops writing shards
        # at lock_ttl / 2, and each request takes at most `timeout`, so lock_ttl > 2 * timeout
        self.lock_ttl = lock_ttl if lock_ttl is not None else max(30.0, 4 * timeout)
        if self.lock_ttl <= 2 * timeout:
            raise ValueError("lock_ttl must be more than twice the request timeout")
        self.lock_wait = lock_wait if lock_wait is not None else self.lock_ttl + timeout
        self.max_conflict_retries = max_conflict_retries
        self.slots = [f"{name}-{i}" for i in range(max_shards)]
        self.writer_id = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        self._own_client = api_client is None
        self.api_client = api_client if api_client is not None else _default_api_client()
        self._core = k8s_client.CoreV1Api(self.api_client)
        # label values are at most 63 characters: long names are hashed
        self._label = name if len(name) <= 63 else hashlib.sha256(name.encode()).hexdigest()[:63]
        self._save_lock = threading.Lock()  # one save at a time per instance
        self._writes = 0
        self._set_aside: tuple[str, ...] = ()
        self.lock_waits = 0  # times a save waited for another writer's reservation
        self.last_stats: SaveStats | None = None

    @property
    def max_configmaps(self) -> int:
        """ConfigMaps one snapshot may use: the head plus half of the slots."""
        return 1 + self.max_shards // 2

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

    def _write(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._writes += 1
        return self._call(what, fn, *args, **kwargs)

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

    def _labels(self, role: str) -> dict[str, str]:
        return {MIRROR_LABEL: self._label, MANAGED_LABEL: MANAGED_BY, ROLE_LABEL: role}

    def _head_body(
        self, head: k8s_client.V1ConfigMap | None, meta: dict[str, Any], part: str | None
    ) -> dict[str, Any]:
        """A full head object (keeps foreign labels/annotations; resourceVersion as CAS)."""
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
            "data": {META_KEY: json.dumps(meta, separators=(",", ":"))},
        }
        if part is not None:
            body["binaryData"] = {HEAD_PART_KEY: part}
        return body

    def _put_head(
        self, head: k8s_client.V1ConfigMap | None, body: dict[str, Any]
    ) -> k8s_client.V1ConfigMap:
        """Create (head is None) or replace with CAS; ApiException 404/409 go to the caller."""
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

    # ---- save ------------------------------------------------------------------------------

    def save(self, snapshot: dict[str, Any]) -> int:
        """Write the snapshot; returns the number of API write requests made.

        Raises MirrorSuperseded (nothing written) when the head holds a higher ``seq`` of the
        same ledger (``epoch``): checked with every compare-and-swap, so a save that lost a
        race never puts an older snapshot over a newer one. Raises MirrorTooLarge (nothing
        written) when the payload needs more than ``max_configmaps`` ConfigMaps, and
        MirrorError on network errors, timeouts, 5xx or when another writer holds the mirror
        longer than ``lock_wait``: the mirror then still holds a complete earlier snapshot;
        retry later. Leases that cannot be encoded are left out (``last_stats.set_aside``).
        """
        with self._save_lock:
            started = time.monotonic()
            self._writes = 0
            self.last_stats = None
            raw, aside = encode_json(snapshot)
            blob, raw_bytes = zlib.compress(raw, self.compress_level), len(raw)
            self._set_aside = tuple(aside)
            size = self.shard_bytes
            chunks = [blob[i : i + size] for i in range(0, len(blob), size)] or [b""]
            if len(chunks) > self.max_configmaps:
                raise MirrorTooLarge(
                    f"mirror {self.namespace}/{self.name}: snapshot is {raw_bytes} bytes of "
                    f"JSON, {len(blob)} compressed; that needs {len(chunks)} ConfigMaps of "
                    f"{size} bytes, at most {self.max_configmaps} are allowed "
                    f"(head + {self.max_shards} slots / 2)",
                    encoded_bytes=len(blob),
                    raw_bytes=raw_bytes,
                    needed=len(chunks),
                )
            digest = hashlib.sha256(blob).hexdigest()
            head = self._read(self.name)
            meta = self._meta_of(head)
            if meta is not None and meta.get("sha256") == digest:
                self._finish(raw_bytes, blob, len(chunks), meta["generation"], True, started)
                return 0
            token = secrets.token_hex(8)
            payload = {
                "sha256": digest,
                "bytes": len(blob),
                "raw_bytes": raw_bytes,
                "token": token,
                "seq": _seq_of(snapshot),  # compared by every later save
                "epoch": _epoch_of(snapshot),
            }
            self._refuse_older(meta, payload)
            if len(chunks) == 1 and not (meta or {}).get("stale"):
                generation = self._commit(head, payload, chunks[0], [], [], locked=False)
            else:
                generation = self._save_locked(head, payload, chunks)
            self._finish(raw_bytes, blob, len(chunks), generation, False, started)
            return self._writes

    def _refuse_older(self, meta: dict[str, Any] | None, payload: dict[str, Any]) -> None:
        held = newer_than(meta, payload)
        if held is not None:
            raise MirrorSuperseded(f"mirror {self.namespace}/{self.name}", payload["seq"], held)

    def _finish(
        self,
        raw_bytes: int,
        blob: bytes,
        configmaps: int,
        generation: int,
        skipped: bool,
        started: float,
    ) -> None:
        self.last_stats = SaveStats(
            writes=self._writes,
            raw_bytes=raw_bytes,
            encoded_bytes=len(blob),
            configmaps=configmaps,
            generation=generation,
            skipped=skipped,
            seconds=time.monotonic() - started,
            set_aside=self._set_aside,
        )

    def _save_locked(
        self, head: k8s_client.V1ConfigMap | None, payload: dict[str, Any], chunks: list[bytes]
    ) -> int:
        """Reserve slots, write shards, blank stale slots, commit."""
        token = payload["token"]
        head, slots, reserved_at = self._reserve(head, payload, len(chunks) - 1)

        def check_lock() -> None:  # past lock_ttl / 2 another writer may take the mirror over
            if time.monotonic() - reserved_at > self.lock_ttl / 2:
                raise MirrorError(
                    f"mirror {self.namespace}/{self.name}: save took longer than "
                    f"{self.lock_ttl / 2:.0f}s, giving up the reservation"
                )

        meta = self._meta_of(head) or {}
        existing = set(meta.get("stale") or []) | set(meta.get("shards") or [])
        for index, (slot, chunk) in enumerate(zip(slots, chunks[1:], strict=True), 1):
            check_lock()
            self._write_slot(slot, token, index, len(chunks), chunk, exists=slot in existing)
        # slots left over from larger snapshots: blank them, except the ones the next saves
        # of this size will alternate with (slots are taken lowest first)
        blanked = []
        for slot in meta.get("stale") or []:
            if (
                slot not in slots
                and slot in self.slots
                and self.slots.index(slot) >= 2 * len(slots)
            ):
                check_lock()
                self._write_slot(slot, None, 0, 0, None)
                blanked.append(slot)
        return self._commit(head, payload, chunks[0], slots, blanked, locked=True)

    def _reserve(
        self, head: k8s_client.V1ConfigMap | None, payload: dict[str, Any], count: int
    ) -> tuple[k8s_client.V1ConfigMap, list[str], float]:
        """Record our reservation of `count` free slots in the head (CAS); the reservation is
        the writers' lock. Waits for a live reservation of another writer up to lock_wait.
        Returns (head, slots, monotonic time just before the reservation was sent)."""
        token = payload["token"]
        deadline = time.monotonic() + self.lock_wait
        delays = backoff_delays(0.02, 0.5)
        for _ in range(self.max_conflict_retries):
            meta = self._meta_of(head)
            self._refuse_older(meta, payload)  # a newer save landed while we waited
            pending = (meta or {}).get("pending")
            if (
                pending
                and pending.get("by") != self.writer_id  # our own leftover: take it back
                and time.time() - float(pending.get("at") or 0) < self.lock_ttl
            ):
                if time.monotonic() > deadline:
                    raise MirrorError(
                        f"mirror {self.namespace}/{self.name} is busy: {pending.get('by')} "
                        f"reserved it {time.time() - float(pending.get('at') or 0):.1f}s ago",
                        status=409,
                    )
                self.lock_waits += 1
                time.sleep(next(delays))
                head = self._read(self.name)
                continue
            new_meta = dict(meta) if meta is not None else _empty_meta()
            committed = set(new_meta.get("shards") or [])
            slots = [s for s in self.slots if s not in committed][:count]
            new_meta["pending"] = {
                "token": token,
                "shards": slots,
                "at": time.time(),
                "by": self.writer_id,
            }
            where = f"reserve configmap {self.namespace}/{self.name}"
            sent_at = time.monotonic()
            try:
                if meta is None:  # no head yet (or a foreign one): create / replace it
                    part = (head.binary_data or {}).get(HEAD_PART_KEY) if head else None
                    head = self._put_head(head, self._head_body(head, new_meta, part))
                else:  # small merge patch: the committed payload stays as it is
                    patch = {
                        "metadata": {"resourceVersion": head.metadata.resource_version},
                        "data": {META_KEY: json.dumps(new_meta, separators=(",", ":"))},
                    }
                    head = self._write(
                        where,
                        self._core.patch_namespaced_config_map,
                        self.name,
                        self.namespace,
                        patch,
                        _content_type=MERGE_PATCH,
                    )
                return head, slots, sent_at
            except ApiException as exc:  # 409 Conflict / AlreadyExists, 404: re-read, retry
                if exc.status not in (404, 409):
                    raise
                head = self._read(self.name)
        raise MirrorError(
            f"mirror {self.namespace}/{self.name}: still conflicting after "
            f"{self.max_conflict_retries} attempts",
            status=409,
        )

    def _write_slot(
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

    def _commit(
        self,
        head: k8s_client.V1ConfigMap | None,
        payload: dict[str, Any],
        first_chunk: bytes,
        slots: list[str],
        blanked: list[str],
        *,
        locked: bool,
    ) -> int:
        """Point the head at the new payload (CAS, re-read on 409); returns the generation."""
        part = base64.b64encode(first_chunk).decode("ascii")
        for _ in range(self.max_conflict_retries):
            old = self._meta_of(head) or _empty_meta()
            pending = old.get("pending")
            if locked and (not pending or pending.get("token") != payload["token"]):
                raise MirrorError(
                    f"mirror {self.namespace}/{self.name}: our reservation was taken over "
                    "by another writer; nothing committed",
                    status=409,
                )
            if newer_than(old, payload) is not None:  # a newer save committed meanwhile
                if locked:
                    self._unreserve(head, payload["token"])
                self._refuse_older(old, payload)
            # slots holding data that no head names any more: reusable, blanked when unneeded
            stale = (set(old.get("stale") or []) | set(old.get("shards") or [])) - set(slots)
            stale -= set(blanked)
            meta = {
                "format": FORMAT,
                "generation": int(old.get("generation") or 0) + 1,
                "encoding": ENCODING,
                **payload,
                "shards": slots,
                "stale": [s for s in self.slots if s in stale],
                "pending": None if locked else pending,  # keep another writer's reservation
                "saved_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            try:
                self._put_head(head, self._head_body(head, meta, part))
                return meta["generation"]
            except ApiException as exc:  # 409 Conflict / AlreadyExists, 404: re-read, retry
                if exc.status not in (404, 409):
                    raise
                head = self._read(self.name)
        raise MirrorError(
            f"mirror {self.namespace}/{self.name}: still conflicting after "
            f"{self.max_conflict_retries} attempts",
            status=409,
        )

    def _unreserve(self, head: k8s_client.V1ConfigMap | None, token: str) -> None:
        """Clear our reservation (best effort: left over, it lapses after lock_ttl), so that
        other writers do not wait for a save that will not commit."""
        meta = self._meta_of(head)
        if head is None or meta is None or (meta.get("pending") or {}).get("token") != token:
            return
        patch = {
            "metadata": {"resourceVersion": head.metadata.resource_version},
            "data": {META_KEY: json.dumps({**meta, "pending": None}, separators=(",", ":"))},
        }
        with contextlib.suppress(MirrorError, ApiException):
            self._write(
                f"unreserve configmap {self.namespace}/{self.name}",
                self._core.patch_namespaced_config_map,
                self.name,
                self.namespace,
                patch,
                _content_type=MERGE_PATCH,
            )

    # ---- load ------------------------------------------------------------------------------

    def load(self) -> dict[str, Any] | None:
        """The last complete snapshot, or None when nothing was ever saved."""
        last_token = None
        for _ in range(10):
            head = self._read(self.name)
            meta = self._meta_of(head)
            if meta is None or not meta.get("token"):
                return None
            if meta.get("encoding") != ENCODING:
                raise MirrorError(f"mirror {self.name}: unknown encoding {meta.get('encoding')}")
            parts = [base64.b64decode((head.binary_data or {}).get(HEAD_PART_KEY, ""))]
            problem = None
            for index, slot in enumerate(meta.get("shards") or [], 1):
                shard = self._read(slot)
                shard_meta = self._meta_of(shard)
                if (
                    shard_meta is None
                    or shard_meta.get("token") != meta["token"]
                    or shard_meta.get("index") != index
                ):
                    problem = f"shard {slot} is missing or holds another save"
                    break
                parts.append(base64.b64decode((shard.binary_data or {}).get(SHARD_PART_KEY, "")))
            blob = b"".join(parts)
            if problem is None and hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
                problem = "sha256 of the payload does not match the head"
            if problem is None:
                return decode_snapshot(blob)
            if meta["token"] == last_token:  # the head did not move: the mirror is damaged
                raise MirrorError(f"mirror {self.namespace}/{self.name} is damaged: {problem}")
            last_token = meta["token"]  # a newer save reused the slots while we read: again
        raise MirrorError(f"mirror {self.namespace}/{self.name}: no consistent read (busy)")


class FileMirror:
    """The ledger as a local JSON snapshot plus an append-only journal beside it.

    ``save`` replaces the snapshot atomically (temp file, fsync, rename) and compacts the
    journal; ``append`` adds one change (the leases it put, the ids it deleted, at a ledger
    seq) as a JSON line and fsyncs it, so the placement worker can answer as soon as its own
    change is on disk; it refuses unless the snapshot on disk is the one this object wrote
    last (not written yet, removed or replaced: a whole save comes first).
    ``load`` is the snapshot with every later journal record applied in seq order; a torn
    last line (a crash mid-append, never answered) is skipped. Writers in
    one process share a lock; an flock on ``<path>.lock`` covers other processes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.journal = self.path.with_name(self.path.name + ".journal")
        self.last_stats: SaveStats | None = None
        self.covered = -1  # every change up to this ledger seq is written (this process)
        self.durable = -1  # ... and fdatasync'd: it survives a power loss, not only a crash
        self.failed: int | None = None  # seq of a change whose append failed (until a save)
        self.records = 0  # journal records since the last compaction (this process)
        self._mutex = threading.Lock()
        self._fd: int | None = None  # the journal, opened for appending
        self._end = -1  # where our last append to it ended (a torn line cannot follow)
        self._lock_fd: int | None = None  # <path>.lock, for flock
        self._written: tuple[int, int] | None = None  # (inode, mtime) of our last snapshot
        self._written_head: dict[str, Any] | None = None  # its seq and epoch

    def __repr__(self) -> str:
        return f"FileMirror({str(self.path)!r})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            if self._lock_fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(self.path.with_name(self.path.name + ".lock"),
                                        os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def append(self, seq: int, put: list[str], deleted: list[str], sync: bool = True) -> None:
        """Journal one change: raw lease JSON strings put, lease ids deleted, at ledger seq.
        ``sync=False`` (releases) writes without fdatasync: the record survives a crash of the
        process at once, and a power loss after the next synced append or ``sync()``."""
        line = (f'{{"seq":{int(seq)},"put":[{",".join(put)}],"del":{json.dumps(deleted)}}}\n'
                ).encode()
        try:
            with self._locked():
                # the journal extends the snapshot this process wrote last; if that is not the
                # one on disk (not written yet, removed, replaced) a whole save comes first
                try:
                    st = os.stat(self.path)
                    found = (st.st_ino, st.st_mtime_ns)
                except FileNotFoundError:
                    found = None
                if found is None or found != self._written:
                    raise FileNotFoundError(f"{self.path} is missing or not the snapshot this "
                                            "worker wrote (a whole save is due)")
                end = self._journal_end()
                if end and end != self._end and os.pread(self._fd, 1, end - 1) != b"\n":
                    line = b"\n" + line  # end a line torn by a crash: it stays skipped
                written = os.write(self._fd, line)
                if written != len(line):  # disk full, file size limit: half a record
                    raise OSError(errno.EIO, f"short write ({written} of {len(line)} bytes)")
                self._end = end + written
                if sync:
                    os.fdatasync(self._fd)
                self.records += 1
                if self.failed is None:  # no gap below: everything up to seq is on disk
                    self.covered = max(self.covered, seq)
                    if sync:
                        self.durable = self.covered
        except OSError as exc:
            if seq > self.covered:  # a whole save that already holds it leaves no gap
                self.failed = max(self.failed or 0, seq)
            if self._fd is not None:  # reopen next time: a torn line gets ended first
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
            raise MirrorError(f"cannot append to mirror journal {self.journal}: {exc}") from exc

    def _journal_end(self) -> int:
        """The journal's size, (re)opening it for appending when it is not open or was
        replaced (compacted by another process)."""
        if self._fd is not None:
            st = os.fstat(self._fd)
            try:
                now = os.stat(self.journal)
            except FileNotFoundError:
                now = None
            if now is not None and (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                return st.st_size
            os.close(self._fd)
            self._fd = None
        self._fd = os.open(self.journal, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._end = -1
        return os.fstat(self._fd).st_size

    def sync(self) -> None:
        """fdatasync what unsynced appends wrote (the publisher calls it every round)."""
        with self._mutex:
            if self.durable >= self.covered or self._fd is None:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as exc:  # the written records may be lost: a whole save is due
                self.failed = max(self.failed or 0, self.covered)
                raise MirrorError(f"cannot sync mirror journal {self.journal}: {exc}") from exc
            self.durable = self.covered

    @property
    def holds(self) -> int:
        """The ledger seq up to which every change is on disk (-1: unknown, a gap is open)."""
        return self.covered if self.failed is None else -1

    @property
    def started(self) -> bool:
        """Whether this object wrote a snapshot yet (appends extend only its own)."""
        return self._written is not None

    def mark(self) -> int:
        """Where the journal ends now: pass it to ``save`` when the snapshot is read after."""
        try:
            return self.journal.stat().st_size
        except OSError:
            return 0

    def save(self, snapshot: dict[str, Any], mark: int | None = None) -> int:
        """Write the snapshot atomically; returns 1 (one file write). ``mark`` (taken before
        the snapshot was read from the ledger) compacts the journal: what was in it at
        ``mark`` is in the snapshot, so only later records above its seq are kept. Without
        it the snapshot is the whole truth and the journal is emptied.

        Raises MirrorSuperseded (nothing replaced) when the snapshot file holds a higher
        ``seq`` of the same ledger: checked under the lock, at the rename, so that of two
        racing writers (threads or processes) the older snapshot never lands last. Leases
        that cannot be encoded are left out (``last_stats.set_aside``)."""
        started = time.monotonic()
        self.last_stats = None
        raw, aside = encode_json(snapshot)
        seq = int(snapshot.get("seq", 0))
        directory = self.path.parent
        tmp: str | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = _write_temp(self.path, raw)  # the slow part, outside the lock
            with self._locked():
                held = newer_than(self._on_disk(), snapshot)
                if held is not None:
                    raise MirrorSuperseded(f"mirror file {self.path}", seq, held)
                os.replace(tmp, self.path)
                tmp = None
                st = os.stat(self.path)
                self._written = (st.st_ino, st.st_mtime_ns)
                self._written_head = {"seq": snapshot.get("seq"), "epoch": snapshot.get("epoch")}
                self._compact(mark, seq)
                _fsync_dir(directory)
        except OSError as exc:
            raise MirrorError(f"cannot write mirror file {self.path}: {exc}") from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self._remove_stale_temps()
        if self.failed is not None and self.failed <= seq:
            self.failed = None
        self.covered = max(self.covered, seq)
        self.durable = self.covered  # the snapshot and the rewritten journal are synced
        self.last_stats = SaveStats(1, len(raw), len(raw), 1, 0, False,
                                    time.monotonic() - started, tuple(aside))
        return 1

    def _on_disk(self) -> dict[str, Any] | None:
        """The seq and epoch of the snapshot file (held lock): known without reading it when
        it is the one this object wrote last."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        if (st.st_ino, st.st_mtime_ns) == self._written:
            return self._written_head
        try:
            found = json.loads(self.path.read_bytes())
        except ValueError:
            return None  # damaged: replacing it can only help
        return found if isinstance(found, dict) else None

    def _compact(self, mark: int | None, seq: int) -> None:
        """Drop the journal records the snapshot holds (all of them when mark is None). The
        caller holds the lock."""
        try:
            data = self.journal.read_bytes() if mark is not None else b""
        except FileNotFoundError:
            return
        if mark is None and not self.journal.exists():
            return
        keep = [line for line in data[mark or 0:].splitlines(keepends=True)
                if (_record(line) or {}).get("seq", -1) > seq]
        _write_atomically(self.journal, b"".join(keep))
        self.records = len(keep)

    def _remove_stale_temps(self, min_age: float = 300.0) -> None:
        """Temp files left by a writer killed mid-save (old enough not to be in progress)."""
        now = time.time()
        for leftover in self.path.parent.glob(f".{self.path.name}*.tmp"):
            with contextlib.suppress(OSError):
                if now - leftover.stat().st_mtime > min_age:
                    leftover.unlink()

    def load(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raise MirrorError(f"cannot read mirror file {self.path}: {exc}") from exc
        snapshot: dict[str, Any] | None = None
        if raw is not None:
            try:
                snapshot = json.loads(raw)
            except ValueError as exc:
                raise MirrorError(f"mirror file {self.path} is not valid JSON: {exc}") from exc
            if not isinstance(snapshot, dict):
                raise MirrorError(f"mirror file {self.path} does not hold a JSON object")
        try:
            journal = self.journal.read_bytes()
        except FileNotFoundError:
            return snapshot
        except OSError as exc:
            raise MirrorError(f"cannot read mirror journal {self.journal}: {exc}") from exc
        base = int((snapshot or {}).get("seq", 0))
        records = [r for r in map(_record, journal.splitlines()) if r and r["seq"] > base]
        if not records:
            return snapshot
        records.sort(key=lambda r: r["seq"])  # stable: file order on ties
        leases = {x["metadata"]["name"]: x for x in (snapshot or {}).get("leases", [])}
        for record in records:
            for lease in record["put"]:
                leases[lease["metadata"]["name"]] = lease
            for lease_id in record["del"]:
                leases.pop(lease_id, None)
        return {**(snapshot or {"format": FORMAT}), "seq": records[-1]["seq"],
                "leases": sorted(leases.values(), key=lambda x: x["metadata"]["name"])}


def _record(line: bytes) -> dict[str, Any] | None:
    """A journal line, or None when torn or damaged."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if (not isinstance(record, dict) or not isinstance(record.get("seq"), int)
            or not isinstance(record.get("put"), list)
            or not isinstance(record.get("del"), list)):
        return None
    return record


def _write_temp(path: Path, raw: bytes) -> str:
    """A synced temp file beside path, holding raw; the caller renames or removes it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _write_atomically(path: Path, raw: bytes) -> None:
    tmp = _write_temp(path, raw)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
        or len(name) > _MAX_NAME
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
    "MirrorSuperseded",
    "MirrorTooLarge",
    "SaveStats",
    "backoff_delays",
    "decode_snapshot",
    "encode_json",
    "encode_snapshot",
    "mirror_from_env",
    "newer_than",
    "retry_backoff",
]
