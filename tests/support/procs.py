"""Real processes for tests and benchmarks: redis-server on a free port, Celery workers."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_GIVEN: set[int] = set()  # the ports free_port handed out in this process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Chosen at random outside the kernel's ephemeral range, so that no outgoing connection of
    any process can be given it between this check and the child's bind; another process that
    binds explicitly still can, so a child's owner must check who answers (RedisServer does).
    A port is handed out once per process: two asked for in a row are never the same.
    """
    low, high = _ephemeral_range()
    spans = [(lo, hi) for lo, hi in ((20000, low - 1), (high + 1, 65535)) if hi - lo >= 1000]
    for _ in range(200 if spans else 0):
        lo, hi = random.choice(spans)
        port = random.randint(lo, hi)
        if port in _GIVEN:  # handed out before, maybe not bound yet by whoever took it
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.add(port)
            return port
    with socket.socket() as s:  # nothing free outside the ephemeral range: the kernel picks
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the longest a process may take to start: a hang guard, long enough for a Celery worker or the
# HTTP shim (about a second of CPU each) on a shared 2-core machine running `make test`'s four
# pytest-xdist workers beside other work
START_TIMEOUT = 60.0


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


class PortTaken(RuntimeError):
    """Our redis-server could not have the port: it exited, or another server answers there."""


