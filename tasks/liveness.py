"""What keeps a worker's liveness file (workers/liveness.py) ahead of now, in the worker.

Each of these pushes the file's deadline to now + VCM_WORKER_STUCK_AFTER:

- the worker starting (worker_init), before it restores the ledger or waits for room;
- a timer of the worker's event loop, every `interval`, unless one of its tasks has been
  running longer than that. A task of the solo pool (the placement worker's) runs on the
  loop's thread, so the loop does not turn until it returns; one of a prefork or threads pool
  (the queries worker's) does not hold the loop up, hence the look at the running tasks. So
  either way a task that runs VCM_WORKER_STUCK_AFTER (give or take `interval`) lets the
  deadline pass, as does a loop that stops turning;
- the consumer's retries while it cannot connect to Redis: the loop is not running then (the
  consumer blocks in kombu's retry until Redis answers), and each second of the retry counts;
- each restart of the consumer (`LivenessStep.stop`): when Redis refuses a command because it
  is full, the consumer restarts again and again (five times a second at most, then a second's
  pause) without the loop running;
- each round of a wait for room in a full Redis, in a task (an answer held) or at start
  (workers.liveness.waiting).

Redis down or full therefore never lets the deadline pass; a task that hangs, outside those
waits, does.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import bootsteps, signals
from celery.utils.nodenames import node_format
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.state import active_requests

from workers import liveness
from workers.settings import Settings

log = logging.getLogger(__name__)

MAX_INTERVAL = 10.0  # seconds between two beats of the event loop at most


def interval(stuck_after: float) -> float:
    """How often the event loop beats: a fifth of the bound, at most MAX_INTERVAL."""
    return min(MAX_INTERVAL, stuck_after / 5)


def a_task_ran(seconds: float) -> bool:
    """Whether a task of this worker has been running for `seconds` or more (yes when the
    running tasks could not be read: the pool's threads add to them while the loop reads them,
    and the next look tells)."""
    for _ in range(10):
        now = time.time()
        try:
            return any(r.time_start and now - r.time_start >= seconds
                       for r in tuple(active_requests))
        except RuntimeError:  # the set changed size while it was read
            continue
    return True


class LivenessStep(bootsteps.StartStopStep):
    """A step of the worker's consumer: beats on a timer of its event loop (started with the
    consumer, after it connected; Celery cancels the timer when the connection fails), and on
    each of the consumer's restarts."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.entry: Any = None
        self.started = False

    def start(self, c: Any) -> None:
        file = liveness.armed()
        if file is None:
            return
        file.beat()
        every = interval(file.stuck_after)
        if not self.started:  # logged at the first start only, not at each reconnect
            self.started = True
            log.info("liveness file %s: kept %gs ahead while the worker is not stuck, "
                     "every %gs", file.path, file.stuck_after, every)

        def tick() -> None:
            if not a_task_ran(every):
                file.beat()

        self.entry = c.timer.call_repeatedly(every, tick)

    def stop(self, c: Any) -> None:
        file = liveness.armed()
        if file is not None:
            file.beat()  # a restart of the consumer (Redis lost or full), or a shutdown
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None


class Consumer(CeleryConsumer):
    """Celery's consumer (the `worker_consumer` setting, celeryconfig.py), whose retries to
    connect to Redis beat the liveness file: kombu calls the retry's callback each second
    while it waits between tries."""

    def ensure_connected(self, conn: Any) -> Any:
        file = liveness.armed()
        if file is None:
            return super().ensure_connected(conn)
        # Celery's ensure_connected calls conn.ensure_connection with its own callback (the
        # check for a shutdown): on this connection object, that callback beats first
        retry = conn.ensure_connection

        def ensure_connection(*args: Any, callback: Any = None, **kwargs: Any) -> Any:
            def each_second() -> None:
                file.beat()
                if callback is not None:
                    callback()

            return retry(*args, callback=each_second, **kwargs)

        conn.ensure_connection = ensure_connection
        return super().ensure_connected(conn)


def liveness_file(settings: Settings, nodename: str) -> liveness.LivenessFile | None:
    """The worker's liveness file: VCM_WORKER_LIVENESS_FILE with Celery's %n (the node name
    before its @), %h and %d expanded from `nodename`; None when it is off."""
    if settings.worker_liveness_file is None:
        return None
    return liveness.LivenessFile(node_format(settings.worker_liveness_file, nodename),
                                 settings.worker_stuck_after)


@signals.worker_init.connect
def _arm(sender: Any = None, **_: Any) -> None:
    """At the worker's start, before it builds its runtime and restores the ledger."""
    liveness.arm(liveness_file(Settings.from_env(), sender.hostname))
