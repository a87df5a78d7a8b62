"""The inventory's networks through the ledger's scripts and the task API with real workers:
a port group listed by several pools is leased once, whoever asks and however many at once."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.audit import audit
from tests.support.helpers import call, check_invariants, net_key, replace_file
from tests.support.procs import ROOT
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import load_pools
from workers.core.grants import make_lease
from workers.core.lease import Lease
from workers.core.models import Network, Pool
from workers.core.parsing import parse_request

UPSTREAM = ROOT / "examples" / "pools-upstream.yaml"


@pytest.fixture()
def upstream(ledger, pools_file) -> dict[str, Pool]:
    """The upstream-shaped inventory as the workers' pools file (re-read on change)."""
    replace_file(pools_file, UPSTREAM.read_text())
    return {p.name: p for p in load_pools(str(pools_file))}


@pytest.fixture()
def own_ledger(redis_server):
    ledger = Ledger(redis_server.client(), prefix=f"t-{uuid.uuid4().hex[:8]}:")
    assert ledger.restore({"seq": 0, "leases": []}).applied
    return ledger


# ---------------------------------------------------------------------------------------------
# the Lua scripts build the same keys as the core


def test_scripts_key_networks_by_vcenter_pod_and_slice(own_ledger, redis_server):
    """commit takes the keys the core computes; release and restore rebuild them from the
    lease records in Lua (pod and slice included): they must agree, or a released network
    would stay taken, or a restored one be free."""
    pool = Pool("p1", "vc1", "dc", "c", "ds", vcpus=10, memory=10, storage=10, pod="pod-a",
                networks=(Network("pg-1", vlan=1, pod="pod-a"), Network("pg-2", vlan=2)))
    req = parse_request({"vcpus": 1, "memory": 1, "networks": 2, "request-id": "r1"},
                        default_owner="o")
    lease = make_lease("lease-1", req, pool, list(pool.networks), time.time())
    lease["status"]["networks"][1]["slice"] = "10.0.0.4-10.0.0.7"  # a slice, no pod
    caps = {"p1": (10, 10, 10)}
    assert own_ledger.commit(own_ledger.usage()[0], {"r1": [lease]}, caps).status == "ok"
    keys = {"vc1|pg-1|pod-a", "vc1|pg-2||10.0.0.4-10.0.0.7"}
    assert set(audit(own_ledger)["nets"]) == keys
    assert set(own_ledger.usage().nets) == keys
    again = Ledger(redis_server.client(), prefix=f"t-{uuid.uuid4().hex[:8]}:")
    assert again.restore(own_ledger.snapshot()).applied
    assert audit(again)["nets"] == {k: "lease-1" for k in keys}
    for ledger in (own_ledger, again):
        ledger.release(["lease-1"], owner="o", now="2026-11-28T00:00:00Z")
        assert audit(ledger)["nets"] == {}


