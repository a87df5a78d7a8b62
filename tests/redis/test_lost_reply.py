"""A ledger write whose reply is lost after Redis ran it (the connection broke, or the reply
timed out): the ledger's client never sends it again, so the caller gets the Redis error, the
outcome unknown, and Redis ran the write once. Sent again, a release by owner would answer
that it released nothing, a release of a set-aside record LeaseNotFound, a waiter taken out
of the line that it had left already (its tasks never answered), a restore that it was not
applied. redis-py's from_url client does not retry; VCM_REDIS_URL's `retry_on_timeout` would
give it one retry (on a lost connection too), so each case runs with and without it.

support/lost_reply.py stands between the ledger and a real redis-server and loses one reply."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from tests.support.audit import audit
from tests.support.lost_reply import LostReplyProxy
from tests.support.procs import RedisServer
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import PoolsFile
from workers.adapters.replies import CeleryReplies
from workers.core.errors import NoCapacity, WaitTimeout
from workers.core.grants import make_lease
from workers.core.models import Pool
from workers.core.parsing import parse_request
from workers.publisher.thread import Publisher
from workers.service.capacity import Capacity
from workers.service.waiting import Parked
from workers.settings import Settings

# the second gives the client redis-py's retry (one, on lost connections and timeouts)
URLS = {"plain": "", "retry_on_timeout": "?retry_on_timeout=true"}
LOST = (redis.ConnectionError, redis.TimeoutError)
POOL = Pool("p1", "vc1", "dc", "c", "ds", vcpus=10, memory=10, storage=10)
CAPS = {"p1": (10, 10, 10)}
REFUSED = {"error": "WaitTimeout", "message": "waited too long", "details": {}}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def proxy(server) -> Iterator[LostReplyProxy]:
    with LostReplyProxy(("127.0.0.1", server.port)) as p:
        yield p


@pytest.fixture(params=list(URLS))
def url(request, proxy) -> str:
    return proxy.url + URLS[request.param]


@pytest.fixture()
def ledger(url) -> Ledger:
    ledger = Ledger.from_url(url, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    assert ledger.restore({"seq": 0, "leases": []}).applied
    for script in vars(ledger.scripts).values():  # Redis knows them: each send is a run
        ledger.r.script_load(script.script)
    return ledger


def lose(proxy: LostReplyProxy, script: Any, call: Callable[[], Any],
         mode: str = "drop") -> Any:
    """What the caller of `call` sees when the reply of `script` (its first send) is lost;
    Redis ran the script exactly once either way."""
    lost = proxy.lost
    proxy.arm(script.sha, mode)
    try:
        seen: Any = call()
    except LOST as exc:
        seen = exc
    assert proxy.lost == lost + 1, "no reply was lost"
    sent = proxy.sent[script.sha.encode()]
    assert isinstance(seen, LOST), f"told {seen!r} after Redis ran it (sent {sent} times)"
    assert sent == 1, f"sent {sent} times"
    return seen


def group(rid: str, owner: str = "o") -> dict[str, list[dict[str, Any]]]:
    req = parse_request({"vcpus": 1, "memory": 1, "networks": 0, "request-id": rid},
                        default_owner=owner, default_request_id=rid, default_ttl=3600,
                        max_ttl=86400)
    return {req.key: [make_lease(uuid.uuid4().hex[:20], req, POOL, [], time.time())]}


def granted(ledger: Ledger, rid: str, owner: str = "o") -> str:
    groups = group(rid, owner)
    assert ledger.commit(ledger.usage().version, groups, CAPS).status == "ok"
    return next(iter(groups.values()))[0]["metadata"]["name"]


# each write script -----------------------------------------------------------------------
def test_a_commit_is_made_once_and_its_copy_answered_with_it(ledger, proxy):
    groups = group("r1")
    lid = next(iter(groups.values()))[0]["metadata"]["name"]
    answer = {"granted": [[lid]], "request-ids": ["r1"]}
    lose(proxy, ledger.scripts.commit, lambda: ledger.commit(
        ledger.usage().version, groups, CAPS, tasks=["t1"], answer=answer))
    assert list(audit(ledger)["leases"]) == [lid]
    assert ledger.stats()["placements"] == 1
    copy = ledger.commit(ledger.usage().version, group("r1"), CAPS, tasks=["t1"],
                         answer={"granted": [["other"]], "request-ids": ["r1"]})
    assert (copy.status, copy.answer) == ("answered", answer)  # never a second grant


def test_a_release_by_owner_is_not_answered_as_releasing_nothing(ledger, proxy):
    ids = sorted(granted(ledger, f"r{i}") for i in range(2))
    lose(proxy, ledger.scripts.release, lambda: ledger.release([], by_owner="o"))
    assert audit(ledger)["leases"] == {} and all(ledger.is_gone(i) for i in ids)
    assert ledger.stats()["releases"] == 2


def test_a_release_by_id_is_made_once(ledger, proxy):
    lid = granted(ledger, "r1")
    lose(proxy, ledger.scripts.release, lambda: ledger.release([lid], owner="o"))
    assert ledger.is_gone(lid) and ledger.stats()["releases"] == 1
    assert ledger.release([lid], owner="o").already == [lid]  # the call sent again


def test_dropping_a_set_aside_record_is_not_answered_as_not_found(ledger, proxy):
    lid = granted(ledger, "r1")
    ledger.r.hset(ledger.k.leases, lid, "{not json")  # damaged: the next release sets it aside
    assert ledger.release([lid]).set_aside == [lid]
    lose(proxy, ledger.scripts.release, lambda: ledger.release([lid]))
    assert audit(ledger)["aside"] == {} and ledger.stats()["set-aside-dropped"] == 1


def test_a_renewal_is_made_once(ledger, proxy):
    lid = granted(ledger, "r1")
    raw, wire = ledger.record(lid)
    seq = ledger.seq()
    renewed = {**wire, "status": {**wire["status"], "expires-at": "2099-01-01T00:00:00Z"}}
    lose(proxy, ledger.scripts.swap, lambda: ledger.swap(lid, raw, renewed, 4070908800.0))
    assert ledger.get(lid) == renewed and ledger.seq() == seq + 1


def test_a_request_joins_the_line_once(ledger, proxy):
    record = {"task": "w1", "request": {}, "since": 0, "deadline": 1e12}
    lose(proxy, ledger.scripts.park, lambda: ledger.park("k", record))
    assert ledger.waiters() == [("k", record)] and ledger.twins("k") == []
    assert ledger.stats()["pending:single-tenant"] == 1


def test_a_waiter_taken_out_of_the_line_is_not_answered_as_gone_already(ledger, proxy):
    record = {"task": "w1", "request": {}, "since": 0, "deadline": 1e12}
    ledger.park("k", record)
    ledger.park("k", {**record, "task": "w2"})  # a twin
    lose(proxy, ledger.scripts.unpark, lambda: ledger.unpark("k", refusal=REFUSED))
    assert ledger.waiters() == [] and ledger.twins("k") == []
    # both tasks have their answer: a copy of either gets it from the ledger
    assert ledger.answered("w1") == ledger.answered("w2") == REFUSED


def test_an_answer_is_held_once(ledger, proxy):
    lose(proxy, ledger.scripts.defer, lambda: ledger.defer("t1", {"x": 1}))
    assert ledger.outbox() == [("t1", ledger.seq(), {"x": 1})]


def test_a_restore_is_not_answered_as_not_applied(ledger, proxy):
    granted(ledger, "r1")
    newer = {"seq": ledger.seq() + 5, "leases": []}  # Redis went back below the mirror
    lose(proxy, ledger.scripts.restore, lambda: ledger.restore(newer, replace=True))
    assert audit(ledger)["leases"] == {} and ledger.seq() == newer["seq"]


def test_a_reply_that_times_out_is_not_sent_again(proxy):
    ledger = Ledger.from_url(proxy.url + "?retry_on_timeout=true&socket_timeout=1",
                             prefix=f"t-{uuid.uuid4().hex[:8]}:")
    assert ledger.restore({"seq": 0, "leases": []}).applied
    ledger.r.script_load(ledger.scripts.release.script)
    ids = sorted(granted(ledger, f"r{i}") for i in range(2))
    seen = lose(proxy, ledger.scripts.release, lambda: ledger.release([], by_owner="o"),
                mode="hold")
    assert isinstance(seen, redis.TimeoutError)
    assert all(ledger.is_gone(i) for i in ids) and ledger.stats()["releases"] == 2


def test_a_script_redis_forgot_is_loaded_and_run_once(ledger, proxy):
    """After a restart Redis knows no script: EVALSHA is refused (NOSCRIPT, nothing ran),
    redis-py loads the script and sends it again: that is its one run."""
    ids = sorted(granted(ledger, f"r{i}") for i in range(2))
    ledger.r.script_flush()
    proxy.arm(ledger.scripts.release.sha)
    with pytest.raises(LOST):
        ledger.release([], by_owner="o")
    assert proxy.sent[ledger.scripts.release.sha.encode()] == 2  # NOSCRIPT, then the run
    assert all(ledger.is_gone(i) for i in ids) and ledger.stats()["releases"] == 2


# what the service's callers see -----------------------------------------------------------
ONE = {"vcpus": 1, "memory": 1, "networks": 0, "owner": "a"}
ALL = {**ONE, "vcpus": 2}  # the whole fleet
POOLS = """
pools:
  - name: p1
    vcenter: vc1
    datacenter: dc1
    cluster: c1
    datastore: ds1
    vcpus: 2
    memory: 64
    storage: 100
    networks:
      - {port-group: pg1, vlan: 1}
