"""The metrics named as upstream's, built from a ledger read (api_shim/upstream_metrics.py, pure):
for any leases and waiters, every label value comes from the configuration, the phases or the
namespace (never from a lease), and the counts add up; the namespace setting refuses what is
not a Kubernetes namespace name, naming the variable."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api_shim.settings import ApiEnv
from api_shim.upstream_metrics import LeaseFactsCache, families
from tests.support.strategies import ints, subset
from workers.adapters.ledger.reports import LedgerDetail
from workers.core.fleet import Usage
from workers.core.lease import port_group_key, rfc3339
from workers.core.models import Network, Pool

NOW = 1_800_000_000.0
POOLS = {
    "p1": Pool("p1", "vc1", "dc", "c", "ds", vcpus=10, memory=100, storage=100,
               vcpu_overcommit=2.0,
               networks=(Network("st-1", vlan=1, cidr="10.0.1.0/24"),
                         Network("mt-2", vlan=2, cidr="10.0.2.0/24", type="multi-tenant",
                                 slices=3))),
    "p2": Pool("p2", "vc2", "dc", "c", "ds", vcpus=8, memory=50, storage=50, no_schedule=True,
               networks=(Network("st-1", vlan=1, cidr="10.0.1.0/24"),
                         Network("dc-3", vlan=3, cidr="10.0.3.0/24", type="disconnected"))),
}
TYPES = {"single-tenant", "multi-tenant", "disconnected"}
PIECES = {name: [(n, port_group_key(p.vcenter, n.port_group, n.pod, n.slice))
                 for n in (piece for net in p.networks for piece in net.pieces)]
          for name, p in POOLS.items()}


# strategies built once rather than on every draw (see tests/support/strategies.py)
LEASE_POOLS = st.sampled_from([*POOLS, "removed"])
AGES = st.integers(0, 10**7)
OWNERS = st.sampled_from(["o1", "o2", "\n\"x"])
REQUEST_IDS = st.sampled_from(["", "r1", "r2", "r3"])
WAITERS = st.lists(st.fixed_dictionaries({
    "request": st.fixed_dictionaries({
        "networks": st.integers(0, 2),
        "network-type": st.sampled_from(sorted(TYPES))}),
    "since": st.floats(NOW - 10**6, NOW)}), max_size=10)


@st.composite
def ledgers(draw):
    leases, usage, holders = [], {}, {}
    for i in range(draw(ints(0, 40))):
        pool = draw(LEASE_POOLS)
        pieces = PIECES.get(pool, [])
        held = subset(draw, pieces, max_size=1) if pieces else []
        leases.append({
            "metadata": {"name": f"lease-{i}", "creationTimestamp": rfc3339(
                NOW - draw(AGES))},
            "spec": {"vcpus": 1, "memory": 1, "storage": 1},
            "status": {"pool": pool, "owner": draw(OWNERS),
                       "request-id": draw(REQUEST_IDS),
                       "networks": [{**n.to_dict(), "type": n.type} for n, _ in held]}})
        u = usage.get(pool, Usage())
        usage[pool] = u.plus(1, 1, 1)
        for _, key in held:
            holders[key] = holders.get(key, 0) + 1
    waiters = draw(WAITERS)
    return leases, LedgerDetail({p: usage.get(p, Usage()) for p in POOLS}, holders,
                                {x["metadata"]["name"]: json.dumps(x).encode() for x in leases},
                                waiters)


@settings(max_examples=100, deadline=None)
@given(ledgers(), st.dictionaries(st.sampled_from(
    ["fulfilled:single-tenant", "pending:multi-tenant", "delayed:disconnected", "fulfilled:",
     "refused:NoCapacity", "placements"]), st.integers(0, 10**6)))
def test_labels_come_from_the_configuration_and_counts_add_up(ledger, stats):
    leases, detail = ledger
    out = {m.name: m for m in families(POOLS, detail, stats, NOW, "ns")}
    networks = {key.split("|", 1)[1] for pieces in PIECES.values() for _, key in pieces}
    allowed = {"namespace": {"ns"}, "pool": {*POOLS, "removed", ""},
               "networkType": TYPES | {""}, "phase": {"Pending", "Fulfilled"},
               "network": networks, "quantile": {"0.5", "0.9", "1"}}
    for metric in out.values():
        for s in metric.samples:
            for label, value in s.labels.items():
                assert value in allowed[label], (s.name, label, value)

    def total(name: str, **labels: str) -> float:
        return sum(s.value for m in out.values() for s in m.samples if s.name == name
                   and all(s.labels[k] == v for k, v in labels.items()))

    requests = {(x["status"]["owner"], x["status"]["request-id"] or x["metadata"]["name"])
                for x in leases}
    assert total("leases_counts", phase="Fulfilled") == len(requests)
    assert total("leases_counts", phase="Pending") == len(detail.waiters)
    assert total("lease_age_seconds_count") == len(leases) + len(detail.waiters)
    for name, pool in POOLS.items():
        held = {key for _, key in PIECES[name] if key in detail.holders}
        assert total("pool_networks_available", pool=name) == len(PIECES[name]) - len(held)
        assert total("pool_cpus_available", pool=name) == \
            pool.vcpu_capacity - detail.usage[name].vcpus
        assert total("leases_in_use", pool=name) == detail.usage[name].leases
        assert total("network_lease_count", pool=name) == sum(
            detail.holders.get(key, 0) for _, key in PIECES[name])
    assert total("lease_transitions_total", networkType="single-tenant", phase="Fulfilled") == \
        stats.get("fulfilled:single-tenant", 0)
    assert total("lease_delays_total", networkType="disconnected") == \
        stats.get("delayed:disconnected", 0)


@pytest.mark.parametrize("value", ["Bad", "a" * 64, "a_b", "-a", "a-", "a b", "a\nb",
                                   "ns\x00", "\ud800", "é"])
def test_the_namespace_setting_refuses_what_is_not_a_namespace_name(value):
    with pytest.raises(SystemExit) as exc:
        ApiEnv.from_env({"VCM_API_METRICS_NAMESPACE": value})
    assert "VCM_API_METRICS_NAMESPACE" in str(exc.value)


@pytest.mark.parametrize("value", ["", "ci", "vsphere-infra-helpers", "a" * 63, "0-9"])
def test_the_namespace_setting_takes_namespace_names(value):
    assert ApiEnv.from_env({"VCM_API_METRICS_NAMESPACE": value}).api_metrics_namespace == value


def test_the_lease_cache_reads_new_records_and_forgets_gone_ones():
    def record(name: str, pool: str) -> bytes:
        return json.dumps({"metadata": {"name": name, "creationTimestamp": rfc3339(NOW - 60)},
                           "status": {"pool": pool, "owner": "o", "request-id": name}}).encode()

    def in_use(leases: dict, cache: LeaseFactsCache) -> dict[str, float]:
        detail = LedgerDetail(leases=leases)
        out = {m.name: m for m in families(POOLS, detail, {}, NOW, "ns", cache)}
        return {s.labels["pool"]: s.value for s in out["lease_age_seconds"].samples
                if s.name == "lease_age_seconds_count"}

    cache = LeaseFactsCache()
    assert in_use({"a": record("a", "p1"), "b": record("b", "p1")}, cache) == {"p1": 2}
    # known ids are not read again: their facts come from the cache
    assert in_use({"a": None, "b": None}, cache) == {"p1": 2}
    assert in_use({"a": None, "c": record("c", "p2")}, cache) == {"p1": 1, "p2": 1}
    assert list(cache.known) == ["a", "c"]  # only the leases of the last read
    # a record that cannot be read is not kept: the next scrape reads it again
    assert in_use({"c": None, "d": b"not json"}, cache) == {"p2": 1}
    assert list(cache.known) == ["c"]
    assert in_use({"c": None, "d": record("d", "p1")}, cache) == {"p1": 1, "p2": 1}
    # an id the cache does not know, not read (a concurrent scrape forgot it): left out
    assert in_use({"c": None, "x": None}, cache) == {"p2": 1}
