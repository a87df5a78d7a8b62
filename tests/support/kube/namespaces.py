"""Namespaces (`/api/v1/namespaces[/{name}]`): list (label selectors, `metadata.name` and
`status.phase` field selectors, watch), get, create (422 on an invalid name, 409
AlreadyExists, also while one of that name is Terminating), merge/JSON patch and delete. The
API refuses to delete `default`, `kube-public` and `kube-system` (403, as the
NamespaceLifecycle admission does). A delete marks the namespace Terminating
(`deletionTimestamp`, `status.phase`); the namespace controller is simulated as instant: it
deletes the custom objects of the namespace (those with finalizers are marked and keep the
namespace Terminating until they are gone), and a namespace without `metadata.finalizers` and
without content left is removed at once, with its ConfigMaps; one with finalizers stays
Terminating until they are patched away (or `finish_namespace`)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from tests.support.kube.builtin import list_rule
from tests.support.kube.configmaps import DNS1123_LABEL
from tests.support.kube.core import StoreCore
from tests.support.kube.errors import (
    ApiError,
    bad_request,
    method_not_allowed,
    not_found,
    now,
)
from tests.support.kube.patches import (
    STRATEGIC,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from tests.support.kube.selectors import (
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)

SYSTEM_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
UNDELETABLE_NAMESPACES = frozenset({"default", "kube-public", "kube-system"})
NAMESPACE_FIELDS = ("metadata.name", "status.phase")


def namespace_fields(obj: dict[str, Any]) -> dict[str, str]:
    return {"metadata.name": obj["metadata"]["name"],
            "status.phase": (obj.get("status") or {}).get("phase", "")}


class Namespaces(StoreCore):
    """The Namespace store, its requests, and the simulated namespace controller."""

    _namespaces: dict[str, dict[str, Any]]
    _objects: dict[tuple[str, str], dict[str, Any]]

    def create_namespace(
        self, name: str, labels: dict[str, str] | None = None, finalizers: list[str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Store an Active namespace directly (no validation); `finalizers` are
        metadata.finalizers, which keep it Terminating after a delete."""
        meta: dict[str, Any] = {"name": name, "labels": {**(labels or {}),
                                                         "kubernetes.io/metadata.name": name}}
        if annotations:
            meta["annotations"] = dict(annotations)
        if finalizers:
            meta["finalizers"] = list(finalizers)
        obj = {"metadata": meta, "spec": {"finalizers": ["kubernetes"]},
               "status": {"phase": "Active"}}
        with self._lock:
            old = self._namespaces.get(name)
            self._stamp(obj, old, kind="Namespace")
            self._namespaces[name] = obj
            self._emit("", "namespaces", obj, old)
            return self._public(obj)

    def namespace(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._namespaces.get(name)
            return self._public(obj) if obj is not None else None

    def namespace_names(self) -> list[str]:
        """Every namespace that exists (Terminating ones too)."""
        with self._lock:
            return sorted(self._namespaces)

    def delete_namespace(self, name: str) -> dict[str, Any]:
        """What a DELETE does (a system namespace too): Terminating, then removed with its
        ConfigMaps unless metadata.finalizers keep it."""
        with self._lock:
            if name not in self._namespaces:
                raise KeyError(name)
            return self._terminate(name)

    def finish_namespace(self, name: str) -> None:
        """Drop a Terminating namespace's metadata.finalizers: the controller removes it."""
        with self._lock:
            old = self._namespaces[name]
            if old["metadata"].get("finalizers"):
                obj = copy.deepcopy(old)
                obj["metadata"].pop("finalizers")
                obj["metadata"]["resourceVersion"] = self._next_rv()
                self._namespaces[name] = obj
                self._emit("", "namespaces", obj, old)
            self._finalize(name)

    def remove_namespace(self, name: str) -> None:
        """The namespace is gone at once (no Terminating phase; its ConfigMaps stay)."""
        with self._lock:
            old = self._namespaces.pop(name)
            self._next_rv()
            self._emit("", "namespaces", None, old)

    def _handle_namespace(
        self, method: str, name: str | None, query: dict[str, list[str]], headers: Any, raw: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        dry_run = bool(query.get("dryRun"))
        if name is None:
            if method == "GET":
                return 200, self._ns_list(query), {}
            if method == "POST":
                return 201, self._ns_create(self._json(raw), dry_run), {}
            raise method_not_allowed()
        with self._lock:
            if method == "GET":
                return 200, self._public(self._ns_get(name)), {}
            if method == "PATCH":
                ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
                return 200, self._ns_patch(name, ctype, self._json(raw), dry_run), {}
            if method == "DELETE":
                self._ns_get(name)
                if name in UNDELETABLE_NAMESPACES:
                    raise ApiError(
                        403,
                        "Forbidden",
                        f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                        {"name": name, "kind": "namespaces"},
                    )
                if dry_run:
                    return 200, self._public(self._namespaces[name]), {}
                return 200, self._terminate(name), {}
        raise method_not_allowed()

    def _ns_get(self, name: str) -> dict[str, Any]:
        obj = self._namespaces.get(name)
        if obj is None:
            raise not_found(name, "namespaces")
        return obj

    def _ns_list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        terms = parse_label_selector(query.get("labelSelector", [""])[0])
        fields = parse_field_selector(query.get("fieldSelector", [""])[0], NAMESPACE_FIELDS)

        def wanted(obj: dict[str, Any]) -> bool:
            return fields_match(namespace_fields(obj), fields)

        with self._lock:
            items = [
                self._public(obj, in_list=True)
                for _, obj in sorted(self._namespaces.items())
                if wanted(obj) and labels_match(obj["metadata"].get("labels") or {}, terms)
            ]
            return {
                "kind": "NamespaceList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    def _ns_create(self, body: Any, dry_run: bool) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("kind", "Namespace") != "Namespace":
            raise bad_request("the body of the request was not a Namespace")
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
        if not DNS1123_LABEL.match(name) or len(name) > 63:
            raise ApiError(
                422,
                "Invalid",
                f'Namespace "{name}" is invalid: metadata.name: Invalid value: "{name}": a '
                "lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character",
                {
                    "name": name,
                    "kind": "Namespace",
                    "causes": [{"reason": "FieldValueInvalid", "field": "metadata.name",
                                "message": f'Invalid value: "{name}"'}],
                },
            )
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        finalizers = meta.get("finalizers") or []
        for mapping, field in ((labels, "labels"), (annotations, "annotations")):
            if not isinstance(mapping, dict) or not all(isinstance(v, str)
                                                        for v in mapping.values()):
                raise bad_request(f"metadata.{field} must be a map of strings")
        with self._lock:
            old = self._namespaces.get(name)
            if old is not None:
                terminating = old["status"]["phase"] == "Terminating"
                raise ApiError(
                    409,
                    "AlreadyExists",
                    ("object is being deleted: " if terminating else "")
                    + f'namespaces "{name}" already exists',
                    {"name": name, "kind": "namespaces"},
                )
            if dry_run:
                return {"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": name, "labels": labels},
                        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
            return self.create_namespace(name, labels, list(finalizers), annotations)

    def _ns_patch(self, name: str, ctype: str, patch: Any, dry_run: bool) -> dict[str, Any]:
        """Labels, annotations and metadata.finalizers (the rest is the server's)."""
        old = self._ns_get(name)
        current = self._public(old)
        if ctype == "application/json-patch+json":
            merged = json_patch(current, patch)
        elif ctype == STRATEGIC:
            merged = strategic_merge_patch(current, patch, list_rule("Namespace"))
        elif ctype == "application/merge-patch+json":
            if not isinstance(patch, dict):
                raise bad_request("patch body must be a JSON object")
            merged = merge_patch(current, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType",
                            f"the body of the request was in an unknown format ({ctype!r})")
        meta = merged.get("metadata") or {}
        if meta.get("name", name) != name:
            raise bad_request("metadata.name cannot be changed by a patch")
        if dry_run:
            return merged
        obj = copy.deepcopy(old)
        for key in ("labels", "annotations", "finalizers"):
            if meta.get(key):
                obj["metadata"][key] = meta[key]
            else:
                obj["metadata"].pop(key, None)
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        if obj != old:
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._namespaces[name] = obj
            self._emit("", "namespaces", obj, old)
        out = self._public(obj)
        self._finalize(name)
        return out

    def _terminate(self, name: str) -> dict[str, Any]:
        """Mark a namespace Terminating (caller holds the lock); the simulated namespace
        controller then removes it unless metadata.finalizers remain. Returns the object as
        a DELETE answers it: Terminating."""
        old = self._namespaces[name]
        obj = copy.deepcopy(old)
        if obj["status"]["phase"] != "Terminating":
            obj["metadata"]["deletionTimestamp"] = now()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            obj["status"]["phase"] = "Terminating"
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._namespaces[name] = obj
            self._emit("", "namespaces", obj, old)
        out = self._public(obj)
        self._delete_namespace_content(name)
        self._finalize(name)
        return out

    def _finalize(self, name: str) -> None:
        """The namespace controller: a Terminating namespace without metadata.finalizers and
        without custom objects left (their finalizers keep them) is removed, with its
        ConfigMaps."""
        obj = self._namespaces.get(name)
        if obj is None or obj["status"]["phase"] != "Terminating":
            return
        if obj["metadata"].get("finalizers") or self._namespace_content_remains(name):
            return
        for key in [k for k in self._objects if k[0] == name]:
            old = self._objects.pop(key)
            self._next_rv()
            self._emit("", "configmaps", None, old)
        del self._namespaces[name]
        self._next_rv()
        self._emit("", "namespaces", None, obj)

    def _delete_namespace_content(self, name: str) -> None:
        """The namespace controller deletes what the namespace holds (custom objects: see
        CustomResources); the caller holds the lock."""

    def _namespace_content_remains(self, name: str) -> bool:
        return False

    def _namespace_phase(self, name: str) -> str | None:
        """Active, Terminating, or None when there is no such namespace."""
        obj = self._namespaces.get(name)
        return None if obj is None else obj["status"]["phase"]

    def _namespaces_now(self) -> list[dict[str, Any]]:
        """Every namespace, as a watch shows it (caller holds the lock)."""
        return [self._public(obj) for _, obj in sorted(self._namespaces.items())]
