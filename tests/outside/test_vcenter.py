"""The vCenter adapter against govmomi's vCenter simulator (tests/vcsim), over real SOAP."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.support.cli_session import CliSession
from tests.support.procs import ROOT
from tests.support.tls import CertificateAuthority, TlsProxy, process_ca
from tests.vcsim import Simulator, Unavailable
from workers.adapters.vcenter.access import Access, AccessPlan, Trust, address, plan, thumbprint
from workers.adapters.vcenter.client import GIB, Finding, VCenterInventory, check_pools, connector
from workers.core.errors import InvalidRequest
from workers.core.models import Network, Pool
from workers.core.text import shown
from workers.settings import Settings

pytestmark = pytest.mark.timeout(600)  # the first test waits for a cold build (~1-2 min)

USER, PASSWORD = "vcm", "vcm-secret"
HOST = {"cores": 16, "threads": 32, "mhz": 2400, "memory_gb": 256}
INVENTORY = {"datacenters": [
    {"name": "datacenter1",
     "clusters": [{"name": "cluster1", "hosts": [HOST, HOST]}],  # 64 threads, 512 GB
     "datastores": [{"name": "datastore1", "capacity_gb": 4096, "free_gb": 3000}],
     "portgroups": ["ci-vlan-1001", "ci-vlan-1002", "ci-mt-1005"]},
    {"name": "datacenter2",
     "clusters": [{"name": "cluster2", "hosts": [{"cores": 8, "mhz": 2000, "memory_gb": 64}]}],
     "datastores": [{"name": "datastore2", "capacity_gb": 1000}],
     "portgroups": ["ci-vlan-2001"]},
]}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    try:
        simulator = Simulator(INVENTORY, user=USER, password=PASSWORD).start()
    except Unavailable as exc:
        from tests.support.tools import missing

        missing(f"vCenter simulator: {exc}")
    yield simulator
    simulator.stop()


def pools(vcenter: str) -> list[Pool]:
    """Two pools that match the simulator; pool2 sits exactly at its hardware."""
    return [
        Pool("pool1", vcenter, "datacenter1", "cluster1", "datastore1", vcpus=60, memory=400,
             storage=4000, networks=(Network("ci-vlan-1001", 1001), Network("ci-vlan-1002", 1002))),
        Pool("pool2", vcenter, "datacenter2", "cluster2", "datastore2", vcpus=8, memory=64,
             storage=1000, networks=(Network("ci-vlan-2001", 2001),)),
    ]


def pool_yaml(p: Pool) -> dict:
    return {"name": p.name, "vcenter": p.vcenter, "datacenter": p.datacenter,
            "cluster": p.cluster, "datastore": p.datastore, "vcpus": p.vcpus,
            "memory": p.memory, "storage": p.storage,
            "networks": [{"port-group": n.port_group, "vlan": n.vlan} for n in p.networks]}


def access(vcenter: str, password: str = PASSWORD) -> Access:
    """The simulator's credential, its certificate checked against the test CA."""
    return Access(vcenter, USER, password, Trust(ca_pem=process_ca().path.read_text()))


def check(sim: Simulator, pool_list: list[Pool], password: str = PASSWORD) -> list[Finding]:
    only_sim = AccessPlan({sim.address: access(sim.address, password)})
    return check_pools(pool_list, connector(only_sim, timeout=10))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_inventory_reads_the_simulator(sim):
    with VCenterInventory.connect(access(sim.address)) as inv:
        assert inv.datacenters() == ["datacenter1", "datacenter2"]
        dc = inv.datacenter("datacenter1")
        assert inv.datacenter("nowhere") is None
    assert dc is not None
    c = dc.clusters["cluster1"]
    assert (c.hosts, c.cpu_cores, c.cpu_threads, c.cpu_mhz) == (2, 32, 64, 32 * 2400)
    assert c.memory_bytes == 512 * GIB
    ds = dc.datastores["datastore1"]
    assert (ds.capacity_bytes, ds.free_bytes) == (4096 * GIB, 3000 * GIB)
    assert set(dc.datastores) == {"datastore1"}  # datastore2 lives in datacenter2
    assert {"ci-vlan-1001", "ci-vlan-1002", "ci-mt-1005"} <= dc.networks
    assert "ci-vlan-2001" not in dc.networks


