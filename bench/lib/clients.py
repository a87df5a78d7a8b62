"""The Celery clients a benchmark drives, the round trips they make, and measuring them.

Two client apps live in the benchmark's process: ours (configured by celeryconfig, as the
product's clients are) and the minimal app's (bench/minimal_app.py). A round trip of each kind
makes as many task round trips as acquire+release: two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REQUEST = {"vcpus": 2, "memory": 4, "storage": 10}
TIMEOUT = 60.0


def client_app(url: str):
    """A client of the placement worker, configured as the product's clients (celeryconfig)."""
    from celery import Celery

    app = Celery("vcm-bench", broker=url, backend=url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = url
    return app


@dataclass
class Clients:
    """The two client apps in this process: ours (celeryconfig) and the minimal one."""

    ours: Any
    minimal: Any = None

    @classmethod
    def connect(cls, url: str, minimal: bool = True) -> Clients:
        from bench.minimal_app import make_app

        return cls(client_app(url), make_app(url) if minimal else None)

    def close(self) -> None:
        self.ours.close()
        if self.minimal is not None:
            self.minimal.close()


def minimal_rt(apps: Clients, tid: int) -> None:
    """Two no-op tasks on the minimal app's worker."""
    from bench.minimal_app import NOOP, QUEUE

    apps.minimal.send_task(NOOP, queue=QUEUE).get(timeout=TIMEOUT)
    apps.minimal.send_task(NOOP, queue=QUEUE).get(timeout=TIMEOUT)


def noop_rt(apps: Clients, tid: int) -> None:
    """Two bench no-op tasks on the placement worker (started with -A bench.placement_app)."""
    from bench.placement_app import NOOP, QUEUE

    apps.ours.send_task(NOOP, queue=QUEUE).get(timeout=TIMEOUT)
    apps.ours.send_task(NOOP, queue=QUEUE).get(timeout=TIMEOUT)


def acquire_rt(apps: Clients, tid: int) -> None:
    """vcm.acquire, then vcm.release of what it got, each awaited; thread `tid` is its owner."""
    owner = f"bench-{tid}"
    leases = apps.ours.send_task("vcm.acquire", kwargs={"request": dict(REQUEST, owner=owner)},
                                 queue="placement").get(timeout=TIMEOUT)
    ids = [x["metadata"]["name"] for x in leases]
    got = apps.ours.send_task("vcm.release", kwargs={"lease_ids": ids, "owner": owner},
                              queue="placement").get(timeout=TIMEOUT)
    if got != ids:
        raise RuntimeError(f"release returned {got!r}, expected {ids!r}")


# kind -> (round trip, which worker serves it)
KINDS: dict[str, tuple[Callable[[Clients, int], None], str]] = {
    "minimal": (minimal_rt, "minimal"),
    "acquire": (acquire_rt, "placement"),
    "noop": (noop_rt, "placement"),
}


def measure(apps: Clients, kind: str, threads: int, total: int) -> tuple[float, list[float]]:
    """`total` round trips split over `threads` threads; returns wall seconds and latencies."""
    fn = KINDS[kind][0]
    per = total // threads
    lat: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def run(tid: int) -> None:
        mine = []
        try:
            barrier.wait()
            for _ in range(per):
                t0 = time.perf_counter()
                fn(apps, tid)
                mine.append(time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            errors.append(exc)
        with lock:
            lat.extend(mine)

    pool = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{kind} with {threads} thread(s) failed: {errors[0]!r}") from errors[0]
    return wall, lat