"""


@pytest.fixture()
def capacity(server, url, tmp_path, monkeypatch) -> Capacity:
    server.client().flushall()
    pools = tmp_path / "pools.yaml"
    pools.write_text(POOLS)
    monkeypatch.setenv("VCM_REDIS_URL", server.url)
    monkeypatch.setenv("VCM_POOLS_FILE", str(pools))
    monkeypatch.setenv("VCM_MIRROR_FILE", "off")
    svc = Capacity(Ledger.from_url(url), PoolsFile(str(pools)), Settings.from_env())
    svc.ensure_ready()
    for script in vars(svc.ledger.scripts).values():
        svc.ledger.r.script_load(script.script)
    return svc


def test_an_acquire_whose_grant_was_lost_is_answered_with_it_when_sent_again(capacity, proxy):
    lose(proxy, capacity.ledger.scripts.commit,
         lambda: capacity.acquire(ONE, "t1"))
    again = capacity.acquire(ONE, "t1")  # the same task, sent again
    assert [x["metadata"]["name"] for x in again] == list(audit(capacity.ledger)["leases"])


def test_a_release_by_owner_whose_reply_was_lost_is_an_error_not_an_empty_answer(capacity,
                                                                                 proxy):
    ids = sorted(x["metadata"]["name"] for x in capacity.acquire(ALL, "t1"))
    lose(proxy, capacity.ledger.scripts.release, lambda: capacity.release(owner="a"))
    assert audit(capacity.ledger)["leases"] == {}
    assert capacity.release(lease_ids=ids) == ids  # by id, sent again: released


def test_a_cancelled_wait_whose_reply_was_lost_keeps_its_answer_for_copies(capacity, proxy):
    capacity.acquire(ALL, "t1")
    late = {**ONE, "owner": "b", "wait": 600}
    assert isinstance(capacity.acquire(late, "t2"), Parked)
    lose(proxy, capacity.ledger.scripts.unpark, lambda: capacity.cancel_wait("t2"))
    assert capacity.ledger.waiters() == []
    with pytest.raises(WaitTimeout):  # a copy of the task gets the answer it was given
        capacity.acquire(late, "t2")
    with pytest.raises(NoCapacity):  # a new task is a request of its own: nothing freed
        capacity.acquire({**late, "wait": 0}, "t3")


# a release whose own change is made, and whose serving of the waiting line then fails --------
LATE = {**ONE, "owner": "b", "wait": 600, "request-id": "late-1"}


@pytest.fixture()
def answered(server, capacity) -> Iterator[Celery]:
    """The service answering parked tasks through the real result backend (on the server, not
    through the proxy): the app whose AsyncResult shows what each task was answered."""
    app = Celery("t", broker=server.url, backend=server.url)
    capacity.replies = capacity.line.replies = CeleryReplies(app)
    yield app
    app.backend.client.close()


def parked(capacity: Capacity) -> list[str]:
    """The owner `a` takes the whole fleet; `b` waits (task w1), and sends its request again
    as task w2 (a twin, answered with it). The ids of a's leases."""
    ids = [x["metadata"]["name"] for x in capacity.acquire(ALL, "t1")]
    assert isinstance(capacity.acquire(LATE, "w1"), Parked)
    assert isinstance(capacity.acquire(LATE, "w2"), Parked)
    return ids