def test_matching_pools_have_no_findings(sim):
    assert check(sim, pools(sim.address)) == []


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"datastore": "datastore9"}, "datastore",
     "pool1: datastore 'datastore9' not found in datacenter 'datacenter1' on {vc} "
     "(have: datastore1)"),
    ({"datastore": "datastore2"}, "datastore",  # exists, but in the other datacenter
     "pool1: datastore 'datastore2' not found in datacenter 'datacenter1' on {vc} "
     "(have: datastore1)"),
    ({"cluster": "cluster9"}, "cluster",
     "pool1: cluster 'cluster9' not found in datacenter 'datacenter1' on {vc} (have: cluster1)"),
    ({"networks": (Network("ci-vlan-1001"), Network("ci-vlan-1009"))}, "networks[1].port-group",
     "pool1: port group 'ci-vlan-1009' not found in datacenter 'datacenter1' on {vc} (have: "),
    ({"datacenter": "datacenter9"}, "datacenter",  # and nothing else about pool1
     "pool1: datacenter 'datacenter9' not found on {vc} (have: datacenter1, datacenter2)"),
], ids=["datastore", "datastore-of-other-dc", "cluster", "port-group", "datacenter"])
def test_a_wrong_name_is_one_error_naming_pool_and_field(sim, change, field, message):
    pool1, pool2 = pools(sim.address)
    findings = check(sim, [replace(pool1, **change), pool2])
    assert len(findings) == 1, findings
    (f,) = findings
    assert (f.pool, f.field, f.severity) == ("pool1", field, "error")
    assert f.message.startswith(message.format(vc=sim.address)), f.message


def test_port_group_error_lists_the_datacenters_networks(sim):
    pool1 = replace(pools(sim.address)[0], networks=(Network("nope"),))
    (f,) = check(sim, [pool1])
    have = f.message.split("(have: ", 1)[1].rstrip(")").split(", ")
    assert {"VM Network", "ci-mt-1005", "ci-vlan-1001", "ci-vlan-1002"} <= set(have)
    assert "ci-vlan-2001" not in have and have == sorted(have)


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"memory": 1600}, "memory", "pool1: memory budget 1600 GB exceeds cluster capacity 512 GB"),
    ({"vcpus": 65}, "vcpus", "pool1: vcpus budget 65 exceeds cluster capacity 64 logical CPUs"),
    ({"storage": 4097}, "storage",
     "pool1: storage budget 4097 GB exceeds datastore capacity 4096 GB"),
], ids=["memory", "vcpus", "storage"])
def test_an_oversized_budget_is_a_warning(sim, change, field, message):
    pool1, pool2 = pools(sim.address)
    findings = check(sim, [replace(pool1, **change), pool2])
    assert findings == [Finding("pool1", field, "warning", message)]


def test_wrong_password_is_one_error_for_the_vcenter(sim):
    findings = check(sim, pools(sim.address), password="wrong")
    assert findings == [Finding(
        "pool1, pool2", "vcenter", "error",
        f"pool1, pool2: vcenter {sim.address}: login as 'vcm' failed (bad credentials)",
    )]


def test_closed_vcenter_is_unreachable_and_the_others_are_still_checked(sim):
    dead = f"127.0.0.1:{closed_port()}"
    pool3 = replace(pools(dead)[0], name="pool3", datastore="datastore9")
    bad1 = replace(pools(sim.address)[0], cluster="cluster9")
    both = AccessPlan({sim.address: access(sim.address), dead: access(dead)})
    findings = check_pools([pool3, bad1], connector(both, timeout=5))
    assert [(f.pool, f.field, f.severity) for f in findings] == [
        ("pool3", "vcenter", "error"), ("pool1", "cluster", "error")]
    assert findings[0].message.startswith(f"pool3: vcenter {dead}: unreachable: ")
    assert "refused" in findings[0].message


def test_missing_credentials_is_an_error_not_a_traceback(sim):
    nothing_set = plan([sim.address], Settings.from_env({}))
    findings = check_pools(pools(sim.address), connector(nothing_set))
    assert findings == [Finding(
        "pool1, pool2", "vcenter", "error",
        f"pool1, pool2: vcenter {sim.address}: not contacted: no credentials for it "
        "(VCM_VCENTER_CREDENTIALS has none)",
    )]


@pytest.mark.parametrize(("vcenter", "expected"), [
    ("vcenter1.example.com", ("vcenter1.example.com", 443)),
    ("127.0.0.1:8989", ("127.0.0.1", 8989)),
    ("[::1]:8443", ("::1", 8443)),
    ("https://vc.example.com:444/sdk", ("vc.example.com", 444)),
])
def test_address(vcenter, expected):
    assert address(vcenter) == expected


def test_cli_check_pools_as_a_process(sim, tmp_path):
    """`vcm check-pools` reads the pools file and credentials from the environment."""
    good = [pool_yaml(p) for p in pools(sim.address)]
    path = tmp_path / "pools.yaml"
    env = dict(os.environ, VCM_VCENTER_CREDENTIALS=f"{sim.address}={USER}:{PASSWORD}",
               VCM_VCENTER_CA_CERTS=str(sim.ca_file), PYTHONPATH=str(ROOT))

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "workers.cli", "check-pools", "-f",
                               str(path), *extra], env=env, capture_output=True, text=True,
                              timeout=120, cwd=ROOT)

    path.write_text(yaml.safe_dump({"pools": good}))
    p = run()
    assert p.returncode == 0, p.stderr
    assert "every pool matches" in p.stdout
    good[0]["datastore"] = "datastore9"
    path.write_text(yaml.safe_dump({"pools": good}))
    p = run("-o", "json")
    assert p.returncode == 2, p.stderr
    (finding,) = json.loads(p.stdout)
    assert (finding["pool"], finding["field"], finding["severity"]) == \
        ("pool1", "datastore", "error")


