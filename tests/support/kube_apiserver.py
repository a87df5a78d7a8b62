"""A small, real kube-apiserver for tests: ConfigMaps and Namespaces, over plain HTTP.

It reproduces what the official ``kubernetes`` Python client sees from a real apiserver for
``/api/v1/namespaces/{ns}/configmaps[/{name}]``: resourceVersion (one global counter, as a
string), uid, creationTimestamp, 404 NotFound, 409 AlreadyExists / Conflict, 422 Invalid
(FieldValueTooLong above 1,048,576 bytes of data + binaryData), merge, strategic-merge and
JSON patches, label selectors on list, delete preconditions and dryRun. Errors are ``Status``
objects shaped like the real ones.

Namespaces (``/api/v1/namespaces[/{name}]``): list (label selectors, ``metadata.name`` and
``status.phase`` field selectors; no paging), get, create (422 on an invalid name, 409
AlreadyExists, also while one of that name is Terminating), merge/JSON patch and delete. The
server starts with ``default``, ``kube-node-lease``, ``kube-public`` and ``kube-system``; the
API refuses to delete ``default``, ``kube-public`` and ``kube-system`` (403, as the
NamespaceLifecycle admission does). A delete marks the namespace Terminating
(``deletionTimestamp``, ``status.phase``); the namespace controller is simulated as instant: a
namespace without ``metadata.finalizers`` is removed at once, with its ConfigMaps, one with
finalizers stays Terminating until they are patched away (or ``finish_namespace``). ConfigMaps
do not need their namespace to exist. ``create_namespace``, ``delete_namespace``,
``remove_namespace`` (gone without a trace, even a system one) and ``namespace_names`` act on
the store directly.

RBAC (``rbac=RbacPolicy.from_files("deploy/rbac.yaml")``, see support/rbac.py): requests are
authorized as kube-apiserver's RBAC authorizer does, by the Roles, ClusterRoles and bindings of
those manifests, for the user of the bearer token: ``token_for(namespace, service_account)``
issues a service account's token, ``write_kubeconfig(..., token=...)`` writes a kubeconfig with
it. What RBAC does not allow is answered 403 Forbidden, a Status shaped like the real one; an
unknown token 401 Unauthorized; no token is ``system:anonymous``. ``api_client()`` and a
kubeconfig without a token of their own use an admin token (group ``system:masters``): the
test's own look at the store.

Faults are injected from Python: ``inject_fault(status=503, count=3)``, ``inject_fault(hang=2.0)``,
``inject_fault(trickle=0.01)`` (a slow proxy: the answer's body one byte at a time, so that
every read of the client is short while the whole answer is not; ``hold=`` an Event keeps its
last byte back until set; ``trickling`` counts the answers under way, ``trickled`` lists how
each ended: "sent", or "cut" when the client went away first) (``count=None`` means until
``clear_faults()``), ``set_latency(0.01)``;
``resource="namespaces"`` (or ``"configmaps"``) restricts a fault to one resource. ``writes``
counts the successful mutating requests.

Usage in a test::

    @pytest.fixture
    def kube():
        with KubeApiServer() as server:
            yield server

    def test_x(kube):
        core = kubernetes.client.CoreV1Api(kube.api_client())
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.rbac import ADMIN, ANONYMOUS, RbacPolicy, Request, User, forbidden_status

MAX_CONFIGMAP_BYTES = 1_048_576  # core.MaxSecretSize, also used for ConfigMaps
MAX_ANNOTATIONS_BYTES = 262_144  # apimachinery TotalAnnotationSizeLimitB
MAX_REQUEST_BYTES = 3 * 1024 * 1024  # apiserver's default request body limit

_CM_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?/?$")
_ALL_CM_PATH = re.compile(r"^/api/v1/configmaps/?$")
_NS_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?/?$")
SYSTEM_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
UNDELETABLE_NAMESPACES = frozenset({"default", "kube-public", "kube-system"})
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CM_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CONFLICT_MSG = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
          "DELETE": "delete"}
_FAULT_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalError",
    502: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class _ApiError(Exception):
    """An error answer: rendered as a v1 Status object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _not_found(name: str) -> _ApiError:
    return _ApiError(
        404, "NotFound", f'configmaps "{name}" not found', {"name": name, "kind": "configmaps"}
    )


def _conflict(name: str, why: str = _CONFLICT_MSG) -> _ApiError:
    return _ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on configmaps "{name}": {why}',
        {"name": name, "kind": "configmaps"},
    )


def _bad_request(message: str) -> _ApiError:
    return _ApiError(400, "BadRequest", message)


