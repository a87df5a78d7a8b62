"""JSON Schemas for the OpenAPI document: the request bodies and the answers.

Request bodies are described here but not validated against these schemas by the shim: the body
goes to the worker as it came, and the worker's validation (which names the field) decides. The
schemas say what is accepted; the worker says why something is not."""

from __future__ import annotations

from typing import Any

from workers.contract import STATES
from workers.core.lease import NETWORK_SCHEMA, lease_schema
from workers.core.parsing import MAX_POOLS

DURATION_TEXT = r"^(\d+d)?(\d+h)?(\d+m)?(\d+(\.\d+)?s)?$|^\d+(\.\d+)?$"
DURATION = {
    "oneOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": DURATION_TEXT, "example": "24h"},
    ],
    "description": "seconds, or a duration such as 24h, 90m, 1h30m, 45s",
}

ACQUIRE_REQUEST: dict[str, Any] = {
    "type": "object",
    "title": "AcquireRequest",
    "additionalProperties": False,
    "required": ["vcpus", "memory"],
    "properties": {
        "vcpus": {"type": "integer", "minimum": 0,
                  "description": "vCPUs per pool (0 with memory 0: a network-only lease)"},
        "memory": {"type": "integer", "minimum": 0, "description": "GB per pool"},
        "storage": {"type": "integer", "minimum": 0, "default": 0,
                    "description": "GB of datastore per vCenter"},
        "vcenters": {"type": "integer", "minimum": 0, "default": 1,
                     "description": "without `pools`: how many pools, each on a different "
                     "vCenter (0 means 1); with `pools`: a cap on distinct vCenters (0: none; "
                     "one above `pools` caps nothing)"},
        "networks": {"type": "integer", "minimum": 0, "default": 1,
                     "description": "port groups per pool"},
        "network-type": {"type": "string", "default": "single-tenant"},
        "owner": {"type": "string", "description": "who holds the lease; default: the API "
                  "token's name, else 'anonymous'"},
        "boskos-lease-id": {"type": "string", "default": ""},
        "request-id": {"type": "string", "description": "idempotency key: the same request-id "
                       "always yields the same leases"},
        "ttl": {**DURATION, "description": "lease lifetime (default 24h)"},
        "required-pool": {"type": "string"},
        "pool-selector": {"type": "object", "additionalProperties": {"type": "string"}},
        "wait": {**DURATION, "description": "0: fail at once if nothing fits; > 0: wait in "
                 "line that long for capacity"},
        "pools": {"type": "integer", "minimum": 1, "maximum": MAX_POOLS,
                  "description": "P distinct pools, over at most `vcenters` distinct vCenters "
                  "when that is given"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"},
                   "maxProperties": 64, "description": "Kubernetes-style labels stored on "
                   "every lease of the request"},
        "tolerations": {"type": "array", "maxItems": 32, "items": {
            "type": "object", "additionalProperties": False, "properties": {
                "key": {"type": "string"},
                "operator": {"type": "string", "enum": ["Exists", "Equal"]},
                "value": {"type": "string"},
                "effect": {"type": "string", "enum": ["", "NoSchedule", "PreferNoSchedule"]}}}},
        "job-link": {"type": "string", "maxLength": 2048,
                     "description": "an http(s) link to the job holding the leases"},
    },
    "example": {"vcpus": 24, "memory": 96, "storage": 700, "vcenters": 1},
}

RELEASE_REQUEST: dict[str, Any] = {
    "type": "object",
    "title": "ReleaseRequest",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "lease-ids": {"type": "array", "items": {"type": "string", "minLength": 1},
                      "maxItems": 10000},
        "owner": {"type": "string", "minLength": 1,
                  "description": "release every lease of this owner (with lease-ids: "
                  "only if they are this owner's)"},
        "selector": {"type": "string", "minLength": 1,
                     "description": "release every lease whose labels match (of `owner` "
                     "when given), e.g. boskos-lease-id=X"},
    },
    "example": {"lease-ids": ["0123456789abcdef0123"]},
}

