"""govmomi's vCenter simulator (tests/vcsim/main.go), built once and run on a free port.

The binary is built offline against Debian's golang-go and golang-github-vmware-govmomi-dev
(installed with apt-get when missing and we may) and cached outside the clone, in
$XDG_CACHE_HOME/vsphere-capacity-manager/vcsim (~/.cache/...; VCM_VCSIM_CACHE sets another
directory), keyed by the source, the Go version and the govmomi package version: a fresh clone
reuses the build. It serves a certificate issued by the test process's CA
(tests/support/tls.py): `ca_file` is the bundle that trusts it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.tls import Issued, process_ca

SOURCE = Path(__file__).with_name("main.go")
GOPATH = Path("/usr/share/gocode")
GOVMOMI = GOPATH / "src/github.com/vmware/govmomi/simulator"
APT_PACKAGES = ("golang-go", "golang-github-vmware-govmomi-dev")
UNUSED = 7 * 86400  # seconds after which a cached build of another source is deleted
CACHE = Path(os.environ.get("VCM_VCSIM_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "vsphere-capacity-manager" / "vcsim")


class Unavailable(Exception):
    """Go or govmomi is missing and cannot be installed: the reason to skip."""


def _toolchain_ready() -> bool:
    return shutil.which("go") is not None and GOVMOMI.is_dir()


def ensure_toolchain() -> None:
    """Install the Debian packages if they are missing (as root, or with password-less sudo)."""
    if _toolchain_ready():
        return
    if os.geteuid() == 0:
        sudo: list[str] = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"],
                                                 capture_output=True).returncode == 0:
        sudo = ["sudo", "-n"]
    else:
        raise Unavailable(f"needs {' '.join(APT_PACKAGES)} and cannot apt-get install as non-root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", *APT_PACKAGES]
    done = subprocess.run(install, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # stale package lists: update once and retry
        subprocess.run([*sudo, "apt-get", "update", "-q"], capture_output=True, env=env)
        done = subprocess.run(install, capture_output=True, text=True, env=env)
    if not _toolchain_ready():
        raise Unavailable(f"apt-get install {' '.join(APT_PACKAGES)} failed: "
                          f"{done.stderr.strip()[-500:]}")


def _key() -> str:
    go = subprocess.run(["go", "version"], capture_output=True, text=True).stdout
    pkg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", APT_PACKAGES[1]],
                         capture_output=True, text=True).stdout
    return hashlib.sha256(SOURCE.read_bytes() + go.encode() + pkg.encode()).hexdigest()[:16]


def build() -> Path:
    """The simulator binary: built now unless an identical build is cached."""
    ensure_toolchain()
    CACHE.mkdir(parents=True, exist_ok=True)
    binary = CACHE / f"vcsim-{_key()}"
    with open(CACHE / "build.lock", "w") as lock:  # concurrent test runs build once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            binary.touch()  # in use: kept by the pruning below
            return binary
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": "",
               "GOCACHE": str(CACHE / "go-build")}
        if not shutil.which("gcc"):  # with gcc, Debian's precompiled standard library is used
            env["CGO_ENABLED"] = "0"
        tmp = binary.with_suffix(".tmp")
        done = subprocess.run(["go", "build", "-o", str(tmp), "."], cwd=SOURCE.parent, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"go build of {SOURCE} failed:\n{done.stderr}")
        tmp.rename(binary)
        # other clones share the cache: builds of other sources go once unused for a week
        for old in CACHE.glob("vcsim-*"):
            if old != binary and time.time() - old.stat().st_mtime > UNUSED:
                old.unlink(missing_ok=True)
    return binary


class Simulator:
    """One simulator process. `url`, `host`, `port`, `user`, `password` once started; it
    serves `certificate` (default: one for 127.0.0.1 and localhost from the test CA, whose
    bundle is `ca_file`)."""

    def __init__(self, inventory: dict[str, Any] | None = None, *, user: str = "vcm",
                 password: str = "vcm-secret", certificate: Issued | None = None) -> None:
        self.inventory, self.user, self.password = inventory, user, password
        self.certificate = certificate or process_ca().issue()
        self.ca_file = process_ca().path
        self.url = self.host = ""
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="vcsim-")
        self.log = Path(self._dir.name) / "vcsim.log"

    @property
    def address(self) -> str:
        """host:port, as a pool's vcenter field names it."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> Simulator:
        cmd = [str(build()), "-port", "0", "-user", self.user, "-password", self.password,
               "-exit-on-eof", "-tls-cert", str(self.certificate.cert_file),
               "-tls-key", str(self.certificate.key_file)]
        if self.inventory is not None:
            path = Path(self._dir.name) / "inventory.json"
            path.write_text(json.dumps(self.inventory))
            cmd += ["-inventory", str(path)]
        with open(self.log, "w") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=log, text=True)
        line = self._readline(timeout)
        if not line.startswith("https://"):
            self.stop()
            raise RuntimeError(f"vcsim did not start: {line!r}\n{self.log.read_text()}")
        self.url = line
        host_port = line.split("@", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        return self

    def _readline(self, timeout: float) -> str:
        """The first stdout line (the URL, once the inventory is built), or "" on timeout."""
        assert self._proc is not None and self._proc.stdout is not None
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(self._proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        return out[0].strip() if out else ""

    def set_datastore(self, name: str, free_gb: int, capacity_gb: int | None = None) -> None:
        """Set the free space (and capacity) of the datastores named `name`, in GB: what no
        vSphere API sets, through the control endpoint of our simulator (main.go, controls)."""
        query = {"name": name, "free_gb": str(free_gb)}
        if capacity_gb is not None:
            query["capacity_gb"] = str(capacity_gb)
        url = (f"https://{self.address}/vcsim/datastore?"
               f"{urllib.parse.urlencode(query)}")
        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="POST"),
                                        context=context, timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            raise ValueError(f"vcsim: {exc.code}: {exc.read().decode().strip()}") from exc

    def find(self, kind: str, path: str, under: str = "") -> str | None:
        """The id of the `kind` object (datacenter, cluster, datastore, resourcepool, folder,
        network) govmomi's Finder finds at inventory path `path`; with `under` (a cluster's
        path), the network of that cluster named `path`, as openshift-install looks up a
        failure domain's networks. None when there is none."""
        query = {"kind": kind, "path": path, **({"under": under} if under else {})}
        url = f"https://{self.address}/vcsim/find?{urllib.parse.urlencode(query)}"
        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            with urllib.request.urlopen(url, context=context, timeout=30) as answer:
                return json.loads(answer.read())["ref"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ValueError(f"vcsim: {exc.code}: {exc.read().decode().strip()}") from exc

    def kill(self) -> None:
        """SIGKILL: the vCenter is gone at once, with no orderly shutdown."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout) if self._proc else ():
            if stream:
                stream.close()
        self._proc = None
        self._dir.cleanup()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
