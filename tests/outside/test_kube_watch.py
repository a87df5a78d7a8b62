"""Watches of the test apiserver (tests/support/kube/watch.py), through the unmodified
kubernetes client's watch.Watch and plain HTTP, pinned to what kube-apiserver's watch cache
does (k8s.io/apiserver/pkg/storage/cacher; the API concepts page, "Efficient detection of
changes", https://kubernetes.io/docs/reference/using-api/api-concepts/)."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.support.kube import KubeApiServer

G, V = "vspherecapacitymanager.splat.io", "v1"
NS = "default"


def lease(name: str, **labels: str) -> dict:
    return {"apiVersion": f"{G}/{V}", "kind": "Lease",
            "metadata": {"name": name, "labels": labels}, "spec": {"networks": 1}}


def stream(custom, timeout: int = 1, **kw) -> list[tuple[str, str, str]]:
    """(type, name, resourceVersion) of every event until the server ends the watch (after
    `timeout` seconds: events from the history are sent at once; 2 where the test makes a
    change while the watch is open)."""
    out = []
    for event in watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS,
                                      "leases", timeout_seconds=timeout, **kw):
        meta = event["object"]["metadata"]
        out.append((event["type"], meta.get("name", ""), meta["resourceVersion"]))
    return out


def raw_watch(kube, query: str, until: int = 1) -> list[dict]:
    """The first `until` events of a watch over plain HTTP (chunked, one JSON per line)."""
    conn = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=10)
    conn.request("GET", f"/apis/{G}/{V}/namespaces/{NS}/leases?watch=1&{query}")
    answer = conn.getresponse()
    assert answer.status == 200
    assert answer.headers["Transfer-Encoding"] == "chunked"
    events = []
    while len(events) < until:
        line = answer.fp.readline()
        if not line:
            break
        if line.strip() and not line.strip().isalnum():
            events.append(json.loads(line))
    conn.close()
    return events


def test_a_watch_from_a_resource_version_sees_every_later_change(kube, custom):
    """"Start at exact": a watch from resourceVersion N gets every change after N, in order:
    ADDED, MODIFIED, DELETED; the DELETED event carries the object's last state with the
    resourceVersion of the deletion (etcd3 watcher); the server ends it at timeoutSeconds."""
    start = custom.list_namespaced_custom_object(G, V, NS, "leases")["metadata"][
        "resourceVersion"]
    made = custom.create_namespaced_custom_object(G, V, NS, "leases", lease("a"))
    custom.patch_namespaced_custom_object(G, V, NS, "leases", "a", {"spec": {"vcpus": 2}})
    custom.delete_namespaced_custom_object(G, V, NS, "leases", "a")
    events = stream(custom, resource_version=start)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "a"), ("MODIFIED", "a"),
                                              ("DELETED", "a")]
    rvs = [int(rv) for _, _, rv in events]
    assert rvs == sorted(rvs) and rvs[0] == int(made["metadata"]["resourceVersion"])
    assert rvs[-1] == kube.resource_version


def test_a_watch_without_resource_version_starts_with_the_current_objects(kube, custom):
    """"Get state and start at most recent": without resourceVersion (or with "0") the watch
    begins with a synthetic ADDED event per existing object, then what changes."""
    for name in ("a", "b"):
        custom.create_namespaced_custom_object(G, V, NS, "leases", lease(name))
    got: list[tuple[str, str, str]] = []

    def run() -> None:
        got.extend(stream(custom, timeout=2))  # open while "c" is created

    reader = threading.Thread(target=run)
    reader.start()
    deadline = time.monotonic() + 5
    while kube.open_watches == 0 and time.monotonic() < deadline:  # opened before the write
        time.sleep(0.01)
    custom.create_namespaced_custom_object(G, V, NS, "leases", lease("c"))
    reader.join()
    assert [(t, n) for t, n, _ in got] == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]
    assert [(t, n) for t, n, _ in stream(custom, resource_version="0")] == [
        ("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]


def test_selectors_turn_changes_into_added_and_deleted(kube, custom):
    """A watch with a label selector sees an object that starts to match as ADDED and one
    that stops matching as DELETED (the cacher filters on the object before and after);
    field selectors metadata.name work as on list."""
    start = kube.resource_version
    custom.create_namespaced_custom_object(G, V, NS, "leases", lease("a", role="x"))
    custom.create_namespaced_custom_object(G, V, NS, "leases", lease("b"))
    custom.patch_namespaced_custom_object(G, V, NS, "leases", "b",
                                          {"metadata": {"labels": {"role": "x"}}})
    custom.patch_namespaced_custom_object(G, V, NS, "leases", "a",
                                          {"metadata": {"labels": {"role": "y"}}})
    events = stream(custom, resource_version=str(start), label_selector="role=x")
    assert [(t, n) for t, n, _ in events] == [("ADDED", "a"), ("ADDED", "b"),
                                              ("DELETED", "a")]
    by_name = stream(custom, resource_version=str(start), field_selector="metadata.name=b")
    assert [(t, n) for t, n, _ in by_name] == [("ADDED", "b"), ("MODIFIED", "b")]


def test_a_compacted_resource_version_is_410_expired(kube, custom):
    """A watch from a resourceVersion older than the history kept gets one ERROR event with
    a 410 Expired Status, `too old resource version: N (M)` (watch_cache_history.go
    GetIntervalLocked), which the client raises as ApiException(410); `compact()` forgets the
    history as etcd's compaction does, `history_limit` keeps a window."""
    custom.create_namespaced_custom_object(G, V, NS, "leases", lease("a"))
    old = kube.resource_version
    custom.create_namespaced_custom_object(G, V, NS, "leases", lease("b"))
    compacted = kube.compact()
    with pytest.raises(ApiException) as err:
        stream(custom, resource_version=str(old - 1))
    assert err.value.status == 410
    assert err.value.reason == f"Expired: too old resource version: {old - 1} ({compacted})"
    (event,) = raw_watch(kube, f"resourceVersion={old - 1}")
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    assert event["object"]["reason"] == "Expired" and event["object"]["kind"] == "Status"
    assert stream(custom, resource_version=str(compacted)) == []  # the newest is still fine
    with KubeApiServer(history_limit=2) as small:
        api = client.CustomObjectsApi(small.api_client())
        first = small.resource_version
        for name in "abc":
            api.create_namespaced_custom_object(G, V, NS, "leases", lease(name))
        with pytest.raises(ApiException) as err:
            stream(api, resource_version=str(first))
        assert err.value.status == 410
        assert [n for _, n, _ in stream(api, resource_version=str(first + 1))] == ["b", "c"]


