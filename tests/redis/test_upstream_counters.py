"""What the metrics named as upstream's read from a real redis-server (a private key prefix on
the session's server): the counters the ledger's scripts keep per network type (a request
fulfilled, joining the line, joining it behind others; copies and twins never counted twice),
and a scrape over a ledger holding odd data, which still answers."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api_shim.fleet_metrics import FleetCollector, FleetReader, PoolsSource
from workers.adapters.ledger import Ledger
from workers.core.grants import make_lease
from workers.core.models import Network, Pool
from workers.core.parsing import parse_request

POOL = Pool("p1", "vc1", "dc", "c", "ds", vcpus=10, memory=100, storage=100,
            networks=(Network("pg-1", vlan=1, cidr="10.0.1.0/24"),
                      Network("pg-2", vlan=2, cidr="10.0.2.0/24", type="multi-tenant")))
CAPS = {"p1": (POOL.vcpu_capacity, POOL.memory, POOL.storage)}


@pytest.fixture()
def own_ledger(redis_server):
    ledger = Ledger(redis_server.client(), prefix=f"t-{uuid.uuid4().hex[:8]}:")
    assert ledger.restore({"seq": 0, "leases": []}).applied
    yield ledger
    for key in ledger.r.scan_iter(ledger.p + "*"):
        ledger.r.delete(key)


def request(rid: str, **fields):
    return parse_request({"vcpus": 1, "memory": 1, "request-id": rid, **fields},
                         default_owner="o", default_request_id=rid, default_ttl=3600,
                         max_ttl=86400)


def grant(ledger: Ledger, rid: str, networks: list[Network], **fields) -> str:
    req = request(rid, networks=len(networks), **fields)
    lease = make_lease(uuid.uuid4().hex[:20], req, POOL, networks, time.time())
    return ledger.commit(ledger.usage().version, {req.key: [lease]}, CAPS).status


def counts(ledger: Ledger) -> dict[str, int]:
    return {k: v for k, v in ledger.stats().items() if k.partition(":")[0] in
            ("pending", "fulfilled", "delayed")}


def waiter(rid: str, task: str, **fields) -> dict:
    return {"task": task, "request": request(rid, **fields).to_dict(), "since": time.time(),
            "deadline": time.time() + 60}


def test_joining_the_line_counts_pending_once_and_delayed_behind_others(own_ledger):
    own_ledger.park("k1", waiter("k1", "t1"))
    own_ledger.park("k1", waiter("k1", "t1"))  # a copy of the task
    own_ledger.park("k1", waiter("k1", "t2"))  # the same request sent again: a twin
    own_ledger.park("k2", waiter("k2", "t3", **{"network-type": "multi-tenant"}))
    own_ledger.park("k3", waiter("k3", "t4", networks=0))
    assert counts(own_ledger) == {"pending:single-tenant": 1, "pending:multi-tenant": 1,
                                  "pending:": 1, "delayed:multi-tenant": 1, "delayed:": 1}
    own_ledger.unpark("k1")
    own_ledger.unpark("k2")
    own_ledger.unpark("k3")
    # granted meanwhile: not in line, not counted
    assert grant(own_ledger, "r1", [POOL.networks[0]]) == "ok"
    assert own_ledger.park(request("r1").key, waiter("r1", "t5")).position == 0
    own_ledger.park("k4", waiter("k4", "t6"))  # an empty line again: not delayed
    assert counts(own_ledger) == {"pending:single-tenant": 2, "pending:multi-tenant": 1,
                                  "pending:": 1, "delayed:multi-tenant": 1, "delayed:": 1,
                                  "fulfilled:single-tenant": 1}


def test_a_commit_counts_each_request_it_grants_by_network_type(own_ledger):
    assert grant(own_ledger, "a", [POOL.networks[0]]) == "ok"
    assert grant(own_ledger, "b", [POOL.networks[1]], **{"network-type": "multi-tenant"}) == "ok"
    assert grant(own_ledger, "c", []) == "ok"
    assert grant(own_ledger, "a", [POOL.networks[0]]) == "dup"  # its copy: not again
    # two requests in one commit (a batch), one of them on two leases
    reqs = [request("d", networks=0), request("e", networks=0)]
    now = time.time()
    groups = {reqs[0].key: [make_lease("d1", reqs[0], POOL, [], now),
                            make_lease("d2", reqs[0], POOL, [], now)],
              reqs[1].key: [make_lease("e1", reqs[1], POOL, [], now)]}
    assert own_ledger.commit(own_ledger.usage().version, groups, CAPS).status == "ok"
    assert counts(own_ledger) == {"fulfilled:single-tenant": 1, "fulfilled:multi-tenant": 1,
                                  "fulfilled:": 3}


def scrape(collector: FleetCollector) -> dict[tuple, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_odd_ledger_data_leaves_out_what_cannot_be_read(own_ledger, redis_server):
    assert grant(own_ledger, "a", [POOL.networks[0]]) == "ok"
    r, p = own_ledger.r, own_ledger.p
    r.hset(p + "leases", mapping={"bad": "not json", "half": json.dumps({"status": {}}),
                                  "surrogate": '{"metadata": {"name": "s"}, "status": '
                                               '{"pool": "\\ud800", "owner": "o"}}'})
    r.hset(p + "waiters", mapping={
        "w-bad": "x", "w-list": "[1]",
        "w-odd": json.dumps({"request": {"network-type": "\ud800", "networks": 1},
                             "since": "soon"}),
        "w-nan": '{"request": "x", "since": NaN}',
        "w-ok": json.dumps(waiter("w-ok", "t"))})
    r.hset(p + "use:p1", mapping={"vcpus": "inf", "memory": "x"})
    r.hset(p + "stats", mapping={"fulfilled:single-tenant": "x", "delayed:multi-tenant": 2,
                                 "pending": 7, "fulfilled": 9})
    reader = FleetReader(redis_server.url, prefix=p)
    m = scrape(FleetCollector(reader, lambda: {"p1": POOL}, "ci"))

    def value(name: str, **labels: str) -> float | None:
        return m.get((name, tuple(sorted({"namespace": "ci", **labels}.items()))))

    assert m[("vcm_redis_up", ())] == 1
    assert value("pool_cpus_available", pool="p1") == 10  # "inf" reads as nothing used
    assert value("pool_memory_available", pool="p1") == 100
    assert value("leases_in_use", pool="p1") == 1
    assert value("leases_counts", networkType="single-tenant", phase="Fulfilled") == 1
    assert value("leases_counts", networkType="\ufffd", phase="Pending") == 1
    # w-ok, and w-nan: a request of no fields has the defaults
    assert value("leases_counts", networkType="single-tenant", phase="Pending") == 2
    assert value("lease_age_seconds_count", pool="", networkType="single-tenant",
                 phase="Pending") == 1  # the others have no time they joined
    assert value("network_lease_count", pool="p1", network="pg-1",
                 networkType="single-tenant") == 1
    assert value("lease_transitions_total", networkType="single-tenant",
                 phase="Fulfilled") == 0  # "x" is no count
    assert value("lease_delays_total", networkType="multi-tenant") == 2
    assert not [k for k in m if k[0] == "lease_transitions_total"
                and dict(k[1])["networkType"] not in ("single-tenant", "multi-tenant")]


def test_the_pools_file_missing_or_broken(own_ledger, redis_server, tmp_path):
    path = tmp_path / "pools.yaml"
    reader = FleetReader(redis_server.url, prefix=own_ledger.p)
    collector = FleetCollector(reader, PoolsSource(str(path)), "ci")
    m = scrape(collector)
    assert m[("vcm_redis_up", ())] == 1 and ("vcm_active_leases", ()) in m
    assert not [k for k in m if k[0].startswith(("pool_", "lease"))]  # no pools: none of them
    path.write_text("pools:\n  - {name: p9, vcenter: v, datacenter: d, cluster: c, "
                    "datastore: s, vcpus: 4, memory: 8, storage: 16}\n")
    m = scrape(collector)
    assert m[("pool_cpus_total", (("namespace", "ci"), ("pool", "p9")))] == 4
    path.write_text("pools: [broken")  # an invalid change keeps the last good pools
    m = scrape(collector)
    assert m[("pool_cpus_total", (("namespace", "ci"), ("pool", "p9")))] == 4
