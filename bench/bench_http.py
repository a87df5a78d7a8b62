"""(c) The HTTP shim's overhead: acquire+release round trips over HTTP against the same round
trips sent straight to Celery, in the same run, with 16 concurrent clients each.

A private redis-server, one placement worker (`-P solo -c 1`), one queries worker, and the shim
(`python -m api_shim`, what `vcm api` runs: uvicorn, one process) on a free port. A round trip:

- http:   POST /acquire {...}, then POST /release {"lease-ids": [...]}  (httpx, keep-alive,
          one client per thread);
- celery: send_task("vcm.acquire") + get(), then send_task("vcm.release") + get()  (one Celery
          client app, one thread each: what a job step does).

Measurements alternate (celery, http, celery, http, ...) so that drift on a shared machine hits
both; the table pools all rounds of each. The ratio http/celery is the shim's cost: the
placement worker is the same single consumer either way, so it bounds both.

Run: .venv/bin/python bench/bench_http.py [--clients 16] [--round-trips 1600] [--rounds 2]
                                          [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fleet_spec, fmt_ms, fmt_rate, percentile, table, write_pools  # noqa: E402

TIMEOUT = 60.0
REQUEST = {"vcpus": 2, "memory": 4, "storage": 10}


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, make_client, clients: int, total: int) -> tuple[float, list[float]]:
    """`total` round trips over `clients` threads; returns wall seconds and latencies."""
    fn = http_round_trip if kind == "http" else celery_round_trip
    per = max(1, total // clients)
    lat: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def run(tid: int) -> None:
        mine: list[float] = []
        client = make_client()
        try:
            fn(client, tid)  # warm: connection, first request
            barrier.wait()
            for _ in range(per):
                t0 = time.perf_counter()
                fn(client, tid)
                mine.append(time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            barrier.abort()
        finally:
            if kind == "http":
                client.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{kind}: {errors[0]!r}") from errors[0]
    return wall, lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--round-trips", type=int, default=1600, help="per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="measurements of each kind")
    ap.add_argument("--quick", action="store_true", help="400 round trips, one round")
    args = ap.parse_args()
    if args.quick:
        args.round_trips, args.rounds = 400, 1

    import httpx
    from celery import Celery

    from api_shim.bridge import make_celery  # noqa: F401 - the shim imports cleanly here
    from tests.support.procs import RedisServer, Worker, env_for, free_port, wait_for
    from workers.adapters.ledger import Ledger

    tmp = Path(tempfile.mkdtemp(prefix="vcm-bench-http-"))
    redis = RedisServer().start()
    pools = write_pools(tmp / "pools.yaml", fleet_spec(6, 3, 64))
    env = env_for(redis.url, pools, VCM_MIRROR_FILE=str(tmp / "ledger.json"))
    placement = Worker(env, "placement", name="bench-http-placement@bench").start(wait=False)
    queries = Worker(env, "queries", pool="threads", concurrency=4,
                     name="bench-http-queries@bench").start(wait=False)
    port = free_port()
    api_log = open(tmp / "api.log", "ab")  # noqa: SIM115 - closed below
    api = subprocess.Popen([sys.executable, "-m", "api_shim", "--port", str(port),
                            "--log-level", "warning"], cwd=str(Path(__file__).parent.parent),
                           env=env, stdout=api_log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    app = Celery("vcm-bench-http", broker=redis.url, backend=redis.url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = redis.url
    try:
        placement.wait_ready()
        queries.wait_ready()
        wait_for(lambda: httpx.get(url + "/readyz", timeout=5).status_code == 200, timeout=30,
                 what="the API to be ready")
        makers = {"http": lambda: httpx.Client(base_url=url, timeout=TIMEOUT),
                  "celery": lambda: app}
        results: dict[str, list[tuple[float, list[float]]]] = {"celery": [], "http": []}
        cpu: dict[str, dict[str, float]] = {k: {"worker": 0.0, "shim": 0.0, "clients": 0.0}
                                            for k in results}
        procs = {"worker": placement.proc.pid, "shim": api.pid, "clients": os.getpid()}
        order = [k for _ in range(args.rounds) for k in ("celery", "http")]
        for i, kind in enumerate(order):
            before = {name: cpu_seconds(pid) for name, pid in procs.items()}
            wall, lat = measure(kind, makers[kind], args.clients, args.round_trips)
            for name, pid in procs.items():
                cpu[kind][name] += cpu_seconds(pid) - before[name]
            results[kind].append((wall, lat))
            print(f"  round {i // 2 + 1} {kind:6s}: {len(lat) / wall:,.0f} round trips/s",
                  flush=True)
        leftover = Ledger(redis.client()).audit()["leases"]
        if leftover:
            raise RuntimeError(f"{len(leftover)} leases left after the benchmark")

        rows, stats = [], {}
        for kind in ("celery", "http"):
            wall = sum(w for w, _ in results[kind])
            lat = [x for _, xs in results[kind] for x in xs]
            stats[kind] = (len(lat) / wall, percentile(lat, 50), percentile(lat, 99))
            rate, p50, p99 = stats[kind]
            label = ("HTTP shim (POST /acquire + POST /release)" if kind == "http"
                     else "Celery send_task + get (vcm.acquire + vcm.release)")
            per = {name: used / len(lat) for name, used in cpu[kind].items()}
            rows.append([label, len(lat), fmt_rate(rate), fmt_ms(p50), fmt_ms(p99),
                         fmt_ms(per["worker"]), fmt_ms(per["shim"]) if kind == "http" else "-",
                         fmt_ms(per["clients"])])
        (c_rate, c50, c99), (h_rate, h50, h99) = stats["celery"], stats["http"]
        rows.append(["ratio http / celery", "", f"{h_rate / c_rate:.2f}×", f"{h50 / c50:.2f}×",
                     f"{h99 / c99:.2f}×", "", "", ""])
        print()
        print(f"{args.clients} concurrent clients, {args.rounds} round(s) of "
              f"{args.round_trips} acquire+release round trips each, alternating; one "
              "placement worker (solo), file mirror on")
        print()
        print(table(["path", "round trips", "round trips/s", "p50", "p99",
                     "worker CPU/rt", "shim CPU/rt", "client CPU/rt"], rows))
        print()
        print(f"The shim keeps {h_rate / c_rate:.0%} of the direct Celery throughput; its "
              f"median round trip costs {(h50 - c50) * 1000:+.2f} ms more. On {os.cpu_count()} "
              "CPU(s) the shim's CPU competes with the single placement worker's, which bounds "
              "both paths.")
        return 0
    finally:
        app.close()
        api.terminate()
        try:
            api.wait(15)
        except subprocess.TimeoutExpired:
            api.kill()
        api_log.close()
        placement.stop()
        queries.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
