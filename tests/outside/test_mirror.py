"""ConfigMapMirror against the real kubernetes client and our HTTP apiserver; FileMirror on disk."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.configmap_mirror import chunk_sizes
from tests.support.kube_apiserver import KubeApiServer
from tests.support.rbac import deploy_rbac, mirror_configmap, service_account_of
from workers.adapters.mirror.configmap import ConfigMapMirror
from workers.adapters.mirror.errors import MirrorError, MirrorTooLarge, retry_backoff
from workers.adapters.mirror.factory import build_mirror, mirror_from_env
from workers.adapters.mirror.file import FileMirror
from workers.settings import CONFIGMAP_LIMIT, DEFAULT_SHARD_BYTES, Settings

NS, NAME = mirror_configmap()  # as deploy/ names it: its RBAC Role grants exactly these
ROOT = Path(__file__).resolve().parents[2]


# ---- realistic snapshots ---------------------------------------------------------------------


def make_lease(rnd: random.Random) -> dict[str, Any]:
    """A lease in the wire shape, with realistic variety (ids are random)."""
    t = datetime(2026, 11, 22, 15, 32, 6, tzinfo=UTC) + timedelta(seconds=rnd.randint(0, 86400))
    pool = rnd.randint(1, 40)
    vc = (pool - 1) // 4 + 1
    vlan = 1000 + rnd.randint(0, 3999)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "spec": {
            "vcpus": rnd.choice([8, 16, 24, 32]),
            "memory": rnd.choice([32, 64, 96, 128]),
            "storage": rnd.choice([250, 500, 700, 1000]),
            "vcenters": 1,
            "networks": 1,
        },
        "status": {
            "leased-at": t.strftime(fmt),
            "expires-at": (t + timedelta(hours=24)).strftime(fmt),
            "boskos-lease-id": str(uuid.UUID(int=rnd.getrandbits(128))),
            "pool": f"pool{pool}",
            "vcenter": f"vcenter{vc}.ci.example.com",
            "datacenter": f"datacenter{vc}",
            "cluster": f"cluster{pool}",
            "datastore": f"datastore{pool}",
            "networks": [
                {
                    "port-group": f"ci-vlan-{vlan}",
                    "vlan": vlan,
                    "cidr": f"10.{vlan // 256}.{vlan % 256}.0/24",
                    "gateway": f"10.{vlan // 256}.{vlan % 256}.1",
                    "type": "single-tenant",
                }
            ],
            "owner": f"periodic-ci-e2e-vsphere-ovn-{rnd.randint(100000, 999999)}",
            "request-id": str(uuid.UUID(int=rnd.getrandbits(128))),
            "state": "leased",
        },
        "metadata": {
            "name": str(uuid.UUID(int=rnd.getrandbits(128))),
            "creationTimestamp": t.strftime(fmt),
        },
    }


def make_snapshot(n: int, seed: int = 0, version: int = 1) -> dict[str, Any]:
    rnd = random.Random(seed)
    leases = [make_lease(rnd) for _ in range(n)]
    return {
        "version": version,
        "seq": version,
        "leases": leases,
        "requests": {
            lease["status"]["request-id"]: [lease["metadata"]["name"]] for lease in leases
        },
        "counters": {"pool1": {"vcpus": 24 * n, "memory": 96 * n}},
    }


def raw_size(snapshot: dict[str, Any]) -> int:
    return len(json.dumps(snapshot, separators=(",", ":")).encode())


def random_snapshot(nbytes: int, seed: int = 0) -> dict[str, Any]:
    """Incompressible: base64 of random bytes (compresses to about 3/4)."""
    blob = random.Random(seed).randbytes(nbytes)
    return {"version": seed, "noise": base64.b64encode(blob).decode()}


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def kube():
    """The test apiserver enforcing deploy/rbac.yaml."""
    with KubeApiServer(rbac=deploy_rbac()) as server:
        yield server


def placement_client(kube: KubeApiServer) -> client.ApiClient:
    """A client with the token of the service account deploy/ gives the placement worker,
    the process that runs the mirror."""
    account = service_account_of("placement")
    assert account is not None, "deploy/ mounts no token in the placement worker"
    return kube.api_client(api_key={"BearerToken": f"Bearer {kube.token_for(*account)}"})


@pytest.fixture
def api(kube):
    api_client = placement_client(kube)
    yield api_client
    api_client.close()


@pytest.fixture
def admin(kube):
    """The test's own client: a cluster admin (the checks of the server itself)."""
    api_client = kube.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def mirror(api):
    return ConfigMapMirror(NS, NAME, api_client=api, timeout=2.0)


def head_meta(kube: KubeApiServer) -> dict[str, Any]:
    head = kube.get(NS, NAME)
    assert head is not None
    return json.loads(head["data"]["mirror.json"])


def check_slots(kube: KubeApiServer) -> dict[str, Any]:
    """Invariants of the stored mirror: only the head and slots NAME-0..15 exist; every shard
    the head names carries its token and index; no slot is both committed and stale."""
    allowed = {NAME} | {f"{NAME}-{i}" for i in range(16)}
    assert set(kube.names(NS)) <= allowed
    meta = head_meta(kube)
    assert not set(meta["shards"]) & set(meta["stale"])
    for index, slot in enumerate(meta["shards"], 1):
        shard_meta = json.loads(kube.get(NS, slot)["data"]["mirror.json"])
        assert (shard_meta["token"], shard_meta["index"]) == (meta["token"], index)
    for name in kube.names(NS):  # every ConfigMap respects the apiserver limit
        cm = kube.get(NS, name)
        size = sum(len(k) + len(v) for k, v in cm.get("data", {}).items())
        size += sum(len(k) + len(base64.b64decode(v)) for k, v in cm.get("binaryData", {}).items())
        assert size <= CONFIGMAP_LIMIT
    return meta


def slots_with_payload(kube: KubeApiServer) -> set[str]:
    return {n for n in kube.names(NS) if n != NAME and kube.get(NS, n).get("binaryData")}


# ---- the test server behaves like kube-apiserver (more in test_kube_apiserver.py) ------------


