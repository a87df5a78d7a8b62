"""The test apiserver's custom resources (tests/support/kube), through the unmodified
kubernetes client, each behaviour pinned to what kube-apiserver does. Sources named in the
docstrings: the Kubernetes API conventions
(https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md),
the CustomResourceDefinition task page
(https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/),
the API concepts page (https://kubernetes.io/docs/reference/using-api/api-concepts/), and the
apiserver sources (k8s.io/apiserver, k8s.io/apiextensions-apiserver, k8s.io/apimachinery)."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from tests.support.kube import KubeApiServer
from tests.support.kube.crd import DEPLOY_CRDS, deploy_crds, load_crds

G, V = "vspherecapacitymanager.splat.io", "v1"
API_VERSION = f"{G}/{V}"
NS = "default"


def lease(name: str | None = "l1", labels: dict[str, str] | None = None, **spec) -> dict:
    meta: dict = {"name": name} if name else {"generateName": "b1-"}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": API_VERSION, "kind": "Lease", "metadata": meta,
            "spec": {"vcpus": 24, "memory": 96, "networks": 1, **spec}}


def pool(name: str = "pool1") -> dict:
    return {"apiVersion": API_VERSION, "kind": "Pool", "metadata": {"name": name},
            "spec": {"name": name, "server": "vcenter1.example.com", "vcpus": 120,
                     "memory": 1600, "storage": 10000, "exclude": False,
                     "topology": {"datacenter": "dc1", "computeCluster": "/dc1/host/c1",
                                  "datastore": "/dc1/datastore/ds1",
                                  "networks": ["/dc1/network/ci-vlan-1"]}}}


def create(custom, body: dict, plural: str = "leases", ns: str = NS) -> dict:
    return custom.create_namespaced_custom_object(G, V, ns, plural, body)


def status_of(err: pytest.ExceptionInfo[ApiException]) -> dict:
    body = json.loads(err.value.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["code"] == err.value.status
    return body


def fields_of(err: pytest.ExceptionInfo[ApiException]) -> dict[str, str]:
    return {c["field"]: c["message"] for c in status_of(err)["details"]["causes"]}


def raw(kube, method: str, path: str, body: object = None,
        content_type: str = "application/json") -> tuple[int, dict, dict]:
    """A request with the standard library, to see headers and exact statuses."""
    data = body if isinstance(body, bytes) else (None if body is None else
                                                 json.dumps(body).encode())
    request = urllib.request.Request(kube.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"{}"), dict(answer.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), dict(err.headers)


LEASES = f"/apis/{G}/{V}/namespaces/{NS}/leases"


# ---- the definitions ---------------------------------------------------------------------------


def test_the_kinds_are_served_from_the_crd_files_in_deploy():
    """The server serves exactly the CRDs of deploy/crds/, read from their YAML: group, kind,
    plural, scope and the status subresource come from the manifests (upstream's API:
    Lease, Pool, Network namespaced, a status subresource on Lease and Pool)."""
    crds = {c.kind: c for c in deploy_crds()}
    assert set(crds) == {"Lease", "Pool", "Network"}
    assert {c.group for c in crds.values()} == {G} and {c.version for c in crds.values()} == {V}
    assert all(c.namespaced for c in crds.values())
    assert crds["Lease"].status_subresource and crds["Pool"].status_subresource
    assert not crds["Network"].status_subresource
    spec = crds["Lease"].schema["properties"]["spec"]
    assert spec["required"] == ["networks"]
    assert spec["properties"]["pools"]["default"] == 1
    assert spec["properties"]["network-type"]["default"] == "single-tenant"
    assert spec["properties"]["network-type"]["enum"] == [
        "", "disconnected", "single-tenant", "multi-tenant", "nested-multi-tenant",
        "public-ipv6"]
    columns = [c["name"] for c in crds["Lease"].printer_columns]
    assert columns[:3] == ["vCPUs", "Memory(GB)", "Phase"]
    assert len(list(DEPLOY_CRDS.glob("*.yaml"))) == 3


def test_any_crd_file_is_served_generically(tmp_path: Path):
    """Nothing is hand-coded per kind: a cluster-scoped CRD of another group, loaded from a
    file, is served with its own paths, schema, defaults and printer columns (CRD task page:
    scope Cluster serves /apis/<group>/<version>/<plural>/<name>)."""
    manifest = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Cluster",
                 "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
                 "versions": [{"name": "v2", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "properties": {
                                       "size": {"type": "integer", "default": 3,
                                                "maximum": 10}}}}}}}]}}
    path = tmp_path / "widgets.yaml"
    path.write_text(yaml.safe_dump(manifest))
    with KubeApiServer(crds=load_crds([path])) as server:
        api = client.CustomObjectsApi(server.api_client())
        made = api.create_cluster_custom_object("example.com", "v2", "widgets", {
            "apiVersion": "example.com/v2", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {}})
        assert made["spec"] == {"size": 3} and "namespace" not in made["metadata"]
        with pytest.raises(ApiException) as err:
            api.create_cluster_custom_object("example.com", "v2", "widgets", {
                "apiVersion": "example.com/v2", "kind": "Widget", "metadata": {"name": "x"},
                "spec": {"size": 11}})
        assert fields_of(err) == {
            "spec.size": "Invalid value: 11: spec.size in body should be less than or equal "
                         "to 10"}
        code, _, _ = raw(server, "GET", f"/apis/{G}/{V}/namespaces/{NS}/leases")
        assert code == 404  # only the CRDs it was given


# ---- discovery ---------------------------------------------------------------------------------


def test_discovery_lists_the_resources_with_verbs_short_names_and_categories(kube):
    """What kubectl, client-go's discovery and kopf read: /apis has the group; its version's
    APIResourceList names each plural with singularName, namespaced, kind, the verbs a CRD
    gets (create, delete, deletecollection, get, list, patch, update, watch), shortNames and
    categories, and `<plural>/status` (get, patch, update) when the CRD has the status
    subresource (apiextensions-apiserver: crdHandler discovery)."""
    api_client = kube.api_client()
    groups = client.ApisApi(api_client).get_api_versions()
    (group,) = [g for g in groups.groups if g.name == G]
    assert group.preferred_version.group_version == API_VERSION
    _, body, _ = raw(kube, "GET", f"/apis/{G}/{V}")
    resources = {r["name"]: r for r in body["resources"]}
    assert body["groupVersion"] == API_VERSION
    assert set(resources) == {"leases", "leases/status", "pools", "pools/status", "networks"}
    assert sorted(resources["leases"]["verbs"]) == ["create", "delete", "deletecollection",
                                                    "get", "list", "patch", "update", "watch"]
    assert resources["leases"]["kind"] == "Lease" and resources["leases"]["namespaced"]
    assert resources["leases"]["singularName"] == "lease"
    assert resources["leases"]["categories"] == ["vcm"]
    assert resources["leases"]["shortNames"] == ["vcmlease"]
    assert sorted(resources["leases/status"]["verbs"]) == ["get", "patch", "update"]
    # the dynamic client resolves kinds through the same discovery documents
    dyn = dynamic.DynamicClient(api_client)
    leases = dyn.resources.get(api_version=API_VERSION, kind="Lease")
    assert leases.name == "leases" and leases.namespaced
    made = leases.create(body=lease(), namespace=NS)
    assert made.metadata.name == "l1"
    assert dyn.resources.get(api_version="v1", kind="ConfigMap").name == "configmaps"
    api_client.close()


# ---- create ------------------------------------------------------------------------------------


def test_create_assigns_server_metadata_and_generates_names(kube, custom):
    """generateName: the server appends 5 random characters (names.SimpleNameGenerator,
    utilrand's alphabet without vowels); uid, creationTimestamp, resourceVersion and
    generation 1 are the server's (customResourceStrategy.PrepareForCreate); a second object
    of the same name is 409 AlreadyExists."""
    made = create(custom, lease(None))
    name = made["metadata"]["name"]
    assert re.fullmatch(r"b1-[bcdfghjklmnpqrstvwxz2456789]{5}", name)
    meta = made["metadata"]
    assert meta["namespace"] == NS and meta["generation"] == 1 and meta["uid"]
    assert meta["creationTimestamp"].endswith("Z") and meta["generateName"] == "b1-"
    assert int(meta["resourceVersion"]) == kube.resource_version
    assert made["apiVersion"] == API_VERSION and made["kind"] == "Lease"
    create(custom, lease("same"))
    with pytest.raises(ApiException) as err:
        create(custom, lease("same"))
    body = status_of(err)
    assert err.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["message"] == f'leases.{G} "same" already exists'
    assert body["details"] == {"name": "same", "group": G, "kind": "leases"}


def test_create_drops_the_status_when_the_status_subresource_is_on(custom):
    """CRD task page, status subresource: "PUT/POST/PATCH requests to the custom resource
    ignore changes to the status stanza" (PrepareForCreate deletes status); a kind without
    the subresource (Network) keeps it."""
    made = create(custom, {**lease(), "status": {"phase": "Fulfilled"}})
    assert "status" not in made
    network = {"apiVersion": API_VERSION, "kind": "Network", "metadata": {"name": "n1"},
               "spec": {"portGroupName": "ci-vlan-1", "vlanId": "1", "datacenterName": "dc"},
               "status": {}}
    assert "status" in create(custom, network, "networks")


def test_create_needs_the_namespace_and_not_a_terminating_one(kube, custom):
    """NamespaceLifecycle admission: creating in a namespace that does not exist is 404
    `namespaces "x" not found`; in one being deleted, 403 `unable to create new content in
    namespace x because it is being terminated`."""
    with pytest.raises(ApiException) as err:
        create(custom, lease(), ns="nowhere")
    assert err.value.status == 404
    assert status_of(err)["message"] == 'namespaces "nowhere" not found'
    kube.create_namespace("ci", finalizers=["example.com/hold"])
    kube.delete_namespace("ci")
    with pytest.raises(ApiException) as err:
        create(custom, lease(), ns="ci")
    assert err.value.status == 403
    assert "unable to create new content in namespace ci because it is being terminated" in \
        status_of(err)["message"]


def test_wrong_bodies_are_400_not_500(custom, kube):
    """Decoding errors are 400 BadRequest (handlers/rest.go transformDecodeError): a body
    that is not JSON, not an object, without kind, of another kind or apiVersion, or with
    metadata of the wrong type; a namespace in the body other than the URL's is 400 too. A
    custom resource's body must name its kind (json.Serializer.Decode into Unstructured:
    "Object 'Kind' is missing"), unlike a built-in kind's, which defaults to the URL's."""
    cases = [b"{not json", b"[1,2]", json.dumps({"apiVersion": API_VERSION,
                                                "metadata": {"name": "x"}}).encode(),
             json.dumps({**lease(), "kind": "Pool"}).encode(),
             json.dumps({**lease(), "apiVersion": f"{G}/v9"}).encode(),
             json.dumps({**lease(), "metadata": {"name": "x", "labels": ["a"]}}).encode(),
             json.dumps({**lease(), "metadata": {"name": "x", "namespace": "other"}}).encode()]
    for body in cases:
        code, answer, _ = raw(kube, "POST", LEASES, body)
        assert code == 400, (body, answer)
        assert answer["reason"] == "BadRequest"
    code, answer, _ = raw(kube, "POST", LEASES, {"metadata": {"name": "x"}})
    assert code == 400 and "Object 'Kind' is missing" in answer["message"]
    code, event, _ = raw(kube, "POST", f"/api/v1/namespaces/{NS}/events",
                         {"metadata": {"generateName": "x-"}, "reason": "Queued"})
    assert code == 201 and event["kind"] == "Event" and event["apiVersion"] == "v1"


# ---- defaults, pruning and validation ------------------------------------------------------------


def test_schema_defaults_are_applied_also_over_nulls(custom):
    """CRD task page, Defaulting: a missing field with a default gets it, and "null values for
    fields that either don't specify the nullable flag, or give it a false value, will be
    pruned before defaulting happens. If a default is present, it will be applied"; a field
    under an absent parent is not defaulted."""
    made = create(custom, lease(pools=None, tolerations=[{"key": "k"}]))
    assert made["spec"]["pools"] == 1 and made["spec"]["network-type"] == "single-tenant"
    assert made["spec"]["tolerations"] == [{"key": "k"}]
    made = create(custom, lease("l2", **{"network-type": "multi-tenant", "vcenters": None}))
    assert made["spec"]["network-type"] == "multi-tenant" and "vcenters" not in made["spec"]


def test_unknown_fields_are_pruned_with_a_warning_by_default_refused_when_strict(kube):
    """API concepts, Field validation: fieldValidation=Ignore drops unknown fields silently,
    Warn (the default) drops them with a `Warning: 299` header each (`unknown field
    "spec.x"`), Strict refuses the request with 400 naming them (`strict decoding error:
    unknown field "spec.x"`, runtime.NewStrictDecodingError); unknown metadata fields too."""
    body = {**lease(), "spec": {**lease()["spec"], "vcpu": 3},
            "metadata": {"name": "w", "bogus": 1}}
    code, made, headers = raw(kube, "POST", LEASES, body)
    assert code == 201 and "vcpu" not in made["spec"] and "bogus" not in made["metadata"]
    assert headers["Warning"] == ('299 - "unknown field \\"metadata.bogus\\"", '
                                  '299 - "unknown field \\"spec.vcpu\\""')
    code, answer, _ = raw(kube, "POST", LEASES + "?fieldValidation=Strict",
                          {**body, "metadata": {"name": "s"}})
    assert code == 400 and answer["message"] == (
        'Lease in version "v1" cannot be handled as a Lease: strict decoding error: '
        'unknown field "spec.vcpu"')
    code, made, headers = raw(kube, "POST", LEASES + "?fieldValidation=Ignore",
                              {**body, "metadata": {"name": "i"}})
    assert code == 201 and "Warning" not in headers and "vcpu" not in made["spec"]
    # the warnings come with an error answer too
    code, _, headers = raw(kube, "POST", LEASES, {**body, "metadata": {"name": "i"}})
    assert code == 409 and 'unknown field \\"spec.vcpu\\"' in headers["Warning"]
    code, answer, _ = raw(kube, "POST", LEASES + "?fieldValidation=Strict",
                          b'{"apiVersion":"%s","kind":"Lease","metadata":{"name":"d"},'
                          b'"spec":{"networks":1,"networks":2}}' % API_VERSION.encode())
    assert code == 400 and 'duplicate field "networks"' in answer["message"]


@pytest.mark.parametrize("spec, field, message", [
    ({"pools": 0}, "spec.pools",
     "Invalid value: 0: spec.pools in body should be greater than or equal to 1"),
    ({"pools": 17}, "spec.pools",
     "Invalid value: 17: spec.pools in body should be less than or equal to 16"),
    ({"vcpus": -1}, "spec.vcpus",
     "Invalid value: -1: spec.vcpus in body should be greater than or equal to 0"),
    ({"vcpus": "24"}, "spec.vcpus",
     'Invalid value: "string": spec.vcpus in body must be of type integer: "string"'),
    ({"network-type": "shared"}, "spec.network-type",
     'Unsupported value: "shared": supported values: "", "disconnected", "single-tenant", '
     '"multi-tenant", "nested-multi-tenant", "public-ipv6"'),
    ({"tolerations": [{"operator": "Maybe"}]}, "spec.tolerations[0].operator",
     'Unsupported value: "Maybe": supported values: "Exists", "Equal"'),
    ({"poolSelector": {"region": 1}}, "spec.poolSelector.region",
     'Invalid value: "integer": spec.poolSelector.region in body must be of type string: '
     '"integer"'),
])
def test_schema_violations_are_422_with_a_cause_naming_the_field(custom, spec, field, message):
    """kube-openapi's validator through apiextensions' kubeOpenAPIResultToFieldErrors: the
    Status is 422 Invalid, `Lease.<group> "<name>" is invalid: <field>: <message>`, with a
    cause per field (reason FieldValueInvalid / FieldValueNotSupported /
    FieldValueTypeInvalid, field, message as field.Error.ErrorBody writes it)."""
    with pytest.raises(ApiException) as err:
        create(custom, lease(**spec))
    body = status_of(err)
    assert err.value.status == 422 and body["reason"] == "Invalid"
    assert fields_of(err) == {field: message}
    assert body["message"] == f'Lease.{G} "l1" is invalid: {field}: {message}'
    assert body["details"]["kind"] == "Lease" and body["details"]["group"] == G


def test_the_lease_crd_bounds_pools_as_a_request_does():
    """The apiserver refuses what the worker would: spec.pools runs from 1 to MAX_POOLS."""
    from workers.core.parsing import MAX_POOLS

    (crd,) = [c for c in deploy_crds() if c.kind == "Lease"]
    schema = crd.schema["properties"]["spec"]["properties"]["pools"]
    assert (schema["minimum"], schema["maximum"]) == (1, MAX_POOLS)


def test_required_fields_and_metadata_are_validated_together(custom):
    """Several errors are one 422 whose message lists them in brackets; `Required value`
    (FieldValueRequired) for a missing required field; labels, finalizers and
    ownerReferences are validated as ObjectMeta (apimachinery objectmeta validation)."""
    body = lease(labels={"bad key": "x", "ok": "bad value"})
    del body["spec"]["networks"]
    body["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap",
                                            "name": "x", "uid": ""}]
    with pytest.raises(ApiException) as err:
        create(custom, body)
    fields = [c["field"] for c in status_of(err)["details"]["causes"]]
    assert sorted(fields) == ["metadata.labels", "metadata.labels",
                              "metadata.ownerReferences[0].uid", "spec.networks"]
    assert fields_of(err)["spec.networks"] == "Required value"
    assert status_of(err)["message"].startswith(f'Lease.{G} "l1" is invalid: [')
    with pytest.raises(ApiException) as err:
        create(custom, {**lease(), "metadata": {"name": "Not_A_Name"}})
    assert list(fields_of(err)) == ["metadata.name"]


def test_status_is_validated_against_its_schema(custom):
    """The /status subresource validates the status (statusStrategy.ValidateUpdate): a phase
    outside the enum, a condition without its required status, a duplicate condition type of
    an x-kubernetes-list-type map (structurallisttype: Duplicate value)."""
    create(custom, lease())
    bad = {"status": {"phase": "Done", "conditions": [
        {"type": "Fulfilled", "status": "True"}, {"type": "Fulfilled", "status": "False"},
        {"type": "Pending"}]}}
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object_status(G, V, NS, "leases", "l1", bad)
    assert fields_of(err) == {
        "status.phase": 'Unsupported value: "Done": supported values: "", "Pending", '
                        '"Partial", "Fulfilled", "Failed"',
        "status.conditions[2].status": "Required value",
        "status.conditions[1]": 'Duplicate value: {"type":"Fulfilled"}',
    }


# ---- update ------------------------------------------------------------------------------------


def test_update_needs_the_current_resource_version(kube, custom):
    """Custom resources allow no unconditional update (customResourceStrategy.
    AllowUnconditionalUpdate is false): a PUT without metadata.resourceVersion is 422
    `must be specified for an update`; a stale one is 409 Conflict (optimistic concurrency,
    API conventions); a PUT of an object that does not exist is 404 (no create on update)."""
    made = create(custom, lease())
    body = {**made, "metadata": {**made["metadata"]}}
    del body["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(G, V, NS, "leases", "l1", body)
    assert err.value.status == 422 and fields_of(err) == {
        "metadata.resourceVersion": "Invalid value: 0x0: must be specified for an update"}
    updated = custom.replace_namespaced_custom_object(
        G, V, NS, "leases", "l1", {**made, "spec": {**made["spec"], "vcpus": 8}})
    assert updated["spec"]["vcpus"] == 8
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(G, V, NS, "leases", "l1", made)
    body = status_of(err)
    assert err.value.status == 409 and body["reason"] == "Conflict"
    assert body["message"] == (
        f'Operation cannot be fulfilled on leases.{G} "l1": the object has been modified; '
        "please apply your changes to the latest version and try again")
    assert kube.conflicts == 1
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(G, V, NS, "leases", "zz",
                                                {**made, "metadata": {"name": "zz",
                                                                      "resourceVersion": "1"}})
    assert err.value.status == 404


def test_generation_counts_spec_changes_only(kube, custom):
    """metadata.generation: "a sequence number representing a specific generation of the
    desired state" (API conventions); for custom resources it is bumped by any change outside
    metadata (and with the status subresource, status changes never reach the main
    resource); a no-op update writes nothing and keeps the resourceVersion."""
    made = create(custom, lease())
    rv = made["metadata"]["resourceVersion"]
    same = custom.replace_namespaced_custom_object(G, V, NS, "leases", "l1", made)
    assert same["metadata"]["resourceVersion"] == rv
    labelled = custom.patch_namespaced_custom_object(G, V, NS, "leases", "l1",
                                                     {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 1
    assert labelled["metadata"]["resourceVersion"] != rv
    changed = custom.patch_namespaced_custom_object(G, V, NS, "leases", "l1",
                                                    {"spec": {"memory": 48}})
    assert changed["metadata"]["generation"] == 2
    status = custom.patch_namespaced_custom_object_status(
        G, V, NS, "leases", "l1", {"status": {"phase": "Pending"}})
    assert status["metadata"]["generation"] == 2
    network = create(custom, {"apiVersion": API_VERSION, "kind": "Network",
                              "metadata": {"name": "n1"},
                              "spec": {"portGroupName": "p", "vlanId": "1",
                                       "datacenterName": "dc"}}, "networks")
    # no status subresource: status is part of the object, and counts
    bumped = custom.patch_namespaced_custom_object(G, V, NS, "networks", "n1",
                                                   {"status": {}})
    assert network["metadata"]["generation"] == 1
    assert bumped["metadata"]["generation"] == 2


def test_the_status_subresource_splits_spec_and_status(kube, custom):
    """CRD task page, Status subresource: the main resource ignores changes to status; /status
    ignores everything but status (statusStrategy.PrepareForUpdate copies the old object,
    metadata included, and sets only the status); a kind without the subresource has no
    /status (404)."""
    create(custom, lease())
    main = custom.patch_namespaced_custom_object(G, V, NS, "leases", "l1",
                                                 {"status": {"phase": "Fulfilled"}})
    assert "status" not in main
    status = custom.patch_namespaced_custom_object_status(
        G, V, NS, "leases", "l1", {"status": {"phase": "Pending"}, "spec": {"vcpus": 1},
                                   "metadata": {"labels": {"x": "y"}}})
    assert status["status"] == {"phase": "Pending"} and status["spec"]["vcpus"] == 24
    assert "labels" not in status["metadata"]
    read = custom.get_namespaced_custom_object_status(G, V, NS, "leases", "l1")
    assert read == custom.get_namespaced_custom_object(G, V, NS, "leases", "l1")
    assert read["status"] == {"phase": "Pending"}
    put = custom.replace_namespaced_custom_object(G, V, NS, "leases", "l1",
                                                  {**read, "status": {"phase": "Failed"}})
    assert put["status"] == {"phase": "Pending"}
    code, _, _ = raw(kube, "GET", f"/apis/{G}/{V}/namespaces/{NS}/networks/n/status")
    assert code == 404


# ---- patches -----------------------------------------------------------------------------------


def test_merge_json_and_apply_patches_strategic_merge_is_415(kube, custom):
    """Custom resources take JSON merge patches, JSON patches and server-side apply, not
    strategic merge patches (415 UnsupportedMediaType naming the accepted types: CRD task
    page, "Custom resources do not support strategic merge patch"); a failed JSON patch
    `test` is 422; an apply without fieldManager is 422; apply creates a missing object."""
    create(custom, lease())
    merged = custom.patch_namespaced_custom_object(
        G, V, NS, "leases", "l1", {"spec": {"poolSelector": {"a": "1"}, "vcpus": None}},
        _content_type="application/merge-patch+json")
    assert merged["spec"]["poolSelector"] == {"a": "1"} and "vcpus" not in merged["spec"]
    patched = custom.patch_namespaced_custom_object(
        G, V, NS, "leases", "l1", [{"op": "replace", "path": "/spec/memory", "value": 8}],
        _content_type="application/json-patch+json")
    assert patched["spec"]["memory"] == 8
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            G, V, NS, "leases", "l1", [{"op": "test", "path": "/spec/memory", "value": 9}],
            _content_type="application/json-patch+json")
    assert err.value.status == 422
    code, answer, _ = raw(kube, "PATCH", LEASES + "/l1", {"spec": {"vcpus": 1}},
                          "application/strategic-merge-patch+json")
    assert code == 415 and answer["reason"] == "UnsupportedMediaType"
    assert "application/merge-patch+json" in answer["message"]
    applied_body = yaml.safe_dump(lease("a1", pools=2)).encode()
    code, _, _ = raw(kube, "PATCH", LEASES + "/a1", applied_body,
                     "application/apply-patch+yaml")
    assert code == 422
    code, applied, _ = raw(kube, "PATCH", LEASES + "/a1?fieldManager=ci", applied_body,
                           "application/apply-patch+yaml")
    assert code == 201 and applied["spec"]["pools"] == 2
    code, applied, _ = raw(kube, "PATCH", LEASES + "/a1?fieldManager=ci",
                           yaml.safe_dump({"apiVersion": API_VERSION, "kind": "Lease",
                                           "metadata": {"name": "a1"},
                                           "spec": {"pools": 3}}).encode(),
                           "application/apply-patch+yaml")
    assert code == 200 and applied["spec"]["pools"] == 3 and applied["spec"]["vcpus"] == 24
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(G, V, NS, "leases", "nope", {"spec": {}})
    assert err.value.status == 404


def test_a_patch_with_a_stale_resource_version_is_a_conflict(custom):
    """A resourceVersion in a patch is a precondition (API concepts: "if the patch includes a
    resourceVersion, the server checks it")."""
    made = create(custom, lease())
    custom.patch_namespaced_custom_object(G, V, NS, "leases", "l1", {"spec": {"vcpus": 2}})
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            G, V, NS, "leases", "l1",
            {"metadata": {"resourceVersion": made["metadata"]["resourceVersion"]},
             "spec": {"vcpus": 3}})
    assert err.value.status == 409


