"""Offline checks of the Kubernetes manifests in deploy/.

Every manifest (the kustomize base and deploy/examples) is validated against the Kubernetes JSON
schemas shipped with `kubernetes-validate`, in strict mode, and the invariants the service relies
on are asserted: one placement consumer (replicas 1, Recreate, `-Q placement --concurrency 1`),
exactly one beat, a Role scoped to the ledger mirror ConfigMaps, resources and non-root security
contexts on every container, a usable pools file, a Redis that requires the password from Secret
vcm-redis-auth (which every pod that talks to it has), NetworkPolicies that admit to Redis only
our own pods and client namespaces, and a required Flower login. The Redis command, its probes
and the pods' VCM_REDIS_URL are also run against a real redis-server.

The invariant checkers return lists of violations so that they can also be run against mutated
copies of the manifests: the `*_catches_*` tests prove that the checks would actually fail if
someone, say, scaled the placement worker to two replicas.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import posixpath
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import kombu
import kubernetes_validate
import pytest
import redis
import yaml

from tests.support.manifests import (
    DEPLOY,
    KUSTOMIZATION,
    REDIS_SECRET,
    REDIS_SECRET_KEY,
    ROOT,
    SAMPLE_PASSWORD,
    SAMPLE_SECRETS,
    WORKLOAD_KINDS,
    base_docs,
    base_files,
    containers,
    example_files,
    find,
    is_redis_container,
    k8s_expand,
    kustomization,
    manifest_docs,
    one,
    pod_spec,
    redis_container,
    resolve_env,
    worker_liveness,
)
from tests.support.procs import free_port, wait_for

NAMESPACE = "vsphere-capacity-manager"
APP_IMAGE = "quay.io/vcm/vsphere-capacity-manager"
COMMON_LABELS = {"app.kubernetes.io/name": "vsphere-capacity-manager"}
# Newest Kubernetes schema version that the installed kubernetes-validate ships.
K8S_VERSION = kubernetes_validate.latest_version()

LEDGER_CONFIGMAP = "vcm-ledger"
MIRROR_CONFIGMAPS = {LEDGER_CONFIGMAP} | {f"{LEDGER_CONFIGMAP}-{i}" for i in range(16)}

# VCM_REDIS_URL is not among them: it carries the Redis password, so each pod builds it from
# Secret vcm-redis-auth (see redis_auth_violations).
EXPECTED_SETTINGS = {
    "VCM_POOLS_FILE": "/etc/vcm/pools.yaml",
    "VCM_LEASE_TTL": "24h",
    "VCM_REAP_INTERVAL": "5m",
    "VCM_ROLLUP_INTERVAL": "60s",
    "VCM_STRATEGY": "least-utilized",
    "VCM_WORKER_STUCK_AFTER": "5m",
}

POOL_KEYS = {
    "name", "vcenter", "datacenter", "cluster", "datastore", "vcpus", "memory", "storage",
    "vcpu-overcommit", "exclude", "no-schedule", "labels", "networks",
}
POOL_REQUIRED = {
    "name", "vcenter", "datacenter", "cluster", "datastore", "vcpus", "memory", "storage",
}
NETWORK_KEYS = {"port-group", "vlan", "cidr", "gateway", "type"}
NETWORK_REQUIRED = {"port-group", "vlan", "cidr", "gateway"}




# --------------------------------------------------------------------------- loading


def _tool_missing(why: str) -> NoReturn:
    """A missing kubectl, kustomize or redis-server skips the test on a laptop; under CI=true
    it fails it, so a CI image without the tool cannot pass by skipping."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: a missing tool fails instead of skipping)", pytrace=False)
    pytest.skip(why)