def _status(err: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    body = json.loads(err.value.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == err.value.status
    return body


def test_server_conflict_on_stale_resource_version(admin):
    core = client.CoreV1Api(admin)
    created = core.create_namespaced_config_map(NS, {"metadata": {"name": "c"}, "data": {"a": "1"}})
    stale = created.metadata.resource_version
    updated = core.replace_namespaced_config_map(
        "c", NS, {"metadata": {"name": "c", "resourceVersion": stale}, "data": {"a": "2"}}
    )
    assert int(updated.metadata.resource_version) > int(stale)
    assert updated.metadata.uid == created.metadata.uid
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map(
            "c", NS, {"metadata": {"name": "c", "resourceVersion": stale}, "data": {"a": "3"}}
        )
    assert (err.value.status, err.value.reason) == (409, "Conflict")
    body = _status(err)
    assert body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on configmaps "c": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    assert core.read_namespaced_config_map("c", NS).data == {"a": "2"}
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "c"}})
    assert err.value.status == 409 and _status(err)["reason"] == "AlreadyExists"


def test_server_field_value_too_long_at_1mib(admin):
    core = client.CoreV1Api(admin)
    # exactly 1,048,576 bytes of keys + values (binaryData counted decoded) is accepted
    fits = {"d": "x" * 1000}
    binary = base64.b64encode(b"\0" * (CONFIGMAP_LIMIT - 1000 - 2)).decode()
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "fits"}, "data": fits, "binaryData": {"b": binary}}
    )
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(
            NS, {"metadata": {"name": "x"}, "data": {"d": "x" * 1001}, "binaryData": {"b": binary}}
        )
    assert (err.value.status, err.value.reason) == (422, "Unprocessable Entity")
    body = _status(err)
    assert body["reason"] == "Invalid"
    assert (
        body["message"] == 'ConfigMap "x" is invalid: []: Too long: must have at most 1048576 bytes'
    )
    assert [c["reason"] for c in body["details"]["causes"]] == ["FieldValueTooLong"]
    # an update past the limit is refused the same way and leaves the object alone
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map(
            "fits", NS, {"metadata": {"name": "fits"}, "data": {"d": "x" * (CONFIGMAP_LIMIT + 1)}}
        )
    assert err.value.status == 422
    assert core.read_namespaced_config_map("fits", NS).data == fits


def test_server_not_found(admin):
    core = client.CoreV1Api(admin)
    calls = [
        lambda: core.read_namespaced_config_map("nope", NS),
        lambda: core.replace_namespaced_config_map("nope", NS, {"metadata": {"name": "nope"}}),
        lambda: core.delete_namespaced_config_map("nope", NS),
        lambda: core.patch_namespaced_config_map("nope", NS, {"data": {"a": "b"}}),
    ]
    for call in calls:
        with pytest.raises(ApiException) as err:
            call()
        assert (err.value.status, err.value.reason) == (404, "Not Found")
        body = _status(err)
        assert body["reason"] == "NotFound" and body["message"] == 'configmaps "nope" not found'
        assert body["details"] == {"name": "nope", "kind": "configmaps"}


# ---- ConfigMapMirror -------------------------------------------------------------------------


def test_round_trip_and_write_counts(kube, mirror):
    assert mirror.load() is None
    snap = make_snapshot(20, seed=1, version=7)

    assert mirror.save(snap) == 1  # one create of the head
    assert kube.writes == 1
    assert mirror.load() == snap

    head = kube.get(NS, NAME)
    meta = json.loads(head["data"]["mirror.json"])
    assert meta["seq"] == 7 and meta["generation"] == 1 and meta["shards"] == []
    assert head["metadata"]["labels"]["vsphere-capacity-manager/mirror-of"] == NAME
    # what is stored really is compact JSON + zlib
    payload = base64.b64decode(head["binaryData"]["part-0"])
    assert json.loads(zlib.decompress(payload)) == snap

    snap2 = make_snapshot(21, seed=2, version=8)
    assert mirror.save(snap2) == 1  # one replace
    assert json.loads(kube.get(NS, NAME)["data"]["mirror.json"])["generation"] == 2
    assert mirror.load() == snap2
    assert mirror.save(snap2) == 0  # identical content: nothing to write
    assert mirror.last_stats is not None and mirror.last_stats.skipped
    assert kube.writes == 2


def test_missing_configmap_is_created_after_404(kube, mirror, admin):
    mirror.save({"version": 1, "leases": []})
    log = [(m, code) for m, path, code in kube.request_log]
    assert log == [("GET", 404), ("POST", 201)]
    # deleted behind our back (the placement worker may not delete it): next save re-creates it
    client.CoreV1Api(admin).delete_namespaced_config_map(NAME, NS)
    assert mirror.load() is None
    assert mirror.save({"version": 2, "leases": []}) == 1
    assert mirror.load() == {"version": 2, "leases": []}


def test_create_race_already_exists_rereads_and_replaces(kube, mirror):
    """Someone creates the head between our 404 and our POST: 409 AlreadyExists → re-read → PUT."""

    def create_first(method: str, path: str, name: str | None) -> None:
        if method == "POST" and name == NAME:
            kube.remove_hook(create_first)
            kube.put({"metadata": {"name": NAME, "namespace": NS}, "data": {"other": "x"}})

    kube.add_hook(create_first)
    snap = make_snapshot(3, seed=3)
    assert mirror.save(snap) == 2  # POST (409) + PUT
    codes = [(m, c) for m, _, c in kube.request_log]
    assert codes == [("GET", 404), ("POST", 409), ("GET", 200), ("PUT", 200)]
    assert mirror.load() == snap


def test_stale_resource_version_conflict_is_retried(kube, mirror):
    mirror.save(make_snapshot(3, seed=4, version=1))

    def bump(method: str, path: str, name: str | None) -> None:
        if method == "PUT" and name == NAME:
            kube.remove_hook(bump)
            current = kube.get(NS, NAME)
            current["metadata"]["annotations"] = {"touched": "yes"}
            kube.put(current)  # another writer got in first: resourceVersion moves on

    kube.add_hook(bump)
    snap = make_snapshot(4, seed=5, version=2)
    assert mirror.save(snap) == 2
    assert kube.conflicts == 1
    assert mirror.load() == snap
    # the other writer's annotation is kept (we only own data/binaryData and our labels)
    assert kube.get(NS, NAME)["metadata"]["annotations"] == {"touched": "yes"}


