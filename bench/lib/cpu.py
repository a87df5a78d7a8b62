"""CPU seconds used by the processes of a benchmark (Linux /proc, and redis-server's INFO)."""

from __future__ import annotations

import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(stat: str) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces)."""
    return stat.rsplit(")", 1)[1].split()


def process_cpu(pid: int) -> float:
    """User + system CPU one process has used so far."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat").read_text())
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuMeter:
    """CPU seconds used so far by each worker (all processes of its process group: a worker
    that forked a pool would be counted whole), the redis-server and this process."""

    def __init__(self, workers: dict[str, int], redis_client) -> None:
        self.groups = workers  # name -> process group id (the worker's pid: it leads its group)
        self.r = redis_client

    def _groups(self) -> dict[str, float]:
        out = dict.fromkeys(self.groups, 0.0)
        by_pgid = {pgid: name for name, pgid in self.groups.items()}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = _stat_fields(Path(entry.path, "stat").read_text())
            except OSError:
                continue
            name = by_pgid.get(int(fields[2]))
            if name is not None:
                out[name] += (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
        return out

    def _redis(self) -> float:
        info = self.r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def read(self) -> dict[str, float]:
        return {**self._groups(), "redis": self._redis(), "client": time.process_time()}
