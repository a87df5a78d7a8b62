"""The files a CI step writes into SHARED_DIR, built from leases (workers/core/step_files.py),
without workers: which files, what they hold, and what is refused before anything is
written. The whole step, through real workers and read back by bash and jq, is
tests/outside/test_job_step.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.core.grants import make_lease, make_leases
from workers.core.lease import Lease
from workers.core.models import Network, Pool
from workers.core.parsing import parse_request
from workers.core.pools import parse_pools
from workers.core.step_files import (
    Install,
    StepFilesError,
    file_name,
    install_of,
    stale,
    step_files,
)

ROOT = Path(__file__).resolve().parents[2]
POOLS = {p.name: p for p in parse_pools(
    yaml.safe_load((ROOT / "examples" / "pools-upstream.yaml").read_text()), "pools-upstream")}
ACCOUNTS = {f"vcenter-{i}.example.com": (f"user-{i}", f"pw-{i}") for i in (1, 2, 3)}


def net(pool: str, port_group: str) -> Network:
    return next(n for n in POOLS[pool].networks if n.port_group == port_group)


def views(pools: dict[str, Pool] = POOLS) -> list[dict[str, Any]]:
    """The pools as vcm.show_pools answers them."""
    return [{"spec": p.spec(), "status": {}} for p in pools.values()]


def request(**fields: Any) -> Any:
    labels = {"boskos-lease-id": "b-1", **fields.pop("labels", {})}
    return parse_request({"vcpus": 8, "memory": 32, "labels": labels, **fields},
                         default_owner="job")


def install_leases() -> list[dict[str, Any]]:
    """A request of two pools on one VLAN, and an extra NIC's network-only lease."""
    primary = make_leases(["l1", "l2"], request(pools=2, **{"request-id": "r1"}),
                          [(POOLS["v1-c1"], [net("v1-c1", "ci-vlan-1200")]),
                           (POOLS["v2-c1"], [net("v2-c1", "ci-vlan-1200")])], 0)
    extra = make_lease("l3", request(vcpus=0, memory=0, labels={
        "VSPHERE_EXTRA_LEASED_RESOURCE": "1"}, **{"request-id": "r2"}),
        POOLS["v1-c1"], [net("v1-c1", "ci-vlan-1201")], 1)
    return [*primary, extra]


def built(leases: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    files = step_files(install_of(leases or install_leases(), views()), ACCOUNTS, "/shared",
                       **kw)
    return {f.name: f for f in files}


def test_a_multi_pool_install_gives_every_file_the_ci_step_writes():
    files = built(multi_nic=True)
    assert set(files) == {
        "LEASE_l1.json", "LEASE_l3.json", "LEASE_single.json",
        "POOL_v1-c1.json", "POOL_v2-c1.json", "POOL_single.json",
        *(f for f in files if f.startswith("NETWORK_")),
        "subnets.json", "platform.json", "platform.yaml", "govc.sh", "vsphere_context.sh"}
    assert len([f for f in files if f.startswith("NETWORK_")]) == 4  # 3 held + single
    single = json.loads(files["LEASE_single.json"].text)
    assert single == json.loads(files["LEASE_l1.json"].text)
    assert [d["name"] for d in single["status"]["poolInfo"]] == ["v1-c1", "v2-c1"]
    platform = json.loads(files["platform.json"].text)
    assert [d["name"] for d in platform["failureDomains"]] == ["v1-c1", "v2-c1"]
    # with --multi-nic, the extra NIC's port group is every domain's second network
    assert [d["topology"]["networks"] for d in platform["failureDomains"]] \
        == [["ci-vlan-1200", "ci-vlan-1201"]] * 2
    assert platform["vcenters"] == [
        {"server": "vcenter-1.example.com", "user": "user-1", "password": "pw-1",
         "datacenters": ["dc-1"]},
        {"server": "vcenter-2.example.com", "user": "user-2", "password": "pw-2",
         "datacenters": ["dc-2"]}]
    assert "export vsphere_extra_portgroup_1=ci-vlan-1201" in files["vsphere_context.sh"].text
    assert files["vsphere_context.sh"].text.startswith(files["govc.sh"].text)
    subnets = json.loads(files["subnets.json"].text)
    assert subnets["spec"]["portGroupName"] == "ci-vlan-1200"  # the single network at the top
    entry = subnets["r1.dal10.pod01.example.com"]["1201"]
    assert (entry["dnsServer"], entry["mask"], entry["cidr"]) == ("10.12.1.1",
                                                                  "255.255.255.128", 25)
    # dnsServer is the gateway, as the CI step writes it, also where nameservers are listed
    # (they are in the spec)
    entry = subnets["r1.dal10.pod01.example.com"]["1200"]
    assert entry["nameservers"] and entry["dnsServer"] == entry["gateway"] == "10.12.0.1"
    assert {f.name for f in files.values() if f.secret} \
        == {"platform.json", "platform.yaml", "govc.sh", "vsphere_context.sh"}
    # without --multi-nic, the domains have the leases' own networks only
    plain = json.loads(built()["platform.json"].text)
    assert [d["topology"]["networks"] for d in plain["failureDomains"]] \
        == [["ci-vlan-1200"]] * 2


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40),
       st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40))
def test_platform_yaml_reads_back_any_account_inside_install_config(user, password):
    """platform.yaml, written below `platform:` / `  vsphere:` as the install-config step
    does, reads back as platform.json whatever the account holds."""
    files = step_files(install_of(install_leases(), views()),
                       {**ACCOUNTS, "vcenter-1.example.com": (user, password)}, "/shared")
    by_name = {f.name: f.text for f in files}
    text = ("baseDomain: example.com\nplatform:\n  vsphere:\n" + by_name["platform.yaml"]
            + '    apiVIP: "10.0.0.2"\n')
    vsphere = yaml.safe_load(text)["platform"]["vsphere"]
    assert vsphere.pop("apiVIP") == "10.0.0.2"
    assert vsphere == json.loads(by_name["platform.json"])
    assert vsphere["vcenters"][0]["user"] == user
    assert vsphere["vcenters"][0]["password"] == password


