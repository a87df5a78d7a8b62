"""(f) The live vCenter health sync: its cost, and that it never holds up placement.

Four govmomi vCenter simulators (tests/vcsim), each 2 datacenters × 4 clusters × 8 hosts, a
datastore and 2 distributed port groups with VLANs per cluster; one pool per cluster (32 pools).
tests.support's Stack runs a redis-server, the placement worker (`celery -A tasks worker -Q
placement --concurrency 1`) and a queries worker (threads) with VCM_VCENTER_CREDENTIALS for the
4 simulators; no beat.

1. A sync of the 4 vCenters, cold (login, ContainerView) and warm (median of several), as
   `sync()` in this process (fresh Sessions) and as `vcm.sync_inventory` sent to the queries
   worker (client round trip; its cold one also imports pyvmomi). Round trips: the calls each
   simulator counted in the syncing session (SessionManager.sessionList[].callCount, read
   through a session of our own); counted from Login, so the service-content fetch before it
   is not in the cold figure.
2. acquire+release round trips from one client thread with no sync, and while
   `vcm.sync_inventory` is sent to the queries queue back to back, interleaved (the order
   reversed every other time). Target: p50 and p99 with syncs <= 1.1× without. The CPU each
   part used shows where a slowdown comes from.

Every sync is checked: it answered for all 32 pools and stored `ok` health for each, read after
it was sent (Ledger.health() through core.health.effective).

Usage (from the repository root): .venv/bin/python -m bench.bench_inventory [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from bench import BELOW, fmt_ms, median, percentile, table
from bench.lib.clients import Clients, client_app, measure
from bench.lib.cpu import CpuMeter

TARGET = 1.1  # placement latency with syncs running, × without
USER, PASSWORD = "vcm", "vcm-secret"
VCENTERS, DATACENTERS, CLUSTERS, HOSTS, PORT_GROUPS = 4, 2, 4, 8, 2
HOST = {"cores": 16, "threads": 32, "mhz": 2400, "memory_gb": 256}
STALE = 1800.0
LABELS = {"redis": "redis-server", "client": "this process"}
TIMEOUT = 120.0


def clusters(dc: int) -> list[tuple[str, str, dict[str, int]]]:
    """(cluster, datastore, port group -> VLAN) of datacenter `dc`; port groups are unique in a
    vCenter."""
    return [(f"dc{dc}-c{c}", f"dc{dc}-ds{c}",
             {f"dc{dc}-c{c}-pg{k}": 1000 + 100 * dc + 10 * c + k for k in range(PORT_GROUPS)})
            for c in range(CLUSTERS)]


def inventory() -> dict[str, Any]:
    """A simulator's inventory (tests/vcsim's JSON format)."""
    return {"datacenters": [{
        "name": f"dc{d}",
        "clusters": [{"name": c, "hosts": [HOST] * HOSTS} for c, _, _ in clusters(d)],
        "datastores": [{"name": ds, "capacity_gb": 4096, "free_gb": 3000}
                       for _, ds, _ in clusters(d)],
        "portgroups": [pg for _, _, pgs in clusters(d) for pg in pgs],
        "vlans": {pg: v for _, _, pgs in clusters(d) for pg, v in pgs.items()},
    } for d in range(DATACENTERS)]}


def pools_spec(addresses: list[str]) -> dict[str, Any]:
    """One pool per cluster of every vCenter."""
    return {"pools": [
        {"name": f"vc{i}-{cluster}", "vcenter": addr, "datacenter": f"dc{d}", "cluster": cluster,
         "datastore": ds, "vcpus": 64, "memory": 512, "storage": 1000,
         "networks": [{"port-group": pg, "vlan": v} for pg, v in pgs.items()]}
        for i, addr in enumerate(addresses) for d in range(DATACENTERS)
        for cluster, ds, pgs in clusters(d)]}


class Calls:
    """API calls per session, as each simulator counts them, seen through a session of our own
    (its own calls are left out)."""

    def __init__(self, sims: list[Any]) -> None:
        from pyVim.connect import SmartConnect

        self.sis = [SmartConnect(host=s.host, port=s.port, user=USER, pwd=PASSWORD,
                                 disableSslCertValidation=True) for s in sims]

    def snapshot(self) -> list[dict[str, int]]:
        out = []
        for si in self.sis:
            sm = si.RetrieveContent().sessionManager
            own = sm.currentSession.key
            out.append({s.key: s.callCount for s in sm.sessionList if s.key != own})
        return out

    def since(self, before: list[dict[str, int]]) -> list[int]:
        """Calls each vCenter has had from other sessions since `before` (new sessions whole)."""
        return [sum(n - old.get(key, 0) for key, n in now.items())
                for old, now in zip(before, self.snapshot(), strict=True)]

    def close(self) -> None:
        from pyVim.connect import Disconnect

        for si in self.sis:
            Disconnect(si)


class Checker:
    """Whether a sync answered for every pool and stored fresh `ok` health for all of them."""

    def __init__(self, redis_client: Any, names: set[str]) -> None:
        from workers.adapters.ledger import Ledger

        self.ledger, self.names, self.count = Ledger(redis_client), names, 0
        self.bad: list[str] = []

    def timed(self, run: Callable[[], dict[str, Any]]) -> float:
        """Run a sync, check it; its seconds."""
        from workers.core import health

        sent_at, t0 = time.time(), time.perf_counter()
        result = run()
        took = time.perf_counter() - t0
        records = self.ledger.health()
        stale = sorted(vc for vc, r in records.items() if not (r.get("at") or 0) >= sent_at)
        ok = {n for n, h in health.effective(records, time.time(), STALE).items()
              if h.state == health.OK}
        self.count += 1
        if result.get("errors") or sum(result.get("synced", {}).values()) != len(self.names) \
                or stale or ok != self.names:
            self.bad.append(f"sync {self.count}: {result}; stale {stale}; "
                            f"{len(self.names - ok)} pool(s) not ok")
        return took


def timed_syncs(run: Callable[[], dict[str, Any]], warm: int, calls: Calls,
                checker: Checker) -> tuple[list[float], list[list[int]]]:
    """One cold sync then `warm` more: seconds and calls per vCenter of each (cold first)."""
    times, rts = [], []
    for _ in range(1 + warm):
        before = calls.snapshot()
        times.append(checker.timed(run))
        rts.append(calls.since(before))
    return times, rts


@contextlib.contextmanager
def syncing(app: Any, checker: Checker, times: list[float]) -> Iterator[None]:
    """Sends vcm.sync_inventory to the queries queue back to back until the block ends."""
    stop, errors = threading.Event(), list[BaseException]()

    def loop() -> None:
        try:
            while not stop.is_set():
                times.append(checker.timed(lambda: app.send_task(
                    "vcm.sync_inventory", queue="queries").get(timeout=TIMEOUT)))
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(TIMEOUT)
    if errors:
        raise RuntimeError(f"sync failed: {errors[0]!r}") from errors[0]


class Cpu:
    """CPU seconds used so far: the workers (whole process groups), redis-server and this
    process (bench/lib/cpu.py's CpuMeter), the simulators (children of this process), and the
    whole machine, every user's processes included (/proc/stat)."""

    def __init__(self, workers: dict[str, int], redis_client: Any) -> None:
        self.meter, self.tick = CpuMeter(workers, redis_client), os.sysconf("SC_CLK_TCK")

    def _simulators(self) -> float:
        me, total = str(os.getpid()), 0
        for entry in os.scandir("/proc"):
            try:
                comm, rest = Path(entry.path, "stat").read_text().split(" (", 1)[1].rsplit(
                    ") ", 1)
            except (OSError, IndexError, ValueError):
                continue
            fields = rest.split()
            if comm.startswith("vcsim") and fields[1] == me:
                total += int(fields[11]) + int(fields[12])
        return total / self.tick

    def read(self) -> dict[str, float]:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return {**self.meter.read(), "simulators": self._simulators(),
                "machine": (sum(ticks) - ticks[3] - ticks[4]) / self.tick}


def spread(values: list[int]) -> str:
    return str(min(values)) if min(values) == max(values) else f"{min(values)}–{max(values)}"


def sync_cost(stack: Any, calls: Calls, checker: Checker, warm: int) -> None:
    from workers.adapters.pools_file import load_pools
    from workers.adapters.vcenter.access import plan
    from workers.adapters.vcenter.inventory import sync
    from workers.adapters.vcenter.sessions import Sessions
    from workers.settings import Settings

    pools, sessions, app = load_pools(str(stack.pools)), Sessions(), stack.app
    access = plan((p.vcenter for p in pools), Settings.from_env(stack.env))
    runs = {
        "`sync()` in this process": lambda: sync(
            pools, access, checker.ledger, {}, sessions=sessions).to_dict(),
        "`vcm.sync_inventory` via the queries worker": lambda: app.send_task(
            "vcm.sync_inventory", queue="queries").get(timeout=TIMEOUT),
    }
    rows = []
    for label, run in runs.items():
        times, rts = timed_syncs(run, warm, calls, checker)
        sessions.close()  # this process's sessions, logged out before the worker's syncs
        rows.append([label, fmt_ms(times[0]), fmt_ms(median(times[1:])), fmt_ms(max(times[1:])),
                     ", ".join(map(str, rts[0])), spread([n for r in rts[1:] for n in r])])
    print(f"\nA sync of all {VCENTERS} vCenters ({len(pools)} pools); round trips per vCenter "
          f"(cold: each of the {VCENTERS})\n")
    print(table(["sync", "cold (login, view)", "warm p50", "warm max", "round trips cold",
                 "round trips warm"], rows))


def placement_during_syncs(stack: Any, calls: Calls, checker: Checker, pairs: int,
                           per_phase: int) -> None:
    apps, sync_app, sync_times = Clients(stack.app), client_app(stack.redis.url), list[float]()
    measure(apps, "acquire", 1, 10)  # warm-up
    cpu = Cpu({"placement worker": stack.procs[0].proc.pid,
               "queries worker": stack.procs[1].proc.pid}, stack.redis.client())
    lat: dict[bool, list[float]] = {False: [], True: []}
    used: dict[bool, dict[str, float]] = {False: {}, True: {}}
    wall = {False: 0.0, True: 0.0}
    before = calls.snapshot()
    for rep in range(pairs):
        for with_sync in (False, True) if rep % 2 == 0 else (True, False):
            c0, t0 = cpu.read(), time.perf_counter()
            with (syncing(sync_app, checker, sync_times) if with_sync
                  else contextlib.nullcontext()):
                lat[with_sync] += measure(apps, "acquire", 1, per_phase)[1]
            wall[with_sync] += time.perf_counter() - t0
            for name, x in cpu.read().items():
                used[with_sync][name] = used[with_sync].get(name, 0.0) + x - c0[name]
    syncs = max(1, len(sync_times))
    per_sync = "/".join(f"{n / syncs:.1f}" for n in calls.since(before))
    sync_app.close()
    p = {k: (percentile(v, 50), percentile(v, 99)) for k, v in lat.items()}
    print("\nPlacement: acquire+release round trips, 1 client thread\n")
    print(table(["", "round trips", "p50", "p99", "syncs meanwhile"], [
        ["no sync", len(lat[False]), fmt_ms(p[False][0]), fmt_ms(p[False][1]), "-"],
        ["syncs back to back", len(lat[True]), fmt_ms(p[True][0]), fmt_ms(p[True][1]),
         f"{len(sync_times)} (p50 {fmt_ms(median(sync_times))}, {per_sync} round trips per "
         "vCenter each)"]]))
    print()
    ratios = [("p50", p[True][0] / p[False][0]), ("p99", p[True][1] / p[False][1])]
    print(table(["placement latency", "with syncs / no sync", "target", ""],
                [[q, f"{r:.2f}×", f"<= {TARGET}×", "ok" if r <= TARGET else BELOW]
                 for q, r in ratios]))
    print(f"\nCPU, in cores busy ({os.cpu_count()} cores; `machine` counts every user's "
          "processes; in production the vCenters run elsewhere)\n")
    print(table(["", *(LABELS.get(k, k) for k in used[False])],
                [[label, *(f"{x / wall[k]:.2f}" for x in used[k].values())]
                 for k, label in ((False, "no sync"), (True, "syncs back to back"))]))
    print(f"\nCPU per sync: queries worker {fmt_ms(used[True]['queries worker'] / syncs)}, "
          f"simulators {fmt_ms(used[True]['simulators'] / syncs)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_inventory",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    args = ap.parse_args(argv)
    warm, pairs, per_phase = (3, 2, 40) if args.quick else (10, 4, 120)

    from tests.support.procs import Stack
    from tests.vcsim import Simulator, Unavailable

    started = time.perf_counter()
    sims = [Simulator(inventory(), user=USER, password=PASSWORD) for _ in range(VCENTERS)]
    tmp = tempfile.mkdtemp(prefix="vcm-bench-inventory-")
    stack: Stack | None = None
    calls: Calls | None = None
    try:
        try:
            with ThreadPoolExecutor(VCENTERS) as ex:
                list(ex.map(lambda s: s.start(timeout=600), sims))
        except Unavailable as exc:
            print(f"vCenter simulator unavailable: {exc}")
            return 1
        addresses = [s.address for s in sims]
        stack = Stack(Path(tmp), yaml.safe_dump(pools_spec(addresses), sort_keys=False),
                      VCM_VCENTER_CREDENTIALS=",".join(f"{a}={USER}:{PASSWORD}"
                                                       for a in addresses),
                      VCM_VCENTER_CA_CERTS=str(sims[0].ca_file))
        names = {p["name"] for p in pools_spec(addresses)["pools"]}
        checker, calls = Checker(stack.redis.client(), names), Calls(sims)
        print(f"{VCENTERS} simulated vCenters × {DATACENTERS} datacenters × {CLUSTERS} clusters "
              f"× {HOSTS} hosts, a datastore and {PORT_GROUPS} port groups per cluster; "
              f"{len(names)} pools; {warm} warm syncs after the cold one; placement: {pairs} × "
              f"{per_phase} round trips with and without syncs, interleaved")
        sync_cost(stack, calls, checker, warm)
        placement_during_syncs(stack, calls, checker, pairs, per_phase)
        print(f"\nEvery sync ({checker.count}) stored ok health for all {len(names)} pools: "
              + ("yes" if not checker.bad else f"NO, {len(checker.bad)} failed:\n  "
                 + "\n  ".join(checker.bad[:5])))
        print(f"\n({time.perf_counter() - started:.0f} s)")
        return 0 if not checker.bad else 1
    finally:
        if calls is not None:
            calls.close()
        if stack is not None:
            stack.stop()
        for sim in sims:
            sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
