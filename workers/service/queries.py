"""Read-only answers: pools with their usage, leases, estimates, the usage rollup and its
history. The queries worker serves them; nothing here writes the ledger (but the rollup)."""

from __future__ import annotations

import math
import time
from operator import attrgetter
from typing import Any

from ..core.errors import InvalidRequest
from ..core.estimates import estimate
from ..core.fleet import Fleet
from ..core.health import UNKNOWN_HEALTH, PoolHealth, effective, pool_health
from ..core.labels import matches, parse_selector
from ..core.lease import Lease, rfc3339
from ..core.models import Pool
from ..core.parsing import parse_duration, text_arg
from ..ports import Ledger, Pools
from .placing import Placing
from .usage_cache import UsageCache

MAX_PAGE = 5001  # a page of 5,000 and one more to tell whether another follows


class Queries:
    def __init__(self, ledger: Ledger, pools: Pools, cache: UsageCache, placing: Placing) -> None:
        self.ledger = ledger
        self.pools = pools
        self.cache = cache
        self.placing = placing

    def show_pools(self) -> list[dict[str, Any]]:
        pools = self.pools.current()
        _, fleet = self.cache.fleet(fresh=True)
        by_pool: dict[str, list[Lease]] = {}
        for lease in map(Lease.from_wire, self.ledger.leases()):
            by_pool.setdefault(lease.pool, []).append(lease)
        now = time.time()
        records = self.cache.health_records  # read by the fresh fleet() above
        health = effective(records, now, self.cache.health_stale)
        read_at = {vc: r.get("at") for vc, r in records.items() if isinstance(r, dict)}
        out = []
        for p in pools.values():
            view = pool_view(p, fleet, by_pool.get(p.name, []), pool_health(health, p.name))
            at = read_at.get(p.vcenter)
            if isinstance(at, int | float) and not isinstance(at, bool):
                view["status"]["health"]["age-seconds"] = round(now - at, 1)  # last good read
            out.append(view)
        for name in sorted(set(by_pool) - set(pools)):
            leases = by_pool[name]
            out.append({"spec": {"name": name, "vcenter": leases[0].vcenter},
                        "status": {"removed": True, "leases": [x.to_wire() for x in leases]}})
        return out

    def leases(self, owner: Any = None, pool: Any = None, after: Any = None,
               limit: Any = None, selector: Any = None) -> list[Lease]:
        """Leases in (leased-at, name) order, those matching `selector` (labels) when given;
        `after` ([leased-at, name]) and `limit` page."""
        wanted = parse_selector(selector) if selector is not None else ()
        for name, value in (("owner", owner), ("pool", pool)):
            if value is not None:
                text_arg(value, name, required=False)
        if after is not None and (not isinstance(after, list) or len(after) != 2
                                  or not all(isinstance(x, str) for x in after)):
            raise InvalidRequest.of("after", "must be [leased-at, lease id]")
        leases = [Lease.from_wire(x) for x in self.ledger.leases(owner or None)]
        if pool:
            leases = [x for x in leases if x.pool == pool]
        if wanted:
            leases = [x for x in leases if matches(wanted, x.labels)]
        leases.sort(key=attrgetter("order"))
        if after is not None:
            leases = [x for x in leases if x.order > tuple(after)]
        return leases[:_limit(limit)] if limit is not None else leases

    def estimate(self, raw: Any) -> dict[str, Any]:
        req = self.placing.parse(raw, "estimate")
        _, fleet = self.cache.fleet(fresh=True)
        return estimate(req, fleet)

    def rollup(self, retention: float) -> dict[str, Any]:
        """A usage snapshot per pool and per vCenter, appended to the bounded history."""
        pools = self.show_pools()
        waiting = self.ledger.waiting_count()
        snap: dict[str, Any] = {"at": rfc3339(time.time()), "ts": time.time(),
                                "waiting": waiting, "pools": {}, "vcenters": {}}
        totals: dict[str, list[float]] = {}
        for p in pools:
            spec, st = p["spec"], p["status"]
            if st.get("removed"):
                continue
            snap["pools"][spec["name"]] = {
                "vcenter": spec["vcenter"], "vcpus": st["vcpus-usage"],
                "memory": st["memory-usage"], "storage": st["datastore-usage"],
                "networks": st["network-usage"], "leases": st["lease-count"],
            }
            t = totals.setdefault(spec["vcenter"], [0.0] * 9)
            cap = st["vcpus-capacity"]
            for i, (used, total) in enumerate((
                (st["vcpus-used"], cap), (st["memory-used"], spec["memory"]),
                (st["storage-used"], spec["storage"]),
                (st["networks-used"], st["networks-total"]),
            )):
                t[2 * i] += used
                t[2 * i + 1] += total
            t[8] += st["lease-count"]
        for vc, t in totals.items():
            snap["vcenters"][vc] = {
                "vcpus": round(t[0] / t[1], 4) if t[1] else 0,
                "memory": round(t[2] / t[3], 4) if t[3] else 0,
                "storage": round(t[4] / t[5], 4) if t[5] else 0,
                "networks": round(t[6] / t[7], 4) if t[7] else 0,
                "leases": int(t[8]),
            }
        self.ledger.append_usage(snap, retention)
        return snap

    def usage_history(self, pool: Any = None, since: Any = None, after: Any = None,
                      limit: Any = None) -> list[dict[str, Any]]:
        """Rollups since `since` (default 24h), oldest first; `after` (a row's ts) and
        `limit` page through them."""
        if pool is not None:
            text_arg(pool, "pool", required=False)
        seconds = parse_duration(since if since is not None else "24h", "since",
                                 maximum=366 * 86400)
        start = time.time() - seconds
        if after is not None:
            if isinstance(after, bool) or not isinstance(after, int | float) \
                    or not math.isfinite(after):
                raise InvalidRequest.of("after", "must be a row's ts (a number)")
            start = max(start, after)
        if limit is None or pool:  # a pool's rows are a subset: filter before the page
            rows = self.ledger.usage_history(start)
        else:
            rows = self.ledger.usage_history_from(start, _limit(limit) + 1)
        if after is not None:
            rows = [r for r in rows if r["ts"] > after]
        if pool:
            rows = [{"at": r["at"], "ts": r["ts"], "waiting": r["waiting"],
                     "pools": {pool: r["pools"][pool]}} for r in rows if pool in r["pools"]]
        return rows[:_limit(limit)] if limit is not None else rows


