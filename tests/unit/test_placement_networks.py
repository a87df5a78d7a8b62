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

from tests.support.strategies import index_lists, index_of, index_subsets, ints, pick, subset
from workers.adapters.pools_file import load_pools
from workers.core.errors import NoCapacity
from workers.core.fleet import FreeNets
from workers.core.models import Network, Pool
from workers.core.parsing import parse_request
from workers.core.placement import Fleet, place, place_batch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
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


def open_to(pool: Pool, net_type: str, holders: dict[str, str], install: str) -> list[Network]:
    """The pool's networks of the type an install may take: none clashing with a network
    another install holds (those its own leases hold it may share)."""
    return [n for n in pool.networks if n.type == net_type
            and not any(clash(key_of(pool.vcenter, n), k) and who != install
                        for k, who in holders.items())]


def sharing(req, step: int) -> str:
    """Who a request's leases share their networks with: the owner's install (its
    boskos-lease-id), when it has one and asks for vCPUs or memory; otherwise nobody but
    the request's own leases (a network-only request: its networks are its own, free when
    it asks, and never a common network for the install's later leases)."""
    if req.group and (req.vcpus or req.memory):
        return f"{req.owner}/{req.group}"
    return f"request {step}"


def fits_sizes(req, pool: Pool, fleet: Fleet) -> bool:
    u = fleet.used(pool.name)
    return (u.vcpus + req.vcpus <= pool.vcpus and u.memory + req.memory <= pool.memory
            and u.storage + req.storage <= pool.storage)


def solvable(req, fleet: Fleet, holders: dict[str, str], install: str) -> bool:
    """P distinct pools (within the vCenter cap), or N pools on N distinct vCenters, that fit
    the sizes and each offer the install `networks` open networks on distinct VLANs (the
    request's leases may share networks: they are one install)."""
    def enough(pool: Pool) -> bool:
        opts = open_to(pool, req.network_type, holders, install)
        return len({vlan_of(pool, n) for n in opts}) >= req.networks

    fitting = [p for p in fleet.pools.values() if fits_sizes(req, p, fleet) and enough(p)]
    for combo in itertools.combinations(fitting, req.pool_count):
        vcs = {p.vcenter for p in combo}
        if req.pools and req.vcenters and len(vcs) > req.vcenters:
            continue
        if not req.pools and len(vcs) < len(combo):
            continue
        return True
    return False


# ---------------------------------------------------------------------------------------------
# strategies


# strategies built once rather than on every draw (see tests/support/strategies.py)
PODS = st.sampled_from([[""], ["pa"], ["pa", "pb"]])
VLANS = st.sampled_from([None, 10, 11, 12, 13])
GROUPS = st.sampled_from([None, None, "g1", "g2"])
PREFERRED = st.lists(st.sampled_from([1, 2, 3, 4, 5]), max_size=3)


@st.composite
def shared_fleets(draw) -> Fleet:
    """Pools of a few vCenters (and pods) whose networks come from their vCenter's and pod's
    set of port groups: pools of one vCenter and pod list overlapping subsets of it."""
    pools: dict[str, Pool] = {}
    for v in range(draw(ints(1, 3))):
        pods = draw(PODS)
        for pod in pods:
            catalogue = [Network(f"pg{j}", vlan=draw(VLANS), pod=pod)
                         for j in range(draw(ints(1, 4)))]
            for i in range(draw(ints(1, 3))):
                name = f"p{v}{pod}{i}"
                nets = subset(draw, catalogue, max_size=4)
                pools[name] = Pool(name, f"vc{v}", "dc", f"c{i}", "ds", vcpus=10, memory=10,
                                   storage=10, networks=tuple(nets), pod=pod)
    fleet = Fleet(pools)
    keys = sorted({p.net_key(n) for p in pools.values() for n in p.networks})
    for key in subset(draw, keys, max_size=3) if keys else []:
        fleet.used_nets.add(key)
    return fleet


