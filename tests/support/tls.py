"""Certificates, and a TLS proxy that records what a man in the middle would read.

`CertificateAuthority` makes a CA (EC P-256, `cryptography`) and issues server certificates for
127.0.0.1, ::1 and localhost. `process_ca()` is the one CA of this test process: the vCenter
simulator serves a certificate it issued, and the tests that trust the simulator name its
`path` (VCM_VCENTER_CA_CERTS).

`TlsProxy` listens on 127.0.0.1, completes a TLS handshake with a certificate of the test's
choosing, and relays each connection to the simulator. Everything a client sends after its
handshake is kept in `received`: the proxy is the eavesdropper, so a client that refuses its
certificate must leave `received` empty (no Login, no password).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import functools
import hashlib
import ipaddress
import select
import selectors
import shutil
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Issued:
    """A server certificate and its key, as PEM files."""

    cert_file: Path
    key_file: Path
    der: bytes

    def thumbprint(self, algorithm: str = "sha256", colons: bool = True) -> str:
        """The certificate's thumbprint as govc prints it (upper-case hex, colon-separated)."""
        digest = hashlib.new(algorithm, self.der).hexdigest().upper()
        if not colons:
            return digest
        return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


class CertificateAuthority:
    """A CA of its own in `directory`: `path` is its certificate (the bundle to trust)."""

    def __init__(self, directory: Path, name: str = "vcm test CA") -> None:
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "ca.pem"
        self.path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._issued = 0

    def issue(self, hosts: tuple[str, ...] = HOSTS) -> Issued:
        """A server certificate for `hosts` (IP addresses and DNS names), signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self._issued += 1
        cert_file = self.directory / f"server-{self._issued}.pem"
        key_file = self.directory / f"server-{self._issued}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return Issued(cert_file, key_file, cert.public_bytes(serialization.Encoding.DER))


@functools.cache
def process_ca() -> CertificateAuthority:
    """The CA of this test process (its directory is removed when the process exits)."""
    directory = Path(tempfile.mkdtemp(prefix="vcm-test-ca-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return CertificateAuthority(directory)


class TlsProxy:
    """A TLS-terminating relay on 127.0.0.1 in front of `upstream` (host, port), serving
    `certificate`. `received` is every byte clients sent after a completed handshake;
    `connections` counts the TCP connections accepted, `handshakes` and `refused` the completed
    and failed handshakes, `finished` the connections over (refused, or closed by either
    side)."""

    def __init__(self, upstream: tuple[str, int], certificate: Issued) -> None:
        self.upstream = upstream
        self._server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_context.load_cert_chain(certificate.cert_file, certificate.key_file)
        # the relay's own leg to the simulator: the test's, not the code under test
        self._upstream_context = ssl.create_default_context(cafile=process_ca().path)
        self._changed = threading.Condition()
        self._received = bytearray()
        self.connections = self.handshakes = self.refused = self.finished = 0
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="tls-proxy").start()

    @property
    def address(self) -> str:
        """host:port, as a pool's vcenter field names it."""
        return f"127.0.0.1:{self.port}"

    @property
    def received(self) -> bytes:
        with self._changed:
            return bytes(self._received)

    def wait_for(self, what: str, predicate, timeout: float = 30.0) -> None:
        """Until `predicate(self)` holds (checked whenever the proxy records something)."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"proxy {self.address}: {what} (connections "
                                   f"{self.connections}, handshakes {self.handshakes}, refused "
                                   f"{self.refused}, finished {self.finished}, "
                                   f"{len(self._received)} bytes received)")

    def _count(self, **add: int) -> None:
        with self._changed:
            for name, n in add.items():
                setattr(self, name, getattr(self, name) + n)
            self._changed.notify_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._count(connections=1)
            threading.Thread(target=self._connection, args=(client,), daemon=True,
                             name="tls-proxy-conn").start()

    def _track(self, sock: socket.socket) -> bool:
        with self._changed:
            if self._closed:
                return False
            self._sockets.add(sock)
            return True

    def _connection(self, raw: socket.socket) -> None:
        try:
            self._serve(raw)
        finally:
            self._count(finished=1)

    def _serve(self, raw: socket.socket) -> None:
        if not self._track(raw):
            raw.close()
            return
        with self._changed:
            context = self._server_context
        try:
            client = context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            self._count(refused=1)
            return
        self._count(handshakes=1)
        if not self._track(client):
            client.close()
            return
        try:
            upstream = self._upstream_context.wrap_socket(
                socket.create_connection(self.upstream, timeout=30),
                server_hostname=self.upstream[0])
        except OSError:
            client.close()
            return
        if not self._track(upstream):
            upstream.close()
            client.close()
            return
        try:
            self._relay(client, upstream)
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _relay(self, client: ssl.SSLSocket, upstream: ssl.SSLSocket) -> None:
        """Both directions in one thread (an SSL socket must not be read and written from two
        threads at once), until either side closes."""
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    source: ssl.SSLSocket = key.fileobj  # type: ignore[assignment]
                    while True:  # what the SSL layer holds decrypted is not seen by select
                        try:
                            data = source.recv(65536)
                        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                            break
                        except OSError:
                            return
                        if not data:
                            return
                        if source is client:
                            with self._changed:
                                self._received += data
                                self._changed.notify_all()
                        if not self._send(peer[source], data):
                            return

    @staticmethod
    def _send(target: ssl.SSLSocket, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                view = view[target.send(view):]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                select.select([target], [target], [], 1.0)
            except OSError:
                return False
        return True

    def swap(self, certificate: Issued) -> None:
        """Serve `certificate` from now on, and end every open connection: the next request
        needs a new handshake (a man in the middle who arrives after the login)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate.cert_file, certificate.key_file)
        with self._changed:
            self._server_context = context
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            sockets, self._sockets = self._sockets, set()
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> TlsProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
