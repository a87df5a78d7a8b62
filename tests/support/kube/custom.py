"""Custom resources, served generically from their CustomResourceDefinitions, as
kube-apiserver's apiextensions-apiserver serves them (pkg/registry/customresource, the generic
registry store of k8s.io/apiserver, and the API conventions).

- Paths: `/apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>[/status]]` for namespaced
  kinds (`/apis/<group>/<version>/<plural>` lists and watches every namespace), or
  `/apis/<group>/<version>/<plural>[/<name>[/status]]` for cluster-scoped ones.
- Create: `generateName` (5 random characters, retried on a clash as the registry does),
  uid, creationTimestamp, generation 1, resourceVersion; the namespace must exist (404) and
  not be terminating (403, as the NamespaceLifecycle admission answers); the status is dropped
  when the status subresource is on; 409 AlreadyExists.
- Every write: nulls that are not nullable dropped, undeclared fields pruned (with
  `fieldValidation=Strict`: 400 `strict decoding error: unknown field "spec.x"`; `Warn`, the
  default: a `Warning` header per field; `Ignore`: silent), schema defaults applied, then
  validated: 422 Invalid with a cause per field (schema.py), metadata too (name, labels,
  annotations, finalizers, ownerReferences).
- Update (PUT) needs metadata.resourceVersion (422 without, as custom resources allow no
  unconditional update) and 409 Conflict when it is stale; merge and JSON patches (strategic
  merge is 415, as for every custom resource) and server-side apply patches (simplified: see
  `_apply_patch`).
- With the status subresource, the main resource ignores changes to `status` and `/status`
  ignores everything but `status`; metadata.generation counts changes outside metadata and
  status (a status update never bumps it).
- Delete: an object with finalizers gets deletionTimestamp (and generation + 1) and stays
  until an update removes the last finalizer, which deletes it; without finalizers it is gone
  (answered with a Status). Delete preconditions (uid, resourceVersion), propagationPolicy
  (Orphan and Foreground add their finalizers, handled by the garbage collector below), dryRun,
  and deletecollection with label and field selectors.
- The garbage collector is simulated as instant: after every write, an object whose owners
  (ownerReferences to kinds this server serves) are all gone is deleted, dangling references
  next to a live owner are removed, orphaned dependents lose their reference, and a
  foreground deletion completes once no dependent is left. Owners of kinds this server does
  not serve are taken to exist.
- List: label and field selectors (metadata.name, metadata.namespace, and the CRD's
  selectableFields), `limit`/`continue` paging (the pages are cut from the current state),
  the list's resourceVersion; watch: watch.py.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import random
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from tests.support.kube.apiextensions import (
    CLEANUP_FINALIZER,
    definition_of,
    established,
    key_of,
    preloaded,
    terminating_status,
)
from tests.support.kube.builtin import (
    CRD_KIND,
    annotations_count_in_generation,
    convert,
    list_rule,
)
from tests.support.kube.configmaps import DNS1123_SUBDOMAIN, MAX_ANNOTATIONS_BYTES
from tests.support.kube.core import WatchAnswer
from tests.support.kube.crd import CustomResourceDefinition
from tests.support.kube.errors import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    invalid,
    method_not_allowed,
    not_found,
    now,
    qualified,
)
from tests.support.kube.namespaces import Namespaces
from tests.support.kube.patches import (
    STRATEGIC,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from tests.support.kube.routing import RequestInfo
from tests.support.kube.schema import FieldError, default, prune, prune_nulls, validate
from tests.support.kube.selectors import (
    label_key_problem,
    label_value_problem,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from tests.support.kube.watch import Watcher

Answer = tuple[int, dict[str, Any], dict[str, str]]
FINALIZER_ORPHAN = "orphan"
FINALIZER_FOREGROUND = "foregroundDeletion"
# ObjectMeta fields a client may send; anything else in metadata is an unknown field
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields"})
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery utilrand alphanumerics
MAX_GENERATE_NAME_ATTEMPTS = 8  # registry.maxNameGenerationCreateAttempts
_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
                "application/apply-patch+yaml")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _subdomain_problem(name: str) -> str | None:
    if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        return ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character "
                "(e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*"
                "[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
    return None


def _name_problem(name: str, rule: str) -> str | None:
    """What is wrong with an object's name under its kind's rule (apimachinery
    validation.IsDNS1123Subdomain, IsDNS1035Label, path.IsValidPathSegmentName)."""
    if rule == "path":
        for bad in (".", ".."):
            if name == bad:
                return f"may not be '{bad}'"
        for bad in ("/", "%"):
            if bad in name:
                return f"may not contain '{bad}'"
        return None
    if rule == "dns1035":
        if len(name) > 63:
            return "must be no more than 63 characters"
        if not _DNS1035_LABEL.match(name):
            return ("a DNS-1035 label must consist of lower case alphanumeric characters or "
                    "'-', start with an alphabetic character, and end with an alphanumeric "
                    "character (e.g. 'my-name',  or 'abc-123', regex used for validation is "
                    "'[a-z]([-a-z0-9]*[a-z0-9])?')")
        return None
    return _subdomain_problem(name)


def _flag(query: dict[str, list[str]], key: str) -> bool:
    return query.get(key, ["false"])[0].lower() in ("true", "1")


def _go_text(value: Any) -> Any:
    """Values as the apiserver's JSON decoder keeps them: a lone UTF-16 surrogate becomes
    U+FFFD, an integer beyond int64 a float64."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, int) and not isinstance(value, bool) and \
            not -(2**63) <= value < 2**63:
        return float(value)  # beyond int64: a float64, as the apiserver's decoder keeps it
    if isinstance(value, dict):
        return {_go_text(k): _go_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_text(v) for v in value]
    return value


