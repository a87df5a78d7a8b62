"""`make bench`: run every benchmark and print its tables.

(a) bench/bench_placement.py   placement decisions/s, 10,000 active leases against 100
(b) bench/bench_celery.py      acquire+release round trips through the real worker, started both
                               documented ways, against a minimal Celery app's no-op task
(c) bench/bench_http.py        the HTTP shim over Celery, and uvicorn's asyncio + h11 against
                               uvloop + httptools
(d) bench/bench_wait.py        release-to-grant lag of a waiting request
(e) bench/bench_mirror.py      the ledger mirror: API writes and throughput
(f) bench/bench_inventory.py   the live vCenter health sync of 4 simulated vCenters: its time
                               and round trips, and placement latency while syncs run
(g) bench/bench_controller.py  the Lease controller: create -> Fulfilled, and the delete of a
                               blocking Lease -> the waiting one Fulfilled, watched as a CI
                               step watches, against the task API's acquire
(h) bench/bench_scrape.py      a /metrics scrape at 10,000 leases: what it reads of Redis
                               (bytes, commands, time inside Redis) against reading every
                               lease record whole

Not run here (longer, for digging into (b)): bench/bench_celery_settings.py, what each Celery
setting costs; bench/bench_worker_profile.py, the placement worker's time by section.

Each runs as its own process, `python -m bench.NAME` from the repository root (its own
redis-server, workers and Celery client), and prints markdown tables. A target that is missed
is printed as "BELOW TARGET" and does not fail the run; the exit status is non-zero only when a
benchmark itself fails (crash, timeout).

Usage, from the repository root (as `make bench` runs it):
    .venv/bin/python -m bench.run [--quick] \
        [--only placement|celery|http|wait|mirror|inventory|controller|scrape]
The machine is usually shared: read ratios against the baselines measured in the same run, not
absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BELOW = "BELOW TARGET"
BENCHES = [  # (key, title, script)
    ("placement", "(a) Placement decisions per second: 10,000 active leases against 100",
     "bench_placement.py"),
    ("celery", "(b) acquire+release through the real placement worker, against a minimal Celery "
     "app's no-op task", "bench_celery.py"),
    ("http", "(c) HTTP shim; uvicorn asyncio + h11 against uvloop + httptools "
     "(bench/bench_http.py)", "bench_http.py"),
    ("wait", "(d) release-to-grant lag of a waiting request (bench/bench_wait.py)",
     "bench_wait.py"),
    ("mirror", "(e) ledger mirror: API writes and throughput (bench/bench_mirror.py)",
     "bench_mirror.py"),
    ("inventory", "(f) live vCenter health sync", "bench_inventory.py"),
    ("controller", "(g) the Lease controller: create -> Fulfilled, unblocked -> Fulfilled "
     "(bench/bench_controller.py)", "bench_controller.py"),
    ("scrape", "(h) a /metrics scrape at 10,000 leases: Redis reads against every record "
     "(bench/bench_scrape.py)", "bench_scrape.py"),
]


def run_one(script: Path, args: list[str], timeout: float) -> tuple[int, str]:
    """Run a benchmark script as a module from the repository root (`python -m bench.NAME`:
    the root is on its import path the standard way), echoing its output as it comes; returns
    (status, output)."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    module = f"{HERE.name}.{script.stem}"
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        status = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        reader.join(5)
        lines.append(f"\n{script.name}: timed out after {timeout:.0f} s\n")
        print(lines[-1], end="")
        return 124, "".join(lines)
    reader.join(10)
    return status, "".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description="run the benchmarks")
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes")
    ap.add_argument("--only", choices=[b[0] for b in BENCHES], action="append",
                    help="run only this benchmark (repeatable)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per benchmark")
    args = ap.parse_args(argv)

    started = time.monotonic()
    summary: list[tuple[str, str]] = []
    failed = False
    for key, title, name in BENCHES:
        if args.only and key not in args.only:
            continue
        script = HERE / name
        if not script.exists():
            summary.append((title, "not present, skipped"))
            continue
        print(f"\n## {title}\n", flush=True)
        t0 = time.monotonic()
        # --quick goes only to a script that documents it
        quick = args.quick and "--quick" in script.read_text(errors="replace")
        status, output = run_one(script, ["--quick"] if quick else [], args.timeout)
        took = time.monotonic() - t0
        below = sum(1 for line in output.splitlines() if BELOW in line and "|" in line)
        if status != 0:
            failed = True
            summary.append((title, f"ERROR: exit status {status} ({took:.0f} s)"))
        elif below:
            summary.append((title, f"{below} row(s) {BELOW} ({took:.0f} s)"))
        else:
            summary.append((title, f"all targets met ({took:.0f} s)"))

    print("\n## Summary\n")
    width = max(len(t) for t, _ in summary) if summary else 0
    for title, result in summary:
        print(f"- {title.ljust(width)}  {result}")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