def leases_of(capacity: Capacity, owner: str) -> list[str]:
    return sorted(lid for lid, lease in audit(capacity.ledger)["leases"].items()
                  if lease["status"]["owner"] == owner)


def housekeeping(capacity: Capacity) -> None:
    """One round of the placement worker's publisher (no mirror): its housekeeping runs."""
    Publisher(capacity, None, capacity.replies).step()


@pytest.mark.parametrize("script", ["commit", "unpark"])
def test_a_release_whose_waiter_was_granted_but_not_answered_answers_released(
        capacity, proxy, answered, script, caplog):
    """The release commits; serving the line grants the waiter (commit), then the reply of
    the commit, or of the unpark that follows it, is lost: the release is still answered
    with what it released, and the waiter's tasks get that grant at the worker's next
    housekeeping round, not after their deadline."""
    ids = parked(capacity)
    with caplog.at_level(logging.ERROR, logger="workers.service.waiting"):
        released = lose_after(proxy, getattr(capacity.ledger.scripts, script),
                              lambda: capacity.release(owner="a"))
    assert sorted(released) == sorted(ids)
    granted = leases_of(capacity, "b")
    assert len(granted) == 1 and capacity.ledger.waiters() == []
    assert "w1, w2" in caplog.text  # the tasks left unanswered, named
    for task in ("w1", "w2"):  # not answered yet: the serve stopped at the failure
        assert answered.AsyncResult(task).state == "PENDING"
    housekeeping(capacity)
    assert not capacity.serving_owed()
    for task in ("w1", "w2"):
        result = answered.AsyncResult(task)
        assert result.state == "SUCCESS"
        assert [x["metadata"]["name"] for x in result.result] == granted
    again = capacity.acquire(LATE, "w1")  # a copy of the task: that grant, never a second
    assert [x["metadata"]["name"] for x in again] == granted == leases_of(capacity, "b")
    assert capacity.ledger.stats()["placements"] == 2


