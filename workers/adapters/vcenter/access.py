"""Which vCenters may be contacted, with which credential, and how each one's certificate is
checked before anything is sent to it. Used by the health sync, `vcm check-pools` and
`vcm pools discover` alike.

Certificates are always verified unless the operator lists the vCenter in
VCM_VCENTER_INSECURE. For each vCenter, the first that applies:

1. VCM_VCENTER_KNOWN_HOSTS (govc's GOVC_TLS_KNOWN_HOSTS format: `vcenter thumbprint` lines, as
   `govc about.cert -k -thumbprint` prints them) pins it: its certificate must have one of the
   listed SHA-1, SHA-256 or SHA-512 thumbprints; CA and host name are not consulted. A file
   that does not exist pins nothing, as with govc.
2. A `vcenter=path` entry of VCM_VCENTER_CA_CERTS: its certificate must chain to that bundle
   and name the host.
3. VCM_VCENTER_INSECURE lists it: the certificate is not checked at all (each login logs a
   WARNING naming the vCenter).
4. The plain paths of VCM_VCENTER_CA_CERTS (govc's GOVC_TLS_CA_CERTS), else the system's trust
   store: the certificate must chain to one of them and name the host.

A CA file without a certificate (empty, say) refuses its vCenters rather than fall back to the
system's trust store.

Credentials: VCM_VCENTER_CREDENTIALS (`vc1=user:pass,…`) gives a vCenter its own. The shared
VCM_VCENTER_USERNAME / VCM_VCENTER_PASSWORD go only to the vCenters that
VCM_VCENTER_SHARED_CREDENTIAL_FOR lists (`*`: every vCenter): a host named in the pools file
does not get a credential the operator did not mean for it. A vCenter without a credential, or
whose password is empty, is not contacted, and the reason says why.

vCenters are matched by host (any case) and port: `vc1`, `vc1:443` and `https://vc1/sdk` are
one vCenter. Files are read on every call, so a replaced certificate, bundle or pin is picked
up by the next sync without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from ...core.errors import InvalidRequest
from ...core.text import shown

if TYPE_CHECKING:
    from ...settings import Settings

MAX_FILE = 4 << 20  # a CA bundle or known-hosts file larger than this is a mistake
ALL = "*"
DIGESTS = {40: ("sha1", "SHA-1"), 64: ("sha256", "SHA-256"), 128: ("sha512", "SHA-512")}
CA_HINT = ("trust its CA with VCM_VCENTER_CA_CERTS, or pin its thumbprint in "
           "VCM_VCENTER_KNOWN_HOSTS")


class ThumbprintMismatch(ssl.SSLCertVerificationError):
    """The certificate is not one of those pinned for the vCenter."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.verify_message = message


class _TimedSocket(ssl.SSLSocket):
    """Gives up a handshake, a read or a write that waits longer than its context's
    `io_timeout`: pyvmomi's first request (the API versions, before the login) opens its
    connection without a timeout, and would wait for ever on a vCenter that accepts the
    connection and never answers."""

    def do_handshake(self, block: bool = False) -> None:
        timeout = getattr(self.context, "io_timeout", None)
        if timeout is not None and self.gettimeout() is None:
            self.settimeout(timeout)
        super().do_handshake(block)


class _PinnedSocket(_TimedSocket):
    """Checks the peer's certificate against the context's pins as soon as the handshake is
    done, before the connection is handed to the HTTP client: nothing is sent to a server
    whose certificate is not pinned."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        context = self.context
        assert isinstance(context, PinnedContext)
        problem = pin_problem(self.getpeercert(binary_form=True) or b"", context.thumbprints)
        if problem:
            raise ThumbprintMismatch(problem)


class PinnedContext(ssl.SSLContext):
    """A client context that trusts exactly the certificates with these thumbprints."""

    thumbprints: frozenset[str] = frozenset()


def pin_problem(der: bytes, thumbprints: frozenset[str]) -> str | None:
    """Why a DER certificate matches none of the pinned thumbprints, or None."""
    for pin in thumbprints:
        digest = hashlib.new(DIGESTS[len(pin)][0], der).hexdigest()
        if hmac.compare_digest(digest, pin):
            return None
    lengths = {len(pin) for pin in thumbprints}
    algorithm, label = DIGESTS[64 if 64 in lengths or not lengths else min(lengths)]
    actual = hashlib.new(algorithm, der).hexdigest().upper()
    pretty = ":".join(actual[i:i + 2] for i in range(0, len(actual), 2))
    return f"its {label} thumbprint {pretty} is not the one VCM_VCENTER_KNOWN_HOSTS pins"


@dataclass(frozen=True)
class Trust:
    """How a vCenter's certificate is checked before anything is sent to it."""

    kind: Literal["ca", "pinned", "insecure"] = "ca"
    ca_pem: str | None = None  # "ca": the PEM bundle; None: the system's trust store
    thumbprints: frozenset[str] = frozenset()  # "pinned": lower-case hex digests
    # "insecure": why, as each login's warning says it
    insecure_because: str = field(default="VCM_VCENTER_INSECURE lists it", compare=False)

    def context(self, timeout: float | None = None) -> ssl.SSLContext:
        """A new client context that checks the certificate this way; with `timeout`, each
        connection it secures gives up a handshake, read or write that waits longer (seconds),
        whether or not its opener set a timeout."""
        if self.kind == "pinned":
            pinned = PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
            pinned.check_hostname = False
            pinned.verify_mode = ssl.CERT_NONE  # the pin is checked instead (_PinnedSocket)
            pinned.thumbprints = self.thumbprints
            pinned.sslsocket_class = _PinnedSocket
            context: ssl.SSLContext = pinned
        elif self.kind == "insecure":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cadata=self.ca_pem)
        if timeout is not None:
            context.io_timeout = timeout  # type: ignore[attr-defined]  # read by _TimedSocket
            if self.kind != "pinned":
                context.sslsocket_class = _TimedSocket
        return context

    def describe(self) -> str:
        if self.kind == "pinned":
            return "pinned thumbprint (VCM_VCENTER_KNOWN_HOSTS)"
        if self.kind == "insecure":
            return "NOT verified (VCM_VCENTER_INSECURE)"
        return "CA bundle (VCM_VCENTER_CA_CERTS)" if self.ca_pem else "system trust store"


