"""Releasing the answers held in the Redis outbox: those the mirror covers go out; while the
mirror has been failing for longer than ``VCM_MIRROR_MAX_DELAY`` (when set), the others go
out too, unmirrored, logged once per outage and counted in ``unmirrored-replies``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..adapters.replies import CeleryReplies
from ..ports import Ledger

log = logging.getLogger(__name__)


class HeldReplies:
    def __init__(self, ledger: Ledger, replies: CeleryReplies, max_delay: float = 0.0) -> None:
        self.ledger = ledger
        self.replies = replies
        self.max_delay = max_delay  # 0: replies wait for the mirror however long it takes
        self._late_logged = False

    def release(self, covered_seq: Callable[[], int | None], failing_since: float | None
                ) -> None:
        """Deliver the held replies up to the ledger seq the mirror covers (None: no mirror,
        all). Read after the outbox, so that it covers as much of what was read as it can."""
        if failing_since is None:  # no outage (a save ended it): the next one is logged again
            self._late_logged = False
        held = self.ledger.outbox()
        if not held:
            return
        covered = covered_seq()
        late = (failing_since is not None and self.max_delay > 0
                and time.time() - failing_since > self.max_delay)
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