def _json_object(raw: bytes, strict_duplicates: list[str]) -> Any:
    """Decode a JSON body as the apiserver does (invalid UTF-8 and lone surrogates become
    U+FFFD), noting duplicate keys (strict decoding reports them)."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                strict_duplicates.append(f'duplicate field "{key}"')
            out[key] = value
        return out

    try:
        return _go_text(json.loads((raw or b"null").decode("utf-8", "replace"),
                                   object_pairs_hook=pairs))
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"error decoding request body: {exc}") from exc


class CustomResources(Namespaces):
    """The custom resource stores and their requests."""

    garbage_collection: bool

    def _init_custom(self, crds: list[CustomResourceDefinition]) -> None:
        self._crds: dict[tuple[str, str], CustomResourceDefinition] = {}
        self._custom: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self._collecting = False
        for crd in crds:
            key = (crd.group, crd.plural)
            if key in self._crds:
                raise ValueError(f"two CRDs serve {crd.name}")
            self._crds[key] = crd
            self._custom[key] = {}
        definitions = self._custom.get((CRD_KIND.group, CRD_KIND.plural))
        for crd in crds:
            if definitions is not None and crd.manifest and not crd.builtin:
                obj = preloaded(crd)  # the definitions it starts with, as objects too
                self._stamp(obj, None, kind=CRD_KIND.kind, api_version=CRD_KIND.api_version)
                definitions[("", crd.name)] = obj
                with self._lock:
                    self._emit(CRD_KIND.group, CRD_KIND.plural, obj, None)

    # ---- the definitions ---------------------------------------------------------------------

    @property
    def crds(self) -> list[CustomResourceDefinition]:
        return list(self._crds.values())

    def crd(self, resource: str) -> CustomResourceDefinition:
        """The CRD of a plural, singular, kind, short name or `<plural>.<group>`."""
        for crd in self._crds.values():
            if resource in (crd.plural, crd.singular, crd.kind, crd.name, *crd.short_names):
                return crd
        raise KeyError(resource)

    def _crd_at(self, group: str, version: str, plural: str) -> CustomResourceDefinition | None:
        crd = self._crds.get((group, plural))
        return crd if crd is not None and crd.version == version else None

    # ---- direct access to the store (tests) --------------------------------------------------

    def custom_object(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object (None: there is none); `resource` as for `crd()`."""
        crd = self.crd(resource)
        with self._lock:
            obj = self._custom[(crd.group, crd.plural)].get((namespace if crd.namespaced
                                                             else "", name))
            return self._public(obj) if obj is not None else None

    def custom_objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        crd = self.crd(resource)
        with self._lock:
            return [self._public(obj) for (ns, _), obj in
                    sorted(self._custom[(crd.group, crd.plural)].items())
                    if namespace is None or ns == namespace]

    def put_custom(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a custom object directly (no validation, no pruning, status kept), assigning
        the server-owned metadata: what a test sets up behind the API's back."""
        crd = self._crd_of_body(obj)
        with self._lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if crd.namespaced:
                meta.setdefault("namespace", "default")
            else:
                meta.pop("namespace", None)
            store = self._custom[(crd.group, crd.plural)]
            key = (meta.get("namespace", ""), meta["name"])
            old = store.get(key)
            meta["generation"] = old["metadata"].get("generation", 1) if old else 1
            self._stamp(obj, old, kind=crd.kind, api_version=crd.api_version)
            store[key] = obj
            self._emit(crd.group, crd.plural, obj, old)
            self._collect_garbage()
            return self._public(obj)

    def remove_custom(self, resource: str, namespace: str, name: str) -> None:
        """The object is gone at once, finalizers or not (as if removed from etcd)."""
        crd = self.crd(resource)
        with self._lock:
            self._remove(crd, namespace if crd.namespaced else "", name)
            self._collect_garbage()

    def _crd_of_body(self, obj: dict[str, Any]) -> CustomResourceDefinition:
        for crd in self._crds.values():
            if obj.get("apiVersion") == crd.api_version and obj.get("kind") == crd.kind:
                return crd
        raise KeyError(f"no CRD serves {obj.get('apiVersion')}/{obj.get('kind')}")

    # ---- requests ----------------------------------------------------------------------------

    def _handle_custom(self, crd: CustomResourceDefinition, info: RequestInfo, method: str,
                       query: dict[str, list[str]], headers: Any, raw: bytes,
                       render: Callable[[CustomResourceDefinition, dict[str, Any]],
                                        dict[str, Any]] | None = None,
                       ) -> Answer | WatchAnswer:
        parts = info.parts
        namespace = info.namespace if crd.namespaced else ""
        all_namespaces = crd.namespaced and not info.namespace
        names_object = _has_name_segment(parts, crd)
        if names_object and info.verb == "watch" and len(parts) == 2:  # /watch/.../<name>
            query = {**query, "fieldSelector": [f"metadata.name={info.name}"]}
            names_object = False
        if (not crd.namespaced and info.namespace) or len(parts) > 3 \
                or (all_namespaces and names_object) \
                or (info.subresource and (info.subresource != "status"
                                          or not crd.status_subresource)):
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})
        dry_run = bool(query.get("dryRun"))
        status = info.subresource == "status"
        if not names_object:
            if method == "GET":
                if info.verb == "watch":
                    return self._custom_watch(crd, None if all_namespaces else namespace, query,
                                              render)
                listing = self._custom_list(crd, None if all_namespaces else namespace, query)
                return 200, render(crd, listing) if render else listing, {}
            if method == "POST" and not all_namespaces:
                return self._custom_create(crd, namespace, raw, query, dry_run)
            if method == "DELETE" and not all_namespaces:
                return 200, self._custom_delete_collection(crd, namespace, query, raw,
                                                           dry_run), {}
            raise method_not_allowed()
        name = info.name
        if method == "GET":
            with self._lock:
                obj = self._custom[(crd.group, crd.plural)].get((namespace, name))
                if obj is None:
                    raise not_found(name, crd.plural, crd.group)
                public = self._public(obj)
            return 200, render(crd, public) if render else public, {}
        if method == "PUT":
            return self._custom_replace(crd, namespace, name, raw, query, dry_run, status)
        if method == "PATCH":
            ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
            return self._custom_patch(crd, namespace, name, ctype, raw, query, dry_run, status)
        if method == "DELETE" and not status:
            options = self._json(raw) if raw.strip() else {}
            return self._custom_delete(crd, namespace, name, options, query, dry_run)
        raise method_not_allowed()

    # ---- list and watch ----------------------------------------------------------------------

    def _custom_list(self, crd: CustomResourceDefinition, namespace: str | None,
                     query: dict[str, list[str]]) -> dict[str, Any]:
        labels = parse_label_selector(query.get("labelSelector", [""])[0])
        fields = parse_field_selector(query.get("fieldSelector", [""])[0], crd.field_labels)
        limit = int(query.get("limit", ["0"])[0] or 0)
        token = query.get("continue", [""])[0]
        with self._lock:
            rv = query.get("resourceVersion", [""])[0]
            if rv not in ("", "0"):
                try:
                    self._wait_for_rv(int(rv))
                except ValueError as exc:
                    raise bad_request(f"invalid resource version: {rv!r}") from exc
            start = ""
            if token:
                start, token_rv = _read_continue(token)
                if token_rv < self._compacted:
                    raise ApiError(
                        410, "Expired",
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue "
                        "parameter.")
            items = []
            for (ns, name), obj in sorted(self._custom[(crd.group, crd.plural)].items()):
                if namespace is not None and ns != namespace:
                    continue
                if start and f"{ns}/{name}" <= start:
                    continue
                public = self._public(obj)
                if not labels_match(obj["metadata"].get("labels"), labels):
                    continue
                if not all(t.matches(_custom_fields(crd, public)) for t in fields):
                    continue
                items.append(public)
            meta: dict[str, Any] = {"resourceVersion": str(self._rv)}
            if limit > 0 and len(items) > limit:
                last = items[limit - 1]["metadata"]
                meta["continue"] = _write_continue(
                    f"{last.get('namespace', '')}/{last['name']}", self._rv)
                meta["remainingItemCount"] = len(items) - limit
                items = items[:limit]
            return {"apiVersion": crd.api_version, "kind": crd.list_kind, "metadata": meta,
                    "items": items}

    def _custom_watch(self, crd: CustomResourceDefinition, namespace: str | None,
                      query: dict[str, list[str]],
                      render: Callable[[CustomResourceDefinition, dict[str, Any]],
                                       dict[str, Any]] | None) -> WatchAnswer:
        watcher = Watcher(
            crd.group, crd.plural, namespace,
            parse_label_selector(query.get("labelSelector", [""])[0]),
            parse_field_selector(query.get("fieldSelector", [""])[0], crd.field_labels),
            lambda obj: _custom_fields(crd, obj))
        answer = self._watch(watcher, query, lambda: self._custom_now(crd), crd.api_version,
                             crd.kind)
        if render is not None:
            def render_event(event: dict[str, Any]) -> dict[str, Any]:
                if event["type"] in ("ERROR", "BOOKMARK"):
                    return event
                return {"type": event["type"], "object": render(crd, event["object"])}
            answer.render = render_event
        return answer

    def _custom_now(self, crd: CustomResourceDefinition) -> list[dict[str, Any]]:
        return [self._public(obj) for _, obj in
                sorted(self._custom[(crd.group, crd.plural)].items())]

    # ---- decoding a body -----------------------------------------------------------------------

    def _decode_custom(self, crd: CustomResourceDefinition, raw: bytes | Any, namespace: str,
                       query: dict[str, list[str]], *, decoded: bool = False,
                       ) -> tuple[dict[str, Any], list[str]]:
        """The object of a request body, pruned and defaulted, and the warnings to answer
        with; 400 for what cannot be decoded (and under fieldValidation=Strict, for unknown
        or duplicate fields)."""
        duplicates: list[str] = []
        body = raw if decoded else _json_object(raw, duplicates)
        handled_as = f'{crd.kind} in version "{crd.version}" cannot be handled as a {crd.kind}'
        if not isinstance(body, dict):
            raise bad_request(f"{handled_as}: the body must be a JSON object")
        if crd.builtin:
            body = {"kind": crd.kind, "apiVersion": crd.api_version, **body}
            convert(crd, body)
        if not body.get("kind"):
            data = json.dumps(body, separators=(",", ":"))
            summary = data if len(data) <= 30 else data[:30] + " ..."
            raise bad_request(f"the object provided is unrecognized (must be of type "
                              f"{crd.kind}): Object 'Kind' is missing in '{data}' ({summary})")
        if body.get("apiVersion") != crd.api_version:
            raise bad_request(f"the API version in the data ({body.get('apiVersion')}) does "
                              f"not match the expected API version ({crd.api_version})")
        if body["kind"] != crd.kind:
            raise bad_request(f"the kind in the data ({body['kind']}) does not match the "
                              f"expected kind ({crd.kind})")
        obj = copy.deepcopy(body)
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise bad_request(f"{handled_as}: json: cannot unmarshal {_go_kind(meta)} into Go "
                              "struct field Object.metadata of type v1.ObjectMeta")
        unknown = [f"metadata.{k}" for k in sorted(meta) if k not in OBJECT_META_FIELDS]
        for key in list(meta):
            if key not in OBJECT_META_FIELDS:
                del meta[key]
        _check_meta_types(meta, handled_as)
        if crd.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request("the namespace of the provided object does not match the "
                                  "namespace sent on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        prune_nulls(obj, crd.schema)
        unknown += prune(obj, crd.schema, root=True)
        default(obj, crd.schema)
        strict = [f'unknown field "{path}"' for path in sorted(unknown)] + duplicates
        mode = query.get("fieldValidation", ["Warn"])[0]
        if mode not in ("Strict", "Warn", "Ignore", ""):
            raise bad_request(f"fieldValidation parameter unsupported: {mode}")
        if strict and mode == "Strict":
            raise bad_request(f"{handled_as}: strict decoding error: {', '.join(strict)}")
        return obj, strict if mode in ("Warn", "") else []

    # ---- create ------------------------------------------------------------------------------

    def _custom_create(self, crd: CustomResourceDefinition, namespace: str, raw: bytes | Any,
                       query: dict[str, list[str]], dry_run: bool, *,
                       decoded: bool = False) -> Answer:
        obj, warnings = self._decode_custom(crd, raw, namespace, query, decoded=decoded)
        with _warned(warnings):
            return self._create_decoded(crd, namespace, obj, warnings, dry_run)

    def _create_decoded(self, crd: CustomResourceDefinition, namespace: str,
                        obj: dict[str, Any], warnings: list[str], dry_run: bool) -> Answer:
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise ApiError(
                500, "InternalError",
                "Internal error occurred: resourceVersion should not be set on objects to be "
                "created",
                {"causes": [{"message": "resourceVersion should not be set on objects to be "
                                        "created"}]})
        for key in ("uid", "creationTimestamp", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "selfLink", "managedFields"):
            meta.pop(key, None)
        if crd.status_subresource:
            obj.pop("status", None)
        if crd.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        generated = not meta.get("name") and bool(meta.get("generateName"))
        attempts = MAX_GENERATE_NAME_ATTEMPTS if generated else 1
        with self._lock:
            if self._definition_terminating(crd):
                raise ApiError(405, "MethodNotAllowed", "create not allowed while custom "
                               "resource definition is terminating",
                               {"group": crd.group, "kind": crd.plural})
            if crd.namespaced:
                phase = self._namespace_phase(namespace)
                if phase is None:
                    raise not_found(namespace, "namespaces")
                if phase == "Terminating":
                    # admission names the object by its name, else its generateName (names
                    # are generated later), else "Unknown" (admission/errors.go)
                    named = meta.get("name") or meta.get("generateName") or "Unknown"
                    raise ApiError(
                        403, "Forbidden",
                        f'{qualified(crd.plural, crd.group)} "{named}" is forbidden: unable '
                        f"to create new content in namespace {namespace} because it is being "
                        "terminated",
                        {"name": named, **({"group": crd.group} if crd.group else {}),
                         "kind": crd.plural,
                         "causes": [{"reason": "NamespaceTerminating",
                                     "message": f"namespace {namespace} is being terminated",
                                     "field": "metadata.namespace"}]})
            store = self._custom[(crd.group, crd.plural)]
            for attempt in range(attempts):
                if generated:
                    meta["name"] = meta["generateName"][:58] + "".join(
                        random.choice(_NAME_CHARS) for _ in range(5))
                errors = self._validate_custom(crd, obj, None)
                if errors:
                    raise invalid(meta.get("name", ""), errors, crd.kind, crd.group)
                self._prepare_write(crd, obj, None)
                key = (namespace, meta["name"])
                if key not in store:
                    break
                if attempt == attempts - 1:
                    raise already_exists(meta["name"], crd.plural, crd.group)
            if dry_run:
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = now()
                return 201, obj, _warning_headers(warnings)
            self._stamp(obj, None, kind=crd.kind, api_version=crd.api_version)
            store[key] = obj
            self._emit(crd.group, crd.plural, obj, None)
            self._written(crd, obj)
            out = self._public(obj)
            self._collect_garbage()
        return 201, out, _warning_headers(warnings)

    # ---- update ------------------------------------------------------------------------------

    def _custom_replace(self, crd: CustomResourceDefinition, namespace: str, name: str,
                        raw: bytes, query: dict[str, list[str]], dry_run: bool,
                        status: bool) -> Answer:
        obj, warnings = self._decode_custom(crd, raw, namespace, query)
        if obj["metadata"].get("name") != name:
            raise bad_request(f"the name of the object ({obj['metadata'].get('name', '')}) "
                              f"does not match the name on the URL ({name})")
        with self._lock, _warned(warnings):
            old = self._custom[(crd.group, crd.plural)].get((namespace, name))
            if old is None:
                raise not_found(name, crd.plural, crd.group)
            out = self._update_custom(crd, namespace, name, obj, old, dry_run, status)
        return 200, out, _warning_headers(warnings)

    def _update_custom(self, crd: CustomResourceDefinition, namespace: str, name: str,
                       obj: dict[str, Any], old: dict[str, Any], dry_run: bool,
                       status: bool) -> dict[str, Any]:
        """Preconditions, the status split, generation, validation and storage of an update
        (PUT or PATCH); the caller holds the lock."""
        meta = obj["metadata"]
        old_meta = old["metadata"]
        want_rv = meta.get("resourceVersion")
        if not want_rv:
            raise invalid(name, [("FieldValueInvalid", "metadata.resourceVersion",
                                  "Invalid value: 0x0: must be specified for an update")],
                          crd.plural, crd.group)
        if str(want_rv) != old_meta["resourceVersion"]:
            self._stats.conflicts += 1
            raise conflict(name, resource=crd.plural, group=crd.group)
        if meta.get("uid") and meta["uid"] != old_meta["uid"]:
            raise conflict(name, f"Precondition failed: UID in precondition: {meta['uid']}, "
                                 f"UID in object meta: {old_meta['uid']}", crd.plural, crd.group)
        if status:  # only the status changes (statusStrategy.PrepareForUpdate)
            new = copy.deepcopy(old)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
        else:
            new = obj
            if crd.status_subresource:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            new_meta = new["metadata"]
            if crd.generation:
                new_meta["generation"] = old_meta.get("generation", 1)
                if _non_metadata(new) != _non_metadata(old) or (
                        annotations_count_in_generation(crd)
                        and (new_meta.get("annotations") or {})
                        != (old_meta.get("annotations") or {})):
                    new_meta["generation"] += 1
            else:
                new_meta.pop("generation", None)
            for key in ("uid", "creationTimestamp", "deletionTimestamp",
                        "deletionGracePeriodSeconds"):
                if key in old_meta:
                    new_meta[key] = old_meta[key]
                else:
                    new_meta.pop(key, None)
            new_meta.pop("selfLink", None)
            new_meta.pop("managedFields", None)
            new["apiVersion"], new["kind"] = crd.api_version, crd.kind
        errors = self._validate_custom(crd, new, old)
        if errors:
            raise invalid(name, errors, crd.kind, crd.group)
        if not status:
            self._prepare_write(crd, new, old)
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if old_meta.get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            if dry_run:
                return self._public(new)
            # the last finalizer is gone: the update deletes the object
            self._remove(crd, namespace, name, last=new)
            self._collect_garbage()
            return self._public(new)
        if self._public(new) == self._public(old) or dry_run:
            return self._public(new if dry_run else old)  # a no-op update is not written
        self._stamp(new, old, kind=crd.kind, api_version=crd.api_version)
        self._custom[(crd.group, crd.plural)][(namespace, name)] = new
        self._emit(crd.group, crd.plural, new, old)
        self._written(crd, new)
        out = self._public(new)
        self._collect_garbage()
        return out

    def _custom_patch(self, crd: CustomResourceDefinition, namespace: str, name: str,
                      ctype: str, raw: bytes, query: dict[str, list[str]], dry_run: bool,
                      status: bool) -> Answer:
        accepted = (*_PATCH_TYPES[:2], STRATEGIC, *_PATCH_TYPES[2:]) if crd.builtin \
            else _PATCH_TYPES
        if ctype not in accepted:
            raise ApiError(
                415, "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(accepted)}")
        if ctype == "application/apply-patch+yaml":
            return self._apply_patch(crd, namespace, name, raw, query, dry_run, status)
        patch = _json_object(raw, [])
        with self._lock:
            old = self._custom[(crd.group, crd.plural)].get((namespace, name))
            if old is None:
                raise not_found(name, crd.plural, crd.group)
            current = self._public(old)
            if ctype == "application/json-patch+json":
                merged = json_patch(current, patch)
            elif ctype == STRATEGIC:
                merged = strategic_merge_patch(current, patch, list_rule(crd.kind))
            else:
                if not isinstance(patch, dict):
                    raise bad_request("the patch must be a JSON object")
                merged = merge_patch(current, patch)
            if not isinstance(merged, dict) or not isinstance(merged.get("metadata"), dict):
                raise bad_request("the patched object is not an object with metadata")
            if merged["metadata"].get("name", name) != name:
                raise bad_request("metadata.name cannot be changed by a patch")
            merged["metadata"]["name"] = name
            if not merged["metadata"].get("resourceVersion"):
                merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            obj, warnings = self._decode_custom(crd, merged, namespace, query, decoded=True)
            with _warned(warnings):
                out = self._update_custom(crd, namespace, name, obj, old, dry_run, status)
        return 200, out, _warning_headers(warnings)

    def _apply_patch(self, crd: CustomResourceDefinition, namespace: str, name: str,
                     raw: bytes, query: dict[str, list[str]], dry_run: bool,
                     status: bool) -> Answer:
        """Server-side apply, simplified: the applied configuration is created when the object
        does not exist, else merged into it (maps key by key, lists of
        x-kubernetes-list-type map by their keys, other lists replaced). Field ownership and
        managedFields are not tracked: a field left out of a later apply is not removed, and
        there are no apply conflicts."""
        if not query.get("fieldManager", [""])[0]:
            raise invalid("", [("FieldValueRequired", "fieldManager",
                                "Required value: is required for apply patch")],
                          "PatchOptions", "meta.k8s.io")
        try:
            applied = yaml.safe_load(raw.decode("utf-8") or "null")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise bad_request(f"error decoding YAML: {exc}") from exc
        if not isinstance(applied, dict):
            raise bad_request("the applied configuration must be an object")
        applied.setdefault("metadata", {})
        if isinstance(applied["metadata"], dict):
            if applied["metadata"].get("name", name) != name:
                raise bad_request(f"the name of the object ({applied['metadata']['name']}) "
                                  f"does not match the name on the URL ({name})")
            applied["metadata"]["name"] = name
        with self._lock:
            old = self._custom[(crd.group, crd.plural)].get((namespace, name))
            if old is None:
                if status:
                    raise not_found(name, crd.plural, crd.group)
                return self._custom_create(crd, namespace, applied, query, dry_run,
                                           decoded=True)
            merged = _apply_merge(self._public(old), applied, crd.schema)
            merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            obj, warnings = self._decode_custom(crd, merged, namespace, query, decoded=True)
            with _warned(warnings):
                out = self._update_custom(crd, namespace, name, obj, old, dry_run, status)
        return 200, out, _warning_headers(warnings)

    # ---- delete ------------------------------------------------------------------------------

    def _custom_delete(self, crd: CustomResourceDefinition, namespace: str, name: str,
                       options: Any, query: dict[str, list[str]], dry_run: bool) -> Answer:
        if not isinstance(options, dict):
            raise bad_request("the delete options must be an object")
        policy = options.get("propagationPolicy") or query.get("propagationPolicy", [""])[0]
        if options.get("orphanDependents") is True:
            policy = policy or "Orphan"
        dry_run = dry_run or bool(options.get("dryRun"))
        with self._lock:
            old = self._custom[(crd.group, crd.plural)].get((namespace, name))
            if old is None:
                raise not_found(name, crd.plural, crd.group)
            pre = options.get("preconditions") or {}
            meta = old["metadata"]
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise conflict(name, f"Precondition failed: UID in precondition: {pre['uid']}, "
                                     f"UID in object meta: {meta['uid']}", crd.plural, crd.group)
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                self._stats.conflicts += 1
                raise conflict(
                    name,
                    f"the ResourceVersion in the precondition ({pre['resourceVersion']}) does "
                    f"not match the ResourceVersion in record ({meta['resourceVersion']}). The "
                    "object might have been modified", crd.plural, crd.group)
            return self._delete_one(crd, namespace, name, policy, dry_run)

    def _delete_one(self, crd: CustomResourceDefinition, namespace: str, name: str,
                    policy: str, dry_run: bool) -> Answer:
        """What a DELETE does to a stored object (caller holds the lock)."""
        store = self._custom[(crd.group, crd.plural)]
        old = store[(namespace, name)]
        meta = old["metadata"]
        finalizers = [f for f in meta.get("finalizers") or []
                      if f not in (FINALIZER_ORPHAN, FINALIZER_FOREGROUND)]
        if not meta.get("deletionTimestamp"):
            if policy == "Orphan":
                finalizers.append(FINALIZER_ORPHAN)
            elif policy == "Foreground":
                finalizers.append(FINALIZER_FOREGROUND)
            if crd is CRD_KIND and not dry_run and self._delete_instances(key_of(old)):
                finalizers.append(CLEANUP_FINALIZER)
        else:
            finalizers = list(meta.get("finalizers") or [])
        if finalizers:
            new = copy.deepcopy(old)
            new_meta = new["metadata"]
            if not new_meta.get("deletionTimestamp"):
                new_meta["deletionTimestamp"] = now()
                if crd.generation:
                    new_meta["generation"] = new_meta.get("generation", 1) + 1
                if CLEANUP_FINALIZER in finalizers:
                    new["status"] = terminating_status(new.get("status"))
            new_meta["deletionGracePeriodSeconds"] = 0
            new_meta["finalizers"] = finalizers
            if dry_run or self._public(new) == self._public(old):
                return 200, self._public(new), {}
            self._stamp(new, old, kind=crd.kind, api_version=crd.api_version)
            store[(namespace, name)] = new
            self._emit(crd.group, crd.plural, new, old)
            out = self._public(new)
            self._collect_garbage()
            return 200, out, {}
        done = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": crd.group, "kind": crd.plural,
                            "uid": meta["uid"]}}
        if not dry_run:
            self._remove(crd, namespace, name)
            self._collect_garbage()
        return 200, done, {}

    def _custom_delete_collection(self, crd: CustomResourceDefinition, namespace: str,
                                  query: dict[str, list[str]], raw: bytes,
                                  dry_run: bool) -> dict[str, Any]:
        options = self._json(raw) if raw.strip() else {}
        if not isinstance(options, dict):
            raise bad_request("the delete options must be an object")
        policy = options.get("propagationPolicy") or query.get("propagationPolicy", [""])[0]
        dry_run = dry_run or bool(options.get("dryRun"))
        with self._lock:
            listing = self._custom_list(crd, namespace, {k: v for k, v in query.items()
                                                         if k != "limit"})
            deleted = []
            for item in listing["items"]:
                key = (namespace, item["metadata"]["name"])
                if key not in self._custom[(crd.group, crd.plural)]:
                    continue  # the garbage collector took it meanwhile
                code, body, _ = self._delete_one(crd, namespace, key[1], policy, dry_run)
                deleted.append(body if body.get("kind") == crd.kind else item)
            return {"apiVersion": crd.api_version, "kind": crd.list_kind,
                    "metadata": {"resourceVersion": str(self._rv)}, "items": deleted}

    def _remove(self, crd: CustomResourceDefinition, namespace: str, name: str,
                last: dict[str, Any] | None = None) -> None:
        """Remove a stored object (caller holds the lock); the DELETED event carries `last`
        (the state the deleting update wrote) or its stored state."""
        store = self._custom[(crd.group, crd.plural)]
        old = store.pop((namespace, name))
        self._next_rv()
        self._emit(crd.group, crd.plural, None, last if last is not None else old)
        if crd is CRD_KIND:  # the definition is gone: so is its kind
            served = self._crds.get(key_of(old))
            if served is not None and not served.builtin:
                del self._crds[key_of(old)], self._custom[key_of(old)]
        elif not store and self._definition_terminating(crd):
            self._gc_update(CRD_KIND, ("", crd.name), lambda o: o["metadata"].__setitem__(
                "finalizers", [f for f in o["metadata"]["finalizers"]
                               if f != CLEANUP_FINALIZER]))
        if namespace and self._namespace_phase(namespace) == "Terminating":
            self._finalize(namespace)

    # ---- CustomResourceDefinition objects (apiextensions.py) -----------------------------------

    def _prepare_write(self, crd: CustomResourceDefinition, obj: dict[str, Any],
                       old: dict[str, Any] | None) -> None:
        """A definition about to be written is checked and gets its status."""
        if crd is CRD_KIND:
            obj["status"] = established(definition_of(obj), (old or {}).get("status"))

    def _written(self, crd: CustomResourceDefinition, obj: dict[str, Any]) -> None:
        """A definition written is served at once (a built-in kind is never replaced)."""
        if crd is not CRD_KIND or obj["metadata"].get("deletionTimestamp"):
            return
        definition = definition_of(obj)
        key = (definition.group, definition.plural)
        if key not in self._crds or not self._crds[key].builtin:
            self._crds[key] = definition
            self._custom.setdefault(key, {})

    def _definition_terminating(self, crd: CustomResourceDefinition) -> bool:
        if crd.builtin:
            return False
        obj = self._custom[(CRD_KIND.group, CRD_KIND.plural)].get(("", crd.name))
        return obj is not None and bool(obj["metadata"].get("deletionTimestamp"))

    def _delete_instances(self, key: tuple[str, str]) -> bool:
        """Delete every object of a definition being deleted; whether some remain (held by
        their finalizers)."""
        served = self._crds.get(key)
        if served is None or served.builtin:
            return False
        for ns, name in sorted(self._custom[key]):
            if (ns, name) in self._custom[key]:
                self._delete_one(served, ns, name, "", False)
        return bool(self._custom.get(key))

    # ---- namespaces ----------------------------------------------------------------------------

    def _delete_namespace_content(self, name: str) -> None:
        for crd in list(self._crds.values()):
            if not crd.namespaced:
                continue
            for ns, obj_name in sorted(self._custom[(crd.group, crd.plural)]):
                if ns == name and (ns, obj_name) in self._custom[(crd.group, crd.plural)]:
                    self._delete_one(crd, ns, obj_name, "", False)

    def _namespace_content_remains(self, name: str) -> bool:
        return any(ns == name for crd in self._crds.values() if crd.namespaced
                   for ns, _ in self._custom[(crd.group, crd.plural)])

    # ---- validation ----------------------------------------------------------------------------

    def _validate_custom(self, crd: CustomResourceDefinition, obj: dict[str, Any],
                         old: dict[str, Any] | None) -> list[FieldError]:
        errors = _validate_meta(obj["metadata"], old["metadata"] if old else None,
                                crd.name_rule)
        errors += validate(obj, crd.schema)
        return errors

    # ---- the garbage collector -----------------------------------------------------------------

    def _owner_state(self, ref: dict[str, Any], namespace: str) -> str:
        """"solid" (the owner exists, or is of a kind this server does not serve),
        "waiting" (it is being deleted in the foreground) or "dangling" (it is gone)."""
        api_version, kind, uid = ref.get("apiVersion"), ref.get("kind"), ref.get("uid")
        name = ref.get("name", "")
        found: dict[str, Any] | None
        if api_version == "v1" and kind == "ConfigMap":
            found = self._objects.get((namespace, name))
        elif api_version == "v1" and kind == "Namespace":
            found = self._namespaces.get(name)
        else:
            owner_crd = next((c for c in self._crds.values() if c.api_version == api_version
                              and c.kind == kind), None)
            if owner_crd is None:
                return "solid"
            found = self._custom[(owner_crd.group, owner_crd.plural)].get(
                (namespace if owner_crd.namespaced else "", name))
        if found is None or found["metadata"].get("uid") != uid:
            return "dangling"
        meta = found["metadata"]
        if meta.get("deletionTimestamp") and FINALIZER_FOREGROUND in (meta.get("finalizers")
                                                                      or []):
            return "waiting"
        return "solid"

    def _dependents_of(self, uid: str) -> list[tuple[CustomResourceDefinition | None,
                                                     tuple[str, str]]]:
        out: list[tuple[CustomResourceDefinition | None, tuple[str, str]]] = []
        for crd in self._crds.values():
            for key, obj in self._custom[(crd.group, crd.plural)].items():
                if any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences")
                       or []):
                    out.append((crd, key))
        for key, obj in self._objects.items():
            if any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or []):
                out.append((None, key))
        return out

    def _collect_garbage(self) -> None:
        """The garbage collector, run to a fixed point (caller holds the lock)."""
        if not self.garbage_collection or self._collecting:
            return
        self._collecting = True
        try:
            changed = True
            while changed:
                changed = self._collect_once()
        finally:
            self._collecting = False

    def _collect_once(self) -> bool:
        for crd in list(self._crds.values()):
            store = self._custom[(crd.group, crd.plural)]
            for key in sorted(store):
                obj = store.get(key)
                if obj is None:
                    continue
                meta = obj["metadata"]
                finalizers = meta.get("finalizers") or []
                if meta.get("deletionTimestamp") and (FINALIZER_ORPHAN in finalizers
                                                      or FINALIZER_FOREGROUND in finalizers):
                    dependents = self._dependents_of(meta["uid"])
                    if FINALIZER_ORPHAN in finalizers:
                        for dep_crd, dep_key in dependents:
                            self._drop_owner_refs(dep_crd, dep_key, {meta["uid"]})
                    if FINALIZER_ORPHAN in finalizers or not dependents:
                        self._gc_update(crd, key, lambda o: o["metadata"].__setitem__(
                            "finalizers", [f for f in o["metadata"]["finalizers"]
                                           if f not in (FINALIZER_ORPHAN,
                                                        FINALIZER_FOREGROUND)]))
                        return True
                if self._collect_dependent(crd, key, obj):
                    return True
        for key in sorted(self._objects):
            obj = self._objects.get(key)
            if obj is not None and self._collect_dependent(None, key, obj):
                return True
        return False

    def _collect_dependent(self, crd: CustomResourceDefinition | None, key: tuple[str, str],
                           obj: dict[str, Any]) -> bool:
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs or obj["metadata"].get("deletionTimestamp"):
            return False
        states = {r.get("uid"): self._owner_state(r, key[0]) for r in refs}
        if "solid" not in states.values():
            if crd is None:
                old = self._objects.pop(key)
                self._next_rv()
                self._emit("", "configmaps", None, old)
            else:
                self._delete_one(crd, key[0], key[1], "", False)
            return True
        gone = {uid for uid, state in states.items() if state != "solid"}
        if gone:
            self._drop_owner_refs(crd, key, gone)
            return True
        return False

    def _drop_owner_refs(self, crd: CustomResourceDefinition | None, key: tuple[str, str],
                         uids: set[str]) -> None:
        def drop(obj: dict[str, Any]) -> None:
            refs = [r for r in obj["metadata"].get("ownerReferences") or []
                    if r.get("uid") not in uids]
            if refs:
                obj["metadata"]["ownerReferences"] = refs
            else:
                obj["metadata"].pop("ownerReferences", None)
        if crd is None:
            old = self._objects[key]
            new = copy.deepcopy(old)
            drop(new)
            self._stamp(new, old)
            self._objects[key] = new
            self._emit("", "configmaps", new, old)
        else:
            self._gc_update(crd, key, drop)

    def _gc_update(self, crd: CustomResourceDefinition, key: tuple[str, str],
                   change: Callable[[dict[str, Any]], None]) -> None:
        store = self._custom[(crd.group, crd.plural)]
        old = store[key]
        new = copy.deepcopy(old)
        change(new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            new["metadata"].pop("finalizers", None)
            self._remove(crd, key[0], key[1], last=new)
            return
        self._stamp(new, old, kind=crd.kind, api_version=crd.api_version)
        store[key] = new
        self._emit(crd.group, crd.plural, new, old)


# ---- helpers -----------------------------------------------------------------------------------


def _has_name_segment(parts: tuple[str, ...], crd: CustomResourceDefinition) -> bool:
    """Whether the path names an object (a list's fieldSelector name does not count)."""
    return len(parts) > 1 and parts[0] == crd.plural


def _custom_fields(crd: CustomResourceDefinition, obj: dict[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    fields = {"metadata.name": meta.get("name", "")}
    if crd.namespaced:
        fields["metadata.namespace"] = meta.get("namespace", "")
    for path in crd.selectable_fields:
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        fields[path] = "" if value is None else (
            ("true" if value else "false") if isinstance(value, bool) else str(value))
    return fields


def _non_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "metadata"}


@contextlib.contextmanager
def _warned(warnings: list[str]) -> Iterator[None]:
    """An error answered after decoding carries the decoding's warnings too (the apiserver
    writes its Warning headers whatever the answer)."""
    try:
        yield
    except ApiError as err:
        err.headers.update(_warning_headers(warnings))
        raise


def _warning_headers(warnings: list[str]) -> dict[str, str]:
    """One RFC 7234 warning (code 299) per message, as the apiserver sends them."""
    if not warnings:
        return {}
    return {"Warning": ", ".join('299 - ' + json.dumps(w) for w in warnings)}


def _go_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "bool", int: "number",
            float: "number"}.get(type(value), "object")


def _check_meta_types(meta: dict[str, Any], handled_as: str) -> None:
    """The ObjectMeta fields' JSON types (a mismatch does not decode: 400)."""
    def bad(field_name: str, want: str) -> ApiError:
        return bad_request(f"{handled_as}: json: cannot unmarshal "
                           f"{_go_kind(meta[field_name])} into Go struct field "
                           f"ObjectMeta.metadata.{field_name} of type {want}")
    for key in ("name", "generateName", "namespace", "uid", "resourceVersion",
                "creationTimestamp", "deletionTimestamp", "selfLink"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], str):
            raise bad(key, "string")
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, dict)
                                  or not all(isinstance(v, str) for v in value.values())):
            raise bad(key, "map[string]string")
    value = meta.get("finalizers")
    if value is not None and (not isinstance(value, list)
                              or not all(isinstance(v, str) for v in value)):
        raise bad("finalizers", "[]string")
    value = meta.get("ownerReferences")
    if value is not None and (not isinstance(value, list)
                              or not all(isinstance(v, dict) for v in value)):
        raise bad("ownerReferences", "[]v1.OwnerReference")
    for key in ("generation", "deletionGracePeriodSeconds"):
        if key in meta and meta[key] is not None and (not isinstance(meta[key], int)
                                                      or isinstance(meta[key], bool)):
            raise bad(key, "int64")
    for key in [k for k, v in meta.items() if v is None]:
        del meta[key]


