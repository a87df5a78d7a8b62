"""(c) The HTTP shim's overhead: acquire+release round trips over HTTP against the same round
trips sent straight to Celery, and against the minimal Celery app's no-op ×2 (bench (b)'s
baseline), in the same run, at 1 and 8 client threads (--threads); and the shim on uvicorn's two
stacks, asyncio + h11 against uvloop + httptools (uvicorn[standard], what `vcm api` runs).

A private redis-server; on it one placement worker (`-P solo -c 1`, file mirror), one queries
worker, the minimal app's worker (bench/minimal_app.py, `celery -A bench.minimal_app worker -Q
minimal -P solo -c 1`, as bench/bench_celery.py starts it) and two shims (`python -m api_shim`,
what `vcm api` runs: uvicorn, one process), each on a free port, in front of the same workers:
`--loop asyncio --http h11` and `--loop uvloop --http httptools`. Each shim's log says which
event loop and HTTP protocol uvicorn runs it on; the benchmark prints that and fails when it is
not what was asked for. A round trip:

- http:    POST /acquire {...}, then POST /release {"lease-ids": [...]}  (httpx, keep-alive,
           one client per thread), against one shim or the other;
- celery:  send_task("vcm.acquire") + get(), then send_task("vcm.release") + get()  (one Celery
           client app, one thread each: what a job step does);
- minimal: two minimal.noop tasks, send_task + get() each, on the minimal client app (as many
           task round trips as acquire+release).

Every repetition measures, at each thread count, the four kinds one after the other (minimal,
http asyncio + h11, http uvloop + httptools, celery; the next repetition the reverse), so the two
shims are always measured adjacent and drift on a shared machine hits all four. Rates are
medians; a ratio is the median of the per-repetition pairs. "http / celery" is the shim's own
cost (the placement worker is the same single consumer either way); "http / minimal no-op ×2"
is the whole HTTP path against Celery's and Redis's floor; "uvloop + httptools / asyncio + h11"
is what uvicorn's standard extras give.

Also printed: CPU per round trip of the placement worker, the minimal worker, each shim and
this process (the clients).

--profile SECONDS: afterwards, load the uvloop + httptools shim with 8 http client threads for
that long under `py-spy record --format raw --gil` (pip install py-spy) and print where the
shim's CPU goes, by part of a request (bench/shim_profile.py classifies the sampled stacks; the
raw stacks are kept with --profile-out FILE).

Run (from the repository root): .venv/bin/python -m bench.bench_http [--threads 1,8] [--reps 3]
     [--quick] [--profile 20 [--profile-out /tmp/shim.txt]]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from bench import (
    fleet_spec,
    fmt_ms,
    fmt_rate,
    median,
    percentile,
    table,
    write_pools,
)
from bench.lib.cpu import process_cpu
from tests.support.audit import audit
from tests.support.procs import LoggedProcess, free_port, wait_for

TIMEOUT = 60.0
REQUEST = {"vcpus": 2, "memory": 4, "storage": 10}
# the shims: kind -> (uvicorn --loop, --http, what uvicorn must report running)
SHIMS = {
    "h11": ("asyncio", "h11", ("asyncio.", "H11Protocol")),
    "httptools": ("uvloop", "httptools", ("uvloop.", "HttpToolsProtocol")),
}
# the shims adjacent, each next to one baseline
KINDS = ("minimal", "h11", "httptools", "celery")
LABELS = {
    "minimal": "minimal no-op ×2 (send_task + get, twice)",
    "celery": "Celery send_task + get (vcm.acquire + vcm.release)",
    "h11": "HTTP shim, --loop asyncio --http h11 (POST /acquire + POST /release)",
    "httptools": "HTTP shim, --loop uvloop --http httptools (as `vcm api` runs)",
}
SHORT = {"minimal": "minimal no-op ×2", "celery": "Celery send_task + get",
         "h11": "asyncio + h11", "httptools": "uvloop + httptools"}
# the shim's start-up line (api_shim/app.py serve())
RUNS_ON = re.compile(r"uvicorn (\S+): event loop (\S+), HTTP protocol (\S+)")


class Shim(LoggedProcess):
    """`python -m api_shim --port N --loop L --http H` against the given environment."""

    def __init__(self, env: dict, loop: str, http: str, log: Path) -> None:
        self.env, self.loop, self.http, self.log = env, loop, http, str(log)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Shim:
        self.spawn([sys.executable, "-m", "api_shim", "--port", str(self.port), "--log-level",
                    "warning", "--loop", self.loop, "--http", self.http], self.env)
        return self

    def runs_on(self, timeout: float = 30) -> tuple[str, str, str]:
        """(uvicorn version, event loop class, HTTP protocol class), from the shim's log."""

        def line() -> re.Match | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the shim exited {self.proc.returncode}: "
                                   f"{self.output()[-2000:]}")
            return RUNS_ON.search(self.output())

        m = wait_for(line, timeout=timeout, what=f"the shim on {self.loop} + {self.http}")
        return m[1], m[2], m[3]