def test_the_leases_of_one_install_share_a_network_and_free_it_last(own_ledger, redis_server):
    """The `nets` hash holds a network's holders, the leases of one install: the commit
    writes them, a release takes one out (the network stays taken), a restore rebuilds them;
    another install's commit of that network is refused, as is one that expects it held."""
    net = Network("pg", vlan=1, pod="p")
    a = Pool("a", "vc", "dc", "c", "ds", vcpus=10, memory=10, storage=10, networks=(net,))
    b = Pool("b", "vc", "dc", "c", "ds", vcpus=10, memory=10, storage=10, networks=(net,))
    caps = {"a": (10, 10, 10), "b": (10, 10, 10)}
    req = parse_request({"vcpus": 1, "memory": 1, "pools": 2, "request-id": "r"},
                        default_owner="o")
    leases = [make_lease(f"l{i}", req, p, [net], time.time()) for i, p in enumerate((a, b))]
    assert own_ledger.commit(own_ledger.usage()[0], {req.key: leases}, caps).status == "ok"
    assert audit(own_ledger)["nets"] == {"vc|pg|p": "l0 l1"}
    other = parse_request({"vcpus": 1, "memory": 1, "request-id": "x"}, default_owner="o")
    theirs = make_lease("l9", other, a, [net], time.time())
    refused = own_ledger.commit(own_ledger.usage()[0], {other.key: [theirs]}, caps)
    assert (refused.status, refused.detail) == ("over", "vc|pg|p")
    again = Ledger(redis_server.client(), prefix=f"t-{uuid.uuid4().hex[:8]}:")
    assert again.restore(own_ledger.snapshot()).applied
    assert audit(again)["nets"] == {"vc|pg|p": "l0 l1"}
    own_ledger.release(["l0"], owner="o", now="2026-11-28T00:00:00Z")
    assert audit(own_ledger)["nets"] == {"vc|pg|p": "l1"}
    assert own_ledger.nets_held(["vc|pg|p", "vc|other"]) == {"vc|pg|p"}
    own_ledger.release(["l1"], owner="o", now="2026-11-28T00:00:00Z")
    assert audit(own_ledger)["nets"] == {}
    # the decision thought the install held it, but nobody does: refused, nothing written
    expected = own_ledger.commit(own_ledger.usage()[0], {other.key: [theirs]}, caps,
                                 held=["vc|pg|p"])
    assert expected.status == "over" and audit(own_ledger)["leases"] == {}
    with pytest.raises(ValueError, match="two installs"):  # a bug in the caller, caught
        own_ledger.commit(own_ledger.usage()[0], {req.key: leases[:1], other.key: [theirs]},
                          caps)


def _lease_of(req, lease_id: str, pool: Pool, nets: list[Network]) -> dict:
    return make_lease(lease_id, req, pool, nets, time.time())


def test_the_commit_lets_no_network_only_lease_share_a_network(own_ledger):
    """The commit is the last check: whatever `held` the caller passes, a network-only lease
    (vcpus 0, memory 0) takes only networks nobody holds, and a network held only by
    network-only leases, or by another install, is no network to share."""
    nets = [Network(f"pg{i}", vlan=i, pod="p") for i in range(4)]
    a = Pool("a", "vc", "dc", "c", "ds", vcpus=10, memory=10, storage=10, networks=tuple(nets))
    caps = {"a": (10, 10, 10)}
    job = {"labels": {"boskos-lease-id": "job"}}

    def req(rid: str, vcpus: int, owner: str = "o"):
        return parse_request({"vcpus": vcpus, "memory": vcpus, "request-id": rid, **job},
                             default_owner=owner)

    def commit(r, lease_id: str, net: Network, held: list[str] = ()):
        before = audit(own_ledger)
        out = own_ledger.commit(own_ledger.usage()[0], {r.key: [_lease_of(r, lease_id, a,
                                                                          [net])]},
                                caps, held=held)
        if out.status != "ok":
            assert audit(own_ledger) == before  # refused: nothing written
        return out.status, out.detail

    pg0, pg1 = "vc|pg0|p", "vc|pg1|p"
    assert commit(req("c1", 1), "c1", nets[0])[0] == "ok"  # the install's compute lease
    # a network-only lease of the install, told the install holds pg0: refused
    assert commit(req("x1", 0), "x1", nets[0], held=[pg0]) == ("over", pg0)
    assert commit(req("x1", 0), "x1", nets[1])[0] == "ok"
    # pg1 is held by that network-only lease alone: no compute lease of the install joins it,
    # nor another network-only one
    assert commit(req("c2", 1), "c2", nets[1], held=[pg1]) == ("over", pg1)
    assert commit(req("x2", 0), "x2", nets[1], held=[pg1]) == ("over", pg1)
    # another owner naming the install's group is another install: refused too
    assert commit(req("t1", 1, owner="them"), "t1", nets[0], held=[pg0]) == ("over", pg0)
    # the install's compute leases share pg0 as before
    assert commit(req("c3", 1), "c3", nets[0], held=[pg0])[0] == "ok"
    assert audit(own_ledger)["nets"] == {pg0: "c1 c3", pg1: "x1"}
    # the Python side refuses to send a network-only and a compute lease of one install on
    # one network in one commit; the script refuses such a payload on its own
    r_c, r_x = req("c4", 1), req("x4", 0)
    pair = {r_c.key: [_lease_of(r_c, "c4", a, [nets[2]])],
            r_x.key: [_lease_of(r_x, "x4", a, [nets[2]])]}
    with pytest.raises(ValueError, match="two installs"):
        own_ledger.commit(own_ledger.usage()[0], pair, caps)
    raws = [json.dumps(pair[r_c.key][0]), json.dumps(pair[r_x.key][0])]
    payload = {"rids": {r_c.key: json.dumps(["c4"]), r_x.key: json.dumps(["x4"])},
               "pools": {"a": {"vcpus": 1, "memory": 1, "storage": 0, "leases": 2,
                               "vcenter": "vc", "cap": [10, 10, 10]}},
               "nets": {"vc|pg2|p": "c4 x4"},
               "leases": [{"id": i, "owner": "o", "exp": time.time() + 60}
                          for i in ("c4", "x4")], "counts": {}}
    before = audit(own_ledger)
    reply = own_ledger.scripts.commit(args=[own_ledger.p, own_ledger.usage()[0],
                                            json.dumps(payload), *raws])
    assert [x.decode() if isinstance(x, bytes) else x for x in reply] == ["over", "vc|pg2|p"]
    assert audit(own_ledger) == before
    # one network-only request over two pools of one vCenter: its own leases share a network
    b = Pool("b", "vc", "dc", "c2", "ds", vcpus=10, memory=10, storage=10, networks=(nets[3],))
    r_pair = parse_request({"vcpus": 0, "memory": 0, "pools": 2, "request-id": "x5", **job},
                           default_owner="o")
    pair_leases = [_lease_of(r_pair, f"x5-{p.name}", p, [nets[3]]) for p in (a, b)]
    got = own_ledger.commit(own_ledger.usage()[0], {r_pair.key: pair_leases},
                            {**caps, "b": (10, 10, 10)})
    assert got.status == "ok"
    assert audit(own_ledger)["nets"]["vc|pg3|p"] == "x5-a x5-b"
    check_invariants(own_ledger, {"a": a, "b": b})


