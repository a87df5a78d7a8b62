"""What the workers answered, heard from their task events (what Flower shows)."""

from __future__ import annotations

import threading
from typing import Any

from tests.support.procs import wait_for


class Answers:
    """The answers the workers give to one task id, one per copy they run, from their task
    events (what Flower shows): the result backend keeps one result per task id and never
    overwrites a success, so it cannot tell the copies' answers apart."""

    def __init__(self, app: Any, task_id: str) -> None:
        self.task_id = task_id
        self.seen: list[str] = []  # "granted", or the refusal's name
        self._heard = threading.Event()
        self._conn = app.connection_for_read()
        self._receiver = app.events.Receiver(self._conn, handlers={
            "task-succeeded": self._answered, "task-failed": self._answered,
            "worker-heartbeat": lambda _event: self._heard.set()})
        self._thread = threading.Thread(target=self._receiver.capture, daemon=True)

    def __enter__(self) -> Answers:
        self._thread.start()
        # a worker's heartbeat heard: the receiver listens (workers beat every 2 s)
        assert self._heard.wait(30), "no worker event heard"
        return self

    def __exit__(self, *_: Any) -> None:
        self._receiver.should_stop = True
        self._thread.join(10)
        self._conn.release()

    def _answered(self, event: dict[str, Any]) -> None:
        if event["uuid"] == self.task_id:
            self.seen.append("granted" if event["type"] == "task-succeeded"
                             else event["exception"].split("(", 1)[0])

    def wait(self, n: int, timeout: float = 30) -> list[str]:
        wait_for(lambda: len(self.seen) >= n, timeout=timeout,
                 what=f"{n} answers to {self.task_id} (so far {self.seen})")
        return list(self.seen)
