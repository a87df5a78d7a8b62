"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902) on plain JSON values, as the
apiserver applies them (errors are ApiErrors)."""

from __future__ import annotations

import copy
from typing import Any

from tests.support.kube.errors import ApiError, bad_request


def merge_patch(target: Any, patch: Any, *, strategic: bool = False) -> Any:
    """RFC 7386 JSON merge patch. With `strategic`, `$`-directives are skipped (our
    strategic merge for kinds whose fields are all maps of strings)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value, strategic=strategic)
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

