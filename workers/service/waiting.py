"""The waiting line: requests that asked to wait for capacity, served in arrival order.

The head of the line holds the pools it is closest to fitting, so a stream of small requests
cannot overtake a large one forever. A request sent again while it waits (same owner and
request-id) does not queue twice: its task becomes a twin that gets the same answer.

A waiter leaves the line in the Redis step that records its answer for every task waiting
for it (the grant's commit, or the refusal's unpark); its tasks are answered after that
step. When Redis fails in between (a lost reply: the step ran, or not), the waiter is kept
as unsettled, and the next serve (the worker's housekeeping serves the line again about once
a second while one is owed) answers its tasks with what Redis recorded for them, or finds it
still in line and serves it as ever."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from ..core.errors import InvalidRequest, LeaseNotFound, NoCapacity, VcmError, WaitTimeout
from ..core.fleet import Fleet
from ..core.lease import rfc3339
from ..core.models import Request
from ..core.parsing import text_arg
from ..core.placement import place_batch, reserve_for
from ..ports import Ledger, Pools, Replies
from ..settings import Settings
from .placing import REFUSALS, Placing, Queued, Settled
from .usage_cache import UsageCache

log = logging.getLogger(__name__)


@dataclass
class Unsettled:
    """A waiter a serve (or an expiry) left part-way when Redis failed: the tasks known to wait
    for it, and the refusal it was being given (None: it was being placed, or its grant
    answered)."""

    request_id: str
    tasks: list[str]
    refusal: VcmError | None = None


@dataclass
class Parked:
    """The request waits in line; its task completes later through Replies."""

    position: int
    reasons: dict[str, str]
    deadline: str

    def meta(self) -> dict[str, Any]:
        return {"position": self.position, "reasons": self.reasons, "deadline": self.deadline}


class WaitingLine:
    def __init__(self, ledger: Ledger, pools: Pools, settings: Settings, cache: UsageCache,
                 placing: Placing, replies: Replies | None) -> None:
        self.ledger = ledger
        self.pools = pools
        self.settings = settings
        self.cache = cache
        self.placing = placing
        self.replies = replies
        self.empty = False  # nobody waited at the last look (the commit re-checks)
        self._shown: dict[str, tuple[int, str]] = {}  # task id -> last (position, reasons)
        self._unsettled: dict[str, Unsettled] = {}  # waiter key -> what a failure left
        self._unserved = False  # the last serve failed part-way

    @property
    def owed(self) -> bool:
        """A serve or an expiry failed part-way: the line is to be served again."""
        return self._unserved or bool(self._unsettled)

    def acquire(self, raw: Any, task_id: str, owner: str = "anonymous"
                ) -> list[dict[str, Any]] | Parked:
        """Leases, or the request's place in line (Parked) when it waits."""
        received = time.time()
        try:
            req = self.placing.parse(raw, task_id or uuid.uuid4().hex, owner, granted=True)
            try:
                return self.placing.place([req], self, since=received, task=task_id)[0]
            except Queued:  # sent again while it waits: wait with it, whatever `wait` says
                return self.park(req, task_id, {})
            except NoCapacity as exc:
                if req.wait <= 0 and not self.ledger.is_waiting(req.key):
                    raise
                return self.park(req, task_id, exc.reasons)
        except REFUSALS as exc:
            return self.placing.refuse(task_id, exc)[0]

    def held(self, fleet: Fleet, skip: str = "") -> dict[str, str]:
        """Pools kept for the head of the waiting line (none when nobody waits)."""
        waiters = self.ledger.waiters()
        self.empty = not waiters
        for position, (key, record) in enumerate(waiters, start=1):
            if key == skip:
                return {}
            try:
                head = self.placing.parse(record["request"], key)
            except InvalidRequest:
                continue
            return reserve_for(head, fleet, position)
        return {}

    def park(self, req: Request, task_id: str, reasons: dict[str, str]) -> Parked | list:
        # a request that cannot fit even the empty fleet (excluded pools stay excluded) would
        # sit at the head of the line forever, holding pools from everyone: refuse it now
        empty = Fleet({n: replace(p, no_schedule=False) for n, p in self.pools.current().items()})
        try:
            place_batch([req], empty, self.settings.strategy)
        except NoCapacity as exc:
            raise NoCapacity.of(exc.reasons, "not waiting: this request cannot fit even when "
                                "every pool is empty") from None
        deadline = time.time() + req.wait
        record = {"task": task_id, "request": req.to_dict(), "since": time.time(),
                  "deadline": deadline}
        self.empty = False
        in_line = self.ledger.park(req.key, record)
        position, record = in_line.position, in_line.record
        if in_line.answer is not None:  # a copy of a task answered meanwhile: that answer
            return self.placing.replay(in_line.answer)[0]
        if position == 0:  # granted meanwhile (a redelivered task): answer with the leases
            existing = self.placing.existing([req])
            return existing[0] if existing else []
        parked = Parked(position, reasons, rfc3339(record["deadline"]))
        self._shown[task_id] = _shown_key(position, reasons)
        return parked

    def serve(self) -> int:
        """Place waiting requests in arrival order; the head keeps its pools (no starvation).
        The caller holds the service lock.

        It never raises: the change that called it (a release, a reap) is made and answered
        whatever happens here. A failure part-way (Redis did not answer) is logged with the
        tasks it leaves unanswered, and the line stays owed: served again at the worker's
        next housekeeping round, which first settles the waiters left part-way."""
        again, self._unserved = self._unserved, True
        granted = 0
        try:
            self._settle()
            position = 0
            held: dict[str, str] = {}  # nobody ahead of the first waiter
            for key, record in self.ledger.waiters():
                if record["deadline"] <= time.time():
                    self.expire(key, record)
                    continue
                left = self._unsettled[key] = Unsettled(_request_id(record, key),
                                                        [record["task"]])
                try:
                    req = self.placing.parse(record["request"], key)
                    leases = self.placing.place([req], self, granted=key, held=held,
                                                since=record["since"])[0]
                except Settled:  # its tasks have their answers: it leaves, nobody is answered
                    for task_id in [record["task"], *self.ledger.unpark(key).twins]:
                        self._shown.pop(task_id, None)
                    del self._unsettled[key]
                    continue
                except NoCapacity as exc:
                    del self._unsettled[key]  # it stays in line
                    position += 1
                    if position == 1:
                        held = reserve_for(req, self.cache.fleet()[1], 1)
                    self._show(key, record, position, exc.reasons)
                    continue
                except (InvalidRequest, WaitTimeout, LeaseNotFound) as exc:
                    self._leave(key, left, fail=exc)
                    continue
                granted += 1
                self._leave(key, left, leases=leases)
                # counted after the answer: a count a full Redis refuses must not cost one
                self.ledger.count("granted-after-wait")
        except Exception as exc:  # noqa: BLE001 - the caller's change is made: see above
            self._failed(exc, traceback=not again)
            return granted
        self._unserved = False
        return granted

    def _leave(self, key: str, left: Unsettled, leases: list[dict[str, Any]] | None = None,
               fail: VcmError | None = None) -> None:
        """Take a served waiter out of the line and answer its tasks: granted (its commit took
        it out, and recorded the answer of its tasks), or refused with `fail` (recorded for
        its tasks by the unpark)."""
        left.refusal = fail
        left.tasks += self.ledger.twins(key)  # read first: the unpark drops them
        unparked = self.ledger.unpark(key, refusal=fail.to_dict() if fail else None)
        if fail is None or unparked.left:
            self._answer([*left.tasks, *unparked.twins], leases=leases, fail=fail)
        del self._unsettled[key]

    def _settle(self) -> None:
        """Answer the tasks of the waiters a failure left part-way with what Redis recorded
        for them (what a copy of each task gets); a waiter still in line never left it: it
        is served as ever."""
        for key, left in list(self._unsettled.items()):
            if self.ledger.is_waiting(key):
                del self._unsettled[key]
                continue
            left.tasks += self.ledger.twins(key)  # still there if its unpark did not run
            self.ledger.unpark(key)  # it left the line already: this drops its twins
            if left.refusal is not None:
                self._answer(left.tasks, fail=left.refusal)
            elif (found := self.ledger.granted_at([key])[1][0]) is not None:
                try:
                    leases = self.placing.answer_with([left.request_id], [found])[0]
                except LeaseNotFound as exc:  # released meanwhile: what a copy is answered
                    self._answer(left.tasks, fail=exc, recorded=[found])
                else:
                    self._answer(left.tasks, leases=leases)
            del self._unsettled[key]
            log.info("answered tasks %s of waiter %s, left unanswered by a failure",
                     ", ".join(dict.fromkeys(left.tasks)), key)

    def _failed(self, exc: Exception, traceback: bool) -> None:
        """Log a serve that failed part-way, naming the tasks it left unanswered (with the
        traceback when it is the first failure in a row)."""
        for key, left in self._unsettled.items():
            try:  # the twins of a waiter whose commit was sent (they are answered with it)
                left.tasks += self.ledger.twins(key)
            except Exception:  # noqa: BLE001 - named when it is settled
                pass
        unsettled = "; ".join(f"waiter {key} (tasks {', '.join(dict.fromkeys(left.tasks))})"
                              for key, left in self._unsettled.items())
        log.error("serving the waiting line failed (%s: %s); %s; the line is served again at "
                  "the next housekeeping round", type(exc).__name__, exc,
                  f"not answered yet, the outcome unknown here: {unsettled}" if unsettled
                  else "no waiter was taken out of it", exc_info=exc if traceback else None)

    def _answer(self, tasks: list[str], leases: list[dict[str, Any]] | None = None,
                fail: VcmError | None = None, recorded: Any = None) -> None:
        """Answer every task that waited for one request (the first and its twins), except a
        task answered otherwise (a copy of it that asked for another request was granted or
        refused first): its result keeps the answer its copies get. `recorded`: the answer
        recorded for them, when it is not the one given (the lease ids of a grant whose
        leases are gone since)."""
        given = recorded if recorded is not None else (
            json.loads(json.dumps(fail.to_dict())) if fail is not None
            else [[x["metadata"]["name"] for x in leases or []]])
        for task_id in dict.fromkeys(tasks):
            self._shown.pop(task_id, None)
            if self.replies is None:
                continue
            answered = self.ledger.answered(task_id)
            if answered is not None and given not in (answered, answered.get("granted")):
                continue
            if fail is not None:
                self.replies.fail(task_id, fail)
            else:
                self.replies.deliver(task_id, leases)

    def _show(self, key: str, record: dict[str, Any], position: int,
              reasons: dict[str, str]) -> None:
        shown = _shown_key(position, reasons)
        if self._shown.get(record["task"]) == shown or self.replies is None:
            return
        meta = Parked(position, reasons, rfc3339(record["deadline"])).meta()
        for task_id in dict.fromkeys([record["task"], *self.ledger.twins(key)]):
            self._shown[task_id] = shown
            self.replies.waiting(task_id, meta)

    def expire(self, key: str, record: dict[str, Any], why: str = "") -> bool:
        """Take a waiter out of the line and fail its tasks with WaitTimeout (False: it had
        left already)."""
        waited = round(time.time() - record["since"], 1)
        timeout = WaitTimeout.of(waited, why=why)
        left = self._unsettled[key] = Unsettled(_request_id(record, key), [record["task"]],
                                                timeout)
        left.tasks += self.ledger.twins(key)  # read first: the unpark drops them
        unparked = self.ledger.unpark(key, refusal=timeout.to_dict())
        if not unparked.left:
            del self._unsettled[key]
            return False
        self._answer([*left.tasks, *unparked.twins], fail=timeout)
        del self._unsettled[key]
        # counted after the answer: a count a full Redis refuses must not cost one
        self.ledger.count("refused:WaitTimeout")
        return True

    def cancel(self, task_id: Any) -> bool:
        """Take a parked acquire out of the line (its synchronous HTTP client went away), so
        it is not granted leases nobody will see; its task fails with WaitTimeout. When other
        tasks wait for the same request, only this one leaves. False if it is not waiting
        (granted, failed, or not parked yet). The caller holds the service lock."""
        task_id = text_arg(task_id, "task_id", max_len=255)
        gone = WaitTimeout.of(0, why="the client went away")
        for key, record in self.ledger.waiters():
            twins = self.ledger.twins(key)
            primary = record.get("task") == task_id
            if task_id in twins and self.ledger.drop_twin(key, task_id) and not primary:
                self.ledger.answer_once(task_id, gone.to_dict())
                self._answer([task_id], fail=gone)
                return True
            if not primary:
                continue
            others = [t for t in twins if t != task_id]
            if others:  # someone else still waits for this request: they take its place
                self.ledger.drop_twin(key, others[0])
                self.ledger.rewait(key, {**record, "task": others[0]})
                self.ledger.answer_once(task_id, gone.to_dict())
                self._answer([task_id], fail=gone)
                return True
            if self.expire(key, record, "the client went away"):
                log.info("cancelled the wait of %s: its client went away", task_id)
                return True
        return False

    def expire_due(self) -> int:
        """Fail waiters whose wait ran out (the worker calls this about once a second)."""
        n = 0
        now = time.time()
        for key, record in self.ledger.waiters():
            if record["deadline"] <= now:
                self.expire(key, record)
                n += 1
        return n

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for position, (_, record) in enumerate(self.ledger.waiters(), start=1):
            out.append({"position": position,
                        "request-id": record["request"].get("request-id", ""),
                        "task-id": record["task"],
                        "request": record["request"], "since": rfc3339(record["since"]),
                        "deadline": rfc3339(record["deadline"])})
        return out


def _request_id(record: dict[str, Any], key: str) -> str:
    return str(record.get("request", {}).get("request-id") or key)


def _shown_key(position: int, reasons: dict[str, str]) -> tuple[int, str]:
    """What a parked task last showed, so its WAITING state is only rewritten on change."""
    return position, json.dumps(reasons, sort_keys=True)