# ---- finalizers and deletion -------------------------------------------------------------------


def test_delete_with_finalizers_marks_and_the_last_finalizer_deletes(kube, custom):
    """API concepts / Finalizers: a delete of an object with finalizers sets
    deletionTimestamp (and deletionGracePeriodSeconds 0, generation + 1: store.go
    markAsDeleting) and answers the object; it stays until its finalizers are removed, and
    the update that removes the last one deletes it. No new finalizer may be added while
    deleting (422 Forbidden). Without finalizers a delete answers a Status Success with the
    object's uid (store.go finalizeDelete without ReturnDeletedObject)."""
    made = create(custom, {**lease(), "metadata": {"name": "l1",
                                                   "finalizers": ["vcm.example.com/hold"]}})
    marked = custom.delete_namespaced_custom_object(G, V, NS, "leases", "l1")
    assert marked["kind"] == "Lease" and marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 0
    assert marked["metadata"]["generation"] == 2
    again = custom.delete_namespaced_custom_object(G, V, NS, "leases", "l1")
    assert again["metadata"]["resourceVersion"] == marked["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            G, V, NS, "leases", "l1",
            {"metadata": {"finalizers": ["vcm.example.com/hold", "vcm.example.com/more"]}})
    assert err.value.status == 422 and "no new finalizers can be added" in \
        fields_of(err)["metadata.finalizers"]
    # a spec change while deleting is still an update
    custom.patch_namespaced_custom_object(G, V, NS, "leases", "l1", {"spec": {"vcpus": 1}})
    last = custom.patch_namespaced_custom_object(
        G, V, NS, "leases", "l1", {"metadata": {"finalizers": None}})
    assert last["metadata"]["deletionTimestamp"] and "finalizers" not in last["metadata"]
    assert kube.custom_object("leases", NS, "l1") is None
    create(custom, lease("l2"))
    done = custom.delete_namespaced_custom_object(G, V, NS, "leases", "l2")
    assert done["kind"] == "Status" and done["status"] == "Success"
    assert done["details"]["name"] == "l2" and done["details"]["kind"] == "leases"
    assert made["metadata"]["uid"] != done["details"]["uid"]


