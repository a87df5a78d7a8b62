from __future__ import annotations

import os
from pathlib import Path

import pytest
from celery import Celery

from tests.support.helpers import EXAMPLE_POOLS, replace_file, reset_ledger
from tests.support.procs import RedisServer, Worker, env_for

# Celery's own fixtures (celery_app, celery_worker, celery_config, ...: an embedded worker in a
# thread, workers/test_inprocess.py). pytest-celery's plugin, which would bring them, stays off
# (pyproject.toml: -p no:celery -p no:docker_tools): from 1.0 on it replaces `celery_worker`
# with a worker in a Docker container and loads the Docker client into every pytest process.
pytest_plugins = ("celery.contrib.pytest",)


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


@pytest.fixture()
def ledger(redis_server, stack, pools_file):
    """A clean ledger before each test."""
    client = redis_server.client()
    reset_ledger(client, stack["env"].get("VCM_MIRROR_FILE"))
    replace_file(pools_file, EXAMPLE_POOLS.read_text())
    from workers.adapters.ledger import Ledger

    yield Ledger(client)
    client.close()


@pytest.fixture(scope="module")
def documented_stack(tmp_path_factory):
    """A stack started the documented way (see tests/support/documented_stack.py), per
    module."""
    from tests.support.documented_stack import DocumentedStack

    stack = DocumentedStack(tmp_path_factory.mktemp("documented-stack"))
    yield stack
    stack.stop()


@pytest.fixture()
def s(documented_stack):
    """That stack with an empty ledger and mirror."""
    documented_stack.reset()
    yield documented_stack


# -- pytest-xdist: which tests run together, and what is handed out first -----------------------
# `make test` runs `-n 6 --dist loadfile`: a file's tests run on one worker, in their order, and
# its module-scoped stacks start once. The files of SPREAD share nothing between their tests
# (each starts its own stack in its tmp_path, no order; a module-scoped fixture is at most a
# bare redis-server, then started once per worker that runs one of them): their tests
# are handed out one by one, to whichever worker is free. The slowest work is handed out first
# (SLOWEST_FIRST), so that none of it starts last and runs on alone at the end; the list only
# costs or saves time.
SPREAD = frozenset({"outside/test_mirror_worker.py", "redis/test_restore.py",
                    "redis/test_restore_hostile.py", "workers/test_start_commands.py",
                    "workers/test_concurrency.py", "http/test_api_failures.py",
                    "workers/test_liveness.py", "workers/test_cli_redis_outage.py",
                    "redis/test_send_stalled.py", "outside/test_job_step.py"})
# by the summed duration of their tests in a `make test` run, longest first
SLOWEST_FIRST = ("outside/test_job_step.py", "workers/test_liveness.py",
                 "outside/test_mirror_worker.py", "outside/test_pools_commands.py",
                 "redis/test_restore_hostile.py", "outside/test_controller_adopt.py",
                 "redis/test_restore.py", "http/test_api_schema.py", "workers/test_cli.py",
                 "workers/test_start_commands.py", "workers/test_cli_redis_outage.py",
                 "redis/test_send_stalled.py", "outside/test_deploy.py",
                 "outside/test_controller_faults.py",
                 "outside/test_vcenter.py", "outside/test_inventory.py",
                 "outside/test_namespaces.py", "workers/test_pools_reload.py",
                 "workers/test_stateful.py", "outside/test_pressure_configmap.py",
                 "workers/test_concurrency.py", "unit/test_lease.py")


def _file_of(nodeid: str) -> str:
    """The test file of a node id, relative to tests/ (`workers/test_waiting.py`)."""
    return nodeid.split("::", 1)[0].removeprefix("tests/")


def _rank(scope: str) -> int:
    name = _file_of(scope)
    return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    here = Path(__file__).parent
    moved = sorted(name for name in SPREAD | set(SLOWEST_FIRST) if not (here / name).is_file())
    if moved:
        raise pytest.UsageError(f"tests/conftest.py names test files that do not exist: {moved}")
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
