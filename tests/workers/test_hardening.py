"""Hostile input, retries and restarts through the public task API, against a placement worker
started exactly as documented (`celery -A tasks worker -Q placement --concurrency 1`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.audit import audit
from tests.support.documented_stack import POOLS
from tests.support.helpers import call, failure
from tests.support.procs import ROOT, wait_for
from workers.core.lease import parse_rfc3339

BAD_TEXT = ["\udcff", "ok\x00", "tab\there", "x" * 5000, "\udc00\ud800"]  # last: a pair reversed


def _names(leases: list[dict]) -> list[str]:
    return [x["metadata"]["name"] for x in leases]


# strings that are not valid text ----------------------------------------------------------
@pytest.mark.parametrize("bad", BAD_TEXT, ids=["surrogate", "nul", "tab", "huge", "reversed-pair"])
@pytest.mark.parametrize("field", ["owner", "boskos-lease-id", "request-id", "required-pool",
                                   "network-type"])
def test_acquire_refuses_strings_that_are_not_text(s, field, bad):
    exc = failure(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, field: bad})
    assert type(exc).__name__ == "InvalidRequest", exc
    assert exc.args[1]["field"] == field
    assert audit(s.ledger)["leases"] == {}
    json.dumps(exc.args[0]).encode("utf-8")  # the message itself is valid text


def test_other_task_arguments_refuse_strings_that_are_not_text(s):
    lease = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "owner": "alice"})[0]
    name = lease["metadata"]["name"]
    for task, kwargs, field in [
        ("vcm.release", {"lease_ids": ["\udcff"]}, "lease_ids"),
        ("vcm.release", {"owner": "al\udcffice"}, "owner"),
        ("vcm.release", {"lease_ids": [name], "owner": "a\x07"}, "owner"),
        ("vcm.renew", {"lease_id": name + "\udcff"}, "lease_id"),
        ("vcm.renew", {"lease_id": name, "owner": "x" * 1000}, "owner"),
        ("vcm.cancel_wait", {"task_id": "\udcff"}, "task_id"),
        ("vcm.list_leases", {"owner": "\udcff"}, "owner"),
        ("vcm.list_leases", {"pool": "p\x1b"}, "pool"),
        ("vcm.acquire", {"request": {"vcpus": 1, "memory": 1,
                                     "pool-selector": {"k\udcff": "v"}}}, "pool-selector"),
        ("vcm.acquire", {"request": {"vcpus": 1, "memory": 1, "\udcff": 1}}, "\\udcff"),
    ]:
        exc = failure(s.app, task, **kwargs)
        assert type(exc).__name__ == "InvalidRequest", (task, kwargs, exc)
        assert exc.args[1]["field"] == field, (task, exc)
    assert list(audit(s.ledger)["leases"]) == [name]
    assert call(s.app, "vcm.release", lease_ids=[name], owner="alice") == [name]


def test_the_cli_refuses_an_undecodable_argument_with_exit_2(s):
    p = subprocess.run([sys.executable, "-m", "workers.cli", "acquire", "--vcpus", "1",
                        "--memory", "1", "--boskos-lease-id",
                        b"\xff".decode(errors="surrogateescape"),
                        "--redis-url", s.redis.url],
                       cwd=ROOT, env=s.env, capture_output=True, timeout=60)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 2, err
    assert "boskos-lease-id" in err and "Traceback" not in err
    assert audit(s.ledger)["leases"] == {}


def _bad_record(s, lease_id: str, owner: str, expires: float) -> None:
    """A lease stored before strings were checked: its owner holds a lone surrogate, which
    Python's JSON writes as an escape that Lua's cjson cannot decode."""
    raw = json.dumps({"spec": {"vcpus": 1, "memory": 1, "storage": 0, "vcenters": 1,
                               "networks": 0},
                      "status": {"pool": "p1", "vcenter": "vc1", "owner": owner,
                                 "request-id": "old", "networks": [], "state": "leased",
                                 "leased-at": "2026-01-01T00:00:00Z",
                                 "expires-at": "2026-01-01T00:00:00Z"},
                      "metadata": {"name": lease_id}})
    r = s.redis.client()
    r.hset("vcm:leases", lease_id, raw)
    r.zadd("vcm:expiry", {lease_id: expires})


def test_an_undecodable_stored_lease_is_set_aside_and_blocks_nothing(s):
    good = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "ttl": 1,
                                               "owner": "bob"})[0]
    _bad_record(s, "bad-one", "eve\udcff", time.time() - 10)
    expires = parse_rfc3339(good["status"]["expires-at"])
    wait_for(lambda: time.time() > expires, timeout=5, what="the good lease to expire")
    reaped = call(s.app, "vcm.reap_expired")
    assert reaped == [good["metadata"]["name"]]  # the other expired lease went, not stuck
    r = s.redis.client()
    assert r.hexists("vcm:quarantine", "bad-one")
    assert int(r.hget("vcm:stats", "quarantined")) == 1
    assert not r.hexists("vcm:leases", "bad-one")
    # releases and acquires go on and are answered
    a = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "owner": "carol"})
    assert call(s.app, "vcm.release", owner="carol") == _names(a)


def test_a_release_that_meets_an_undecodable_record_goes_on(s):
    a = call(s.app, "vcm.acquire", request={"vcpus": 2, "memory": 2, "owner": "dan"})
    _bad_record(s, "bad-two", "dan\udcff", time.time() + 3600)
    released = call(s.app, "vcm.release", lease_ids=[*_names(a), "bad-two"])
    assert released == _names(a)
    assert s.redis.client().hexists("vcm:quarantine", "bad-two")


def test_a_restore_sets_bad_mirror_records_aside_and_keeps_what_they_hold(s):
    leases = [call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "owner": f"o{i}",
                                                  "request-id": f"r{i}", "required-pool": "p1"})[0]
              for i in range(2)]
    wait_for(lambda: len((json.loads(s.mirror.read_text()) or {}).get("leases", [])) == 2
             or s.mirror.with_suffix(".json.journal").exists(), what="the mirror")
    from workers.adapters.mirror.file import FileMirror

    snap = FileMirror(str(s.mirror)).load()
    assert len(snap["leases"]) == 2
    # one record goes bad on disk (as if written by an older version)
    bad = json.loads(json.dumps(sorted(snap["leases"], key=lambda x: x["metadata"]["name"])[0]))
    bad["status"]["owner"] = "o\udcff"
    snap["leases"] = [bad if x["metadata"]["name"] == bad["metadata"]["name"] else x
                      for x in snap["leases"]]
    s.placement.stop()
    s.mirror.write_text(json.dumps(snap))
    Path(str(s.mirror) + ".journal").unlink(missing_ok=True)
    s.redis.wipe()
    s.restart_placement()
    kept = {x["metadata"]["name"] for x in leases} - {bad["metadata"]["name"]}
    wait_for(lambda: set(audit(s.ledger)["leases"]) == kept, timeout=20,
             what="the restore of every good record")
    r = s.redis.client()
    assert json.loads(r.hget("vcm:quarantine", bad["metadata"]["name"]))["problem"]
    assert int(r.hget("vcm:stats", "quarantined")) == 1
    assert "Redis wins" not in s.placement.output()
    s.check()
    # what the record holds stays held: its vCPU, and its port group, which is never given
    p1 = next(p for p in call(s.app, "vcm.show_pools") if p["spec"]["name"] == "p1")
    assert (p1["status"]["vcpus-used"], p1["status"]["networks-used"]) == (2, 2)
    exc = failure(s.app, "vcm.acquire", request={"vcpus": 0, "memory": 0, "networks": 1,
                                                 "required-pool": "p1"})
    assert type(exc).__name__ == "NoCapacity" and "insufficient networks" in str(exc)
    # the good records' request-ids are still idempotent
    for lease in leases:
        if lease["metadata"]["name"] in kept:
            st = lease["status"]
            again = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1,
                                                        "owner": st["owner"],
                                                        "request-id": st["request-id"],
                                                        "required-pool": "p1"})
            assert _names(again) == [lease["metadata"]["name"]]


# request-ids -----------------------------------------------------------------------------
def test_request_ids_are_per_owner(s):
    alice = call(s.app, "vcm.acquire", request={"vcpus": 2, "memory": 2, "owner": "alice",
                                                "request-id": "shared"})
    bob = call(s.app, "vcm.acquire", request={"vcpus": 4, "memory": 8, "owner": "bob",
                                              "request-id": "shared"})
    assert set(_names(alice)).isdisjoint(_names(bob))
    assert bob[0]["status"]["owner"] == "bob" and bob[0]["spec"]["vcpus"] == 4
    nets = {(x["status"]["vcenter"], n["port-group"]) for x in alice + bob
            for n in x["status"]["networks"]}
    assert len(nets) == 2  # each its own port group
    again = call(s.app, "vcm.acquire", request={"vcpus": 2, "memory": 2, "owner": "alice",
                                                "request-id": "shared"})
    assert _names(again) == _names(alice)
    # bob releasing his does not touch alice's, and her id still answers with her lease
    call(s.app, "vcm.release", owner="bob")
    assert _names(call(s.app, "vcm.acquire", request={"vcpus": 2, "memory": 2,
                                                      "owner": "alice",
                                                      "request-id": "shared"})) == _names(alice)
    s.check()


def test_a_reaped_request_id_is_an_error_naming_the_leases(s):
    req = {"vcpus": 1, "memory": 1, "ttl": 1, "owner": "job", "request-id": "short"}
    lease = call(s.app, "vcm.acquire", request=req)[0]
    wait_for(lambda: call(s.app, "vcm.reap_expired"), timeout=10, what="the reap")
    exc = failure(s.app, "vcm.acquire", request=req)
    assert type(exc).__name__ == "LeaseNotFound"
    assert exc.args[1]["gone"] == {lease["metadata"]["name"]: exc.args[1]["gone"][
        lease["metadata"]["name"]]}
    assert exc.args[1]["gone"][lease["metadata"]["name"]].startswith("reaped (expired) at ")


# retried waiters -------------------------------------------------------------------------
def _fill(s, owner: str = "hog") -> list[str]:
    return _names(call(s.app, "vcm.acquire", request={"vcpus": 16, "memory": 64, "vcenters": 2,
                                                      "owner": owner}))


def _state(s, task_id: str) -> str:
    return s.app.AsyncResult(task_id).state


def test_every_task_waiting_on_one_request_id_gets_the_answer(s):
    _fill(s)
    req = {"vcpus": 4, "memory": 4, "owner": "w", "request-id": "same", "wait": 60}
    first = s.app.send_task("vcm.acquire", kwargs={"request": req}, queue="placement")
    wait_for(lambda: _state(s, first.id) == "WAITING", what="the first to wait")
    # sent again: once waiting as well, once with wait 0 (a retry that does not say wait)
    second = s.app.send_task("vcm.acquire", kwargs={"request": req}, queue="placement")
    third = s.app.send_task("vcm.acquire", kwargs={"request": {**req, "wait": 0}},
                            queue="placement")
    for r in (second, third):
        wait_for(lambda r=r: _state(s, r.id) == "WAITING", what="the retry to wait")
    assert len(call(s.app, "vcm.waiting")) == 1  # one request in line, not three
    call(s.app, "vcm.release", owner="hog")
    answers = [r.get(timeout=20) for r in (first, second, third)]
    assert _names(answers[0]) == _names(answers[1]) == _names(answers[2])
    assert len(audit(s.ledger)["leases"]) == 1
    assert call(s.app, "vcm.waiting") == []
    s.check()


def test_a_granted_waiter_is_not_overwritten_at_its_deadline(s):
    _fill(s)
    req = {"vcpus": 4, "memory": 4, "owner": "w", "request-id": "soon", "wait": 3}
    first = s.app.send_task("vcm.acquire", kwargs={"request": req}, queue="placement")
    wait_for(lambda: _state(s, first.id) == "WAITING", what="the first to wait")
    call(s.app, "vcm.release", owner="hog")
    leases = first.get(timeout=10)
    deadline = time.time() + 4
    wait_for(lambda: time.time() > deadline, timeout=10, what="the old deadline to pass")
    call(s.app, "vcm.reap_expired")  # a serve of the line after the deadline
    assert s.app.AsyncResult(first.id).state == "SUCCESS"
    assert _names(s.app.AsyncResult(first.id).get(timeout=5)) == _names(leases)
    assert call(s.app, "vcm.waiting") == []


def test_a_cancelled_twin_leaves_the_other_waiting(s):
    _fill(s)
    req = {"vcpus": 4, "memory": 4, "owner": "w", "request-id": "pair", "wait": 60}
    first = s.app.send_task("vcm.acquire", kwargs={"request": req}, queue="placement")
    wait_for(lambda: _state(s, first.id) == "WAITING", what="the first to wait")
    second = s.app.send_task("vcm.acquire", kwargs={"request": req}, queue="placement")
    wait_for(lambda: _state(s, second.id) == "WAITING", what="the twin to wait")
    assert call(s.app, "vcm.cancel_wait", task_id=first.id) is True
    with pytest.raises(Exception) as info:
        first.get(timeout=10)
    assert type(info.value).__name__ == "WaitTimeout"
    assert len(call(s.app, "vcm.waiting")) == 1
    call(s.app, "vcm.release", owner="hog")
    assert len(second.get(timeout=20)) == 1


# owners ----------------------------------------------------------------------------------
def test_a_lease_id_is_a_capability_for_release_and_renew_alike(s):
    lease = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "owner": "bob"})[0]
    name = lease["metadata"]["name"]
    renewed = call(s.app, "vcm.renew", lease_id=name, ttl="48h")  # no owner: the id suffices
    assert renewed["status"]["expires-at"] > lease["status"]["expires-at"]
    assert type(failure(s.app, "vcm.renew", lease_id=name, owner="eve")).__name__ == "NotOwner"
    assert type(failure(s.app, "vcm.release", lease_ids=[name],
                        owner="eve")).__name__ == "NotOwner"
    assert call(s.app, "vcm.release", lease_ids=[name]) == [name]


# going back with nothing newer in the mirror ----------------------------------------------
def test_after_redis_went_back_past_the_mirror_new_answers_still_wait_for_it(s):
    """Redis went back and the mirror holds nothing newer (those changes are lost, and said
    so): the seqs the new changes take were covered before, by the lost ones. Each new answer
    must still wait until the mirror holds its change."""
    from tests.support.helpers import go_back, keep_ledger
    from workers.adapters.mirror.file import FileMirror

    client = s.redis.client()
    start = keep_ledger(client)
    for i in range(3):
        call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "owner": "lost",
                                            "request-id": f"l{i}"})
    # the same worker goes on; the mirror as it was before those three (never got there).
    # Both at one moment for the worker, stopped meanwhile: between the two it would find
    # Redis behind a mirror that still holds them, and rightly restore them from it
    pid = s.placement.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        go_back(client, start)
        FileMirror(str(s.mirror)).save({"format": 1, "seq": 0, "leases": []})
        Path(str(s.mirror) + ".journal").unlink(missing_ok=True)
    finally:
        os.kill(pid, signal.SIGCONT)
    for i in range(3):
        lease = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "owner": "new",
                                                    "request-id": f"n{i}"})[0]
        mirrored = {x["metadata"]["name"] for x in FileMirror(str(s.mirror)).load()["leases"]}
        assert lease["metadata"]["name"] in mirrored, i


def test_views_count_placeable_vcpus_as_placement_does(s):
    """floor(vcpus × vcpu-overcommit) everywhere: placement, /show-pools and the rollup."""
    s.pools.write_text(POOLS.replace("vcpus: 16, memory: 64,\n     storage: 1000, networks: "
                                     "[{port-group: pg1-a",
                                     "vcpus: 10, vcpu-overcommit: 1.33, memory: 64,\n"
                                     "     storage: 1000, networks: [{port-group: pg1-a"))
    try:
        wait_for(lambda: [p["spec"].get("vcpu-overcommit") for p in call(
            s.app, "vcm.show_pools") if p["spec"]["name"] == "p1"] == [1.33],
            what="the pools reload")
        call(s.app, "vcm.acquire", request={"vcpus": 13, "memory": 1, "required-pool": "p1"})
        exc = failure(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1,
                                                     "required-pool": "p1"})
        assert type(exc).__name__ == "NoCapacity"  # 13 placeable, not 13.3
        p1 = next(p for p in call(s.app, "vcm.show_pools") if p["spec"]["name"] == "p1")
        assert p1["status"]["vcpus-capacity"] == 13
        assert p1["status"]["vcpus-usage"] == 1.0
        snap = call(s.app, "vcm.rollup_usage")
        assert snap["vcenters"]["vc1"]["vcpus"] == 1.0  # the same fraction per vCenter
    finally:
        s.pools.write_text(POOLS)


# bounded reads ---------------------------------------------------------------------------
def test_list_leases_and_usage_history_page_in_the_worker(s):
    names = []
    for i in range(5):
        names += _names(call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1,
                                                           "networks": 0,
                                                           "owner": f"page{i}"}))
    everything = call(s.app, "vcm.list_leases")
    first = call(s.app, "vcm.list_leases", limit=2)
    assert first == everything[:2]
    last = first[-1]
    rest = call(s.app, "vcm.list_leases", limit=10,
                after=[last["status"]["leased-at"], last["metadata"]["name"]])
    assert first + rest == everything and len(everything) == 5
    for _ in range(4):
        call(s.app, "vcm.rollup_usage")
    rows = call(s.app, "vcm.usage_history", since="1h")
    assert len(rows) >= 4
    page = call(s.app, "vcm.usage_history", since="1h", limit=3)
    assert page == rows[:3]
    more = call(s.app, "vcm.usage_history", since="1h", after=page[-1]["ts"], limit=5001)
    assert page + more == rows
    for kwargs, field in [({"limit": 0}, "limit"), ({"limit": 5002}, "limit"),
                          ({"limit": "10"}, "limit"), ({"after": "x"}, "after"),
                          ({"after": float("nan")}, "after")]:
        exc = failure(s.app, "vcm.usage_history", **kwargs)
        assert exc.args[1]["field"] == field, (kwargs, exc)
    exc = failure(s.app, "vcm.list_leases", after=["only one"])
    assert exc.args[1]["field"] == "after"


# live vCenter health ------------------------------------------------------------------------
def test_a_degraded_pool_takes_no_new_leases_and_keeps_its_own(s):
    held = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "networks": 0,
                                               "required-pool": "p1"})
    now = time.time()
    s.ledger.store_health("vc1", {"p1": {"state": "degraded",
                                         "reason": "no usable host: h1 in maintenance mode"}},
                          now)
    probe = {"vcpus": 1, "memory": 1, "networks": 0, "required-pool": "p1"}
    wait_for(lambda: call(s.app, "vcm.estimate", request=probe)["pools"]["p1"]["fits"] == 0,
             timeout=15, what="the health to be read")

    def refused():  # the placement worker reads it within a few seconds too
        r = s.app.send_task("vcm.acquire", kwargs={"request": probe}, queue="placement")
        try:
            leases = r.get(timeout=20)
        except Exception as exc:  # noqa: BLE001 - the refusal is what we wait for
            return exc
        call(s.app, "vcm.release", lease_ids=_names(leases))
        return None

    exc = wait_for(refused, timeout=15, what="placement to read the health")
    assert type(exc).__name__ == "NoCapacity"
    assert exc.args[1]["reasons"]["p1"] == \
        "degraded: no usable host: h1 in maintenance mode"
    elsewhere = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "networks": 0})
    assert elsewhere[0]["status"]["pool"] == "p2"
    p1 = next(p for p in call(s.app, "vcm.show_pools") if p["spec"]["name"] == "p1")
    age = p1["status"]["health"].pop("age-seconds")
    assert 0 <= age < 60
    assert p1["status"]["health"] == {"state": "degraded",
                                      "reason": "no usable host: h1 in maintenance mode"}
    assert [x["metadata"]["name"] for x in p1["status"]["leases"]] == _names(held)
    from api_shim.fleet_metrics import FleetCollector

    samples = {tuple(sorted(x.labels.items())): x.value for m in
               FleetCollector(s.redis.url).collect() if m.name == "vcm_pool_health"
               for x in m.samples}
    assert samples == {(("pool", "p1"), ("reason", "no usable host: h1 in maintenance mode"),
                        ("state", "degraded")): 1}
    # stale health is unknown, and unknown never degrades a pool
    s.ledger.store_health("vc1", {"p1": {"state": "degraded", "reason": "old news"}},
                          now - 7200)
    wait_for(lambda: call(s.app, "vcm.estimate", request=probe)["pools"]["p1"]["fits"] > 0,
             timeout=15, what="the stale health to stop counting")
    again = wait_for(lambda: refused() is None and call(s.app, "vcm.acquire", request=probe),
                     timeout=15, what="placement to take p1 again")
    assert again[0]["status"]["pool"] == "p1"
    p1 = next(p for p in call(s.app, "vcm.show_pools") if p["spec"]["name"] == "p1")
    assert p1["status"]["health"]["state"] == "unknown"


# messages anyone can put on the queue ---------------------------------------------------------
def _poison(s, change) -> None:
    """A real acquire message, captured from a queue nobody consumes, changed, and put on
    the placement queue by hand (what any client of the broker can do)."""
    import base64

    s.app.send_task("vcm.acquire", kwargs={"request": {"vcpus": 1, "memory": 1}},
                    queue="capture-only")
    r = s.redis.client()
    m = json.loads(r.lpop("capture-only"))
    change(m, base64)
    m["properties"]["delivery_info"]["routing_key"] = "placement"
    r.lpush("placement", json.dumps(m))


def test_a_malformed_message_is_refused_and_the_placement_worker_goes_on(s):
    def surrogate_id(m, _b64):
        m["headers"]["id"] = m["headers"]["root_id"] = "\udcff"
        m["properties"]["correlation_id"] = "\udcff"

    def body_not_a_triple(m, b64):
        body = json.loads(b64.b64decode(m["body"]))
        m["body"] = b64.b64encode(json.dumps(body[1]).encode()).decode()

    for change in (surrogate_id, body_not_a_triple):
        _poison(s, change)
        wait_for(lambda: s.redis.client().llen("placement") == 0, timeout=20,
                 what="the worker to take the message")
        # still up, and answering
        lease = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "networks": 0})
        assert s.placement.proc.poll() is None
        call(s.app, "vcm.release", lease_ids=_names(lease))
    log = s.placement.output()
    assert "refused a task message: its task id '\\udcff'" in log
    assert "refused a task message: its body is not [args, kwargs, options]" in log
    assert "Unrecoverable error" not in log


@pytest.mark.parametrize("bad", ["[1]", "{}", '"hello"', '{"status": "x", "spec": {}}',
                                 '{"status": {"pool": "p1"}, "spec": {}}'])
def test_a_record_of_the_wrong_shape_is_set_aside_whole_and_stops_nothing(s, bad):
    good = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "ttl": 1,
                                               "owner": "zz"})[0]
    r = s.redis.client()
    r.hset("vcm:leases", "zz-bad", bad)
    r.zadd("vcm:expiry", {"zz-bad": time.time() - 5})
    r.sadd("vcm:owner:zz", "zz-bad")
    seq = int(r.get("vcm:seq"))
    expires = parse_rfc3339(good["status"]["expires-at"])
    wait_for(lambda: time.time() > expires, timeout=5, what="the lease to expire")
    assert call(s.app, "vcm.reap_expired") == [good["metadata"]["name"]]
    assert int(r.get("vcm:seq")) == seq + 1  # one whole change, not half of one
    assert r.hexists("vcm:quarantine", "zz-bad") and not r.hexists("vcm:leases", "zz-bad")
    # its owner cannot be read, so its id stays in the owner's set until a release by owner
    # drops it (without failing)
    assert call(s.app, "vcm.release", owner="zz") == []
    assert not r.sismember("vcm:owner:zz", "zz-bad")
    s.check()


def test_reads_and_writes_go_on_past_an_unreadable_record(s):
    mine = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "networks": 0,
                                               "owner": "qq", "labels": {"k": "v"}})
    r = s.redis.client()
    r.hset("vcm:leases", "qq-bad", "{oops")
    r.sadd("vcm:owner:qq", "qq-bad")
    assert _names(call(s.app, "vcm.list_leases")) == _names(mine)
    assert any(p["status"]["leases"] for p in call(s.app, "vcm.show_pools"))
    assert call(s.app, "vcm.rollup_usage")["pools"]
    renewed = call(s.app, "vcm.renew", lease_id=_names(mine)[0], ttl="2h")
    assert renewed["metadata"]["name"] == _names(mine)[0]
    exc = failure(s.app, "vcm.renew", lease_id="qq-bad")
    assert type(exc).__name__ == "LeaseNotFound" and "damaged" in str(exc)
    # a release by owner sets the record aside and releases the rest, every time
    assert call(s.app, "vcm.release", owner="qq") == _names(mine)
    assert r.hexists("vcm:quarantine", "qq-bad")
    assert call(s.app, "vcm.release", owner="qq") == []
    s.check()
