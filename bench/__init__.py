"""Benchmarks (`make bench` runs `python -m bench.run`). Helpers shared by the benchmark scripts.

Each benchmark runs as a module from the repository root (`python -m bench.NAME`), so the root
(tests.support, workers, tasks, celeryconfig) is on the import path the standard way.

The machine these run on is usually shared and noisy: every benchmark measures its own baseline
in the same run and reports ratios against it; absolute numbers are only for orientation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

BELOW = "BELOW TARGET"


def fleet_spec(pools: int, vcenters: int, port_groups: int, *, vcpus: int = 384,
               memory: int = 2048, storage: int = 20000) -> dict:
    """A pools file as plain data: `pools` pools spread round-robin over `vcenters` vCenters,
    each with `port_groups` single-tenant port groups (the last of every pool multi-tenant).
    Every 4th pool has vcpu-overcommit 2.0; labels region=east|west, every 10th gpu=true."""
    out = []
    for i in range(pools):
        vc = i % vcenters
        nets = []
        for j in range(port_groups):
            net = {"port-group": f"pg-{i}-{j}", "vlan": (i * port_groups + j) % 4094 + 1}
            if j == port_groups - 1:
                net["type"] = "multi-tenant"
            nets.append(net)
        pool = {
            "name": f"pool{i:03d}", "vcenter": f"vc{vc:02d}.example.com",
            "datacenter": f"dc{vc:02d}", "cluster": f"cluster{i:03d}", "datastore": f"ds{i:03d}",
            "vcpus": vcpus, "memory": memory, "storage": storage,
            "labels": {"region": "east" if i % 2 else "west"}, "networks": nets,
        }
        if i % 4 == 3:
            pool["vcpu-overcommit"] = 2.0
        if i % 10 == 9:
            pool["labels"]["gpu"] = "true"
        out.append(pool)
    return {"pools": out}


def write_pools(path: str | Path, spec: dict) -> Path:
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table, columns padded for reading in a terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def verdict(ratio: float, target: float) -> str:
    return "ok" if ratio >= target else BELOW
