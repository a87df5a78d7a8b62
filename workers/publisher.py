"""The placement worker's background loop: write the mirror (group commit), then release the
replies it covers; expire waiters whose wait ran out; serve the line when pools change."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .adapters.mirror import MirrorError
from .adapters.replies import CeleryReplies

log = logging.getLogger(__name__)


class Publisher(threading.Thread):
    def __init__(self, service, mirror: Any | None, replies: CeleryReplies,
                 max_delay: float = 0.0) -> None:
        super().__init__(name="vcm-publisher", daemon=True)
        self.service = service
        self.ledger = service.ledger
        self.mirror = mirror
        self.replies = replies
        self.max_delay = max_delay  # 0: replies wait for the mirror however long it takes
        self.mirrored = -1
        self.stopping = threading.Event()
        self._last_housekeeping = 0.0
        self.failing_since: float | None = None

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        delay = 0.2
        while not self.stopping.is_set():
            try:
                self.ledger.wait_kick(0.5)
                self.step()
                delay = 0.2
            except Exception as exc:  # keep going: Redis or the mirror may come back
                log.warning("publisher: %s; retrying in %.1fs", exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def step(self) -> None:
        if not self.ledger.is_ready():
            self.service.ensure_ready()
        if self.mirror is not None:
            self.write_mirror()
        covered = self.mirrored if self.mirror is not None else None
        late = (self.failing_since is not None and self.max_delay > 0
                and time.time() - self.failing_since > self.max_delay)
        done = []
        for task_id, seq, result in self.ledger.outbox():
            if covered is None or seq <= covered or late:
                self.replies.deliver(task_id, result)
                done.append(task_id)
        self.ledger.outbox_done(done)
        now = time.monotonic()
        if now - self._last_housekeeping >= 1.0:
            self._last_housekeeping = now
            self.service.expire_waiters()
            if self.service.pools_changed():
                self.service.serve_waiters()

    def write_mirror(self) -> None:
        seq = self.ledger.seq()
        if seq == self.mirrored:
            return
        snapshot = self.ledger.snapshot()
        status = self.ledger.p + "mirror"
        try:
            writes = self.mirror.save(snapshot)
        except MirrorError as exc:
            if self.failing_since is None:
                self.failing_since = time.time()
            self.ledger.r.hset(status, mapping={"error": str(exc)[:500],
                                                "failing-since": self.failing_since,
                                                "ledger-seq": seq})
            self.ledger.r.hincrby(status, "failures", 1)
            raise
        self.failing_since = None
        self.mirrored = snapshot["seq"]
        pipe = self.ledger.r.pipeline(transaction=False)
        pipe.hset(status, mapping={"seq": snapshot["seq"], "ledger-seq": seq,
                                   "written-at": time.time(), "error": "",
                                   "leases": len(snapshot["leases"])})
        pipe.hincrby(status, "saves", 1)
        pipe.hincrby(status, "writes", int(writes or 1))
        pipe.execute()
