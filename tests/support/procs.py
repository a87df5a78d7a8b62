"""Real processes for tests and benchmarks: redis-server on a free port, Celery workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}: {last!r}")


class RedisServer:
    """A throwaway redis-server that a test can kill and restart (empty, or from its AOF)."""

    def __init__(self, port: int | None = None, persist: bool = False) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="vcm-redis-")
        self.persist = persist
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--appendonly", "yes" if self.persist else "no",
                "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_for(client.ping, what=f"redis-server on {self.port}")
        client.close()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=False)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def wipe(self) -> None:
        """Kill and restart with nothing in memory or on disk."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir, exist_ok=True)
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def env_for(redis_url: str, pools_file: str | os.PathLike | None = None, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(VCM_REDIS_URL=redis_url, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if pools_file:
        env["VCM_POOLS_FILE"] = str(pools_file)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class LoggedProcess:
    """A subprocess whose stdout and stderr go to a log file; stop() always cleans up."""

    log: str
    proc: subprocess.Popen | None = None
    out = None

    def spawn(self, args: list[str], env: dict) -> subprocess.Popen:
        self.out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.out,
                                     stderr=subprocess.STDOUT)
        return self.proc

    def output(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.out is not None:
            self.out.close()


class Worker(LoggedProcess):
    """A real `celery -A tasks worker` subprocess."""

    def __init__(self, env: dict, queues: str = "placement", name: str | None = None,
                 pool: str = "solo", concurrency: int = 1, log: str | None = None) -> None:
        self.env = env
        self.queues = queues
        self.name = name or f"{queues.replace(',', '-')}-{free_port()}@test"
        self.pool = pool
        self.concurrency = concurrency
        self.log = log or tempfile.mktemp(prefix="vcm-worker-", suffix=".log")

    def start(self, wait: bool = True) -> Worker:
        args = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", self.queues,
                "-P", self.pool, "-c", str(self.concurrency), "-n", self.name, "-l", "info",
                "--without-mingle", "--without-gossip", "-E"]
        self.spawn(args, self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}: {self.output()[-2000:]}")
            return "ready." in self.output()

        wait_for(ready, timeout=timeout, what=f"worker {self.name}")



class Beat(Worker):
    """A real `celery -A tasks beat` subprocess (exactly one per test stack)."""

    def __init__(self, env: dict, log: str | None = None) -> None:
        super().__init__(env, queues="beat", name="beat", log=log)

    def start(self, wait: bool = True) -> Beat:
        schedule = tempfile.mktemp(prefix="vcm-beat-")
        args = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-l", "info",
                "--schedule", schedule]
        self.spawn(args, self.env)
        if wait:
            wait_for(lambda: "beat: Starting" in self.output(), what="beat")
        return self


class Stack:
    """A private redis-server with a placement worker, a queries worker and optionally beat."""

    def __init__(self, tmp: Path, pools_yaml: str, beat: bool = False, **env: str) -> None:
        self.tmp = Path(tmp)
        self.pools = self.tmp / "pools.yaml"
        self.pools.write_text(pools_yaml)
        self.redis = RedisServer().start()
        env = {"VCM_MIRROR_FILE": str(self.tmp / "ledger.json"), **env}
        self.env = env_for(self.redis.url, self.pools, **env)
        self.procs: list[Worker] = [Worker(self.env, "placement"),
                                    Worker(self.env, "queries", pool="threads", concurrency=4)]
        if beat:
            self.procs.append(Beat(self.env))
        for p in self.procs:
            p.start(wait=False)
        for p in self.procs:
            p.wait_ready() if not isinstance(p, Beat) else wait_for(
                lambda p=p: "beat: Starting" in p.output(), what="beat")
        from celery import Celery

        self.app = Celery("client", broker=self.redis.url, backend=self.redis.url)
        self.app.config_from_object("celeryconfig")
        self.app.conf.broker_url = self.app.conf.result_backend = self.redis.url

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        self.app.close()
        self.redis.stop()
