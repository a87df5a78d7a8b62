"""`vcm.adopt` through the task API, as any sender may send it: hostile arguments, request-ids
shared with acquires and with other owners, copies of one task, and adoptions racing grants
for the same port groups on two placement workers consuming one queue (the commit script,
not any one process, keeps them apart)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml
from celery import Celery

from tests.support.audit import audit
from tests.support.helpers import check_invariants
from tests.support.procs import RedisServer, Worker, env_for
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import load_pools
from workers.core.text import text_problem

ADOPTED = "vsphere-capacity-manager.splat-team.io/adopted"


def fleet(path) -> dict:
    """Two pools of one vCenter and pod, listing the same three port groups (so they share
    their ledger keys), and a pool whose one network is split into slices."""
    pools = [{"name": f"p{i}", "vcenter": "vc", "datacenter": "dc", "cluster": f"c{i}",
              "datastore": "ds", "pod": "pod1", "vcpus": 64, "memory": 256, "storage": 1000,
              "networks": [{"port-group": f"pg{j}", "vlan": 100 + j} for j in range(3)]}
             for i in range(2)]
    pools.append({"name": "split", "vcenter": "vc", "datacenter": "dc", "cluster": "cs",
                  "datastore": "ds", "vcpus": 64, "memory": 256, "storage": 1000,
                  "networks": [{"port-group": "pgs", "vlan": 300, "cidr": "10.0.0.0/24",
                                "slices": 4, "type": "multi-tenant"}]})
    path.write_text(yaml.safe_dump({"pools": pools}))
    return {p.name: p for p in load_pools(str(path))}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two placement workers on one queue, as the documented command starts them."""
    tmp = tmp_path_factory.mktemp("adopt")
    server = RedisServer().start()
    pools = fleet(tmp / "pools.yaml")
    env = env_for(server.url, tmp / "pools.yaml", VCM_MIRROR_FILE=str(tmp / "ledger.json"))
    workers = [Worker(env, "placement", name=f"{n}@adopt") for n in ("a", "b")]
    app = Celery("t", broker=server.url, backend=server.url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = server.url
    try:
        for w in workers:
            w.start(wait=False)
        for w in workers:
            w.wait_ready()
        yield {"app": app, "ledger": Ledger(server.client()), "pools": pools,
               "workers": workers}
    finally:
        for w in workers:
            w.kill()
        app.close()
        server.stop()


@pytest.fixture()
def stack(two):
    """The module's stack with an empty ledger after the test (its invariants checked)."""
    yield two
    check_invariants(two["ledger"], two["pools"])
    ids = list(audit(two["ledger"])["leases"])
    if ids:
        send(two["app"], "vcm.release", lease_ids=ids).get(timeout=30)


def send(app: Celery, name: str, task_id: str | None = None, **kwargs: Any):
    return app.send_task(name, kwargs=kwargs, queue="placement", task_id=task_id)


def adopt(app: Celery, request: Any, holdings: Any, task_id: str | None = None) -> Any:
    return send(app, "vcm.adopt", task_id, request=request, holdings=holdings)


def refusal(result) -> BaseException:
    with pytest.raises(Exception) as caught:
        result.get(timeout=30)
    return caught.value


def request(rid: str, owner: str = "ns/b1", group: str = "b1", **more: Any) -> dict[str, Any]:
    out = {"vcpus": 4, "memory": 16, "networks": 1, "owner": owner, "request-id": rid, **more}
    if group:
        out["boskos-lease-id"] = group
    return out


def held(*port_groups: str, pools: tuple[str, ...] = ("p0",)) -> dict[str, Any]:
    return {"pools": list(pools), "networks": [{"port-group": p} for p in port_groups]}


def names(leases: list[dict[str, Any]]) -> list[str]:
    return [x["metadata"]["name"] for x in leases]


def test_hostile_arguments_are_refused_naming_the_field_and_record_nothing(stack):
    app = stack["app"]
    ok = held("pg0")
    for req, holdings, field in (
            ("x", ok, "request"), ([1], ok, "request"),
            ({"vcpus": 1, "memory": 1, "owner": "o"}, ok, "request-id"),
            (request("\ud800"), ok, "request-id"), (request("a\x00b"), ok, "request-id"),
            (request("a" * 10**6), ok, "request-id"),
            (request("r", owner="\udfff"), ok, "owner"),
            (request("r", vcpus=True), ok, "vcpus"), (request("r", vcpus="4"), ok, "vcpus"),
            (request("r", vcpus=-1), ok, "vcpus"), (request("r", ttl=10**18), ok, "ttl"),
            (request("r", labels={"\ud800": "x"}), ok, "labels"),
            (request("r"), {"pools": ["\udcff"]}, "holdings.pools[0]"),
            (request("r"), {"pools": ["p0\x1b[31m"]}, "holdings.pools[0]"),
            (request("r"), {"pools": ["p0"] * 100000}, "holdings.pools"),
            (request("r"), {"pools": "p0"}, "holdings.pools"),
            (request("r"), {"pools": [{"name": "p0"}]}, "holdings.pools[0]"),
            (request("r"), {"pools": ["p0"], "networks": [{"port-group": "pg0"}] * 10**4},
             "holdings.networks"),
            (request("r"), held("\ud800"), "holdings.networks[0].port-group"),
            (request("r"), {"pools": ["p0"], "networks": [{"port-group": "pg0", "pod": "\x1b"}]},
             "holdings.networks[0].pod"),
            (request("r"), {"pools": ["p0"], "networks": [{"port-group": "pg0", "pod": ["x"]}]},
             "holdings.networks[0].pod"),
            (request("r"), {"pools": ["p0"], "networks": [{"port-group": "pg0", "pod": "pod9"}]},
             "holdings.networks[0]"),
            (request("r"), held("pgs", pools=("split",)), "holdings.networks[0]"),
            (request("r", networks=2), held("pg0"), "holdings.networks")):
        refused = refusal(adopt(app, req, holdings))
        assert type(refused).__name__ == "InvalidRequest", (field, refused)
        assert str(refused).startswith(f"{field}:"), (field, refused)
    for args, kwargs in (([1, 2], {}), ([], {"request": request("r"), "holdings": ok, "x": 1})):
        refused = refusal(app.send_task("vcm.adopt", args=args, kwargs=kwargs,
                                        queue="placement"))
        assert type(refused).__name__ == "InvalidRequest", refused
    # what the sender says it cannot tell is echoed as text: escaped, never raw
    for problem in ("\ud800 its Network n1 \x1b[31m cannot be read\u202e", {"a": "\x00"},
                    "x" * 100000):
        refused = refusal(adopt(app, request("r"), {"pools": ["p0"], "problem": problem}))
        assert type(refused).__name__ == "InvalidRequest", refused
        message = str(refused)
        assert message.startswith("holdings: "), message
        assert text_problem(message, 1000) is None, message
    assert audit(stack["ledger"])["leases"] == {}


def test_request_ids_are_per_owner_and_an_acquires_is_answered_as_granted(stack):
    """An adopt naming the request-id an acquire of the same owner was granted is answered
    that grant (not adopted, not recorded again); the same request-id of another owner is
    another request; the leases of one install share a port group, no one else's do."""
    app = stack["app"]
    granted = send(app, "vcm.acquire", request={
        "vcpus": 2, "memory": 2, "networks": 1, "owner": "ns/b1", "boskos-lease-id": "b1",
        "request-id": "same", "required-pool": "p0"}).get(timeout=30)
    port_group = granted[0]["status"]["networks"][0]["port-group"]
    again = adopt(app, request("same"), held(port_group)).get(timeout=30)
    assert names(again) == names(granted)
    assert ADOPTED not in again[0]["status"]["labels"]
    sharing = adopt(app, request("mine"), held(port_group)).get(timeout=30)
    assert sharing[0]["status"]["labels"][ADOPTED] == "true"
    for req in (request("same", owner="ns/b2", group="b2"), request("other", group=""),
                request("netonly", vcpus=0, memory=0)):
        refused = refusal(adopt(app, req, held(port_group)))
        assert type(refused).__name__ == "NoCapacity", refused
        assert granted[0]["metadata"]["name"] in str(refused), refused
    free = next(f"pg{j}" for j in range(3) if f"pg{j}" != port_group)
    theirs = adopt(app, request("same", owner="ns/b2", group="b2"), held(free)).get(timeout=30)
    assert names(theirs) != names(granted)
    assert theirs[0]["status"]["owner"] == "ns/b2"


def test_copies_of_an_adopt_record_it_once_and_never_again_after_its_release(stack):
    app = stack["app"]
    req, holdings = request("copy", networks=0), {"pools": ["p1"]}
    first = adopt(app, req, holdings, task_id="adopt-copy").get(timeout=30)
    copies = [adopt(app, {**req, "vcpus": 64}, {"pools": ["p0"]}) for _ in range(4)]
    assert all(names(c.get(timeout=30)) == names(first) for c in copies)
    assert send(app, "vcm.release", lease_ids=names(first)).get(timeout=30) == names(first)
    late = refusal(adopt(app, req, holdings))
    assert type(late).__name__ == "LeaseNotFound", late
    assert audit(stack["ledger"])["leases"] == {}


def test_adopted_past_a_budget_the_pool_takes_no_grant_until_it_fits(stack):
    app = stack["app"]
    big = [adopt(app, request(f"big{i}", vcpus=60, networks=0), {"pools": ["p1"]}).get(
        timeout=30) for i in range(2)]
    assert audit(stack["ledger"])["counters"]["p1"][0] == 120
    check_invariants(stack["ledger"], stack["pools"])
    refused = refusal(send(app, "vcm.acquire", request={
        "vcpus": 1, "memory": 1, "owner": "x", "required-pool": "p1", "wait": 0}))
    assert type(refused).__name__ == "NoCapacity", refused
    send(app, "vcm.release", lease_ids=names(big[0])).get(timeout=30)
    got = send(app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "owner": "x",
                                            "required-pool": "p1", "networks": 0,
                                            "wait": 0}).get(timeout=30)
    assert got[0]["status"]["pool"] == "p1"