class RedisServer:
    """A throwaway redis-server that a test can kill and restart (empty, or from its AOF).

    TCP on 127.0.0.1 (VCM_REDIS_URL is shared by Celery, whose Unix socket URL is
    `redis+socket://`, and redis-py's from_url, which only takes `unix://`: no single socket
    URL serves both). After every start the answering server must report our process's pid
    (INFO server, process_id), so a test never latches onto another redis-server on that port.
    The first start retries on other ports; a restart keeps its port (clients know it) and
    fails if it is taken meanwhile. `port=` fixes the port: no retries on another one.
    """

    ATTEMPTS = 10

    def __init__(self, port: int | None = None, persist: bool = False) -> None:
        self.fixed = port is not None
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="vcm-redis-")
        self.persist = persist
        self.proc: subprocess.Popen | None = None
        self.started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return Path(self.dir) / "redis-server.log"

    def start(self) -> RedisServer:
        attempts = 1 if self.fixed or self.started else self.ATTEMPTS
        for attempt in range(attempts):
            if attempt:
                self.port = free_port()
            try:
                self._start_once()
            except PortTaken:
                self.kill()
                if attempt == attempts - 1:
                    raise
                continue
            self.started = True
            return self
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--appendonly", "yes" if self.persist else "no",
                "--daemonize", "no", "--loglevel", "warning"]
        os.makedirs(self.dir, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1,
                             socket_timeout=5)
        try:
            deadline = time.monotonic() + 15
            while True:
                if self.proc.poll() is not None:
                    raise PortTaken(f"redis-server on {self.port} exited "
                                    f"{self.proc.returncode}: {self._tail()}")
                try:
                    pid = int(client.info("server")["process_id"])
                except (redis.ConnectionError, redis.TimeoutError):
                    pid = None
                except redis.ResponseError as exc:  # e.g. a server that wants a password
                    raise PortTaken(f"another server answers on {self.port}: {exc}") from None
                if pid == self.proc.pid:
                    return
                if pid is not None:
                    raise PortTaken(f"redis-server pid {pid} answers on {self.port}, "
                                    f"not ours ({self.proc.pid})")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on {self.port} never answered: "
                                       f"{self._tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1000:]
        except OSError:
            return ""

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=False)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP the server, and return once it is stopped: connections are still taken (the
        kernel's backlog), nothing is answered (a node that hangs, a network dropping
        replies). `resume` undoes it."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        stat = Path(f"/proc/{self.proc.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server {self.proc.pid} did not stop")
            time.sleep(0.01)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def wipe(self) -> None:
        """Kill and restart with nothing in memory or on disk."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir, exist_ok=True)
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# waits a test stack shortens (`extra` of env_for overrides them): the live health is read
# every 0.2 s instead of 5 s; a namespace run compares leases taken 1 s before its list call
# instead of 2 s (still longer than the test's acquire-then-prune takes)
TEST_TIMINGS = {"VCM_HEALTH_REFRESH": "0.2", "VCM_NAMESPACE_GRACE": "1"}


def env_for(redis_url: str, pools_file: str | os.PathLike | None = None, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(VCM_REDIS_URL=redis_url, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               # a test stack never talks to whatever cluster or vCenters the machine knows:
               # the tests that want them give their own (the test apiserver, the simulator)
               KUBECONFIG=str(ROOT / ".no-kubeconfig"), KUBERNETES_SERVICE_HOST="",
               VCM_INVENTORY_INTERVAL="off", VCM_VCENTER_USERNAME="",
               VCM_VCENTER_PASSWORD="", VCM_VCENTER_CREDENTIALS="",
               # no liveness file in /tmp for each worker a test starts: the liveness tests
               # (workers/test_liveness.py) give theirs
               VCM_WORKER_LIVENESS_FILE="off", **TEST_TIMINGS)
    if pools_file:
        env["VCM_POOLS_FILE"] = str(pools_file)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class LoggedProcess:
    """A subprocess whose stdout and stderr go to a log file; stop() always cleans up.

    `group`: the child leads its own process group, and stop() ends whatever is left in it
    (a prefork worker's pool processes when the main process was killed)."""

    log: str
    proc: subprocess.Popen | None = None
    out = None
    group: bool = False
    _offset: int = 0  # where this run's output starts in the log (a restart appends)
    _pgid: int | None = None  # our child's process group until stop() has emptied it

    def spawn(self, args: list[str], env: dict, cwd: Path = ROOT,
              **popen: Any) -> subprocess.Popen:
        """`popen`: more arguments for subprocess.Popen."""
        self.out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self._offset = self.out.tell()
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=self.group,
                                     **popen)
        self._pgid = self.proc.pid if self.group else None
        return self.proc

    def output(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")
        except OSError:
            return ""

    def output_of_this_run(self) -> str:
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self._offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, for a process thrown away whose shutdown no test looks at (a warm
        shutdown of an idle worker takes a second or more)."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._pgid is not None:  # once: the number may name another group later
            self._end_group(self._pgid)
            self._pgid = None
        if self.out is not None:
            self.out.close()

    @staticmethod
    def _end_group(pgid: int) -> None:
        """SIGKILL what is left in our child's process group and wait until it is gone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                os.killpg(pgid, 0)  # ProcessLookupError once the group is empty
                time.sleep(0.02)


class Worker(LoggedProcess):
    """A real `celery -A tasks worker` subprocess.

    By default (`pool=None`) no -P is passed: the command users run (`celery -A tasks worker
    -Q placement --concurrency 1`, Celery's default prefork pool), so every stack in the tests
    starts its placement worker the documented way. The added flags (-n, -l info,
    --without-mingle, --without-gossip, -E) name the worker and log; they leave the pool as
    it is."""

    group = True

    def __init__(self, env: dict, queues: str = "placement", name: str | None = None,
                 pool: str | None = None, concurrency: int = 1,
                 log: str | None = None) -> None:
        self.env = env
        self.queues = queues
        self.name = name or f"{queues.replace(',', '-')}-{free_port()}@test"
        self.pool = pool
        self.concurrency = concurrency
        self.log = log or tempfile.mktemp(prefix="vcm-worker-", suffix=".log")

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", self.queues]
        if self.pool is not None:
            args += ["-P", self.pool]
        args += ["--concurrency", str(self.concurrency)]
        return args + ["-n", self.name, "-l", "info", "--without-mingle", "--without-gossip",
                       "-E"]

    def start(self, wait: bool = True) -> Worker:
        self.spawn(self.command(), self.env)
        if wait:
            try:
                self.wait_ready()
            except BaseException:  # a worker that never got ready is not left running
                self.kill()
                raise
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until this run logs `<name> ready.` (the main process, once its pool is up, for
        every pool); a restart's log still holds the previous run's line, which is skipped."""
        marker = f"{self.name} ready."

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise WorkerExited(f"worker exited {self.proc.returncode}: "
                                   f"{self.output_of_this_run()[-2000:]}")
            return marker in self.output_of_this_run()

        wait_for_or_raise(ready, WorkerExited, timeout=timeout, what=f"worker {self.name}")


class WorkerExited(RuntimeError):
    pass


def wait_for_or_raise(check, fatal: type[BaseException], timeout: float = 15.0,
                      interval: float = 0.05, what: str = "condition"):
    """wait_for, except that `fatal` from the check ends the wait at once."""

    def guarded():
        try:
            return check()
        except fatal as exc:
            return exc

    value = wait_for(guarded, timeout=timeout, interval=interval, what=what)
    if isinstance(value, fatal):
        raise value
    return value


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
            try:
                wait_for(lambda: "beat: Starting" in self.output(), timeout=START_TIMEOUT,
                         what="beat")
            except BaseException:
                self.kill()
                raise
        return self


class Stack:
    """A private redis-server with a placement worker, a queries worker (unless the test sends
    no query task) and optionally beat."""

    def __init__(self, tmp: Path, pools_yaml: str, beat: bool = False,
                 env_of: dict[str, dict[str, str]] | None = None, queries: bool = True,
                 **env: str) -> None:
        """`env_of`: more variables for one process ("placement", "queries", "beat")."""
        self.tmp = Path(tmp)
        self.pools = self.tmp / "pools.yaml"
        self.pools.write_text(pools_yaml)
        self.redis = RedisServer().start()
        env = {"VCM_MIRROR_FILE": str(self.tmp / "ledger.json"), **env}
        self.env = env_for(self.redis.url, self.pools, **env)
        own = env_of or {}
        self.procs: list[Worker] = [Worker({**self.env, **own.get("placement", {})}, "placement")]
        if queries:
            self.procs.append(Worker({**self.env, **own.get("queries", {})}, "queries",
                                     pool="threads", concurrency=4))
        if beat:
            self.procs.append(Beat({**self.env, **own.get("beat", {})}))
        try:
            for p in self.procs:
                p.start(wait=False)
            for p in self.procs:
                p.wait_ready() if not isinstance(p, Beat) else wait_for(
                    lambda p=p: "beat: Starting" in p.output(), timeout=START_TIMEOUT,
                    what="beat")
        except BaseException:  # a stack that did not start leaves nothing running
            for p in self.procs:
                p.kill()
            self.redis.stop()
            raise
        from celery import Celery

        self.app = Celery("client", broker=self.redis.url, backend=self.redis.url)
        self.app.config_from_object("celeryconfig")
        self.app.conf.broker_url = self.app.conf.result_backend = self.redis.url

    def stop(self) -> None:
        """The stack is thrown away: its processes are SIGKILLed (a test that looks at a
        shutdown stops that process itself first)."""
        for p in self.procs:
            p.kill()
        self.app.close()
        self.redis.stop()
