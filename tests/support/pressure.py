"""Memory pressure on a real redis-server: one started with deploy/redis.yaml's own arguments
(only the data dir, the port and a small maxmemory are local), and a broker backlog, task
messages on a queue no worker consumes, that fills it."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from tests.support.procs import Worker, free_port, wait_for
from workers.adapters.redis_memory import MemoryUse, refused_for_memory

BACKLOG = "vcm-test-backlog"  # a queue nobody consumes
PAD = 16 * 1024  # bytes of padding per backlog message
OVERSHOOT = 2 * 1024 * 1024  # how far past maxmemory `fill` takes Redis


def manifest_redis_argv(data_dir: str, port: int, password: str, maxmemory: str) -> list[str]:
    """redis-server's command line from deploy/redis.yaml, expanded as the kubelet does, with
    the pod's data dir, a local port and a small maxmemory."""
    from tests.support.manifests import (
        REDIS_SECRET,
        REDIS_SECRET_KEY,
        SAMPLE_SECRETS,
        base_docs,
        k8s_expand,
        redis_container,
        resolve_env,
    )

    docs = base_docs()
    _sts, c = redis_container(docs)
    env = resolve_env(docs, c, {**SAMPLE_SECRETS, REDIS_SECRET: {REDIS_SECRET_KEY: password}})
    words = [k8s_expand(str(t), env) for t in list(c["command"]) + list(c.get("args", []))]
    assert words[0] == "redis-server"
    words[0] = shutil.which("redis-server") or "/usr/bin/redis-server"
    words[words.index("--dir") + 1] = data_dir
    words[words.index("--maxmemory") + 1] = maxmemory
    return words + ["--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]


class ManifestRedis:
    """redis-server as deploy/ runs it (password included), on a free local port."""

    def __init__(self, maxmemory: str = "16mb") -> None:
        self.dir = tempfile.mkdtemp(prefix="vcm-redis-pressure-")
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self.argv = manifest_redis_argv(self.dir, self.port, self.password, maxmemory)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def policy(self) -> str:
        return self.argv[self.argv.index("--maxmemory-policy") + 1]

    def start(self) -> ManifestRedis:
        log = open(Path(self.dir) / "redis-server.log", "ab")  # noqa: SIM115 - the child's
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        client = self.client()
        try:
            wait_for(lambda: self.proc.poll() is None and client.info("server")["process_id"]
                     == self.proc.pid, what=f"redis-server on {self.port}")
        finally:
            client.close()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def memory(client: redis.Redis) -> MemoryUse:
    return MemoryUse.from_info(client.info("memory"))


def send_backlog(app: Celery, pad: int = PAD, queue: str = BACKLOG) -> None:
    """One task message on `queue`, sent as our clients send tasks: without declaring the queue
    (celeryconfig's task_routes say why; with it, a refusal Redis takes on kombu's retry ends in
    an AttributeError instead of the message or the refusal)."""
    app.send_task("backlog.never_consumed", queue=queue, kwargs={"pad": "x" * pad}, declare=())


def fill_to(app: Celery, client: redis.Redis, ratio: float, queue: str = BACKLOG) -> MemoryUse:
    """A backlog on `queue` until Redis uses at least `ratio` of its maxmemory."""
    for _ in range(100_000):
        now = memory(client)
        if now.ratio is not None and now.ratio >= ratio:
            return now
        send_backlog(app, queue=queue)
    raise AssertionError(f"Redis never reached {ratio:.0%} of its maxmemory")


# copies of a backlog message, pushed in one script: Redis checks maxmemory when a script
# starts (its command is small) and then lets it run to its end
_COPIES = "local m = redis.call('LINDEX', KEYS[1], 0) " \
          "for i = 1, tonumber(ARGV[1]) do redis.call('RPUSH', KEYS[1], m) end return 1"


def _copy_to(client: redis.Redis, queue: str, ratio: float) -> None:
    """Copies of a backlog message on `queue` (one script) until Redis uses about `ratio` of
    its maxmemory."""
    now = memory(client)
    if now.ratio is None or now.ratio >= ratio:
        return
    each = max(1, client.memory_usage(queue) // max(1, client.llen(queue)))
    client.eval(_COPIES, 1, queue, int((ratio - now.ratio) * now.limit) // each)


# how full `fill` makes Redis with copies of one message before its sends meet the refusal
# (a few dozen, instead of some 600 sends of the whole way)
FAST_FILL = 0.9


def fill(app: Celery, client: redis.Redis, queue: str = BACKLOG) -> dict[str, Any]:
    """A backlog on `queue` until Redis refuses a message (up to FAST_FILL of maxmemory with
    copies of the first message sent); then Redis taken `OVERSHOOT` past its maxmemory by more
    copies of a backlog message, so that small frees (clients' buffers) do not bring it below
    again. Returns how many messages were sent, the refusal the sender got, and Redis's
    memory."""
    sent = 0
    refusal: BaseException | None = None
    for _ in range(100_000):
        try:
            send_backlog(app, queue=queue)
        except Exception as exc:  # noqa: BLE001 - returned: what a client of the broker gets
            if not refused_for_memory(exc):
                raise
            refusal = exc
            break
        sent += 1
        if sent == 1:
            _copy_to(client, queue, FAST_FILL)
    assert refusal is not None, "Redis never refused a message"
    copies = OVERSHOOT // max(1, client.memory_usage(queue) // max(1, client.llen(queue)))
    for _ in range(1000):
        try:
            client.eval(_COPIES, 1, queue, copies)
            break
        except redis.exceptions.OutOfMemoryError:
            client.rpop(queue)  # a delete: Redis takes it while full
    now = memory(client)
    assert now.full, f"Redis is not full after the backlog: {now}"
    return {"sent": sent, "refusal": refusal, "memory": now}


def free(client: redis.Redis, queue: str = BACKLOG) -> MemoryUse:
    """Drop the backlog (a delete: Redis takes it while full)."""
    client.delete(queue)
    now = memory(client)
    assert not now.full, f"Redis is still full without the backlog: {now}"
    return now


# ledger keys that come and go as the service works, whatever the memory: the publisher's
# wake-up, the waiting line (a waiter leaves it when its wait runs out) and held answers
TRANSIENT = (b"vcm:kick", b"vcm:waiting", b"vcm:waiters", b"vcm:twins:", b"vcm:outbox")


def records(client: redis.Redis, result_ids: list[str] = ()) -> set[bytes]:
    """What the service promises to keep, present now: the ledger's keys (vcm:*, but the
    TRANSIENT ones), and the stored answers of `result_ids` (placement tasks: kept a day)."""
    keys = {k for k in client.scan_iter("vcm:*", count=1000) if not k.startswith(TRANSIENT)}
    answers = [f"celery-task-meta-{i}".encode() for i in result_ids]
    return keys | {k for k in answers if client.exists(k)}


# the whole stack under pressure --------------------------------------------------------------
OWNER = "job-pressure"  # the owner of the small leases the pressure tests take
ANSWER = 30.0  # seconds a pressure test waits for an answer or a log line


def small(request_id: str, owner: str = OWNER) -> dict[str, Any]:
    return {"vcpus": 1, "memory": 1, "networks": 0, "owner": owner, "request-id": request_id}


def lease_ids(leases: list[dict[str, Any]]) -> list[str]:
    return [x["metadata"]["name"] for x in leases]


def logged(worker: Worker, line: str, *alternatives: str) -> None:
    """Wait until the worker's log says `line` (or one of `alternatives`), the worker
    running."""
    lines = (line, *alternatives)
    try:
        wait_for(lambda: worker.proc.poll() is None
                 and any(x in worker.output_of_this_run() for x in lines),
                 timeout=ANSWER, what=f"{line!r} in the log of {worker.name}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; exit code {worker.proc.poll()}, log:\n"
                             f"{worker.output_of_this_run()[-3000:]}") from None


class PausingWorker(Worker):
    """The placement worker of tests/support/pause_after_commit.py: the service as it is,
    with a gate after a commit (armed and opened by the test)."""

    def command(self) -> list[str]:
        args = super().command()
        args[args.index("tasks")] = "tests.support.pause_after_commit"
        return args
