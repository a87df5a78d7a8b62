"""Placement core: plain tests and hypothesis properties.

The properties check the implementation against small independent oracles written here
(exact decimal vCPU capacity, exact rational loads, our own fit rule and our own port-group
bookkeeping), not against the functions under test.
"""

from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from tests.support.strategies import ints, permutation, pick
from workers.core.errors import InvalidRequest, NoCapacity
from workers.core.estimates import estimate, fits_alone, max_groups
from workers.core.fleet import Fleet, FreeNets, Usage
from workers.core.models import Network, Pool, Request
from workers.core.placement import (
    STRATEGIES,
    Placement,
    place,
    place_batch,
    pool_load,
    vcenter_loads,
)
from workers.core.pools import parse_pools
from workers.core.possible import check_possible
from workers.core.reasons import why_not

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pools.yaml"
TYPES = ("single-tenant", "multi-tenant")
PROPS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------------------------
# oracles


def vcpu_cap(pool: Pool) -> int:
    """floor(vcpus × vcpu-overcommit), computed exactly on the decimal the operator wrote."""
    return math.floor(Decimal(repr(pool.vcpu_overcommit)) * pool.vcpus)


def eligible(req: Request, pool: Pool) -> bool:
    if req.required_pool and pool.name != req.required_pool:
        return False
    if pool.no_schedule:
        return False
    if pool.exclude and req.required_pool != pool.name:
        return False
    labels = dict(pool.labels)
    return all(labels.get(k) == v for k, v in req.pool_selector)


def free_nets(fleet: Fleet, pool: Pool, net_type: str) -> list[Network]:
    return [
        n
        for n in pool.networks
        if n.type == net_type and f"{pool.vcenter}|{n.port_group}" not in fleet.used_nets
    ]


def fits_now(req: Request, pool: Pool, fleet: Fleet) -> bool:
    u = fleet.used(pool.name)
    return (
        eligible(req, pool)
        and u.vcpus + req.vcpus <= vcpu_cap(pool)
        and u.memory + req.memory <= pool.memory
        and u.storage + req.storage <= pool.storage
        and len(free_nets(fleet, pool, req.network_type)) >= req.networks
    )


def exact_vc_loads(fleet: Fleet) -> dict[str, Fraction]:
    caps: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    used: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for pool in fleet.pools.values():
        u = fleet.used(pool.name)
        for i, (c, x) in enumerate(
            zip(
                (vcpu_cap(pool), pool.memory, pool.storage),
                (u.vcpus, u.memory, u.storage),
                strict=True,
            )
        ):
            caps[pool.vcenter][i] += c
            used[pool.vcenter][i] += x
    return {
        vc: sum(Fraction(x, c) for x, c in zip(used[vc], caps[vc], strict=True)) / 3 for vc in caps
    }


def exact_pool_load(pool: Pool, u: Usage) -> Fraction:
    return (
        Fraction(u.vcpus, vcpu_cap(pool))
        + Fraction(u.memory, pool.memory)
        + Fraction(u.storage, pool.storage)
    ) / 3


def snapshot(fleet: Fleet) -> tuple:
    return (dict(fleet.usage), frozenset(fleet.used_nets))


def summary(placements: list[Placement]) -> list[tuple[str, tuple[str, ...]]]:
    return [(p.pool.name, tuple(n.port_group for n in p.networks)) for p in placements]


def outcome(req: Request, fleet: Fleet, strategy: str):
    try:
        return ("ok", summary(place(req, fleet, strategy)))
    except NoCapacity as exc:
        return ("no", exc.reasons, exc.message)


def greedy_count(
    req: Request, fleet: Fleet, strategy: str = "least-utilized", limit: int = 5000
) -> int:
    scratch, n = fleet.copy(), 0
    while n < limit:
        try:
            placements = place(req, scratch, strategy)
        except NoCapacity:
            return n
        scratch.apply(req, placements)
        n += 1
    raise AssertionError("greedy simulation did not terminate")


# ---------------------------------------------------------------------------------------------
# strategies

OVERCOMMIT = st.one_of(
    st.sampled_from([1.0, 1.5, 2.0, 4.0]), st.integers(100, 400).map(lambda x: x / 100)
)
LABELS = st.dictionaries(
    st.sampled_from(["region", "tier"]), st.sampled_from(["east", "west"]), max_size=2
)
SELECTORS = st.sampled_from(
    [()] * 7
    + [(("region", "east"),), (("region", "west"),), (("region", "east"), ("tier", "west"))]
)


# strategies built once rather than on every draw (see tests/support/strategies.py)
NET_TYPES = {n: st.sampled_from(TYPES[:n]) for n in (1, 2)}
ONE_IN_SIX = st.sampled_from([False] * 5 + [True])
FOUR_IN_FIVE = st.sampled_from([True] * 4 + [False])
ONE_IN_FOUR = st.sampled_from([False, False, False, True])