@st.composite
def multi_requests(draw, fleet: Fleet):
    n_vc = len(fleet.vcenters())
    raw = {"vcpus": draw(ints(0, 6)), "memory": draw(ints(0, 6)),
           "networks": draw(ints(1, 2))}
    if draw(ints(0, 3)) == 0:  # network-only (the extra NICs, the bastion)
        raw["vcpus"] = raw["memory"] = 0
    if draw(st.booleans()):
        raw["pools"] = draw(ints(1, min(3, len(fleet.pools))))
        raw["vcenters"] = draw(ints(0, 4))  # a cap; above pools it caps nothing
    else:
        raw["vcenters"] = draw(ints(1, n_vc))
    group = draw(GROUPS)
    if group:
        raw["labels"] = {"boskos-lease-id": group}
    return parse_request(raw)


# ---------------------------------------------------------------------------------------------
# properties


@PROPS
@given(st.data())
def test_a_network_is_held_by_one_install_at_a_time(data):
    """Requests placed and released one after another on pools that share networks, some of
    them of one install (a boskos-lease-id): a network is only ever held by one install (its
    leases may share it), a lease's networks are on distinct VLANs, and a refusal happens only
    when no choice of pools could have its networks."""
    fleet = data.draw(shared_fleets())
    holders: dict[str, str] = {k: "someone" for k in fleet.used_nets}  # key -> install
    held_by: dict[str, list[int]] = {k: [-1] for k in fleet.used_nets}  # key -> its leases
    live: list[tuple[int, object, list]] = []
    for step in range(data.draw(st.integers(1, 8))):
        if live and data.draw(st.integers(0, 3)) == 0:  # release one request's leases
            no, req, placements = live.pop(data.draw(st.integers(0, len(live) - 1)))
            for p in placements:
                keys = [p.pool.net_key(n) for n in p.networks]
                freed = []
                for key in keys:
                    held_by[key].remove(no)  # one lease of request `no`
                    if not held_by[key]:
                        del held_by[key], holders[key]
                        freed.append(key)
                fleet.remove(p.pool.name, req.vcpus, req.memory, req.storage, freed)
                # by install, (owner, boskos-lease-id), as production keys it (not the group)
                fleet.holdings.remove(req.install, keys, [n.vlan_id for n in p.networks
                                                          if n.vlan_id is not None])
            continue
        req = data.draw(multi_requests(fleet))
        install = sharing(req, step)
        try:
            placements = place(req, fleet)
        except NoCapacity:
            assert not solvable(req, fleet, holders, install)
            event("refused")
            continue
        assert solvable(req, fleet, holders, install)
        assert len({p.pool.name for p in placements}) == req.pool_count
        for p in placements:
            assert len(p.networks) == req.networks
            assert len({vlan_of(p.pool, n) for n in p.networks}) == req.networks
            for n in p.networks:
                key = key_of(p.pool.vcenter, n)
                assert n in p.pool.networks
                assert not any(clash(key, k) and who != install for k, who in holders.items())
        for p in placements:
            for n in p.networks:
                key = key_of(p.pool.vcenter, n)
                holders[key] = install
                held_by.setdefault(key, []).append(step)
        fleet.apply(req, placements)
        live.append((step, req, placements))
        assert set(fleet.used_nets) == set(holders)
        shared = len({key_of(p.pool.vcenter, n) for p in placements for n in p.networks})
        event("shared a network" if shared < req.pool_count * req.networks else "granted")


def test_a_released_install_no_longer_holds_its_network():
    """The property's falsifying example (its model released holdings by the group, not the
    install): g1 takes vc0|pg0 and releases it, another request takes it, g1 asks again and
    must not share it."""
    pools = {"p00": Pool("p00", "vc0", "dc", "c0", "ds", 10, 10, 10,
                         networks=(Network("pg0"),)),
             "p10": Pool("p10", "vc1", "dc", "c0", "ds", 10, 10, 10)}
    fleet = Fleet(pools)
    g1 = parse_request({"vcpus": 1, "memory": 1, "labels": {"boskos-lease-id": "g1"},
                        "required-pool": "p00"})
    (p,) = place(g1, fleet)
    fleet.apply(g1, [p])
    assert fleet.holdings.of(g1.install) is not None
    keys = [p.pool.net_key(n) for n in p.networks]
    fleet.remove(p.pool.name, 1, 1, 0, keys)
    fleet.holdings.remove(g1.install, keys, [n.vlan_id for n in p.networks
                                             if n.vlan_id is not None])
    assert fleet.holdings.of(g1.install) is None
    other = parse_request({"vcpus": 0, "memory": 0})
    (q,) = place(other, fleet)
    assert q.pool.net_key(q.networks[0]) == keys[0]
    fleet.apply(other, [q])
    with pytest.raises(NoCapacity):  # vc0|pg0 is the other install's now
        place(g1, fleet)


