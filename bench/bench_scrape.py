"""What a /metrics scrape costs Redis and the shim at 10,000 active leases: the shim's own
collector (api_shim/fleet_metrics.py FleetCollector, with the pools as configured, so the
metrics named as upstream's too) against a redis-server of its own, the leases committed as
the placement worker commits them.

Rows:
- `every record (HVALS)`: the one command that read every lease record whole at each scrape
  before the collector kept lease facts by id: the baseline;
- `first scrape`: a new collector (its cache empty) reads every record, LEASE_CHUNK to a command;
- `next scrape`: the cache holds every lease: the ids alone are read;
- `100 changed`: 50 leases granted and 50 released since the last scrape.

Redis's side is INFO commandstats (microseconds inside Redis, summed over the commands the
row sent) and INFO stats total_net_output_bytes (bytes Redis sent); the scrape's time is the
shim's whole collect and exposition (median of the rounds). The ratios compare the lease
reading of each row with the baseline's.

Usage (from the repository root): .venv/bin/python -m bench.bench_scrape [--leases N] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from api_shim.fleet_metrics import FleetCollector, FleetReader
from bench import BELOW, fleet_spec, fmt_ms, median, table
from tests.support.procs import RedisServer
from workers.adapters.keys import Keys
from workers.adapters.ledger import Ledger
from workers.adapters.ledger.reports import LEASE_CHUNK
from workers.core.grants import make_lease
from workers.core.models import Pool
from workers.core.parsing import parse_request
from workers.core.pools import parse_pools

TARGET = 10.0  # the next scrape: no record fetched, and this many times fewer bytes than HVALS
HVALS = "every record (HVALS)"


def granted(ledger: Ledger, pools: list[Pool], count: int, start: int,
            networks: bool = True) -> list[str]:
    """`count` one-lease requests, each holding a port group of its own (or none), in commits
    of 500."""
    caps = {p.name: (p.vcpu_capacity, p.memory, p.storage) for p in pools}
    ids: list[str] = []
    for first in range(start, start + count, 500):
        groups = {}
        for i in range(first, min(first + 500, start + count)):
            pool = pools[i % len(pools)]
            nets = [pool.networks[(i // len(pools)) % len(pool.networks)]] if networks else []
            req = parse_request({"vcpus": 1, "memory": 1, "request-id": f"r-{i}",
                                 "networks": len(nets),
                                 "boskos-lease-id": f"vsphere-elastic-{i % 97}",
                                 "labels": {"cluster-id": f"ci-op-{i:08x}"}},
                                default_owner=f"ci-op-{i % 300:04d}/job", default_ttl=86400)
            lease = make_lease(uuid.uuid4().hex[:20], req, pool, nets, time.time())
            groups[req.key] = [lease]
            ids.append(lease["metadata"]["name"])
        assert ledger.commit(ledger.usage().version, groups, caps).status == "ok"
    return ids


@dataclass
class Cost:
    """What one action cost Redis: every command's time inside Redis (SLOWLOG with a
    threshold of 0 logs them all), and the bytes Redis sent (INFO stats)."""

    seconds: float  # the action's own time, seen from this process
    durations: dict[str, list[int]]  # command -> µs inside Redis, one per call
    sent: int

    @property
    def busy(self) -> int:
        return sum(sum(v) for v in self.durations.values())

    @property
    def longest(self) -> int:
        return max((max(v) for v in self.durations.values()), default=0)

    def calls(self, command: str) -> int:
        return len(self.durations.get(command, []))


class Watch:
    """Runs an action and reads what it cost Redis (the bench's own looks left out)."""

    OWN = {"slowlog", "info", "config"}

    def __init__(self, client: Any) -> None:
        self.r = client
        self.r.config_set("slowlog-log-slower-than", 0)
        self.r.config_set("slowlog-max-len", 100_000)

    def of(self, action: Callable[[], Any]) -> Cost:
        self.r.slowlog_reset()
        sent0 = self.r.info("stats")["total_net_output_bytes"]
        started = time.perf_counter()
        action()
        took = time.perf_counter() - started
        sent = self.r.info("stats")["total_net_output_bytes"] - sent0
        durations: dict[str, list[int]] = {}
        for entry in self.r.slowlog_get(100_000):
            command = entry["command"]
            name = (command.split()[0] if isinstance(command, str)
                    else command.split()[0].decode()).lower()
            if name not in self.OWN:
                durations.setdefault(name, []).append(int(entry["duration"]))
        return Cost(took, durations, sent)


def scrape(collector: FleetCollector) -> bytes:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_scrape")
    ap.add_argument("--leases", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1,000 leases, 2 rounds")
    args = ap.parse_args()
    if args.quick:
        args.leases, args.rounds = 1_000, 2
    spec = fleet_spec(100, 10, max(1, -(-(args.leases + 100) // 100)))
    pools = list(parse_pools(spec, "bench"))
    by_name = {p.name: p for p in pools}
    server = RedisServer().start()
    try:
        client = server.client()
        ledger = Ledger(client)
        assert ledger.restore({"seq": 0, "leases": []}).applied
        ids = granted(ledger, pools, args.leases, 0)
        stored = sum(map(len, client.hvals(Keys().leases)))
        watch = Watch(client)
        reader = FleetReader(server.url, timeout=30)
        rows: dict[str, list[Cost]] = {}
        for _ in range(args.rounds):
            rows.setdefault(HVALS, []).append(watch.of(lambda: client.hvals(Keys().leases)))
            collector = FleetCollector(reader, lambda: by_name, "ci")
            rows.setdefault("first scrape", []).append(watch.of(lambda c=collector: scrape(c)))
            rows.setdefault("next scrape", []).append(watch.of(lambda c=collector: scrape(c)))
            fresh = granted(ledger, pools, 50, 10**6 * len(rows["next scrape"]),
                            networks=False)
            assert ledger.release(ids[:50]).status == "ok"
            ids = ids[50:] + fresh
            rows.setdefault("100 changed", []).append(watch.of(lambda c=collector: scrape(c)))
        base = rows[HVALS]
        base_longest = median([c.longest for c in base])
        base_sent = median([c.sent for c in base])
        out, below = [], False
        for label, runs in rows.items():
            longest, sent = median([c.longest for c in runs]), median([c.sent for c in runs])
            fetched = median([c.calls("hmget") - len(pools) for c in runs]) \
                if label != HVALS else 1
            verdict = ""
            if label == "next scrape":
                ok = base_sent / sent >= TARGET and fetched == 0
                below = not ok
                verdict = "ok" if ok else BELOW
            out.append([label, fmt_ms(median([c.seconds for c in runs])),
                        f"{median([c.busy for c in runs]) / 1000:,.2f} ms",
                        f"{longest / 1000:,.2f} ms", f"{sent / 1e6:,.2f} MB", f"{fetched:g}",
                        f"{base_longest / max(longest, 1):,.1f}x",
                        f"{base_sent / max(sent, 1):,.1f}x", verdict])
        print(f"## A /metrics scrape at {args.leases:,} leases ({stored / 1e6:,.1f} MB of "
              f"records; median of {args.rounds} rounds)\n")
        print(table(["read", "time", "Redis busy", "longest command", "Redis sent",
                     "record commands", "longest: HVALS / this", "sent: HVALS / this",
                     f"next: sent ≥ {TARGET:g}x, 0 records"], out))
        last = rows["next scrape"][-1]
        print("\nThe last `next scrape`, command by command:\n")
        print(table(["command", "calls", "Redis busy", "longest"], [
            [name, len(us), f"{sum(us) / 1000:,.2f} ms", f"{max(us) / 1000:,.2f} ms"]
            for name, us in sorted(last.durations.items(), key=lambda kv: -sum(kv[1]))]))
        print(f"\nRecords are fetched {LEASE_CHUNK} to an HMGET; `record commands` counts "
              "those. The HVALS row is the one command that read every record at every scrape "
              "before the collector kept lease facts by id (that command alone, not a whole "
              "scrape); `first scrape` is a new collector (an empty cache, as after a restart "
              "of the shim), `next scrape` the one after it, `100 changed` the next after 50 "
              "leases were granted and 50 released. Redis busy: every command's time inside "
              "Redis (SLOWLOG), summed; longest command: how long one of them held Redis.")
        if below:
            print(f"\n{BELOW}: the next scrape fetched records, or sent more than 1/"
                  f"{TARGET:g} of what HVALS sends")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
