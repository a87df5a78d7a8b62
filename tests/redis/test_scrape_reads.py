"""What a /metrics scrape reads of the lease records, counted by a redis-server of the test's
own (INFO commandstats and the bytes it sent): with the records known from the scrape before,
none is fetched again; a new lease is fetched alone, in the next scrape, and a released one is
forgotten; records are fetched in chunks, never in one reply."""

from __future__ import annotations

import math
import time
import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api_shim.fleet_metrics import FleetCollector, FleetReader
from tests.support.procs import RedisServer
from workers.adapters.keys import Keys
from workers.adapters.ledger import Ledger
from workers.adapters.ledger.reports import LEASE_CHUNK
from workers.core.grants import make_lease
from workers.core.models import Pool
from workers.core.parsing import parse_request

POOLS = {name: Pool(name, f"vc-{name}", "dc", "c", "ds", vcpus=10**6, memory=10**6,
                    storage=10**6) for name in ("p1", "p2")}
CAPS = {p.name: (p.vcpu_capacity, p.memory, p.storage) for p in POOLS.values()}
LEASES = 1200  # three chunks


@pytest.fixture()
def server():
    s = RedisServer().start()
    yield s
    s.stop()


def grant(ledger: Ledger, pool: str, count: int) -> list[str]:
    """`count` one-lease requests on `pool`, committed as the placement worker commits."""
    groups, ids = {}, []
    for _ in range(count):
        rid = uuid.uuid4().hex
        req = parse_request({"vcpus": 1, "memory": 1, "networks": 0, "request-id": rid},
                            default_owner="job", default_ttl=3600)
        lease = make_lease(uuid.uuid4().hex[:20], req, POOLS[pool], [], time.time())
        groups[req.key] = [lease]
        ids.append(lease["metadata"]["name"])
    assert ledger.commit(ledger.usage().version, groups, CAPS).status == "ok"
    return ids


class Counted:
    """Commands and bytes the server answered between two looks."""

    def __init__(self, server: RedisServer) -> None:
        self.r = server.client()
        self.before = self.look()

    def look(self) -> tuple[dict[str, int], int]:
        stats = self.r.info("commandstats")
        sent = self.r.info("stats")["total_net_output_bytes"]
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}, sent

    def since(self) -> tuple[dict[str, int], int]:
        (calls, sent), (calls0, sent0) = self.look(), self.before
        self.before = self.look()
        diff = {k: n - calls0.get(k, 0) for k, n in calls.items() if n != calls0.get(k, 0)}
        return diff, sent - sent0


def scrape(collector: FleetCollector) -> dict[tuple, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def aged(metrics: dict[tuple, float], pool: str) -> float | None:
    labels = {"namespace": "ci", "pool": pool, "networkType": "", "phase": "Fulfilled"}
    return metrics.get(("lease_age_seconds_count", tuple(sorted(labels.items()))))


def test_a_scrape_fetches_only_the_records_it_has_not_seen(server):
    ledger = Ledger(server.client())
    assert ledger.restore({"seq": 0, "leases": []}).applied
    first = grant(ledger, "p1", LEASES)
    stored = sum(len(v) for v in server.client().hvals(Keys().leases))
    collector = FleetCollector(FleetReader(server.url), lambda: POOLS, "ci")
    counted = Counted(server)

    m = scrape(collector)  # a cold cache: every record, in chunks
    calls, sent = counted.since()
    assert aged(m, "p1") == LEASES
    assert calls.get("hmget", 0) - len(POOLS) == math.ceil(LEASES / LEASE_CHUNK)
    assert calls["hkeys"] == 1 and calls["hvals"] == 1  # the lease ids, the waiting line
    assert sent > stored

    m = scrape(collector)  # a warm cache: ids only
    calls, sent = counted.since()
    assert aged(m, "p1") == LEASES
    assert calls.get("hmget", 0) == len(POOLS)  # the pools' usage rows, no record
    assert calls["hkeys"] == 1 and calls["hvals"] == 1
    assert sent < stored / 20, (sent, stored)

    (new,) = grant(ledger, "p2", 1)
    assert ledger.release(first[:2]).status == "ok"
    counted.since()  # the commit's and the release's own commands
    m = scrape(collector)  # the new lease alone is fetched; the released ones are gone
    calls, sent = counted.since()
    assert (aged(m, "p1"), aged(m, "p2")) == (LEASES - 2, 1)
    assert calls.get("hmget", 0) == len(POOLS) + 1
    assert sent < stored / 20, (sent, stored)
    assert set(collector.leases.known) == {x.encode() for x in [*first[2:], new]}
