"""Multi-pool requests (P pools over at most V vCenters), taints and tolerations, and
network-only requests: the placement core against independent oracles."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.strategies import ints
from workers.core.errors import InvalidRequest, NoCapacity
from workers.core.fleet import Fleet, Usage
from workers.core.models import Network, Pool, Request
from workers.core.parsing import parse_request
from workers.core.placement import place
from workers.core.pools import parse_pools
from workers.core.possible import check_possible
from workers.core.taints import Taint, Toleration, parse_tolerations

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# strategies built once rather than on every draw (see tests/support/strategies.py)
TAINTS = st.lists(st.builds(
    Taint, st.sampled_from(["a", "b"]), st.sampled_from(["", "x"]),
    st.sampled_from(["NoSchedule", "PreferNoSchedule"])), max_size=2)


@st.composite
def fleets(draw, taints: bool = False) -> Fleet:
    pools, usage = {}, {}
    n_vc = draw(ints(1, 4))
    for v in range(n_vc):
        for i in range(draw(ints(1, 3))):
            name = f"p{v}{i}"
            pool_taints = ()
            if taints:
                pool_taints = tuple(draw(TAINTS))
            pools[name] = Pool(name, f"vc{v}", "dc", f"c{v}{i}", "ds", vcpus=10, memory=10,
                               storage=10, taints=pool_taints,
                               networks=tuple(Network(f"pg{v}{i}{k}") for k in range(2)))
            usage[name] = Usage(draw(ints(0, 10)), draw(ints(0, 10)), 0, 0)
    return Fleet(pools, usage)


def fits(req: Request, pool: Pool, fleet: Fleet) -> bool:
    """Oracle: room for the sizes and a free port group (none are used in these fleets)."""
    u = fleet.usage[pool.name]
    return (u.vcpus + req.vcpus <= pool.vcpus and u.memory + req.memory <= pool.memory
            and u.storage + req.storage <= pool.storage and req.networks <= len(pool.networks))


def possible(fitting: list[Pool], p: int, v: int) -> bool:
    """Oracle: some P distinct fitting pools use at most V vCenters (0: any number)."""
    for combo in itertools.combinations(fitting, p):
        if not v or len({x.vcenter for x in combo}) <= v:
            return True
    return False


@PROPS
@given(fleets(), st.integers(1, 5), st.integers(0, 6), st.integers(0, 6), st.integers(0, 6))
def test_p_pools_over_at_most_v_vcenters(fleet, p, v, vcpus, memory):
    raw = {"vcpus": vcpus, "memory": memory, "networks": 1, "pools": p}
    if v:
        raw["vcenters"] = v
    req = parse_request(raw)  # a cap above P is valid: it caps nothing
    assert (req.pools, req.vcenters) == (p, v)
    fitting = [x for x in fleet.pools.values() if fits(req, x, fleet)]
    try:
        chosen = place(req, fleet)
    except NoCapacity as exc:
        assert not possible(fitting, p, v), exc.message
        return
    pools = [c.pool for c in chosen]
    assert len({x.name for x in pools}) == p  # P distinct pools
    assert all(x in fitting for x in pools)
    vcs = {x.vcenter for x in pools}
    assert not v or len(vcs) <= v
    # spread: as many vCenters as the cap, the fitting pools and P allow
    assert len(vcs) == min(v or p, len({x.vcenter for x in fitting}), p)


def tolerated(taint: Taint, tolerations: tuple[Toleration, ...]) -> bool:
    """Oracle, from Kubernetes' documentation of tolerations."""
    for t in tolerations:
        effect_ok = t.effect in ("", taint.effect)
        if t.operator == "Exists" and (t.key in ("", taint.key)) and effect_ok:
            return True
        if t.operator == "Equal" and t.key == taint.key and t.value == taint.value \
                and effect_ok:
            return True
    return False


TOLERATIONS = st.lists(st.fixed_dictionaries({
    "key": st.sampled_from(["a", "b"]), "operator": st.sampled_from(["Exists", "Equal"]),
    "effect": st.sampled_from(["", "NoSchedule", "PreferNoSchedule"])}), max_size=2)


