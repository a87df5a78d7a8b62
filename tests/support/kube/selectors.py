"""Label and field selectors as the apiserver parses and matches them
(k8s.io/apimachinery/pkg/labels and pkg/fields).

Label selectors: comma-separated requirements `key`, `!key`, `key=value`, `key==value`,
`key!=value`, `key in (v1,v2)`, `key notin (v1,v2)` and `key>N`, `key<N`; `!=` and `notin`
also match objects without the key. Keys are qualified names (an optional DNS-subdomain
prefix and `/`), values label values (at most 63 characters of `[-_.A-Za-z0-9]`, starting and
ending with an alphanumeric). A selector that does not parse is 400 BadRequest.

Field selectors: comma-separated `key=value`, `key==value`, `key!=value` (`\\`, `\\,` and
`\\=` escape); which keys a resource supports is the caller's to check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tests.support.kube.errors import ApiError, bad_request

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SET_TERM = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\((.*)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # exists, !, =, !=, in, notin, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            return not has or value not in self.values
        if not has:
            return False
        try:
            number = int(value or "")
        except ValueError:
            return False
        limit = int(self.values[0])
        return number > limit if self.op == "gt" else number < limit


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a qualified name (None: it is one)."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _PREFIX.match(prefix)):
        return f"prefix part of {key!r} must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _NAME.match(name):
        return (f"name part of {key!r} must consist of alphanumeric characters, '-', '_' or "
                "'.', must start and end with an alphanumeric character and be at most 63 "
                "characters")
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value (None: it is one)."""
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _VALUE.match(value):
        return ("a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character")
    return None


def _split_terms(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    terms, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise bad_request(f"unable to parse requirement: unbalanced ')' in {text!r}")
        elif char == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    if depth:
        raise bad_request(f"unable to parse requirement: unbalanced '(' in {text!r}")
    terms.append(text[start:])
    return terms


def _requirement(key: str, op: str, values: tuple[str, ...]) -> Requirement:
    key = key.strip()
    problem = label_key_problem(key)
    if problem is None:
        for value in values:
            problem = label_value_problem(value)
            if problem is not None:
                problem = f"values[{values.index(value)}][{key}]: Invalid value: {value!r}: " \
                          + problem
                break
    if problem is not None:
        raise bad_request(f"unable to parse requirement: {problem}")
    return Requirement(key, op, values)


def parse_label_selector(text: str) -> list[Requirement]:
    """The requirements of a label selector (all must match); 400 when it does not parse."""
    if not text.strip():
        return []
    requirements = []
    for raw in _split_terms(text):
        term = raw.strip()
        if not term:
            raise bad_request(f"unable to parse requirement: found '', expected: identifier "
                              f"in {text!r}")
        match = _SET_TERM.match(term)
        if match:
            values = tuple(v.strip() for v in match.group(3).split(","))
            if values == ("",):
                values = ()
            if not values and match.group(2) == "in":
                raise bad_request("unable to parse requirement: for 'in', 'notin' operators, "
                                  "values set can't be empty")
            requirements.append(_requirement(match.group(1), match.group(2), values))
            continue
        for token, op in (("!=", "!="), ("==", "="), ("=", "="), (">", "gt"), ("<", "lt")):
            if token in term:
                key, _, value = term.partition(token)
                value = value.strip()
                if op in ("gt", "lt") and not re.fullmatch(r"-?\d+", value):
                    raise bad_request(f"unable to parse requirement: for 'Gt', 'Lt' operators, "
                                      f"the value must be an integer: {value!r}")
                requirements.append(_requirement(key, op, (value,)))
                break
        else:
            if term.startswith("!"):
                requirements.append(_requirement(term[1:], "!", ()))
            elif re.search(r"\s", term):
                raise bad_request(f"unable to parse requirement: found {term!r}, expected: "
                                  "',', '=', '!=', 'in', 'notin'")
            else:
                requirements.append(_requirement(term, "exists", ()))
    return requirements


def labels_match(labels: Mapping[str, str] | None, requirements: list[Requirement]) -> bool:
    have = labels or {}
    return all(r.matches(have) for r in requirements)


def _unescape_split(text: str, separators: str) -> list[tuple[str, str]]:
    """Split at unescaped separator characters; pairs of (piece, the separator after it)."""
    out: list[tuple[str, str]] = []
    piece, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            piece.append(text[i + 1])
            i += 2
            continue
        if char in separators:
            out.append(("".join(piece), char))
            piece = []
        else:
            piece.append(char)
        i += 1
    out.append(("".join(piece), ""))
    return out


@dataclass(frozen=True)
class FieldTerm:
    key: str
    negate: bool
    value: str

    def matches(self, fields: Mapping[str, str]) -> bool:
        equal = fields.get(self.key) == self.value
        return not equal if self.negate else equal


def parse_field_selector(text: str, supported: tuple[str, ...]) -> list[FieldTerm]:
    """The terms of a field selector; 400 for a term that does not parse or a field the
    resource does not support (`field label not supported: spec.x`)."""
    terms = []
    for raw, _ in _unescape_split(text, ","):
        if not raw:
            continue
        match = re.fullmatch(r"([^=!]+)(==|!=|=)(.*)", raw, re.DOTALL)
        if match is None:
            raise bad_request(f"invalid selector: {text!r}; can't understand {raw!r}")
        key, op, value = match.group(1).strip(), match.group(2), match.group(3)
        if key not in supported:
            raise ApiError(400, "BadRequest", f"field label not supported: {key}")
        terms.append(FieldTerm(key, op == "!=", value))
    return terms


def fields_match(fields: Mapping[str, str], terms: list[FieldTerm]) -> bool:
    return all(t.matches(fields) for t in terms)