GROUPS = st.sampled_from([None, "", "g", "h", 7, ["g"]])  # absent, empty, two groups, odd
SIZES = st.sampled_from([(0, 0), (1, 0), (0, 1)])  # (vcpus, memory): network-only first
SIDES = st.tuples(st.sampled_from(["o", "p"]), GROUPS, GROUPS, SIZES, st.booleans())


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(SIDES, SIDES)
def test_the_commit_and_the_core_agree_on_who_shares_a_network(redis_server, first, second):
    """A lease holds a network; another, from another request, claims it as its install's
    (`held`). The script grants it exactly when the core's Lease.install says both are of
    one install (one owner, one boskos-lease-id by label or else by field, both with vCPUs
    or memory); whatever the labels hold."""
    ledger = Ledger(redis_server.client(), prefix=f"t-{uuid.uuid4().hex[:8]}:")
    assert ledger.restore({"seq": 0, "leases": []}).applied
    net = Network("pg", vlan=1)
    pool = Pool("a", "vc", "dc", "c", "ds", vcpus=10, memory=10, storage=10, networks=(net,))
    caps = {"a": (10, 10, 10)}

    def lease(rid: str, side):
        owner, label, field, (vcpus, memory), listed = side
        r = parse_request({"vcpus": vcpus, "memory": memory, "request-id": rid},
                          default_owner=owner)
        x = make_lease(rid, r, pool, [net], time.time())
        labels = {} if label is None else {"boskos-lease-id": label}
        x["status"]["labels"] = [labels] if listed else labels
        if field is not None:
            x["status"]["boskos-lease-id"] = field
        return r, x

    (ra, a), (rb, b) = lease("ra", first), lease("rb", second)
    assert ledger.commit(ledger.usage()[0], {ra.key: [a]}, caps).status == "ok"
    assert ledger.commit(ledger.usage()[0], {rb.key: [b]}, caps).status == "over"
    shares = Lease.from_wire(a).install is not None \
        and Lease.from_wire(a).install == Lease.from_wire(b).install
    got = ledger.commit(ledger.usage()[0], {rb.key: [b]}, caps, held=["vc|pg"])
    assert got.status == ("ok" if shares else "over"), (a["status"], b["status"])
    event("shared" if shares else "refused")


