"""Namespace-bound leases, through the task API with real workers, beat, the HTTP shim and
our apiserver: leases of a namespace that is gone are released with reason `namespace-gone`;
nothing is released while the namespaces cannot be listed (a list that does not end within
its deadline, however it trickles in, included), or when the list is empty; placement goes on
while the list is slow."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
import yaml

from tests.support.api import ApiServer
from tests.support.celery_conf import celeryconfig_under
from tests.support.helpers import call, failure
from tests.support.kube_apiserver import KubeApiServer
from tests.support.procs import ROOT, Beat, Stack, Worker, env_for, wait_for
from tests.support.rbac import deploy_rbac, kube_env_as_deployed
from workers.adapters.ledger import Ledger
from workers.core.lease import parse_rfc3339
from workers.service.namespaces import NAMESPACE_LABEL
from workers.settings import Settings

POOLS = yaml.safe_dump({"pools": [
    {"name": f"p{i}", "vcenter": f"vc{i}", "datacenter": "dc", "cluster": "c", "datastore": "ds",
     "vcpus": 100, "memory": 1000, "storage": 1000,
     "networks": [{"port-group": f"pg{i}-{j}", "vlan": j} for j in range(4)]}
    for i in (1, 2)]})


def acquire(s: Stack, namespace: str | None, owner: str = "ci") -> str:
    labels = {"job": owner, **({NAMESPACE_LABEL: namespace} if namespace is not None else {})}
    leases = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1, "networks": 0,
                                                 "owner": owner, "labels": labels})
    return leases[0]["metadata"]["name"]


def active(s: Stack) -> set[str]:
    return {x["metadata"]["name"] for x in call(s.app, "vcm.list_leases")}


def prune(s: Stack) -> dict:
    """One run, sent as beat sends it: where the task's route says."""
    return s.app.send_task("vcm.prune_namespaces").get(timeout=60)


def ledger(s: Stack) -> Ledger:
    return Ledger(s.redis.client())


def stats(s: Stack) -> dict[str, int]:
    return ledger(s).stats()


def released(s: Stack, lease_id: str) -> dict:
    """The lease's record: active, or released with its release-reason."""
    return ledger(s).get_many([lease_id])[0]


def age_past_grace(s: Stack, ids: list[str]) -> None:
    """Until the leases are old enough to be compared with a list asked for now."""
    grace = Settings.from_env(s.env).namespace_grace
    leased = max(parse_rfc3339(x["status"]["leased-at"]) for x in ledger(s).get_many(ids))
    time.sleep(max(0.0, leased + 1 + grace + 0.2 - time.time()))


def readyz(api: ApiServer) -> tuple[int, dict]:
    resp = httpx.get(api.url + "/readyz", timeout=10)
    return resp.status_code, resp.json()


def namespace_lists(kube: KubeApiServer) -> list[int]:
    return [code for method, path, code in kube.request_log
            if method == "GET" and path == "/api/v1/namespaces"]


def kube_stack(tmp_path: Path, kube: KubeApiServer, beat: bool = False, **env: str) -> Stack:
    """Each process talks to the apiserver (which enforces deploy/rbac.yaml) with the token
    of the service account deploy/ gives it, and has no Kubernetes configuration where deploy/
    mounts no token."""
    return Stack(tmp_path, POOLS, beat=beat, env_of=kube_env_as_deployed(kube, tmp_path),
                 KUBERNETES_SERVICE_HOST="", **env)


# ---- the module's stack: the apiserver, workers without beat, the HTTP shim ------------------

@pytest.fixture(scope="module")
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer(rbac=deploy_rbac()) as server:
        yield server


@pytest.fixture(scope="module")
def ks(tmp_path_factory, kube) -> Iterator[Stack]:
    """A stack without beat (runs are sent by the tests, or by the beat the beat test starts)
    whose list calls time out after 1 s."""
    s = kube_stack(tmp_path_factory.mktemp("namespaces"), kube,
                   VCM_NAMESPACE_PRUNE_INTERVAL="1h", VCM_NAMESPACE_TIMEOUT="1s")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ks_api(ks) -> Iterator[ApiServer]:
    api = ApiServer(ks.env).start()
    yield api
    api.stop()


