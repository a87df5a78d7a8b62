"""The whole ledger read in one atomic step, for the tests' invariant checks and the bench:
every lease, the per-pool counters, the port groups in use and the records set aside
(audit.lua, run on the ledger's own client and prefix)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from workers.adapters.ledger import Ledger
from workers.adapters.ledger.records import stored_aside, text

AUDIT_LUA = (Path(__file__).parent / "audit.lua").read_text()


class Audit(TypedDict):
    """audit.lua: leases, counters and port groups in one atomic read. A dict, so two audits
    compare with ==."""

    leases: dict[str, Any]  # lease id -> lease
    counters: dict[str, tuple[int, ...]]  # pool -> (vcpus, memory, storage, leases)
    nets: dict[str, str]  # network ledger key (core/lease.py port_group_key) -> lease ids
    # of its holders, space-separated (the leases of one install may share a network), or the
    # set-aside record holding it
    aside: dict[str, dict[str, Any]]  # set-aside id -> its entry (records.stored_aside)
    pins: dict[str, str]  # network ledger key -> the set-aside record claiming it
    blocked: set[str]  # set-aside ids whose holdings cannot be read


def audit_from_reply(reply: list[Any]) -> Audit:
    """Decodes audit.lua's reply (a TypedDict has no methods of its own)."""
    leases, usage, nets, aside, pins, blocked = reply
    counters = {}
    for i in range(0, len(usage), 2):
        counters[text(usage[i])] = tuple(int(x or 0) for x in usage[i + 1])
    parsed = {text(leases[i]): json.loads(leases[i + 1]) for i in range(0, len(leases), 2)}

    def pairs(flat: list[Any]) -> dict[str, str]:
        return {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}

    return {"leases": parsed, "counters": counters, "nets": pairs(nets),
            "aside": {text(aside[i]): stored_aside(aside[i + 1])
                      for i in range(0, len(aside), 2)},
            "pins": pairs(pins), "blocked": {text(x) for x in blocked}}


def audit(ledger: Ledger) -> Audit:
    """Leases, counters and port groups of `ledger`, read in one atomic step."""
    return audit_from_reply(ledger.r.register_script(AUDIT_LUA)(args=[ledger.p]))