def _doc_id(item: tuple[str, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


ALL_DOCS = manifest_docs(base_files() + example_files()) if KUSTOMIZATION.exists() else []


# --------------------------------------------------------------------------- helpers


def workloads(docs) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") in WORKLOAD_KINDS]


def all_containers(docs):
    """(workload, pod spec, container) for every container of every workload."""
    for w in workloads(docs):
        spec = pod_spec(w)
        for c in containers(spec):
            yield w, spec, c


def replicas(workload: dict[str, Any]) -> int | None:
    """Effective replica count; None for kinds that run one pod per node (unbounded)."""
    kind = workload["kind"]
    if kind == "DaemonSet":
        return None
    if kind in ("Pod", "Job", "CronJob"):
        return 1
    return workload["spec"].get("replicas", 1)


def is_app_container(c: dict[str, Any]) -> bool:
    return c.get("image", "").split("@")[0].rsplit(":", 1)[0] == APP_IMAGE


def argv(c: dict[str, Any]) -> list[str]:
    """command + args, with shell strings (`sh -c "..."`) split into words."""
    out: list[str] = []
    for tok in list(c.get("command", [])) + list(c.get("args", [])):
        tok = str(tok)
        out.extend(shlex.split(tok) if re.search(r"\s", tok) else [tok])
    return out


CELERY_SUBCOMMANDS = {"worker", "beat", "flower", "inspect", "control", "events", "shell",
                      "call", "purge", "status", "result", "multi", "migrate", "graph",
                      "list", "logtool", "amqp", "upgrade", "report"}


def celery_invocations(words: list[str]) -> list[tuple[str, list[str]]]:
    """Every `celery ... <subcommand> <options>` in an argv, as (subcommand, options)."""
    found = []
    for i, w in enumerate(words):
        if posixpath.basename(w) != "celery" and not (
            w == "-m" and i + 1 < len(words) and words[i + 1] == "celery"
        ):
            continue
        rest = words[i + 1:]
        for j, r in enumerate(rest):
            if r in CELERY_SUBCOMMANDS and (j == 0 or rest[j - 1] not in ("-A", "--app")):
                end = next((k for k in range(j + 1, len(rest)) if rest[k] in (";", "&&", "||")),
                           len(rest))
                found.append((r, rest[j + 1:end]))
                break
    return found


def option(opts: list[str], short: str | None, long: str) -> str | None:
    """Value of an option given as `-Q x`, `-Qx`, `--queues x` or `--queues=x`."""
    for i, o in enumerate(opts):
        if o == long or (short and o == short):
            return opts[i + 1] if i + 1 < len(opts) else ""
        if o.startswith(long + "="):
            return o[len(long) + 1:]
        if short and o.startswith(short) and not o.startswith("--") and len(o) > len(short):
            return o[len(short):]
    return None


def worker_queues(opts: list[str]) -> list[str] | None:
    q = option(opts, "-Q", "--queues")
    return None if q is None else [x.strip() for x in q.split(",") if x.strip()]


def worker_embeds_beat(opts: list[str]) -> bool:
    return any(
        o in ("-B", "--beat")
        # combined boolean short flags such as -EB (but not a value like -lDEBUG)
        or (re.fullmatch(r"-[A-Za-z]+", o) and "B" in o and o[1] in "BDE")
        for o in opts
    )


def runs_vcm_run(words: list[str]) -> bool:
    """`vcm run` starts the whole local stack, including a placement worker and a beat."""
    return any(posixpath.basename(w) == "vcm" and words[i + 1:i + 2] == ["run"]
               for i, w in enumerate(words))


def runs_beat(c: dict[str, Any]) -> bool:
    words = argv(c)
    if runs_vcm_run(words):
        return True
    for sub, opts in celery_invocations(words):
        if sub == "beat" or (sub == "worker" and worker_embeds_beat(opts)):
            return True
    return False


def hpa_targets(docs) -> set[str]:
    return {h["spec"]["scaleTargetRef"]["name"] for h in find(docs, "HorizontalPodAutoscaler")}


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q: Any) -> float:
    m = _QUANTITY.match(str(q))
    assert m and m.group(2) in _SUFFIX, f"unparsable quantity {q!r}"
    return float(m.group(1)) * _SUFFIX[m.group(2)]


# --------------------------------------------------------------------------- invariant checkers


def placement_violations(docs) -> list[str]:
    """Exactly one process, ever, consumes the `placement` queue, one task at a time."""
    v: list[str] = []
    consumers = []
    for w, _spec, c in all_containers(docs):
        where = f"{w['kind']}/{w['metadata']['name']} container {c['name']}"
        words = argv(c)
        if runs_vcm_run(words):
            v.append(f"{where}: `vcm run` starts its own placement worker")
        for sub, opts in celery_invocations(words):
            if sub != "worker":
                continue
            queues = worker_queues(opts)
            if queues is None:
                v.append(f"{where}: celery worker without -Q consumes every queue, placement too")
            elif "placement" in queues:
                consumers.append((w, c, queues, opts))
    if len(consumers) != 1:
        v.append(f"expected exactly one placement consumer, found {len(consumers)}")
        return v
    w, c, queues, opts = consumers[0]
    name = w["metadata"]["name"]
    if (w["kind"], name) != ("Deployment", "vcm-placement"):
        v.append(f"placement is consumed by {w['kind']}/{name}, not Deployment/vcm-placement")
    if w["spec"].get("replicas") != 1:
        v.append(f"{name}: replicas must be exactly 1, got {w['spec'].get('replicas')!r}")
    if w["kind"] == "Deployment" and w["spec"].get("strategy", {}).get("type") != "Recreate":
        v.append(f"{name}: strategy must be Recreate (RollingUpdate overlaps two consumers)")
    if queues != ["placement"]:
        v.append(f"{name}: must consume only `placement`, consumes {queues}")
    if option(opts, "-c", "--concurrency") != "1":
        v.append(f"{name}: --concurrency must be 1, got {option(opts, '-c', '--concurrency')!r}")
    pool = option(opts, "-P", "--pool")
    if pool not in (None, "prefork", "solo"):
        v.append(f"{name}: pool {pool!r} may run tasks concurrently")
    if option(opts, None, "--autoscale") is not None:
        v.append(f"{name}: --autoscale changes concurrency")
    if name in hpa_targets(docs):
        v.append(f"{name}: must not be autoscaled")
    return v


def beat_violations(docs) -> list[str]:
    v: list[str] = []
    beats = [(w, c) for w, _s, c in all_containers(docs) if runs_beat(c)]
    if len(beats) != 1:
        where = [f"{w['kind']}/{w['metadata']['name']}:{c['name']}" for w, c in beats]
        v.append(f"expected exactly one beat container, found {len(beats)}: {where}")
    for w, _c in beats:
        name = w["metadata"]["name"]
        if replicas(w) != 1:
            v.append(f"{name}: beat must run with exactly 1 replica, got {replicas(w)!r}")
        if w["kind"] == "Deployment" and w["spec"].get("strategy", {}).get("type") != "Recreate":
            v.append(f"{name}: beat Deployment must use Recreate so a rollout never runs two")
        if name in hpa_targets(docs):
            v.append(f"{name}: beat must not be autoscaled")
    return v


CONTROLLER = "vcm-controller"
CONTROLLER_GROUP = "vspherecapacitymanager.splat.io"
# what the Lease controller may do in the namespace it serves, resource by resource
CONTROLLER_MAY = {"leases": {"get", "list", "watch", "patch"}, "leases/status": {"patch"},
                  "pools": {"get", "list", "create", "patch", "delete"},
                  "pools/status": {"patch"},
                  "networks": {"get", "list", "create", "patch", "delete"}}


def controller_rbac_violations(docs) -> list[str]:
    """The Lease controller's Role: our kinds only, no more verbs than it uses (it never
    deletes a Lease), bound to its own ServiceAccount alone."""
    v: list[str] = []
    roles = [r for r in find(docs, "Role") if r["metadata"]["name"] == CONTROLLER]
    if len(roles) != 1:
        return [f"expected one Role {CONTROLLER}, found {len(roles)}"]
    for i, rule in enumerate(roles[0].get("rules", [])):
        where = f"Role/{CONTROLLER} rule {i}"
        if set(rule.get("apiGroups", [])) != {CONTROLLER_GROUP}:
            v.append(f"{where}: apiGroups must be [{CONTROLLER_GROUP}]")
        if rule.get("resourceNames") or rule.get("nonResourceURLs"):
            v.append(f"{where}: resourceNames or nonResourceURLs")
        for resource in rule.get("resources", []):
            extra = set(rule.get("verbs", [])) - CONTROLLER_MAY.get(resource, set())
            if extra:
                v.append(f"{where}: {resource} may not {sorted(extra)}")
    bindings = [b for b in find(docs, "RoleBinding") if b["metadata"]["name"] == CONTROLLER]
    if [(b["roleRef"].get("kind"), b["roleRef"].get("name")) for b in bindings] != \
            [("Role", CONTROLLER)]:
        v.append(f"expected one RoleBinding {CONTROLLER} of Role {CONTROLLER}")
    for b in bindings:
        if [(s.get("kind"), s.get("name")) for s in b.get("subjects", [])] != \
                [("ServiceAccount", CONTROLLER)]:
            v.append(f"RoleBinding/{CONTROLLER}: only ServiceAccount {CONTROLLER}")
    return v


LEASE_CLIENT_RULES = [
    {"apiGroups": ["vspherecapacitymanager.splat.io"], "resources": ["leases"],
     "verbs": ["create", "get", "list", "watch", "delete", "deletecollection"]},
    {"apiGroups": ["vspherecapacitymanager.splat.io"], "resources": ["pools", "networks"],
     "verbs": ["get", "list", "watch"]},
]


def rbac_violations(docs) -> list[str]:
    v: list[str] = []
    # cluster-wide: only listing namespaces (namespace-bound leases), and the Lease clients'
    # ClusterRole, which nothing in the base binds
    for role in find(docs, "ClusterRole"):
        if role["metadata"]["name"] == "vcm-lease-client":
            if role.get("rules") != LEASE_CLIENT_RULES:
                v.append("ClusterRole/vcm-lease-client: Leases create/get/list/watch/delete/"
                         "deletecollection, Pools and Networks get/list/watch, nothing else")
            continue
        if role.get("rules") != [{"apiGroups": [""], "resources": ["namespaces"],
                                  "verbs": ["list"]}]:
            v.append(f"ClusterRole/{role['metadata']['name']} may only list namespaces")
    for binding in find(docs, "ClusterRoleBinding"):
        if [s.get("name") for s in binding.get("subjects", [])] != ["vcm-queries"]:
            v.append(f"ClusterRoleBinding/{binding['metadata']['name']}: only the queries "
                     "worker's ServiceAccount")
    v += controller_rbac_violations(docs)
    roles = [r for r in find(docs, "Role") if r["metadata"]["name"] != CONTROLLER]
    if len(roles) != 1:
        v.append(f"expected exactly one Role, found {len(roles)}")
    granted: dict[str, set[str]] = {}
    for role in roles:
        for i, rule in enumerate(role.get("rules", [])):
            where = f"Role/{role['metadata']['name']} rule {i}"
            verbs = set(rule.get("verbs", []))
            resources = set(rule.get("resources", []))
            groups = set(rule.get("apiGroups", []))
            names = rule.get("resourceNames")
            if "*" in verbs or "*" in resources or "*" in groups:
                v.append(f"{where}: wildcard in {rule}")
            if rule.get("nonResourceURLs"):
                v.append(f"{where}: nonResourceURLs")
            if groups != {""}:
                v.append(f"{where}: apiGroups must be [''] (core), got {sorted(groups)}")
            if resources != {"configmaps"}:
                v.append(f"{where}: only configmaps allowed, got {sorted(resources)}")
            if not verbs <= {"get", "create", "update", "patch"}:
                v.append(f"{where}: verbs beyond get/create/update/patch: {sorted(verbs)}")
            if names:
                if not set(names) <= MIRROR_CONFIGMAPS:
                    v.append(f"{where}: resourceNames outside the mirror: "
                             f"{sorted(set(names) - MIRROR_CONFIGMAPS)}")
                if "create" in verbs:
                    v.append(f"{where}: create with resourceNames never matches; separate rule")
                for n in names:
                    granted.setdefault(n, set()).update(verbs)
            elif verbs != {"create"}:
                v.append(f"{where}: {sorted(verbs - {'create'})} without resourceNames "
                         "(only create may be unrestricted)")
    for n in sorted(MIRROR_CONFIGMAPS):
        if not {"get", "update", "patch"} <= granted.get(n, set()):
            v.append(f"ConfigMap {n}: needs get/update/patch, has {sorted(granted.get(n, ()))}")
    bindings = [b for b in find(docs, "RoleBinding") if b["metadata"]["name"] != CONTROLLER]
    if len(bindings) != 1:
        v.append(f"expected exactly one RoleBinding, found {len(bindings)}")
    for b in bindings:
        ref = b["roleRef"]
        if ref.get("kind") != "Role" or ref.get("name") not in {
            r["metadata"]["name"] for r in roles
        }:
            v.append(f"RoleBinding/{b['metadata']['name']}: roleRef {ref} is not the Role")
        subjects = [(s.get("kind"), s.get("name")) for s in b.get("subjects", [])]
        if subjects != [("ServiceAccount", "vcm")]:
            v.append(f"RoleBinding/{b['metadata']['name']}: subjects {subjects} != [SA vcm]")
    return v


def container_violations(docs) -> list[str]:
    v: list[str] = []
    for w, spec, c in all_containers(docs):
        where = f"{w['kind']}/{w['metadata']['name']} container {c['name']}"
        res = c.get("resources", {})
        for section in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(section, {}):
                    v.append(f"{where}: missing resources.{section}.{r}")
        for r in ("cpu", "memory"):
            req, lim = res.get("requests", {}).get(r), res.get("limits", {}).get(r)
            if req is not None and lim is not None and quantity(req) > quantity(lim):
                v.append(f"{where}: {r} request {req} > limit {lim}")
        psc = spec.get("securityContext", {})
        csc = c.get("securityContext", {})

        def eff(key, psc=psc, csc=csc):
            return csc.get(key, psc.get(key))

        if eff("runAsNonRoot") is not True:
            v.append(f"{where}: runAsNonRoot must be true")
        want_uid = 999 if "redis" in c.get("image", "") else 10001
        if eff("runAsUser") != want_uid:
            v.append(f"{where}: runAsUser {eff('runAsUser')!r}, want {want_uid}")
        if csc.get("allowPrivilegeEscalation") is not False:
            v.append(f"{where}: allowPrivilegeEscalation must be false")
        if csc.get("privileged"):
            v.append(f"{where}: privileged")
        if "ALL" not in csc.get("capabilities", {}).get("drop", []):
            v.append(f"{where}: capabilities must drop ALL")
        if csc.get("capabilities", {}).get("add"):
            v.append(f"{where}: adds capabilities")
        if csc.get("readOnlyRootFilesystem") is not True:
            v.append(f"{where}: readOnlyRootFilesystem should be true")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault" or seccomp not in (
            "RuntimeDefault", "Localhost"
        ):
            v.append(f"{where}: pod seccompProfile must be RuntimeDefault")
    return v


