"""JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch on plain JSON
values, as the apiserver applies them (errors are ApiErrors)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from tests.support.kube.errors import ApiError, bad_request


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
def json_pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 (add, remove, replace, test, copy, move) on plain JSON values."""
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)

    def parent(path: str) -> tuple[Any, str]:
        parts = json_pointer(path)
        if not parts:
            raise bad_request("the whole object cannot be patched")
        node = doc
        for part in parts[:-1]:
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                raise ApiError(422, "Invalid", f"doc is missing path: {path!r}") from exc
        return node, parts[-1]

    def get(path: str) -> Any:
        node, last = parent(path)
        try:
            return node[int(last)] if isinstance(node, list) else node[last]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"doc is missing path: {path!r}") from exc

    def remove(path: str) -> Any:
        value = get(path)
        node, last = parent(path)
        if isinstance(node, list):
            del node[int(last)]
        else:
            del node[last]
        return value

    def add(path: str, value: Any) -> None:
        node, last = parent(path)
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), value)
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ApiError(422, "Invalid", f"doc is missing path: {path!r}")

    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request("each json patch operation needs op and path")
        kind, path = op["op"], op["path"]
        if kind == "add":
            add(path, op.get("value"))
        elif kind == "remove":
            remove(path)
        elif kind == "replace":
            get(path)
            node, last = parent(path)
            node[int(last) if isinstance(node, list) else last] = op.get("value")
        elif kind == "test":
            if get(path) != op.get("value"):
                raise ApiError(422, "Invalid", f"testing value {path} failed")
        elif kind == "copy":
            add(path, copy.deepcopy(get(op.get("from", ""))))
        elif kind == "move":
            add(path, remove(op.get("from", "")))
        else:
            raise bad_request(f"unknown json patch operation {kind!r}")
    return doc



# ---- strategic merge patch ---------------------------------------------------------------------
# What `kubectl apply` and `kubectl patch` send for built-in kinds, applied as kube-apiserver
# applies it (k8s.io/apimachinery/pkg/util/strategicpatch, StrategicMergeMapPatch; the format:
# https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/strategic-merge-patch.md).
# Which lists merge and by which key comes from the kind's Go struct tags (patchStrategy,
# patchMergeKey); `list_rule(path)` answers for a list at a path of field names: None, the
# list is replaced; "", a list of scalars merged as a set; else the key its items merge by.

ListRule = Callable[[tuple[str, ...]], str | None]
STRATEGIC = "application/strategic-merge-patch+json"  # the media type (built-in kinds only)
_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_SET_ORDER = "$setElementOrder/"
_DELETE_FROM = "$deleteFromPrimitiveList/"


def strategic_merge_patch(original: Any, patch: Any, list_rule: ListRule) -> Any:
    """The object `original` with the strategic merge patch `patch` applied (400 for a
    patch the apiserver cannot apply)."""
    if not isinstance(patch, dict):
        raise bad_request("the patch must be a JSON object")
    base = copy.deepcopy(original) if isinstance(original, dict) else {}
    return _smp_map(base, copy.deepcopy(patch), (), list_rule)


def _smp_error(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)  # the apiserver answers a bad patch 422


def _without_directives(value: Any) -> tuple[Any, bool]:
    """A patch value as stored where nothing is merged into: directives dropped, nulls too
    (a map holding `$patch` is dropped whole)."""
    if isinstance(value, dict):
        if _DIRECTIVE in value:
            return None, False
        out = {}
        for key, item in value.items():
            if item is None:
                continue
            kept, keep = _without_directives(item)
            if keep:
                out[key] = kept
        return out, True
    if isinstance(value, list):
        return [kept for kept, keep in map(_without_directives, value) if keep], True
    return value, True


def _shape(value: Any) -> str:
    return "map" if isinstance(value, dict) else "list" if isinstance(value, list) else "scalar"