def test_5000_leases_fit_thanks_to_compression(kube, mirror):
    snap = make_snapshot(5000, seed=6, version=5000)
    raw = raw_size(snap)
    assert raw > 3 * CONFIGMAP_LIMIT  # raw JSON could never fit in one ConfigMap
    started = time.monotonic()
    writes = mirror.save(snap)
    save_s = time.monotonic() - started
    stats = mirror.last_stats
    assert stats is not None and stats.raw_bytes == raw
    assert stats.encoded_bytes < CONFIGMAP_LIMIT
    assert writes == 1 and stats.configmaps == 1
    started = time.monotonic()
    assert mirror.load() == snap
    load_s = time.monotonic() - started
    print(
        f"\n5000 leases: raw JSON {raw} B ({raw / 5000:.0f} B/lease), encoded "
        f"{stats.encoded_bytes} B ({raw / stats.encoded_bytes:.1f}x), {writes} write(s); "
        f"save {save_s:.2f}s, load {load_s:.2f}s"
    )
    # without the compact encoding the apiserver refuses it
    api = client.CoreV1Api(mirror.api_client)
    half = json.dumps(snap["leases"][:2000], separators=(",", ":"))
    assert len(half) > CONFIGMAP_LIMIT
    with pytest.raises(ApiException) as err:
        api.create_namespaced_config_map(NS, {"metadata": {"name": "raw"}, "data": {"l": half}})
    assert err.value.status == 422


def test_5000_leases_sharded_double_buffered_then_shrunk(kube, api):
    mirror = ConfigMapMirror(NS, NAME, api_client=api, shard_bytes=256 * 1024)
    snap = make_snapshot(5000, seed=7, version=1)
    writes = mirror.save(snap)
    n = mirror.last_stats.configmaps
    k = n - 1
    assert k >= 3
    # head created with the reservation, k slots created, commit
    assert writes == 1 + k + 1
    meta = check_slots(kube)
    assert meta["shards"] == [f"{NAME}-{i}" for i in range(k)] and meta["pending"] is None
    assert mirror.load() == snap

    # steady state: reserve (patch) + k shard replaces + commit; the other half of the slots
    snap2 = make_snapshot(5000, seed=8, version=2)
    assert mirror.save(snap2) == 1 + k + 1
    meta = check_slots(kube)
    assert meta["shards"] == [f"{NAME}-{i}" for i in range(k, 2 * k)]
    assert meta["stale"] == [f"{NAME}-{i}" for i in range(k)]
    assert mirror.load() == snap2
    snap3 = make_snapshot(5000, seed=9, version=3)
    mirror.save(snap3)
    assert check_slots(kube)["shards"] == [f"{NAME}-{i}" for i in range(k)]  # alternates
    assert mirror.load() == snap3

    # shrinking to one ConfigMap blanks the stale slots (under the lock), then costs 1 write
    small = {"version": 4, "leases": []}
    assert mirror.save(small) == 1 + k + 1
    assert mirror.load() == small
    assert mirror.save({"version": 5, "leases": []}) == 1 + k + 1
    assert slots_with_payload(kube) == set()
    assert check_slots(kube)["stale"] == []
    assert mirror.save({"version": 6, "leases": []}) == 1
    # RBAC of deploy/: get/create/update/patch on fixed names only; never delete or list
    methods = {m for m, _, _ in kube.request_log}
    assert methods <= {"GET", "POST", "PUT", "PATCH"}
    assert all(p.rsplit("/", 1)[-1] != "configmaps" for m, p, _ in kube.request_log if m == "GET")


def test_incompressible_data_is_sharded_and_round_trips(kube, mirror):
    snap = random_snapshot(2_500_000, seed=9)  # ~3.3 MB of base64, ~2.5 MB compressed
    mirror.save(snap)
    stats = mirror.last_stats
    assert stats.encoded_bytes > 2 * mirror.shard_bytes
    assert stats.configmaps == 3
    assert check_slots(kube)["shards"] == [f"{NAME}-0", f"{NAME}-1"]
    assert kube.writes == 4  # successful: head create, 2 slot creates, commit
    assert mirror.load() == snap


def test_too_large_raises_and_writes_nothing(kube, api):
    small = ConfigMapMirror(NS, NAME, api_client=api, max_shards=2)
    assert small.max_configmaps == 2  # head + half of the 2 slots
    before = make_snapshot(5, seed=10)
    small.save(before)
    writes_before = kube.writes
    with pytest.raises(MirrorTooLarge) as err:
        small.save(random_snapshot(2_500_000, seed=11))
    assert err.value.needed > 2 and err.value.encoded_bytes > 2 * small.shard_bytes
    assert "at most 2" in str(err.value)
    assert kube.writes == writes_before  # refused before any write
    assert small.load() == before  # the mirror still holds the last good snapshot


def test_too_large_with_default_limits(kube, mirror):
    # 10 MB of random bytes -> 13.3 MB of base64 text -> ~10 MB compressed > 9 ConfigMaps
    assert mirror.max_configmaps == 9
    with pytest.raises(MirrorTooLarge) as err:
        mirror.save(random_snapshot(10_000_000, seed=12))
    assert err.value.needed == 10
    assert kube.writes == 0


def test_apiserver_refusal_as_too_large_is_loud(kube, api):
    """If a smaller limit is enforced by the apiserver, 422 FieldValueTooLong → MirrorTooLarge."""
    kube.max_object_bytes = 100_000
    mirror = ConfigMapMirror(NS, NAME, api_client=api)
    with pytest.raises(MirrorTooLarge):
        mirror.save(random_snapshot(200_000, seed=13))