# ---------------------------------------------------------------------------------------------
# network-only leases: never the install's common network


@st.composite
def one_install_requests(draw, fleet: Fleet):
    """A request of the install `job` (its boskos-lease-id) or, now and then, of nobody's:
    compute leases (vCPUs or memory) and network-only ones (neither), mixed."""
    n_vc = len(fleet.vcenters())
    compute = draw(st.booleans())
    raw = {"vcpus": draw(ints(1, 4)) if compute else 0,
           "memory": draw(ints(0, 4)) if compute else 0,
           "networks": draw(ints(1, 2))}
    if draw(st.booleans()):
        raw["pools"] = draw(ints(1, min(3, len(fleet.pools))))
        raw["vcenters"] = draw(ints(0, 3))
    else:
        raw["vcenters"] = draw(ints(1, n_vc))
    if draw(ints(0, 4)):
        raw["labels"] = {"boskos-lease-id": "job"}
    return parse_request(raw)


@PROPS
@given(st.data())
def test_network_only_leases_of_an_install_share_no_port_group(data):
    """An install's requests, compute and network-only mixed, placed and released one after
    another on pools that share port groups: a network-only lease's port groups are held by
    no lease of any other request (not the install's compute leases, not its other
    network-only leases), so each extra NIC and the bastion is on a network of its own; the
    install's compute leases still share theirs."""
    fleet = data.draw(shared_fleets())
    live: list[tuple[int, object, list]] = []  # (step, request, placements)

    def keys_of(placements) -> set[str]:
        return {p.pool.net_key(n) for p in placements for n in p.networks}

    for step in range(data.draw(st.integers(1, 10))):
        if live and data.draw(st.integers(0, 4)) == 0:
            no, req, placements = live.pop(data.draw(st.integers(0, len(live) - 1)))
            for p in placements:
                keys = [p.pool.net_key(n) for n in p.networks]
                still = {k for _, _, other in live for k in keys_of(other)}
                fleet.remove(p.pool.name, req.vcpus, req.memory, req.storage,
                             [k for k in keys if k not in still])
                fleet.holdings.remove(req.install, keys, [n.vlan_id for n in p.networks
                                                          if n.vlan_id is not None])
            continue
        req = data.draw(one_install_requests(fleet))
        try:
            placements = place(req, fleet)
        except NoCapacity:
            event("refused")
            continue
        fleet.apply(req, placements)
        live.append((step, req, placements))
        for no, r, ps in live:
            mine = keys_of(ps)
            for other_no, other, qs in live:
                if other_no == no:
                    continue
                theirs = keys_of(qs)
                if not (r.vcpus or r.memory) or not (other.vcpus or other.memory) \
                        or r.install != other.install or r.install is None:
                    clashing = {(a, b) for a in mine for b in theirs if clash(a, b)}
                    assert not clashing, (no, other_no, clashing)
        if not (req.vcpus or req.memory):
            event("network-only placed")
            if req.group and any(o is not req and o.group == req.group for _, o, _ in live):
                event("network-only beside its install")


