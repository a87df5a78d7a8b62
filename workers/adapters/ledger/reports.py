"""What the HTTP shim reads of the ledger, on its own Redis clients (short timeouts, no
retries; an asyncio one for /readyz): the fleet for /metrics and the dashboard in one pipelined
round trip (with Redis's own memory and eviction figures; for /metrics also the pools' usage,
the networks in use, the active lease ids and the waiting line; then the records of the
leases the caller has not seen, LEASE_CHUNK at a time), and the status hashes /readyz shows
(the mirror publisher's and the namespace pruning's). Values come back as Redis holds them,
decoded only where the ledger's layout says how (the usage stream's entries, the health
records, waiter records, usage counters); what cannot be decoded is left out, never
raised."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...core.fleet import Usage
from ...core.lease import rfc3339
from ..keys import PREFIX, Keys
from .records import decoded

# lease records fetched per command by a scrape: a reply of about a megabyte (a record is a
# few KB), so Redis is never held long by one command nor asked for one huge reply
LEASE_CHUNK = 500


@dataclass(frozen=True)
class LedgerDetail:
    """The ledger's contents the metrics named as upstream's need, beyond its counters."""

    usage: dict[str, Usage] = field(default_factory=dict)  # per pool asked for (use:<pool>)
    holders: dict[str, int] = field(default_factory=dict)  # network key -> leases holding it
    # active lease id -> its record, both as stored; None for a lease the caller knew already
    # (its record was not read)
    leases: dict[Any, Any] = field(default_factory=dict)
    waiters: list[dict[str, Any]] = field(default_factory=list)  # waiting-line records


@dataclass(frozen=True)
class FleetRead:
    """The ledger's counters and status, as one pipeline read them (fields are raw values:
    bytes or text, as Redis answered)."""

    stats: dict[Any, Any] = field(default_factory=dict)  # the stats hash
    latency: dict[Any, Any] = field(default_factory=dict)  # the latency histogram hash
    leases: int = 0  # active leases
    waiting: int = 0  # requests in the waiting line
    rollup: dict[str, Any] | None = None  # the latest usage rollup, when it decodes
    mirror: dict[Any, Any] = field(default_factory=dict)  # the mirror publisher's status hash
    seq: Any = None  # the ledger's seq, as stored
    health: dict[str, Any] = field(default_factory=dict)  # vCenter -> its decoded record
    set_aside: int = 0  # records set aside
    set_aside_unreadable: int = 0  # of which nothing can be read (placement stops)
    memory: dict[str, Any] | None = None  # Redis's INFO memory (None: not allowed to read it)
    redis_stats: dict[str, Any] | None = None  # Redis's INFO stats (the same)
    detail: LedgerDetail | None = None  # when asked for (read_fleet's `pools`)


def report_client(url: str, timeout: float) -> redis.Redis:
    """A client for reports: short timeouts, no retries (a report says Redis is down rather
    than waiting for it)."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), health_check_interval=0,
                                max_connections=32)


def read_fleet(client: redis.Redis, prefix: str = PREFIX,
               pools: Sequence[str] | None = None, known: Container[Any] = ()) -> FleetRead:
    """Everything the fleet metrics and the dashboard's counters show, in one round trip;
    with `pools` (pool names), the LedgerDetail too: those pools' usage, the networks in use,
    the active leases and the waiting line. Of the active leases, only the records of those
    not in `known` (lease ids as stored) are read: after that round trip, LEASE_CHUNK at a time (a
    lease released meanwhile is left out). Raises the Redis error when Redis does not answer,
    or refuses a read of the ledger; Redis's own figures are None when this client may not
    read them (an ACL without INFO)."""
    keys = Keys(prefix)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.stats)
    pipe.hgetall(keys.latency)
    pipe.hlen(keys.leases)
    pipe.zcard(keys.waiting)
    pipe.xrevrange(keys.usage, "+", "-", count=1)
    pipe.hgetall(keys.mirror)
    pipe.get(keys.seq)
    pipe.hgetall(keys.health)
    pipe.hlen(keys.quarantine)
    pipe.scard(keys.blocked)
    names = list(pools) if pools is not None else []
    for name in names:
        pipe.hmget(keys.use(name), "vcpus", "memory", "storage", "leases")
    if pools is not None:
        pipe.hgetall(keys.nets)
        pipe.hkeys(keys.leases)
        pipe.hvals(keys.waiters)
    pipe.info("memory")
    pipe.info("stats")
    *ledger, memory, redis_stats = pipe.execute(raise_on_error=False)
    for reply in ledger:
        if isinstance(reply, Exception):
            raise reply
    ledger, more = ledger[:10], ledger[10:]
    stats, latency, leases, waiting, usage, mirror, seq, health, aside, blocked = ledger
    detail = _detail(names, more) if pools is not None else None
    if detail is not None:
        _read_records(client, keys, detail.leases, known)
    records = {}
    for vcenter, raw in (health or {}).items():
        try:
            records[_text(vcenter)] = json.loads(raw)
        except ValueError:
            continue  # unreadable: its pools count as unknown
    return FleetRead(stats=stats or {}, latency=latency or {}, leases=int(leases or 0),
                     waiting=int(waiting or 0), rollup=_rollup(usage), mirror=mirror or {},
                     seq=seq, health=records, set_aside=int(aside or 0),
                     set_aside_unreadable=int(blocked or 0),
                     memory=None if isinstance(memory, Exception) else memory or {},
                     redis_stats=None if isinstance(redis_stats, Exception) else redis_stats or {},
                     detail=detail)


