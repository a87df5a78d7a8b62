"""Stored lease records as the ledger reads them: decoded, checked for what the scripts need,
or skipped (logged once). Pure: no Redis here."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from ...core.lease import network_key, parse_rfc3339
from ...core.models import DIMENSIONS
from ...core.text import text_problem

log = logging.getLogger(__name__)

_warned: set[str] = set()


def text(value: Any) -> str:
    """A Redis reply value as str (replies are bytes unless the client decodes them)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decoded(raw: Any) -> Any | None:
    """A stored record as JSON, or None (logged once) when it is not JSON at all."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        _skipped(raw, "not JSON")
        return None


def readable(raw: Any) -> dict[str, Any] | None:
    """A stored lease record, or None (logged once) when it cannot be read or lacks what the
    ledger needs: reads skip it; the next release or reap that meets it sets it aside."""
    lease = decoded(raw)
    if lease is None:
        return None
    problem = lease_problem(lease)
    if problem is None:
        return lease
    _skipped(raw, problem)
    return None


def _skipped(raw: Any, problem: str) -> None:
    key = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw))[:200]
    if key not in _warned and len(_warned) < 10000:
        _warned.add(key)
        log.warning("a lease record cannot be read and is skipped (%s): %s", problem,
                    ascii(key[:120]))
    return None


def lease_name(lease: Any) -> str:
    try:
        name = lease["metadata"]["name"]
    except (TypeError, KeyError):
        return ""
    return name if isinstance(name, str) else ""


def lease_problem(lease: Any) -> str | None:
    """Why a lease record cannot go into the ledger, or None. Everything the Lua scripts read
    is checked, and the whole record must encode as UTF-8 (cjson refuses lone surrogates)."""
    try:
        st, sp = lease["status"], lease["spec"]
        if not lease_name(lease):
            return "metadata.name is not a string"
        for key in ("pool", "vcenter", "owner", "expires-at"):
            if not isinstance(st.get(key), str) or not st[key]:
                return f"status.{key} is not a non-empty string"
        if not isinstance(st.get("request-id", ""), str):
            return "status.request-id is not a string"
        for key in DIMENSIONS:
            if isinstance(sp.get(key), bool) or not isinstance(sp.get(key), int) \
                    or not 0 <= sp[key] <= MAX_HELD:
                return f"spec.{key} is not a whole number from 0 to {MAX_HELD}"
        nets = st.get("networks", [])
        if not isinstance(nets, list) or not all(
                isinstance(n, dict) and isinstance(n.get("port-group"), str) for n in nets):
            return "status.networks is not a list of port groups"
        if _cut_short(nets, sp.get("networks")):
            return "status.networks names fewer port groups than spec.networks"
        parse_rfc3339(st["expires-at"])
        json.dumps(lease, ensure_ascii=False).encode("utf-8")
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        return f"{type(exc).__name__}: {ascii(str(exc))[1:-1]}"
    return None


def released_view(gone: dict[Any, Any]) -> dict[str, Any]:
    """A released lease, from its gone:<id> record (state released, when and why)."""
    g = {text(k): text(v) for k, v in gone.items()}
    lease = json.loads(g["lease"])
    lease["status"].update(state="released", **{"released-at": g.get("released-at", ""),
                                                 "release-reason": g.get("reason", "")})
    return lease


# set-aside records ------------------------------------------------------------------------
# A record that cannot be restored (or that a release met and could not read) is kept in the
# `quarantine` hash, as an entry that Lua's cjson can always decode (the record itself is a
# string in it): {"record": its JSON text, "problem": why, "counted": how its capacity is
# held, "hold": what it holds}. `counted` is
#   "hold"       the restore counted `hold` (pool usage) and pinned its port groups;
#   "none"       what it holds cannot be read: nothing is placed while such a record is left;
#   "committed"  a release or reap set it aside: its usage stays as its grant counted it.
# The operator drops one with a release by its id (no owner): release.lua gives back what the
# entry says it holds.

MAX_HELD = 10**15  # more than any pool's budget, and still exact in Lua's numbers


def aside_hold(record: Any) -> dict[str, Any] | None:
    """What a record that cannot be restored still says it holds, when that much can be read:
    its pool and vCenter, vCPUs, memory and storage, and its port groups (ledger keys). None
    when any of it cannot be read: then nobody can tell what it holds."""
    try:
        st, sp = record["status"], record["spec"]
        pool, vcenter = st["pool"], st["vcenter"]
        nets = st.get("networks")
        dims = [sp[d] for d in DIMENSIONS]
    except (TypeError, KeyError, AttributeError):
        return None
    names = [pool, vcenter]
    if not all(isinstance(x, str) and x and text_problem(x) is None for x in names):
        return None
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_HELD
               for x in dims):
        return None
    nets = [] if nets is None else nets
    if not isinstance(nets, list) or not all(
            isinstance(n, dict) and isinstance(n.get("port-group"), str) and n["port-group"]
            and text_problem(n["port-group"]) is None for n in nets):
        return None
    if _cut_short(nets, sp.get("networks")):
        return None
    keys = sorted({network_key(vcenter, n) for n in nets})
    return {"pool": pool, "vcenter": vcenter, **dict(zip(DIMENSIONS, dims, strict=True)),
            "nets": keys}


def _cut_short(nets: list[dict[str, Any]], asked: Any) -> bool:
    """Whether a record names fewer distinct port groups than it asked for (spec.networks):
    the one it does not name is still in use, and nobody can tell which it is."""
    return (isinstance(asked, int) and not isinstance(asked, bool)
            and len({n["port-group"] for n in nets}) < asked)


def aside_entry(record_text: str, problem: str, hold: dict[str, Any] | None) -> str:
    """A `quarantine` entry (ASCII JSON: cjson decodes it whatever the record holds)."""
    entry = {"record": record_text, "problem": problem, "counted": "hold" if hold else "none"}
    if hold:
        entry["hold"] = hold
    return json.dumps(entry)


def stored_aside(value: Any) -> dict[str, Any]:
    """A `quarantine` entry as stored: {"record": text, "problem", "counted", "hold"?}. An
    entry written by an older version holds the record itself (set aside by a release)."""
    raw = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    try:
        entry = json.loads(raw)
    except ValueError:
        entry = None
    if isinstance(entry, dict) and isinstance(entry.get("record"), str) \
            and entry.get("counted") in ("hold", "none", "committed"):
        return entry
    return {"record": raw, "problem": "set aside by a release or reap: it cannot be read",
            "counted": "committed"}


def aside_id(record: Any, record_text: str, taken: set[str]) -> str:
    """The id a set-aside record is kept (and dropped) under: its lease name when that is
    usable text and not taken, else one made from its content."""
    name = lease_name(record)
    if name and text_problem(name, 128) is None and name not in taken:
        return name
    digest = hashlib.sha256(record_text.encode("utf-8", "backslashreplace")).hexdigest()
    made = f"set-aside-{digest[:16]}"
    n = 1
    while made in taken:
        n += 1
        made = f"set-aside-{digest[:16]}-{n}"
    return made


def describe_hold(hold: dict[str, Any] | None) -> str:
    """What a set-aside record holds, for a log line or a refusal."""
    if not hold:
        return "what it holds cannot be read"
    nets = ", ".join(hold["nets"]) or "no port group"
    return (f"it holds {hold['vcpus']} vCPUs, {hold['memory']} GB memory, {hold['storage']} GB "
            f"storage on pool {hold['pool']!r} and {nets}")
