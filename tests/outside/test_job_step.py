"""The example CI job step (examples/ci-job-step.sh), run as a job runs it: bash and `vcm`
against real workers with the upstream-shaped inventory (examples/pools-upstream.yaml). Its
SHARED_DIR is then read the way the steps after openshift/release's ipi-conf-vsphere-check-vcm
read it: bash sources govc.sh and vsphere_context.sh, jq runs the lookups those steps run on
subnets.json, the VIPs come from NETWORK_single.json, and install-config.yaml is put together
around platform.yaml as the install-config step does it."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.audit import audit
from tests.support.cli_session import CliSession
from tests.support.procs import ROOT
from tests.support.tools import missing
from workers.core.models import entry_addresses

SCRIPT = ROOT / "examples" / "ci-job-step.sh"
UPSTREAM = ROOT / "examples" / "pools-upstream.yaml"
ACCOUNTS = """# the vCenter accounts, as a pool's ci-auth-path file gives them
declare -a vcenter_usernames vcenter_passwords
vcenter_usernames=("ci-0@vsphere.local" 'ci-1@vsphere.local'
                   ci-2@vsphere.local "ci-3@vsphere.local")
vcenter_passwords=('p0: "quoted" #not-a-comment' "p1'single" 'p2$notexpanded' 'p3 { x }')
"""
CONTEXT_VARS = ("GOVC_URL", "GOVC_USERNAME", "GOVC_PASSWORD", "GOVC_DATACENTER",
                "GOVC_DATASTORE", "GOVC_NETWORK", "GOVC_RESOURCE_POOL", "GOVC_INSECURE",
                "vsphere_url", "vsphere_datacenter", "vsphere_datastore", "vsphere_cluster",
                "vsphere_portgroup", "vsphere_resource_pool", "vlanid", "primaryrouterhostname",
                "dns_server", "LEASE_PATH", "NETWORK_PATH", "cloud_where_run",
                "vsphere_bastion_portgroup", "vsphere_extra_portgroup_1",
                "vsphere_extra_portgroup_2")
IPI_RESOURCE_POOL = "ipi-ci-clusters"  # the CI step's, below each cluster's Resources


@pytest.fixture()
def upstream(ledger, pools_file) -> Path:
    """The upstream-shaped inventory as the workers' pools file (re-read on change)."""
    pools_file.write_text(UPSTREAM.read_text())
    return pools_file


@pytest.fixture()
def accounts(tmp_path) -> Path:
    path = tmp_path / "accounts.sh"
    path.write_text(ACCOUNTS)
    return path


def _vcm(stack, tmp_path: Path) -> Path:
    vcm = tmp_path / "vcm"
    if not vcm.exists():
        vcm.write_text(f"#!/bin/sh\nexec {sys.executable} -m workers.cli \"$@\" "
                       f"--redis-url {stack['redis'].url}\n")
        vcm.chmod(0o755)
    return vcm


def run_step(stack, tmp_path: Path, step: str, shared: Path,
             **env: str) -> subprocess.CompletedProcess:
    full = {**stack["env"], "VCM": str(_vcm(stack, tmp_path)), "SHARED_DIR": str(shared),
            "NAMESPACE": "ci-op-x1", "UNIQUE_HASH": "abc12", "JOB_NAME_SAFE": "e2e-vsphere",
            "WAIT": "30s", **env}
    return subprocess.run(["bash", str(SCRIPT), step], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=180)


def vcm(stack, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(_vcm(stack, tmp_path)), *args], cwd=ROOT, env=stack["env"],
                          capture_output=True, text=True, timeout=60)


def load(shared: Path, name: str) -> Any:
    return json.loads((shared / name).read_text())


