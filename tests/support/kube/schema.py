"""Structural schemas of CustomResourceDefinitions, applied as kube-apiserver does to every
object written (k8s.io/apiextensions-apiserver/pkg/apiserver/schema):

- `prune_nulls`: a null where the schema is not nullable and has no default is dropped
  (defaulting/prunenulls.go);
- `prune`: fields the schema does not declare are dropped, except under
  x-kubernetes-preserve-unknown-fields and the root's apiVersion, kind and metadata
  (pruning/algorithm.go); their paths are returned, for fieldValidation Strict or Warn;
- `default`: a missing field (or a null that is not nullable) with a default gets it, wherever
  its parent object exists (defaulting/algorithm.go);
- `validate`: type, nullable, required, enum, minimum/maximum (exclusive too), multipleOf,
  minLength/maxLength, pattern, format date-time, minItems/maxItems, min/maxProperties and
  the x-kubernetes-list-type set and map invariants, reported as field errors with the
  messages of kube-openapi's validator as apiextensions-apiserver turns them into field
  errors (validation/validation.go: kubeOpenAPIResultToFieldErrors).

A field error is (reason, field path, message body), e.g. ("FieldValueInvalid", "spec.pools",
"Invalid value: 0: spec.pools in body should be greater than or equal to 1").
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

FieldError = tuple[str, str, str]
META_FIELDS = ("apiVersion", "kind", "metadata")
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean"}


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _props(schema: dict[str, Any] | None) -> dict[str, Any]:
    return (schema or {}).get("properties") or {}


def _additional(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    extra = (schema or {}).get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _field_schema(schema: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    props = _props(schema)
    return props[key] if key in props else _additional(schema)


def prune_nulls(value: Any, schema: dict[str, Any] | None) -> None:
    """Drop nulls of fields that are neither nullable nor defaulted."""
    if isinstance(value, dict):
        for key in list(value):
            sub = _field_schema(schema, key)
            if value[key] is None and sub is not None and not sub.get("nullable") \
                    and "default" not in sub:
                del value[key]
            else:
                prune_nulls(value[key], sub)
    elif isinstance(value, list):
        for item in value:
            prune_nulls(item, (schema or {}).get("items"))


def prune(value: Any, schema: dict[str, Any] | None, path: str = "",
          root: bool = False) -> list[str]:
    """Drop undeclared fields in place; returns their paths, sorted."""
    unknown: list[str] = []
    _prune(value, schema, path, root, unknown, preserve=False)
    return sorted(unknown)


def _prune(value: Any, schema: dict[str, Any] | None, path: str, root: bool,
           unknown: list[str], preserve: bool) -> None:
    if schema is not None and schema.get("x-kubernetes-preserve-unknown-fields"):
        preserve = True
    if isinstance(value, dict):
        for key in list(value):
            if root and key in META_FIELDS:
                continue
            sub = _field_schema(schema, key)
            if sub is not None:
                _prune(value[key], sub, _child(path, key), False, unknown,
                       preserve and not _props(sub) and _additional(sub) is None)
            elif not preserve:
                unknown.append(_child(path, key))
                del value[key]
    elif isinstance(value, list):
        items = (schema or {}).get("items")
        for i, item in enumerate(value):
            _prune(item, items, f"{path}[{i}]", False, unknown,
                   preserve and items is None)


def default(value: Any, schema: dict[str, Any] | None) -> None:
    """Apply the schema's defaults in place."""
    if schema is None:
        return
    if isinstance(value, dict):
        for key, sub in _props(schema).items():
            if "default" in sub and (key not in value
                                     or (value[key] is None and not sub.get("nullable"))):
                value[key] = json.loads(json.dumps(sub["default"]))
        for key in value:
            default(value[key], _field_schema(schema, key))
    elif isinstance(value, list):
        items = schema.get("items")
        for item in value:
            default(item, items)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):  # integral and exact in a float64: kube-openapi's "integer"
        return "integer" if value.is_integer() and abs(value) <= 2**53 else "number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def go_value(value: Any) -> str:
    """A value as Go's %v prints the scalars of a field error (JSON for the rest)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _type_matches(value: Any, wanted: str) -> bool:
    actual = json_type(value)
    return actual == wanted or (wanted == "number" and actual == "integer")


def _is_datetime(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return bool(re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}", text))


def validate(value: Any, schema: dict[str, Any] | None, path: str = "") -> list[FieldError]:
    """Field errors of `value` against `schema` (the root: path "")."""
    errors: list[FieldError] = []
    _validate(value, schema, path, errors)
    return errors


def _invalid(path: str, value: Any, message: str) -> FieldError:
    return ("FieldValueInvalid", path, f"Invalid value: {go_value(value)}: {message}")


def _validate(value: Any, schema: dict[str, Any] | None, path: str,
              errors: list[FieldError]) -> None:
    if schema is None:
        return
    where = f"{path or '.'} in body"
    wanted = schema.get("type")
    if value is None:
        if wanted and not schema.get("nullable"):
            errors.append(("FieldValueTypeInvalid", path,
                           f'Invalid value: "null": {where} must be of type {wanted}: "null"'))
        return
    if wanted and not _type_matches(value, wanted):
        actual = json_type(value)
        errors.append(("FieldValueTypeInvalid", path,
                       f'Invalid value: "{actual}": {where} must be of type {wanted}: '
                       f'"{actual}"'))
        return
    if "enum" in schema and not any(value == v and json_type(value) == json_type(v)
                                    for v in schema["enum"]):
        allowed = ", ".join(json.dumps(v if isinstance(v, str) else json.dumps(v))
                            for v in schema["enum"])
        errors.append(("FieldValueNotSupported", path,
                       f"Unsupported value: {go_value(value)}: supported values: {allowed}"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        _validate_number(value, schema, path, where, errors)
    elif isinstance(value, str):
        _validate_string(value, schema, path, where, errors)
    elif isinstance(value, list):
        _validate_list(value, schema, path, where, errors)
    elif isinstance(value, dict):
        _validate_object(value, schema, path, where, errors)


def _validate_number(value: float, schema: dict[str, Any], path: str, where: str,
                     errors: list[FieldError]) -> None:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None:
        if schema.get("exclusiveMinimum") and value <= low:
            errors.append(_invalid(path, value, f"{where} should be greater than "
                                                f"{go_value(low)}"))
        elif value < low:
            errors.append(_invalid(path, value, f"{where} should be greater than or equal to "
                                                f"{go_value(low)}"))
    if high is not None:
        if schema.get("exclusiveMaximum") and value >= high:
            errors.append(_invalid(path, value, f"{where} should be less than {go_value(high)}"))
        elif value > high:
            errors.append(_invalid(path, value, f"{where} should be less than or equal to "
                                                f"{go_value(high)}"))
    factor = schema.get("multipleOf")
    if factor and (value / factor) != int(value / factor):
        errors.append(_invalid(path, value, f"{where} should be a multiple of "
                                            f"{go_value(factor)}"))


def _validate_string(value: str, schema: dict[str, Any], path: str, where: str,
                     errors: list[FieldError]) -> None:
    longest, shortest = schema.get("maxLength"), schema.get("minLength")
    if longest is not None and len(value) > longest:
        unit = "byte" if longest == 1 else "bytes"
        errors.append(("FieldValueTooLong", path,
                       f"Too long: may not be more than {longest} {unit}"))
    if shortest is not None and len(value) < shortest:
        errors.append(_invalid(path, value, f"{where} should be at least {shortest} chars "
                                            "long"))
    pattern = schema.get("pattern")
    if pattern is not None and re.search(pattern, value) is None:
        errors.append(_invalid(path, value, f"{where} should match '{pattern}'"))
    if schema.get("format") == "date-time" and not _is_datetime(value):
        errors.append(("FieldValueTypeInvalid", path,
                       f"Invalid value: {go_value(value)}: {where} must be of type date-time: "
                       f"{go_value(value)}"))


def _validate_list(value: list[Any], schema: dict[str, Any], path: str, where: str,
                   errors: list[FieldError]) -> None:
    fewest, most = schema.get("minItems"), schema.get("maxItems")
    if fewest is not None and len(value) < fewest:
        errors.append(_invalid(path, len(value), f"{where} should have at least {fewest} "
                                                 "items"))
    if most is not None and len(value) > most:
        unit = "item" if most == 1 else "items"
        errors.append(("FieldValueTooMany", path,
                       f"Too many: {len(value)}: must have at most {most} {unit}"))
    items = schema.get("items")
    for i, item in enumerate(value):
        _validate(item, items, f"{path}[{i}]", errors)
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        seen: list[Any] = []
        for i, item in enumerate(value):
            if item in seen:
                errors.append(("FieldValueDuplicate", f"{path}[{i}]",
                               f"Duplicate value: {go_value(item)}"))
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen_keys: list[dict[str, Any]] = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            key = {k: item[k] for k in keys if k in item}
            if key in seen_keys:
                errors.append(("FieldValueDuplicate", f"{path}[{i}]",
                               f"Duplicate value: {go_value(key)}"))
            seen_keys.append(key)


def _validate_object(value: dict[str, Any], schema: dict[str, Any], path: str, where: str,
                     errors: list[FieldError]) -> None:
    fewest, most = schema.get("minProperties"), schema.get("maxProperties")
    if fewest is not None and len(value) < fewest:
        errors.append(_invalid(path, len(value), f"{where} should have at least {fewest} "
                                                 "properties"))
    if most is not None and len(value) > most:
        unit = "item" if most == 1 else "items"
        errors.append(("FieldValueTooMany", path,
                       f"Too many: {len(value)}: must have at most {most} {unit}"))
    for key in schema.get("required") or []:
        if key not in value:
            errors.append(("FieldValueRequired", _child(path, key), "Required value"))
    props, extra = _props(schema), _additional(schema)
    for key, item in value.items():
        if key in props:
            _validate(item, props[key], _child(path, key), errors)
        elif extra is not None:
            _validate(item, extra, _child(path, key), errors)
