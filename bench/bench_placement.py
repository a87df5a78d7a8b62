"""(a) Placement decisions per second with 200 pools: 10,000 active leases against 100.

Three paths, each measured with 100 and with 10,000 leases in the same run, interleaved round
by round (best round of each kept), and reported as a ratio 10,000/100 that should be ≈ 1:

- pure: `place()` on a Fleet (no I/O);
- ledger: one decision as a worker makes it on a cold cache: `Ledger.usage()` read, `place()`,
  leases made, `Ledger.commit()` (one Lua round trip) against a private redis-server that already
  holds the leases (each lease is released again outside the timed section, so the lease count
  stays put);
- service: `Capacity.acquire()` as the worker calls it (validation, cached usage, place, commit).

Every lease holds one port group, as the default request does, so 10,000 leases also means
10,000 port groups in use (pools have 64 each).

Run: .venv/bin/python bench/bench_placement.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (  # noqa: E402
    fleet_spec,
    fmt_rate,
    fmt_us,
    median,
    table,
    verdict,
    write_pools,
)
from workers.core.models import Pool, make_lease, parse_request  # noqa: E402
from workers.core.placement import Fleet, place  # noqa: E402
from workers.core.pools import parse_pools  # noqa: E402

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
        fleet.used_nets.update(f"{st['vcenter']}|{n['port-group']}" for n in st["networks"])
    return fleet


def bench_pure(fleets: dict[int, Fleet], rounds: int, per_round: int) -> dict[int, float]:
    """Seconds per place() call, best round of each fleet, rounds alternating the order."""
    reqs = [parse_request(r, default_request_id=f"pure-{i}") for i, r in enumerate(REQUESTS)]
    for fleet in fleets.values():  # warm-up
        for i in range(per_round):
            place(reqs[i % len(reqs)], fleet)
    best = {n: float("inf") for n in fleets}
    for r in range(rounds):
        order = list(fleets.items())
        for n, fleet in order if r % 2 == 0 else reversed(order):
            t0 = time.perf_counter()
            for i in range(per_round):
                place(reqs[i % len(reqs)], fleet)
            best[n] = min(best[n], (time.perf_counter() - t0) / per_round)
    return best


class LedgerCase:
    """One ledger (its own key prefix on the shared redis-server) holding n leases."""

    def __init__(self, client, pools: dict[str, Pool], leases: list[dict], prefix: str,
                 pools_path: Path, redis_url: str, mirror_path: Path) -> None:
        from workers.adapters.ledger import Ledger
        from workers.adapters.pools_file import PoolsFile
        from workers.service import Capacity
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
        settings = dataclasses.replace(Settings.from_env(), redis_url=redis_url,
                                       pools_file=str(pools_path), strategy="least-utilized")
        self.service = Capacity(self.ledger, PoolsFile(str(pools_path)), settings)
        self.mirror = None
        try:  # the worker's reply path waits for this (snapshot + mirror file write)
            from workers.adapters.mirror import FileMirror

            if hasattr(self.ledger, "snapshot"):
                self.mirror = FileMirror(mirror_path)
        except ImportError:
            pass

    def cold_decision(self, raw: dict) -> tuple[float, float, float]:
        """usage() + place() + commit(); returns the three durations. Releases untimed."""
        req = parse_request(raw, default_request_id=f"cold-{uuid.uuid4().hex}")
        t0 = time.perf_counter()
        version, usage, nets = self.ledger.usage()
        fleet = Fleet(self.pools, usage, nets)
        t1 = time.perf_counter()
        plan = place(req, fleet)
        now = time.time()
        leases = [make_lease(uuid.uuid4().hex[:20], req, p.pool, list(p.networks), now)
                  for p in plan]
        t2 = time.perf_counter()
        commit = self.ledger.commit(version, {req.request_id: leases},
                                    {p.pool.name: self.caps[p.pool.name] for p in plan})
        t3 = time.perf_counter()
        if commit.status != "ok":
            raise RuntimeError(f"commit returned {commit.status} {commit.detail}")
        self.ledger.release([x["metadata"]["name"] for x in leases])
        return t1 - t0, t2 - t1, t3 - t2

    def service_decision(self, raw: dict) -> tuple[float, float]:
        """Capacity.acquire() then Capacity.release(), both timed."""
        t0 = time.perf_counter()
        leases = self.service.acquire(raw, f"svc-{uuid.uuid4().hex}", owner="bench")
        t1 = time.perf_counter()
        self.service.release([x["metadata"]["name"] for x in leases])
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    def mirror_write(self) -> tuple[float]:
        t0 = time.perf_counter()
        self.mirror.save(self.ledger.snapshot())
        return (time.perf_counter() - t0,)


STEPS = {  # label -> (LedgerCase method, index of the duration it returns)
    "Ledger.usage() read + Fleet": ("cold_decision", 0),
    "place() + make_lease()": ("cold_decision", 1),
    "Ledger.commit() (one Lua call)": ("cold_decision", 2),
    "Capacity.acquire()": ("service_decision", 0),
    "Capacity.release()": ("service_decision", 1),
    "mirror write: snapshot() + FileMirror.save()": ("mirror_write", 0),
}


def bench_ledger(cases: dict[str, LedgerCase], rounds: int, per_round: int
                 ) -> dict[str, dict[str, float]]:
    """Seconds per step per case: the median decision of each round, best round kept. Rounds
    alternate the order of the cases."""
    methods = ["cold_decision", "service_decision"]
    if all(c.mirror is not None for c in cases.values()):
        methods.append("mirror_write")
    for case in cases.values():  # warm-up: scripts loaded, caches filled
        for raw in REQUESTS * 2:
            case.cold_decision(raw)
            case.service_decision(raw)
    best: dict[str, dict[str, float]] = {key: {} for key in cases}

    def keep(key: str, label: str, value: float) -> None:
        best[key][label] = min(best[key].get(label, value), value)

    for r in range(rounds):
        order = list(cases.items())
        for key, case in order if r % 2 == 0 else reversed(order):
            for method in methods:
                fn = getattr(case, method)
                if method == "mirror_write":
                    if r % 2 and r != rounds - 1:
                        continue  # slow with 10,000 leases: every other round is enough
                    rows = [fn()]
                else:
                    rows = [fn(REQUESTS[i % len(REQUESTS)]) for i in range(per_round)]
                keep(key, method, median([sum(x) for x in rows]))
                for label, (m, idx) in STEPS.items():
                    if m == method:
                        keep(key, label, median([x[idx] for x in rows]))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    ap.add_argument("--no-redis", action="store_true", help="only the pure placement rows")
    args = ap.parse_args(argv)
    # (pure rounds, decisions per pure round, ledger rounds, decisions per ledger round)
    pr, pn, lr, ln = (4, 10, 2, 6) if args.quick else (36, 10, 6, 9)

    spec = fleet_spec(POOLS, VCENTERS, PORT_GROUPS)
    pools = {p.name: p for p in parse_pools(spec, "bench-pools.yaml")}
    pool_list = list(pools.values())
    leases = {
        "few": make_leases(pool_list, FEW, seed=1),
        "many": make_leases(pool_list, MANY, seed=2),
        "many-nonet": make_leases(pool_list, MANY, seed=3, nets=False),
    }
    fleets = {FEW: fleet_of(pools, leases["few"]), MANY: fleet_of(pools, leases["many"])}
    print(f"{len(pools)} pools on {VCENTERS} vCenters, {PORT_GROUPS} port groups each "
          f"({len(pools) * PORT_GROUPS:,}); each lease holds one port group; placed in turn: "
          f"{len(REQUESTS)} request shapes (one with vcenters: 2, one with a pool-selector). "
          "Interleaved rounds, best round kept (pure: its mean, others: its median decision).")

    t_start = time.perf_counter()
    pure = bench_pure(fleets, pr, pn)
    rows = []

    def row(label: str, few: float, many: float) -> None:
        ratio = few / many  # seconds per decision, so this is the ratio of rates 10,000/100
        rows.append([label, fmt_rate(1 / few), fmt_rate(1 / many), f"{ratio:.2f}",
                     f"≥ {TARGET} {verdict(ratio, TARGET)}"])

    row("pure place()", pure[FEW], pure[MANY])
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
            row("ledger: usage() + place() + commit()", few["cold_decision"],
                many["cold_decision"])
            row("service: Capacity.acquire() (cached usage)", few["Capacity.acquire()"],
                many["Capacity.acquire()"])
            for label in STEPS:
                if label in few:
                    breakdown.append([label, fmt_us(few[label]), fmt_us(many[label]),
                                      f"{many[label] / few[label]:.2f}", fmt_us(nonet[label]),
                                      f"{nonet[label] / few[label]:.2f}"])
            nets = {key: c.nets_in_use for key, c in cases.items()}
            client.close()
        finally:
            server.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - t_start

    print()
    print(table(["decisions/s", f"{FEW} leases", f"{MANY:,} leases", "ratio 10,000/100",
                 "target"], rows))
    if breakdown:
        print()
        print(f"Where the time goes (per call, best round's median; port groups in use: "
              f"{nets['few']:,} / {nets['many']:,} / {nets['many-nonet']:,}). The last two "
              f"columns: {MANY:,} leases that hold no port group, to separate the two "
              "effects. Time ratios: 1.00 is flat.")
        print()
        print(table(["step", f"{FEW} leases", f"{MANY:,} leases", "ratio",
                     f"{MANY:,}, no port groups", "ratio"], breakdown))
    print(f"\n({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
