"""The publisher's mirror-writing round: which ledger seq the mirror covers, whether Redis is
still the ledger it mirrors, and the save itself with its group commit, pacing and failures.

Group commit: one save covers every change made before it read the ledger, so while one save is
in flight any number of placements queue up behind it and are covered by the next one. Under
load (changes arrived during the save, or it covered several) the next save also waits until
``max(PACING x save time, the commit window)`` has passed, so a burst costs at most ~10 saves a
second whatever the API's speed, and the worker keeps most of the CPU (snapshots are whole-ledger
serialisations). A lone client, one change per save, never waits for the window.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from .. import backoff
from ..adapters.mirror.errors import MirrorError, MirrorSuperseded, MirrorTooLarge
from ..ports import JournaledMirror, Mirror
from .status import PublisherStatus

log = logging.getLogger(__name__)

TOO_LARGE_RETRY = 1.0  # at most this often while the ledger changes
TOO_LARGE_SAME_SEQ_RETRY = 60.0  # the same snapshot again (nothing changed: cannot fit)
# group commit under load (see write): the next save waits max(PACING x the last save's
# duration, the commit window) after it, i.e. at most ~1/window saves a second; the window
# starts at FIRST_WINDOW and grows to VCM_MIRROR_COMMIT_WINDOW (settings)
PACING = 1.0
FIRST_WINDOW = 0.02
COMPACT_RECORDS = 2000  # journal records (at least the leases saved) before a whole save


class MirrorSaves:
    def __init__(self, service, mirror: Mirror | None, status: PublisherStatus) -> None:
        self.service = service
        self.ledger = service.ledger
        self.mirror = mirror
        self.status = status
        # a journaled mirror (the file) gets each change from the service before it is
        # answered; here it only needs a whole save at start, after a failed append, to
        # release held replies, and to compact the journal
        self.journal = mirror if isinstance(mirror, JournaledMirror) else None
        self.mirrored = -1  # ledger seq the mirror holds (-1: unknown, write it)
        self._restarts = service.restarts  # the ledger's rebuilds `mirrored` comes after
        self.epoch: str | None = None  # the Redis ledger `mirrored` refers to
        self.failing_since: float | None = None  # epoch seconds
        self.retry_at = 0.0  # monotonic: no save before this (backoff, commit window)
        self.window = 0.0  # the current commit window (0 when not under load)
        self.commit_window = service.settings.mirror_commit_window  # its longest
        self.first_window = min(FIRST_WINDOW, self.commit_window)
        self.last_save = 0.0  # monotonic end of the last save
        self._save_backoff = backoff.Backoff()  # between failed saves
        self._too_large_seq: int | None = None  # seq whose snapshot did not fit (logged)
        self._too_large_at = 0.0  # monotonic time of the last too-large attempt
        self._parsed: dict[Any, Any] = {}  # raw lease JSON -> parsed, between snapshots
        self._attempt_at = 0.0  # epoch seconds: start of the last save
        self._status: dict[str, Any] | None = None  # of the last save, written after replies
        self._leases = 0  # active leases in the last save
        self._reported = -1  # seq last shown in the status hash
        self._aside: frozenset[str] = frozenset()  # leases set aside, last logged

    # what the mirror covers ------------------------------------------------------------
    def _held(self) -> int:
        """`mirrored`, forgotten (-1: write it) when the placement thread rebuilt the ledger
        or found it gone back since that save read it: the seqs the save covered may now be
        taken by new changes it does not hold (same epoch, so check_epoch cannot tell)."""
        restarts = self.service.restarts
        if restarts != self._restarts:
            self._restarts = restarts
            self.mirrored = -1
        return self.mirrored

    def check_epoch(self) -> tuple[int, bool]:
        """(the ledger's seq, whether it is ready). Forgets what the mirror covers when Redis
        is not the ledger that was mirrored (wiped, restarted from an older state, replaced):
        replies are then held until the next save. The epoch is a token in ``vcm:mirror``, made
        by the first publisher that sees the hash missing."""
        known = max(self._held(), self.service.last_seq)  # before Redis's seq is read
        seq, ready, epoch = self.ledger.seq_and_ready(secrets.token_hex(8))
        if epoch != self.epoch:
            if self.epoch is not None:
                log.warning("the Redis ledger is not the one last mirrored (Redis wiped or "
                            "replaced): the mirror will be saved again from Redis")
            self.epoch = epoch
            self.mirrored = -1
        elif seq < known:
            log.warning("the Redis ledger went back from seq %s to %s (restarted from an "
                        "older state)", known, seq)
            if self.service.ensure_ready(check_mirror=True):  # the mirror's state is newer
                seq = self.ledger.seq()
            else:
                self.mirrored = -1  # nothing newer to go back to: save again from Redis
        return seq, ready

    def report_journal(self, seq: int) -> None:
        """Between whole saves the journal covers the changes: show how far, in the status."""
        covered = self.durable()
        if covered is None or covered < 0 or covered == self._reported:
            return
        self._reported = covered
        self.ledger.mirror_status_write({
            "seq": covered, "ledger-seq": max(seq, covered), "updated-at": time.time(),
            "journal-records": self.journal.records})

    def should_save(self) -> bool:
        j = self.journal
        if j is None:
            return True  # write returns at once when the mirror holds the seq
        return (self._held() < 0 or j.failed is not None
                or j.records >= max(COMPACT_RECORDS, self._leases)
                or self.ledger.outbox_size() > 0)

    def covered(self) -> int | None:
        """The ledger seq up to which the mirror holds every change (None: no mirror)."""
        if self.mirror is None:
            return None
        return max(self._held(), self.journal.holds) if self.journal else self._held()

    def durable(self) -> int | None:
        """Like covered, counting only journal records that are fdatasync'd."""
        if self.journal is None:
            return self.covered()
        return max(self._held(), min(self.journal.holds, self.journal.durable))

    def take_status(self) -> dict[str, Any] | None:
        """The last save's status, once: written after the replies it covers went out."""
        status, self._status = self._status, None
        return status

    # the save --------------------------------------------------------------------------
    def write(self, seq: int) -> None:
        if seq == self._held():
            return
        if (seq == self._too_large_seq
                and time.monotonic() - self._too_large_at < TOO_LARGE_SAME_SEQ_RETRY):
            return
        started = time.monotonic()
        self._attempt_at = time.time()  # an outage starts with the first save that fails
        mark = self.journal.mark() if self.journal is not None else None
        known = max(self.mirrored, self.service.last_seq)  # before the snapshot is read
        restarts = self.service.restarts  # ... and so is this: see _saved
        try:
            snapshot = self.ledger.snapshot(self._parsed)
        except Exception as exc:  # noqa: BLE001 - Redis down or odd data: retried with backoff
            self._failed(seq, exc)
            return
        if snapshot["seq"] < known:
            return  # Redis went back meanwhile: the next check_epoch takes the newer mirror
        if self.epoch is not None:  # which Redis ledger it mirrors (Capacity.ensure_ready)
            snapshot["epoch"] = self.epoch
        try:  # a mark means something to a journal only: without one, a whole save
            writes = self.mirror.save(snapshot, mark)
        except MirrorTooLarge as exc:
            self._too_large(snapshot, exc)
            return
        except MirrorSuperseded as exc:
            # another worker of this ledger saved a newer seq: it holds this one too
            log.info("%s", exc)
            self.ledger.mirror_status_incr("superseded")
            writes = 0
        except MirrorError as exc:
            self._failed(snapshot["seq"], exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug or odd data: the save is retried
            self._failed(snapshot["seq"], exc)
            return
        took = time.monotonic() - started
        seq_now, epoch = self.ledger.seq_and_epoch()
        if epoch != self.epoch:
            log.warning("Redis was wiped or replaced during the mirror save: saving again")
            self.mirrored = -1
            return
        # Under load (changes arrived during the save, or it covered several), let the next
        # group gather for a while: fewer, larger saves, and the worker keeps the CPU. A lone
        # client (one change per save) is never made to wait.
        covered = snapshot["seq"] - self.mirrored if self.mirrored >= 0 else 1
        # The window starts short (a release and the grant it makes are two changes, and the
        # waiter should not wait long) and doubles while the load lasts, up to the commit window.
        now = time.monotonic()
        if now - self.last_save > 2 * self.commit_window + took:  # the load, if any, has passed
            self.window = 0.0
        self.last_save = now
        # one change arriving during a save (a release, then the grant it makes) is not load
        if seq_now - snapshot["seq"] >= 2 or covered >= 3:
            self.window = (min(self.commit_window, self.window * 2) if self.window
                           else self.first_window)
            self.retry_at = time.monotonic() + max(PACING * took, self.window)
        else:
            self.window = 0.0
            self.retry_at = 0.0
        self._saved(snapshot, writes, took, restarts)

    def _saved(self, snapshot: dict[str, Any], writes: int | None, took: float,
               restarts: int) -> None:
        stats = self.mirror.last_stats
        outage = None
        if self.failing_since is not None:
            outage = time.time() - self.failing_since
            log.warning("mirror written again after %.1fs of failures (seq %s, %d leases)",
                        outage, snapshot["seq"], len(snapshot["leases"]))
        self.failing_since = None
        self._too_large_seq = None
        self._save_backoff.reset()
        self.mirrored = self._reported = snapshot["seq"]
        self._restarts = restarts  # a rebuild since the snapshot was read: _held forgets it
        self._leases = len(snapshot["leases"])
        fields: dict[str, Any] = {
            "state": "ok", "error": "", "failing-since": 0,
            "seq": snapshot["seq"], "ledger-seq": snapshot["seq"],
            "written-at": time.time(), "leases": len(snapshot["leases"]),
            "last-writes": int(writes or 0), "save-seconds": round(took, 6),
        }
        aside = frozenset(stats.set_aside if stats is not None else ())
        if stats is not None:
            fields.update({"encoded-bytes": stats.encoded_bytes, "raw-bytes": stats.raw_bytes,
                           "configmaps": stats.configmaps, "set-aside": len(aside)})
        if aside != self._aside:
            self._aside = aside
            if aside:
                log.error("%d leases hold text UTF-8 cannot encode (a lone surrogate in a "
                          "string): the mirror has them escaped, and a rebuild from it sets "
                          "them aside, holding what they hold: %s", len(aside),
                          ", ".join(sorted(aside)))
        if self.mirror.max_configmaps is not None:
            fields["max-configmaps"] = self.mirror.max_configmaps
        if outage is not None:
            fields["caught-up-after"] = round(outage, 3)
        self._status = {"fields": fields, "saves": 1, "writes": int(writes or 0),
                        "clear": ["needed-configmaps"]}

    def _failing(self, seq: int, state: str, error: Exception | str,
                 extra: dict[str, Any] | None = None) -> None:
        if self.failing_since is None:
            self.failing_since = self._attempt_at
        fields: dict[str, Any] = {
            "state": state, "error": str(error)[:500], "failing-since": self.failing_since,
            "ledger-seq": seq, **(extra or {}),
        }
        self.status.write({"fields": fields, "failures": 1,
                           "too-large": 1 if state == "too-large" else 0})

    def _failed(self, seq: int, exc: Exception) -> None:
        first = self.failing_since is None
        delay = self._save_backoff.next()
        if isinstance(exc, MirrorError):
            self._failing(seq, "failing", exc)
            (log.warning if first else log.info)(
                "mirror save failed (ledger seq %s, replies held): %s; retrying in %.1fs",
                seq, exc, delay)
        else:
            if first:
                self.failing_since = self._attempt_at
            self.status.error(exc, delay, self.failing_since, seq)
        self.retry_at = time.monotonic() + delay

    def _too_large(self, snapshot: dict[str, Any], exc: MirrorTooLarge) -> None:
        seq = snapshot["seq"]
        extra: dict[str, Any] = {"needed-configmaps": exc.needed}
        if exc.encoded_bytes:
            extra["encoded-bytes"] = exc.encoded_bytes
        if exc.raw_bytes:
            extra["raw-bytes"] = exc.raw_bytes
        if self.mirror.max_configmaps is not None:
            extra["max-configmaps"] = self.mirror.max_configmaps
        self._failing(seq, "too-large", f"too large to mirror: {exc}", extra)
        if seq != self._too_large_seq:
            log.error("MIRROR TOO LARGE: the ledger (seq %s, %d active leases) does not fit "
                      "in the mirror %r; nothing was written, the mirror keeps its last "
                      "complete save (seq %s), no lease is dropped and replies stay held "
                      "until it fits: %s", seq, len(snapshot["leases"]), self.mirror,
                      self.mirrored, exc)
        self._too_large_seq = seq
        self._too_large_at = time.monotonic()
        self.retry_at = time.monotonic() + TOO_LARGE_RETRY
