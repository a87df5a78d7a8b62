"""The dashboard at GET / loaded in headless Debian chromium against a real
stack: a private redis-server, placement and queries workers, and `vcm api` (the shim).

The DOM chromium built is parsed back: the pools are grouped under their vCenters, the leases'
owners and the waiting request show, and an owner named `<script>alert(1)</script>` is text, not
an element. Without a queries worker, or without Redis, the page still renders with a notice."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import call
from tests.support.procs import ROOT, Stack, free_port, wait_for

POOLS = (ROOT / "examples" / "pools.yaml").read_text()
GROUPS = {"vcenter1.example.com": ["pool1"], "vcenter2.example.com": ["pool2"],
          "vcenter3.example.com": ["pool3", "pool4"]}
EVIL = "<script>alert(1)</script>"
OWNERS = ["alice-ci-1234", EVIL, 'bob & "co"']
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (`make test` installs it); installed here if missing and we may."""
    path = find_chromium()
    if path is None and shutil.which("apt-get"):
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-qq", "chromium"],
                    ["sh", "-c", "apt-get update -qq && apt-get install -y -qq chromium"]):
            try:
                subprocess.run(sudo + cmd, env=env, capture_output=True, timeout=900)
            except (OSError, subprocess.SubprocessError):
                break
            if path := find_chromium():
                break
    if path is None:
        from tests.support.tools import missing

        missing("chromium is not installed and could not be installed "
                "(`make test` installs it: apt-get install chromium)")
    return path


def dump_dom(chromium: str, url: str) -> str:
    with tempfile.TemporaryDirectory(prefix="vcm-chromium-") as profile:
        out = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                              "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "<html" in out.stdout, out.stderr[-2000:]
    return out.stdout


class Api:
    """`python -m workers.cli api --port P` (what `vcm api` runs) with the stack's settings."""

    def __init__(self, env: dict, **extra: str) -> None:
        self.port = free_port()
        self.env = {**env, **extra}
        self.log = tempfile.mktemp(prefix="vcm-api-", suffix=".log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Api:
        self.out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "api", "--port", str(self.port)], cwd=ROOT,
            env=self.env, stdout=self.out, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"api exited: {Path(self.log).read_text()[-2000:]}")
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200

        wait_for(up, timeout=30, what="the API")
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()


class Page(HTMLParser):
    """What the browser built: vCenter groups with their pools, owners, scripts, text."""

    def __init__(self, dom: str) -> None:
        super().__init__(convert_charrefs=True)
        self.groups: dict[str, list[str]] = {}
        self.owners: dict[str, list[str]] = {}  # section id -> owner cells
        self.scripts = 0
        self.polylines = 0
        self.text: list[str] = []
        self._vcenter: str | None = None
        self._section: str | None = None
        self._grab: str | None = None
        self._buf: list[str] = []
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "script":
            self.scripts += 1
        if tag == "polyline":
            self.polylines += 1
        if tag == "section" and a.get("id"):
            self._section = a["id"]
        if tag == "article" and "vcenter" in classes:
            self._vcenter = a.get("data-vcenter") or ""
            self.groups[self._vcenter] = []
        if tag == "span" and "pool-name" in classes:
            self._grab, self._buf = "pool", []
        if tag == "td" and "owner" in classes:
            self._grab, self._buf = "owner", []

    def handle_endtag(self, tag: str) -> None:
        if tag == "article":
            self._vcenter = None
        if self._grab == "pool" and tag == "span":
            self.groups[self._vcenter or "?"].append("".join(self._buf))
            self._grab = None
        if self._grab == "owner" and tag == "td":
            self.owners.setdefault(self._section or "?", []).append("".join(self._buf))
            self._grab = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._grab:
            self._buf.append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("dashboard"), POOLS)
    api = Api(stack.env).start()
    wait_for(lambda: httpx.get(api.url + "/readyz", timeout=5).status_code == 200, timeout=20,
             what="the API to see the workers")
    yield stack, api
    api.stop()
    stack.stop()