def _validate_meta(meta: dict[str, Any], old: dict[str, Any] | None,
                   name_rule: str = "subdomain") -> list[FieldError]:
    """ObjectMeta validation (apimachinery api/validation/objectmeta.go) as far as clients
    can tell."""
    errors: list[FieldError] = []
    name = meta.get("name", "")
    if not name:
        errors.append(("FieldValueRequired", "metadata.name",
                       "Required value: name or generateName is required"))
    elif old is None:
        problem = _name_problem(name, name_rule)
        if problem:
            errors.append(("FieldValueInvalid", "metadata.name",
                           f"Invalid value: {json.dumps(name)}: {problem}"))
    for key, value in (meta.get("labels") or {}).items():
        problem = label_key_problem(key)
        if problem:
            errors.append(("FieldValueInvalid", "metadata.labels",
                           f"Invalid value: {json.dumps(key)}: {problem}"))
        problem = label_value_problem(value)
        if problem:
            errors.append(("FieldValueInvalid", "metadata.labels",
                           f"Invalid value: {json.dumps(value)}: {problem}"))
    annotations = meta.get("annotations") or {}
    for key in annotations:
        problem = label_key_problem(key.lower())
        if problem:
            errors.append(("FieldValueInvalid", "metadata.annotations",
                           f"Invalid value: {json.dumps(key)}: {problem}"))
    if sum(len(k) + len(v) for k, v in annotations.items()) > MAX_ANNOTATIONS_BYTES:
        errors.append(("FieldValueTooLong", "metadata.annotations",
                       f"Too long: may not be more than {MAX_ANNOTATIONS_BYTES} bytes"))
    for i, finalizer in enumerate(meta.get("finalizers") or []):
        problem = label_key_problem(finalizer)
        if problem:
            errors.append(("FieldValueInvalid", f"metadata.finalizers[{i}]",
                           f"Invalid value: {json.dumps(finalizer)}: {problem}"))
    controllers = 0
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        where = f"metadata.ownerReferences[{i}]"
        for key in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(key):
                errors.append(("FieldValueInvalid", f"{where}.{key}",
                               f'Invalid value: "": {key} must not be empty'))
        controllers += bool(ref.get("controller"))
    if controllers > 1:
        errors.append(("FieldValueInvalid", "metadata.ownerReferences",
                       "Invalid value: []: Only one reference can have Controller set to true"))
    if old is not None and old.get("deletionTimestamp"):
        added = sorted(set(meta.get("finalizers") or []) - set(old.get("finalizers") or []))
        if added:
            errors.append(("FieldValueForbidden", "metadata.finalizers",
                           "Forbidden: no new finalizers can be added if the object is being "
                           f"deleted, found new finalizers {json.dumps(added)}"))
    return errors


