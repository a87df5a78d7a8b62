"""The placement worker's background loop: write the mirror (group commit), then release the
replies it covers; expire waiters whose wait ran out; serve the line when pools change.

Group commit: one save covers every change made before it read the ledger, so while one save is
in flight any number of placements queue up behind it and are covered by the next one. Under
load (changes arrived during the save, or it covered several) the next save also waits until
``max(PACING x save time, the commit window)`` has passed, so a burst costs at most ~10 saves a
second whatever the API's speed, and the worker keeps most of the CPU (snapshots are whole-ledger
serialisations). A lone client, one change per save, never waits for the window.

A failing mirror never stops the loop: placement goes on in Redis, held replies stay held (or
go out unmirrored after ``VCM_MIRROR_MAX_DELAY``, logged and counted), waiters still expire,
and the save is retried with backoff (0.2 s doubling to 10 s). A snapshot that does not fit
(``MirrorTooLarge``) is an error of its own: logged at ERROR once per ledger seq, counted, shown
as ``state: too-large``; it is retried when the ledger changes (releases may make it fit).
Any other exception in a round (a bug, odd data) is caught too: logged with its traceback once
per streak of failing rounds, counted in ``errors``, shown as ``state: failing``, retried with
the same backoff; the replies a durable write already covers are still released. A mirror
that holds a newer seq of the same ledger (another worker saved it) is left as it is: it
covers this save. Leases that cannot be encoded (a lone surrogate in a string) are left out
of the mirror, logged with their ids and counted in ``set-aside``, never blocking the rest.

Status, for /readyz and /metrics: the Redis hash ``vcm:mirror`` (``read_status`` parses it)

=====================  =====================================================================
state                  ``ok`` | ``failing`` | ``too-large``
error                  the last error ("" when ok)
failing-since          epoch seconds of the first failure of the current outage, 0 when ok
seq / ledger-seq       the ledger seq the mirror holds / the ledger's seq at the last attempt
written-at             epoch seconds of the last successful save
updated-at             epoch seconds of the last status update
held-replies           replies waiting in the outbox for the mirror (at the last update)
leases                 active leases in the last saved snapshot
saves, writes          successful saves, API writes they took (counters)
failures, too-large    failed saves, of which too large (counters)
errors                 rounds that met an unexpected exception, not a MirrorError (counter)
last-error             the last such exception (kept after recovery)
set-aside              leases left out of the last save because they cannot be encoded
superseded             saves left unwritten: the mirror held a newer seq (counter)
unmirrored-replies     replies released unmirrored because of VCM_MIRROR_MAX_DELAY (counter)
last-writes            API writes of the last save (0: the mirror already held it)
encoded-bytes          payload size as stored (compressed for ConfigMaps), last save/attempt
raw-bytes              compact JSON size of the snapshot, last save/attempt
configmaps             ConfigMaps (head + shards) holding the last save; 1 for the file
max-configmaps         ConfigMaps one snapshot may use (ConfigMap mirror only)
needed-configmaps      ConfigMaps the too-large snapshot would need
save-seconds           duration of the last save
caught-up-after        seconds from failing-since to the save that ended the last outage
epoch                  token of the Redis ledger the mirror was written from (see check_epoch)
journal-records        records in the file mirror's journal since its last whole save
=====================  =====================================================================
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

from tenacity import RetryCallState, Retrying

from . import backoff
from .adapters.keys import PREFIX, Keys
from .adapters.mirror import MirrorError, MirrorSuperseded, MirrorTooLarge
from .adapters.replies import CeleryReplies
from .mirror_status import parse_status
from .ports import JournaledMirror, Mirror

log = logging.getLogger(__name__)

TOO_LARGE_RETRY = 1.0  # at most this often while the ledger changes
TOO_LARGE_SAME_SEQ_RETRY = 60.0  # the same snapshot again (nothing changed: cannot fit)
HOUSEKEEPING = 1.0
# group commit under load (see write_mirror): the next save waits max(PACING x the last
# save's duration, the commit window) after it, i.e. at most ~1/window saves a second; the
# window starts at FIRST_WINDOW and grows to VCM_MIRROR_COMMIT_WINDOW (settings)
PACING = 1.0
FIRST_WINDOW = 0.02
COMPACT_RECORDS = 2000  # journal records (at least the leases saved) before a whole save


def read_status(redis_client, prefix: str = PREFIX, now: float | None = None) -> dict[str, Any]:
    """The ``vcm:mirror`` hash, typed, plus ``lag-seconds`` (how long the mirror has been
    failing, 0 when ok) and ``behind`` (ledger seq minus mirrored seq at the last update)."""
    return parse_status(redis_client.hgetall(Keys(prefix).mirror), now)


class Publisher(threading.Thread):
    def __init__(self, service, mirror: Mirror | None, replies: CeleryReplies,
                 max_delay: float = 0.0) -> None:
        super().__init__(name="vcm-publisher", daemon=True)
        self.service = service
        self.ledger = service.ledger
        self.mirror = mirror
        # a journaled mirror (the file) gets each change from the service before it is
        # answered; here it only needs a whole save at start, after a failed append, to
        # release held replies, and to compact the journal
        self.journal = mirror if isinstance(mirror, JournaledMirror) else None
        self.replies = replies
        self.max_delay = max_delay  # 0: replies wait for the mirror however long it takes
        self.mirrored = -1  # ledger seq the mirror holds (-1: unknown, write it)
        self.epoch: str | None = None  # the Redis ledger `mirrored` refers to
        self.stopping = threading.Event()
        self._last_housekeeping = 0.0
        self.failing_since: float | None = None  # epoch seconds
        self.retry_at = 0.0  # monotonic: no save before this (backoff, commit window)
        self.window = 0.0  # the current commit window (0 when not under load)
        self.commit_window = service.settings.mirror_commit_window  # its longest
        self.first_window = min(FIRST_WINDOW, self.commit_window)
        self.last_save = 0.0  # monotonic end of the last save
        self._save_backoff = backoff.Backoff()  # between failed saves
        self._too_large_seq: int | None = None  # seq whose snapshot did not fit (logged)
        self._too_large_at = 0.0  # monotonic time of the last too-large attempt
        self._late_logged = False
        self._parsed: dict[Any, Any] = {}  # raw lease JSON -> parsed, between snapshots
        self._attempt_at = 0.0  # epoch seconds: start of the last save
        self._status: dict[str, Any] | None = None  # of the last save, written after replies
        self._leases = 0  # active leases in the last save
        self._reported = -1  # seq last shown in the status hash
        self.streak = 0  # consecutive rounds that met an unexpected exception
        self._round_failed = False  # this round did
        self._last_error = ""  # the last one logged with its traceback
        self._aside: frozenset[str] = frozenset()  # leases set aside, last logged

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        # a round that raises, whatever it raised, is retried with backoff: Redis may come back
        rounds = Retrying(wait=backoff.doubling(), sleep=self.stopping.wait,
                          before_sleep=self._before_retry)
        while not self.stopping.is_set():
            rounds(self._round)

    def _round(self) -> None:
        if self.stopping.is_set():
            return
        pause = self.retry_at - time.monotonic()
        if self.mirror is None:  # no mirror, no outbox: only housekeeping to do
            self.stopping.wait(HOUSEKEEPING / 2)
        elif pause > 0:  # backing off or in the commit window: changes need not wake us
            self.stopping.wait(min(pause, 0.5))
        else:
            self.ledger.wait_kick(0.5)
        self.step()

    def _before_retry(self, state: RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        exc = state.outcome.exception()
        assert isinstance(exc, Exception)
        self._error(exc, state.next_action.sleep)

    def step(self) -> None:
        self._round_failed = False
        failure: Exception | None = None
        seq = -1
        if self.mirror is None:
            if not self.ledger.is_ready():
                self.service.ensure_ready()
        else:
            try:
                seq, ready = self.check_epoch()
                if not ready:
                    self.service.ensure_ready()
                    seq, _ = self.check_epoch()
                if time.monotonic() >= self.retry_at and self._should_save():
                    self.write_mirror(seq)
            except Exception as exc:  # noqa: BLE001 - raised below, once replies are out
                failure = exc
        # what a durable write already covers goes out whatever failed above
        self.release_replies()
        if failure is not None:
            raise failure
        if self.journal is not None:
            try:  # releases are written at once, and synced here within the round
                self.journal.sync()
            except MirrorError as exc:
                log.warning("%s: the whole mirror will be saved again", exc)
        if self._status is not None:  # off the replies' path
            self._write_status(self._status)
            self._status = None
        elif self.journal is not None:
            self._report_journal(seq)
        now = time.monotonic()
        if now - self._last_housekeeping >= HOUSEKEEPING:
            self._last_housekeeping = now
            self.service.expire_waiters()
            if self.service.pools_changed():
                self.service.serve_waiters()
        if self.streak and not self._round_failed:
            self._recovered()

    # unexpected exceptions ---------------------------------------------------------------
    def _error(self, exc: Exception, delay: float, seq: int | None = None) -> None:
        """Log (with the traceback once per streak, or when the error changes), count and
        show an unexpected exception (``seq``: in the save of that ledger seq); never
        raises."""
        self._round_failed = True
        self.streak += 1
        text = f"{type(exc).__name__}: {exc}"[:500]
        if self.streak == 1 or text != self._last_error:
            self._last_error = text
            log.error("publisher round failed (%s); retrying in %.1fs", text, delay,
                      exc_info=exc)
        else:
            log.info("publisher round failed again (%d in a row): %s", self.streak, text)
        fields: dict[str, Any] = {"state": "failing", "error": f"publisher: {text}",
                                  "last-error": text, "updated-at": time.time()}
        if self.failing_since is not None:
            fields["failing-since"] = self.failing_since
        counters = {"errors": 1}
        if seq is not None:
            fields["ledger-seq"] = seq
            counters["failures"] = 1
        try:  # Redis itself may be what fails
            self.ledger.mirror_status_write(fields, incr=counters)
        except Exception:  # noqa: BLE001
            log.debug("cannot write the publisher's status", exc_info=True)

    def _recovered(self) -> None:
        log.warning("publisher rounds succeed again after %d failed", self.streak)
        self.streak = 0
        self._last_error = ""
        if self.failing_since is None:  # the mirror is fine: the state no longer says failing
            self.ledger.mirror_status_write({"state": "ok", "error": "",
                                             "updated-at": time.time()})

    def check_epoch(self) -> tuple[int, bool]:
        """(the ledger's seq, whether it is ready). Forgets what the mirror covers when Redis
        is not the ledger that was mirrored (wiped, restarted from an older state, replaced):
        replies are then held until the next save. The epoch is a token in ``vcm:mirror``, made
        by the first publisher that sees the hash missing."""
        known = max(self.mirrored, self.service.last_seq)  # before Redis's seq is read
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

    def _report_journal(self, seq: int) -> None:
        """Between whole saves the journal covers the changes: show how far, in the status."""
        covered = self._durable()
        if covered is None or covered < 0 or covered == self._reported:
            return
        self._reported = covered
        self.ledger.mirror_status_write({
            "seq": covered, "ledger-seq": max(seq, covered), "updated-at": time.time(),
            "journal-records": self.journal.records})

    def _should_save(self) -> bool:
        j = self.journal
        if j is None:
            return True  # write_mirror returns at once when the mirror holds the seq
        return (self.mirrored < 0 or j.failed is not None
                or j.records >= max(COMPACT_RECORDS, self._leases)
                or self.ledger.outbox_size() > 0)

    def _covered(self) -> int | None:
        """The ledger seq up to which the mirror holds every change (None: no mirror)."""
        if self.mirror is None:
            return None
        return max(self.mirrored, self.journal.holds) if self.journal else self.mirrored

    def _durable(self) -> int | None:
        """Like _covered, counting only journal records that are fdatasync'd."""
        if self.journal is None:
            return self._covered()
        return max(self.mirrored, min(self.journal.holds, self.journal.durable))

    # replies ---------------------------------------------------------------------------
    def release_replies(self) -> None:
        held = self.ledger.outbox()
        if not held:
            return
        covered = self._covered()
        late = (self.failing_since is not None and self.max_delay > 0
                and time.time() - self.failing_since > self.max_delay)
        done, unmirrored = [], 0
        failure: Exception | None = None
        for task_id, seq, result in held:
            if covered is not None and seq > covered and not late:
                continue
            try:  # one reply that cannot be stored must not hold back the others
                self.replies.deliver(task_id, result)
            except Exception as exc:  # noqa: BLE001 - raised below, after the others
                failure = failure or exc
                continue
            done.append(task_id)
            if covered is not None and seq > covered:
                unmirrored += 1
        self.ledger.outbox_done(done)
        if unmirrored:
            self.ledger.mirror_status_incr("unmirrored-replies", unmirrored)
            if not self._late_logged:
                self._late_logged = True
                log.error("mirror failing for more than VCM_MIRROR_MAX_DELAY=%gs: releasing "
                          "replies the mirror does not cover (%d now; counted in "
                          "unmirrored-replies)", self.max_delay, unmirrored)
        if failure is not None:
            raise failure

    # the mirror ------------------------------------------------------------------------
    def write_mirror(self, seq: int) -> None:
        if seq == self.mirrored:
            return
        if (seq == self._too_large_seq
                and time.monotonic() - self._too_large_at < TOO_LARGE_SAME_SEQ_RETRY):
            return
        started = time.monotonic()
        self._attempt_at = time.time()  # an outage starts with the first save that fails
        mark = self.journal.mark() if self.journal is not None else None
        known = max(self.mirrored, self.service.last_seq)  # before the snapshot is read
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
        self._saved(snapshot, writes, took)

    def _saved(self, snapshot: dict[str, Any], writes: int | None, took: float) -> None:
        stats = self.mirror.last_stats
        outage = None
        if self.failing_since is not None:
            outage = time.time() - self.failing_since
            log.warning("mirror written again after %.1fs of failures (seq %s, %d leases)",
                        outage, snapshot["seq"], len(snapshot["leases"]))
        self.failing_since = None
        self._late_logged = False
        self._too_large_seq = None
        self._save_backoff.reset()
        self.mirrored = self._reported = snapshot["seq"]
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
                log.error("%d leases cannot be encoded (a lone surrogate in a string) and are "
                          "left out of the mirror: they stay in Redis but would not survive "
                          "its loss: %s", len(aside), ", ".join(sorted(aside)))
        if self.mirror.max_configmaps is not None:
            fields["max-configmaps"] = self.mirror.max_configmaps
        if outage is not None:
            fields["caught-up-after"] = round(outage, 3)
        self._status = {"fields": fields, "saves": 1, "writes": int(writes or 0),
                        "clear": ["needed-configmaps"]}

    def _write_status(self, status: dict[str, Any]) -> None:
        held = self.ledger.outbox_size()
        counters = {c: status[c] for c in ("saves", "writes", "failures", "too-large")
                    if status.get(c)}
        self.ledger.mirror_status_write(
            {**status["fields"], "updated-at": time.time(), "held-replies": held},
            incr=counters, clear=status.get("clear", ()))

    def _failing(self, seq: int, state: str, error: Exception | str,
                 extra: dict[str, Any] | None = None) -> None:
        if self.failing_since is None:
            self.failing_since = self._attempt_at
        fields: dict[str, Any] = {
            "state": state, "error": str(error)[:500], "failing-since": self.failing_since,
            "ledger-seq": seq, **(extra or {}),
        }
        self._write_status({"fields": fields, "failures": 1,
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
            self._error(exc, delay, seq)
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