# ---------------------------------------------------------------------------------------------
# the task API


REQUESTS = st.tuples(st.sampled_from([
    {"vcpus": 2, "memory": 8, "required-pool": "v1-c1"},
    {"vcpus": 2, "memory": 8, "required-pool": "v1-c2"},
    {"vcpus": 2, "memory": 8, "required-pool": "v1-c2", "networks": 2},
    {"vcpus": 2, "memory": 8, "pools": 2, "vcenters": 1},
    {"vcpus": 0, "memory": 0, "required-pool": "v1-c1"},
    {"vcpus": 2, "memory": 8, "required-pool": "v3-c2"},
    {"vcpus": 2, "memory": 8, "pools": 3},
]), st.sampled_from([None, None, "install-a", "install-b"])).map(
    lambda x: {**x[0], **({"labels": {"boskos-lease-id": x[1]}} if x[1] else {})})


def sharing(lease: dict) -> tuple[str, ...]:
    """Who may share a lease's networks: its owner's install (its boskos-lease-id) when it
    has vCPUs or memory; a network-only lease's, only the leases of its own request."""
    st_, sp = lease["status"], lease["spec"]
    group = st_["labels"].get("boskos-lease-id")
    if group and (sp["vcpus"] or sp["memory"]):
        return (st_["owner"], group)
    return (st_["owner"], "", st_["request-id"])


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(REQUESTS, min_size=8, max_size=20))
def test_shared_port_groups_are_leased_once_under_concurrent_acquires(
        upstream, client_app, ledger, reqs):
    """Many acquires sent at once, most of them for the pools that share vcenter-1's four
    and vcenter-3's three networks, some of them of one install (a boskos-lease-id): every
    network is held by one install (its leases may share it), each lease's on distinct
    VLANs, and the ledger's port groups are exactly its leases' (check_invariants)."""
    owner = f"conc-{uuid.uuid4().hex[:8]}"
    granted: list[dict] = []
    try:
        sent = [client_app.send_task("vcm.acquire", kwargs={"request": {**r, "owner": owner}},
                                     queue="placement") for r in reqs]
        refused = 0
        for r in sent:
            try:
                granted += r.get(timeout=60)
            except Exception as exc:  # noqa: BLE001 - only NoCapacity may come back
                assert type(exc).__name__ == "NoCapacity", exc
                refused += 1
        assert granted and refused + len({x["status"]["request-id"] for x in granted}) == \
            len(reqs)
        snap = check_invariants(ledger, upstream)
        keys = {net_key(x["status"]["vcenter"], n) for x in granted
                for n in x["status"]["networks"]}
        assert keys == set(snap["nets"])
        for key, ids in snap["nets"].items():  # one install each: a group, or one request
            holders = [snap["leases"][i] for i in ids.split()]
            assert len({sharing(h) for h in holders}) == 1, (key, holders)
        for lease in granted:
            vlans = [n["vlan"] for n in lease["status"]["networks"]]
            assert len(vlans) == len(set(vlans)) == lease["spec"]["networks"]
        assert sum(k.startswith("vcenter-1.example.com|") for k in keys) <= 4
        assert sum(k.startswith("vcenter-3.example.com|") for k in keys) <= 3
        event(f"{len(keys)} networks held")
    finally:
        # the fixtures run once for all the examples: an example that failed must leave
        # nothing held, or every later one (hypothesis's replays too) is refused for want of
        # the networks it kept. The one placement worker takes tasks in the order sent: this
        # release comes after every acquire above, answered or not.
        released = call(client_app, "vcm.release", owner=owner)
    assert sorted(released) == sorted(x["metadata"]["name"] for x in granted)
    assert audit(ledger)["nets"] == {}