def test_delete_preconditions(custom):
    """DeleteOptions.preconditions: a resourceVersion or uid that does not match is 409."""
    made = create(custom, lease())
    for pre in ({"resourceVersion": "1"}, {"uid": "not-it"}):
        with pytest.raises(ApiException) as err:
            custom.delete_namespaced_custom_object(
                G, V, NS, "leases", "l1", body=client.V1DeleteOptions(preconditions=pre))
        assert err.value.status == 409
    custom.delete_namespaced_custom_object(
        G, V, NS, "leases", "l1",
        body=client.V1DeleteOptions(preconditions={"uid": made["metadata"]["uid"]}))


def test_deletecollection_by_label_selector(kube, custom):
    """DELETE on the collection (deletecollection) deletes what the selectors match, each as
    a single delete would (finalizers respected), and answers the list of them."""
    create(custom, lease("a", labels={"boskos-lease-id": "b1"}))
    create(custom, {**lease("b", labels={"boskos-lease-id": "b1"}),
                    "metadata": {"name": "b", "labels": {"boskos-lease-id": "b1"},
                                 "finalizers": ["vcm.example.com/hold"]}})
    create(custom, lease("c", labels={"boskos-lease-id": "b2"}))
    answer = custom.delete_collection_namespaced_custom_object(
        G, V, NS, "leases", label_selector="boskos-lease-id=b1")
    assert answer["kind"] == "LeaseList"
    assert sorted(i["metadata"]["name"] for i in answer["items"]) == ["a", "b"]
    names = [o["metadata"]["name"] for o in kube.custom_objects("leases", NS)]
    assert names == ["b", "c"]
    assert kube.custom_object("leases", NS, "b")["metadata"]["deletionTimestamp"]


