"""The real kubectl against the test apiserver's custom resources: what the CI step and an
operator type (create -f with generateName, get with the printer columns, get -o json,
apply twice, explain, delete -l, wait for a status phase, patch the status subresource).
kubectl reads discovery, OpenAPI v3 (explain; whether the server takes fieldValidation, which
its default --validate=strict then sends) and Tables, so these pin those documents to what
kubectl needs. A missing kubectl skips (fails under CI=true)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.support.tools import missing

G, V = "vspherecapacitymanager.splat.io", "v1"


@pytest.fixture
def kubectl(kube, tmp_path: Path):
    binary = shutil.which("kubectl")
    if binary is None:
        missing("kubectl is not installed (Debian: kubernetes-client)")
    config = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="ci")
    kube.create_namespace("ci")
    env = {**os.environ, "KUBECONFIG": str(config), "HOME": str(tmp_path)}

    def run(*args: str, stdin: str | None = None, check: bool = True) -> \
            subprocess.CompletedProcess[str]:
        done = subprocess.run([binary, *args], input=stdin, capture_output=True, text=True,
                              env=env, timeout=60, check=False)
        if check:
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done
    return run


def lease_yaml(**spec: object) -> str:
    return yaml.safe_dump({
        "apiVersion": f"{G}/{V}", "kind": "Lease",
        "metadata": {"generateName": "b1-", "labels": {"boskos-lease-id": "b1"}},
        "spec": {"vcpus": 24, "memory": 96, "networks": 1, **spec}})


def test_discovery_names_short_names_and_categories(kubectl):
    """kubectl api-resources lists the kinds from discovery; `kubectl get vcm` (the category)
    and the short names resolve."""
    out = kubectl("api-resources", f"--api-group={G}", "--no-headers").stdout
    rows = [line.split() for line in out.splitlines()]
    assert [r[0] for r in rows] == ["leases", "networks", "pools"]
    assert rows[0][1] == "vcmlease" and rows[0][-1] == "Lease"
    kubectl("create", "-f", "-", stdin=lease_yaml())
    assert "lease.vspherecapacitymanager.splat.io/b1-" in kubectl("get", "vcm").stdout
    assert kubectl("get", "vcmlease", "--no-headers").stdout.startswith("b1-")


def test_create_with_generate_name_and_get_the_printer_columns(kube, kubectl):
    """The CI step's `oc create -f -` with generateName; `get` prints the Table's columns
    (NAME, then the CRD's additionalPrinterColumns of priority 0; -o wide adds priority 1)."""
    out = kubectl("create", "-f", "-", stdin=lease_yaml()).stdout
    name = out.split("/")[1].split()[0]
    assert out == f"lease.vspherecapacitymanager.splat.io/{name} created\n"
    table = kubectl("get", "leases").stdout.splitlines()
    assert table[0].split() == ["NAME", "VCPUS", "MEMORY(GB)", "PHASE", "AGE"]
    assert table[1].split()[:3] == [name, "24", "96"]
    wide = kubectl("get", "leases", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "VCPUS", "MEMORY(GB)", "PHASE", "POOL", "AGE"]
    got = json.loads(kubectl("get", "lease", name, "-o", "json").stdout)
    assert got["spec"] == {"vcpus": 24, "memory": 96, "networks": 1, "pools": 1,
                           "network-type": "single-tenant"}
    assert got["metadata"]["namespace"] == "ci"


def test_validation_strict_by_default_and_422_from_the_schema(kubectl):
    """kubectl's default --validate=strict sends fieldValidation=Strict (the server advertises
    it in OpenAPI v3), so an unknown field is refused by the server naming it; with
    --validate=false the schema's 422 comes back as `The Lease "x" is invalid: ...`."""
    bad = yaml.safe_dump({"apiVersion": f"{G}/{V}", "kind": "Lease",
                          "metadata": {"name": "bad"},
                          "spec": {"networks": 1, "vcpu": 3, "pools": 0}})
    strict = kubectl("create", "-f", "-", stdin=bad, check=False)
    assert strict.returncode == 1
    assert 'strict decoding error: unknown field "spec.vcpu"' in strict.stderr
    loose = kubectl("create", "--validate=false", "-f", "-", stdin=bad, check=False)
    assert loose.returncode == 1
    assert ('The Lease "bad" is invalid: spec.pools: Invalid value: 0: spec.pools in body '
            'should be greater than or equal to 1') in loose.stderr


def test_apply_twice_merges_and_removes_what_was_dropped(kube, kubectl):
    """kubectl apply: created, then `configured` with a JSON merge patch computed from the
    last-applied annotation (custom resources take no strategic merge patch: the OpenAPI
    PATCH operation does not list it), so a field dropped from the file is removed; a spec
    change bumps generation."""
    doc = yaml.safe_load(lease_yaml(poolSelector={"region": "east"}))
    doc["metadata"] = {"name": "applied"}
    assert "created" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc)).stdout
    del doc["spec"]["poolSelector"]
    doc["spec"]["vcpus"] = 12
    assert "configured" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc)).stdout
    stored = kube.custom_object("leases", "ci", "applied")
    assert "poolSelector" not in stored["spec"] and stored["spec"]["vcpus"] == 12
    assert stored["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in stored["metadata"][
        "annotations"]
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", "-",
                                           stdin=yaml.safe_dump(doc)).stdout


