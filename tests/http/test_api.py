"""The HTTP shim as a client sees it: a real uvicorn server, real workers, real
Redis, over HTTP (httpx and the upstream README's own curl commands)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import uuid

import httpx
import pytest

from tests.support.api import (
    TOKENS,
    UPSTREAM,
    ApiServer,
    assert_error,
    bearer,
)
from tests.support.audit import audit
from tests.support.helpers import check_invariants
from tests.support.procs import wait_for
from workers.adapters.pools_file import load_pools

CURL_ACQUIRE = """curl --location --request POST 'http://localhost:8080/acquire' \\
--header 'Content-Type: application/json' \\
--data-raw '{
    "vcpus": 24,
    "memory": 96,
    "storage": 700,
    "vcenters": 1
}'"""
CURL_SHOW_POOLS = "curl localhost:8080/show-pools"


@pytest.fixture(scope="module")
def api(stack):
    server = ApiServer(stack["env"], VCM_API_MAX_SYNC_WAIT="60", VCM_API_BODY_TIMEOUT="1").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("secret") / "tokens"
    path.write_text("# from a Kubernetes Secret\ncarol:carol-secret\n")
    return path


@pytest.fixture(scope="module")
def api_auth(stack, token_file):
    server = ApiServer(stack["env"], VCM_API_TOKENS=TOKENS,
                       VCM_API_TOKENS_FILE=str(token_file)).start()
    yield server
    server.stop()


@pytest.fixture()
def settled(ledger, api):
    """A clean ledger, for tests that depend on what is free. The shared fixture wipes the
    ledger behind the placement worker's back; the worker's cached usage can predate the wipe,
    and a NoCapacity decided on that cache would be stale. One small acquire makes it read the
    ledger again (its commit finds the version moved)."""
    with api.client() as c:
        settle = {"vcpus": 1, "memory": 1, "networks": 0, "owner": "settle"}
        assert c.post("/acquire", json=settle).status_code == 200
        assert c.post("/release", json={"owner": "settle"}).status_code == 200
    assert audit(ledger)["leases"] == {}
    yield ledger


@pytest.fixture()
def http(api):
    with api.client() as client:
        yield client


def pools_of(path):
    return {p.name: p for p in load_pools(str(path))}


def curl(command: str, port: int) -> str:
    """Run an upstream README command verbatim in a shell, but for the test server's port."""
    assert command.startswith("curl ")
    command = "curl --silent --show-error --max-time 30 " + command[len("curl "):]
    command = command.replace("localhost:8080", f"localhost:{port}")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- upstream compatibility ----------------------------------------------------------------------
def test_upstream_curl_examples_verbatim(api, settled, pools_file):
    leases = json.loads(curl(CURL_ACQUIRE, api.port))
    assert isinstance(leases, list) and len(leases) == 1
    lease = leases[0]
    assert list(lease) == ["spec", "status", "metadata"]  # the upstream keys, in their order
    assert lease["spec"]["vcpus"] == 24 and lease["spec"]["memory"] == 96
    assert lease["spec"]["storage"] == 700 and lease["spec"]["vcenters"] == 1
    status = lease["status"]
    for key in ("leased-at", "boskos-lease-id", "pool"):
        assert key in status
    assert status["pool"] == "pool1" and status["owner"] == "anonymous"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", status["leased-at"])
    assert status["networks"][0]["port-group"] == "ci-vlan-1001"
    assert lease["metadata"]["name"]

    pools = json.loads(curl(CURL_SHOW_POOLS, api.port))
    assert [p["spec"]["name"] for p in pools] == ["pool1", "pool2", "pool3", "pool4"]
    for pool in pools:
        for key in ("vcpus", "memory", "storage", "name", "vcenter", "datacenter", "cluster",
                    "datastore", "networks"):
            assert key in pool["spec"], key
        for key in ("vcpus-usage", "memory-usage", "datastore-usage", "network-usage", "leases"):
            assert key in pool["status"], key
        for key in ("vcpus-usage", "memory-usage", "datastore-usage", "network-usage"):
            assert 0 <= pool["status"][key] <= 1
    p1 = pools[0]["status"]
    assert p1["vcpus-usage"] == pytest.approx(24 / 120)
    assert p1["datastore-usage"] == pytest.approx(700 / 10000)
    assert [x["metadata"]["name"] for x in p1["leases"]] == [lease["metadata"]["name"]]
    check_invariants(settled, pools_of(pools_file))


