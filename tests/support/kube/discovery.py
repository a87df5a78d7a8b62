"""Discovery, tables and the other non-resource paths of the test apiserver.

- Discovery as kube-apiserver serves it unaggregated (the documents kubectl, client-go's
  discovery client and kopf read): `/api` (APIVersions), `/api/v1` and
  `/apis/<group>/<version>` (APIResourceList: each resource's name, singularName, namespaced,
  kind, verbs, shortNames, categories; `<plural>/status` for a status subresource), `/apis`
  (APIGroupList) and `/apis/<group>` (APIGroup). A client asking for aggregated discovery
  (apidiscovery.k8s.io/v2) gets these plain documents, which it takes as "not aggregated".
- `/version`, `/healthz`, `/livez`, `/readyz`; `/openapi/v2` and `/openapi/v3`: openapi.py.
- Tables: a client that asks for `application/json;as=Table;v=v1;g=meta.k8s.io` (kubectl get)
  gets a meta.k8s.io/v1 Table: for a custom resource, the column Name then the CRD's
  additionalPrinterColumns (pkg/registry/customresource/tableconvertor: a `string` column
  prints the value, `integer`, `number` and `boolean` keep it, `date` is an age such as
  `5m`, a missing value is null), each row's object the PartialObjectMetadata (or the whole
  object with includeObject=Object, none with includeObject=None).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.support.kube.builtin import OWN_STORE_KINDS
from tests.support.kube.crd import CustomResourceDefinition
from tests.support.kube.errors import not_found_path
from tests.support.kube.openapi import (
    OPENAPI_V2_PROTOBUF,
    openapi_v2,
    openapi_v2_protobuf,
    openapi_v3_group_version,
    openapi_v3_index,
)

TABLE_CONTENT_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"
_CRUD = ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]
_NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated.")
VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-vcm-test", "gitCommit": "",
           "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23",
           "compiler": "gc", "platform": "linux/amd64"}
CORE_RESOURCES = [
    {"name": "configmaps", "singularName": "configmap", "namespaced": True, "kind": "ConfigMap",
     "verbs": list(_CRUD), "shortNames": ["cm"]},
    {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
     "verbs": ["create", "delete", "get", "list", "patch", "watch"], "shortNames": ["ns"]},
]


def human_duration(seconds: float) -> str:
    """An age as kubectl shows it (apimachinery util/duration.HumanDuration)."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24
        return f"{days // 365}y" if days % 365 == 0 else f"{days // 365}y{days % 365}d"
    return f"{hours // 24 // 365}y"


def _age(timestamp: Any) -> str:
    if not isinstance(timestamp, str):
        return "<unknown>"
    try:
        when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    return human_duration((datetime.now(UTC) - when).total_seconds())


def _simple_path(obj: Any, path: str) -> tuple[bool, Any]:
    """A printer column's JSONPath (`.spec.vcpus`, `.status.conditions[0].type`)."""
    value = obj
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(value, list) or index >= len(value):
                return False, None
            value = value[index]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return False, None
    return True, value


def _cell(kind: str, found: bool, value: Any) -> Any:
    if not found or value is None:
        return None
    if kind == "string":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dict | list):
            import json
            return json.dumps(value, separators=(",", ":"))
        return str(value)
    if kind == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "date" and isinstance(value, str):
        return _age(value)
    return None


def _row_object(obj: dict[str, Any], include: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata", {})}


def custom_table(crd: CustomResourceDefinition, obj: dict[str, Any],
                 include: str = "Metadata") -> dict[str, Any]:
    """An object or a list of them as a Table."""
    columns = [{"name": "Name", "type": "string", "format": "name",
                "description": _NAME_DESCRIPTION, "priority": 0}]
    for col in crd.printer_columns:
        columns.append({"name": col["name"], "type": col["type"],
                        "format": col.get("format", ""),
                        "description": col.get("description") or "Custom resource definition "
                        f"column (in JSONPath format): {col['jsonPath']}",
                        "priority": col.get("priority", 0)})
    items = obj["items"] if "items" in obj and obj.get("kind", "").endswith("List") else [obj]
    rows = []
    for item in items:
        cells: list[Any] = [item.get("metadata", {}).get("name", "")]
        for col in crd.printer_columns:
            cells.append(_cell(col["type"], *_simple_path(item, col["jsonPath"])))
        row: dict[str, Any] = {"cells": cells}
        row_obj = _row_object(item, include)
        if row_obj is not None:
            row["object"] = row_obj
        rows.append(row)
    meta = {k: v for k, v in (obj.get("metadata") or {}).items()
            if k in ("resourceVersion", "continue", "remainingItemCount")}
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
            "columnDefinitions": columns, "rows": rows}


