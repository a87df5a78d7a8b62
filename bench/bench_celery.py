"""(b) acquire+release round trips through the real placement worker, against a minimal Celery app.

A private redis-server; on it, the placement worker and, as the baseline, a minimal Celery app's
worker (bench/minimal_app.py: `Celery("minimal", broker=url, backend=url)`, JSON serializers and
task_acks_late, nothing else of celeryconfig: no task_track_started, no task events, no
result_extended; `celery -A bench.minimal_app worker -Q minimal -P solo -c 1`). Client threads in
this process use two client apps: ours (celeryconfig) and the minimal one (bench/lib/clients.py).

A round trip is: send vcm.acquire, get the result, send vcm.release for what it got, get the
result. The baseline round trip sends two minimal.noop tasks the same way (as many task round
trips, same Redis). A second baseline, for reference, is two bench.noop_placement tasks on the
placement worker itself: it pays our configuration too, so its ratio does not show it. The
three kinds are measured interleaved (minimal, acquire, own no-op, then the reverse), acquire
always next to both baselines; rates are medians, and a ratio is the median of the adjacent
acquire/baseline pairs. Target: >= 0.6 against the minimal no-op.

The placement worker is started both ways users start it: the documented command
`celery -A tasks worker -Q placement --concurrency 1` (no -P: Celery's default prefork pool,
which the worker replaces with solo itself) and `-P solo -c 1` as `vcm run` does, each with
`-A bench.placement_app` (tasks.app plus the bench no-op) for `-A tasks`. Both add -n, -l info,
--without-mingle, --without-gossip and -E, as `vcm run` does; the minimal worker gets the same
flags except -E. Its mirror is the product's default, the file mirror (VCM_MIRROR_FILE): each
acquire/release is appended to the mirror's journal (fdatasync'd) before it is answered;
--mirror off|both adds VCM_MIRROR_FILE=off rows.

Also printed: CPU per round trip of each worker (its whole process group), redis-server and
this process; and, with MONITOR on, the commands Redis receives per round trip of each kind,
split into client, serving worker, inside-Lua and the idle worker (first configuration only).

Options: --quick (fewer round trips), --reps N, --preload N (N active leases in the ledger
before the worker starts, to see whether the cost grows with them), --only documented|solo,
--mirror file|off|both.

Elsewhere: what each Celery setting costs is bench/bench_celery_settings.py; where the
placement worker's time goes, section by section, is bench/bench_worker_profile.py.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

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
from bench.lib.clients import KINDS, REQUEST, Clients, measure
from bench.lib.cpu import CpuMeter
from bench.lib.redis_commands import count_commands
from bench.lib.workers import PlacementWorker, banner_pool, minimal_worker, task_runtimes

TARGET = 0.6  # against the minimal app's no-op


# how the placement worker is started: label -> (-P value or None for none, description)
COMMANDS: dict[str, tuple[str | None, str]] = {
    "documented": (None, "`celery -A tasks worker -Q placement --concurrency 1` (the documented "
                         "command: no -P, Celery's default prefork; the worker switches itself "
                         "to the solo pool), on -A bench.placement_app"),
    "-P solo": ("solo", "`celery -A tasks worker -Q placement -P solo -c 1` (as `vcm run` "
                        "starts it), on -A bench.placement_app"),
}
MINIMAL = "minimal no-op ×2"
OWN = "vs our own no-op ×2 (bench.noop_placement, pays our configuration)"


def preload(server, pools_path: Path, n: int) -> None:
    """Put n active leases into the (empty) ledger, as the mirror restore would."""
    if n <= 0:
        return
    from workers.adapters.ledger import Ledger
    from workers.adapters.pools_file import load_pools
    from workers.core.grants import make_lease
    from workers.core.parsing import parse_request

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
    server.client().flushall()
    preload(server, pools_path, preload_n)
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    worker = PlacementWorker(env, "placement", name=f"bench-{slug}@bench", pool=pool)
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
          "second row of each pair is against our own no-op (bench.noop_placement, "
          "registered by bench/placement_app.py) on the placement worker, which pays our "
          "configuration (track_started, worker events, result_extended).")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_celery",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few round trips (smoke test)")
    ap.add_argument("--reps", type=int, default=5, help="measurements of each kind")
    ap.add_argument("--preload", type=int, default=0, help="active leases before the start")
    ap.add_argument("--only", choices=("documented", "solo"),
                    help="one start command of the placement worker")
    ap.add_argument("--mirror", choices=("file", "off", "both"), default="file",
                    help="the placement worker's mirror (default: file, the product default)")
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
