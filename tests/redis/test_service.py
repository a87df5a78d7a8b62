"""The application service (workers.service.capacity.Capacity) against a real redis-server,
without Celery: how often a decision reads the whole ledger, and the live health."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.support.audit import audit
from tests.support.procs import RedisServer
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import PoolsFile
from workers.core.errors import NoCapacity
from workers.service.capacity import Capacity
from workers.settings import Settings

POOLS = """
pools:
  - name: p1
    vcenter: vc1
    datacenter: dc1
    cluster: c1
    datastore: ds1
    vcpus: 8
    memory: 64
    storage: 100
    networks:
      - {port-group: pg1, vlan: 1}
      - {port-group: pg2, vlan: 2}
      - {port-group: pg3, vlan: 3}
"""
ALL = {"vcpus": 8, "memory": 8, "storage": 10, "owner": "hog"}
ONE = {"vcpus": 1, "memory": 1, "storage": 1, "owner": "late"}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    yield srv
    srv.stop()


@pytest.fixture()
def capacity(server, tmp_path, monkeypatch) -> Capacity:
    server.client().flushall()
    pools = tmp_path / "pools.yaml"
    pools.write_text(POOLS)
    monkeypatch.setenv("VCM_REDIS_URL", server.url)
    monkeypatch.setenv("VCM_POOLS_FILE", str(pools))
    monkeypatch.setenv("VCM_MIRROR_FILE", "off")
    svc = Capacity(Ledger.from_url(server.url), PoolsFile(str(pools)), Settings.from_env())
    svc.ensure_ready()
    return svc


def count_reads(svc: Capacity) -> list[int]:
    """Counts whole-ledger usage reads (the call goes through to Redis)."""
    reads = [0]
    usage = svc.ledger.usage

    def counted(*args, **kwargs):
        reads[0] += 1
        return usage(*args, **kwargs)

    svc.ledger.usage = counted  # type: ignore[method-assign]
    return reads


def test_a_refusal_on_a_current_cache_does_not_reread_the_ledger(capacity: Capacity):
    """Each waiter that does not fit is refused on every release; with thousands of leases a
    whole read costs O(leases + port groups), a version check one GET."""
    reads = count_reads(capacity)
    capacity.acquire(ALL, "t-hog")
    assert reads[0] == 1  # the first decision fills the cache
    for i in range(3):
        with pytest.raises(NoCapacity) as refused:
            capacity.acquire(ONE, f"t-late-{i}")
        assert "p1" in refused.value.reasons
    assert reads[0] == 1
    assert audit(capacity.ledger)["counters"]["p1"][0] == 8  # nothing was committed


def test_a_refusal_on_a_stale_cache_rereads_and_grants(capacity: Capacity, server):
    """Another writer (a second placement worker by mistake, an operator script) freed room:
    the cached usage says full, the ledger's version says the cache is stale."""
    reads = count_reads(capacity)
    hog = capacity.acquire(ALL, "t-hog")
    other = Ledger.from_url(server.url)
    other.release([hog[0]["metadata"]["name"]], owner="hog", now="2026-11-28T00:00:00Z")
    leases = capacity.acquire(ONE, "t-late")
    assert leases[0]["status"]["owner"] == "late"
    assert reads[0] == 2  # the cold start, then one re-read after the version moved


def test_a_request_id_granted_meanwhile_returns_its_leases_on_a_full_fleet(capacity: Capacity):
    first = capacity.acquire({**ALL, "request-id": "job-1"}, "t-1")
    again = capacity.acquire({**ALL, "request-id": "job-1"}, "t-2")  # full now: still its own
    assert [x["metadata"]["name"] for x in again] == [x["metadata"]["name"] for x in first]


# the live health, read from the ledger at most every VCM_HEALTH_REFRESH -------------------------
DEGRADED = {"p1": {"state": "degraded", "reason": "no usable host: h1 in maintenance mode"}}


def service_refreshing_health_every(capacity: Capacity, refresh: str) -> Capacity:
    return Capacity(capacity.ledger, capacity.pools,
                    Settings.from_env({**os.environ, "VCM_HEALTH_REFRESH": refresh}))


def test_with_health_refresh_0_a_degraded_pool_is_refused_at_the_next_decision(capacity):
    svc = service_refreshing_health_every(capacity, "0")
    svc.acquire(ONE, "t-1")  # reads the health: none yet
    svc.ledger.store_health("vc1", DEGRADED, time.time())
    with pytest.raises(NoCapacity) as refused:
        svc.acquire(ONE, "t-2")
    assert refused.value.reasons["p1"] == "degraded: no usable host: h1 in maintenance mode"


def test_the_health_is_not_read_again_before_health_refresh_runs_out(capacity):
    svc = service_refreshing_health_every(capacity, "1h")
    svc.acquire(ONE, "t-1")  # reads the health: none yet
    svc.ledger.store_health("vc1", DEGRADED, time.time())
    granted = svc.acquire(ONE, "t-2")  # decided on the health read an hour ago at most
    assert granted[0]["status"]["pool"] == "p1"
