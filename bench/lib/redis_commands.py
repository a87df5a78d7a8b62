"""The commands Redis receives: by source under MONITOR (count_commands), or in total from
INFO commandstats (commandstats)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from bench.lib.clients import KINDS, Clients, measure


def ports_of(pid: int) -> set[str]:
    """Local TCP ports of a process's sockets (Linux /proc), as strings."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table_path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[9] in inodes:
                ports.add(str(int(cols[1].rsplit(":", 1)[1], 16)))
    return ports


def count_commands(server, apps: Clients, workers: dict[str, int], kind: str,
                   n: int) -> dict[str, Counter]:
    """Commands Redis receives during n 1-thread round trips of `kind` (clients.KINDS), by
    source: this process ("client"), the worker serving `kind` ("worker"), the other, idle one
    ("idle worker"), scripts ("inside Lua")."""
    import redis

    stop = f"vcm-bench-monitor-stop-{kind}"
    seen: list[dict] = []
    started = threading.Event()

    def listen() -> None:
        mon_client = redis.Redis(port=server.port)
        with mon_client.monitor() as mon:
            started.set()
            for cmd in mon.listen():
                if stop in cmd["command"]:
                    break
                seen.append(cmd)
        mon_client.close()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    started.wait(10)
    time.sleep(0.2)
    measure(apps, kind, 1, n)
    time.sleep(0.3)  # let the worker's trailing writes (mirror status, events) land
    control = redis.Redis(port=server.port)
    control.echo(stop)
    thread.join(15)
    control.close()
    serving = KINDS[kind][1]
    ports = {name: ports_of(pid) for name, pid in workers.items()}
    my_ports = ports_of(os.getpid())
    out: dict[str, Counter] = defaultdict(Counter)
    for cmd in seen:
        name = cmd["command"].split(" ", 1)[0].upper()
        src = "other"
        if cmd["client_type"] == "lua":
            src = "inside Lua"
        elif cmd["client_port"] in my_ports:
            src = "client"
        else:
            for wname, wports in ports.items():
                if cmd["client_port"] in wports:
                    src = "worker" if wname == serving else "idle worker"
        out[src][name] += 1
    return out


def commandstats(client) -> Counter:
    """Calls of each command so far, all clients of the server (INFO commandstats)."""
    return Counter({k.removeprefix("cmdstat_").upper(): int(v["calls"])
                    for k, v in client.info("commandstats").items()})
