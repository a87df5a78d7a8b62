"""CustomResourceDefinitions as the test apiserver serves them: read from manifests (by
default every file in deploy/crds/), one served version each."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.yaml_files import yaml_documents

DEPLOY_CRDS = Path(__file__).resolve().parents[3] / "deploy" / "crds"


@dataclass(frozen=True)
class CustomResourceDefinition:
    name: str  # <plural>.<group>
    group: str
    version: str
    kind: str
    list_kind: str
    plural: str
    singular: str
    namespaced: bool
    schema: dict[str, Any]  # the version's openAPIV3Schema
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    printer_columns: tuple[dict[str, Any], ...] = ()
    selectable_fields: tuple[str, ...] = ()
    builtin: bool = False  # a built-in kind: a body may leave out kind and apiVersion
    generation: bool = True  # metadata.generation is set and counts spec changes
    name_rule: str = "subdomain"  # metadata.name: "subdomain", "dns1035" (label) or "path"
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def field_labels(self) -> tuple[str, ...]:
        """The fields a field selector may name (customResourceStrategy.GetAttrs)."""
        base = ("metadata.name", "metadata.namespace") if self.namespaced else ("metadata.name",)
        return base + self.selectable_fields

    @classmethod
    def from_manifest(cls, doc: dict[str, Any]) -> CustomResourceDefinition:
        if doc.get("apiVersion") != "apiextensions.k8s.io/v1" or doc.get("kind") != \
                "CustomResourceDefinition":
            raise ValueError(f"not an apiextensions.k8s.io/v1 CustomResourceDefinition: "
                             f"{doc.get('apiVersion')}/{doc.get('kind')}")
        spec = doc["spec"]
        names = spec["names"]
        served = [v for v in spec["versions"] if v.get("served")]
        if len(served) != 1:
            raise ValueError(f"{doc['metadata']['name']}: this test apiserver serves exactly "
                             f"one version per CRD, found {len(served)}")
        version = served[0]
        expected = f"{names['plural']}.{spec['group']}"
        if doc["metadata"]["name"] != expected:
            raise ValueError(f"CRD name {doc['metadata']['name']!r} must be {expected!r}")
        return cls(
            name=expected,
            group=spec["group"],
            version=version["name"],
            kind=names["kind"],
            list_kind=names.get("listKind", names["kind"] + "List"),
            plural=names["plural"],
            singular=names.get("singular", names["kind"].lower()),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            schema=copy.deepcopy(version["schema"]["openAPIV3Schema"]),
            status_subresource="status" in (version.get("subresources") or {}),
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            selectable_fields=tuple(f["jsonPath"].lstrip(".")
                                    for f in version.get("selectableFields") or ()),
            manifest=copy.deepcopy(doc),
        )


def load_crds(paths: Iterable[str | Path]) -> list[CustomResourceDefinition]:
    """Every CustomResourceDefinition in these files (other documents are skipped)."""
    out = []
    for path in paths:
        for doc in yaml_documents(path):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                out.append(CustomResourceDefinition.from_manifest(doc))
    return out


def deploy_crds() -> list[CustomResourceDefinition]:
    """The CRDs of deploy/crds/."""
    return load_crds(sorted(DEPLOY_CRDS.glob("*.yaml")))


# Core v1 Events, which controllers post (kopf does, for each handler): stored and listed like
# any object (kind and apiVersion default to the URL's, as for every built-in kind), without a
# schema (what an Event holds is not checked here), field-selectable as
# kube-apiserver allows (pkg/registry/core/event/strategy.go: involvedObject.*, reason,
# reportingComponent, source, type).
CORE_EVENTS = CustomResourceDefinition(
    name="events", group="", version="v1", kind="Event", list_kind="EventList",
    plural="events", singular="event", namespaced=True,
    schema={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    short_names=("ev",),
    printer_columns=(
        {"name": "Last Seen", "type": "date", "jsonPath": ".lastTimestamp"},
        {"name": "Type", "type": "string", "jsonPath": ".type"},
        {"name": "Reason", "type": "string", "jsonPath": ".reason"},
        {"name": "Object", "type": "string", "jsonPath": ".involvedObject.name"},
        {"name": "Message", "type": "string", "jsonPath": ".message"},
    ),
    selectable_fields=tuple(f"involvedObject.{f}" for f in (
        "kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath"))
    + ("reason", "reportingComponent", "source", "type"),
    builtin=True,
    generation=False,
)
