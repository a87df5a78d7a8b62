"""Section timers inside a placement worker: `python -m bench.lib.worker_profile OUT -- ARGS`
runs `celery ARGS` with every section below timed (calls, wall and thread CPU, by thread) and,
unless VCM_BENCH_CPROFILE=0, a cProfile of the main thread; at exit it writes the sections to
OUT (JSON) and the profile to OUT.prof (bench/bench_worker_profile.py starts its placement
workers that way).

A section names the method where the work is done now: timing a name that does not exist is an
error (the worker does not start), so a method that moves or is renamed cannot silently drop out
of the profile.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODULE = "bench.lib.worker_profile"
Record = Callable[[str, float, float], None]


def timed(owner: Any, name: str, label: str, record: Record) -> None:
    """Replace `owner.name` (a class's method, a module's function) with a wrapper that records
    each call's wall and thread CPU under `label`. Raises when `owner` has no `name`."""
    fn = getattr(owner, name, None)
    if fn is None:
        where = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))
        raise AttributeError(f"{where}.{name} does not exist: section {label!r} would be "
                             "missing from the profile; time it where it lives now")

    @functools.wraps(fn)
    def wrapper(*a, **k):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*a, **k)
        finally:
            record(label, time.perf_counter() - t0, time.thread_time() - c0)

    setattr(owner, name, wrapper)


def install_sections(record: Record) -> None:
    """Time the placement path's sections: Redis round trips, the service and its parts, the
    ledger, the mirror and journal, the replies and the result backend."""
    import celery.backends.base as backend_base
    import celery.backends.redis as backend_redis
    import redis

    import workers.service.placing as placing_mod
    from workers.adapters import replies
    from workers.adapters.ledger import Ledger
    from workers.adapters.mirror import file as mirror_file
    from workers.adapters.mirror.configmap import ConfigMapMirror
    from workers.adapters.mirror.file import FileMirror
    from workers.publisher.held_replies import HeldReplies
    from workers.publisher.thread import Publisher
    from workers.service.capacity import Capacity
    from workers.service.placing import Placing
    from workers.service.recovery import Recovery
    from workers.service.releasing import Releasing
    from workers.service.usage_cache import UsageCache
    from workers.service.waiting import WaitingLine

    def each(owner: Any, label: str, names: tuple[str, ...]) -> None:
        for name in names:
            timed(owner, name, f"{label}.{name}", record)

    timed(redis.Redis, "execute_command", "redis round trip (command)", record)
    timed(redis.client.Pipeline, "execute", "redis round trip (pipeline)", record)
    # the service holds the lock and hands each request to its part
    each(Capacity, "Capacity", ("acquire", "release", "fleet", "ensure_ready"))
    each(Placing, "Placing", ("parse", "place", "existing"))
    each(WaitingLine, "WaitingLine", ("acquire",))
    timed(placing_mod, "place_batch", "place_batch() (the decision)", record)
    each(Releasing, "Releasing", ("release",))
    each(UsageCache, "UsageCache", ("fleet", "placed", "released"))
    each(Recovery, "Recovery", ("record", "record_existing"))
    each(Ledger, "Ledger", ("usage", "commit", "release", "granted_at", "is_waiting",
                            "waiting_count", "waiters", "defer", "outbox", "outbox_done",
                            "snapshot", "seq", "is_ready", "count", "wait_kick", "get_many",
                            "swap", "active_at"))
    # the mirror: the journal append before an answer, snapshots from the publisher
    timed(FileMirror, "append", "FileMirror.append (journal)", record)
    timed(mirror_file.os, "fdatasync", "os.fdatasync", record)  # the journal's (mirror/file.py)
    each(FileMirror, "FileMirror", ("save",))
    each(ConfigMapMirror, "ConfigMapMirror", ("save",))
    each(Publisher, "Publisher", ("step", "write_mirror", "release_replies"))
    each(HeldReplies, "HeldReplies", ("release",))
    timed(replies.CeleryReplies, "deliver", "CeleryReplies.deliver", record)
    # the result backend: every store, split by state, and its parts
    store = backend_base.Backend.store_result

    def store_by_state(self, task_id, result, state, *a, **k):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return store(self, task_id, result, state, *a, **k)
        finally:
            record(f"  store_result {state}", time.perf_counter() - t0, time.thread_time() - c0)

    backend_base.Backend.store_result = store_by_state
    timed(backend_base.Backend, "store_result", "backend.store_result", record)
    timed(backend_redis.RedisBackend, "get", "  backend GET (current meta)", record)
    timed(backend_redis.RedisBackend, "_set_with_state", "  backend SET+PUBLISH", record)
    timed(backend_base.Backend, "_get_result_meta", "  backend result meta", record)
    timed(backend_base.Backend, "encode", "  backend encode", record)


def run(out: str, argv: list[str]) -> None:
    """Run `celery <argv>` with the sections timed and a cProfile of the main thread; write both
    to `out` (.json) and `out`.prof at exit."""
    import atexit
    import cProfile
    import gc

    from celery import signals

    stats: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    lock = threading.Lock()

    def record(label: str, wall: float, cpu: float) -> None:
        key = (threading.current_thread().name, label)
        with lock:
            s = stats[key]
            s[0] += 1
            s[1] += wall
            s[2] += cpu

    install_sections(record)
    starts: dict[str, tuple[float, float]] = {}

    @signals.task_prerun.connect(weak=False)
    def _pre(task_id=None, task=None, **_):
        starts[task_id] = (time.perf_counter(), time.thread_time())

    @signals.task_postrun.connect(weak=False)
    def _post(task_id=None, task=None, **_):
        t0 = starts.pop(task_id, None)
        if t0 is not None:
            record(f"task {task.name} (prerun..postrun)", time.perf_counter() - t0[0],
                   time.thread_time() - t0[1])

    gc_start: list[float] = [0.0, 0.0]

    def gc_timer(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start[:] = [time.perf_counter(), time.thread_time()]
        else:
            record(f"gc generation {info['generation']}", time.perf_counter() - gc_start[0],
                   time.thread_time() - gc_start[1])

    gc.callbacks.append(gc_timer)
    prof = cProfile.Profile() if os.environ.get("VCM_BENCH_CPROFILE", "1") != "0" else None

    def dump() -> None:
        if prof is not None:
            prof.disable()
            prof.dump_stats(out + ".prof")
        rows = [{"thread": t, "section": s, "calls": v[0], "seconds": v[1], "cpu": v[2]}
                for (t, s), v in stats.items()]
        Path(out).write_text(json.dumps(rows))

    atexit.register(dump)
    sys.argv = ["celery", *argv]
    from celery.__main__ import main as celery_main

    if prof is not None:
        prof.enable()
    celery_main()


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        raise SystemExit(f"usage: python -m {MODULE} OUT -- CELERY-ARGS")
    run(sys.argv[1], sys.argv[3:])
