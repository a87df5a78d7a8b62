"""What a request path means, as kube-apiserver's RequestInfoFactory reads it
(k8s.io/apiserver/pkg/endpoints/request/requestinfo.go): the API group and version, the
namespace, resource, object name and subresource, and the verb RBAC authorizes. Paths outside
/api and /apis (discovery documents aside) are non-resource requests."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


@dataclass(frozen=True)
class RequestInfo:
    is_resource: bool
    path: str
    verb: str
    api_prefix: str = ""  # api or apis
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    name: str = ""
    subresource: str = ""
    parts: tuple[str, ...] = ()  # the path's segments after the version

    @property
    def collection(self) -> bool:
        return self.is_resource and not self.name


def _query_flag(query: dict[str, list[str]], key: str) -> bool:
    return query.get(key, ["false"])[0].lower() in ("true", "1")


def request_info(method: str, path: str, query: dict[str, list[str]]) -> RequestInfo:
    segments = [unquote(p) for p in path.strip("/").split("/") if p]
    lower_verb = method.lower()
    if not segments or segments[0] not in ("api", "apis"):
        return RequestInfo(False, path, lower_verb)
    prefix, rest = segments[0], segments[1:]
    if prefix == "api":
        if not rest:
            return RequestInfo(False, path, lower_verb)
        group, version, rest = "", rest[0], rest[1:]
    else:
        if len(rest) < 2:  # /apis and /apis/<group>: discovery
            return RequestInfo(False, path, lower_verb)
        group, version, rest = rest[0], rest[1], rest[2:]
    if not rest:  # /api/v1, /apis/<group>/<version>: discovery
        return RequestInfo(False, path, lower_verb)
    verb = _METHOD_VERBS.get(method, lower_verb)
    if method == "GET":
        verb = "get"
    elif method == "DELETE":
        verb = "delete"
    watch_prefix = rest[0] == "watch"
    if watch_prefix:
        verb, rest = "watch", rest[1:]
    namespace = ""
    if rest and rest[0] == "namespaces":
        if len(rest) > 1:
            namespace = rest[1]
            if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
                rest = rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if not name:
        if verb == "get":
            verb = "watch" if _query_flag(query, "watch") else "list"
        elif verb == "delete":
            verb = "deletecollection"
        if verb in ("list", "watch"):
            for term in query.get("fieldSelector", [""])[0].split(","):
                key, _, value = term.partition("=")
                if key.strip() == "metadata.name":
                    name = value.lstrip("=")
    elif watch_prefix:
        verb = "watch"
    return RequestInfo(True, path, verb, prefix, group, version, namespace, resource, name,
                       subresource, tuple(rest))