# --------------------------------------------------------------------------- Redis authentication

REDIS_SERVICE = ("vcm-redis", 6379)

def _password_refs(c: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in c.get("env", [])
            if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == REDIS_SECRET]


def _probe_text(probe: dict[str, Any]) -> str:
    return " ".join(str(x) for x in probe.get("exec", {}).get("command", []))


def redis_auth_violations(docs) -> list[str]:
    """Redis requires the password from Secret vcm-redis-auth, and every pod that talks to it
    (the Redis probes and all six application pods) has that password, never optionally."""
    v: list[str] = []
    talkers = [(w, c) for w, _s, c in all_containers(docs)
               if is_app_container(c) or is_redis_container(c)]
    for w, c in talkers:
        where = f"{w['kind']}/{w['metadata']['name']} container {c['name']}"
        refs = _password_refs(c)
        if not refs:
            v.append(f"{where}: no password from Secret {REDIS_SECRET}")
        for e in refs:
            ref = e["valueFrom"]["secretKeyRef"]
            if ref.get("key") != REDIS_SECRET_KEY:
                v.append(f"{where}: {e['name']} reads key {ref.get('key')!r}, "
                         f"not {REDIS_SECRET_KEY!r}")
            if ref.get("optional"):
                v.append(f"{where}: the {REDIS_SECRET} reference must not be optional")
        if any(s.get("secretRef", {}).get("optional") for s in c.get("envFrom", [])):
            v.append(f"{where}: optional envFrom Secret")
    for w, c in talkers:
        if not is_app_container(c):
            continue
        where = f"{w['kind']}/{w['metadata']['name']} container {c['name']}"
        url = resolve_env(docs, c).get("VCM_REDIS_URL")
        if url is None:
            v.append(f"{where}: VCM_REDIS_URL is not set")
            continue
        parts = urlsplit(url)
        if parts.password != SAMPLE_PASSWORD:
            v.append(f"{where}: VCM_REDIS_URL does not carry the password from "
                     f"{REDIS_SECRET} once expanded: {url.replace(SAMPLE_PASSWORD, '***')}")
        if (parts.scheme, parts.hostname, parts.port) != ("redis", *REDIS_SERVICE):
            v.append(f"{where}: VCM_REDIS_URL is not redis://…@vcm-redis:6379: "
                     f"{url.replace(SAMPLE_PASSWORD, '***')}")
    if not find(docs, "StatefulSet", "vcm-redis"):
        return v + ["no StatefulSet/vcm-redis"]
    _sts, c = redis_container(docs)
    env = resolve_env(docs, c)
    words = [k8s_expand(str(t), env) for t in list(c.get("command", [])) + list(c.get("args", []))]
    if option(words, None, "--requirepass") != SAMPLE_PASSWORD:
        v.append("vcm-redis: redis-server must run with --requirepass from "
                 f"{REDIS_SECRET}, got {option(words, None, '--requirepass')!r}")
    for name in ("readinessProbe", "livenessProbe"):
        text = _probe_text(c.get(name, {}))
        if "redis-cli" not in text or not re.search(r"\$\{?REDIS_PASSWORD\b", text):
            v.append(f"vcm-redis: {name} must authenticate with $REDIS_PASSWORD: {text!r}")
    return v


# --------------------------------------------------------------------------- network policy

CLIENT_NAMESPACE_LABEL = "vsphere-capacity-manager.splat-team.io/client"
API_NAMESPACE_LABEL = "vsphere-capacity-manager.splat-team.io/api"
OUR_COMPONENTS = {"placement", "queries", "beat", "api", "flower", "controller"}


