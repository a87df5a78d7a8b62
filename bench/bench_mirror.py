"""The ledger mirror's cost: API writes per 1,000 placements, and acquire throughput with the
mirror on (ConfigMap, file) against off, as ratios, in the same run.

Three placement workers (`celery -A tasks worker -Q placement -P solo`, tests.support's Worker),
each on its own redis-server, started together and measured in turns (the order rotates every
round) so that the machine's noise falls on all three alike:

- `configmap`: VCM_CONFIGMAP, the unmodified kubernetes client over HTTP to
  tests/support/kube_apiserver.py (in this process); every answer waits for the save covering it;
- `file`: VCM_MIRROR_FILE: each change is appended to the journal (fdatasync) before its
  answer; whole snapshots (temp file, fsync, rename) only compact the journal;
- `off`: VCM_MIRROR_FILE=off, answers go out at once (the baseline).

Two loads, each starting from an empty ledger (everything is released in between):
- `burst`: 1,000 acquires sent at once by 10 client threads (100 each), then all answers read.
  Group commit: one save covers every change made while the previous one was in flight;
- `1 client`: one client thread, acquire after acquire (each answer needs its own save or
  journal append).

Usage (from the repository root): .venv/bin/python -m bench.bench_mirror [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import fleet_spec, fmt_ms, fmt_rate, median, percentile, table, write_pools
from tests.support.audit import audit

REQUEST = {"vcpus": 1, "memory": 1, "storage": 1, "networks": 0}
TIMEOUT = 300.0
NS, NAME = "vcm-bench", "ledger"
CONFIGS = ("configmap", "file", "off")


class Target:
    """One configuration: its redis-server, placement worker and Celery client."""

    def __init__(self, label: str, pools: Path, tmp: Path, kube) -> None:
        from celery import Celery

        from tests.support.procs import RedisServer, Worker, env_for

        self.label = label
        self.kube = kube if label == "configmap" else None
        self.redis = RedisServer().start()
        extra = {"off": {"VCM_MIRROR_FILE": "off"},
                 "file": {"VCM_MIRROR_FILE": str(tmp / "ledger.json")},
                 "configmap": {"VCM_CONFIGMAP": f"{NS}/{NAME}", "VCM_MIRROR_FILE": "off",
                               "KUBECONFIG": str(kube.write_kubeconfig(tmp / "kubeconfig",
                                                                       namespace=NS))},
                 }[label]
        self.worker = Worker(env_for(self.redis.url, pools, **extra), "placement",
                             name=f"bench-{label}@bench")
        self.app = Celery("vcm-bench", broker=self.redis.url, backend=self.redis.url)
        self.app.config_from_object("celeryconfig")
        self.app.conf.broker_url = self.app.conf.result_backend = self.redis.url

    def start(self) -> None:
        self.worker.start(wait=False)

    def stop(self) -> None:
        self.app.close()
        self.worker.stop()
        self.redis.stop()

    def writes(self) -> int:
        return self.kube.writes if self.kube is not None else 0

    def saves(self) -> int:
        return int(self.redis.client().hget("vcm:mirror", "saves") or 0)

    def acquire(self, owner: str):
        return self.app.send_task("vcm.acquire", queue="placement",
                                  kwargs={"request": dict(REQUEST, owner=owner)})

    def release_all(self, owners: list[str]) -> None:
        sent = [self.app.send_task("vcm.release", queue="placement", kwargs={"owner": o})
                for o in owners]
        for r in sent:
            r.get(timeout=TIMEOUT)

    def burst(self, n: int, threads: int = 10) -> tuple[float, list[float]]:
        """n acquires, sent at once by `threads` threads; (wall seconds, latencies)."""
        lat: list[float] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        barrier = threading.Barrier(threads + 1)

        def client(k: int) -> None:
            try:
                barrier.wait()
                sent = [(time.perf_counter(), self.acquire(f"burst-{k}"))
                        for _ in range(n // threads)]
                mine = []
                for t0, r in sent:
                    r.get(timeout=TIMEOUT)
                    mine.append(time.perf_counter() - t0)
                with lock:
                    lat.extend(mine)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        pool = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        wall = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"{self.label}: burst failed: {errors[0]!r}") from errors[0]
        return wall, lat

    def sequential(self, n: int) -> tuple[float, list[float]]:
        lat = []
        t0 = time.perf_counter()
        for _ in range(n):
            t1 = time.perf_counter()
            self.acquire("seq").get(timeout=TIMEOUT)
            lat.append(time.perf_counter() - t1)
        wall = time.perf_counter() - t0
        return wall, lat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_mirror",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="measurements of each (best kept)")
    ap.add_argument("--burst", type=int, default=1000, help="acquires in a burst")
    ap.add_argument("--sequential", type=int, default=100, help="acquires by the lone client")
    ap.add_argument("--quick", action="store_true", help="1 round, smaller sizes (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.burst, args.sequential = 1, 300, 40

    from tests.support.kube_apiserver import KubeApiServer
    from tests.support.procs import wait_for
    from workers.adapters.mirror.configmap import ConfigMapMirror

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="vcm-bench-mirror-"))
    kube = KubeApiServer(keep_log=False).start()
    targets: dict[str, Target] = {}
    try:
        pools = write_pools(tmp / "pools.yaml", fleet_spec(20, 10, 4, vcpus=4096,
                                                           memory=65536, storage=10**6))
        for label in CONFIGS:
            (tmp / label).mkdir()
            targets[label] = Target(label, pools, tmp / label, kube)
            targets[label].start()
        for t in targets.values():
            t.worker.wait_ready(60)
        owners = {"burst": [f"burst-{k}" for k in range(10)], "1 client": ["seq"]}
        for t in targets.values():  # warm-up: connections, scripts, the first save
            t.sequential(10)
            t.burst(100)
            t.release_all(owners["burst"] + owners["1 client"])
        results: dict[tuple[str, str], list[tuple[float, list[float], int, int]]] = {}
        for rnd in range(args.rounds):
            order = CONFIGS[rnd % 3:] + CONFIGS[:rnd % 3]
            for load in ("burst", "1 client"):
                for label in order:
                    t = targets[label]
                    w0, s0 = t.writes(), t.saves()
                    if load == "burst":
                        wall, lat = t.burst(args.burst)
                        n = args.burst
                    else:
                        wall, lat = t.sequential(args.sequential)
                        n = args.sequential
                    # the answers are all in: every save covering the acquires is done
                    results.setdefault((label, load), []).append(
                        (n / wall, lat, t.writes() - w0, t.saves() - s0))
                    t.release_all(owners[load])  # the next measurement starts empty
        # the ConfigMap holds exactly the ledger (sanity check)
        cm = targets["configmap"]
        from workers.adapters.ledger import Ledger

        ledger = Ledger(cm.redis.client())
        with ConfigMapMirror(NS, NAME, api_client=kube.api_client()) as mirror:
            wait_for(lambda: {x["metadata"]["name"] for x in mirror.load()["leases"]}
                     == set(audit(ledger)["leases"]), timeout=30, what="mirror == ledger")

        rows = []
        for load in ("burst", "1 client"):
            n = args.burst if load == "burst" else args.sequential
            base = max(r[0] for r in results[("off", load)])
            for label in CONFIGS:
                runs = results[(label, load)]
                best = max(runs, key=lambda r: r[0])
                rate = best[0]
                writes = median([r[2] for r in runs]) * 1000 / n if label == "configmap" else None
                saves = median([r[3] for r in runs]) * 1000 / n if label != "off" else None
                rows.append([
                    load if load == "1 client" else f"burst of {n:,} (10 threads)",
                    {"configmap": "on (ConfigMap)", "file": "on (file)", "off": "off"}[label],
                    fmt_rate(rate), f"{rate / base:.2f}",
                    fmt_ms(percentile(best[1], 50)), fmt_ms(percentile(best[1], 99)),
                    "-" if saves is None else f"{saves:,.0f}",
                    "-" if writes is None else f"{writes:,.0f}",
                ])
        print(f"\n20 pools, request {REQUEST}; {args.rounds} round(s), configurations measured "
              "in turns, best rate kept; saves and API writes per 1,000 acquires: medians over "
              "the rounds (every measurement starts from an empty ledger)\n")
        print(table(["load", "mirror", "acquires/s", "vs off", "p50", "p99",
                     "saves / 1,000 acquires", "API writes / 1,000 acquires"], rows))
    finally:
        for t in targets.values():
            t.stop()
        kube.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