@dataclass(frozen=True)
class Access:
    """What logging in to one vCenter takes: a credential meant for it and how to trust it."""

    vcenter: str
    user: str
    password: str = field(repr=False)
    trust: Trust = Trust()


@dataclass
class AccessPlan:
    """The vCenters that may be contacted (`access`), and why the others may not (`refused`).
    `configured`: any credential is set at all (without one, syncing is off, not failing)."""

    access: dict[str, Access] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    configured: bool = True


def address(vcenter: str) -> tuple[str, int]:
    """(host, port) of a pool's vcenter: "host", "host:port", "[v6]:port" or "https://host/sdk"."""
    parts = urlsplit(vcenter if "://" in vcenter else f"//{vcenter}")
    return parts.hostname or vcenter, parts.port or 443


def endpoint(vcenter: str) -> tuple[str, int]:
    """The (host in lower case, port) a vCenter name stands for."""
    try:
        host, port = address(vcenter.strip())
    except ValueError:  # e.g. a bare IPv6 address: compared as written
        return vcenter.strip().lower(), 443
    return host.lower(), port


def plan(vcenters: Iterable[str], settings: Settings | None = None) -> AccessPlan:
    """Access to each of `vcenters` from the settings (else the environment's), reading the CA
    and known-hosts files now. A malformed VCM_VCENTER_CREDENTIALS raises InvalidRequest; a
    file that cannot be used refuses the vCenters that depend on it, with the reason."""
    from ...settings import Settings

    settings = settings or Settings.from_env()
    own = _own_credentials(settings.vcenter_credentials)
    shared_user = settings.vcenter_username
    shared_for = names(settings.vcenter_shared_credential_for)
    trusts = _TrustSources(settings)
    result = AccessPlan(configured=bool(own or shared_user))
    for vcenter in dict.fromkeys(vcenters):
        try:
            address(vcenter)
        except ValueError as exc:
            result.refused[vcenter] = (
                f"not contacted: {shown(vcenter)} is not a vCenter address ({exc}): write "
                "host, host:port, [IPv6 address]:port or https://host/sdk")
            continue
        key = endpoint(vcenter)
        credential = own.get(key)
        if credential is None and shared_user and (ALL in shared_for or key in shared_for):
            credential = (shared_user, settings.vcenter_password)
        if credential is None:
            result.refused[vcenter] = _no_credential(bool(shared_user))
            continue
        if not credential[1]:
            # no vCenter takes an empty password, and pyvmomi answers one to "localhost" by
            # sending the contents of a local file the server names
            variable = "VCM_VCENTER_CREDENTIALS" if key in own else "VCM_VCENTER_PASSWORD"
            result.refused[vcenter] = f"not contacted: the password for it is empty ({variable})"
            continue
        trust = trusts.trust(key)
        if isinstance(trust, str):
            result.refused[vcenter] = f"not contacted: {trust}"
            continue
        result.access[vcenter] = Access(vcenter, credential[0], credential[1], trust)
    return result


def _no_credential(shared: bool) -> str:
    if not shared:
        return "not contacted: no credentials for it (VCM_VCENTER_CREDENTIALS has none)"
    return ("not contacted: no credentials for it (VCM_VCENTER_CREDENTIALS has none, and the "
            "shared VCM_VCENTER_USERNAME goes only to the vCenters "
            "VCM_VCENTER_SHARED_CREDENTIAL_FOR lists)")


def names(value: str) -> set[str | tuple[str, int]]:
    """The vCenters of a comma-separated list, as endpoints; `*` stays `*`."""
    out: set[str | tuple[str, int]] = set()
    for item in value.split(","):
        item = item.strip()
        if item:
            out.add(ALL if item == ALL else endpoint(item))
    return out


