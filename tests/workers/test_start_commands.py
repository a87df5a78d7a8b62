"""Every documented way to start the placement worker takes the same path: tasks run in the
worker's own process, and each change is journaled there before its answer goes out."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from celery import Celery

from tests.support.helpers import call
from tests.support.procs import ROOT, LoggedProcess, RedisServer, env_for, wait_for
from tests.support.start_checks import (
    GOOD_POOL,
    INVALID_POOLS,
    INVALID_SETTINGS,
    pools_message,
    setting_messages,
)
from workers.adapters.mirror.file import FileMirror


def _deployed_command() -> list[str]:
    docs = yaml.safe_load_all((ROOT / "deploy" / "placement.yaml").read_text())
    for doc in docs:
        if doc and doc.get("kind") == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c["command"][:4] == ["celery", "-A", "tasks", "worker"]:
                    return c["command"][1:]
    raise AssertionError("deploy/placement.yaml has no placement worker command")


def _vcm_run_command() -> list[str]:
    """The placement worker's arguments as `vcm run` starts it."""
    from workers import stack

    source = Path(stack.__file__).read_text()
    start = source.index('stack.start("placement worker", celery + [')
    block = source[start:source.index("]", start)]
    args = [a.strip().strip('"') for a in block.split("[", 1)[1].replace("\n", " ").split(",")]
    return ["-A", "tasks", *[a for a in args if a]]


COMMANDS = {
    # exactly the documented command: Celery's default (prefork) pool
    "documented": ["-A", "tasks", "worker", "-Q", "placement", "--concurrency", "1"],
    "solo": ["-A", "tasks", "worker", "-Q", "placement", "-P", "solo"],
    "prefork-named": ["-A", "tasks", "worker", "-Q", "placement", "-P", "prefork", "-c", "2"],
    # a pool that is neither solo nor prefork (Celery's `-P custom`, named by
    # CELERY_CUSTOM_WORKER_POOL): run solo too, with a warning that says so
    "custom": ["-A", "tasks", "worker", "-Q", "placement", "-P", "custom"],
    "vcm-run": None,
    "deploy": None,
}


def _args(kind: str) -> list[str]:
    if kind == "vcm-run":
        return _vcm_run_command()
    if kind == "deploy":
        return _deployed_command()
    return COMMANDS[kind]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(x) for x in text)
    return out


