"""Kubernetes RBAC for the test apiserver (support/kube_apiserver.py): who a bearer token is,
and whether the Roles, ClusterRoles and their bindings of a set of manifests (deploy/rbac.yaml)
allow a request, evaluated as the apiserver's RBAC authorizer does.

- A rule allows a request when its verbs, apiGroups and resources name the request's (or
  `*`), and its resourceNames are empty or name the object. A create or a list names no
  object (the name is not known to the authorizer then), so a rule with resourceNames never
  allows them. A subresource is named `<resource>/<subresource>` (`leases/status`), or
  `*/<subresource>`; `*` names every resource and subresource.
- A non-resource request (discovery: /api, /apis, /openapi/v2, /openapi/v3, /version) is
  allowed by a rule's nonResourceURLs (exact, or a prefix ending in `*`); as in every
  cluster, ClusterRole `system:discovery` (those paths, verb get) is bound to group
  `system:authenticated`, and `system:public-info-viewer` (/healthz, /livez, /readyz,
  /version) to `system:unauthenticated` too.
- A RoleBinding grants its Role's (or ClusterRole's) rules in its own namespace only; a
  ClusterRoleBinding grants a ClusterRole's rules in every namespace and at the cluster scope.
- A subject is a ServiceAccount (user `system:serviceaccount:<namespace>:<name>`), a User or
  a Group. A service account's token also puts it in the groups `system:serviceaccounts`,
  `system:serviceaccounts:<namespace>` and `system:authenticated`.
- As in every cluster, the group `system:masters` is bound to ClusterRole `cluster-admin`
  (everything): the test's own admin token is in it. A request without a token is
  `system:anonymous` (group `system:unauthenticated`), which nothing here grants anything.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.yaml_files import yaml_documents

ANONYMOUS_NAME = "system:anonymous"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()


ANONYMOUS = User(ANONYMOUS_NAME, ("system:unauthenticated",))
ADMIN = User("kubernetes-admin", ("system:masters", "system:authenticated"))
_CLUSTER_ADMIN = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                  {"nonResourceURLs": ["*"], "verbs": ["*"]}]
_DISCOVERY = [{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                                   "/openapi", "/openapi/*", "/readyz", "/version",
                                   "/version/"], "verbs": ["get"]}]
_PUBLIC_INFO = [{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version",
                                     "/version/"], "verbs": ["get"]}]


@dataclass(frozen=True)
class Request:
    """The authorizer's attributes of a resource request (core API group only here)."""

    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    resource: str  # configmaps, namespaces
    namespace: str  # "" at the cluster scope
    name: str  # "" for create, list, watch and deletecollection
    api_group: str = ""
    subresource: str = ""  # status, scale, ...


@dataclass(frozen=True)
class PathRequest:
    """The authorizer's attributes of a non-resource request."""

    verb: str  # get, post, put, patch, delete (the HTTP method, lower case)
    path: str


def _names(values: Any) -> list[str]:
    return [str(v) for v in values or []]


def _resource_matches(resources: list[str], req: Request) -> bool:
    combined = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
    return any(r in ("*", combined) or (req.subresource and r == f"*/{req.subresource}")
               for r in resources)


def _rule_allows(rule: dict[str, Any], req: Request | PathRequest) -> bool:
    verbs = _names(rule.get("verbs"))
    if not (req.verb in verbs or "*" in verbs):
        return False
    if isinstance(req, PathRequest):
        return any(url == req.path or url == "*"
                   or (url.endswith("*") and req.path.startswith(url[:-1]))
                   for url in _names(rule.get("nonResourceURLs")))
    groups = _names(rule.get("apiGroups"))
    names = _names(rule.get("resourceNames"))
    return ((req.api_group in groups or "*" in groups)
            and _resource_matches(_names(rule.get("resources")), req)
            and (not names or req.name in names))


