"""The test apiserver's built-in kinds (tests/support/kube/builtin.py) and
CustomResourceDefinition objects (apiextensions.py), through the unmodified kubernetes client,
each behaviour pinned to the source that defines it: the kube-apiserver registry strategies
(pkg/registry/*/strategy.go), k8s.io/api's struct tags, apimachinery's strategicpatch and the
strategic merge patch document
(https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/strategic-merge-patch.md),
the Secret API reference
(https://kubernetes.io/docs/reference/kubernetes-api/config-and-storage-resources/secret-v1/),
the NamespaceLifecycle admission
(https://kubernetes.io/docs/reference/access-authn-authz/admission-controllers/#namespacelifecycle),
and apiextensions-apiserver."""

from __future__ import annotations

import base64
import json
import urllib.request

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.kube import KubeApiServer
from tests.support.kube.crd import deploy_crds

NS = "default"
G, V = "vspherecapacitymanager.splat.io", "v1"
SMP = "application/strategic-merge-patch+json"


def status_of(err: pytest.ExceptionInfo[ApiException]) -> dict:
    body = json.loads(err.value.body)
    assert body["kind"] == "Status" and body["code"] == err.value.status
    return body


def get_json(server: KubeApiServer, path: str) -> dict:
    with urllib.request.urlopen(f"{server.url}{path}", timeout=10) as answer:
        return json.loads(answer.read())


def deployment(name: str = "web", env: list[dict] | None = None) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": 1}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "containers": [
                             {"name": "a", "image": "a:1", "env": env or [
                                 {"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                             {"name": "b", "image": "b:1"}]}}}}


@pytest.fixture
def apps(kube):
    api_client = kube.api_client()
    yield client.AppsV1Api(api_client)
    api_client.close()


@pytest.fixture
def core(kube):
    api_client = kube.api_client()
    yield client.CoreV1Api(api_client)
    api_client.close()


def test_generation_only_for_kinds_whose_strategy_counts_it(apps, core):
    """deployment/strategy.go PrepareForCreate sets Generation 1 and PrepareForUpdate bumps it
    on a spec change; a Service's and a Secret's strategies never set it. A status written
    with the object on create is dropped (the Deployment's status subresource)."""
    made = apps.create_namespaced_deployment(NS, {**deployment(), "status": {"replicas": 9}})
    assert made.metadata.generation == 1 and made.status is None
    changed = apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 3}})
    assert changed.metadata.generation == 2
    relabelled = apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"x": "y"}}})
    assert relabelled.metadata.generation == 2
    secret = core.create_namespaced_secret(NS, {"metadata": {"name": "s"}})
    service = core.create_namespaced_service(NS, {"metadata": {"name": "svc"},
                                                  "spec": {"ports": [{"port": 80}]}})
    assert secret.metadata.generation is None and service.metadata.generation is None


def test_a_namespaced_object_needs_its_namespace(core, apps):
    """NamespaceLifecycle: a create in a namespace that does not exist is 404 NotFound
    `namespaces "x" not found`, for every namespaced built-in kind as for custom resources."""
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account("nowhere", {"metadata": {"name": "sa"}})
    assert err.value.status == 404
    assert status_of(err)["message"] == 'namespaces "nowhere" not found'
    with pytest.raises(ApiException) as err:
        apps.create_namespaced_deployment("nowhere", deployment())
    assert status_of(err)["details"] == {"name": "nowhere", "kind": "namespaces"}


def test_secret_string_data_is_merged_into_data(core, kube):
    """Secret API reference: stringData "is provided as a write-only input field for
    convenience. All keys and values are merged into the data field on write, overwriting any
    existing values. The stringData field is never output when reading from the API." """
    made = core.create_namespaced_secret(NS, {
        "metadata": {"name": "s"}, "data": {"a": base64.b64encode(b"old").decode(),
                                            "b": base64.b64encode(b"kept").decode()},
        "stringData": {"a": "new"}})
    assert made.data == {"a": base64.b64encode(b"new").decode(),
                         "b": base64.b64encode(b"kept").decode()}
    assert "stringData" not in get_json(kube, f"/api/v1/namespaces/{NS}/secrets/s")


