from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from celery import Celery

from tests.support.procs import ROOT, RedisServer, Worker, env_for

EXAMPLE_POOLS = ROOT / "examples" / "pools.yaml"


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pools_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pools") / "pools.yaml"
    path.write_text(EXAMPLE_POOLS.read_text())
    return path


@pytest.fixture(scope="session")
def stack(redis_server, pools_file, tmp_path_factory):
    """One placement worker and one queries worker on a private redis-server."""
    mirror = tmp_path_factory.mktemp("mirror") / "ledger.json"
    env = env_for(redis_server.url, pools_file, VCM_MIRROR_FILE=str(mirror))
    placement = Worker(env, "placement").start(wait=False)
    queries = Worker(env, "queries", pool="threads", concurrency=4).start(wait=False)
    try:
        placement.wait_ready()
        queries.wait_ready()
    except BaseException:  # nothing left running
        placement.kill()
        queries.kill()
        raise
    yield {"env": env, "placement": placement, "queries": queries, "redis": redis_server}
    placement.kill()
    queries.kill()


@pytest.fixture()
def client_app(redis_server) -> Celery:
    app = Celery("vcm-client", broker=redis_server.url, backend=redis_server.url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = redis_server.url
    app.conf.result_backend = redis_server.url
    yield app
    app.close()


def reset_ledger(client, mirror_file: str | None) -> None:
    """Empty the ledger and its mirror (only vcm:* keys; Celery's own keys stay).

    The keys go and `ready` is set in one transaction: a worker that saw the ledger unready
    in between would restore it from the mirror. The placement worker's publisher may be in
    the middle of a whole save of the old ledger; the empty mirror is written again until no
    such save lands on top of it."""
    keys = list(client.scan_iter("vcm:*", count=1000))
    pipe = client.pipeline(transaction=True)
    if keys:
        pipe.delete(*keys)
    pipe.set("vcm:ready", "0")
    pipe.execute()
    if not mirror_file:
        return
    from workers.adapters.mirror.file import FileMirror

    empty = {"format": 1, "seq": 0, "leases": []}
    for _ in range(20):
        FileMirror(mirror_file).save(empty)
        time.sleep(0.05)
        if not (FileMirror(mirror_file).load() or {}).get("leases"):
            return
    raise AssertionError(f"{mirror_file} keeps being rewritten with the old ledger")


@pytest.fixture()
def ledger(redis_server, stack, pools_file):
    """A clean ledger before each test."""
    client = redis_server.client()
    reset_ledger(client, stack["env"].get("VCM_MIRROR_FILE"))
    pools_file.write_text(EXAMPLE_POOLS.read_text())
    from workers.adapters.ledger import Ledger

    yield Ledger(client)
    client.close()


@pytest.fixture(scope="module")
def s9(tmp_path_factory):
    """A stack started the documented way (see tests/support/section9.py), per module."""
    from tests.support.section9 import Section9

    stack = Section9(tmp_path_factory.mktemp("section9"))
    yield stack
    stack.stop()


@pytest.fixture()
def s(s9):
    """That stack with an empty ledger and mirror."""
    s9.reset()
    yield s9


# -- pytest-xdist: which tests run together, and what is handed out first -----------------------
# `make test` runs `-n 4 --dist loadfile`: a file's tests run on one worker, in their order, and
# its module-scoped stacks start once. The files of SPREAD share nothing between their tests
# (each starts its own stack in its tmp_path; no module-scoped fixture, no order): their tests
# are handed out one by one, to whichever worker is free. The slowest work is handed out first
# (SLOWEST_FIRST), so that none of it starts last and runs on alone at the end; the list only
# costs or saves time.
SPREAD = frozenset({"test_mirror_worker.py", "test_restore.py", "test_start_commands.py",
                    "test_concurrency.py", "test_api_failures.py"})
SLOWEST_FIRST = ("test_stateful.py", "test_mirror_worker.py", "test_api_schema.py",
                 "test_restore.py", "test_inventory.py", "test_namespaces.py", "test_waiting.py")


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def _rank(scope: str) -> int:
    name = _file_of(scope)
    return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if _file_of(nodeid) in SPREAD else super()._split_scope(nodeid)

        def _assign_work_unit(self, node) -> None:
            self.workqueue.move_to_end(min(self.workqueue, key=_rank), last=False)
            super()._assign_work_unit(node)

    return Scheduling(config, log)


def pytest_configure(config):
    os.environ.setdefault("VCM_REDIS_URL", "redis://127.0.0.1:1/0")  # never the machine's Redis