class RbacPolicy:
    """The RBAC objects of some manifests, and the service-account tokens issued for them."""

    def __init__(self, docs: Iterable[dict[str, Any]]) -> None:
        self.roles: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.cluster_roles: dict[str, list[dict[str, Any]]] = {
            "cluster-admin": _CLUSTER_ADMIN, "system:discovery": _DISCOVERY,
            "system:public-info-viewer": _PUBLIC_INFO}
        self.bindings: list[tuple[str | None, dict[str, Any], list[dict[str, Any]]]] = [
            (None, {"kind": "ClusterRole", "name": "cluster-admin"},
             [{"kind": "Group", "name": "system:masters"}]),
            (None, {"kind": "ClusterRole", "name": "system:discovery"},
             [{"kind": "Group", "name": "system:authenticated"}]),
            (None, {"kind": "ClusterRole", "name": "system:public-info-viewer"},
             [{"kind": "Group", "name": "system:authenticated"},
              {"kind": "Group", "name": "system:unauthenticated"}])]
        self.service_accounts: set[tuple[str, str]] = set()
        self._tokens: dict[str, User] = {}
        for doc in docs:
            if not doc:
                continue
            kind, meta = doc.get("kind"), doc.get("metadata", {})
            namespace = meta.get("namespace", "default")
            if kind == "ServiceAccount":
                self.service_accounts.add((namespace, meta["name"]))
            elif kind == "Role":
                self.roles[(namespace, meta["name"])] = list(doc.get("rules") or [])
            elif kind == "ClusterRole":
                self.cluster_roles[meta["name"]] = list(doc.get("rules") or [])
            elif kind == "RoleBinding":
                self.bindings.append((namespace, doc["roleRef"], list(doc.get("subjects") or [])))
            elif kind == "ClusterRoleBinding":
                self.bindings.append((None, doc["roleRef"], list(doc.get("subjects") or [])))

    @classmethod
    def from_files(cls, *paths: str | Path) -> RbacPolicy:
        docs: list[dict[str, Any]] = []
        for path in paths:
            docs.extend(d for d in yaml_documents(path) if d)
        return cls(docs)

    # -- authentication ------------------------------------------------------------------------
    def token_for(self, namespace: str, name: str) -> str:
        """A token of service account `namespace/name` (it must be in the manifests)."""
        if (namespace, name) not in self.service_accounts:
            raise KeyError(f"no ServiceAccount {namespace}/{name} in the manifests")
        token = secrets.token_urlsafe(24)
        self._tokens[token] = User(f"system:serviceaccount:{namespace}:{name}", (
            "system:serviceaccounts", f"system:serviceaccounts:{namespace}",
            "system:authenticated"))
        return token

    def token_for_user(self, name: str, groups: tuple[str, ...] = ()) -> str:
        """A token of a person (User `name`, in `groups` and system:authenticated), as an
        identity provider would vouch for."""
        token = secrets.token_urlsafe(24)
        self._tokens[token] = User(name, (*groups, "system:authenticated"))
        return token

    def admin_token(self) -> str:
        token = secrets.token_urlsafe(24)
        self._tokens[token] = ADMIN
        return token

    def user_of(self, token: str) -> User | None:
        return self._tokens.get(token)

    # -- authorization -------------------------------------------------------------------------
    def allows(self, user: User, req: Request | PathRequest) -> bool:
        for namespace, ref, subjects in self.bindings:
            if namespace is not None and (isinstance(req, PathRequest)
                                          or namespace != req.namespace):
                continue  # a RoleBinding grants in its own namespace only
            if not any(_subject_is(s, user, namespace) for s in subjects):
                continue
            if ref.get("kind") == "Role":
                if namespace is None:
                    continue  # a ClusterRoleBinding cannot refer to a Role
                rules = self.roles.get((namespace, ref["name"]), [])
            else:
                rules = self.cluster_roles.get(ref["name"], [])
            if any(_rule_allows(rule, req) for rule in rules):
                return True
        return False


def _subject_is(subject: dict[str, Any], user: User, binding_namespace: str | None) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.name == f"system:serviceaccount:{namespace}:{name}"
    if kind == "User":
        return user.name == name
    if kind == "Group":
        return name in user.groups
    return False


