"""Copies of a task (the same task id sent again: `vcm`'s resend, a visibility-timeout
redelivery, a job step that resends as the README shows) through the public task API, against
a placement worker started as documented. A task id answered once, with leases or a refusal,
gives every later copy that same answer and is never placed again."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.audit import audit
from tests.support.events import Answers
from tests.support.helpers import call, failure, placement_barrier
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


def _stored(s, task_id: str):
    """The task's result as stored now (an AsyncResult keeps the first ready state it read)."""
    return s.app.AsyncResult(task_id)


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
    assert _refusal(_stored(s, task_id)).args == first.args  # the first answer, word for word
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
    assert _refusal(_stored(s, task_id)).args == first.args
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
    assert _refusal(_stored(s, task_id)).args == first.args
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


# A copy of a waiting acquire's task that asks for something else: its answer is the task's
WAITER = {"vcpus": 4, "memory": 4, "owner": "patient", "wait": 60}
ANOTHER_REQUEST = {
    "another-owner": ("vcm.acquire", {"request": {**WAITER, "owner": "other", "wait": 0}},
                      "NoCapacity"),
    "a-batch": ("vcm.acquire_batch", {"requests": [{**WAITER, "wait": 0}]}, "NoCapacity"),
    "an-invalid-request": ("vcm.acquire", {"request": {**WAITER, "vcpus": "four"}},
                           "InvalidRequest"),
    "an-unknown-argument": ("vcm.acquire", {"request": WAITER, "colour": "red"},
                            "InvalidRequest"),
}


@pytest.mark.parametrize("copy", sorted(ANOTHER_REQUEST))
def test_a_copy_refused_while_the_first_waits_is_the_answer_and_the_first_is_never_granted(
        s, copy):
    _fill(s)
    task_id = uuid.uuid4().hex
    r = _send(s, "vcm.acquire", task_id, request=WAITER)
    wait_for(lambda: r.state == "WAITING", what="the first to wait")
    name, kwargs, refusal = ANOTHER_REQUEST[copy]
    with Answers(s.app, task_id) as answers:
        _send(s, name, task_id, **kwargs)
        assert answers.wait(1) == [refusal]
    first = _refusal(r)
    assert type(first).__name__ == refusal
    call(s.app, "vcm.release", owner="hog")  # room for the first; the line is served now
    assert (call(s.app, "vcm.waiting"), audit(s.ledger)["leases"]) == ([], {})
    assert _copies(s, "vcm.acquire", task_id, request=WAITER) == [refusal] * COPIES
    assert (_refusal(_stored(s, task_id)).args, audit(s.ledger)["leases"]) == (first.args, {})
    assert len(call(s.app, "vcm.acquire", request=WAITER)) == 1  # the room is really free
    s.check()


def test_a_copy_granted_while_the_first_waits_is_the_answer_and_the_first_is_never_granted(s):
    hog = _names(call(s.app, "vcm.acquire", request={"vcpus": 8, "memory": 8, "vcenters": 2,
                                                     "owner": "hog"}))
    task_id = uuid.uuid4().hex
    whole_pool = {**WAITER, "vcpus": 16}
    r = _send(s, "vcm.acquire", task_id, request=whole_pool)
    wait_for(lambda: r.state == "WAITING", what="the first to wait")
    other = {"vcpus": 4, "memory": 4, "owner": "other"}  # fits beside the pool held for it
    with Answers(s.app, task_id) as answers:
        _send(s, "vcm.acquire", task_id, request=other)
        assert answers.wait(1) == ["granted"]
    granted = r.get(timeout=20)
    assert [x["status"]["owner"] for x in granted] == ["other"]
    assert sorted(call(s.app, "vcm.release", owner="hog")) == sorted(hog)
    assert (call(s.app, "vcm.waiting"), list(audit(s.ledger)["leases"])) == ([],
                                                                              _names(granted))
    assert _copies(s, "vcm.acquire", task_id, request=whole_pool) == ["granted"] * COPIES
    assert (_stored(s, task_id).get(timeout=20), list(audit(s.ledger)["leases"])) == (
        granted, _names(granted))
    s.check()


def test_a_twin_is_granted_but_a_task_answered_otherwise_keeps_its_answer(s):
    """Two tasks wait for one request; a copy of the first, asking for another request, is
    refused. When room frees, the request is granted for the other task only."""
    _fill(s)
    request = {**WAITER, "request-id": "patient-1"}
    first_id = uuid.uuid4().hex
    first = _send(s, "vcm.acquire", first_id, request=request)
    wait_for(lambda: first.state == "WAITING", what="the first to wait")
    twin = _send(s, "vcm.acquire", uuid.uuid4().hex, request=request)
    wait_for(lambda: twin.state == "WAITING", what="the twin to wait")
    _send(s, "vcm.acquire", first_id, request={**request, "owner": "other", "wait": 0})
    refused = _refusal(first)
    assert type(refused).__name__ == "NoCapacity"
    call(s.app, "vcm.release", owner="hog")
    leases = twin.get(timeout=20)
    # answers held for the mirror go out in ledger order: once a later grant is answered,
    # every answer of the step that served the line went out
    assert len(call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1})) == 1
    assert _refusal(_stored(s, first_id)).args == refused.args
    assert _copies(s, "vcm.acquire", first_id, request=request) == ["NoCapacity"] * COPIES
    assert set(_names(leases)) < set(audit(s.ledger)["leases"])
    assert call(s.app, "vcm.list_leases", owner="patient") == leases
    s.check()


def test_a_batch_holding_a_request_that_waits_in_line_is_refused_naming_its_request_id(s):
    """The same (owner, request-id) sent again in a batch while it waits: a batch never
    waits, so it is refused; the request keeps its place and its task gets the leases."""
    hog = [_names(call(s.app, "vcm.acquire", request={"vcpus": v, "memory": 4, "owner": "hog",
                                                      "required-pool": pool}))[0]
           for v, pool in ((15, "p1"), (1, "p2"))]
    request = {**WAITER, "vcpus": 16, "request-id": "patient-1"}
    r = _send(s, "vcm.acquire", uuid.uuid4().hex, request=request)
    wait_for(lambda: r.state == "WAITING", what="the first to wait")
    small = {"vcpus": 1, "memory": 1, "owner": "patient", "request-id": "patient-1"}  # fits p1
    refused = failure(s.app, "vcm.acquire_batch", requests=[small])
    assert (type(refused).__name__, refused.args[1]) == ("InvalidRequest",
                                                         {"field": "request-id"})
    assert "'patient-1' is waiting in line" in refused.args[0]
    assert ([x["request-id"] for x in call(s.app, "vcm.waiting")],
            sorted(audit(s.ledger)["leases"])) == (["patient-1"], sorted(hog))
    s.check()
