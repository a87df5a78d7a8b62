"""The placement worker's background loop: write the mirror (group commit), then release the
replies it covers; expire waiters whose wait ran out; serve the line when pools change, or
when a serve failed part-way (workers/service/waiting.py).

Group commit, pacing and the save's failures are saves.py's; held answers are
released by held_replies.py; the status hash is written by status.py.

A failing mirror never stops the loop: placement goes on in Redis, held replies stay held (or
go out unmirrored after ``VCM_MIRROR_MAX_DELAY``, logged and counted), waiters still expire,
and the save is retried with backoff (0.2 s doubling to 10 s). A snapshot that does not fit
(``MirrorTooLarge``) is an error of its own: logged at ERROR once per ledger seq, counted, shown
as ``state: too-large``; it is retried when the ledger changes (releases may make it fit).
Any other exception in a round (a bug, odd data) is caught too: logged with its traceback once
per streak of failing rounds, counted in ``errors``, shown as ``state: failing``, retried with
the same backoff; the replies a durable write already covers are still released. A mirror
that holds a newer seq of the same ledger (another worker saved it) is left as it is: it
covers this save. Leases that hold text UTF-8 cannot encode (a lone surrogate in a string)
are written escaped, logged with their ids and counted in ``set-aside``: a rebuild from the
mirror sets them aside, still holding their capacity.

Status, for /readyz and /metrics: the ledger's mirror status hash (``read_status`` parses it)

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
set-aside              leases of the last save that UTF-8 cannot encode (written escaped)
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
import threading
import time

from tenacity import RetryCallState, Retrying

from .. import backoff
from ..adapters.mirror.errors import MirrorError
from ..adapters.replies import CeleryReplies
from ..ports import Mirror
from .held_replies import HeldReplies
from .saves import MirrorSaves
from .status import PublisherStatus

log = logging.getLogger(__name__)

HOUSEKEEPING = 1.0


class Publisher(threading.Thread):
    def __init__(self, service, mirror: Mirror | None, replies: CeleryReplies,
                 max_delay: float = 0.0) -> None:
        super().__init__(name="vcm-publisher", daemon=True)
        self.service = service
        self.ledger = service.ledger
        self.mirror = mirror
        self.stopping = threading.Event()
        self._last_housekeeping = 0.0
        self.status = PublisherStatus(self.ledger)
        self.saves = MirrorSaves(service, mirror, self.status)
        self.held = HeldReplies(self.ledger, replies, max_delay)

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
        pause = self.saves.retry_at - time.monotonic()
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
        self.status.error(exc, state.next_action.sleep, self.saves.failing_since)

    def step(self) -> None:
        self.status.round_failed = False
        saves = self.saves
        failure: Exception | None = None
        seq = -1
        if self.mirror is None:
            if not self.ledger.is_ready():
                self.service.ensure_ready()
        else:
            try:
                seq, ready = saves.check_epoch()
                if not ready:
                    self.service.ensure_ready()
                    seq, _ = saves.check_epoch()
                if time.monotonic() >= saves.retry_at and saves.should_save():
                    self.write_mirror(seq)
            except Exception as exc:  # noqa: BLE001 - raised below, once replies are out
                failure = exc
        # what a durable write already covers goes out whatever failed above
        self.release_replies()
        if failure is not None:
            raise failure
        if saves.journal is not None:
            try:  # releases are written at once, and synced here within the round
                saves.journal.sync()
            except MirrorError as exc:
                log.warning("%s: the whole mirror will be saved again", exc)
        status = saves.take_status()
        if status is not None:  # off the replies' path
            self.status.write(status)
        elif saves.journal is not None:
            saves.report_journal(seq)
        elif saves.failing_since is not None:
            self.status.held_replies()
        now = time.monotonic()
        if now - self._last_housekeeping >= HOUSEKEEPING:
            self._last_housekeeping = now
            self.service.expire_waiters()
            # pools_changed first: it takes note of the change whatever is owed
            if self.service.pools_changed() or self.service.serving_owed():
                self.service.serve_waiters()
        if self.status.streak and not self.status.round_failed:
            self.status.recovered(saves.failing_since)

    # a method of the thread's own, so that the bench can time the save
    def write_mirror(self, seq: int) -> None:
        self.saves.write(seq)

    def release_replies(self) -> None:
        self.held.release(self.saves.covered, self.saves.failing_since)
