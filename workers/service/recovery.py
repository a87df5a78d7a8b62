"""The one owner of the ledger's sequence bookkeeping: which seq this worker wrote last, the
floor below which Redis counts as gone back, what the mirror's journal covers, and the
rebuild of the Redis ledger from the mirror.

Every change to the ledger bumps its seq. The mirror follows the seq; answers go out only once
the mirror holds the change (`covered`). If Redis loses the ledger, or comes back with an older
state than changes this worker already answered, the mirror's state is put back first: every
ledger write script refuses while Redis's seq is below `floor`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..adapters.mirror.errors import MirrorError
from ..core.errors import NoCapacity
from ..ports import Guard, JournaledMirror, Ledger, Mirror

log = logging.getLogger(__name__)


class Recovery:
    def __init__(self, ledger: Ledger, mirror: Mirror | None, writer: bool,
                 lock: threading.RLock, on_rebuilt: Callable[[], None]) -> None:
        self.ledger = ledger
        self.mirror = mirror
        self.writer = writer  # only the placement side restores the ledger from the mirror
        self.lock = lock
        self.on_rebuilt = on_rebuilt  # the ledger was rebuilt: cached usage is stale
        # a mirror with a journal (the file) takes each change before its answer goes out
        self.journal = mirror if writer and isinstance(mirror, JournaledMirror) else None
        self.last_seq = -1  # ledger seq of the last change made here
        self.floor = 0  # every write refuses while Redis's seq is below it
        # how many times the ledger was rebuilt or went back (_restart_at): a seq the mirror
        # held before that may belong to the history that was lost (the publisher checks it)
        self.restarts = 0
        self._journal_warned = False

    @property
    def guard(self) -> Guard:
        """What every write of this worker is given: the floor, and with a journal, no
        publisher wake-up per change (the journal has it)."""
        return Guard(self.floor, quiet=self.journal is not None)

    # every change goes through here ------------------------------------------------------
    def record(self, seq: int, put: list[str], deleted: list[str], sync: bool = True) -> None:
        """A change made here at `seq`: raise the floor, and append it to the mirror's journal;
        a failure only holds the answers back (the publisher then writes the whole snapshot,
        with retries). Releases pass sync=False: a power loss before the next synced write can
        only bring a released lease back, never double-book (a grant's fdatasync also flushes
        the release)."""
        self.last_seq = max(self.last_seq, seq)
        self.floor = self.last_seq
        if self.journal is None:
            return
        try:
            self.journal.append(seq, put, deleted, sync=sync)
        except MirrorError as exc:
            # once per streak; before this worker's first whole save (start-up) it is expected
            quiet = self._journal_warned or not self.journal.started
            (log.info if quiet else log.warning)(
                "mirror journal: %s; answers wait for a whole mirror save", exc)
            self._journal_warned = True
        else:
            self._journal_warned = False

    def record_existing(self, ids: list[str]) -> None:
        """A request answered again (redelivered, or sent twice): journal its live leases."""
        if self.journal is not None:
            seq, raws = self.ledger.active_at(ids)
            self.record(seq, raws, [])

    def covered(self) -> bool:
        """Whether the mirror already holds every change made here (answers may go out)."""
        return self.journal is not None and self.journal.holds >= self.last_seq

    # rebuilding ----------------------------------------------------------------------------
    def ensure_ready(self, check_mirror: bool = False) -> bool:
        """Before any write: if Redis lost the ledger, rebuild it from the mirror. If Redis went
        back to an older state (restarted from an AOF that missed its last writes) than the
        changes made here, or, with `check_mirror` (at start), than the mirror of the same
        Redis ledger holds, the mirror's newer state replaces it: those changes were answered."""
        with self.lock:
            if self.ledger.is_ready():
                return self._catch_up(check_mirror)
            snapshot = self.mirror.load() if self.mirror is not None else None
            snapshot = snapshot or {"seq": 0, "leases": []}
            restored = self.ledger.restore(snapshot).applied
            if restored and self.journal is not None:  # the mirror holds what Redis now has
                self.journal.covered = max(self.journal.covered, int(snapshot.get("seq", 0)))
            if restored and snapshot.get("leases"):
                log.warning("the Redis ledger was empty: restored %d leases from the mirror "
                            "(seq %s)", len(snapshot["leases"]), snapshot.get("seq"))
            elif not restored and self.ledger.is_ready():
                log.warning("Redis holds leases the mirror does not know: Redis wins, the "
                            "mirror will be rewritten")
            self._restart_at(self.ledger.seq())
            return restored

    def _catch_up(self, check_mirror: bool) -> bool:
        known = self.last_seq  # read before Redis's seq: a change made meanwhile is not a loss
        seq = self.ledger.seq()
        if seq >= known and not check_mirror:
            return False
        try:
            snapshot = self.mirror.load() if self.mirror is not None and self.writer else None
        except MirrorError as exc:
            if seq >= known:  # at start, with nothing to suggest Redis went back
                log.warning("cannot compare the Redis ledger with the mirror: %s", exc)
                return False
            raise NoCapacity.of({}, f"the Redis ledger went back to an older state (seq {seq} "
                                f"< {known}) and the mirror, which holds the newer "
                                f"one, cannot be read ({exc}): no changes until it can") from None
        mirrored = int(snapshot.get("seq", 0)) if snapshot else -1
        same = snapshot is not None and snapshot.get("epoch") == self.ledger.epoch()
        if snapshot is None or mirrored <= seq or (seq >= known and not same):
            if seq < known:  # nothing newer to go back to
                log.error("the Redis ledger went back from seq %d to %d and the mirror holds "
                          "only seq %d: the changes in between are lost", known, seq,
                          mirrored)
                self._restart_at(seq)
            return False
        if not self.ledger.restore(snapshot, replace=True).applied:
            return False  # another writer moved it past the mirror meanwhile: it is live
        log.warning("the Redis ledger went back to seq %d (restarted from an older state): "
                    "replaced it with the mirror's %d leases at seq %d", seq,
                    len(snapshot.get("leases") or []), mirrored)
        if mirrored < self.last_seq:
            log.error("changes from seq %d to %d were answered unmirrored and are lost",
                      mirrored + 1, self.last_seq)
        if self.journal is not None:
            self.journal.covered = max(self.journal.covered, mirrored)
        self._restart_at(mirrored)
        return True

    def _restart_at(self, seq: int) -> None:
        """The ledger was rebuilt: writes go on from its seq, decisions from a fresh read."""
        self.restarts += 1  # first: a change at a seq below the old ones comes after it
        self.last_seq = min(self.last_seq, seq)
        self.floor = max(self.last_seq, 0)
        self.on_rebuilt()
        if self.journal is not None and self.journal.covered > seq:
            # the seqs above were this ledger's before it went back: the changes that now
            # take them are not written anywhere yet
            self.journal.covered = seq
            self.journal.durable = min(self.journal.durable, seq)
