"""Helpers for the HTTP shim tests (no tests here): a real uvicorn server in a subprocess."""

from __future__ import annotations

import sys
import tempfile
import time

import httpx

from tests.support.procs import START_TIMEOUT, LoggedProcess, free_port, wait_for

UPSTREAM = {"vcpus": 24, "memory": 96, "storage": 700, "vcenters": 1}
TOKENS = "alice:alice-secret,bob:bob-secret,root:root-secret:admin"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}-secret"}


class ApiServer(LoggedProcess):
    """`python -m api_shim --port N` (what `vcm api` runs), against the given environment."""

    def __init__(self, env: dict, **extra: str) -> None:
        self.port = free_port()
        self.env = {**env, **{k: str(v) for k, v in extra.items()}}
        self.log = tempfile.mktemp(prefix="vcm-api-", suffix=".log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: bool = True) -> ApiServer:
        self.spawn([sys.executable, "-m", "api_shim", "--port", str(self.port),
                    "--log-level", "warning"], self.env)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"api exited {self.proc.returncode}: {self.output()[-2000:]}")
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200

        try:
            wait_for(up, timeout=START_TIMEOUT, what="the API server")
            if ready:
                wait_for(lambda: httpx.get(self.url + "/readyz", timeout=5).status_code == 200,
                         timeout=20, what="the API to see a placement worker")
        except BaseException:  # a server that never answered is not left running
            self.kill()
            raise
        return self

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)



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