def forbidden_status(user: User, req: Request | PathRequest) -> dict[str, Any]:
    """The apiserver's answer to a request RBAC does not allow: a v1 Status, 403 Forbidden.

    Its shape is the Status of the Kubernetes API reference
    (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/): kind
    Status, apiVersion v1, metadata {}, status Failure, reason Forbidden (StatusReasonForbidden,
    whose details carry the resource as `kind` and the object's `name`), code 403. The message
    is the one kube-apiserver writes (k8s.io/apimachinery api/errors.NewForbidden around the
    authorizer's reason from k8s.io/apiserver endpoints/handlers/responsewriters):
    `configmaps "x" is forbidden: User "u" cannot get resource "configmaps" in API group ""
    in the namespace "ns"`; without a name `configmaps is forbidden: ...`; a cluster-scoped
    request says `at the cluster scope` instead of the namespace; a subresource is named
    `leases/status`; a non-resource request is `forbidden: User "u" cannot get path "/apis"`."""
    if isinstance(req, PathRequest):
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": f"forbidden: User {_quoted(user.name)} cannot {req.verb} path "
                           f"{_quoted(req.path)}", "reason": "Forbidden", "details": {},
                "code": 403}
    qualified = req.resource + (f".{req.api_group}" if req.api_group else "")
    where = (f"in the namespace {_quoted(req.namespace)}" if req.namespace
             else "at the cluster scope")
    resource = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
    why = (f"User {_quoted(user.name)} cannot {req.verb} resource {_quoted(resource)} "
           f"in API group {_quoted(req.api_group)} {where}")
    what = f"{qualified} {_quoted(req.name)}" if req.name else qualified
    details: dict[str, Any] = {}  # StatusDetails' fields in their order, empty ones left out
    if req.name:
        details["name"] = req.name
    if req.api_group:
        details["group"] = req.api_group
    details["kind"] = req.resource
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"{what} is forbidden: {why}", "reason": "Forbidden",
            "details": details, "code": 403}


def _quoted(text: str) -> str:
    """Go's %q of a plain name."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- what deploy/ gives each process -------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# the process a test starts -> the Deployment of deploy/ that runs it
DEPLOYMENTS = {"placement": "vcm-placement", "queries": "vcm-queries", "beat": "vcm-beat",
               "api": "vcm-api", "flower": "vcm-flower"}


def deploy_docs() -> list[dict[str, Any]]:
    """Every object of the kustomize base (deploy/*.yaml)."""
    docs: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml_documents(path) if d)
    return docs


def deploy_rbac(*extra: dict[str, Any]) -> RbacPolicy:
    """The RBAC objects of every manifest of deploy/ (and `extra` ones, e.g. a RoleBinding a
    site would add)."""
    return RbacPolicy([*deploy_docs(), *extra])


def service_account_of(process: str) -> tuple[str, str] | None:
    """(namespace, name) of the service account whose token deploy/ mounts in the pod of
    `process` (a key of DEPLOYMENTS); None when no token is mounted."""
    docs = deploy_docs()
    (deployment,) = [d for d in docs if d.get("kind") == "Deployment"
                     and d["metadata"]["name"] == DEPLOYMENTS[process]]
    namespace = deployment["metadata"].get("namespace", "default")
    spec = deployment["spec"]["template"]["spec"]
    name = spec.get("serviceAccountName") or "default"
    account = next((d for d in docs if d.get("kind") == "ServiceAccount"
                    and d["metadata"]["name"] == name
                    and d["metadata"].get("namespace", "default") == namespace), {})
    mounted = spec.get("automountServiceAccountToken",
                       account.get("automountServiceAccountToken", True))
    return (namespace, name) if mounted else None


def mirror_configmap() -> tuple[str, str]:
    """(namespace, name) of the ledger mirror ConfigMap as deploy/ sets VCM_CONFIGMAP for the
    placement worker (`$(POD_NAMESPACE)/…`, the pod's namespace)."""
    (deployment,) = [d for d in deploy_docs() if d.get("kind") == "Deployment"
                     and d["metadata"]["name"] == DEPLOYMENTS["placement"]]
    namespace = deployment["metadata"].get("namespace", "default")
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for var in container.get("env", []):
            if var["name"] == "VCM_CONFIGMAP":
                ns, _, name = var["value"].replace("$(POD_NAMESPACE)", namespace).partition("/")
                return ns, name
    raise AssertionError("deploy/ sets no VCM_CONFIGMAP for the placement worker")


def kube_env_as_deployed(kube: Any, tmp: Path) -> dict[str, dict[str, str]]:
    """Per process of DEPLOYMENTS, its KUBECONFIG for the test apiserver `kube` (started with
    rbac): the token of the service account deploy/ mounts in its pod; where none is mounted,
    no Kubernetes configuration at all."""
    out: dict[str, dict[str, str]] = {}
    for process in DEPLOYMENTS:
        account = service_account_of(process)
        path = tmp / f"kubeconfig-{process}"
        if account is not None:
            kube.write_kubeconfig(path, namespace=account[0], token=kube.token_for(*account))
        out[process] = {"KUBECONFIG": str(path)}  # not written: no configuration
    return out