class Doomed(NamedTuple):
    gone: str  # a lease of `namespace`, which the test's fixture deleted
    live: str  # a lease of ci-live
    namespace: str


DOOMED_TESTS = 6  # the tests that use `doomed`


@pytest.fixture(scope="module")
def aged(ks, kube) -> list[Doomed]:
    """A pair of leases per test that uses `doomed`, each in namespaces that still exist,
    taken at once and then left to age past the grace: once, not once per test."""
    pairs = []
    for i in range(DOOMED_TESTS):
        namespace = f"ci-doomed-{i}"
        for ns in ("ci-live", namespace):
            if ns not in kube.namespace_names():
                kube.create_namespace(ns)
        pairs.append(Doomed(acquire(ks, namespace, "job-doomed"),
                            acquire(ks, "ci-live", "job-live"), namespace))
    age_past_grace(ks, [lease for pair in pairs for lease in pair[:2]])
    return pairs


@pytest.fixture()
def doomed(kube, aged) -> Iterator[Doomed]:
    """A lease whose namespace is gone (deleted now), a lease whose namespace lives, both old
    enough to prune; the API answers normally again afterwards."""
    assert aged, "more tests use `doomed` than DOOMED_TESTS says"
    pair = aged.pop()
    kube.delete_namespace(pair.namespace)
    yield pair
    kube.clear_faults()


# ---- beat prunes: live, gone, unlabelled, Terminating -----------------------------------------

def test_beat_releases_the_leases_of_a_deleted_namespace_and_keeps_the_others(ks, kube, ks_api,
                                                                              tmp_path):
    """Beat, started beside the module's workers, sends a run every second (its first run
    counted from here: the other tests send theirs by hand)."""
    core_ns = ("ci-live", "ci-gone", "ci-ending")
    for ns in core_ns:
        if ns not in kube.namespace_names():
            kube.create_namespace(ns, finalizers=["example.com/hold"] if ns == "ci-ending"
                                  else None)
    before = stats(ks)
    lists = len(namespace_lists(kube))
    shown = readyz(ks_api)[1]["namespaces"]
    runs, errors = shown.get("runs", 0), shown.get("errors", 0)
    live = [acquire(ks, "ci-live", "job-live") for _ in range(2)]
    gone = [acquire(ks, "ci-gone", "job-gone") for _ in range(2)]
    ending = acquire(ks, "ci-ending", "job-ending")
    plain = acquire(ks, None, "job-plain")
    odd = acquire(ks, "Not_A_Namespace", "job-odd")  # never named a namespace
    held = active(ks)
    assert set(live) | set(gone) | {ending, plain, odd} <= held
    kube.delete_namespace("ci-gone")
    kube.delete_namespace("ci-ending")  # Terminating: finalizers hold it
    assert kube.namespace("ci-ending")["status"]["phase"] == "Terminating"
    assert "ci-gone" not in kube.namespace_names()
    env = {**ks.env, **kube_env_as_deployed(kube, tmp_path)["beat"],
           "VCM_NAMESPACE_PRUNE_INTERVAL": "1s", "VCM_REAP_INTERVAL": "1h",
           "VCM_ROLLUP_INTERVAL": "1h"}
    beat = Beat(env, log=str(tmp_path / "beat.log"))
    try:
        beat.start()

        def pruned() -> int:
            return stats(ks).get("namespace-pruned", 0) - before.get("namespace-pruned", 0)

        wait_for(lambda: pruned() == 2, timeout=30,
                 what="beat to prune the deleted namespace's leases")
        for lease_id in gone:
            record = released(ks, lease_id)
            assert record["status"]["state"] == "released"
            assert record["status"]["release-reason"] == "namespace-gone"
        reaped = {x["id"]: x for x in ledger(ks).reaped()}
        assert {reaped[i]["reason"] for i in gone} == {"namespace-gone"}
        assert {reaped[i]["namespace"] for i in gone} == {"ci-gone"}
        after = stats(ks)
        for stat in ("reaps", "releases"):
            assert after.get(stat, 0) == before.get(stat, 0), stat

        # more runs go by: live, Terminating, unlabelled and odd leases stay
        so_far = readyz(ks_api)[1]["namespaces"]["runs"]
        wait_for(lambda: readyz(ks_api)[1]["namespaces"]["runs"] >= so_far + 2, timeout=30,
                 what="two more prune runs")
        assert active(ks) == held - set(gone)
        code, body = readyz(ks_api)
        assert code == 200 and body["status"] == "ready"
        shown = body["namespaces"]
        # no run failed (a last-error stays from the other tests' failed runs, if any)
        assert shown["state"] == "ok" and "error" not in shown
        assert shown.get("errors", 0) == errors
        assert shown["namespaces"] == len(kube.namespace_names())  # ci-ending still listed
        assert "ci-ending" in kube.namespace_names()
        assert abs(parse_rfc3339(shown["last-prune-at"]) - time.time()) < 30

        # the Terminating namespace goes at last: its lease follows
        kube.finish_namespace("ci-ending")
        wait_for(lambda: pruned() == 3, timeout=30,
                 what="the Terminating namespace's lease, once the namespace is gone")
        assert released(ks, ending)["status"]["release-reason"] == "namespace-gone"
        assert active(ks) == held - set(gone) - {ending}

        # one list call per run
        beat.kill()
        wait_for(lambda: readyz(ks_api)[1]["namespaces"]["runs"] - runs
                 == len(namespace_lists(kube)) - lists, timeout=20,
                 what="the last run to finish")
        assert set(namespace_lists(kube)[lists:]) == {200}
    finally:
        beat.kill()
    call(ks.app, "vcm.release", lease_ids=[*live, plain, odd])


