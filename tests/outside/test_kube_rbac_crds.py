"""RBAC for the custom resources on the test apiserver: the ClusterRole deploy/ gives CI
clients (deploy/lease-client-clusterrole.yaml), bound in one namespace as the site would,
evaluated as kube-apiserver's RBAC authorizer does (https://kubernetes.io/docs/reference/
access-authn-authz/rbac/: resources in an API group, subresources named `leases/status`,
RoleBindings granting in their namespace, the default `system:discovery` role for
authenticated users) with the attributes of RequestInfo (verbs get, list, watch, create,
update, patch, delete, deletecollection), 403 answered as responsewriters/errors.go
forbiddenMessage words it."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.support.kube import KubeApiServer
from tests.support.rbac import PathRequest, RbacPolicy, Request, User, deploy_rbac
from tests.support.tools import missing

G, V = "vspherecapacitymanager.splat.io", "v1"
CI = "ci"
CI_USER = "system:serviceaccount:ci:runner"


def binding(namespace: str = CI) -> list[dict]:
    return [{"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "runner", "namespace": CI}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "vcm-lease-client", "namespace": namespace},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "vcm-lease-client"},
             "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": CI}]}]


@pytest.fixture
def kube():
    with KubeApiServer(rbac=deploy_rbac(*binding()), tls=True) as server:
        server.create_namespace(CI)
        server.create_namespace("other")
        yield server


@pytest.fixture
def ci(kube):
    api_client = kube.api_client(api_key={"BearerToken": f"Bearer {kube.token_for(CI, 'runner')}"})
    yield client.CustomObjectsApi(api_client)
    api_client.close()


def lease(name: str = "l1", **labels: str) -> dict:
    return {"apiVersion": f"{G}/{V}", "kind": "Lease",
            "metadata": {"name": name, "labels": labels}, "spec": {"networks": 1}}


def forbidden(err: pytest.ExceptionInfo[ApiException]) -> str:
    body = json.loads(err.value.body)
    assert err.value.status == 403 and body["reason"] == "Forbidden"
    return body["message"]


def test_the_ci_role_creates_reads_watches_and_deletes_leases(kube, ci):
    """create, get, list, watch, delete and deletecollection of leases in the bound namespace;
    get/list/watch of pools and networks."""
    ci.create_namespaced_custom_object(G, V, CI, "leases", lease("a", job="1"))
    ci.create_namespaced_custom_object(G, V, CI, "leases", lease("b", job="1"))
    assert ci.get_namespaced_custom_object(G, V, CI, "leases", "a")["metadata"]["name"] == "a"
    assert len(ci.list_namespaced_custom_object(G, V, CI, "leases")["items"]) == 2
    events = list(watch.Watch().stream(ci.list_namespaced_custom_object, G, V, CI, "leases",
                                       timeout_seconds=1))
    assert [e["type"] for e in events] == ["ADDED", "ADDED"]
    ci.delete_namespaced_custom_object(G, V, CI, "leases", "a")
    ci.delete_collection_namespaced_custom_object(G, V, CI, "leases", label_selector="job=1")
    assert kube.custom_objects("leases", CI) == []
    assert ci.list_namespaced_custom_object(G, V, CI, "pools")["items"] == []
    assert ci.list_namespaced_custom_object(G, V, CI, "networks")["items"] == []


def test_the_ci_role_may_not_write_status_pools_or_elsewhere(kube, ci):
    """No patch or update of a Lease, nothing on `leases/status` (a subresource is its own
    resource to RBAC), no writes to pools, nothing outside the RoleBinding's namespace; the
    Status names the subresource and the namespace."""
    ci.create_namespaced_custom_object(G, V, CI, "leases", lease())
    with pytest.raises(ApiException) as err:
        ci.patch_namespaced_custom_object_status(G, V, CI, "leases", "l1",
                                                 {"status": {"phase": "Fulfilled"}})
    assert forbidden(err) == (
        f'leases.{G} "l1" is forbidden: User "{CI_USER}" cannot patch resource '
        f'"leases/status" in API group "{G}" in the namespace "ci"')
    with pytest.raises(ApiException) as err:
        ci.patch_namespaced_custom_object(G, V, CI, "leases", "l1", {"spec": {"vcpus": 1}})
    assert "cannot patch resource \"leases\"" in forbidden(err)
    with pytest.raises(ApiException) as err:
        ci.create_namespaced_custom_object(G, V, CI, "pools", {
            "apiVersion": f"{G}/{V}", "kind": "Pool", "metadata": {"name": "p"}, "spec": {}})
    assert forbidden(err) == (f'pools.{G} is forbidden: User "{CI_USER}" cannot create '
                              f'resource "pools" in API group "{G}" in the namespace "ci"')
    with pytest.raises(ApiException) as err:
        ci.list_namespaced_custom_object(G, V, "other", "leases")
    assert 'in the namespace "other"' in forbidden(err)
    with pytest.raises(ApiException) as err:
        ci.list_cluster_custom_object(G, V, "leases")
    assert "at the cluster scope" in forbidden(err)


def test_discovery_is_open_to_authenticated_users_only(kube):
    """The default ClusterRole system:discovery (bound to system:authenticated) allows GET of
    /api, /apis and /openapi; anonymous requests are 403 `forbidden: User "system:anonymous"
    cannot get path "/apis"`."""
    token = kube.token_for(CI, "runner")
    trust = ssl.create_default_context(cafile=str(kube.ca_file))
    request = urllib.request.Request(kube.url + "/apis",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10, context=trust) as answer:
        assert answer.status == 200
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(kube.url + "/apis", timeout=10, context=trust)
    body = json.loads(err.value.read())
    assert err.value.code == 403
    assert body["message"] == 'forbidden: User "system:anonymous" cannot get path "/apis"'


def test_subresource_and_non_resource_rules():
    """RBAC rule matching: `leases/status` grants the subresource only, `*/status` every
    status, `*` every resource and subresource; nonResourceURLs match exactly or by a
    trailing `*`."""
    policy = RbacPolicy([
        {"kind": "ClusterRole", "metadata": {"name": "status-only"},
         "rules": [{"apiGroups": [G], "resources": ["leases/status"], "verbs": ["patch"]}]},
        {"kind": "ClusterRole", "metadata": {"name": "any-status"},
         "rules": [{"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["get"]},
                   {"nonResourceURLs": ["/metrics", "/logs/*"], "verbs": ["get"]}]},
        {"kind": "ClusterRoleBinding", "metadata": {"name": "a"},
         "roleRef": {"kind": "ClusterRole", "name": "status-only"},
         "subjects": [{"kind": "User", "name": "u"}]},
        {"kind": "ClusterRoleBinding", "metadata": {"name": "b"},
         "roleRef": {"kind": "ClusterRole", "name": "any-status"},
         "subjects": [{"kind": "User", "name": "v"}]},
    ])
    u, v = User("u"), User("v")
    assert policy.allows(u, Request("patch", "leases", CI, "x", G, "status"))
    assert not policy.allows(u, Request("patch", "leases", CI, "x", G))
    assert policy.allows(v, Request("get", "pools", CI, "x", G, "status"))
    assert not policy.allows(v, Request("get", "pools", CI, "x", G))
    assert policy.allows(v, PathRequest("get", "/logs/x"))
    assert policy.allows(v, PathRequest("get", "/metrics"))
    assert not policy.allows(v, PathRequest("get", "/metrics/x"))
    assert not policy.allows(u, PathRequest("get", "/metrics"))


def test_kubectl_with_the_ci_token(kube, tmp_path: Path):
    """kubectl as the CI step runs it, with the service account's token over HTTPS (kubectl
    sends no credentials to a plain-http server): create -f with generateName, get, delete -l
    (kubectl lists, then deletes each); `get pools` works, writing the status does not."""
    binary = shutil.which("kubectl")
    if binary is None:
        missing("kubectl is not installed (Debian: kubernetes-client)")
    config = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=CI,
                                   token=kube.token_for(CI, "runner"))
    env = {**os.environ, "KUBECONFIG": str(config), "HOME": str(tmp_path)}

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True,
                              env=env, timeout=60, check=False)

    body = lease()
    body["metadata"] = {"generateName": "b1-", "labels": {"boskos-lease-id": "b1"}}
    made = run("create", "-f", "-", stdin=yaml.safe_dump(body))
    assert made.returncode == 0, made.stderr
    assert run("get", "leases", "--no-headers").stdout.startswith("b1-")
    assert run("get", "pools").returncode == 0
    name = made.stdout.split("/")[1].split()[0]
    status = run("patch", "lease", name, "--subresource=status", "--type=merge",
                 "-p", '{"status":{"phase":"Fulfilled"}}')
    assert status.returncode == 1 and 'resource "leases/status"' in status.stderr
    gone = run("delete", "leases", "-l", "boskos-lease-id=b1")
    assert gone.returncode == 0, gone.stderr
    assert kube.custom_objects("leases", CI) == []
