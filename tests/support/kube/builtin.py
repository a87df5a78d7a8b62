"""The built-in kinds the test apiserver stores besides ConfigMaps and Namespaces (which have
modules of their own): every kind deploy/ applies. Each is served by the generic store of
custom.py, as a custom resource without a schema: kube-apiserver checks each of these kinds
with Go code of its own (pkg/apis/*/validation), which is not reproduced, so nothing but
ObjectMeta is validated. What each kind's registry strategy does that a client can see is:

- scope, plural, short names and the status subresource, as kube-apiserver's discovery lists
  them (`kubectl api-resources` on a real cluster);
- `metadata.generation`, set to 1 on create and counted on spec changes only by the kinds
  whose strategy does (pkg/registry/apps/deployment/strategy.go, which counts annotation
  changes too, apps/statefulset, networking/networkpolicy; apiextensions' CRD strategy);
  the others (Service, ServiceAccount, Secret, RBAC, Event) have none;
- the name rule (pkg/apis/core/validation: a Service's name is a DNS-1035 label,
  ValidateServiceName; pkg/apis/rbac/validation: a Role's or binding's name is a path
  segment, ValidateRBACName; the rest are DNS-1123 subdomains);
- Secret: `stringData` is merged into `data` (base64) on write and never read back (the
  Secret API reference: "stringData ... is provided as a write-only input field ... All keys
  and values are merged into the data field on write, overwriting any existing values");
- strategic merge patches (what `kubectl apply` sends for these kinds), with the lists that
  merge and their merge keys from the kinds' Go struct tags (k8s.io/api core/v1, apps/v1
  types.go: `patchStrategy:"merge" patchMergeKey:"name"` on containers, env by name, ports by
  containerPort, a Service's ports by port, status conditions by type where tagged, ...);
  every other list is replaced (a ServiceAccount's imagePullSecrets, `+listType=atomic`).

CustomResourceDefinitions themselves (apiextensions.k8s.io/v1) are here too: custom.py
registers a created one (apiextensions-apiserver's naming and establishing controllers,
simulated as instant: the status says NamesAccepted and Established at once, and its kind is
served from that request on).

Not done, as no test needs it: defaulting (a Deployment's strategy, a container's
terminationMessagePath, ...), a Service's cluster IP, the controllers (no ReplicaSet or Pod
is made), a ServiceAccount's token.
"""

from __future__ import annotations

import base64
from typing import Any

from tests.support.kube.crd import CORE_EVENTS, CustomResourceDefinition
from tests.support.kube.errors import bad_request
from tests.support.kube.patches import ListRule

_SCHEMALESS: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
_AGE = ({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},)
APIEXTENSIONS = "apiextensions.k8s.io"
RBAC = "rbac.authorization.k8s.io"


def _kind(group: str, version: str, kind: str, plural: str, *, namespaced: bool = True,
          short: tuple[str, ...] = (), status: bool = False, generation: bool = False,
          name_rule: str = "subdomain", categories: tuple[str, ...] = ()) -> \
        CustomResourceDefinition:
    return CustomResourceDefinition(
        name=f"{plural}.{group}" if group else plural, group=group, version=version,
        kind=kind, list_kind=f"{kind}List", plural=plural, singular=kind.lower(),
        namespaced=namespaced, schema=_SCHEMALESS, status_subresource=status,
        short_names=short, categories=categories, printer_columns=_AGE, builtin=True,
        generation=generation, name_rule=name_rule)


BUILTIN_KINDS: tuple[CustomResourceDefinition, ...] = (
    CORE_EVENTS,
    _kind("", "v1", "Secret", "secrets"),
    _kind("", "v1", "Service", "services", short=("svc",), status=True, name_rule="dns1035",
          categories=("all",)),
    _kind("", "v1", "ServiceAccount", "serviceaccounts", short=("sa",)),
    _kind("apps", "v1", "Deployment", "deployments", short=("deploy",), status=True,
          generation=True, categories=("all",)),
    _kind("apps", "v1", "StatefulSet", "statefulsets", short=("sts",), status=True,
          generation=True, categories=("all",)),
    _kind(RBAC, "v1", "Role", "roles", name_rule="path"),
    _kind(RBAC, "v1", "RoleBinding", "rolebindings", name_rule="path"),
    _kind(RBAC, "v1", "ClusterRole", "clusterroles", namespaced=False, name_rule="path"),
    _kind(RBAC, "v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False,
          name_rule="path"),
    _kind("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", short=("netpol",),
          generation=True),
    _kind(APIEXTENSIONS, "v1", "CustomResourceDefinition", "customresourcedefinitions",
          namespaced=False, short=("crd", "crds"), status=True, generation=True,
          categories=("api-extensions",)),
)
CRD_KIND = BUILTIN_KINDS[-1]
# ConfigMaps and Namespaces have stores of their own; these describe them for OpenAPI
OWN_STORE_KINDS = (
    _kind("", "v1", "ConfigMap", "configmaps", short=("cm",)),
    _kind("", "v1", "Namespace", "namespaces", namespaced=False, short=("ns",), status=True),
)

