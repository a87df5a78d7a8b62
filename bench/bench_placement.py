"""(a) Placement decisions per second with 200 pools: 10,000 active leases against 100.

Three paths, each measured with 100 and with 10,000 leases in the same run, in interleaved
rounds (best round kept), reported as a ratio 10,000/100 that should be about 1:

- pure: `place()` on a Fleet (no I/O);
- ledger: one decision as a worker makes it on a cold cache: `Ledger.usage()` read, `place()`,
  leases made, `Ledger.commit()` (one Lua call), against a private redis-server that already
  holds the leases;
- service: `Capacity.acquire()` as the worker calls it (validation, cached usage, place,
  commit);
- refused: `Capacity.acquire()` of a whole pool that is in use: NoCapacity. A waiter that
  still does not fit is refused like this at every release; a current cache is trusted after
  one version read, so this must not grow with the leases either.

Cost is CPU time: this thread's (time.thread_time) plus, for the ledger and service paths, the
private redis-server's (INFO cpu), per decision. Wall time on a shared 2-core machine mostly
measures the neighbours. The leases a round makes are released after it, outside the
measurement. The breakdown adds a whole mirror write (snapshot + JSON file + fsync, wall time):
answers wait only for a journal append; whole writes compact the journal once it holds as many
records as there are leases, so their cost per change stays flat.

Every lease holds one port group, as the default request does, so 10,000 leases also means
10,000 port groups in use (pools have 64 each); a third ledger holds 10,000 leases without port
groups to separate the two effects.

Run (from the repository root): .venv/bin/python -m bench.bench_placement [--quick] [--no-redis]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import (
    fleet_spec,
    fmt_rate,
    fmt_us,
    median,
    table,
    verdict,
    write_pools,
)
from workers.core.fleet import Fleet, FreeNets
from workers.core.grants import make_lease
from workers.core.lease import lease_port_groups
from workers.core.models import Pool
from workers.core.parsing import parse_request
from workers.core.placement import place
from workers.core.pools import parse_pools

POOLS, VCENTERS, PORT_GROUPS = 200, 40, 64
FEW, MANY = 100, 10_000
TARGET = 0.85  # ratio 10,000/100; 1.0 is flat, the rest is noise allowance on a shared machine
SIZES = [(2, 8, 50), (4, 16, 100), (8, 32, 200), (4, 16, 0)]
REQUESTS = [  # what is being placed, in turn
    {"vcpus": 4, "memory": 16, "storage": 100},
    {"vcpus": 8, "memory": 32, "storage": 200, "vcenters": 2},
    {"vcpus": 2, "memory": 8, "pool-selector": {"region": "east"}},
]


def make_leases(pools: list[Pool], n: int, seed: int, nets: bool = True) -> list[dict]:
    """n leases spread unevenly over the pools, never above 80 % of any budget, each with one
    free single-tenant port group (or none, with nets=False)."""
    rng = random.Random(seed)
    weights = [1 + (i * 7919) % 5 for i in range(len(pools))]  # uneven but deterministic
    used = {p.name: [0, 0, 0] for p in pools}
    free = {p.name: list(p.networks_of("single-tenant")) for p in pools}
    now = time.time()
    out = []
    while len(out) < n:
        pool = rng.choices(pools, weights)[0]
        vcpus, memory, storage = rng.choice(SIZES)
        u = used[pool.name]
        if ((nets and not free[pool.name]) or u[0] + vcpus > 0.8 * pool.vcpu_capacity
                or u[1] + memory > 0.8 * pool.memory or u[2] + storage > 0.8 * pool.storage):
            continue
        u[0] += vcpus
        u[1] += memory
        u[2] += storage
        i = len(out)
        req = parse_request({"vcpus": vcpus, "memory": memory, "storage": storage,
                             "networks": 1 if nets else 0,
                             "owner": f"job-{i % 97}", "request-id": f"seed-{seed}-{i}"})
        held = [free[pool.name].pop(0)] if nets else []
        out.append(make_lease(f"l{seed}-{i:05d}", req, pool, held, now))
    return out


def fleet_of(pools: dict[str, Pool], leases: list[dict]) -> Fleet:
    fleet = Fleet(pools)
    for lease in leases:
        st, sp = lease["status"], lease["spec"]
        fleet.usage[st["pool"]] = fleet.used(st["pool"]).plus(sp["vcpus"], sp["memory"],
                                                              sp["storage"])
        fleet.used_nets.update(lease_port_groups(lease))
    fleet.free = FreeNets(pools, fleet.used_nets)  # the aggregate the worker keeps up to date
    return fleet


def bench_pure(fleets: dict[str, Fleet], rounds: int, per_round: int) -> dict[str, float]:
    """CPU seconds (this thread) per place() call, best round of each fleet, rounds alternating
    the order. CPU time, not wall time: on a shared machine waiting for a core is not cost."""
    reqs = [parse_request(r, default_request_id=f"pure-{i}") for i, r in enumerate(REQUESTS)]
    for fleet in fleets.values():  # warm-up
        for i in range(per_round):
            place(reqs[i % len(reqs)], fleet)
    best = {n: float("inf") for n in fleets}
    for r in range(rounds):
        order = list(fleets.items())
        for n, fleet in order if r % 2 == 0 else reversed(order):
            t0 = time.thread_time()
            for i in range(per_round):
                place(reqs[i % len(reqs)], fleet)
            best[n] = min(best[n], (time.thread_time() - t0) / per_round)
    return best


class LedgerCase:
    """One ledger (its own key prefix on the shared redis-server) holding n leases."""

    def __init__(self, client, pools: dict[str, Pool], leases: list[dict], prefix: str,
                 pools_path: Path, redis_url: str, mirror_path: Path) -> None:
        from workers.adapters.ledger import Ledger
        from workers.adapters.pools_file import PoolsFile
        from workers.service.capacity import Capacity
        from workers.settings import Settings

        self.pools = pools
        self.ledger = Ledger(client, prefix=prefix)
        if hasattr(self.ledger, "restore"):  # a fresh ledger must be restored (empty) first
            self.ledger.restore({"format": 1, "seq": 0, "leases": []})
        caps = {p.name: (p.vcpu_capacity, p.memory, p.storage) for p in pools.values()}
        self.caps = caps
        # a long-running ledger has seen every pool: place and release one lease on each, so
        # that 100 and 10,000 leases differ only in the lease count
        now = time.time()
        touch = {}
        for pool in pools.values():
            req = parse_request({"vcpus": 1, "memory": 1, "networks": 0},
                                default_request_id=f"touch-{pool.name}")
            touch[req.request_id] = [make_lease(f"touch-{pool.name}", req, pool, [], now)]
        if self.ledger.commit(self.ledger.usage()[0], touch, caps).status != "ok":
            raise RuntimeError("seeding the ledger: touching every pool failed")
        self.ledger.release([g[0]["metadata"]["name"] for g in touch.values()])
        for i in range(0, len(leases), 500):
            version = self.ledger.usage()[0]
            groups = {x["status"]["request-id"]: [x] for x in leases[i:i + 500]}
            status = self.ledger.commit(version, groups, caps).status
            if status != "ok":
                raise RuntimeError(f"seeding the ledger: commit returned {status}")
        _, usage, nets = self.ledger.usage()
        assert sum(u.leases for u in usage.values()) == len(leases), "seeded lease count"
        assert len(usage) == len(pools), "every pool has a usage record"
        self.nets_in_use = len(nets)
        busy = max(usage, key=lambda name: usage[name].vcpus)  # a whole pool cannot fit there
        self.refused_request = {"vcpus": pools[busy].vcpu_capacity, "memory": 1, "storage": 1,
                                "networks": 0, "required-pool": busy}
        settings = Settings.from_env(redis_url=redis_url, pools_file=str(pools_path),
                                     strategy="least-utilized")
        self.service = Capacity(self.ledger, PoolsFile(str(pools_path)), settings)
        self.mirror = None
        try:  # the publisher's whole save (journal compaction)
            from workers.adapters.mirror.file import FileMirror

            if hasattr(self.ledger, "snapshot"):
                self.mirror = FileMirror(mirror_path)
        except ImportError:
            pass

    def cold_decision(self, raw: dict) -> tuple[list[str], tuple[float, float, float]]:
        """usage() + place() + commit(): the new lease ids and the three steps' CPU seconds
        (this thread). The caller releases the leases."""
        req = parse_request(raw, default_request_id=f"cold-{uuid.uuid4().hex}")
        t0 = time.thread_time()
        version, usage, nets = self.ledger.usage()
        fleet = Fleet(self.pools, usage, nets)
        t1 = time.thread_time()
        plan = place(req, fleet)
        now = time.time()
        leases = [make_lease(uuid.uuid4().hex[:20], req, p.pool, list(p.networks), now)
                  for p in plan]
        t2 = time.thread_time()
        commit = self.ledger.commit(version, {req.request_id: leases},
                                    {p.pool.name: self.caps[p.pool.name] for p in plan})
        t3 = time.thread_time()
        if commit.status != "ok":
            raise RuntimeError(f"commit returned {commit.status} {commit.detail}")
        return [x["metadata"]["name"] for x in leases], (t1 - t0, t2 - t1, t3 - t2)

    def service_decision(self, raw: dict) -> tuple[list[str], tuple[float]]:
        """Capacity.acquire(): the new lease ids and its CPU seconds (this thread)."""
        t0 = time.thread_time()
        leases = self.service.acquire(raw, f"svc-{uuid.uuid4().hex}", owner="bench")
        return [x["metadata"]["name"] for x in leases], (time.thread_time() - t0,)

    def service_refusal(self, raw: dict) -> tuple[list[str], tuple[float]]:
        """Capacity.acquire() of a whole busy pool: refused (NoCapacity), CPU seconds. `raw`
        is ignored. A refusal happens for every waiter that still does not fit, at every
        release."""
        from workers.core.errors import NoCapacity

        t0 = time.thread_time()
        try:
            self.service.acquire(self.refused_request, f"ref-{uuid.uuid4().hex}", owner="bench")
        except NoCapacity:
            return [], (time.thread_time() - t0,)
        raise RuntimeError(f"expected a refusal for {self.refused_request}")

    def release(self, ids: list[str]) -> None:
        self.ledger.release(ids)

    def service_release(self, ids: list[str]) -> None:
        self.service.release(ids)  # through the service: its usage cache stays valid

    def service_refresh(self) -> None:
        """Re-read the service's usage cache. The cold path's commits moved the ledger version;
        a real worker is the only writer, so its cache is always current."""
        self.service.fleet(fresh=True)

    def mirror_write(self) -> float:
        """Wall seconds of one mirror write (snapshot + file write + fsync: mostly not CPU)."""
        t0 = time.perf_counter()
        self.mirror.save(self.ledger.snapshot())
        return time.perf_counter() - t0

    def server_cpu(self) -> float:
        """CPU seconds the (private) redis-server has used so far."""
        info = self.ledger.r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def bench_ledger(cases: dict[str, LedgerCase], rounds: int, per_round: int
                 ) -> dict[str, dict[str, float]]:
    """Per case, best round of `rounds` (alternating the order of the cases):
    - cold / service: CPU seconds per decision, this thread plus redis-server;
    - each step's CPU seconds (this thread, median decision of the round);
    - redis-server CPU per decision; the mirror write's wall seconds.
    Leases are released after each round, outside the measurement (the lease count moves by
    at most `per_round` leases)."""
    for case in cases.values():  # warm-up: scripts loaded, caches filled
        for raw in REQUESTS * 2:
            case.release(case.cold_decision(raw)[0])
            case.service_refresh()
            case.service_release(case.service_decision(raw)[0])
    best: dict[str, dict[str, float]] = {key: {} for key in cases}

    def keep(key: str, label: str, value: float) -> None:
        best[key][label] = min(best[key].get(label, value), value)

    for r in range(rounds):
        order = list(cases.items())
        for key, case in order if r % 2 == 0 else reversed(order):
            for path, fn, labels, release in (
                ("cold", case.cold_decision, ("usage", "place", "commit"), case.release),
                ("service", case.service_decision, ("acquire",), case.service_release),
                ("refused", case.service_refusal, ("refusal",), lambda ids: None),
            ):
                if path != "cold":
                    case.service_refresh()
                ids: list[str] = []
                rows = []
                server0 = case.server_cpu()
                n = per_round * (5 if path == "refused" else 1)  # about 1 ms each: more of them
                for i in range(n):
                    new, cpu = fn(REQUESTS[i % len(REQUESTS)])
                    ids += new
                    rows.append(cpu)
                server = (case.server_cpu() - server0) / n
                release(ids)
                keep(key, path, sum(sum(x) for x in rows) / n + server)
                keep(key, f"{path}:server", server)
                for idx, label in enumerate(labels):
                    keep(key, label, median([x[idx] for x in rows]))
            if case.mirror is not None and (r % 2 == 0 or r == rounds - 1):
                keep(key, "mirror", case.mirror_write())  # slow at 10,000: every other round
    return best


ROWS = [  # breakdown table: (label, key in bench_ledger's result)
    ("Ledger.usage() read + Fleet: client CPU", "usage"),
    ("place() + make_lease(): client CPU", "place"),
    ("Ledger.commit() (one Lua call): client CPU", "commit"),
    ("usage() + commit(): redis-server CPU", "cold:server"),
    ("Capacity.acquire(): client CPU", "acquire"),
    ("Capacity.acquire(): redis-server CPU", "service:server"),
    ("mirror write, snapshot() + FileMirror.save(): wall", "mirror"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_placement",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    ap.add_argument("--no-redis", action="store_true", help="only the pure placement rows")
    args = ap.parse_args(argv)
    # (pure rounds, decisions per pure round, ledger rounds, decisions per ledger round)
    pr, pn, lr, ln = (4, 10, 2, 6) if args.quick else (36, 10, 8, 9)

    spec = fleet_spec(POOLS, VCENTERS, PORT_GROUPS)
    pools = {p.name: p for p in parse_pools(spec, "bench-pools.yaml")}
    pool_list = list(pools.values())
    leases = {
        "few": make_leases(pool_list, FEW, seed=1),
        "many": make_leases(pool_list, MANY, seed=2),
        "many-nonet": make_leases(pool_list, MANY, seed=3, nets=False),
    }
    fleets = {key: fleet_of(pools, ls) for key, ls in leases.items()}
    print(f"{len(pools)} pools on {VCENTERS} vCenters, {PORT_GROUPS} port groups each "
          f"({len(pools) * PORT_GROUPS:,}); each lease holds one port group; placed in turn: "
          f"{len(REQUESTS)} request shapes (one with vcenters: 2, one with a pool-selector). "
          "Cost is CPU time (this thread, plus redis-server's for ledger/service rows), not wall "
          "time, so that waiting for a core on a shared machine does not count; interleaved "
          "rounds, best round kept.")

    t_start = time.perf_counter()
    pure = bench_pure(fleets, pr, pn)
    rows = []

    def row(label: str, few: float, many: float, nonet: float) -> None:
        ratio = few / many  # seconds per decision, so this is the ratio of rates 10,000/100
        rows.append([label, fmt_rate(1 / few), fmt_rate(1 / many), f"{ratio:.2f}",
                     f"≥ {TARGET} {verdict(ratio, TARGET)}", fmt_rate(1 / nonet),
                     f"{few / nonet:.2f}"])

    row("pure place()", pure["few"], pure["many"], pure["many-nonet"])
    breakdown = []
    nets: dict[str, int] = {}
    if not args.no_redis:
        from tests.support.procs import RedisServer

        server = RedisServer().start()
        tmp = Path(tempfile.mkdtemp(prefix="vcm-bench-"))
        try:
            pools_path = write_pools(tmp / "pools.yaml", spec)
            client = server.client()
            cases = {key: LedgerCase(client, pools, ls, f"b-{key}:", pools_path, server.url,
                                     tmp / f"mirror-{key}.json")
                     for key, ls in leases.items()}
            res = bench_ledger(cases, lr, ln)
            few, many, nonet = res["few"], res["many"], res["many-nonet"]
            row("ledger: usage() + place() + commit()", few["cold"], many["cold"], nonet["cold"])
            row("service: Capacity.acquire() (cached usage)", few["service"], many["service"],
                nonet["service"])
            row("service: refused, nothing fits (cached usage)", few["refused"],
                many["refused"], nonet["refused"])
            for label, k in ROWS:
                if k in few:
                    breakdown.append([label, fmt_us(few[k]), fmt_us(many[k]),
                                      f"{many[k] / few[k]:.2f}", fmt_us(nonet[k]),
                                      f"{nonet[k] / few[k]:.2f}"])
            nets = {key: c.nets_in_use for key, c in cases.items()}
            client.close()
        finally:
            server.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - t_start

    print()
    print(table(["decisions per CPU-second", f"{FEW} leases", f"{MANY:,} leases",
                 "ratio 10,000/100", "target", f"{MANY:,} leases, no port groups", "ratio"],
                rows))
    print(f"\nLast two columns: {MANY:,} leases that hold no port group (usage counters as full, "
          "port groups all free), to separate lease count from port-group occupancy.")
    if breakdown:
        print()
        print(f"Where the time goes (per decision, best round; port groups in use: "
              f"{nets['few']:,} / {nets['many']:,} / {nets['many-nonet']:,}). "
              "Time ratios: 1.00 is flat.")
        print()
        print(table(["step", f"{FEW} leases", f"{MANY:,} leases", "ratio",
                     f"{MANY:,}, no port groups", "ratio"], breakdown))
    print(f"\n({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