def _own_credentials(value: str) -> dict[tuple[str, int], tuple[str, str]]:
    creds: dict[tuple[str, int], tuple[str, str]] = {}
    for item in filter(None, (i.strip() for i in value.split(","))):
        vcenter, sep, pair = item.partition("=")
        user, sep2, secret = pair.partition(":")
        if not sep or not sep2 or not vcenter.strip() or not user:
            raise InvalidRequest.of("VCM_VCENTER_CREDENTIALS", "use vcenter=user:password,…")
        creds[endpoint(vcenter)] = (user, secret)
    return creds


def thumbprint(text: str) -> str | None:
    """A thumbprint as lower-case hex (colons dropped), or None unless it is SHA-1, SHA-256 or
    SHA-512 hex."""
    digest = text.strip().replace(":", "").lower()
    if len(digest) in DIGESTS and all(c in "0123456789abcdef" for c in digest):
        return digest
    return None


def _read(variable: str, path: str) -> str:
    """A settings file's text; OSError/ValueError with a message naming variable and path."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise ValueError(f"{variable}: {shown(path)} is larger than {MAX_FILE >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{variable}: {shown(path)} is not UTF-8 text") from None


class _TrustSources:
    """The CA bundles, pins and insecure list of the settings, read once per plan."""

    def __init__(self, settings: Settings) -> None:
        self.insecure = names(settings.vcenter_insecure)
        self.pins: dict[tuple[str, int], frozenset[str]] = {}
        self.pins_problem: str | None = None
        if settings.vcenter_known_hosts:
            try:
                self.pins = _known_hosts(settings.vcenter_known_hosts)
            except FileNotFoundError:
                pass  # nothing pinned, as govc
            except (OSError, ValueError) as exc:
                self.pins_problem = _file_problem("VCM_VCENTER_KNOWN_HOSTS",
                                                  settings.vcenter_known_hosts, exc)
        self.own_ca: dict[tuple[str, int], list[str]] = {}  # vCenter -> its bundle's files
        shared: list[str] = []
        for item in filter(None, (i.strip() for i in settings.vcenter_ca_certs.split(","))):
            vcenter, sep, path = item.partition("=")
            if sep:
                self.own_ca.setdefault(endpoint(vcenter), []).append(path.strip())
            else:
                shared.append(item)
        self.shared_ca, self.shared_ca_problem = _bundle(shared) if shared else (None, None)

    def trust(self, key: tuple[str, int]) -> Trust | str:
        """How this vCenter's certificate is checked, or why it cannot be."""
        if self.pins_problem:
            return self.pins_problem
        if key in self.pins:
            return Trust("pinned", thumbprints=self.pins[key])
        if key in self.own_ca:
            pem, problem = _bundle(self.own_ca[key])
            return problem or Trust("ca", ca_pem=pem)
        if key in self.insecure:
            return Trust("insecure")
        return self.shared_ca_problem or Trust("ca", ca_pem=self.shared_ca)


def _bundle(paths: list[str]) -> tuple[str | None, str | None]:
    """(the PEM text of these CA files, None), or (None, why they cannot be used)."""
    texts = []
    for path in paths:
        unusable = f"VCM_VCENTER_CA_CERTS: {shown(path)} holds no usable PEM certificate"
        try:
            # PEM is ASCII: what is not (CA names in a bundle's comments) is no certificate
            text = _read("VCM_VCENTER_CA_CERTS", path).encode("ascii", "replace").decode()
            if not text.strip():  # an empty cadata would load the system's trust store
                return None, unusable
            ssl.create_default_context(cadata=text)
        except ssl.SSLError:
            return None, unusable
        except (OSError, ValueError) as exc:
            return None, _file_problem("VCM_VCENTER_CA_CERTS", path, exc)
        texts.append(text)
    return "\n".join(texts), None


def _known_hosts(path: str) -> dict[tuple[str, int], frozenset[str]]:
    """vCenter -> its pinned thumbprints, from `vcenter thumbprint` lines (blank lines and
    `#` comments skipped)."""
    pins: dict[tuple[str, int], set[str]] = {}
    for number, line in enumerate(_read("VCM_VCENTER_KNOWN_HOSTS", path).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        digest = thumbprint(parts[1]) if len(parts) == 2 else None
        if digest is None:
            raise ValueError(f"VCM_VCENTER_KNOWN_HOSTS: {shown(path)} line {number}: expected "
                             "`vcenter thumbprint` (SHA-1, SHA-256 or SHA-512 hex, as `govc "
                             "about.cert -k -thumbprint` prints it)")
        pins.setdefault(endpoint(parts[0]), set()).add(digest)
    return {key: frozenset(digests) for key, digests in pins.items()}


def _file_problem(variable: str, path: str, exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{variable}: cannot read {shown(path)}: {exc.strerror or exc}"
    return str(exc)