def test_the_extra_nics_and_the_bastion_of_an_install_get_port_groups_of_their_own():
    """The CI step with extra NICs and a bastion: the primary leases (three pools of one
    pod) on one VLAN, then two extra-NIC leases and a bastion lease, network-only, with the
    install's boskos-lease-id. They land on vcenter-3, where the install holds nothing yet:
    each takes a free port group, never one another network-only lease of the install holds
    (the install's VLAN 2200 there is no common network for them)."""
    fleet = upstream_fleet()
    label = {"boskos-lease-id": "vsphere-elastic-7"}
    primary = parse_request({"vcpus": 8, "memory": 32, "pools": 3, "vcenters": 2,
                             "labels": label, "owner": "e2e"})
    got = place(primary, fleet)
    fleet.apply(primary, got)
    assert len({n.vlan_id for p in got for n in p.networks}) == 1  # one VLAN for the domains
    taken: list[str] = []
    for i in range(3):  # extra NIC 1, extra NIC 2, the bastion
        net_only = parse_request({"vcpus": 0, "memory": 0, "networks": 1, "owner": "e2e",
                                  "labels": {**label, "extra": str(i)}})
        (p,) = place(net_only, fleet)
        fleet.apply(net_only, [p])
        taken.append(p.pool.net_key(p.networks[0]))
    assert [k.split("|")[1] for k in taken] == ["ci-vlan-2200", "ci-vlan-2201",
                                                "ci-vlan-2202"]
    assert net_only.install is None  # it joins no install's networks
    # and they are no common network for the install's later compute leases either
    later = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v3-c1", "owner": "e2e",
                           "labels": label, "network-type": "multi-tenant"})
    assert place(later, fleet)[0].networks[0].port_group == "ci-vlan-2210"
    with pytest.raises(NoCapacity):  # vcenter-3's three single-tenant networks are theirs
        place(parse_request({"vcpus": 1, "memory": 1, "required-pool": "v3-c1",
                             "owner": "e2e", "labels": label}), fleet)


def test_a_network_only_lease_takes_no_port_group_its_install_holds():
    """The install's compute lease holds vcenter-3's first port group: a network-only
    lease of the install takes the next free one, and with none free it is refused (it
    never shares)."""
    fleet = upstream_fleet()
    label = {"boskos-lease-id": "job-2"}
    compute = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v3-c1",
                             "labels": label})
    (c,) = place(compute, fleet)
    fleet.apply(compute, [c])
    assert c.networks[0].port_group == "ci-vlan-2200"
    net_only = parse_request({"vcpus": 0, "memory": 0, "required-pool": "v3-c2",
                              "labels": label})
    (n,) = place(net_only, fleet)
    assert n.networks[0].port_group == "ci-vlan-2201"
    fleet.apply(net_only, [n])
    (n2,) = place(net_only, fleet)
    assert n2.networks[0].port_group == "ci-vlan-2202"
    fleet.apply(net_only, [n2])
    with pytest.raises(NoCapacity) as info:
        place(net_only, fleet)
    assert "insufficient networks" in info.value.reasons["v3-c2"]
    # the install's compute leases still share their own
    again = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v3-c2",
                           "labels": label})
    assert place(again, fleet)[0].networks == c.networks
    # one network-only request over two pools of one vCenter: its leases still share a VLAN
    # (one request), on a port group nobody holds
    dal12 = Fleet({k: p for k, p in upstream_fleet().pools.items() if p.pod == "dal12.pod03"})
    dal12.apply(compute, [c])
    pair = parse_request({"vcpus": 0, "memory": 0, "pools": 2, "labels": label})
    got = place(pair, dal12)
    assert {p.pool.vcenter for p in got} == {"vcenter-3.example.com"}
    assert [n.port_group for p in got for n in p.networks] == ["ci-vlan-2201"] * 2


@PROPS
@given(shared_fleets(), st.data())
def test_the_free_network_aggregate_agrees_with_a_scan_through_takes_and_gives(fleet, data):
    """FreeNets (what the worker keeps) against the oracle's scan, with shared networks and
    keys of no pod (written before pods were configured) in use."""
    used = set(fleet.used_nets)
    pgs = sorted({f"{p.vcenter}|{n.port_group}" for p in fleet.pools.values()
                  for n in p.networks}) or ["vc0|none"]
    legacy = [pgs[i] for i in data.draw(index_lists(len(pgs), 0, 2))]
    used |= set(legacy)
    agg = FreeNets(fleet.pools, used)
    for step in range(data.draw(st.integers(0, 6))):
        keys = sorted({p.net_key(n) for p in fleet.pools.values() for n in p.networks} | used
                      | {"vc0|none"})
        key = keys[data.draw(index_of(len(keys)))]
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


