"""Fleet metrics for `GET /metrics`: a prometheus-client collector that reads the ledger's
counters at scrape time.

Everything comes from what the workers keep in the ledger (read by `read_fleet`,
workers/adapters/ledger/reports.py); nothing is counted in the shim, so any number of shim
replicas report the same values:

  stats       placements, releases, reaps, granted-after-wait, refused:<ErrorName>
  latency     acquire latency incl. waiting: count per bucket (not cumulative), count, sum
  leases      active leases
  waiting     the waiting line's length
  rollup      the latest usage rollup taken by beat: it gives utilization
  mirror      the ledger mirror's status (state, seq, ledger-seq, written-at, error, ...),
              parsed by mirror_status.parse_status
  seq         the ledger's change counter
  set aside   records set aside; unreadable: those whose holdings cannot be read

and Redis's own INFO memory and stats: used_memory against maxmemory (a full Redis refuses
writes: workers/adapters/redis_memory.py) and evicted_keys (0 under noeviction).

The metrics named as upstream's (upstream_metrics.py) come from the same read, which then also
takes the configured pools' usage, the networks in use, the active lease ids and the waiting
line (LedgerDetail), and from the pools file as the workers read it (re-read when it changes).
Only the records of leases the last scrape did not see are read then, in chunks
(LeaseFactsCache).

All of it but those records is read in one pipelined round trip with short socket timeouts.
A scrape never fails because of Redis: when it does not answer, the scrape says
`vcm_redis_up 0` and nothing else.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from workers.adapters.keys import PREFIX
from workers.adapters.ledger.reports import LedgerDetail, read_fleet, report_client
from workers.adapters.ledger.status import LATENCY_BUCKETS
from workers.adapters.pools_file import PoolsFile
from workers.adapters.redis_memory import MemoryUse
from workers.core.errors import ERRORS
from workers.core.health import effective
from workers.core.models import DIMENSIONS, Pool
from workers.publisher.mirror_status import parse_status
from workers.settings import Settings

from . import upstream_metrics

log = logging.getLogger(__name__)

RESOURCES = (*DIMENSIONS, "networks")
COUNTERS = (  # (metric name without _total, vcm:stats field, help)
    ("vcm_placements", "placements", "Leases placed (one per vCenter of a request)"),
    ("vcm_releases", "releases", "Leases released by their owners"),
    ("vcm_reaps", "reaps", "Leases released by the reaper because they expired"),
    ("vcm_granted_after_wait", "granted-after-wait",
     "Acquire requests granted after waiting in line"),
)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _number(value: Any, default: float | None = None) -> float | None:
    try:
        number = float(_text(value))
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


@dataclass
class FleetSnapshot:
    """What the ledger says right now, read in one round trip."""

    at: float
    stats: dict[str, int] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    leases: int = 0
    waiting: int = 0
    rollup: dict[str, Any] | None = None
    mirror: dict[str, Any] = field(default_factory=dict)  # parse_status; {} without a hash
    seq: int | None = None
    health: dict[str, Any] = field(default_factory=dict)  # pool -> PoolHealth (live vCenters)
    set_aside: int = 0  # records set aside, holding what can be read of them
    set_aside_unreadable: int = 0  # of which nothing can be read: placement is stopped
    memory: MemoryUse | None = None  # Redis's INFO memory
    evicted: int | None = None  # Redis's INFO stats evicted_keys
    pools: Mapping[str, Pool] | None = None  # as configured, when the detail was read
    detail: LedgerDetail | None = None  # what the metrics named as upstream's read

    # -- derived values (shared by the metrics and the dashboard) -------------------------
    @property
    def refusals(self) -> dict[str, int]:
        out = dict.fromkeys(ERRORS, 0)
        for key, value in self.stats.items():
            if key.startswith("refused:") and key[8:]:
                out[key[8:]] = value
        return out

    @property
    def rollup_age(self) -> float | None:
        ts = _number((self.rollup or {}).get("ts"))
        return None if ts is None else max(0.0, self.at - ts)

    @property
    def mirror_lag(self) -> int | None:
        """Ledger changes not in the mirror yet; None when there is no mirror status."""
        mirrored = _number(self.mirror.get("seq"))
        if mirrored is None:
            return None
        known = [x for x in (self.seq, _number(self.mirror.get("ledger-seq"))) if x is not None]
        return max(0, int(max(known, default=mirrored) - mirrored))

    @property
    def mirror_write_age(self) -> float | None:
        written = _number(self.mirror.get("written-at"))
        return None if written is None else max(0.0, self.at - written)

    def mirror_count(self, key: str) -> int:
        """A counter (or count) of the mirror's status; 0 when it is not there."""
        return int(_number(self.mirror.get(key), 0.0) or 0)

    @property
    def mirror_failing(self) -> bool:
        """The publisher's `state` (ok | failing | too-large) when it writes one, else an error."""
        state = self.mirror.get("state")
        return state != "ok" if state else bool(self.mirror.get("error"))

    def latency_buckets(self) -> list[tuple[float, float]]:
        """Cumulative (bound, count) pairs, +Inf last with the total count."""
        count = self.latency.get("count", 0.0)
        out, running = [], 0.0
        for bound in LATENCY_BUCKETS:
            # the hash counts each observation once, in the smallest bucket that holds it
            running += max(self.latency.get(str(bound), 0.0), 0.0)
            out.append((float(bound), min(running, count) if count else running))
        out.append((math.inf, max(count, running)))
        return out

    def latency_quantile(self, q: float) -> float | None:
        """An upper bound of the q-quantile of the acquire latency (a bucket bound)."""
        buckets = self.latency_buckets()
        total = buckets[-1][1]
        if not total:
            return None
        for bound, count in buckets:
            if count >= q * total:
                return bound
        return math.inf