@st.composite
def _fleets(
    draw,
    max_pools: int = 12,
    max_vcenters: int = 5,
    with_usage: bool = True,
    flags: bool = True,
    busy: bool = False,
) -> Fleet:
    n_vc = draw(ints(1, max_vcenters))
    n_pools = draw(ints(1, max_pools))
    names = permutation(draw, [f"pool{i:02d}" for i in range(n_pools)])
    net_type = NET_TYPES[draw(ints(1, 2))]
    counter: dict[str, int] = defaultdict(int)
    pools: dict[str, Pool] = {}
    for name in names:
        vc = f"vc{draw(ints(0, n_vc - 1))}.example.com"
        nets = []
        for _ in range(draw(ints(0, 6))):
            k = counter[vc]  # unique per vCenter; the same names recur on other vCenters
            counter[vc] += 1
            nets.append(
                Network(
                    port_group=f"pg-{k}",
                    vlan=100 + k,
                    cidr=f"10.0.{k}.0/24",
                    gateway=f"10.0.{k}.1",
                    type=draw(net_type),
                )
            )
        pools[name] = Pool(
            name=name,
            vcenter=vc,
            datacenter="dc",
            cluster=f"cl-{name}",
            datastore=f"ds-{name}",
            vcpus=draw(ints(1, 64)),
            memory=draw(ints(1, 256)),
            storage=draw(ints(1, 2000)),
            vcpu_overcommit=draw(OVERCOMMIT),
            exclude=flags and draw(ONE_IN_SIX),
            no_schedule=flags and draw(ONE_IN_SIX),
            labels=tuple(sorted(draw(LABELS).items())),
            networks=tuple(nets),
        )
    fleet = Fleet(pools)
    if with_usage:
        for pool in pools.values():
            if busy or draw(FOUR_IN_FIVE):
                fleet.usage[pool.name] = Usage(
                    draw(ints(0, vcpu_cap(pool))),
                    draw(ints(0, pool.memory)),
                    draw(ints(0, pool.storage)),
                    draw(ints(0, 5)),
                )
            for net in pool.networks:
                if draw(ONE_IN_FOUR):
                    fleet.used_nets.add(pool.net_key(net))
    return fleet


@functools.cache
def fleets(**kwargs) -> st.SearchStrategy[Fleet]:
    return _fleets(**kwargs)


@functools.cache
def small_or_larger(lo: int, small: int, large: int) -> st.SearchStrategy[int]:
    return st.integers(lo, small) | st.integers(lo, large)


@functools.cache
def vcenter_counts(top: int) -> st.SearchStrategy[int]:
    return st.sampled_from([1, 1, 1, *range(1, top + 1)])


STORAGE = st.just(0) | st.integers(0, 100) | st.integers(0, 800)
REQUEST_NET_TYPES = st.sampled_from(TYPES[:1] * 3 + TYPES)
REQUEST_IDS = st.text("abcxyz0123", min_size=1, max_size=8)


@st.composite
def requests(
    draw,
    fleet: Fleet,
    max_vcenters: int | None = None,
    min_size: int = 1,
    allow_required: bool = True,
) -> Request:
    n_vc = len(fleet.vcenters())
    top = n_vc if max_vcenters is None else max_vcenters
    names = sorted(fleet.pools)
    required = [None] * 16
    if allow_required:
        required += names[:3] + ["no-such-pool"]
    return Request(  # mostly small, so that a good share of requests fit
        vcpus=draw(small_or_larger(min_size, 8, 40)),
        memory=draw(small_or_larger(min_size, 32, 160)),
        storage=draw(STORAGE),
        vcenters=draw(vcenter_counts(top)),
        networks=draw(ints(0, 3)),
        network_type=draw(REQUEST_NET_TYPES),
        request_id=draw(REQUEST_IDS),
        required_pool=pick(draw, required),
        pool_selector=draw(SELECTORS),
    )


def shrink(req: Request) -> Request:
    """Small enough that most pools take it, so that the choice among many is exercised."""
    return replace(
        req,
        vcpus=min(req.vcpus, 2),
        memory=min(req.memory, 4),
        storage=min(req.storage, 10),
        networks=min(req.networks, 1),
        network_type=TYPES[0],
        pool_selector=(),
    )


def pool(
    name: str,
    vc: str,
    vcpus: int = 100,
    memory: int = 400,
    storage: int = 1000,
    nets: int = 4,
    **kw,
) -> Pool:
    return Pool(
        name=name,
        vcenter=vc,
        datacenter="dc",
        cluster="c",
        datastore="ds",
        vcpus=vcpus,
        memory=memory,
        storage=storage,
        networks=tuple(Network(f"{name}-pg{i}", vlan=i) for i in range(nets)),
        **kw,
    )


def fleet_of(*pools: Pool) -> Fleet:
    return Fleet({p.name: p for p in pools})


def example_fleet() -> Fleet:
    return Fleet(
        {p.name: p for p in parse_pools(yaml.safe_load(EXAMPLE.read_text()), str(EXAMPLE))}
    )


# ---------------------------------------------------------------------------------------------
# properties: safety


@PROPS
@given(st.data())
def test_capacity_never_exceeded_and_port_groups_handed_out_once(data):
    fleet = data.draw(fleets())
    strategy = data.draw(st.sampled_from(STRATEGIES))
    handed = {
        (p.vcenter, n.port_group)
        for p in fleet.pools.values()
        for n in p.networks
        if p.net_key(n) in fleet.used_nets
    }
    mine = {name: [u.vcpus, u.memory, u.storage] for name, u in fleet.usage.items()}
    for _ in range(data.draw(st.integers(1, 15))):
        req = data.draw(requests(fleet))
        before = snapshot(fleet)
        try:
            placements = place(req, fleet, strategy)
        except NoCapacity:
            assert snapshot(fleet) == before  # nothing held
            continue
        assert snapshot(fleet) == before  # place() itself never mutates
        assert len(placements) == req.vcenters
        assert len({p.pool.vcenter for p in placements}) == req.vcenters
        for p in placements:
            assert fleet.pools[p.pool.name] == p.pool
            assert eligible(req, p.pool), (req, p.pool)
            assert not p.pool.no_schedule
            if p.pool.exclude:
                assert req.required_pool == p.pool.name
            assert len(p.networks) == req.networks
            for n in p.networks:
                assert n in p.pool.networks, "port group of another pool"
                assert n.type == req.network_type, "port group of the wrong type"
                assert (p.pool.vcenter, n.port_group) not in handed, "port group handed out twice"
                handed.add((p.pool.vcenter, n.port_group))
            m = mine.setdefault(p.pool.name, [0, 0, 0])
            m[0] += req.vcpus
            m[1] += req.memory
            m[2] += req.storage
        fleet.apply(req, placements)
        for name, (v, mem, sto) in mine.items():
            pl = fleet.pools[name]
            u = fleet.used(name)
            assert (u.vcpus, u.memory, u.storage) == (v, mem, sto)
            assert v <= vcpu_cap(pl), f"{name}: {v} vCPUs > {vcpu_cap(pl)}"
            assert mem <= pl.memory and sto <= pl.storage, name