def _limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE:
        raise InvalidRequest.of("limit", f"must be an integer from 1 to {MAX_PAGE}")
    return value


def pool_view(pool: Pool, fleet: Fleet, leases: list[Lease],
              health: PoolHealth = UNKNOWN_HEALTH) -> dict[str, Any]:
    """A pool in the upstream /show-pools shape, usage as fractions 0..1."""
    u = fleet.used(pool.name)
    handed = pool.all_keyed()  # a split network counts slice by slice
    nets_used = sum(1 for _, key in handed if not fleet.is_free(key))
    return {
        "spec": pool.spec(),
        "status": {
            "vcpus-usage": round(u.vcpus / pool.vcpu_capacity, 4),
            "memory-usage": round(u.memory / pool.memory, 4),
            "datastore-usage": round(u.storage / pool.storage, 4),
            "network-usage": round(nets_used / len(handed), 4) if handed else 0,
            "vcpus-capacity": pool.vcpu_capacity,  # placeable: floor(vcpus × overcommit)
            "vcpus-used": u.vcpus, "memory-used": u.memory, "storage-used": u.storage,
            "networks-used": nets_used, "networks-total": len(handed),  # slices one by one
            "lease-count": u.leases,
            "health": health.to_dict(),  # live vCenter health: ok, degraded (why), unknown
            "leases": [x.to_wire() for x in leases],
        },
    }
