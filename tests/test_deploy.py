"""Offline checks of the Kubernetes manifests in deploy/ (issue 5, point 6).

Every manifest (the kustomize base and deploy/examples) is validated against the Kubernetes JSON
schemas shipped with `kubernetes-validate`, in strict mode, and the invariants the service relies
on are asserted: one placement consumer (replicas 1, Recreate, `-Q placement --concurrency 1`),
exactly one beat, a Role scoped to the ledger mirror ConfigMaps, resources and non-root security
contexts on every container, and a usable pools file.

The invariant checkers return lists of violations so that they can also be run against mutated
copies of the manifests: the `*_catches_*` tests prove that the checks would actually fail if
someone, say, scaled the placement worker to two replicas.
"""

from __future__ import annotations

import copy
import ipaddress
import posixpath
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
EXAMPLES = DEPLOY / "examples"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"

NAMESPACE = "vsphere-capacity-manager"
APP_IMAGE = "quay.io/vcm/vsphere-capacity-manager"
COMMON_LABELS = {"app.kubernetes.io/name": "vsphere-capacity-manager"}
# Newest Kubernetes schema version that the installed kubernetes-validate ships.
K8S_VERSION = kubernetes_validate.latest_version()

LEDGER_CONFIGMAP = "vcm-ledger"
MIRROR_CONFIGMAPS = {LEDGER_CONFIGMAP} | {f"{LEDGER_CONFIGMAP}-{i}" for i in range(16)}

