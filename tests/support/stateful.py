"""Support for the property-based test of the public task API (tests/workers/test_stateful.py): a
stack started with the documented placement-worker command, hypothesis strategies for
requests with good and bad values, and small helpers to read task outcomes."""

from __future__ import annotations

import inspect
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from celery import Celery
from celery.result import AsyncResult
from hypothesis import strategies as st

from tests.support.procs import RedisServer, Worker, env_for, wait_for
from workers.core.text import BIDI_CONTROLS

# The documented start command of the one placement consumer, exactly as a user types it.
PLACEMENT_COMMAND = ["celery", "-A", "tasks", "worker", "-Q", "placement", "--concurrency", "1"]

# A small fleet, so that capacity runs out, requests wait and port groups are contended:
# 4 pools on 3 vCenters, 3 single-tenant port groups each; pool p3 also has 2 multi-tenant.
POOL_VCPUS, POOL_MEMORY, POOL_STORAGE, POOL_NETS = 16, 64, 500, 3
POOL_NAMES = ("p0", "p1", "p2", "p3")
VCENTERS = 3
NETWORK_TYPES = ("single-tenant", "multi-tenant")


def pools_yaml() -> str:
    pools = []
    for i, name in enumerate(POOL_NAMES):
        nets = [{"port-group": f"pg{i}-{j}", "vlan": 100 * i + j} for j in range(POOL_NETS)]
        if name == "p3":
            nets += [{"port-group": f"mt{i}-{j}", "vlan": 900 + j, "type": "multi-tenant"}
                     for j in range(2)]
        pools.append({"name": name, "vcenter": f"vc{i % VCENTERS}", "datacenter": "dc",
                      "cluster": f"c{i}", "datastore": f"ds{i}", "vcpus": POOL_VCPUS,
                      "memory": POOL_MEMORY, "storage": POOL_STORAGE,
                      "labels": {"zone": f"z{i % 2}"}, "networks": nets})
    return yaml.safe_dump({"pools": pools})


class PlacementWorker(Worker):
    """`celery -A tasks worker -Q placement --concurrency 1`: Celery's default pool, no -P.
    Only `-l info` is added, for the "ready." line that tells the worker is consuming."""

    def __init__(self, env: dict, log: str | None = None) -> None:
        super().__init__(env, "placement", log=log)

    def start(self, wait: bool = True) -> PlacementWorker:
        args = [sys.executable, "-m", *PLACEMENT_COMMAND, "-l", "info"]
        self.spawn(args, self.env)
        if wait:
            self.wait_ready(timeout=60)
        return self


def _worker_runs_without_pool_flag() -> bool:
    """Whether tests.support.procs.Worker takes pool=None (meaning: no -P flag)."""
    annotation = inspect.signature(Worker.__init__).parameters["pool"].annotation
    return "None" in str(annotation)


def placement_worker(env: dict, log: str | None = None) -> Worker:
    if _worker_runs_without_pool_flag():
        return Worker(env, "placement", pool=None, log=log)  # type: ignore[arg-type]
    return PlacementWorker(env, log=log)


class ChaosStack:
    """A private redis-server, the placement worker (documented command) and a queries
    worker; the placement worker can be killed and restarted, Redis wiped."""

    def __init__(self, tmp: Path, **extra: str) -> None:
        self.tmp = Path(tmp)
        self.pools_file = self.tmp / "pools.yaml"
        self.pools_file.write_text(pools_yaml())
        self.mirror = self.tmp / "ledger.json"
        self.redis = RedisServer().start()
        settings = {"VCM_MIRROR_FILE": str(self.mirror), "VCM_VISIBILITY_TIMEOUT": "10",
                    **extra}
        self.env = env_for(self.redis.url, self.pools_file, **settings)
        self.logs = self.tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        self.placement = placement_worker(self.env, log=str(self.logs / "placement.log"))
        self.queries = Worker(self.env, "queries", pool="threads", concurrency=4,
                              log=str(self.logs / "queries.log"))
        self.placement.start(wait=False)
        self.queries.start(wait=False)
        self.placement.wait_ready(timeout=60)
        self.queries.wait_ready(timeout=60)
        self.app = Celery("stateful-client", broker=self.redis.url, backend=self.redis.url)
        self.app.config_from_object("celeryconfig")
        self.app.conf.broker_url = self.app.conf.result_backend = self.redis.url
        self.restarts = 0

    def restart_placement(self, sig: int = signal.SIGTERM) -> None:
        self.placement.stop(sig)
        self.restarts += 1
        self.placement = placement_worker(
            self.env, log=str(self.logs / f"placement-{self.restarts}.log"))
        self.placement.start()

    def wipe_redis(self) -> None:
        """Redis restarted with nothing; the placement worker rebuilds from its mirror."""
        self.redis.wipe()
        self.wait_rebuilt()

    def wait_rebuilt(self) -> None:
        """Until the placement worker has rebuilt the ledger from its mirror."""
        from workers.adapters.ledger import Ledger

        client = self.redis.client()
        try:
            wait_for(lambda: Ledger(client).is_ready(), timeout=30,
                     what="the placement worker rebuilding the ledger from its mirror")
        finally:
            client.close()

    # -- a mirrored record corrupted, then Redis wiped -------------------------------------
    def rebuild_from_edited_mirror(self, edit: Callable[[dict[str, Any]], None]) -> None:
        """The placement worker stops, `edit` changes its file mirror (snapshot and journal,
        saved back as one snapshot), Redis restarts with nothing, and the worker, started
        again with the documented command, rebuilds the ledger from the edited mirror."""
        from workers.adapters.mirror.file import FileMirror

        self.placement.stop()
        snapshot = FileMirror(self.mirror).load() or {"format": 1, "seq": 0, "leases": []}
        edit(snapshot)
        FileMirror(self.mirror).save(snapshot)
        self.redis.wipe()
        self.restarts += 1
        self.placement = placement_worker(
            self.env, log=str(self.logs / f"placement-{self.restarts}.log"))
        self.placement.start()
        self.wait_rebuilt()

    def stop(self) -> None:
        """The stack is thrown away: its workers are SIGKILLed (the restarts the machine's
        rules make are the stops it looks at)."""
        for proc in (self.placement, self.queries):
            proc.kill()
        self.app.close()
        self.redis.stop()