def _detail(names: list[str], replies: list[Any]) -> LedgerDetail:
    """The LedgerDetail from its replies: a usage row per name, then the nets hash, the lease
    ids (their records not read yet) and the waiter records (decoded; those that cannot be
    read are left out)."""
    rows, (nets, ids, waiters) = replies[:len(names)], replies[len(names):]
    usage = {name: Usage(*(_whole(x) for x in row))
             for name, row in zip(names, rows, strict=True)}
    holders = {_text(k): len(_text(v).split()) for k, v in (nets or {}).items()}
    line = [x for x in map(decoded, waiters or []) if isinstance(x, dict)]
    return LedgerDetail(usage, holders, dict.fromkeys(ids or []), line)


def _read_records(client: redis.Redis, keys: Keys, leases: dict[Any, Any],
                  known: Container[Any]) -> None:
    """Fill in the records (left as stored: the caller decodes them) of the leases not
    `known`, LEASE_CHUNK per HMGET; a lease released since its id was read is dropped."""
    wanted = [i for i in leases if i not in known]
    for at in range(0, len(wanted), LEASE_CHUNK):
        chunk = wanted[at:at + LEASE_CHUNK]
        for lease_id, raw in zip(chunk, client.hmget(keys.leases, chunk), strict=True):
            if raw is None:
                del leases[lease_id]
            else:
                leases[lease_id] = raw


def _rollup(entries: list[Any] | None) -> dict[str, Any] | None:
    """The usage stream's latest entry (its rollup is JSON under the field `s`)."""
    if not entries:
        return None
    _, fields = entries[0]
    raw = fields.get(b"s") if isinstance(fields, dict) else None
    try:
        rollup = json.loads(raw) if raw else None
    except ValueError:
        return None
    return rollup if isinstance(rollup, dict) else None


async def mirror_status(client: aredis.Redis, prefix: str = PREFIX) -> dict[Any, Any]:
    """The mirror publisher's status hash, as HGETALL returns it (publisher/mirror_status.py
    parses it)."""
    return await client.hgetall(Keys(prefix).mirror)


async def namespace_status(client: aredis.Redis, prefix: str = PREFIX) -> dict[Any, Any]:
    """The namespace pruning's status hash, as HGETALL returns it (`describe_namespaces`)."""
    return await client.hgetall(Keys(prefix).namespaces)


def describe_namespaces(raw: Mapping[Any, Any], now: float | None = None) -> dict[str, Any]:
    """The status hash (as HGETALL returns it) as /readyz shows it: state (ok, failing, off:
    no Kubernetes configuration), the last successful prune (time and age), namespaces seen
    and leases released then, runs, errors and the last error. Never raises."""
    now = time.time() if now is None else now
    fields = {_text(k): _text(v) for k, v in raw.items()}
    if not fields:
        return {"state": "not run yet"}
    out: dict[str, Any] = {"state": fields.get("state", "unknown")}
    pruned = _number(fields.get("pruned-at"))
    if pruned is not None:
        out["last-prune-at"] = rfc3339(pruned)
        out["last-prune-age-seconds"] = round(max(0.0, now - pruned), 1)
    for name in ("namespaces", "released", "runs", "errors"):
        value = _number(fields.get(name))
        if value is not None:
            out[name] = int(value)
    if fields.get("error"):
        out["error"] = fields["error"]
    if fields.get("last-error"):
        out["last-error"] = fields["last-error"]
        at = _number(fields.get("last-error-at"))
        if at is not None:
            out["last-error-at"] = rfc3339(at)
    return out


def _whole(value: Any) -> int:
    """A counter as Redis holds it; 0 when it is not there or not a finite number."""
    number = _number(_text(value)) if value is not None else None
    return int(number) if number is not None and math.isfinite(number) else 0


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None