@PROPS
@given(st.data())
def test_vcenters_n_gives_n_placements_on_n_distinct_vcenters(data):
    fleet = data.draw(fleets(flags=False))
    n = data.draw(st.integers(1, len(fleet.vcenters())))
    req = replace(data.draw(requests(fleet, allow_required=False)), vcenters=n)
    if data.draw(st.booleans()):
        req = shrink(req)
    fitting_vcs = {p.vcenter for p in fleet.pools.values() if fits_now(req, p, fleet)}
    try:
        placements = place(req, fleet)
    except NoCapacity as exc:
        assert len(fitting_vcs) < n
        if fitting_vcs:
            assert "distinct vCenter" in exc.message
        return
    assert len(fitting_vcs) >= n
    assert len(placements) == n
    assert len({p.pool.vcenter for p in placements}) == n


@PROPS
@given(st.data())
def test_place_batch_is_all_or_nothing_and_equals_sequential(data):
    fleet = data.draw(fleets())
    strategy = data.draw(st.sampled_from(STRATEGIES))
    reqs = data.draw(st.lists(requests(fleet), min_size=1, max_size=6))
    scratch, seq, failed_at = fleet.copy(), [], None
    for i, r in enumerate(reqs):
        try:
            ps = place(r, scratch, strategy)
        except NoCapacity:
            failed_at = i
            break
        scratch.apply(r, ps)
        seq.append(ps)
    before = snapshot(fleet)
    try:
        out = place_batch(reqs, fleet, strategy)
    except NoCapacity as exc:
        assert failed_at is not None
        if len(reqs) > 1:
            assert f"request #{failed_at + 1} of the batch" in exc.message
        assert snapshot(fleet) == before
        return
    assert failed_at is None
    assert [summary(ps) for ps in out] == [summary(ps) for ps in seq]
    assert snapshot(fleet) == before


# ---------------------------------------------------------------------------------------------
# properties: determinism, reasons, soundness and completeness


@PROPS
@given(st.data())
def test_deterministic_for_a_given_state_and_independent_of_pool_order(data):
    fleet = data.draw(fleets())
    req = data.draw(requests(fleet))
    strategy = data.draw(st.sampled_from(STRATEGIES))
    order = data.draw(st.permutations(list(fleet.pools)))
    shuffled = Fleet({k: fleet.pools[k] for k in order}, dict(fleet.usage), set(fleet.used_nets))
    first = outcome(req, fleet, strategy)
    assert outcome(req, fleet.copy(), strategy) == first
    assert outcome(req, shuffled, strategy) == first
    # "random" is a function of the request-id, not of the call
    rnd = outcome(req, fleet, "random")
    assert outcome(replace(req, owner="someone-else"), shuffled, "random") == rnd


@PROPS
@given(st.data())
def test_no_capacity_names_every_pool_that_does_not_fit(data):
    fleet = data.draw(fleets())
    req = data.draw(requests(fleet))
    try:
        place(req, fleet)
    except NoCapacity as caught:
        exc = caught
    else:
        return
    reasons = exc.reasons
    names = set(fleet.pools) | ({req.required_pool} if req.required_pool else set())
    assert set(reasons) <= names
    if req.required_pool and req.required_pool not in fleet.pools:
        assert "not in the pools configuration" in reasons[req.required_pool]
    for pl in fleet.pools.values():
        if fits_now(req, pl, fleet):
            assert pl.name not in reasons
            continue
        assert pl.name in reasons, f"{pl.name} does not fit but has no reason"
        why = reasons[pl.name]
        assert why == why_not(req, pl, fleet)
        assert f"{pl.name}: {why}" in exc.message
        if req.required_pool and pl.name != req.required_pool:
            assert "required pool" in why
        elif pl.no_schedule:
            assert "cordoned" in why
        elif pl.exclude and req.required_pool != pl.name:
            assert "excluded" in why
        elif not eligible(req, pl):
            assert "pool-selector" in why
        else:
            u = fleet.used(pl.name)
            for dim, need, free in (
                ("vcpus", req.vcpus, vcpu_cap(pl) - u.vcpus),
                ("memory", req.memory, pl.memory - u.memory),
                ("storage", req.storage, pl.storage - u.storage),
            ):
                text = f"insufficient {dim} (need {need}, free {free})"
                assert (text in why) == (need > free), (text, why)
            nets = len(free_nets(fleet, pl, req.network_type))
            text = (
                f"insufficient networks of type {req.network_type} (need {req.networks}, "
                f"free {nets})"
            )
            assert (text in why) == (req.networks > nets), (text, why)


@PROPS
@given(st.data())
def test_sound_and_complete_against_why_not(data):
    fleet = data.draw(fleets())
    req = data.draw(requests(fleet))
    ok_pools = [p for p in fleet.pools.values() if why_not(req, p, fleet) is None]
    assert ok_pools == [p for p in fleet.pools.values() if fits_now(req, p, fleet)]
    one = replace(req, vcenters=1)
    if ok_pools:
        chosen = place(one, fleet)  # completeness: must not raise
        assert chosen[0].pool in ok_pools  # soundness
    else:
        with pytest.raises(NoCapacity):
            place(one, fleet)