def selector_matches(sel: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector; `{}` selects everything."""
    sel = sel or {}
    if any(labels.get(k) != val for k, val in (sel.get("matchLabels") or {}).items()):
        return False
    for expr in sel.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def sample_pods(docs) -> dict[str, dict[str, Any]]:
    """Our own pods (from the workloads, in their namespace) and pods that must be told apart
    from them: strangers in our namespace, our labels elsewhere, client namespaces."""
    pods: dict[str, dict[str, Any]] = {}
    ns_labels = {n["metadata"]["name"]: dict(n["metadata"].get("labels", {}))
                 for n in find(docs, "Namespace")}

    def ns(name: str, labels: dict[str, str] | None = None) -> dict[str, str]:
        # the apiserver labels every namespace with its own name
        return {**ns_labels.get(name, {}), **(labels or {}), "kubernetes.io/metadata.name": name}

    ours = ""
    for w in workloads(docs):
        ours = w["metadata"].get("namespace", "")
        pods[w["metadata"]["name"]] = {"namespace": ours, "ns_labels": ns(ours),
                                       "labels": dict(w["spec"]["template"]["metadata"]["labels"])}
    api_labels = dict(one(docs, "Deployment", "vcm-api")["spec"]["template"]["metadata"]["labels"])
    pods.update({
        "stranger in our namespace": {"namespace": ours, "ns_labels": ns(ours),
                                      "labels": {"run": "debug"}},
        "our name, another component": {
            "namespace": ours, "ns_labels": ns(ours),
            "labels": {**COMMON_LABELS, "app.kubernetes.io/component": "debug"}},
        "our labels in an unlabelled namespace": {"namespace": "default",
                                                  "ns_labels": ns("default"),
                                                  "labels": api_labels},
        "kube-system pod": {"namespace": "kube-system", "ns_labels": ns("kube-system"),
                            "labels": {"k8s-app": "kube-dns"}},
        "client job step": {"namespace": "ci-op-1234",
                            "ns_labels": ns("ci-op-1234", {CLIENT_NAMESPACE_LABEL: "true"}),
                            "labels": {"created-by-ci": "true"}},
        "client label not true": {"namespace": "ci-op-5678",
                                  "ns_labels": ns("ci-op-5678", {CLIENT_NAMESPACE_LABEL: "false"}),
                                  "labels": {}},
        "api-only namespace": {"namespace": "openshift-ingress",
                               "ns_labels": ns("openshift-ingress", {API_NAMESPACE_LABEL: "true"}),
                               "labels": {"ingresscontroller": "default"}},
    })
    return pods


def _peer_admits(peer: dict[str, Any], policy_ns: str, pod: dict[str, Any]) -> bool:
    if "ipBlock" in peer:
        return True  # addresses, not identities: treat as admitting anyone
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], pod["ns_labels"]):
            return False
    elif pod["namespace"] != policy_ns:
        return False
    return selector_matches(peer.get("podSelector"), pod["labels"])


def _rule_covers_port(rule: dict[str, Any], port_name: str, port: int) -> bool:
    ports = rule.get("ports") or []
    return not ports or any(
        p.get("protocol", "TCP") == "TCP" and p.get("port") in (None, port, port_name)
        for p in ports)


def admitted(docs, target: dict[str, Any], port_name: str, port: int) -> set[str] | None:
    """Which sample pods may open TCP `port` on the target workload's pods; None when no
    NetworkPolicy isolates them for ingress (then everyone may)."""
    ns = target["metadata"].get("namespace")
    labels = target["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in find(docs, "NetworkPolicy")
                if p["metadata"].get("namespace") == ns
                and selector_matches(p["spec"].get("podSelector"), labels)
                and ("Ingress" in p["spec"].get("policyTypes", ["Ingress"]))]
    if not policies:
        return None
    out = set()
    for name, pod in sample_pods(docs).items():
        for p in policies:
            for rule in p["spec"].get("ingress") or []:
                peers = rule.get("from") or []
                if _rule_covers_port(rule, port_name, port) and (
                    not peers or any(_peer_admits(x, ns, pod) for x in peers)
                ):
                    out.add(name)
    return out


def our_pods(docs, components: set[str]) -> set[str]:
    return {w["metadata"]["name"] for w in workloads(docs)
            if w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
            in components}


def network_violations(docs) -> list[str]:
    """Redis admits exactly our six application pods and pods in client namespaces; the API
    admits client namespaces and API-only namespaces."""
    v: list[str] = []
    for p in find(docs, "NetworkPolicy"):
        for rule in p["spec"].get("ingress") or []:
            if any("ipBlock" in x for x in rule.get("from") or []):
                v.append(f"NetworkPolicy/{p['metadata']['name']}: ipBlock admits by address")
    redis_in = admitted(docs, one(docs, "StatefulSet", "vcm-redis"), "redis", 6379)
    want = our_pods(docs, OUR_COMPONENTS) | {"client job step"}
    if redis_in is None:
        v.append("no NetworkPolicy isolates the Redis pods: every pod in the cluster reaches them")
    elif redis_in != want:
        v.append(f"Redis admits {sorted(redis_in)}, want {sorted(want)}")
    api_in = admitted(docs, one(docs, "Deployment", "vcm-api"), "http", 8080)
    want = {"client job step", "api-only namespace"}
    if api_in is None:
        v.append("no NetworkPolicy isolates the API pods")
    elif api_in != want:
        v.append(f"the API admits {sorted(api_in)}, want {sorted(want)}")
    return v


# --------------------------------------------------------------------------- kustomization


def test_kustomization_lists_exactly_the_base_manifests():
    k = kustomization()
    assert k["apiVersion"].startswith("kustomize.config.k8s.io/")
    assert k["kind"] == "Kustomization"
    resources = k.get("resources", [])
    assert len(resources) == len(set(resources)), "duplicate entries in resources"
    missing = [r for r in resources if not (DEPLOY / r).is_file()]
    assert not missing, f"kustomization lists missing files: {missing}"
    on_disk = {
        str(p.relative_to(DEPLOY)) for p in list(DEPLOY.glob("*.yaml")) + list(DEPLOY.glob("*.yml"))
        + list(DEPLOY.glob("crds/*.yaml"))
        if p.name not in ("kustomization.yaml", "kustomization.yml")
    }
    unlisted = on_disk - set(resources)
    assert not unlisted, f"deploy/ manifests not listed in kustomization resources: {unlisted}"
    assert not any(r.startswith("examples") for r in resources), "examples must not be in base"


def test_kustomization_namespace_labels_and_image():
    k = kustomization()
    assert k["namespace"] == NAMESPACE
    labels: dict[str, str] = dict(k.get("commonLabels", {}))
    for entry in k.get("labels", []):
        labels.update(entry.get("pairs", {}))
    assert COMMON_LABELS.items() <= labels.items()
    images = {i["name"]: i for i in k.get("images", [])}
    assert APP_IMAGE in images, "the app image must be overridable through kustomize images:"
    img = images[APP_IMAGE]
    assert f"{img.get('newName', APP_IMAGE)}:{img.get('newTag')}" == f"{APP_IMAGE}:latest"
    app = [c for _w, _s, c in all_containers(base_docs()) if is_app_container(c)]
    assert len(app) >= 5
    assert {c["image"] for c in app} == {f"{APP_IMAGE}:latest"}, "one image for everything"


def test_examples_exist_and_are_not_in_the_base():
    examples = {d["metadata"]["name"]: d for _, d in manifest_docs(example_files())}
    assert "vcm-api-tokens" in examples
    secret = examples["vcm-api-tokens"]
    assert secret["kind"] == "Secret"
    tokens = secret["stringData"]["tokens"]
    for entry in tokens.split(","):
        parts = entry.split(":")
        assert len(parts) in (2, 3) and all(parts[:2]), f"bad token entry {entry!r}"
        assert len(parts) == 2 or parts[2] == "admin"
    flower = examples["vcm-flower-auth"]
    assert flower["kind"] == "Secret" and ":" in flower["stringData"]["basic-auth"]
    redis_auth = examples[REDIS_SECRET]
    assert redis_auth["kind"] == "Secret"
    assert set(redis_auth["stringData"]) == {REDIS_SECRET_KEY}
    # the password goes into redis://:PASSWORD@… unescaped, so only URL-safe characters
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", redis_auth["stringData"][REDIS_SECRET_KEY])
    assert not find(base_docs(), "Secret"), "no Secret (and no token) belongs in the base"


# --------------------------------------------------------------------------- schema validation


def assert_schema_valid(doc: dict[str, Any], where: str) -> None:
    """Strict validation against the Kubernetes schemas, failing with a one-line message."""
    error = None
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        at = "/".join(str(p) for p in e.path)
        error = f"{where}: {doc['kind']}/{doc['metadata']['name']} at {at}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        error = f"{where}: {e.message}"
    if error:
        pytest.fail(error, pytrace=False)


@pytest.mark.parametrize("item", ALL_DOCS, ids=_doc_id)
def test_manifest_is_valid_kubernetes(item):
    path, doc = item
    assert_schema_valid(doc, path)
    ns = doc["metadata"].get("namespace")
    if doc["kind"] in ("ClusterRole", "ClusterRoleBinding",
                       "CustomResourceDefinition"):  # cluster-scoped
        assert ns is None, f"{path}: a cluster-scoped {doc['kind']} has no namespace"
    elif path.endswith("controller-namespace-rbac.yaml"):  # for a further namespace served
        assert ns == "vsphere-infra-helpers", f"{path}: namespace {ns!r}"
    elif doc["kind"] != "Namespace":
        assert ns == NAMESPACE, f"{path}: namespace {ns!r}"


def test_the_queries_worker_may_only_list_namespaces_cluster_wide():
    """Namespace-bound leases need a namespace list; nothing else is granted cluster-wide."""
    docs = [d for _, d in ALL_DOCS]
    roles = [d for d in docs if d["kind"] == "ClusterRole"
             and d["metadata"]["name"] != "vcm-lease-client"]
    assert [r["rules"] for r in roles] == [[{"apiGroups": [""], "resources": ["namespaces"],
                                              "verbs": ["list"]}]]
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "vcm-queries",
                                    "namespace": NAMESPACE}]


def test_there_are_manifests_to_validate():
    kinds = {d["kind"] for _, d in ALL_DOCS}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service",
            "Deployment", "StatefulSet", "Secret", "NetworkPolicy"} <= kinds


def test_strict_validation_rejects_unknown_fields():
    """Guard: the validator really is strict, so a typo such as `replica:` is caught."""
    dep = copy.deepcopy(one(base_docs(), "Deployment", "vcm-placement"))
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    dep["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    dep = copy.deepcopy(one(base_docs(), "Deployment", "vcm-placement"))
    dep["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------- placement


def test_placement_single_consumer_recreate_concurrency_one():
    assert placement_violations(base_docs()) == []
    dep = one(base_docs(), "Deployment", "vcm-placement")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert argv(c) == ["celery", "-A", "tasks", "worker", "-Q", "placement", "--concurrency",
                       "1", "-n", "placement@%h", "-E"]


def _placement_mutants():
    def scaled(docs):
        one(docs, "Deployment", "vcm-placement")["spec"]["replicas"] = 2

    def rolling(docs):
        one(docs, "Deployment", "vcm-placement")["spec"]["strategy"] = {"type": "RollingUpdate"}

    def concurrency(docs):
        c = one(docs, "Deployment", "vcm-placement")["spec"]["template"]["spec"]["containers"][0]
        c["command"][c["command"].index("--concurrency") + 1] = "4"

    def two_queues(docs):
        c = one(docs, "Deployment", "vcm-placement")["spec"]["template"]["spec"]["containers"][0]
        c["command"][c["command"].index("-Q") + 1] = "placement,queries"

    def queries_takes_placement(docs):
        c = one(docs, "Deployment", "vcm-queries")["spec"]["template"]["spec"]["containers"][0]
        c["command"][c["command"].index("-Q") + 1] = "queries,placement"

    def queries_without_q(docs):
        c = one(docs, "Deployment", "vcm-queries")["spec"]["template"]["spec"]["containers"][0]
        i = c["command"].index("-Q")
        del c["command"][i:i + 2]

    def hpa(docs):
        docs.append({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                     "metadata": {"name": "x"},
                     "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "vcm-placement"}}})

    return [scaled, rolling, concurrency, two_queues, queries_takes_placement,
            queries_without_q, hpa]


@pytest.mark.parametrize("mutate", _placement_mutants(), ids=lambda f: f.__name__)
def test_placement_checker_catches(mutate):
    docs = copy.deepcopy(base_docs())
    mutate(docs)
    assert placement_violations(docs), f"{mutate.__name__} was not detected"


# --------------------------------------------------------------------------- worker liveness

WORKERS = ("vcm-placement", "vcm-queries")
NOT_IN_A_PROBE = {"celery", "python", "python3", "redis-cli", "vcm"}


def liveness_violations(docs) -> list[str]:
    """Each worker's liveness probe is `sh -c` testing that the modification time of the
    liveness file its worker writes is ahead of now: no Python (it runs every period) and
    nothing that talks to Redis (Redis down or full must not restart healthy workers)."""
    v: list[str] = []
    for name in WORKERS:
        try:
            command, path = worker_liveness(docs, name)
        except (AssertionError, KeyError, ValueError, SystemExit) as exc:
            v.append(f"{name}: no liveness probe on a liveness file: {exc}")
            continue
        words = argv({"command": command})
        used = {posixpath.basename(w) for w in words} & NOT_IN_A_PROBE
        if used or celery_invocations(words):
            v.append(f"{name}: the liveness probe runs {sorted(used)}: {command}")
        if command[:2] != ["sh", "-c"] or len(command) != 3 or path not in command[2]:
            v.append(f"{name}: the liveness probe does not read {path}, the file its worker "
                     f"writes: {command}")
    return v


def test_worker_liveness_probes_read_their_workers_liveness_file():
    assert liveness_violations(base_docs()) == []
    for name in WORKERS:
        probe = one(base_docs(), "Deployment", name)["spec"]["template"]["spec"][
            "containers"][0]["livenessProbe"]
        # the bound is the worker's (VCM_WORKER_STUCK_AFTER); the kubelet adds at most this
        assert probe["periodSeconds"] * probe["failureThreshold"] <= 120, probe


def test_worker_liveness_probe_passes_only_while_the_file_is_ahead_of_now(tmp_path):
    """The probe's own shell command, run on a file ahead of now, behind it, and missing."""
    for name in WORKERS:
        command, path = worker_liveness(base_docs(), name)
        local = tmp_path / posixpath.basename(path)
        run = [*command[:2], command[2].replace(path, str(local))]

        def probe(run=run) -> int:
            return subprocess.run(run, capture_output=True, timeout=10).returncode

        assert probe() != 0, f"{name}: passes without its file"
        local.touch()
        now = time.time()
        os.utime(local, (now + 30, now + 30))
        assert probe() == 0, f"{name}: fails with its file 30 s ahead of now"
        os.utime(local, (now - 1, now - 1))
        assert probe() != 0, f"{name}: passes with its file behind now"


def _liveness_mutants():
    def container(docs, name):
        return one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]

    def pings(docs):
        container(docs, "vcm-placement")["livenessProbe"]["exec"]["command"] = [
            "sh", "-c", 'exec celery -A tasks inspect ping -d "placement@$HOSTNAME" -t 30']

    def reads_the_other_workers_file(docs):
        probe = container(docs, "vcm-queries")["livenessProbe"]["exec"]
        probe["command"] = [w.replace("queries", "placement") for w in probe["command"]]

    def file_moved(docs):
        one(docs, "ConfigMap", "vcm-settings")["data"]["VCM_WORKER_LIVENESS_FILE"] = \
            "/var/run/vcm-%n.alive"

    def file_off(docs):
        container(docs, "vcm-queries")["env"].append(
            {"name": "VCM_WORKER_LIVENESS_FILE", "value": "off"})

    def no_probe(docs):
        del container(docs, "vcm-placement")["livenessProbe"]

    return [pings, reads_the_other_workers_file, file_moved, file_off, no_probe]


