"""Copies of a task (the same task id sent again: `vcm`'s resend, a visibility-timeout
redelivery, a job step that resends as the README shows) through the public task API, against
a placement worker started as documented. A task id answered once, with leases or a refusal,
gives every later copy that same answer and is never placed again."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from tests.helpers import call, placement_barrier
from tests.support.audit import audit
from tests.support.procs import wait_for

COPIES = 5


def _names(leases: list[dict]) -> list[str]:
    return [x["metadata"]["name"] for x in leases]


def _fill(s) -> list[str]:
    """Every vCPU and byte of memory of both pools, held by `hog`."""
    return _names(call(s.app, "vcm.acquire", request={"vcpus": 16, "memory": 64, "vcenters": 2,
                                                      "owner": "hog"}))


def _send(s, name: str, task_id: str, **kwargs: Any):
    return s.app.send_task(name, kwargs=kwargs, queue="placement", task_id=task_id)


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

    def wait(self, n: int) -> list[str]:
        wait_for(lambda: len(self.seen) >= n, timeout=30,
                 what=f"{n} answers to {self.task_id} (so far {self.seen})")
        return list(self.seen)


def _copies(s, name: str, task_id: str, **kwargs: Any) -> list[str]:
    """Send COPIES copies of a task; each one's answer once all are answered."""
    with Answers(s.app, task_id) as answers:
        for _ in range(COPIES):
            _send(s, name, task_id, **kwargs)
        return answers.wait(COPIES)


def _refusal(r) -> BaseException:
    with pytest.raises(Exception) as info:
        r.get(timeout=20)
    return info.value


def test_copies_of_a_refused_acquire_are_refused_after_capacity_frees(s):
    hog = _fill(s)
    task_id = uuid.uuid4().hex
    request = {"vcpus": 4, "memory": 4, "owner": "late"}
    r = _send(s, "vcm.acquire", task_id, request=request)
    first = _refusal(r)
    assert type(first).__name__ == "NoCapacity"
    assert sorted(call(s.app, "vcm.release", owner="hog")) == sorted(hog)
    answers = _copies(s, "vcm.acquire", task_id, request=request)
    assert (answers, len(audit(s.ledger)["leases"])) == (["NoCapacity"] * COPIES, 0)
    assert _refusal(r).args == first.args  # the first answer, word for word
    # the room is really free: the same request in a task of its own is granted
    assert len(call(s.app, "vcm.acquire", request=request)) == 1
    s.check()


def test_copies_of_a_request_whose_wait_ran_out_are_refused_after_capacity_frees(s):
    hog = _fill(s)
    task_id = uuid.uuid4().hex
    request = {"vcpus": 4, "memory": 4, "owner": "late", "wait": 1}
    r = _send(s, "vcm.acquire", task_id, request=request)
    first = _refusal(r)
    assert type(first).__name__ == "WaitTimeout"
    assert call(s.app, "vcm.waiting") == []
    assert sorted(call(s.app, "vcm.release", owner="hog")) == sorted(hog)
    answers = _copies(s, "vcm.acquire", task_id, request=request)
    assert (answers, len(audit(s.ledger)["leases"])) == (["WaitTimeout"] * COPIES, 0)
    assert call(s.app, "vcm.waiting") == []
    assert _refusal(r).args == first.args
    s.check()


def test_copies_of_a_refused_batch_are_refused_after_capacity_frees(s):
    hog = _fill(s)
    task_id = uuid.uuid4().hex
    batch = [{"vcpus": 4, "memory": 4, "owner": "b1"}, {"vcpus": 4, "memory": 4, "owner": "b2"}]
    r = _send(s, "vcm.acquire_batch", task_id, requests=batch)
    first = _refusal(r)
    assert type(first).__name__ == "NoCapacity"
    assert sorted(call(s.app, "vcm.release", owner="hog")) == sorted(hog)
    answers = _copies(s, "vcm.acquire_batch", task_id, requests=batch)
    assert (answers, len(audit(s.ledger)["leases"])) == (["NoCapacity"] * COPIES, 0)
    assert _refusal(r).args == first.args
    assert [len(x) for x in call(s.app, "vcm.acquire_batch", requests=batch)] == [1, 1]
    s.check()


@pytest.mark.parametrize("name", ["vcm.acquire", "vcm.acquire_batch"])
def test_copies_of_a_grant_give_its_leases_then_name_them_once_released(s, name):
    task_id = uuid.uuid4().hex
    request = {"vcpus": 4, "memory": 4, "owner": "once"}
    kwargs: dict[str, Any] = ({"request": request} if name == "vcm.acquire"
                              else {"requests": [request]})
    answer = _send(s, name, task_id, **kwargs).get(timeout=20)
    leases = answer if name == "vcm.acquire" else answer[0]
    assert _copies(s, name, task_id, **kwargs) == ["granted"] * COPIES
    assert list(audit(s.ledger)["leases"]) == _names(leases)  # the same leases, no more
    assert call(s.app, "vcm.release", owner="once") == _names(leases)
    assert _copies(s, name, task_id, **kwargs) == ["LeaseNotFound"] * COPIES
    assert audit(s.ledger)["leases"] == {}
    s.check()


def test_a_copy_sent_while_the_first_waits_joins_it_and_later_copies_get_its_leases(s):
    _fill(s)
    task_id = uuid.uuid4().hex
    request = {"vcpus": 4, "memory": 4, "owner": "patient", "wait": 60}
    r = _send(s, "vcm.acquire", task_id, request=request)
    wait_for(lambda: r.state == "WAITING", what="the first to wait")
    _send(s, "vcm.acquire", task_id, request=request)
    placement_barrier(s.app)  # the one placement consumer took the copy before it
    assert len(call(s.app, "vcm.waiting")) == 1  # the copy waits with the first, not twice
    assert r.state == "WAITING"
    with Answers(s.app, task_id) as answers:
        call(s.app, "vcm.release", owner="hog")
        assert answers.wait(1) == ["granted"]
    leases = r.get(timeout=20)
    assert len(leases) == 1
    assert _copies(s, "vcm.acquire", task_id, request=request) == ["granted"] * COPIES
    assert list(audit(s.ledger)["leases"]) == _names(leases)
    assert call(s.app, "vcm.release", owner="patient") == _names(leases)
    s.check()
