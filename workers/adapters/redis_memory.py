"""Redis's memory as its INFO reports it, and how a refusal for memory is recognised.

Redis runs with ``--maxmemory-policy noeviction`` (deploy/redis.yaml): it never evicts a key,
so no ledger record, request-id record or stored answer can vanish to make room. Once
used_memory passes maxmemory it refuses, with an OOM error, every command that may grow memory
and every command queued in MULTI (even a read); plain reads, deletes and EXPIRE still work.
A Lua script without a ``#!`` line (all of lua/) is checked once, at its first write that may
grow memory: refused then, before anything is written, or run to its end. So a full Redis
refuses a ledger change whole and never half-writes one.

Every process maps that refusal to ``RedisFull`` (workers/core/errors.py) naming the cause:
the task that met it, the HTTP shim (503) and the CLI. A worker holds an answer Redis refuses
(``hold``) and stores it once Redis has room.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from ..core.errors import RedisFull, VcmError

log = logging.getLogger(__name__)

HOLD_CAP = 2.0  # seconds between attempts at most: an answer goes out soon after Redis has room

# Redis's reply when it refuses a command for memory; kombu re-raises it with this text only
OOM_TEXT = "command not allowed when used memory > 'maxmemory'"


def refused_for_memory(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from) is Redis refusing a write because
    it is full. Our own errors are never read for Redis's words: their messages quote what a
    request said."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, VcmError):
            return isinstance(exc, RedisFull)
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or OOM_TEXT in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass(frozen=True)
class MemoryUse:
    """INFO memory: used_memory, maxmemory (0: no limit) and maxmemory-policy."""

    used: int
    limit: int
    policy: str

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> MemoryUse:
        return cls(int(info.get("used_memory") or 0), int(info.get("maxmemory") or 0),
                   str(info.get("maxmemory_policy") or ""))

    @property
    def ratio(self) -> float | None:
        """used / maxmemory; None without a limit."""
        return self.used / self.limit if self.limit else None

    @property
    def full(self) -> bool:
        """Redis refuses writes (used_memory above maxmemory, nothing to evict)."""
        return bool(self.limit) and self.used > self.limit

    @property
    def evicts(self) -> bool:
        """Redis may evict keys, ledger records among them, once it reaches maxmemory: it has
        one and a maxmemory-policy other than noeviction (set at runtime, say)."""
        return bool(self.limit) and self.policy != "noeviction"

    def state(self, warn: float) -> str:
        """``ok``, ``high`` (at or above `warn` of maxmemory) or ``full``."""
        ratio = self.ratio
        if self.full:
            return "full"
        return "high" if ratio is not None and ratio >= warn else "ok"

    def report(self, warn: float) -> dict[str, Any]:
        """What /readyz shows: the numbers, the state, and what is wrong in words."""
        ratio = self.ratio
        out: dict[str, Any] = {"state": self.state(warn), "used-bytes": self.used,
                               "maxmemory-bytes": self.limit, "maxmemory-policy": self.policy,
                               "used-ratio": round(ratio, 4) if ratio is not None else None,
                               "warn-ratio": warn, "policy-evicts": self.evicts}
        warnings = []
        if out["state"] == "full":
            warnings.append("Redis is full: it refuses writes (no acquire, release or renew "
                            "can be taken) until memory is freed")
        elif out["state"] == "high":
            warnings.append(f"Redis uses {ratio:.0%} of its maxmemory; at 100% it refuses "
                            "writes")
        if self.evicts:
            warnings.append(f"maxmemory-policy {self.policy} may evict ledger records and "
                            "stored answers under pressure; run Redis with noeviction")
        if warnings:
            out["warnings"] = warnings
        return out

    def error(self, refused: str, then: str = "send it again once Redis has room") -> RedisFull:
        return RedisFull.of(refused, self.used, self.limit, self.policy, then)


def memory_use(client: redis.Redis) -> MemoryUse | None:
    """Redis's memory now (INFO works while Redis is full); None when it does not answer."""
    try:
        return MemoryUse.from_info(client.info("memory"))
    except Exception as exc:  # noqa: BLE001 - only the message's numbers are at stake
        log.debug("INFO memory failed: %s", exc)
        return None


def full_error(client: redis.Redis | None, refused: str,
               then: str = "send it again once Redis has room") -> RedisFull:
    """RedisFull for a refusal just met, with Redis's numbers when it tells them."""
    memory = memory_use(client) if client is not None else None
    return memory.error(refused, then) if memory is not None else RedisFull.of(refused,
                                                                               then=then)


def hold(write: Callable[[], Any], client: redis.Redis | None, what: str,
         stop: Callable[[], bool] = lambda: False) -> Any:
    """`write()`, again after each refusal for memory (0.2 s doubling to 2 s) until Redis
    takes it, or until `stop()` says the process is shutting down (then the refusal is
    raised). Logged once when it starts holding `what`, and once when Redis took it."""
    # here, not at the top: `vcm` only recognises the refusal, and tenacity loads tornado
    from .. import backoff
    from ..liveness import waiting

    delays = backoff.Backoff(backoff.doubling(cap=HOLD_CAP))
    started = time.monotonic()
    held = False
    while True:
        try:
            result = write()
        except Exception as exc:
            if not refused_for_memory(exc) or stop():
                raise
            waiting()  # the worker waits as it should: its liveness file says so
            if not held:
                held = True
                memory = memory_use(client) if client is not None else None
                log.warning("Redis is full%s: holding %s until Redis takes writes again",
                            f" ({memory.used} of maxmemory {memory.limit} bytes)"
                            if memory is not None else "", what)
            time.sleep(delays.next())
            continue
        if held:
            log.warning("Redis took %s after %.1fs", what, time.monotonic() - started)
        return result
