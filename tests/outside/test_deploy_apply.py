"""deploy/ applied with the real kubectl, as deploy/README.md tells an operator to, to a test
apiserver that starts without the custom resource definitions (they come with `kubectl
apply -k deploy/`, as on a new cluster): the README's own shell block is run (namespace, the
two required Secrets, the kustomize base), every object is then there, a second apply changes
nothing, the order matters (a namespaced manifest before its namespace is refused naming
it), and a Lease can be created once its definition is applied. A missing kubectl skips
(fails under CI=true)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.kube import KubeApiServer
from tests.support.procs import ROOT
from tests.support.tools import missing

DEPLOY = ROOT / "deploy"
NS = "vsphere-capacity-manager"
G, V = "vspherecapacitymanager.splat.io", "v1"


def readme_commands() -> list[str]:
    """The commands of deploy/README.md's first sh block, one string each (continuations
    joined, comments dropped)."""
    text = (DEPLOY / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block is not None, "deploy/README.md has no sh block"
    commands, current = [], ""
    for line in block.group(1).splitlines():
        line = re.sub(r"\s+#.*$", "", line).rstrip() if not line.lstrip().startswith("#") \
            else ""
        if not line:
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(" ".join(current.split()))
            current = ""
    return commands


def rendered() -> list[dict]:
    """The objects of the kustomize base, as `kubectl kustomize deploy/` renders them."""
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture
def cluster(tmp_path: Path):
    """A test apiserver with no CustomResourceDefinitions yet, and a `kubectl` to it (plain
    HTTP, the admin user; its own HOME, so its discovery cache is fresh)."""
    binary = shutil.which("kubectl")
    if binary is None:
        missing("kubectl is not installed (Debian: kubernetes-client)")
    if shutil.which("openssl") is None:
        missing("openssl is not installed (deploy/README.md's commands use it)")
    with KubeApiServer(crds=[]) as server:
        config = server.write_kubeconfig(tmp_path / "kubeconfig")
        env = {**os.environ, "KUBECONFIG": str(config), "HOME": str(tmp_path)}

        def sh(command: str, check: bool = True, stdin: str | None = None) -> \
                subprocess.CompletedProcess[str]:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=ROOT,
                                  input=stdin, capture_output=True, text=True, env=env,
                                  timeout=120, check=False)
            if check:
                assert done.returncode == 0, (command, done.stdout, done.stderr)
            return done
        server.sh = sh  # type: ignore[attr-defined]
        yield server


def test_the_readme_order_applies_everything_and_a_second_apply_changes_nothing(cluster):
    """The README's block, run as written: the namespace, the two Secrets (kubectl create
    secret posts them as protobuf), then `kubectl apply -k deploy/` creates every object of the
    base, the definitions among them; `kubectl get` finds each; the same apply again says
    `unchanged` for every object and writes nothing."""
    commands = readme_commands()
    assert [c.split()[:3] for c in commands[:1]] == [["kubectl", "apply", "-f"]]
    out = cluster.sh("\n".join(commands)).stdout
    objects = rendered()
    assert {o["kind"] for o in objects} >= {"CustomResourceDefinition", "Deployment",
                                            "StatefulSet", "NetworkPolicy", "ClusterRole"}
    for obj in objects:
        kind = obj["kind"].lower()
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        resource = f"{kind}.{group}" if group else kind
        assert f"{resource}/{obj['metadata']['name']} created" in out or kind == "namespace"
        namespace = ["-n", obj["metadata"]["namespace"]] if "namespace" in obj["metadata"] \
            else []
        got = cluster.sh(" ".join(["kubectl", "get", resource, obj["metadata"]["name"],
                                   *namespace, "-o", "json"])).stdout
        assert json.loads(got)["metadata"]["labels"]["app.kubernetes.io/name"] == \
            "vsphere-capacity-manager"
    secrets = json.loads(cluster.sh(f"kubectl -n {NS} get secrets -o json").stdout)["items"]
    assert sorted(s["metadata"]["name"] for s in secrets) == ["vcm-flower-auth",
                                                              "vcm-redis-auth"]
    assert len(secrets[1]["data"]["password"]) > 40  # base64 of 64 hex digits
    established = cluster.sh(f"kubectl wait --for condition=established --timeout=10s "
                             f"crd/leases.{G}").stdout
    assert "condition met" in established
    writes = cluster.writes
    again = cluster.sh("kubectl apply -k deploy/").stdout.splitlines()
    assert len(again) == len(objects)
    assert all(line.endswith(" unchanged") for line in again), again
    assert cluster.writes == writes


def test_out_of_order_a_namespaced_manifest_before_its_namespace_is_refused(cluster):
    """NamespaceLifecycle admission: objects in a namespace that does not exist yet are
    refused, naming it (`Error from server (NotFound): ... namespaces "x" not found`): the
    README's Secrets before its namespace.yaml, the base's ServiceAccounts before it, and the
    example RBAC for a further namespace before that namespace is made."""
    commands = readme_commands()
    secret = cluster.sh(commands[1], check=False)
    assert secret.returncode == 1
    assert f'namespaces "{NS}" not found' in secret.stderr
    early = cluster.sh(f"kubectl apply -n {NS} -f deploy/rbac.yaml", check=False)
    assert early.returncode == 1 and f'namespaces "{NS}" not found' in early.stderr
    assert "NotFound" in early.stderr
    cluster.sh(commands[0])
    cluster.sh(f"kubectl apply -n {NS} -f deploy/rbac.yaml")
    extra = cluster.sh("kubectl apply -f deploy/examples/controller-namespace-rbac.yaml",
                       check=False)
    assert extra.returncode == 1
    assert 'namespaces "vsphere-infra-helpers" not found' in extra.stderr
    cluster.sh("kubectl create namespace vsphere-infra-helpers")
    cluster.sh("kubectl apply -f deploy/examples/controller-namespace-rbac.yaml")


def test_a_lease_needs_its_definition_applied_first(cluster):
    """Before deploy/crds/ is applied kubectl knows no Lease kind (discovery has none: `no
    matches for kind "Lease"`); once the definitions are applied, kubectl creates and lists
    Leases, their schema applied by the server (defaults)."""
    lease = yaml.safe_dump({"apiVersion": f"{G}/{V}", "kind": "Lease",
                            "metadata": {"name": "ci-1", "namespace": "default"},
                            "spec": {"vcpus": 24, "memory": 96, "networks": 1}})
    before = cluster.sh("kubectl apply -f -", stdin=lease, check=False)
    assert before.returncode == 1
    assert f'no matches for kind "Lease" in version "{G}/{V}"' in before.stderr
    out = cluster.sh("kubectl apply -f deploy/crds/").stdout
    assert out.count("created") == 3
    assert cluster.sh("kubectl apply -f -", stdin=lease).stdout == \
        f"lease.{G}/ci-1 created\n"
    got = json.loads(cluster.sh("kubectl get lease ci-1 -o json").stdout)
    assert got["spec"]["pools"] == 1  # the CRD's default
    assert cluster.sh("kubectl get leases --no-headers").stdout.startswith("ci-1 ")


def test_dry_run_server_and_a_changed_deployment(cluster):
    """`kubectl apply --dry-run=server` goes through the server and stores nothing; a real
    apply of a changed Deployment is `configured` with a strategic merge patch: the container
    is merged by name (a field the server holds that the file never had survives), an env var
    dropped from the file is deleted, spec changes bump metadata.generation."""
    commands = readme_commands()
    cluster.sh("\n".join(commands))
    docs = [d for d in rendered() if d["kind"] == "Deployment"
            and d["metadata"]["name"] == "vcm-api"]
    (deployment,) = docs
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    stored = cluster.custom_object("deployments", NS, "vcm-api")
    assert stored["metadata"]["generation"] == 1
    held = json.loads(json.dumps(stored))
    held["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/x"
    cluster.put_custom(held)  # what a real apiserver defaults, kept by the server
    dropped = container["env"].pop()["name"]
    container["image"] = "quay.io/vcm/vsphere-capacity-manager:v2"
    manifest = yaml.safe_dump(deployment)
    writes = cluster.writes
    dry = cluster.sh("kubectl apply --dry-run=server -f -", stdin=manifest).stdout
    assert dry == "deployment.apps/vcm-api configured (server dry run)\n"
    assert cluster.writes == writes
    assert cluster.custom_object("deployments", NS, "vcm-api")["spec"] == held["spec"]
    assert cluster.sh("kubectl apply -f -", stdin=manifest).stdout == \
        "deployment.apps/vcm-api configured\n"
    now = cluster.custom_object("deployments", NS, "vcm-api")
    (got,) = now["spec"]["template"]["spec"]["containers"]
    assert got["image"] == "quay.io/vcm/vsphere-capacity-manager:v2"
    assert got["terminationMessagePath"] == "/dev/x"
    assert dropped not in [e["name"] for e in got["env"]]
    assert [e["name"] for e in got["env"]] == [e["name"] for e in container["env"]]
    assert now["metadata"]["generation"] == 2
