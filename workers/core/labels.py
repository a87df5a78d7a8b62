"""Labels on leases and the selectors that pick them, with Kubernetes' syntax and bounds.

A label key is an optional DNS-subdomain prefix and a slash, then a name of at most 63
characters: alphanumerics with `-`, `_` or `.` inside. A value is empty or a name. A selector
is a comma-separated list of requirements, all of which must hold:
`k=v` (or `k==v`), `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (has the label), `!k` (has not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest
from .text import escaped, text_problem

MAX_LABELS = 64
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_PREFIX = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _PREFIX.match(prefix)):
        return "its prefix must be a DNS subdomain (lower case, at most 253 characters)"
    if not _NAME.match(name):
        return ("its name must be 1-63 characters: letters, digits, and '-', '_' or '.' "
                "inside")
    return None


def value_problem(value: str) -> str | None:
    if value and not _NAME.match(value):
        return ("a value must be empty or 1-63 characters: letters, digits, and '-', '_' or "
                "'.' inside")
    return None


def label_problem(key: str, value: str) -> str | None:
    """Why (key, value) is not a Kubernetes label, or None."""
    problem = key_problem(key)
    if problem:
        return f"{key!r} is not a Kubernetes label key ({problem})"
    problem = value_problem(value)
    return f"{value!r} is not a Kubernetes label value ({problem})" if problem else None


def parse_labels(raw: Any, field: str = "labels") -> tuple[tuple[str, str], ...]:
    """A request's labels, checked: (key, value) pairs sorted by key."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise InvalidRequest.of(field, "must be a map of label keys to string values")
    if len(raw) > MAX_LABELS:
        raise InvalidRequest.of(field, f"at most {MAX_LABELS} labels")
    out = []
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidRequest.of(field, "must be a map of label keys to string values")
        shown = escaped(key) if text_problem(key, 317) else key
        problem = key_problem(key) or value_problem(value)
        if problem:
            raise InvalidRequest.of(field, f"label {shown!r}: {problem}")
        out.append((key, value))
    return tuple(sorted(out))


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # = != in notin exists !exists
    values: tuple[str, ...] = ()

    def holds(self, labels: dict[str, str]) -> bool:
        have = self.key in labels
        if self.op == "exists":
            return have
        if self.op == "!exists":
            return not have
        if self.op in ("=", "in"):
            return have and labels[self.key] in self.values
        return not have or labels[self.key] not in self.values  # != and notin


_REQ = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<nkey>[^\s,!=()]+)"
    r"|(?P<key>[^\s,!=()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*(?:,|$)")


def parse_selector(raw: Any, field: str = "selector") -> tuple[Requirement, ...]:
    """A label selector; an empty one is refused (it would select everything)."""
    if not isinstance(raw, str):
        raise InvalidRequest.of(field, "must be a label selector string like 'k=v,k2=v2'")
    problem = text_problem(raw, 4096)
    if problem:
        raise InvalidRequest.of(field, problem)
    text = raw.strip()
    if not text:
        raise InvalidRequest.of(field, "must not be empty")
    if text.endswith(","):
        raise InvalidRequest.of(field, "ends with ',': a requirement is missing")
    reqs: list[Requirement] = []
    pos = 0
    while pos < len(text):
        m = _REQ.match(text, pos)
        if m is None or m.end() == pos:
            raise InvalidRequest.of(field, f"cannot read {text[pos:pos + 40]!r}: use k=v, "
                                    "k!=v, k in (a,b), k notin (a,b), k or !k, comma-separated")
        pos = m.end()
        if m["nkey"]:
            req = Requirement(m["nkey"], "!exists")
        elif m["op"]:
            req = Requirement(m["key"], "=" if m["op"] in ("=", "==") else "!=", (m["value"],))
        elif m["setop"]:
            values = tuple(v.strip() for v in m["values"].split(",") if v.strip())
            if not values:
                raise InvalidRequest.of(field, f"{m['key']} {m['setop']} (): give values")
            req = Requirement(m["key"], m["setop"], values)
        else:
            req = Requirement(m["key"], "exists")
        problem = key_problem(req.key) or next(
            (value_problem(v) for v in req.values if value_problem(v)), None)
        if problem:
            raise InvalidRequest.of(field, f"{req.key!r}: {problem}")
        reqs.append(req)
    return tuple(reqs)


def matches(selector: tuple[Requirement, ...], labels: dict[str, str]) -> bool:
    return all(r.holds(labels) for r in selector)


def narrows(selector: tuple[Requirement, ...]) -> bool:
    """Whether the selector names at least one value a lease must have (releasing by a
    selector that only excludes could take nearly everything)."""
    return any(r.op in ("=", "in") for r in selector)
