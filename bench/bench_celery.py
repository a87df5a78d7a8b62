"""(b) acquire+release round trips through the real placement worker, against a minimal Celery app.

A private redis-server; on it, the placement worker and, as the baseline, a minimal Celery app's
worker (bench/minimal_app.py: `Celery("minimal", broker=url, backend=url)`, JSON serializers and
task_acks_late, nothing else of celeryconfig: no task_track_started, no task events, no
result_extended; `celery -A bench.minimal_app worker -Q minimal -P solo -c 1`). Client threads in
this process use two client apps: ours (celeryconfig) and the minimal one.

A round trip is: send vcm.acquire, get the result, send vcm.release for what it got, get the
result. The baseline round trip sends two minimal.noop tasks the same way (as many task round
trips, same Redis). A second baseline, for reference, is two vcm.noop_placement tasks on the
placement worker itself: it pays our configuration too, so its ratio does not show it. The
three kinds are measured interleaved (minimal, acquire, own no-op, then the reverse), acquire
always next to both baselines; rates are medians, and a ratio is the median of the adjacent
acquire/baseline pairs. Target: >= 0.6 against the minimal no-op.

The placement worker is started both ways users start it: the documented command
`celery -A tasks worker -Q placement --concurrency 1` (no -P: Celery's default prefork pool,
which the worker replaces with solo itself) and `-P solo -c 1` as `vcm run` does. Both add
-n, -l info, --without-mingle, --without-gossip and -E, as `vcm run` does; the minimal worker
gets the same flags except -E. Its mirror is the product's default, the file mirror
(VCM_MIRROR_FILE): each acquire/release is appended to the mirror's journal (fdatasync'd)
before it is answered; --mirror off|both adds VCM_MIRROR_FILE=off rows.

Also printed: CPU per round trip of each worker (its whole process group), redis-server and
this process; and, with MONITOR on, the commands Redis receives per round trip of each kind,
split into client, serving worker, inside-Lua and the idle worker (first configuration only).

Options: --quick (fewer round trips), --reps N, --preload N (N active leases in the ledger
before the worker starts, to see whether the cost grows with them), --only documented|solo,
--mirror file|off|both.

Worker-side timing: VCM_BENCH_PROFILE=DIR .venv/bin/python -m bench.bench_celery starts the
workers through a shim that times sections (ledger calls, mirror save, result store, each Redis
round trip, by thread) and cProfiles the worker's main thread into DIR/worker-<kind>.json.prof.
It runs 300 1-thread noop round trips (vcm.noop_placement) on one worker and 300
acquire+release round trips on another, and prints the sections per round trip. Add
--mirror off for the mirror-off worker and --no-cprofile for section timers alone (cProfile
inflates Python-heavy sections).

--settings: what each non-default Celery setting of the placement path costs. One
redis-server; the minimal worker (database 0) and one `-P solo` placement worker per variant,
each on its own Redis database (its own queue, ledger and file mirror), all running at once:
`celery -A bench.placement_variant worker -Q placement -P solo -c 1 ...`, which is tasks.app
with VCM_BENCH_CELERY_CONF's settings applied over celeryconfig (the client app of that variant
gets the same overrides: task_send_sent_event is a client setting). Every repetition measures,
for each variant in turn (the order reversed every other time), the minimal no-op ×2 and the
variant's acquire+release adjacent, at 1 and 8 threads; a variant's ratio is the median of its
adjacent pairs, and "× as configured" is that ratio over the as-configured one. Also printed:
the placement worker's CPU and the Redis commands (all clients, INFO commandstats) per
round trip, 1 thread. --variant 'label={json}' adds a variant (repeatable), --variants-only
measures only those given (plus "as configured").
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import (
    BELOW,
    fleet_spec,
    fmt_ms,
    fmt_rate,
    median,
    percentile,
    table,
    verdict,
    write_pools,
)

TARGET = 0.6  # against the minimal app's no-op
REQUEST = {"vcpus": 2, "memory": 4, "storage": 10}
TIMEOUT = 60.0


# -- client side -------------------------------------------------------------------------------

def client_app(url: str):
    """A client of the placement worker, configured as the product's clients (celeryconfig)."""
    from celery import Celery

    app = Celery("vcm-bench", broker=url, backend=url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = url
    return app


@dataclass
class Clients:
    """The two client apps in this process: ours (celeryconfig) and the minimal one."""

    ours: Any
    minimal: Any = None

    @classmethod
    def connect(cls, url: str, minimal: bool = True) -> Clients:
        from bench.minimal_app import make_app

        return cls(client_app(url), make_app(url) if minimal else None)

    def close(self) -> None:
        self.ours.close()
        if self.minimal is not None:
            self.minimal.close()


def minimal_rt(apps: Clients, tid: int) -> None:
    """Two no-op tasks on the minimal app: as many task round trips as acquire+release."""
    from bench.minimal_app import NOOP, QUEUE

    apps.minimal.send_task(NOOP, queue=QUEUE).get(timeout=TIMEOUT)
    apps.minimal.send_task(NOOP, queue=QUEUE).get(timeout=TIMEOUT)


def noop_rt(apps: Clients, tid: int) -> None:
    apps.ours.send_task("vcm.noop_placement", queue="placement").get(timeout=TIMEOUT)
    apps.ours.send_task("vcm.noop_placement", queue="placement").get(timeout=TIMEOUT)


def acquire_rt(apps: Clients, tid: int) -> None:
    owner = f"bench-{tid}"
    leases = apps.ours.send_task("vcm.acquire", kwargs={"request": dict(REQUEST, owner=owner)},
                                 queue="placement").get(timeout=TIMEOUT)
    ids = [x["metadata"]["name"] for x in leases]
    got = apps.ours.send_task("vcm.release", kwargs={"lease_ids": ids, "owner": owner},
                              queue="placement").get(timeout=TIMEOUT)
    if got != ids:
        raise RuntimeError(f"release returned {got!r}, expected {ids!r}")


# kind -> (round trip, which worker serves it)
KINDS: dict[str, tuple[Callable[[Clients, int], None], str]] = {
    "minimal": (minimal_rt, "minimal"),
    "acquire": (acquire_rt, "placement"),
    "noop": (noop_rt, "placement"),
}


def measure(apps: Clients, kind: str, threads: int, total: int) -> tuple[float, list[float]]:
    """`total` round trips split over `threads` threads; returns wall seconds and latencies."""
    fn = KINDS[kind][0]
    per = total // threads
    lat: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def run(tid: int) -> None:
        mine = []
        try:
            barrier.wait()
            for _ in range(per):
                t0 = time.perf_counter()
                fn(apps, tid)
                mine.append(time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            errors.append(exc)
        with lock:
            lat.extend(mine)

    pool = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{kind} with {threads} thread(s) failed: {errors[0]!r}") from errors[0]
    return wall, lat


class CpuMeter:
    """CPU seconds used so far by each worker (all processes of its process group: a worker
    that forked a pool would be counted whole), the redis-server and this process."""

    def __init__(self, workers: dict[str, int], redis_client) -> None:
        self.groups = workers  # name -> process group id (the worker's pid: it leads its group)
        self.r = redis_client
        self.tick = os.sysconf("SC_CLK_TCK")

    def _groups(self) -> dict[str, float]:
        out = dict.fromkeys(self.groups, 0.0)
        by_pgid = {pgid: name for name, pgid in self.groups.items()}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            name = by_pgid.get(int(fields[2]))
            if name is not None:
                out[name] += (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime
        return out

    def _redis(self) -> float:
        info = self.r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def read(self) -> dict[str, float]:
        return {**self._groups(), "redis": self._redis(), "client": time.process_time()}


# -- Redis command accounting (MONITOR) ------------------------------------------------------

def _ports_of(pid: int) -> set[str]:
    """Local TCP ports of a process's sockets (Linux /proc), as strings."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table_path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[9] in inodes:
                ports.add(str(int(cols[1].rsplit(":", 1)[1], 16)))
    return ports


def count_commands(server, apps: Clients, workers: dict[str, int], kind: str,
                   n: int) -> dict[str, Counter]:
    """Commands Redis receives during n 1-thread round trips of `kind`, by source: this
    process ("client"), the worker serving `kind` ("worker"), the other, idle one ("idle
    worker"), scripts ("inside Lua")."""
    import redis

    stop = f"vcm-bench-monitor-stop-{kind}"
    seen: list[dict] = []
    started = threading.Event()

    def listen() -> None:
        mon_client = redis.Redis(port=server.port)
        with mon_client.monitor() as mon:
            started.set()
            for cmd in mon.listen():
                if stop in cmd["command"]:
                    break
                seen.append(cmd)
        mon_client.close()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    started.wait(10)
    time.sleep(0.2)
    measure(apps, kind, 1, n)
    time.sleep(0.3)  # let the worker's trailing writes (mirror status, events) land
    control = redis.Redis(port=server.port)
    control.echo(stop)
    thread.join(15)
    control.close()
    serving = KINDS[kind][1]
    ports = {name: _ports_of(pid) for name, pid in workers.items()}
    my_ports = _ports_of(os.getpid())
    out: dict[str, Counter] = defaultdict(Counter)
    for cmd in seen:
        name = cmd["command"].split(" ", 1)[0].upper()
        src = "other"
        if cmd["client_type"] == "lua":
            src = "inside Lua"
        elif cmd["client_port"] in my_ports:
            src = "client"
        else:
            for wname, wports in ports.items():
                if cmd["client_port"] in wports:
                    src = "worker" if wname == serving else "idle worker"
        out[src][name] += 1
    return out


def command_summary(counts: dict[str, dict[str, Counter]], n: int) -> str:
    rows = []
    for src in ("client", "worker", "inside Lua", "idle worker"):
        by_kind = {k: counts[k].get(src, Counter()) for k in ("minimal", "noop", "acquire")}
        base, acq = by_kind["minimal"], by_kind["acquire"]
        diff = {k: (acq[k] - base[k]) / n for k in set(base) | set(acq)}
        extra = ", ".join(f"{k} {v:+.1f}" for k, v in sorted(diff.items(), key=lambda x: -x[1])
                          if abs(v) >= 0.5)
        rows.append([src, *(f"{sum(c.values()) / n:.1f}" for c in by_kind.values()),
                     extra or "-"])
    return table(["sent by", "minimal no-op rt", "our no-op rt", "acquire+release rt",
                  "acquire+release minus minimal no-op, by command"], rows)


# -- worker-side shim (VCM_BENCH_PROFILE) -------------------------------------------------------

def worker_shim(out: str, argv: list[str]) -> None:
    """Run `celery <argv>` with section timers and a cProfile of the main thread; write both to
    `out` (.json) and `out`.prof at exit."""
    import atexit
    import cProfile

    import redis

    stats: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    lock = threading.Lock()

    def record(label: str, wall: float, cpu: float) -> None:
        key = (threading.current_thread().name, label)
        with lock:
            s = stats[key]
            s[0] += 1
            s[1] += wall
            s[2] += cpu

    def timed(owner, name: str, label: str) -> None:
        fn = getattr(owner, name, None)
        if fn is None:
            return

        @functools.wraps(fn)
        def wrapper(*a, **k):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                record(label, time.perf_counter() - t0, time.thread_time() - c0)

        setattr(owner, name, wrapper)

    import celery.backends.base as backend_base
    from celery import signals

    import workers.service as service_mod
    from workers.adapters import mirror, replies
    from workers.adapters.ledger import Ledger
    from workers.service import Capacity

    timed(redis.Redis, "execute_command", "redis round trip (command)")
    timed(redis.client.Pipeline, "execute", "redis round trip (pipeline)")
    for name in ("usage", "commit", "release", "waiting_count", "waiters", "defer", "outbox",
                 "outbox_done", "snapshot", "seq", "is_ready", "count", "wait_kick", "get_many",
                 "swap", "active_at"):
        timed(Ledger, name, f"Ledger.{name}")
    for name in ("acquire", "release", "place", "parse", "fleet", "existing", "ensure_ready"):
        timed(Capacity, name, f"Capacity.{name}")
    timed(service_mod, "place_batch", "place_batch()")
    for cls in ("FileMirror", "ConfigMapMirror"):
        if hasattr(mirror, cls):
            timed(getattr(mirror, cls), "save", f"{cls}.save")
    if hasattr(mirror.FileMirror, "append"):
        timed(mirror.FileMirror, "append", "FileMirror.append (journal)")
    timed(mirror.file.os, "fdatasync", "os.fdatasync")  # the journal's (mirror/file.py)
    timed(replies.CeleryReplies, "deliver", "CeleryReplies.deliver")
    timed(backend_base.Backend, "store_result", "backend.store_result")
    store = backend_base.Backend.store_result

    def store_by_state(self, task_id, result, state, *a, **k):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return store(self, task_id, result, state, *a, **k)
        finally:
            record(f"  store_result {state}", time.perf_counter() - t0, time.thread_time() - c0)

    backend_base.Backend.store_result = store_by_state
    import celery.backends.redis as backend_redis
    timed(backend_redis.RedisBackend, "get", "  backend GET (current meta)")
    timed(backend_redis.RedisBackend, "_set_with_state", "  backend SET+PUBLISH")
    timed(backend_base.Backend, "_get_result_meta", "  backend result meta")
    timed(backend_base.Backend, "encode", "  backend encode")
    try:
        from workers.publisher import Publisher

        timed(Publisher, "step", "Publisher.step")
        timed(Publisher, "write_mirror", "Publisher.write_mirror")
    except ImportError:
        pass
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

    import gc

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


def shim_worker_class():
    import subprocess

    from tests.support.procs import ROOT, Worker

    class ShimWorker(Worker):
        """tests.support's Worker with the same celery arguments, started through worker_shim."""

        stats_path = ""

        def start(self, wait: bool = True):
            # as a module from the root (cwd): the root is on its path the standard way
            args = [sys.executable, "-m", "bench.bench_celery", "--worker-shim",
                    self.stats_path, "--", "-A", "tasks", "worker", "-Q", self.queues,
                    *(["-P", self.pool] if self.pool else []),  # none: the documented command
                    "-c", str(self.concurrency), "-n", self.name, "-l", "info",
                    "--without-mingle", "--without-gossip", "-E"]
            self.out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=self.out,
                                         stderr=subprocess.STDOUT)
            if wait:
                self.wait_ready()
            return self

    return ShimWorker


def profile_run(server, pools_path: Path, tmp: Path, outdir: Path, n: int,
                mirror: bool = True, cprofile: bool = True) -> None:
    import pstats

    from tests.support.procs import env_for

    ShimWorker = shim_worker_class()
    per_kind: dict[str, dict[tuple[str, str], list[float]]] = {}
    for kind in ("noop", "acquire"):
        server.client().flushall()
        env = env_for(server.url, pools_path, VCM_BENCH_CPROFILE="1" if cprofile else "0",
                      VCM_MIRROR_FILE=str(tmp / f"ledger-{kind}.json") if mirror else "off")
        w = ShimWorker(env, "placement", name=f"profile-{kind}@bench")
        w.stats_path = target = str(outdir / f"worker-{kind}.json")
        w.start()
        apps = Clients.connect(server.url, minimal=False)
        measure(apps, kind, 1, 10)  # warm-up (counted in the sections)
        measure(apps, kind, 1, n)
        w.stop()
        apps.close()
        rows = json.loads(Path(target).read_text())
        per_kind[kind] = {(r["thread"], r["section"]): [r["calls"], r["seconds"], r["cpu"]]
                          for r in rows}
        if cprofile:
            print(f"\ncProfile of the worker's main thread ({kind}), top 30 by cumulative time "
                  f"({target}.prof):")
            pstats.Stats(target + ".prof").sort_stats("cumulative").print_stats(30)
    keys = sorted(set(per_kind["noop"]) | set(per_kind["acquire"]),
                  key=lambda k: (k[0], -per_kind["acquire"].get(k, [0, 0, 0])[2]))
    rows = []
    total = n + 10
    for key in keys:
        cells = [key[0], key[1]]
        for kind in ("noop", "acquire"):
            calls, secs, cpu = per_kind[kind].get(key, [0, 0.0, 0.0])
            cells += [f"{calls / total:.2f}", f"{secs / total * 1e3:.3f}",
                      f"{cpu / total * 1e3:.3f}"]
        rows.append(cells)
    print(f"\nWorker sections per round trip ({total} round trips incl. 10 warm-up, 1 thread, "
          f"{'file mirror' if mirror else 'mirror off'}; "
          f"{'cProfile on, times inflated' if cprofile else 'no cProfile'}; worker start-up "
          "included). Wall and CPU (thread_time) in ms; sections nest:\n")
    print(table(["thread", "section", "noop calls/rt", "wall", "CPU", "acq+rel calls/rt",
                 "wall", "CPU"], rows))


# -- the benchmark ------------------------------------------------------------------------------

# how the placement worker is started: label -> (-P value or None for none, description)
COMMANDS: dict[str, tuple[str | None, str]] = {
    "documented": (None, "`celery -A tasks worker -Q placement --concurrency 1` (the documented "
                         "command: no -P, Celery's default prefork; the worker switches itself "
                         "to the solo pool)"),
    "-P solo": ("solo", "`celery -A tasks worker -Q placement -P solo -c 1` (as `vcm run` "
                        "starts it)"),
}
MINIMAL = "minimal no-op ×2"
OWN = "vs our own no-op (pays our configuration)"


def task_runtimes(log: str) -> dict[str, float]:
    """Mean 'succeeded in' runtime per task name, from a worker's info log."""
    times: dict[str, list[float]] = defaultdict(list)
    for m in re.finditer(r"Task ((?:vcm|minimal)\.\w+)\[[^\]]+\] succeeded in ([0-9.e-]+)s",
                         log):
        times[m.group(1)].append(float(m.group(2)))
    return {k: sum(v) / len(v) for k, v in times.items()}


def banner_pool(log: str) -> str:
    """The worker banner's concurrency line, e.g. '1 (solo)'."""
    m = re.search(r"concurrency:\s*(.+)", log)
    return m.group(1).strip() if m else "?"


def minimal_worker(url: str, name: str):
    """`celery -A bench.minimal_app worker -Q minimal -P solo -c 1`, with the same logging and
    start-up flags as the placement worker (-n, -l info, --without-mingle, --without-gossip)
    but without -E: the minimal app sends no events."""
    from bench.minimal_app import QUEUE
    from tests.support.procs import Worker, env_for

    class MinimalWorker(Worker):
        def command(self) -> list[str]:
            return [sys.executable, "-m", "celery", "-A", "bench.minimal_app", "worker", "-Q",
                    QUEUE, "-P", "solo", "-c", "1", "-n", self.name, "-l", "info",
                    "--without-mingle", "--without-gossip"]

    return MinimalWorker(env_for(url), QUEUE, name=name)


def preload(server, pools_path: Path, n: int) -> None:
    """Put n active leases into the (empty) ledger, as the mirror restore would."""
    if n <= 0:
        return
    from workers.adapters.ledger import Ledger
    from workers.adapters.pools_file import load_pools
    from workers.core.models import make_lease, parse_request

    pools = list(load_pools(str(pools_path)))
    now = time.time()
    leases = []
    for i in range(n):
        pool = pools[i % len(pools)]
        req = parse_request({"vcpus": 1, "memory": 1, "storage": 1, "networks": 0,
                             "owner": f"preload-{i % 50}", "request-id": f"preload-{i}"})
        leases.append(make_lease(f"pre{i:06d}", req, pool, [], now))
    Ledger(server.client()).restore({"format": 1, "seq": 1, "leases": leases})


def run_config(server, label: str, pool: str | None, env: dict, plan: list[tuple[int, int]],
               reps: int, monitor_n: int, preload_n: int, pools_path: Path) -> dict:
    """One placement worker started as `label` says and one minimal worker, both on `server`;
    the three kinds of round trip measured interleaved (acquire always between the two
    baselines)."""
    from tests.support.procs import Worker

    server.client().flushall()
    preload(server, pools_path, preload_n)
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    worker = Worker(env, "placement", name=f"bench-{slug}@bench", pool=pool)
    minimal = minimal_worker(server.url, f"minimal-{slug}@bench")
    apps = None
    try:
        worker.start(wait=False)
        minimal.start(wait=False)
        worker.wait_ready()
        minimal.wait_ready()
        apps = Clients.connect(server.url)
        for kind in KINDS:  # warm-up: connections, scripts, caches, first mirror write
            measure(apps, kind, 1, 20)
            measure(apps, kind, 8, 40)
        pids = {"placement": worker.proc.pid, "minimal": minimal.proc.pid}
        meter = CpuMeter(pids, server.client())
        results: dict[tuple[str, int], list[tuple[float, list[float]]]] = defaultdict(list)
        cpu: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
        for rep in range(reps):
            for threads, total in plan:
                order = ("minimal", "acquire", "noop")
                if (rep + threads) % 2:
                    order = order[::-1]
                for kind in order:
                    before = meter.read()
                    wall, lat = measure(apps, kind, threads, total)
                    after = meter.read()
                    results[(kind, threads)].append((len(lat) / wall, lat))
                    serving = KINDS[kind][1]
                    idle = "minimal" if serving == "placement" else "placement"
                    per = {k: (after[k] - before[k]) / len(lat) for k in after}
                    cpu[(kind, threads)].append({
                        "worker": per[serving], "idle worker": per[idle],
                        "redis": per["redis"], "client": per["client"]})
        counts = {}
        if monitor_n:
            for kind in KINDS:
                counts[kind] = count_commands(server, apps, pids, kind, monitor_n)
    finally:
        if apps is not None:
            apps.close()
        worker.stop()
        minimal.stop()
    log = worker.output()
    return {"results": results, "cpu": cpu, "counts": counts,
            "runtimes": {**task_runtimes(log), **task_runtimes(minimal.output())},
            "pool": banner_pool(log), "minimal pool": banner_pool(minimal.output())}


def report(out: dict[str, dict], monitor_n: int) -> bool:
    """Print the tables; True when a row is below the target."""
    rows, paired, notes, cpu_rows, idle = [], [], [], [], []
    below = False
    for label, res in out.items():
        for threads in sorted({t for (_, t) in res["results"]}):
            acq_runs = res["results"][("acquire", threads)]
            acq_lat = [x for _, lat in acq_runs for x in lat]
            for kind, base in (("minimal", MINIMAL), ("noop", OWN)):
                base_runs = res["results"][(kind, threads)]
                pairs = [a[0] / n[0] for a, n in zip(acq_runs, base_runs, strict=True)]
                ratio = median(pairs)
                base_lat = [x for _, lat in base_runs for x in lat]
                if kind == "minimal":
                    target = f"≥ {TARGET} {verdict(ratio, TARGET)}"
                    below = below or ratio < TARGET
                else:
                    target = "(reference)"
                rows.append([label, threads, base, fmt_rate(median([r for r, _ in acq_runs])),
                             fmt_ms(percentile(acq_lat, 50)), fmt_ms(percentile(acq_lat, 99)),
                             fmt_rate(median([r for r, _ in base_runs])),
                             fmt_ms(percentile(base_lat, 50)), fmt_ms(percentile(base_lat, 99)),
                             f"{ratio:.2f}", target])
                which = "minimal" if kind == "minimal" else "own no-op"
                paired.append(f"{label}, {threads} thread(s), {which}: "
                              + ", ".join(f"{p:.2f}" for p in pairs))
            # CPU per round trip, median over the measurements
            med = {kind: {k: median([x[k] for x in res["cpu"][(kind, threads)]])
                          for k in ("worker", "idle worker", "redis", "client")}
                   for kind in KINDS}
            acq, mini, own = med["acquire"], med["minimal"], med["noop"]

            def total(m: dict[str, float]) -> float:
                return m["worker"] + m["redis"] + m["client"]

            cpu_rows.append([label, threads, fmt_ms(acq["worker"]), fmt_ms(acq["redis"]),
                             fmt_ms(acq["client"]), fmt_ms(mini["worker"]),
                             fmt_ms(mini["redis"]), fmt_ms(mini["client"]),
                             fmt_ms(own["worker"]), f"{acq['worker'] / mini['worker']:.2f}",
                             f"{acq['worker'] / own['worker']:.2f}",
                             f"{total(acq) / total(mini):.2f}"])
            idle.append(f"{label}, {threads} thread(s): the placement worker, idle, used "
                        f"{fmt_ms(mini['idle worker'])} per minimal round trip; the minimal "
                        f"worker, idle, {fmt_ms(acq['idle worker'])} per acquire+release")
        rt = res["runtimes"]
        if rt:
            notes.append(f"{label}: worker-reported task runtime (trace incl. result store): "
                         + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(rt.items())))
        notes.append(f"{label}: placement worker banner 'concurrency: {res['pool']}', minimal "
                     f"worker 'concurrency: {res['minimal pool']}'")
    print()
    print(table(["placement worker", "threads", "baseline", "acquire+release rt/s", "p50",
                 "p99", "baseline rt/s", "p50", "p99", "ratio", "target"], rows))
    print("\nCPU per round trip (median of the measurements above; the machine's load does "
          "not inflate these much): acquire+release | minimal no-op ×2 | our no-op ×2:\n")
    print(table(["placement worker", "threads", "worker", "redis", "client", "minimal worker",
                 "redis", "client", "our no-op worker", "worker CPU ×minimal",
                 "worker CPU ×our no-op", "total CPU ×minimal"], cpu_rows))
    print(f"\nOne solo worker serves each queue. Where that worker is the bottleneck, the rate "
          f"ratio tends to 1 / (worker CPU ×minimal), so the {TARGET} target needs "
          f"≤ {1 / TARGET:.2f}; where the machine is (a small one shared by this client, "
          "redis-server and the workers), it tends to 1 / (total CPU ×minimal).")
    print("\nBaseline: bench/minimal_app.py, `Celery(\"minimal\", broker=url, backend=url)` with "
          "JSON serializers and task_acks_late only (no task_track_started, no events, no "
          "result_extended, default prefetch), its own worker `celery -A bench.minimal_app "
          "worker -Q minimal -P solo -c 1` and its own client app, on the same redis-server; a "
          "baseline round trip is two no-op tasks, as acquire+release is two tasks. The "
          "second row of each pair is against our own vcm.noop_placement on the placement "
          "worker, which pays our configuration (track_started, worker events, "
          "result_extended).")
    print("Placement worker: VCM_MIRROR_FILE set (the default), each acquire/release appended "
          "to the mirror's journal and fdatasync'd before its answer, unless the row says "
          "mirror off.")
    print("ratio of each adjacent pair (acquire/baseline, measured one after the other): "
          + "; ".join(paired))
    for line in idle:
        print(line)
    for n in notes:
        print(n)
    for label, res in out.items():
        if res["counts"]:
            print(f"\nRedis commands per round trip, {label} ({monitor_n} round trips of each "
                  "kind, 1 thread, under MONITOR; \"idle worker\" is the worker not serving "
                  "the kind):\n")
            print(command_summary(res["counts"], monitor_n))
    return below


# -- what each Celery setting costs (--settings) ------------------------------------------------

# label -> overrides of celeryconfig for the placement worker (bench/placement_variant.py) and
# for its client app: each non-default setting of the placement path flipped from what
# celeryconfig says ("-E" is dropped from the worker's command line when worker_send_task_events
# is false)
FLIPPED = ("task_track_started", "task_send_sent_event", "worker_send_task_events",
           "result_extended", "task_acks_late")


def variants_of_config() -> dict[str, dict[str, Any]]:
    import celeryconfig

    out: dict[str, dict[str, Any]] = {"as configured": {}}
    for name in FLIPPED:
        value = not getattr(celeryconfig, name)
        out[f"{name} {'on' if value else 'off'}"] = {name: value}
    return out


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    label, sep, body = text.partition("=")
    value = json.loads(body) if sep else None
    if not label or not isinstance(value, dict):
        raise SystemExit(f"--variant wants label={{json object}}, got {text!r}")
    return label, value


def variant_worker(url: str, overrides: dict[str, Any], name: str, mirror_file: str,
                   pools_path: Path):
    from tests.support.procs import Worker, env_for

    events = overrides.get("worker_send_task_events", True) is not False

    class VariantWorker(Worker):
        def command(self) -> list[str]:
            return [sys.executable, "-m", "celery", "-A", "bench.placement_variant", "worker",
                    "-Q", "placement", "-P", "solo", "-c", "1", "-n", self.name, "-l", "info",
                    "--without-mingle", "--without-gossip", *(["-E"] if events else [])]

    env = env_for(url, pools_path, VCM_MIRROR_FILE=mirror_file,
                  VCM_BENCH_CELERY_CONF=json.dumps(overrides))
    return VariantWorker(env, "placement", name=name)


def commandstats(client) -> Counter:
    return Counter({k.removeprefix("cmdstat_").upper(): int(v["calls"])
                    for k, v in client.info("commandstats").items()})


def settings_run(server, pools_path: Path, tmp: Path, variants: dict[str, dict[str, Any]],
                 plan: list[tuple[int, int]], reps: int) -> None:
    from bench.minimal_app import make_app

    base = server.url.rsplit("/", 1)[0]
    workers, clients = {}, {}
    minimal = minimal_worker(server.url, "minimal-settings@bench")
    try:
        minimal.start(wait=False)
        for i, (label, overrides) in enumerate(variants.items(), start=1):
            url = f"{base}/{i}"
            workers[label] = variant_worker(url, overrides, f"variant{i}@bench",
                                            str(tmp / f"mirror-{i}" / "ledger.json"),
                                            pools_path)
            workers[label].start(wait=False)
        minimal.wait_ready()
        shared_minimal = make_app(server.url)
        for label, overrides in variants.items():
            workers[label].wait_ready(timeout=60)
            ours = client_app(f"{base}/{list(variants).index(label) + 1}")
            ours.conf.update(overrides)
            clients[label] = Clients(ours, shared_minimal)
            for threads, n in ((1, 20), (8, 40)):  # warm-up
                measure(clients[label], "acquire", threads, n)
                measure(clients[label], "minimal", threads, n)
        meter = CpuMeter({label: w.proc.pid for label, w in workers.items()}, server.client())
        admin = server.client()
        pairs: dict[tuple[str, int], list[float]] = defaultdict(list)
        rates: dict[tuple[str, int], list[float]] = defaultdict(list)
        cpu: dict[tuple[str, int], list[float]] = defaultdict(list)
        ccpu: dict[tuple[str, int], list[float]] = defaultdict(list)
        cmds: dict[str, list[Counter]] = defaultdict(list)
        order = list(variants)
        for rep in range(reps):
            for threads, total in plan:
                seq = order if (rep + threads) % 2 == 0 else order[::-1]
                for label in seq:
                    kinds = ("minimal", "acquire") if rep % 2 == 0 else ("acquire", "minimal")
                    got = {}
                    for kind in kinds:
                        before, stats0 = meter.read(), commandstats(admin)
                        wall, lat = measure(clients[label], kind, threads, total)
                        after, stats1 = meter.read(), commandstats(admin)
                        got[kind] = len(lat) / wall
                        if kind == "acquire":
                            cpu[(label, threads)].append(
                                (after[label] - before[label]) / len(lat))
                            ccpu[(label, threads)].append(
                                (after["client"] - before["client"]) / len(lat))
                            if threads == 1:
                                cmds[label].append(Counter({
                                    k: (stats1[k] - stats0.get(k, 0)) / len(lat)
                                    for k in stats1}))
                    rates[(label, threads)].append(got["acquire"])
                    pairs[(label, threads)].append(got["acquire"] / got["minimal"])
            print(f"  repetition {rep + 1}/{reps} done", flush=True)
    finally:
        for c in clients.values():
            c.ours.close()
        for w in workers.values():
            w.stop()
        minimal.stop()
    settings_report(variants, plan, pairs, rates, cpu, ccpu, cmds)


def settings_report(variants, plan, pairs, rates, cpu, ccpu, cmds) -> None:
    rows, detail = [], []
    ref = {t: median(pairs[("as configured", t)]) for t, _ in plan}
    ref_cpu = {t: median(cpu[("as configured", t)]) for t, _ in plan}
    ref_cmds = cmds["as configured"]

    def per_rt(label: str) -> Counter:
        keys = set().union(*cmds[label])
        return Counter({k: median([c.get(k, 0.0) for c in cmds[label]]) for k in keys})

    base_cmds = per_rt("as configured") if ref_cmds else Counter()
    for label in variants:
        cells = [label]
        for threads, _ in plan:
            ratio = median(pairs[(label, threads)])
            cells += [fmt_rate(median(rates[(label, threads)])), f"{ratio:.2f}",
                      f"{ratio / ref[threads]:.2f}",
                      fmt_ms(median(cpu[(label, threads)])),
                      f"{median(cpu[(label, threads)]) / ref_cpu[threads]:.2f}",
                      fmt_ms(median(ccpu[(label, threads)]))]
        mine = per_rt(label)
        diff = {k: mine[k] - base_cmds[k] for k in set(mine) | set(base_cmds)}
        extra = ", ".join(f"{k} {v:+.1f}" for k, v in sorted(diff.items(), key=lambda x: x[1])
                          if abs(v) >= 0.5)
        cells += [f"{sum(mine.values()):.1f}", extra or "-"]
        rows.append(cells)
        detail.append(f"{label} ({json.dumps(variants[label])}): pairs "
                      + "; ".join(f"{t} thread(s) "
                                  + ", ".join(f"{p:.2f}" for p in pairs[(label, t)])
                                  for t, _ in plan))
    headers = ["placement worker"]
    for threads, _ in plan:
        headers += [f"{threads}t rt/s", f"{threads}t ratio", "× as configured",
                    "worker CPU/rt", "× as configured", "client CPU/rt"]
    headers += ["Redis cmds/rt (1t)", "vs as configured"]
    print()
    print(table(headers, rows))
    print("\nratio: acquire+release rate over the minimal no-op ×2 measured next to it (median "
          "of the adjacent pairs); worker CPU per round trip: the variant's placement worker "
          "(median); client CPU: this process (median); Redis commands per 1-thread round "
          "trip: every client of the server (the idle workers' polling included), median.")
    for line in detail:
        print(line)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker-shim"]:
        worker_shim(argv[1], argv[3:])
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.bench_celery",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few round trips (smoke test)")
    ap.add_argument("--reps", type=int, default=5, help="measurements of each kind")
    ap.add_argument("--preload", type=int, default=0, help="active leases before the start")
    ap.add_argument("--only", choices=("documented", "solo"),
                    help="one start command of the placement worker")
    ap.add_argument("--mirror", choices=("file", "off", "both"), default="file",
                    help="the placement worker's mirror (default: file, the product default)")
    ap.add_argument("--no-cprofile", action="store_true",
                    help="with VCM_BENCH_PROFILE: section timers only (less overhead)")
    ap.add_argument("--settings", action="store_true",
                    help="what each non-default Celery setting costs (see the module doc)")
    ap.add_argument("--variant", action="append", default=[], type=parse_variant,
                    metavar="LABEL=JSON", help="with --settings: another variant")
    ap.add_argument("--variants-only", action="store_true",
                    help="with --settings: only the --variant ones (and as configured)")
    args = ap.parse_args(argv)

    from tests.support.procs import RedisServer, env_for

    # fixed round trips per measurement; the file-mirror acquire path runs at ~50-150 rt/s on a
    # busy 2-core machine, so these sizes keep `make bench` within a few minutes
    plan = [(1, 60), (8, 160)] if args.quick else [(1, 150), (8, 320)]
    reps = 2 if args.quick else args.reps
    monitor_n = 10 if args.quick else 15
    server = RedisServer().start()
    tmp = Path(tempfile.mkdtemp(prefix="vcm-bench-celery-"))
    started = time.perf_counter()
    try:
        pools_path = write_pools(tmp / "pools.yaml", fleet_spec(
            20, 10, 32, vcpus=512, memory=4096, storage=50000))
        if args.settings:
            variants = {"as configured": {}} if args.variants_only else variants_of_config()
            variants.update(dict(args.variant))
            print("What each non-default Celery setting of the placement path costs; one "
                  "-P solo placement worker per variant (see --settings in the module doc): "
                  + ", ".join(variants))
            settings_run(server, pools_path, tmp, variants,
                         [(1, 60), (8, 120)] if args.quick else [(1, 120), (8, 240)], reps)
            return 0
        profile_dir = os.environ.get("VCM_BENCH_PROFILE")
        if profile_dir:
            outdir = Path(profile_dir)
            outdir.mkdir(parents=True, exist_ok=True)
            profile_run(server, pools_path, tmp, outdir.resolve(), 300,
                        mirror=args.mirror != "off", cprofile=not args.no_cprofile)
            return 0
        mirrors = {"file": [("", str(tmp / "mirror" / "ledger.json"))], "off": [(", mirror off",
                   "off")]}
        mirrors["both"] = mirrors["file"] + mirrors["off"]
        configs = []
        for suffix, mirror_file in mirrors[args.mirror]:
            for name, (pool, _) in COMMANDS.items():
                if args.only and args.only not in name:
                    continue
                configs.append((name + suffix, pool, env_for(server.url, pools_path,
                                                               VCM_MIRROR_FILE=mirror_file)))
        sizes = ", ".join(f"{n} with {t} thread(s)" for t, n in plan)
        print(f"20 pools on 10 vCenters, 32 port groups each; request {json.dumps(REQUEST)}; "
              f"round trips per measurement: {sizes}; {reps} measurements of each kind, "
              "interleaved (minimal, acquire, own no-op, then the reverse); rates are medians, "
              "the ratio is the median of the adjacent acquire/baseline pairs (shared machine: "
              "pairs cancel slow drifts)"
              + (f"; {args.preload:,} active leases preloaded" if args.preload else ""))
        for name, (_, desc) in COMMANDS.items():
            print(f"- placement worker `{name}`: {desc}")
        out = {}
        for i, (label, pool, env) in enumerate(configs):
            # Redis commands do not depend on the start command: count them once
            out[label] = run_config(server, label, pool, env, plan, reps,
                                    monitor_n if i == 0 else 0, args.preload, pools_path)
        if report(out, monitor_n):
            print(f"\n{BELOW}: the acquire+release rate is under {TARGET}x the minimal no-op "
                  "rate in at least one configuration (see the rows above).")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
