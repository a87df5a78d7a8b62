"""What each non-default Celery setting of the placement path costs.

One redis-server; the minimal worker (database 0) and one `-P solo` placement worker per
variant, each on its own Redis database (its own queue, ledger and file mirror), all running at
once: `celery -A bench.placement_app worker -Q placement -P solo --concurrency 1 ...`, which is
tasks.app with VCM_BENCH_CELERY_CONF's settings applied over celeryconfig (the client app of
that variant gets the same overrides: task_send_sent_event is a client setting; -E is dropped
when worker_send_task_events is off). Every repetition measures, for each variant in turn (the
order reversed every other time), the minimal no-op ×2 and the variant's acquire+release
adjacent, at 1 and 8 threads; a variant's ratio is the median of its adjacent pairs, and "× as
configured" is that ratio over the as-configured one. Also printed: the placement worker's CPU
and the Redis commands (all clients, INFO commandstats) per round trip, 1 thread.

Options: --variant 'label={json}' adds a variant (repeatable), --variants-only measures only
those given (plus "as configured"), --reps N, --quick.

Run (from the repository root): .venv/bin/python -m bench.bench_celery_settings [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench import fleet_spec, fmt_ms, fmt_rate, median, table, write_pools
from bench.lib.clients import Clients, client_app, measure
from bench.lib.cpu import CpuMeter
from bench.lib.redis_commands import commandstats
from bench.lib.workers import PlacementWorker, minimal_worker

# each non-default setting of the placement path, flipped from what celeryconfig says
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
                   pools_path: Path) -> PlacementWorker:
    from tests.support.procs import env_for

    env = env_for(url, pools_path, VCM_MIRROR_FILE=mirror_file,
                  VCM_BENCH_CELERY_CONF=json.dumps(overrides))
    worker = PlacementWorker(env, "placement", name=name, pool="solo")
    worker.events = overrides.get("worker_send_task_events", True) is not False
    return worker


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
    ap = argparse.ArgumentParser(prog="python -m bench.bench_celery_settings",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few round trips (smoke test)")
    ap.add_argument("--reps", type=int, default=5, help="measurements of each variant")
    ap.add_argument("--variant", action="append", default=[], type=parse_variant,
                    metavar="LABEL=JSON", help="another variant")
    ap.add_argument("--variants-only", action="store_true",
                    help="only the --variant ones (and as configured)")
    args = ap.parse_args(argv)

    from tests.support.procs import RedisServer

    reps = 2 if args.quick else args.reps
    plan = [(1, 60), (8, 120)] if args.quick else [(1, 120), (8, 240)]
    server = RedisServer().start()
    tmp = Path(tempfile.mkdtemp(prefix="vcm-bench-settings-"))
    started = time.perf_counter()
    try:
        pools_path = write_pools(tmp / "pools.yaml", fleet_spec(
            20, 10, 32, vcpus=512, memory=4096, storage=50000))
        variants = {"as configured": {}} if args.variants_only else variants_of_config()
        variants.update(dict(args.variant))
        print("What each non-default Celery setting of the placement path costs; one -P solo "
              "placement worker per variant (see the module doc): " + ", ".join(variants))
        settings_run(server, pools_path, tmp, variants, plan, reps)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