def test_acquire_renew_list_release_round_trip(http, settled, pools_file):
    resp = http.post("/acquire", json={**UPSTREAM, "vcenters": 2, "owner": "job-7",
                                       "boskos-lease-id": "b-1", "ttl": "1h"})
    assert resp.status_code == 200, resp.text
    leases = resp.json()
    # the header names the acquire's task: its record holds these very leases
    task = http.get(f"/tasks/{resp.headers['x-vcm-task-id']}").json()
    assert (task["task"], task["state"], task["result"]) == ("vcm.acquire", "SUCCESS", leases)
    assert len({x["status"]["vcenter"] for x in leases}) == 2
    assert {x["status"]["boskos-lease-id"] for x in leases} == {"b-1"}
    ids = sorted(x["metadata"]["name"] for x in leases)

    listed = http.get("/leases", params={"owner": "job-7"}).json()
    assert sorted(x["metadata"]["name"] for x in listed) == ids
    assert http.get("/leases", params={"owner": "nobody"}).json() == []
    on_pool = http.get("/leases", params={"pool": leases[0]["status"]["pool"]}).json()
    assert [x["metadata"]["name"] for x in on_pool] == [leases[0]["metadata"]["name"]]

    renewed = http.post("/renew", json={"lease-id": ids[0], "owner": "job-7", "ttl": "48h"})
    assert renewed.status_code == 200, renewed.text
    before = next(x for x in leases if x["metadata"]["name"] == ids[0])
    assert renewed.json()["status"]["expires-at"] > before["status"]["expires-at"]

    assert_error(http.post("/renew", json={"lease-id": ids[0], "owner": "someone-else"}),
                 403, "NotOwner")
    assert_error(http.post("/renew", json={"lease-id": "no-such-lease", "owner": "job-7"}),
                 404, "LeaseNotFound")

    released = http.post("/release", json={"lease-ids": ids})
    assert released.status_code == 200 and sorted(released.json()) == ids
    again = http.post("/release", json={"lease-ids": ids})  # idempotent
    assert again.status_code == 200 and sorted(again.json()) == ids
    assert http.post("/release", json={"owner": "job-7"}).json() == []
    assert_error(http.post("/release", json={"lease-ids": ["never-existed"]}), 404,
                 "LeaseNotFound")
    snap = check_invariants(settled, pools_of(pools_file))
    assert snap["leases"] == {}


def test_release_by_owner(http, settled, pools_file):
    mine = [http.post("/acquire", json={"vcpus": 2, "memory": 2, "owner": "o1"}).json()[0]
            for _ in range(3)]
    other = http.post("/acquire", json={"vcpus": 2, "memory": 2, "owner": "o2"}).json()[0]
    released = http.post("/release", json={"owner": "o1"}).json()
    assert sorted(released) == sorted(x["metadata"]["name"] for x in mine)
    snap = check_invariants(settled, pools_of(pools_file))
    assert list(snap["leases"]) == [other["metadata"]["name"]]


def test_no_capacity_is_409_with_reasons_per_pool(http, settled, pools_file):
    ok = http.post("/acquire", json={"vcpus": 100, "memory": 100, "required-pool": "pool1"})
    assert ok.status_code == 200
    before = audit(settled)
    body = assert_error(http.post("/acquire", json={"vcpus": 40, "memory": 900}), 409,
                        "NoCapacity")
    reasons = body["details"]["reasons"]
    assert reasons["pool1"] == "insufficient vcpus (need 40, free 20)"
    assert reasons["pool2"] == "insufficient memory (need 900, free 800)"
    assert set(reasons) == {"pool1", "pool2", "pool3", "pool4"}
    assert "pool2: insufficient memory" in body["message"]
    assert audit(settled) == before


