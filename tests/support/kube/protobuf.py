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
from datetime import UTC, datetime, timedelta
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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field: an int for a varint, bytes otherwise
    (a fixed 64 or 32 bits field, which no layout here uses, as its bytes)."""
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, wire, value
        elif wire in (1, 2, 5):
            if wire == 2:
                size, at = _varint(data, at)
            else:
                size = 8 if wire == 1 else 4
            if at + size > len(data):
                raise bad_request("proto: unexpected EOF")
            yield number, wire, data[at:at + size]
            at += size
        else:
            raise bad_request("proto: cannot parse invalid wire-format data")


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise bad_request("proto: cannot parse invalid wire-format data")
    return value.decode("utf-8", "replace")


def _time(value: bytes) -> str | None:
    """A Time (seconds and nanos since the epoch) in RFC 3339; None for one no RFC 3339
    time can say (before year 1 or after 9999), which the server never keeps anyway: a
    create sets creationTimestamp and clears deletionTimestamp, an update keeps the
    stored ones."""
    seconds = _message(value, _TIME).get("seconds", 0)
    try:
        return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    except OverflowError:
        return None


def _message(data: bytes, layout: Layout) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, wire, value in _fields(data):
        if number not in layout:
            continue  # a field this layout leaves out (ownerReferences, managedFields)
        name, kind = layout[number]
        want = 0 if kind in ("bool", "int64") else 2
        if wire != want:  # as the generated Unmarshal of k8s.io/api refuses it
            raise bad_request(f"proto: wrong wireType = {wire} for field "
                              f"{name[:1].upper()}{name[1:]}")
        if isinstance(kind, dict | list):
            assert isinstance(value, bytes)
            if isinstance(kind, list):
                out.setdefault(name, []).append(_message(value, kind[0]))
            else:
                out[name] = _message(value, kind)
        elif kind == "string":
            out[name] = _text(value)
        elif kind == "bytes":
            out[name] = value
        elif kind == "bool":
            out[name] = bool(value)
        elif kind == "int64":
            assert isinstance(value, int)
            value &= (1 << 64) - 1  # a varint of more than 64 bits keeps its low 64
            out[name] = value - (1 << 64) if value >= 1 << 63 else value
        elif kind == "time":
            assert isinstance(value, bytes)
            when = _time(value)
            if when is not None:
                out[name] = when
        elif kind == "strings":
            out.setdefault(name, []).append(_text(value))
        elif kind in ("map", "bytemap"):
            assert isinstance(value, bytes)
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
