"""The snapshot as the mirrors store it: compact JSON (zlib-compressed in ConfigMaps), which
of two snapshots is newer, and what a save reports.

A snapshot is the ledger's JSON-able dict, treated as opaque except for ``seq`` (the ledger's
change counter), ``epoch`` (which Redis ledger it came from) and ``leases``.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

from .errors import MirrorError

FORMAT = 1
ENCODING = "json+zlib"
# a ledger's seq from a mirror: Redis's counter goes on from it (INCR fails past 2**63 - 1,
# after the rest of a script's writes) and Lua compares it exactly up to 2**53
MAX_SEQ = 2**53


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
    set_aside: tuple[str, ...] = ()  # ids of leases UTF-8 cannot encode (written escaped)


def seq_of(snapshot: dict[str, Any]) -> int | None:
    seq = snapshot.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def epoch_of(snapshot: dict[str, Any]) -> str | None:
    epoch = snapshot.get("epoch")
    return epoch if isinstance(epoch, str) else None


def newer_than(held: dict[str, Any] | None, snapshot: dict[str, Any]) -> int | None:
    """The seq of ``held`` (what the mirror holds: a snapshot or a head's metadata) when it is
    above the snapshot's and of the same ledger (epoch, or neither has one); else None:
    writing may go ahead. Seqs of two different Redis ledgers say nothing about which is
    newer (Redis replaced by another ledger that wins, a deliberate reset): the writer wins."""
    if not held:
        return None
    old, new = seq_of(held), seq_of(snapshot)
    if old is None or new is None or old <= new:
        return None
    return old if epoch_of(held) == epoch_of(snapshot) else None


def _lease_id(lease: Any) -> str:
    try:
        return str(lease["metadata"]["name"])
    except (TypeError, KeyError):
        return repr(lease)[:80]


def encode_json(snapshot: dict[str, Any]) -> tuple[bytes, list[str]]:
    """Compact UTF-8 JSON of the snapshot, and the ids of the leases that hold text UTF-8
    cannot encode (a lone surrogate in a string). Those are kept, written as JSON escapes (the
    whole snapshot then is ASCII): left out, their capacity would be free after a rebuild from
    the mirror, which sets them aside holding what they hold. The caller reports them."""
    if not isinstance(snapshot, dict):
        raise TypeError(f"snapshot must be a dict, not {type(snapshot).__name__}")
    try:
        return json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False).encode(), []
    except UnicodeEncodeError:
        leases = snapshot.get("leases")
        if not isinstance(leases, list):
            raise
    aside = []
    for lease in leases:
        try:
            json.dumps(lease, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            aside.append(_lease_id(lease))
    return json.dumps(snapshot, separators=(",", ":")).encode(), aside


def encode_snapshot(snapshot: dict[str, Any], level: int = 6) -> tuple[bytes, int]:
    """Compact JSON then zlib; returns (blob, raw JSON size). See encode_json."""
    raw, _ = encode_json(snapshot)
    return zlib.compress(raw, level), len(raw)


def seq_problem(seq: Any) -> str | None:
    """Why a seq read from a mirror cannot be a ledger's, or None."""
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_SEQ:
        return None
    return f"seq is not a whole number from 0 to {MAX_SEQ} ({ascii(seq)[:40]})"


def shape_problem(snapshot: dict[str, Any]) -> str | None:
    """Why a loaded snapshot is not one a ledger writes (its seq, its leases or set-aside
    lists), naming the field, or None. Single records are the restore's to judge."""
    problem = seq_problem(snapshot.get("seq", 0))
    if problem:
        return problem
    for key in ("leases", "aside"):
        if snapshot.get(key) is not None and not isinstance(snapshot[key], list):
            return f"{key} is not a list ({type(snapshot[key]).__name__})"
    return None


def decode_snapshot(blob: bytes) -> dict[str, Any]:
    try:
        snapshot = json.loads(zlib.decompress(blob))
    except (zlib.error, ValueError, RecursionError) as exc:  # also nested past json's depth
        raise MirrorError(f"mirror payload does not decode: {exc}") from exc
    if not isinstance(snapshot, dict):
        raise MirrorError("mirror payload is not a JSON object")
    problem = shape_problem(snapshot)
    if problem:
        raise MirrorError(f"mirror payload cannot be restored: {problem}")
    return snapshot
