"""The test apiserver itself, through the unmodified kubernetes client."""

from __future__ import annotations

import base64
import json

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.kube_apiserver import KubeApiServer
from tests.support.procs import ROOT
from tests.support.rbac import RbacPolicy

NS = "ns1"


@pytest.fixture
def core(kube):
    api_client = kube.api_client()
    yield client.CoreV1Api(api_client)
    api_client.close()


def status_of(err: pytest.ExceptionInfo[ApiException]) -> dict:
    body = json.loads(err.value.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    return body


def test_server_owned_metadata_and_global_resource_version(kube, core):
    a = core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}, "data": {"k": "v"}})
    b = core.create_namespaced_config_map("ns2", {"metadata": {"name": "b"}})
    assert a.kind == "ConfigMap" and a.api_version == "v1"
    assert a.metadata.namespace == NS and a.metadata.uid and a.metadata.creation_timestamp
    assert int(b.metadata.resource_version) == int(a.metadata.resource_version) + 1
    # a no-op update keeps the resourceVersion (the apiserver skips the write)
    same = core.replace_namespaced_config_map(
        "a", NS, {"metadata": {"name": "a"}, "data": {"k": "v"}}
    )
    assert same.metadata.resource_version == a.metadata.resource_version
    # an update without resourceVersion is unconditional
    c = core.replace_namespaced_config_map("a", NS, {"metadata": {"name": "a"}, "data": {"k": "w"}})
    assert int(c.metadata.resource_version) > int(b.metadata.resource_version)
    assert c.metadata.creation_timestamp == a.metadata.creation_timestamp
    assert kube.writes == 4


def test_patches(core):
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "p", "labels": {"x": "1"}}, "data": {"a": "1", "b": "2"}}
    )
    got = core.patch_namespaced_config_map("p", NS, {"data": {"c": "3", "a": None}})
    assert got.data == {"b": "2", "c": "3"}
    got = core.patch_namespaced_config_map(
        "p",
        NS,
        {"metadata": {"labels": {"y": "2"}}, "data": {"b": None}},
        _content_type="application/merge-patch+json",
    )
    assert got.data == {"c": "3"} and got.metadata.labels == {"x": "1", "y": "2"}
    got = core.patch_namespaced_config_map(
        "p", NS, [{"op": "add", "path": "/data/d", "value": "4"}]
    )
    assert got.data == {"c": "3", "d": "4"}
    # a resourceVersion in the patch is a precondition
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map(
            "p", NS, {"metadata": {"resourceVersion": "1"}, "data": {"e": "5"}}
        )
    assert err.value.status == 409 and status_of(err)["reason"] == "Conflict"


def test_validation(core):
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "Bad_Name"}})
    assert err.value.status == 422
    assert status_of(err)["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "k"}, "data": {"a/b": "x"}})
    assert err.value.status == 422 and status_of(err)["reason"] == "Invalid"
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(
            NS, {"metadata": {"name": "k"}, "binaryData": {"b": "not base64!"}}
        )
    assert err.value.status == 400
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(
            NS, {"metadata": {"name": "k"}, "data": {"a": "x"}, "binaryData": {"a": "eA=="}}
        )
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("other", NS, {"metadata": {"name": "k"}})
    assert err.value.status == 400


def test_binary_data_counts_decoded_bytes(core):
    # base64 text is 4/3 longer than the limit, the decoded bytes are not
    payload = base64.b64encode(b"\1" * 1_000_000).decode()
    assert len(payload) > 1_048_576
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "bin"}, "binaryData": {"b": payload}}
    )
    assert core.read_namespaced_config_map("bin", NS).binary_data["b"] == payload


def test_list_delete_and_preconditions(kube, core):
    for name, role in (("h", "head"), ("s1", "shard"), ("s2", "shard")):
        core.create_namespaced_config_map(
            NS, {"metadata": {"name": name, "labels": {"role": role}}}
        )
    items = core.list_namespaced_config_map(NS, label_selector="role=shard").items
    assert [i.metadata.name for i in items] == ["s1", "s2"]
    assert [i.metadata.name for i in core.list_namespaced_config_map(NS).items] == ["h", "s1", "s2"]
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_config_map(
            "s1", NS, body=client.V1DeleteOptions(preconditions={"resourceVersion": "999"})
        )
    assert err.value.status == 409
    status = core.delete_namespaced_config_map("s1", NS)
    assert status["status"] == "Success" and status["details"]["name"] == "s1"
    assert kube.names(NS) == ["h", "s2"]


