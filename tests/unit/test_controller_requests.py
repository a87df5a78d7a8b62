"""The Lease controller's pure parts: a Lease turned into its `vcm.acquire` request (every
refusal names the Lease's own field), its job-link, its status at each step, and the merge
patches that keep the Pools and Networks as the configuration says."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from workers.controller import status as st
from workers.controller.inventory import merge_patch
from workers.controller.requests import (
    FINALIZER,
    UID_LABEL,
    granted_owner,
    job_link,
    lease_request,
    lease_worded,
    never_reasons,
    owner_of,
    task_id,
)
from workers.core.errors import InvalidRequest
from workers.core.lease import ADOPTED_LABEL
from workers.core.parsing import parse_request

UID = "0b6f3c1e-58a2-4f7e-9d55-1c1b8f0a2e11"


def lease(spec: Any, labels: dict[str, str] | None = None, name: str = "job-1-abcde",
          annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "vsphere-infra-helpers", "uid": UID,
                            "labels": labels if labels is not None else {}}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "vspherecapacitymanager.splat.io/v1", "kind": "Lease",
            "metadata": meta, "spec": spec}


def test_the_ci_steps_lease_becomes_a_request_for_its_install():
    labels = {"boskos-lease-id": "vsphere-elastic-42", "job-name": "e2e-vsphere",
              "cluster-id": "ci-op-x-1", "vsphere-capacity-manager.splat-team.io/lease-namespace":
              "ci-op-x"}
    req = lease_request(lease({"vcpus": 24, "memory": 96, "network-type": "single-tenant",
                               "networks": 1, "pools": 1}, labels), ttl=86400)
    assert req["vcpus"] == 24 and req["memory"] == 96 and req["networks"] == 1
    assert req["request-id"] == UID and req["ttl"] == 86400
    assert req["owner"] == "vsphere-infra-helpers/vsphere-elastic-42"  # one install per job
    assert req["boskos-lease-id"] == "vsphere-elastic-42"
    assert req["labels"] == {**labels, UID_LABEL: UID}
    assert req["wait"] == 7 * 86400  # waits in line, as a Lease does until it is met
    assert "vcenters" not in req  # unset: no cap
    parse_request(req)  # what the worker checks


def test_network_only_and_upstream_spellings():
    req = lease_request(lease({"vcpus": 0, "memory": 0, "network-type": "", "networks": 1,
                               "requiresPool": "typo-upstream-ignores",
                               "poolSelector": {"region": "east"}, "vcenters": 3,
                               "required-pool": "pool3"}), ttl=60)
    assert req["vcpus"] == 0 and req["memory"] == 0
    assert "network-type" not in req  # "" is the default type
    assert req["pool-selector"] == {"region": "east"} and req["required-pool"] == "pool3"
    assert req["vcenters"] == 3 and req["pools"] == 1
    assert "requiresPool" not in req
    assert req["owner"] == "vsphere-infra-helpers/job-1-abcde"  # no boskos-lease-id


@pytest.mark.parametrize(("spec", "labels", "field"), [
    ({"vcpus": "24", "networks": 1}, {}, "spec.vcpus"),
    ({"vcpus": 10**15, "memory": 1, "networks": 1}, {}, "spec.vcpus"),
    ({"vcpus": -1, "networks": 1}, {}, "spec.vcpus"),
    ({"vcpus": 1, "memory": 1, "networks": -3}, {}, "spec.networks"),
    ({"networks": 0}, {}, "spec.networks"),
    ({"vcpus": 1, "memory": 1, "poolSelector": ["x"]}, {}, "spec.poolSelector"),
    ({"vcpus": 1, "memory": 1, "tolerations": [{"operator": "Sometimes"}]}, {},
     "spec.tolerations"),
    ({"vcpus": 1, "memory": 1, "network-type": "x" * 100}, {}, "spec.network-type"),
    ({"vcpus": 1, "memory": 1, "required-pool": "\x00"}, {}, "spec.required-pool"),
    ({"vcpus": 1, "memory": 1, "pools": 17}, {}, "spec.pools"),
    ({"vcpus": 1, "memory": 1}, {"k" * 70: "v"}, "metadata.labels"),
    ({"vcpus": 1, "memory": 1}, {f"l{i}": "v" for i in range(64)}, "metadata.labels"),
    ({"vcpus": 1, "memory": 1}, {"boskos-lease-id": "\ud800"}, "metadata.labels"),
    ([1, 2], {}, "spec"),
])
def test_a_value_the_request_refuses_names_the_leases_field(spec, labels, field):
    with pytest.raises(InvalidRequest) as info:
        lease_request(lease(spec, labels), ttl=60)
    assert info.value.field.startswith(field)
    assert info.value.message.startswith(info.value.field + ":")


def test_more_pools_than_a_request_may_ask_for_names_spec_pools_and_the_limit():
    with pytest.raises(InvalidRequest) as info:
        lease_request(lease({"vcpus": 1, "memory": 1, "networks": 1, "pools": 17}), ttl=60)
    assert info.value.field == "spec.pools" and "at most 16" in info.value.message
    assert lease_request(lease({"vcpus": 1, "memory": 1, "networks": 1, "pools": 16}),
                         ttl=60)["pools"] == 16


def test_a_lease_asked_for_before_is_sent_again_as_it_is():
    """A Lease with a phase went out before, perhaps before the limit on `pools`: the worker
    answers its request-id with the leases it granted, or refuses it naming the field."""
    body = lease({"vcpus": 1, "memory": 1, "networks": 1, "pools": 20})
    assert lease_request(body, ttl=60, sent=True)["pools"] == 20
    with pytest.raises(InvalidRequest) as info:
        lease_request(lease({"vcpus": 1, "memory": 1, "networks": -1}), ttl=60, sent=True)
    assert info.value.field == "spec.networks"  # every other check stays


JSON = hs.recursive(hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=False)
                    | hs.text(max_size=20),
                    lambda inner: hs.lists(inner, max_size=3)
                    | hs.dictionaries(hs.text(max_size=10), inner, max_size=3), max_leaves=10)
SPEC_KEYS = hs.sampled_from(["vcpus", "memory", "storage", "pools", "vcenters", "networks",
                             "network-type", "required-pool", "poolSelector", "tolerations",
                             "boskos-lease-id", "other"])


@settings(max_examples=150, deadline=None)
@given(hs.dictionaries(SPEC_KEYS, JSON, max_size=6),
       hs.dictionaries(hs.text(max_size=70), hs.text(max_size=70), max_size=4))
def test_any_spec_is_a_valid_request_or_refused_naming_a_lease_field(spec, labels):
    try:
        req = lease_request(lease(spec, labels), ttl=3600)
    except InvalidRequest as exc:
        assert exc.field.startswith(("spec", "metadata.")), exc.field
        return
    parse_request(req)
    json.dumps(req)


def test_owner_stays_a_valid_owner_for_long_names():
    body = lease({"networks": 1}, name="n" * 253)
    assert owner_of(body) == f"vsphere-infra-helpers/{UID}"
    assert task_id(UID) == UID and task_id(UID, 2) == f"{UID}.2"
    assert FINALIZER == "vsphere-capacity-manager.splat-team.io/lease-finalizer"


def test_a_lease_the_inventory_can_never_meet_gets_its_reasons_pool_by_pool():
    from workers.adapters.pools_file import load_pools
    from workers.settings import DEFAULT_POOLS

    pools = load_pools(str(DEFAULT_POOLS))
    never = lease_request(lease({"vcpus": 500, "memory": 1, "networks": 1}), ttl=60)
    reasons = never_reasons(never, pools)
    assert set(reasons) == {p.name for p in pools}
    assert reasons["pool3"] == "insufficient vcpus (need 500, free 40)"
    # a cordoned or excluded pool could still take it: no reasons (it may wait)
    fits_excluded = lease_request(lease({"vcpus": 1, "memory": 1, "networks": 1,
                                         "poolSelector": {"gpu": "true"}}), ttl=60)
    assert never_reasons(fits_excluded, pools) == {}
    assert never_reasons({"vcpus": "x"}, pools) == {}


def test_job_link_from_the_annotations_as_upstream_builds_it():
    assert job_link({"prow-job-type": "periodic", "prow-job-name": "periodic-e2e",
                     "prow-build-id": "123"}) == \
        "https://prow.ci.openshift.org/view/gs/test-platform-results/logs/periodic-e2e/123"
    assert job_link({"prow-job-type": "presubmit", "prow-job-name": "pull-e2e",
                     "prow-build-id": "9", "git-org": "openshift", "git-repo": "installer",
                     "git-pr": "77", "prow-url-prefix": "https://prow.example/view/",
                     "prow-gs-bucket": "b"}) == \
        "https://prow.example/view/gs/b/pr-logs/pull/openshift_installer/77/pull-e2e/9"
    assert job_link({"prow-job-type": "postsubmit"}) == "" == job_link({})
    req = lease_request(lease({"networks": 1, "vcpus": 1, "memory": 1},
                              annotations={"prow-job-type": "periodic"}), ttl=60,
                        job_link=job_link({"prow-job-type": "periodic"}))
    assert req["job-link"].startswith("https://prow.ci.openshift.org/view/gs/")
    bad = lease_request(lease({"networks": 1, "vcpus": 1, "memory": 1}), ttl=60,
                        job_link="javascript:alert(1)")
    assert "job-link" not in bad


def test_conditions_keep_their_transition_time_while_their_status_stays():
    first = st.pending({})
    assert first["phase"] == "Pending"
    kinds = {c["type"]: c for c in first["conditions"]}
    assert set(kinds) == {"Fulfilled", "Pending", "Partial", "Delayed"}
    assert kinds["Pending"]["status"] == "True" and kinds["Fulfilled"]["status"] == "False"
    old = copy.deepcopy(first)
    for c in old["conditions"]:
        c["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    waiting = st.delayed(old, 3, {"pool2": "insufficient memory (need 96, free 40)"})
    times = {c["type"]: c for c in waiting["conditions"]}
    assert times["Pending"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert times["Delayed"]["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert times["Delayed"]["message"] == ("waiting in line at position 3: pool2: "
                                           "insufficient memory (need 96, free 40)")
    gone = st.failed(waiting, "Unschedulable", "x" * 10_000)
    assert gone["phase"] == "Failed" and gone["poolInfo"] is None and gone["envVars"] is None
    message = {c["type"]: c for c in gone["conditions"]}["Fulfilled"]
    assert message["reason"] == "Unschedulable" and len(message["message"]) == st.MAX_MESSAGE
    assert st.unchanged({**waiting}, st.delayed(waiting, 3, {"pool2":
                                                             "insufficient memory (need 96, "
                                                             "free 40)"}))
    assert not st.unchanged(waiting, st.delayed(waiting, 2, {}))


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies it."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


NO_NULL = hs.recursive(hs.booleans() | hs.integers() | hs.text(max_size=5),
                       lambda inner: hs.lists(inner, max_size=3)
                       | hs.dictionaries(hs.sampled_from("abcd"), inner, max_size=3),
                       max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(hs.dictionaries(hs.sampled_from("abcd"), NO_NULL, max_size=4),
       hs.dictionaries(hs.sampled_from("abcd"), NO_NULL, max_size=4))
def test_merge_patch_makes_the_object_what_is_wanted(current, desired):
    patch = merge_patch(current, desired)
    assert (patch is None) == (current == desired)
    assert apply_merge_patch(current, patch or {}) == desired


@pytest.mark.parametrize(("message", "worded"), [
    ("pool-selector: no configured pool has all these labels",
     "spec.poolSelector: no configured pool has all these labels"),
    ("vcpus: pool1: insufficient vcpus", "spec.vcpus: pool1: insufficient vcpus"),
    ("required-pool: unknown pool 'x'", "spec.required-pool: unknown pool 'x'"),
    ("network-type: no pool has networks", "spec.network-type: no pool has networks"),
    ("no pool fits: pool1: cordoned", "no pool fits: pool1: cordoned"),
    ("owner: not a request field of the Lease", "owner: not a request field of the Lease"),
    ("", ""),
])
def test_a_refusal_is_worded_with_the_leases_own_field(message, worded):
    assert lease_worded(message) == worded


def test_the_granted_owner_is_the_ledgers_within_the_leases_namespace():
    ns = "vsphere-infra-helpers"
    granted = [{"metadata": {"name": "l1"}, "status": {"owner": f"{ns}/job-1"}}]
    assert granted_owner(granted, ns) == f"{ns}/job-1"
    assert granted_owner(granted, "elsewhere") is None  # never another namespace's owner
    assert granted_owner([{"status": {"owner": "vsphere-infra-helpersX/job"}}], ns) is None
    for odd in (None, [], {}, [None], [{"status": None}], [{"status": {"owner": 7}}], "x"):
        assert granted_owner(odd, ns) is None


def test_a_lease_cannot_mark_its_own_ledger_leases_adopted():
    """The adopted mark is the controller's (vcm.adopt's): a Lease labelled with it asks
    without it, so a granted Lease is never mistaken for an adopted one."""
    marked = lease({"networks": 1}, labels={ADOPTED_LABEL: "true", "job-name": "e2e"})
    labels = lease_request(marked, ttl=3600)["labels"]
    assert labels == {"job-name": "e2e", UID_LABEL: UID}


def test_condition_adopted_keeps_the_other_controllers_conditions_as_they_are():
    theirs = [{"type": "Fulfilled", "status": "True", "lastTransitionTime": "2026-08-01T10:00:00Z"},
              {"type": "Pending", "status": "False", "lastTransitionTime": "2026-08-01T10:00:00Z",
               "severity": "", "message": "\x07 odd"}]
    refused = st.adopted({"conditions": copy.deepcopy(theirs)}, False, "why", at="T1")
    assert refused["conditions"][:2] == theirs
    assert refused["conditions"][2] == {
        "type": "Adopted", "status": "False", "lastTransitionTime": "T1", "severity": "Warning",
        "reason": "NotAdopted", "message": "why"}
    again = st.adopted(refused, False, "another why", at="T2")
    assert again["conditions"][2]["lastTransitionTime"] == "T1"  # the same status: kept
    done = st.adopted(again, True, "x" * 10000, at="T3")
    assert [c["type"] for c in done["conditions"]] == ["Fulfilled", "Pending", "Adopted"]
    assert done["conditions"][2]["lastTransitionTime"] == "T3"
    assert done["conditions"][2]["reason"] == "Adopted"
    assert len(done["conditions"][2]["message"]) == st.MAX_MESSAGE
    assert st.adopted({"conditions": "garbage"}, True, "m", at="T4")["conditions"] == [
        {"type": "Adopted", "status": "True", "lastTransitionTime": "T4", "severity": "Info",
         "reason": "Adopted", "message": "m"}]
