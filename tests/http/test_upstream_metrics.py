"""The metrics named as upstream's on GET /metrics: scraped over real HTTP from a real stack (a
private redis-server, the placement and queries workers, the shim under uvicorn), with leases of
several network types on a plain, a cordoned and an excluded pool and requests waiting in
line. The scrape is parsed with prometheus_client's parser; each name is checked for its type,
its labels and its value against what the test set up, the metric selectors of upstream's
documented queries are looked up, and the number of series does not grow with the leases."""

from __future__ import annotations

import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import ApiServer
from tests.support.procs import Stack, wait_for

NS = "vsphere-infra-helpers"  # the default of VCM_API_METRICS_NAMESPACE
ST, MT, DC = "single-tenant", "multi-tenant", "disconnected"


def pools_yaml(cordoned: bool) -> str:
    return f"""
pools:
  - name: open
    vcenter: vc1.example.com
    datacenter: dc1
    cluster: c1
    datastore: ds1
    vcpus: 40
    vcpu-overcommit: 1.5
    memory: 400
    storage: 2000
    networks:
      - {{port-group: st-101, vlan: 101, cidr: 10.1.1.0/24, gateway: 10.1.1.1}}
      - {{port-group: st-102, vlan: 102, cidr: 10.1.2.0/24, gateway: 10.1.2.1}}
      - {{port-group: st-103, vlan: 103, cidr: 10.1.3.0/24, gateway: 10.1.3.1}}
      - {{port-group: mt-110, vlan: 110, cidr: 10.1.10.0/24, gateway: 10.1.10.1,
         type: multi-tenant, slices: 4}}
  - name: cordoned
    vcenter: vc2.example.com
    datacenter: dc2
    cluster: c2
    datastore: ds2
    vcpus: 30
    memory: 300
    storage: 1000
    no-schedule: {str(cordoned).lower()}
    networks:
      - {{port-group: st-201, vlan: 201, cidr: 10.2.1.0/24, gateway: 10.2.1.1}}
      - {{port-group: st-202, vlan: 202, cidr: 10.2.2.0/24, gateway: 10.2.2.1}}
  - name: excluded
    vcenter: vc3.example.com
    datacenter: dc3
    cluster: c3
    datastore: ds3
    vcpus: 20
    memory: 500
    storage: 500
    exclude: true
    networks:
      - {{port-group: dc-301, vlan: 301, cidr: 10.3.1.0/24, gateway: 10.3.1.1,
         type: disconnected}}
      - {{port-group: st-302, vlan: 302, cidr: 10.3.2.0/24, gateway: 10.3.2.1}}
"""


# (name, type as the parser reports it, label names of its samples but quantile)
UPSTREAM = {
    "pool_memory_available": ("gauge", {"namespace", "pool"}),
    "pool_memory_total": ("gauge", {"namespace", "pool"}),
    "pool_cpus_available": ("gauge", {"namespace", "pool"}),
    "pool_cpus_total": ("gauge", {"namespace", "pool"}),
    "pool_networks_available": ("gauge", {"namespace", "pool"}),
    "pool_networks_total": ("gauge", {"namespace", "pool"}),
    "pool_networks_available_by_type": ("gauge", {"namespace", "pool", "networkType"}),
    "pool_networks_total_by_type": ("gauge", {"namespace", "pool", "networkType"}),
    "pool_vcpus_utilization_ratio": ("gauge", {"namespace", "pool"}),
    "pool_memory_utilization_ratio": ("gauge", {"namespace", "pool"}),
    "pool_networks_utilization_ratio": ("gauge", {"namespace", "pool"}),
    "pool_no_schedule": ("gauge", {"namespace", "pool"}),
    "pool_excluded": ("gauge", {"namespace", "pool"}),
    "leases_in_use": ("gauge", {"namespace", "pool"}),
    "leases_counts": ("gauge", {"namespace", "networkType", "phase"}),
    # upstream: a gauge per lease (namespace, lease, pool, networkType); here a summary per
    # pool, network type and phase (docs/operations.md says why)
    "lease_age_seconds": ("summary", {"namespace", "pool", "networkType", "phase"}),
    "lease_transitions_total": ("counter", {"namespace", "networkType", "phase"}),
    "lease_delays_total": ("counter", {"namespace", "networkType"}),
    "network_lease_count": ("gauge", {"namespace", "network", "networkType", "pool"}),
}
OURS = {  # beside upstream's: storage, which upstream does not count
    "pool_storage_available": ("gauge", {"namespace", "pool"}),
    "pool_storage_total": ("gauge", {"namespace", "pool"}),
    "pool_storage_utilization_ratio": ("gauge", {"namespace", "pool"}),
}