@pytest.mark.parametrize("kind", list(COMMANDS))
def test_placement_worker_journals_in_process_however_it_is_started(kind, tmp_path):
    redis_server = RedisServer().start()
    mirror = tmp_path / "ledger.json"
    pools = tmp_path / "pools.yaml"
    pools.write_text((ROOT / "examples" / "pools.yaml").read_text())
    env = env_for(redis_server.url, pools, VCM_MIRROR_FILE=str(mirror),
                  CELERY_CUSTOM_WORKER_POOL="celery.concurrency.base:BasePool")
    worker = LoggedProcess()
    worker.log = str(tmp_path / "worker.log")
    args = [a.replace("%h", "test") for a in _args(kind)]
    proc = worker.spawn([sys.executable, "-m", "celery", *args, "-l", "info"], env)
    app = Celery("client", broker=redis_server.url, backend=redis_server.url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = redis_server.url
    try:
        wait_for(lambda: "ready." in worker.output() or proc.poll() is not None, timeout=60,
                 what="the placement worker")
        assert proc.poll() is None, worker.output()[-2000:]
        wait_for(mirror.exists, what="the publisher's first save")
        banner = worker.output()
        assert "(solo)" in banner, banner[:3000]
        leases = call(app, "vcm.acquire", request={"vcpus": 2, "memory": 4, "owner": "a"})
        released = call(app, "vcm.release", lease_ids=[leases[0]["metadata"]["name"]],
                        owner="a")
        assert released == [leases[0]["metadata"]["name"]]
        # the tasks ran in the worker's own process: no pool children
        assert _children(proc.pid) == []
        # each change went to the journal before its answer (no whole save per answer)
        journal = Path(str(mirror) + ".journal").read_text().splitlines()
        records = [json.loads(line) for line in journal if line]
        name = leases[0]["metadata"]["name"]
        assert any(name in json.dumps(r.get("put")) for r in records), journal
        assert any(name in (r.get("del") or []) for r in records), journal
        assert (FileMirror(str(mirror)).load() or {}).get("leases") == []
        log = worker.output()
        assert "a whole save is due" not in log, log[-3000:]
        # prefork is how the documented command starts it: swapped for solo without a word;
        # any other pool is named in a warning
        warned = "the placement worker was started with the base pool; running it with the " \
                 "solo pool instead"
        assert (warned in log) == (kind == "custom"), log[-3000:]
    finally:
        worker.kill()  # thrown away: this test does not look at its shutdown
        app.close()
        redis_server.stop()


# ---- an invalid configuration stops every process at start ------------------------------------
# Each role stops at start by one of two checks, whatever the problem: the settings
# (workers.settings.Settings.from_env) and the pools file (the workers' runtime reads it, the
# other roles call workers.bootstrap.require_valid_pools). Each role is started once per check,
# each problem of a check is run end to end by one role at least, and every problem goes
# through both checks in tests/unit/test_start_checks.py.


def _role_commands(api_port: int, flower_port: int) -> dict[str, list[str]]:
    """Each process role, started with its documented command (`celery` and `vcm` as this
    interpreter runs them; Celery's with `-l info`, so that a worker says when it is ready)."""
    celery = [sys.executable, "-m", "celery"]
    vcm = [sys.executable, "-m", "workers.cli"]
    return {
        "placement worker": [*celery, "-A", "tasks", "worker", "-Q", "placement",
                             "--concurrency", "1", "-l", "info"],
        "queries worker": [*celery, "-A", "tasks", "worker", "-Q", "queries", "-l", "info"],
        "beat": [*celery, "-A", "tasks", "beat", "-l", "info"],
        "vcm api": [*vcm, "api", "--port", str(api_port)],
        "vcm run": [*vcm, "run", "--api-port", str(api_port), "--flower-port", str(flower_port)],
    }


ROLES = list(_role_commands(0, 0))
# the problem each role is started with: an invalid pools file, a setting none can use
ROLE_PROBLEMS = {
    "placement worker": ("unknown key", "a commit window of 1e20 s"),
    "queries worker": ("negative budget", "a Redis URL whose port is out of range"),
    "beat": ("duplicate pool names", "a visibility timeout of 0"),
    "vcm api": ("top-level key that is not text", "a Redis URL whose database is not a number"),
    "vcm run": ("negative budget", "a Redis URL of another scheme"),
}
# a setting problem more than the roles: run by the placement worker too
SETTING_RUNS = [(role, problems[1]) for role, problems in ROLE_PROBLEMS.items()] + [
    ("placement worker", "a Redis URL with a query option no client takes")]

# what each role says once it serves: a worker's "<name> ready.", uvicorn's start, beat's first
# task sent
SERVING = ("ready.", "Application startup complete", "Uvicorn running", "Sending due task")


def test_each_problem_is_run_end_to_end_by_a_role():
    assert sorted(ROLE_PROBLEMS) == sorted(ROLES)
    assert {pools for pools, _ in ROLE_PROBLEMS.values()} == set(INVALID_POOLS)
    assert {setting for _, setting in SETTING_RUNS} == set(INVALID_SETTINGS)
    assert {role for role, _ in SETTING_RUNS} == set(ROLES)


@pytest.fixture(scope="module")
def start_up_redis():
    server = RedisServer().start()
    yield server
    server.stop()


def _stops_at_start(role: str, env: dict, tmp_path, *messages: str) -> None:
    """Started with its documented command, the process exits non-zero with `messages` in its
    output, never serves and prints no traceback."""
    from tests.support.procs import free_port

    command = _role_commands(free_port(), free_port())[role]
    proc = LoggedProcess()
    proc.log = str(tmp_path / "out.log")
    proc.group = True
    proc.spawn(command, env, cwd=tmp_path)  # beat's schedule file lands there
    try:
        wait_for(lambda: proc.proc.poll() is not None
                 or any(mark in proc.output() for mark in SERVING),
                 timeout=60, what=f"the {role} to stop at start")
        out = proc.output()
        assert proc.proc.poll() is not None, f"{role} serves:\n{out[-3000:]}"
        assert proc.proc.returncode != 0, out[-3000:]
        assert all(message in out for message in messages), out[-3000:]
        assert not any(mark in out for mark in SERVING), out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    finally:
        proc.stop()  # vcm run stops what it started on SIGTERM


@pytest.mark.parametrize("role", ROLES)
def test_an_invalid_pools_file_stops_every_process_at_start(role, tmp_path, start_up_redis):
    """Started with its documented command against a reachable Redis, each process exits
    non-zero with a message naming the file, the pool and the field, and never serves."""
    problem = ROLE_PROBLEMS[role][0]
    path = tmp_path / "pools.yaml"
    path.write_text(INVALID_POOLS[problem][0])
    env = env_for(start_up_redis.url, path, VCM_MIRROR_FILE=str(tmp_path / "ledger.json"))
    _stops_at_start(role, env, tmp_path, pools_message(path, problem))


@pytest.mark.parametrize(("role", "problem"), SETTING_RUNS)
def test_a_setting_no_process_can_use_stops_every_process_at_start(role, problem, tmp_path,
                                                                   start_up_redis):
    """VCM_REDIS_URL is read by Celery (broker, results), redis-py (the ledger) and vcm run,
    the numbers by Celery and the workers: a value none of them can use stops each process
    with a message naming the variable (a Redis answers where the URL points)."""
    variable, value, _ = INVALID_SETTINGS[problem]
    path = tmp_path / "pools.yaml"
    path.write_text(yaml.safe_dump({"pools": [GOOD_POOL]}))
    env = env_for(start_up_redis.url, path, VCM_MIRROR_FILE=str(tmp_path / "ledger.json"),
                  **{variable: value.format(port=start_up_redis.port)})
    _stops_at_start(role, env, tmp_path, *setting_messages(problem))


def test_a_placement_worker_that_cannot_restore_the_ledger_stops_at_start(tmp_path,
                                                                          start_up_redis):
    """Redis holds no ledger and the mirror to rebuild it from cannot be read: the placement
    worker exits non-zero naming the mirror file, instead of serving and refusing every
    change."""
    start_up_redis.client().flushall()
    mirror = tmp_path / "ledger.json"
    mirror.write_text('{"seq": 3, "leases": [')  # cut off mid-write
    pools = tmp_path / "pools.yaml"
    pools.write_text(yaml.safe_dump({"pools": [GOOD_POOL]}))
    env = env_for(start_up_redis.url, pools, VCM_MIRROR_FILE=str(mirror))
    proc = LoggedProcess()
    proc.log = str(tmp_path / "out.log")
    proc.group = True
    proc.spawn([sys.executable, "-m", "celery", *COMMANDS["documented"], "-l", "info"], env,
               cwd=tmp_path)
    try:
        wait_for(lambda: proc.proc.poll() is not None or "ready." in proc.output(),
                 timeout=60, what="the placement worker to stop at start")
        out = proc.output()
        assert proc.proc.poll() is not None and proc.proc.returncode != 0, out[-3000:]
        assert f"cannot start: MirrorError: mirror file {mirror} is not valid JSON" in out, \
            out[-3000:]
        assert "ready." not in out and "Traceback" not in out, out[-3000:]
    finally:
        proc.stop()


# -- `vcm run`, as `make run` starts it -----------------------------------------------------

def _process_tree(pid: int) -> dict[int, str]:
    """Every descendant of `pid`, by pid, with its start time (a reused pid is not it)."""
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            started = _started(child)
            if started is not None:
                out[child] = started
                todo.append(child)
    return out


def _started(pid: int) -> str | None:
    """The start time of a live process (None: gone, or a zombie: it has exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def test_vcm_run_serves_and_stops_everything_on_ctrl_c(tmp_path):
    """`vcm run` (the console script `make run` runs) on a private Redis and private ports:
    the API answers ready, a lease is acquired over HTTP and released with the CLI, and
    Ctrl-C (SIGINT to vcm) stops every process it started, exiting 0."""
    import signal
    import subprocess

    import httpx

    from tests.support.procs import free_port

    redis_server = RedisServer().start()
    pools = tmp_path / "pools.yaml"
    pools.write_text((ROOT / "examples" / "pools.yaml").read_text())
    env = env_for(redis_server.url, pools, VCM_MIRROR_FILE=str(tmp_path / "ledger.json"))
    env.pop("FLOWER_BASIC_AUTH", None)
    vcm = str(Path(sys.executable).with_name("vcm"))
    api_port, flower_port = free_port(), free_port()
    run = LoggedProcess()
    run.log = str(tmp_path / "vcm-run.log")
    # SIGINT as a terminal's Ctrl-C finds it (a shell's background job, pytest included, starts
    # its children with SIGINT ignored, which Python keeps)
    proc = run.spawn([vcm, "run", "--api-port", str(api_port), "--flower-port",
                      str(flower_port)], env,
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tree: dict[int, str] = {}
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30)

        def ready() -> bool:
            assert proc.poll() is None, run.output()[-3000:]
            try:
                return api.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=90, what="vcm run's API to be ready")
        lease = api.post("/acquire", json={"vcpus": 2, "memory": 4, "owner": "smoke"})
        assert lease.status_code == 200, lease.text
        (granted,) = lease.json()
        name = granted["metadata"]["name"]
        released = subprocess.run([vcm, "release", name, "--owner", "smoke", "-o", "json"],
                                  env=env, capture_output=True, text=True, timeout=60)
        assert released.returncode == 0, released.stderr
        assert json.loads(released.stdout) == [name]
        assert api.get("/leases", params={"owner": "smoke"}).json() == []
        # Flower is up behind the development login vcm run made up and printed
        login = re.search(r"Flower development credentials: (\S+):(\S+)", run.output())
        assert login, run.output()[-3000:]
        flower = f"http://127.0.0.1:{flower_port}/api/workers"
        wait_for(lambda: httpx.get(flower, auth=login.groups(), timeout=10).status_code == 200,
                 timeout=60, what="Flower")
        assert httpx.get(flower, timeout=10).status_code == 401
        api.close()

        tree = _process_tree(proc.pid)
        assert len(tree) >= 5, f"vcm run should run 5 processes: {tree}"  # no Redis: ours
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, run.output()[-3000:]
        left = {pid for pid, started in tree.items() if _started(pid) == started}
        assert not left, f"still running after vcm run exited: {sorted(left)}"
        out = run.output()
        for name in ("placement worker", "queries worker", "beat", "api", "flower"):
            assert f"vcm run: stopping {name}" in out, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid, started in tree.items():  # whatever it left behind, so the run goes on
            if _started(pid) == started:
                os.kill(pid, signal.SIGKILL)
        run.stop()
        redis_server.stop()