# ---- the list cannot be had: nothing is released ---------------------------------------------

def failed_run_releases_nothing(ks: Stack, kube: KubeApiServer, api: ApiServer,
                                doomed: Doomed, cause: str) -> None:
    """A run now fails with `cause` in its error, releases nothing, is counted and shown on
    /readyz (still 200); once the API answers again the same run releases the doomed lease."""
    errors = stats(ks).get("namespace-errors", 0)
    pruned = stats(ks).get("namespace-pruned", 0)
    lists = len(namespace_lists(kube))
    result = prune(ks)
    assert result["state"] == "failing" and result["released"] == [], result
    assert cause in result["error"], result
    assert {doomed.gone, doomed.live} <= active(ks)
    assert stats(ks).get("namespace-errors", 0) == errors + 1
    assert stats(ks).get("namespace-pruned", 0) == pruned
    code, body = readyz(api)
    assert code == 200 and body["status"] in ("ready", "degraded"), body
    shown = body["namespaces"]
    assert shown["state"] == "failing" and cause in shown["last-error"], shown
    assert shown["errors"] >= errors + 1 and "last-error-at" in shown
    if cause != "timed out":  # one list call per run (a timed-out one may not be logged yet)
        assert len(namespace_lists(kube)) == lists + 1
    # the API answers again: the very same lease goes, the live one stays
    kube.clear_faults()
    result = prune(ks)
    assert result["state"] == "ok" and result["released"] == [doomed.gone], result
    assert result["by-namespace"] == {doomed.namespace: [doomed.gone]}
    assert released(ks, doomed.gone)["status"]["release-reason"] == "namespace-gone"
    assert doomed.live in active(ks)
    shown = readyz(api)[1]["namespaces"]
    assert shown["state"] == "ok" and cause in shown["last-error"] and "error" not in shown


def test_api_down_releases_nothing(ks, kube, ks_api, doomed):
    kube.inject_fault(503, count=None, resource="namespaces")
    failed_run_releases_nothing(ks, kube, ks_api, doomed, "503")


