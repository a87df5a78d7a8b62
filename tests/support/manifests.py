"""The manifests in deploy/ read as the kubelet reads them: the kustomize base and its examples
as YAML documents, the pod specs and containers of their workloads, and a container's
environment built from its ConfigMaps and Secrets (with `$(VAR)` expanded)."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

import yaml

from tests.support.procs import ROOT
from tests.support.yaml_files import yaml_documents

DEPLOY = ROOT / "deploy"
EXAMPLES = DEPLOY / "examples"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml_documents(path) if d is not None]


def kustomization() -> dict[str, Any]:
    with KUSTOMIZATION.open() as fh:
        return yaml.safe_load(fh)


def base_files() -> list[Path]:
    return [DEPLOY / r for r in kustomization().get("resources", [])]


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yml"))


def manifest_docs(files: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in files:
        for d in load_yaml_docs(f):
            out.append((str(f.relative_to(ROOT)), d))
    return out


def base_docs() -> list[dict[str, Any]]:
    return [d for _, d in manifest_docs(base_files())]


def find(docs, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs, kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec", {})
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"].get("spec", {})
    if kind in WORKLOAD_KINDS:
        return doc["spec"]["template"].get("spec", {})
    return None


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


# Redis's password, as the pods get it --------------------------------------------------------
REDIS_SECRET = "vcm-redis-auth"
REDIS_SECRET_KEY = "password"
# What the checkers put in place of the Secret's value (a generated password is hex, URL-safe).
SAMPLE_PASSWORD = "0123456789abcdef0123456789abcdef"
# Stand-in values for the other Secrets the pods reference.
SAMPLE_SECRETS = {
    REDIS_SECRET: {REDIS_SECRET_KEY: SAMPLE_PASSWORD},
    "vcm-api-tokens": {"tokens": "ci-bot:t0ken"},
    "vcm-flower-auth": {"basic-auth": "admin:pw"},
}

_K8S_VAR = re.compile(r"\$\$|\$\(([-._a-zA-Z0-9]+)\)")


def k8s_expand(value: str, env: dict[str, str]) -> str:
    """Expand `$(VAR)` the way the kubelet does in env values, command and args: from variables
    defined earlier; an undefined reference stays as written, and `$$` is a literal `$`."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _K8S_VAR.sub(sub, value)


def resolve_env(docs, c: dict[str, Any], given: dict[str, dict[str, str]] | None = None,
                ) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps first, then
    `env` in order, each value expanded from what is defined before it. Secrets come from
    `given` (default SAMPLE_SECRETS); an optional reference to a missing one stays unset."""
    given = SAMPLE_SECRETS if given is None else given
    configmaps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in find(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(configmaps.get(src["configMapRef"]["name"], {}))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = k8s_expand(str(e["value"]), env)
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            if ref["key"] in given.get(ref["name"], {}):
                env[e["name"]] = given[ref["name"]][ref["key"]]
    return env


def is_redis_container(c: dict[str, Any]) -> bool:
    return posixpath.basename(c.get("image", "").split("@")[0].rsplit(":", 1)[0]) == "redis"


def redis_container(docs) -> tuple[dict[str, Any], dict[str, Any]]:
    sts = one(docs, "StatefulSet", "vcm-redis")
    (c,) = [c for c in containers(pod_spec(sts)) if is_redis_container(c)]
    return sts, c


# The workers' liveness probes ----------------------------------------------------------------
POD_NAME = "vcm-placement-5d8f7c9b6-x2k4q"  # a pod's name: its hostname, Celery's %h


def worker_liveness(docs, deployment: str) -> tuple[list[str], str]:
    """The exec command of a worker Deployment's liveness probe, and the liveness file its
    worker writes: VCM_WORKER_LIVENESS_FILE (the container's environment, else the default)
    with the node name of its `-n` expanded as Celery does, for a pod named POD_NAME."""
    from celery.utils.nodenames import host_format, node_format

    from workers.settings import Settings

    (c,) = containers(pod_spec(one(docs, "Deployment", deployment)))
    words = [str(w) for w in list(c.get("command", [])) + list(c.get("args", []))]
    node = host_format(words[words.index("-n") + 1], POD_NAME)
    settings = Settings.from_env(resolve_env(docs, c))
    assert settings.worker_liveness_file, f"{deployment}: VCM_WORKER_LIVENESS_FILE is off"
    return list(c["livenessProbe"]["exec"]["command"]), node_format(
        settings.worker_liveness_file, node)
