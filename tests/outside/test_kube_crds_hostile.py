"""Hostile input to the test apiserver's custom resources: whatever a client sends is answered
as kube-apiserver answers it (400 for what does not decode, 413 above the request limit, 422
naming the field, 409 for replays), never a 5xx and never a traceback; what is stored reads
back exactly as the create answered it. Strings are kept as Go's JSON decoder keeps them
(invalid UTF-8 and lone surrogates become U+FFFD: encoding/json's documented behaviour)."""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.kube import KubeApiServer

G, V = "vspherecapacitymanager.splat.io", "v1"
LEASES = f"/apis/{G}/{V}/namespaces/default/leases"
_names = itertools.count()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
def kube():
    with KubeApiServer() as server:
        yield server


def send(kube, method: str, path: str, body: bytes | None,
         content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(kube.url + path, data=body, method=method,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def lease_body(name: str, spec: object, labels: object = None) -> bytes:
    meta: dict = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    return json.dumps({"apiVersion": f"{G}/{V}", "kind": "Lease", "metadata": meta,
                       "spec": spec}).encode()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(spec=st.dictionaries(st.sampled_from(["vcpus", "memory", "storage", "pools",
                                             "vcenters", "networks", "network-type",
                                             "poolSelector", "tolerations", "required-pool",
                                             "boskos-lease-id", "other"]), json_values,
                            max_size=6) | json_values)
def test_any_spec_is_stored_exactly_or_refused_naming_the_field(kube, spec):
    name = f"p{next(_names)}"
    code, answer = send(kube, "POST", LEASES, lease_body(name, spec))
    assert code in (201, 400, 422), answer
    if code == 201:
        _, read = send(kube, "GET", f"{LEASES}/{name}", None)
        assert read == answer
        assert set(answer["spec"]) <= {"vcpus", "memory", "storage", "pools", "vcenters",
                                       "networks", "network-type", "poolSelector",
                                       "tolerations", "required-pool", "boskos-lease-id"}
    elif code == 422:
        assert answer["reason"] == "Invalid"
        assert all(c["field"].startswith("spec") for c in answer["details"]["causes"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(labels=st.dictionaries(st.text(max_size=70), st.text(max_size=70), max_size=3),
       selector=st.text(max_size=30))
def test_any_labels_and_selector_are_answered_without_a_server_error(kube, labels, selector):
    name = f"q{next(_names)}"
    code, answer = send(kube, "POST", LEASES, lease_body(name, {"networks": 1}, labels))
    assert code in (201, 422), answer
    if code == 422:
        assert {c["field"] for c in answer["details"]["causes"]} == {"metadata.labels"}
    query = urllib.request.quote(selector, safe="")
    code, answer = send(kube, "GET", f"{LEASES}?labelSelector={query}", None)
    assert code in (200, 400), answer


def test_strings_are_kept_as_go_decodes_them(kube):
    """A lone surrogate (`\\ud800`) and invalid UTF-8 are stored as U+FFFD; control
    characters in a free-form string are kept; in a name they are 422 metadata.name."""
    body = (b'{"apiVersion":"%s/%s","kind":"Lease","metadata":{"name":"s1"},'
            b'"spec":{"networks":1,"boskos-lease-id":"a\\ud800b\xff\\u0007"}}' % (
                G.encode(), V.encode()))
    code, answer = send(kube, "POST", LEASES, body)
    assert code == 201 and answer["spec"]["boskos-lease-id"] == "a\ufffdb\ufffd\x07"
    code, answer = send(kube, "POST", LEASES, lease_body("bad\x00name", {"networks": 1}))
    assert code == 422
    assert [c["field"] for c in answer["details"]["causes"]] == ["metadata.name"]


def test_sizes_depths_and_numbers(kube):
    """Above the request limit (3 MiB, the apiserver's default) 413; nesting deeper than a
    decoder follows 400; an integer beyond int64 is a float, not an integer (422); a name
    longer than 253 characters 422."""
    big = lease_body("big", {"networks": 1, "boskos-lease-id": "x" * (4 * 1024 * 1024)})
    code, answer = send(kube, "POST", LEASES, big)
    assert code == 413 and answer["reason"] == "RequestEntityTooLarge"
    deep = b'{"apiVersion":"%s/%s","kind":"Lease","metadata":{"name":"d"},"spec":' % (
        G.encode(), V.encode()) + b"[" * 100_000 + b"]" * 100_000 + b"}"
    code, answer = send(kube, "POST", LEASES, deep)
    assert code == 400
    code, answer = send(kube, "POST", LEASES, lease_body("n", {"networks": 2**70}))
    assert code == 422 and answer["details"]["causes"][0]["field"] == "spec.networks"
    code, answer = send(kube, "POST", LEASES, lease_body("a" * 254, {"networks": 1}))
    assert code == 422


def test_replays_and_foreign_namespaces(kube):
    """The same create twice is 409 AlreadyExists, the same delete twice 404; a body naming
    another namespace than the URL's is 400; a patch of a name in another namespace is 404."""
    body = lease_body("r1", {"networks": 1})
    assert send(kube, "POST", LEASES, body)[0] == 201
    assert send(kube, "POST", LEASES, body)[0] == 409
    kube.create_namespace("other")
    assert send(kube, "PATCH", f"/apis/{G}/{V}/namespaces/other/leases/r1", b"{}",
                "application/merge-patch+json")[0] == 404
    foreign = json.loads(body)
    foreign["metadata"]["namespace"] = "other"
    assert send(kube, "POST", LEASES, json.dumps(foreign).encode())[0] == 400
    assert send(kube, "DELETE", f"{LEASES}/r1", None)[0] == 200
    assert send(kube, "DELETE", f"{LEASES}/r1", None)[0] == 404
    for garbage in (b"null", b"3", b'"x"', b"[]"):
        assert send(kube, "PATCH", f"{LEASES}/r1", garbage,
                    "application/merge-patch+json")[0] in (400, 404)