EXPECTED_SETTINGS = {
    "VCM_REDIS_URL": "redis://vcm-redis:6379/0",
    "VCM_POOLS_FILE": "/etc/vcm/pools.yaml",
    "VCM_LEASE_TTL": "24h",
    "VCM_REAP_INTERVAL": "5m",
    "VCM_ROLLUP_INTERVAL": "60s",
    "VCM_STRATEGY": "least-utilized",
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

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


# --------------------------------------------------------------------------- loading


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def _kustomization() -> dict[str, Any]:
    with KUSTOMIZATION.open() as fh:
        return yaml.safe_load(fh)


def _base_files() -> list[Path]:
    return [DEPLOY / r for r in _kustomization().get("resources", [])]


def _example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yml"))


def _docs(files: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in files:
        for d in _load_yaml_docs(f):
            out.append((str(f.relative_to(ROOT)), d))
    return out


def base_docs() -> list[dict[str, Any]]:
    return [d for _, d in _docs(_base_files())]


def _doc_id(item: tuple[str, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


ALL_DOCS = _docs(_base_files() + _example_files()) if KUSTOMIZATION.exists() else []


# --------------------------------------------------------------------------- helpers


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


def workloads(docs) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") in WORKLOAD_KINDS]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


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


def rbac_violations(docs) -> list[str]:
    v: list[str] = []
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        if find(docs, kind):
            v.append(f"no {kind} is needed; found {len(find(docs, kind))}")
    roles = find(docs, "Role")
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
    bindings = find(docs, "RoleBinding")
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


# --------------------------------------------------------------------------- kustomization


def test_kustomization_lists_exactly_the_base_manifests():
    k = _kustomization()
    assert k["apiVersion"].startswith("kustomize.config.k8s.io/")
    assert k["kind"] == "Kustomization"
    resources = k.get("resources", [])
    assert len(resources) == len(set(resources)), "duplicate entries in resources"
    missing = [r for r in resources if not (DEPLOY / r).is_file()]
    assert not missing, f"kustomization lists missing files: {missing}"
    on_disk = {
        p.name for p in list(DEPLOY.glob("*.yaml")) + list(DEPLOY.glob("*.yml"))
        if p.name not in ("kustomization.yaml", "kustomization.yml")
    }
    unlisted = on_disk - set(resources)
    assert not unlisted, f"deploy/ manifests not listed in kustomization resources: {unlisted}"
    assert not any(r.startswith("examples") for r in resources), "examples must not be in base"


def test_kustomization_namespace_labels_and_image():
    k = _kustomization()
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
    examples = {d["metadata"]["name"]: d for _, d in _docs(_example_files())}
    assert "vcm-api-tokens" in examples
    secret = examples["vcm-api-tokens"]
    assert secret["kind"] == "Secret"
    tokens = secret["stringData"]["tokens"]
    for entry in tokens.split(","):
        parts = entry.split(":")
        assert len(parts) in (2, 3) and all(parts[:2]), f"bad token entry {entry!r}"
        assert len(parts) == 2 or parts[2] == "admin"
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
    if doc["kind"] != "Namespace":
        assert ns == NAMESPACE, f"{path}: namespace {ns!r}"


def test_there_are_manifests_to_validate():
    kinds = {d["kind"] for _, d in ALL_DOCS}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service",
            "Deployment", "StatefulSet", "Secret"} <= kinds


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


def test_placement_liveness_pings_its_own_node():
    dep = one(base_docs(), "Deployment", "vcm-placement")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    probe = c["livenessProbe"]
    words = argv({"command": probe["exec"]["command"]})
    (sub, opts), = celery_invocations(words)
    assert sub == "inspect" and opts[0] == "ping"
    assert option(opts, "-d", "--destination") == "placement@$HOSTNAME"
    assert words[:2] == ["sh", "-c"], "$HOSTNAME is expanded only by a shell"
    assert probe["timeoutSeconds"] >= 30 and probe["failureThreshold"] >= 3


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
    role = find(base_docs(), "Role")[0]
    unrestricted = [r for r in role["rules"] if not r.get("resourceNames")]
    assert [r["verbs"] for r in unrestricted] == [["create"]]


def _rbac_mutants():
    def rule(docs):
        return find(docs, "Role")[0]["rules"]

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

    return [wildcard_verb, wildcard_resource, secrets, no_resource_names, delete_verb,
            list_unrestricted, foreign_name, cluster_role]


@pytest.mark.parametrize("mutate", _rbac_mutants(), ids=lambda f: f.__name__)
def test_rbac_checker_catches(mutate):
    docs = copy.deepcopy(base_docs())
    mutate(docs)
    assert rbac_violations(docs), f"{mutate.__name__} was not detected"


def test_only_placement_gets_an_api_token():
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
    assert names == {"vcm-placement", "vcm-queries", "vcm-beat", "vcm-api", "vcm-flower"}
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


def test_api_and_flower_probes_ports_and_optional_secrets():
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
    assert ref == {"name": "vcm-flower-auth", "key": "basic-auth", "optional": True}

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
        pytest.skip("neither kustomize nor kubectl is installed")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def test_kustomize_build_renders_valid_manifests_keeping_the_invariants():
    docs = _kustomize_build()
    assert len(docs) == len(base_docs())
    for d in docs:
        assert_schema_valid(d, "kustomize build")
        assert COMMON_LABELS.items() <= d["metadata"].get("labels", {}).items()
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == NAMESPACE
    for w in workloads(docs):
        assert COMMON_LABELS.items() <= w["spec"]["selector"]["matchLabels"].items()
    assert placement_violations(docs) == []
    assert beat_violations(docs) == []
    assert rbac_violations(docs) == []
    assert container_violations(docs) == []


def test_an_overlay_that_only_changes_the_namespace_keeps_the_mirror_and_its_rbac(tmp_path):
    """The mirror's namespace comes from the placement pod's own: an overlay setting
    `namespace:` alone moves the Role, its binding and the mirror ConfigMap together."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed")
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
    role = find(docs, "Role")[0]
    assert role["metadata"]["namespace"] == ns
    assert any(name in r.get("resourceNames", []) for r in role["rules"])
    binding = find(docs, "RoleBinding")[0]
    assert binding["metadata"]["namespace"] == ns
    assert {x["namespace"] for x in binding["subjects"]} == {ns}
    assert rbac_violations(docs) == []
