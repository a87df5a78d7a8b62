"""ConfigMaps (`/api/v1/namespaces/{ns}/configmaps[/{name}]`, `/api/v1/configmaps`): what the
official client sees of kube-apiserver's: resourceVersion, uid, creationTimestamp, 404
NotFound, 409 AlreadyExists / Conflict, 422 Invalid (FieldValueTooLong above 1,048,576 bytes
of data + binaryData), merge, strategic-merge and JSON patches, label and field selectors
(metadata.name, metadata.namespace) on list, watch, delete preconditions and dryRun. A
ConfigMap does not need its namespace to exist."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Any

from tests.support.kube.builtin import list_rule
from tests.support.kube.core import StoreCore
from tests.support.kube.errors import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    invalid,
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
    labels_match,
    parse_field_selector,
    parse_label_selector,
)

MAX_CONFIGMAP_BYTES = 1_048_576  # core.MaxSecretSize, also used for ConfigMaps
MAX_ANNOTATIONS_BYTES = 262_144  # apimachinery TotalAnnotationSizeLimitB
DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CM_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
CONFIGMAP_FIELDS = ("metadata.name", "metadata.namespace")


def configmap_fields(obj: dict[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    return {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", "")}


class ConfigMaps(StoreCore):
    """The ConfigMap store and its requests."""

    max_object_bytes: int
    _objects: dict[tuple[str, str], dict[str, Any]]

    def _validate(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """ValidateConfigMap (+ ValidateConfigMapUpdate) as far as clients can tell."""
        meta = obj["metadata"]
        name = meta.get("name", "")
        causes: list[tuple[str, str, str]] = []
        if not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
            causes.append(
                (
                    "FieldValueInvalid",
                    "metadata.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                    "lower case alphanumeric characters, '-' or '.', and must start and end "
                    "with an alphanumeric character (e.g. 'example.com', regex used for "
                    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*"
                    "[a-z0-9])?)*')",
                )
            )
        annotations = meta.get("annotations") or {}
        ann_size = sum(len(k) + len(v) for k, v in annotations.items())
        if ann_size > MAX_ANNOTATIONS_BYTES:
            causes.append(
                (
                    "FieldValueTooLong",
                    "metadata.annotations",
                    f"Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes",
                )
            )
        data: dict[str, str] = obj.get("data") or {}
        binary: dict[str, bytes] = obj.get("_decoded") or {}
        total = 0
        for section, items in (("data", data), ("binaryData", binary)):
            for key, value in items.items():
                if not _CM_KEY.match(key) or len(key) > 253 or key in (".", ".."):
                    causes.append(
                        (
                            "FieldValueInvalid",
                            f"{section}[{key}]",
                            f'Invalid value: "{key}": a valid config key must consist of '
                            "alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
                            "'KEY_NAME',  or 'key-name', regex used for validation is "
                            "'[-._a-zA-Z0-9]+')",
                        )
                    )
                if section == "binaryData" and key in data:
                    causes.append(
                        (
                            "FieldValueInvalid",
                            f"binaryData[{key}]",
                            f'Invalid value: "{key}": duplicate of key present in data',
                        )
                    )
                total += len(key) + len(
                    value if isinstance(value, bytes) else value.encode("utf-8")
                )
        if total > self.max_object_bytes:
            causes.append(
                (
                    "FieldValueTooLong",
                    "[]",
                    f"Too long: must have at most {self.max_object_bytes} bytes",
                )
            )
        if old is not None and old.get("immutable"):
            if obj.get("data") != old.get("data") or obj.get("binaryData") != old.get("binaryData"):
                causes.append(
                    (
                        "FieldValueForbidden",
                        "data",
                        "Forbidden: field is immutable when `immutable` is set",
                    )
                )
            if not obj.get("immutable"):
                causes.append(
                    (
                        "FieldValueForbidden",
                        "immutable",
                        "Forbidden: field is immutable when `immutable` is set",
                    )
                )
        if causes:
            raise invalid(name, causes)

    def _decode(self, body: Any, namespace: str) -> dict[str, Any]:
        """Check the shape of a ConfigMap body (as JSON decoding into core.ConfigMap would)."""
        if not isinstance(body, dict):
            raise bad_request("the body of the request was in an unknown format")
        if body.get("apiVersion", "v1") != "v1" or body.get("kind", "ConfigMap") != "ConfigMap":
            raise bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                "expected API version (v1)"
                if body.get("apiVersion", "v1") != "v1"
                else f"the kind in the data ({body.get('kind')}) does not match ConfigMap"
            )
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if meta.get("namespace") not in (None, "", namespace):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        obj: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap"}
        keep = {
            k: meta[k]
            for k in (
                "name",
                "generateName",
                "labels",
                "annotations",
                "ownerReferences",
                "finalizers",
                "resourceVersion",
                "uid",
            )
            if meta.get(k) not in (None, "", {}, [])
        }
        for mapping in ("labels", "annotations"):
            value = keep.get(mapping)
            if value is not None and (
                not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())
            ):
                raise bad_request(f"metadata.{mapping} must be a map of strings")
        keep["namespace"] = namespace
        obj["metadata"] = keep
        data = body.get("data")
        if data:
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise bad_request(
                    "json: cannot unmarshal into Go struct field ConfigMap.data of type string"
                )
            obj["data"] = dict(data)
        binary = body.get("binaryData")
        decoded: dict[str, bytes] = {}
        if binary:
            if not isinstance(binary, dict):
                raise bad_request("binaryData must be a map")
            for key, value in binary.items():
                try:
                    if not isinstance(value, str):
                        raise TypeError
                    decoded[key] = base64.b64decode(value, validate=True)
                except (binascii.Error, TypeError) as exc:
                    raise bad_request(
                        "json: cannot unmarshal binaryData: illegal base64 data"
                    ) from exc
            obj["binaryData"] = dict(binary)
        if body.get("immutable") is not None:
            obj["immutable"] = bool(body["immutable"])
        obj["_decoded"] = decoded
        return obj

    def _list(self, namespace: str | None, query: dict[str, list[str]]) -> dict[str, Any]:
        terms = parse_label_selector(query.get("labelSelector", [""])[0])
        fields = parse_field_selector(query.get("fieldSelector", [""])[0], CONFIGMAP_FIELDS)
        with self._lock:
            items = []
            for (ns, _), obj in sorted(self._objects.items()):
                if namespace is not None and ns != namespace:
                    continue
                if not all(t.matches(configmap_fields(obj)) for t in fields):
                    continue
                if not labels_match(obj["metadata"].get("labels"), terms):
                    continue
                items.append(self._public(obj, in_list=True))
            return {
                "kind": "ConfigMapList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    def _configmaps_now(self) -> list[dict[str, Any]]:
        """Every ConfigMap, as a watch shows it (caller holds the lock)."""
        return [self._public(obj) for _, obj in sorted(self._objects.items())]

    def _create(self, namespace: str, body: Any, dry_run: bool) -> dict[str, Any]:
        obj = self._decode(body, namespace)
        meta = obj["metadata"]
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise invalid(
                    "",
                    [
                        (
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
        name = meta["name"]
        if meta.pop("resourceVersion", None):
            raise ApiError(
                500,
                "InternalError",
                "Internal error occurred: resourceVersion "
                "should not be set on objects to be created",
                {
                    "causes": [
                        {"message": "resourceVersion should not be set on objects to be created"}
                    ]
                },
            )
        meta.pop("uid", None)
        self._validate(obj, None)
        with self._lock:
            if (namespace, name) in self._objects:
                raise already_exists(name)
            if dry_run:
                obj["metadata"]["uid"] = str(uuid.uuid4())
                obj["metadata"]["creationTimestamp"] = now()
                return self._public(obj)
            self._stamp(obj, None)
            self._objects[(namespace, name)] = obj
            self._emit("", "configmaps", obj, None)
            return self._public(obj)

    def _store_update(
        self, namespace: str, name: str, obj: dict[str, Any], old: dict[str, Any], dry_run: bool
    ) -> dict[str, Any]:
        """Preconditions, validation and storage for PUT/PATCH; caller holds the lock."""
        meta = obj["metadata"]
        want_rv = meta.pop("resourceVersion", None)
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            self._stats.conflicts += 1
            raise conflict(name)
        want_uid = meta.pop("uid", None)
        if want_uid and want_uid != old["metadata"]["uid"]:
            raise conflict(
                name,
                f"Precondition failed: UID in precondition: {want_uid}, UID "
                f"in object meta: {old['metadata']['uid']}",
            )
        self._validate(obj, old)
        same = all(obj.get(k) == old.get(k) for k in ("data", "binaryData", "immutable")) and all(
            meta.get(k) == old["metadata"].get(k)
            for k in ("labels", "annotations", "ownerReferences", "finalizers")
        )
        if same or dry_run:  # a no-op update is not written: resourceVersion stays
            return self._public(old)
        self._stamp(obj, old)
        self._objects[(namespace, name)] = obj
        self._emit("", "configmaps", obj, old)
        return self._public(obj)

    def _replace(self, namespace: str, name: str, body: Any, dry_run: bool) -> dict[str, Any]:
        obj = self._decode(body, namespace)
        if obj["metadata"].get("name") != name:
            raise bad_request(
                f"the name of the object ({obj['metadata'].get('name', '')}) does not match "
                f"the name on the URL ({name})"
            )
        with self._lock:
            old = self._objects.get((namespace, name))
            if old is None:
                raise not_found(name)
            return self._store_update(namespace, name, obj, old, dry_run)

    def _patch(
        self, namespace: str, name: str, ctype: str, patch: Any, dry_run: bool
    ) -> dict[str, Any]:
        if ctype not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/json-patch+json",
        ):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted "
                f"media types include: application/json-patch+json, "
                f"application/merge-patch+json, "
                f"application/strategic-merge-patch+json (got {ctype!r})",
            )
        with self._lock:
            old = self._objects.get((namespace, name))
            if old is None:
                raise not_found(name)
            current = self._public(old)
            if ctype == "application/json-patch+json":
                merged = json_patch(current, patch)
                if (
                    merged.get("metadata", {}).get("resourceVersion")
                    == current["metadata"]["resourceVersion"]
                ):
                    merged["metadata"].pop("resourceVersion", None)  # unchanged: no precondition
            else:
                if not isinstance(patch, dict):
                    raise bad_request("patch body must be a JSON object")
                current["metadata"].pop("resourceVersion")  # only a patched rv is a precondition
                merged = strategic_merge_patch(current, patch, list_rule("ConfigMap")) \
                    if ctype == STRATEGIC else merge_patch(current, patch)
            if merged.get("metadata", {}).get("name", name) != name:
                raise bad_request("metadata.name cannot be changed by a patch")
            obj = self._decode(merged, namespace)
            obj["metadata"]["name"] = name
            return self._store_update(namespace, name, obj, old, dry_run)

    def _delete(self, namespace: str, name: str, options: Any, dry_run: bool) -> dict[str, Any]:
        pre = (options or {}).get("preconditions") or {}
        with self._lock:
            old = self._objects.get((namespace, name))
            if old is None:
                raise not_found(name)
            meta = old["metadata"]
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise conflict(
                    name,
                    f"Precondition failed: UID in precondition: {pre['uid']}, "
                    f"UID in object meta: {meta['uid']}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                self._stats.conflicts += 1
                raise conflict(
                    name,
                    f"the ResourceVersion in the precondition ({pre['resourceVersion']}) does "
                    f"not match the ResourceVersion in record ({meta['resourceVersion']}). The "
                    "object might have been modified",
                )
            if not dry_run:
                del self._objects[(namespace, name)]
                self._next_rv()
                self._emit("", "configmaps", None, old)
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": "configmaps", "uid": meta["uid"]},
            }