def test_dashboard_in_headless_chromium(site, chromium):
    stack, api = site
    http = httpx.Client(base_url=api.url, timeout=30)
    for owner in OWNERS:
        resp = http.post("/acquire", json={"vcpus": 8, "memory": 32, "storage": 100,
                                           "owner": owner, "required-pool": "pool1"})
        assert resp.status_code == 200, resp.text
    resp = http.post("/acquire", json={"vcpus": 4, "memory": 16, "owner": "carol-ci",
                                       "required-pool": "pool3"})
    assert resp.status_code == 200, resp.text
    # a request that does not fit now: it waits in line (and shows there)
    resp = http.post("/acquire?async=true", json={"vcpus": 120, "memory": 100, "owner":
                                                  "waiter-<b>big</b>", "wait": "5m",
                                                  "required-pool": "pool1"})
    assert resp.status_code == 202, resp.text
    waiter = resp.json()["task-id"]
    wait_for(lambda: http.get(f"/tasks/{waiter}").json()["state"] == "WAITING",
             what="the waiter to park")
    for _ in range(2):  # two rollups, as beat takes them: a history to draw
        call(stack.app, "vcm.rollup_usage")
        time.sleep(1.1)

    raw = http.get("/")
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("text/html")
    assert raw.headers["cache-control"] == "no-store"
    assert "script-src" not in raw.headers["content-security-policy"]  # default-src 'none'
    assert "<script" not in raw.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw.text
    assert "/" not in http.get("/openapi.json").json()["paths"]

    start = time.monotonic()
    dom = dump_dom(chromium, api.url + "/")
    took = time.monotonic() - start
    page = Page(dom)
    assert page.groups == GROUPS, page.groups
    assert sorted(page.owners["leases"]) == sorted([*OWNERS, "carol-ci"]), page.owners
    assert page.owners["waiting"] == ["waiter-<b>big</b>"]
    assert page.scripts == 0, "an owner became a <script> element"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and EVIL not in dom
    assert 'bob &amp; "co"' in dom
    assert page.polylines >= 4 or dom.count("<circle") >= 4  # history: one chart per vCenter
    text = " ".join(page.text)
    for vcenter in GROUPS:
        assert vcenter in text
    assert "did not answer" not in text
    print(f"chromium --dump-dom took {took:.2f}s")


def test_without_a_queries_worker_the_page_renders_with_a_notice(site, chromium):
    stack, api = site
    queries = next(p for p in stack.procs if p.queues == "queries")
    queries.stop()
    try:
        # the notice is the page giving up on the worker (its own short wait), not the client
        resp = httpx.get(api.url + "/", timeout=30)
        assert resp.status_code == 200
        assert "The queries worker did not answer" in resp.text
        page = Page(dump_dom(chromium, api.url + "/"))
        text = " ".join(page.text)
        assert "The queries worker did not answer" in text
        assert "Placements" in text  # the counters still come straight from Redis
    finally:  # the module's stack as it was, for the tests that run after this one
        queries.start()
        wait_for(lambda: httpx.get(api.url + "/readyz", timeout=5).status_code == 200,
                 timeout=30, what="the API to see the queries worker again")


def test_without_redis_the_page_still_renders(site):
    stack, _ = site
    api = Api(stack.env, VCM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0").start()
    try:
        resp = httpx.get(api.url + "/", timeout=30)
        assert resp.status_code == 200
        assert "Redis did not answer</b>, so nothing can be shown" in resp.text
        assert "Not available right now" in resp.text
    finally:
        api.stop()


def test_taints_are_badges_and_job_links_link_only_http():
    """The page from the view-model alone: taint badges on pool cards, the job link on the
    lease's owner, and a link that is not http(s) (an older record) stays text."""
    import time as _time

    from api_shim.dashboard import render
    from api_shim.dashboard.view import Data

    def lease(name: str, link: str) -> dict:
        return {"spec": {"vcpus": 1, "memory": 1, "storage": 0},
                "status": {"owner": f"owner-{name}", "pool": "gpu", "vcenter": "vc",
                           "networks": [], "job-link": link, "leased-at": "2026-11-29T00:00:00Z",
                           "expires-at": "2026-11-30T00:00:00Z"},
                "metadata": {"name": name}}

    pool = {"spec": {"name": "gpu", "vcenter": "vc", "vcpus": 8, "memory": 8, "storage": 8,
                     "networks": [], "taints": [
                         {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                         {"key": "slow", "value": "", "effect": "PreferNoSchedule"}]},
            "status": {"vcpus-usage": 0, "memory-usage": 0, "datastore-usage": 0,
                       "network-usage": 0, "vcpus-capacity": 8, "lease-count": 2,
                       "leases": [lease("a", "https://prow.example/1"),
                                  lease("b", "javascript:alert(1)")]}}
    html = render(Data(now=_time.time(), pools=[pool], waiting=[], history=[]))
    assert "dedicated=gpu:NoSchedule" in html and "slow:PreferNoSchedule" in html
    assert '<a href="https://prow.example/1">owner-a</a>' in html
    assert "javascript:" not in html and "owner-b" in html