def test_adopts_racing_acquires_on_two_workers_never_double_book(stack):
    """Rounds of acquires and adopts for the same three port groups (each pool lists all
    three), some adopts sent twice under one task id (a redelivery) or once more under
    another with other holdings: each request-id gets one record, each port group one
    install, every copy the same answer."""
    app, ledger = stack["app"], stack["ledger"]
    errors: list[str] = []
    for rnd in range(12):
        rng = random.Random(rnd)
        sent: list[tuple[str, Any]] = []
        for k in range(8):
            pool = rng.choice(["p0", "p1"])
            if rng.random() < 0.4:
                sent.append((f"acq{rnd}-{k}", send(app, "vcm.acquire", request={
                    "vcpus": 2, "memory": 2, "networks": 1, "owner": f"ns/a{k}",
                    "request-id": f"acq{rnd}-{k}", "required-pool": pool, "wait": 0})))
                continue
            rid, req = f"ad{rnd}-{k}", request(f"ad{rnd}-{k}", owner=f"ns/d{k}", group=f"d{k}")
            sent.append((rid, adopt(app, req, held(rng.choice(["pg0", "pg1", "pg2"]),
                                                   pools=(pool,)), task_id=f"t{rnd}-{k}")))
            if rng.random() < 0.5:
                sent.append((rid, adopt(app, req, held("pg0"), task_id=f"t{rnd}-{k}")))
            if rng.random() < 0.3:
                sent.append((rid, adopt(app, req, held("pg1", pools=("p1",)))))
        answers: dict[str, set[tuple[str, ...]]] = {}
        for rid, result in sent:
            try:
                got = tuple(names(result.get(timeout=60)))
            except Exception as exc:  # noqa: BLE001 - refusals are fine, unknown kinds not
                if type(exc).__name__ not in ("NoCapacity", "LeaseNotFound"):
                    errors.append(f"{rid}: {type(exc).__name__}: {exc}")
                continue
            answers.setdefault(rid, set()).add(got)
        snap = check_invariants(ledger, stack["pools"])
        records: dict[tuple[str, str], set[str]] = {}
        for lease_id, lease in snap["leases"].items():
            st = lease["status"]
            records.setdefault((st["owner"], st["request-id"]), set()).add(lease_id)
        for (owner, rid), ids in records.items():
            assert len(ids) == 1, (owner, rid, ids)
            assert answers.get(rid, {tuple(ids)}) == {tuple(ids)}, (rid, answers[rid], ids)
        recorded = {rid for _, rid in records}
        assert set(answers) <= recorded, set(answers) - recorded  # no answer without a record
        if snap["leases"]:
            send(app, "vcm.release", lease_ids=list(snap["leases"])).get(timeout=30)
    assert errors == []
    for w in stack["workers"]:
        assert "Traceback" not in w.output_of_this_run()