def test_forbidden_releases_nothing(ks, kube, ks_api, doomed):
    kube.inject_fault(403, count=None, resource="namespaces")
    failed_run_releases_nothing(ks, kube, ks_api, doomed, "403")


def test_a_list_slower_than_the_timeout_releases_nothing(ks, kube, ks_api, doomed):
    # answered correctly, but after 2 s: only the 1 s timeout stops the run from pruning
    lists = len(namespace_lists(kube))
    kube.inject_fault(hang=2.0, count=None, resource="namespaces")
    failed_run_releases_nothing(ks, kube, ks_api, doomed, "timed out")
    # the held list is answered (200) after all, once its run has given up on it
    wait_for(lambda: namespace_lists(kube)[lists:] == [200, 200], timeout=10,
             what="the held list to be answered")


def trickle_outcomes(kube, since: int) -> list[str]:
    """How the trickled answers after the first `since` ended. The server records an outcome
    once its last write has returned, which can be after the client read the last byte and
    acted on it, so this waits for the record."""
    wait_for(lambda: len(kube.trickled) > since, timeout=5, what="the trickled answer to end")
    return kube.trickled[since:]


def test_a_list_trickling_in_past_the_timeout_is_cut_off_and_releases_nothing(
        ks, kube, ks_api, doomed):
    # a slow proxy: the answer comes a byte every 10 ms, so no read ever waits the 1 s timeout
    # while the whole list takes seconds; the run's deadline cuts it off (the client hangs up
    # before the last byte) and it releases nothing
    kube.inject_fault(trickle=0.01, count=None, resource="namespaces")
    outcomes = len(kube.trickled)
    failed_run_releases_nothing(ks, kube, ks_api, doomed, "timed out")
    assert trickle_outcomes(kube, outcomes) == ["cut"], kube.trickled


def test_an_empty_namespace_list_releases_nothing(ks, kube, ks_api, doomed):
    kept = kube.namespace_names()
    for name in kept:
        kube.remove_namespace(name)
    errors = stats(ks).get("namespace-errors", 0)
    pruned = stats(ks).get("namespace-pruned", 0)
    result = prune(ks)
    assert result["state"] == "failing" and "no namespace at all" in result["error"]
    assert {doomed.gone, doomed.live} <= active(ks)
    assert stats(ks).get("namespace-errors", 0) == errors + 1
    assert stats(ks).get("namespace-pruned", 0) == pruned
    shown = readyz(ks_api)[1]["namespaces"]
    assert shown["state"] == "failing" and "no namespace at all" in shown["last-error"]
    for name in kept:
        kube.create_namespace(name)
    result = prune(ks)
    assert result["state"] == "ok" and result["released"] == [doomed.gone]


def test_a_lease_taken_after_the_list_was_asked_for_stays(ks, kube, doomed):
    """The list was asked for before the namespace existed: its new lease is not compared."""
    kube.create_namespace("ci-new")
    fresh = acquire(ks, "ci-new", "job-new")
    kube.remove_namespace("ci-new")  # as if the list had been taken before it was created
    result = prune(ks)
    assert result["state"] == "ok" and result["released"] == [doomed.gone]
    assert fresh in active(ks)
    kube.create_namespace("ci-new")  # it exists after all