def test_two_pools_listing_one_port_group_share_it(upstream, client_app, ledger):
    """vcenter-3's three networks are listed by v3-c1 and v3-c2: three leases in all, on
    either pool, then no more until one is released."""
    leases = [call(client_app, "vcm.acquire", request={
        "vcpus": 1, "memory": 1, "required-pool": f"v3-c{1 + i % 2}"})[0] for i in range(3)]
    assert sorted(x["status"]["networks"][0]["port-group"] for x in leases) == [
        "ci-vlan-2200", "ci-vlan-2201", "ci-vlan-2202"]
    assert all(x["status"]["networks"][0]["pod"] == "dal12.pod03" for x in leases)
    r = client_app.send_task("vcm.acquire", kwargs={"request": {
        "vcpus": 1, "memory": 1, "required-pool": "v3-c2"}}, queue="placement")
    with pytest.raises(Exception) as info:
        r.get(timeout=20)
    assert type(info.value).__name__ == "NoCapacity"
    assert "insufficient networks" in info.value.details["reasons"]["v3-c2"]
    call(client_app, "vcm.release", lease_ids=[leases[0]["metadata"]["name"]])
    again = call(client_app, "vcm.acquire", request={"vcpus": 1, "memory": 1,
                                                     "required-pool": "v3-c2"})[0]
    assert again["status"]["networks"] == leases[0]["status"]["networks"]
    check_invariants(ledger, upstream)
    pools = {p["spec"]["name"]: p for p in call(client_app, "vcm.show_pools")}
    st_ = pools["v3-c1"]["status"]  # its 3 single-tenant networks held, 4 slices free
    assert (st_["networks-used"], st_["networks-total"]) == (3, 7)
    assert st_["network-usage"] == round(3 / 7, 4)


def test_one_pool_capped_at_three_vcenters_is_granted(client_app, ledger, pools_file):
    """What upstream's CI step sends by default: `pools: 1, vcenters: 3`."""
    req = {"vcpus": 24, "memory": 96, "storage": 700, "pools": 1, "vcenters": 3,
           "labels": {"boskos-lease-id": "b-1"}}
    (lease,) = call(client_app, "vcm.acquire", request=req)
    assert lease["spec"]["vcenters"] == 3 and lease["spec"]["pools"] == 1
    (pinned,) = call(client_app, "vcm.acquire", request={**req, "required-pool": "pool3",
                                                          "vcpus": 12, "memory": 48})
    assert pinned["status"]["pool"] == "pool3"
    est = call(client_app, "vcm.estimate", request=req)
    assert est["fits"] >= 1
    check_invariants(ledger, {p.name: p for p in load_pools(str(pools_file))})


def test_a_lease_carries_the_network_details_a_job_step_reads(upstream, client_app, ledger):
    from workers.core.models import entry_addresses

    (lease,) = call(client_app, "vcm.acquire", request={"vcpus": 1, "memory": 1,
                                                        "required-pool": "v1-c2"})
    (net,) = lease["status"]["networks"]
    assert net["port-group"] == "ci-vlan-1200"  # listed in full under v1-c1 only
    assert {k: net[k] for k in ("machine-network-cidr", "ipv6-cidr", "ipv6-start", "router",
                                "datacenter", "pod", "nameservers")} == {
        "machine-network-cidr": "10.12.0.0/25", "ipv6-cidr": "fd65:a1a8:60ad:1200::/64",
        "ipv6-start": "fd65:a1a8:60ad:1200::4", "router": "r1.dal10.pod01.example.com",
        "datacenter": "dal10", "pod": "dal10.pod01", "nameservers": ["10.0.80.11",
                                                                    "10.0.80.12"]}
    assert entry_addresses(net)[2:4] == ["10.12.0.2", "10.12.0.3"]  # the VIPs
    (second,) = call(client_app, "vcm.acquire", request={"vcpus": 1, "memory": 1,
                                                         "required-pool": "v1-c1"})
    net2 = second["status"]["networks"][0]
    assert "ip-addresses" not in net2 and entry_addresses(net2)[1:4] == [
        "10.12.1.1", "10.12.1.2", "10.12.1.3"]


