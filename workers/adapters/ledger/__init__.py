"""The lease ledger in Redis. Every change is one Lua script (in ../lua/, with its KEYS/ARGV
header and the layout of what it returns), so it is atomic; a script checks everything before
its first write, because Redis does not roll back a script that fails half-way. The keys are
listed in ../keys.py.

One `Ledger` object offers every operation; each part keeps one job:

base.py       the shared state: Redis client, prefix and keys, the scripts, quiet and floor
scripts.py    loading the scripts; one result type per script, decoding its reply
records.py    stored lease records: decoded, readable (checked), released views
leases.py     lease reads and writes: usage, lookups, commit, release, swap
line.py       the waiting line's storage: park, unpark, twins, waiters
mirroring.py  snapshots and restores (and set-aside records), held answers, the publisher's
              bookkeeping
status.py     counters, latency histogram, usage history, reaped list, vCenter health
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .leases import LeaseStore
from .line import LineStore
from .mirroring import MirrorStore
from .status import StatusStore


class Ledger(LeaseStore, LineStore, MirrorStore, StatusStore):
    """The ledger in Redis: every part above on one client and prefix."""

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> Ledger:
        """The ledger on its own client, which never sends a command twice: a command whose
        reply is lost (the connection broke, or the reply timed out, after Redis ran it) is
        the caller's Redis error, its outcome unknown. Sent again, a release by owner would
        answer that it released nothing, a release of a set-aside record LeaseNotFound, a
        waiter taken out of the line that it had left already. redis-py's from_url client
        does not retry, but the URL's `retry_on_timeout` would give it one retry, on lost
        connections too; with no retries allowed, that option changes nothing here."""
        return cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5,
                                        retry=Retry(NoBackoff(), 0)), **kw)