# the metric selectors of upstream's documented queries (doc/prometheus-queries.md), each with
# whether it selects something in the state this test sets up
SELECTORS = [
    ("pool_vcpus_utilization_ratio", True),
    ("pool_memory_utilization_ratio", True),
    ("pool_networks_utilization_ratio", True),
    ("pool_no_schedule", True),
    ("pool_cpus_available", True), ("pool_memory_available", True),
    ("pool_networks_available", True), ("pool_cpus_total", True),
    ("pool_excluded", True),
    ("pool_networks_total_by_type", True), ("pool_networks_available_by_type", True),
    ('pool_networks_available_by_type{networkType="multi-tenant"}', True),
    ('pool_networks_total_by_type{pool="open"}', True),
    ('pool_networks_total_by_type{pool="devqe-pool-1"}', False),  # not a pool of ours
    ("network_lease_count", True),
    ('network_lease_count{networkType="multi-tenant"}', True),
    ("leases_counts", True),
    ('leases_counts{phase=~"Pending|Partial"}', True),
    ('leases_counts{phase="Pending"}', True),
    ("leases_in_use", True),
    ("lease_age_seconds", True),
    ('lease_age_seconds{networkType=~".+"}', True),
    ("lease_transitions_total", True),
    ('lease_transitions_total{phase="Fulfilled"}', True),
    ("lease_delays_total", True),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("upstream-metrics"), pools_yaml(cordoned=False))
    api = ApiServer(stack.env).start()
    yield stack, api
    api.stop()
    stack.stop()


