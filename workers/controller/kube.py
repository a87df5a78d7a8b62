"""The controller's own Kubernetes client, on aiohttp: reads and writes Leases, Pools and
Networks of `vspherecapacitymanager.splat.io/v1` from the event loop (kopf watches; this
writes). Where the API is comes from the one place the rest of the project reads it
(`adapters.kube_config`: the pod's service account, else the kubeconfig), and kopf logs in
with the same (`login`).

Writes are JSON merge patches (`application/merge-patch+json`): a list in one replaces the
list, a null removes the key. A Lease's status goes to its `status` subresource, its
metadata and spec to the object."""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from ..adapters.kube_config import kube_configuration
from ..core.upstream import GROUP

VERSION = "v1"
MERGE_PATCH = "application/merge-patch+json"
PLURALS = {"Lease": "leases", "Pool": "pools", "Network": "networks"}


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate to it."""

    server: str
    token: str | None = None
    ca_path: str | None = None
    certificate_path: str | None = None
    private_key_path: str | None = None
    insecure: bool = False

    @classmethod
    def load(cls) -> Connection:
        """From the service account in a cluster, else the kubeconfig (NoKubeConfig)."""
        cfg = kube_configuration()
        header = (cfg.get_api_key_with_prefix("BearerToken")
                  or cfg.get_api_key_with_prefix("authorization") or "")
        scheme, _, token = header.partition(" ")
        return cls(server=cfg.host.rstrip("/"), token=(token or scheme) or None,
                   ca_path=cfg.ssl_ca_cert or None, certificate_path=cfg.cert_file or None,
                   private_key_path=cfg.key_file or None, insecure=not cfg.verify_ssl)

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.ca_path)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.certificate_path:
            ctx.load_cert_chain(self.certificate_path, self.private_key_path)
        return ctx


class KubeError(Exception):
    """An answer of the API server other than success: its HTTP status and Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def transient(self) -> bool:
        """The apiserver (or what is in front of it) could not answer now: worth the same
        request again later."""
        return self.status >= 500 or self.status == 429


def path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    """The API path of a kind's collection in a namespace, or of one object (and its
    subresource)."""
    out = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{PLURALS[kind]}"
    if name is not None:
        out += "/" + quote(name, safe="")
    if sub is not None:
        out += "/" + sub
    return out


class KubeApi:
    """A few verbs on our kinds, over one kept-alive connection pool."""

    def __init__(self, connection: Connection, timeout: float = 30.0) -> None:
        self.connection = connection
        self.timeout = timeout
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        headers = {"Accept": "application/json", "User-Agent": "vcm-controller"}
        if self.connection.token:
            headers["Authorization"] = f"Bearer {self.connection.token}"
        connector = aiohttp.TCPConnector(ssl=self.connection.ssl_context(), limit=64)
        self.session = aiohttp.ClientSession(
            base_url=self.connection.server, headers=headers, connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def request(self, method: str, url: str, body: Any = None,
                      content_type: str = "application/json",
                      params: dict[str, str] | None = None) -> dict[str, Any]:
        """One request; its JSON answer, or KubeError (aiohttp's errors and timeouts pass)."""
        if self.session is None:
            raise RuntimeError("KubeApi.start() first")
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        headers = {"Content-Type": content_type} if data is not None else None
        async with self.session.request(method, url, data=data, headers=headers,
                                        params=params) as resp:
            raw = await resp.read()
            try:
                answer = json.loads(raw) if raw else {}
            except ValueError:
                answer = {}
            if resp.status >= 400:
                if not isinstance(answer, dict):
                    answer = {}
                raise KubeError(resp.status, str(answer.get("reason") or resp.reason),
                                str(answer.get("message") or raw[:200].decode("utf-8",
                                                                              "replace")))
            return answer if isinstance(answer, dict) else {}

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return await self.request("GET", path(kind, namespace, name))

    async def list(self, kind: str, namespace: str,
                   selector: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind in a namespace, page by page."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            params = {"limit": "500"}
            if selector:
                params["labelSelector"] = selector
            if token:
                params["continue"] = token
            answer = await self.request("GET", path(kind, namespace), params=params)
            items.extend(x for x in answer.get("items") or [] if isinstance(x, dict))
            token = str((answer.get("metadata") or {}).get("continue") or "")
            if not token:
                return items

    async def create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path(kind, namespace), body)

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any],
                    status: bool = False) -> dict[str, Any]:
        """A merge patch of the object, or (`status`) sent to its status subresource, which
        takes the patch's `status` alone."""
        url = path(kind, namespace, name, "status" if status else None)
        return await self.request("PATCH", url, patch, MERGE_PATCH)

    async def delete(self, kind: str, namespace: str, name: str,
                     uid: str | None = None) -> None:
        """Delete one object; with `uid`, only that one (not one made since with its name)."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", path(kind, namespace, name), body)
        except KubeError as exc:
            if not exc.not_found:
                raise


TRANSIENT = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