def test_nothing_is_built_when_a_file_would_be_wrong():
    leases = install_leases()
    no_url = Lease.from_wire(leases[0]).evolve(env_vars='export GOVC_URL=""\n').to_wire()
    with pytest.raises(StepFilesError, match="set no GOVC_URL"):
        built([no_url, *leases[1:]])
    shell = Lease.from_wire(leases[0]).evolve(env_vars="export GOVC_URL=$(id)\n").to_wire()
    with pytest.raises(StepFilesError, match="envVars cannot be read"):
        built([shell, *leases[1:]])
    with pytest.raises(StepFilesError) as err:
        built(leases[2:])  # only the network-only lease
    assert err.value.option == "selector"
    with pytest.raises(StepFilesError) as err:
        step_files(install_of(leases, views()), {"vcenter-1.example.com": ("u", "p")}, "/s")
    assert err.value.option == "credentials" and "vcenter-2.example.com" in str(err.value)
    with pytest.raises(StepFilesError):
        step_files(Install((), {}, {}), ACCOUNTS, "/s")


def test_a_router_named_like_a_key_of_the_network_object_is_refused():
    pool = POOLS["v1-c1"]
    odd = Network("pg-x", vlan=7, cidr="10.9.0.0/24", gateway="10.9.0.1",
                  details=(("router", "spec"),), pod=pool.pod)
    lease = make_lease("l9", request(), pool, [odd], 0)
    with pytest.raises(StepFilesError, match="router 'spec'"):
        built([lease])


def test_a_name_that_is_no_file_name_is_refused():
    assert file_name("LEASE_", "abc-1") == "LEASE_abc-1.json"
    for name in ("", ".", "..", "a/b", "../x", "a\0b", "x" * 201):
        with pytest.raises(StepFilesError, match="cannot be part of a file name"):
            file_name("LEASE_", name)


def test_a_retried_step_removes_only_its_own_stale_files():
    written = list(built().values())
    existing = [f.name for f in written] + ["LEASE_gone.json", "NETWORK_gone.json",
                                             "POOL_gone.json", "LEASE_notes.txt",
                                             "install-config.yaml", "vips.txt"]
    assert stale(existing, written) == ["LEASE_gone.json", "NETWORK_gone.json",
                                        "POOL_gone.json"]


def test_a_pool_removed_from_the_configuration_is_described_by_its_lease():
    leases = install_leases()
    kept = {k: v for k, v in POOLS.items() if k != "v2-c1"}
    install = install_of(leases, views(kept))
    pool = install.pools["v2-c1"]
    assert pool["kind"] == "Pool" and pool["spec"]["server"] == "vcenter-2.example.com"
    files = {f.name for f in step_files(install, ACCOUNTS, "/s")}
    assert "POOL_v2-c1.json" in files


def test_the_resource_pool_is_the_ci_steps_unless_the_pools_own_is_asked_for():
    """`<computeCluster>/Resources/ipi-ci-clusters` by default, a UPI job's own child of
    Resources when named, each pool's configured one when asked: in govc.sh and in every
    failure domain; cloud_where_run as the CI step exports it."""
    for child, ends in (({}, "/Resources/ipi-ci-clusters"),
                        ({"child": "ci-op-x1-abc12"}, "/Resources/ci-op-x1-abc12")):
        files = built(**child)
        domains = json.loads(files["platform.json"].text)["failureDomains"]
        for d in domains:
            assert d["topology"]["resourcePool"] == d["topology"]["computeCluster"] + ends
        govc = files["govc.sh"].text
        rp = f"{domains[0]['topology']['computeCluster']}{ends}"
        assert f"export vsphere_resource_pool={rp}\n" in govc
        assert f"export GOVC_RESOURCE_POOL={rp}\n" in govc
        assert "export cloud_where_run=IBM\n" in govc
    own = built(child=None)
    for d in json.loads(own["platform.json"].text)["failureDomains"]:
        pool = POOLS[d["name"]]
        assert d["topology"]["resourcePool"] == \
            f"/{pool.datacenter}/host/{pool.cluster}/Resources"
    # a lone surrogate is a byte of argv that is not UTF-8: govc.sh could not hold it; "."
    # and ".." would make `<cluster>/Resources/..` the cluster itself
    for bad in ("", " ", "a/b", "x" * 81, "a\nb", "a\x85b", "a\u202eb", "a\udcffb", ".",
                ".."):
        with pytest.raises(StepFilesError) as err:
            built(child=bad)
        assert err.value.option == "resource-pool"
    assert built(child="a.b c-d_(1)")["govc.sh"].text.count("/Resources/a.b c-d_(1)'") == 2


def test_govc_trusts_the_certificates_given_else_checks_none_as_the_ci_step():
    insecure = built()["govc.sh"].text
    assert "export GOVC_INSECURE=1" in insecure and "GOVC_TLS_CA_CERTS" not in insecure
    trusted = built(ca_certs="/var/run/vault/ca bundle.pem")["govc.sh"].text
    assert "GOVC_INSECURE" not in trusted
    assert "export GOVC_TLS_CA_CERTS='/var/run/vault/ca bundle.pem'" in trusted
    assert "export SSL_CERT_FILE='/var/run/vault/ca bundle.pem'" in trusted