def _smp_map(original: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...],
             rule: ListRule) -> dict[str, Any]:
    if _DIRECTIVE in patch:
        directive = patch.pop(_DIRECTIVE)
        if directive == "replace":
            return patch
        if directive == "delete":
            return {}
        raise _smp_error(f"Unknown patch type: {directive} in map: {patch}")
    if _RETAIN_KEYS in patch:
        retain = patch.pop(_RETAIN_KEYS)
        if not isinstance(retain, list):
            raise _smp_error("invalid patch: the $retainKeys directive must be a list")
        kept = set(map(str, retain))
        for key, value in patch.items():
            if value is not None and not key.startswith(("$", )) and key not in kept:
                raise _smp_error("doesn't match the $retainKeys directive: "
                                 f"{key!r} is not in {retain}")
        original = {k: v for k, v in original.items() if k in kept}
    for key in [k for k in patch if k.startswith(_SET_ORDER)]:
        order = patch.pop(key)
        field = key[len(_SET_ORDER):]
        if not isinstance(order, list):
            raise _smp_error(f"invalid patch: {key} must be a list")
        have, given = original.get(field), patch.pop(field, None)
        if have is None and given is None:
            continue
        merge_key = rule((*path, field))
        if have is None:
            merged = _without_directives(given)[0]
        elif given is None:
            merged = have
        else:
            merged = _smp_list(have, given, (*path, field), rule)
        original[field] = _ordered(merged, order, have or [], merge_key or "")
    for key, value in patch.items():
        if key.startswith(_DELETE_FROM):
            field = key[len(_DELETE_FROM):]
            if isinstance(original.get(field), list) and isinstance(value, list):
                original[field] = [v for v in original[field] if v not in value]
            continue
        if value is None:
            original.pop(key, None)
            continue
        have = original.get(key)
        if key not in original or _shape(have) != _shape(value):
            kept, keep = _without_directives(value)
            if keep:
                original[key] = kept
            else:
                original.pop(key, None)
        elif isinstance(value, dict):
            original[key] = _smp_map(have, value, (*path, key), rule)
        elif isinstance(value, list):
            original[key] = _smp_list(have, value, (*path, key), rule)
        else:
            original[key] = value
    return original


def _item_key(item: Any, merge_key: str) -> Any:
    if not merge_key:
        return json.dumps(item, sort_keys=True)
    if not isinstance(item, dict) or merge_key not in item:
        raise _smp_error(f"map: {item} does not contain declared merge key: {merge_key}")
    return json.dumps(item[merge_key], sort_keys=True)


def _smp_list(original: list[Any], patch: list[Any], path: tuple[str, ...],
              rule: ListRule) -> list[Any]:
    merge_key = rule(path)
    if merge_key is None:  # no merge strategy: the patch's list replaces the whole list
        return patch
    if not original and not patch:
        return original
    if not any(isinstance(v, dict) for v in (*original, *patch)):  # scalars: a set union
        merged = list(original)
        for value in patch:
            if value not in merged:
                merged.append(value)
        return _ordered(merged, patch, original, "")
    if not merge_key:
        raise _smp_error(f"cannot merge lists without merge key for {'.'.join(path)}")
    plain = []
    for item in patch:
        directive = item.get(_DIRECTIVE) if isinstance(item, dict) else None
        if directive is None:
            plain.append(item)
        elif directive == "delete":
            gone = _item_key(item, merge_key)
            original = [v for v in original if _item_key(v, merge_key) != gone]
        elif directive == "replace":
            original, plain = [v for v in patch if not (isinstance(v, dict)
                                                        and _DIRECTIVE in v)], []
            break
        else:
            raise _smp_error(f"Unknown patch type: {directive} in map: {item}")
    merged = list(original)
    for item in plain:
        ident = _item_key(item, merge_key)
        for i, have in enumerate(merged):
            if _item_key(have, merge_key) == ident:
                merged[i] = _smp_map(have, item, path, rule)
                break
        else:
            merged.append(item)
    return _ordered(merged, plain, original, merge_key)


def _ordered(merged: list[Any], order: list[Any], live: list[Any],
             merge_key: str) -> list[Any]:
    """The order of a merged list (strategicpatch normalizeElementOrder): the items the patch
    names in its order, the server-only items in the live order, interleaved by where each
    stood in the live list."""
    def ident(item: Any) -> Any:
        return _item_key(item, merge_key) if merge_key or not isinstance(item, dict) else \
            json.dumps(item, sort_keys=True)
    wanted = [ident(v) for v in order if not (isinstance(v, dict) and _DIRECTIVE in v)]
    live_at = {ident(v): i for i, v in reversed(list(enumerate(live)))}
    named = sorted((v for v in merged if ident(v) in wanted), key=lambda v: wanted.index(ident(v)))
    rest = sorted((v for v in merged if ident(v) not in wanted),
                  key=lambda v: live_at.get(ident(v), len(live)))
    out: list[Any] = []
    i = j = 0
    while i < len(rest) or j < len(named):
        if j >= len(named) or (i < len(rest) and ident(rest[i]) in live_at
                               and ident(named[j]) in live_at
                               and live_at[ident(rest[i])] < live_at[ident(named[j])]):
            out.append(rest[i])
            i += 1
        else:
            out.append(named[j])
            j += 1
    return out
