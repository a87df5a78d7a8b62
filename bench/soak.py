"""Soak: acquire/renew/release round trips for a long time against the stack as documented,
and check that the placement worker's memory and Redis stay flat.

Processes, started with the documented commands (plus `-l info`, and beat's schedule file in
a temporary directory): `celery -A tasks worker -Q placement --concurrency 1`,
`celery -A tasks worker -Q queries`, `celery -A tasks beat` (the reaper and the usage rollup),
on a private redis-server with the file mirror on.

Client threads (bench (b)'s 8 by default) do round trips back to back: acquire, sometimes
renew, release; every 40th lease is abandoned with a short ttl for the reaper; every 10th
round trip also sends a query. After a warm-up, the placement worker's RSS (VmRSS of its
process tree), Redis used_memory, DBSIZE, the keys by kind and what they take (MEMORY USAGE),
INFO memory and MEMORY STATS are taken, and again at the end.

Bounds, from the settings this soak runs with:
- released and reaped leases (`vcm:gone:*`) and the request-ids of released leases
  (`vcm:req:*`) are kept VCM_KEEP_RELEASED seconds: at the end there are no more of them than
  live leases plus the leases that ended in the last VCM_KEEP_RELEASED + reap interval
  + short ttl + slack seconds;
- placement task results are kept VCM_RESULT_TTL (a day, for polling job steps): each must carry
  a TTL of at most that, and there are no more of them than tasks sent (by the clients, and
  by beat: a reap per reap interval, a rollup per rollup interval); each acquire's answer,
  kept for copies of its task (`vcm:answered:*`), likewise, with a TTL of at most
  VCM_RESULT_TTL plus the visibility timeout; query task
  results must carry a TTL of at most QUERY_RESULT_TTL (results of queries are "not kept
  beyond minutes");
- everything else in Redis (the ledger's fixed keys, Celery's queues and bindings) grows by
  at most OTHER_KEYS_SLACK keys;
- Redis used_memory grows by at most what the kept keys take: MEMORY USAGE summed over the
  task results, answers and released-lease history at the start and at the end, plus the part
  of the keyspace's hash tables MEMORY USAGE does not count (MEMORY STATS, db.0:
  `overhead.hashtable.expires`, and `overhead.hashtable.main` less the dictEntry and robj of
  each key, `keys.count`), plus MEMORY_SLACK_MIB. used_memory is read after the scan, which
  deletes the expired keys it meets: Redis's sampling expiry leaves many in memory (66,527 of
  403,416 keys at the end of a 600 s run) and the expiring kinds differ in size (a query
  result ~40 KB, a released lease's record ~2 KB), so no estimate of them holds. Anything
  else that grows (the Lua script cache, client buffers, pub/sub channels, a fixed key that
  keeps growing) is outside the bound and breaks it once it passes the slack. INFO memory and
  MEMORY STATS at both ends are printed below the table, to show where the memory went;
- the placement worker's RSS grows by at most RSS_GROWTH_MIB.

Environment: VCM_SOAK_SECONDS (600), VCM_SOAK_THREADS (8), VCM_SOAK_WARMUP (20),
VCM_SOAK_RSS_MIB (32). Exit status 1 when a bound is broken or a task failed unexpectedly.

Run (from the repository root; `make chaos` runs it after the long property-based search):
.venv/bin/python -m bench.soak
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from celery import Celery

import celeryconfig
from tests.support.procs import LoggedProcess, RedisServer, env_for, wait_for

SECONDS = float(os.environ.get("VCM_SOAK_SECONDS", "600"))
THREADS = int(os.environ.get("VCM_SOAK_THREADS", "8"))
WARMUP = float(os.environ.get("VCM_SOAK_WARMUP", "20"))
RSS_GROWTH_MIB = float(os.environ.get("VCM_SOAK_RSS_MIB", "32"))
KEEP_RELEASED = 60  # VCM_KEEP_RELEASED for this soak, seconds
REAP_INTERVAL = 5  # VCM_REAP_INTERVAL
ROLLUP_INTERVAL = 10  # VCM_ROLLUP_INTERVAL
SHORT_TTL = 8  # ttl of the abandoned leases, seconds
RESULT_EXPIRES = int(celeryconfig.result_expires)  # VCM_RESULT_TTL
QUERY_RESULT_TTL = int(celeryconfig.query_result_expires)  # VCM_QUERY_RESULT_TTL
# a task's answer, kept for copies of the task (workers/bootstrap.py)
ANSWER_TTL = RESULT_EXPIRES + int(celeryconfig.broker_transport_options["visibility_timeout"])
OTHER_KEYS_SLACK = 20
# what no key accounts for: allocator rounding MEMORY USAGE does not see (a few bytes a key),
# the fixed keys (capped lists: vcm:reaped, vcm:usage), client buffers, the start sample
# taken under load (keys written while it runs)
MEMORY_SLACK_MIB = 16
ENTRY_IN_MEMORY_USAGE = 24 + 16  # sizeof(dictEntry) + sizeof(robj), 64-bit Redis 7
TIMEOUT = 60.0
PLACEMENT_CMD = ["-A", "tasks", "worker", "-Q", "placement", "--concurrency", "1"]
QUERIES_CMD = ["-A", "tasks", "worker", "-Q", "queries"]
MIB = 1024 * 1024


def pools_yaml() -> str:
    return yaml.safe_dump({"pools": [
        {"name": f"p{i}", "vcenter": f"vc{i % 4}", "datacenter": "dc", "cluster": f"c{i}",
         "datastore": f"ds{i}", "vcpus": 2000, "memory": 8000, "storage": 100000,
         "networks": [{"port-group": f"pg{i}-{j}", "vlan": j} for j in range(60)]}
        for i in range(8)]})


class Proc(LoggedProcess):
    def __init__(self, log: str) -> None:
        self.log = log

    def start(self, args: list[str], env: dict, ready: str) -> Proc:
        self.spawn([sys.executable, "-m", "celery", *args, "-l", "info"], env)
        wait_for(lambda: self.proc is not None and self.proc.poll() is None
                 and ready in self.output(), timeout=90, what=f"{args[3]} {ready!r}")
        return self


# -- measurements ---------------------------------------------------------------------------

def tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out.extend(tree(int(child)))
    except OSError:
        pass
    return out


def rss_kib(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


@dataclass
class Sample:
    at: float
    rss_placement: int  # KiB
    rss_queries: int
    rss_beat: int
    used_memory_unscanned: int  # before the scan: with the expired keys not reclaimed yet
    dbsize: int  # likewise
    live_leases: int
    kinds: Counter = field(default_factory=Counter)
    memory: Counter = field(default_factory=Counter)  # bytes, MEMORY USAGE summed by kind
    results_memory: int = 0  # bytes, MEMORY USAGE over task results
    history_memory: int = 0  # bytes, MEMORY USAGE over released-lease records and request-ids
    fixed_memory: dict[str, int] = field(default_factory=dict)  # MEMORY USAGE, fixed keys
    ttl_problems: list[str] = field(default_factory=list)
    redis: dict[str, int] = field(default_factory=dict)  # memory_fields, after the scan

    @property
    def used_memory(self) -> int:
        """used_memory once the scan has reclaimed the expired keys it met."""
        return self.redis["used_memory"]

    @property
    def key_tables(self) -> int:
        """Bytes of the keyspace's hash tables that MEMORY USAGE does not count: the expires
        table whole (an entry per key with a TTL, its bucket array) and the main table's
        bucket array (both tables' while it rehashes). MEMORY STATS `overhead.hashtable.main`
        is keys × (sizeof(dictEntry) + sizeof(robj)) + buckets × sizeof(pointer), and MEMORY
        USAGE already counts each key's dictEntry and robj (Redis 7 object.c,
        getMemoryOverheadData and memoryCommand)."""
        return (self.redis["overhead.hashtable.main"] + self.redis["overhead.hashtable.expires"]
                - self.redis["keys.count"] * ENTRY_IN_MEMORY_USAGE)


# What Redis says its memory goes to (INFO memory, INFO stats/clients/keyspace, MEMORY STATS),
# printed at the start and the end so that a failed bound shows where the memory went.
INFO_FIELDS = (
    ("used_memory", "memory"), ("used_memory_overhead", "memory"),
    ("used_memory_dataset", "memory"), ("used_memory_scripts", "memory"),
    ("used_memory_vm_eval", "memory"), ("number_of_cached_scripts", "memory"),
    ("mem_clients_normal", "memory"), ("mem_aof_buffer", "memory"),
    ("mem_replication_backlog", "memory"), ("connected_clients", "clients"),
    ("pubsub_channels", "stats"), ("pubsub_patterns", "stats"), ("expired_keys", "stats"))
STATS_FIELDS = ("overhead.total", "keys.count", "overhead.hashtable.main",
                "overhead.hashtable.expires", "clients.normal", "lua.caches", "dataset.bytes")


def memory_fields(r: Any) -> dict[str, int]:
    info = {section: r.info(section) for section in ("memory", "clients", "stats", "keyspace")}
    out = {name: int(info[section].get(name, 0)) for name, section in INFO_FIELDS}
    db0 = info["keyspace"].get("db0", {})
    out["keyspace expires"] = int(db0.get("expires", 0)) if isinstance(db0, dict) else 0
    stats = r.memory_stats()
    flat = {**stats, **(stats.get("db.0") or {})}
    out.update({name: int(flat.get(name, 0)) for name in STATS_FIELDS})
    return out


def kind_of(key: str, query_ids: set[str]) -> str:
    if key.startswith("celery-task-meta-"):
        return "query results" if key[len("celery-task-meta-"):] in query_ids \
            else "placement results"
    if key.startswith("vcm:answered:"):
        return "task answers"
    for prefix in ("vcm:gone:", "vcm:req:", "vcm:owner:", "vcm:"):
        if key.startswith(prefix):
            return prefix + "*" if prefix != "vcm:" else "vcm: other"
    return "other"


def sample(r: Any, procs: dict[str, Proc], query_ids: set[str]) -> Sample:
    s = Sample(time.time(), rss_kib(procs["placement"].proc.pid),
               rss_kib(procs["queries"].proc.pid), rss_kib(procs["beat"].proc.pid),
               int(r.info("memory")["used_memory"]), int(r.dbsize()), int(r.hlen("vcm:leases")))
    results: list[str] = []
    fixed: list[str] = []
    for raw in r.scan_iter(count=2000):
        key = raw.decode(errors="replace")
        kind = kind_of(key, query_ids)
        s.kinds[kind] += 1
        # SCAN deletes the expired keys it meets (expireIfNeeded), so that afterwards
        # used_memory no longer holds the keys Redis's sampling expiry has not reached yet
        if kind.endswith(("results", "answers")) or kind in ("vcm:gone:*", "vcm:req:*"):
            results.append(key)
        elif kind in ("vcm: other", "other"):
            fixed.append(key)
    pipe = r.pipeline(transaction=False)
    for key in fixed:
        pipe.memory_usage(key)
    s.fixed_memory = {k: int(v or 0) for k, v in zip(fixed, pipe.execute(), strict=True)}
    s.memory["fixed keys"] = sum(s.fixed_memory.values())
    checked = Counter()
    for i in range(0, len(results), 1000):
        chunk = results[i:i + 1000]
        pipe = r.pipeline(transaction=False)
        for key in chunk:
            pipe.memory_usage(key)
            pipe.ttl(key)
        values = pipe.execute()
        for key, used, ttl in zip(chunk, values[::2], values[1::2], strict=True):
            kind = kind_of(key, query_ids)
            s.memory[kind] += used or 0
            if not kind.endswith(("results", "answers")):  # bounded history: counted, its TTL
                s.history_memory += used or 0  # is the ledger's
                continue
            s.results_memory += used or 0
            limit = {"query results": QUERY_RESULT_TTL,
                     "task answers": ANSWER_TTL}.get(kind, RESULT_EXPIRES)
            if ttl == -2:  # expired (or deleted) since the scan: nothing kept
                continue
            if (ttl is None or ttl < 0 or ttl > limit) and checked[kind] < 3:
                checked[kind] += 1
                s.ttl_problems.append(f"{kind}: {key} has TTL {ttl} (at most {limit})")
    # after the MEMORY USAGE reads: a key that expired since the scan was either read (counted
    # there and here) or deleted by its read (in neither)
    s.redis = memory_fields(r)
    return s


# -- clients --------------------------------------------------------------------------------

@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    round_trips: int = 0
    placement_sent: int = 0
    query_ids: set[str] = field(default_factory=set)
    ended: list[float] = field(default_factory=list)  # when each lease was released / abandoned
    refusals: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


QUERIES = [("vcm.list_leases", {"owner": None}), ("vcm.show_pools", {}), ("vcm.waiting", {}),
           ("vcm.estimate", {"request": {"vcpus": 2, "memory": 4}})]


def client(app: Celery, tid: int, stop: threading.Event, stats: Stats) -> None:
    owner = f"soak-{tid}"
    i = 0

    def placement(name: str, **kwargs: Any) -> Any:
        with stats.lock:
            stats.placement_sent += 1
        return app.send_task(name, kwargs=kwargs, queue="placement").get(timeout=TIMEOUT)

    while not stop.is_set():
        i += 1
        abandon = i % 40 == 0
        try:
            leases = placement("vcm.acquire", request={
                "vcpus": 2, "memory": 4, "storage": 10, "owner": owner,
                "ttl": SHORT_TTL if abandon else 3600})
            ids = [x["metadata"]["name"] for x in leases]
            if abandon:
                with stats.lock:
                    stats.ended.append(time.time() + SHORT_TTL + REAP_INTERVAL)
                continue
            if i % 5 == 0:
                placement("vcm.renew", lease_id=ids[0], owner=owner, ttl=7200)
            got = placement("vcm.release", lease_ids=ids, owner=owner)
            if got != ids:
                raise RuntimeError(f"release returned {got!r}, expected {ids!r}")
            with stats.lock:
                stats.ended.append(time.time())
                stats.round_trips += 1
            if i % 10 == 0:
                name, kwargs = QUERIES[(i // 10) % len(QUERIES)]
                r = app.send_task(name, kwargs=kwargs, queue="queries")
                with stats.lock:
                    stats.query_ids.add(r.id)
                r.get(timeout=TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            name = type(exc).__name__
            with stats.lock:
                if name == "NoCapacity":
                    stats.refusals[name] += 1
                elif len(stats.errors) < 20:
                    stats.errors.append(f"{name}: {exc}")
                else:
                    stats.refusals["other errors"] += 1


# -- the run --------------------------------------------------------------------------------

def row(name: str, start: Any, end: Any, bound: str, ok: bool | None) -> str:
    verdict = "" if ok is None else ("ok" if ok else "**FAIL**")
    return f"| {name} | {start} | {end} | {bound} | {verdict} |"


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="vcm-soak-"))
    (tmp / "pools.yaml").write_text(pools_yaml())
    redis_server = RedisServer().start()
    env = env_for(redis_server.url, tmp / "pools.yaml", VCM_MIRROR_FILE=str(tmp / "ledger.json"),
                  VCM_KEEP_RELEASED=str(KEEP_RELEASED), VCM_REAP_INTERVAL=str(REAP_INTERVAL),
                  VCM_ROLLUP_INTERVAL=str(ROLLUP_INTERVAL))
    procs = {"placement": Proc(str(tmp / "placement.log")),
             "queries": Proc(str(tmp / "queries.log")), "beat": Proc(str(tmp / "beat.log"))}
    app = Celery("vcm-soak", broker=redis_server.url, backend=redis_server.url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = redis_server.url
    stop = threading.Event()
    stats = Stats()
    failures: list[str] = []
    try:
        procs["placement"].start(PLACEMENT_CMD, env, "ready.")
        procs["queries"].start(QUERIES_CMD, env, "ready.")
        procs["beat"].start(["-A", "tasks", "beat", "--schedule", str(tmp / "beat-schedule")],
                            env, "beat: Starting")
        beat_started = time.time()
        r = redis_server.client()
        threads = [threading.Thread(target=client, args=(app, t, stop, stats), daemon=True)
                   for t in range(THREADS)]
        for t in threads:
            t.start()
        print(f"soak: {THREADS} client threads, warm-up {WARMUP:g}s, then {SECONDS:g}s "
              f"(logs in {tmp})", flush=True)
        time.sleep(WARMUP)
        with stats.lock:
            rt0 = stats.round_trips
            query_ids = set(stats.query_ids)
        first = sample(r, procs, query_ids)
        end_at = time.monotonic() + SECONDS
        while time.monotonic() < end_at:
            time.sleep(min(30.0, max(0.0, end_at - time.monotonic())))
            with stats.lock:
                done = stats.round_trips - rt0
            print(f"  {time.time() - first.at:6.0f}s: {done} round trips, "
                  f"{int(r.dbsize())} keys, placement RSS "
                  f"{rss_kib(procs['placement'].proc.pid) / 1024:.1f} MiB", flush=True)
        stop.set()
        for t in threads:
            t.join(TIMEOUT + 5)
        # the last abandoned leases are reaped within SHORT_TTL + REAP_INTERVAL
        time.sleep(2)
        with stats.lock:
            query_ids = set(stats.query_ids)
        last = sample(r, procs, query_ids)
        elapsed = last.at - first.at
        with stats.lock:
            rate = (stats.round_trips - rt0) / max(elapsed, 1e-9)
            window = KEEP_RELEASED + REAP_INTERVAL + SHORT_TTL + 10
            recent = sum(1 for t in stats.ended if t >= last.at - window)
            placement_sent = stats.placement_sent
            sent_queries = len(stats.query_ids)
        # beat's own tasks store results too: a reap and a rollup per interval
        beat_tasks = int((last.at - beat_started) / REAP_INTERVAL
                         + (last.at - beat_started) / ROLLUP_INTERVAL) + 2

        lines = ["", f"soak: {elapsed:.0f}s measured, {rate:.1f} acquire/release round trips/s, "
                 f"{THREADS} threads; refusals {dict(stats.refusals) or 'none'}", "",
                 "| what | start | end | bound | |", "|---|---|---|---|---|"]
        rss_ok = (last.rss_placement - first.rss_placement) / 1024 <= RSS_GROWTH_MIB
        lines.append(row("placement worker RSS (MiB, process tree)",
                         f"{first.rss_placement / 1024:.1f}", f"{last.rss_placement / 1024:.1f}",
                         f"+{RSS_GROWTH_MIB:g} MiB", rss_ok))
        lines.append(row("queries worker RSS (MiB)", f"{first.rss_queries / 1024:.1f}",
                         f"{last.rss_queries / 1024:.1f}", "", None))
        lines.append(row("beat RSS (MiB)", f"{first.rss_beat / 1024:.1f}",
                         f"{last.rss_beat / 1024:.1f}", "", None))
        results_growth = last.results_memory - first.results_memory
        history_growth = last.history_memory - first.history_memory
        tables_growth = last.key_tables - first.key_tables
        mem_bound = (first.used_memory + results_growth + history_growth + tables_growth
                     + MEMORY_SLACK_MIB * MIB)
        mem_ok = last.used_memory <= mem_bound
        lines.append(row("Redis used_memory (MiB, after the scan)",
                         f"{first.used_memory / MIB:.1f}", f"{last.used_memory / MIB:.1f}",
                         f"≤ {mem_bound / MIB:.1f} (start + task results "
                         f"{results_growth / MIB:+.1f} + released history "
                         f"{history_growth / MIB:+.1f} + key hash tables "
                         f"{tables_growth / MIB:+.1f} + {MEMORY_SLACK_MIB})", mem_ok))
        lines.append(row("Redis used_memory before the scan (MiB)",
                         f"{first.used_memory_unscanned / MIB:.1f}",
                         f"{last.used_memory_unscanned / MIB:.1f}",
                         "with the expired keys not reclaimed yet (DBSIZE minus SCAN: "
                         f"{max(0, first.dbsize - sum(first.kinds.values()))}, "
                         f"{max(0, last.dbsize - sum(last.kinds.values()))})", None))
        lines.append(row("task results memory (MiB)", f"{first.results_memory / MIB:.1f}",
                         f"{last.results_memory / MIB:.1f}", "kept, see TTLs", None))
        lines.append(row("live leases", first.live_leases, last.live_leases, "", None))
        bounds = {
            "vcm:gone:*": recent,
            "vcm:req:*": last.live_leases + recent,
            "vcm:owner:*": THREADS,
            "vcm: other": first.kinds["vcm: other"] + OTHER_KEYS_SLACK,
            "placement results": placement_sent + beat_tasks,
            "query results": sent_queries,
            "task answers": placement_sent,
            "other": first.kinds["other"] + OTHER_KEYS_SLACK,
        }
        explain = {
            "vcm:gone:*": f"ended in the last {window}s ({recent})",
            "vcm:req:*": f"live + ended in the last {window}s",
            "vcm:owner:*": "one per client",
            "vcm: other": f"start + {OTHER_KEYS_SLACK}",
            "placement results": f"tasks sent + {beat_tasks} by beat (kept ≤ {RESULT_EXPIRES}s)",
            "query results": f"queries sent (kept ≤ {QUERY_RESULT_TTL}s)",
            "task answers": f"one per acquire sent (kept ≤ {ANSWER_TTL}s)",
            "other": f"start + {OTHER_KEYS_SLACK}",
        }
        for kind, bound in bounds.items():
            ok = last.kinds[kind] <= bound
            lines.append(row(f"keys: {kind}", first.kinds[kind], last.kinds[kind],
                             f"≤ {bound}: {explain[kind]}", ok))
            if not ok:
                failures.append(f"{kind}: {last.kinds[kind]} keys > {bound}")
        # DBSIZE also counts keys past their TTL that Redis has not reclaimed yet (SCAN
        # skips them): the bound applies to the keys that exist, DBSIZE is shown as well
        total_bound = sum(bounds.values())
        present = sum(last.kinds.values())
        lines.append(row("keys in all (SCAN)", sum(first.kinds.values()), present,
                         f"≤ {total_bound}", present <= total_bound))
        lines.append(row("DBSIZE (with expired, unreclaimed)", first.dbsize, last.dbsize,
                         "", None))
        lines += ["", "| Redis (INFO, MEMORY STATS; after the scan) | start | end | growth |",
                  "|---|---|---|---|"]
        for name in first.redis:
            a, b = first.redis[name], last.redis[name]
            lines.append(f"| {name} | {a} | {b} | {b - a:+d} |")
        grown = sorted(((last.fixed_memory.get(k, 0) - first.fixed_memory.get(k, 0), k)
                        for k in set(first.fixed_memory) | set(last.fixed_memory)), reverse=True)
        lines += ["", "MEMORY USAGE by kind (MiB, start → end): " + ", ".join(
            f"{k} {first.memory[k] / MIB:.1f} → {last.memory[k] / MIB:.1f}"
            for k in sorted(set(first.memory) | set(last.memory))),
            "fixed keys that grew most (MEMORY USAGE, bytes): " + ", ".join(
            f"{k} {d:+d}" for d, k in grown[:5])]
        print("\n".join(lines))
        if not rss_ok:
            failures.append(f"placement worker RSS grew {first.rss_placement / 1024:.1f} -> "
                            f"{last.rss_placement / 1024:.1f} MiB (> +{RSS_GROWTH_MIB:g})")
        if not mem_ok:
            failures.append("Redis used_memory grew beyond what the kept keys take")
        if present > total_bound:
            failures.append(f"{present} keys > {total_bound}")
        failures += last.ttl_problems
        failures += [f"task failed: {e}" for e in stats.errors]
        for name, p in procs.items():
            if p.proc is not None and p.proc.poll() is not None:
                failures.append(f"{name} exited with {p.proc.returncode}")
    finally:
        stop.set()
        for p in procs.values():
            p.stop()
        app.close()
        redis_server.stop()
    if failures:
        print("\nsoak FAILED:\n- " + "\n- ".join(failures))
        print(f"(logs kept in {tmp})")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    print("\nsoak ok: flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