def test_fault_injection(kube, core):
    core.create_namespaced_config_map(NS, {"metadata": {"name": "f"}})
    kube.inject_fault(500, count=2)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            core.read_namespaced_config_map("f", NS)
        assert err.value.status == 500 and status_of(err)["reason"] == "InternalError"
    core.read_namespaced_config_map("f", NS)  # count exhausted

    kube.inject_fault(503, count=None, methods={"PUT"})
    for _ in range(3):
        with pytest.raises(ApiException) as err:
            core.replace_namespaced_config_map("f", NS, {"metadata": {"name": "f"}})
        assert err.value.status == 503 and status_of(err)["reason"] == "ServiceUnavailable"
    core.read_namespaced_config_map("f", NS)  # GETs are not affected
    kube.clear_faults()
    core.replace_namespaced_config_map("f", NS, {"metadata": {"name": "f"}, "data": {"a": "b"}})

    kube.inject_fault(hang=0.5, count=1)
    served = kube.faults_served
    assert core.read_namespaced_config_map("f", NS).data == {"a": "b"}  # slow but answered
    assert kube.faults_served == served + 1  # the hang was this request's
    writes = kube.writes
    assert writes == 2  # create + the one successful replace


def test_token_auth_and_kubeconfig(tmp_path):
    from kubernetes import config

    with KubeApiServer(token="t0k") as kube:
        path = kube.write_kubeconfig(tmp_path / "config", namespace=NS)
        api_client = config.new_client_from_config(config_file=str(path))
        client.CoreV1Api(api_client).create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
        with pytest.raises(ApiException) as err:
            client.CoreV1Api(
                client.ApiClient(client.Configuration(host=kube.url))
            ).read_namespaced_config_map("a", NS)
        assert err.value.status == 401


def test_namespaces_list_create_get_and_delete(kube, core):
    listed = core.list_namespace()
    assert [n.metadata.name for n in listed.items] == [
        "default", "kube-node-lease", "kube-public", "kube-system"]
    assert all(n.status.phase == "Active" for n in listed.items)
    made = core.create_namespace({"metadata": {"name": "ci-op-1", "labels": {"team": "splat"}}})
    assert made.kind == "Namespace" and made.metadata.uid and made.status.phase == "Active"
    assert made.metadata.labels == {"team": "splat", "kubernetes.io/metadata.name": "ci-op-1"}
    assert made.spec.finalizers == ["kubernetes"]
    assert core.read_namespace("ci-op-1").metadata.uid == made.metadata.uid
    with pytest.raises(ApiException) as err:
        core.create_namespace({"metadata": {"name": "ci-op-1"}})
    assert err.value.status == 409 and status_of(err)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as err:
        core.create_namespace({"metadata": {"name": "Not_A_Label"}})
    assert err.value.status == 422 and status_of(err)["reason"] == "Invalid"
    assert [n.metadata.name for n in core.list_namespace(label_selector="team=splat").items] == [
        "ci-op-1"]
    assert [n.metadata.name for n in core.list_namespace(
        field_selector="metadata.name=default").items] == ["default"]
    # a delete ends in removal (with the namespace's ConfigMaps): the controller is instant
    core.create_namespaced_config_map("ci-op-1", {"metadata": {"name": "cm"}})
    answer = core.delete_namespace("ci-op-1")
    assert answer is not None
    with pytest.raises(ApiException) as err:
        core.read_namespace("ci-op-1")
    assert err.value.status == 404 and status_of(err)["reason"] == "NotFound"
    assert kube.names("ci-op-1") == [] and "ci-op-1" not in kube.namespace_names()
    with pytest.raises(ApiException) as err:
        core.delete_namespace("ci-op-1")
    assert err.value.status == 404
    # the system namespaces cannot be deleted through the API
    with pytest.raises(ApiException) as err:
        core.delete_namespace("kube-system")
    assert err.value.status == 403 and status_of(err)["reason"] == "Forbidden"
    assert "kube-system" in kube.namespace_names()


