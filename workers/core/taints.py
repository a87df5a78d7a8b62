"""Pool taints and request tolerations, with Kubernetes' semantics.

A taint (key, value, effect) repels requests that do not tolerate it: `NoSchedule` keeps them
off the pool, `PreferNoSchedule` lets them on only when no pool without such a taint fits. A
toleration matches a taint when its key is the taint's (an empty key with `Exists` matches
every key), its operator is `Exists` or `Equal` with the same value, and its effect is the
taint's or empty (every effect). `no-schedule: true` on a pool is a cordon: no new leases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest
from .labels import key_problem, value_problem

EFFECTS = ("NoSchedule", "PreferNoSchedule")
OPERATORS = ("Exists", "Equal")
MAX_TOLERATIONS = 32


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else \
            f"{self.key}:{self.effect}"

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "effect": self.effect}


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "operator": self.operator, "value": self.value,
                "effect": self.effect}


def untolerated(taints: tuple[Taint, ...], tolerations: tuple[Toleration, ...],
                effect: str) -> list[Taint]:
    return [t for t in taints if t.effect == effect
            and not any(tol.tolerates(t) for tol in tolerations)]


def taint_problem(raw: Any) -> tuple[str, str] | Taint:
    """A pool's taint, or (field, problem)."""
    if not isinstance(raw, dict) or set(raw) - {"key", "value", "effect"}:
        return "", "each taint is a map of key, value and effect"
    key, value, effect = raw.get("key"), raw.get("value", ""), raw.get("effect")
    if not isinstance(key, str) or key_problem(key):
        return "key", key_problem(key) if isinstance(key, str) else "is required"
    if not isinstance(value, str) or value_problem(value):
        return "value", value_problem(value) if isinstance(value, str) else "must be a string"
    if effect not in EFFECTS:
        return "effect", f"must be one of {', '.join(EFFECTS)}, got {effect!r}"
    return Taint(key, value, effect)


def parse_tolerations(raw: Any, field: str = "tolerations") -> tuple[Toleration, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest.of(field, "must be a list of {key, operator, value, effect}")
    if len(raw) > MAX_TOLERATIONS:
        raise InvalidRequest.of(field, f"at most {MAX_TOLERATIONS} tolerations")
    out = []
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(item, dict) or set(item) - {"key", "operator", "value", "effect"}:
            raise InvalidRequest.of(where, "must be a map of key, operator, value and effect")
        key, op = item.get("key", ""), item.get("operator", "Equal")
        value, effect = item.get("value", ""), item.get("effect", "")
        if op not in OPERATORS:
            raise InvalidRequest.of(where, f"operator must be Exists or Equal, got {op!r}")
        if not isinstance(key, str):
            raise InvalidRequest.of(where, "key: must be a string")
        if key and key_problem(key):
            raise InvalidRequest.of(where, f"key: {key_problem(key)}")
        if not key and op != "Exists":
            raise InvalidRequest.of(where, "an empty key needs operator Exists")
        if not isinstance(value, str):
            raise InvalidRequest.of(where, "value: must be a string")
        if value_problem(value):
            raise InvalidRequest.of(where, f"value: {value_problem(value)}")
        if op == "Exists" and value:
            raise InvalidRequest.of(where, "operator Exists takes no value")
        if effect not in ("", *EFFECTS):
            raise InvalidRequest.of(where, f"effect must be empty or one of {', '.join(EFFECTS)}"
                                    f", got {effect!r}")
        out.append(Toleration(key, op, value, effect))
    return tuple(out)
