"""Task results do not pile up in Redis (the one Redis that also holds the ledger): query results
live minutes at most and the HTTP shim deletes the ones it read; placement results stay a day
for polling job steps; GET /leases and GET /usage answer in bounded pages.

Real redis-server, real Celery workers (the session stack), a real `vcm api` over HTTP."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from celery import Celery

from tests.support.api import ApiServer, assert_error
from tests.support.helpers import call
from tests.support.procs import wait_for
from workers.contract import QUERIES, QUEUE

DAY = 86400
QUERY_TTL = 300  # VCM_QUERY_RESULT_TTL's default
SMALL = {"vcpus": 1, "memory": 1, "networks": 0}


@pytest.fixture(scope="module")
def api(stack):
    server = ApiServer(stack["env"]).start()
    yield server
    server.stop()


@pytest.fixture()
def http(api):
    with api.client() as client:
        yield client


@pytest.fixture()
def r(redis_server):
    client = redis_server.client()
    yield client
    client.close()


def meta_key(task_id: str) -> str:
    return f"celery-task-meta-{task_id}"


# -- the key format --------------------------------------------------------------------------
def test_celery_result_key_format_is_what_the_readers_expect(client_app: Celery, r):
    """Pins Celery's result key format: if Celery changes it, this fails (and the shim, which
    reads and subscribes to these keys itself, must follow)."""
    from tasks import results

    task_id = str(uuid.uuid4())
    client_app.backend.store_result(task_id, {"x": 1}, "SUCCESS")
    assert r.exists(meta_key(task_id)) == 1  # where Celery really wrote it
    assert results.result_key(client_app.backend, task_id) == meta_key(task_id)
    assert results.key_prefix() == "celery-task-meta-"
    r.delete(meta_key(task_id))


# -- lifetimes -------------------------------------------------------------------------------
QUERY_CALLS = [
    ("vcm.show_pools", {}),
    ("vcm.list_leases", {"owner": "nobody"}),
    ("vcm.estimate", {"request": SMALL}),
    ("vcm.waiting", {}),
    ("vcm.rollup_usage", {}),
    ("vcm.usage_history", {"since": "1h"}),
]


def test_every_query_task_is_routed_to_the_queries_queue():
    from tasks import app, results

    names = {n for n in app.tasks if n.startswith("vcm.")}
    queries = {n for n in names if app.amqp.router.route({}, n)["queue"].name == "queries"}
    assert queries == set(results.QUERIES) == {n for n, q in QUEUE.items() if q == QUERIES}


@pytest.mark.parametrize("name, kwargs", QUERY_CALLS, ids=[n for n, _ in QUERY_CALLS])
def test_a_query_result_lives_minutes_at_most(client_app, ledger, r, name, kwargs):
    res = client_app.send_task(name, kwargs=kwargs, queue="queries")
    res.get(timeout=20)
    # the worker shortens the lifetime right after storing the result
    ttl = wait_for(lambda: (t := r.ttl(meta_key(res.id))) <= QUERY_TTL and t, timeout=5,
                   what=f"the TTL of {name}'s result")
    assert 0 < ttl <= QUERY_TTL


def test_a_failed_query_result_lives_minutes_at_most(client_app, ledger, r):
    res = client_app.send_task("vcm.estimate", kwargs={"request": {"vcpus": "many"}},
                               queue="queries")
    with pytest.raises(Exception, match="vcpus"):
        res.get(timeout=20)
    ttl = wait_for(lambda: (t := r.ttl(meta_key(res.id))) <= QUERY_TTL and t, timeout=5,
                   what="the TTL of the failed estimate")
    assert 0 < ttl <= QUERY_TTL


def test_placement_results_are_kept_a_day_for_polling_job_steps(client_app, ledger, r):
    res = client_app.send_task("vcm.acquire", kwargs={"request": {**SMALL, "owner": "poll"}},
                               queue="placement")
    leases = res.get(timeout=20)
    assert [x["status"]["owner"] for x in leases] == ["poll"]
    refused = client_app.send_task("vcm.release", kwargs={"lease_ids": ["no-such-lease"]},
                                   queue="placement")
    with pytest.raises(Exception, match="no-such-lease"):
        refused.get(timeout=20)
    for task_id in (res.id, refused.id):
        # VCM_RESULT_TTL, 1 day by default: long enough to poll, and no longer
        assert DAY - 120 <= r.ttl(meta_key(task_id)) <= DAY
    assert call(client_app, "vcm.release", owner="poll") == [leases[0]["metadata"]["name"]]


# -- the shim -------------------------------------------------------------------------------
def test_the_shim_deletes_the_query_results_it_read(http, ledger, r):
    answers = [http.get("/show-pools"), http.get("/leases"), http.get("/usage"),
               http.get("/estimate", params={"vcpus": 1, "memory": 1})]
    for resp in answers:
        assert resp.status_code == 200, resp.text
        task_id = resp.headers["x-vcm-task-id"]
        assert len(task_id) == 36
        assert r.exists(meta_key(task_id)) == 0, resp.url
    # a refused query is read (and deleted) the same way
    bad = http.get("/usage", params={"pool": "\x01"})
    assert_error(bad, 422, "InvalidRequest", "pool")


def fill_history(client_app: Celery, ledger, rows: int) -> dict:
    """`rows` usage rollups a minute apart, each a copy of a real rollup of the example pools."""
    snap = call(client_app, "vcm.rollup_usage")
    assert set(snap["pools"]) == {"pool1", "pool2", "pool3", "pool4"}
    now = time.time()
    pipe = ledger.r.pipeline(transaction=False)
    pipe.delete(ledger.p + "usage")
    for i in range(rows):
        ts = now - (rows - 1 - i) * 60
        entry = {**snap, "ts": ts, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))}
        # a rollup's stream id is the time it was taken, as append_usage makes it
        pipe.xadd(ledger.p + "usage", {"s": json.dumps(entry)}, id=f"{int(ts * 1000)}-0")
    pipe.execute()
    assert ledger.usage_len() == rows
    return snap


def used_memory(r) -> int:
    return int(r.info("memory")["used_memory"])


def test_usage_reads_do_not_grow_redis(client_app, ledger, http, r):
    rows = 3000
    fill_history(client_app, ledger, rows)
    assert http.get("/usage", params={"since": "7d"}).status_code == 200  # warmed up
    before = used_memory(r)
    answers = [http.get("/usage", params={"since": "7d"}) for _ in range(15)]
    grown = used_memory(r) - before
    # the whole history is about 2 MB: keeping each answer would add some 30 MB
    assert grown < 1_500_000, grown
    for resp in answers:  # the default page
        assert resp.status_code == 200 and len(resp.json()) == 500
        assert resp.json()[0]["ts"] < resp.json()[-1]["ts"] and "x-continue" in resp.headers


def test_usage_pages_cover_the_history_once_in_order(client_app, ledger, http):
    rows = 1200
    fill_history(client_app, ledger, rows)
    seen: list[float] = []
    params: dict = {"since": "7d", "limit": 500}
    pages = 0
    while True:
        resp = http.get("/usage", params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages += 1
        seen += [row["ts"] for row in body]
        token = resp.headers.get("x-continue")
        if token is None:
            assert "link" not in resp.headers
            break
        assert resp.headers["link"].endswith('>; rel="next"')
        params = {**params, "continue": token}
    assert pages == 3 and len(seen) == rows
    assert seen == sorted(seen) and len(set(seen)) == rows
    # the pool filter pages the same way
    one = http.get("/usage", params={"since": "7d", "pool": "pool2", "limit": 5000}).json()
    assert len(one) == rows and all(set(row["pools"]) == {"pool2"} for row in one)


def test_leases_are_paginated(http, ledger):
    owners = [f"page-{i}" for i in range(7)]
    for owner in owners:
        assert http.post("/acquire", json={**SMALL, "owner": owner}).status_code == 200
    everything = http.get("/leases").json()
    assert sorted(x["status"]["owner"] for x in everything) == owners
    order = [(x["status"]["leased-at"], x["metadata"]["name"]) for x in everything]
    assert order == sorted(order)  # oldest first (leased-at has whole seconds: then by id)
    assert "link" not in http.get("/leases").headers

    first = http.get("/leases", params={"limit": 3})
    assert first.status_code == 200
    assert first.json() == everything[:3]
    token = first.headers["x-continue"]
    link = first.headers["link"]
    assert link.startswith("</leases?") and link.endswith('>; rel="next"')
    # a lease released meanwhile does not shift the next page (it ends at a key, not an index)
    gone = everything[0]["metadata"]["name"]
    assert http.post("/release", json={"lease-ids": [gone]}).json() == [gone]
    second = http.get(link[1:link.index(">")])
    assert second.status_code == 200
    assert second.json() == everything[3:6]
    third = http.get("/leases", params={"limit": 3, "continue": second.headers["x-continue"]})
    assert third.json() == everything[6:] and "x-continue" not in third.headers
    # filters and pages combine
    mine = http.get("/leases", params={"owner": everything[5]["status"]["owner"], "limit": 1})
    assert mine.json() == [everything[5]]
    assert "x-continue" not in mine.headers
    assert token != second.headers["x-continue"]


BAD_PAGES = [
    ({"limit": "-1"}, "limit"),
    ({"limit": "0"}, "limit"),
    ({"limit": "abc"}, "limit"),
    ({"limit": "1.5"}, "limit"),
    ({"limit": "5001"}, "limit"),
    ({"limit": "9" * 40}, "limit"),
    ({"continue": "not-a-token"}, "continue"),
    ({"continue": "W10"}, "continue"),  # base64 of [] : JSON, but not a key
    ({"continue": "x" * 600}, "continue"),
]


@pytest.mark.parametrize("path", ["/leases", "/usage"])
def test_page_parameters_are_checked_and_bad_ones_name_the_field(http, ledger, path):
    for limit in ("1", "5000"):  # the bounds themselves are fine
        resp = http.get(path, params={"limit": limit})
        assert resp.status_code == 200, resp.text
        assert resp.json() == []
    for params, field in BAD_PAGES:
        assert_error(http.get(path, params=params), 422, "InvalidRequest", field)


def test_a_token_of_one_endpoint_is_refused_by_the_other(http, client_app, ledger):
    fill_history(client_app, ledger, 3)
    usage = http.get("/usage", params={"limit": 1})
    assert_error(http.get("/leases", params={"continue": usage.headers["x-continue"]}), 422,
                 "InvalidRequest", "continue")


def test_dashboard_reloads_store_no_results(api, client_app, ledger, r):
    fill_history(client_app, ledger, 1440)  # a day of rollups: what the page charts
    before = set(r.scan_iter(meta_key("*"), count=1000))
    for _ in range(5):
        page = httpx.get(api.url + "/", timeout=30)
        assert page.status_code == 200 and "Usage history" in page.text
    after = set(r.scan_iter(meta_key("*"), count=1000))
    assert after - before == set()