# -- bad input -----------------------------------------------------------------------------------
BAD_ACQUIRES = [
    (b"{nope", 400, "body"),
    (b"", 400, "body"),
    (b'{"vcpus": NaN, "memory": 1}', 400, "body"),
    (b'{"vcpus": 1e999, "memory": 1}', 400, "body"),
    (b"\xff\xfe{}", 400, "body"),
    (b"[" * 5000 + b"]" * 5000, 400, "body"),
    (b"[1, 2]", 422, "body"),
    (b'"vcpus"', 422, "body"),
    (b"null", 422, "body"),
    (b'{"vcpus": "24", "memory": 96}', 422, "vcpus"),
    (b'{"vcpus": 24}', 422, "memory"),
    (b'{"vcpus": 24, "memory": 96, "colour": "red"}', 422, "colour"),
    (b'{"vcpus": 24, "memory": 96, "storage": -1}', 422, "storage"),
    (b'{"vcpus": 24000, "memory": 96}', 422, "vcpus"),
    (b'{"vcpus": true, "memory": 96}', 422, "vcpus"),
    (b'{"vcpus": 24, "memory": 96, "vcenters": 4}', 422, "vcenters"),
    (b'{"vcpus": 24, "memory": 96, "ttl": "forever"}', 422, "ttl"),
    (b'{"vcpus": 24, "memory": 96, "pool-selector": ["x"]}', 422, "pool-selector"),
    (b'{"vcpus": 24, "memory": 96, "required-pool": "nope"}', 422, "required-pool"),
    (b'{"vcpus": 24, "memory": 96, "owner": "a\\u0001"}', 422, "owner"),
    (b'{"vcpus": 24, "memory": 96, "owner": "\\ud800"}', 400, "body"),
]


@pytest.mark.parametrize("body, status, field", BAD_ACQUIRES)
def test_bad_acquire_bodies_name_the_field(http, ledger, body, status, field):
    before = audit(ledger)
    resp = http.post("/acquire", content=body, headers={"Content-Type": "application/json"})
    err = assert_error(resp, status, "InvalidRequest", field)
    assert audit(ledger) == before, err


def test_more_pools_than_one_request_may_ask_for_is_422_naming_pools_and_the_limit(http, ledger):
    """Refused for the limit, not for this fleet's 4 pools (that message says how many are
    configured); the OpenAPI document says the same."""
    before = audit(ledger)
    for pools in (17, 10**6):
        body = assert_error(http.post("/acquire", json={**UPSTREAM, "pools": pools}), 422,
                            "InvalidRequest", "pools")
        assert "at most 16 in one request" in body["message"], body
    assert audit(ledger) == before
    doc = http.get("/openapi.json").json()
    schema = doc["paths"]["/acquire"]["post"]["requestBody"]["content"]["application/json"]
    assert schema["schema"]["properties"]["pools"]["maximum"] == 16


@pytest.mark.parametrize("path, body, field", [
    ("/release", {}, "lease-ids"),
    ("/release", {"lease-ids": 42}, "lease-ids"),
    ("/release", {"lease-ids": ["a"], "colour": 1}, "colour"),
    ("/release", {"lease-ids": ["a"], "lease_ids": ["b"]}, "lease_ids"),
    ("/release", {"owner": 5}, "owner"),
    ("/renew", {"owner": "x"}, "lease-id"),
    ("/renew", {"lease-id": 5}, "lease-id"),
    ("/renew", {"lease-id": "x", "ttl": "soon"}, "ttl"),
    ("/renew", {"lease-id": "x", "extra": 1}, "extra"),
])
def test_bad_release_and_renew_bodies(http, ledger, path, body, field):
    assert_error(http.post(path, json=body), 422, "InvalidRequest", field)


