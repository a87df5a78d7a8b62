"""The ledger as a local JSON file (a laptop, tests): a snapshot written atomically, plus an
append-only journal of the changes since, so that answers need not wait for a whole
snapshot."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...ports import JournaledMirror
from .codec import FORMAT, SaveStats, encode_json, newer_than, seq_problem, shape_problem
from .errors import MirrorError, MirrorSuperseded


class FileMirror(JournaledMirror):
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

    max_configmaps: int | None = None  # not a ConfigMap mirror

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
        UTF-8 cannot encode are written escaped (``last_stats.set_aside``)."""
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
        except (ValueError, RecursionError):
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
            except (ValueError, RecursionError) as exc:  # nested deeper than json goes
                raise MirrorError(f"mirror file {self.path} is not valid JSON: {exc}") from exc
            if not isinstance(snapshot, dict):
                raise MirrorError(f"mirror file {self.path} does not hold a JSON object")
            problem = shape_problem(snapshot)
            if problem:
                raise MirrorError(f"mirror file {self.path} cannot be restored: {problem}")
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
        problem = seq_problem(records[-1]["seq"])
        if problem:
            raise MirrorError(f"mirror journal {self.journal} cannot be restored: {problem}")
        leases: dict[str, Any] = {}
        # kept beside them: records without a name that can be read, and a second record
        # under a name (a restore sets them aside, holding what they hold)
        others: list[Any] = []
        for lease in (snapshot or {}).get("leases") or []:
            name = _name(lease)
            if name is None or name in leases:
                others.append(lease)
            else:
                leases[name] = lease
        aside = list((snapshot or {}).get("aside") or [])
        for record in records:
            for lease in record["put"]:
                name = _name(lease)
                if name is None:
                    others.append(lease)
                else:
                    leases[name] = lease
            for lease_id in record["del"]:  # a lease released, or a set-aside record dropped
                if not isinstance(lease_id, str):
                    continue
                if leases.pop(lease_id, None) is not None:
                    continue
                # the set-aside item a restore kept under this id: the first (others with the
                # same id, or a lease's name, were kept under ids of their own)
                at = next((i for i, x in enumerate(aside)
                           if isinstance(x, dict) and x.get("id") == lease_id), None)
                if at is not None:
                    del aside[at]
        out = {**(snapshot or {"format": FORMAT}), "seq": records[-1]["seq"],
               "leases": sorted(leases.values(), key=lambda x: x["metadata"]["name"]) + others}
        if aside:
            out["aside"] = aside
        else:
            out.pop("aside", None)
        return out


def _name(lease: Any) -> str | None:
    """A snapshot record's lease name, when it has one that can be read."""
    try:
        name = lease["metadata"]["name"]
    except (TypeError, KeyError):
        return None
    return name if isinstance(name, str) else None


def _record(line: bytes) -> dict[str, Any] | None:
    """A journal line, or None when torn or damaged."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
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