def new_tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="vcm-stateful-"))


# -- task outcomes --------------------------------------------------------------------------

@dataclass
class Outcome:
    """What a task came to: its state, its result, or the failure's name and details."""

    state: str
    result: Any = None
    error: str = ""
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    done_at: Any = None  # the result backend's date_done (a datetime), once answered

    @property
    def ok(self) -> bool:
        return self.state == "SUCCESS"

    def field_named(self) -> str:
        return str(self.details.get("field", ""))

    def __repr__(self) -> str:
        if self.state == "SUCCESS":
            return f"Outcome(SUCCESS, {_short(self.result)})"
        return f"Outcome({self.state}, {self.error}: {self.message[:300]!r}, {self.details!r})"


def _short(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return repr(lease_ids(value))
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."


def outcome_of(r: AsyncResult) -> Outcome:
    state = r.state
    if state == "SUCCESS":
        return Outcome(state, r.result, done_at=r.date_done)
    if state == "FAILURE":
        exc = r.result
        args = getattr(exc, "args", ())
        details = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
        message = str(args[0]) if args else str(exc)
        return Outcome(state, None, type(exc).__name__, message, details, r.date_done)
    return Outcome(state, r.info if isinstance(r.info, dict) else None)


def settle(r: AsyncResult, timeout: float, accept: tuple[str, ...] = ("SUCCESS", "FAILURE")
           ) -> Outcome:
    """Poll a task until its state is one of `accept`; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        out = outcome_of(r)
        if out.state in accept:
            return out
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {r.id} still {out.state} after {timeout:g}s")
        time.sleep(0.02)


def lease_ids(leases: Any) -> list[str]:
    return [x["metadata"]["name"] for x in leases]


def parse_time(text: str) -> float:
    from workers.core.lease import parse_rfc3339

    return parse_rfc3339(text)


# -- strategies -----------------------------------------------------------------------------

OWNERS = ("alice", "bob", "carol")
REQUEST_IDS = ("r1", "r2", "r3", "job-7/step.2", "Z")

# Text that every string field must accept (no lone surrogate, no control character, no
# bidirectional control, short).
valid_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"),
                  exclude_characters=BIDI_CONTROLS), min_size=1, max_size=24)
# Text that every string field must refuse.
lone_surrogate = st.builds(lambda a, s, b: a + s + b, st.text("abc", max_size=3),
                           st.characters(categories=("Cs",)), st.text("xyz", max_size=3))
control_char = st.builds(lambda a, c, b: a + c + b, st.text("abc", max_size=3),
                         st.characters(categories=("Cc",)), st.text("xyz", max_size=3))
bidi_control = st.builds(lambda a, c, b: a + c + b, st.text("abc", max_size=3),
                         st.sampled_from(sorted(BIDI_CONTROLS)), st.text("xyz", max_size=3))
very_long = st.builds(lambda c, n: c * n, st.sampled_from("aé😀-"),
                      st.integers(10_000, 10_050))
any_unicode = st.text(st.characters(), max_size=30)  # surrogates and controls included


@dataclass(frozen=True)
class Bad:
    """A string that must be refused (and why), as drawn."""

    value: str
    why: str


bad_text = st.one_of(
    lone_surrogate.map(lambda v: Bad(v, "lone surrogate")),
    control_char.map(lambda v: Bad(v, "control character")),
    bidi_control.map(lambda v: Bad(v, "bidirectional control")),
    very_long.map(lambda v: Bad(v, "10k characters")),
)


def is_bad_text(value: str, max_len: int) -> bool:
    """A string the contract says must be refused: lone surrogates, control characters,
    bidirectional controls, or longer than the field allows."""
    import unicodedata

    return len(value) > max_len or any(
        unicodedata.category(c) in ("Cs", "Cc") or c in BIDI_CONTROLS for c in value)