RENEW_REQUEST: dict[str, Any] = {
    "type": "object",
    "title": "RenewRequest",
    "additionalProperties": False,
    "required": ["lease-id"],
    "properties": {
        "lease-id": {"type": "string", "minLength": 1},
        "owner": {"type": "string", "minLength": 1},
        "ttl": {**DURATION, "description": "new lifetime from now (default 24h)"},
    },
}

NETWORK = NETWORK_SCHEMA
LEASE: dict[str, Any] = lease_schema()  # from the Lease fields' declarations

LEASES = {"type": "array", "items": LEASE}

POOL: dict[str, Any] = {
    "type": "object",
    "title": "Pool",
    "properties": {
        "spec": {"type": "object", "properties": {
            "name": {"type": "string"}, "vcenter": {"type": "string"},
            "datacenter": {"type": "string"}, "cluster": {"type": "string"},
            "datastore": {"type": "string"}, "vcpus": {"type": "integer"},
            "memory": {"type": "integer"}, "storage": {"type": "integer"},
            "networks": {"type": ["array", "null"], "items": NETWORK},
        }},
        "status": {"type": "object", "properties": {
            "vcpus-usage": {"type": "number", "minimum": 0},
            "memory-usage": {"type": "number", "minimum": 0},
            "datastore-usage": {"type": "number", "minimum": 0},
            "network-usage": {"type": "number", "minimum": 0},
            "leases": LEASES,
        }},
    },
}

ERROR: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "required": ["error", "message", "details"],
    "properties": {
        "error": {"type": "string", "description": "InvalidRequest, NoCapacity, LeaseNotFound, "
                  "NotOwner, WaitTimeout, Unauthorized, Forbidden, TaskNotFound, "
                  "PayloadTooLarge, Unavailable, RedisFull, GatewayTimeout, ..."},
        "message": {"type": "string"},
        "details": {"type": "object", "description": "field (bad input), reasons (per pool), "
                    "task-id, ..."},
    },
}

TASK_STATE: dict[str, Any] = {
    "type": "object",
    "title": "TaskState",
    "required": ["task-id", "state"],
    "properties": {
        "task-id": {"type": "string"},
        "task": {"type": ["string", "null"]},
        "state": {"type": "string",
                  "enum": list(STATES)},
        "position": {"type": "integer", "description": "WAITING: place in line (1 = next)"},
        "reasons": {"type": "object", "additionalProperties": {"type": "string"}},
        "deadline": {"type": "string"},
        "result": {"description": "SUCCESS: what the task returned"},
        "error": ERROR,
        "status-code": {"type": "integer",
                        "description": "FAILURE: the HTTP status the error maps to"},
    },
}

ESTIMATE = {"type": "object", "properties": {
    "fits": {"type": "integer"}, "per-vcenter": {"type": "object"}, "pools": {"type": "object"},
    "next-blocked-by": {"type": "string"}, "request": {"type": "object"},
}}


def body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


def answer(description: str, schema: dict[str, Any] | None = None,
           headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    if headers:
        out["headers"] = headers
    return out


# pagination of GET /leases and GET /usage: the body stays a list (the upstream shape)
PAGE_LIMIT = 500
PAGE_LIMIT_MAX = 5000
PAGE_HEADERS: dict[str, Any] = {
    "Link": {"description": '`<url>; rel="next"`: the next page, when there is one',
             "schema": {"type": "string"}},
    "X-Continue": {"description": "the `continue` token for the next page, when there is one",
                   "schema": {"type": "string"}},
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "malformed request (not JSON)", 401: "missing or unknown bearer token",
            403: "not the owner / not allowed for this token", 404: "unknown lease or task",
            409: "no capacity now (details.reasons per pool)", 413: "body over 64 KiB",
            422: "invalid request (details.field names the field)",
            502: "the worker failed unexpectedly",
            503: "Redis or the worker is unavailable, or Redis is full (RedisFull)",
            504: "the wait ran out"}
    return {c: answer(text[c], ERROR) for c in codes}
