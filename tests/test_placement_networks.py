"""Networks as the inventory has them: one network per (vCenter, pod, port group), listed by
several pools. The placement core against independent oracles (written here, not the
functions under test): no network is handed out twice, a lease holds distinct VLANs, and a
request is refused only when no assignment of pools and networks exists."""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from workers.adapters.pools_file import load_pools
from workers.core.errors import NoCapacity
from workers.core.models import Network, Pool, parse_request
from workers.core.placement import Fleet, FreeNets, Usage, place, place_batch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
UPSTREAM = EXAMPLES / "pools-upstream.yaml"
PROPS = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------------------------
# oracles


def key_of(vcenter: str, net: Network) -> str:
    """The documented key grammar: vCenter|port group[|pod[|slice]], trailing empties out."""
    parts = [vcenter, net.port_group, net.pod, getattr(net, "slice", "")]
    while parts[-1] == "":
        parts.pop()
    return "|".join(parts)


def clash(a: str, b: str) -> bool:
    """Two keys name overlapping networks: same vCenter and port group, pods equal or one of
    them unset (a key written before pods), and address ranges that meet (none: the whole)."""
    pa, pb = (a.split("|") + ["", ""])[:4], (b.split("|") + ["", ""])[:4]
    if pa[:2] != pb[:2] or (pa[2] and pb[2] and pa[2] != pb[2]):
        return False
    if not pa[3] or not pb[3]:
        return True
    (a1, a2), (b1, b2) = ([ipaddress.ip_address(x) for x in p[3].split("-")] for p in (pa, pb))
    return a1 <= b2 and b1 <= a2


def free(pool: Pool, net_type: str, used: set[str]) -> list[Network]:
    return [n for n in pool.networks if n.type == net_type
            and not any(clash(key_of(pool.vcenter, n), u) for u in used)]


def vlan_of(pool: Pool, n: Network):
    return ("vlan", n.pod, n.vlan) if n.vlan is not None else ("key", key_of(pool.vcenter, n))


def assignable(pools: list[Pool], k: int, net_type: str, used: set[str]) -> bool:
    """Some choice of k free networks per pool: no network twice, distinct VLANs per pool."""
    def go(i: int, taken: frozenset[str]) -> bool:
        if i == len(pools):
            return True
        opts = free(pools[i], net_type, used)
        for combo in itertools.combinations(opts, k):
            keys = {key_of(pools[i].vcenter, n) for n in combo}
            if keys & taken or len({vlan_of(pools[i], n) for n in combo}) < k:
                continue
            if go(i + 1, taken | keys):
                return True
        return False
    return go(0, frozenset())


def fits_sizes(req, pool: Pool, fleet: Fleet) -> bool:
    u = fleet.used(pool.name)
    return (u.vcpus + req.vcpus <= pool.vcpus and u.memory + req.memory <= pool.memory
            and u.storage + req.storage <= pool.storage)


def solvable(req, fleet: Fleet) -> bool:
    """P distinct pools (within the vCenter cap), or N pools on N distinct vCenters, that
    fit the sizes and can all have their networks."""
    fitting = [p for p in fleet.pools.values() if fits_sizes(req, p, fleet)]
    for combo in itertools.combinations(fitting, req.pool_count):
        vcs = {p.vcenter for p in combo}
        if req.pools and req.vcenters and len(vcs) > req.vcenters:
            continue
        if not req.pools and len(vcs) < len(combo):
            continue
        if assignable(list(combo), req.networks, req.network_type, set(fleet.used_nets)):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# strategies


@st.composite
def shared_fleets(draw) -> Fleet:
    """Pools of a few vCenters (and pods) whose networks come from their vCenter's and pod's
    set of port groups: pools of one vCenter and pod list overlapping subsets of it."""
    pools: dict[str, Pool] = {}
    for v in range(draw(st.integers(1, 3))):
        pods = draw(st.sampled_from([[""], ["pa"], ["pa", "pb"]]))
        for pod in pods:
            catalogue = [Network(f"pg{j}", vlan=draw(st.sampled_from([None, 10, 11, 12, 13])),
                                 pod=pod) for j in range(draw(st.integers(1, 4)))]
            for i in range(draw(st.integers(1, 3))):
                name = f"p{v}{pod}{i}"
                nets = draw(st.lists(st.sampled_from(catalogue), unique=True, max_size=4))
                pools[name] = Pool(name, f"vc{v}", "dc", f"c{i}", "ds", vcpus=10, memory=10,
                                   storage=10, networks=tuple(nets), pod=pod)
    fleet = Fleet(pools)
    keys = sorted({p.net_key(n) for p in pools.values() for n in p.networks})
    for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=3)) if keys else []:
        fleet.used_nets.add(key)
    return fleet