class Scrape:
    """One /metrics answer, parsed: families by name, and samples by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for f in self.families.values() for s in f.samples}

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted({"namespace": NS, **labels}.items()))))

    def series(self, name: str) -> dict[tuple, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def select(self, selector: str) -> dict[tuple, float]:
        """A PromQL instant-vector selector (name and =, !=, =~, !~ matchers) as a lookup."""
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})?", selector)
        assert m, selector
        name, body = m.group(1), m.group(2) or ""
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', body)
        out = {}
        for labels, v in self.series(name).items():
            have = dict(labels)
            ok = True
            for label, op, want in matchers:
                got = have.get(label, "")
                hit = (got == want if op in ("=", "!=")
                       else re.fullmatch(want, got) is not None)
                ok &= hit if op in ("=", "=~") else not hit
            if ok:
                out[labels] = v
        return out


def scrape(http) -> Scrape:
    resp = http.get("/metrics")
    assert resp.status_code == 200, resp.text
    return Scrape(resp.text)


def acquire(http, **body) -> list[dict]:
    resp = http.post("/acquire", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def park(http, **body) -> str:
    resp = http.post("/acquire?async=true", json={**body, "wait": "10m"})
    assert resp.status_code == 202, resp.text
    task = resp.json()["task-id"]
    wait_for(lambda: http.get(f"/tasks/{task}").json()["state"] == "WAITING",
             what="the request to wait in line")
    return task


def network_label(entry: dict) -> str:
    """How network_lease_count names a network a lease holds: its port group, pod and slice
    (the ledger key without the vCenter)."""
    parts = [entry["port-group"], entry.get("pod", ""), entry.get("slice", "")]
    while parts[-1] == "":
        parts.pop()
    return "|".join(parts)


def test_upstream_names_types_labels_and_values(env):
    stack, api = env
    http = api.client()
    started = time.time()
    empty = scrape(http)
    assert empty.value("leases_counts", networkType=ST, phase="Fulfilled") is None
    assert empty.value("lease_transitions_total", networkType=ST, phase="Fulfilled") == 0
    assert empty.value("pool_cpus_available", pool="open") == 60  # 40 x 1.5

    a = acquire(http, vcpus=8, memory=64, storage=100, owner="a", **{
        "required-pool": "open", "request-id": "a-1"})
    b = acquire(http, vcpus=4, memory=16, storage=50, owner="b", **{
        "required-pool": "open", "network-type": MT})
    c = acquire(http, vcpus=2, memory=8, storage=10, vcenters=2, owner="c")
    d = acquire(http, vcpus=4, memory=20, storage=20, owner="d", **{
        "required-pool": "excluded", "network-type": DC})
    e = acquire(http, vcpus=1, memory=1, networks=0, owner="e", **{"required-pool": "open"})
    f = acquire(http, vcpus=1, memory=1, owner="f", **{"required-pool": "open"})
    resp = http.post("/release", json={"lease-ids": [f[0]["metadata"]["name"]], "owner": "f"})
    assert resp.status_code == 200, resp.text
    # a replay of a granted request is answered again, never counted again
    assert acquire(http, vcpus=8, memory=64, storage=100, owner="a", **{
        "required-pool": "open", "request-id": "a-1"}) == a
    assert sorted(x["status"]["pool"] for x in c) == ["cordoned", "open"]
    (stack.pools).write_text(pools_yaml(cordoned=True))  # `vcm pools cordon cordoned`

    # two requests wait for `open` (45 of its 60 vCPUs are free): the second behind the first
    park(http, vcpus=50, memory=1, owner="w1", **{"required-pool": "open"})
    joined = time.time()
    park(http, vcpus=50, memory=1, owner="w2", **{"required-pool": "open", "network-type": MT})

    leases = [*a, *b, *c, *d, *e]
    on = {p: [x for x in leases if x["status"]["pool"] == p]
          for p in ("open", "cordoned", "excluded")}
    looked = time.time()
    m = wait_for(lambda: (s := scrape(http)).value("pool_no_schedule", pool="cordoned") == 1
                 and s, what="the shim to read the cordoned pool")

    # every name, with its type and its labels
    for name, (kind, labels) in {**UPSTREAM, **OURS}.items():
        family_name = name.removesuffix("_total") if kind == "counter" else name
        family = m.families.get(family_name)
        assert family is not None, name
        assert family.type == kind, (name, family.type)
        assert family.samples, name
        for s in family.samples:
            assert set(s.labels) - {"quantile"} == labels, (name, s.labels)
            assert s.labels["namespace"] == NS

    # pools: budgets, what is free, the ratios, cordoned and excluded
    budgets = {"open": (40, 60, 400, 2000), "cordoned": (30, 30, 300, 1000),
               "excluded": (20, 20, 500, 500)}  # vcpus, placeable vcpus, memory, storage
    networks = {"open": {ST: 3, MT: 4}, "cordoned": {ST: 2}, "excluded": {DC: 1, ST: 1}}
    for pool, (vcpus, placeable, memory, storage) in budgets.items():
        held = on[pool]
        used = {dim: sum(x["spec"][dim] for x in held) for dim in ("vcpus", "memory", "storage")}
        taken = {(n["type"], network_label(n)) for x in held for n in x["status"]["networks"]}
        total = sum(networks[pool].values())
        want = {
            "pool_cpus_total": vcpus, "pool_cpus_available": placeable - used["vcpus"],
            "pool_memory_total": memory, "pool_memory_available": memory - used["memory"],
            "pool_storage_total": storage, "pool_storage_available": storage - used["storage"],
            "pool_networks_total": total, "pool_networks_available": total - len(taken),
            "pool_vcpus_utilization_ratio": used["vcpus"] / placeable,
            "pool_memory_utilization_ratio": used["memory"] / memory,
            "pool_storage_utilization_ratio": used["storage"] / storage,
            "pool_networks_utilization_ratio": len(taken) / total,
            "pool_no_schedule": int(pool == "cordoned"),
            "pool_excluded": int(pool == "excluded"),
            "leases_in_use": len(held),
        }
        for name, value in want.items():
            assert m.value(name, pool=pool) == pytest.approx(value), (name, pool)
        for kind, count in networks[pool].items():
            busy = sum(1 for t, _ in taken if t == kind)
            assert m.value("pool_networks_total_by_type", pool=pool, networkType=kind) == count
            assert m.value("pool_networks_available_by_type", pool=pool,
                           networkType=kind) == count - busy
        assert {dict(k)["networkType"] for k in m.series("pool_networks_total_by_type")
                if dict(k)["pool"] == pool} == set(networks[pool])
        # one series per network of the pool, 1 for those held
        counts = {dict(k)["network"]: (dict(k)["networkType"], v)
                  for k, v in m.series("network_lease_count").items() if dict(k)["pool"] == pool}
        assert len(counts) == total
        assert {(t, n) for n, (t, v) in counts.items() if v == 1} == taken
        assert all(v in (0, 1) for _, v in counts.values())
    assert m.value("pool_cpus_available", pool="open") == 60 - 15
    slices = [dict(k)["network"] for k in m.select(
        'network_lease_count{networkType="multi-tenant"}')]
    assert len(slices) == 4 and all(n.startswith("mt-110||") for n in slices)

    # requests: Fulfilled once per granted request (c holds two pools), Pending while waiting
    assert m.series("leases_counts") == {
        tuple(sorted({"namespace": NS, "networkType": t, "phase": p}.items())): n
        for t, p, n in ((ST, "Fulfilled", 2), (MT, "Fulfilled", 1), (DC, "Fulfilled", 1),
                        ("", "Fulfilled", 1), (ST, "Pending", 1), (MT, "Pending", 1))}
    assert m.select('leases_counts{networkType=~".+"}') != m.series("leases_counts")

    # the counters: f was fulfilled and released, the replay counted nothing, w2 was delayed
    transitions = {(dict(k)["networkType"], dict(k)["phase"]): v
                   for k, v in m.series("lease_transitions_total").items()}
    assert transitions == {(ST, "Fulfilled"): 3, (MT, "Fulfilled"): 1, (DC, "Fulfilled"): 1,
                           ("", "Fulfilled"): 1, (ST, "Pending"): 1, (MT, "Pending"): 1,
                           (DC, "Pending"): 0}
    delays = {dict(k)["networkType"]: v for k, v in m.series("lease_delays_total").items()}
    assert delays == {ST: 0, MT: 1, DC: 0}

    # ages: one summary per pool, network type and phase, never a series per lease
    groups = {(p, t, ph): n for p, t, ph, n in (
        ("open", ST, "Fulfilled", 2), ("open", MT, "Fulfilled", 1), ("open", "", "Fulfilled", 1),
        ("cordoned", ST, "Fulfilled", 1), ("excluded", DC, "Fulfilled", 1),
        ("", ST, "Pending", 1), ("", MT, "Pending", 1))}
    counted = {(dict(k)["pool"], dict(k)["networkType"], dict(k)["phase"]): v
               for k, v in m.series("lease_age_seconds_count").items()}
    assert counted == groups
    elapsed = time.time() - started
    for (pool, kind, phase), n in groups.items():
        labels = {"pool": pool, "networkType": kind, "phase": phase}
        q = [m.value("lease_age_seconds", quantile=x, **labels) for x in ("0.5", "0.9", "1")]
        assert 0 <= q[0] <= q[1] <= q[2] <= elapsed + 1, (labels, q)
        total = m.value("lease_age_seconds_sum", **labels)
        assert q[2] <= total <= n * q[2] + 1e-6, (labels, total)
    # the first waiter has waited at least since the test saw it in line, and ages go on
    oldest_pending = m.value("lease_age_seconds", quantile="1", pool="", networkType=ST,
                             phase="Pending")
    assert oldest_pending >= looked - joined
    time.sleep(1.2)
    later = scrape(http)
    assert later.value("lease_age_seconds", quantile="1", pool="", networkType=ST,
                       phase="Pending") >= oldest_pending + 1.0
    ids = {x["metadata"]["name"] for x in leases} | {"a", "b", "c", "d", "e", "w1", "w2"}
    for family in (m.families[n] for n in ("lease_age_seconds", "leases_counts")):
        for s in family.samples:
            assert not set(s.labels.values()) & ids, s

    # upstream's documented selectors, as lookups
    for selector, selects in SELECTORS:
        assert bool(m.select(selector)) is selects, selector
    # ... and what their vector matching needs: `a - b` matches series with the same labels,
    # `and on(namespace, pool)` finds a pool_no_schedule for every pool
    for a_name, b_name in (("pool_cpus_total", "pool_cpus_available"),
                           ("pool_networks_total_by_type", "pool_networks_available_by_type")):
        assert set(m.series(a_name)) == set(m.series(b_name))
    on_pool = {(dict(k)["namespace"], dict(k)["pool"]): v
               for k, v in m.series("pool_no_schedule").items()}
    schedulable = {k for k, v in on_pool.items() if v == 0}
    ratios = {(dict(k)["namespace"], dict(k)["pool"]) for k in
              m.series("pool_vcpus_utilization_ratio")}
    assert ratios <= set(on_pool) and ratios & schedulable == {(NS, "open"), (NS, "excluded")}
    excluded = {(dict(k)["namespace"], dict(k)["pool"]): v
                for k, v in m.series("pool_excluded").items()}
    # count(pool_no_schedule == 0 and pool_excluded == 0)
    assert len([k for k in schedulable if excluded[k] == 0]) == 1
    # sum(pool_networks_available_by_type{networkType="multi-tenant"}): 3 slices free
    assert sum(m.select('pool_networks_available_by_type{networkType="multi-tenant"}')
               .values()) == 3
    # what upstream's "stuck lease" alert means, written for these labels
    assert m.select('lease_age_seconds{phase="Pending",quantile="1"}')


def test_the_series_do_not_grow_with_the_leases(env):
    """200 leases of 200 owners: as many series as with 10 of them, no label names a lease."""
    _, api = env
    http = api.client()

    def take(start: int, stop: int) -> list[str]:
        ids = []
        for i in range(start, stop):
            ids += [x["metadata"]["name"] for x in acquire(
                http, vcpus=0, memory=1, networks=0, owner=f"bulk-{i}",
                labels={"job": f"job-{i}"}, **{"required-pool": "excluded"})]
        return ids

    ids = take(0, 10)
    ten = scrape(http)
    ids += take(10, 200)
    many = scrape(http)
    assert many.value("leases_in_use", pool="excluded") == 201  # d and the 200
    assert many.value("leases_counts", networkType="", phase="Fulfilled") == 201  # e too
    assert many.value("lease_age_seconds_count", pool="excluded", networkType="",
                      phase="Fulfilled") == 200
    upstream = {*UPSTREAM, *OURS, "lease_age_seconds_count", "lease_age_seconds_sum"}

    def ours(s: Scrape) -> set[tuple]:
        return {k for k in s.samples if k[0] in upstream}

    assert {(n, labels) for n, labels in ours(many)} == ours(ten)
    assert len(many.samples) == len(ten.samples)  # the whole scrape, /metrics' own included
    names = set(ids) | {f"bulk-{i}" for i in range(200)} | {f"job-{i}" for i in range(200)}
    for (_, labels) in many.samples:
        assert not {v for _, v in labels} & names