def test_the_pools_of_one_request_share_a_port_group_others_cannot_have():
    """Two failure domains of one install on vcenter-1 sit on one port group (one subnet);
    it is theirs until both leases end, whoever else asks."""
    fleet = upstream_fleet()
    req = parse_request({"vcpus": 4, "memory": 16, "pools": 2, "vcenters": 1})
    got = place(req, fleet)
    assert {p.pool.vcenter for p in got} == {"vcenter-1.example.com"}
    assert [n.port_group for p in got for n in p.networks] == ["ci-vlan-1200"] * 2
    fleet.apply(req, got)
    other = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v1-c2"})
    (p,) = place(other, fleet)
    assert p.networks[0].port_group == "ci-vlan-1201"
    # one of the two leases ends: the other still holds the port group
    fleet.remove("v1-c1", 4, 16, 0, [])
    assert not fleet.is_free(got[0].pool.net_key(got[0].networks[0]))


def test_requests_of_one_batch_share_networks_only_within_an_install():
    fleet = upstream_fleet()
    one = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v1-c1", "networks": 2})
    two = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v1-c2", "networks": 2})
    plan = place_batch([one, two], fleet)
    keys = [p.pool.net_key(n) for placements in plan for p in placements for n in p.networks]
    assert len(set(keys)) == 4  # two installs: four networks
    with pytest.raises(NoCapacity):  # vcenter-1 has four
        place_batch([one, two, one], fleet)
    label = {"labels": {"boskos-lease-id": "job-1"}}
    grouped = [parse_request({"vcpus": 1, "memory": 1, "required-pool": pool, "networks": 2,
                              **label}) for pool in ("v1-c1", "v1-c2", "v1-c1")]
    plan = place_batch(grouped, fleet)
    nets = [[n.port_group for p in placements for n in p.networks] for placements in plan]
    assert nets == [["ci-vlan-1200", "ci-vlan-1201"]] * 3  # one install: the same two


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
    from workers.core.grants import make_lease
    from workers.core.lease import lease_port_groups

    fleet = upstream_fleet()
    pool = fleet.pools["v1-c2"]
    lease = make_lease("l1", parse_request({"vcpus": 1, "memory": 1}), pool,
                       [pool.networks[1]], 0)
    entry = lease["status"]["networks"][0]
    assert entry["pod"] == "dal10.pod01" and entry["port-group"] == "ci-vlan-1201"
    assert lease_port_groups(lease) == ["vcenter-1.example.com|ci-vlan-1201|dal10.pod01"]
    assert yaml.safe_load(UPSTREAM.read_text())["pools"][0]["pod"] == "dal10.pod01"


# ---------------------------------------------------------------------------------------------
# the common network: one VLAN per install where there is one


def _opt(key: str, vlan, held: bool = False):
    from workers.core.networks import Option

    return Option(key, vlan, held)


@st.composite
def network_choices(draw):
    """The networks open to each lease of a request (each lease's in configuration order),
    some held by the install already, and the VLANs it prefers."""
    universe = [(f"n{i}", pick(draw, [1, 2, 3, 4, ("key", f"n{i}")]))
                for i in range(draw(ints(1, 8)))]
    leases = []
    for _ in range(draw(ints(1, 4))):
        picked = draw(index_subsets(len(universe), 0, len(universe)))
        leases.append([_opt(universe[j][0], universe[j][1], draw(st.booleans()) and j % 3 == 0)
                       for j in sorted(picked)])
    prefer = draw(PREFERRED)
    return leases, draw(ints(1, 3)), prefer


