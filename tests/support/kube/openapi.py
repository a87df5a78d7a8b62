"""The OpenAPI documents of the test apiserver's custom resources, shaped as kube-apiserver
publishes them for CRDs (apiextensions-apiserver pkg/controller/openapi/builder): a schema per
kind named by the reversed group (`io.splat.vspherecapacitymanager.v1.Lease`, with
`x-kubernetes-group-version-kind`), its list kind, the meta/v1 schemas they refer to, and a
path per operation (`x-kubernetes-action`, the group-version-kind, the query parameters,
and for PATCH the media types a custom resource accepts: JSON patch, merge patch, apply
patch; never strategic merge, so kubectl apply sends a JSON merge patch).

The built-in kinds (builtin.py, and ConfigMaps and Namespaces) have their paths in OpenAPI v3
(`/openapi/v3/api/v1`, `/openapi/v3/apis/apps/v1`, ...), whose PATCH operations take
`fieldValidation` and list strategic merge patch, as kube-apiserver's do, but no schema: so
kubectl (cli-runtime's QueryParamVerifierV3) leaves validation to the server, which checks no
built-in kind's fields, and builds its strategic merge patches from its compiled-in types
(kubectl pkg/cmd/apply/patcher.go: no schema of the kind in OpenAPI v3, none in v2, then
`scheme.Scheme`).

- `/openapi/v2`: one Swagger 2.0 document in JSON (kubectl explain
  `--output=plaintext-openapiv2`); asked for in protobuf, an empty one (`openapi_v2_protobuf`).
- `/openapi/v3`: the index of group-versions (`paths` → `serverRelativeURL` with a hash), and
  `/openapi/v3/apis/<group>/<version>`: an OpenAPI 3.0 document each (kubectl explain, and
  whether the server supports `fieldValidation`, which kubectl's `--validate` asks).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from tests.support.kube.crd import CustomResourceDefinition
from tests.support.kube.patches import STRATEGIC

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
_TIME = {"description": "Time is a wrapper around time.Time which supports correct marshaling "
                        "to YAML and JSON.", "type": "string", "format": "date-time"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string", "default": ""}}


def _meta_schemas(ref: str) -> dict[str, Any]:
    """The meta/v1 schemas a custom resource's schema refers to (`ref`: "#/definitions/" or
    "#/components/schemas/")."""
    return {
        f"{META}.ObjectMeta": {
            "description": "ObjectMeta is metadata that all persisted resources must have, "
                           "which includes all objects users must create.",
            "type": "object",
            "properties": {
                "annotations": {**_STRING_MAP, "description": "Annotations is an unstructured "
                                "key value map stored with a resource."},
                "creationTimestamp": {"$ref": f"{ref}{META}.Time"},
                "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
                "deletionTimestamp": {"$ref": f"{ref}{META}.Time"},
                "finalizers": {"type": "array", "items": {"type": "string", "default": ""},
                               "x-kubernetes-list-type": "set",
                               "description": "Must be empty before the object is deleted "
                                              "from the registry."},
                "generateName": {"type": "string", "description": "An optional prefix, used "
                                 "by the server, to generate a unique name."},
                "generation": {"type": "integer", "format": "int64", "description":
                               "A sequence number representing a specific generation of the "
                               "desired state."},
                "labels": {**_STRING_MAP, "description": "Map of string keys and values that "
                           "can be used to organize and categorize objects."},
                "managedFields": {"type": "array", "items": {
                    "$ref": f"{ref}{META}.ManagedFieldsEntry"}},
                "name": {"type": "string", "description": "Name must be unique within a "
                         "namespace."},
                "namespace": {"type": "string", "description": "Namespace defines the space "
                              "within which each name must be unique."},
                "ownerReferences": {"type": "array", "items": {
                    "$ref": f"{ref}{META}.OwnerReference"},
                    "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"],
                    "x-kubernetes-patch-merge-key": "uid",
                    "x-kubernetes-patch-strategy": "merge",
                    "description": "List of objects depended by this object."},
                "resourceVersion": {"type": "string", "description": "An opaque value that "
                                    "represents the internal version of this object."},
                "selfLink": {"type": "string"},
                "uid": {"type": "string", "description": "UID is the unique in time and space "
                        "value for this object."},
            },
        },
        f"{META}.ListMeta": {
            "description": "ListMeta describes metadata that synthetic resources must have.",
            "type": "object",
            "properties": {"continue": {"type": "string"},
                           "remainingItemCount": {"type": "integer", "format": "int64"},
                           "resourceVersion": {"type": "string"},
                           "selfLink": {"type": "string"}},
        },
        f"{META}.OwnerReference": {
            "description": "OwnerReference contains enough information to let you identify an "
                           "owning object.",
            "type": "object",
            "required": ["apiVersion", "kind", "name", "uid"],
            "properties": {"apiVersion": {"type": "string", "default": ""},
                           "blockOwnerDeletion": {"type": "boolean"},
                           "controller": {"type": "boolean"},
                           "kind": {"type": "string", "default": ""},
                           "name": {"type": "string", "default": ""},
                           "uid": {"type": "string", "default": ""}},
            "x-kubernetes-map-type": "atomic",
        },
        f"{META}.ManagedFieldsEntry": {
            "type": "object",
            "properties": {"apiVersion": {"type": "string"}, "fieldsType": {"type": "string"},
                           "fieldsV1": {"type": "object"}, "manager": {"type": "string"},
                           "operation": {"type": "string"}, "subresource": {"type": "string"},
                           "time": {"$ref": f"{ref}{META}.Time"}},
        },
        f"{META}.Time": _TIME,
        f"{META}.Status": {
            "description": "Status is a return value for calls that don't return other "
                           "objects.",
            "type": "object",
            "properties": {"apiVersion": {"type": "string"}, "code": {"type": "integer"},
                           "details": {"type": "object"}, "kind": {"type": "string"},
                           "message": {"type": "string"},
                           "metadata": {"$ref": f"{ref}{META}.ListMeta"},
                           "reason": {"type": "string"}, "status": {"type": "string"}},
            "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status",
                                                 "version": "v1"}],
        },
        f"{META}.DeleteOptions": {
            "type": "object",
            "properties": {"apiVersion": {"type": "string"},
                           "dryRun": {"type": "array", "items": {"type": "string"}},
                           "gracePeriodSeconds": {"type": "integer", "format": "int64"},
                           "kind": {"type": "string"},
                           "orphanDependents": {"type": "boolean"},
                           "preconditions": {"type": "object", "properties": {
                               "resourceVersion": {"type": "string"},
                               "uid": {"type": "string"}}},
                           "propagationPolicy": {"type": "string"}},
        },
        f"{META}.Patch": {"type": "object", "description": "Patch is provided to give a "
                          "concrete name and type to the Kubernetes PATCH request body."},
    }


def schema_name(crd: CustomResourceDefinition, kind: str | None = None) -> str:
    """`io.splat.vspherecapacitymanager.v1.Lease`: the group reversed, version, kind."""
    return ".".join([*reversed(crd.group.split(".")), crd.version, kind or crd.kind])


def _gvk(crd: CustomResourceDefinition, kind: str | None = None) -> list[dict[str, str]]:
    return [{"group": crd.group, "kind": kind or crd.kind, "version": crd.version}]


def _drop(schema: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(schema, dict):
        return {k: _drop(v, keys) for k, v in schema.items() if k not in keys}
    if isinstance(schema, list):
        return [_drop(v, keys) for v in schema]
    return schema


def _kind_schemas(crd: CustomResourceDefinition, ref: str, v2: bool) -> dict[str, Any]:
    schema = copy.deepcopy(crd.schema)
    if v2:
        schema = _drop(schema, ("nullable",))
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"description": "APIVersion defines the versioned schema of this "
                           "representation of an object.", "type": "string"}
    props["kind"] = {"description": "Kind is a string value representing the REST resource "
                     "this object represents.", "type": "string"}
    meta_ref = {"$ref": f"{ref}{META}.ObjectMeta"}
    props["metadata"] = ({"description": "Standard object's metadata.", **meta_ref} if v2 else
                         {"description": "Standard object's metadata.", "allOf": [meta_ref],
                          "default": {}})
    schema["x-kubernetes-group-version-kind"] = _gvk(crd)
    item_ref = {"$ref": f"{ref}{schema_name(crd)}"}
    listing = {
        "description": f"{crd.list_kind} is a list of {crd.kind}",
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": props["apiVersion"],
            "items": {"description": f"List of {crd.plural}.", "type": "array",
                      "items": item_ref},
            "kind": props["kind"],
            "metadata": ({"$ref": f"{ref}{META}.ListMeta"} if v2 else
                         {"allOf": [{"$ref": f"{ref}{META}.ListMeta"}], "default": {}}),
        },
        "x-kubernetes-group-version-kind": _gvk(crd, crd.list_kind),
    }
    return {schema_name(crd): schema, schema_name(crd, crd.list_kind): listing}


_COMMON_QUERY = ("dryRun", "fieldManager", "fieldValidation")
_LIST_QUERY = ("allowWatchBookmarks", "continue", "fieldSelector", "labelSelector", "limit",
               "resourceVersion", "resourceVersionMatch", "sendInitialEvents",
               "timeoutSeconds", "watch")
_PATCH_MEDIA = ("application/json-patch+json", "application/merge-patch+json",
                "application/apply-patch+yaml")


def _operations(crd: CustomResourceDefinition) -> list[tuple[str, str, str, tuple[str, ...],
                                                            str, tuple[str, ...]]]:
    """(path, method, action, query parameters, response kind, body media types)."""
    base = f"/{_group_version_key(crd)}"
    collection = (f"{base}/namespaces/{{namespace}}/{crd.plural}" if crd.namespaced
                  else f"{base}/{crd.plural}")
    item = f"{collection}/{{name}}"
    json_body = ("application/json", "application/yaml")
    patch_media = (*_PATCH_MEDIA[:2], STRATEGIC, *_PATCH_MEDIA[2:]) if crd.builtin \
        else _PATCH_MEDIA
    ops = [
        (collection, "get", "list", _LIST_QUERY, crd.list_kind, ()),
        (collection, "post", "post", _COMMON_QUERY, crd.kind, json_body),
        (collection, "delete", "deletecollection", _LIST_QUERY + ("dryRun",
                                                                  "propagationPolicy"),
         "Status", json_body),
        (item, "get", "get", ("resourceVersion",), crd.kind, ()),
        (item, "put", "put", _COMMON_QUERY, crd.kind, json_body),
        (item, "patch", "patch", _COMMON_QUERY + ("force",), crd.kind, patch_media),
        (item, "delete", "delete", ("dryRun", "propagationPolicy"), "Status", json_body),
    ]
    if crd.namespaced:
        ops.append((f"{base}/{crd.plural}", "get", "list", _LIST_QUERY, crd.list_kind, ()))
    if crd.status_subresource:
        status = f"{item}/status"
        ops += [(status, "get", "get", ("resourceVersion",), crd.kind, ()),
                (status, "put", "put", _COMMON_QUERY, crd.kind, json_body),
                (status, "patch", "patch", _COMMON_QUERY + ("force",), crd.kind,
                 patch_media)]
    return ops


def _path_parameters(path: str) -> list[str]:
    return [p for p in ("name", "namespace") if f"{{{p}}}" in path]


def openapi_v2(crds: list[CustomResourceDefinition]) -> dict[str, Any]:
    ref = "#/definitions/"
    definitions = _meta_schemas(ref)
    paths: dict[str, Any] = {}
    for crd in crds:
        definitions.update(_kind_schemas(crd, ref, v2=True))
        for path, method, action, query, kind, media in _operations(crd):
            target = META + ".Status" if kind == "Status" else schema_name(crd, kind)
            params = [{"name": p, "in": "path", "required": True, "type": "string",
                       "uniqueItems": True} for p in _path_parameters(path)]
            params += [{"name": q, "in": "query", "type": "string", "uniqueItems": True}
                       for q in query]
            if media:
                params.append({"name": "body", "in": "body", "required": True,
                               "schema": {"$ref": f"{ref}{META}.Patch" if method == "patch"
                                          else f"{ref}{schema_name(crd)}"}})
            operation = {
                "operationId": f"{action}{crd.kind}",
                "consumes": list(media) or ["*/*"],
                "produces": ["application/json", "application/yaml"],
                "schemes": ["https"],
                "tags": [f"{crd.group.split('.')[0]}_{crd.version}"],
                "parameters": params,
                "responses": {"200": {"description": "OK", "schema": {"$ref": ref + target}},
                              "401": {"description": "Unauthorized"}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": _gvk(crd)[0],
            }
            paths.setdefault(path, {})[method] = operation
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "definitions": definitions}


OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def openapi_v2_protobuf() -> bytes:
    """OpenAPI v2 as client-go's discovery asks for it (protobuf, gnostic's openapi_v2.Document):
    an empty document here (`swagger` "2.0" and its `info`, no definitions). What reads it is
    kubectl's client-side validation, which it does only for a kind whose group-version has no
    OpenAPI v3 document, that is a kind this server does not serve: finding no schema, kubectl
    validates nothing and discovery answers `no matches for kind`, as with a real server."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload
    info = field(1, b"Kubernetes") + field(2, b"v1.32.0")
    return field(1, b"2.0") + field(2, info)