# TLS: `vcm check-pools` and `vcm pools discover` against a man in the middle ----------------
def vcm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def vcm_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VCM_VCENTER_")}
    return {**env, "PYTHONPATH": str(ROOT), **settings}


@pytest.fixture(scope="module")
def cli() -> Iterator[CliSession]:
    """`vcm` command lines run one after another in one process (tests/support/cli_session.py),
    each with its own environment, for the tests of an input's refusal or answer: no
    interpreter start and no import of pyVmomi each. check-pools and pools discover each run
    as a real process in the tests of trust (an untrusted certificate, a pinned one, an empty
    CA bundle beside the system store) and of the shared credential."""
    with CliSession(vcm_env()) as session:
        yield session


@pytest.fixture(scope="module")
def mitm_ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("mitm-ca"), "a man in the middle")


def test_cli_check_pools_refuses_an_untrusted_certificate_before_logging_in(sim, mitm_ca,
                                                                            tmp_path):
    cert = mitm_ca.issue()
    with TlsProxy((sim.host, sim.port), cert) as proxy:
        path = tmp_path / "pools.yaml"
        path.write_text(yaml.safe_dump({"pools": [pool_yaml(p) for p in pools(proxy.address)]}))
        env = vcm_env(VCM_VCENTER_CREDENTIALS=f"{proxy.address}={USER}:{PASSWORD}",
                      VCM_VCENTER_CA_CERTS=str(sim.ca_file))
        p = vcm(env, "check-pools", "-f", str(path), "-o", "json")
        assert p.returncode == 2, p.stdout + p.stderr
        (finding,) = json.loads(p.stdout)
        assert (finding["pool"], finding["field"], finding["severity"]) == \
            ("pool1, pool2", "vcenter", "error")
        assert finding["message"].startswith(
            f"pool1, pool2: vcenter {proxy.address}: TLS: certificate not trusted: "), finding
        proxy.wait_for("its connection over", lambda x: x.connections and
                       x.finished == x.connections)
        assert proxy.received == b"" and proxy.handshakes == 0

        # the same vCenter, its certificate pinned by its SHA-1 thumbprint (govc's format)
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"{proxy.address} {cert.thumbprint('sha1')}\n")
        p = vcm({**env, "VCM_VCENTER_KNOWN_HOSTS": str(known_hosts)}, "check-pools", "-f",
                str(path))
        assert p.returncode == 0, p.stdout + p.stderr
        assert "every pool matches" in p.stdout
        assert PASSWORD.encode() in proxy.received  # this time it was sent, as trusted


def test_cli_discover_refuses_an_untrusted_certificate_and_the_shared_credential(sim, mitm_ca):
    with TlsProxy((sim.host, sim.port), mitm_ca.issue()) as proxy:
        env = vcm_env(VCM_VCENTER_CREDENTIALS=f"{proxy.address}={USER}:{PASSWORD}")
        p = vcm(env, "pools", "discover", "--vcenter", proxy.address)
        assert p.returncode == 1, p.stdout + p.stderr
        assert f"vcenter {proxy.address}: TLS: certificate not trusted: " in p.stderr
        assert p.stdout == ""
        proxy.wait_for("its connection over", lambda x: x.connections and
                       x.finished == x.connections)
        assert proxy.received == b""

        # a shared credential is not sent to a vCenter it is not shared with, however
        # verifiable the certificate
    with TlsProxy((sim.host, sim.port), process_ca().issue()) as proxy:
        shared = dict(VCM_VCENTER_USERNAME=USER, VCM_VCENTER_PASSWORD=PASSWORD,
                      VCM_VCENTER_CA_CERTS=str(sim.ca_file))
        p = vcm(vcm_env(**shared), "pools", "discover", "--vcenter", proxy.address)
        assert p.returncode == 2, p.stdout + p.stderr
        assert "no credentials for it" in p.stderr
        assert "VCM_VCENTER_SHARED_CREDENTIAL_FOR" in p.stderr
        assert proxy.connections == 0
        p = vcm(vcm_env(**shared, VCM_VCENTER_SHARED_CREDENTIAL_FOR="*"), "pools", "discover",
                "--vcenter", proxy.address)
        assert p.returncode == 0, p.stdout + p.stderr
        assert yaml.safe_load(p.stdout)["pools"]



