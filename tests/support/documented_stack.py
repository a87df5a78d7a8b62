"""A stack started the documented way, shared by the tests of the task API's promises."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from celery import Celery

from tests.support.helpers import check_invariants, reset_ledger
from tests.support.procs import LoggedProcess, RedisServer, env_for, wait_for
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import load_pools

POOLS = """
pools:
  - {name: p1, vcenter: vc1, datacenter: dc, cluster: c1, datastore: ds, vcpus: 16, memory: 64,
     storage: 1000, networks: [{port-group: pg1-a, vlan: 1}, {port-group: pg1-b, vlan: 2}]}
  - {name: p2, vcenter: vc2, datacenter: dc, cluster: c2, datastore: ds, vcpus: 16, memory: 64,
     storage: 1000, networks: [{port-group: pg2-a, vlan: 3}, {port-group: pg2-b, vlan: 4}]}
"""


class DocumentedStack:
    """A redis-server, the placement worker started with the documented command, and a
    queries worker, with the file mirror."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pools = tmp / "pools.yaml"
        self.pools.write_text(POOLS)
        self.redis = RedisServer().start()
        self.mirror = tmp / "ledger.json"
        self.env = env_for(self.redis.url, self.pools, VCM_MIRROR_FILE=str(self.mirror))
        # both start at once; each is waited for (a worker that did not start: neither runs)
        self.placement = self._spawn("placement", ["--concurrency", "1"])
        self.queries = self._spawn("queries", ["-P", "threads", "-c", "2"])
        try:
            for proc, queue in ((self.placement, "placement"), (self.queries, "queries")):
                self._wait(proc, queue)
        except BaseException:
            self.placement.kill()
            self.queries.kill()
            self.redis.stop()
            raise
        self.app = Celery("client", broker=self.redis.url, backend=self.redis.url)
        self.app.config_from_object("celeryconfig")
        self.app.conf.broker_url = self.app.conf.result_backend = self.redis.url
        self.ledger = Ledger(self.redis.client())

    def _worker(self, queue: str, extra: list[str]) -> LoggedProcess:
        proc = self._spawn(queue, extra)
        self._wait(proc, queue)
        return proc

    def _spawn(self, queue: str, extra: list[str]) -> LoggedProcess:
        proc = LoggedProcess()
        proc.group = True  # kill() ends whatever the worker started too
        proc.log = str(self.tmp / f"{queue}-{uuid.uuid4().hex[:6]}.log")
        proc.spawn([sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", queue,
                    *extra, "-n", f"{queue}-{uuid.uuid4().hex[:6]}@test", "-l", "info"],
                   self.env)
        return proc

    @staticmethod
    def _wait(proc: LoggedProcess, queue: str) -> None:
        wait_for(lambda: "ready." in proc.output() or proc.proc.poll() is not None, timeout=60,
                 what=f"{queue} worker")
        assert proc.proc.poll() is None, proc.output()[-2000:]

    def restart_placement(self) -> None:
        self.placement.stop()
        self.placement = self._worker("placement", ["--concurrency", "1"])

    def reset(self) -> None:
        reset_ledger(self.redis.client(), str(self.mirror))

    def check(self) -> dict:
        return check_invariants(self.ledger, {p.name: p for p in load_pools(str(self.pools))})

    def stop(self) -> None:
        """Thrown away: SIGKILL (restart_placement is the graceful stop)."""
        self.placement.kill()
        self.queries.kill()
        self.app.close()
        self.redis.stop()