def test_the_release_a_run_sends_checks_its_arguments_and_runs_on_placement_only(ks):
    """vcm.release_namespace_gone, as anyone could send it: bad lease ids are refused naming
    the field, and a queries worker refuses to release."""
    for bad in (5, [], [""], ["\udcff"], ["x" * 200], {"a": 1}):
        exc = failure(ks.app, "vcm.release_namespace_gone", lease_ids=bad)
        assert type(exc).__name__ == "InvalidRequest" and "lease_ids" in str(exc), (bad, exc)
    exc = failure(ks.app, "vcm.release_namespace_gone", lease_ids=["x"], owner="me")
    assert type(exc).__name__ == "InvalidRequest" and "owner" in str(exc), exc
    exc = failure(ks.app, "vcm.release_namespace_gone", lease_ids=["no-such-lease"])
    assert type(exc).__name__ == "LeaseNotFound", exc
    # only namespace-bound leases: anyone else's lease is not released as namespace-gone
    pruned = stats(ks).get("namespace-pruned", 0)
    plain, odd = acquire(ks, None, "job-plain"), acquire(ks, "Not_A_Namespace", "job-odd")
    bound = acquire(ks, "ci-live", "job-live")
    for lease_id in (plain, odd):
        exc = failure(ks.app, "vcm.release_namespace_gone", lease_ids=[bound, lease_id])
        assert type(exc).__name__ == "InvalidRequest" and "lease_ids" in str(exc), exc
        assert lease_id in str(exc) and "not bound to a namespace" in str(exc), exc
    assert {plain, odd, bound} <= active(ks)
    assert stats(ks).get("namespace-pruned", 0) == pruned
    assert call(ks.app, "vcm.release", lease_ids=[plain, odd, bound]) == [plain, odd, bound]
    wrong = ks.app.send_task("vcm.release_namespace_gone", kwargs={"lease_ids": ["x"]},
                             queue="queries")
    with pytest.raises(Exception) as err:
        wrong.get(timeout=20)
    assert type(err.value).__name__ == "InvalidRequest" and "placement" in str(err.value)


# ---- no Kubernetes configuration, pruning off ------------------------------------------------

def test_without_kubernetes_configuration_nothing_is_pruned_and_it_is_said_once(tmp_path):
    # no grace: the lease only has to be older than a run's list would be
    s = Stack(tmp_path, POOLS, KUBECONFIG=str(tmp_path / "no-kubeconfig"),
              KUBERNETES_SERVICE_HOST="", VCM_NAMESPACE_GRACE="0")
    try:
        lease = acquire(s, "ci-anything", "job")
        age_past_grace(s, [lease])
        assert prune(s) == {"state": "off"}
        assert prune(s) == {"state": "off"}
        assert lease in active(s)
        assert stats(s).get("namespace-errors", 0) == 0
        # sent to the placement worker by mistake: refused, not run there
        refused = s.app.send_task("vcm.prune_namespaces", queue="placement").get(timeout=20)
        assert refused["state"] == "refused"
        queries = s.procs[1].output()
        assert queries.count("namespace-bound leases are not pruned: no Kubernetes "
                             "configuration") == 1
    finally:
        s.stop()


@pytest.fixture(scope="module")
def prune_confs() -> dict[str, dict]:
    """celeryconfig under VCM_NAMESPACE_PRUNE_INTERVAL 0, off and 5m, read in one process
    (tests/support/celery_conf.py)."""
    values = ("0", "off", "5m")
    envs = [env_for("redis://127.0.0.1:1/0", VCM_NAMESPACE_PRUNE_INTERVAL=v) for v in values]
    return dict(zip(values, celeryconfig_under(envs), strict=True))


@pytest.mark.parametrize("value", ["0", "off"])
def test_an_interval_of_0_or_off_leaves_beat_without_the_entry(value, prune_confs):
    conf = prune_confs[value]
    assert "prune-namespaces" not in conf["beat_schedule"]
    assert conf["task_routes"]["vcm.prune_namespaces"]["queue"] == "queries"
    assert "prune-namespaces" in prune_confs["5m"]["beat_schedule"]


# ---- a slow list never holds up placement ----------------------------------------------------

@pytest.fixture(scope="module")
def slow(tmp_path_factory) -> Iterator[tuple[KubeApiServer, Stack]]:
    """An apiserver and a stack whose list calls may take up to 60 s: a held list is never cut
    off by the deadline. No grace: these tests' leases are either old or taken once the list
    is under way (never compared, whatever the grace)."""
    with KubeApiServer(rbac=deploy_rbac()) as kube:
        s = kube_stack(tmp_path_factory.mktemp("slow-list"), kube,
                       VCM_NAMESPACE_PRUNE_INTERVAL="1h", VCM_NAMESPACE_TIMEOUT="60s",
                       VCM_NAMESPACE_GRACE="0")
        try:
            yield kube, s
        finally:
            s.stop()