# ---- list --------------------------------------------------------------------------------------


def test_label_and_field_selectors(custom):
    """Label selectors (API concepts / labels: equality `=`, `==`, `!=` and set-based `in`,
    `notin`, `key`, `!key`; `!=` and `notin` match objects without the key) and field
    selectors (metadata.name, metadata.namespace for custom resources: customResourceStrategy
    .GetAttrs); an unsupported field is 400 `field label not supported`, a selector that
    does not parse is 400."""
    create(custom, lease("a", labels={"env": "ci", "tier": "1"}))
    create(custom, lease("b", labels={"env": "prod"}))
    create(custom, lease("c"))

    def names(**kw) -> list[str]:
        return [i["metadata"]["name"] for i in
                custom.list_namespaced_custom_object(G, V, NS, "leases", **kw)["items"]]

    assert names(label_selector="env in (ci,prod)") == ["a", "b"]
    assert names(label_selector="env notin (ci)") == ["b", "c"]
    assert names(label_selector="!env") == ["c"]
    assert names(label_selector="env,tier") == ["a"]
    assert names(label_selector="env!=ci") == ["b", "c"]
    assert names(label_selector="env==prod") == ["b"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b,metadata.namespace=default") == ["a", "c"]
    all_ns = custom.list_cluster_custom_object(G, V, "leases",
                                               field_selector="metadata.namespace=default")
    assert len(all_ns["items"]) == 3
    for bad in ({"field_selector": "spec.vcpus=24"}, {"label_selector": "env in (ci"},
                {"label_selector": "bad key=x"}):
        with pytest.raises(ApiException) as err:
            names(**bad)
        assert err.value.status == 400
    with pytest.raises(ApiException) as err:
        names(field_selector="spec.vcpus=24")
    assert status_of(err)["message"] == "field label not supported: spec.vcpus"


def test_list_resource_version_and_paging(kube, custom):
    """A list carries the store's resourceVersion in its metadata (API concepts, Efficient
    detection of changes); `limit` cuts it into pages joined by `continue`, with
    remainingItemCount (API concepts, Retrieving large results sets in chunks); a continue
    token whose resourceVersion has been compacted away is 410 Expired."""
    for name in "abcde":
        create(custom, lease(name))
    first = custom.list_namespaced_custom_object(G, V, NS, "leases", limit=2)
    assert first["metadata"]["resourceVersion"] == str(kube.resource_version)
    assert first["metadata"]["remainingItemCount"] == 3
    seen = [i["metadata"]["name"] for i in first["items"]]
    token = first["metadata"]["continue"]
    while token:
        page = custom.list_namespaced_custom_object(G, V, NS, "leases", limit=2,
                                                    _continue=token)
        seen += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert seen == list("abcde")
    create(custom, lease("f"))
    kube.compact()
    with pytest.raises(ApiException) as err:
        custom.list_namespaced_custom_object(G, V, NS, "leases", limit=2,
                                             _continue=first["metadata"]["continue"])
    assert err.value.status == 410


# ---- garbage collection and namespaces ------------------------------------------------------


def _owner_ref(owner: dict) -> dict:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}


