"""Helpers for the HTTP shim tests (no tests here): a real uvicorn server in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.procs import ROOT, free_port, wait_for

UPSTREAM = {"vcpus": 24, "memory": 96, "storage": 700, "vcenters": 1}
TOKENS = "alice:alice-secret,bob:bob-secret,root:root-secret:admin"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}-secret"}


class ApiServer:
    """`python -m api_shim --port N` (what `vcm api` runs), against the given environment."""

    def __init__(self, env: dict, **extra: str) -> None:
        self.port = free_port()
        self.env = {**env, **{k: str(v) for k, v in extra.items()}}
        self.log = tempfile.mktemp(prefix="vcm-api-", suffix=".log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: bool = True) -> ApiServer:
        self.out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api_shim", "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT, env=self.env, stdout=self.out, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"api exited {self.proc.returncode}: {self.output()[-2000:]}")
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200

        wait_for(up, timeout=20, what="the API server")
        if ready:
            wait_for(lambda: httpx.get(self.url + "/readyz", timeout=5).status_code == 200,
                     timeout=20, what="the API to see a placement worker")
        return self

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def output(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "out", None):
            self.out.close()


def timed(fn, *args, **kw) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    resp = fn(*args, **kw)
    return resp, time.monotonic() - start


def assert_error(resp: httpx.Response, status: int, error: str | None = None,
                 field: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "message", "details"}, body
    assert isinstance(body["message"], str) and body["message"]
    if error is not None:
        assert body["error"] == error, body
    if field is not None:
        assert body["details"].get("field") == field, body
        assert field in body["message"], body
    return body