class FleetReader:
    """Reads a FleetSnapshot from Redis: one pipeline, short timeouts, no retries."""

    def __init__(self, redis_url: str, prefix: str = PREFIX, timeout: float = 0.5,
                 client: redis.Redis | None = None) -> None:
        self.url = redis_url
        self.prefix = prefix
        self.health_stale = Settings.from_env().inventory_stale
        self.timeout = timeout
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> redis.Redis:
        with self._lock:
            if self._client is None:
                self._client = report_client(self.url, self.timeout)
            return self._client

    def read(self, pools: Mapping[str, Pool] | None = None,
             known: Container[Any] = ()) -> FleetSnapshot:
        """Raises the Redis error when Redis does not answer. With `pools` (as configured),
        the LedgerDetail of those pools is read too, without the records of the leases in
        `known` (ids)."""
        fleet = read_fleet(self.client, self.prefix, None if pools is None else list(pools),
                           known)
        snap = FleetSnapshot(at=time.time(), leases=fleet.leases, waiting=fleet.waiting,
                             set_aside=fleet.set_aside,
                             set_aside_unreadable=fleet.set_aside_unreadable,
                             pools=pools, detail=fleet.detail)
        # a Redis user may lack INFO (an ACL without @dangerous): Redis's numbers are then
        # unknown, the ledger's are still shown
        if fleet.memory is not None:
            snap.memory = MemoryUse.from_info(fleet.memory)
        if fleet.redis_stats is not None:
            evicted = _number(fleet.redis_stats.get("evicted_keys"))
            snap.evicted = int(evicted) if evicted is not None else None
        for key, value in fleet.stats.items():
            number = _number(value)
            if number is not None:
                snap.stats[_text(key)] = int(number)
        for key, value in fleet.latency.items():
            number = _number(value)
            if number is not None:
                snap.latency[_text(key)] = number
        snap.mirror = parse_status(fleet.mirror, now=snap.at) if fleet.mirror else {}
        snap.health = effective(fleet.health, snap.at, self.health_stale)
        number = _number(fleet.seq)
        snap.seq = int(number) if number is not None else None
        snap.rollup = fleet.rollup
        return snap


