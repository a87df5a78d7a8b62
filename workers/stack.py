"""`vcm run`: the whole local stack in the foreground; Ctrl-C stops it all."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from .bootstrap import require_valid_pools
from .settings import ROOT, Settings


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def kube_config_set() -> bool:
    """Whether $KUBECONFIG names a usable kubeconfig: then `vcm run` starts the Lease
    controller too (a kubeconfig merely lying in ~/.kube is not taken as a wish to serve
    that cluster's Leases)."""
    if not os.environ.get("KUBECONFIG"):
        return False
    from .adapters.kube_config import NoKubeConfig, kube_configuration

    try:
        kube_configuration()
    except NoKubeConfig:
        print("vcm run: KUBECONFIG is set but not usable: the Lease controller is not started",
              file=sys.stderr, flush=True)
        return False
    return True


class Stack:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        print(f"vcm run: starting {name}: {' '.join(cmd)}", flush=True)
        self.procs.append((name, subprocess.Popen(cmd, env=env, cwd=ROOT,
                                                  start_new_session=True)))

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                print(f"vcm run: stopping {name}", flush=True)
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def watch(self) -> int:
        while True:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    print(f"vcm run: {name} exited with {proc.returncode}; stopping the stack",
                          file=sys.stderr, flush=True)
                    return proc.returncode or 1
            time.sleep(0.5)


def run_stack(args: argparse.Namespace) -> int:
    settings = (Settings.from_env(redis_url=args.redis_url) if args.redis_url
                else Settings.from_env())
    require_valid_pools(settings)  # before anything starts: the file, pool and field
    # the children's environment: ours, with the Redis URL and pools file settled here
    env = dict(os.environ, VCM_REDIS_URL=settings.redis_url, PYTHONUNBUFFERED="1",
               VCM_POOLS_FILE=settings.pools_file)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    stack = Stack()
    state = Path(ROOT / ".vcm")
    state.mkdir(exist_ok=True)
    env.setdefault("VCM_MIRROR_FILE", str(state / "ledger.json"))

    url = urlparse(settings.redis_url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if not reachable(host, port):
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"vcm run: Redis at {host}:{port} is not reachable", file=sys.stderr)
            return 1
        exe = shutil.which("redis-server")
        if not exe:
            print("vcm run: no Redis reachable and no redis-server installed "
                  "(apt-get install redis-server, or set VCM_REDIS_URL)", file=sys.stderr)
            return 1
        stack.start("redis", [exe, "--port", str(port), "--bind", "127.0.0.1",
                              "--dir", str(state), "--appendonly", "yes", "--save", ""], env)
        deadline = time.monotonic() + 10
        while not reachable(host, port) and time.monotonic() < deadline:
            time.sleep(0.1)

    celery = [sys.executable, "-m", "celery", "-A", "tasks"]
    stack.start("placement worker", celery + [
        "worker", "-Q", "placement", "-P", "solo", "-c", "1", "-n", "placement@%h", "-E",
        "-l", "info", "--without-mingle", "--without-gossip"], env)
    stack.start("queries worker", celery + [
        "worker", "-Q", "queries", "-P", "threads", "-c", "4", "-n", "queries@%h", "-E",
        "-l", "info", "--without-mingle", "--without-gossip"], env)
    stack.start("beat (exactly one)", celery + [
        "beat", "-l", "info", "--schedule", str(state / "celerybeat-schedule")], env)
    if not args.no_api:
        stack.start("api", [sys.executable, "-m", "workers.cli", "api", "--host", "127.0.0.1",
                            "--port", str(args.api_port)], env)
    if not args.no_flower:
        auth = env.get("FLOWER_BASIC_AUTH")
        if not auth:
            auth = f"admin:{secrets.token_urlsafe(9)}"
            env["FLOWER_BASIC_AUTH"] = auth
            print(f"vcm run: Flower development credentials: {auth}", flush=True)
        stack.start("flower", celery + ["flower", f"--port={args.flower_port}",
                                        "--address=127.0.0.1"], env)
    if not getattr(args, "no_controller", False) and kube_config_set():
        stack.start("controller", [sys.executable, "-m", "workers.cli", "controller"], env)
    print(f"vcm run: API on http://127.0.0.1:{args.api_port}, Flower on "
          f"http://127.0.0.1:{args.flower_port}; Ctrl-C stops everything", flush=True)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        return stack.watch()
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
