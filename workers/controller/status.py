"""What the controller writes into a Lease's status at each step, as merge patches of its
status subresource: phase and upstream's four conditions (Fulfilled, Pending, Partial,
Delayed: each `{type, status, severity, lastTransitionTime, reason, message}`). Pure: no I/O.

- Pending: seen, asked for; Pending True.
- Delayed: waiting in line; Delayed True with its place and, pool by pool, why not now.
- Fulfilled: granted; the failure domain, poolInfo and envVars come from `core.upstream`.
- Adopted (a Lease another controller fulfilled, `adopted`): condition Adopted True (its
  holdings recorded in the ledger) or False, reason NotAdopted, naming what it holds and why
  not; nothing else of its status is touched.
- Failed: terminal. `Unschedulable` (the inventory can never meet it, pool by pool),
  `InvalidSpec` (a field the request refuses, named), `Released` (its ledger leases were
  released elsewhere: reaped, the namespace of its CI job is gone, `vcm release`),
  `InvalidStatus` (the API server refused the granted status for good: released).

A condition keeps its lastTransitionTime while its status stays the same."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

TYPES = ("Fulfilled", "Pending", "Partial", "Delayed")
ADOPTED = "Adopted"  # the condition of a Lease another controller fulfilled
MAX_MESSAGE = 4096
# the failure-domain fields a grant writes inline, and what else it writes: a Lease that no
# longer holds anything shows none of them
GRANTED_FIELDS = ("name", "server", "region", "zone", "shortName", "topology", "poolInfo",
                  "envVars", "envVarsMap")

# (status, reason, severity, message) per condition type
Wanted = dict[str, tuple[str, str, str, str]]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 1] + "…"


def conditions(current: Any, wanted: Wanted, at: str | None = None) -> list[dict[str, Any]]:
    """The four conditions as `wanted`, keeping each one's lastTransitionTime when its status
    did not change."""
    at = at or now()
    before = {c.get("type"): c for c in current if isinstance(c, Mapping)} \
        if isinstance(current, list) else {}
    out = []
    for kind in TYPES:
        status, reason, severity, message = wanted.get(kind, ("False", "", "", ""))
        old = before.get(kind) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        item: dict[str, Any] = {"type": kind, "status": status,
                                "lastTransitionTime": since or at}
        if severity:
            item["severity"] = severity
        if reason:
            item["reason"] = reason
        if message:
            item["message"] = _short(message)
        out.append(item)
    return out


def reasons_text(reasons: Mapping[str, Any]) -> str:
    """Pool-by-pool reasons as one line: `pool1: why; pool2: why`."""
    return "; ".join(f"{pool}: {why}" for pool, why in sorted(reasons.items()))


def pending(status: Mapping[str, Any], message: str = "") -> dict[str, Any]:
    return {"phase": "Pending", "conditions": conditions(status.get("conditions"), {
        "Pending": ("True", "", "", message)})}


def delayed(status: Mapping[str, Any], position: Any, reasons: Mapping[str, Any]) -> \
        dict[str, Any]:
    """Waiting in line at `position`; `reasons`: why each pool cannot take it now."""
    place = f"waiting in line at position {position}"
    why = reasons_text(reasons)
    message = f"{place}: {why}" if why else place
    return {"phase": "Pending", "conditions": conditions(status.get("conditions"), {
        "Pending": ("True", "", "", ""),
        "Delayed": ("True", "LeaseDelayed", "Info", message),
        "Fulfilled": ("False", "LeaseDelayed", "Info", message)})}


def fulfilled(status: Mapping[str, Any], granted: Mapping[str, Any]) -> dict[str, Any]:
    """`granted`: the rendered status of the leases (`core.upstream.lease_status`)."""
    out = {k: v for k, v in granted.items() if k != "conditions"}
    for key in GRANTED_FIELDS:
        out.setdefault(key, None)  # one pool granted now: no poolInfo left from before
    out["phase"] = "Fulfilled"
    out["conditions"] = conditions(status.get("conditions"), {
        "Fulfilled": ("True", "", "", "")})
    return out


def failed(status: Mapping[str, Any], reason: str, message: str) -> dict[str, Any]:
    """Terminal: the Lease holds nothing, and says why."""
    out: dict[str, Any] = dict.fromkeys(GRANTED_FIELDS)
    out["phase"] = "Failed"
    out["conditions"] = conditions(status.get("conditions"), {
        "Fulfilled": ("False", reason, "Error", message)})
    return out


def adopted(status: Mapping[str, Any], ok: bool, message: str,
            at: str | None = None) -> dict[str, Any]:
    """The conditions of a Lease another controller fulfilled, with condition Adopted set:
    True (reason Adopted) or False (reason NotAdopted). Every other condition is kept as it
    is (the other controller's), and so is the rest of the status."""
    current = status.get("conditions")
    items = [dict(c) for c in current if isinstance(c, Mapping)] \
        if isinstance(current, list) else []
    old = next((c for c in items if c.get("type") == ADOPTED), {})
    state = "True" if ok else "False"
    since = old.get("lastTransitionTime") if old.get("status") == state else None
    item = {"type": ADOPTED, "status": state, "lastTransitionTime": since or at or now(),
            "severity": "Info" if ok else "Warning",
            "reason": "Adopted" if ok else "NotAdopted", "message": _short(message)}
    kept = [c for c in items if c.get("type") != ADOPTED]
    return {"conditions": [*kept, item]}


def unchanged(status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether applying `patch` to `status` changes nothing (a null removes a key)."""
    for key, value in patch.items():
        if value is None:
            if key in status:
                return False
        elif key == "conditions":
            if _plain(status.get(key)) != _plain(value):
                return False
        elif status.get(key) != value:
            return False
    return True


def _plain(items: Any) -> list[tuple]:
    """Conditions compared without their times."""
    if not isinstance(items, Sequence):
        return []
    return sorted(tuple(sorted((k, str(v)) for k, v in c.items() if k != "lastTransitionTime"))
                  for c in items if isinstance(c, Mapping))