@PROPS
@given(st.data())
def test_ranking_follows_the_documented_formula(data):
    fleet = data.draw(fleets(flags=data.draw(st.booleans())))
    req = data.draw(requests(fleet))
    if data.draw(st.sampled_from([True, True, True, False])):
        req = shrink(req)
    strategy = data.draw(st.sampled_from(["least-utilized", "pack"]))
    loads = vcenter_loads(fleet)
    exact = exact_vc_loads(fleet)
    assert set(loads) == set(exact)
    for vc, value in exact.items():
        assert loads[vc] == pytest.approx(float(value), abs=1e-12)
    for pl in fleet.pools.values():
        got = pool_load(pl, fleet.used(pl.name))
        assert got == pytest.approx(float(exact_pool_load(pl, fleet.used(pl.name))), abs=1e-12)

    def key(pl: Pool) -> tuple:
        vl, load = loads[pl.vcenter], pool_load(pl, fleet.used(pl.name))
        return (-vl, -load, pl.name) if strategy == "pack" else (vl, load, pl.name)

    fitting = [p for p in fleet.pools.values() if fits_now(req, p, fleet)]
    best: dict[str, Pool] = {}
    for pl in sorted(fitting, key=key):
        best.setdefault(pl.vcenter, pl)
    expected = sorted(best.values(), key=key)[: req.vcenters]
    try:
        got = place(req, fleet, strategy)
    except NoCapacity:
        assert len(expected) < req.vcenters
        return
    assert [p.pool.name for p in got] == [p.name for p in expected]


@PROPS
@given(st.data())
def test_vcenter_load_comes_before_pool_load(data):
    """Busy fleets where most pools fit: the emptiest vCenter wins, then its emptiest pool."""
    fleet = data.draw(fleets(max_vcenters=3, flags=False, busy=True))
    req = replace(shrink(data.draw(requests(fleet, allow_required=False))), vcenters=1)
    strategy = data.draw(st.sampled_from(["least-utilized", "pack"]))
    sign = -1 if strategy == "pack" else 1
    exact = exact_vc_loads(fleet)
    fitting = [p for p in fleet.pools.values() if fits_now(req, p, fleet)]
    if not fitting:
        return
    (got,) = place(req, fleet, strategy)
    best_vc = min(sign * exact[p.vcenter] for p in fitting)
    assert sign * exact[got.pool.vcenter] == best_vc
    same_vc = [p for p in fitting if exact[p.vcenter] == exact[got.pool.vcenter]]
    best_pool = min(sign * exact_pool_load(p, fleet.used(p.name)) for p in same_vc)
    assert sign * exact_pool_load(got.pool, fleet.used(got.pool.name)) == best_pool


# ---------------------------------------------------------------------------------------------
# estimate


@PROPS
@given(st.data())
def test_estimate_for_one_vcenter_equals_successive_placements(data):
    fleet = data.draw(fleets(max_pools=8))
    req = replace(data.draw(requests(fleet, min_size=4)), vcenters=1)
    before = snapshot(fleet)
    est = estimate(req, fleet)
    assert snapshot(fleet) == before
    assert est["fits"] == greedy_count(req, fleet)
    assert est["fits"] == sum(p["fits"] for p in est["pools"].values())
    assert set(est["pools"]) == set(fleet.pools)
    for name, info in est["pools"].items():
        only = replace(req, required_pool=name)
        if fleet.pools[name].exclude or req.required_pool not in (None, name):
            continue  # required-pool changes eligibility; checked below
        assert info["fits"] == greedy_count(only, fleet), name
    if est["fits"] == 0:
        assert est["next-blocked-by"]


def optimal_groups(req: Request, fleet: Fleet) -> int:
    """Groups of `req.vcenters` distinct vCenters, always taking the vCenters with most room."""
    scratch, groups, single = fleet.copy(), 0, replace(req, vcenters=1)
    while True:
        room: dict[str, list[tuple[int, Pool]]] = defaultdict(list)
        for pl in scratch.pools.values():
            count = fits_alone(single, pl, scratch)[0]
            if count:
                assert fits_now(single, pl, scratch)
                room[pl.vcenter].append((count, pl))
        ranked = sorted(room, key=lambda vc: (-sum(c for c, _ in room[vc]), vc))
        if len(ranked) < req.vcenters:
            return groups
        for vc in ranked[: req.vcenters]:
            pl = max(room[vc], key=lambda cp: (cp[0], cp[1].name))[1]
            nets = tuple(free_nets(scratch, pl, req.network_type)[: req.networks])
            scratch.apply(req, [Placement(pl, nets)])
        groups += 1


@PROPS
@given(st.data())
def test_estimate_for_n_vcenters_is_achievable_and_bounds_greedy(data):
    fleet = data.draw(fleets(max_pools=8))
    req = data.draw(requests(fleet, min_size=4, allow_required=False))
    est = estimate(req, fleet)
    greedy = greedy_count(req, fleet)
    assert est["fits"] >= greedy
    assert est["fits"] == optimal_groups(req, fleet)  # the bound is reached by some placement
    assert est["fits"] == max_groups(est["per-vcenter"].values(), req.vcenters)


def test_estimate_can_be_more_than_greedy_least_utilized_achieves():
    """Informative: vcenters=2, one big vCenter (room for 2) and two small ones (room for 1).

    The optimum is 2 (big+small, big+small); least-utilized starts with the two small vCenters
    (equal load 0, names first) and then has only the big one left: 1 group. `estimate` reports
    the optimum, so it is an upper bound of what the default strategy will really grant.
    """
    fleet = fleet_of(
        pool("a-small", "vc1", 10, 40, 100, nets=1),
        pool("b-small", "vc2", 10, 40, 100, nets=1),
        pool("z-big", "vc3", 20, 80, 200, nets=2),
    )
    req = Request(vcpus=10, memory=40, storage=100, vcenters=2)
    assert estimate(req, fleet)["fits"] == 2
    assert optimal_groups(req, fleet) == 2
    assert greedy_count(req, fleet) == 1