@pytest.mark.parametrize("form", ["shared", "own"])
def test_cli_check_pools_reads_a_ca_bundle_that_names_its_cas_outside_ascii(
        cli, sim, tmp_path, form):
    """Distribution bundles name each CA in a comment, some not in ASCII."""
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_text("# NetLock Arany (Class Gold) F\u0151tan\u00fas\u00edtv\u00e1ny\n"
                      + sim.ca_file.read_text(), encoding="utf-8")
    path = tmp_path / "pools.yaml"
    path.write_text(yaml.safe_dump({"pools": [pool_yaml(p) for p in pools(sim.address)]}))
    ca_certs = str(bundle) if form == "shared" else f"{sim.address}={bundle}"
    p = cli.run("check-pools", "-f", str(path), env=vcm_env(
        VCM_VCENTER_CREDENTIALS=f"{sim.address}={USER}:{PASSWORD}",
        VCM_VCENTER_CA_CERTS=ca_certs))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "every pool matches" in p.stdout


@pytest.mark.parametrize("form", ["shared", "own"])
def test_cli_an_empty_ca_bundle_trusts_nothing_not_the_system_store(sim, mitm_ca, tmp_path,
                                                                    form):
    """A CA file that came out empty (a ConfigMap key left blank) must not widen the trust
    to the system's store: here that store (OpenSSL's SSL_CERT_FILE) holds the CA that issued
    the man in the middle's certificate, as a public CA may."""
    empty = tmp_path / "ca.pem"
    empty.write_text("")
    with TlsProxy((sim.host, sim.port), mitm_ca.issue()) as proxy:
        path = tmp_path / "pools.yaml"
        path.write_text(yaml.safe_dump({"pools": [pool_yaml(p) for p in pools(proxy.address)]}))
        ca_certs = str(empty) if form == "shared" else f"{proxy.address}={empty}"
        env = vcm_env(VCM_VCENTER_CREDENTIALS=f"{proxy.address}={USER}:{PASSWORD}",
                      VCM_VCENTER_CA_CERTS=ca_certs, SSL_CERT_FILE=str(mitm_ca.path))
        p = vcm(env, "check-pools", "-f", str(path), "-o", "json")
        assert p.returncode == 2, p.stdout + p.stderr
        (finding,) = json.loads(p.stdout)
        assert finding["message"] == (
            f"pool1, pool2: vcenter {proxy.address}: not contacted: VCM_VCENTER_CA_CERTS: "
            f"{str(empty)!r} holds no usable PEM certificate")
        assert proxy.connections == 0 and proxy.received == b""


@pytest.mark.parametrize("form", ["own", "shared"])
def test_cli_an_empty_password_is_not_sent_and_no_local_file_is_asked_for(cli, sim, form):
    """pyvmomi logs in to "localhost" without a password by asking the server for a local
    ticket: the server names a file, whose contents go back as the password."""
    with TlsProxy((sim.host, sim.port), process_ca().issue()) as proxy:
        vc = f"localhost:{proxy.port}"
        credential = (dict(VCM_VCENTER_CREDENTIALS=f"{vc}={USER}:") if form == "own" else
                      dict(VCM_VCENTER_USERNAME=USER, VCM_VCENTER_SHARED_CREDENTIAL_FOR=vc))
        env = vcm_env(**credential, VCM_VCENTER_CA_CERTS=str(sim.ca_file))
        p = cli.run("pools", "discover", "--vcenter", vc, env=env)
        assert p.returncode == 2, p.stdout + p.stderr
        variable = "VCM_VCENTER_CREDENTIALS" if form == "own" else "VCM_VCENTER_PASSWORD"
        assert f"vcenter {vc}: not contacted: the password for it is empty ({variable})" \
            in p.stderr, p.stderr
        assert b"AcquireLocalTicket" not in proxy.received
        assert proxy.connections == 0


@pytest.mark.parametrize(("vcenter", "why"), [
    ("::1", "Port could not be cast to integer value as ':1'"),  # IPv6 without brackets
    ("vc1:99999", "Port out of range 0-65535"),
    ("[zz]", "'zz' does not appear to be an IPv4 or IPv6 address"),
])
def test_cli_a_vcenter_name_that_is_no_address_is_an_error_not_a_traceback(cli, tmp_path,
                                                                            vcenter, why):
    env = vcm_env(VCM_VCENTER_USERNAME=USER, VCM_VCENTER_PASSWORD=PASSWORD,
                  VCM_VCENTER_SHARED_CREDENTIAL_FOR="*")
    reason = (f"not contacted: {vcenter!r} is not a vCenter address ({why}): write host, "
              "host:port, [IPv6 address]:port or https://host/sdk")
    p = cli.run("pools", "discover", "--vcenter", vcenter, env=env)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr == f"vcm: vcenter {vcenter}: {reason}\n"
    path = tmp_path / "pools.yaml"
    path.write_text(yaml.safe_dump({"pools": [pool_yaml(p) for p in pools(vcenter)]}))
    p = cli.run("check-pools", "-f", str(path), "-o", "json", env=env)
    assert p.returncode == 2, p.stdout + p.stderr
    (finding,) = json.loads(p.stdout)
    assert finding["message"] == f"pool1, pool2: vcenter {vcenter}: {reason}"


