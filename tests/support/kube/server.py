"""The test apiserver: `KubeApiServer`, an apiserver-compatible HTTP server on 127.0.0.1 in a
background thread (the package docstring says what it serves and how to use it)."""

from __future__ import annotations

import contextlib
import copy
import json
import ssl
import threading
from collections.abc import Callable, Iterable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from tests.support.kube import protobuf
from tests.support.kube.builtin import BUILTIN_KINDS
from tests.support.kube.configmaps import (
    CONFIGMAP_FIELDS,
    DNS1123_LABEL,
    MAX_CONFIGMAP_BYTES,
    ConfigMaps,
    configmap_fields,
)
from tests.support.kube.core import DEFAULT_HISTORY_LIMIT, Stats, StoreCore, WatchAnswer
from tests.support.kube.crd import CustomResourceDefinition, deploy_crds
from tests.support.kube.custom import CustomResources
from tests.support.kube.discovery import TABLE_CONTENT_TYPE, Discovery
from tests.support.kube.errors import ApiError, method_not_allowed, not_found, not_found_path
from tests.support.kube.faults import FAULT_REASONS, Fault
from tests.support.kube.http import Handler
from tests.support.kube.namespaces import NAMESPACE_FIELDS, SYSTEM_NAMESPACES, namespace_fields
from tests.support.kube.routing import RequestInfo, request_info
from tests.support.kube.selectors import parse_field_selector, parse_label_selector
from tests.support.kube.watch import Watcher
from tests.support.rbac import (
    ADMIN,
    ANONYMOUS,
    PathRequest,
    RbacPolicy,
    Request,
    User,
    forbidden_status,
)

MAX_REQUEST_BYTES = 3 * 1024 * 1024  # apiserver's default request body limit
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
Answer = tuple[int, Any, dict[str, str]]


class _TlsServer(ThreadingHTTPServer):
    """TLS on each accepted connection, its handshake in the connection's own thread."""

    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that does not trust the certificate, or went away
        super().finish_request(tls, client_address)


