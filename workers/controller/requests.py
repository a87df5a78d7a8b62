"""A Lease object turned into the `vcm.acquire` request the controller sends for it, and the
names that tie the two together. Pure: no I/O.

- request-id: the Lease's uid, so the same Lease never gets two grants, however often its
  request is sent (a restart, a resend, a second controller);
- task id: the uid too (a copy of a task is answered as the first); after a wait that ran out
  the next attempt is `<uid>.<n>`;
- owner: `<namespace>/<boskos-lease-id>` when the Lease carries that label (or spec field),
  else `<namespace>/<name>`: the Leases of one CI job are one install, so they share a VLAN
  where their pools share one, as upstream's common network does (a network-only Lease
  takes part in none: its port groups are its own). Once granted, the owner is the one
  the ledger recorded (`granted_owner`): a label changed since does not move it;
- labels: the Lease's own, and `vsphere-capacity-manager.splat-team.io/lease-uid` (the
  release on deletion selects by it).

Spec fields are upstream's (`poolSelector`, `required-pool`, ...); fields it does not know are
ignored as upstream's controller ignores them (a structural schema prunes them anyway). A
value the request refuses is refused naming the Lease's own field (`spec.vcpus`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from ..core.errors import InvalidRequest
from ..core.fleet import Fleet
from ..core.labels import MAX_LABELS
from ..core.lease import ADOPTED_LABEL, GROUP_LABEL
from ..core.models import Pool
from ..core.parsing import MAX_INT, MAX_POOLS, parse_request
from ..core.reasons import eligibility, shortfall
from ..core.text import MAX_TEXT, text_problem

PREFIX = "vsphere-capacity-manager.splat-team.io/"
FINALIZER = PREFIX + "lease-finalizer"
UID_LABEL = PREFIX + "lease-uid"
LONGEST_WAIT = 7 * 86400  # the longest wait a request may ask for: then the next attempt
# Lease spec field -> request field
SPEC_FIELDS = {
    "vcpus": "vcpus", "memory": "memory", "storage": "storage", "pools": "pools",
    "vcenters": "vcenters", "networks": "networks", "network-type": "network-type",
    "required-pool": "required-pool", "poolSelector": "pool-selector",
    "tolerations": "tolerations", "boskos-lease-id": "boskos-lease-id",
}
FIELD_OF = {v: k for k, v in SPEC_FIELDS.items()}
_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,99}$")
_LINK = re.compile(r"^https?://\S+$", re.ASCII)


def lease_ref(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """(namespace, name, uid) of a Lease; InvalidRequest if the uid cannot be a request-id."""
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid") or "")
    if not _UID.match(uid):
        raise InvalidRequest.of("metadata.uid", "not a uid the controller can use")
    return str(meta.get("namespace") or ""), str(meta.get("name") or ""), uid


def task_id(uid: str, attempt: int = 0) -> str:
    """The acquire task of a Lease's `attempt` (0, then one more each time a wait ran out)."""
    return uid if attempt == 0 else f"{uid}.{attempt}"


def group_of(body: Mapping[str, Any]) -> str:
    """The Lease's `boskos-lease-id` (label, else spec field), or ""."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {}
    spec = body.get("spec") if isinstance(body.get("spec"), Mapping) else {}
    for value in (labels.get(GROUP_LABEL), spec.get("boskos-lease-id")):
        if isinstance(value, str) and value and not text_problem(value, MAX_TEXT):
            return value
    return ""


def owner_of(body: Mapping[str, Any]) -> str:
    """Who holds a Lease's ledger leases (see the module's docstring)."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    owner = f"{namespace}/{group_of(body) or name}"
    return owner if len(owner) <= MAX_TEXT else f"{namespace}/{meta.get('uid')}"


def granted_owner(leases: Any, namespace: str) -> str | None:
    """The owner the ledger holds a Lease's granted leases under (what its acquire answered),
    when it is one of the Lease's namespace: the one its renewals and its release name, even
    after the Lease's `boskos-lease-id` label was changed."""
    if not isinstance(leases, list) or not leases or not isinstance(leases[0], Mapping):
        return None
    status = leases[0].get("status")
    owner = status.get("owner") if isinstance(status, Mapping) else None
    return owner if isinstance(owner, str) and owner.startswith(f"{namespace}/") else None