def test_estimate_reports_per_pool_counts_and_limit():
    fleet = fleet_of(pool("p1", "vc1", vcpus=100, memory=300, storage=1000, nets=10))
    est = estimate(Request(vcpus=10, memory=100, storage=0), fleet)
    assert est["fits"] == 3
    assert est["pools"]["p1"]["fits"] == 3
    assert "memory" in est["pools"]["p1"]["next-blocked-by"]


# ---------------------------------------------------------------------------------------------
# check_possible


def never_fields(req: Request, pools: dict[str, Pool]) -> set[str]:
    """Fields that on their own prove the request can never fit (independent oracle)."""
    out = set()
    if req.vcenters > len({p.vcenter for p in pools.values()}):
        out.add("vcenters")
    if req.required_pool and req.required_pool not in pools:
        out.add("required-pool")
        return out
    cands = [pools[req.required_pool]] if req.required_pool else list(pools.values())
    cands = [p for p in cands if all(dict(p.labels).get(k) == v for k, v in req.pool_selector)]
    if not cands:
        out.add("pool-selector")
        if req.required_pool:  # the named pool lacks the labels: the two fields conflict
            out.add("required-pool")
        return out
    if req.vcpus > max(vcpu_cap(p) for p in cands):
        out.add("vcpus")
    if req.memory > max(p.memory for p in cands):
        out.add("memory")
    if req.storage > max(p.storage for p in cands):
        out.add("storage")
    if req.networks:
        most = max(len(p.networks_of(req.network_type)) for p in cands)
        if most == 0:
            out.add("network-type")
        elif req.networks > most:
            out.add("networks")
    return out


def relaxed(pools: dict[str, Pool]) -> Fleet:
    """An empty fleet with cordons and excludes lifted: what could ever fit without new pools."""
    return Fleet({n: replace(p, no_schedule=False, exclude=False) for n, p in pools.items()})


def big_requests(fleet: Fleet):
    return _big_requests(len(fleet.vcenters()), tuple(sorted(fleet.pools)[:2]))


@functools.cache
def _big_requests(n_vc: int, first_pools: tuple[str, ...]):
    return st.builds(
        Request,
        vcpus=st.integers(1, 300),
        memory=st.integers(1, 300),
        storage=st.integers(0, 2500),
        vcenters=st.integers(1, n_vc + 1),
        networks=st.integers(0, 7),
        network_type=st.sampled_from(TYPES + ("other",)),
        required_pool=st.sampled_from([None, None, None, *first_pools, "nope"]),
        pool_selector=SELECTORS,
    )


def short_of(req: Request, pool: Pool) -> set[str]:
    """Dimensions in which `pool`, empty, cannot hold one `req`."""
    out = set()
    if req.vcpus > vcpu_cap(pool):
        out.add("vcpus")
    if req.memory > pool.memory:
        out.add("memory")
    if req.storage > pool.storage:
        out.add("storage")
    if req.networks > len(pool.networks_of(req.network_type)):
        out.add("networks")
    return out


@PROPS
@given(st.data())
def test_check_possible_rejects_exactly_the_impossible_naming_the_right_field(data):
    fleet = data.draw(fleets(with_usage=False))
    req = data.draw(big_requests(fleet))
    empty = relaxed(dict(fleet.pools))
    try:
        place(req, empty)
        possible = True
    except NoCapacity:
        possible = False
    reasons = never_fields(req, dict(fleet.pools))
    try:
        check_possible(req, fleet.pools)
    except InvalidRequest as exc:
        assert not possible, "rejected a request that fits the empty fleet"
        assert exc.message.startswith(f"{exc.field}: ")
        if reasons:  # a single field proves it: that kind of field is named
            assert exc.field in reasons | {"vcenters"}, (exc.field, reasons)
            return
        one = replace(req, vcenters=1)
        cands = [p for p in empty.pools.values() if eligible(one, p)]
        holders = {p.vcenter for p in cands if not short_of(req, p)}
        if holders:  # some pool could hold it, but not on enough distinct vCenters
            assert exc.field == "vcenters"
            assert len(holders) < req.vcenters
        else:  # no single pool holds it all: a dimension some candidate lacks is named
            assert exc.field in set().union(*(short_of(req, p) for p in cands)), exc.field
    else:
        assert possible, "accepted a request that can never fit"
        assert not reasons


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.generate],  # no shrinking: the minimal cases are spelled out below
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_check_possible_rejects_every_request_that_can_never_fit(data):
    fleet = data.draw(fleets(with_usage=False))
    req = data.draw(big_requests(fleet))
    try:
        place(req, relaxed(dict(fleet.pools)))
    except NoCapacity:
        with pytest.raises(InvalidRequest):
            check_possible(req, fleet.pools)


def test_check_possible_rejects_request_no_single_pool_can_hold():
    pools = {
        "cpu": pool("cpu", "vc1", vcpus=100, memory=10),
        "mem": pool("mem", "vc2", vcpus=10, memory=100),
    }
    req = Request(vcpus=50, memory=50)
    with pytest.raises(NoCapacity):
        place(req, Fleet(pools))
    with pytest.raises(InvalidRequest) as info:
        check_possible(req, pools)
    assert info.value.field in ("vcpus", "memory")
    # storage is what nobody lacks here; networks likewise: never named
    pools = {
        "big": pool("big", "vc1", vcpus=100, memory=100, nets=0),
        "small": pool("small", "vc2", vcpus=10, memory=10, nets=2),
    }
    with pytest.raises(InvalidRequest) as info:
        check_possible(Request(vcpus=50, memory=5, networks=1), pools)
    assert info.value.field in ("vcpus", "networks")
    with pytest.raises(InvalidRequest) as info:
        check_possible(Request(vcpus=5, memory=50, networks=1, storage=10), pools)
    assert info.value.field in ("memory", "networks")
    check_possible(Request(vcpus=5, memory=50, networks=0, storage=10), pools)