def test_dependents_go_with_their_owners(kube, custom):
    """Garbage collection (https://kubernetes.io/docs/concepts/architecture/garbage-collection/):
    an object whose owners are all gone is deleted (background cascading: finalizers
    respected); one with a live owner left loses the dangling reference; with
    propagationPolicy Orphan the dependents stay without the reference; an owner of a kind the
    server does not serve is not judged. Here the collector runs at once, after every write."""
    pool1, pool2 = create(custom, pool("pool1"), "pools"), create(custom, pool("pool2"), "pools")
    ref1, ref2 = _owner_ref(pool1), _owner_ref(pool2)
    create(custom, {**lease("one"), "metadata": {"name": "one", "ownerReferences": [ref1]}})
    create(custom, {**lease("two"), "metadata": {"name": "two",
                                                 "ownerReferences": [ref1, ref2]}})
    create(custom, {**lease("held"), "metadata": {"name": "held", "ownerReferences": [ref1],
                                                  "finalizers": ["vcm.example.com/hold"]}})
    foreign = {"apiVersion": "batch/v1", "kind": "Job", "name": "d", "uid": "u"}
    create(custom, {**lease("foreign"), "metadata": {"name": "foreign",
                                                     "ownerReferences": [foreign]}})
    custom.delete_namespaced_custom_object(G, V, NS, "pools", "pool1")
    assert kube.custom_object("leases", NS, "one") is None
    two = kube.custom_object("leases", NS, "two")
    assert two["metadata"]["ownerReferences"] == [ref2]
    assert kube.custom_object("leases", NS, "held")["metadata"]["deletionTimestamp"]
    assert kube.custom_object("leases", NS, "foreign") is not None
    custom.delete_namespaced_custom_object(
        G, V, NS, "pools", "pool2", body=client.V1DeleteOptions(propagation_policy="Orphan"))
    assert kube.custom_object("pools", NS, "pool2") is None
    assert "ownerReferences" not in kube.custom_object("leases", NS, "two")["metadata"]
    # created with an owner that does not exist: collected at once
    create(custom, {**lease("late"), "metadata": {"name": "late", "ownerReferences": [ref1]}})
    assert kube.custom_object("leases", NS, "late") is None