@PROPS
@given(fleets(taints=True), TOLERATIONS, st.booleans())
def test_tolerations_and_prefer_no_schedule(fleet, tols, with_value):
    for t in tols:
        if t["operator"] == "Equal" and with_value:
            t["value"] = "x"
    tolerations = parse_tolerations(tols)
    req = parse_request({"vcpus": 1, "memory": 1, "networks": 1, "tolerations": tols})
    def repels(pool: Pool, effect: str) -> bool:
        return any(t.effect == effect and not tolerated(t, tolerations) for t in pool.taints)

    allowed = [x for x in fleet.pools.values()
               if fits(req, x, fleet) and not repels(x, "NoSchedule")]
    try:
        (chosen,) = place(req, fleet)
    except NoCapacity:
        assert not allowed
        return
    assert chosen.pool in allowed
    if any(not repels(x, "PreferNoSchedule") for x in allowed):
        assert not repels(chosen.pool, "PreferNoSchedule")


def test_a_network_only_request_needs_only_a_port_group():
    pool = Pool("p", "vc", "dc", "c", "ds", vcpus=4, memory=4, storage=4,
                networks=(Network("pg-1"),))
    full = Fleet({"p": pool}, {"p": Usage(4, 4, 4, 1)})
    req = parse_request({"vcpus": 0, "memory": 0, "networks": 1})
    (chosen,) = place(req, full)
    assert [n.port_group for n in chosen.networks] == ["pg-1"]
    taken = Fleet({"p": pool}, {"p": Usage(4, 4, 4, 1)}, {"vc|pg-1"})
    with pytest.raises(NoCapacity):
        place(req, taken)