def _spec(options, need, prefer):
    """The documented rule, written out plainly: candidates are the preferred VLANs, then
    the leases' VLANs as they come; per slot, the first candidate every lease still offers
    goes to all, else each lease in turn takes the first it offers (the VLANs taken in this
    slot first); on a VLAN, a held network first, else the first listed."""
    if any(len({o.vlan for o in opts}) < need for opts in options):
        return None
    order = []
    for t in list(prefer) + [o.vlan for opts in options for o in opts]:
        if t not in order:
            order.append(t)
    out = [[] for _ in options]

    def offered(i):
        return {o.vlan for o in options[i]} - {o.vlan for o in out[i]}

    def take(i, t):
        on_t = [o for o in options[i] if o.vlan == t]
        out[i].append(([o for o in on_t if o.held] or on_t)[0])

    for _ in range(need):
        common = [t for t in order if all(t in offered(i) for i in range(len(options)))]
        if common:
            for i in range(len(options)):
                take(i, common[0])
            continue
        this_slot: list = []
        for i in range(len(options)):
            t = next(t for t in this_slot + order if t in offered(i))
            take(i, t)
            if t not in this_slot:
                this_slot.append(t)
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(network_choices())
def test_the_common_vlan_choice_against_an_oracle(case):
    from workers.core.networks import choose_networks

    options, need, prefer = case
    got = choose_networks(options, need, prefer)
    assert got == _spec(options, need, prefer)
    assert choose_networks(options, need, prefer + prefer) == got  # deterministic
    if got is None:
        assert any(len({o.vlan for o in opts}) < need for opts in options)
        return
    for opts, mine in zip(options, got, strict=True):
        assert len(mine) == need and all(o in opts for o in mine)
        assert len({o.vlan for o in mine}) == need  # never two networks of one VLAN
        for o in mine:  # on its VLAN, a network the install holds if it has one
            assert o.held or not any(x.held and x.vlan == o.vlan for x in opts)
    everyone = [t for t in {o.vlan for o in options[0]}
                if all(any(o.vlan == t for o in opts) for opts in options)]
    if everyone:  # a VLAN offered to every lease: their first networks share one
        assert len({mine[0].vlan for mine in got}) == 1
        event("common VLAN")
        liked = [t for t in prefer if t in everyone]
        if liked:  # the first preferred one of those
            assert got[0][0].vlan == liked[0]
            event("preferred VLAN")
    if len(options) == 1:  # alone: the first preferred VLAN it offers, else its first
        first = next((t for t in prefer if any(o.vlan == t for o in options[0])),
                     options[0][0].vlan)
        assert got[0][0].vlan == first


def test_the_pools_of_one_request_get_one_vlan_when_one_is_free_for_all():
    fleet = upstream_fleet()
    dal10 = Fleet({k: p for k, p in fleet.pools.items() if p.pod == "dal10.pod01"})
    req = parse_request({"vcpus": 1, "memory": 1, "pools": 3})
    got = place(req, dal10)
    assert {n.vlan for p in got for n in p.networks} == {1200}  # the first, free everywhere
    # another install holds VLAN 1200 on vcenter-2: the first VLAN free for all is 1201
    busy = Fleet(dal10.pools)
    busy.used_nets.add(dal10.pools["v2-c1"].net_key(dal10.pools["v2-c1"].networks[0]))
    got = place(req, busy)
    assert {n.vlan for p in got for n in p.networks} == {1201}
    # no VLAN free everywhere: each takes the first it can, the earlier pools' first
    for name, left in {"v1-c1": 1202, "v2-c1": 1203}.items():  # the one VLAN left free
        pool = busy.pools[name]
        busy.used_nets.update(pool.net_key(n) for n in pool.networks if n.vlan != left)
    got = place(req, busy)
    vlans = {p.pool.name: p.networks[0].vlan for p in got}
    assert vlans["v1-c1"] == vlans["v1-c2"] == 1202 and vlans["v2-c1"] == 1203


def test_a_later_request_of_an_install_gets_the_vlan_its_leases_hold():
    """The CI step asks for one lease per pool, each with the install's boskos-lease-id:
    the later ones land on the VLAN the first took, where their pool offers it."""
    fleet = upstream_fleet()
    label = {"boskos-lease-id": "install-7"}
    other = fleet.pools["v1-c1"]
    fleet.used_nets.add(other.net_key(other.networks[0]))  # someone else holds 1200 on vc-1
    first = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v1-c1", "labels": label})
    (p1,) = place(first, fleet)
    assert p1.networks[0].vlan == 1201
    fleet.apply(first, [p1])
    # on vcenter-2, VLAN 1200 is free and first in line, but the install holds 1201
    for pool in ("v2-c1", "v1-c2"):
        req = parse_request({"vcpus": 1, "memory": 1, "required-pool": pool,
                             "labels": label})
        (p,) = place(req, fleet)
        assert p.networks[0].vlan == 1201, pool
        fleet.apply(req, [p])
    assert place(parse_request({"vcpus": 1, "memory": 1, "required-pool": "v2-c1"}),
                 fleet)[0].networks[0].vlan == 1200  # another install: the first free
    # vcenter-3 is in another pod: its VLANs are others, so the first free there
    req = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v3-c1", "labels": label})
    assert place(req, fleet)[0].networks[0].vlan == 2200
    # two networks: the held VLAN first, then the first other one
    two = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v2-c1", "networks": 2,
                         "labels": label})
    assert [n.vlan for n in place(two, fleet)[0].networks] == [1201, 1200]