def test_check_possible_rejects_vcenters_without_enough_large_pools():
    pools = {"big": pool("big", "vc1", vcpus=100), "small": pool("small", "vc2", vcpus=10)}
    req = Request(vcpus=50, memory=10, vcenters=2)
    with pytest.raises(InvalidRequest) as info:
        check_possible(req, pools)
    assert info.value.field == "vcenters"
    check_possible(replace(req, vcenters=1), pools)


def test_check_possible_rejects_required_pool_with_several_vcenters():
    pools = {"a": pool("a", "vc1"), "b": pool("b", "vc2")}
    req = Request(vcpus=1, memory=1, vcenters=2, required_pool="a")
    with pytest.raises(NoCapacity):
        place(req, Fleet(pools))
    with pytest.raises(InvalidRequest) as info:
        check_possible(req, pools)
    assert info.value.field in ("vcenters", "required-pool")


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (Request(vcpus=1, memory=1, vcenters=4), "vcenters"),
        (Request(vcpus=121, memory=1), "vcpus"),  # pool2: 60 × 2.0 = 120, pool1: 120
        (Request(vcpus=1, memory=1601), "memory"),
        (Request(vcpus=1, memory=1, storage=10001), "storage"),
        (Request(vcpus=1, memory=1, networks=6), "networks"),
        (Request(vcpus=1, memory=1, networks=2, network_type="multi-tenant"), "networks"),
        (Request(vcpus=1, memory=1, network_type="vpc"), "network-type"),
        (Request(vcpus=1, memory=1, required_pool="pool9"), "required-pool"),
        (Request(vcpus=1, memory=1, pool_selector=(("region", "north"),)), "pool-selector"),
        (Request(vcpus=41, memory=1, required_pool="pool3"), "vcpus"),
        (Request(vcpus=90, memory=1, pool_selector=(("gpu", "true"),)), "vcpus"),
    ],
)
def test_check_possible_on_example_pools(req, field):
    with pytest.raises(InvalidRequest) as info:
        check_possible(req, example_fleet().pools)
    assert info.value.field == field
    assert field in str(info.value)


def test_check_possible_accepts_the_largest_possible_requests():
    pools = example_fleet().pools
    check_possible(Request(vcpus=120, memory=1600, storage=10000), pools)
    check_possible(Request(vcpus=1, memory=1, vcenters=3), pools)
    check_possible(Request(vcpus=1, memory=1, networks=4), pools)
    check_possible(Request(vcpus=1, memory=1, networks=0, network_type="vpc"), pools)
    check_possible(Request(vcpus=80, memory=1, required_pool="pool4"), pools)
    with pytest.raises(InvalidRequest) as info:
        check_possible(Request(vcpus=1, memory=1), {})
    assert info.value.field == "request"


# ---------------------------------------------------------------------------------------------
# plain tests: fit rules


def test_vcpu_capacity_is_never_more_than_vcpus_times_overcommit():
    p = pool("p", "vc1", vcpus=1000, memory=10, vcpu_overcommit=1.9999999999999)
    assert p.vcpu_capacity <= p.vcpus * p.vcpu_overcommit
    assert p.vcpu_capacity == 1999


@pytest.mark.parametrize(
    ("vcpus", "ratio", "cap"),
    [
        (120, 1.0, 120),
        (60, 2.0, 120),
        (10, 1.5, 15),
        (7, 1.5, 10),
        (3, 1.1, 3),
        (100, 1.1, 110),
        (10, 1.15, 11),
        (49, 1.3, 63),
        (1, 4.0, 4),
    ],
)
def test_vcpu_overcommit_capacity(vcpus, ratio, cap):
    p = pool("p", "vc1", vcpus=vcpus, memory=100, vcpu_overcommit=ratio)
    assert p.vcpu_capacity == cap == vcpu_cap(p)
    fleet = fleet_of(p)
    place(Request(vcpus=cap, memory=1, networks=0), fleet)
    with pytest.raises(NoCapacity) as info:
        place(Request(vcpus=cap + 1, memory=1, networks=0), fleet)
    assert f"insufficient vcpus (need {cap + 1}, free {cap})" in info.value.reasons["p"]


def test_fit_is_inclusive_and_memory_storage_are_not_overcommitted():
    p = pool("p", "vc1", vcpus=10, memory=100, storage=50, vcpu_overcommit=2.0)
    fleet = fleet_of(p)
    fleet.usage["p"] = Usage(15, 60, 20, 2)
    place(Request(vcpus=5, memory=40, storage=30), fleet)  # exactly full
    with pytest.raises(NoCapacity) as info:
        place(Request(vcpus=5, memory=41, storage=31), fleet)
    why = info.value.reasons["p"]
    assert "insufficient memory (need 41, free 40)" in why
    assert "insufficient storage (need 31, free 30)" in why
    assert "vcpus" not in why


def test_contract_example_reason_format():
    fleet = example_fleet()
    fleet.usage["pool2"] = Usage(0, 760, 0, 3)
    with pytest.raises(NoCapacity) as info:
        place(Request(vcpus=24, memory=96, storage=700, required_pool="pool2"), fleet)
    assert "pool2: insufficient memory (need 96, free 40)" in info.value.message
    assert info.value.reasons["pool1"].startswith("not the required pool")


def test_upstream_example_on_example_pools():
    fleet = example_fleet()
    req = Request(vcpus=24, memory=96, storage=700)
    (p,) = place(req, fleet)
    assert p.pool.name in {"pool1", "pool2", "pool3"}
    assert len(p.networks) == 1 and p.networks[0].type == "single-tenant"


def test_networks_are_handed_out_by_type_until_gone():
    fleet = example_fleet()
    req = Request(vcpus=1, memory=1, network_type="multi-tenant")
    (p,) = place(req, fleet)
    assert p.pool.name == "pool1"
    assert [n.port_group for n in p.networks] == ["ci-mt-1005"]
    fleet.apply(req, [p])
    with pytest.raises(NoCapacity) as info:
        place(req, fleet)
    assert (
        "insufficient networks of type multi-tenant (need 1, free 0)" in info.value.reasons["pool1"]
    )
    (q,) = place(Request(vcpus=1, memory=1, networks=0, network_type="multi-tenant"), fleet)
    assert q.networks == ()