def test_503_raises_mirror_error_then_recovers(kube, mirror):
    mirror.save(make_snapshot(5, seed=14, version=1))
    kube.inject_fault(503, count=None)
    snap = make_snapshot(6, seed=15, version=2)
    with pytest.raises(MirrorError) as err:
        mirror.save(snap)
    assert err.value.status == 503 and not isinstance(err.value, MirrorTooLarge)
    with pytest.raises(MirrorError):
        mirror.load()
    kube.clear_faults()
    assert mirror.load()["version"] == 1
    assert mirror.save(snap) == 1
    assert mirror.load() == snap


def test_failed_commit_keeps_old_snapshot_and_same_writer_resumes(kube, api):
    mirror = ConfigMapMirror(NS, NAME, api_client=api, shard_bytes=64 * 1024)
    first = make_snapshot(1000, seed=16, version=1)
    mirror.save(first)
    first_slots = check_slots(kube)["shards"]
    assert len(first_slots) >= 2
    kube.inject_fault(500, count=1, methods={"PUT"}, name=NAME)  # the commit
    with pytest.raises(MirrorError) as err:
        mirror.save(make_snapshot(1000, seed=17, version=2))
    assert err.value.status == 500
    # the new shards went to other slots: readers still get the whole first snapshot
    meta = check_slots(kube)
    assert meta["shards"] == first_slots and meta["pending"]["by"] == mirror.writer_id
    assert mirror.load() == first
    # the same writer takes its own reservation back at once
    third = make_snapshot(1000, seed=18, version=3)
    mirror.save(third)
    assert mirror.lock_waits == 0  # it did not wait out its own reservation
    assert check_slots(kube)["pending"] is None
    assert mirror.load() == third


def test_abandoned_reservation_is_taken_over_after_lock_ttl(kube, api):
    crashed = ConfigMapMirror(NS, NAME, api_client=api, shard_bytes=4096)
    crashed.save(random_snapshot(10_000, seed=40))
    kube.inject_fault(503, count=None, methods={"PUT", "POST"}, name=f"{NAME}-2")
    with pytest.raises(MirrorError):
        crashed.save(random_snapshot(12_000, seed=41))  # dies after reserving
    kube.clear_faults()
    assert head_meta(kube)["pending"]["by"] == crashed.writer_id

    impatient = ConfigMapMirror(NS, NAME, api_client=api, shard_bytes=4096, lock_wait=0.3)
    with pytest.raises(MirrorError, match="busy"):
        impatient.save(random_snapshot(11_000, seed=42))
    assert crashed.load() == random_snapshot(10_000, seed=40)

    # its own save must end within lock_ttl / 2 (3 s here: it writes a few hundred shards,
    # on a machine the other test files load too)
    other = ConfigMapMirror(NS, NAME, api_client=api, shard_bytes=4096, lock_ttl=6.0, timeout=2.0)
    reserved_at = head_meta(kube)["pending"]["at"]
    snap = random_snapshot(11_000, seed=43)
    other.save(snap)
    assert other.lock_waits > 0 and time.time() - reserved_at >= 6.0  # waited out lock_ttl
    assert other.load() == snap
    assert check_slots(kube)["pending"] is None


def test_commit_refused_when_reservation_was_taken_over(kube, api):
    slow = ConfigMapMirror(NS, NAME, api_client=api, shard_bytes=4096)
    before = random_snapshot(10_000, seed=44)
    slow.save(before)

    def thief(method: str, path: str, name: str | None) -> None:
        if (name or "").startswith(f"{NAME}-"):  # while `slow` writes its shards
            kube.remove_hook(thief)
            head = kube.get(NS, NAME)
            meta = json.loads(head["data"]["mirror.json"])
            meta["pending"] = {"token": "thief", "shards": [], "at": time.time(), "by": "x"}
            head["data"]["mirror.json"] = json.dumps(meta)
            kube.put(head)

    kube.add_hook(thief)
    with pytest.raises(MirrorError, match="taken over"):
        slow.save(random_snapshot(10_000, seed=45))
    assert slow.load() == before  # nothing committed


def test_hang_past_timeout_raises_then_later_save_succeeds(kube, api):
    mirror = ConfigMapMirror(NS, NAME, api_client=api, timeout=0.3)
    mirror.save(make_snapshot(5, seed=19, version=1))
    kube.inject_fault(hang=3.0, count=None)
    attempts, writes = kube.faults_served, kube.writes
    with pytest.raises(MirrorError) as err:  # each answer would come, after 3 s: too late
        mirror.save(make_snapshot(5, seed=20, version=2))
    assert "unreachable" in str(err.value)
    # it gave up on its first read: urllib3 may retry an idempotent GET a few times (up to 3),
    # then the save fails without writing
    assert 1 <= kube.faults_served - attempts <= 4 and kube.writes == writes
    kube.clear_faults()
    snap = make_snapshot(5, seed=21, version=3)
    assert retry_backoff(lambda: mirror.save(snap), attempts=3, base=0.05) == 1
    assert mirror.load() == snap


def test_server_down_raises_mirror_error(kube, api):
    mirror = ConfigMapMirror(NS, NAME, api_client=api, timeout=0.5)
    kube.stop()
    with pytest.raises(MirrorError):
        mirror.save({"version": 1})
    with pytest.raises(MirrorError):
        mirror.load()


def test_retry_backoff_retries_mirror_errors_but_not_too_large():
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise MirrorError("down", status=503)
        return 42

    assert retry_backoff(flaky, attempts=5, base=0.1, sleep=sleeps.append) == 42
    assert len(calls) == 3 and len(sleeps) == 2 and all(0 <= s <= 0.2 for s in sleeps)

    def too_big() -> int:
        calls.append(1)
        raise MirrorTooLarge("no")

    calls.clear()
    with pytest.raises(MirrorTooLarge):
        retry_backoff(too_big, attempts=5, sleep=sleeps.append)
    assert len(calls) == 1


