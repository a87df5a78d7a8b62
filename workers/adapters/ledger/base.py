"""What every part of the ledger shares: the Redis client, the key prefix and its names, the
scripts."""

from __future__ import annotations

import redis

from ..keys import Keys
from .scripts import Scripts


class LedgerBase:
    def __init__(self, client: redis.Redis, prefix: str = "vcm:", keep: int = 7 * 86400,
                 answer_ttl: int = 86400) -> None:
        self.r = client
        self.p = prefix  # the scripts derive every key from it
        self.k = Keys(prefix)
        self.keep = keep  # seconds a released lease's record is kept
        self.answer_ttl = answer_ttl  # seconds a task id's answer is kept for its copies
        self.scripts = Scripts(client)
