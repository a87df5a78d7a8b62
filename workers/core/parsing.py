"""Request parsing: an acquire request, durations and the string arguments of tasks, checked
field by field; an error names the field. Pure Python, no I/O."""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import InvalidRequest
from .labels import parse_labels
from .models import DEFAULT_NETWORK_TYPE, DEFAULT_TTL, Request
from .taints import parse_tolerations
from .text import MAX_TEXT, escaped, shown, text_problem

MAX_INT = 10**9  # "absurd" guard for sizes before pool limits are applied
# every lease of a multi-pool request carries the pool-info of all its pools, so its answer
# and its mirror record grow with the square of `pools` (with 4 port groups a lease: 16
# pools, about 230 KB; 50, about 1.9 MB; tests/unit/test_request_size.py)
MAX_POOLS = 16
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$", re.ASCII)
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$", re.ASCII)
_LINK = re.compile(r"^https?://[^\s]+$", re.ASCII)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$")
REQUEST_FIELDS = (
    "vcpus", "memory", "storage", "vcenters", "networks", "network-type", "owner",
    "boskos-lease-id", "request-id", "ttl", "required-pool", "pool-selector", "wait",
    "labels", "job-link", "pools", "tolerations",
)


def parse_duration(value: Any, name: str, *, maximum: float) -> float:
    """Seconds from a number or a Go-style duration ("24h", "90m", "1h30m", "45s")."""
    if isinstance(value, bool):
        raise InvalidRequest.of(name, "must be seconds or a duration like '24h', not a boolean")
    if isinstance(value, int) and abs(value) > 10**12:
        raise InvalidRequest.of(name, f"{value} is absurdly large")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        m = _DURATION.match(text)
        if _NUMBER.match(text):
            seconds = float(text)
        elif text and m:
            d, h, mi, s = (float(x) if x else 0.0 for x in m.groups())
            seconds = d * 86400 + h * 3600 + mi * 60 + s
        else:
            raise InvalidRequest.of(name, f"{value!r} is not seconds or a duration like '24h'")
    else:
        raise InvalidRequest.of(name, f"must be seconds or a duration like '24h', got {_tn(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest.of(name, "must not be negative")
    if seconds > maximum:
        raise InvalidRequest.of(name, f"{seconds:g}s is more than the maximum {maximum:g}s")
    return seconds


def _tn(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _int(raw: dict[str, Any], name: str, default: int | None, minimum: int) -> int:
    value = raw.get(name, default)
    if value is None:
        raise InvalidRequest.of(name, "is required")
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequest.of(name, f"must be an integer, got {_tn(value)}")
    if value < minimum:
        raise InvalidRequest.of(name, f"must be at least {minimum}, got {value}")
    if value > MAX_INT:
        raise InvalidRequest.of(name, f"{value} is absurdly large")
    return value


def _str(raw: dict[str, Any], name: str, default: str, *, pattern: re.Pattern[str] | None = None,
         max_len: int = 253) -> str:
    value = raw.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidRequest.of(name, f"must be a string, got {_tn(value)}")
    problem = text_problem(value, max_len)
    if problem:
        raise InvalidRequest.of(name, problem)
    if value and pattern is not None and not pattern.match(value):
        raise InvalidRequest.of(name, f"{shown(value)} has characters outside "
                                "[A-Za-z0-9._:@/+=-] or does not start with a letter or digit")
    return value


def text_arg(value: Any, name: str, *, max_len: int = MAX_TEXT, required: bool = True) -> str:
    """A string argument of a task (owner, lease id, pool, task id): valid text, bounded."""
    if not isinstance(value, str) or (required and not value):
        raise InvalidRequest.of(name, f"must be a non-empty string, got {_tn(value)}"
                                if not isinstance(value, str) else "must not be empty")
    problem = text_problem(value, max_len)
    if problem:
        raise InvalidRequest.of(name, problem)
    return value


def _default_id(task_id: str) -> str:
    """The task id as the request-id when none is given: it must be one a client could send."""
    if task_id and not _ID.match(task_id):
        raise InvalidRequest.of("request-id", f"none given, and the task id {shown(task_id)} "
                                "cannot serve as one: give a request-id")
    return task_id


def _link(data: dict[str, Any]) -> str:
    """job-link: a link to the job holding the lease (http or https), or empty."""
    link = _str(data, "job-link", "", max_len=2048)
    if link and not _LINK.match(link):
        raise InvalidRequest.of("job-link", "must be an http:// or https:// URL")
    return link


def normalize_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept snake_case spellings of the hyphenated contract keys."""
    return {str(k).replace("_", "-"): v for k, v in raw.items()}


def parse_request(
    raw: Any,
    *,
    default_owner: str = "anonymous",
    default_request_id: str = "",
    default_ttl: float = DEFAULT_TTL,
    max_ttl: float = 7 * 86400,
    max_wait: float = 7 * 86400,
    max_pools: int = MAX_POOLS,
    where: str = "",
) -> Request:
    """Validate a raw acquire request. Errors name the field. `max_pools`: the most `pools`
    one request may ask for (a request-id granted already is read with a larger one)."""
    prefix = f"{where}." if where else ""
    if not isinstance(raw, dict):
        raise InvalidRequest.of(where or "request", f"must be an object, got {_tn(raw)}")
    data = normalize_keys(raw)
    unknown = sorted(set(data) - set(REQUEST_FIELDS))
    if unknown:
        name = unknown[0] if not text_problem(unknown[0], 64) else escaped(unknown[0])
        raise InvalidRequest.of(
            prefix + name, f"unknown field (known: {', '.join(REQUEST_FIELDS)})"
        )
    try:
        pools = 0
        if data.get("pools") is not None:
            pools = _int(data, "pools", None, 1)
            if pools > max_pools:
                raise InvalidRequest.of("pools", f"at most {max_pools} in one request, got "
                                        f"{pools} (each lease carries the pool-info of every "
                                        "pool of its request)")
        vcenters = _int(data, "vcenters", 1, 0) or 1
        if pools and data.get("vcenters") in (None, 0):
            vcenters = 0  # P pools on as many vCenters as spreading picks
        # with `pools`, vcenters is a cap (upstream's meaning): one above pools caps nothing
        # (`pools: 1, vcenters: 3` is what upstream's CI step sends by default)
        selector = data.get("pool-selector")
        selector = {} if selector is None else selector
        if not isinstance(selector, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
        ):
            raise InvalidRequest.of("pool-selector", "must be a map of string labels to strings")
        if len(selector) > 32:
            raise InvalidRequest.of("pool-selector", "at most 32 labels")
        for k, v in selector.items():
            problem = text_problem(k, 317) or text_problem(v, 63)
            if problem or not k:
                raise InvalidRequest.of("pool-selector", f"label {shown(k)}: "
                                        f"{problem or 'the key must not be empty'}")
        required = _str(data, "required-pool", "", max_len=253) or None
        owner = _str(data, "owner", default_owner, max_len=253) or default_owner
        ttl = parse_duration(data.get("ttl", default_ttl), "ttl", maximum=max_ttl)
        if ttl < 1:
            raise InvalidRequest.of("ttl", "must be at least 1 second")
        vcpus, memory = _int(data, "vcpus", None, 0), _int(data, "memory", None, 0)
        networks = _int(data, "networks", 1, 0)
        if vcpus == 0 and memory == 0 and networks == 0:
            # a network-only lease (vcpus 0, memory 0) is for its port groups
            raise InvalidRequest.of("networks", "must be at least 1 for a network-only lease "
                                    "(vcpus 0 and memory 0)")
        if vcpus == 0 and memory == 0 and data.get("storage"):
            raise InvalidRequest.of("storage", "a network-only lease (vcpus 0 and memory 0) "
                                    "takes only port groups: storage must be 0")
        return Request(
            vcpus=vcpus,
            memory=memory,
            storage=_int(data, "storage", 0, 0),
            vcenters=vcenters,
            networks=networks,
            network_type=_str(data, "network-type", DEFAULT_NETWORK_TYPE, max_len=63)
            or DEFAULT_NETWORK_TYPE,
            owner=owner,
            boskos_lease_id=_str(data, "boskos-lease-id", "", max_len=253),
            request_id=_str(data, "request-id", "", pattern=_ID, max_len=128)
            or _default_id(default_request_id),
            ttl=int(ttl),
            required_pool=required,
            pool_selector=tuple(sorted(selector.items())),
            wait=parse_duration(0 if data.get("wait") is None else data["wait"], "wait",
                                maximum=max_wait),
            labels=parse_labels(data.get("labels")),
            job_link=_link(data),
            pools=pools,
            tolerations=parse_tolerations(data.get("tolerations")),
        )
    except InvalidRequest as exc:
        if prefix:
            raise InvalidRequest.of(prefix + exc.field, exc.message.split(": ", 1)[-1]) from None
        raise