def test_concurrent_writers_and_reader_never_mix_shards(kube):
    """Two writers race (sharded saves: head CAS conflicts and waits on each other's
    reservation); a reader only ever sees whole snapshots; the end state is one writer's last
    snapshot."""
    kube.set_latency(0.002)
    rounds = 8
    snaps = {
        w: [random_snapshot(9_000 + 1_000 * i, seed=100 * (w + 1) + i) for i in range(rounds)]
        for w in (0, 1)
    }
    for w in (0, 1):
        for i, s in enumerate(snaps[w]):
            s["writer"], s["round"] = w, i
    known = {json.dumps(s, sort_keys=True) for w in (0, 1) for s in snaps[w]}
    clients = [placement_client(kube) for _ in range(3)]
    mirrors = [ConfigMapMirror(NS, NAME, api_client=c, shard_bytes=4096) for c in clients]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def writer(w: int) -> None:
        try:
            for snap in snaps[w]:
                barrier.wait(timeout=30)
                mirrors[w].save(snap)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()

    def reader() -> None:
        try:
            while not done.is_set():
                got = mirrors[2].load()
                if got is not None:
                    assert json.dumps(got, sort_keys=True) in known, "mixed or unknown snapshot"
                    seen.append((got["writer"], got["round"]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in (0, 1)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join(timeout=60)
    done.set()
    threads[2].join(timeout=30)
    for c in clients:
        c.close()
    assert not errors, errors
    final = ConfigMapMirror(NS, NAME, api_client=placement_client(kube)).load()
    assert final in (snaps[0][-1], snaps[1][-1])
    # the race really happened and was resolved
    assert kube.conflicts + mirrors[0].lock_waits + mirrors[1].lock_waits > 0
    assert seen  # the reader did read while the writers were busy
    meta = check_slots(kube)
    assert meta["pending"] is None and meta["generation"] == 2 * rounds


def test_default_client_from_kubeconfig(kube, tmp_path, monkeypatch):
    token_server = KubeApiServer(token="s3cret").start()
    try:
        path = token_server.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", str(path))
        with ConfigMapMirror(NS, NAME) as m:  # not in a cluster → kubeconfig
            m.save({"version": 1, "leases": []})
            assert m.load() == {"version": 1, "leases": []}
        assert token_server.writes == 1
        # the token in the kubeconfig was what let us in
        anonymous = ConfigMapMirror(
            NS, NAME, api_client=client.ApiClient(client.Configuration(host=token_server.url))
        )
        with pytest.raises(MirrorError) as err:
            anonymous.load()
        assert err.value.status == 401
    finally:
        token_server.stop()


def test_no_configuration_at_all_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(MirrorError, match="no Kubernetes configuration"):
        ConfigMapMirror(NS, NAME)


def test_mirror_from_env(kube, api, tmp_path):
    path = str(tmp_path / "ledger.json")
    assert isinstance(mirror_from_env(None, path), FileMirror)
    assert isinstance(mirror_from_env("  ", path), FileMirror)
    m = mirror_from_env("vcm/vcm-ledger", path, api_client=api)
    assert isinstance(m, ConfigMapMirror) and (m.namespace, m.name) == ("vcm", "vcm-ledger")
    for bad in ("vcm-ledger", "a/b/c", "/x", "x/", "Vcm/ledger", "vcm/Ledger", "vcm/a_b"):
        with pytest.raises(ValueError, match="VCM_CONFIGMAP"):
            mirror_from_env(bad, path)


def test_the_settings_give_the_configmap_mirror_its_shard_size_and_request_timeout(
        kube, tmp_path, monkeypatch):
    """build_mirror (the placement worker's) cuts the payload in ConfigMaps of
    VCM_MIRROR_SHARD_BYTES, and gives up a request after VCM_MIRROR_TIMEOUT; unset, just under
    the apiserver's 1 MiB and 5 s."""
    account = service_account_of("placement")
    assert account is not None
    path = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS,
                                 token=kube.token_for(*account))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))
    env = {"VCM_CONFIGMAP": f"{NS}/{NAME}"}
    with build_mirror(Settings.from_env(env)) as default:
        assert isinstance(default, ConfigMapMirror)
        assert default.shard_bytes == DEFAULT_SHARD_BYTES < CONFIGMAP_LIMIT
        assert default.timeout == 5.0
    small = Settings.from_env({**env, "VCM_MIRROR_SHARD_BYTES": "4096",
                               "VCM_MIRROR_TIMEOUT": "0.5"})
    with build_mirror(small) as mirror:
        snap = random_snapshot(10_000, seed=40)  # about 10 KB compressed
        mirror.save(snap)
        assert chunk_sizes(kube, NS, NAME) == [4096, 4096, mirror.last_stats.encoded_bytes - 8192]
        assert mirror.load() == snap
        kube.inject_fault(hang=1.5, count=None)  # answers, but only after 1.5 s
        started = time.monotonic()
        with pytest.raises(MirrorError, match="timed out"):
            mirror.save(random_snapshot(10_000, seed=41))
        assert time.monotonic() - started < 1.5
        kube.clear_faults()
        assert mirror.load() == snap


# ---- FileMirror ------------------------------------------------------------------------------


def test_file_mirror_round_trip(tmp_path):
    m = FileMirror(tmp_path / "sub" / "ledger.json")
    assert m.load() is None
    snap = make_snapshot(50, seed=30)
    assert m.save(snap) == 1
    assert m.load() == snap
    assert json.loads((tmp_path / "sub" / "ledger.json").read_text()) == snap
    snap2 = make_snapshot(10, seed=31, version=2)
    m.save(snap2)
    assert m.load() == snap2
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "ledger.json", "ledger.json.lock"]  # no temp left


def test_file_mirror_corrupt_file_is_an_error_not_none(tmp_path):
    (tmp_path / "ledger.json").write_text('{"version": 1, "leases": [')
    with pytest.raises(MirrorError):
        FileMirror(tmp_path / "ledger.json").load()


_KILL_CHILD = textwrap.dedent(
    """
    import json, sys
    from workers.adapters.mirror.file import FileMirror
    m = FileMirror(sys.argv[1])
    i = 0
    while True:
        i += 1
        n = 2000 + (i * 7919) % 20000
        # self-checking snapshot: the content is a function of the version
        m.save({"version": i, "leases": ["lease-%d-%d" % (i, k) for k in range(n)], "n": n})
        print(i, flush=True)
    """
)


