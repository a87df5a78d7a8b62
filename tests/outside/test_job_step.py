"""The example CI job step (examples/ci-job-step.sh), run as a job runs it: bash and `vcm`
against the local stack with the example pools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.audit import audit
from tests.support.procs import ROOT

SCRIPT = ROOT / "examples" / "ci-job-step.sh"


def _run(stack, tmp_path: Path, step: str, **env: str) -> subprocess.CompletedProcess:
    vcm = tmp_path / "vcm"
    vcm.write_text(f"#!/bin/sh\nexec {sys.executable} -m workers.cli \"$@\" "
                   f"--redis-url {stack['redis'].url}\n")
    vcm.chmod(0o755)
    full = {**stack["env"], "VCM": str(vcm), **env}
    return subprocess.run(["bash", str(SCRIPT), step, str(tmp_path / "out")], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=120)


def test_the_example_job_step_leases_writes_its_files_and_releases(stack, ledger, tmp_path):
    env = {"BOSKOS_LEASE_ID": "boskos-42", "JOB_NAME": "e2e-vsphere", "NAMESPACE": "ci-op-x",
           "POOLS": "2", "VCPUS": "8", "MEMORY": "32", "BASTION_POOL": "pool3",
           "JOB_LINK": "https://prow.example/view/42"}
    p = _run(stack, tmp_path, "acquire", **env)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out"
    primary = json.loads((out / "primary.json").read_text())
    nic = json.loads((out / "nic.json").read_text())
    bastion = json.loads((out / "bastion.json").read_text())
    assert len(primary) == 2 and len({x["status"]["vcenter"] for x in primary}) == 2
    assert nic[0]["spec"]["vcpus"] == 0 and bastion[0]["status"]["pool"] == "pool3"
    leases = primary + nic + bastion
    assert all(x["status"]["labels"]["boskos-lease-id"] == "boskos-42" for x in leases)
    assert {x["status"]["job-link"] for x in leases} == {"https://prow.example/view/42"}
    platform = yaml.safe_load((out / "platform-vsphere.yaml").read_text())
    vsphere = platform["platform"]["vsphere"]
    servers = {x["status"]["vcenter"] for x in leases}
    assert {v["server"] for v in vsphere["vcenters"]} == servers
    domains = {d["name"]: d for d in vsphere["failureDomains"]}
    assert set(domains) == {x["status"]["pool"] for x in leases}
    for lease in leases:  # every leased port group is in its pool's failure domain
        fd = domains[lease["status"]["pool"]]
        assert fd["server"] == lease["status"]["vcenter"]
        for net in lease["status"]["networks"]:  # as install-config names them: paths
            path = f"/{lease['status']['datacenter']}/network/{net['port-group']}"
            assert path in fd["topology"]["networks"]
    # an empty fleet: the two least-utilized vCenters' pools (ties by name), and the bastion's
    assert sorted(x["status"]["pool"] for x in primary) == ["pool1", "pool2"]
    assert set(domains) == {"pool1", "pool2", "pool3"}
    assert domains["pool1"]["zone"] == "east-1a"  # from the pools file's zone and folder
    assert domains["pool1"]["topology"]["folder"] == "/datacenter1/vm/ci"
    subnets = json.loads((out / "subnets.json").read_text())
    vlans = {str(n["vlan"]) for x in leases for n in x["status"]["networks"]}
    assert {v for by_vlan in subnets.values() for v in by_vlan} == vlans
    assert set(audit(ledger)["leases"]) == {x["metadata"]["name"] for x in leases}
    # run again (a retried step): the same leases, nothing new
    assert _run(stack, tmp_path, "acquire", **env).returncode == 0
    assert len(audit(ledger)["leases"]) == len(leases)
    p = _run(stack, tmp_path, "release", **env)
    assert p.returncode == 0, p.stderr
    released = json.loads((out / "released.json").read_text())
    assert sorted(released) == sorted(x["metadata"]["name"] for x in leases)
    assert audit(ledger)["leases"] == {}
    assert os.access(SCRIPT, os.X_OK)