def replaced(old: Worker, new: Worker) -> Worker:
    """`new` started in place of `old`: `old` is killed while `new` gets ready (nothing is sent
    meanwhile)."""
    new.start(wait=False)
    old.kill()
    try:
        new.wait_ready()
    except BaseException:
        new.kill()
        raise
    return new


# the held list's bytes come a millisecond apart: it is under way until its last byte, which
# waits for the test; how fast the others come does not matter
TRICKLE = 0.001



def test_placement_answers_while_a_run_waits_for_a_slow_namespace_list(slow):
    """A run whose list trickles in (its last byte held back until the test lets it go) is
    under way while an acquire and a release are sent: both are answered before the list ends;
    then the list ends and the run releases the lease of the namespace that is gone."""
    kube, s = slow
    kube.create_namespace("ci-gone")
    last_byte = threading.Event()
    try:
        pruned = stats(s).get("namespace-pruned", 0)
        gone = acquire(s, "ci-gone", "job-gone")
        kube.delete_namespace("ci-gone")
        age_past_grace(s, [gone])
        trickled = len(kube.trickled)
        kube.inject_fault(trickle=TRICKLE, hold=last_byte, count=1, resource="namespaces")
        run = s.app.send_task("vcm.prune_namespaces")  # where beat sends it
        wait_for(lambda: kube.trickling == 1, what="the namespace list to be under way")

        meanwhile = acquire(s, None, "job-meanwhile")
        assert call(s.app, "vcm.release", lease_ids=[meanwhile],
                    owner="job-meanwhile") == [meanwhile]
        assert kube.trickling == 1 and kube.trickled[trickled:] == []  # not ended

        last_byte.set()
        result = run.get(timeout=60)
        assert trickle_outcomes(kube, trickled) == ["sent"]
        assert result["state"] == "ok" and result["released"] == [gone], result
        assert result["by-namespace"] == {"ci-gone": [gone]}
        assert released(s, gone)["status"]["release-reason"] == "namespace-gone"
        assert stats(s).get("namespace-pruned") == pruned + 1
    finally:
        last_byte.set()
        kube.clear_faults()


# ---- the queries worker's clock is not the placement worker's ---------------------------------

def test_a_lease_granted_while_the_list_is_under_way_stays_whatever_the_queries_clock_says(
        slow):
    """The run is on a queries worker whose wall clock is a minute ahead of the placement
    worker's (which stamps leased-at). A namespace is created and a lease taken in it while the
    run's list is under way, so the list does not name it: the lease stays. (The stack's own
    queries worker is back afterwards.)"""
    kube, s = slow
    plain = s.procs[1]
    ahead = dict(plain.env, VCM_TEST_CLOCK_OFFSET="60", PYTHONPATH=os.pathsep.join(
        [str(ROOT / "tests" / "support" / "clock_ahead"), s.env["PYTHONPATH"]]))
    s.procs[1] = replaced(plain, Worker(ahead, "queries", pool="threads", concurrency=4))
    last_byte = threading.Event()
    try:
        trickled = len(kube.trickled)
        kube.inject_fault(trickle=TRICKLE, hold=last_byte, count=1, resource="namespaces")
        run = s.app.send_task("vcm.prune_namespaces")
        wait_for(lambda: kube.trickling == 1, what="the namespace list to be under way")

        kube.create_namespace("ci-new")
        fresh = acquire(s, "ci-new", "job-new")
        last_byte.set()
        result = run.get(timeout=60)
        assert trickle_outcomes(kube, trickled) == ["sent"]
        assert result["state"] == "ok" and result["released"] == [], result
        assert fresh in active(s)
    finally:
        last_byte.set()
        kube.clear_faults()
        s.procs[1] = replaced(s.procs[1], Worker(plain.env, "queries", pool="threads",
                                                 concurrency=4))
