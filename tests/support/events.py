"""What the workers answered, heard from their task events (what Flower shows)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from tests.support.procs import wait_for

PROBE = "vcm-test-probe"  # an event type no worker sends: Answers' own, to hear itself
SETTLE = 0.25  # seconds: a task event published after its result was read comes within this


class Answers:
    """The answers the workers give to one task id, one per copy they run, from their task
    events (what Flower shows): the result backend keeps one result per task id and never
    overwrites a success, so it cannot tell the copies' answers apart. `hostname`: only the
    answers of that worker (its -n name)."""

    def __init__(self, app: Any, task_id: str, hostname: str | None = None) -> None:
        self.task_id = task_id
        self.hostname = hostname
        self.seen: list[str] = []  # "granted", or the refusal's name
        self._start = 0  # the answers in `seen` before this came before Answers listened
        self._heard = threading.Event()
        self._probe = uuid.uuid4().hex
        self._conn = app.connection_for_read()
        self._receiver = app.events.Receiver(self._conn, handlers={
            "task-succeeded": self._answered, "task-failed": self._answered,
            PROBE: self._probed})
        self._thread = threading.Thread(target=self._receiver.capture, daemon=True)
        self._send_conn = app.connection_for_write()
        self._dispatcher = app.events.Dispatcher(self._send_conn, enabled=True)

    def _send_probe(self) -> None:
        """An event of our own through the broker, sent the way the workers send theirs."""
        self._dispatcher.send(PROBE, probe=self._probe)

    def __enter__(self) -> Answers:
        self._thread.start()

        def heard() -> bool:
            self._send_probe()
            return self._heard.wait(0.1)

        # the receiver listens once it hears an event sent after it started: our probe
        wait_for(heard, timeout=30, interval=0, what="the event receiver to listen")
        # a worker publishes a task's event just after it stores the task's result: the answer
        # to a copy sent before this (the client already read its result) may still be on its
        # way. It is not one of the answers to come: a moment later, what was heard so far,
        # up to a second probe of ours, is set aside
        time.sleep(SETTLE)
        self._heard.clear()
        wait_for(heard, timeout=30, interval=0, what="the event receiver")
        self._start = len(self.seen)
        return self

    def __exit__(self, *_: Any) -> None:
        self._receiver.should_stop = True
        # it looks at should_stop after each event or a second without any: a probe wakes it
        deadline = time.monotonic() + 10
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._send_probe()
            self._thread.join(0.1)
        self._dispatcher.close()
        self._send_conn.release()
        self._conn.release()

    def _probed(self, event: dict[str, Any]) -> None:
        if event.get("probe") == self._probe:
            self._heard.set()

    def _answered(self, event: dict[str, Any]) -> None:
        if event["uuid"] == self.task_id and self.hostname in (None, event.get("hostname")):
            self.seen.append("granted" if event["type"] == "task-succeeded"
                             else event["exception"].split("(", 1)[0])

    def wait(self, n: int, timeout: float = 30) -> list[str]:
        wait_for(lambda: len(self.seen) - self._start >= n, timeout=timeout,
                 what=f"{n} answers to {self.task_id} (so far {self.seen[self._start:]})")
        return self.seen[self._start:]