def _invalid(name: str, causes: list[tuple[str, str, str]]) -> _ApiError:
    """422 Invalid; causes are (reason, field, message) like field.ErrorList."""
    parts = [f"{f}: {m}" for _, f, m in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return _ApiError(
        422,
        "Invalid",
        f'ConfigMap "{name}" is invalid: {summary}',
        {
            "name": name,
            "kind": "ConfigMap",
            "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes],
        },
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also our strategic-merge: ConfigMap fields are all maps)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):  # strategic-merge directives: nothing to do for maps of strings
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _json_pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 (add, remove, replace, test, copy, move) on plain JSON values."""
    if not isinstance(ops, list):
        raise _bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)

    def parent(path: str) -> tuple[Any, str]:
        parts = _json_pointer(path)
        if not parts:
            raise _bad_request("the whole object cannot be patched")
        node = doc
        for part in parts[:-1]:
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                raise _ApiError(422, "Invalid", f"doc is missing path: {path!r}") from exc
        return node, parts[-1]

    def get(path: str) -> Any:
        node, last = parent(path)
        try:
            return node[int(last)] if isinstance(node, list) else node[last]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise _ApiError(422, "Invalid", f"doc is missing path: {path!r}") from exc

    def remove(path: str) -> Any:
        value = get(path)
        node, last = parent(path)
        if isinstance(node, list):
            del node[int(last)]
        else:
            del node[last]
        return value

    def add(path: str, value: Any) -> None:
        node, last = parent(path)
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), value)
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise _ApiError(422, "Invalid", f"doc is missing path: {path!r}")

    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise _bad_request("each json patch operation needs op and path")
        kind, path = op["op"], op["path"]
        if kind == "add":
            add(path, op.get("value"))
        elif kind == "remove":
            remove(path)
        elif kind == "replace":
            get(path)
            node, last = parent(path)
            node[int(last) if isinstance(node, list) else last] = op.get("value")
        elif kind == "test":
            if get(path) != op.get("value"):
                raise _ApiError(422, "Invalid", f"testing value {path} failed")
        elif kind == "copy":
            add(path, copy.deepcopy(get(op.get("from", ""))))
        elif kind == "move":
            add(path, remove(op.get("from", "")))
        else:
            raise _bad_request(f"unknown json patch operation {kind!r}")
    return doc


def _parse_label_selector(text: str) -> list[tuple[str, str, str | None]]:
    """Equality-based selectors: k=v, k==v, k!=v, k, !k (comma separated)."""
    terms: list[tuple[str, str, str | None]] = []
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "==" in term:
            key, value = term.split("==", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif "=" in term:
            key, value = term.split("=", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif term.startswith("!"):
            terms.append(("!", term[1:].strip(), None))
        elif re.fullmatch(r"[-./a-zA-Z0-9_]+", term):
            terms.append(("exists", term, None))
        else:
            raise _bad_request(f"unable to parse requirement: {term!r}")
    return terms


def _labels_match(labels: dict[str, str], terms: list[tuple[str, str, str | None]]) -> bool:
    for op, key, value in terms:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True


@dataclass
class _Fault:
    status: int | None
    hang: float | None
    remaining: int | None  # None: until cleared
    methods: frozenset[str] | None
    name: str | None
    resource: str | None = None  # configmaps | namespaces; None: any
    hits: int = 0
    trickle: float | None = None  # seconds between the body's bytes
    hold: threading.Event | None = None  # the last byte waits for it


def _target(path: str) -> tuple[str | None, str | None]:
    """(resource, object name or None) of a request path."""
    match = _CM_PATH.match(path)
    if match:
        return "configmaps", unquote(match.group(2)) if match.group(2) else None
    if _ALL_CM_PATH.match(path):
        return "configmaps", None
    match = _NS_PATH.match(path)
    if match:
        return "namespaces", unquote(match.group(1)) if match.group(1) else None
    return None, None


def _authorizer_request(method: str, path: str, query: dict[str, list[str]]) -> Request | None:
    """The RBAC attributes of a request, as kube-apiserver's RequestInfo makes them (None: not
    a resource this server has). A namespace's own path is in that namespace."""
    resource, name = _target(path)
    if resource is None:
        return None
    namespace = ""
    match = _CM_PATH.match(path)
    if match is not None:
        namespace = unquote(match.group(1))
    elif resource == "namespaces" and name:
        namespace = name
    if method == "GET":
        watch = query.get("watch", ["false"])[0] in ("true", "1")
        verb = "get" if name else ("watch" if watch else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    if method == "POST":
        name = None  # the authorizer does not know a created object's name
    return Request(verb, resource, namespace, name or "")


@dataclass
class _Stats:
    requests: int = 0
    writes: int = 0
    conflicts: int = 0
    faults_served: int = 0
    log: list[tuple[str, str, int]] = field(default_factory=list)


class KubeApiServer:
    """ConfigMap and Namespace subset of kube-apiserver on 127.0.0.1 in a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        max_object_bytes: int = MAX_CONFIGMAP_BYTES,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        keep_log: bool = True,
        namespaces: tuple[str, ...] | list[str] = SYSTEM_NAMESPACES,
        rbac: RbacPolicy | None = None,
    ) -> None:
        self._host = host
        self._want_port = port
        self.rbac = rbac  # when set, requests are authorized by its RBAC rules
        if rbac is not None and token is None:
            token = rbac.admin_token()
        self.token = token  # when set, requests need "Authorization: Bearer <token>"
        self.max_object_bytes = max_object_bytes
        self.max_request_bytes = max_request_bytes
        self.keep_log = keep_log
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._namespaces: dict[str, dict[str, Any]] = {}
        self._rv = 0
        self._faults: list[_Fault] = []
        self._hooks: list[Callable[[str, str, str | None], None]] = []
        self._latency = 0.0
        self._stats = _Stats()
        self.trickling = 0  # answers being trickled now
        self.trickled: list[str] = []  # how each trickled answer ended: "sent" or "cut"
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for ns in namespaces:
            self.create_namespace(ns)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KubeApiServer:
        if self._httpd is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"api": self})
        self._stopping.clear()
        httpd = ThreadingHTTPServer((self._host, self._want_port), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"kube-apiserver:{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hung handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # ---- client helpers ----------------------------------------------------------------------

    def api_client(self, **configuration: Any) -> Any:
        """A kubernetes.client.ApiClient for this server; extra kwargs set Configuration fields."""
        from kubernetes import client

        config = client.Configuration(host=self.url)
        if self.token is not None:
            config.api_key = {"BearerToken": f"Bearer {self.token}"}
        for key, value in configuration.items():
            setattr(config, key, value)
        return client.ApiClient(configuration=config)

    def token_for(self, namespace: str, service_account: str) -> str:
        """A bearer token of that service account (RBAC: it must be in the manifests)."""
        if self.rbac is None:
            raise RuntimeError("this server was started without rbac")
        return self.rbac.token_for(namespace, service_account)

    def write_kubeconfig(
        self, path: str | Path, namespace: str = "default", context: str = "kube-test",
        token: str | None = None,
    ) -> Path:
        """Write a kubeconfig pointing at this server (token auth with `token`, else the
        server's token when one is set)."""
        token = token if token is not None else self.token
        user: dict[str, Any] = {"token": token} if token is not None else {}
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": context, "namespace": namespace},
                }
            ],
            "current-context": context,
            "preferences": {},
        }
        target = Path(path)
        target.write_text(json.dumps(kubeconfig, indent=2))  # JSON is valid YAML
        return target

    # ---- fault injection and counters --------------------------------------------------------

    def inject_fault(
        self,
        status: int | None = None,
        *,
        hang: float | None = None,
        trickle: float | None = None,
        hold: threading.Event | None = None,
        count: int | None = 1,
        methods: set[str] | list[str] | tuple[str, ...] | None = None,
        name: str | None = None,
        resource: str | None = None,
    ) -> None:
        """Make the next `count` matching requests (None: all until cleared) fail or hang.

        status: answer this HTTP code with a Status (500 InternalError, 503 ServiceUnavailable,
        429 TooManyRequests with Retry-After, 403 Forbidden, ...). hang: sleep this many seconds
        first (then answer `status`, or the normal answer when status is None). trickle: the
        normal answer, its headers at once and its body one byte every `trickle` seconds, the
        last byte not before `hold` is set (when given). methods / name
        / resource restrict the fault to those HTTP methods / that object name (the URL's, or
        for a create the body's) / that resource ("configmaps" or "namespaces").
        """
        if resource not in (None, "configmaps", "namespaces"):
            raise ValueError(f"unknown resource {resource!r}")
        if status is None and hang is None and trickle is None:
            raise ValueError("give a status, a hang and/or a trickle")
        if trickle is not None and status is not None:
            raise ValueError("a trickle sends the normal answer: give no status")
        if status is not None and status not in _FAULT_REASONS:
            raise ValueError(f"unsupported fault status {status}")
        meths = frozenset(m.upper() for m in methods) if methods else None
        with self._lock:
            self._faults.append(_Fault(status, hang, count, meths, name, resource,
                                       trickle=trickle, hold=hold))

    def add_hook(self, hook: Callable[[str, str, str | None], None]) -> None:
        """Call hook(method, path, object name or None) before each request is processed,
        e.g. to change an object between a client's read and its write. The name is the
        URL's, or for a create the body's."""
        with self._lock:
            self._hooks.append(hook)

    def remove_hook(self, hook: Callable[[str, str, str | None], None]) -> None:
        with self._lock:
            self._hooks.remove(hook)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_latency(self, seconds: float) -> None:
        """Delay every request by this much (makes races between clients likely)."""
        self._latency = max(0.0, seconds)

    @property
    def writes(self) -> int:
        """Number of successful (2xx, not dry-run) POST/PUT/PATCH/DELETE requests."""
        return self._stats.writes

    @property
    def requests(self) -> int:
        return self._stats.requests

    @property
    def conflicts(self) -> int:
        """Number of 409 Conflict answers on stale resourceVersion (not AlreadyExists)."""
        return self._stats.conflicts

    @property
    def faults_served(self) -> int:
        return self._stats.faults_served

    @property
    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request, oldest first."""
        with self._lock:
            return list(self._stats.log)

    def reset_counters(self) -> None:
        with self._lock:
            self._stats = _Stats()

    @property
    def resource_version(self) -> int:
        return self._rv

    # ---- direct access to the store (tests) --------------------------------------------------

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def names(self, namespace: str) -> list[str]:
        with self._lock:
            return sorted(n for ns, n in self._objects if ns == namespace)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object directly (no validation), assigning the server-owned metadata."""
        with self._lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("namespace", "default")
            key = (meta["namespace"], meta["name"])
            old = self._objects.get(key)
            self._stamp(obj, old)
            self._objects[key] = obj
            return copy.deepcopy(obj)

    def clear(self) -> None:
        """Remove every ConfigMap (namespaces stay)."""
        with self._lock:
            self._objects.clear()

    def create_namespace(
        self, name: str, labels: dict[str, str] | None = None, finalizers: list[str] | None = None
    ) -> dict[str, Any]:
        """Store an Active namespace directly (no validation); `finalizers` are
        metadata.finalizers, which keep it Terminating after a delete."""
        meta: dict[str, Any] = {"name": name, "labels": {**(labels or {}),
                                                         "kubernetes.io/metadata.name": name}}
        if finalizers:
            meta["finalizers"] = list(finalizers)
        obj = {"metadata": meta, "spec": {"finalizers": ["kubernetes"]},
               "status": {"phase": "Active"}}
        with self._lock:
            self._stamp(obj, self._namespaces.get(name), kind="Namespace")
            self._namespaces[name] = obj
            return self._public(obj)

    def namespace(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._namespaces.get(name)
            return self._public(obj) if obj is not None else None

    def namespace_names(self) -> list[str]:
        """Every namespace that exists (Terminating ones too)."""
        with self._lock:
            return sorted(self._namespaces)

    def delete_namespace(self, name: str) -> dict[str, Any]:
        """What a DELETE does (a system namespace too): Terminating, then removed with its
        ConfigMaps unless metadata.finalizers keep it."""
        with self._lock:
            if name not in self._namespaces:
                raise KeyError(name)
            return self._terminate(name)

    def finish_namespace(self, name: str) -> None:
        """Drop a Terminating namespace's metadata.finalizers: the controller removes it."""
        with self._lock:
            obj = self._namespaces[name]
            obj["metadata"].pop("finalizers", None)
            self._finalize(name)

    def remove_namespace(self, name: str) -> None:
        """The namespace is gone at once (no Terminating phase; its ConfigMaps stay)."""
        with self._lock:
            del self._namespaces[name]
            self._next_rv()

    # ---- request processing (called by the handler) ------------------------------------------

    def _take_fault(
        self, method: str, name: str | None, resource: str | None = None
    ) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.methods is not None and method not in fault.methods:
                    continue
                if fault.name is not None and fault.name != name:
                    continue
                if fault.resource is not None and fault.resource != resource:
                    continue
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                self._stats.faults_served += 1
                return fault
        return None

    def _record(self, method: str, path: str, code: int, *, dry_run: bool = False) -> None:
        with self._lock:
            self._stats.requests += 1
            if method in _WRITE_METHODS and 200 <= code < 300 and not dry_run:
                self._stats.writes += 1
            if self.keep_log:
                self._stats.log.append((method, path, code))

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _stamp(
        self, obj: dict[str, Any], old: dict[str, Any] | None, kind: str = "ConfigMap"
    ) -> None:
        meta = obj["metadata"]
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        meta["resourceVersion"] = self._next_rv()
        obj["apiVersion"] = "v1"
        obj["kind"] = kind

    def _validate(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """ValidateConfigMap (+ ValidateConfigMapUpdate) as far as clients can tell."""
        meta = obj["metadata"]
        name = meta.get("name", "")
        causes: list[tuple[str, str, str]] = []
        if not _DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
            causes.append(
                (
                    "FieldValueInvalid",
                    "metadata.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                    "lower case alphanumeric characters, '-' or '.', and must start and end "
                    "with an alphanumeric character (e.g. 'example.com', regex used for "
                    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*"
                    "[a-z0-9])?)*')",
                )
            )
        annotations = meta.get("annotations") or {}
        ann_size = sum(len(k) + len(v) for k, v in annotations.items())
        if ann_size > MAX_ANNOTATIONS_BYTES:
            causes.append(
                (
                    "FieldValueTooLong",
                    "metadata.annotations",
                    f"Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes",
                )
            )
        data: dict[str, str] = obj.get("data") or {}
        binary: dict[str, bytes] = obj.get("_decoded") or {}
        total = 0
        for section, items in (("data", data), ("binaryData", binary)):
            for key, value in items.items():
                if not _CM_KEY.match(key) or len(key) > 253 or key in (".", ".."):
                    causes.append(
                        (
                            "FieldValueInvalid",
                            f"{section}[{key}]",
                            f'Invalid value: "{key}": a valid config key must consist of '
                            "alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
                            "'KEY_NAME',  or 'key-name', regex used for validation is "
                            "'[-._a-zA-Z0-9]+')",
                        )
                    )
                if section == "binaryData" and key in data:
                    causes.append(
                        (
                            "FieldValueInvalid",
                            f"binaryData[{key}]",
                            f'Invalid value: "{key}": duplicate of key present in data',
                        )
                    )
                total += len(key) + len(
                    value if isinstance(value, bytes) else value.encode("utf-8")
                )
        if total > self.max_object_bytes:
            causes.append(
                (
                    "FieldValueTooLong",
                    "[]",
                    f"Too long: must have at most {self.max_object_bytes} bytes",
                )
            )
        if old is not None and old.get("immutable"):
            if obj.get("data") != old.get("data") or obj.get("binaryData") != old.get("binaryData"):
                causes.append(
                    (
                        "FieldValueForbidden",
                        "data",
                        "Forbidden: field is immutable when `immutable` is set",
                    )
                )
            if not obj.get("immutable"):
                causes.append(
                    (
                        "FieldValueForbidden",
                        "immutable",
                        "Forbidden: field is immutable when `immutable` is set",
                    )
                )
        if causes:
            raise _invalid(name, causes)

    def _decode(self, body: Any, namespace: str) -> dict[str, Any]:
        """Check the shape of a ConfigMap body (as JSON decoding into core.ConfigMap would)."""
        if not isinstance(body, dict):
            raise _bad_request("the body of the request was in an unknown format")
        if body.get("apiVersion", "v1") != "v1" or body.get("kind", "ConfigMap") != "ConfigMap":
            raise _bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                "expected API version (v1)"
                if body.get("apiVersion", "v1") != "v1"
                else f"the kind in the data ({body.get('kind')}) does not match ConfigMap"
            )
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        if meta.get("namespace") not in (None, "", namespace):
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        obj: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap"}
        keep = {
            k: meta[k]
            for k in (
                "name",
                "generateName",
                "labels",
                "annotations",
                "ownerReferences",
                "finalizers",
                "resourceVersion",
                "uid",
            )
            if meta.get(k) not in (None, "", {}, [])
        }
        for mapping in ("labels", "annotations"):
            value = keep.get(mapping)
            if value is not None and (
                not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())
            ):
                raise _bad_request(f"metadata.{mapping} must be a map of strings")
        keep["namespace"] = namespace
        obj["metadata"] = keep
        data = body.get("data")
        if data:
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise _bad_request(
                    "json: cannot unmarshal into Go struct field ConfigMap.data of type string"
                )
            obj["data"] = dict(data)
        binary = body.get("binaryData")
        decoded: dict[str, bytes] = {}
        if binary:
            if not isinstance(binary, dict):
                raise _bad_request("binaryData must be a map")
            for key, value in binary.items():
                try:
                    if not isinstance(value, str):
                        raise TypeError
                    decoded[key] = base64.b64decode(value, validate=True)
                except (binascii.Error, TypeError) as exc:
                    raise _bad_request(
                        "json: cannot unmarshal binaryData: illegal base64 data"
                    ) from exc
            obj["binaryData"] = dict(binary)
        if body.get("immutable") is not None:
            obj["immutable"] = bool(body["immutable"])
        obj["_decoded"] = decoded
        return obj

    @staticmethod
    def _public(obj: dict[str, Any], *, in_list: bool = False) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}
        if in_list:  # list items carry no kind/apiVersion
            out.pop("kind", None)
            out.pop("apiVersion", None)
        return out

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, raw: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Process one request; returns (code, JSON body, extra headers)."""
        user = self._authenticate(headers.get("Authorization", ""))
        if self.rbac is not None:
            attributes = _authorizer_request(method, path, query)
            if attributes is not None and not self.rbac.allows(user, attributes):
                status = forbidden_status(user, attributes)
                raise _ApiError(403, "Forbidden", status["message"], status["details"])
        ns_match = _NS_PATH.match(path)
        if ns_match is not None:
            name = unquote(ns_match.group(1)) if ns_match.group(1) else None
            return self._handle_namespace(method, name, query, headers, raw)
        match = _CM_PATH.match(path)
        if match is None:
            if _ALL_CM_PATH.match(path) and method == "GET":
                return 200, self._list(None, query), {}
            raise _ApiError(404, "NotFound", "the server could not find the requested resource", {})
        namespace, name = unquote(match.group(1)), match.group(2)
        name = unquote(name) if name else None
        if not _DNS1123_LABEL.match(namespace):
            raise _not_found(name or namespace)
        dry_run = bool(query.get("dryRun"))
        if name is None:
            if method == "GET":
                if query.get("watch", ["false"])[0] in ("true", "1"):
                    raise _bad_request("watch is not supported by this test server")
                return 200, self._list(namespace, query), {}
            if method == "POST":
                return 201, self._create(namespace, self._json(raw), dry_run), {}
            raise _ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        if method == "GET":
            with self._lock:
                obj = self._objects.get((namespace, name))
                if obj is None:
                    raise _not_found(name)
                return 200, self._public(obj), {}
        if method == "PUT":
            return 200, self._replace(namespace, name, self._json(raw), dry_run), {}
        if method == "PATCH":
            ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
            return 200, self._patch(namespace, name, ctype, self._json(raw), dry_run), {}
        if method == "DELETE":
            options = self._json(raw) if raw.strip() else {}
            return 200, self._delete(namespace, name, options, dry_run), {}
        raise _ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    def _authenticate(self, authorization: str) -> User:
        """The user of a request's Authorization header; 401 for a token nobody issued."""
        if self.rbac is None:
            if self.token is not None and authorization != f"Bearer {self.token}":
                raise _ApiError(401, "Unauthorized", "Unauthorized")
            return ADMIN
        if not authorization:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        user = self.rbac.user_of(token) if scheme == "Bearer" else None
        if user is None:
            raise _ApiError(401, "Unauthorized", "Unauthorized")
        return user

    # ---- namespaces ----------------------------------------------------------------------------

    def _handle_namespace(
        self, method: str, name: str | None, query: dict[str, list[str]], headers: Any, raw: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        dry_run = bool(query.get("dryRun"))
        if name is None:
            if method == "GET":
                if query.get("watch", ["false"])[0] in ("true", "1"):
                    raise _bad_request("watch is not supported by this test server")
                return 200, self._ns_list(query), {}
            if method == "POST":
                return 201, self._ns_create(self._json(raw), dry_run), {}
            raise _ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        with self._lock:
            if method == "GET":
                return 200, self._public(self._ns_get(name)), {}
            if method == "PATCH":
                ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
                return 200, self._ns_patch(name, ctype, self._json(raw), dry_run), {}
            if method == "DELETE":
                self._ns_get(name)
                if name in UNDELETABLE_NAMESPACES:
                    raise _ApiError(
                        403,
                        "Forbidden",
                        f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                        {"name": name, "kind": "namespaces"},
                    )
                if dry_run:
                    return 200, self._public(self._namespaces[name]), {}
                return 200, self._terminate(name), {}
        raise _ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    def _ns_get(self, name: str) -> dict[str, Any]:
        obj = self._namespaces.get(name)
        if obj is None:
            raise _ApiError(
                404,
                "NotFound",
                f'namespaces "{name}" not found',
                {"name": name, "kind": "namespaces"},
            )
        return obj

    def _ns_list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        terms = _parse_label_selector(query.get("labelSelector", [""])[0])
        fields: dict[str, tuple[bool, str]] = {}
        for term in filter(None, query.get("fieldSelector", [""])[0].split(",")):
            negate = "!=" in term
            key, _, value = term.partition("!=" if negate else "=")
            key = key.rstrip("=")
            if key not in ("metadata.name", "status.phase"):
                raise _bad_request(
                    f'field label not supported: {key}'
                )
            fields[key] = (negate, value.lstrip("="))

        def wanted(obj: dict[str, Any]) -> bool:
            have = {"metadata.name": obj["metadata"]["name"],
                    "status.phase": obj["status"]["phase"]}
            return all((have[k] != v) if neg else (have[k] == v)
                       for k, (neg, v) in fields.items())

        with self._lock:
            items = [
                self._public(obj, in_list=True)
                for _, obj in sorted(self._namespaces.items())
                if wanted(obj) and _labels_match(obj["metadata"].get("labels") or {}, terms)
            ]
            return {
                "kind": "NamespaceList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    def _ns_create(self, body: Any, dry_run: bool) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("kind", "Namespace") != "Namespace":
            raise _bad_request("the body of the request was not a Namespace")
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
        if not _DNS1123_LABEL.match(name) or len(name) > 63:
            raise _ApiError(
                422,
                "Invalid",
                f'Namespace "{name}" is invalid: metadata.name: Invalid value: "{name}": a '
                "lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character",
                {
                    "name": name,
                    "kind": "Namespace",
                    "causes": [{"reason": "FieldValueInvalid", "field": "metadata.name",
                                "message": f'Invalid value: "{name}"'}],
                },
            )
        labels = meta.get("labels") or {}
        finalizers = meta.get("finalizers") or []
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise _bad_request("metadata.labels must be a map of strings")
        with self._lock:
            old = self._namespaces.get(name)
            if old is not None:
                terminating = old["status"]["phase"] == "Terminating"
                raise _ApiError(
                    409,
                    "AlreadyExists",
                    ("object is being deleted: " if terminating else "")
                    + f'namespaces "{name}" already exists',
                    {"name": name, "kind": "namespaces"},
                )
            if dry_run:
                return {"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": name, "labels": labels},
                        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
            return self.create_namespace(name, labels, list(finalizers))

    def _ns_patch(self, name: str, ctype: str, patch: Any, dry_run: bool) -> dict[str, Any]:
        """Labels, annotations and metadata.finalizers (the rest is the server's)."""
        old = self._ns_get(name)
        current = self._public(old)
        if ctype == "application/json-patch+json":
            merged = _json_patch(current, patch)
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(patch, dict):
                raise _bad_request("patch body must be a JSON object")
            merged = _merge_patch(current, patch)
        else:
            raise _ApiError(415, "UnsupportedMediaType",
                            f"the body of the request was in an unknown format ({ctype!r})")
        meta = merged.get("metadata") or {}
        if meta.get("name", name) != name:
            raise _bad_request("metadata.name cannot be changed by a patch")
        if dry_run:
            return merged
        obj = copy.deepcopy(old)
        for key in ("labels", "annotations", "finalizers"):
            if meta.get(key):
                obj["metadata"][key] = meta[key]
            else:
                obj["metadata"].pop(key, None)
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        if obj != old:
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._namespaces[name] = obj
        out = self._public(obj)
        self._finalize(name)
        return out

    def _terminate(self, name: str) -> dict[str, Any]:
        """Mark a namespace Terminating (caller holds the lock); the simulated namespace
        controller then removes it unless metadata.finalizers remain. Returns the object as
        a DELETE answers it: Terminating."""
        obj = self._namespaces[name]
        if obj["status"]["phase"] != "Terminating":
            obj["metadata"]["deletionTimestamp"] = _now()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            obj["status"]["phase"] = "Terminating"
            obj["metadata"]["resourceVersion"] = self._next_rv()
        out = self._public(obj)
        self._finalize(name)
        return out

    def _finalize(self, name: str) -> None:
        """The namespace controller: a Terminating namespace without metadata.finalizers is
        removed, with its ConfigMaps."""
        obj = self._namespaces.get(name)
        if obj is None or obj["status"]["phase"] != "Terminating":
            return
        if obj["metadata"].get("finalizers"):
            return
        for key in [k for k in self._objects if k[0] == name]:
            del self._objects[key]
        del self._namespaces[name]
        self._next_rv()

    @staticmethod
    def _json(raw: bytes) -> Any:
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise _bad_request(f"error decoding request body: {exc}") from exc

    def _list(self, namespace: str | None, query: dict[str, list[str]]) -> dict[str, Any]:
        terms = _parse_label_selector(query.get("labelSelector", [""])[0])
        fields = {}
        for term in filter(None, query.get("fieldSelector", [""])[0].split(",")):
            key, _, value = term.partition("=")
            key = key.rstrip("=")
            if key not in ("metadata.name", "metadata.namespace"):
                raise _bad_request(
                    f'"{key}" is not a known field selector: only '
                    '"metadata.name", "metadata.namespace"'
                )
            fields[key] = value.lstrip("=")
        with self._lock:
            items = []
            for (ns, nm), obj in sorted(self._objects.items()):
                if namespace is not None and ns != namespace:
                    continue
                if fields.get("metadata.name", nm) != nm:
                    continue
                if fields.get("metadata.namespace", ns) != ns:
                    continue
                if not _labels_match(obj["metadata"].get("labels") or {}, terms):
                    continue
                items.append(self._public(obj, in_list=True))
            return {
                "kind": "ConfigMapList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    def _create(self, namespace: str, body: Any, dry_run: bool) -> dict[str, Any]:
        obj = self._decode(body, namespace)
        meta = obj["metadata"]
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise _invalid(
                    "",
                    [
                        (
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
        name = meta["name"]
        if meta.pop("resourceVersion", None):
            raise _ApiError(
                500,
                "InternalError",
                "Internal error occurred: resourceVersion "
                "should not be set on objects to be created",
                {
                    "causes": [
                        {"message": "resourceVersion should not be set on objects to be created"}
                    ]
                },
            )
        meta.pop("uid", None)
        self._validate(obj, None)
        with self._lock:
            if (namespace, name) in self._objects:
                raise _ApiError(
                    409,
                    "AlreadyExists",
                    f'configmaps "{name}" already exists',
                    {"name": name, "kind": "configmaps"},
                )
            if dry_run:
                obj["metadata"]["uid"] = str(uuid.uuid4())
                obj["metadata"]["creationTimestamp"] = _now()
                return self._public(obj)
            self._stamp(obj, None)
            self._objects[(namespace, name)] = obj
            return self._public(obj)

    def _store_update(
        self, namespace: str, name: str, obj: dict[str, Any], old: dict[str, Any], dry_run: bool
    ) -> dict[str, Any]:
        """Preconditions, validation and storage for PUT/PATCH; caller holds the lock."""
        meta = obj["metadata"]
        want_rv = meta.pop("resourceVersion", None)
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            self._stats.conflicts += 1
            raise _conflict(name)
        want_uid = meta.pop("uid", None)
        if want_uid and want_uid != old["metadata"]["uid"]:
            raise _conflict(
                name,
                f"Precondition failed: UID in precondition: {want_uid}, UID "
                f"in object meta: {old['metadata']['uid']}",
            )
        self._validate(obj, old)
        same = all(obj.get(k) == old.get(k) for k in ("data", "binaryData", "immutable")) and all(
            meta.get(k) == old["metadata"].get(k)
            for k in ("labels", "annotations", "ownerReferences", "finalizers")
        )
        if same or dry_run:  # a no-op update is not written: resourceVersion stays
            return self._public(old)
        self._stamp(obj, old)
        self._objects[(namespace, name)] = obj
        return self._public(obj)

    def _replace(self, namespace: str, name: str, body: Any, dry_run: bool) -> dict[str, Any]:
        obj = self._decode(body, namespace)
        if obj["metadata"].get("name") != name:
            raise _bad_request(
                f"the name of the object ({obj['metadata'].get('name', '')}) does not match "
                f"the name on the URL ({name})"
            )
        with self._lock:
            old = self._objects.get((namespace, name))
            if old is None:
                raise _not_found(name)
            return self._store_update(namespace, name, obj, old, dry_run)

    def _patch(
        self, namespace: str, name: str, ctype: str, patch: Any, dry_run: bool
    ) -> dict[str, Any]:
        if ctype not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/json-patch+json",
        ):
            raise _ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted "
                f"media types include: application/json-patch+json, "
                f"application/merge-patch+json, "
                f"application/strategic-merge-patch+json (got {ctype!r})",
            )
        with self._lock:
            old = self._objects.get((namespace, name))
            if old is None:
                raise _not_found(name)
            current = self._public(old)
            if ctype == "application/json-patch+json":
                merged = _json_patch(current, patch)
                if (
                    merged.get("metadata", {}).get("resourceVersion")
                    == current["metadata"]["resourceVersion"]
                ):
                    merged["metadata"].pop("resourceVersion", None)  # unchanged: no precondition
            else:
                if not isinstance(patch, dict):
                    raise _bad_request("patch body must be a JSON object")
                current["metadata"].pop("resourceVersion")  # only a patched rv is a precondition
                merged = _merge_patch(current, patch)
            if merged.get("metadata", {}).get("name", name) != name:
                raise _bad_request("metadata.name cannot be changed by a patch")
            obj = self._decode(merged, namespace)
            obj["metadata"]["name"] = name
            return self._store_update(namespace, name, obj, old, dry_run)

    def _delete(self, namespace: str, name: str, options: Any, dry_run: bool) -> dict[str, Any]:
        pre = (options or {}).get("preconditions") or {}
        with self._lock:
            old = self._objects.get((namespace, name))
            if old is None:
                raise _not_found(name)
            meta = old["metadata"]
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise _conflict(
                    name,
                    f"Precondition failed: UID in precondition: {pre['uid']}, "
                    f"UID in object meta: {meta['uid']}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                self._stats.conflicts += 1
                raise _conflict(
                    name,
                    f"the ResourceVersion in the precondition ({pre['resourceVersion']}) does "
                    f"not match the ResourceVersion in record ({meta['resourceVersion']}). The "
                    "object might have been modified",
                )
            if not dry_run:
                del self._objects[(namespace, name)]
                self._next_rv()
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": "configmaps", "uid": meta["uid"]},
            }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    # TCP_NODELAY, as Go's net/http (the real apiserver) does: headers and body go out in two
    # writes, and with Nagle + delayed ACK every answer would stall ~40 ms on keep-alive
    disable_nagle_algorithm = True
    server_version = "kube-apiserver-test"
    api: KubeApiServer  # set on the bound subclass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any], headers: dict[str, str],
              fault: _Fault | None = None) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        if fault is not None and fault.trickle is not None:
            self._trickle(code, payload, headers, fault)
            return
        try:
            self._start_answer(code, payload, headers)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout)
            self.close_connection = True

    def _start_answer(self, code: int, payload: bytes, headers: dict[str, str]) -> None:
        """The status line and the headers of a JSON answer of `payload`."""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)

    def _trickle(self, code: int, payload: bytes, headers: dict[str, str], fault: _Fault) -> None:
        """The answer as a slow proxy sends it: headers at once, then the body byte by byte,
        `fault.trickle` seconds apart; the last byte waits for `fault.hold` too."""
        api = self.api
        with api._lock:
            api.trickling += 1
        outcome = "cut"
        try:
            self._start_answer(code, payload, headers)
            self.end_headers()
            self.wfile.flush()
            for i in range(len(payload)):
                if api._stopping.wait(fault.trickle):
                    break
                if i == len(payload) - 1 and not self._held_until_released(fault):
                    break
                self.wfile.write(payload[i:i + 1])
                self.wfile.flush()
            else:
                outcome = "sent"
        except OSError:  # the client gave up (a broken pipe, a reset)
            pass
        finally:
            if outcome != "sent":
                self.close_connection = True
            with api._lock:
                api.trickling -= 1
                api.trickled.append(outcome)

    def _held_until_released(self, fault: _Fault) -> bool:
        """Wait for `fault.hold` (if any); False when the server stops first."""
        while fault.hold is not None and not fault.hold.is_set():
            if self.api._stopping.wait(fault.trickle):
                return False
        return True

    def _serve(self) -> None:
        api = self.api
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        method = self.command
        length = int(self.headers.get("Content-Length") or 0)
        if length > api.max_request_bytes:
            self.close_connection = True
            err = _ApiError(
                413,
                "RequestEntityTooLarge",
                f"request entity too large: limit is {api.max_request_bytes}",
            )
            api._record(method, path, err.code)
            self._send(err.code, err.status(), {})
            return
        raw = self.rfile.read(length) if length else b""
        if api._latency:
            time.sleep(api._latency)
        resource, name = _target(path)
        if resource and name is None and method == "POST":  # a create names its object in the body
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                name = json.loads(raw).get("metadata", {}).get("name")
        fault = api._take_fault(method, name, resource)
        trickle = fault if fault is not None and fault.trickle is not None else None
        if fault is not None:
            if fault.hang:
                if api._stopping.wait(fault.hang):
                    self.close_connection = True
                    return
            if fault.status is not None:
                reason = _FAULT_REASONS[fault.status]
                verb = "list" if method == "GET" and name is None else _VERBS.get(method, "")
                message = {
                    503: "the server is currently unable to handle the request",
                    429: "the server has received too many requests and has asked us to try "
                    "again later",
                    504: "the server was unable to return a response in the time allotted",
                    403: f'{resource or "the resource"} is forbidden: User '
                    f'"system:serviceaccount:test:test" cannot {verb} resource '
                    f'"{resource or ""}" in API group ""'
                    + (" at the cluster scope" if resource == "namespaces" else ""),
                }.get(fault.status, f"Internal error occurred: injected fault {fault.status}")
                err = _ApiError(
                    fault.status,
                    reason,
                    message,
                    {"retryAfterSeconds": 1} if fault.status == 429 else None,
                    {"Retry-After": "1"} if fault.status == 429 else None,
                )
                api._record(method, path, err.code)
                self._send(err.code, err.status(), err.headers)
                return
        with api._lock:
            hooks = list(api._hooks)
        for hook in hooks:
            hook(method, path, name)
        try:
            code, body, headers = api.handle(method, path, query, self.headers, raw)
        except _ApiError as err:
            code, body, headers = err.code, err.status(), err.headers
        except Exception as exc:  # a bug in the test server must still answer like an apiserver
            err = _ApiError(500, "InternalError", f"Internal error occurred: {exc!r}")
            code, body, headers = err.code, err.status(), {}
        api._record(method, path, code, dry_run=bool(query.get("dryRun")))
        self._send(code, body, headers, trickle)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


__all__ = ["KubeApiServer", "MAX_CONFIGMAP_BYTES", "SYSTEM_NAMESPACES"]