def _write_continue(start: str, rv: int) -> str:
    token = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"},
                       separators=(",", ":"))
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def _read_continue(token: str) -> tuple[str, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return str(data["start"]).rstrip("\x00"), int(data["rv"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise bad_request("continue key is not valid: incorrect encoded start resourceVersion "
                          "(version meta.k8s.io/v1)") from exc


def _apply_merge(current: Any, applied: Any, schema: dict[str, Any] | None) -> Any:
    if isinstance(current, dict) and isinstance(applied, dict):
        out = dict(current)
        props = (schema or {}).get("properties") or {}
        extra = (schema or {}).get("additionalProperties")
        for key, value in applied.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            out[key] = _apply_merge(current.get(key), value, sub)
        return out
    if (isinstance(current, list) and isinstance(applied, list)
            and (schema or {}).get("x-kubernetes-list-type") == "map"):
        keys = (schema or {}).get("x-kubernetes-list-map-keys") or []
        merged = list(current)
        for item in applied:
            ident = {k: item.get(k) for k in keys} if isinstance(item, dict) else None
            for i, have in enumerate(merged):
                if isinstance(have, dict) and ident is not None and \
                        {k: have.get(k) for k in keys} == ident:
                    merged[i] = _apply_merge(have, item, (schema or {}).get("items"))
                    break
            else:
                merged.append(item)
        return merged
    return copy.deepcopy(applied)
