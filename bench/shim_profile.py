"""Where the shim's CPU goes: classify py-spy's raw stacks (`py-spy record --format raw --gil`)
of the shim process by part of a request.

Each sampled stack is one line, `frame;frame;...;frame COUNT`, outermost first, a frame being
`function (file:line)`. A stack is put in the first category below that claims it:

1. by any frame: the Celery send (`Celery.send_task`, kombu: serialising, publishing the message,
   in the anyio worker thread), FastAPI running a plain-function dependency in its thread pool
   (`run_in_threadpool` under `solve_dependencies`), the liveness pings (Celery control), the
   result hub (workers/adapters/result_hub.py);
2. otherwise by its innermost frame that belongs to a known layer (metrics, our middleware, JSON,
   FastAPI's dependency solving and pydantic, our own request code, redis-py, Starlette,
   uvicorn with its HTTP parser (h11 or httptools), anyio's thread hand-off, the event loop
   (asyncio or uvloop)).

bench/bench_http.py --profile runs the sampler and prints `report()`; this module also reads a
file directly, from the repository root: .venv/bin/python -m bench.shim_profile STACKS
[CPU_MS_PER_ROUND_TRIP].
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

from bench import table

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?):(?P<line>\d+)\)$")

# leaves where a thread waits rather than works (py-spy's idle detection misses some)
IDLE = ("Condition.wait", "EpollSelector.select", "_epoll.poll", "Event.wait", "_worker")

# (category, test on any frame of the stack): first match wins
OWNERS: list[tuple[str, tuple[str, ...]]] = [
    ("Celery send: send_task, kombu publish (anyio worker thread)",
     ("celery/app/base.py", "celery/app/amqp.py", "kombu/", "bridge.py:publish")),
    ("FastAPI: plain-function dependencies run in its thread pool", ()),  # see classify()
    ("liveness: Celery control ping / discovery (thread)", ("celery/app/control.py",)),
    ("result hub: pub/sub read, SUBSCRIBE/UNSUBSCRIBE (result_hub.py)",
     ("workers/adapters/result_hub.py",)),
]

# (category, file prefixes): the innermost frame with one of them decides
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("our middleware (route matching for labels, body limit)", ("api_shim/middleware.py",)),
    ("JSON (body parse and re-encode, answers, result records)", ("json/",)),
    ("FastAPI dependencies + validation (pydantic)",
     ("pydantic", "fastapi/dependencies/", "fastapi/_compat", "fastapi/params.py",
      "fastapi/security/", "fastapi/encoders.py")),
    ("our request code (bridge, deps, routes, inputs, errors)", ("api_shim/",)),
    ("redis-py commands (task record SET, liveness, GETs)", ("redis/",)),
    ("FastAPI/Starlette routing, Request, Response", ("fastapi/", "starlette/")),
    ("uvicorn + its HTTP parser, h11 or httptools (parsing and writing)",
     ("uvicorn/", "h11/", "httptools/")),
    ("anyio thread hand-off (to_thread: the Celery send's)",
     ("anyio/", "concurrent/futures/", "threading.py", "queue.py")),
    ("event loop: asyncio or uvloop (tasks, wait_for, sockets)",
     ("asyncio/", "selectors.py", "uvloop/")),
]
OTHER = "other"


def parse(line: str) -> tuple[list[tuple[str, str]], int]:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    frames = []
    for part in stack.split(";"):
        m = FRAME.match(part)
        if m:
            frames.append((m["func"], m["file"]))
        elif part:
            frames.append((part, ""))
    return frames, int(count)


def classify(frames: list[tuple[str, str]]) -> str | None:
    if not frames or frames[-1][0].split(" ")[0] in IDLE:
        return None
    names = [func for func, _ in frames]
    if "solve_dependencies" in names and "run_in_threadpool" in names[names.index(
            "solve_dependencies"):]:
        return OWNERS[1][0]
    for category, marks in OWNERS:
        for func, file in frames:
            for mark in marks:
                if ":" in mark:  # file:function (a nested function's name ends with it)
                    f, _, fn = mark.partition(":")
                    if file.endswith(f) and func.endswith(fn):
                        return category
                elif mark in file:
                    return category
    for _func, file in reversed(frames):
        for category, prefixes in LAYERS:
            if any(file.startswith(p) or f"/{p}" in file for p in prefixes):
                return category
    return OTHER


def own_functions(frames: list[tuple[str, str]]) -> set[str]:
    """Our functions on the stack (each counted once per sample: inclusive time)."""
    return {f"{func} ({file})" for func, file in frames
            if file.startswith("api_shim/") and file not in ("api_shim/__main__.py",
                                                              "api_shim/app.py")}


def report(path: str | Path, cpu_per_rt: float | None = None, top: int = 12) -> str:
    by_cat: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        frames, n = parse(line)
        cat = classify(frames)
        if cat is None:
            continue
        total += n
        by_cat[cat] += n
        for name in own_functions(frames):
            own[name] += n
    if not total:
        return "(no samples)"
    ms = (lambda n: f"{n / total * cpu_per_rt * 1000:.2f} ms") if cpu_per_rt else (lambda n: "")
    rows = [[cat, f"{n / total:.0%}", ms(n)] for cat, n in by_cat.most_common()]
    out = [table(["part of the shim", "share of GIL-held samples", "per round trip"], rows),
           f"({total} samples holding the GIL; 'per round trip' splits the shim's measured CPU "
           "per round trip by these shares)", "",
           table(["our function (inclusive)", "share"],
                 [[name, f"{n / total:.0%}"] for name, n in own.most_common(top)])]
    return "\n".join(out)


if __name__ == "__main__":
    print(report(sys.argv[1], float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else None))