@st.composite
def multi_requests(draw, fleet: Fleet):
    n_vc = len(fleet.vcenters())
    raw = {"vcpus": draw(st.integers(0, 6)), "memory": draw(st.integers(0, 6)),
           "networks": draw(st.integers(1, 2))}
    if draw(st.booleans()):
        raw["pools"] = draw(st.integers(1, min(3, len(fleet.pools))))
        raw["vcenters"] = draw(st.integers(0, 4))  # a cap; above pools it caps nothing
    else:
        raw["vcenters"] = draw(st.integers(1, n_vc))
    return parse_request(raw)


# ---------------------------------------------------------------------------------------------
# properties


@PROPS
@given(st.data())
def test_a_shared_network_is_handed_out_once_and_refusals_are_real(data):
    """Requests placed one after another on pools that share networks: every grant is a valid
    assignment (each network once across all leases, distinct VLANs in a lease, k each), and
    a refusal happens only when no assignment of pools and networks exists."""
    fleet = data.draw(shared_fleets())
    held = {u for u in fleet.used_nets}
    for _ in range(data.draw(st.integers(1, 6))):
        req = data.draw(multi_requests(fleet))
        try:
            placements = place(req, fleet)
        except NoCapacity:
            assert not solvable(req, fleet)
            event("refused")
            continue
        assert solvable(req, fleet)
        assert len({p.pool.name for p in placements}) == req.pool_count
        for p in placements:
            assert len(p.networks) == req.networks
            assert len({vlan_of(p.pool, n) for n in p.networks}) == req.networks
            for n in p.networks:
                key = key_of(p.pool.vcenter, n)
                assert n in p.pool.networks
                assert not any(clash(key, h) for h in held), (key, held)
                held.add(key)
        fleet.apply(req, placements)
        assert set(fleet.used_nets) == held
        event(f"granted {req.pool_count} pool(s)")


@PROPS
@given(shared_fleets(), st.data())
def test_the_free_network_aggregate_agrees_with_a_scan_through_takes_and_gives(fleet, data):
    """FreeNets (what the worker keeps) against the oracle's scan, with shared networks and
    keys of no pod (written before pods were configured) in use."""
    used = set(fleet.used_nets)
    legacy = data.draw(st.lists(st.sampled_from(
        sorted({f"{p.vcenter}|{n.port_group}" for p in fleet.pools.values()
                for n in p.networks}) or ["vc0|none"]), max_size=2))
    used |= set(legacy)
    agg = FreeNets(fleet.pools, used)
    for step in range(data.draw(st.integers(0, 6))):
        keys = sorted({p.net_key(n) for p in fleet.pools.values() for n in p.networks} | used
                      | {"vc0|none"})
        key = data.draw(st.sampled_from(keys))
        if key in used:
            used.discard(key)
            agg.give(key)
        else:
            used.add(key)
            agg.take(key)
        for pool in fleet.pools.values():
            want = free(pool, "single-tenant", used)
            assert agg.first(pool, "single-tenant") == want, (step, pool.name, used)
            assert agg.count(pool, "single-tenant") == len(want)
            scan = Fleet(fleet.pools, used_nets=set(used))
            assert scan.free_networks(pool, "single-tenant") == want


# ---------------------------------------------------------------------------------------------
# the upstream-shaped example


def upstream_fleet() -> Fleet:
    return Fleet({p.name: p for p in load_pools(str(UPSTREAM))})


def test_the_upstream_example_has_pods_vcenters_and_shared_port_groups():
    fleet = upstream_fleet()
    pools = fleet.pools
    assert len({p.pod for p in pools.values()}) >= 2 and len(fleet.vcenters()) >= 3
    # v1-c1 and v1-c2 list the same port groups of vcenter-1: one network each, one key
    assert pools["v1-c1"].networks == pools["v1-c2"].networks
    assert {pools["v1-c1"].net_key(n) for n in pools["v1-c1"].networks} == {
        pools["v1-c2"].net_key(n) for n in pools["v1-c2"].networks}
    # the bare listings of v3-c2 carry the details written in v3-c1
    assert pools["v3-c2"].networks == pools["v3-c1"].networks
    assert pools["v3-c2"].networks[0].cidr == "10.22.0.0/25"
    # the same VLAN on another vCenter of the pod is another network (its own key)
    assert pools["v2-c1"].net_key(pools["v2-c1"].networks[0]) != \
        pools["v1-c1"].net_key(pools["v1-c1"].networks[0])


