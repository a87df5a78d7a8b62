"""Request bodies in Kubernetes' protobuf encoding, which kubectl's typed clients send (`kubectl
create secret generic` posts a Secret as `application/vnd.kubernetes.protobuf`): the envelope
(the magic bytes `k8s\\x00`, then a runtime.Unknown holding the TypeMeta and the object's
bytes: k8s.io/apimachinery/pkg/runtime/serializer/protobuf, runtime/generated.proto) and the
messages of the kinds laid out here (k8s.io/api core/v1/generated.proto: Secret;
apimachinery meta/v1/generated.proto: ObjectMeta, Time), read by the protobuf wire format
(https://protobuf.dev/programming-guides/encoding/). Answers stay JSON, which every client
accepts too. A kind with no layout here is refused 415, as kube-apiserver refuses a custom
resource's protobuf body."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from tests.support.kube.errors import ApiError, bad_request

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# field number -> (JSON name, type); a type is "string", "bytes", "bool", "int64", "time",
# "strings" (repeated string), "map" (map<string, string>), "bytemap" (map<string, bytes>,
# base64 in JSON), a nested layout, or a list of one layout (a repeated message)
Layout = dict[int, tuple[str, Any]]
_TYPE_META: Layout = {1: ("apiVersion", "string"), 2: ("kind", "string")}
_UNKNOWN: Layout = {1: ("typeMeta", _TYPE_META), 2: ("raw", "bytes"),
                    3: ("contentEncoding", "string"), 4: ("contentType", "string")}
_OBJECT_META: Layout = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
    4: ("selfLink", "string"), 5: ("uid", "string"), 6: ("resourceVersion", "string"),
    7: ("generation", "int64"), 8: ("creationTimestamp", "time"),
    9: ("deletionTimestamp", "time"), 10: ("deletionGracePeriodSeconds", "int64"),
    11: ("labels", "map"), 12: ("annotations", "map"), 14: ("finalizers", "strings")}
LAYOUTS: dict[tuple[str, str], Layout] = {  # what kubectl create secret/configmap/... sends
    ("v1", "Secret"): {1: ("metadata", _OBJECT_META), 2: ("data", "bytemap"),
                       3: ("type", "string"), 4: ("stringData", "map"),
                       5: ("immutable", "bool")},
    ("v1", "ConfigMap"): {1: ("metadata", _OBJECT_META), 2: ("data", "map"),
                          3: ("binaryData", "bytemap"), 4: ("immutable", "bool")},
    ("v1", "Namespace"): {1: ("metadata", _OBJECT_META),
                          2: ("spec", {1: ("finalizers", "strings")})},
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): {
        1: ("metadata", _OBJECT_META),
        2: ("subjects", [{1: ("kind", "string"), 2: ("apiGroup", "string"),
                          3: ("name", "string"), 4: ("namespace", "string")}]),
        3: ("roleRef", {1: ("apiGroup", "string"), 2: ("kind", "string"),
                        3: ("name", "string")})},
}
_TIME: Layout = {1: ("seconds", "int64"), 2: ("nanos", "int64")}
_ENTRY_STRING: Layout = {1: ("key", "string"), 2: ("value", "string")}
_ENTRY_BYTES: Layout = {1: ("key", "string"), 2: ("value", "bytes")}


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise bad_request("proto: cannot parse invalid wire-format data")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field: an int for a varint, bytes otherwise."""
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, value
        elif wire == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise bad_request("proto: cannot parse invalid wire-format data")
            yield number, data[at:at + size]
            at += size
        elif wire in (1, 5):  # fixed 64 / 32 bits: no field laid out here uses them
            at += 8 if wire == 1 else 4
        else:
            raise bad_request("proto: cannot parse invalid wire-format data")


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise bad_request("proto: cannot parse invalid wire-format data")
    return value.decode("utf-8", "replace")


def _message(data: bytes, layout: Layout) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in layout:
            continue  # a field this layout leaves out (ownerReferences, managedFields)
        name, kind = layout[number]
        if isinstance(kind, dict | list):
            if not isinstance(value, bytes):
                raise bad_request("proto: cannot parse invalid wire-format data")
            if isinstance(kind, list):
                out.setdefault(name, []).append(_message(value, kind[0]))
            else:
                out[name] = _message(value, kind)
        elif kind == "string":
            out[name] = _text(value)
        elif kind == "bytes":
            out[name] = value if isinstance(value, bytes) else b""
        elif kind == "bool":
            out[name] = bool(value)
        elif kind == "int64":
            number_value = value if isinstance(value, int) else 0
            out[name] = number_value - (1 << 64) if number_value >= 1 << 63 else number_value
        elif kind == "time":
            seconds = _message(value, _TIME).get("seconds", 0) if isinstance(value, bytes) \
                else 0
            out[name] = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif kind == "strings":
            out.setdefault(name, []).append(_text(value))
        elif kind in ("map", "bytemap"):
            if not isinstance(value, bytes):
                raise bad_request("proto: cannot parse invalid wire-format data")
            entry = _message(value, _ENTRY_STRING if kind == "map" else _ENTRY_BYTES)
            item = entry.get("value", "" if kind == "map" else b"")
            out.setdefault(name, {})[entry.get("key", "")] = \
                item if kind == "map" else base64.b64encode(item).decode("ascii")
    return out


def decode(raw: bytes) -> dict[str, Any]:
    """The object (as JSON would carry it) of a protobuf request body; 415 for a kind with no
    layout here."""
    if not raw.startswith(MAGIC):
        raise bad_request("provided data does not appear to be a protobuf message, expected "
                          "prefix [107 56 115 0]")
    unknown = _message(raw[len(MAGIC):], _UNKNOWN)
    type_meta = unknown.get("typeMeta") or {}
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    layout = LAYOUTS.get((api_version, kind))
    if layout is None:
        raise ApiError(415, "UnsupportedMediaType",
                       f"the body of the request was in an unknown format - accepted media "
                       f"types include: application/json, application/yaml "
                       f"({api_version}/{kind} in protobuf)")
    return {"apiVersion": api_version, "kind": kind,
            **_message(unknown.get("raw") or b"", layout)}