def _check_complete(snapshot: dict[str, Any]) -> None:
    i, n = snapshot["version"], snapshot["n"]
    assert n == 2000 + (i * 7919) % 20000
    assert snapshot["leases"] == [f"lease-{i}-{k}" for k in range(n)]


def test_file_mirror_survives_sigkill_mid_save(tmp_path):
    target = tmp_path / "ledger.json"
    rnd = random.Random(5)
    kills = mid_write = 0
    last_version = 0
    leftovers: set[Path] = set()
    # only some kills land mid-write (temp file made, not yet renamed), fewer on a loaded
    # machine (the JSON encoding before it takes longer): keep trying until one does
    while kills < 6 or (mid_write == 0 and kills < 100):
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILL_CHILD, str(target)],
            cwd=ROOT,  # `-c` puts the working directory first on the path: the repository root
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one complete save happened
        time.sleep(rnd.uniform(0.01, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        kills += 1
        temps = set(tmp_path.glob(".ledger.json.*.tmp"))
        if temps - leftovers:
            mid_write += 1  # the kill landed between temp file creation and rename
        leftovers = temps
        snapshot = FileMirror(target).load()
        assert snapshot is not None
        _check_complete(snapshot)
        last_version = snapshot["version"]
    assert last_version >= 1
    assert mid_write > 0, "no kill landed mid-write: the test proved nothing"


# ---- the mirror never goes back to an older seq ---------------------------------------------


def test_a_save_that_lost_a_race_does_not_put_an_older_seq_over_a_newer_one(kube):
    """Two writers of one ledger: the older one reads the head, the newer one commits seq 10,
    the older one's compare-and-swap gets 409 and re-reads: it must not commit seq 5."""
    old_api, new_api = placement_client(kube), placement_client(kube)
    older = ConfigMapMirror(NS, NAME, api_client=old_api, timeout=2.0)
    newer = ConfigMapMirror(NS, NAME, api_client=new_api, timeout=2.0)
    try:
        older.save(make_snapshot(2, seed=1, version=1))
        ten = make_snapshot(3, seed=10, version=10)

        def newer_first(method: str, path: str, name: str | None) -> None:
            if method == "PUT" and name == NAME:
                kube.remove_hook(newer_first)
                newer.save(ten)  # served by other server threads

        kube.add_hook(newer_first)
        with pytest.raises(MirrorError, match="already holds seq 10") as err:
            older.save(make_snapshot(4, seed=5, version=5))
        assert (err.value.seq, err.value.held) == (5, 10)
        assert kube.conflicts == 1  # the older save really got as far as its write
        assert older.load() == ten and head_meta(kube)["seq"] == 10
        # not retried as a failure (nothing a retry could change)
        calls = []
        with pytest.raises(MirrorError):
            retry_backoff(lambda: calls.append(1) or older.save(make_snapshot(1, version=6)),
                          sleep=lambda _: None)
        assert calls == [1]
        assert older.save(make_snapshot(5, seed=11, version=11)) == 1  # newer: written
        assert head_meta(kube)["seq"] == 11
    finally:
        old_api.close()
        new_api.close()


def test_a_sharded_save_refuses_when_a_newer_one_committed_during_its_reservation(kube, api):
    """A head-only save may commit while another writer writes its shards; the sharded save
    then refuses at its commit and gives its reservation back."""
    other_api = placement_client(kube)
    sharded = ConfigMapMirror(NS, NAME, api_client=api, timeout=2.0, shard_bytes=4096)
    small = ConfigMapMirror(NS, NAME, api_client=other_api, timeout=2.0, shard_bytes=4096)
    try:
        sharded.save({"seq": 1, "leases": []})

        def commit_newer(method: str, path: str, name: str | None) -> None:
            if method in ("POST", "PUT") and name == f"{NAME}-0":  # the first shard
                kube.remove_hook(commit_newer)
                small.save({"seq": 9, "leases": []})

        kube.add_hook(commit_newer)
        with pytest.raises(MirrorError, match="already holds seq 9"):
            sharded.save(random_snapshot(20_000, seed=3) | {"seq": 4})
        assert small.load() == {"seq": 9, "leases": []}
        assert head_meta(kube)["pending"] is None  # no one waits for a save that gave up
    finally:
        other_api.close()


def test_another_ledger_may_replace_the_mirror_whatever_its_seq(kube, mirror):
    """Seqs of two Redis ledgers (epochs) are not comparable: the live ledger's save wins."""
    mirror.save({"seq": 50, "epoch": "a", "leases": []})
    assert mirror.save({"seq": 3, "epoch": "b", "leases": []}) == 1
    assert mirror.load() == {"seq": 3, "epoch": "b", "leases": []}
    with pytest.raises(MirrorError, match="already holds seq 3"):
        mirror.save({"seq": 2, "epoch": "b", "leases": []})


def test_file_mirror_never_goes_back_to_an_older_seq(tmp_path):
    path = tmp_path / "ledger.json"
    newer, older = FileMirror(path), FileMirror(path)
    newer.save({"format": 1, "seq": 10, "leases": [_lease("a")]})
    with pytest.raises(MirrorError, match="already holds seq 10") as err:
        older.save({"format": 1, "seq": 5, "leases": []})
    assert (err.value.seq, err.value.held) == (5, 10)
    assert FileMirror(path).load() == {"format": 1, "seq": 10, "leases": [_lease("a")]}
    assert not list(tmp_path.glob(".ledger.json.*.tmp"))  # the refused temp file is gone
    # another process, with seq 5: refused too
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from workers.adapters.mirror.errors import MirrorError
            from workers.adapters.mirror.file import FileMirror
            try:
                FileMirror(sys.argv[1]).save({"format": 1, "seq": 5, "leases": []})
                print("saved")
            except MirrorError as exc:
                print("refused", exc)
            """), str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused"), out.stdout
    assert FileMirror(path).load()["seq"] == 10
    older.save({"format": 1, "seq": 11, "leases": []})  # newer: written
    assert FileMirror(path).load()["seq"] == 11


def test_file_mirror_save_takes_the_lock_and_racing_saves_end_on_the_higher_seq(tmp_path):
    """A save replaces the file only under the lock (an flock on <path>.lock, as another
    process holds it here); two saves racing for it end with the higher seq, in either order."""
    path = tmp_path / "ledger.json"
    FileMirror(path).save({"format": 1, "seq": 1, "leases": []})
    lock_fd = os.open(path.with_name("ledger.json.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    outcomes: dict[int, str] = {}

    def save(seq: int) -> None:
        try:
            FileMirror(path).save({"format": 1, "seq": seq, "leases": [_lease(f"l{seq}")]})
            outcomes[seq] = "saved"
        except MirrorError as exc:
            outcomes[seq] = str(exc)

    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        threads = [threading.Thread(target=save, args=(seq,)) for seq in (10, 5)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # time for the saves to reach the lock
        assert outcomes == {}, "a save went ahead while another process held the lock"
        assert FileMirror(path).load()["seq"] == 1
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
    for t in threads:
        t.join(30)
    assert outcomes[10] == "saved"
    assert outcomes[5] in ("saved", f"mirror file {path} already holds seq 10, newer than "
                                    "this save's 5: left as it is")
    assert FileMirror(path).load() == {"format": 1, "seq": 10, "leases": [_lease("l10")]}


def test_file_mirror_many_racing_writers_never_go_back(tmp_path):
    """Two writers race (odd and even seqs up to 199) while a reader watches the file: every
    seq it reads is at least the one before. The reader sees the start, a seq in the middle
    (the odd writer stops after 99 until the reader has seen one) and the end."""
    path = tmp_path / "ledger.json"
    FileMirror(path).save({"format": 1, "seq": 0, "leases": []})
    seen: list[int] = []
    looked = threading.Event()  # the reader has read the file at least once
    middle = threading.Event()  # the reader has seen a seq of 99 or more
    stop = threading.Event()

    def writer(start: int) -> None:
        assert looked.wait(30), "the reader never read the file"
        m = FileMirror(path)
        for seq in range(start, 200, 2):
            with contextlib.suppress(MirrorError):
                m.save({"format": 1, "seq": seq, "leases": []})
            if seq == 99:  # the even writer goes on (up to 198) while the reader looks
                assert middle.wait(30), "the reader never saw the file in the middle"

    def reader() -> None:
        while not stop.is_set() and (not seen or seen[-1] < 199):
            with contextlib.suppress(MirrorError):
                seen.append(FileMirror(path).load()["seq"])
            looked.set()
            if seen and seen[-1] >= 99:
                middle.set()

    threads = [threading.Thread(target=writer, args=(k,)) for k in (1, 2)]
    watch = threading.Thread(target=reader)
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    watch.join(30)
    stop.set()
    assert seen and seen[-1] == 199, f"the reader never saw seq 199: {seen[-5:]}"
    watch.join()
    assert FileMirror(path).load()["seq"] == 199
    assert seen[0] == 0 and seen[-1] == 199 and any(99 <= x < 199 for x in seen), seen
    assert seen == sorted(seen), "the file went back to an older seq"


# ---- FileMirror journal ----------------------------------------------------------------------


def _lease(name: str, pool: str = "p1") -> dict[str, Any]:
    return {"spec": {"vcpus": 1, "memory": 1, "storage": 0},
            "status": {"pool": pool, "owner": "o", "request-id": name},
            "metadata": {"name": name}}


def _raw(name: str, pool: str = "p1") -> str:
    return json.dumps(_lease(name, pool))


def test_file_mirror_journal_replays_changes_after_the_snapshot_in_seq_order(tmp_path):
    m = FileMirror(tmp_path / "ledger.json")
    m.save({"format": 1, "seq": 5, "leases": [_lease("a"), _lease("b")]})
    m.append(4, [_raw("old")], [])  # at or below the snapshot's seq: already in it
    m.append(6, [_raw("c")], [])
    m.append(8, [], ["a"])
    m.append(7, [_raw("b", pool="p2")], [])  # journaled late (another thread): seq decides
    assert m.covered == 8 and m.failed is None
    got = FileMirror(tmp_path / "ledger.json").load()  # a new process reads the same
    assert got["seq"] == 8
    assert [x["metadata"]["name"] for x in got["leases"]] == ["b", "c"]
    assert got["leases"][0]["status"]["pool"] == "p2"


def test_file_mirror_journal_keeps_unreadable_records_and_drops_set_aside_ones(tmp_path):
    """A record without a readable name stays in the snapshot's leases (a restore sets it
    aside); a set-aside record dropped later (its id deleted in the journal) leaves `aside`."""
    m = FileMirror(tmp_path / "ledger.json")
    aside = [{"id": "x", "record": "{}", "problem": "p"}, {"id": "y", "record": "[]",
                                                          "problem": "p"}]
    m.save({"format": 1, "seq": 5, "leases": [_lease("a"), "junk", {"metadata": 7}],
            "aside": aside})
    m.append(6, [_raw("b")], ["x"])
    got = FileMirror(m.path).load()
    assert got["leases"] == [_lease("a"), _lease("b"), "junk", {"metadata": 7}]
    assert got["aside"] == aside[1:]
    m.append(7, [], ["y"])
    assert "aside" not in FileMirror(m.path).load()


def test_file_mirror_journal_needs_its_snapshot(tmp_path):
    """Without the snapshot (not written yet, or removed) the journal alone would lose the
    older leases: appends refuse until a whole save."""
    m = FileMirror(tmp_path / "ledger.json")
    with pytest.raises(MirrorError, match="missing"):
        m.append(1, [_raw("a")], [])
    assert m.failed == 1 and m.covered == -1 and not m.journal.exists()
    m.save({"format": 1, "seq": 1, "leases": [_lease("a")]}, m.mark())
    assert m.failed is None and m.covered == 1
    m.append(2, [_raw("b")], [])
    m.append(3, [], ["a", "never-existed"])
    assert FileMirror(m.path).load() == {"format": 1, "seq": 3, "leases": [_lease("b")]}
    m.path.unlink()  # removed behind the worker's back
    with pytest.raises(MirrorError, match="missing"):
        m.append(4, [_raw("c")], [])
    assert m.failed == 4 and m.covered == 3
    m.save({"format": 1, "seq": 4, "leases": [_lease("b"), _lease("c")]}, m.mark())
    FileMirror(m.path).save({"format": 1, "seq": 9, "leases": []})  # another writer
    with pytest.raises(MirrorError, match="not the snapshot this worker wrote"):
        m.append(5, [_raw("d")], [])
    assert m.failed == 5 and m.covered == 4


def test_file_mirror_torn_journal_line_is_skipped_and_ended(tmp_path):
    """A crash mid-append leaves half a line (never answered): it is skipped, and the next
    append starts a line of its own instead of being glued to it."""
    m = FileMirror(tmp_path / "ledger.json")
    m.save({"format": 1, "seq": 0, "leases": []})
    m.append(1, [_raw("a")], [])
    with open(m.journal, "ab") as fh:
        fh.write(_raw("half").encode()[:40])
    assert [x["metadata"]["name"] for x in FileMirror(m.path).load()["leases"]] == ["a"]
    m.append(3, [_raw("c")], [])
    got = FileMirror(m.path).load()
    assert got["seq"] == 3 and [x["metadata"]["name"] for x in got["leases"]] == ["a", "c"]


def test_file_mirror_save_compacts_the_journal(tmp_path):
    m = FileMirror(tmp_path / "ledger.json")
    m.save({"format": 1, "seq": 0, "leases": []})
    m.append(1, [_raw("a")], [])
    m.append(2, [_raw("b")], [])
    mark = m.mark()  # the snapshot below is read after this point
    m.append(3, [_raw("c")], [])  # committed before the snapshot read: in it
    m.append(4, [_raw("d")], [])  # after the snapshot read: only in the journal
    m.save({"format": 1, "seq": 3, "leases": [_lease("a"), _lease("b"), _lease("c")]}, mark)
    records = [json.loads(x) for x in m.journal.read_text().splitlines()]
    assert [r["seq"] for r in records] == [4]
    assert [x["metadata"]["name"] for x in FileMirror(m.path).load()["leases"]] == [
        "a", "b", "c", "d"]
    m.append(5, [], ["a"])  # appends go on into the compacted journal
    assert [x["metadata"]["name"] for x in FileMirror(m.path).load()["leases"]] == [
        "b", "c", "d"]
    # a save without a mark is the whole truth: the journal is emptied
    m.save({"format": 1, "seq": 6, "leases": []})
    assert FileMirror(m.path).load() == {"format": 1, "seq": 6, "leases": []}


def test_file_mirror_unsynced_appends_are_written_at_once_and_synced_later(tmp_path):
    """Releases append with sync=False: the record is in the file at once (a crashed process
    loses nothing) and becomes durable with the next synced append, sync() or save."""
    m = FileMirror(tmp_path / "ledger.json")
    m.save({"format": 1, "seq": 0, "leases": []})
    m.append(1, [_raw("a"), _raw("b")], [])
    assert m.covered == m.durable == 1
    m.append(2, [], ["a"], sync=False)
    assert m.covered == 2 and m.durable == 1 and m.holds == 2
    got = FileMirror(m.path).load()  # another process reads it before any sync
    assert [x["metadata"]["name"] for x in got["leases"]] == ["b"] and got["seq"] == 2
    m.sync()
    assert m.durable == 2
    m.append(3, [], ["b"], sync=False)
    m.append(4, [_raw("c")], [])  # a grant's fdatasync covers the release before it
    assert m.covered == m.durable == 4
    m.append(5, [], ["c"], sync=False)
    m.save({"format": 1, "seq": 5, "leases": []}, m.mark())
    assert m.durable == 5 and FileMirror(m.path).load()["leases"] == []


SHORT_WRITE = textwrap.dedent("""
    import json, resource, signal, sys
    from workers.adapters.mirror.errors import MirrorError
    from workers.adapters.mirror.file import FileMirror

    def raw(name):
        return json.dumps({"spec": {"vcpus": 1, "memory": 1, "storage": 0},
                           "status": {"pool": "p1", "owner": "o", "request-id": name},
                           "metadata": {"name": name}})

    m = FileMirror(sys.argv[1])
    m.save({"format": 1, "seq": 0, "leases": []})
    m.append(1, [raw("a")], [])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit is cut short
    size = m.journal.stat().st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, resource.RLIM_INFINITY))
    try:
        m.append(2, [raw("b")], [])
        print("appended", m.covered, m.holds)
    except MirrorError as exc:
        print("refused", m.covered, m.holds, exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    m.append(3, [raw("c")], [])
""")


def test_file_mirror_short_write_is_a_failed_append_not_a_covered_change(tmp_path):
    """A write cut short (disk full, file size limit) leaves half a record: the change is not
    on disk, so it must not count as covered (its answer would go out and a restore would
    lose it). The half line is skipped on load and the next append starts a line of its own."""
    path = tmp_path / "ledger.json"
    out = subprocess.run([sys.executable, "-c", SHORT_WRITE, str(path)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused 1 -1 "), out.stdout
    assert "short write" in out.stdout, out.stdout
    journal = path.with_name(path.name + ".journal").read_bytes()
    assert len(journal.splitlines()) == 3  # a, the torn half of b, c on a line of its own
    got = FileMirror(path).load()
    assert got["seq"] == 3 and [x["metadata"]["name"] for x in got["leases"]] == ["a", "c"]


def test_file_mirror_failed_append_stops_coverage_until_a_save(tmp_path):
    m = FileMirror(tmp_path / "ledger.json")
    m.save({"format": 1, "seq": 0, "leases": []})
    m.append(1, [_raw("a")], [])
    m.journal.unlink()
    m.journal.mkdir()  # appends now fail (even as root): the journal is replaced by a directory
    with pytest.raises(MirrorError, match="journal"):
        m.append(2, [_raw("b")], [])
    assert m.failed == 2 and m.covered == 1
    m.journal.rmdir()
    m.append(3, [_raw("c")], [])  # on disk, but change 2 is not: coverage stays put
    assert m.covered == 1
    m.save({"format": 1, "seq": 3, "leases": [_lease("a"), _lease("b"), _lease("c")]}, m.mark())
    assert m.failed is None and m.covered == 3