def test_two_pools_of_one_vcenter_never_get_the_same_network():
    fleet = upstream_fleet()
    req = parse_request({"vcpus": 4, "memory": 16, "pools": 2, "vcenters": 1})
    got: list[str] = []
    while True:
        try:
            placements = place(req, fleet)
        except NoCapacity as exc:
            refusal = exc
            break
        keys = [p.pool.net_key(n) for p in placements for n in p.networks]
        assert len(set(keys)) == len(keys) and not set(keys) & set(got)
        assert len({p.pool.vcenter for p in placements}) == 1
        got += keys
        fleet.apply(req, placements)
    # vcenter-1 (4 networks, 2 pools) gives 2 such leases, vcenter-3 (3 networks) 1
    assert len(got) == 2 * 2 + 2 * 1
    assert "insufficient networks" in refusal.reasons["v1-c1"]
    # vcenter-3's last network is listed by both its pools: only one of them could have it
    assert "taken by the request's other pools" in refusal.reasons["v3-c2"]
    assert "v3-c1" not in refusal.reasons and "v2-c1" not in refusal.reasons


def test_a_pool_whose_networks_its_sibling_took_makes_way_for_another():
    shared = Network("pg-x", vlan=5, pod="p")
    a = Pool("a", "vc1", "dc", "c", "ds", 10, 10, 10, networks=(shared,), pod="p")
    b = Pool("b", "vc1", "dc", "c", "ds", 10, 10, 10, networks=(shared,), pod="p")
    c = Pool("c", "vc1", "dc", "c", "ds", 10, 10, 10,
             networks=(Network("pg-y", vlan=6, pod="p"),), pod="p")
    fleet = Fleet({"a": a, "b": b, "c": c}, {"c": Usage(5, 5, 5, 1)})  # c ranks last
    req = parse_request({"vcpus": 1, "memory": 1, "pools": 2, "vcenters": 1})
    got = place(req, fleet)
    assert sorted(p.pool.name for p in got) == ["a", "c"]
    assert sorted(n.port_group for p in got for n in p.networks) == ["pg-x", "pg-y"]
    without_c = Fleet({"a": a, "b": b})
    with pytest.raises(NoCapacity) as info:
        place(req, without_c)
    assert "taken by the request's other pools" in info.value.reasons["b"]


def test_a_batch_shares_the_networks_between_its_requests():
    fleet = upstream_fleet()
    one = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v1-c1", "networks": 2})
    two = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v1-c2", "networks": 2})
    plan = place_batch([one, two], fleet)
    keys = [p.pool.net_key(n) for placements in plan for p in placements for n in p.networks]
    assert len(set(keys)) == 4
    with pytest.raises(NoCapacity):  # the four networks of vcenter-1 are all asked for
        place_batch([one, two, one], fleet)


def test_a_key_of_no_pod_blocks_the_network_once_its_pool_gets_a_pod():
    """A lease granted before the pools file gave pods holds "vc|pg": the same port group,
    now in a pod, stays taken until that lease ends."""
    net = Network("pg", vlan=1, pod="pod-a")
    pool = Pool("a", "vc", "dc", "c", "ds", 10, 10, 10, networks=(net,), pod="pod-a")
    req = parse_request({"vcpus": 1, "memory": 1})
    for fleet in (Fleet({"a": pool}, used_nets={"vc|pg"}),
                  Fleet({"a": pool}, used_nets={"vc|pg"}, free=FreeNets({"a": pool}, {"vc|pg"}))):
        with pytest.raises(NoCapacity):
            place(req, fleet)
    assert Fleet({"a": pool}, used_nets={"vc|pg|pod-b"}).free_networks(pool, net.type) == [net]


def test_lease_networks_carry_their_pod_and_keys_follow_it():
    from workers.core.lease import lease_port_groups
    from workers.core.models import make_lease

    fleet = upstream_fleet()
    pool = fleet.pools["v1-c2"]
    lease = make_lease("l1", parse_request({"vcpus": 1, "memory": 1}), pool,
                       [pool.networks[1]], 0)
    entry = lease["status"]["networks"][0]
    assert entry["pod"] == "dal10.pod01" and entry["port-group"] == "ci-vlan-1201"
    assert lease_port_groups(lease) == ["vcenter-1.example.com|ci-vlan-1201|dal10.pod01"]
    assert yaml.safe_load(UPSTREAM.read_text())["pools"][0]["pod"] == "dal10.pod01"