class NotAVCenter(BaseHTTPRequestHandler):
    """A trusted HTTPS server that is no vCenter (or one being upgraded): every request gets
    the server's `status` (a redirect to `https://elsewhere/sdk`, an error; 0: no HTTP)."""

    def do_GET(self) -> None:
        self.server.requests.append(self.requestline)  # type: ignore[attr-defined]
        if self.server.status == 0:  # type: ignore[attr-defined]
            self.wfile.write(b"NOT HTTP\r\n\r\n")
            return
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Location", "https://elsewhere/sdk")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "why"), [
    (302, "{vc} is down or is not a VIM server"),
    (503, "{vc} is down or is not a VIM server"),
    (0, "BadStatusLine: 'NOT HTTP\\r\\n'"),
])
def test_cli_discover_a_trusted_host_that_is_no_vcenter_is_an_error_not_a_traceback(
        cli, status, why):
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotAVCenter)
    cert = process_ca().issue()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert_file, cert.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.status, server.requests = status, []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        vc = f"127.0.0.1:{server.server_address[1]}"
        env = vcm_env(VCM_VCENTER_CREDENTIALS=f"{vc}={USER}:{PASSWORD}",
                      VCM_VCENTER_CA_CERTS=str(process_ca().path))
        p = cli.run("pools", "discover", "--vcenter", vc, env=env)
        assert p.returncode == 1, p.stdout + p.stderr
        assert p.stderr == f"vcm: vcenter {vc}: no vSphere API there: {why.format(vc=vc)}\n"
        # the redirect is not followed, and the login never sent
        assert server.requests == ["GET /sdk/vimServiceVersions.xml HTTP/1.1"]
    finally:
        server.shutdown()
        server.server_close()

# the access plan: which vCenter gets which credential and certificate check ----------------
def settings(**values: str) -> Settings:
    return Settings.from_env({f"VCM_{k.upper()}": v for k, v in values.items()})


def test_a_shared_credential_goes_only_where_it_is_shared():
    vcenters = ["vc1.example.com", "VC2.example.com:443", "https://vc3.example.com/sdk", "evil"]
    shared = dict(vcenter_username="svc", vcenter_password="pw",
                  vcenter_credentials="vc3.example.com:443=own:secret")
    nowhere = plan(vcenters, settings(**shared))
    assert set(nowhere.access) == {"https://vc3.example.com/sdk"}  # its own credential
    assert nowhere.access["https://vc3.example.com/sdk"].user == "own"
    assert set(nowhere.refused) == {"vc1.example.com", "VC2.example.com:443", "evil"}
    assert "VCM_VCENTER_SHARED_CREDENTIAL_FOR" in nowhere.refused["evil"]

    # listed in any spelling of the same host and port: vc2.example.com is VC2.example.com:443
    listed = plan(vcenters, settings(**shared, vcenter_shared_credential_for=(
        " vc1.example.com:443, vc2.example.com ")))
    assert {vc: a.user for vc, a in listed.access.items()} == {
        "vc1.example.com": "svc", "VC2.example.com:443": "svc",
        "https://vc3.example.com/sdk": "own"}
    assert set(listed.refused) == {"evil"}

    everyone = plan(vcenters, settings(**shared, vcenter_shared_credential_for="*"))
    assert set(everyone.access) == set(vcenters) and everyone.access["evil"].password == "pw"
    assert everyone.access["https://vc3.example.com/sdk"].user == "own"  # its own wins

    off = plan(vcenters, settings())
    assert off.access == {} and not off.configured


def test_which_certificate_check_each_vcenter_gets(tmp_path):
    pin = "AB:" * 31 + "AB"
    known = tmp_path / "known_hosts"
    known.write_text(f"# comment\n\npinned {pin}\npinned {'cd' * 20}\nboth {pin}\n")
    own_ca = tmp_path / "own.pem"
    own_ca.write_text(process_ca().path.read_text())
    access = plan(["pinned", "own", "lab", "both", "plain"], settings(
        vcenter_credentials="pinned=u:p,own=u:p,lab=u:p,both=u:p,plain=u:p",
        vcenter_known_hosts=str(known), vcenter_insecure="lab, both",
        vcenter_ca_certs=f"own={own_ca}"))
    trust = {vc: a.trust for vc, a in access.access.items()}
    assert trust["pinned"] == Trust("pinned", thumbprints=frozenset({"ab" * 32, "cd" * 20}))
    assert trust["both"].kind == "pinned"  # a pin is stronger than the insecure opt-in
    assert trust["own"] == Trust("ca", ca_pem=own_ca.read_text())
    assert trust["lab"] == Trust("insecure")
    assert trust["plain"] == Trust("ca", ca_pem=None)  # the system's trust store
    assert access.refused == {}