@pytest.mark.parametrize("mutate", _liveness_mutants(), ids=lambda f: f.__name__)
def test_liveness_checker_catches(mutate):
    docs = copy.deepcopy(base_docs())
    mutate(docs)
    assert liveness_violations(docs), f"{mutate.__name__} was not detected"


# --------------------------------------------------------------------------- beat


def test_exactly_one_beat():
    assert beat_violations(base_docs()) == []
    beats = [(w, c) for w, _s, c in all_containers(base_docs()) if runs_beat(c)]
    ((w, c),) = beats
    assert (w["kind"], w["metadata"]["name"]) == ("Deployment", "vcm-beat")
    assert w["spec"]["replicas"] == 1
    (sub, opts), = celery_invocations(argv(c))
    assert sub == "beat"
    sched = option(opts, "-s", "--schedule")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
    assert sched and posixpath.dirname(sched) in mounts, "beat schedule must be on a volume"
    assert "emptyDir" in vols[mounts[posixpath.dirname(sched)]]


def _beat_mutants():
    def scaled(docs):
        one(docs, "Deployment", "vcm-beat")["spec"]["replicas"] = 2

    def rolling(docs):
        one(docs, "Deployment", "vcm-beat")["spec"]["strategy"] = {"type": "RollingUpdate"}

    def worker_with_b(docs):
        c = one(docs, "Deployment", "vcm-queries")["spec"]["template"]["spec"]["containers"][0]
        c["command"].append("-B")

    def worker_with_eb(docs):
        c = one(docs, "Deployment", "vcm-queries")["spec"]["template"]["spec"]["containers"][0]
        c["command"][c["command"].index("-E")] = "-EB"

    def beat_in_shell(docs):
        c = one(docs, "Deployment", "vcm-flower")["spec"]["template"]["spec"]["containers"][0]
        c["command"] = ["sh", "-c", "celery -A tasks beat & exec celery -A tasks flower"]

    def vcm_run(docs):
        c = one(docs, "Deployment", "vcm-api")["spec"]["template"]["spec"]["containers"][0]
        c["command"] = ["vcm", "run"]

    return [scaled, rolling, worker_with_b, worker_with_eb, beat_in_shell, vcm_run]


@pytest.mark.parametrize("mutate", _beat_mutants(), ids=lambda f: f.__name__)
def test_beat_checker_catches(mutate):
    docs = copy.deepcopy(base_docs())
    mutate(docs)
    assert beat_violations(docs), f"{mutate.__name__} was not detected"


# --------------------------------------------------------------------------- RBAC


def mirror_configmap(docs) -> str:
    """VCM_CONFIGMAP of the placement worker, with $(POD_NAMESPACE) resolved as the kubelet
    does (from its own namespace; the variable must be defined before it is used)."""
    placement = one(docs, "Deployment", "vcm-placement")
    app = [c for c in containers(pod_spec(placement)) if is_app_container(c)]
    env = app[0]["env"]
    names = [e["name"] for e in env]
    pod_ns = env[names.index("POD_NAMESPACE")]
    assert pod_ns["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    value = env[names.index("VCM_CONFIGMAP")]["value"]
    assert names.index("POD_NAMESPACE") < names.index("VCM_CONFIGMAP")
    return value.replace("$(POD_NAMESPACE)", placement["metadata"]["namespace"])


def test_rbac_is_scoped_to_the_mirror_configmaps():
    assert rbac_violations(base_docs()) == []
    ns, name = mirror_configmap(base_docs()).split("/")
    assert ns == NAMESPACE and name == LEDGER_CONFIGMAP
    assert "VCM_CONFIGMAP" not in one(base_docs(), "ConfigMap", "vcm-settings")["data"]
    (role,) = [r for r in find(base_docs(), "Role") if r["metadata"]["name"] != CONTROLLER]
    unrestricted = [r for r in role["rules"] if not r.get("resourceNames")]
    assert [r["verbs"] for r in unrestricted] == [["create"]]


def _rbac_mutants():
    def rule(docs):
        return [r for r in find(docs, "Role") if r["metadata"]["name"] != CONTROLLER][0]["rules"]

    def wildcard_verb(docs):
        rule(docs)[0]["verbs"] = ["*"]

    def wildcard_resource(docs):
        rule(docs)[1]["resources"] = ["*"]

    def secrets(docs):
        rule(docs)[0]["resources"].append("secrets")

    def no_resource_names(docs):
        del rule(docs)[0]["resourceNames"]

    def delete_verb(docs):
        rule(docs)[0]["verbs"].append("delete")

    def list_unrestricted(docs):
        rule(docs)[1]["verbs"].append("list")

    def foreign_name(docs):
        rule(docs)[0]["resourceNames"].append("kube-root-ca.crt")

    def cluster_role(docs):
        docs.append({"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": []})

    def controller_rules(docs):
        return one(docs, "Role", CONTROLLER)["rules"]

    def controller_deletes_leases(docs):
        controller_rules(docs)[0]["verbs"].append("delete")

    def controller_reads_secrets(docs):
        controller_rules(docs).append({"apiGroups": [""], "resources": ["secrets"],
                                       "verbs": ["get"]})

    def controller_binding_to_another(docs):
        one(docs, "RoleBinding", CONTROLLER)["subjects"][0]["name"] = "vcm"

    def lease_client_writes_status(docs):
        one(docs, "ClusterRole", "vcm-lease-client")["rules"][0]["resources"].append(
            "leases/status")

    def lease_client_changes_pools(docs):
        one(docs, "ClusterRole", "vcm-lease-client")["rules"][1]["verbs"].append("update")

    def lease_client_bound_cluster_wide(docs):
        docs.append({"kind": "ClusterRoleBinding", "metadata": {"name": "x"},
                     "roleRef": {"kind": "ClusterRole", "name": "vcm-lease-client"},
                     "subjects": [{"kind": "Group", "name": "system:authenticated"}]})

    return [wildcard_verb, wildcard_resource, secrets, no_resource_names, delete_verb,
            list_unrestricted, foreign_name, cluster_role, lease_client_writes_status,
            lease_client_changes_pools, lease_client_bound_cluster_wide,
            controller_deletes_leases, controller_reads_secrets,
            controller_binding_to_another]


@pytest.mark.parametrize("mutate", _rbac_mutants(), ids=lambda f: f.__name__)
def test_rbac_checker_catches(mutate):
    docs = copy.deepcopy(base_docs())
    mutate(docs)
    assert rbac_violations(docs), f"{mutate.__name__} was not detected"


def test_only_placement_and_queries_get_an_api_token():
    docs = base_docs()
    sas = {s["metadata"]["name"]: s for s in find(docs, "ServiceAccount")}
    for w in workloads(docs):
        spec = pod_spec(w)
        sa = spec.get("serviceAccountName", "default")
        automount = spec.get("automountServiceAccountToken",
                             sas.get(sa, {}).get("automountServiceAccountToken", True))
        name = w["metadata"]["name"]
        if name == "vcm-placement":
            assert sa == "vcm" and automount is True, "placement mirrors the ledger via the API"
        elif name == "vcm-queries":
            assert sa == "vcm-queries" and automount is True, "queries lists namespaces"
        elif name == "vcm-controller":
            assert sa == "vcm-controller" and automount is True, "the controller writes Leases"
        else:
            assert sa != "vcm", f"{name} must not use the privileged ServiceAccount"
            assert automount is False, f"{name} must not mount an API token"


# --------------------------------------------------------------------------- containers


def test_every_container_has_resources_and_runs_non_root():
    docs = base_docs()
    assert len(list(all_containers(docs))) >= 6
    assert container_violations(docs) == []


@pytest.mark.parametrize("mutate", [
    lambda c: c["resources"].pop("limits"),
    lambda c: c["resources"]["requests"].pop("memory"),
    lambda c: c["securityContext"].pop("runAsNonRoot"),
    lambda c: c["securityContext"].update(allowPrivilegeEscalation=True),
    lambda c: c["securityContext"].update(runAsUser=0),
], ids=["no-limits", "no-memory-request", "no-runAsNonRoot", "escalation", "root"])
def test_container_checker_catches(mutate):
    docs = copy.deepcopy(base_docs())
    c = one(docs, "Deployment", "vcm-api")["spec"]["template"]["spec"]["containers"][0]
    # the pod-level context also says runAsNonRoot; drop it so the container's counts
    one(docs, "Deployment", "vcm-api")["spec"]["template"]["spec"]["securityContext"].pop(
        "runAsNonRoot")
    one(docs, "Deployment", "vcm-api")["spec"]["template"]["spec"]["securityContext"].pop(
        "runAsUser")
    mutate(c)
    assert container_violations(docs)


def test_app_containers_get_settings_and_pools_and_a_writable_tmp():
    docs = base_docs()
    settings = one(docs, "ConfigMap", "vcm-settings")
    assert settings["data"] == EXPECTED_SETTINGS
    pools_dir = posixpath.dirname(EXPECTED_SETTINGS["VCM_POOLS_FILE"])
    pools_key = posixpath.basename(EXPECTED_SETTINGS["VCM_POOLS_FILE"])
    assert pools_key in one(docs, "ConfigMap", "vcm-pools")["data"]
    app = [(w, s, c) for w, s, c in all_containers(docs) if is_app_container(c)]
    names = {w["metadata"]["name"] for w, _s, _c in app}
    assert names == {"vcm-placement", "vcm-queries", "vcm-beat", "vcm-api", "vcm-flower",
                     "vcm-controller"}
    for w, spec, c in app:
        where = w["metadata"]["name"]
        refs = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])]
        assert "vcm-settings" in refs, f"{where}: envFrom vcm-settings"
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        m = mounts.get(pools_dir)
        assert m, f"{where}: pools not mounted at {pools_dir}"
        assert "subPath" not in m and "subPathExpr" not in m, "subPath mounts never update"
        assert vols[m["name"]]["configMap"]["name"] == "vcm-pools"
        assert "items" not in vols[m["name"]]["configMap"]
        assert "/tmp" in mounts and "emptyDir" in vols[mounts["/tmp"]["name"]]