class KubeApiServer(Discovery, CustomResources, ConfigMaps):
    """ConfigMaps, Namespaces and the custom resources of deploy/crds/ (or `crds`)."""

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
        crds: Iterable[CustomResourceDefinition] | None = None,
        history_limit: int | None = DEFAULT_HISTORY_LIMIT,
        garbage_collection: bool = True,
        tls: bool = False,
    ) -> None:
        StoreCore.__init__(self, history_limit)
        self._host = host
        self._want_port = port
        self.rbac = rbac  # when set, requests are authorized by its RBAC rules
        if rbac is not None and token is None:
            token = rbac.admin_token()
        self.token = token  # when set, requests need "Authorization: Bearer <token>"
        self.max_object_bytes = max_object_bytes
        self.max_request_bytes = max_request_bytes
        self.keep_log = keep_log
        self.garbage_collection = garbage_collection
        # HTTPS with a certificate of the test process's CA (support/tls.py), as every real
        # apiserver serves: kubectl sends no credentials (token) to a plain-http server
        self.tls = tls
        self.ca_file: Path | None = None
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._namespaces: dict[str, dict[str, Any]] = {}
        self._init_custom([*(deploy_crds() if crds is None else crds), *BUILTIN_KINDS])
        self._faults: list[Fault] = []
        self._hooks: list[Callable[[str, str, str | None], None]] = []
        self._latency = 0.0
        self.trickling = 0  # answers being trickled now
        self.trickled: list[str] = []  # how each trickled answer ended: "sent" or "cut"
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for ns in namespaces:
            self.create_namespace(ns)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KubeApiServer:
        if self._httpd is not None:
            return self
        handler = type("_BoundHandler", (Handler,), {"api": self})
        self._stopping.clear()
        server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
        if self.tls:
            from tests.support.tls import process_ca

            authority = process_ca()
            issued = authority.issue()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(issued.cert_file, issued.key_file)
            self.ca_file = authority.path
            server_class = type("_TlsServer", (_TlsServer,), {"context": context})
        httpd = server_class((self._host, self._want_port), handler)
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
        with self._lock:
            self._changed.notify_all()  # and open watches
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
        return f"{'https' if self.tls else 'http'}://{self._host}:{self.port}"

    # ---- client helpers ----------------------------------------------------------------------

    def api_client(self, **configuration: Any) -> Any:
        """A kubernetes.client.ApiClient for this server; extra kwargs set Configuration fields."""
        from kubernetes import client

        config = client.Configuration(host=self.url)
        if self.ca_file is not None:
            config.ssl_ca_cert = str(self.ca_file)
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
            "clusters": [{"name": context, "cluster": {
                "server": self.url,
                **({"certificate-authority": str(self.ca_file)} if self.ca_file else {})}}],
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
        for a create the body's) / that resource ("configmaps", "namespaces" or a custom
        resource's plural, "leases").
        """
        known = {"configmaps", "namespaces", *(c.plural for c in self.crds)}
        if resource is not None and resource not in known:
            raise ValueError(f"unknown resource {resource!r}")
        if status is None and hang is None and trickle is None:
            raise ValueError("give a status, a hang and/or a trickle")
        if trickle is not None and status is not None:
            raise ValueError("a trickle sends the normal answer: give no status")
        if status is not None and status not in FAULT_REASONS:
            raise ValueError(f"unsupported fault status {status}")
        meths = frozenset(m.upper() for m in methods) if methods else None
        with self._lock:
            self._faults.append(Fault(status, hang, count, meths, name, resource,
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
            self._stats = Stats()

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
            self._emit("", "configmaps", obj, old)
            return copy.deepcopy(obj)

    def clear(self) -> None:
        """Remove every ConfigMap (namespaces stay)."""
        with self._lock:
            for key in sorted(self._objects):
                old = self._objects.pop(key)
                self._next_rv()
                self._emit("", "configmaps", None, old)


    def _take_fault(
        self, method: str, name: str | None, resource: str | None = None
    ) -> Fault | None:
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
            if method in WRITE_METHODS and 200 <= code < 300 and not dry_run:
                self._stats.writes += 1
            if self.keep_log:
                self._stats.log.append((method, path, code))

    # ---- dispatch ------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, raw: bytes
    ) -> tuple[int, Any, dict[str, str]] | WatchAnswer:
        """Process one request; returns (code, JSON body, extra headers), or a WatchAnswer
        for the handler to stream."""
        user = self._authenticate(headers.get("Authorization", ""))
        info = request_info(method, path, query)
        if self.rbac is not None:
            attributes: Request | PathRequest
            if info.is_resource:
                attributes = Request(info.verb, info.resource, info.namespace,
                                     "" if info.verb == "create" else info.name, info.group,
                                     info.subresource)
            else:
                attributes = PathRequest(info.verb, path)
            if not self.rbac.allows(user, attributes):
                status = forbidden_status(user, attributes)
                raise ApiError(403, "Forbidden", status["message"], status["details"])
        if not info.is_resource:
            return self._non_resource(method, path, query, headers)
        if (headers.get("Content-Type") or "").split(";")[0].strip() == protobuf.CONTENT_TYPE \
                and method in ("POST", "PUT"):
            raw = json.dumps(protobuf.decode(raw)).encode()
        render = self._renderer(headers)
        if info.api_prefix == "api" and info.version == "v1":
            if info.resource == "namespaces" and not info.subresource:
                if info.verb == "watch":
                    return self._core_watch(info, query, "namespaces", "Namespace")
                if len(info.parts) > 2:
                    raise not_found_path()
                name = info.parts[1] if len(info.parts) > 1 else None
                return self._handle_namespace(method, name, query, headers, raw)
            if info.resource == "configmaps" and not info.subresource:
                return self._handle_configmap(info, method, query, headers, raw)
        crd = self._crd_at(info.group, info.version, info.resource)
        if crd is None or (info.api_prefix == "apis") != bool(crd.group):
            raise not_found_path()
        answer = self._handle_custom(crd, info, method, query, headers, raw, render)
        if render is not None:
            if isinstance(answer, WatchAnswer):
                answer.content_type = TABLE_CONTENT_TYPE
            elif answer[1].get("kind") == "Table":
                answer = answer[0], answer[1], {**answer[2], "Content-Type": TABLE_CONTENT_TYPE}
        return answer

    def _core_watch(self, info: RequestInfo, query: dict[str, list[str]], resource: str,
                    kind: str) -> WatchAnswer:
        if resource == "namespaces":
            watcher = Watcher("", "namespaces", None,
                              parse_label_selector(query.get("labelSelector", [""])[0]),
                              parse_field_selector(query.get("fieldSelector", [""])[0],
                                                   NAMESPACE_FIELDS), namespace_fields)
            return self._watch(watcher, query, self._namespaces_now, "v1", kind)
        watcher = Watcher("", "configmaps", info.namespace or None,
                          parse_label_selector(query.get("labelSelector", [""])[0]),
                          parse_field_selector(query.get("fieldSelector", [""])[0],
                                               CONFIGMAP_FIELDS), configmap_fields)
        return self._watch(watcher, query, self._configmaps_now, "v1", kind)

    def _handle_configmap(self, info: RequestInfo, method: str, query: dict[str, list[str]],
                          headers: Any, raw: bytes) -> tuple[int, Any, dict[str, str]] | \
            WatchAnswer:
        namespace = info.namespace
        if info.verb == "watch":
            return self._core_watch(info, query, "configmaps", "ConfigMap")
        if not namespace:
            if method == "GET" and not info.parts[1:]:
                return 200, self._list(None, query), {}
            raise not_found_path()
        name = info.parts[1] if len(info.parts) > 1 else None
        if len(info.parts) > 2:
            raise not_found_path()
        if not DNS1123_LABEL.match(namespace):
            raise not_found(name or namespace)
        dry_run = bool(query.get("dryRun"))
        if name is None:
            if method == "GET":
                return 200, self._list(namespace, query), {}
            if method == "POST":
                return 201, self._create(namespace, self._json(raw), dry_run), {}
            raise method_not_allowed()
        if method == "GET":
            with self._lock:
                obj = self._objects.get((namespace, name))
                if obj is None:
                    raise not_found(name)
                return 200, self._public(obj), {}
        if method == "PUT":
            return 200, self._replace(namespace, name, self._json(raw), dry_run), {}
        if method == "PATCH":
            ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
            return 200, self._patch(namespace, name, ctype, self._json(raw), dry_run), {}
        if method == "DELETE":
            options = self._json(raw) if raw.strip() else {}
            return 200, self._delete(namespace, name, options, dry_run), {}
        raise method_not_allowed()

    def _authenticate(self, authorization: str) -> User:
        """The user of a request's Authorization header; 401 for a token nobody issued."""
        if self.rbac is None:
            if self.token is not None and authorization != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            return ADMIN
        if not authorization:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        user = self.rbac.user_of(token) if scheme == "Bearer" else None
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return user

    def target(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> \
            tuple[str | None, str | None]:
        """(resource, object name) a request is about, for faults and hooks: the URL's name,
        or for a create the body's."""
        info = request_info(method, path, query)
        if not info.is_resource:
            return None, None
        name = info.parts[1] if len(info.parts) > 1 else None
        if name is None and method == "POST":
            with contextlib.suppress(ValueError, AttributeError, TypeError, RecursionError):
                name = json.loads(raw).get("metadata", {}).get("name")
        return info.resource or None, unquote(name) if name else None


__all__ = ["KubeApiServer", "MAX_CONFIGMAP_BYTES", "SYSTEM_NAMESPACES"]
