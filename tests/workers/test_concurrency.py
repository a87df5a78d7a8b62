"""Two placement workers by mistake, concurrent clients, duplicates and crashes mid-task."""

from __future__ import annotations

import random
import re
import threading
import uuid

import pytest
import yaml
from celery import Celery

from tests.support.audit import audit
from tests.support.events import Answers
from tests.support.helpers import check_invariants
from tests.support.procs import RedisServer, Worker, env_for, wait_for
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import load_pools


def small_fleet(path) -> dict:
    pools = []
    for i in range(4):
        pools.append({
            "name": f"p{i}", "vcenter": f"vc{i % 3}", "datacenter": "dc", "cluster": f"c{i}",
            "datastore": f"ds{i}", "vcpus": 64, "memory": 256, "storage": 1000,
            "networks": [{"port-group": f"pg{i}-{j}", "vlan": 100 * i + j} for j in range(12)],
        })
    path.write_text(yaml.safe_dump({"pools": pools}))
    return {p.name: p for p in load_pools(str(path))}


@pytest.fixture()
def private(tmp_path):
    server = RedisServer().start()
    pools_path = tmp_path / "pools.yaml"
    pools = small_fleet(pools_path)
    env = env_for(server.url, pools_path, VCM_MIRROR_FILE=str(tmp_path / "ledger.json"))
    app = Celery("t", broker=server.url, backend=server.url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = server.url
    workers: list[Worker] = []
    yield {"server": server, "env": env, "pools": pools, "app": app, "workers": workers,
           "ledger": Ledger(server.client())}
    for w in workers:
        w.kill()  # thrown away: no test here looks at a worker's shutdown
    app.close()
    server.stop()


def test_two_placement_workers_never_overallocate(private):
    app, ledger, pools = private["app"], private["ledger"], private["pools"]
    for name in ("a", "b"):
        private["workers"].append(Worker(private["env"], "placement", name=f"{name}@t"))
    for w in private["workers"]:
        w.start(wait=False)
    for w in private["workers"]:
        w.wait_ready()
    lock = threading.Lock()  # serializes the invariant check with nothing: it reads atomically
    errors: list[BaseException] = []
    outcomes = {"granted": 0, "refused": 0, "released": 0}

    def client(seed: int) -> None:
        rng = random.Random(seed)
        held: list[str] = []
        try:
            for _ in range(63):
                if held and rng.random() < 0.45:
                    lease_id = held.pop(rng.randrange(len(held)))
                    r = app.send_task("vcm.release", kwargs={"lease_ids": [lease_id]},
                                      queue="placement")
                    assert r.get(timeout=30) == [lease_id]
                    with lock:
                        outcomes["released"] += 1
                else:
                    req = {"vcpus": rng.choice([4, 8, 16]), "memory": rng.choice([16, 32, 64]),
                           "storage": rng.choice([0, 100]), "vcenters": rng.choice([1, 1, 2]),
                           "owner": f"t{seed}"}
                    r = app.send_task("vcm.acquire", kwargs={"request": req}, queue="placement")
                    try:
                        leases = r.get(timeout=30)
                    except Exception as exc:  # noqa: BLE001
                        assert type(exc).__name__ == "NoCapacity", exc
                        with lock:
                            outcomes["refused"] += 1
                    else:
                        assert len({x["status"]["vcenter"] for x in leases}) == req["vcenters"]
                        held.extend(x["metadata"]["name"] for x in leases)
                        with lock:
                            outcomes["granted"] += 1
                check_invariants(ledger, pools)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert sum(outcomes.values()) == 8 * 63
    assert outcomes["granted"] > 100 and outcomes["refused"] > 0, outcomes
    check_invariants(ledger, pools)
    # both workers really consumed `placement`
    done = [len(re.findall(r"Task vcm\.\w+\[[^\]]+\] (?:succeeded|ignored)", w.output()))
            for w in private["workers"]]
    assert all(n > 20 for n in done), done


def test_same_request_id_on_two_workers_gives_one_set(private):
    app, ledger = private["app"], private["ledger"]
    for name in ("a", "b"):
        private["workers"].append(Worker(private["env"], "placement", name=f"{name}@t").start())
    req = {"vcpus": 8, "memory": 8, "vcenters": 2, "request-id": "dup-1"}
    results = [app.send_task("vcm.acquire", kwargs={"request": req}, queue="placement")
               for _ in range(40)]
    ids = {tuple(sorted(x["metadata"]["name"] for x in r.get(timeout=30))) for r in results}
    assert len(ids) == 1
    assert len(audit(ledger)["leases"]) == 2


class CrashingWorker(Worker):
    """A placement worker whose app dies right after its first commit."""

    def spawn(self, args: list[str], env: dict):
        app = args.index("tasks")
        return super().spawn([*args[:app], "tests.support.crash_after_commit",
                              *args[app + 1:]], env)


def test_crash_after_commit_then_redelivery_is_idempotent(private):
    """The worker dies after committing but before replying; the task comes back."""
    app, ledger, pools = private["app"], private["ledger"], private["pools"]
    env = dict(private["env"], VCM_VISIBILITY_TIMEOUT="2")
    crashing = CrashingWorker(env, "placement", name="crash@t")
    private["workers"].append(crashing.start())
    r = app.send_task("vcm.acquire", kwargs={"request": {"vcpus": 8, "memory": 8}},
                      queue="placement")
    wait_for(lambda: crashing.proc.poll() is not None, timeout=20, what="the crash")
    committed = audit(ledger)["leases"]
    assert len(committed) == 1  # committed, never answered
    healthy = Worker(env, "placement", name="healthy@t")
    private["workers"].append(healthy.start())
    leases = r.get(timeout=30)
    assert [x["metadata"]["name"] for x in leases] == list(committed)
    snap = check_invariants(ledger, pools)
    assert len(snap["leases"]) == 1


class DiesAfterRefusal(Worker):
    """A placement worker whose app dies right after it stored its first refusal, before its
    ack (solo pool: the task runs in the worker process, so the whole worker goes, as when
    its pod is killed)."""

    def spawn(self, args: list[str], env: dict):
        app = args.index("tasks")
        return super().spawn([*args[:app], "tests.support.crash_after_refusal",
                              *args[app + 1:]], env)


def test_a_refusal_whose_ack_was_lost_is_answered_the_same_when_the_broker_gives_it_again(
        private):
    """Results kept as briefly as allowed next to the visibility timeout: the worker dies after
    storing a refusal (the client reads it), before its ack; the broker gives the message again
    a visibility timeout later, after room freed. That copy is refused like the first and
    nothing is granted.

    The task's answer is kept a visibility timeout longer than its result (checked on the
    keys' expiry). With results kept as briefly as allowed (VCM_RESULT_TTL=60, its minimum)
    and a visibility timeout at least as long, the result has expired when the copy comes.
    Here the visibility timeout is 5 s, so the copy comes in seconds, and the result is
    deleted before it comes, as Redis's expiry would have: the copy finds only the answer."""
    app, ledger = private["app"], private["ledger"]
    visibility = 5
    env = dict(private["env"], VCM_RESULT_TTL="60", VCM_VISIBILITY_TIMEOUT=str(visibility))
    dying = DiesAfterRefusal(env, "placement", name="dying@t", pool="solo")
    # the worker that takes the copy runs from the start but consumes nothing until the room
    # is freed (Celery's cancel_consumer and add_consumer), so that the release is queued and
    # taken before the broker can give the message again
    healthy = Worker(env, "placement", name="healthy@t")
    private["workers"] += [dying, healthy]
    for w in (dying, healthy):
        w.start(wait=False)
    for w in (dying, healthy):
        w.wait_ready()
    assert app.control.cancel_consumer("placement", destination=[healthy.name], reply=True,
                                       timeout=10) == [
        {healthy.name: {"ok": "no longer consuming from placement"}}]
    task_id = uuid.uuid4().hex
    with Answers(app, task_id, hostname=healthy.name) as answers:
        for i in range(4):
            request = {"vcpus": 64, "memory": 8, "required-pool": f"p{i}", "owner": "hog"}
            app.send_task("vcm.acquire", kwargs={"request": request},
                          queue="placement").get(30)
        r = app.send_task("vcm.acquire", kwargs={"request": {"vcpus": 8, "memory": 8}},
                          queue="placement", task_id=task_id)
        with pytest.raises(Exception) as refused:
            r.get(timeout=30)
        assert type(refused.value).__name__ == "NoCapacity"
        wait_for(lambda: dying.proc.poll() is not None, timeout=20, what="the crash")
        released = app.send_task("vcm.release", kwargs={"owner": "hog"}, queue="placement")
        assert app.control.add_consumer("placement", destination=[healthy.name], reply=True,
                                        timeout=10) == [
            {healthy.name: {"ok": "add consumer placement"}}]
        client = private["server"].client()
        result_key = app.backend.get_key_for_task(task_id)
        answer_ttl = client.pttl(ledger.k.answered(task_id))
        result_ttl = client.pttl(result_key)
        assert 0 < result_ttl <= 60_000, result_ttl
        # the answer outlives the result by a visibility timeout (less the moment between
        # their writes): the broker gives the message again no sooner
        assert answer_ttl - result_ttl > (visibility - 1) * 1000, (answer_ttl, result_ttl)
        assert client.delete(result_key) == 1
        assert len(released.get(timeout=30)) == 4
        # the broker gives the message again once it is a visibility timeout old
        assert answers.wait(1, timeout=60) == ["NoCapacity"]
    log = healthy.output()
    took = [log.index(f"Task {name}[{tid}] received")
            for name, tid in (("vcm.release", released.id), ("vcm.acquire", task_id))]
    assert took[0] < took[1], "the copy came before the room was freed"
    assert audit(ledger)["leases"] == {}