@pytest.mark.parametrize(("known_hosts", "problem"), [
    ("vc1 not-hex\n", "line 1: expected `vcenter thumbprint`"),
    ("vc1\n", "line 1: expected `vcenter thumbprint`"),
    ("# ok\nvc1 " + "ab" * 19 + "\n", "line 2: expected `vcenter thumbprint`"),  # 38 digits
    ("vc1 " + "ab" * 20 + " extra\n", "line 1: expected"),
], ids=["not-hex", "no-thumbprint", "short", "three-fields"])
def test_a_malformed_known_hosts_file_refuses_every_vcenter(tmp_path, known_hosts, problem):
    path = tmp_path / "known_hosts"
    path.write_text(known_hosts)
    access = plan(["vc1", "vc2"], settings(vcenter_credentials="vc1=u:p,vc2=u:p",
                                           vcenter_known_hosts=str(path)))
    assert access.access == {}
    # the path as every message shows a value (a long one cut)
    assert access.refused["vc2"].startswith(
        f"not contacted: VCM_VCENTER_KNOWN_HOSTS: {shown(str(path))} {problem}"), access.refused


def test_unusable_ca_files_refuse_the_vcenters_that_use_them(tmp_path):
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"x" * ((4 << 20) + 1))
    binary = tmp_path / "binary.pem"
    binary.write_bytes(b"\xff\xfe\x00")
    lines = process_ca().path.read_text().splitlines(keepends=True)
    lines[2] = "\u00e9" + lines[2][1:]  # not ASCII inside the certificate
    corrupt = tmp_path / "corrupt.pem"
    corrupt.write_text("".join(lines), encoding="utf-8")
    access = plan(["a", "b", "c", "d", "e", "f"], settings(
        vcenter_credentials="a=u:p,b=u:p,c=u:p,d=u:p,e=u:p,f=u:p",
        vcenter_ca_certs=f"{missing},b={garbage},c={huge},d={binary},e={process_ca().path},"
                         f"f={corrupt}"))
    assert set(access.access) == {"e"}
    assert access.refused["a"] == (f"not contacted: VCM_VCENTER_CA_CERTS: cannot read "
                                   f"{shown(str(missing))}: No such file or directory")
    assert access.refused["b"] == (f"not contacted: VCM_VCENTER_CA_CERTS: {shown(str(garbage))} "
                                   "holds no usable PEM certificate")
    assert access.refused["c"].endswith("is larger than 4 MiB")
    assert access.refused["d"].endswith("is not UTF-8 text")
    assert access.refused["f"].endswith(f"{shown(str(corrupt))} holds no usable PEM certificate")


def test_a_missing_known_hosts_file_pins_nothing(tmp_path):
    access = plan(["vc1"], settings(vcenter_credentials="vc1=u:p",
                                    vcenter_known_hosts=str(tmp_path / "none")))
    assert access.access["vc1"].trust == Trust("ca")


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("VCM_VCENTER_INSECURE", "true", "VCM_VCENTER_INSECURE='true': list the vCenters"),
    ("VCM_VCENTER_INSECURE", "vc1, *", "VCM_VCENTER_INSECURE='*': list the vCenters"),
    ("VCM_VCENTER_INSECURE", "1", "verification cannot be switched off for every vCenter"),
    ("VCM_VCENTER_CA_CERTS", "/etc/ca.pem\n", "VCM_VCENTER_CA_CERTS: must not contain control"),
    ("VCM_VCENTER_KNOWN_HOSTS", "/etc/\udcff", "VCM_VCENTER_KNOWN_HOSTS: is not valid Unicode"),
    ("VCM_VCENTER_SHARED_CREDENTIAL_FOR", "x" * 70000,
     "VCM_VCENTER_SHARED_CREDENTIAL_FOR: is longer than"),
])
def test_bad_vcenter_settings_stop_start_up_naming_the_variable(variable, value, message):
    with pytest.raises(SystemExit) as exc:
        Settings.from_env({variable: value})
    assert message in str(exc.value)


@pytest.mark.parametrize("value", ["vc1", "vc1=user", "=u:p", "vc1=:p"])
def test_malformed_per_vcenter_credentials_name_the_variable(value):
    with pytest.raises(InvalidRequest) as exc:
        plan(["vc1"], settings(vcenter_credentials=value))
    assert exc.value.field == "VCM_VCENTER_CREDENTIALS"


@pytest.mark.parametrize(("text", "expected"), [
    ("AB:CD:" + "EF:" * 17 + "01", "abcd" + "ef" * 17 + "01"),  # govc's SHA-1
    ("ab" * 32, "ab" * 32),
    ("AB" * 64, "ab" * 64),
    ("ab" * 31, None), ("zz" * 32, None), ("", None), ("ab:" * 32, "ab" * 32),
])
def test_thumbprints_are_hex_sha1_sha256_or_sha512(text, expected):
    assert thumbprint(text) == expected


def test_cli_refuses_a_switch_for_every_vcenter_without_a_traceback(cli, tmp_path):
    path = tmp_path / "pools.yaml"
    path.write_text(yaml.safe_dump({"pools": [pool_yaml(p) for p in pools("vc1")]}))
    p = cli.run("check-pools", "-f", str(path), env=vcm_env(VCM_VCENTER_INSECURE="true"))
    assert p.returncode != 0
    assert "invalid setting VCM_VCENTER_INSECURE='true'" in p.stderr
    assert "Traceback" not in p.stderr