def test_an_install_lands_on_one_vlan(upstream, client_app, ledger, pools_file):
    """The CI step's shape: one lease per pool, sent at once, all with the install's
    boskos-lease-id. Another install holds VLAN 1200 on vcenter-1, so the first lease takes
    1201 there; the others follow it to 1201 (on vcenter-2, 1200 is free and comes first),
    and the two leases on vcenter-1 share its port group."""
    (theirs,) = call(client_app, "vcm.acquire", request={"vcpus": 1, "memory": 1,
                                                         "required-pool": "v1-c1"})
    assert theirs["status"]["networks"][0]["vlan"] == 1200
    label = {"boskos-lease-id": "ci-op-1234"}
    sent = [client_app.send_task("vcm.acquire", queue="placement", kwargs={"request": {
        "vcpus": 8, "memory": 32, "required-pool": pool, "labels": label}})
        for pool in ("v1-c1", "v2-c1", "v1-c2")]
    leases = [r.get(timeout=30)[0] for r in sent]
    assert [x["status"]["networks"][0]["vlan"] for x in leases] == [1201, 1201, 1201]
    snap = check_invariants(ledger, upstream)
    shared = snap["nets"]["vcenter-1.example.com|ci-vlan-1201|dal10.pod01"].split()
    assert sorted(shared) == sorted(x["metadata"]["name"] for x in leases
                                    if x["status"]["vcenter"] == "vcenter-1.example.com")
    # one multi-pool request on the dal10 pools: one VLAN, the first free on all of them
    data = yaml.safe_load(pools_file.read_text())
    for p in data["pools"]:
        p["no-schedule"] = p["pod"] != "dal10.pod01"
    pools_file.write_text(yaml.safe_dump(data))
    multi = call(client_app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "pools": 3})
    assert {x["status"]["networks"][0]["vlan"] for x in multi} == {1202}
    released = call(client_app, "vcm.release", selector="boskos-lease-id=ci-op-1234")
    assert sorted(released) == sorted(x["metadata"]["name"] for x in leases)
    assert "vcenter-1.example.com|ci-vlan-1201|dal10.pod01" not in audit(ledger)["nets"]
    check_invariants(ledger, upstream)


def test_the_extra_nics_and_the_bastion_get_port_groups_of_their_own(upstream, client_app,
                                                                     ledger):
    """The CI step's install: its primary lease over three pools of one pod (one VLAN), then
    two extra-NIC leases and a bastion lease, network-only, with the same boskos-lease-id,
    sent at once. The primaries share their VLAN (and vcenter-1's port group); each
    network-only lease gets a port group nobody else holds: not another's, not the
    primaries'."""
    label = {"boskos-lease-id": "vsphere-elastic-7"}
    primary = call(client_app, "vcm.acquire", request={
        "vcpus": 8, "memory": 32, "pools": 3, "vcenters": 2, "labels": label,
        "owner": "e2e", "request-id": "vsphere-elastic-7-primary"})
    assert len(primary) == 3
    assert len({(n["pod"], n["vlan"]) for x in primary for n in x["status"]["networks"]}) == 1
    on_vc1 = [net_key(x["status"]["vcenter"], x["status"]["networks"][0]) for x in primary
              if x["status"]["vcenter"] == "vcenter-1.example.com"]
    assert len(on_vc1) == 2 and len(set(on_vc1)) == 1  # two failure domains, one port group
    extra = [{"VSPHERE_EXTRA_LEASED_RESOURCE": str(i)} for i in (1, 2)]
    bastion = {"VSPHERE_BASTION_LEASED_RESOURCE": "bcr-1"}
    sent = [client_app.send_task("vcm.acquire", queue="placement", kwargs={"request": {
        "vcpus": 0, "memory": 0, "networks": 1, "owner": "e2e", "labels": {**label, **extra_},
        "request-id": f"vsphere-elastic-7-{name}"}})
        for name, extra_ in (("extra-1", extra[0]), ("extra-2", extra[1]),
                             ("bastion", bastion))]
    net_only = [r.get(timeout=30)[0] for r in sent]
    keys = [net_key(x["status"]["vcenter"], x["status"]["networks"][0]) for x in net_only]
    assert len(set(keys)) == 3, keys  # the extra NICs and the bastion: three networks
    primary_keys = {net_key(x["status"]["vcenter"], n) for x in primary
                    for n in x["status"]["networks"]}
    assert not set(keys) & primary_keys
    snap = check_invariants(ledger, upstream)
    for key, x in zip(keys, net_only, strict=True):
        assert snap["nets"][key] == x["metadata"]["name"]  # its holder alone
    # vcenter-3's single-tenant networks are theirs now: one more network-only lease of the
    # install takes a free port group elsewhere, never the VLAN 1200 the primaries hold
    (more,) = call(client_app, "vcm.acquire", request={
        "vcpus": 0, "memory": 0, "owner": "e2e", "labels": label, "request-id": "more"})
    key = net_key(more["status"]["vcenter"], more["status"]["networks"][0])
    assert key not in primary_keys | set(keys) and snap["nets"].get(key) is None
    released = call(client_app, "vcm.release", selector="boskos-lease-id=vsphere-elastic-7",
                    owner="e2e")
    assert len(released) == 7
    assert audit(ledger)["nets"] == {}