# --------------------------------------------------------------------------- settings, run


def settings_environment(docs, tmp: Path, data: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ConfigMap vcm-settings gives the placement container (envFrom; `data`
    instead of the ConfigMap's own), for a process on this machine: paths under the container's
    ConfigMap volume mounts point at those ConfigMaps' files written below `tmp`. Redis and the
    mirror are local ones (the test's own, set by the caller); no other VCM_ variable is set."""
    data = dict(one(docs, "ConfigMap", "vcm-settings")["data"] if data is None else data)
    placement = one(docs, "Deployment", "vcm-placement")
    spec = pod_spec(placement)
    (c,) = [c for c in containers(spec) if is_app_container(c)]
    assert {"configMapRef": {"name": "vcm-settings"}} in c["envFrom"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts: dict[str, Path] = {}
    for m in c.get("volumeMounts", []):
        source = volumes[m["name"]].get("configMap")
        if source is None:
            continue
        local = tmp / m["mountPath"].strip("/").replace("/", "-")
        local.mkdir(parents=True, exist_ok=True)
        for key, text in one(docs, "ConfigMap", source["name"]).get("data", {}).items():
            (local / key).write_text(text)
        mounts[m["mountPath"].rstrip("/") + "/"] = local
    env = {k: v for k, v in os.environ.items() if not k.startswith("VCM_")}
    for key, value in data.items():
        for mount, local in mounts.items():
            if value.startswith(mount):
                value = str(local / value[len(mount):])
        env[key] = value
    return env


def start_placement(docs, env: dict[str, str], log: Path):
    """The placement worker with the manifest's command and `env`, until it is consuming or has
    exited: (the process, or None once it exited; its output)."""
    from tests.support.procs import LoggedProcess

    placement = one(docs, "Deployment", "vcm-placement")
    (c,) = [c for c in containers(pod_spec(placement)) if is_app_container(c)]
    words = [w.replace("%h", "deploy-test") for w in argv(c)]
    assert words[:4] == ["celery", "-A", "tasks", "worker"], words
    proc = LoggedProcess()
    proc.log = str(log)
    proc.spawn([sys.executable, "-m", *words, "-l", "info"],
               {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    wait_for(lambda: "ready." in proc.output() or proc.proc.poll() is not None, timeout=60,
             what="the placement worker to start or stop")
    if proc.proc.poll() is not None:
        proc.stop()
        return None, proc.output()
    return proc, proc.output()


def unread_settings(docs, tmp: Path, data: dict[str, str], redis_url: str) -> list[str]:
    """Keys of `data` the placement worker does not read: given a value that is no setting's
    (every key in turn), its start-up neither stops nor logs a word about that key or value."""
    unread = []
    for key in data:
        bogus = f"not-a-{key.lower()}"
        env = settings_environment(docs, tmp / key, {**data, key: bogus})
        env.update(VCM_REDIS_URL=redis_url, VCM_MIRROR_FILE=str(tmp / key / "ledger.json"))
        proc, output = start_placement(docs, env, tmp / f"{key}.log")
        if proc is not None:
            proc.stop()
        if key not in output and bogus not in output:
            unread.append(key)
    return unread


def test_the_settings_configmap_runs_the_placement_worker(tmp_path):
    """ConfigMap vcm-settings as the environment of the placement worker started with the
    manifest's command, its pools file where the vcm-pools volume puts it: it starts, places on
    those pools, and the lease lives VCM_LEASE_TTL. Each key is read: given nonsense, start-up
    says so. A key that is no setting (a typo) would be ignored by the product: caught here."""
    from celery import Celery

    from tests.support.procs import RedisServer
    from workers.core.lease import parse_rfc3339
    from workers.core.parsing import parse_duration

    docs = base_docs()
    data = one(docs, "ConfigMap", "vcm-settings")["data"]
    pools = yaml.safe_load(one(docs, "ConfigMap", "vcm-pools")["data"]["pools.yaml"])["pools"]
    server = RedisServer().start()
    app = Celery("deploy-test", broker=server.url, backend=server.url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = server.url
    try:
        env = settings_environment(docs, tmp_path / "good")
        env.update(VCM_REDIS_URL=server.url, VCM_MIRROR_FILE=str(tmp_path / "ledger.json"))
        proc, output = start_placement(docs, env, tmp_path / "good.log")
        assert proc is not None, output[-3000:]
        try:
            r = app.send_task("vcm.acquire", kwargs={"request": {
                "vcpus": 1, "memory": 1, "owner": "deploy-test"}}, queue="placement")
            (lease,) = r.get(timeout=30)
        finally:
            proc.stop()
        status = lease["status"]
        assert status["pool"] in {p["name"] for p in pools}, status
        lived = parse_rfc3339(status["expires-at"]) - parse_rfc3339(status["leased-at"])
        assert lived == parse_duration(data["VCM_LEASE_TTL"], "VCM_LEASE_TTL", maximum=1e9), status

        assert unread_settings(docs, tmp_path / "each", data, server.url) == []
        typo = {"VCM_LEASE_TTLL": data["VCM_LEASE_TTL"]}
        assert unread_settings(docs, tmp_path / "typo", typo, server.url) == ["VCM_LEASE_TTLL"]
    finally:
        app.close()
        server.stop()


def test_redis_persists_with_aof_on_a_pvc():
    docs = base_docs()
    sts = one(docs, "StatefulSet", "vcm-redis")
    assert sts["spec"]["replicas"] == 1
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    words = argv(c)
    assert words[0] == "redis-server"
    assert words[words.index("--appendonly") + 1] == "yes"
    assert words[words.index("--appendfsync") + 1] == "everysec"
    data_dir = words[words.index("--dir") + 1]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert {m["mountPath"]: m["name"] for m in c["volumeMounts"]}[data_dir] == \
        claim["metadata"]["name"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert "redis-cli" in argv({"command": c[probe]["exec"]["command"]})
    svc = one(docs, "Service", "vcm-redis")
    assert [p["port"] for p in svc["spec"]["ports"]] == [6379]


def test_api_and_flower_probes_ports_and_secrets():
    docs = base_docs()
    api = one(docs, "Deployment", "vcm-api")
    assert api["spec"]["replicas"] >= 2
    (c,) = api["spec"]["template"]["spec"]["containers"]
    assert argv(c) == ["vcm", "api", "--host", "0.0.0.0", "--port", "8080"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e for e in c["env"]}
    ref = env["VCM_API_TOKENS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "vcm-api-tokens", "key": "tokens", "optional": True}

    flower = one(docs, "Deployment", "vcm-flower")
    (c,) = flower["spec"]["template"]["spec"]["containers"]
    (sub, opts), = celery_invocations(argv(c))
    assert sub == "flower" and option(opts, None, "--port") == "5555"
    env = {e["name"]: e for e in c["env"]}
    ref = env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    # required: without the Secret the pod does not start, rather than showing every task's
    # arguments to anyone who reaches it
    assert ref == {"name": "vcm-flower-auth", "key": "basic-auth"}

    assert [p["port"] for p in one(docs, "Service", "vcm-api")["spec"]["ports"]] == [8080]
    assert [p["port"] for p in one(docs, "Service", "vcm-flower")["spec"]["ports"]] == [5555]


def test_queries_worker_consumes_only_queries_and_may_scale():
    dep = one(base_docs(), "Deployment", "vcm-queries")
    assert dep["spec"]["replicas"] >= 1
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    (sub, opts), = celery_invocations(argv(c))
    assert sub == "worker" and worker_queues(opts) == ["queries"]


def test_services_select_pods_and_target_declared_ports():
    docs = base_docs()
    for svc in find(docs, "Service"):
        sel = svc["spec"]["selector"]
        matches = [w for w in workloads(docs)
                   if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service/{svc['metadata']['name']} selects {len(matches)}"
        ports = {p.get("name"): p["containerPort"]
                 for c in pod_spec(matches[0])["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            assert target in ports or target in ports.values(), f"{svc['metadata']['name']}"
    for w in workloads(docs):
        sel = w["spec"]["selector"]["matchLabels"]
        assert sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()


# --------------------------------------------------------------------------- Redis auth


def test_redis_requires_the_password_and_every_pod_that_talks_to_it_has_it():
    docs = base_docs()
    assert redis_auth_violations(docs) == []
    talkers = {w["metadata"]["name"] for w, _s, c in all_containers(docs)
               if is_app_container(c) or is_redis_container(c)}
    assert talkers == {"vcm-redis", "vcm-placement", "vcm-queries", "vcm-beat", "vcm-api",
                       "vcm-flower", "vcm-controller"}
    for w, _s, c in all_containers(docs):
        if w["metadata"]["name"] not in talkers:
            continue
        (ref,) = _password_refs(c)
        assert ref["name"] == "REDIS_PASSWORD"
        assert ref["valueFrom"]["secretKeyRef"] == {"name": REDIS_SECRET, "key": REDIS_SECRET_KEY}
        if is_app_container(c):
            names = [e["name"] for e in c["env"]]
            assert names.index("REDIS_PASSWORD") < names.index("VCM_REDIS_URL"), \
                "$(REDIS_PASSWORD) expands only when defined earlier in env"
            url = resolve_env(docs, c)["VCM_REDIS_URL"]
            assert url == f"redis://:{SAMPLE_PASSWORD}@vcm-redis:6379/0"
    # no passwordless URL left for envFrom to hand out
    assert "VCM_REDIS_URL" not in one(docs, "ConfigMap", "vcm-settings")["data"]


def _redis_auth_mutants():
    def app(docs, name):
        return one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]

    def drop_env(c, var):
        c["env"] = [e for e in c["env"] if e["name"] != var]

    def flower_has_no_password(docs):
        drop_env(app(docs, "vcm-flower"), "REDIS_PASSWORD")

    def beat_password_optional(docs):
        _password_refs(app(docs, "vcm-beat"))[0]["valueFrom"]["secretKeyRef"]["optional"] = True

    def api_wrong_key(docs):
        _password_refs(app(docs, "vcm-api"))[0]["valueFrom"]["secretKeyRef"]["key"] = "pass"

    def placement_url_without_password(docs):
        for e in app(docs, "vcm-placement")["env"]:
            if e["name"] == "VCM_REDIS_URL":
                e["value"] = "redis://vcm-redis:6379/0"

    def queries_url_before_password(docs):
        c = app(docs, "vcm-queries")
        url = next(e for e in c["env"] if e["name"] == "VCM_REDIS_URL")
        drop_env(c, "VCM_REDIS_URL")
        c["env"].insert(0, url)

    def api_url_only_from_settings(docs):
        drop_env(app(docs, "vcm-api"), "VCM_REDIS_URL")
        one(docs, "ConfigMap", "vcm-settings")["data"]["VCM_REDIS_URL"] = \
            "redis://vcm-redis:6379/0"

    def redis_without_requirepass(docs):
        _sts, c = redis_container(docs)
        i = c["command"].index("--requirepass")
        del c["command"][i:i + 2]

    def redis_without_password(docs):
        _sts, c = redis_container(docs)
        drop_env(c, "REDIS_PASSWORD")

    def readiness_without_auth(docs):
        _sts, c = redis_container(docs)
        c["readinessProbe"]["exec"]["command"] = [
            "sh", "-c", "redis-cli -h 127.0.0.1 ping | grep -q PONG"]

    def liveness_without_auth(docs):
        _sts, c = redis_container(docs)
        c["livenessProbe"]["exec"]["command"] = [
            "sh", "-c", "redis-cli -h 127.0.0.1 ping | grep -q -e PONG -e LOADING"]

    return [flower_has_no_password, beat_password_optional, api_wrong_key,
            placement_url_without_password, queries_url_before_password,
            api_url_only_from_settings, redis_without_requirepass, redis_without_password,
            readiness_without_auth, liveness_without_auth]


@pytest.mark.parametrize("mutate", _redis_auth_mutants(), ids=lambda f: f.__name__)
def test_redis_auth_checker_catches(mutate):
    docs = copy.deepcopy(base_docs())
    assert redis_auth_violations(docs) == []
    mutate(docs)
    assert redis_auth_violations(docs), f"{mutate.__name__} was not detected"


def _need_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        _tool_missing(f"{name} is not installed")
    return path


def test_deployed_redis_command_probes_and_urls_against_a_real_redis_server(tmp_path):
    """Runs redis-server with the manifest's own arguments (the kubelet's $(VAR) expansion
    applied; only the data dir and the port are local), then the manifest's probes and every
    pod's VCM_REDIS_URL against it."""
    server = _need_tool("redis-server")
    _need_tool("redis-cli")
    docs = base_docs()
    password = secrets.token_hex(16)
    given = {**SAMPLE_SECRETS, REDIS_SECRET: {REDIS_SECRET_KEY: password}}
    _sts, c = redis_container(docs)
    env = resolve_env(docs, c, given)
    words = [k8s_expand(str(t), env) for t in list(c["command"]) + list(c.get("args", []))]
    assert words[0] == "redis-server"
    words[0] = server
    words[words.index("--dir") + 1] = str(tmp_path)  # the PVC mount in the pod
    port = free_port()
    words += ["--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
    proc = subprocess.Popen(words, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        anonymous = redis.Redis(port=port, socket_timeout=5)

        def anonymous_ping() -> str:
            assert proc.poll() is None, "redis-server exited"
            try:
                return "PONG" if anonymous.ping() else "?"
            except redis.AuthenticationError as e:
                return f"refused: {e}"

        answer = wait_for(anonymous_ping, what=f"redis-server on port {port}")
        assert answer.startswith("refused"), "Redis answers a client without the password"
        assert redis.Redis(port=port, password=password).ping()

        base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for name in ("readinessProbe", "livenessProbe"):
            cmd = [str(x).replace("redis-cli", f"redis-cli -p {port}")
                   for x in c[name]["exec"]["command"]]

            def probe(extra: dict[str, str], cmd=cmd) -> int:
                return subprocess.run(cmd, env={**base_env, **extra}, capture_output=True,
                                      timeout=30, check=False).returncode

            assert probe(env) == 0, f"{name} fails with the right password"
            assert probe({}) != 0, f"{name} passes without a password"
            assert probe({**env, "REDIS_PASSWORD": "wrong"}) != 0, \
                f"{name} passes with a wrong password"

        for w, _s, app in all_containers(docs):
            if not is_app_container(app):
                continue
            url = urlsplit(resolve_env(docs, app, given)["VCM_REDIS_URL"])
            assert (url.hostname, url.port) == REDIS_SERVICE
            local = url._replace(netloc=url.netloc.replace(
                f"{url.hostname}:{url.port}", f"127.0.0.1:{port}")).geturl()
            client = redis.Redis.from_url(local, socket_timeout=5)
            assert client.ping(), w["metadata"]["name"]
            client.close()
            # the Celery broker connection (kombu) authenticates with the same URL
            with kombu.Connection(local, transport_options={"max_retries": 1}) as conn:
                q = conn.SimpleQueue(f"vcm-deploy-test-{w['metadata']['name']}")
                q.put({"from": w["metadata"]["name"]})
                assert q.get(timeout=5).payload == {"from": w["metadata"]["name"]}
                q.clear()
                q.close()
    finally:
        proc.kill()
        proc.wait(10)


# --------------------------------------------------------------------------- network policy


def test_network_policy_admits_to_redis_only_our_pods_and_client_namespaces():
    docs = base_docs()
    assert network_violations(docs) == []
    redis_in = admitted(docs, one(docs, "StatefulSet", "vcm-redis"), "redis", 6379)
    assert redis_in == {"vcm-placement", "vcm-queries", "vcm-beat", "vcm-api", "vcm-flower",
                        "vcm-controller", "client job step"}
    api_in = admitted(docs, one(docs, "Deployment", "vcm-api"), "http", 8080)
    assert api_in == {"client job step", "api-only namespace"}
    for p in find(docs, "NetworkPolicy"):
        assert p["spec"]["policyTypes"] == ["Ingress"], "egress stays open (Kubernetes API)"


def _network_mutants():
    def policy(docs, name):
        return one(docs, "NetworkPolicy", name)

    def no_redis_policy(docs):
        docs.remove(policy(docs, "vcm-redis"))

    def any_pod_of_our_namespace(docs):
        for peer in policy(docs, "vcm-redis")["spec"]["ingress"][0]["from"]:
            if "podSelector" in peer:
                peer["podSelector"] = {}

    def any_pod_with_our_name(docs):
        for peer in policy(docs, "vcm-redis")["spec"]["ingress"][0]["from"]:
            if "podSelector" in peer:
                peer["podSelector"].pop("matchExpressions")

    def every_namespace(docs):
        for peer in policy(docs, "vcm-redis")["spec"]["ingress"][0]["from"]:
            if "namespaceSelector" in peer:
                peer["namespaceSelector"] = {}

    def from_anywhere(docs):
        del policy(docs, "vcm-redis")["spec"]["ingress"][0]["from"]

    def ip_block(docs):
        policy(docs, "vcm-redis")["spec"]["ingress"][0]["from"].append(
            {"ipBlock": {"cidr": "10.0.0.0/8"}})

    def wrong_port(docs):
        policy(docs, "vcm-redis")["spec"]["ingress"][0]["ports"] = [{"port": 6380}]

    def flower_left_out(docs):
        for peer in policy(docs, "vcm-redis")["spec"]["ingress"][0]["from"]:
            for e in peer.get("podSelector", {}).get("matchExpressions", []):
                e["values"].remove("flower")

    def api_opened_to_all(docs):
        policy(docs, "vcm-api")["spec"]["ingress"] = [{}]

    def api_policy_missing(docs):
        docs.remove(policy(docs, "vcm-api"))

    return [no_redis_policy, any_pod_of_our_namespace, any_pod_with_our_name, every_namespace,
            from_anywhere, ip_block, wrong_port, flower_left_out, api_opened_to_all,
            api_policy_missing]


@pytest.mark.parametrize("mutate", _network_mutants(), ids=lambda f: f.__name__)
def test_network_checker_catches(mutate):
    docs = copy.deepcopy(base_docs())
    assert network_violations(docs) == []
    mutate(docs)
    assert network_violations(docs), f"{mutate.__name__} was not detected"


# --------------------------------------------------------------------------- pools


def test_pools_configmap_is_a_valid_pools_file():
    cm = one(base_docs(), "ConfigMap", "vcm-pools")
    data = yaml.safe_load(cm["data"]["pools.yaml"])
    assert set(data) == {"pools"}
    pools = data["pools"]
    assert len(pools) >= 4
    assert len({p["vcenter"] for p in pools}) >= 3
    assert len({p["name"] for p in pools}) == len(pools), "duplicate pool names"
    seen: set[tuple[str, str]] = set()
    for p in pools:
        assert POOL_REQUIRED <= set(p) <= POOL_KEYS, f"{p['name']}: keys {sorted(p)}"
        for k in ("vcpus", "memory", "storage"):
            assert isinstance(p[k], int) and p[k] > 0, f"{p['name']}.{k}"
        assert p.get("vcpu-overcommit", 1.0) >= 1.0
        assert p["networks"], f"{p['name']}: no port groups"
        for n in p["networks"]:
            assert NETWORK_REQUIRED <= set(n) <= NETWORK_KEYS, f"{p['name']}: {sorted(n)}"
            key = (p["vcenter"], n["port-group"])
            assert key not in seen, f"port group {key} listed twice in one vCenter"
            seen.add(key)
            net = ipaddress.ip_network(n["cidr"])
            assert ipaddress.ip_address(n["gateway"]) in net
            assert isinstance(n["vlan"], int) and 1 <= n["vlan"] <= 4094


# --------------------------------------------------------------------------- rendered output


def _kustomize_build() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    kustomize = shutil.which("kustomize")
    if kustomize:
        cmd = [kustomize, "build", str(DEPLOY)]
    elif kubectl:
        cmd = [kubectl, "kustomize", str(DEPLOY)]
    else:
        _tool_missing("neither kustomize nor kubectl is installed")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def test_kustomize_build_renders_valid_manifests_keeping_the_invariants():
    docs = _kustomize_build()
    assert len(docs) == len(base_docs())
    for d in docs:
        assert_schema_valid(d, "kustomize build")
        assert COMMON_LABELS.items() <= d["metadata"].get("labels", {}).items()
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding",
                             "CustomResourceDefinition"):
            assert d["metadata"]["namespace"] == NAMESPACE
    for w in workloads(docs):
        assert COMMON_LABELS.items() <= w["spec"]["selector"]["matchLabels"].items()
    assert placement_violations(docs) == []
    assert beat_violations(docs) == []
    assert rbac_violations(docs) == []
    assert container_violations(docs) == []
    assert redis_auth_violations(docs) == []
    # kustomize adds the common label to NetworkPolicy selectors too: still exactly our pods
    assert network_violations(docs) == []


def test_an_overlay_that_only_changes_the_namespace_keeps_the_mirror_and_its_rbac(tmp_path):
    """The mirror's namespace comes from the placement pod's own: an overlay setting
    `namespace:` alone moves the Role, its binding and the mirror ConfigMap together."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        _tool_missing("kubectl is not installed")
    shutil.copytree(DEPLOY, tmp_path / "base")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "ci-elsewhere", "resources": ["base"]}))
    out = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    ns, name = mirror_configmap(docs).split("/")
    assert ns == "ci-elsewhere" and name == LEDGER_CONFIGMAP
    for role in find(docs, "Role"):  # the mirror's, and the controller's (its Leases too)
        assert role["metadata"]["namespace"] == ns
    (role,) = [r for r in find(docs, "Role") if r["metadata"]["name"] != CONTROLLER]
    assert any(name in r.get("resourceNames", []) for r in role["rules"])
    for binding in find(docs, "RoleBinding"):
        assert binding["metadata"]["namespace"] == ns
        assert {x["namespace"] for x in binding["subjects"]} == {ns}
    assert rbac_violations(docs) == []
    assert redis_auth_violations(docs) == []
    assert {p["metadata"]["namespace"] for p in find(docs, "NetworkPolicy")} == {ns}
    assert network_violations(docs) == []


def test_deployed_redis_evicts_nothing_and_refuses_writes_when_full(tmp_path):
    """With the manifest's memory policy (its maxmemory scaled down to 8 MB), a flood of task
    results (with a TTL, like released-lease records) fills Redis and then is refused: nothing
    is evicted, neither the ledger and the queues (no TTL) nor what has a TTL; reads and
    deletes still work, Redis stays up, and writes resume once memory is freed.
    (tests/workers/test_pressure.py runs the whole service on it.)"""
    server = _need_tool("redis-server")
    docs = base_docs()
    password = secrets.token_hex(16)
    given = {**SAMPLE_SECRETS, REDIS_SECRET: {REDIS_SECRET_KEY: password}}
    _sts, c = redis_container(docs)
    env = resolve_env(docs, c, given)
    words = [k8s_expand(str(t), env) for t in list(c["command"]) + list(c.get("args", []))]
    assert words[words.index("--maxmemory-policy") + 1] == "noeviction"
    assert words[words.index("--maxmemory") + 1] == "640mb"
    words[0] = server
    words[words.index("--dir") + 1] = str(tmp_path)
    words[words.index("--maxmemory") + 1] = "8mb"
    words[words.index("--appendonly") + 1] = "no"
    port = free_port()
    words += ["--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
    proc = subprocess.Popen(words, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port, password=password, socket_timeout=5)
        wait_for(r.ping, what="redis-server")
        lease = "x" * 1500
        pipe = r.pipeline()
        for i in range(500):  # the ledger: no TTL
            pipe.hset("vcm:leases", f"lease-{i}", lease)
        pipe.rpush("placement", *[f"task-{i}" for i in range(100)])
        pipe.execute()
        stored = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(20000):  # ~34 MB of results, each with a TTL: more than fits
                r.set(f"celery-task-meta-{i}", lease, ex=86400 if i % 2 else 300)
                stored += 1
        assert proc.poll() is None
        assert 0 < stored < 20000
        assert r.hlen("vcm:leases") == 500 and r.llen("placement") == 100
        kept = sum(1 for _ in r.scan_iter("celery-task-meta-*", count=1000))
        assert kept == stored
        assert int(r.info("stats")["evicted_keys"]) == 0
        assert r.get("celery-task-meta-0") == lease.encode()  # reads work while full
        r.delete(*[f"celery-task-meta-{i}" for i in range(stored)])  # so do deletes
        assert r.set("celery-task-meta-again", lease, ex=300)
    finally:
        proc.kill()
        proc.wait(10)


def test_queries_worker_reads_vcenter_pins_from_an_optional_configmap(tmp_path):
    """VCM_VCENTER_KNOWN_HOSTS on vcm-queries names a file in the directory where the optional
    ConfigMap vcm-vcenter-tls is mounted, and the example of that ConfigMap is a known-hosts
    file the service reads (it pins nothing until edited)."""
    from workers.adapters.vcenter.access import plan
    from workers.settings import Settings

    docs = base_docs()
    queries = one(docs, "Deployment", "vcm-queries")
    spec = pod_spec(queries)
    (c,) = containers(spec)
    env = {e["name"]: e for e in c["env"]}
    path = env["VCM_VCENTER_KNOWN_HOSTS"]["value"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    mount = mounts[posixpath.dirname(path)]
    assert "subPath" not in mount, "subPath mounts never update"
    volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
    assert volume["configMap"] == {"name": "vcm-vcenter-tls", "optional": True}
    assert "VCM_VCENTER_INSECURE" not in env

    examples = {d["metadata"]["name"]: d for _, d in manifest_docs(example_files())}
    example = examples["vcm-vcenter-tls"]
    assert example["kind"] == "ConfigMap"
    known_hosts = tmp_path / posixpath.basename(path)
    known_hosts.write_text(example["data"][known_hosts.name])
    access = plan(["vc1.example.com"], Settings.from_env({
        "VCM_VCENTER_CREDENTIALS": "vc1.example.com=u:p",
        "VCM_VCENTER_KNOWN_HOSTS": str(known_hosts)}))
    assert access.refused == {}
    assert access.access["vc1.example.com"].trust.kind == "ca"