def test_bookmarks_only_when_allowed(kube, custom):
    """allowWatchBookmarks: the server may send BOOKMARK events, objects of the watched kind
    with only metadata.resourceVersion (the current one); never when not allowed
    (API concepts, Watch bookmarks). `bookmark_interval` sets how often (the watch cache: about
    every minute)."""
    custom.create_namespaced_custom_object(G, V, NS, "leases", lease("a"))
    kube.bookmark_interval = 0.2
    rv = str(kube.resource_version)
    events = raw_watch(kube, f"resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=3")
    assert events[0]["type"] == "BOOKMARK"
    assert events[0]["object"]["kind"] == "Lease"
    assert events[0]["object"]["apiVersion"] == f"{G}/{V}"
    assert events[0]["object"]["metadata"]["resourceVersion"] == rv
    assert "spec" not in events[0]["object"]
    assert stream(custom, timeout=1, resource_version=rv) == []


def test_send_initial_events_ends_with_a_marked_bookmark(kube, custom):
    """sendInitialEvents=true (watch-list): the current objects as ADDED, then a BOOKMARK
    annotated `k8s.io/initial-events-end: "true"` (API concepts, Streaming lists)."""
    custom.create_namespaced_custom_object(G, V, NS, "leases", lease("a"))
    events = raw_watch(kube, "sendInitialEvents=true&allowWatchBookmarks=true"
                             "&resourceVersionMatch=NotOlderThan&timeoutSeconds=3", until=2)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {
        "k8s.io/initial-events-end": "true"}


def test_close_watches_ends_the_streams(kube, custom):
    """close_watches() ends every open stream as an apiserver restart does (the client sees
    its stream end); with an error Status, an ERROR event comes first."""
    ended = threading.Event()

    def run() -> None:
        stream(custom, timeout=30)
        ended.set()

    reader = threading.Thread(target=run)
    reader.start()
    deadline = time.monotonic() + 5
    while kube.open_watches == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kube.close_watches() == 1
    assert ended.wait(5)
    reader.join()
    assert kube.open_watches == 0


def test_a_resource_version_from_the_future_times_out(kube, custom):
    """A watch or list at a resourceVersion the server has not reached waits for it, then
    answers 504 Timeout with cause ResourceVersionTooLarge (storage.
    NewTooLargeResourceVersionError); one reached meanwhile is served. The wait is
    kube-apiserver's 3 s (TOO_LARGE_WAIT), shortened here: what ends it is the same."""
    kube.too_large_wait = 0.5
    future = kube.resource_version + 100
    with pytest.raises(ApiException) as err:
        custom.list_namespaced_custom_object(G, V, NS, "leases", resource_version=str(future))
    body = json.loads(err.value.body)
    assert err.value.status == 504 and body["reason"] == "Timeout"
    assert body["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    soon = kube.resource_version + 1
    threading.Timer(0.3, lambda: custom.create_namespaced_custom_object(
        G, V, NS, "leases", lease("a"))).start()
    assert [n for _, n, _ in stream(custom, timeout=2, resource_version=str(soon - 1))] == ["a"]


def test_configmaps_and_namespaces_are_watched_too(kube):
    """The core kinds share the same watch machinery (kopf watches namespaces)."""
    core = client.CoreV1Api(kube.api_client())
    start = kube.resource_version
    core.create_namespaced_config_map(NS, {"metadata": {"name": "cm"}})
    kube.create_namespace("ci")
    cms = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_namespaced_config_map, NS, resource_version=str(start), timeout_seconds=1)]
    assert cms == [("ADDED", "cm")]
    names = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_namespace, resource_version=str(start), timeout_seconds=1)]
    assert names == [("ADDED", "ci")]