# ---------------------------------------------------------------------------------------------
# slices


def _split(n: int) -> Pool:
    from workers.core.pools import parse_pools

    (pool,) = parse_pools({"pools": [{
        "name": "mt", "vcenter": "vc", "datacenter": "dc", "cluster": "c", "datastore": "ds",
        "vcpus": 10, "memory": 10, "storage": 10,
        "networks": [{"port-group": "pg", "vlan": 5, "cidr": "10.0.0.0/27",
                      "gateway": "10.0.0.1", "type": "multi-tenant", "slices": n}]}]})
    return pool


def test_a_slice_is_leased_on_its_own_and_never_twice():
    pool = _split(4)
    req = parse_request({"vcpus": 0, "memory": 0, "network-type": "multi-tenant"})
    for fleet in (Fleet({"mt": pool}), Fleet({"mt": pool}, free=FreeNets({"mt": pool}, ()))):
        ranges = []
        for _ in range(4):
            (p,) = place(req, fleet)
            ranges.append(p.networks[0].slice)
            fleet.apply(req, [p])
        assert ranges == ["10.0.0.2-10.0.0.9", "10.0.0.10-10.0.0.16", "10.0.0.17-10.0.0.23",
                          "10.0.0.24-10.0.0.30"]
        with pytest.raises(NoCapacity):
            place(req, fleet)
    single = parse_request({"vcpus": 0, "memory": 0})  # single-tenant: never a slice
    with pytest.raises(NoCapacity):
        place(single, Fleet({"mt": pool}))
    two = parse_request({"vcpus": 0, "memory": 0, "network-type": "multi-tenant",
                         "networks": 2})
    with pytest.raises(NoCapacity) as info:  # four slices, but all of one VLAN
        place(two, Fleet({"mt": pool}))
    assert info.value.reasons["mt"] == ("insufficient networks of type multi-tenant (need 2 "
                                        "on distinct VLANs, free 1 VLANs)")


@pytest.mark.parametrize("indexed", [False, True])
def test_split_anew_while_slices_are_leased_no_address_is_handed_out_twice(indexed):
    """The leases keep the slices of the old split (their keys hold the address ranges):
    a slice of the new split is free only where it overlaps none of them, and a lease of the
    whole network (before it was split) blocks every slice."""
    four, two = _split(4), _split(2)
    held = [four.net_key(n) for n, _ in four.keyed_networks("multi-tenant")]
    new = [two.net_key(n) for n, _ in two.keyed_networks("multi-tenant")]
    assert new == ["vc|pg||10.0.0.2-10.0.0.16", "vc|pg||10.0.0.17-10.0.0.30"]

    def free_ranges(used: set[str]) -> list[str]:
        fleet = Fleet({"mt": two}, used_nets=set(used),
                      free=FreeNets({"mt": two}, used) if indexed else None)
        return [n.slice for n in fleet.free_networks(two, "multi-tenant")]

    assert free_ranges({held[1]}) == ["10.0.0.17-10.0.0.30"]
    assert free_ranges({held[1], held[3]}) == []
    assert free_ranges({held[2]}) == ["10.0.0.2-10.0.0.16"]
    assert free_ranges({"vc|pg"}) == []  # the whole network, leased before the split
    assert free_ranges(set()) == ["10.0.0.2-10.0.0.16", "10.0.0.17-10.0.0.30"]


def test_an_install_is_one_owners_group_nobody_joins_by_naming_it():
    fleet = upstream_fleet()
    label = {"boskos-lease-id": "job-9"}
    mine = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v3-c1", "labels": label,
                          "owner": "ci"})
    (p,) = place(mine, fleet)
    fleet.apply(mine, [p])
    theirs = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v3-c2",
                            "labels": label, "owner": "someone-else"})
    (q,) = place(theirs, fleet)
    assert q.networks[0].port_group != p.networks[0].port_group
    again = parse_request({"vcpus": 1, "memory": 1, "required-pool": "v3-c2",
                           "boskos-lease-id": "job-9", "owner": "ci"})  # the field: the same
    assert place(again, fleet)[0].networks == p.networks