def http_round_trip(client, tid: int) -> None:
    owner = f"bench-http-{tid}"
    resp = client.post("/acquire", json={**REQUEST, "owner": owner})
    if resp.status_code != 200:
        raise RuntimeError(f"acquire: {resp.status_code} {resp.text[:300]}")
    ids = [x["metadata"]["name"] for x in resp.json()]
    resp = client.post("/release", json={"lease-ids": ids, "owner": owner})
    if resp.status_code != 200 or resp.json() != ids:
        raise RuntimeError(f"release: {resp.status_code} {resp.text[:300]}")


def celery_round_trip(app, tid: int) -> None:
    owner = f"bench-celery-{tid}"
    leases = app.send_task("vcm.acquire", kwargs={"request": {**REQUEST, "owner": owner}},
                           queue="placement").get(timeout=TIMEOUT)
    ids = [x["metadata"]["name"] for x in leases]
    got = app.send_task("vcm.release", kwargs={"lease_ids": ids, "owner": owner},
                        queue="placement").get(timeout=TIMEOUT)
    if got != ids:
        raise RuntimeError(f"release returned {got!r}, expected {ids!r}")


def minimal_round_trip(app, tid: int) -> None:
    from bench.minimal_app import NOOP, QUEUE

    app.send_task(NOOP, queue=QUEUE).get(timeout=TIMEOUT)
    app.send_task(NOOP, queue=QUEUE).get(timeout=TIMEOUT)


ROUND_TRIPS = {"h11": http_round_trip, "httptools": http_round_trip,
               "celery": celery_round_trip, "minimal": minimal_round_trip}