def _group_version_key(crd: CustomResourceDefinition) -> str:
    return f"apis/{crd.group}/{crd.version}" if crd.group else f"api/{crd.version}"


def openapi_v3_group_version(crds: list[CustomResourceDefinition],
                             key: str) -> dict[str, Any] | None:
    chosen = [c for c in crds if _group_version_key(c) == key.rstrip("/")]
    if not chosen:
        return None
    ref = "#/components/schemas/"
    schemas = _meta_schemas(ref)
    paths: dict[str, Any] = {}
    for crd in chosen:
        if not crd.builtin:
            schemas.update(_kind_schemas(crd, ref, v2=False))
        for path, method, action, query, kind, media in _operations(crd):
            target = META + ".Status" if kind == "Status" else schema_name(crd, kind)
            params = [{"name": p, "in": "path", "required": True,
                       "schema": {"type": "string", "uniqueItems": True}}
                      for p in _path_parameters(path)]
            params += [{"name": q, "in": "query", "schema": {"type": "string",
                                                            "uniqueItems": True}}
                       for q in query]
            operation: dict[str, Any] = {
                "operationId": f"{action}{crd.kind}",
                "tags": [f"{crd.group.split('.')[0]}_{crd.version}"],
                "parameters": params,
                "responses": {"200": {"description": "OK", "content": {
                    "application/json": {"schema": {"$ref": ref + target}},
                    "application/yaml": {"schema": {"$ref": ref + target}}}}
                    if not crd.builtin or kind == "Status" else {"description": "OK"},
                    "401": {"description": "Unauthorized"}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": _gvk(crd)[0],
            }
            if media:
                body = {"$ref": f"{ref}{META}.Patch"} if method == "patch" else \
                    {"type": "object"} if crd.builtin else {"$ref": f"{ref}{schema_name(crd)}"}
                operation["requestBody"] = {"content": {m: {"schema": body} for m in media},
                                            "required": True}
            paths.setdefault(path, {})[method] = operation
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": schemas}}


def openapi_v3_index(crds: list[CustomResourceDefinition]) -> dict[str, Any]:
    paths = {}
    for key in sorted({_group_version_key(c) for c in crds}):
        document = openapi_v3_group_version(crds, key)
        digest = hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest()
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest[:128].upper()}"}
    return {"paths": paths}