def test_a_namespace_with_finalizers_stays_terminating(kube, core):
    core.create_namespace({"metadata": {"name": "slow", "finalizers": ["example.com/wait"]}})
    core.delete_namespace("slow")
    ns = core.read_namespace("slow")
    assert ns.status.phase == "Terminating" and ns.metadata.deletion_timestamp is not None
    listed = {n.metadata.name: n.status.phase for n in core.list_namespace().items}
    assert listed["slow"] == "Terminating"
    assert [n.metadata.name for n in core.list_namespace(
        field_selector="status.phase=Terminating").items] == ["slow"]
    with pytest.raises(ApiException) as err:  # a new one of that name waits for the old
        core.create_namespace({"metadata": {"name": "slow"}})
    assert err.value.status == 409 and "being deleted" in status_of(err)["message"]
    # dropping the finalizers lets the controller remove it
    core.patch_namespace("slow", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as err:
        core.read_namespace("slow")
    assert err.value.status == 404
    kube.create_namespace("held", finalizers=["x/y"])
    kube.delete_namespace("held")
    assert kube.namespace("held")["status"]["phase"] == "Terminating"
    kube.finish_namespace("held")
    assert kube.namespace("held") is None


def test_namespace_faults_and_an_empty_list(kube, core):
    core.create_namespaced_config_map(NS, {"metadata": {"name": "f"}})
    kube.inject_fault(403, count=None, resource="namespaces")
    with pytest.raises(ApiException) as err:
        core.list_namespace()
    assert err.value.status == 403 and status_of(err)["reason"] == "Forbidden"
    assert 'cannot list resource "namespaces"' in status_of(err)["message"]
    core.read_namespaced_config_map("f", NS)  # ConfigMaps are not affected
    kube.clear_faults()
    kube.inject_fault(503, count=1, resource="namespaces")
    with pytest.raises(ApiException) as err:
        core.list_namespace()
    assert err.value.status == 503
    kube.inject_fault(hang=2.0, count=1, resource="namespaces")
    # the client's default retries would repeat the timed-out list: a client without them
    once = kube.api_client(retries=urllib3.Retry(total=0, connect=0, read=0, status=0))
    served = kube.faults_served
    with pytest.raises(urllib3.exceptions.HTTPError) as timed_out:
        client.CoreV1Api(once).list_namespace(_request_timeout=0.3)
    once.close()
    assert "timed out" in str(timed_out.value).lower()
    assert kube.faults_served == served + 1  # one request: it gave up, not tried again
    assert len(core.list_namespace().items) == 4  # the hang was used up
    for name in kube.namespace_names():
        kube.remove_namespace(name)
    assert core.list_namespace().items == []
    assert ("GET", "/api/v1/namespaces", 403) in kube.request_log


# ---- RBAC from deploy/rbac.yaml ----------------------------------------------------------------

RBAC = ROOT / "deploy" / "rbac.yaml"
DEPLOY_NS = "vsphere-capacity-manager"


def forbidden(user: str, verb: str, resource: str, where: str, name: str = "") -> dict:
    """A 403 exactly as kube-apiserver writes it: the Status of the Kubernetes API reference
    (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/), reason
    Forbidden with the resource as details.kind and the object's name, and the message of
    k8s.io/apiserver's endpoints/handlers/responsewriters (`User %q cannot %s resource %q in
    API group %q in the namespace %q`, or `at the cluster scope`) behind
    k8s.io/apimachinery's errors.NewForbidden (`<resource> "<name>" is forbidden: ...`)."""
    what = f'{resource} "{name}"' if name else resource
    details = {"name": name, "kind": resource} if name else {"kind": resource}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f'{what} is forbidden: User "{user}" cannot {verb} resource '
                       f'"{resource}" in API group "" {where}',
            "reason": "Forbidden", "details": details, "code": 403}


