"""The ledger snapshot in Kubernetes ConfigMaps, compressed, written by compare-and-swap.

Layout, for ``VCM_CONFIGMAP=namespace/name`` (fixed names, so that RBAC can list them in
resourceNames; only get, create, update and patch are used, never delete or list):

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
import hashlib
import os
import secrets
import socket
import threading
import time
import zlib
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from ... import backoff
from ...ports import Mirror
from ...settings import (  # slot ConfigMaps name-0 .. (deploy/rbac.yaml), bytes of each
    DEFAULT_MAX_SHARDS,
    DEFAULT_SHARD_BYTES,
    MAX_SHARD_BYTES,
    MIN_SHARD_BYTES,
)
from .codec import (
    ENCODING,
    FORMAT,
    SaveStats,
    decode_snapshot,
    encode_json,
    epoch_of,
    newer_than,
    seq_of,
)
from .errors import MirrorError, MirrorSuperseded, MirrorTooLarge
from .kube import (
    HEAD_PART_KEY,
    SHARD_PART_KEY,
    ConfigMap,
    ConfigMaps,
    default_api_client,
    meta_of,
)
from .names import MAX_NAME, valid_name, valid_namespace


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


class ConfigMapMirror(Mirror):
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
        if not valid_namespace(namespace):
            raise ValueError(f"invalid namespace {namespace!r}")
        if not valid_name(name):
            raise ValueError(
                f"invalid ConfigMap name {name!r} (DNS-1123 subdomain, at most {MAX_NAME} "
                "characters)"
            )
        if not 0 <= max_shards <= 999:
            raise ValueError("max_shards must be within 0..999")
        if not MIN_SHARD_BYTES <= shard_bytes <= MAX_SHARD_BYTES:
            raise ValueError(f"shard_bytes must be within {MIN_SHARD_BYTES}..{MAX_SHARD_BYTES}")
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
        self.api_client = api_client if api_client is not None else default_api_client()
        self._cms = ConfigMaps(namespace, name, self.api_client, timeout)
        self._save_lock = threading.Lock()  # one save at a time per instance
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

    def _busy(self, what: str) -> MirrorError:
        return MirrorError(f"mirror {self.namespace}/{self.name}: {what}", status=409)

    # ---- save ------------------------------------------------------------------------------

    def save(self, snapshot: dict[str, Any], mark: int | None = None) -> int:
        """Write the snapshot; returns the number of API write requests made. ``mark`` is
        for journaled mirrors: there is no journal here.

        Raises MirrorSuperseded (nothing written) when the head holds a higher ``seq`` of the
        same ledger (``epoch``): checked with every compare-and-swap, so a save that lost a
        race never puts an older snapshot over a newer one. Raises MirrorTooLarge (nothing
        written) when the payload needs more than ``max_configmaps`` ConfigMaps, and
        MirrorError on network errors, timeouts, 5xx or when another writer holds the mirror
        longer than ``lock_wait``: the mirror then still holds a complete earlier snapshot;
        retry later. Leases UTF-8 cannot encode are written escaped (``last_stats.set_aside``).
        """
        with self._save_lock:
            started = time.monotonic()
            self._cms.writes = 0
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
            head = self._cms.read(self.name)
            meta = meta_of(head)
            if meta is not None and meta.get("sha256") == digest:
                self._finish(raw_bytes, blob, len(chunks), meta["generation"], True, started)
                return 0
            token = secrets.token_hex(8)
            payload = {
                "sha256": digest,
                "bytes": len(blob),
                "raw_bytes": raw_bytes,
                "token": token,
                "seq": seq_of(snapshot),  # compared by every later save
                "epoch": epoch_of(snapshot),
            }
            self._refuse_older(meta, payload)
            if len(chunks) == 1 and not (meta or {}).get("stale"):
                generation = self._commit(head, payload, chunks[0], [], [], locked=False)
            else:
                generation = self._save_locked(head, payload, chunks)
            self._finish(raw_bytes, blob, len(chunks), generation, False, started)
            return self._cms.writes

    def _refuse_older(self, meta: dict[str, Any] | None, payload: dict[str, Any]) -> None:
        held = newer_than(meta, payload)
        if held is not None:
            raise MirrorSuperseded(f"mirror {self.namespace}/{self.name}", payload["seq"], held)

    def _finish(self, raw_bytes: int, blob: bytes, configmaps: int, generation: int,
                skipped: bool, started: float) -> None:
        self.last_stats = SaveStats(
            writes=self._cms.writes,
            raw_bytes=raw_bytes,
            encoded_bytes=len(blob),
            configmaps=configmaps,
            generation=generation,
            skipped=skipped,
            seconds=time.monotonic() - started,
            set_aside=self._set_aside,
        )

    def _save_locked(self, head: ConfigMap | None, payload: dict[str, Any],
                     chunks: list[bytes]) -> int:
        """Reserve slots, write shards, blank stale slots, commit."""
        token = payload["token"]
        head, slots, reserved_at = self._reserve(head, payload, len(chunks) - 1)

        def check_lock() -> None:  # past lock_ttl / 2 another writer may take the mirror over
            if time.monotonic() - reserved_at > self.lock_ttl / 2:
                raise MirrorError(
                    f"mirror {self.namespace}/{self.name}: save took longer than "
                    f"{self.lock_ttl / 2:.0f}s, giving up the reservation"
                )

        meta = meta_of(head) or {}
        existing = set(meta.get("stale") or []) | set(meta.get("shards") or [])
        for index, (slot, chunk) in enumerate(zip(slots, chunks[1:], strict=True), 1):
            check_lock()
            self._cms.write_slot(slot, token, index, len(chunks), chunk,
                                 exists=slot in existing)
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
                self._cms.write_slot(slot, None, 0, 0, None)
                blanked.append(slot)
        return self._commit(head, payload, chunks[0], slots, blanked, locked=True)

    def _reserve(self, head: ConfigMap | None, payload: dict[str, Any], count: int
                 ) -> tuple[ConfigMap, list[str], float]:
        """Record our reservation of `count` free slots in the head (CAS); the reservation is
        the writers' lock. Waits for a live reservation of another writer up to lock_wait.
        Returns (head, slots, monotonic time just before the reservation was sent)."""
        token = payload["token"]
        deadline = time.monotonic() + self.lock_wait
        waits = backoff.Backoff(backoff.jittered(0.02, 0.5))
        for _ in range(self.max_conflict_retries):
            meta = meta_of(head)
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
                time.sleep(waits.next())
                head = self._cms.read(self.name)
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
            sent_at = time.monotonic()
            try:
                if meta is None:  # no head yet (or a foreign one): create / replace it
                    part = (head.binary_data or {}).get(HEAD_PART_KEY) if head else None
                    head = self._cms.put_head(head, new_meta, part)
                else:  # small merge patch: the committed payload stays as it is
                    head = self._cms.patch_meta(head, new_meta, "reserve")
                return head, slots, sent_at
            except ApiException as exc:  # 409 Conflict / AlreadyExists, 404: re-read, retry
                if exc.status not in (404, 409):
                    raise
                head = self._cms.read(self.name)
        raise self._busy(f"still conflicting after {self.max_conflict_retries} attempts")

    def _commit(self, head: ConfigMap | None, payload: dict[str, Any], first_chunk: bytes,
                slots: list[str], blanked: list[str], *, locked: bool) -> int:
        """Point the head at the new payload (CAS, re-read on 409); returns the generation."""
        part = base64.b64encode(first_chunk).decode("ascii")
        for _ in range(self.max_conflict_retries):
            old = meta_of(head) or _empty_meta()
            pending = old.get("pending")
            if locked and (not pending or pending.get("token") != payload["token"]):
                raise self._busy("our reservation was taken over by another writer; "
                                 "nothing committed")
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
                self._cms.put_head(head, meta, part)
                return meta["generation"]
            except ApiException as exc:  # 409 Conflict / AlreadyExists, 404: re-read, retry
                if exc.status not in (404, 409):
                    raise
                head = self._cms.read(self.name)
        raise self._busy(f"still conflicting after {self.max_conflict_retries} attempts")

    def _unreserve(self, head: ConfigMap | None, token: str) -> None:
        """Clear our reservation (best effort: left over, it lapses after lock_ttl), so that
        other writers do not wait for a save that will not commit."""
        meta = meta_of(head)
        if head is None or meta is None or (meta.get("pending") or {}).get("token") != token:
            return
        with contextlib.suppress(MirrorError, ApiException):
            self._cms.patch_meta(head, {**meta, "pending": None}, "unreserve")

    # ---- load ------------------------------------------------------------------------------

    def load(self) -> dict[str, Any] | None:
        """The last complete snapshot, or None when nothing was ever saved."""
        last_token = None
        for _ in range(10):
            head = self._cms.read(self.name)
            meta = meta_of(head)
            if meta is None or not meta.get("token"):
                return None
            if meta.get("encoding") != ENCODING:
                raise MirrorError(f"mirror {self.name}: unknown encoding {meta.get('encoding')}")
            parts = [base64.b64decode((head.binary_data or {}).get(HEAD_PART_KEY, ""))]
            problem = None
            for index, slot in enumerate(meta.get("shards") or [], 1):
                shard = self._cms.read(slot)
                shard_meta = meta_of(shard)
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