class PoolsSource:
    """The pools as configured, for the metrics: the pools file the workers read, loaded on
    first use and re-read when it changes (an invalid change keeps the last good pools, as in
    the workers). None while it has never been read: the pool metrics are left out, logged."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: PoolsFile | None = None
        self._lock = threading.Lock()
        self._failed: str | None = None

    def __call__(self) -> Mapping[str, Pool] | None:
        with self._lock:
            if self._file is None:
                try:
                    self._file = PoolsFile(self.path)
                except Exception as exc:  # noqa: BLE001 - the scrape goes on without pools
                    if str(exc) != self._failed:
                        log.warning("fleet metrics: the pools file cannot be read: %s", exc)
                    self._failed = str(exc)
                    return None
            return self._file.current()


class FleetCollector:
    """The collector to register on the shim's registry:
    `metrics.registry.register(FleetCollector(settings.redis_url, pools, namespace))`;
    with `pools` (the configured pools, e.g. a PoolsSource) the metrics named as upstream's
    too, their `namespace` label `namespace`."""

    def __init__(self, source: str | FleetReader,
                 pools: Callable[[], Mapping[str, Pool] | None] | None = None,
                 namespace: str = "") -> None:
        self.reader = FleetReader(source) if isinstance(source, str) else source
        self.pools = pools
        self.namespace = namespace
        self.leases = upstream_metrics.LeaseFactsCache()

    def describe(self) -> Iterator[Metric]:
        # names only: registering must not touch Redis
        upstream = upstream_metrics.describe() if self.pools is not None else []
        return iter([*self._families(None), *upstream])

    def collect(self) -> Iterator[Metric]:
        pools = None
        if self.pools is not None:
            try:
                pools = self.pools()
            except Exception:  # noqa: BLE001 - the scrape goes on without pools
                log.exception("fleet metrics: could not read the pools")
        try:
            snap = self.reader.read(pools, self.leases.known)
        except Exception as exc:  # noqa: BLE001 - a scrape must never fail because of Redis
            log.warning("fleet metrics: Redis does not answer: %s", exc or type(exc).__name__)
            return iter([self._redis_up(0)])
        try:
            out = self._families(snap)
        except Exception:  # noqa: BLE001 - odd data in Redis must not break the scrape either
            log.exception("fleet metrics: could not build the metrics")
            return iter([self._redis_up(1)])
        if snap.pools is not None and snap.detail is not None:
            try:
                out += upstream_metrics.families(snap.pools, snap.detail, snap.stats, snap.at,
                                                 self.namespace, self.leases)
            except Exception:  # noqa: BLE001 - nor may it break the others
                log.exception("fleet metrics: could not build the metrics named as upstream's")
        return iter(out)

    @staticmethod
    def _redis_up(value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily("vcm_redis_up", "1 if the ledger's Redis answered this scrape",
                                 value=value)

    def _families(self, snap: FleetSnapshot | None) -> list[Metric]:
        """Every family; with samples from `snap`, or empty (describe) when it is None."""
        pool = GaugeMetricFamily(
            "vcm_pool_utilization", "Used fraction of a pool's budget (latest usage rollup); "
            "vcpus counts against vcpus x vcpu-overcommit", labels=["pool", "vcenter", "resource"])
        vcenter = GaugeMetricFamily(
            "vcm_vcenter_utilization", "Used fraction of a vCenter's budget over all its pools "
            "(latest usage rollup)", labels=["vcenter", "resource"])
        health = GaugeMetricFamily(
            "vcm_pool_health", "1 for the live vCenter health of a pool: state ok or degraded "
            "(with the reason; a degraded pool takes no new leases)", labels=["pool", "state",
                                                                              "reason"])
        age = GaugeMetricFamily("vcm_rollup_age_seconds",
                                "Age of the latest usage rollup the utilization comes from")
        leases = GaugeMetricFamily("vcm_active_leases", "Active leases")
        waiting = GaugeMetricFamily("vcm_waiting_requests", "Acquire requests waiting in line")
        counters = [CounterMetricFamily(name, doc) for name, _, doc in COUNTERS]
        refusals = CounterMetricFamily(
            "vcm_refusals", "Requests refused, by reason (the error name)", labels=["reason"])
        mirror_lag = GaugeMetricFamily(
            "vcm_mirror_lag_seq", "Ledger changes not yet written to the mirror "
            "(ledger seq - mirrored seq)")
        mirror_age = GaugeMetricFamily("vcm_mirror_last_write_age_seconds",
                                       "Seconds since the mirror was last written")
        mirror_failing = GaugeMetricFamily("vcm_mirror_failing",
                                           "1 while writing the mirror fails")
        mirror_errors = CounterMetricFamily(
            "vcm_mirror_errors", "Publisher rounds that met an unexpected exception (not a "
            "mirror write failure); the last one is in /readyz")
        mirror_set_aside = GaugeMetricFamily(
            "vcm_mirror_set_aside_leases", "Leases of the last mirror save that hold text UTF-8 "
            "cannot encode, written escaped; a rebuild from the mirror sets them aside (ids in "
            "the placement worker's log)")
        set_aside = GaugeMetricFamily(
            "vcm_set_aside_records", "Lease records set aside because they cannot be read "
            "(ids in the placement worker's log; dropped with `vcm release ID`), by whether what "
            "they hold could be read and stays counted, or could not and stops all placement",
            labels=["holdings"])
        memory = [
            GaugeMetricFamily("vcm_redis_memory_used_bytes", "Redis's used_memory"),
            GaugeMetricFamily("vcm_redis_memory_max_bytes",
                              "Redis's maxmemory (0: no limit)"),
            GaugeMetricFamily("vcm_redis_memory_used_ratio",
                              "used_memory / maxmemory: above 1 Redis refuses every write "
                              "(noeviction) until memory is freed"),
            GaugeMetricFamily("vcm_redis_memory_policy_evicts",
                              "1 while Redis has a maxmemory and a maxmemory-policy other than "
                              "noeviction: it may evict ledger records under pressure"),
        ]
        evicted = CounterMetricFamily(
            "vcm_redis_evicted_keys", "Keys Redis evicted for memory (always 0 under "
            "noeviction; any other policy may evict ledger records)")
        if snap is None:
            latency = HistogramMetricFamily(
                "vcm_acquire_latency_seconds", "Acquire latency, including time spent waiting "
                "in line")
            return [self._redis_up(1), pool, vcenter, health, age, leases, waiting, latency,
                    *counters,
                    refusals, mirror_lag, mirror_age, mirror_failing, mirror_errors,
                    mirror_set_aside, set_aside, *memory, evicted]

        out: list[Metric] = [self._redis_up(1)]
        rollup = snap.rollup or {}
        pools = rollup.get("pools") if isinstance(rollup.get("pools"), dict) else {}
        for name, row in sorted(pools.items()):
            if not isinstance(row, dict):
                continue
            vc = _text(row.get("vcenter", ""))
            for resource in RESOURCES:
                value = _number(row.get(resource))
                if value is not None:
                    pool.add_metric([_text(name), vc, resource], value)
        vcenters = rollup.get("vcenters") if isinstance(rollup.get("vcenters"), dict) else {}
        for name, row in sorted(vcenters.items()):
            if not isinstance(row, dict):
                continue
            for resource in RESOURCES:
                value = _number(row.get(resource))
                if value is not None:
                    vcenter.add_metric([_text(name), resource], value)
        out += [pool, vcenter]
        for name, h in sorted(snap.health.items()):
            health.add_metric([name, h.state, h.reason], 1)
        out.append(health)
        if snap.rollup_age is not None:
            age.add_metric([], snap.rollup_age)
            out.append(age)

        leases.add_metric([], snap.leases)
        waiting.add_metric([], snap.waiting)
        buckets = snap.latency_buckets()
        latency = HistogramMetricFamily(
            "vcm_acquire_latency_seconds", "Acquire latency, including time spent waiting in line",
            buckets=[(floatToGoString(bound), count) for bound, count in buckets],
            sum_value=snap.latency.get("sum", 0.0))
        out += [leases, waiting, latency]
        set_aside.add_metric(["counted"], snap.set_aside - snap.set_aside_unreadable)
        set_aside.add_metric(["unreadable"], snap.set_aside_unreadable)
        out.append(set_aside)

        for family, (_, key, _) in zip(counters, COUNTERS, strict=True):
            family.add_metric([], snap.stats.get(key, 0))
            out.append(family)
        for reason, value in sorted(snap.refusals.items()):
            refusals.add_metric([reason], value)
        out.append(refusals)

        if snap.mirror_lag is not None:  # no status hash: the mirror is off (or not written yet)
            mirror_lag.add_metric([], snap.mirror_lag)
            mirror_failing.add_metric([], int(snap.mirror_failing))
            out += [mirror_lag, mirror_failing]
        elif snap.mirror_failing:
            mirror_failing.add_metric([], 1)
            out.append(mirror_failing)
        if snap.mirror_write_age is not None:
            mirror_age.add_metric([], snap.mirror_write_age)
            out.append(mirror_age)
        if snap.mirror:
            mirror_errors.add_metric([], snap.mirror_count("errors"))
            mirror_set_aside.add_metric([], snap.mirror_count("set-aside"))
            out += [mirror_errors, mirror_set_aside]
        if snap.memory is not None:
            used, limit, ratio, evicts = memory
            used.add_metric([], snap.memory.used)
            limit.add_metric([], snap.memory.limit)
            evicts.add_metric([], int(snap.memory.evicts))
            out += [used, limit, evicts]
            if snap.memory.ratio is not None:
                ratio.add_metric([], snap.memory.ratio)
                out.append(ratio)
        if snap.evicted is not None:
            evicted.add_metric([], snap.evicted)
            out.append(evicted)
        return out