def measure(kind: str, make_client, clients: int, total: int | None = None,
            seconds: float | None = None) -> tuple[float, list[float]]:
    """`total` round trips over `clients` threads (or as many as fit in `seconds`); returns
    wall seconds and latencies."""
    fn = ROUND_TRIPS[kind]
    per = max(1, (total or 0) // clients)
    lat: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    until: list[float] = [0.0]

    def run(tid: int) -> None:
        mine: list[float] = []
        client = make_client()
        try:
            fn(client, tid)  # warm: connection, first request
            barrier.wait()
            done = 0
            while (done < per) if seconds is None else (time.perf_counter() < until[0]):
                t0 = time.perf_counter()
                fn(client, tid)
                mine.append(time.perf_counter() - t0)
                done += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            barrier.abort()
        finally:
            if kind in SHIMS:
                client.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    until[0] = time.perf_counter() + (seconds or 0) + 60  # until the barrier is passed
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    until[0] = t0 + (seconds or 0)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{kind}: {errors[0]!r}") from errors[0]
    return wall, lat


def profile_shim(pid: int, seconds: float, make_http, out: Path) -> tuple[int, float, float]:
    """Load the shim with 8 http threads for `seconds` while py-spy samples it (raw stacks to
    `out`); returns round trips done, wall seconds and the shim's CPU seconds meanwhile."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    rec = subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--gil",
                            "--rate", "200", "--duration", str(int(seconds)),
                            "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    cpu0 = process_cpu(pid)
    wall, lat = measure("httptools", make_http, 8, seconds=max(1.0, seconds - 2.0))
    cpu = process_cpu(pid) - cpu0
    _, err = rec.communicate(timeout=seconds + 30)
    if rec.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({rec.returncode}): {err.decode()[-500:]}")
    return len(lat), wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_http",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,8", help="client thread counts, comma-separated")
    ap.add_argument("--reps", type=int, default=3, help="measurements of each kind")
    ap.add_argument("--quick", action="store_true", help="small measurements, two repetitions")
    ap.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                    help="then profile the uvloop + httptools shim with py-spy under 8 threads")
    ap.add_argument("--profile-out", type=Path, help="keep py-spy's raw stacks here")
    args = ap.parse_args()
    thread_counts = [int(x) for x in args.threads.split(",") if x.strip()]
    # round trips per measurement: the placement path runs at ~50-150 rt/s on a busy 2-core box
    sizes = {t: (40 if t == 1 else 20 * t) if args.quick else (120 if t == 1 else 40 * t)
             for t in thread_counts}
    reps = 2 if args.quick else args.reps

    import httpx

    from api_shim.bridge import make_celery  # noqa: F401 - the shim imports cleanly here
    from bench.lib.clients import client_app
    from bench.lib.workers import minimal_worker
    from bench.minimal_app import make_app
    from tests.support.procs import RedisServer, Worker, env_for
    from workers.adapters.ledger import Ledger

    tmp = Path(tempfile.mkdtemp(prefix="vcm-bench-http-"))
    redis = RedisServer().start()
    pools = write_pools(tmp / "pools.yaml", fleet_spec(6, 3, 64))
    env = env_for(redis.url, pools, VCM_MIRROR_FILE=str(tmp / "ledger.json"))
    placement = Worker(env, "placement", name="bench-http-placement@bench").start(wait=False)
    queries = Worker(env, "queries", pool="threads", concurrency=4,
                     name="bench-http-queries@bench").start(wait=False)
    minimal = minimal_worker(redis.url, "bench-http-minimal@bench")
    minimal.start(wait=False)
    shims = {kind: Shim(env, loop, http, tmp / f"api-{kind}.log").start()
             for kind, (loop, http, _) in SHIMS.items()}
    app = client_app(redis.url)
    minimal_app = make_app(redis.url)
    started = time.perf_counter()
    try:
        for kind, shim in shims.items():
            version, loop_class, protocol = shim.runs_on()
            want_loop, want_protocol = SHIMS[kind][2]
            print(f"- shim `--loop {shim.loop} --http {shim.http}`: uvicorn {version}, event "
                  f"loop {loop_class}, HTTP protocol {protocol}")
            if not (loop_class.startswith(want_loop) and protocol.endswith(want_protocol)):
                raise RuntimeError(f"the {SHORT[kind]} shim runs on {loop_class} + {protocol}")
        placement.wait_ready()
        queries.wait_ready()
        minimal.wait_ready()
        for shim in shims.values():
            wait_for(lambda s=shim: httpx.get(s.url + "/readyz", timeout=5).status_code == 200,
                     timeout=30, what="the API to be ready")
        makers = {kind: (lambda s=shim: httpx.Client(base_url=s.url, timeout=TIMEOUT))
                  for kind, shim in shims.items()}
        makers |= {"celery": lambda: app, "minimal": lambda: minimal_app}
        for t in thread_counts:  # warm-up: connections, imports, the workers' first tasks
            for kind in KINDS:
                measure(kind, makers[kind], t, 2 * t)
        procs = {"placement worker": placement.proc.pid, "minimal worker": minimal.proc.pid,
                 **{f"shim {kind}": shim.proc.pid for kind, shim in shims.items()}}
        rates: dict[tuple[str, int], list[float]] = defaultdict(list)
        lats: dict[tuple[str, int], list[float]] = defaultdict(list)
        # (numerator kind, denominator kind, threads) -> the ratio of each repetition
        pairs: dict[tuple[str, str, int], list[float]] = defaultdict(list)
        cpu: dict[tuple[str, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        done: dict[tuple[str, int], int] = defaultdict(int)
        for rep in range(reps):
            for t in thread_counts:
                order = KINDS if rep % 2 == 0 else KINDS[::-1]
                got = {}
                for kind in order:
                    before = {n: process_cpu(p) for n, p in procs.items()}
                    c0 = time.process_time()
                    wall, lat = measure(kind, makers[kind], t, sizes[t])
                    for n, p in procs.items():
                        cpu[(kind, t)][n] += process_cpu(p) - before[n]
                    cpu[(kind, t)]["clients"] += time.process_time() - c0
                    done[(kind, t)] += len(lat)
                    got[kind] = len(lat) / wall
                    rates[(kind, t)].append(got[kind])
                    lats[(kind, t)].extend(lat)
                for shim in SHIMS:
                    for base in ("minimal", "celery"):
                        pairs[(shim, base, t)].append(got[shim] / got[base])
                pairs[("httptools", "h11", t)].append(got["httptools"] / got["h11"])
                print(f"  repetition {rep + 1}/{reps}, {t} thread(s): "
                      + ", ".join(f"{SHORT[k]} {got[k]:,.0f} rt/s" for k in order)
                      + f"; uvloop + httptools / asyncio + h11 "
                      f"{got['httptools'] / got['h11']:.2f}", flush=True)
        leftover = audit(Ledger(redis.client()))["leases"]
        if leftover:
            raise RuntimeError(f"{len(leftover)} leases left after the benchmark")

        print()
        print(f"{reps} repetitions; round trips per measurement: "
              + ", ".join(f"{sizes[t]} with {t} thread(s)" for t in thread_counts)
              + "; one placement worker (solo), file mirror on; the minimal worker and both "
              "shims on the same redis-server")
        for t in thread_counts:
            rows = []
            per = {kind: {n: used / done[(kind, t)] for n, used in cpu[(kind, t)].items()}
                   for kind in KINDS}
            for kind in ("minimal", "celery", "h11", "httptools"):
                lat = lats[(kind, t)]
                worker = per[kind]["minimal worker" if kind == "minimal" else "placement worker"]
                rows.append([LABELS[kind], fmt_rate(median(rates[(kind, t)])),
                             fmt_ms(percentile(lat, 50)), fmt_ms(percentile(lat, 99)),
                             fmt_ms(worker),
                             fmt_ms(per[kind][f"shim {kind}"]) if kind in SHIMS else "-",
                             fmt_ms(per[kind]["clients"])])
            for num, base in (("h11", "minimal"), ("httptools", "minimal"), ("h11", "celery"),
                              ("httptools", "celery"), ("httptools", "h11")):
                ratio = median(pairs[(num, base, t)])
                p50 = percentile(lats[(num, t)], 50) / percentile(lats[(base, t)], 50)
                shim_cpu = (f"{per['httptools']['shim httptools'] / per['h11']['shim h11']:.2f}×"
                            if base == "h11" else "")
                rows.append([f"ratio {SHORT[num]} / {SHORT[base]}", f"{ratio:.2f}×",
                             f"{p50:.2f}×", "", "", shim_cpu, ""])
            print()
            print(f"{t} client thread(s):")
            print()
            print(table(["path", "round trips/s (median)", "p50", "p99", "worker CPU/rt",
                         "shim CPU/rt", "client CPU/rt"], rows))
            print("pairs: " + "; ".join(
                f"{SHORT[n]} / {SHORT[b]} " + ", ".join(f"{p:.2f}" for p in pairs[(n, b, t)])
                for n, b in (("h11", "minimal"), ("httptools", "minimal"), ("h11", "celery"),
                             ("httptools", "celery"), ("httptools", "h11"))))
        print()
        print("worker CPU/rt: the minimal worker's for the no-op row, the placement worker's "
              f"otherwise. On {os.cpu_count()} CPU(s) the shim's CPU competes with the single "
              "placement worker's, which bounds both acquire+release paths.")

        if args.profile > 0:
            from bench.shim_profile import report

            out = args.profile_out or tmp / "shim-stacks.txt"
            n, wall, shim_cpu = profile_shim(shims["httptools"].proc.pid, args.profile,
                                             makers["httptools"], out)
            print()
            print(f"Where the uvloop + httptools shim's CPU goes: py-spy (--gil: the thread "
                  f"holding the GIL, 200 samples/s) over {wall:.0f} s of 8 http threads: {n} "
                  f"round trips ({n / wall:,.0f} rt/s), shim CPU {shim_cpu / n * 1000:.2f} ms "
                  "per round trip (under the sampler)")
            print()
            print(report(out, shim_cpu / n))
        return 0
    finally:
        app.close()
        minimal_app.close()
        for shim in shims.values():
            shim.stop()
        placement.stop()
        queries.stop()
        minimal.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
