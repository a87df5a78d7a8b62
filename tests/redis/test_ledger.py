"""The Redis ledger's scripts on their own (a private key prefix on the session's redis-server)."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support.audit import audit
from tests.support.helpers import check_invariants
from workers.adapters.ledger import Ledger
from workers.adapters.ledger.scripts import Unparked
from workers.core.errors import LedgerUnready
from workers.core.grants import make_lease
from workers.core.models import Network, Pool
from workers.core.parsing import parse_request
from workers.ports import Guard


@pytest.fixture()
def own_ledger(redis_server):
    ledger = Ledger(redis_server.client(), prefix=f"t-{uuid.uuid4().hex[:8]}:")
    assert ledger.restore({"seq": 0, "leases": []}).applied
    return ledger


def _group(ledger: Ledger, rid: str):
    pool = Pool("p1", "vc1", "dc", "c", "ds", vcpus=10, memory=10, storage=10)
    req = parse_request({"vcpus": 1, "memory": 1, "networks": 0, "request-id": rid},
                        default_owner="o", default_request_id=rid, default_ttl=3600,
                        max_ttl=86400)
    lease = make_lease(uuid.uuid4().hex[:20], req, pool, [], time.time())
    return {rid: [lease]}, {"p1": (pool.vcpu_capacity, pool.memory, pool.storage)}


def test_commit_placed_for_an_empty_line_is_refused_when_someone_waits(own_ledger):
    """The worker skips reading the line when it saw it empty; the commit checks instead."""
    version = own_ledger.usage()[0]
    own_ledger.park("head", {"task": "t", "request": {}, "since": 0, "deadline": 1e12})
    before = audit(own_ledger)
    groups, caps = _group(own_ledger, "r1")
    refused = own_ledger.commit(version, groups, caps, lone=True)
    assert refused.status == "waiters"
    assert audit(own_ledger) == before and own_ledger.usage()[0] == version
    assert own_ledger.commit(version, groups, caps).status == "ok"  # placed knowing the line


def test_release_reports_the_waiting_line(own_ledger):
    groups, caps = _group(own_ledger, "r1")
    ok = own_ledger.commit(own_ledger.usage()[0], groups, caps, lone=True)
    assert ok.status == "ok" and len(ok.raws) == 1
    own_ledger.park("w", {"task": "t", "request": {}, "since": 0, "deadline": 1e12})
    res = own_ledger.release([groups["r1"][0]["metadata"]["name"]])
    assert res.waiting == 1 and res.seq == ok.seq + 1
    assert own_ledger.unpark("w") == Unparked(left=True, twins=[])
    assert own_ledger.release([], by_owner="o").waiting == 0


def test_quiet_changes_do_not_kick_the_publisher(own_ledger):
    quiet = Guard(quiet=True)
    groups, caps = _group(own_ledger, "r1")
    assert own_ledger.commit(own_ledger.usage()[0], groups, caps, guard=quiet).status == "ok"
    lid = groups["r1"][0]["metadata"]["name"]
    raw = own_ledger.raw(lid)
    swapped = own_ledger.swap(lid, raw, own_ledger.get(lid), time.time() + 60, quiet)
    assert swapped.status == "ok" and swapped.seq == 2
    assert own_ledger.raw(lid) == swapped.raw
    own_ledger.release([lid], guard=quiet)
    assert not own_ledger.r.exists(own_ledger.k.kick)
    groups, caps = _group(own_ledger, "r2")
    assert own_ledger.commit(own_ledger.usage()[0], groups, caps).status == "ok"
    assert own_ledger.r.lrange(own_ledger.k.kick, 0, -1) == [b"4"]


def test_replacing_from_a_mirror_needs_redis_to_be_behind_it(own_ledger):
    """The mirror replaces the ledger only while Redis's seq is below the snapshot's, checked
    in the script: a second writer that moved Redis on (two placement workers; a seq read a
    moment before) makes it a live ledger that must not be overwritten."""
    groups, caps = _group(own_ledger, "r1")
    first = own_ledger.commit(own_ledger.usage()[0], groups, caps)
    behind = {"seq": first.seq, "leases": groups["r1"]}  # a mirror as new as Redis
    more, _ = _group(own_ledger, "r2")
    assert own_ledger.commit(own_ledger.usage()[0], more, caps).status == "ok"
    before = audit(own_ledger)
    assert not own_ledger.restore(behind, replace=True).applied
    assert audit(own_ledger) == before and own_ledger.seq() == first.seq + 1
    newer = {"seq": first.seq + 5, "leases": groups["r1"]}  # Redis went back: the mirror wins
    assert own_ledger.restore(newer, replace=True).applied
    after = audit(own_ledger)
    assert sorted(after["leases"]) == [groups["r1"][0]["metadata"]["name"]]
    assert after["counters"]["p1"] == (1, 1, 0, 1) and own_ledger.seq() == first.seq + 5


def test_writes_refuse_while_redis_is_below_the_floor(own_ledger):
    groups, caps = _group(own_ledger, "r1")
    ok = own_ledger.commit(own_ledger.usage()[0], groups, caps)
    above = Guard(floor=ok.seq + 1)  # this process made a change Redis no longer has
    more, _ = _group(own_ledger, "r2")
    with pytest.raises(LedgerUnready):
        own_ledger.commit(own_ledger.usage()[0], more, caps, guard=above)
    lid = groups["r1"][0]["metadata"]["name"]
    with pytest.raises(LedgerUnready):
        own_ledger.release([lid], guard=above)
    with pytest.raises(LedgerUnready):
        own_ledger.swap(lid, own_ledger.raw(lid), own_ledger.get(lid), 1.0, above)
    assert own_ledger.release([lid], guard=Guard(floor=ok.seq)).leases[0]["metadata"]["name"] \
        == lid


def _expired_group(ledger: Ledger, rid: str):
    """A lease that expired an hour ago."""
    groups, caps = _group(ledger, rid)
    lease = groups[rid][0]
    lease["status"]["expires-at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                  time.gmtime(time.time() - 3600))
    return groups, caps


def test_a_lease_renewed_after_the_reaper_read_it_is_not_reaped(own_ledger):
    groups, caps = _expired_group(own_ledger, "r1")
    assert own_ledger.commit(own_ledger.usage()[0], groups, caps).status == "ok"
    lid = groups["r1"][0]["metadata"]["name"]
    now = time.time()
    assert own_ledger.expired(now) == [lid]  # the reaper read it
    raw = own_ledger.raw(lid)  # ... then a renewal landed before its release
    renewed = {**own_ledger.get(lid)}
    assert own_ledger.swap(lid, raw, renewed, now + 3600).status == "ok"
    res = own_ledger.release([lid], reason="expired", expired_by=now)
    assert res.leases == [] and res.already == []
    assert lid in audit(own_ledger)["leases"]
    # a plain release (not reaping) still releases it
    assert [x["metadata"]["name"] for x in own_ledger.release([lid]).leases] == [lid]


def test_a_restore_sets_aside_bad_records_and_writes_the_rest(redis_server):
    ledger = Ledger(redis_server.client(), prefix=f"t-{uuid.uuid4().hex[:8]}:")
    good = [_group(ledger, f"g{i}")[0][f"g{i}"][0] for i in range(3)]
    bad_owner = _group(ledger, "b1")[0]["b1"][0]
    bad_owner["status"]["owner"] = "o\udcff"
    bad_spec = _group(ledger, "b2")[0]["b2"][0]
    bad_spec["spec"]["vcpus"] = "many"
    leases = [good[0], bad_owner, good[1], bad_spec, good[2], "not a lease"]
    assert ledger.restore({"seq": 7, "leases": leases}).applied
    snap = audit(ledger)
    assert sorted(snap["leases"]) == sorted(x["metadata"]["name"] for x in good)
    # the record whose holdings can be read (only its owner cannot) stays counted
    assert snap["counters"]["p1"] == (4, 4, 0, 4)
    assert snap["aside"][bad_owner["metadata"]["name"]]["counted"] == "hold"
    assert len(snap["aside"]) == 3
    assert snap["blocked"] == {bad_spec["metadata"]["name"]} | {
        i for i in snap["aside"] if i.startswith("set-aside-")}  # the two unreadable ones
    assert ledger.stats()["quarantined"] == 3
    assert ledger.seq() == 7


def _net_lease(ledger: Ledger, rid: str, vcpus: int, port_groups: list[str]):
    pool = Pool("p1", "vc1", "dc", "c", "ds", vcpus=10, memory=10, storage=10,
                networks=tuple(Network(pg) for pg in port_groups))
    req = parse_request({"vcpus": vcpus, "memory": 1, "networks": len(port_groups),
                         "request-id": rid}, default_owner="o", default_request_id=rid,
                        default_ttl=3600, max_ttl=86400)
    return make_lease(uuid.uuid4().hex[:20], req, pool, list(pool.networks), time.time())


def test_a_set_aside_record_keeps_its_port_groups_past_a_lease_that_shares_one(own_ledger):
    """The mirror gave port group pg-a to a good lease and to a record set aside: releasing
    the lease does not free it; a release of the record by id (no owner) gives back what it
    holds, and nothing else."""
    good = _net_lease(own_ledger, "g", 1, ["pg-a"])
    bad = _net_lease(own_ledger, "b", 2, ["pg-a", "pg-b"])
    bad["status"]["owner"] = "o\udcff"
    ledger = Ledger(own_ledger.r, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    assert ledger.restore({"seq": 3, "leases": [good, bad]}).applied
    bad_id, good_id = bad["metadata"]["name"], good["metadata"]["name"]
    snap = check_invariants(ledger, {}, shared=frozenset({"vc1|pg-a"}))
    assert snap["counters"]["p1"] == (3, 2, 0, 2)
    assert snap["nets"] == {"vc1|pg-a": good_id, "vc1|pg-b": bad_id}
    assert snap["pins"] == {"vc1|pg-a": bad_id, "vc1|pg-b": bad_id}
    assert [x["metadata"]["name"] for x in ledger.release([good_id]).leases] == [good_id]
    assert audit(ledger)["nets"] == {"vc1|pg-a": bad_id, "vc1|pg-b": bad_id}
    # the mirror carries it as set aside: a second rebuild holds the same
    again = Ledger(own_ledger.r, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    assert again.restore(ledger.snapshot()).applied
    assert audit(again)["counters"]["p1"] == (2, 1, 0, 1)
    assert audit(again)["pins"] == {"vc1|pg-a": bad_id, "vc1|pg-b": bad_id}
    groups = {"n": [_net_lease(again, "n", 1, ["pg-a"])]}
    assert again.commit(again.usage().version, groups, {"p1": (10, 10, 10)}).detail == \
        "vc1|pg-a"
    refused = again.release([bad_id], owner="o")  # nobody can show they hold it
    assert (refused.status, refused.lease_id) == ("notowner", bad_id) and refused.leases == []
    res = again.release([bad_id])
    assert res.dropped == [bad_id] and res.leases == []
    snap = check_invariants(again, {})
    assert (snap["counters"]["p1"], snap["nets"], snap["pins"], snap["aside"]) == \
        ((0, 0, 0, 0), {}, {}, {})
    assert again.commit(again.usage().version, groups, {"p1": (10, 10, 10)}).status == "ok"


def test_a_record_whose_holdings_cannot_be_read_stops_placement_until_dropped(own_ledger):
    unreadable = {"metadata": {"name": "lost"}, "status": {"pool": 7}, "spec": {}}
    ledger = Ledger(own_ledger.r, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    assert ledger.restore({"seq": 1, "leases": [unreadable]}).applied
    groups, caps = _group(ledger, "r1")
    refused = ledger.commit(ledger.usage().version, groups, caps)
    assert refused.status == "blocked" and "lost" in refused.detail
    assert ledger.release(["lost"]).dropped == ["lost"]
    assert ledger.commit(ledger.usage().version, groups, caps).status == "ok"


def test_the_waiting_line_scripts_answer_with_named_results(own_ledger):
    record = {"task": "t1", "request": {}, "since": 0, "deadline": 1e12}
    first = own_ledger.park("k", record)
    assert (first.position, first.record) == (1, record)
    twin = own_ledger.park("k", {**record, "task": "t2"})  # the same request sent again
    assert twin.position == 1 and twin.record == record  # the first task's record stays
    assert own_ledger.park("k2", {**record, "task": "t3"}).position == 2
    assert own_ledger.unpark("k") == Unparked(left=True, twins=["t2"])
    assert own_ledger.unpark("k") == Unparked(left=False, twins=[])
    groups, caps = _group(own_ledger, "r1")
    assert own_ledger.commit(own_ledger.usage().version, groups, caps).status == "ok"
    granted = own_ledger.park("r1", record)  # granted meanwhile: nothing parked
    assert (granted.position, granted.record) == (0, record)
    assert not own_ledger.is_waiting("r1")


def test_the_mirror_scripts_answer_with_named_results(own_ledger):
    groups, caps = _group(own_ledger, "r1")
    ok = own_ledger.commit(own_ledger.usage().version, groups, caps)
    assert own_ledger.defer("task", {"x": 1}).seq == ok.seq
    assert own_ledger.outbox() == [("task", ok.seq, {"x": 1})]
    snap = own_ledger.snapshot()
    assert snap == {"format": 1, "seq": ok.seq, "leases": groups["r1"]}
    assert not own_ledger.restore(snap).applied  # ready already: nothing changes
    version, pools, nets = own_ledger.usage()  # a tuple too
    assert (version, pools, nets) == (own_ledger.usage().version, own_ledger.usage().pools,
                                      own_ledger.usage().nets)
    assert pools["p1"].vcpus == 1 and nets == set()


# a task id answered once (copies of tasks) ---------------------------------------------------
REFUSED = {"error": "NoCapacity", "message": "no pool fits", "details": {"reasons": {}}}


def test_a_task_answered_before_is_never_placed_by_any_writer(own_ledger):
    """A second placement worker (by mistake) decided on a copy of a task that the first
    worker refused a moment later: the commit checks the answer in the same step, so the copy
    is answered with the refusal and nothing is written."""
    assert own_ledger.answer_once("t1", REFUSED) is None  # the first worker's refusal
    assert own_ledger.answer_once("t1", {"granted": [["x"]], "request-ids": ["t1"]}) == REFUSED
    groups, caps = _group(own_ledger, "r1")
    answer = {"granted": [[groups["r1"][0]["metadata"]["name"]]], "request-ids": ["r1"]}
    before = audit(own_ledger)
    copy = own_ledger.commit(own_ledger.usage().version, groups, caps, tasks=["t1"],
                             answer=answer)
    assert (copy.status, copy.detail, copy.answer) == ("answered", "t1", REFUSED)
    assert audit(own_ledger) == before and own_ledger.granted_at(["r1"])[1] == [None]
    granted = own_ledger.commit(own_ledger.usage().version, groups, caps, tasks=["t2"],
                                answer=answer)
    assert granted.status == "ok" and own_ledger.answered("t2") == answer
    ttl = own_ledger.r.ttl(own_ledger.k.answered("t2"))
    assert 0 < ttl <= own_ledger.answer_ttl  # kept a bounded while, never for ever


def test_every_task_waiting_for_a_request_gets_its_answer_recorded(own_ledger):
    record = {"task": "w1", "request": {}, "since": 0, "deadline": 1e12}
    own_ledger.park("k", record)
    own_ledger.park("k", {**record, "task": "w2"})  # a twin
    assert own_ledger.unpark("k", refusal=REFUSED) == Unparked(left=True, twins=["w2"])
    assert own_ledger.answered("w1") == own_ledger.answered("w2") == REFUSED
    refused = own_ledger.park("k", record)  # a copy of w1: not in line again
    assert (refused.position, refused.answer) == (0, REFUSED)
    assert not own_ledger.is_waiting("k")
    # granted from the line: the first task and its twins are answered with the leases
    own_ledger.park("r1", {**record, "task": "w3"})
    own_ledger.park("r1", {**record, "task": "w4"})
    groups, caps = _group(own_ledger, "r1")
    answer = {"granted": [[groups["r1"][0]["metadata"]["name"]]], "request-ids": ["r1"]}
    served = own_ledger.commit(own_ledger.usage().version, groups, caps, granted=["r1"],
                               answer=answer)
    assert served.status == "ok"
    assert own_ledger.answered("w3") == own_ledger.answered("w4") == answer