def wants_table(accept: str) -> bool:
    """Whether the first media type a client accepts is a meta.k8s.io/v1 Table."""
    for media in accept.split(","):
        params = dict(p.strip().partition("=")[::2] for p in media.split(";")[1:])
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and \
                params.get("v") in ("v1", "v1beta1"):
            return True
        if media.split(";")[0].strip() in ("application/json", "*/*"):
            return False
    return False


class Discovery:
    """The non-resource paths; mixed into KubeApiServer."""

    crds: list[CustomResourceDefinition]
    url: str

    def _renderer(self, headers: Any) -> Callable[[CustomResourceDefinition, dict[str, Any]],
                                                  dict[str, Any]] | None:
        if not wants_table(headers.get("Accept") or ""):
            return None
        return custom_table

    def _discovery_groups(self) -> dict[str, list[CustomResourceDefinition]]:
        groups: dict[str, list[CustomResourceDefinition]] = {}
        for crd in sorted(self.crds, key=lambda c: (c.group, c.plural)):
            if crd.group:  # the core group is /api
                groups.setdefault(crd.group, []).append(crd)
        return groups

    def _group_document(self, group: str) -> dict[str, Any]:
        versions = sorted({c.version for c in self._discovery_groups()[group]})
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _non_resource(self, method: str, path: str, query: dict[str, list[str]],
                      headers: Any) -> tuple[int, Any, dict[str, str]]:
        if method != "GET":
            raise not_found_path()
        path = path.rstrip("/") or "/"
        groups = self._discovery_groups()
        host = self.url.split("://", 1)[1]
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                         "serverAddress": host}]}, {}
        if path == "/api/v1":
            core = [c for c in self.crds if not c.group]
            return 200, {"kind": "APIResourceList", "groupVersion": "v1",
                         "resources": CORE_RESOURCES + _resources(core)}, {}
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1",
                         "groups": [self._group_document(g) for g in groups]}, {}
        parts = path.split("/")[2:]
        if path.startswith("/apis/") and len(parts) == 1 and parts[0] in groups:
            return 200, {"kind": "APIGroup", "apiVersion": "v1",
                         **self._group_document(parts[0])}, {}
        if path.startswith("/apis/") and len(parts) == 2 and parts[0] in groups:
            crds = [c for c in groups[parts[0]] if c.version == parts[1]]
            if crds:
                return 200, {"kind": "APIResourceList", "apiVersion": "v1",
                             "groupVersion": f"{parts[0]}/{parts[1]}",
                             "resources": _resources(crds)}, {}
        if path == "/version":
            return 200, VERSION, {}
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, b"ok", {"Content-Type": "text/plain; charset=utf-8"}
        custom = [c for c in self.crds if c.group and not c.builtin]
        documented = [*custom, *(c for c in self.crds if c.builtin), *OWN_STORE_KINDS]
        if path == "/openapi/v2":
            if "protobuf" in (headers.get("Accept") or ""):
                return 200, openapi_v2_protobuf(), {"Content-Type": OPENAPI_V2_PROTOBUF}
            return 200, openapi_v2(custom), {}
        if path == "/openapi/v3":
            return 200, openapi_v3_index(documented), {}
        if path.startswith(("/openapi/v3/apis/", "/openapi/v3/api/")):
            document = openapi_v3_group_version(documented, path[len("/openapi/v3/"):])
            if document is not None:
                return 200, document, {}
        raise not_found_path()


def _resources(crds: list[CustomResourceDefinition]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for crd in crds:
        entry: dict[str, Any] = {"name": crd.plural, "singularName": crd.singular,
                                 "namespaced": crd.namespaced, "kind": crd.kind,
                                 "verbs": list(_CRUD)}
        if crd.short_names:
            entry["shortNames"] = list(crd.short_names)
        if crd.categories:
            entry["categories"] = list(crd.categories)
        out.append(entry)
        if crd.status_subresource:
            out.append({"name": f"{crd.plural}/status", "singularName": "",
                        "namespaced": crd.namespaced, "kind": crd.kind,
                        "verbs": ["get", "patch", "update"]})
    return out
