"""Where the placement worker's time goes: section timers inside the worker, per round trip.

A private redis-server; one placement worker at a time (the documented command, no -P, on
`-A bench.placement_app`) started through bench/lib/worker_profile.py, which
times sections (the service and its parts, ledger calls, the journal and mirror saves, replies,
the result store, each Redis round trip, by thread) and cProfiles the worker's main thread. It
runs N 1-thread round trips of the bench no-op ×2 (bench.noop_placement) on one worker, then N
acquire+release round trips on another, and prints the sections per round trip of each, and
the top of each cProfile.

Options: --out DIR (where the sections and profiles are kept; a temporary directory by
default), --round-trips N (default 300), --mirror off (the mirror-off worker; default: the file
mirror), --no-cprofile (section timers only: cProfile inflates Python-heavy sections), --quick.

Run (from the repository root): .venv/bin/python -m bench.bench_worker_profile [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from bench import fleet_spec, table, write_pools
from bench.lib.clients import Clients, measure
from bench.lib.worker_profile import MODULE
from bench.lib.workers import PlacementWorker

WARM_UP = 10


class ProfiledWorker(PlacementWorker):
    """A PlacementWorker started through bench/lib/worker_profile.py with the same celery
    arguments; `stats_path` is where its sections go."""

    stats_path = ""

    def command(self) -> list[str]:
        python, dash_m, celery, *args = super().command()
        if (dash_m, celery) != ("-m", "celery"):
            raise RuntimeError(f"not a celery command line: {super().command()}")
        return [python, "-m", MODULE, self.stats_path, "--", *args]


def profile_run(server, pools_path: Path, outdir: Path, n: int, mirror: bool = True,
                cprofile: bool = True) -> None:
    import pstats

    from tests.support.procs import env_for

    per_kind: dict[str, dict[tuple[str, str], list[float]]] = {}
    for kind in ("noop", "acquire"):
        server.client().flushall()
        env = env_for(server.url, pools_path, VCM_BENCH_CPROFILE="1" if cprofile else "0",
                      VCM_MIRROR_FILE=str(outdir / f"ledger-{kind}.json") if mirror else "off")
        w = ProfiledWorker(env, "placement", name=f"profile-{kind}@bench")
        w.stats_path = target = str(outdir / f"worker-{kind}.json")
        w.start()
        apps = Clients.connect(server.url, minimal=False)
        try:
            measure(apps, kind, 1, WARM_UP)  # warm-up (counted in the sections)
            measure(apps, kind, 1, n)
        finally:
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
    total = n + WARM_UP
    for key in keys:
        cells = [key[0], key[1]]
        for kind in ("noop", "acquire"):
            calls, secs, cpu = per_kind[kind].get(key, [0, 0.0, 0.0])
            cells += [f"{calls / total:.2f}", f"{secs / total * 1e3:.3f}",
                      f"{cpu / total * 1e3:.3f}"]
        rows.append(cells)
    print(f"\nWorker sections per round trip ({total} round trips incl. {WARM_UP} warm-up, 1 "
          f"thread, {'file mirror' if mirror else 'mirror off'}; "
          f"{'cProfile on, times inflated' if cprofile else 'no cProfile'}; worker start-up "
          "included). Wall and CPU (thread_time) in ms; sections nest:\n")
    print(table(["thread", "section", "bench no-op ×2 calls/rt", "wall", "CPU",
                 "acq+rel calls/rt", "wall", "CPU"], rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_worker_profile",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="keep the sections and profiles here")
    ap.add_argument("--round-trips", type=int, default=300, help="of each kind (default 300)")
    ap.add_argument("--mirror", choices=("file", "off"), default="file")
    ap.add_argument("--no-cprofile", action="store_true", help="section timers only")
    ap.add_argument("--quick", action="store_true", help="50 round trips of each kind")
    args = ap.parse_args(argv)

    from tests.support.procs import RedisServer

    tmp = Path(tempfile.mkdtemp(prefix="vcm-bench-profile-"))
    outdir = (args.out or tmp).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    server = RedisServer().start()
    try:
        pools_path = write_pools(tmp / "pools.yaml", fleet_spec(
            20, 10, 32, vcpus=512, memory=4096, storage=50000))
        profile_run(server, pools_path, outdir, 50 if args.quick else args.round_trips,
                    mirror=args.mirror != "off", cprofile=not args.no_cprofile)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