def test_bad_query_parameters(http, ledger):
    assert_error(http.post("/acquire?async=maybe", json=UPSTREAM), 422, "InvalidRequest",
                 "async")
    assert_error(http.post("/acquire?colour=red", json=UPSTREAM), 422, "InvalidRequest",
                 "colour")
    assert_error(http.get("/leases", params={"ownr": "x"}), 422, "InvalidRequest", "ownr")
    assert_error(http.get("/estimate", params={"vcpus": "many", "memory": 1}), 422,
                 "InvalidRequest", "vcpus")
    assert_error(http.get("/estimate", params={"vcpus": 1}), 422, "InvalidRequest", "memory")
    assert_error(http.get("/estimate", params={"vcpus": 1, "memory": 1, "pool-selector": "x"}),
                 422, "InvalidRequest", "pool-selector")
    assert_error(http.get("/estimate", params={"vcpus": 1, "memory": 1, "vcenters": 9}),
                 422, "InvalidRequest", "vcenters")
    assert audit(ledger)["leases"] == {}


def test_unknown_paths_and_methods_are_json(http):
    assert_error(http.get("/nope"), 404, "NotFound")
    resp = http.get("/acquire")
    assert_error(resp, 405, "MethodNotAllowed")
    assert "POST" in resp.headers["allow"]


def test_wait_longer_than_the_sync_limit_is_rejected(http, ledger):
    body = assert_error(http.post("/acquire", json={**UPSTREAM, "wait": "2h"}), 422,
                        "InvalidRequest", "wait")
    assert "async=true" in body["message"]
    assert audit(ledger)["leases"] == {}


# -- body size -----------------------------------------------------------------------------------
def test_413_by_content_length_and_by_streamed_size(http, ledger):
    big = json.dumps({**UPSTREAM, "owner": "x" * 70_000}).encode()
    assert_error(http.post("/acquire", content=big), 413, "PayloadTooLarge")

    def chunks():  # no Content-Length: chunked, and the size shows only while reading
        yield b'{"vcpus": 1, "memory": 1, "owner": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}'

    assert_error(http.post("/acquire", content=chunks()), 413, "PayloadTooLarge")

    # exactly at the limit is fine: 64 KiB of JSON, padded with spaces
    body = json.dumps({"vcpus": 1, "memory": 1, "owner": "edge"}).encode()
    body += b" " * (64 * 1024 - len(body))
    resp = http.post("/acquire", content=body)
    assert resp.status_code == 200, resp.text
    [lease] = resp.json()
    assert lease["status"]["owner"] == "edge" and lease["spec"]["vcpus"] == 1
    assert list(audit(ledger)["leases"]) == [lease["metadata"]["name"]]