def test_foreground_deletion_waits_for_the_dependents(kube, custom):
    """propagationPolicy Foreground: the owner gets finalizer foregroundDeletion and a
    deletionTimestamp, its dependents are deleted, and the owner goes once none is left
    (garbage-collection page, Foreground cascading deletion)."""
    owner = create(custom, pool(), "pools")
    create(custom, {**lease(), "metadata": {"name": "l1", "ownerReferences": [
        _owner_ref(owner)], "finalizers": ["vcm.example.com/hold"]}})
    marked = custom.delete_namespaced_custom_object(
        G, V, NS, "pools", "pool1", body=client.V1DeleteOptions(
            propagation_policy="Foreground"))
    assert marked["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert kube.custom_object("pools", NS, "pool1") is not None
    custom.patch_namespaced_custom_object(G, V, NS, "leases", "l1",
                                          {"metadata": {"finalizers": None}})
    assert kube.custom_object("leases", NS, "l1") is None
    assert kube.custom_object("pools", NS, "pool1") is None


def test_a_deleted_namespace_takes_its_custom_objects(kube, custom):
    """The namespace controller deletes a terminating namespace's content; an object with a
    finalizer keeps the namespace Terminating until the finalizer is removed (namespace
    lifecycle, https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces/)."""
    kube.create_namespace("ci")
    create(custom, lease("a"), ns="ci")
    create(custom, {**lease("b"), "metadata": {"name": "b",
                                               "finalizers": ["vcm.example.com/hold"]}},
           ns="ci")
    core = client.CoreV1Api(kube.api_client())
    core.delete_namespace("ci")
    assert kube.custom_object("leases", "ci", "a") is None
    assert kube.custom_object("leases", "ci", "b")["metadata"]["deletionTimestamp"]
    assert core.read_namespace("ci").status.phase == "Terminating"
    custom.patch_namespaced_custom_object(G, V, "ci", "leases", "b",
                                          {"metadata": {"finalizers": None}})
    assert "ci" not in kube.namespace_names()


# ---- tables ------------------------------------------------------------------------------------


def test_a_table_has_the_printer_columns(kube, custom):
    """kubectl get asks for `application/json;as=Table;v=v1;g=meta.k8s.io`: the answer is a
    Table whose columns are Name and the CRD's additionalPrinterColumns; an integer column
    keeps the number, a missing value is null, a date is an age
    (apiextensions-apiserver tableconvertor)."""
    create(custom, lease())
    request = urllib.request.Request(kube.url + LEASES, headers={
        "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("application/json;as=Table")
        table = json.loads(answer.read())
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name", "vCPUs", "Memory(GB)", "Phase", "Pool", "Age"]
    (row,) = table["rows"]
    assert row["cells"][:5] == ["l1", 24, 96, None, None]
    assert re.fullmatch(r"\d+s", row["cells"][5])
    assert row["object"]["kind"] == "PartialObjectMetadata"


# ---- faults ------------------------------------------------------------------------------------


def test_faults_can_target_a_custom_resource(kube, custom):
    """inject_fault(resource="leases") fails only requests for leases (the client sees the
    Status of a 503), the next ones are served; a hook sees the object a create names."""
    seen: list[tuple[str, str | None]] = []
    kube.add_hook(lambda method, path, name: seen.append((method, name)))
    kube.inject_fault(503, resource="leases", count=1)
    custom.list_namespaced_custom_object(G, V, NS, "pools")
    with pytest.raises(ApiException) as err:
        custom.list_namespaced_custom_object(G, V, NS, "leases")
    assert err.value.status == 503 and status_of(err)["reason"] == "ServiceUnavailable"
    assert custom.list_namespaced_custom_object(G, V, NS, "leases")["items"] == []
    create(custom, lease("hooked"))
    assert ("POST", "hooked") in seen
    with pytest.raises(ValueError):
        kube.inject_fault(503, resource="widgets")


# ---- what the service publishes fits the definitions -----------------------------------------


@pytest.mark.parametrize("pools_file", ["examples/pools.yaml", "examples/pools-upstream.yaml"])
def test_the_published_pools_and_networks_fit_the_crds(kube, custom, pools_file):
    """The Pool and Network objects the service publishes (workers/core/upstream.py, from a
    pools file, with and without usage) are accepted under fieldValidation=Strict, and
    stored as published: nothing pruned, nothing refused; a pool without networks, region
    or zone too."""
    from workers.core.pools import parse_pools
    from workers.core.upstream import network_objects, pool_object

    root = Path(__file__).resolve().parents[2]
    pools = parse_pools(yaml.safe_load((root / pools_file).read_text()), pools_file)
    bare = parse_pools({"pools": [{"name": "bare", "vcenter": "vc9.example.com",
                                   "datacenter": "dc9", "cluster": "c9", "datastore": "ds9",
                                   "vcpus": 8, "memory": 16, "storage": 100}]})
    # labels Kubernetes does not take, which the pools file accepts (selectable): left off
    odd = parse_pools({"pools": [{"name": "odd", "vcenter": "vc8.example.com",
                                  "datacenter": "dc8", "cluster": "c8", "datastore": "ds8",
                                  "vcpus": 8, "memory": 16, "storage": 100,
                                  "labels": {"zone": "us east", "a/b/c": "x", "-r": "y",
                                             "Example.com/k": "v", "region": "us-east"}}]})
    published = [pool_object(p, {"vcpus-used": 4, "lease-count": 1}) for p in pools]
    published += [pool_object(p) for p in (*bare, *odd)]
    assert published[-1]["metadata"]["labels"] == {"region": "us-east"}
    for obj in published:
        status = obj.pop("status")
        made = custom.create_namespaced_custom_object(G, V, NS, "pools", obj,
                                                      field_validation="Strict")
        assert made["spec"] == obj["spec"], obj["metadata"]["name"]
        for key in ("labels", "annotations"):
            assert made["metadata"].get(key) == obj["metadata"].get(key)
        done = custom.patch_namespaced_custom_object_status(
            G, V, NS, "pools", obj["metadata"]["name"], {"status": status},
            field_validation="Strict")
        assert done["status"] == status
    for obj in network_objects(pools):
        made = custom.create_namespaced_custom_object(G, V, NS, "networks", obj,
                                                      field_validation="Strict")
        assert made["spec"] == obj["spec"], obj["metadata"]["name"]


def test_the_published_lease_spec_and_status_fit_the_crd(kube, custom):
    """A Lease's spec and status as the service writes them (workers/core/upstream.py
    lease_spec and lease_status, a multi-pool grant from the example pools file and a
    network-only one) are stored as written under fieldValidation=Strict."""
    from workers.core.grants import make_leases
    from workers.core.models import Request
    from workers.core.pools import parse_pools
    from workers.core.upstream import lease_spec, lease_status

    root = Path(__file__).resolve().parents[2]
    pools = parse_pools(yaml.safe_load((root / "examples/pools.yaml").read_text()))
    grants = [(p, [n for n, _ in p.all_keyed()][:1]) for p in pools[:2]]
    requests = [Request(vcpus=24, memory=96, pools=2, vcenters=2, boskos_lease_id="b-1",
                        job_link="https://ci.example/1"),
                Request(vcpus=0, memory=0, networks=1)]
    for i, request in enumerate(requests):
        count = request.pools or 1
        leases = make_leases([f"x{i}-{j}" for j in range(count)], request, grants[:count], 0)
        body = {"apiVersion": API_VERSION, "kind": "Lease", "metadata": {"name": f"l{i}"},
                "spec": lease_spec(leases)}
        made = custom.create_namespaced_custom_object(G, V, NS, "leases", body,
                                                      field_validation="Strict")
        assert made["spec"] == {"pools": 1, **body["spec"]}
        for phase in ("Pending", "Fulfilled"):
            status = lease_status(leases if phase == "Fulfilled" else [], phase=phase)
            done = custom.patch_namespaced_custom_object_status(
                G, V, NS, "leases", f"l{i}", {"status": status}, field_validation="Strict")
            assert done["status"] == status