# ---- strategic merge patch: the lists that merge, by the kinds' Go struct tags ----------------

_POD_SPEC_AT = {  # where a kind holds a PodSpec
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
}
_POD_SPEC_LISTS = {"containers": "name", "initContainers": "name",
                   "ephemeralContainers": "name", "volumes": "name",
                   "imagePullSecrets": "name", "hostAliases": "ip",
                   "topologySpreadConstraints": "topologyKey", "schedulingGates": "name",
                   "resourceClaims": "name"}
_CONTAINER_LISTS = {"ports": "containerPort", "env": "name", "volumeMounts": "mountPath",
                    "volumeDevices": "devicePath"}
_CONTAINERS = frozenset({"containers", "initContainers", "ephemeralContainers"})
_OBJECT_META_LISTS = {"finalizers": "", "ownerReferences": "uid"}
_KIND_LISTS: dict[str, dict[tuple[str, ...], str]] = {
    "Service": {("spec", "ports"): "port"},
    "ServiceAccount": {("secrets",): "name"},  # its imagePullSecrets are atomic: replaced
}
# the kinds whose status conditions are tagged merge by `type` (the CRD's are not)
_CONDITIONS_MERGE = frozenset({"Deployment", "StatefulSet", "Service", "Namespace"})


def list_rule(kind: str) -> ListRule:
    """How a strategic merge patch treats the list at a path of a `kind` object: its merge
    key, "" for a list of scalars merged as a set, None for a list replaced whole."""
    pod = _POD_SPEC_AT.get(kind)
    per_kind = _KIND_LISTS.get(kind, {})

    def rule(path: tuple[str, ...]) -> str | None:
        if len(path) >= 2 and path[-2] == "metadata" and path[-1] in _OBJECT_META_LISTS:
            return _OBJECT_META_LISTS[path[-1]]
        if path in per_kind:
            return per_kind[path]
        if path == ("status", "conditions") and kind in _CONDITIONS_MERGE:
            return "type"
        if pod is not None and path[:len(pod)] == pod:
            rest = path[len(pod):]
            if len(rest) == 1:
                return _POD_SPEC_LISTS.get(rest[0])
            if len(rest) == 2 and rest[0] in _CONTAINERS:
                return _CONTAINER_LISTS.get(rest[1])
        return None
    return rule


def annotations_count_in_generation(crd: CustomResourceDefinition) -> bool:
    """Whether a change of the kind's metadata.annotations bumps its generation, as one of
    its spec does: a Deployment's (apps/deployment/strategy.go PrepareForUpdate, "annotations
    are copied from deployments to their replica sets")."""
    return crd.builtin and (crd.group, crd.kind) == ("apps", "Deployment")


def convert(crd: CustomResourceDefinition, obj: dict[str, Any]) -> None:
    """What decoding a body into the kind's Go type does to it: a Secret's `stringData` is
    merged into `data` (base64) and dropped (core/v1 conversion)."""
    if crd.group or crd.kind != "Secret" or "stringData" not in obj:
        return
    string_data = obj.pop("stringData")
    data = obj.get("data") or {}
    if not isinstance(string_data, dict) or not all(isinstance(v, str)
                                                     for v in string_data.values()):
        raise bad_request("Secret in version \"v1\" cannot be handled as a Secret: json: cannot "
                          "unmarshal into Go struct field Secret.stringData of type "
                          "map[string]string")
    if not isinstance(data, dict):
        raise bad_request("Secret in version \"v1\" cannot be handled as a Secret: json: cannot "
                          "unmarshal into Go struct field Secret.data of type map[string][]uint8")
    obj["data"] = {**data, **{k: base64.b64encode(v.encode("utf-8")).decode("ascii")
                              for k, v in string_data.items()}}