def test_rbac_from_the_manifest_answers_403_like_kube_apiserver(tmp_path):
    from kubernetes import config

    with KubeApiServer(rbac=RbacPolicy.from_files(RBAC)) as kube:
        vcm_token = kube.token_for(DEPLOY_NS, "vcm")
        path = kube.write_kubeconfig(tmp_path / "vcm", namespace=DEPLOY_NS, token=vcm_token)
        vcm_client = config.new_client_from_config(config_file=str(path))
        vcm = client.CoreV1Api(vcm_client)
        user = f"system:serviceaccount:{DEPLOY_NS}:vcm"
        in_ns = f'in the namespace "{DEPLOY_NS}"'

        # what the Role grants: get, update and patch of the mirror's names, create of any
        with pytest.raises(ApiException) as err:
            vcm.read_namespaced_config_map("vcm-ledger", DEPLOY_NS)
        assert err.value.status == 404  # allowed, and not there yet
        made = vcm.create_namespaced_config_map(DEPLOY_NS, {"metadata": {"name": "vcm-ledger"}})
        vcm.patch_namespaced_config_map("vcm-ledger", DEPLOY_NS, {"data": {"k": "v"}})
        made.data = {"k": "w"}
        made.metadata.resource_version = None
        vcm.replace_namespaced_config_map("vcm-ledger", DEPLOY_NS, made)
        vcm.create_namespaced_config_map(DEPLOY_NS, {"metadata": {"name": "elsewhere"}})
        # the namespace list is the queries worker's (the namespace prune), not placement's
        queries_path = kube.write_kubeconfig(tmp_path / "vcm-queries", namespace=DEPLOY_NS,
                                             token=kube.token_for(DEPLOY_NS, "vcm-queries"))
        queries = client.CoreV1Api(config.new_client_from_config(config_file=str(queries_path)))
        assert [n.metadata.name for n in queries.list_namespace().items][:1] == ["default"]

        # and nothing else
        refused = [
            (lambda: vcm.read_namespaced_config_map("elsewhere", DEPLOY_NS),
             forbidden(user, "get", "configmaps", in_ns, "elsewhere")),
            (lambda: vcm.delete_namespaced_config_map("vcm-ledger", DEPLOY_NS),
             forbidden(user, "delete", "configmaps", in_ns, "vcm-ledger")),
            (lambda: vcm.list_namespaced_config_map(DEPLOY_NS),
             forbidden(user, "list", "configmaps", in_ns)),
            (lambda: vcm.read_namespaced_config_map("vcm-ledger", "default"),
             forbidden(user, "get", "configmaps", 'in the namespace "default"', "vcm-ledger")),
            (lambda: vcm.read_namespace("default"),
             forbidden(user, "get", "namespaces", 'in the namespace "default"', "default")),
            (lambda: vcm.list_namespace(),
             forbidden(user, "list", "namespaces", "at the cluster scope")),
            (lambda: vcm.create_namespace({"metadata": {"name": "x"}}),
             forbidden(user, "create", "namespaces", "at the cluster scope")),
        ]
        for call, status in refused:
            with pytest.raises(ApiException) as err:
                call()
            assert err.value.status == 403 and err.value.reason == "Forbidden"
            assert json.loads(err.value.body) == status
        assert kube.get(DEPLOY_NS, "vcm-ledger")["data"] == {"k": "w"}

        # a service account without bindings, no token, a token nobody issued
        runtime = client.CoreV1Api(kube.api_client(api_key={
            "BearerToken": "Bearer " + kube.token_for(DEPLOY_NS, "vcm-runtime")}))
        with pytest.raises(ApiException) as err:
            runtime.list_namespace()
        assert json.loads(err.value.body) == forbidden(
            f"system:serviceaccount:{DEPLOY_NS}:vcm-runtime", "list", "namespaces",
            "at the cluster scope")
        anonymous = client.CoreV1Api(client.ApiClient(client.Configuration(host=kube.url)))
        with pytest.raises(ApiException) as err:
            anonymous.read_namespaced_config_map("vcm-ledger", DEPLOY_NS)
        assert json.loads(err.value.body) == forbidden(
            "system:anonymous", "get", "configmaps", in_ns, "vcm-ledger")
        stranger = client.CoreV1Api(kube.api_client(api_key={"BearerToken": "Bearer nope"}))
        with pytest.raises(ApiException) as err:
            stranger.list_namespace()
        assert err.value.status == 401
        with pytest.raises(KeyError):
            kube.token_for(DEPLOY_NS, "no-such-account")  # only the manifests' accounts
        # the test's own client is an admin
        admin = client.CoreV1Api(kube.api_client())
        admin.delete_namespaced_config_map("elsewhere", DEPLOY_NS)
        vcm_client.close()