def test_taints_in_the_pools_file_and_reasons():
    base = {"vcenter": "vc", "datacenter": "dc", "cluster": "c", "datastore": "ds",
            "vcpus": 8, "memory": 8, "storage": 8, "networks": [{"port-group": "pg"}]}
    (pool,) = parse_pools({"pools": [{**base, "name": "gpu", "taints": [
        {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}]})
    assert pool.spec()["taints"] == [{"key": "dedicated", "value": "gpu",
                                      "effect": "NoSchedule"}]
    fleet = Fleet({"gpu": pool})
    with pytest.raises(InvalidRequest):  # no pool could ever take it
        check_possible(parse_request({"vcpus": 1, "memory": 1}), fleet.pools)
    with pytest.raises(NoCapacity) as info:
        place(parse_request({"vcpus": 1, "memory": 1}), fleet)
    assert info.value.reasons["gpu"] == "tainted dedicated=gpu:NoSchedule (not tolerated)"
    ok = parse_request({"vcpus": 1, "memory": 1, "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]})
    assert place(ok, fleet)[0].pool.name == "gpu"
    for bad, field in [({"key": "k", "effect": "Sometimes"}, "effect"),
                       ({"key": "Bad Key", "effect": "NoSchedule"}, "key"),
                       ({"effect": "NoSchedule"}, "key")]:
        from workers.core.errors import ConfigError

        with pytest.raises(ConfigError) as err:
            parse_pools({"pools": [{**base, "name": "x", "taints": [bad]}]})
        assert err.value.details["field"] == f"taints[0].{field}"


@pytest.mark.parametrize(("tols", "why"), [
    ([{"key": "k", "operator": "Sometimes"}], "operator"),
    ([{"operator": "Equal", "value": "v"}], "empty key"),
    ([{"key": "k", "operator": "Exists", "value": "v"}], "no value"),
    ([{"key": "k", "effect": "Never"}], "effect"), ("k", "list"),
])
def test_bad_tolerations_name_the_field(tols, why):
    with pytest.raises(InvalidRequest) as info:
        parse_request({"vcpus": 1, "memory": 1, "tolerations": tols})
    assert info.value.field.startswith("tolerations") and why in info.value.message


def test_red_team_findings_on_the_new_request_fields():
    # a network-only lease takes only port groups
    with pytest.raises(InvalidRequest) as info:
        parse_request({"vcpus": 0, "memory": 0, "storage": 50, "networks": 1})
    assert info.value.field == "storage"
    # a required pool the request does not tolerate says so
    (pool,) = parse_pools({"pools": [{
        "name": "gpu", "vcenter": "vc", "datacenter": "dc", "cluster": "c", "datastore": "ds",
        "vcpus": 8, "memory": 8, "storage": 8, "networks": [{"port-group": "pg"}],
        "taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}]})
    with pytest.raises(InvalidRequest) as info:
        check_possible(parse_request({"vcpus": 1, "memory": 1, "required-pool": "gpu"}),
                       {"gpu": pool})
    assert info.value.field == "required-pool"
    assert "tainted gpu=yes:NoSchedule (not tolerated)" in info.value.message
    # a multi-pool refusal counts the pools that fit
    a = Pool("a", "vca", "dc", "c", "ds", vcpus=10, memory=10, storage=10,
             networks=(Network("pa"),))
    b = Pool("b", "vcb", "dc", "c", "ds", vcpus=10, memory=10, storage=10,
             networks=(Network("pb"),))
    with pytest.raises(NoCapacity) as exc:
        place(parse_request({"vcpus": 1, "memory": 1, "pools": 2, "vcenters": 1}),
              Fleet({"a": a, "b": b}))
    assert exc.value.message.startswith("2 pool(s) fit, on 2 vCenter(s): not 2 distinct "
                                        "pools within 1 vCenter(s)")


def test_health_from_the_future_or_infinity_is_no_read():
    import math
    import time

    from workers.core.health import effective

    now = time.time()
    for at in (now + 1e7, math.inf):
        eff = effective({"vc": {"at": at, "pools": {"p": {"state": "degraded",
                                                          "reason": "x"}}}}, now, 1800)
        assert eff["p"].state == "unknown", at


def test_vcenters_with_pools_is_a_cap_as_upstream_means_it():
    """`pools: 1, vcenters: 3` is what upstream's CI step sends by default: one pool, the
    cap of 3 vCenters capping nothing; parsed, possible, placed and estimated as such."""
    fleet = Fleet({p.name: p for p in parse_pools({"pools": [
        {"name": f"p{i}", "vcenter": f"vc{i % 2}", "datacenter": "dc", "cluster": f"c{i}",
         "datastore": "ds", "vcpus": 8, "memory": 8, "storage": 8,
         "networks": [{"port-group": f"pg{i}"}]} for i in range(3)]})})
    req = parse_request({"vcpus": 2, "memory": 2, "pools": 1, "vcenters": 3})
    assert (req.pools, req.vcenters, req.pool_count) == (1, 3, 1)
    check_possible(req, fleet.pools)
    (got,) = place(req, fleet)
    assert got.pool.name == "p0"
    from workers.core.estimates import estimate

    assert estimate(req, fleet)["fits"] == 3  # one network per pool
    two = parse_request({"vcpus": 2, "memory": 2, "pools": 2, "vcenters": 5})
    assert len({p.pool.vcenter for p in place(two, fleet)}) == 2  # spread, as without a cap
    pinned = parse_request({"vcpus": 2, "memory": 2, "pools": 1, "vcenters": 3,
                            "required-pool": "p2"})
    check_possible(pinned, fleet.pools)
    assert place(pinned, fleet)[0].pool.name == "p2"
    # without `pools`, vcenters keeps the first API's meaning: N pools on N vCenters
    with pytest.raises(InvalidRequest) as info:
        check_possible(parse_request({"vcpus": 1, "memory": 1, "vcenters": 3}), fleet.pools)
    assert info.value.field == "vcenters"
    with pytest.raises(InvalidRequest) as info:
        check_possible(parse_request({"vcpus": 1, "memory": 1, "vcenters": 2,
                                      "required-pool": "p2"}), fleet.pools)
    assert info.value.field == "vcenters"
