"""The waiting line's storage: requests parked in arrival order, their records, and the
twin tasks sent again for a request that waits (workers/service/waiting.py decides who is
served)."""

from __future__ import annotations

import json
from typing import Any

from ...core.phases import DELAYED, request_network_type, stat_field
from .base import LedgerBase
from .records import text
from .scripts import InLine, Unparked


class LineStore(LedgerBase):
    def park(self, key: str, record: dict[str, Any]) -> InLine:
        """Join the line (once per request key; a later task with the same key becomes a
        twin that gets the same answer). Position 0 if the request was granted meanwhile.
        A request that joins is counted as pending for its network type, and as delayed when
        older requests wait ahead of it."""
        kind = request_network_type(record.get("request") or {})
        reply = self.scripts.park(args=[self.p, key, json.dumps(record), record["task"],
                                        stat_field("pending", kind), stat_field(DELAYED, kind)])
        return InLine.from_reply(reply, record)

    def is_waiting(self, key: str) -> bool:
        return self.r.zscore(self.k.waiting, key) is not None

    def unpark(self, key: str, refusal: dict[str, Any] | None = None) -> Unparked:
        """Leave the line; the twins are answered by the caller too. A `refusal` (an error's
        to_dict) is recorded as the answer of every task that waited, in the same step."""
        return Unparked.from_reply(self.scripts.unpark(args=[
            self.p, key, json.dumps(refusal) if refusal is not None else "", self.answer_ttl]))

    def twins(self, key: str) -> list[str]:
        """The other tasks waiting for the same request (see park)."""
        return [text(x) for x in self.r.smembers(self.k.twins(key))]

    def rewait(self, key: str, record: dict[str, Any]) -> None:
        """Replace a waiter's record, keeping its place in line."""
        self.r.hset(self.k.waiters, key, json.dumps(record))

    def drop_twin(self, key: str, task_id: str) -> bool:
        return bool(self.r.srem(self.k.twins(key), task_id))

    def waiters(self) -> list[tuple[str, dict[str, Any]]]:
        ids = [text(x) for x in self.r.zrange(self.k.waiting, 0, -1)]
        if not ids:
            return []
        raws = self.r.hmget(self.k.waiters, ids)
        return [(i, json.loads(raw)) for i, raw in zip(ids, raws, strict=True) if raw]

    def waiting_count(self) -> int:
        return int(self.r.zcard(self.k.waiting))