def test_lease_files_dvs_json_is_each_networks_switch_per_cluster_from_the_vcenter(
        sim, tmp_path):
    """`vcm leases -o lease-files DIR --dvs` (its writer, in process: no workers needed):
    dvs.json as the CI step's govc builds it, for every network the install's leases hold
    (a two-pool lease and an extra NIC's), read from the simulator with the install's
    account; a port group the vCenter does not have is {}; a wrong password writes
    nothing."""
    import argparse

    from pyVim.connect import Disconnect
    from pyVmomi import vim

    from workers.adapters.vcenter.client import login
    from workers.cli.exits import CliError
    from workers.cli.lease_files import write_lease_files
    from workers.core.grants import make_lease, make_leases
    from workers.core.parsing import parse_request
    from workers.core.step_files import install_of

    p1, p2 = pools(sim.address)
    p1 = replace(p1, networks=(*p1.networks, Network("not-on-the-vcenter", 1009)))

    def req(**fields: object):
        return parse_request({"vcpus": 4, "memory": 8, "labels": {"boskos-lease-id": "b"},
                              **fields}, default_owner="job")

    leases = [*make_leases(["l1", "l2"], req(pools=2, **{"request-id": "r1"}),
                           [(p1, [p1.networks[0]]), (p2, [p2.networks[0]])], 0),
              make_lease("l3", req(vcpus=0, memory=0, **{"request-id": "r2"}), p1,
                         [p1.networks[1], p1.networks[2]], 0)]
    install = install_of(leases, [{"spec": p.spec(), "status": {}} for p in (p1, p2)])
    accounts = tmp_path / "accounts.sh"
    accounts.write_text(f"vcenter_usernames=({USER})\nvcenter_passwords=('{PASSWORD}')\n")
    shared = tmp_path / "shared"
    args = argparse.Namespace(dir=str(shared), credentials=str(accounts),
                              ca_certs=str(process_ca().path), multi_nic=False,
                              resource_pool=None, pool_resource_pool=False, dvs=True)
    assert "dvs.json" in write_lease_files(args, install)
    dvs = json.loads((shared / "dvs.json").read_text())

    si = login(access(sim.address), 10)  # the switches' UUIDs, read another way
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.DistributedVirtualSwitch], True)
        uuids = {s.name: s.uuid for s in view.view}
    finally:
        Disconnect(si)
    dc1 = {"datacenter": "datacenter1", "cluster": {"cluster1": uuids["datacenter1-dvs"]}}
    assert uuids["datacenter1-dvs"] != uuids["datacenter2-dvs"]
    assert dvs == {
        "/datacenter1/network/ci-vlan-1001": dc1,
        "/datacenter2/network/ci-vlan-2001": {
            "datacenter": "datacenter2", "cluster": {"cluster2": uuids["datacenter2-dvs"]}},
        "/datacenter1/network/ci-vlan-1002": dc1,
        "/datacenter1/network/not-on-the-vcenter": {},
    }

    # a login refused: nothing written, the option and the vCenter named, no password shown
    accounts.write_text(f"vcenter_usernames=({USER})\nvcenter_passwords=('wrong')\n")
    again = tmp_path / "again"
    with pytest.raises(CliError) as err:
        write_lease_files(argparse.Namespace(**{**vars(args), "dir": str(again)}), install)
    assert str(err.value).startswith(f"--dvs: vcenter {sim.address}: login as")
    assert "wrong" not in str(err.value)
    assert not any(again.iterdir())


