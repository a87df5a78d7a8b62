"""The metrics upstream's controller exports, under its names and labels, computed from the
pools configuration and the ledger at scrape time, so that upstream's Prometheus queries work
unchanged. Pure: the caller reads the pools and the ledger (fleet_metrics.py).

What each means here, and where it differs from upstream, is in docs/operations.md (metrics
named as upstream's). In short: upstream's Lease object is one request (core/phases.py),
Pending while it waits in line, Fulfilled once granted; a pool's figures are its budget and
what the ledger holds of it. Every label value comes from the pools configuration (pools,
networks, their types: as configured now, or when a lease was granted), the two phases and the
setting naming the namespace, never from what a request names (owner, ids, labels): the number
of series is bounded by the configuration, however many leases there are.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from workers.adapters.ledger.records import decoded
from workers.adapters.ledger.reports import LedgerDetail
from workers.core.fleet import NO_USAGE, UsedNets
from workers.core.models import Pool
from workers.core.phases import (
    COUNTED,
    DELAYED,
    FULFILLED,
    PENDING,
    lease_network_type,
    request_network_type,
    stat_parts,
)

POOL = ["namespace", "pool"]
BY_TYPE = ["namespace", "pool", "networkType"]
AGE_QUANTILES = (0.5, 0.9, 1.0)  # 1: the oldest
UNASSIGNED = ""  # the pool of a request still waiting (upstream: no Pool owner yet)


@dataclass
class _Families:
    """Every family, empty; `all()` in exposition order."""

    gauges: dict[str, GaugeMetricFamily] = field(default_factory=dict)
    transitions: CounterMetricFamily = field(default_factory=lambda: CounterMetricFamily(
        "lease_transitions", "Requests that entered a phase: Pending when they joined the "
        "waiting line, Fulfilled when granted", labels=["namespace", "networkType", "phase"]))
    delays: CounterMetricFamily = field(default_factory=lambda: CounterMetricFamily(
        "lease_delays", "Requests that joined the waiting line behind older requests",
        labels=["namespace", "networkType"]))
    age: Metric = field(default_factory=lambda: Metric(
        "lease_age_seconds", "Age of active leases (since created) and of waiting requests "
        "(since they joined the line), by pool, network type and phase; quantile 1 is the "
        "oldest", "summary"))

    def __post_init__(self) -> None:
        for name, doc, labels in _GAUGES:
            self.gauges[name] = GaugeMetricFamily(name, doc, labels=labels)

    def all(self) -> list[Metric]:
        g = self.gauges
        return [*(g[name] for name, _, _ in _GAUGES if name != "network_lease_count"),
                self.age, self.transitions, self.delays, g["network_lease_count"]]


_GAUGES = (
    ("pool_memory_available", "Memory of a pool not leased (GB)", POOL),
    ("pool_memory_total", "Memory budget of a pool (GB)", POOL),
    ("pool_cpus_available", "vCPUs of a pool not leased (its budget x vcpu-overcommit, less "
     "what is leased)", POOL),
    ("pool_cpus_total", "vCPU budget of a pool (before vcpu-overcommit)", POOL),
    ("pool_storage_available", "Storage of a pool not leased (GB)", POOL),
    ("pool_storage_total", "Storage budget of a pool (GB)", POOL),
    ("pool_networks_available", "Networks of a pool no lease holds (a split network counts "
     "slice by slice)", POOL),
    ("pool_networks_total", "Networks of a pool (a split network counts slice by slice)", POOL),
    ("pool_networks_available_by_type", "Networks of a pool no lease holds, by network type",
     BY_TYPE),
    ("pool_networks_total_by_type", "Networks of a pool, by network type", BY_TYPE),
    ("pool_vcpus_utilization_ratio", "Leased vCPUs / (vCPU budget x vcpu-overcommit)", POOL),
    ("pool_memory_utilization_ratio", "Leased memory / memory budget", POOL),
    ("pool_storage_utilization_ratio", "Leased storage / storage budget", POOL),
    ("pool_networks_utilization_ratio", "Networks held / networks of the pool", POOL),
    ("pool_no_schedule", "1 while a pool is cordoned (no-schedule: nothing new is placed on "
     "it), else 0", POOL),
    ("pool_excluded", "1 while a pool is excluded (placed on only when a request names it), "
     "else 0", POOL),
    ("leases_in_use", "Leases on a pool", POOL),
    ("leases_counts", "Requests by phase (Fulfilled: holding leases; Pending: waiting in line) "
     "and network type", ["namespace", "networkType", "phase"]),
    ("network_lease_count", "Leases holding a network, per pool listing it (network: its "
     "ledger key without the vCenter, <port-group>[|<pod>[|<slice>]])",
     ["namespace", "network", "networkType", "pool"]),
)


def describe() -> list[Metric]:
    """The families, without samples (registering must not read anything)."""
    return _Families().all()


@dataclass(frozen=True)
class LeaseFacts:
    """What the metrics read of one lease record."""

    pool: str
    request: tuple[str, str]  # (owner, request-id): the request it was granted for
    network_type: str
    created: float | None  # seconds since the epoch; None when the record has no time


def lease_facts(raw: Any) -> LeaseFacts | None:
    """The facts of a stored lease record; None when it lacks them (a name, and a pool and
    owner as text UTF-8 can encode)."""
    lease = decoded(raw)
    try:
        name, st, meta = lease["metadata"]["name"], lease["status"], lease["metadata"]
        texts = (name, st["pool"], st["owner"])
        "".join(texts).encode("utf-8")
    except (TypeError, KeyError, AttributeError, UnicodeEncodeError):
        return None
    if not all(isinstance(x, str) and x for x in texts):
        return None
    rid = st.get("request-id")
    return LeaseFacts(
        pool=st["pool"], request=(st["owner"], rid if isinstance(rid, str) and rid
                                  else "lease " + name),
        network_type=_label(lease_network_type(st.get("networks"))),
        created=_epoch(meta.get("creationTimestamp")) or _epoch(st.get("leased-at")))


class LeaseFactsCache:
    """The facts of the leases seen at the last scrape, by lease id: a scrape reads and
    decodes only the records of leases that are new since (reading thousands of records costs
    Redis more than the rest of a scrape, decoding them the shim). A lease's facts never
    change while it is active (a renewal changes its expiry alone). It keeps those of the
    current leases only; a record that could not be read is read again at the next scrape."""

    def __init__(self) -> None:
        self.known: dict[Any, LeaseFacts] = {}  # replaced whole by each read, never changed

    def read(self, leases: Mapping[Any, Any]) -> list[LeaseFacts]:
        """The facts of `leases` (lease id -> its record as stored, None when it was not read
        because its id is known)."""
        known, fresh = self.known, {}
        for lease_id, raw in leases.items():
            facts = known.get(lease_id) if raw is None else lease_facts(raw)
            if facts is not None:
                fresh[lease_id] = facts
        self.known = fresh  # concurrent scrapes: the last one's stays, either is right
        return list(fresh.values())


def families(pools: Mapping[str, Pool], detail: LedgerDetail, stats: Mapping[str, int],
             now: float, namespace: str, cache: LeaseFactsCache | None = None) -> list[Metric]:
    """Every family with its samples: `pools` as configured, `detail` and `stats` (the
    ledger's counters) as read at `now`; `cache` keeps lease facts from scrape to scrape."""
    out = _Families()
    g = out.gauges
    used = UsedNets(detail.holders)
    configured: set[str] = set()
    for name in sorted(pools):
        pool = pools[name]
        labels = [namespace, name]
        u = detail.usage.get(name, NO_USAGE)
        keyed = dict(_unique(pool.all_keyed()))  # key -> network: slices one by one
        free = {key for key in keyed if used.is_free(key)}
        for metric, value in (
            ("pool_memory_total", pool.memory), ("pool_memory_available", pool.memory - u.memory),
            ("pool_cpus_total", pool.vcpus),
            ("pool_cpus_available", pool.vcpu_capacity - u.vcpus),
            ("pool_storage_total", pool.storage),
            ("pool_storage_available", pool.storage - u.storage),
            ("pool_networks_total", len(keyed)), ("pool_networks_available", len(free)),
            ("pool_no_schedule", int(pool.no_schedule)), ("pool_excluded", int(pool.exclude)),
            ("leases_in_use", u.leases),
        ):
            g[metric].add_metric(labels, value)
        for metric, part, whole in (
            ("pool_vcpus_utilization_ratio", u.vcpus, pool.vcpu_capacity),
            ("pool_memory_utilization_ratio", u.memory, pool.memory),
            ("pool_storage_utilization_ratio", u.storage, pool.storage),
            ("pool_networks_utilization_ratio", len(keyed) - len(free), len(keyed)),
        ):
            if whole > 0:  # as upstream: no ratio of nothing
                g[metric].add_metric(labels, part / whole)
        by_type: dict[str, list[int]] = {}
        for key, net in keyed.items():
            counts = by_type.setdefault(net.type, [0, 0])
            counts[0] += 1
            counts[1] += key in free
            g["network_lease_count"].add_metric(
                [namespace, key.split("|", 1)[1], net.type, name], detail.holders.get(key, 0))
        for kind, (total, available) in sorted(by_type.items()):
            g["pool_networks_total_by_type"].add_metric([*labels, kind], total)
            g["pool_networks_available_by_type"].add_metric([*labels, kind], available)
        configured.update(by_type)

    requests: dict[tuple[str, str], str] = {}  # (owner, request-id) -> network type
    ages: dict[tuple[str, str, str], list[float]] = {}  # (pool, type, phase) -> ages
    leases = (cache or LeaseFactsCache()).read(detail.leases)
    for lease in leases:
        requests.setdefault(lease.request, lease.network_type)
        if lease.created is not None:
            ages.setdefault((lease.pool, lease.network_type, FULFILLED), []).append(
                max(0.0, now - lease.created))
    counts: dict[tuple[str, str], int] = {}
    for kind in requests.values():
        counts[(kind, FULFILLED)] = counts.get((kind, FULFILLED), 0) + 1
    for record in detail.waiters:
        request = record.get("request")
        kind = _label(request_network_type(request if isinstance(request, dict) else {}))
        counts[(kind, PENDING)] = counts.get((kind, PENDING), 0) + 1
        since = record.get("since")
        if isinstance(since, int | float) and not isinstance(since, bool) \
                and math.isfinite(since):
            ages.setdefault((UNASSIGNED, kind, PENDING), []).append(max(0.0, now - since))
    for (kind, phase), n in sorted(counts.items()):
        g["leases_counts"].add_metric([namespace, kind, phase], n)
    for (pool_name, kind, phase), values in sorted(ages.items()):
        _summary(out.age, {"namespace": namespace, "pool": pool_name, "networkType": kind,
                           "phase": phase}, values)

    # the counters: every configured type from the start (a series born at its first increase
    # loses that increase to rate()), and any type they have counted since
    transitions = {(net, phase): 0 for net in configured for phase in COUNTED.values()}
    delays = dict.fromkeys(configured, 0)
    for name, value in stats.items():
        parts = stat_parts(name)
        if parts is None:
            continue
        counted, net = parts
        if counted == DELAYED:
            delays[net] = value
        else:
            transitions[(net, COUNTED[counted])] = value
    for (net, phase), value in sorted(transitions.items()):
        out.transitions.add_metric([namespace, net, phase], value)
    for net, value in sorted(delays.items()):
        out.delays.add_metric([namespace, net], value)
    return out.all()


def _unique(pairs: Iterable[tuple[Any, str]]) -> Iterable[tuple[str, Any]]:
    """(key, network) once per key: one series per network, whatever the configuration."""
    seen: set[str] = set()
    for net, key in pairs:
        if key not in seen:
            seen.add(key)
            yield key, net


def _label(value: str) -> str:
    """A label value the exposition can encode (a lone surrogate becomes U+FFFD)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    return value


_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)Z")


def _epoch(value: Any) -> float | None:
    """A lease time (RFC 3339, whole seconds, as lease.rfc3339 writes it) in seconds since the
    epoch; None when it is not one. Read by the thousand per scrape: strptime is too slow."""
    m = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return None
    try:
        return float(calendar.timegm(datetime(*map(int, m.groups())).timetuple()))
    except ValueError:  # a day or hour out of range
        return None


def _summary(metric: Metric, labels: dict[str, str], values: list[float]) -> None:
    """A summary of these values as they are now: quantiles (nearest rank), count and sum."""
    ordered = sorted(values)
    for q in AGE_QUANTILES:
        rank = max(1, math.ceil(q * len(ordered)))
        metric.add_sample(metric.name, {**labels, "quantile": f"{q:g}"}, ordered[rank - 1])
    metric.add_sample(metric.name + "_count", labels, len(ordered))
    metric.add_sample(metric.name + "_sum", labels, sum(ordered))