def test_name_rules_per_kind(core, kube):
    """A Service's name is a DNS-1035 label (core validation ValidateServiceName: no leading
    digit, no dots); a ClusterRole's a path segment (rbac validation ValidateRBACName, so
    `system:x` is valid; `/` is not)."""
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service(NS, {"metadata": {"name": "1svc"}, "spec": {}})
    assert err.value.status == 422
    assert "a DNS-1035 label must consist of" in status_of(err)["message"]
    rbac = client.RbacAuthorizationV1Api(kube.api_client())
    made = rbac.create_cluster_role({"metadata": {"name": "system:vcm-reader"}, "rules": []})
    assert made.metadata.name == "system:vcm-reader"
    with pytest.raises(ApiException) as err:
        rbac.create_cluster_role({"metadata": {"name": "a/b"}, "rules": []})
    assert "may not contain '/'" in status_of(err)["message"]


def test_strategic_merge_patch_merges_lists_by_their_keys(apps, kube):
    """k8s.io/api struct tags: containers merge by name, env by name (`patchStrategy:"merge"
    patchMergeKey:"name"`); `$patch: delete` removes the item of that key; a list without a
    strategy (a container's args, a ClusterRole's rules) is replaced; `$retainKeys` drops
    what it does not list (Deployment.spec.strategy, `patchStrategy:"retainKeys"`);
    `$setElementOrder` orders the merged list; metadata.finalizers merge as a set."""
    apps.create_namespaced_deployment(NS, deployment())
    patch = {"metadata": {"finalizers": ["x/y"]}, "spec": {
        "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
        "template": {"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "a:2", "args": ["--x"],
                            "env": [{"name": "X", "$patch": "delete"},
                                    {"name": "Z", "value": "3"}]}]}}}}
    got = apps.patch_namespaced_deployment("web", NS, patch, _content_type=SMP)
    assert got.spec.strategy.to_dict() == {"type": "Recreate", "rolling_update": None}
    b, a = got.spec.template.spec.containers
    assert (b.name, b.image) == ("b", "b:1") and (a.name, a.image) == ("a", "a:2")
    # without $setElementOrder a new item goes before the server's (normalizeElementOrder)
    assert [(e.name, e.value) for e in a.env] == [("Z", "3"), ("Y", "2")]
    got = apps.patch_namespaced_deployment("web", NS, {
        "metadata": {"finalizers": ["x/z"]},
        "spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["--y"]}]}}}},
        _content_type=SMP)
    assert got.metadata.finalizers == ["x/z", "x/y"]  # a set union, the new first
    assert got.spec.template.spec.containers[1].args == ["--y"]
    rbac = client.RbacAuthorizationV1Api(kube.api_client())
    rbac.create_cluster_role({"metadata": {"name": "r"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    replaced = rbac.patch_cluster_role("r", {"rules": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]}, _content_type=SMP)
    assert [r.resources for r in replaced.rules] == [["secrets"]]


def test_strategic_merge_patch_is_for_built_in_kinds_only(kube, core):
    """Custom resources refuse a strategic merge patch 415 (CRD task page: "Custom resources
    do not support strategic merge patch"); a built-in kind's 415 for an unknown patch type
    lists it among the accepted types (handlers/patch.go)."""
    core.create_namespaced_secret(NS, {"metadata": {"name": "s"}})
    request = urllib.request.Request(f"{kube.url}/api/v1/namespaces/{NS}/secrets/s",
                                     data=b"{}", method="PATCH",
                                     headers={"Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 415
    assert SMP in json.loads(err.value.read())["message"]


def test_openapi_v3_lists_the_built_in_paths_without_schemas(kube):
    """kubectl asks OpenAPI v3 whether a kind's PATCH takes `fieldValidation` (cli-runtime
    query_param_verifier_v3.go) and whether it takes a strategic merge patch (kubectl
    apply/patcher.go gvkSupportsPatchOpenAPIV3), then looks for the kind's schema: the
    built-in group-versions are listed (api/v1, apps/v1, rbac, networking, apiextensions),
    their PATCH takes both, and no schema is given, so kubectl builds its patches from its
    compiled-in types."""
    def get(path: str) -> dict:
        return get_json(kube, path)
    index = get("/openapi/v3")["paths"]
    assert {"api/v1", "apis/apps/v1", "apis/rbac.authorization.k8s.io/v1",
            "apis/networking.k8s.io/v1", "apis/apiextensions.k8s.io/v1",
            f"apis/{G}/{V}"} <= set(index)
    apps_doc = get(index["apis/apps/v1"]["serverRelativeURL"])
    patch = apps_doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"][
        "patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "apps", "version": "v1",
                                                        "kind": "Deployment"}
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert SMP in patch["requestBody"]["content"]
    kinds = [k["kind"] for s in apps_doc["components"]["schemas"].values()
             for k in s.get("x-kubernetes-group-version-kind", [])]
    assert "Deployment" not in kinds
    core_doc = get(index["api/v1"]["serverRelativeURL"])
    assert "/api/v1/namespaces/{namespace}/configmaps/{name}" in core_doc["paths"]


def test_a_created_definition_is_served_at_once(kube):
    """apiextensions-apiserver: a created CustomResourceDefinition gets acceptedNames and the
    conditions NamesAccepted (NoConflicts) and Established (InitialNamesAccepted) from its
    controllers, and its kind is served (discovery, the custom resource paths); before it
    the kind's paths are 404. A name that is not `<plural>.<group>` is 422
    (apiextensions validation)."""
    with KubeApiServer(crds=[]) as server:
        ext = client.ApiextensionsV1Api(server.api_client())
        custom = client.CustomObjectsApi(server.api_client())
        lease = {"apiVersion": f"{G}/{V}", "kind": "Lease", "metadata": {"name": "l"},
                 "spec": {"vcpus": 1, "memory": 1, "networks": 1}}
        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object(G, V, NS, "leases", lease)
        assert err.value.status == 404
        (definition,) = [c.manifest for c in deploy_crds() if c.plural == "leases"]
        wrong = {**definition, "metadata": {"name": "leases.example.com"}}
        with pytest.raises(ApiException) as err:
            ext.create_custom_resource_definition(wrong)
        assert status_of(err)["message"] == (
            'CustomResourceDefinition.apiextensions.k8s.io "leases.example.com" is invalid: '
            'metadata.name: Invalid value: "leases.example.com": must be '
            'spec.names.plural+"."+spec.group')
        made = ext.create_custom_resource_definition(definition)
        conditions = {c.type: (c.status, c.reason) for c in made.status.conditions}
        assert conditions == {"NamesAccepted": ("True", "NoConflicts"),
                              "Established": ("True", "InitialNamesAccepted")}
        assert made.status.accepted_names.kind == "Lease"
        assert made.status.stored_versions == ["v1"]
        assert made.metadata.generation == 1
        resources = get_json(server, f"/apis/{G}/{V}")
        assert [r["name"] for r in resources["resources"]] == ["leases", "leases/status"]
        got = custom.create_namespaced_custom_object(G, V, NS, "leases", lease)
        assert got["spec"]["pools"] == 1  # the definition's schema default


def test_deleting_a_definition_deletes_its_objects_then_its_kind(kube):
    """apiextensions' CRD delete (registry etcd.go) adds the finalizer
    customresourcecleanup.apiextensions.k8s.io and the Terminating condition; the finalizer
    controller deletes the custom resources (one with a finalizer of its own keeps the
    definition until it goes); meanwhile a create of the kind is 405 "create not allowed
    while custom resource definition is terminating" (customresource_handler.go of 1.32,
    which this server's /version reports; 1.34 made it a 403); then the definition and its
    kind are gone (404)."""
    ext = client.ApiextensionsV1Api(kube.api_client())
    custom = client.CustomObjectsApi(kube.api_client())
    body = {"apiVersion": f"{G}/{V}", "kind": "Lease",
            "spec": {"vcpus": 1, "memory": 1, "networks": 1}}
    custom.create_namespaced_custom_object(G, V, NS, "leases",
                                           {**body, "metadata": {"name": "free"}})
    custom.create_namespaced_custom_object(G, V, NS, "leases", {
        **body, "metadata": {"name": "held", "finalizers": ["vcm.example.com/hold"]}})
    ext.delete_custom_resource_definition(f"leases.{G}")
    left = ext.read_custom_resource_definition(f"leases.{G}")
    assert left.metadata.finalizers == ["customresourcecleanup.apiextensions.k8s.io"]
    assert "Terminating" in [c.type for c in left.status.conditions]
    assert [o["metadata"]["name"] for o in kube.custom_objects("leases", NS)] == ["held"]
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, "leases",
                                               {**body, "metadata": {"name": "new"}})
    assert err.value.status == 405
    assert status_of(err)["message"] == ("create not allowed while custom resource "
                                         "definition is terminating")
    custom.patch_namespaced_custom_object(G, V, NS, "leases", "held",
                                          {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as err:
        ext.read_custom_resource_definition(f"leases.{G}")
    assert err.value.status == 404
    with pytest.raises(ApiException) as err:
        custom.list_namespaced_custom_object(G, V, NS, "leases")
    assert err.value.status == 404


def test_protobuf_bodies_of_the_kinds_kubectl_create_sends(kube):
    """kubectl's typed clients (`kubectl create secret`) post protobuf (runtime/serializer/
    protobuf: the `k8s\\x00` magic, a runtime.Unknown holding TypeMeta and the object); a
    kind this server has no protobuf layout for is 415, as a custom resource's protobuf body
    is for kube-apiserver."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload
    meta = field(1, b"pb")
    secret = field(1, meta) + field(2, field(1, b"k") + field(2, b"\x00\xff"))
    unknown = field(1, field(1, b"v1") + field(2, b"Secret")) + field(2, secret)

    def post(path: str, body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{kube.url}{path}", data=body, method="POST",
            headers={"Content-Type": "application/vnd.kubernetes.protobuf"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
    code, made = post(f"/api/v1/namespaces/{NS}/secrets", b"k8s\x00" + unknown)
    assert code == 201 and made["metadata"]["name"] == "pb"
    assert made["data"] == {"k": base64.b64encode(b"\x00\xff").decode()}
    lease = field(1, field(1, f"{G}/{V}".encode()) + field(2, b"Lease")) + field(2, meta)
    code, refused = post(f"/apis/{G}/{V}/namespaces/{NS}/leases", b"k8s\x00" + lease)
    assert code == 415 and refused["reason"] == "UnsupportedMediaType"


def test_a_deployment_counts_annotation_changes_in_its_generation(apps):
    """deployment/strategy.go PrepareForUpdate: "annotation updates bump the generation
    because annotations are copied from deployments to their replica sets" (a change of
    metadata.annotations, like one of spec, is generation + 1; labels are not);
    statefulset/strategy.go counts spec changes only."""
    apps.create_namespaced_deployment(NS, deployment())
    annotated = apps.patch_namespaced_deployment(
        "web", NS, {"metadata": {"annotations": {"example.com/note": "x"}}})
    assert annotated.metadata.generation == 2
    same = apps.patch_namespaced_deployment(
        "web", NS, {"metadata": {"annotations": {"example.com/note": "x"}}})
    assert same.metadata.generation == 2
    relabelled = apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"a": "b"}}})
    assert relabelled.metadata.generation == 2
    unannotated = apps.patch_namespaced_deployment(
        "web", NS, {"metadata": {"annotations": {"example.com/note": None}}})
    assert unannotated.metadata.generation == 3
    sts = {"metadata": {"name": "db"},
           "spec": {"serviceName": "db", "selector": {}, "template": {}}}
    apps.create_namespaced_stateful_set(NS, sts)
    annotated_sts = apps.patch_namespaced_stateful_set(
        "db", NS, {"metadata": {"annotations": {"example.com/note": "x"}}})
    assert annotated_sts.metadata.generation == 1


def test_strategic_merge_patch_replaces_a_list_without_a_patch_strategy(core, apps):
    """k8s.io/api core/v1 types.go: a ServiceAccount's `secrets` merge by name
    (`patchStrategy:"merge" patchMergeKey:"name"`) but its `imagePullSecrets` carry no patch
    strategy (`+listType=atomic`), so a strategic merge patch replaces them; only the kinds
    whose status conditions are tagged merge by `type` (DeploymentStatus, ...) merge them."""
    core.create_namespaced_service_account(NS, {
        "metadata": {"name": "sa"}, "secrets": [{"name": "a"}],
        "imagePullSecrets": [{"name": "pull-a"}]})
    got = core.patch_namespaced_service_account("sa", NS, {
        "secrets": [{"name": "b"}], "imagePullSecrets": [{"name": "pull-b"}]},
        _content_type=SMP)
    assert [s.name for s in got.secrets] == ["b", "a"]
    assert [s.name for s in got.image_pull_secrets] == ["pull-b"]
    apps.create_namespaced_deployment(NS, deployment())
    status = {"status": {"conditions": [{"type": "Available", "status": "True"}]}}
    apps.patch_namespaced_deployment_status("web", NS, status, _content_type=SMP)
    got_dep = apps.patch_namespaced_deployment_status("web", NS, {"status": {"conditions": [
        {"type": "Progressing", "status": "True"}]}}, _content_type=SMP)
    assert [c.type for c in got_dep.status.conditions] == ["Progressing", "Available"]


def test_a_create_in_a_terminating_namespace_is_forbidden_naming_the_object(core, apps):
    """NamespaceLifecycle (apiserver admission/plugin/namespace/lifecycle): a create in a
    terminating namespace is 403 `<resource> "<name>" is forbidden: unable to create new
    content in namespace <ns> because it is being terminated`, with the cause
    NamespaceTerminating; the name is admission's (admission/errors.go extractResourceName:
    the object's name, else its generateName, as names are not generated yet), and the
    details' group is left out for the core group (StatusDetails `omitempty`)."""
    core.create_namespace({"metadata": {"name": "ending"}})
    core.create_namespaced_secret("ending", {"metadata": {"name": "held",
                                                          "finalizers": ["example.com/x"]}})
    core.delete_namespace("ending")
    assert core.read_namespace("ending").status.phase == "Terminating"
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret("ending", {"metadata": {"generateName": "gen-"}})
    body = status_of(err)
    assert body["code"] == 403 and body["reason"] == "Forbidden"
    assert body["message"] == ('secrets "gen-" is forbidden: unable to create new content in '
                               'namespace ending because it is being terminated')
    assert body["details"] == {"name": "gen-", "kind": "secrets", "causes": [
        {"reason": "NamespaceTerminating", "message": "namespace ending is being terminated",
         "field": "metadata.namespace"}]}
    with pytest.raises(ApiException) as err:
        apps.create_namespaced_deployment("ending", deployment())
    body = status_of(err)
    assert body["message"].startswith('deployments.apps "web" is forbidden: ')
    assert (body["details"]["group"], body["details"]["name"]) == ("apps", "web")


def _pb_field(number: int, payload: bytes | int, wire: int = 2) -> bytes:
    """One protobuf field: a varint (wire 0), a length-delimited payload (wire 2) or raw
    bytes after the tag (wire 1, 5: fixed 64 and 32 bits)."""
    def varint(value: int) -> bytes:
        out = b""
        while True:
            low, value = value & 0x7F, value >> 7
            out += bytes([low | (0x80 if value else 0)])
            if not value:
                return out
    tag = varint(number << 3 | wire)
    if wire == 0:
        assert isinstance(payload, int)
        return tag + varint(payload)
    assert isinstance(payload, bytes)
    return tag + (varint(len(payload)) + payload if wire == 2 else payload)


def test_hostile_protobuf_bodies_are_refused_or_decoded_never_a_server_error(kube):
    """The protobuf wire format (https://protobuf.dev/programming-guides/encoding/) as
    k8s.io/api's generated Unmarshal reads it: a field of the wrong wire type is an error
    (`proto: wrong wireType = 2 for field Immutable`), so is a fixed 64-bit field cut short
    (`unexpected EOF`): 400 BadRequest; a Time is `time.Unix(seconds, nanos)` whatever the
    seconds (apimachinery meta/v1 time_proto.go), and a create sets creationTimestamp itself,
    so a far-off one is no error."""
    def post(body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{kube.url}/api/v1/namespaces/{NS}/secrets", data=b"k8s\x00" + body,
            method="POST", headers={"Content-Type": "application/vnd.kubernetes.protobuf"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def secret(name: bytes, meta: bytes = b"", body: bytes = b"") -> bytes:
        """A Secret in its runtime.Unknown: `meta` appended to its ObjectMeta, `body` to it."""
        type_meta = _pb_field(1, b"v1") + _pb_field(2, b"Secret")
        return _pb_field(1, type_meta) + _pb_field(2, _pb_field(1, _pb_field(1, name) + meta)
                                                   + body)

    for seconds in (2**63 - 1, 2**64 - 1, 2**62):  # the largest, -1 and far beyond year 9999
        when = _pb_field(8, _pb_field(1, seconds, wire=0))  # ObjectMeta.creationTimestamp
        code, made = post(secret(f"t{seconds % 997}".encode(), meta=when))
        assert code == 201, made
        assert made["metadata"]["creationTimestamp"].startswith("20")
    code, refused = post(secret(b"b", body=_pb_field(5, b"\x01")))  # Secret.immutable
    assert (code, refused["reason"]) == (400, "BadRequest")
    assert "wrong wireType = 2" in refused["message"]
    assert post(secret(b"g", meta=_pb_field(7, b"\x01")))[0] == 400  # generation: int64
    assert post(secret(b"s", meta=_pb_field(3, 7, wire=0)))[0] == 400  # namespace: string
    cut = _pb_field(9, b"\x01\x02", wire=1)  # 2 of a fixed 64 bits field's 8 bytes
    code, refused = post(secret(b"c", body=cut))
    assert (code, refused["reason"]) == (400, "BadRequest")
    assert kube.custom_objects("secrets", NS) and all(
        o["metadata"]["name"].startswith("t") for o in kube.custom_objects("secrets", NS))