@pytest.mark.parametrize("answers", ["nothing", "the handshake only"])
def test_a_vcenter_that_never_answers_is_given_up_after_the_timeout(mitm_ca, tmp_path,
                                                                    answers):
    """A vCenter that takes the connection and then answers nothing (not even the TLS
    handshake), or completes the handshake and answers no request: the login, and
    lease-files --dvs reading through it, give up after their timeout instead of waiting for
    ever (pyvmomi opens its first connection, which asks for the API versions, without
    one)."""
    from workers.adapters.vcenter.client import VCenterUnavailable, login
    from workers.adapters.vcenter.dvs import DvsError, dvs_json

    issued = mitm_ca.issue()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(issued.cert_file, issued.key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if answers == "the handshake only":
                conn.settimeout(10)
                with contextlib.suppress(OSError):
                    conn = server_context.wrap_socket(conn, server_side=True)
            held.append(conn)  # read nothing, answer nothing, keep it open

    threading.Thread(target=accept, daemon=True).start()
    vcenter = f"127.0.0.1:{listener.getsockname()[1]}"
    trusts = [Trust(ca_pem=mitm_ca.path.read_text()), Trust(kind="insecure"),
              Trust(kind="pinned", thumbprints=frozenset(
                  {issued.thumbprint(colons=False).lower()}))]
    def given_up(call: Callable[[], object]) -> BaseException:
        """What `call` raised, in a thread of its own: one waiting for ever fails the test."""
        raised: list[BaseException] = []

        def run() -> None:
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                raised.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "still waiting after 10 s (the timeout is 1 s)"
        return raised[0]

    try:
        for trust in trusts:
            exc = given_up(lambda t=trust: login(Access(vcenter, USER, PASSWORD, t), 1))
            assert isinstance(exc, VCenterUnavailable) and "timed out" in str(exc), exc
        exc = given_up(lambda: dvs_json([(vcenter, "/dc/network/pg")],
                                        {vcenter: (USER, PASSWORD)}, trusts[0], timeout=1))
        assert isinstance(exc, DvsError), exc
        assert str(exc).startswith(f"vcenter {vcenter}: ") and "timed out" in str(exc)
    finally:
        listener.close()
        for conn in held:
            conn.close()


class SickAfterLogin(BaseHTTPRequestHandler):
    """Relays to the simulator (`server.sim`) until a request names `server.sick_at`, which
    it answers with `server.answer` (status, content type, body)."""

    def log_message(self, *args: object) -> None:
        pass

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.sick_at.encode() in body:  # type: ignore[attr-defined]
            status, kind, text = self.server.answer  # type: ignore[attr-defined]
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        sim = self.server.sim  # type: ignore[attr-defined]
        conn = http.client.HTTPSConnection(sim.host, sim.port, timeout=30, context=(
            ssl.create_default_context(cafile=process_ca().path)))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = _relay


@pytest.mark.parametrize(("answer", "says"), [
    ((503, "text/html", b"<html>maintenance</html>"), "503"),
    ((200, "text/xml", b"<not-soap"), "cannot be read"),
    ((500, "text/xml", b"<soapenv:Envelope/>"), "cannot be read"),
])
def test_lease_files_dvs_a_vcenter_answering_no_soap_after_login_is_an_error(sim, answer, says):
    """A vCenter (or what sits before it) that lets the login through and then answers a
    read with something that is no SOAP answer: DvsError naming the vCenter, which the CLI
    shows without a traceback, not whatever pyvmomi raised."""
    from workers.adapters.vcenter.dvs import DvsError, dvs_json

    server = ThreadingHTTPServer(("127.0.0.1", 0), SickAfterLogin)
    cert = process_ca().issue()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert_file, cert.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.sim, server.sick_at, server.answer = sim, "FindByInventoryPath", answer  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    vc = f"127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(DvsError) as err:
            dvs_json([(vc, "/datacenter1/network/ci-vlan-1001")], {vc: (USER, PASSWORD)},
                     Trust(ca_pem=process_ca().path.read_text()), timeout=10)
        assert str(err.value).startswith(f"vcenter {vc}: "), err.value
        assert says in str(err.value), err.value
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("content", ["", "  \n", "# a comment and no certificate\n"])
def test_lease_files_dvs_an_empty_ca_bundle_trusts_nothing_not_the_system_store(
        sim, mitm_ca, tmp_path, monkeypatch, content):
    """--ca-certs naming a file with no certificate (a secret's key left blank) must not widen
    the trust to the system's store: here that store (OpenSSL's SSL_CERT_FILE) holds the CA
    that issued the man in the middle's certificate, as a public CA may. Refused naming the
    option; the vCenter is not contacted and nothing is written."""
    import argparse

    from workers.cli.exits import CliError
    from workers.cli.lease_files import write_lease_files
    from workers.core.grants import make_leases
    from workers.core.parsing import parse_request
    from workers.core.step_files import install_of

    monkeypatch.setenv("SSL_CERT_FILE", str(mitm_ca.path))
    empty = tmp_path / "ca.pem"
    empty.write_text(content)
    accounts = tmp_path / "accounts.sh"
    accounts.write_text(f"vcenter_usernames=({USER})\nvcenter_passwords=('{PASSWORD}')\n")
    with TlsProxy((sim.host, sim.port), mitm_ca.issue()) as proxy:
        p1, _ = pools(proxy.address)
        req = parse_request({"vcpus": 4, "memory": 8, "request-id": "r1",
                             "labels": {"boskos-lease-id": "b"}}, default_owner="job")
        install = install_of(make_leases(["l1"], req, [(p1, [p1.networks[0]])], 0),
                             [{"spec": p1.spec(), "status": {}}])
        shared = tmp_path / "shared"
        args = argparse.Namespace(dir=str(shared), credentials=str(accounts),
                                  ca_certs=str(empty), multi_nic=False, resource_pool=None,
                                  pool_resource_pool=False, dvs=True)
        with pytest.raises(CliError) as err:
            write_lease_files(args, install)
        assert str(err.value) == f"--ca-certs: {empty}: holds no usable PEM certificate"
        assert proxy.connections == 0 and proxy.received == b""
        assert not shared.exists() or not any(shared.iterdir())
