"""The publisher's status in the Redis hash ``vcm:mirror`` (its fields are listed in
workers/publisher/thread.py): a save's or failure's fields written with their counters, and the
rounds that meet an unexpected exception, logged, counted and shown until one succeeds."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..adapters.redis_memory import refused_for_memory
from ..ports import Ledger
from .mirror_status import parse_status

log = logging.getLogger(__name__)


def read_status(ledger: Ledger, now: float | None = None) -> dict[str, Any]:
    """The status hash, typed, plus ``lag-seconds`` (how long the mirror has been failing, 0
    when ok) and ``behind`` (ledger seq minus mirrored seq at the last update)."""
    return parse_status(ledger.mirror_status(), now)


class PublisherStatus:
    """Writes the status hash through the ledger; tracks the streak of failing rounds."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.streak = 0  # consecutive rounds that met an unexpected exception
        self.round_failed = False  # this round did
        self._last_error = ""  # the last one logged with its traceback
        self._held = -1  # held-replies as last written

    def write(self, status: dict[str, Any]) -> None:
        """A save's or a failure's status: its fields, counters and fields to clear."""
        held = self.ledger.outbox_size()
        counters = {c: status[c] for c in ("saves", "writes", "failures", "too-large")
                    if status.get(c)}
        self.ledger.mirror_status_write(
            {**status["fields"], "updated-at": time.time(), "held-replies": held},
            incr=counters, clear=status.get("clear", ()))
        self._held = held

    def held_replies(self) -> None:
        """Show the replies held now, when they changed since the last write: while the mirror
        fails or the snapshot is too large, a status is written only when a save is tried (a
        too-large one again only when the ledger changes), and an answer held just after the
        attempt would go unshown."""
        held = self.ledger.outbox_size()
        if held != self._held:
            self.ledger.mirror_status_write({"held-replies": held, "updated-at": time.time()})
            self._held = held

    def error(self, exc: Exception, delay: float, failing_since: float | None,
              seq: int | None = None) -> None:
        """Log (with the traceback once per streak, or when the error changes), count and
        show an unexpected exception (``seq``: in the save of that ledger seq); never
        raises."""
        self.round_failed = True
        self.streak += 1
        full = refused_for_memory(exc)  # an outage of its own, not a bug: no traceback
        text = ("RedisFull: Redis is full and refuses writes until memory is freed" if full
                else f"{type(exc).__name__}: {exc}"[:500])
        if self.streak == 1 or text != self._last_error:
            self._last_error = text
            log.error("publisher round failed (%s); retrying in %.1fs", text, delay,
                      exc_info=None if full else exc)
        else:
            log.info("publisher round failed again (%d in a row): %s", self.streak, text)
        fields: dict[str, Any] = {"state": "failing", "error": f"publisher: {text}",
                                  "last-error": text, "updated-at": time.time()}
        if failing_since is not None:
            fields["failing-since"] = failing_since
        counters = {"errors": 1}
        if seq is not None:
            fields["ledger-seq"] = seq
            counters["failures"] = 1
        try:  # Redis itself may be what fails
            self.ledger.mirror_status_write(fields, incr=counters)
        except Exception:  # noqa: BLE001
            log.debug("cannot write the publisher's status", exc_info=True)

    def recovered(self, failing_since: float | None) -> None:
        log.warning("publisher rounds succeed again after %d failed", self.streak)
        self.streak = 0
        self._last_error = ""
        if failing_since is None:  # the mirror is fine: the state no longer says failing
            self.ledger.mirror_status_write({"state": "ok", "error": "",
                                             "updated-at": time.time()})