def jq(*args: str) -> str:
    if shutil.which("jq") is None:
        missing("jq is not installed (the CI steps read subnets.json with it)")
    p = subprocess.run(["jq", *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, (args, p.stderr)
    return p.stdout.strip()


def sourced(shared: Path) -> dict[str, str]:
    """What a later step sees after `source govc.sh; source vsphere_context.sh` (set -u:
    nothing it reads may be unset)."""
    script = ('set -euo pipefail; source "$1/govc.sh"; source "$1/vsphere_context.sh"; '
              'for v in "${@:2}"; do printf "%s=%s\\0" "$v" "${!v-<unset>}"; done')
    p = subprocess.run(["bash", "-c", script, "-", str(shared), *CONTEXT_VARS],
                       capture_output=True, text=True, timeout=30, env={"PATH": os.defpath})
    assert p.returncode == 0, p.stderr
    return dict(pair.split("=", 1) for pair in p.stdout.split("\0") if pair)


def install_config(shared: Path, vips: list[str], machine_cidr: str) -> dict[str, Any]:
    """install-config.yaml put together as the install-config step does: platform.yaml
    below `platform:` and `  vsphere:`, then the VIPs, then the machine network."""
    text = ("baseDomain: vmc-ci.example.com\ncontrolPlane:\n  name: master\n  replicas: 3\n"
            "platform:\n  vsphere:\n" + (shared / "platform.yaml").read_text()
            + f'    apiVIP: "{vips[0]}"\n    ingressVIP: "{vips[1]}"\n'
            + f'networking:\n  machineNetwork:\n  - cidr: "{machine_cidr}"\n')
    return yaml.safe_load(text)


def vips_of(shared: Path) -> tuple[list[str], str]:
    """What the VIP step reads: NETWORK_single.json's ipAddresses[2] and [3] and its
    machineNetworkCidr."""
    spec = load(shared, "NETWORK_single.json")["spec"]
    return [spec["ipAddresses"][2], spec["ipAddresses"][3]], spec["machineNetworkCidr"]


def check_shared_dir(shared: Path, ledger, child: str = IPI_RESOURCE_POOL) -> dict[str, Any]:
    """Every file a later step reads, checked the way that step reads it; the resource pool
    is `child` below the cluster's Resources, as the CI step sets it. Returns what was read,
    for the test's own checks."""
    names = sorted(p.name for p in shared.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temporary files left
    leases = {n: load(shared, n) for n in names if n.startswith("LEASE_")}
    networks = {n: load(shared, n) for n in names if n.startswith("NETWORK_")}
    pools = {n: load(shared, n) for n in names if n.startswith("POOL_")}
    for obj, kind in [*((x, "Lease") for x in leases.values()),
                      *((x, "Network") for x in networks.values()),
                      *((x, "Pool") for x in pools.values())]:
        assert obj["apiVersion"] == "vspherecapacitymanager.splat.io/v1"
        assert obj["kind"] == kind
    # every lease file is a lease of the install, its objects all written
    single = leases.pop("LEASE_single.json")
    assert single["spec"]["vcpus"] > 0
    assert f"LEASE_{single['metadata']['name']}.json" in leases
    assert single == leases[f"LEASE_{single['metadata']['name']}.json"]
    for lease in leases.values():
        for ref in lease["metadata"]["ownerReferences"]:
            assert f"{ref['kind'].upper()}_{ref['name']}.json" in names, ref
        assert f"POOL_{lease['status']['name']}.json" in names
    # NETWORK_single.json: the network of the single lease's first Network reference
    first_net = next(r["name"] for r in single["metadata"]["ownerReferences"]
                     if r["kind"] == "Network")
    assert load(shared, "NETWORK_single.json") == networks[f"NETWORK_{first_net}.json"]
    assert load(shared, "POOL_single.json") == pools[f"POOL_{single['status']['name']}.json"]

    # govc.sh and vsphere_context.sh, sourced
    env = sourced(shared)
    assert env["GOVC_URL"] and env["GOVC_URL"] == single["status"]["server"]
    assert env["vsphere_url"] == env["GOVC_URL"]
    assert env["LEASE_PATH"] == str(shared / "LEASE_single.json")
    assert env["NETWORK_PATH"] == str(shared / "NETWORK_single.json")
    assert env["GOVC_INSECURE"] == "1"
    assert env["cloud_where_run"] == "IBM"  # the gather and deprovision steps read it
    pool = pools[f"POOL_{single['status']['name']}.json"]["spec"]
    assert env["vsphere_datacenter"] == env["GOVC_DATACENTER"] == pool["topology"]["datacenter"]
    assert env["vsphere_cluster"] == pool["topology"]["computeCluster"]
    assert env["GOVC_RESOURCE_POOL"] == env["vsphere_resource_pool"] \
        == f"{pool['topology']['computeCluster']}/Resources/{child}"
    net = load(shared, "NETWORK_single.json")["spec"]
    assert env["vsphere_portgroup"] == env["GOVC_NETWORK"] == net["portGroupName"]
    assert single["status"]["topology"]["networks"][0] \
        == f"/{env['vsphere_datacenter']}/network/{net['portGroupName']}"

    # subnets.json, looked up as the static-IP and load-balancer steps do
    subnets = shared / "subnets.json"
    prh, vlan = env["primaryrouterhostname"], env["vlanid"]
    assert jq("-e", "--arg", "PRH", prh, "--arg", "VLANID", vlan, ".[$PRH] | has($VLANID)",
              str(subnets)) == "true"
    entry = json.loads(jq("--arg", "PRH", prh, "--arg", "VLANID", vlan, ".[$PRH][$VLANID]",
                          str(subnets)))
    assert entry["dnsServer"] == net["gateway"]  # as the CI step writes it
    assert entry["gateway"] == net["gateway"] and entry["mask"] == net["netmask"]
    assert entry["cidr"] == ipaddress.ip_network(net["machineNetworkCidr"]).prefixlen
    assert entry["ipAddresses"] == net["ipAddresses"]
    assert entry["StartIPv6Address"] == net["startIPv6Address"]
    assert entry["CidrIPv6"] == net["cidrIPv6"]
    # the MetalLB step reads the single network's spec at the top of subnets.json
    assert jq("-r", ".spec.machineNetworkCidr", str(subnets)) == net["machineNetworkCidr"]
    # every network the install holds is there, under its router and VLAN
    by_router = {k: v for k, v in json.loads(subnets.read_text()).items()
                 if k not in ("apiVersion", "kind", "metadata", "spec")}
    held = {(n["spec"]["primaryRouterHostname"], n["spec"]["vlanId"])
            for n in networks.values()}
    assert {(r, v) for r, vlans in by_router.items() for v in vlans} == held

    # the VIPs: inside the machine network, neither its network address nor the gateway,
    # and no other install's lease holds them
    vips, machine_cidr = vips_of(shared)
    machine = ipaddress.ip_network(machine_cidr)
    assert len(set(vips)) == 2
    for vip in vips:
        address = ipaddress.ip_address(vip)
        assert address in machine and address != machine.network_address
        assert vip != net["gateway"]
    ours = {x["metadata"]["name"] for x in leases.values()}
    for lease_id, lease in audit(ledger)["leases"].items():
        if lease_id in ours or lease["status"]["labels"].get("boskos-lease-id") \
                == single["metadata"]["labels"]["boskos-lease-id"]:
            continue
        for n in lease["status"]["networks"]:  # listed, a slice's, or the cidr's
            assert not set(vips) & set(entry_addresses(n)), (lease_id, n)

    # platform.json, and platform.yaml as the install-config step embeds it
    platform = load(shared, "platform.json")
    config = install_config(shared, vips, machine_cidr)
    vsphere = config["platform"]["vsphere"]
    assert {k: vsphere[k] for k in ("vcenters", "failureDomains")} == platform
    assert vsphere["apiVIP"] == vips[0] and config["networking"]["machineNetwork"] \
        == [{"cidr": machine_cidr}]
    for vc in vsphere["vcenters"]:
        assert set(vc) == {"server", "user", "password", "datacenters"}
        assert vc["user"] and vc["password"] and vc["datacenters"]
    servers = {vc["server"]: vc for vc in vsphere["vcenters"]}
    assert servers[env["GOVC_URL"]]["user"] == env["GOVC_USERNAME"]
    assert servers[env["GOVC_URL"]]["password"] == env["GOVC_PASSWORD"]
    for fd in vsphere["failureDomains"]:
        assert set(fd) >= {"name", "region", "zone", "server", "topology"}
        assert fd["server"] in servers
        assert fd["topology"]["datacenter"] in servers[fd["server"]]["datacenters"]
        assert set(fd["topology"]) >= {"computeCluster", "datacenter", "datastore",
                                       "networks", "resourcePool"}
        assert fd["topology"]["resourcePool"] \
            == f"{fd['topology']['computeCluster']}/Resources/{child}"
        assert fd["topology"]["computeCluster"].startswith(f"/{fd['topology']['datacenter']}/")
        assert all("/" not in n for n in fd["topology"]["networks"])  # port group names
        assert f"POOL_{fd['name']}.json" in names
    # one install, one subnet: the failure domains of one pod (their pools share its VLANs)
    # are on one VLAN, the single lease's where they share its pod
    vlans: dict[str, set[str]] = {}
    for fd in vsphere["failureDomains"]:
        pod = pools[f"POOL_{fd['name']}.json"]["spec"]["ibmPoolSpec"]["pod"]
        spec = next(n["spec"] for n in networks.values()
                    if n["spec"]["portGroupName"] == fd["topology"]["networks"][0]
                    and n["spec"].get("podName") == pod)
        vlans.setdefault(pod, set()).add(spec["vlanId"])
    assert all(len(v) == 1 for v in vlans.values()), vlans
    assert vlans[pool["ibmPoolSpec"]["pod"]] == {vlan}
    # the files with passwords are the owner's alone
    for name in ("platform.json", "platform.yaml", "govc.sh", "vsphere_context.sh"):
        assert stat.S_IMODE((shared / name).stat().st_mode) == 0o600, name
    return {"env": env, "single": single, "leases": leases, "networks": networks,
            "pools": pools, "platform": platform}


def held(ledger) -> list[dict[str, Any]]:
    """The ledger's leases, in their order (leased-at, id)."""
    leases = audit(ledger)["leases"].values()
    return sorted(leases, key=lambda x: (x["status"]["leased-at"], x["metadata"]["name"]))


def test_named_pools_with_extra_nics_and_a_bastion(stack, ledger, upstream, accounts,
                                                   tmp_path):
    """POOLS names three pools of one pod: three leases with the cores and memory divided,
    on one VLAN; two extra-NIC leases and a bastion lease, network-only; the files read as
    the later steps read them; a retried step changes nothing; release frees everything."""
    shared = tmp_path / "shared"
    env = {"LEASED_RESOURCE": "vsphere-elastic-7", "POOLS": "v1-c1 v1-c2 v2-c1",
           "VSPHERE_EXTRA_LEASED_RESOURCE": "x y", "VSPHERE_BASTION_LEASED_RESOURCE": "bcr-1",
           "VCENTER_CREDENTIALS": str(accounts), "JOB_LINK": "https://prow.example/view/7"}
    p = run_step(stack, tmp_path, "acquire", shared, **env)
    assert p.returncode == 0, p.stderr
    ledger_leases = held(ledger)
    assert len(ledger_leases) == 6
    primary = [x for x in ledger_leases if x["spec"]["vcpus"]]
    extra = [x for x in ledger_leases
             if "VSPHERE_EXTRA_LEASED_RESOURCE" in x["status"]["labels"]]
    bastion = [x for x in ledger_leases
               if x["status"]["labels"].get("VSPHERE_BASTION_LEASED_RESOURCE") == "bcr-1"]
    assert sorted(x["status"]["pool"] for x in primary) == ["v1-c1", "v1-c2", "v2-c1"]
    assert {(x["spec"]["vcpus"], x["spec"]["memory"]) for x in primary} == {(8, 32)}
    assert sorted(x["status"]["labels"]["VSPHERE_EXTRA_LEASED_RESOURCE"] for x in extra) \
        == ["1", "2"]
    assert len(bastion) == 1
    for x in extra + bastion:
        assert (x["spec"]["vcpus"], x["spec"]["memory"]) == (0, 0)
        assert "cluster-id" not in x["status"]["labels"]
    for x in ledger_leases:
        labels = x["status"]["labels"]
        assert labels["boskos-lease-id"] == "vsphere-elastic-7"
        assert labels["job-name"] == "e2e-vsphere"
        assert labels["vsphere-capacity-manager.splat-team.io/lease-namespace"] == "ci-op-x1"
        assert x["status"]["owner"] == "e2e-vsphere"
        assert x["status"]["job-link"] == "https://prow.example/view/7"
    assert {x["status"]["labels"]["cluster-id"] for x in primary} == {"ci-op-x1-abc12"}
    # three pools of one pod: one VLAN for the install's failure domains
    assert len({(n["pod"], n["vlan"]) for x in primary for n in x["status"]["networks"]}) == 1
    # the extra NICs and the bastion: each a network of its own, held by nobody else (never
    # a port group of the primaries, nor of one another)
    def network(x: dict[str, Any]) -> tuple[str, str, str]:
        (n,) = x["status"]["networks"]
        return (x["status"]["vcenter"], n["port-group"], n.get("pod") or "")

    own = [network(x) for x in extra + bastion]
    assert len(set(own)) == 3, own
    assert not set(own) & {(x["status"]["vcenter"], n["port-group"], n.get("pod") or "")
                           for x in primary for n in x["status"]["networks"]}

    read = check_shared_dir(shared, ledger)
    assert len(read["leases"]) == 6  # one per request: each lease asked on its own
    # the pool each primary lease named, where the CI step reads it (.spec."required-pool")
    files = read["leases"].values()
    assert sorted(x["spec"]["required-pool"] for x in files if "vcpus" in x["spec"]) \
        == ["v1-c1", "v1-c2", "v2-c1"]
    assert all(x["spec"]["required-pool"] == x["status"]["name"] for x in files
               if "vcpus" in x["spec"])
    assert not [x for x in files if "vcpus" not in x["spec"] and "required-pool" in x["spec"]]
    assert len(read["platform"]["failureDomains"]) == 3  # the bastion's pool is no domain
    assert {vc["server"] for vc in read["platform"]["vcenters"]} \
        == {"vcenter-1.example.com", "vcenter-2.example.com"}
    # the extra NICs and the bastion named in vsphere_context.sh, by their own port groups
    env_ = read["env"]
    port_groups = {x["status"]["networks"][0]["port-group"] for x in extra}
    assert len(port_groups) == 2
    assert {env_["vsphere_extra_portgroup_1"], env_["vsphere_extra_portgroup_2"]} == port_groups
    assert env_["vsphere_bastion_portgroup"] \
        == bastion[0]["status"]["networks"][0]["port-group"]
    # the account: one of the file's pairs, the same wherever it is written
    pairs = {(f"ci-{i}@vsphere.local", pw) for i, pw in enumerate(
        ['p0: "quoted" #not-a-comment', "p1'single", "p2$notexpanded", "p3 { x }"])}
    assert (env_["GOVC_USERNAME"], env_["GOVC_PASSWORD"]) in pairs

    # run again, as a retried step does: the same leases, the same files byte for byte
    before = {f.name: f.read_bytes() for f in shared.iterdir()}
    p = run_step(stack, tmp_path, "acquire", shared, **env)
    assert p.returncode == 0, p.stderr
    assert held(ledger) == ledger_leases
    assert {f.name: f.read_bytes() for f in shared.iterdir()} == before

    p = run_step(stack, tmp_path, "release", shared, **env)
    assert p.returncode == 0, p.stderr
    assert sorted(json.loads(p.stdout)) == sorted(x["metadata"]["name"] for x in ledger_leases)
    assert held(ledger) == []


def test_pool_count_with_a_selector_two_networks_and_multi_nic_for_a_upi_job(
        stack, ledger, upstream, accounts, tmp_path):
    """No POOLS: one lease of POOL_COUNT pools matching POOL_SELECTOR, the cores and memory
    divided, on at most 3 vCenters, two networks per pool (VSPHERE_MULTI_NETWORKS): one Lease
    object listing both pools in poolInfo, a failure domain per pool. MULTI_NIC_IPI: one
    extra NIC's network-only lease, its port group every failure domain's second network. A
    -upi job: the resource pool is the job's own, $NAMESPACE-$UNIQUE_HASH."""
    shared = tmp_path / "shared"
    env = {"LEASED_RESOURCE": "vsphere-elastic-8", "POOL_COUNT": "2",
           "POOL_SELECTOR": "region=us-south", "VSPHERE_MULTI_NETWORKS": "true",
           "MULTI_NIC_IPI": "true", "JOB_NAME_SAFE": "e2e-vsphere-upi",
           "VCENTER_CREDENTIALS": str(accounts)}
    p = run_step(stack, tmp_path, "acquire", shared, **env)
    assert p.returncode == 0, p.stderr
    leases = [x for x in held(ledger) if x["spec"]["vcpus"]]
    (extra,) = [x for x in held(ledger) if not x["spec"]["vcpus"]]
    assert extra["status"]["labels"]["VSPHERE_EXTRA_LEASED_RESOURCE"] == "1"
    assert len(leases) == 2 and len({x["status"]["vcenter"] for x in leases}) == 2
    for x in leases:
        assert (x["spec"]["vcpus"], x["spec"]["memory"]) == (12, 48)
        assert (x["spec"]["pools"], x["spec"]["vcenters"]) == (2, 3)
        assert len(x["status"]["networks"]) == 2  # on two VLANs: never one VLAN twice
        assert len({n["vlan"] for n in x["status"]["networks"]}) == 2
    read = check_shared_dir(shared, ledger, child="ci-op-x1-abc12")
    assert len(read["leases"]) == 2  # the request's two leases: one Lease object; the NIC's
    (lease,) = [x for x in read["leases"].values() if "vcpus" in x["spec"]]
    assert lease["spec"]["pools"] == 2 and lease["spec"]["networks"] == 2
    assert "required-pool" not in lease["spec"]
    info = lease["status"]["poolInfo"]
    assert [d["name"] for d in info] == [x["status"]["pool"] for x in leases]
    domains = read["platform"]["failureDomains"]
    assert [d["name"] for d in domains] == [d["name"] for d in info]
    nic = extra["status"]["networks"][0]["port-group"]
    assert read["env"]["vsphere_extra_portgroup_1"] == nic
    for domain, x in zip(domains, leases, strict=True):
        assert domain["server"] == x["status"]["vcenter"]
        assert domain["topology"]["networks"] \
            == [x["status"]["networks"][0]["port-group"], nic]
    assert run_step(stack, tmp_path, "release", shared, **env).returncode == 0
    assert held(ledger) == []


def test_a_selector_no_pool_matches_is_refused_and_leases_nothing(stack, ledger, upstream,
                                                                   accounts, tmp_path):
    shared = tmp_path / "shared"
    p = run_step(stack, tmp_path, "acquire", shared, LEASED_RESOURCE="vsphere-elastic-9",
                 POOL_SELECTOR="region=nowhere", VCENTER_CREDENTIALS=str(accounts))
    assert p.returncode == 2, p.stderr
    assert "pool-selector" in p.stderr
    assert held(ledger) == [] and not any(shared.glob("*"))
    for count in ("0", "x", "-1", "1e3", "10000"):
        p = run_step(stack, tmp_path, "acquire", shared, LEASED_RESOURCE="vsphere-elastic-9",
                     POOL_COUNT=count)
        assert p.returncode == 2 and "POOL_COUNT" in p.stderr, (count, p.stderr)
    assert held(ledger) == []


def test_multi_tenant_installs_get_their_own_vips(stack, ledger, upstream, accounts, tmp_path):
    """Two installs on slices of one multi-tenant VLAN: the same machine network, each its
    own VIPs, inside its own slice; neither holds the other's."""
    vips = []
    for boskos in ("vsphere-elastic-20", "vsphere-elastic-21"):
        shared = tmp_path / boskos
        p = run_step(stack, tmp_path, "acquire", shared, LEASED_RESOURCE=boskos,
                     POOLS="v3-c1", NETWORK_TYPE="multi-tenant",
                     VCENTER_CREDENTIALS=str(accounts))
        assert p.returncode == 0, p.stderr
        check_shared_dir(shared, ledger)
        pair, machine = vips_of(shared)
        assert machine == "10.22.10.0/27"
        slice_ = next(x for x in held(ledger) if x["status"]["labels"]["boskos-lease-id"]
                      == boskos)["status"]["networks"][0]["slice"]
        first, last = (ipaddress.ip_address(a) for a in slice_.split("-"))
        assert all(first <= ipaddress.ip_address(v) <= last for v in pair), (pair, slice_)
        vips.append(set(pair))
    assert not vips[0] & vips[1]


def test_accounts_from_each_pools_ci_auth_path(stack, ledger, pools_file, tmp_path):
    """Without --credentials, each vCenter's account comes from the file its pool's
    ci-auth-path annotation names; a pool without one, or a file that is not there, is
    refused naming --credentials, and nothing is written."""
    pools = yaml.safe_load(UPSTREAM.read_text())
    for pool in pools["pools"]:
        vc = pool["vcenter"].split(".")[0]
        path = tmp_path / f"secrets-{vc}.sh"
        path.write_text(f"vcenter_usernames=(ci@{vc} ci2@{vc})\n"
                        f"vcenter_passwords=('pw-{vc}' 'pw2-{vc}')\n")
        pool["annotations"] = {"ci-auth-path": str(path)}
    pools_file.write_text(yaml.safe_dump(pools))
    shared = tmp_path / "shared"
    env = {"LEASED_RESOURCE": "vsphere-elastic-30", "POOLS": "v1-c1 v2-c1"}
    p = run_step(stack, tmp_path, "acquire", shared, **env)
    assert p.returncode == 0, p.stderr
    read = check_shared_dir(shared, ledger)
    for vc in read["platform"]["vcenters"]:
        short = vc["server"].split(".")[0]
        assert (vc["user"], vc["password"]) in {(f"ci@{short}", f"pw-{short}"),
                                                 (f"ci2@{short}", f"pw2-{short}")}
    # the file of vcenter-2 gone: refused, naming the option and the annotation
    (tmp_path / "secrets-vcenter-2.sh").unlink()
    before = {f.name: f.read_bytes() for f in shared.iterdir()}
    p = vcm(stack, tmp_path, "leases", "-l", "boskos-lease-id=vsphere-elastic-30",
            "-o", "lease-files", str(shared))
    assert p.returncode == 2, p.stderr
    assert "--credentials" in p.stderr and "ci-auth-path" in p.stderr
    assert "secrets-vcenter-2.sh: no such file" in p.stderr
    assert {f.name: f.read_bytes() for f in shared.iterdir()} == before
    # a pool with no annotation at all
    for pool in pools["pools"]:
        pool.pop("annotations")
    pools_file.write_text(yaml.safe_dump(pools))
    for _ in range(100):  # the workers re-read the pools file
        p = vcm(stack, tmp_path, "leases", "-l", "boskos-lease-id=vsphere-elastic-30",
                "-o", "lease-files", str(shared))
        if "has no ci-auth-path annotation" in p.stderr:
            break
    assert p.returncode == 2 and "--credentials" in p.stderr, p.stderr
    assert {f.name: f.read_bytes() for f in shared.iterdir()} == before


def _unwritable_dir(tmp_path: Path) -> str | None:
    """A directory this process cannot create files in: one made read-only (not for root,
    who writes anyway), else sysfs."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    for candidate in (str(ro), "/sys/kernel", "/sys"):
        try:
            fd, name = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(name)
    return None


@pytest.fixture()
def cli(stack) -> Iterator[CliSession]:
    """One process that runs many `vcm` command lines (tests/support/cli_session.py)."""
    with CliSession(stack["env"]) as session:
        yield session


def test_lease_files_refuses_hostile_input_and_writes_nothing(stack, ledger, upstream, accounts,
                                                              cli, tmp_path):
    """Bad directories, bad or missing accounts files and bad option combinations: exit 2 with
    the option named, no password shown, and DIR as it was. The refusals run in one CLI
    session process, two of them (one before and one after asking the workers) through a
    `vcm` process of their own."""
    sel = "boskos-lease-id=vsphere-elastic-40"
    acquire = ("acquire", "--vcpus", "4", "--memory", "16", "--owner", "job", "--label", sel,
               "--required-pool", "v1-c1", "-q", "-o", "json")
    assert vcm(stack, tmp_path, *acquire).returncode == 0
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "LEASE_old.json").write_text("{}")  # an earlier run's file, kept on failure
    (shared / "unrelated.txt").write_text("x")
    before = {f.name: f.read_bytes() for f in shared.iterdir()}

    def refused(*args: str, says: str, process: bool = False) -> None:
        """`process`: through a `vcm` process of its own; else the session's."""
        p = (vcm(stack, tmp_path, "leases", *args) if process else
             cli.run("leases", *args, "--redis-url", stack["redis"].url))
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert says in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr and "p1'single" not in p.stderr
        assert {f.name: f.read_bytes() for f in shared.iterdir()} == before

    files = ("-l", sel, "-o", "lease-files")
    creds = ("--credentials", str(accounts))
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    refused(*files, str(a_file), *creds, says="DIR: ", process=True)
    refused(*files, str(a_file / "below"), *creds, says="DIR: ")
    refused(*files, str(tmp_path / ("x" * 5000)), *creds, says="DIR: ")
    unwritable = _unwritable_dir(tmp_path)
    if unwritable is not None:
        refused(*files, unwritable, *creds, says="DIR: cannot write into")
    refused("-o", "lease-files", str(shared), *creds, says="selector")
    refused(*files, *creds, says="DIR")
    refused("-l", sel, str(shared), says="DIR: only with -o lease-files")
    refused("-l", sel, *creds, says="--credentials: only with -o lease-files")
    refused("-l", sel, "--multi-nic", says="--multi-nic: only with -o lease-files")
    refused("-l", sel, "--dvs", says="--dvs: only with -o lease-files")
    refused("-l", sel, "--resource-pool", "x", says="--resource-pool: only with -o lease-files")
    for pool in ("", "a/b", "x" * 81):
        refused(*files, str(shared), *creds, "--resource-pool", pool, says="--resource-pool: ")
    refused("-l", "boskos-lease-id=nobody", "-o", "lease-files", str(shared), *creds,
            says="no active lease matches", process=True)
    # the accounts file
    bad = tmp_path / "bad.sh"
    cases = {
        b"": "sets no vcenter_usernames",
        b"\xff\xfe garbage \x00\x01": "not UTF-8",
        b"vcenter_usernames=(a b)\nvcenter_passwords=(x)\n": "they go in pairs",
        b"vcenter_usernames=($(id))\nvcenter_passwords=(x)\n": "shell expansion",
        b"vcenter_usernames=(\"$USER\")\nvcenter_passwords=(x)\n": "shell expansion",
        b"rm -rf /\n": "only assignments are read",
        b"vcenter_usernames=(a\nvcenter_passwords=(b)\n": "unexpected '('",
        b"vcenter_usernames=('a)\n": "not closed",
        b"vcenter_usernames=(a)\nvcenter_passwords=('p1'\"'\"'single\x01')\n":
            "vcenter_passwords[0] must not contain control characters",
        b"vcenter_usernames=()\nvcenter_passwords=()\n": "vcenter_usernames is empty",
        b"vcenter_usernames=(a)\nvcenter_passwords=('')\n": "vcenter_passwords[0] is empty",
        b"vcenter_usernames[1]=a\nvcenter_passwords[1]=b\n": "vcenter_usernames[0] is never set",
        b"x" * (2 << 20): "larger than",
    }
    for content, says in cases.items():
        bad.write_bytes(content)
        refused(*files, str(shared), "--credentials", str(bad), says=says)
    refused(*files, str(shared), "--credentials", str(tmp_path / "none.sh"),
            says="--credentials: ")
    refused(*files, str(shared), "--credentials", str(tmp_path), says="is a directory")
    # network-only leases alone: no LEASE_single.json to write
    only_net = "boskos-lease-id=vsphere-elastic-41"
    assert vcm(stack, tmp_path, "acquire", "--vcpus", "0", "--memory", "0", "--networks", "1",
               "--owner", "job", "--label", only_net, "-q", "-o", "json").returncode == 0
    refused("-l", only_net, "-o", "lease-files", str(shared), *creds, says="-l: none of")

    # then a good run: written, the earlier run's LEASE_old.json gone, other files kept; a
    # DIR that does not exist yet is made
    p = vcm(stack, tmp_path, "leases", *files, str(shared), *creds)
    assert p.returncode == 0, p.stderr
    names = {f.name for f in shared.iterdir()}
    assert "LEASE_old.json" not in names and "unrelated.txt" in names
    assert set(p.stdout.split()) == {str(shared / n) for n in names - {"unrelated.txt"}}
    fresh = tmp_path / "new" / "dir"
    assert vcm(stack, tmp_path, "leases", *files, str(fresh), *creds).returncode == 0
    assert {f.name for f in fresh.iterdir()} == names - {"unrelated.txt"}