def _own(lease: dict) -> set[str]:
    """The addresses a lease's slices give it: after [0] and [1] (the network's)."""
    return {a for n in lease["status"]["networks"] for a in n["ip-addresses"][2:]}


def test_slices_are_leased_one_by_one_and_never_overlap(upstream, client_app, ledger,
                                                        pools_file):
    """vcenter-3's multi-tenant VLAN 2210 in 4 slices: six multi-tenant acquires at once get
    four distinct slices whose addresses do not overlap (the other two: NoCapacity); then the
    pools file splits it in 2 while they are held, and no new slice overlaps a held one."""
    mt = {"vcpus": 1, "memory": 1, "network-type": "multi-tenant"}
    sent = [client_app.send_task("vcm.acquire", queue="placement", kwargs={"request": {
        **mt, "required-pool": f"v3-c{1 + i % 2}"}}) for i in range(6)]
    leases, refused = [], 0
    for r in sent:
        try:
            leases += r.get(timeout=30)
        except Exception as exc:  # noqa: BLE001 - NoCapacity only
            assert type(exc).__name__ == "NoCapacity", exc
            refused += 1
    assert (len(leases), refused) == (4, 2)
    slices = [x["status"]["networks"][0] for x in leases]
    assert sorted(n["slice"] for n in slices) == ["10.22.10.10-10.22.10.16",
                                                 "10.22.10.17-10.22.10.23",
                                                 "10.22.10.2-10.22.10.9",
                                                 "10.22.10.24-10.22.10.30"]
    owns = [_own(x) for x in leases]
    assert sum(map(len, owns)) == len(set().union(*owns)) == 29  # disjoint, all of them
    for n in slices:  # [0], [1]: the network's; [2], [3]: the slice's own VIPs
        assert n["ip-addresses"][:2] == ["10.22.10.0", "10.22.10.1"]
        assert n["ip-addresses"][2] == n["slice"].split("-")[0]
    check_invariants(ledger, upstream)
    # split anew in 2 while the 4 slices are held: both new slices overlap held ones
    data = yaml.safe_load(pools_file.read_text())
    data["pools"][3]["networks"][3]["slices"] = 2
    pools_file.write_text(yaml.safe_dump(data))
    r = client_app.send_task("vcm.acquire", queue="placement", kwargs={"request": {
        **mt, "required-pool": "v3-c1"}})
    with pytest.raises(Exception) as info:
        r.get(timeout=20)
    assert type(info.value).__name__ == "NoCapacity"
    by_range = {x["status"]["networks"][0]["slice"]: x["metadata"]["name"] for x in leases}
    # the old slices .2-.9 and .10-.16 end: the new first half (.2-.16) is free; the old
    # .17-.23 is still held, so the new second half (.17-.30) is not
    call(client_app, "vcm.release", lease_ids=[by_range["10.22.10.2-10.22.10.9"],
                                               by_range["10.22.10.10-10.22.10.16"]])
    (half,) = call(client_app, "vcm.acquire", request={**mt, "required-pool": "v3-c1"})
    assert half["status"]["networks"][0]["slice"] == "10.22.10.2-10.22.10.16"
    held = [x for x in leases if x["metadata"]["name"] in audit(ledger)["leases"]]
    assert not _own(half) & set().union(*map(_own, held))
    r = client_app.send_task("vcm.acquire", queue="placement", kwargs={"request": {
        **mt, "required-pool": "v3-c2"}})
    with pytest.raises(Exception) as info:
        r.get(timeout=20)
    assert type(info.value).__name__ == "NoCapacity"
