"""CustomResourceDefinition objects (apiextensions.k8s.io/v1) as the test apiserver keeps
them: a created or updated one is checked and registered, its kind served at once; a deleted
one takes its custom resources with it. apiextensions-apiserver's controllers are simulated
as instant, inside the request:

- naming and establishing (pkg/controller/status/naming_controller.go,
  pkg/controller/establish): `status.acceptedNames` are the spec's names, and the conditions
  NamesAccepted (reason NoConflicts) and Established (reason InitialNamesAccepted) are True;
  `status.storedVersions` lists the storage version;
- deletion (pkg/registry/customresourcedefinition/etcd.go Delete, pkg/controller/finalizer):
  the definition gets the finalizer `customresourcecleanup.apiextensions.k8s.io`, its custom
  resources are deleted (those with finalizers of their own keep it until they are gone),
  then it is removed and its kind is no longer served; meanwhile a create of its kind is 405
  ("create not allowed while custom resource definition is terminating",
  pkg/apiserver/customresource_handler.go as of 1.32, the version `/version` reports; 1.34
  answers 403 Forbidden with that message, from an admission wrapper that also refuses a
  server-side apply that would create).

A definition is refused 422 when its name is not `<spec.names.plural>.<spec.group>`
(pkg/apis/apiextensions/validation: `must be spec.names.plural+"."+spec.group`), and, a limit
of this server, when it does not serve exactly one version.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.support.kube.builtin import APIEXTENSIONS
from tests.support.kube.crd import CustomResourceDefinition
from tests.support.kube.errors import ApiError, invalid, now

CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"


def _invalid(name: str, field: str, message: str) -> ApiError:
    return invalid(name, [("FieldValueInvalid", field, message)], "CustomResourceDefinition",
                   APIEXTENSIONS)


def definition_of(obj: dict[str, Any]) -> CustomResourceDefinition:
    """The definition a stored CustomResourceDefinition object makes; 422 when it makes none."""
    name = obj["metadata"].get("name", "")
    spec = obj.get("spec")
    names = spec.get("names") if isinstance(spec, dict) else None
    if not isinstance(names, dict) or not names.get("plural") or not spec.get("group"):
        raise invalid(name, [("FieldValueRequired", "spec.names.plural",
                              "Required value"),
                             ("FieldValueRequired", "spec.group", "Required value")],
                      "CustomResourceDefinition", APIEXTENSIONS)
    if name != f"{names['plural']}.{spec['group']}":
        raise _invalid(name, "metadata.name",
                       f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
    try:
        return CustomResourceDefinition.from_manifest(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _invalid(name, "spec.versions", f"Invalid value: {exc}") from exc


def key_of(obj: dict[str, Any]) -> tuple[str, str]:
    """(group, plural) of a stored definition object (its name is `<plural>.<group>`)."""
    plural, _, group = obj["metadata"]["name"].partition(".")
    return group, plural


def established(definition: CustomResourceDefinition,
                old_status: dict[str, Any] | None) -> dict[str, Any]:
    """The status the naming and establishing controllers give a definition (an unchanged
    one keeps its status, transition times included)."""
    names = definition.manifest["spec"]["names"]
    accepted = {"kind": definition.kind, "listKind": definition.list_kind,
                "plural": definition.plural, "singular": definition.singular}
    for key in ("shortNames", "categories"):
        if names.get(key):
            accepted[key] = list(names[key])
    stored = [v["name"] for v in definition.manifest["spec"]["versions"] if v.get("storage")]
    if old_status and old_status.get("acceptedNames") == accepted and \
            old_status.get("storedVersions") == stored:
        return copy.deepcopy(old_status)
    at = now()
    return {"acceptedNames": accepted, "storedVersions": stored, "conditions": [
        {"type": "NamesAccepted", "status": "True", "lastTransitionTime": at,
         "reason": "NoConflicts", "message": "no conflicts found"},
        {"type": "Established", "status": "True", "lastTransitionTime": at,
         "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
    ]}


def preloaded(definition: CustomResourceDefinition) -> dict[str, Any]:
    """The object of a definition the server starts with (as if created from its file)."""
    obj = copy.deepcopy(definition.manifest)
    meta = obj.get("metadata") or {}
    obj["metadata"] = {k: meta[k] for k in ("name", "labels", "annotations") if meta.get(k)}
    obj["metadata"]["generation"] = 1
    obj["status"] = established(definition, None)
    return obj


def terminating_status(status: dict[str, Any] | None) -> dict[str, Any]:
    """The status of a definition marked for deletion (the Terminating condition)."""
    out = copy.deepcopy(status or {})
    conditions = [c for c in out.get("conditions") or [] if c.get("type") != "Terminating"]
    conditions.append({"type": "Terminating", "status": "True", "lastTransitionTime": now(),
                       "reason": "InstanceDeletionPending",
                       "message": "CustomResourceDefinition marked for deletion; "
                                  "CustomResource deletion will begin soon"})
    out["conditions"] = conditions
    return out
