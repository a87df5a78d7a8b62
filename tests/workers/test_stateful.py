"""Property-based test of the public task API against real processes.

A hypothesis state machine sends vcm.acquire (good, bad, too big, waiting), vcm.acquire_batch,
vcm.release, vcm.renew, vcm.reap_expired and vcm.cancel_wait to a placement worker started
with the documented command, restarts that worker (SIGTERM, SIGKILL) and wipes Redis (the
worker rebuilds the ledger from its file mirror). It keeps a model of what clients were told
and checks after every step:

- used <= capacity, counters == the sum of the leases, no port group in two leases;
- every lease a client was answered with is in the ledger, with the expires-at it was told,
  until a release or a reap names it (nothing reaps on its own here: no beat); nothing else
  is in the ledger except leases being granted to a waiting request;
- every grant is what was asked: one lease per vCenter, each on its own vCenter, of the size
  asked, on an allowed pool, with that pool's port groups of the type asked, expiring ttl
  after the grant; a request that fits one pool of an empty fleet is never refused;
- one (owner, request-id) gives one set of leases: a repeat returns the same lease ids, or an
  error naming them once they are gone; never new leases, never another owner's;
- every task is answered (waiting ones once their wait ran out);
- a refused request (bad strings, bad sizes) is InvalidRequest naming the field and changes
  nothing;
- a mirrored record corrupted before a wipe is set aside by the restore and keeps what it
  holds: leases plus set-aside holdings fit every pool, none of its port groups is granted,
  and one of which nothing can be read stops placement until it is dropped by id.

`make test` runs a bounded search with a fixed seed (the same examples every run) and fails
if no step of it crashed, restarted or wiped anything; `make chaos` runs a long random one
(VCM_CHAOS_EXAMPLES, VCM_CHAOS_STEPS). Each step is a hypothesis event (`pytest
--hypothesis-show-statistics` lists them)."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, event, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.support.audit import audit
from tests.support.helpers import check_invariants, placement_barrier, reset_ledger
from tests.support.stateful import (
    NETWORK_TYPES,
    OWNERS,
    POOL_MEMORY,
    POOL_NAMES,
    POOL_NETS,
    POOL_STORAGE,
    POOL_VCPUS,
    REQUEST_IDS,
    VCENTERS,
    Bad,
    ChaosStack,
    Outcome,
    any_unicode,
    bad_text,
    is_bad_text,
    lease_ids,
    new_tmp,
    outcome_of,
    parse_time,
    settle,
    valid_text,
)
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import load_pools
from workers.contract import QUEUE

ANSWER_TIMEOUT = 30.0  # a task on an idle worker answers in milliseconds: this is generous
CANCEL_ANSWER = 5.0  # a cancelled waiting task is answered at once: far less than a long wait
LONG_WAIT = 20  # for waits that cancel must cut short
REDELIVERY = 20.0  # a killed worker's task comes back after the visibility timeout (10 s here)
RESEND_AFTER = 5.0  # a task no worker took (the transport lost it in flight) is sent again
WAIT_SLACK = 15.0  # a waiting task is answered at most this long after its wait ran out
CHAOS = os.environ.get("VCM_CHAOS") == "1"
SEED = 20260522  # the bounded search's examples: the same every run (make chaos: random)
DISRUPTIVE = "disruptive: "  # event prefix of a step that crashed, restarted or wiped


# -- drawn requests -------------------------------------------------------------------------

@dataclass
class Drawn:
    """An acquire request as drawn, with what the contract says about it: fields that must
    be refused (InvalidRequest naming one of them) and fields that may be refused (a value no
    pool matches, say)."""

    body: dict[str, Any]
    must: set[str] = field(default_factory=set)
    may: set[str] = field(default_factory=set)

    @property
    def owner(self) -> str:
        value = self.body.get("owner")
        return value if isinstance(value, str) and value else "anonymous"

    @property
    def request_id(self) -> str | None:
        value = self.body.get("request-id")
        return value if isinstance(value, str) and value else None


def _pick(draw: st.DrawFn, options: list[tuple[int, st.SearchStrategy[Any]]]) -> Any:
    """One of weighted strategies."""
    total = sum(w for w, _ in options)
    n = draw(st.integers(0, total - 1))
    for weight, strategy in options:
        if n < weight:
            return draw(strategy)
        n -= weight
    raise AssertionError("unreachable")


NONE: st.SearchStrategy[Any] = st.none()
# (field, its good values, whether any other valid text may be refused for that field)
STRING_FIELDS: list[tuple[str, st.SearchStrategy[str], bool]] = [
    ("owner", st.sampled_from(OWNERS), False),
    ("request-id", st.sampled_from(REQUEST_IDS), True),  # ids are restricted to [A-Za-z0-9...]
    ("boskos-lease-id", st.sampled_from(["", "bl-1"]), False),
    ("network-type", st.sampled_from(NETWORK_TYPES), True),
    ("required-pool", st.sampled_from(POOL_NAMES), True),
]
SIZE_ERRORS = st.sampled_from([
    ("vcpus", POOL_VCPUS + 1), ("vcpus", 10**6), ("memory", POOL_MEMORY + 1),
    ("storage", POOL_STORAGE + 1), ("networks", POOL_NETS + 3), ("vcenters", VCENTERS + 1),
    ("vcpus", -1), ("memory", -3), ("vcpus", "8"), ("memory", True), ("vcpus", 2.5),
    ("ttl", -5), ("ttl", "soon"), ("ttl", True), ("wait", -1), ("wait", "later"),
    ("vcenters", -1),
])
bad_unicode = any_unicode.filter(lambda v: is_bad_text(v, 253))


@st.composite
def requests(draw: st.DrawFn, wait: st.SearchStrategy[Any] | None = None,
             bad: bool = True) -> Drawn:
    d = Drawn({})
    network_only = draw(st.integers(0, 9)) == 0
    if network_only:  # a network-only lease: no vCPUs, no memory
        d.body.update(vcpus=0, memory=0, networks=draw(st.integers(1, 2)))
    else:
        d.body.update(vcpus=draw(st.integers(1, 8)), memory=draw(st.integers(1, 32)))
        if draw(st.booleans()):
            d.body["storage"] = draw(st.integers(0, 250))
        if draw(st.booleans()):
            d.body["networks"] = draw(st.integers(0, 2))
    vcenters = draw(st.sampled_from([0, 1, 1, 1, 2, 3]))
    if vcenters != 1:
        d.body["vcenters"] = vcenters
        if vcenters > 1:
            d.may.add("vcenters")
    ttl = draw(st.sampled_from([None, None, None, 1, 2, 3, "2s", 3600]))
    if ttl is not None:
        d.body["ttl"] = ttl
    w = draw(wait) if wait is not None else 0
    if w:
        d.body["wait"] = w
    for name, good, restricted in STRING_FIELDS:
        common = 6 if name in ("owner", "request-id") else 2
        value = _pick(draw, [(10 - common, NONE), (common, good), (1, valid_text)])
        if value is None:
            continue
        d.body[name] = value
        if restricted:
            d.may.add(name)
    selector = draw(st.sampled_from(["none"] * 6 + ["zone", "random"]))
    if selector == "zone":
        d.body["pool-selector"] = {"zone": draw(st.sampled_from(["z0", "z1"]))}
        d.may.add("pool-selector")
    elif selector == "random":
        d.body["pool-selector"] = {draw(valid_text): draw(valid_text)}
        d.may.add("pool-selector")
    spoil = draw(st.integers(0, 3)) if bad else 0
    if spoil == 1:  # one string field that is not valid text, or too long
        name = draw(st.sampled_from([f for f, _, _ in STRING_FIELDS] + ["pool-selector"]))
        value = _pick(draw, [(2, bad_text.map(lambda b: b.value)), (1, bad_unicode)])
        if name == "pool-selector":
            value = draw(st.sampled_from([{"zone": value}, {value: "z0"}]))
        d.body[name] = value
        d.must.add(name)
    elif spoil == 2 and not network_only:
        name, value = draw(SIZE_ERRORS)
        d.body[name] = value
        d.must.add(name)
    elif spoil == 3 and draw(st.booleans()):  # an unknown field, named in any text
        d.body["zz" + draw(any_unicode)] = 1
        d.must.add("zz")
    if d.may:
        d.may |= {"request", "networks", "vcenters"}
    return d


def choose(data: st.DataObject, items: list[Any], n: int = 1,
           avoid: frozenset[Any] = frozenset()) -> list[Any]:
    """Up to n distinct items not in `avoid`. The draw is the same whatever the items are:
    lease ids are the worker's (random), and how many leases live at a step depends on its
    timing, so a draw shaped by them would replay differently (hypothesis: "inconsistent data
    generation") and the search would stop."""
    picks = data.draw(st.lists(st.integers(0, 2**16), min_size=n, max_size=n))
    out: list[Any] = []
    for pick in picks:
        for k in range(len(items)):
            item = items[(pick + k) % len(items)]
            if item not in out and item not in avoid:
                out.append(item)
                break
    return out


def _answered_after(out: Outcome, prev: Outcome) -> bool:
    """Whether the worker answered `out` after `prev` (by the result backend's date_done)."""
    return out.done_at is not None and prev.done_at is not None and out.done_at >= prev.done_at


def names_field(out: Outcome, fields: set[str]) -> bool:
    """Whether an InvalidRequest names one of `fields` (batch fields carry a requests[i].
    prefix; an unknown field is named by its own, possibly escaped, name)."""
    named = out.field_named().rsplit(".", 1)[-1] if out.field_named().startswith(
        "requests[") else out.field_named()
    return any(named == f or (f == "zz" and named.startswith("zz")) for f in fields)


# -- the flight recorder -------------------------------------------------------------------

Step = TypeVar("Step", bound=Any)


def recorded(fn: Step) -> Step:
    """Note each step of an example as it runs. Hypothesis prints the steps only when it
    replays a failure, and a failure that hangs on the workers' timing may not replay: the
    machine then writes what it recorded (see teardown). Each step that ran is also a
    hypothesis event and counted in the machine's `fired`, marked disruptive when it counted
    a disruption (a crash, restart or wipe: the rules that `max_disruptions` bounds)."""

    @functools.wraps(fn)
    def step(self: TaskApiMachine, **kwargs: Any) -> Any:
        args = ", ".join(f"{k}={v!r:.300}" for k, v in kwargs.items() if k != "data")
        self.trace.append(f"{time.time():.3f} {fn.__name__}({args})")
        disruptions = self.disruptions
        result = fn(self, **kwargs)
        name = (DISRUPTIVE if self.disruptions > disruptions else "rule: ") + fn.__name__
        event(name)
        self.fired[name] += 1
        return result

    return step  # type: ignore[return-value]


# -- the model ------------------------------------------------------------------------------

@dataclass
class LeaseModel:
    owner: str
    key: tuple[str, str]
    expires: float  # expires-at as answered (whole seconds, rounded down)


@dataclass
class KeyModel:
    """What one (owner, request-id) was answered with."""

    ids: tuple[str, ...]
    uncertain: bool = False  # Redis was wiped after some of its leases had gone


@dataclass
class Waiter:
    task_id: str
    key: tuple[str, str]
    drawn: Drawn
    deadline: float  # wall clock: sent + wait
    result: Any  # AsyncResult
    twin_of: str | None = None  # the first task of the same (owner, request-id)
    cancelled: bool = False
    sent: float = 0.0


def _where(stack: ChaosStack) -> str:
    return (f"(worker logs in {stack.logs}; last lines of the placement worker:\n"
            f"{stack.placement.output()[-1500:]})")


class TaskApiMachine(RuleBasedStateMachine):
    stack: ChaosStack
    max_disruptions = 1
    fired: Counter[str]  # steps run in this search, by event name (see recorded)

    def __init__(self) -> None:
        super().__init__()
        self.app = self.stack.app
        self.client = self.stack.redis.client()
        self.pools = {p.name: p for p in load_pools(str(self.stack.pools_file))}
        self.live: dict[str, LeaseModel] = {}
        self.keys: dict[tuple[str, str], KeyModel] = {}
        self.gone: dict[str, None] = {}  # released or reaped, and the ledger still remembers
        # (dicts, not sets: draws pick by position, and a dict keeps the order of events)
        self.forgotten: set[str] = set()  # released before Redis was wiped
        self.waiters: dict[str, Waiter] = {}
        self.disruptions = 0
        self.batches = 0
        self.last_batch: list[dict[str, Any]] | None = None
        self.answers: dict[str, Outcome] = {}  # waiting tasks answered, by task id
        self.aside = {}  # set-aside records and what they hold (see the rule below)
        # requests whose lease a rebuild set aside with its owner unreadable: the ledger may
        # still know the request-id from elsewhere in the mirror (a repeat is then refused,
        # naming the set-aside lease) or not (a repeat is a new request)
        self.aside_keys: dict[tuple[str, str], str] = {}
        self.trace: list[str] = []

    # -- plumbing ---------------------------------------------------------------------
    def send(self, name: str, **kwargs: Any) -> Any:
        return self.app.send_task(name, kwargs=kwargs, queue=QUEUE.get(name, "placement"))

    def call(self, name: str, **kwargs: Any) -> Outcome:
        r = self.send(name, **kwargs)
        try:
            out = settle(r, ANSWER_TIMEOUT)
        except TimeoutError as exc:
            raise AssertionError(f"{name} was never answered: {exc} {_where(self.stack)}"
                                 ) from None
        self.trace.append(f"  {name} {r.id} -> {out!r:.300}")
        return out

    def ledger(self) -> Ledger:
        return Ledger(self.client)

    def snapshot(self) -> dict[str, Any]:
        snap = audit(self.ledger())
        waiting = {w.key for w in self.waiters.values()}
        leases = {i: x for i, x in snap["leases"].items() if self._key_of(x) not in waiting}
        return {"leases": leases, "counters": snap["counters"] if not waiting else None}

    @staticmethod
    def _key_of(lease: dict[str, Any]) -> tuple[str, str]:
        return lease["status"]["owner"], lease["status"]["request-id"]

    def assert_unchanged(self, before: dict[str, Any], what: str) -> None:
        after = self.snapshot()
        assert after["leases"] == before["leases"], f"{what} changed the leases"
        if before["counters"] is not None and after["counters"] is not None:
            assert after["counters"] == before["counters"], f"{what} changed the counters"

    def take(self, leases: list[dict[str, Any]], key: tuple[str, str], what: str,
             body: dict[str, Any] | None = None, sent: float = 0.0) -> None:
        """Leases a client was just told about: new, its owner's, for its request-id, and
        (given the request `body`, sent at `sent`) what it asked for."""
        ids = lease_ids(leases)
        assert len(set(ids)) == len(ids), f"{what}: a lease twice in one answer: {ids}"
        if body is not None:
            self.check_grant(leases, body, sent, what)
        for lease in leases:
            name = lease["metadata"]["name"]
            assert name not in self.live and name not in self.gone \
                and name not in self.forgotten, \
                f"{what}: {name} was already answered to someone: a second grant"
            assert self._key_of(lease) == key, \
                f"{what}: lease {name} is {self._key_of(lease)}'s, not {key}'s"
            assert lease["status"]["state"] == "leased", lease["status"]
            self.live[name] = LeaseModel(key[0], key, parse_time(lease["status"]["expires-at"]))
        self.keys[key] = KeyModel(tuple(ids))

    def check_grant(self, leases: list[dict[str, Any]], body: dict[str, Any], sent: float,
                    what: str) -> None:
        """One lease per vCenter asked for, each on its own vCenter, each the size asked for,
        on a pool the request allows, with port groups of that pool and of the type asked for,
        expiring ttl after the grant."""
        want = max(1, int(body.get("vcenters") or 1))
        assert len(leases) == want, f"{what}: {len(leases)} leases for {want} vCenters"
        assert len({x["status"]["vcenter"] for x in leases}) == want, \
            f"{what}: two leases on one vCenter: {leases}"
        ttl = body.get("ttl")
        seconds = 86400 if ttl is None else float(str(ttl).rstrip("s"))
        answered = time.time()
        for lease in leases:
            spec, status = lease["spec"], lease["status"]
            pool = self.pools[status["pool"]]
            for name in ("vcpus", "memory", "storage", "networks"):
                if name in body:
                    assert spec[name] == body[name], \
                        f"{what}: {name} {spec[name]} granted, {body[name]} asked: {lease}"
            assert len(status["networks"]) == spec["networks"], f"{what}: {lease}"
            assert status["vcenter"] == pool.vcenter, f"{what}: {lease}"
            if "required-pool" in body:
                assert status["pool"] == body["required-pool"], f"{what}: {lease}"
            for label, value in (body.get("pool-selector") or {}).items():
                assert pool.label_map().get(label) == value, f"{what}: {lease}"
            kind = body.get("network-type", "single-tenant")
            own = {n.port_group: n.type for n in pool.networks}
            for net in status["networks"]:
                assert own.get(net["port-group"]) == kind, \
                    f"{what}: port group {net['port-group']} is not a {kind} one of " \
                    f"{pool.name}: {lease}"
            expires = parse_time(status["expires-at"])
            assert int(sent) + seconds - 1 <= expires <= answered + seconds + 1, \
                f"{what}: expires-at {status['expires-at']} for ttl {ttl!r}, sent at " \
                f"{sent:.3f}, answered at {answered:.3f}"

    def drop(self, ids: list[str]) -> None:
        for i in ids:
            self.live.pop(i, None)
            self.gone[i] = None

    def expect_repeat(self, out: Outcome, key: tuple[str, str], what: str) -> None:
        """A repeated (owner, request-id): the same leases, or an error naming the gone ones."""
        known = self.keys[key]
        gone = [i for i in known.ids if i not in self.live]
        if out.ok:
            got = lease_ids(out.result)
            if known.uncertain:
                assert got and set(got) <= set(known.ids) and not set(got) - set(self.live), \
                    f"{what}: repeat of {key} answered {got}, first answer {known.ids}"
            else:
                assert not gone, (f"{what}: repeat of {key} was granted {got} although its "
                                  f"leases {gone} were released or reaped")
                assert sorted(got) == sorted(known.ids), \
                    f"{what}: repeat of {key} answered {got}, the first answer was {known.ids}"
            return
        assert out.error == "LeaseNotFound", \
            f"{what}: repeat of {key} (answered before with {known.ids}) got {out}"
        assert gone, f"{what}: repeat of {key} refused although all its leases are live: {out}"
        text = out.message + repr(out.details)
        assert all(i in text for i in gone), f"{what}: the error does not name {gone}: {out}"

    # -- waiters ----------------------------------------------------------------------
    def poll_waiters(self, block_for: set[tuple[str, str]] = frozenset()) -> None:
        """Take in the answers of waiting tasks that have one. For keys in `block_for` (the
        ledger holds their leases), wait for the answer."""
        for tid in sorted(self.waiters, key=lambda t: self.waiters[t].twin_of is not None):
            w = self.waiters.get(tid)
            if w is None or w.twin_of in self.waiters:
                continue  # a twin is compared with its first task's answer, once it has one
            out = outcome_of(w.result)
            if out.state not in ("SUCCESS", "FAILURE") and w.key in block_for:
                try:
                    out = settle(w.result, ANSWER_TIMEOUT)
                except TimeoutError:
                    raise AssertionError(f"leases of waiting {w.key} are in the ledger but "
                                         f"its task {tid} is not answered") from None
            if out.state not in ("SUCCESS", "FAILURE"):
                assert time.time() < w.deadline + WAIT_SLACK, \
                    f"waiting task {tid} ({w.key}) still {out.state} {WAIT_SLACK}s after " \
                    f"its wait ran out {_where(self.stack)}"
                continue
            self.absorb(w, out)

    def absorb(self, w: Waiter, out: Outcome) -> None:
        del self.waiters[w.task_id]
        self.trace.append(f"  waiting {w.task_id} (twin of {w.twin_of}) -> {out!r:.300}")
        what = f"waiting task {w.task_id} for {w.key}"
        first = w.twin_of
        if first is not None and first in self.answers:
            prev = self.answers[first]
            if not prev.ok and prev.error == "WaitTimeout" and _answered_after(out, prev):
                # the first one's wait ran out before the worker took this one: it was a
                # request of its own then (the line no longer held the first), answered on
                # its own: NoCapacity, its own wait running out, or its own leases
                first = None
            elif prev.ok:
                assert out.ok and sorted(lease_ids(out.result)) == sorted(
                    lease_ids(prev.result)), \
                    f"{what}: sent again while {first} waited, answered {out}, first: {prev}"
            else:
                assert out.error == prev.error, \
                    f"{what}: sent again while {first} waited, answered {out}, first: {prev}"
        if out.ok:
            if w.key in self.keys:  # another task of this request-id was answered already
                # (twins left in line after their first was cancelled are granted together)
                assert sorted(lease_ids(out.result)) == sorted(self.keys[w.key].ids), \
                    f"{what}: answered {out}, the request-id holds {self.keys[w.key].ids}"
            else:
                self.take(out.result, w.key, what, w.drawn.body, w.sent)
        else:
            allowed = {"WaitTimeout"} | ({"NoCapacity"} if w.twin_of is not None else set())
            assert out.error in allowed, f"{what}: answered {out}"
            if w.cancelled:
                assert out.error == "WaitTimeout", f"{what}: cancelled, answered {out}"
        self.answers[w.task_id] = out

    # -- the check after every step -----------------------------------------------------
    @invariant()
    def ledger_matches_what_clients_were_told(self) -> None:
        check_invariants(self.ledger(), self.pools)
        self.poll_waiters()
        for _ in range(5):  # a waiting request may be granted while we look
            in_ledger = audit(self.ledger())["leases"]
            waiting = {w.key for w in self.waiters.values()}
            pending = {self._key_of(x) for i, x in in_ledger.items() if i not in self.live}
            if not pending & waiting:
                break
            self.poll_waiters(block_for=pending & waiting)
        unknown = {i: self._key_of(in_ledger[i]) for i in in_ledger if i not in self.live}
        assert not unknown, f"leases in the ledger that no client was told about: {unknown}"
        # nothing in this stack reaps on its own (no beat): only a release or a reap that
        # named it may take an answered lease away, expired or not
        lost = {i: self.live[i].key for i in self.live if i not in in_ledger}
        assert not lost, f"answered leases gone from the ledger without a release or reap: {lost}"
        for i, lease in self.live.items():
            stored = parse_time(in_ledger[i]["status"]["expires-at"])
            assert stored == lease.expires, \
                f"lease {i}: the ledger says it expires at {stored}, its client was told " \
                f"{lease.expires}"

    # -- rules ------------------------------------------------------------------------
    @initialize()
    def start(self) -> None:
        """A clean slate. A message of the previous example's stopped worker may still be
        unacked; the next worker would take it again after the visibility timeout and place it
        here, in a ledger that no longer remembers its request (the previous example's
        messages are dropped: kombu's queue lists and unacked records), and the placement
        worker answers a task that changes nothing first (the cancel of a wait that never
        was), so that nothing it was running lands after the reset."""
        # (kombu keeps a queue's priority levels in lists named queue + "\x06\x16" + level)
        stale = [k for queue in ("placement", "queries")
                 for k in self.client.scan_iter(match=queue + "\x06\x16*")]
        self.client.delete("unacked", "unacked_index", "placement", "queries", *stale)
        self.app.send_task("vcm.cancel_wait", kwargs={"task_id": "no-such-wait"},
                           queue="placement").get(timeout=ANSWER_TIMEOUT)
        reset_ledger(self.client, self.stack.env["VCM_MIRROR_FILE"])

    def _acquire(self, d: Drawn, kind: str) -> None:
        before = self.snapshot()
        sent = time.time()
        r = self.send("vcm.acquire", request=d.body)
        try:
            out = settle(r, ANSWER_TIMEOUT, accept=("SUCCESS", "FAILURE", "WAITING"))
        except TimeoutError as exc:
            raise AssertionError(f"{kind} {d.body!r} was never answered: {exc}") from None
        self.trace.append(f"  vcm.acquire {r.id} -> {out!r:.300}")
        self.judge_acquire(d, r, out, before, sent, f"{kind} {d.body!r}")

    def judge_acquire(self, d: Drawn, r: Any, out: Outcome, before: dict[str, Any],
                      sent: float, what: str) -> None:
        """Whether the answer `out` to the vcm.acquire `r` (its AsyncResult) is what the model
        allows."""
        task_id = r.id
        key = (d.owner, d.request_id) if d.request_id is not None else None
        if d.must:
            assert out.error == "InvalidRequest" and names_field(out, d.must | d.may), \
                f"{what}: must be refused naming one of {sorted(d.must)}, got {out}"
            self.assert_unchanged(before, what)
            return
        if out.error == "InvalidRequest":
            assert names_field(out, d.may), f"{what}: a valid request refused: {out}"
            self.assert_unchanged(before, what)
            return
        if key is None:
            key = (d.owner, task_id)
        first = next((w for w in self.waiters.values()
                      if w.key == key and w.twin_of is None), None)
        if first is not None:  # the same request is waiting: the same answer as that one
            self.waiters[task_id] = Waiter(task_id, key, d, first.deadline, r,
                                           twin_of=first.task_id, sent=sent)
            return
        if key in self.keys:
            if out.state == "WAITING":
                raise AssertionError(f"{what}: repeat of {key} (answered before with "
                                     f"{self.keys[key].ids}) was put in line")
            self.expect_repeat(out, key, what)
            if not out.ok:
                self.assert_unchanged(before, what)
            return
        if out.state == "WAITING":
            assert d.body.get("wait"), f"{what}: put in line without asking to wait"
            info = out.result or {}
            assert info.get("position", 0) >= 1, f"{what}: waiting without a position: {out}"
            wait = float(str(d.body["wait"]).rstrip("s"))
            self.waiters[task_id] = Waiter(task_id, key, d, time.time() + wait, r, sent=sent)
            return
        if out.ok:
            self.take(out.result, key, what, d.body, sent)
            return
        if key in self.aside_keys and out.error == "LeaseNotFound":
            assert self.aside_keys[key] in out.message and "set aside" in out.message, \
                f"{what}: {out}"
            self.assert_unchanged(before, what)
            return
        assert out.error == "NoCapacity", f"{what}: {out}"
        assert not self.fits_an_empty_fleet(d.body, before), \
            f"{what}: refused although nothing is leased and it fits one pool: {out}"
        self.assert_unchanged(before, what)

    @staticmethod
    def fits_an_empty_fleet(body: dict[str, Any], before: dict[str, Any]) -> bool:
        """A request with no constraint but its size, for one vCenter, when nothing is leased
        or waiting: any pool takes it, so a refusal is a defect."""
        if before["leases"] or before["counters"] is None:
            return False
        constrained = {"required-pool", "pool-selector", "network-type", "vcenters"}
        return not constrained & set(body) and (
            body.get("vcpus", 0) <= POOL_VCPUS and body.get("memory", 0) <= POOL_MEMORY
            and body.get("storage", 0) <= POOL_STORAGE and body.get("networks", 1) <= POOL_NETS)

    @rule(d=requests())
    @recorded
    def acquire(self, d: Drawn) -> None:
        self._acquire(d, "acquire")

    @rule(d=requests(wait=st.sampled_from([1, 2, "1s", LONG_WAIT]), bad=False),
          big=st.booleans())
    @recorded
    def acquire_and_wait(self, d: Drawn, big: bool) -> None:
        if big:  # a whole pool: waits whenever every pool has a lease
            d.body.update(vcpus=POOL_VCPUS, memory=POOL_MEMORY)
        self._acquire(d, "waiting acquire")

    @rule(data=st.data(), wait=st.sampled_from([0, 1]))
    @recorded
    def repeat_a_waiting_request(self, data: st.DataObject, wait: int) -> None:
        """The same (owner, request-id) sent again while it waits in line (its request-id
        is the first task's id when it gave none): the same answer as the first task."""
        firsts = [t for t, w in self.waiters.items() if w.twin_of is None]
        picked = choose(data, firsts)
        if not picked:
            return  # nothing waits (any more): whether it does is the workers' timing
        first = self.waiters[picked[0]]
        body = {k: v for k, v in first.drawn.body.items() if k != "wait"}
        body["request-id"] = first.key[1]
        if wait:
            body["wait"] = wait
        self._acquire(Drawn(body, set(), set(first.drawn.may)),
                      f"the request of waiting task {first.task_id} again")

    @rule(owner=st.sampled_from(OWNERS), rid=st.sampled_from(REQUEST_IDS))
    @recorded
    def reuse_request_id_of_another_owner(self, owner: str, rid: str) -> None:
        """bob sends alice's request-id: it is bob's own request, with his own leases."""
        mine = (owner, rid)
        theirs = [k for k in self.keys if k[1] == rid and k[0] != owner]
        self._acquire(Drawn({"vcpus": 1, "memory": 1, "owner": owner, "request-id": rid}),
                      f"reuse of the request-id of {theirs}")
        if mine in self.keys:
            for k in theirs:
                assert not set(self.keys[mine].ids) & set(self.keys[k].ids), \
                    f"{mine} was answered with {k}'s leases"

    # -- copies of an answered acquire (the same task id sent again, later) ----------------
    # `vcm` and the README's loop send a task again, same task id, while it shows PENDING; the
    # queue may be behind, so a copy can reach the worker after the first was answered and
    # capacity freed up. A task id answered once gets that answer for every copy: a refused
    # or timed-out acquire stays refused, word for word, and its copy grants nothing (the
    # invariant after the step sees any lease nobody was told about).
    copyable: dict[str, dict[str, Any]]  # task id -> the request it carried

    @initialize()
    def no_task_to_copy_yet(self) -> None:
        self.copyable = {}

    @rule(vcenters=st.sampled_from([1, VCENTERS]), wait=st.sampled_from([0, 1]),
          ttl=st.sampled_from([None, 2, 3600]), owner=st.sampled_from(OWNERS),
          cancel=st.booleans())
    @recorded
    def acquire_to_copy_later(self, vcenters: int, wait: int, ttl: int | None,
                              owner: str, cancel: bool) -> None:
        """A whole pool on each of `vcenters` vCenters: granted on an idle fleet, refused
        (or timed out, or its wait cancelled) while others hold leases; judged like any
        acquire, and its task id is kept for a copy."""
        body: dict[str, Any] = {"vcpus": POOL_VCPUS, "memory": POOL_MEMORY,
                                "vcenters": vcenters, "owner": owner, "wait": wait}
        if ttl is not None:
            body["ttl"] = ttl
        d = Drawn(body, may={"request", "networks", "vcenters"} if vcenters > 1 else set())
        before = self.snapshot()
        sent = time.time()
        r = self.send("vcm.acquire", request=body)
        try:
            out = settle(r, ANSWER_TIMEOUT, accept=("SUCCESS", "FAILURE", "WAITING"))
        except TimeoutError as exc:
            raise AssertionError(f"acquire {body!r} was never answered: {exc}") from None
        self.trace.append(f"  vcm.acquire {r.id} -> {out!r:.300}")
        self.judge_acquire(d, r, out, before, sent, f"acquire to copy later {body!r}")
        self.copyable[r.id] = body
        if cancel and r.id in self.waiters:  # WaitTimeout now, not when the second is up
            self.cancel(r.id)

    @rule()
    @recorded
    def copy_answered_acquires(self) -> None:
        """A copy of each refused (NoCapacity) or timed-out (WaitTimeout) acquire kept above,
        sent now: each answered as the first was, and the ledger does not change. One still
        waiting in line (it waits a second at most) is answered first."""
        for task_id in self.copyable:
            w = self.waiters.get(task_id)
            if w is not None and w.twin_of is None:
                try:
                    settle(w.result, max(0.0, w.deadline - time.time()) + WAIT_SLACK)
                except TimeoutError:
                    pass  # poll_waiters names a waiting task never answered
        self.poll_waiters()
        refused: dict[str, tuple[dict[str, Any], Outcome]] = {}
        for task_id, body in self.copyable.items():
            first = outcome_of(self.app.AsyncResult(task_id))  # gone with a Redis wipe
            if first.error in ("NoCapacity", "WaitTimeout") and task_id not in self.waiters:
                refused[task_id] = (body, first)
        if not refused:
            return  # nothing refused so far: whether it was is the workers' timing
        before = self.snapshot()
        for task_id, (body, _) in refused.items():
            self.app.send_task("vcm.acquire", kwargs={"request": body}, queue="placement",
                               task_id=task_id)
        # the one placement consumer runs tasks in the order sent: the copies before this
        placement_barrier(self.app, ANSWER_TIMEOUT)
        for task_id, (body, first) in refused.items():
            what = f"copy of task {task_id} ({body!r}, answered {first})"
            try:
                out = settle(self.app.AsyncResult(task_id), ANSWER_TIMEOUT,
                             accept=("SUCCESS", "FAILURE", "WAITING"))
            except TimeoutError as exc:
                raise AssertionError(f"{what}: never answered: {exc}") from None
            self.trace.append(f"  vcm.acquire {task_id} (copy) -> {out!r:.300}")
            assert (out.state, out.error, out.message) == (first.state, first.error,
                                                            first.message), \
                f"{what}: the copy was answered {out}"
        self.assert_unchanged(before, f"copies of {sorted(refused)}")

    @rule(n=st.integers(1, 3), owners=st.lists(st.sampled_from(OWNERS), min_size=3,
                                                max_size=3),
          repeat=st.booleans(), dup=st.integers(0, 4), bad=st.one_of(st.none(), bad_text))
    @recorded
    def acquire_batch(self, n: int, owners: list[str], repeat: bool, dup: int,
                      bad: Bad | None) -> None:
        fresh = not (repeat and self.last_batch is not None)
        if not fresh:
            reqs, bad = self.last_batch or [], None
        else:
            self.batches += 1
            reqs = [{"vcpus": 1 + i, "memory": 2, "owner": owners[i],
                     "request-id": f"batch{self.batches}-{i}"} for i in range(n)]
            if dup == 0 and n > 1:  # the same (owner, request-id) twice
                reqs[1].update(owner=reqs[0]["owner"], **{"request-id": reqs[0]["request-id"]})
            if bad is not None:
                reqs[-1]["owner"] = bad.value
        keys = [(x["owner"], x["request-id"]) for x in reqs]
        before = self.snapshot()
        out = self.call("vcm.acquire_batch", requests=reqs)
        what = f"acquire_batch {reqs!r}"
        if bad is not None:
            assert out.error == "InvalidRequest" and names_field(out, {"owner", "request-id"}), \
                f"{what}: must be refused naming owner, got {out}"
            self.assert_unchanged(before, what)
            return
        if len(set(keys)) < len(keys):
            assert out.error == "InvalidRequest" and names_field(out, {"request-id"}), \
                f"{what}: one (owner, request-id) twice in a batch, got {out}"
            self.assert_unchanged(before, what)
            return
        if all(k in self.keys for k in keys):
            if out.ok:
                for k, leases in zip(keys, out.result, strict=True):
                    self.expect_repeat(Outcome("SUCCESS", leases), k, what)
            else:
                self.expect_repeat(out, next(k for k in keys if any(
                    i not in self.live for i in self.keys[k].ids)), what)
                self.assert_unchanged(before, what)
            return
        assert not any(k in self.keys for k in keys), "fresh batches use fresh request-ids"
        if out.ok:
            assert len(out.result) == len(reqs), f"{what}: {out}"
            for k, leases in zip(keys, out.result, strict=True):
                assert len(leases) == 1, f"{what}: {leases}"
                self.take(leases, k, what)
            self.last_batch = reqs
        else:
            assert out.error == "NoCapacity", f"{what}: {out}"
            self.assert_unchanged(before, what)

    @rule(data=st.data(), how=st.sampled_from(["owner", "none", "wrong", "bad", "gone"]))
    @recorded
    def release_by_id(self, data: st.DataObject, how: str) -> None:
        ids = choose(data, list(self.live), n=data.draw(st.integers(1, 2)))
        holders = {self.live[i].owner for i in ids}
        owner: Any = None
        if how == "owner":
            owner = next(iter(holders), None)
        elif how == "wrong":
            owner = choose(data, [*OWNERS, "anonymous", "mallory"],
                           avoid=frozenset(holders))[0]
        elif how == "bad":
            owner = data.draw(bad_text).value
        elif how == "gone":
            gone = choose(data, list(self.gone))
            if gone:
                ids, holders = gone, set()
        if not ids:
            return  # nothing live: how many leases live at a step is the workers' timing
        before = self.snapshot()
        out = self.call("vcm.release", lease_ids=ids, owner=owner)
        what = f"release {ids} as {owner!r}"
        if how == "bad":
            assert out.error == "InvalidRequest" and names_field(out, {"owner"}), \
                f"{what}: must be refused naming owner, got {out}"
            self.assert_unchanged(before, what)
            return
        if not holders:  # released before: idempotent
            assert out.ok and out.result == ids, f"{what}: {out}"
            self.assert_unchanged(before, what)
            return
        if owner is not None and len(holders) > 1 or owner not in (None, *holders):
            assert out.error == "NotOwner", f"{what}: held by {holders}, got {out}"
            self.assert_unchanged(before, what)
            return
        assert out.ok and out.result == ids, f"{what}: {out}"
        self.drop(ids)

    @rule(owner=st.sampled_from(OWNERS))
    @recorded
    def release_by_owner(self, owner: str) -> None:
        self.poll_waiters()
        mine = {i for i, x in self.live.items() if x.owner == owner}
        out = self.call("vcm.release", owner=owner)
        what = f"release by owner {owner}"
        assert out.ok, f"{what}: {out}"
        extra = set(out.result) - mine  # a waiter of this owner granted meanwhile?
        deadline = time.time() + ANSWER_TIMEOUT
        while extra - set(self.live) and self.waiters and time.time() < deadline:
            time.sleep(0.05)  # its answer is on its way: take it in
            self.poll_waiters()
        now_mine = {i for i, x in self.live.items() if x.owner == owner}
        assert mine <= set(out.result) <= now_mine, \
            f"{what}: released {sorted(out.result)}, held {sorted(mine)} " \
            f"(and {sorted(now_mine - mine)} granted meanwhile)"
        self.drop(list(out.result))

    @rule(lease_id=st.sampled_from(["nope", "0" * 20]) | any_unicode)
    @recorded
    def release_unknown(self, lease_id: str) -> None:
        before = self.snapshot()
        out = self.call("vcm.release", lease_ids=[lease_id], owner="alice")
        what = f"release of unknown lease {lease_id!r}"
        if is_bad_text(lease_id, 253) or not lease_id:
            assert out.error == "InvalidRequest" and names_field(out, {"lease_ids"}), \
                f"{what}: must be refused naming lease_ids, got {out}"
        else:
            assert out.error == "LeaseNotFound", f"{what}: {out}"
        self.assert_unchanged(before, what)

    @rule(data=st.data(), how=st.sampled_from(["owner", "wrong", "bad-ttl", "bad-owner"]),
          ttl=st.sampled_from([None, 2, 3600, "1h"]))
    @recorded
    def renew(self, data: st.DataObject, how: str, ttl: Any) -> None:
        picked = choose(data, list(self.live))
        bad_owner = data.draw(bad_text).value if how == "bad-owner" else None
        if how == "bad-ttl":
            ttl = data.draw(st.sampled_from([-1, "eventually", True, 10**9]))
        if not picked:
            return  # nothing live: how many leases live at a step is the workers' timing
        lease_id = picked[0]
        lease = self.live[lease_id]
        owner: Any = lease.owner
        if how == "wrong":
            owner = "mallory"
        elif how == "bad-owner":
            owner = bad_owner
        before = self.snapshot()
        sent = time.time()
        out = self.call("vcm.renew", lease_id=lease_id, owner=owner, ttl=ttl)
        what = f"renew {lease_id} as {owner!r} ttl {ttl!r}"
        if how in ("bad-ttl", "bad-owner"):
            want = {"ttl"} if how == "bad-ttl" else {"owner"}
            assert out.error == "InvalidRequest" and names_field(out, want), \
                f"{what}: must be refused naming {want}, got {out}"
            self.assert_unchanged(before, what)
            return
        if how == "wrong":
            assert out.error == "NotOwner", f"{what}: {out}"
            self.assert_unchanged(before, what)
            return
        assert out.ok and out.result["metadata"]["name"] == lease_id, f"{what}: {out}"
        new = parse_time(out.result["status"]["expires-at"])
        assert new >= lease.expires, f"{what}: expires-at went back from {lease.expires}"
        seconds = 86400 if ttl is None else (3600 if ttl == "1h" else ttl)
        assert new >= int(sent) + seconds - 1, f"{what}: expires-at {new} < sent + ttl"
        lease.expires = new

    @rule()
    @recorded
    def reap(self) -> None:
        self.poll_waiters()
        sent = time.time()
        out = self.call("vcm.reap_expired")
        done = time.time()
        assert out.ok, f"reap: {out}"
        for i in out.result:
            assert i in self.live, f"reap returned {i}, not a live lease (or reaped twice)"
            assert self.live[i].expires <= done, f"reaped {i} before its expires-at"
        due = {i for i, x in self.live.items() if x.expires + 1 <= sent}
        assert due <= set(out.result), f"reap left expired leases: {sorted(due - set(out.result))}"
        self.drop(out.result)

    @rule()
    @recorded
    def sleep_a_little(self) -> None:
        """Let short leases expire and short waits run out."""
        time.sleep(1.0)

    @rule(data=st.data(), kind=st.sampled_from(["waiter", "unknown", "bad"]))
    @recorded
    def cancel_wait(self, data: st.DataObject, kind: str) -> None:
        originals = [t for t, w in self.waiters.items() if w.twin_of is None]
        picked = choose(data, originals) if kind == "waiter" else []
        if picked:
            task_id = picked[0]
        elif kind == "waiter":
            task_id = "no-such-task"  # nothing waits (any more): the workers' timing
        elif kind == "bad":
            task_id = data.draw(bad_text).value
        else:
            task_id = data.draw(st.sampled_from(["no-such-task", "0" * 36]))
        if kind == "bad":
            out = self.call("vcm.cancel_wait", task_id=task_id)
            assert out.error == "InvalidRequest" and names_field(out, {"task_id"}), \
                f"cancel_wait {task_id!r}: must be refused naming task_id, got {out}"
            return
        self.cancel(task_id)

    def cancel(self, task_id: str) -> None:
        """vcm.cancel_wait: True answers the waiting task with WaitTimeout at once; False
        only when it had been answered already (or never waited)."""
        w = self.waiters.get(task_id)
        sent = time.time()
        out = self.call("vcm.cancel_wait", task_id=task_id)
        in_line = {record["task"] for _, record in self.ledger().waiters()}  # as it left it
        what = f"cancel_wait {task_id!r}"
        assert out.ok, f"{what}: {out}"
        if w is None:
            assert out.result is False, f"{what}: no such waiting task, answered {out}"
            return
        try:  # a cancelled task is answered at once, not when its wait runs out
            final = settle(w.result, CANCEL_ANSWER if out.result else ANSWER_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"{what} answered {out.result} but the task is not "
                                 f"answered (its wait runs out in {w.deadline - sent:.1f}s)"
                                 ) from None
        if out.result is True:
            w.cancelled = True
            assert final.error == "WaitTimeout", f"{what}: cancelled task answered {final}"
        elif sent < w.deadline - 1.0:  # it was not about to time out: it had been granted
            # before the cancel ran: out of the line when the cancel answered, leased no later
            # than that answer (leased-at is rounded down to the second; the grant's own answer
            # may come after the cancel's: it is held until the mirror covers it)
            assert task_id not in in_line, \
                f"{what}: answered False while the task still waited in line: {final}"
            assert not final.ok or out.done_at is not None and max(
                parse_time(x["status"]["leased-at"]) for x in final.result
            ) <= out.done_at.timestamp(), \
                f"{what}: answered False (at {out.done_at}) before the task was granted: {final}"
        self.absorb(w, final)

    @rule(owner=st.sampled_from((*OWNERS, None)) | bad_text.map(lambda b: b.value))
    @recorded
    def query(self, owner: str | None) -> None:
        out = self.call("vcm.list_leases", owner=owner)
        if owner is not None and is_bad_text(owner, 253):
            assert out.error == "InvalidRequest" and names_field(out, {"owner"}), \
                f"list_leases as {owner!r}: must be refused naming owner, got {out}"
            return
        assert out.ok, f"list_leases: {out}"
        listed = set(lease_ids(out.result))
        self.poll_waiters()
        mine = {i for i, x in self.live.items() if owner is None or x.owner == owner}
        waiting = {w.key for w in self.waiters.values()}
        extra = {i for i in listed - mine if self._key_of(
            next(x for x in out.result if x["metadata"]["name"] == i)) not in waiting}
        assert not extra, f"list_leases({owner!r}) shows leases nobody holds: {extra}"
        missing = mine - listed
        assert not missing, f"list_leases({owner!r}) misses live leases {missing}"

    @precondition(lambda self: self.disruptions < self.max_disruptions)
    @rule(sig=st.sampled_from([signal.SIGTERM, signal.SIGKILL]))
    @recorded
    def restart_placement_worker(self, sig: int) -> None:
        self.disruptions += 1
        self.stack.restart_placement(sig)

    @precondition(lambda self: self.disruptions < self.max_disruptions)
    @rule(d=requests(bad=False), delay=st.sampled_from([0.0, 0.002, 0.01, 0.03]),
          sig=st.sampled_from([signal.SIGTERM, signal.SIGKILL]))
    @recorded
    def crash_while_acquiring(self, d: Drawn, delay: float, sig: int) -> None:
        """The placement worker stops while an acquire is in flight. Whether it had committed
        or not, the task is answered (a killed worker's task is delivered again, to the next
        worker), and the answer agrees with the ledger: the same rules as any acquire."""
        self.disruptions += 1
        self.poll_waiters()
        before = self.snapshot()
        sent = time.time()
        r = self.send("vcm.acquire", request=d.body)
        time.sleep(delay)
        self.stack.restart_placement(sig)
        try:
            settle(r, RESEND_AFTER, accept=("SUCCESS", "FAILURE", "STARTED"))
        except TimeoutError:  # as vcm does: a task no worker took is sent again, same id
            self.trace.append(f"  vcm.acquire {r.id} still PENDING: sent again")
            self.app.send_task("vcm.acquire", kwargs={"request": d.body}, queue="placement",
                               task_id=r.id)
        try:
            out = settle(r, ANSWER_TIMEOUT + REDELIVERY)
        except TimeoutError as exc:
            raise AssertionError(f"acquire {d.body!r}, worker stopped ({sig!r}) after "
                                 f"{delay}s: never answered: {exc} {_where(self.stack)}"
                                 ) from None
        self.trace.append(f"  vcm.acquire {r.id} -> {out!r:.300}")
        self.judge_acquire(d, r, out, before, sent,
                           f"acquire {d.body!r}, worker stopped ({sig!r}) after {delay}s")

    @precondition(lambda self: self.disruptions < self.max_disruptions)
    @rule()
    @recorded
    def wipe_redis(self) -> None:
        """Redis restarts empty: answers still pending are lost with it (the result backend
        is that Redis), as are the records of released leases; answered live leases are not."""
        self.disruptions += 1
        self.poll_waiters()
        waiting = {w.key for w in self.waiters.values()}
        self.stack.wipe_redis()
        self.after_wipe(waiting)

    def after_wipe(self, waiting: set[tuple[str, str]]) -> None:
        """The model once Redis was wiped and rebuilt, `waiting` the keys that were in line."""
        self.waiters.clear()
        # a waiter granted after our last look: its answer went with Redis (the result
        # backend), its leases did not (they were mirrored before the answer): held until
        # released or reaped, and its request-id gives them again
        for i, x in sorted(audit(self.ledger())["leases"].items()):
            key = self._key_of(x)
            if i not in self.live and key in waiting:
                self.live[i] = LeaseModel(key[0], key, parse_time(x["status"]["expires-at"]))
                known = self.keys.get(key)
                self.keys[key] = KeyModel((*(known.ids if known else ()), i))
        self.forgotten |= self.gone.keys()
        self.gone.clear()
        self.last_batch = None
        for key, known in list(self.keys.items()):
            alive = [i for i in known.ids if i in self.live]
            if not alive:
                del self.keys[key]
            elif len(alive) < len(known.ids):
                known.uncertain = True

    # -- a mirrored record corrupted, then Redis wiped and restored ----------------------
    # The restore sets the record aside. What can be read of it stays held: capacity is never
    # over-allocated and its port groups are never granted (checked after every step against
    # the model, not the ledger's own counters). A record of which nothing can be read stops
    # all placement until the operator drops it (a release by its id, no owner).
    aside: dict[str, dict[str, Any]]  # lease id -> what it held (pool, vcpus, memory, nets)

    @precondition(lambda self: self.disruptions < self.max_disruptions)
    @rule(data=st.data(), how=st.sampled_from(["owner", "expires-at", "spec", "whole"]))
    @recorded
    def corrupt_a_mirrored_record_then_wipe_redis(self, data: st.DataObject, how: str) -> None:
        picked = choose(data, list(self.live))
        if not picked:
            return  # nothing live: how many leases live at a step is the workers' timing
        self.disruptions += 1
        victim = picked[0]
        self.poll_waiters()
        waiting = {w.key for w in self.waiters.values()}
        held: dict[str, Any] = {}

        def corrupt(snapshot: dict[str, Any]) -> None:
            for i, lease in enumerate(snapshot["leases"]):
                if lease["metadata"]["name"] != victim:
                    continue
                st_, sp = lease["status"], lease["spec"]
                held.update(pool=st_["pool"], vcpus=sp["vcpus"], memory=sp["memory"],
                            storage=sp["storage"], nets={f"{st_['vcenter']}|{n['port-group']}"
                                                         for n in st_["networks"]})
                bad = json.loads(json.dumps(lease))
                if how == "owner":
                    bad["status"]["owner"] = None
                elif how == "expires-at":
                    bad["status"]["expires-at"] = "some day"
                elif how == "spec":
                    bad["spec"] = "?"
                else:
                    bad = "not a lease"
                snapshot["leases"][i] = bad
            assert held, f"answered lease {victim} is not in the mirror"

        self.stack.rebuild_from_edited_mirror(corrupt)
        self.trace.append(f"  {victim} corrupted ({how}), Redis wiped, worker restarted")
        self.after_wipe(waiting)
        key = self.live.pop(victim).key
        self.forgotten.add(victim)  # never answered again; a repeat of its request-id is
        known = self.keys.get(key)  # LeaseNotFound naming it, or anew if that cannot be read
        if known is not None and how in ("owner", "whole"):
            known.ids = tuple(i for i in known.ids if i != victim)
            if not known.ids:
                del self.keys[key]
                self.aside_keys[key] = victim
        if how in ("spec", "whole"):  # nothing says what it holds: nothing is placed
            self.unblock(victim, held)
        else:
            self.aside[victim] = held
            self.probe_set_aside(victim, held)

    def unblock(self, victim: str, held: dict[str, Any]) -> None:
        """While the record is set aside with nothing readable, every acquire is refused,
        naming it; the operator's release by its id (no owner) lets placement go on."""
        self.aside[victim] = held  # checked while it is set aside
        blocked = sorted(audit(self.ledger())["blocked"])
        assert len(blocked) == 1, f"set aside as unreadable: {blocked}"
        out = self.call("vcm.acquire", request={"vcpus": 1, "memory": 1, "networks": 0})
        assert out.error == "NoCapacity" and blocked[0] in out.message, \
            f"acquire while {blocked[0]} is set aside unreadable: {out}"
        self.set_aside_keep_their_holdings()
        out = self.call("vcm.release", lease_ids=blocked)
        assert out.ok and out.result == blocked, f"drop of {blocked}: {out}"
        del self.aside[victim]

    def probe_set_aside(self, victim: str, held: dict[str, Any]) -> None:
        """Its pool refuses one vCPU more than the model leaves free, and hands out every
        other free port group but never one of the record's."""
        pool = self.pools[held["pool"]]
        used = sum(x["spec"]["vcpus"] for x in audit(self.ledger())["leases"].values()
                   if x["status"]["pool"] == pool.name) + held["vcpus"]
        over = pool.vcpu_capacity - used + 1
        if over <= pool.vcpu_capacity:
            out = self.call("vcm.acquire", request={
                "vcpus": over, "memory": 1, "networks": 0, "required-pool": pool.name})
            assert out.error == "NoCapacity", \
                f"{over} vCPUs on {pool.name} beside set-aside {victim} ({held}): {out}"
        probes: list[str] = []
        for _ in range(len(pool.networks) + 1):
            body = {"vcpus": 0, "memory": 0, "networks": 1, "required-pool": pool.name}
            before = set(self.live)
            self._acquire(Drawn(body), f"a port group of {pool.name} beside {victim}")
            if set(self.live) == before:
                break  # refused: the pool's port groups are all taken
            probes += sorted(set(self.live) - before)
        self.set_aside_keep_their_holdings()  # none of them took one of the record's
        if probes:
            out = self.call("vcm.release", lease_ids=probes)
            assert out.ok and sorted(out.result) == sorted(probes), f"release {probes}: {out}"
            self.drop(probes)

    @invariant()
    def set_aside_keep_their_holdings(self) -> None:
        """Leases plus what set-aside records hold fit every pool; no lease has a port group
        a set-aside record holds."""
        if not self.aside:
            return
        used: dict[str, list[int]] = {}
        nets: dict[str, str] = {}
        for lease_id, x in audit(self.ledger())["leases"].items():
            u = used.setdefault(x["status"]["pool"], [0, 0, 0])
            for i, dim in enumerate(("vcpus", "memory", "storage")):
                u[i] += x["spec"][dim]
            for n in x["status"]["networks"]:
                nets[f"{x['status']['vcenter']}|{n['port-group']}"] = lease_id
        for victim, held in self.aside.items():
            u = used.setdefault(held["pool"], [0, 0, 0])
            for i, dim in enumerate(("vcpus", "memory", "storage")):
                u[i] += held[dim]
            both = {k: nets[k] for k in held["nets"] if k in nets}
            assert not both, f"port groups of set-aside {victim} double-booked: {both}"
        for name, (vcpus, memory, storage) in used.items():
            pool = self.pools[name]
            assert vcpus <= pool.vcpu_capacity and memory <= pool.memory \
                and storage <= pool.storage, \
                f"{name} over-allocated with set-aside {sorted(self.aside)}: {used[name]}"

    # -- memory pressure (Redis at its maxmemory) ----------------------------------------
    @precondition(lambda self: getattr(self, "pressures", 0) < 1)  # once an example: slow
    @rule()
    @recorded
    def fill_redis_then_free_it(self) -> None:
        """Redis, evicting nothing (noeviction, as deploy/redis.yaml runs it), is filled to its
        maxmemory by a broker backlog nobody consumes, then freed: nothing granted or
        remembered is lost, nothing is half-written, a task sent while Redis is full is
        refused before it is queued, and the placement worker serves again afterwards (the
        invariants after this step check the ledger against what clients were told)."""
        from tests.support.pressure import fill, memory, records
        from workers.adapters.redis_memory import refused_for_memory

        self.pressures = getattr(self, "pressures", 0) + 1
        self.poll_waiters()
        before = self.snapshot()
        kept = records(self.client)
        saved = self.client.config_get("maxmemory*")
        self.client.config_set("maxmemory-policy", "noeviction")
        self.client.config_set("maxmemory", memory(self.client).used + 4 * 2**20)
        try:
            fill(self.app, self.client, queue="vcm-stateful-backlog")
            try:
                self.send("vcm.acquire", request={"vcpus": 1, "memory": 1})
            except Exception as exc:  # noqa: BLE001 - what a job step's send_task raises
                assert refused_for_memory(exc), f"send while Redis is full: {exc!r}"
            else:
                raise AssertionError("a task was queued while Redis was full")
            check_invariants(self.ledger(), self.pools)
            self.assert_unchanged(before, "a full Redis")
            lost = kept - records(self.client)
            assert not lost, f"records lost while Redis was full: {sorted(lost)[:5]}"
        finally:
            self.client.delete("vcm-stateful-backlog")
            self.client.config_set("maxmemory", saved.get("maxmemory", "0"))
            self.client.config_set("maxmemory-policy",
                                   saved.get("maxmemory-policy", "noeviction"))
        assert not memory(self.client).full
        out = self.call("vcm.cancel_wait", task_id="no-such-wait")
        assert out.ok and out.result is False, f"the placement worker after Redis was freed: {out}"

    def record_failure(self, exc: BaseException) -> None:
        """Append this example's steps and its failure to the failures log, and name the log
        in the failure."""
        path = Path(os.environ.get("VCM_CHAOS_LOG") or self.stack.logs / "failures.log")
        failure = "".join(traceback.format_exception(exc))
        with path.open("a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"== example failed at {time.time():.3f}\n" + "\n".join(self.trace)
                    + f"\n-- failure:\n{failure}\n")
        exc.add_note(f"the steps of this example as they ran: {path}")

    def teardown(self) -> None:
        """Every waiting task is answered once its wait ran out."""
        failing = sys.exc_info()[1]  # teardown runs in the finally of a failing example
        if not isinstance(failing, Exception) or isinstance(failing, HypothesisException):
            failing = None  # hypothesis's own control flow (StopTest is a BaseException)
        if failing is not None:
            self.record_failure(failing)
        try:
            for tid in [t for t, w in self.waiters.items() if w.twin_of is None]:
                w = self.waiters.get(tid)
                if w is not None and w.deadline > time.time() + 3 and failing is None:
                    self.cancel(tid)
            while self.waiters:
                deadline = max(w.deadline for w in self.waiters.values()) + WAIT_SLACK
                self.poll_waiters()
                if self.waiters and time.time() > deadline:
                    raise AssertionError(f"waiting tasks never answered: {sorted(self.waiters)}")
                time.sleep(0.1)
        except AssertionError as exc:
            if failing is None:
                self.record_failure(exc)
            raise
        finally:
            self.client.close()


# -- the tests ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chaos_stack() -> Iterator[ChaosStack]:
    stack = ChaosStack(new_tmp())
    yield stack
    stack.stop()


def _run(stack: ChaosStack, examples: int, steps: int, disruptions: int) -> Counter[str]:
    """Run the search; the steps that ran, by event name. Outside `make chaos` with SEED and
    no example database: the same examples every run."""
    machine = type("Machine", (TaskApiMachine,), {"stack": stack,
                                                  "max_disruptions": disruptions,
                                                  "fired": Counter()})
    fixed = {} if CHAOS else {"database": None}

    # hypothesis is given a function that makes the machine, not the class: it reads the
    # source of what it is given (its database key), and Python 3.11 finds a class's source
    # by parsing its whole module. 3.11 keeps the AST builder's recursion count per
    # interpreter, so a parse that runs while another thread parses (3.11's tracebacks parse
    # their source lines to place the carets; the stack's threads log tracebacks when Redis
    # goes) can fail with SystemError "AST constructor recursion depth mismatch". A function's
    # source is found from its first line; the parse is then of its two lines, not the
    # module's 1,300, which leaves that race a far narrower window.
    def new_machine() -> TaskApiMachine:
        return machine()

    run_state_machine_as_test(new_machine if CHAOS else seed(SEED)(new_machine), settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink], **fixed))
    print("steps run:", dict(sorted(machine.fired.items())))
    return machine.fired


@pytest.mark.skipif(CHAOS, reason="make chaos runs the long search instead")
def test_task_api_state_machine(chaos_stack: ChaosStack) -> None:
    fired = _run(chaos_stack, examples=15, steps=20, disruptions=1)
    disruptive = {k: n for k, n in fired.items() if k.startswith(DISRUPTIVE)}
    assert disruptive, f"no step crashed, restarted or wiped anything; the steps run: {fired}"


@pytest.mark.skipif(not CHAOS, reason="long search: make chaos")
@pytest.mark.timeout(int(os.environ.get("VCM_CHAOS_TIMEOUT", "14400")))  # not the 300 s default
def test_task_api_state_machine_long(chaos_stack: ChaosStack) -> None:
    _run(chaos_stack, examples=int(os.environ.get("VCM_CHAOS_EXAMPLES", "200")),
         steps=int(os.environ.get("VCM_CHAOS_STEPS", "50")),
         disruptions=int(os.environ.get("VCM_CHAOS_DISRUPTIONS", "4")))