def test_explain_reads_the_schema(kubectl):
    """kubectl explain reads OpenAPI v3: the kind's description, fields, required fields,
    enums."""
    out = kubectl("explain", "leases.spec").stdout
    assert "KIND:       Lease" in out and "networks\t<integer> -required-" in out
    enum = kubectl("explain", "leases.spec.network-type").stdout
    assert "single-tenant" in enum and "nested-multi-tenant" in enum
    assert "ObjectMeta" in kubectl("explain", "leases").stdout


def test_delete_by_label_and_wait_for_a_phase(kube, kubectl):
    """The CI step waits with `oc wait --for=jsonpath='{.status.phase}'=Fulfilled` and
    deprovisions with `oc delete leases -l boskos-lease-id=<id>` (kubectl lists by the
    selector, then deletes each, waiting for finalizers)."""
    kubectl("create", "-f", "-", stdin=lease_yaml())
    other = yaml.safe_load(lease_yaml())
    other["metadata"] = {"name": "other", "labels": {"boskos-lease-id": "b2"}}
    kubectl("create", "-f", "-", stdin=yaml.safe_dump(other))
    (mine,) = [o["metadata"]["name"] for o in kube.custom_objects("leases", "ci")
               if o["metadata"]["name"] != "other"]
    api = client.CustomObjectsApi(kube.api_client())
    threading.Timer(0.5, lambda: api.patch_namespaced_custom_object_status(
        G, V, "ci", "leases", mine, {"status": {"phase": "Fulfilled"}})).start()
    waited = kubectl("wait", "--for=jsonpath={.status.phase}=Fulfilled", f"lease/{mine}",
                     "--timeout=20s")
    assert "condition met" in waited.stdout
    kubectl("patch", "lease", mine, "--type=merge",
            "-p", '{"metadata":{"finalizers":["vcm.example.com/hold"]}}')
    threading.Timer(0.5, lambda: api.patch_namespaced_custom_object(
        G, V, "ci", "leases", mine, {"metadata": {"finalizers": None}})).start()
    out = kubectl("delete", "leases", "-l", "boskos-lease-id=b1").stdout
    assert out == f'lease.vspherecapacitymanager.splat.io "{mine}" deleted\n'
    assert [o["metadata"]["name"] for o in kube.custom_objects("leases", "ci")] == ["other"]


def test_patch_the_status_subresource(kube, kubectl):
    """`kubectl patch --subresource=status` writes the status; the same patch on the main
    resource is ignored (status subresource)."""
    kubectl("create", "-f", "-", stdin=lease_yaml())
    (name,) = [o["metadata"]["name"] for o in kube.custom_objects("leases", "ci")]
    kubectl("patch", "lease", name, "--type=merge", "-p", '{"status":{"phase":"Failed"}}')
    assert "status" not in kube.custom_object("leases", "ci", name)
    kubectl("patch", "lease", name, "--subresource=status", "--type=merge",
            "-p", '{"status":{"phase":"Pending"}}')
    assert kube.custom_object("leases", "ci", name)["status"] == {"phase": "Pending"}
    assert "Pending" in kubectl("get", "lease", name).stdout