def lease_request(body: Mapping[str, Any], *, ttl: float, job_link: str = "",
                  sent: bool = False) -> dict[str, Any]:
    """The `vcm.acquire` request of a Lease: checked as the worker checks it (InvalidRequest
    naming the Lease's field: `spec.networks`, `metadata.labels`). `sent`: the Lease was
    asked for before (it has a phase): its `pools` is left to the worker, which answers the
    request-id it granted whatever that says and refuses it otherwise."""
    namespace, _, uid = lease_ref(body)
    spec = body.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise InvalidRequest.of("spec", "must be an object")
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise InvalidRequest.of("metadata.labels", "must be a map")
    if len(labels) >= MAX_LABELS:
        raise InvalidRequest.of("metadata.labels", f"at most {MAX_LABELS - 1} labels (the "
                                "controller adds one)")
    request: dict[str, Any] = {"vcpus": 0, "memory": 0}
    for key, field in SPEC_FIELDS.items():
        value = spec.get(key)
        if value is not None:
            request[field] = value
    if request.get("network-type") == "":
        del request["network-type"]  # upstream's "" is the default type
    if not request.get("vcenters"):
        request.pop("vcenters", None)  # 0 or unset: no cap
    request.setdefault("pools", 1)
    group = group_of(body)
    if group:
        request.setdefault("boskos-lease-id", group)
    request.update({
        "owner": owner_of(body), "request-id": uid, "ttl": int(ttl), "wait": LONGEST_WAIT,
        # the controller's own labels: the uid, and never the mark of an adopted lease
        "labels": {**{str(k): v for k, v in labels.items() if k != ADOPTED_LABEL},
                   UID_LABEL: uid},
    })
    if _LINK.match(job_link) and len(job_link) <= 2048 and not text_problem(job_link, 2048):
        request["job-link"] = job_link  # built from annotations: a bad one is left out
    try:
        parse_request(request, max_ttl=max(ttl, 1), max_wait=LONGEST_WAIT,
                      max_pools=MAX_INT if sent else MAX_POOLS)
    except InvalidRequest as exc:
        raise lease_field_error(exc) from None
    if not namespace:
        raise InvalidRequest.of("metadata.namespace", "a Lease is namespaced")
    return request


def lease_field_error(exc: InvalidRequest) -> InvalidRequest:
    """The request's refusal worded with the Lease's field (`pool-selector` ->
    `spec.poolSelector`, `labels` -> `metadata.labels`)."""
    field = exc.field
    head = re.split(r"[.\[]", field, maxsplit=1)[0]
    rest = field[len(head):]
    if head in FIELD_OF:
        named = "spec." + FIELD_OF[head] + rest
    elif head == "labels":
        named = "metadata.labels" + rest
    else:
        named = "metadata." + field if field else "spec"
    message = exc.message
    if field and message.startswith(field + ":"):
        message = message[len(field) + 1:].lstrip()
    return InvalidRequest.of(named, message)


def lease_worded(message: str) -> str:
    """A worker's refusal led by a request field (`pool-selector: no configured pool ...`)
    worded with the Lease's own (`spec.poolSelector: ...`); any other message as it is."""
    head, colon, rest = message.partition(":")
    if colon and head in FIELD_OF:
        return f"spec.{FIELD_OF[head]}:{rest}"
    return message


# the annotations a CI job puts on its Lease, from which its job-link is made (upstream's)
PROW_URL = "https://prow.ci.openshift.org/view/"
PROW_BUCKET = "test-platform-results"


def job_link(annotations: Mapping[str, Any]) -> str:
    """The link to the Prow job holding a Lease, from its annotations as upstream builds it:
    `prow-job-type` periodic (`<prefix>gs/<bucket>/logs/<job>/<build>`) or presubmit
    (`<prefix>gs/<bucket>/pr-logs/pull/<org>_<repo>/<pr>/<job>/<build>`), with
    `prow-url-prefix` and `prow-gs-bucket` defaulting to OpenShift CI's; "" for any other
    type or a value that is not plain text."""
    if not isinstance(annotations, Mapping):
        return ""

    def get(key: str, default: str = "") -> str:
        value = annotations.get(key)
        if not isinstance(value, str) or text_problem(value, 1024):
            return default
        return value or default

    prefix, bucket = get("prow-url-prefix", PROW_URL), get("prow-gs-bucket", PROW_BUCKET)
    job, build = get("prow-job-name"), get("prow-build-id")
    match get("prow-job-type"):
        case "periodic":
            return f"{prefix}gs/{bucket}/logs/{job}/{build}"
        case "presubmit":
            return (f"{prefix}gs/{bucket}/pr-logs/pull/{get('git-org')}_{get('git-repo')}/"
                    f"{get('git-pr')}/{job}/{build}")
    return ""


def never_reasons(request: Mapping[str, Any], pools: Iterable[Pool]) -> dict[str, str]:
    """Why each pool could never hold `request`, even empty (a cordon is temporary and an
    excluded pool opens when named, so neither counts): the pool-by-pool reasons of a Lease
    the inventory can never meet. {} when the request does not parse, or some pool could."""
    try:
        req = parse_request(dict(request), max_ttl=float(request.get("ttl") or 1) + 1,
                            max_wait=LONGEST_WAIT, max_pools=MAX_INT)
    except InvalidRequest:
        return {}
    candidates = {p.name: replace(p, no_schedule=False, exclude=False) for p in pools}
    empty = Fleet(candidates)
    reasons = {}
    for name, pool in candidates.items():
        why = eligibility(req, pool) or shortfall(req, pool, empty)
        if why is None:
            return {}
        reasons[name] = why
    return reasons