def test_same_port_group_name_on_two_vcenters_is_two_networks():
    a = Pool("a", "vc1", "dc", "c", "ds", 10, 10, 10, networks=(Network("shared"),))
    b = Pool("b", "vc2", "dc", "c", "ds", 10, 10, 10, networks=(Network("shared"),))
    fleet = fleet_of(a, b)
    req = Request(vcpus=1, memory=1, vcenters=2)
    got = place(req, fleet)
    assert sorted(p.pool.name for p in got) == ["a", "b"]
    fleet.apply(req, got)
    assert fleet.used_nets == {"vc1|shared", "vc2|shared"}


def test_exclude_only_by_required_pool_and_no_schedule_never():
    fleet = example_fleet()
    gpu = Request(vcpus=1, memory=1, pool_selector=(("gpu", "true"),))
    with pytest.raises(NoCapacity) as info:
        place(gpu, fleet)
    assert "excluded" in info.value.reasons["pool4"]
    (p,) = place(replace(gpu, required_pool="pool4"), fleet)
    assert p.pool.name == "pool4"
    cordoned = Fleet({**fleet.pools, "pool4": replace(fleet.pools["pool4"], no_schedule=True)})
    with pytest.raises(NoCapacity) as info:
        place(replace(gpu, required_pool="pool4"), cordoned)
    assert "cordoned" in info.value.reasons["pool4"]
    gone = _no_capacity(Request(vcpus=1, memory=1, required_pool="gone"), fleet)
    assert "not in the pools configuration" in gone.reasons["gone"]


def _no_capacity(req: Request, fleet: Fleet) -> NoCapacity:
    with pytest.raises(NoCapacity) as info:
        place(req, fleet)
    return info.value


def test_pool_selector_matches_all_pairs():
    fleet = example_fleet()
    east = Request(vcpus=1, memory=1, pool_selector=(("region", "east"),))
    seen = set()
    for _ in range(6):
        (p,) = place(east, fleet)
        seen.add(p.pool.name)
        fleet.apply(east, [p])
    assert seen == {"pool1", "pool3"}  # pool4 is east too, but excluded
    err = _no_capacity(replace(east, pool_selector=(("region", "east"), ("gpu", "false"))), fleet)
    assert "pool-selector gpu=false" in err.reasons["pool1"]


def test_multi_vcenter_failure_holds_nothing_and_says_why():
    fleet = fleet_of(pool("a", "vc1"), pool("b", "vc2", memory=10))
    before = snapshot(fleet)
    err = _no_capacity(Request(vcpus=1, memory=20, vcenters=2), fleet)
    assert "only 1 distinct vCenter(s) have a fitting pool, need 2" in err.message
    assert err.reasons == {"b": "insufficient memory (need 20, free 10)"}
    assert snapshot(fleet) == before


# ---------------------------------------------------------------------------------------------
# plain tests: spreading strategies


def test_three_identical_pools_on_three_vcenters_take_turns():
    fleet = fleet_of(pool("a", "vc1"), pool("b", "vc2"), pool("c", "vc3"))
    req = Request(vcpus=10, memory=40, storage=100)
    rounds = []
    for _ in range(6):
        (p,) = place(req, fleet)
        fleet.apply(req, [p])
        rounds.append(p.pool.vcenter)
    assert sorted(rounds[:3]) == ["vc1", "vc2", "vc3"]
    assert sorted(rounds[3:]) == ["vc1", "vc2", "vc3"]


def test_after_unequal_loads_the_emptier_vcenter_is_chosen():
    fleet = fleet_of(pool("a", "vc1"), pool("b", "vc2"), pool("z", "vc3"))
    fleet.usage.update(a=Usage(50, 200, 500, 5), b=Usage(30, 120, 300, 3), z=Usage(10, 40, 100, 1))
    (p,) = place(Request(vcpus=1, memory=1), fleet)
    assert p.pool.name == "z"
    got = place(Request(vcpus=1, memory=1, vcenters=2), fleet)
    assert [x.pool.name for x in got] == ["z", "b"]


def test_whole_vcenter_load_counts():
    # vc1 has pools a and b, vc2 has pool zz. Load vc1 through a: b is empty itself, but its
    # vCenter is not, so the equally empty pool on vc2 wins although "b" < "zz".
    fleet = fleet_of(pool("a", "vc1"), pool("b", "vc1"), pool("zz", "vc2"))
    fleet.usage["a"] = Usage(40, 160, 400, 4)
    (p,) = place(Request(vcpus=1, memory=1), fleet)
    assert p.pool.name == "zz"
    # within the chosen vCenter the emptier pool wins
    fleet.usage["zz"] = Usage(60, 240, 600, 6)
    (p,) = place(Request(vcpus=1, memory=1), fleet)
    assert p.pool.name == "b"
    loads = vcenter_loads(fleet)
    assert loads["vc1"] == pytest.approx(0.2)
    assert loads["vc2"] == pytest.approx(0.6)


def test_vcenter_load_outranks_pool_load():
    # b (vc1) is empty and zz (vc2) is at 10 %, but vc1 as a whole is at 20 %: zz wins.
    fleet = fleet_of(pool("a", "vc1"), pool("b", "vc1"), pool("zz", "vc2"))
    fleet.usage.update(a=Usage(40, 160, 400, 4), zz=Usage(10, 40, 100, 1))
    assert [p.pool.name for p in place(Request(vcpus=1, memory=1), fleet)] == ["zz"]
    # pack: the busiest vCenter first (vc1 at 20 % beats vc2 at 10 %), then its busiest pool
    assert [p.pool.name for p in place(Request(vcpus=1, memory=1), fleet, "pack")] == ["a"]
    fleet.usage["zz"] = Usage(30, 120, 300, 3)  # vc2 at 30 %, although a (40 %) is busier
    assert [p.pool.name for p in place(Request(vcpus=1, memory=1), fleet, "pack")] == ["zz"]
    got = place(Request(vcpus=1, memory=1, vcenters=2), fleet, "pack")
    assert [p.pool.name for p in got] == ["zz", "a"]