def test_413_for_a_lying_content_length_is_cut_short(api):
    """A declared huge body is refused before it is sent (no need to read it)."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(b"POST /acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10000000\r\n\r\n{")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 413"), data[:200]


def test_a_trickling_body_is_408_not_a_hang(api):
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(b"POST /acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"vcpus\":")
        data = b""
        # the server answers and closes; the socket's timeout is the guard against a hang
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"RequestTimeout" in data


# -- async and tasks -----------------------------------------------------------------------------
def test_async_acquire_then_task_reaches_success(http, settled, pools_file):
    resp = http.post("/acquire", params={"async": "true"}, json={**UPSTREAM, "owner": "a1"})
    assert resp.status_code == 202, resp.text
    task_id = resp.json()["task-id"]
    assert resp.headers["location"] == f"/tasks/{task_id}"

    def done():
        state = http.get(f"/tasks/{task_id}").json()
        assert state["state"] in ("PENDING", "STARTED", "SUCCESS"), state
        return state if state["state"] == "SUCCESS" else None

    state = wait_for(done, timeout=20, what="the task to succeed")
    assert state["task"] == "vcm.acquire"
    assert state["result"][0]["status"]["owner"] == "a1"
    assert list(audit(settled)["leases"]) == [state["result"][0]["metadata"]["name"]]
    check_invariants(settled, pools_of(pools_file))


def test_async_failure_reports_the_error(http, settled):
    assert http.post("/acquire", json={"vcpus": 100, "memory": 100,
                                       "required-pool": "pool1"}).status_code == 200
    resp = http.post("/acquire?async=1", json={"vcpus": 40, "memory": 900})
    task_id = resp.json()["task-id"]
    state = wait_for(lambda: (s := http.get(f"/tasks/{task_id}").json())["state"] == "FAILURE"
                     and s, timeout=20, what="the task to fail")
    assert state["error"]["error"] == "NoCapacity"
    assert state["status-code"] == 409
    assert set(state["error"]["details"]["reasons"]) == {"pool1", "pool2", "pool3", "pool4"}

    resp = http.post("/acquire?async=true", json={"vcpus": "x", "memory": 1})
    task_id = resp.json()["task-id"]
    state = wait_for(lambda: (s := http.get(f"/tasks/{task_id}").json())["state"] == "FAILURE"
                     and s, timeout=20, what="the task to fail")
    assert state["error"]["details"]["field"] == "vcpus" and state["status-code"] == 422


def test_unknown_task_is_404_and_a_queued_one_is_pending(http, stack, client_app):
    assert_error(http.get(f"/tasks/{uuid.uuid4()}"), 404, "TaskNotFound")
    assert_error(http.get("/tasks/" + "x" * 300), 404, "TaskNotFound")
    assert_error(http.get("/tasks/a%20b"), 404, "TaskNotFound")
    # a WAITING task (the worker's parked request) shows its place in line and the reasons
    task_id = str(uuid.uuid4())
    meta = {"position": 2, "reasons": {"pool1": "insufficient vcpus (need 40, free 20)"},
            "deadline": "2030-01-01T00:00:00Z"}
    client_app.backend.store_result(task_id, meta, "WAITING")
    state = http.get(f"/tasks/{task_id}").json()
    assert state["state"] == "WAITING" and state["position"] == 2
    assert state["reasons"] == meta["reasons"] and state["deadline"] == meta["deadline"]


def test_waiting_acquire_is_answered_when_capacity_frees(http, settled, pools_file):
    """A synchronous acquire with `wait` waits in line and gets its lease after a release."""
    hog = {"vcpus": 40, "memory": 100, "required-pool": "pool3", "owner": "hog"}
    big = http.post("/acquire", json=hog)
    assert big.status_code == 200, big.text
    request = {"vcpus": 30, "memory": 10, "required-pool": "pool3", "owner": "patient"}
    early = assert_error(http.post("/acquire", json=request), 409, "NoCapacity")
    assert "pool3" in early["details"]["reasons"]
    resp = http.post("/acquire?async=true", json={**request, "wait": 30})
    task_id = resp.json()["task-id"]
    state = wait_for(lambda: (s := http.get(f"/tasks/{task_id}").json())["state"]
                     in ("WAITING", "FAILURE", "SUCCESS") and s, timeout=20, what="parking")
    assert state["state"] == "WAITING", state
    assert state["position"] == 1 and "pool3" in state["reasons"]
    http.post("/release", json={"owner": "hog"})
    state = wait_for(lambda: (s := http.get(f"/tasks/{task_id}").json())["state"] == "SUCCESS"
                     and s, timeout=20, what="the waiter to be served")
    assert state["result"][0]["status"]["owner"] == "patient"

    # and a synchronous acquire whose wait runs out is 504 WaitTimeout
    assert http.post("/release", json={"owner": "patient"}).status_code == 200
    assert http.post("/acquire", json=hog).status_code == 200
    body = assert_error(http.post("/acquire", json={**request, "wait": 1}), 504, "WaitTimeout")
    assert 1 <= body["details"]["waited"] < 30, body  # its own wait ran out, then the answer
    check_invariants(settled, pools_of(pools_file))


def test_a_client_that_goes_away_is_not_waited_for(api, settled):
    """A synchronous wait stops within a second or so of the client hanging up."""
    hog = {"vcpus": 40, "memory": 10, "required-pool": "pool3", "owner": "hog"}
    with api.client() as c:
        assert c.post("/acquire", json=hog).status_code == 200
        body = json.dumps({**hog, "owner": "gone", "wait": 20}).encode()
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
            sock.sendall(b"POST /acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            # it waits in line (for the hog's pool) before the client hangs up
            wait_for(lambda: [r["request"]["owner"] for _, r in settled.waiters()] == ["gone"],
                     timeout=20, what="the request to wait in line")

        def in_flight() -> float:
            text = c.get("/metrics").text
            return float(re.search(r"^vcm_api_requests_in_flight (\S+)$", text, re.M).group(1))

        # only the /metrics request itself is in flight once the shim has let go
        wait_for(lambda: in_flight() == 1.0, timeout=5, what="the shim to stop waiting")
        # and the request left the line: the room a release frees goes to nobody who hung up
        wait_for(lambda: settled.waiting_count() == 0, timeout=10, what="the line to empty")
        assert c.post("/release", json={"owner": "hog"}).status_code == 200
        leases = c.get("/leases", params={"owner": "gone"})
        assert leases.status_code == 200 and leases.json() == [], leases.text


# -- queries -------------------------------------------------------------------------------------
def test_estimate_from_query_parameters(http, ledger):
    est = http.get("/estimate", params={"vcpus": 24, "memory": 96, "storage": 700})
    assert est.status_code == 200, est.text
    body = est.json()
    assert body["pools"]["pool1"]["fits"] == 4 and body["pools"]["pool4"]["fits"] == 0
    sel = http.get("/estimate", params=[("vcpus", 1), ("memory", 1), ("networks", 0),
                                        ("pool-selector", "region=east,gpu=true"),
                                        ("required-pool", "pool4")]).json()
    assert sel["fits"] > 0 and sel["pools"]["pool4"]["fits"] > 0


def test_health_ready_metrics_openapi(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"]["placement"]
    # the shared stack writes a file mirror: readiness shows its state and lag (the acquire is
    # journaled before its answer; the status follows within the publisher's round)
    assert http.post("/acquire", json={"vcpus": 1, "memory": 1}).status_code == 200
    mirror = wait_for(lambda: (m := http.get("/readyz").json()["mirror"])["state"] == "ok" and m,
                      timeout=5, what="the mirror status")
    assert "last-write-age-seconds" in mirror, mirror
    http.post("/acquire", json={"vcpus": 1, "memory": 1, "colour": 1})
    text = http.get("/metrics").text
    assert re.search(r'vcm_api_requests_total\{endpoint="/acquire",method="POST",status="422"\} '
                     r"[1-9]", text), text[:2000]
    assert 'vcm_api_request_duration_seconds_bucket{endpoint="/healthz",' in text
    assert 'vcm_api_worker_up{queue="placement"} 1.0' in text
    assert 'vcm_api_tasks_sent_total{task="vcm.acquire"}' in text
    doc = http.get("/openapi.json").json()
    for path in ("/acquire", "/release", "/renew", "/show-pools", "/leases", "/tasks/{task_id}",
                 "/estimate", "/healthz", "/readyz", "/metrics"):
        assert path in doc["paths"], path
    body = doc["paths"]["/acquire"]["post"]["requestBody"]["content"]["application/json"]
    assert {"vcpus", "memory", "network-type", "pool-selector", "wait"} <= set(
        body["schema"]["properties"])
    assert {"200", "202", "409", "413", "422", "503", "504"} <= set(
        doc["paths"]["/acquire"]["post"]["responses"])


# -- auth ----------------------------------------------------------------------------------------
def test_auth_writes_need_a_token_reads_do_not(api_auth, ledger):
    with api_auth.client() as c:
        body = assert_error(c.post("/acquire", json=UPSTREAM), 401, "Unauthorized")
        assert "Bearer" in body["message"]
        resp = c.post("/release", json={"owner": "x"}, headers={"Authorization": "Bearer nope"})
        assert_error(resp, 401, "Unauthorized")
        assert "bearer" in resp.headers["www-authenticate"].lower()
        assert_error(c.post("/renew", json={"lease-id": "x"},
                            headers={"Authorization": "Basic YWxpY2U6eA=="}), 401)
        assert c.get("/show-pools").status_code == 200
        assert c.get("/leases").status_code == 200
    assert audit(ledger)["leases"] == {}


def test_auth_owner_rules_and_admin_override(api_auth, settled, pools_file):
    with api_auth.client() as c:
        alice = c.post("/acquire", json=UPSTREAM, headers=bearer("alice"))
        assert alice.status_code == 200, alice.text
        lease = alice.json()[0]
        assert lease["status"]["owner"] == "alice"  # the token's name is the default owner
        lid = lease["metadata"]["name"]

        body = assert_error(c.post("/acquire", json={**UPSTREAM, "owner": "bob"},
                                   headers=bearer("alice")), 403, "Forbidden")
        assert "alice" in body["message"] and "bob" in body["message"]
        on_behalf = c.post("/acquire", json={**UPSTREAM, "owner": "bob"}, headers=bearer("root"))
        assert on_behalf.status_code == 200 and on_behalf.json()[0]["status"]["owner"] == "bob"
        bobs = on_behalf.json()[0]["metadata"]["name"]

        # bob can neither renew nor release alice's lease, by id or by naming her
        assert_error(c.post("/renew", json={"lease-id": lid}, headers=bearer("bob")), 403,
                     "NotOwner")
        assert_error(c.post("/release", json={"lease-ids": [lid]}, headers=bearer("bob")), 403,
                     "NotOwner")
        assert_error(c.post("/release", json={"owner": "alice"}, headers=bearer("bob")), 403,
                     "Forbidden")
        assert_error(c.post("/renew", json={"lease-id": lid, "owner": "alice"},
                            headers=bearer("bob")), 403, "Forbidden")
        # alice renews her own; the admin renews and releases anyone's
        assert c.post("/renew", json={"lease-id": lid}, headers=bearer("alice")).status_code == 200
        renewed = c.post("/renew", json={"lease-id": bobs, "ttl": "2h"}, headers=bearer("root"))
        assert renewed.status_code == 200, renewed.text
        assert renewed.json()["status"]["owner"] == "bob"
        assert c.post("/release", json={"lease-ids": [lid]},
                      headers=bearer("root")).json() == [lid]
        # bob's "release everything of mine" only touches bob's leases
        assert c.post("/release", json={}, headers=bearer("bob")).status_code == 422
        assert c.post("/release", json={"owner": "bob"}, headers=bearer("bob")).json() == [bobs]
    snap = check_invariants(settled, pools_of(pools_file))
    assert snap["leases"] == {}


def test_tokens_from_a_file_rotate_without_a_restart(api_auth, token_file, ledger):
    with api_auth.client() as c:
        ok = c.post("/acquire", json=UPSTREAM, headers=bearer("carol"))
        assert ok.status_code == 200 and ok.json()[0]["status"]["owner"] == "carol"
        # rotation: the Secret's file is replaced; no restart needed
        new = token_file.with_name("tokens.new")
        new.write_text("dave:dave-secret:admin\n")
        new.replace(token_file)
        wait_for(lambda: c.post("/release", json={"owner": "carol"},
                                headers=bearer("dave")).status_code == 200,
                 timeout=10, what="the new token")
        assert c.post("/release", json={"owner": "carol"},
                      headers=bearer("carol")).status_code == 401
        assert c.post("/release", json={"owner": "x"},  # the variable's tokens stay
                      headers=bearer("alice")).status_code == 403
        logged = len(api_auth.output())
        token_file.write_text("not a token file")  # broken: the last good tokens stay
        codes: list[int] = []

        def read_the_broken_file() -> bool:  # the shim looks at the file on requests
            codes.append(c.post("/release", json={"owner": "x"},
                                headers=bearer("dave")).status_code)
            return "keeping the previous API tokens" in api_auth.output()[logged:]

        wait_for(read_the_broken_file, timeout=20, what="the shim to read the broken file")
        assert c.post("/release", json={"owner": "x"},
                      headers=bearer("dave")).status_code == 200
        assert set(codes) == {200}, codes


def test_a_bad_token_setting_stops_start_up(stack):
    env = {**stack["env"], "VCM_API_TOKENS": "alice:a,s3cr3t"}
    done = subprocess.run([sys.executable, "-m", "api_shim", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "VCM_API_TOKENS: entry 2 is not name:token" in done.stderr
    assert "s3cr3t" not in done.stderr  # a bare token is never echoed


def test_concurrent_http_acquires_never_overcommit(api, settled, pools_file):
    """Sixty clients at once on a fleet that holds fewer: the rest get 409, the ledger holds."""
    import concurrent.futures

    def one(i: int) -> int:
        with httpx.Client(base_url=api.url, timeout=30) as c:
            return c.post("/acquire", json={"vcpus": 10, "memory": 100, "networks": 1,
                                            "owner": f"c{i}"}).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(60)))
    # 9 such leases fit, one per free single-tenant port group: pool1 4, pool2 3, pool3 2
    # (pool4 is excluded); the other 51 clients get 409
    assert sorted(set(codes)) == [200, 409] and codes.count(200) == 9, codes
    snap = check_invariants(settled, pools_of(pools_file))
    assert len(snap["leases"]) == 9


def test_labels_selectors_and_network_only_leases_over_http(http, settled):
    body = {"vcpus": 0, "memory": 0, "networks": 1, "owner": "step",
            "labels": {"boskos-lease-id": "http-1", "job-name": "e2e"},
            "job-link": "https://prow.example/job/7"}
    first = http.post("/acquire", json=body)
    assert first.status_code == 200, first.text
    lease = first.json()[0]
    assert lease["spec"]["vcpus"] == 0 and len(lease["status"]["networks"]) == 1
    assert lease["status"]["labels"]["boskos-lease-id"] == "http-1"
    assert lease["status"]["job-link"] == "https://prow.example/job/7"
    second = http.post("/acquire", json={**body, "vcpus": 1, "memory": 1, "pools": 2,
                                         "vcenters": 2})
    assert second.status_code == 200, second.text
    assert len(second.json()) == 2
    names = sorted(x["metadata"]["name"] for x in [lease, *second.json()])
    est = http.get("/estimate", params={"vcpus": 0, "memory": 0, "networks": 1})
    assert est.status_code == 200 and est.json()["fits"] > 0, est.text
    listed = http.get("/leases", params={"selector": "boskos-lease-id=http-1"})
    assert sorted(x["metadata"]["name"] for x in listed.json()) == names
    bad = assert_error(http.get("/leases", params={"selector": "a b"}), 422, "InvalidRequest")
    assert bad["details"]["field"] == "selector"
    bad = assert_error(http.post("/acquire", json={**body, "labels": {"k": "a b"}}), 422,
                       "InvalidRequest")
    assert bad["details"]["field"] == "labels"
    released = http.post("/release", json={"selector": "boskos-lease-id=http-1",
                                           "owner": "step"})
    assert released.status_code == 200 and sorted(released.json()) == names
    assert http.get("/leases", params={"selector": "boskos-lease-id=http-1"}).json() == []
