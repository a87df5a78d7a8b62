"""A worker's liveness file, for a Kubernetes liveness probe that needs neither Python nor Redis.

The file's modification time is a deadline: the moment until which the worker counts as
alive. Each time the worker shows that it is not stuck it sets that time to now +
VCM_WORKER_STUCK_AFTER, and the probe only checks that the deadline is still ahead
(deploy/placement.yaml, deploy/queries.yaml):

    test "$(stat -c %Y /tmp/vcm-placement.alive)" -gt "$(date +%s)"

So the bound lives in one place, the worker's settings, and the probe carries no number. What
counts as "not stuck" is in tasks/liveness.py (the worker's event loop turning with no task
running long, its reconnects to Redis); here also every round of a wait for Redis
(`waiting`, called by redis_memory.hold and tasks.holding.wait_for_room): a worker waiting for
room in a full Redis is doing what it should.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger(__name__)


class LivenessFile:
    """The file whose modification time says until when this worker counts as alive."""

    def __init__(self, path: str, stuck_after: float) -> None:
        self.path = path
        self.stuck_after = stuck_after
        self._failing = ""  # the last error written, logged once until a write succeeds

    def beat(self) -> None:
        """Alive until now + stuck_after. Never raises: a file that cannot be written is
        logged (once until it can be again), and the worker goes on working."""
        deadline = time.time() + self.stuck_after
        try:
            try:
                os.utime(self.path, (deadline, deadline))
            except FileNotFoundError:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                with open(self.path, "a"):
                    pass
                os.utime(self.path, (deadline, deadline))
        except OSError as exc:
            if str(exc) != self._failing:
                self._failing = str(exc)
                log.warning("cannot write the liveness file %s (VCM_WORKER_LIVENESS_FILE): %s; "
                            "a liveness probe reading it will fail", self.path, exc)
            return
        if self._failing:
            self._failing = ""
            log.warning("the liveness file %s is written again", self.path)


_armed: dict[str, LivenessFile] = {}  # the one liveness file of this worker process, if any


def arm(file: LivenessFile | None) -> None:
    """Make `file` this process's liveness file (None: none) and beat it once. Inherited by
    the processes a prefork pool forks afterwards."""
    _armed.pop("file", None)
    if file is not None:
        _armed["file"] = file
        file.beat()


def armed() -> LivenessFile | None:
    return _armed.get("file")


def waiting() -> None:
    """One round of a wait for Redis (down, or full): the worker is waiting as designed, not
    stuck. Counted from the thread that runs the worker's loop or its tasks only (the main
    thread, or one running a task): a background thread's wait, the mirror publisher's, says
    nothing about them."""
    file = _armed.get("file")
    if file is None:
        return
    if threading.current_thread() is not threading.main_thread():
        from celery import current_task

        if not current_task:  # a proxy: false without a task in this thread
            return
    file.beat()