def test_equal_vcenters_with_two_pools_each_alternate_vcenters():
    fleet = fleet_of(pool("a1", "vc1"), pool("a2", "vc1"), pool("b1", "vc2"), pool("b2", "vc2"))
    req = Request(vcpus=10, memory=40, storage=100)
    seen = []
    for _ in range(8):
        (p,) = place(req, fleet)
        fleet.apply(req, [p])
        seen.append(p.pool.name)
    assert seen == ["a1", "b1", "a2", "b2"] * 2


def test_pack_fills_the_most_utilized_first():
    fleet = fleet_of(
        pool("a", "vc1", nets=20), pool("b", "vc2", nets=20), pool("c", "vc3", nets=20)
    )
    fleet.usage["b"] = Usage(10, 40, 100, 1)
    req = Request(vcpus=10, memory=40, storage=100)
    order = []
    while True:
        try:
            (p,) = place(req, fleet, "pack")
        except NoCapacity:
            break
        fleet.apply(req, [p])
        order.append(p.pool.name)
    assert order == ["b"] * 9 + ["a"] * 10 + ["c"] * 10


def test_random_strategy_is_repeatable_per_request_id_and_spreads_over_ids():
    pools = [pool(f"p{i}", f"vc{i}") for i in range(8)]
    fleet = fleet_of(*pools)
    picks = {}
    for i in range(40):
        req = Request(vcpus=1, memory=1, request_id=f"req-{i}")
        first = summary(place(req, fleet, "random"))
        assert summary(place(req, fleet_of(*reversed(pools)), "random")) == first
        picks[i] = first[0][0]
    assert len(set(picks.values())) >= 4


def test_max_groups():
    assert max_groups([2, 1, 1], 2) == 2
    assert max_groups([5], 1) == 5
    assert max_groups([5], 2) == 0
    assert max_groups([3, 3, 3], 3) == 3
    assert max_groups([10, 1, 1], 2) == 2
    assert max_groups([0, 0], 1) == 0
    assert max_groups([4, 4, 4], 2) == 6


def test_reasons_regex_shape():
    err = _no_capacity(Request(vcpus=500, memory=5000, storage=50000, networks=9), example_fleet())
    for name, why in err.reasons.items():
        if name == "pool4":
            continue
        assert re.fullmatch(r"(insufficient [a-z -]+ \(need \d+, free \d+\)(, )?)+", why), why


def _scan_free(fleet: Fleet, pool: Pool, net_type: str) -> list[Network]:
    return [n for n in pool.networks if n.type == net_type
            and pool.net_key(n) not in fleet.used_nets]


def _index_agrees(fleet: Fleet) -> None:
    assert fleet.free is not None
    for pool in fleet.pools.values():
        for net_type in TYPES:
            want = _scan_free(fleet, pool, net_type)
            assert fleet.free.first(pool, net_type) == want, (pool.name, net_type)
            assert fleet.free.count(pool, net_type) == len(want)


@PROPS
@given(st.data())
def test_free_port_group_aggregate_places_exactly_like_a_scan(data):
    """The FreeNets aggregate (what the worker keeps) gives the same placements as scanning
    the port groups, through placements and releases, and always agrees with the scan."""
    plain = data.draw(fleets())
    indexed = Fleet(plain.pools, dict(plain.usage), set(plain.used_nets),
                    FreeNets(plain.pools, plain.used_nets))
    _index_agrees(indexed)
    strategy = data.draw(st.sampled_from(STRATEGIES))
    for _ in range(data.draw(st.integers(1, 12))):
        if indexed.used_nets and data.draw(st.booleans()):  # a release gives port groups back
            key = data.draw(st.sampled_from(sorted(indexed.used_nets)))
            for fleet in (plain, indexed):
                fleet.used_nets.discard(key)
            indexed.free.give(key)
        req = data.draw(requests(plain))
        want, got = outcome(req, plain, strategy), outcome(req, indexed, strategy)
        assert got == want
        if want[0] == "ok":
            placements = place(req, indexed, strategy)
            assert summary(placements) == want[1]
            plain.apply(req, place(req, plain, strategy))
            indexed.apply(req, placements)
            assert indexed.used_nets == plain.used_nets and indexed.usage == plain.usage
            event("a placement applied")
        _index_agrees(indexed)


def test_free_port_group_aggregate_with_port_groups_shared_by_pools():
    """Two pools of one vCenter that list the same port group: taking it in one takes it in
    both (the ledger key is vCenter|port group), and giving it back frees it in both."""
    shared = Network("pg-shared", 10)
    a = replace(pool("a", "vc1"), networks=(shared, Network("pg-a", 11)))
    b = replace(pool("b", "vc1"), networks=(Network("pg-b", 12), shared))
    pools = {"a": a, "b": b}
    free = FreeNets(pools, {"vc1|pg-a"})
    assert free.first(a, shared.type) == [shared] and free.count(b, shared.type) == 2
    free.take("vc1|pg-shared")
    assert free.count(a, shared.type) == 0 and free.first(b, shared.type) == [b.networks[0]]
    free.give("vc1|pg-shared")
    free.give("vc1|pg-a")
    free.give("vc1|pg-a")  # twice is harmless
    assert free.first(a, shared.type) == [shared, a.networks[1]]
    assert free.first(b, shared.type, 1) == [b.networks[0]]