def test_a_release_whose_serving_failed_before_any_grant_serves_the_line_later(
        capacity, proxy, answered):
    """The read of the line is lost: nothing was granted, the waiter is still in line and is
    served at the next housekeeping round."""
    ids = parked(capacity)
    lost = proxy.lost
    proxy.arm(b"ZRANGE")
    assert sorted(capacity.release(owner="a")) == sorted(ids)
    assert proxy.lost == lost + 1
    assert leases_of(capacity, "b") == [] and len(capacity.ledger.waiters()) == 1
    assert capacity.serving_owed()
    housekeeping(capacity)
    granted = leases_of(capacity, "b")
    assert len(granted) == 1 and capacity.ledger.waiters() == []
    for task in ("w1", "w2"):
        result = answered.AsyncResult(task)
        assert result.state == "SUCCESS"
        assert [x["metadata"]["name"] for x in result.result] == granted


def test_an_expiry_whose_reply_was_lost_answers_the_waiter_at_the_next_round(
        capacity, proxy, answered):
    """The wait runs out; the unpark that refuses it (WaitTimeout) loses its reply: its
    tasks are told at the next round."""
    parked(capacity)
    [(key, record)] = capacity.ledger.waiters()  # its deadline: now
    capacity.ledger.rewait(key, {**record, "deadline": time.time()})
    proxy.arm(capacity.ledger.scripts.unpark.sha)
    with pytest.raises(LOST):
        capacity.expire_waiters()
    assert capacity.ledger.waiters() == []
    assert {answered.AsyncResult(t).state for t in ("w1", "w2")} == {"PENDING"}
    housekeeping(capacity)
    for task in ("w1", "w2"):
        result = answered.AsyncResult(task)
        assert result.state == "FAILURE" and isinstance(result.result, WaitTimeout)


def test_a_release_whose_cache_update_failed_answers_released(capacity, proxy):
    """After the release script, the usage cache reads which of the freed networks others
    of their install still hold; that read is lost: the release is answered all the same,
    and the cache reads the ledger again for the next decision."""
    ids = [x["metadata"]["name"] for x in capacity.acquire({**ALL, "networks": 1}, "t1")]
    lost = proxy.lost
    proxy.arm(b"HMGET")
    assert capacity.release(owner="a") == ids
    assert proxy.lost == lost + 1 and audit(capacity.ledger)["leases"] == {}
    assert capacity.acquire({**ALL, "networks": 1, "owner": "b"}, "t2")  # the room is seen


def lose_after(proxy: LostReplyProxy, script: Any, call: Callable[[], Any]) -> Any:
    """`call()`'s answer when the reply of `script`, run as part of it, is lost."""
    lost = proxy.lost
    proxy.arm(script.sha)
    try:
        return call()
    finally:
        assert proxy.lost == lost + 1, "no reply was lost"
