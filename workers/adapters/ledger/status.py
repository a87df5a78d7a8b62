"""Status kept beside the leases: counters, the acquire latency histogram, the usage history
and the reaped list, and the live vCenter health."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..redis_memory import MemoryUse, memory_use
from .base import LedgerBase
from .records import text

log = logging.getLogger(__name__)

# acquire latency histogram (seconds, including time spent waiting in line)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 900, 3600,
                   14400, 86400)


class StatusStore(LedgerBase):
    def memory_use(self) -> MemoryUse | None:
        """Redis's memory now (INFO works while Redis is full); None when it does not say."""
        return memory_use(self.r)

    # stats -------------------------------------------------------------------------------
    def count(self, field: str, n: int = 1) -> None:
        self.r.hincrby(self.k.stats, field, n)

    def stats(self) -> dict[str, int]:
        return {text(k): int(v) for k, v in self.r.hgetall(self.k.stats).items()}

    def latency(self) -> dict[str, float]:
        """The acquire latency histogram: cumulative bucket counts by bound, count, sum."""
        raw = {text(k): float(v) for k, v in self.r.hgetall(self.k.latency).items()}
        running = 0.0
        for bound in LATENCY_BUCKETS:
            running += raw.get(str(bound), 0.0)
            raw[str(bound)] = running
        return raw

    def namespace_status_write(self, fields: dict[str, Any], *, runs: int = 0,
                               errors: int = 0) -> None:
        """Set fields of the namespace pruning's status hash and add to its `runs` and
        `errors` counters, atomically."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.k.namespaces, mapping={k: str(v) for k, v in fields.items()})
        if runs:
            pipe.hincrby(self.k.namespaces, "runs", runs)
        if errors:
            pipe.hincrby(self.k.namespaces, "errors", errors)
        pipe.execute()

    # usage history (a bounded Redis stream) -------------------------------------------------
    def append_usage(self, snapshot: dict[str, Any], retention: float) -> str:
        """Add a rollup; entries older than `retention` seconds are trimmed in the same call."""
        oldest_ms = int((time.time() - retention) * 1000)
        entry_id = self.r.xadd(self.k.usage, {"s": json.dumps(snapshot)},
                               minid=oldest_ms, approximate=False)
        return text(entry_id)

    def usage_history(self, since: float = 0.0, limit: int = 10000) -> list[dict[str, Any]]:
        start = f"{int(since * 1000)}-0" if since else "-"
        rows = self.r.xrevrange(self.k.usage, max="+", min=start, count=limit)
        return [json.loads(fields[b"s"]) for _, fields in reversed(rows)]  # newest kept

    def usage_history_from(self, since: float, limit: int) -> list[dict[str, Any]]:
        """At most `limit` rollups from `since` on, oldest first (for paging)."""
        rows = self.r.xrange(self.k.usage, min=f"{int(since * 1000)}-0", max="+",
                             count=limit)
        return [json.loads(fields[b"s"]) for _, fields in rows]

    def usage_len(self) -> int:
        return int(self.r.xlen(self.k.usage))

    def reaped(self, limit: int = 100) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.r.lrange(self.k.reaped, 0, limit - 1)]

    # live vCenter health (written by vcm.sync_inventory; see core/health.py) -----------------
    def store_health(self, vcenter: str, pools: dict[str, dict[str, str]], at: float,
                     login_at: float | None = None) -> None:
        """A successful read of `vcenter` at `at`: its pools' health ({pool: {state, reason}},
        core.health.as_json), replacing the vCenter's record and clearing its error."""
        record = {"at": at, "pools": pools, "error": None, "error-at": None,
                  "login-at": login_at}
        self.r.hset(self.k.health, vcenter, json.dumps(record, sort_keys=True))

    def store_health_error(self, vcenter: str, error: str, at: float,
                           pools: list[str] | tuple[str, ...] = ()) -> None:
        """A failed read of `vcenter`: records why and when, and keeps the last successful
        read's pools and time. `pools` not in that read are added as unknown (with the error as
        the reason), so a vCenter never read still names its pools. Atomic (WATCH)."""

        def merge(pipe: Any) -> None:
            raw = pipe.hget(self.k.health, vcenter)
            try:
                record = json.loads(raw) if raw else {}
            except ValueError:
                record = {}
            if not isinstance(record, dict) or not isinstance(record.get("pools"), dict):
                record = {"at": None, "pools": {}, "login-at": None}
            for name in pools:
                record["pools"].setdefault(name, {"state": "unknown", "reason": error})
            record.update({"error": error, "error-at": at})
            pipe.multi()
            pipe.hset(self.k.health, vcenter, json.dumps(record, sort_keys=True))

        self.r.transaction(merge, self.k.health)

    def health(self) -> dict[str, dict[str, Any]]:
        """vCenter -> its health record (see core/health.py); records that cannot be decoded
        are left out (core.health.effective then counts their pools as unknown)."""
        out: dict[str, dict[str, Any]] = {}
        for vcenter, raw in self.r.hgetall(self.k.health).items():
            try:
                record = json.loads(raw)
            except ValueError:
                log.warning("health record of %s cannot be decoded; ignored", text(vcenter))
                continue
            if isinstance(record, dict):
                out[text(vcenter)] = record
        return out
