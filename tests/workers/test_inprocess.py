"""The query tasks, served by a Celery worker inside the test process.

The worker is the `celery_worker` fixture of `celery.contrib.pytest` (Celery's embedded test
worker, `celery.contrib.testing.worker.start_worker`, in a thread), one per test. The plugin is
loaded by tests/conftest.py; this module gives its fixtures what they build from:
`celery_config` (this module's redis-server as broker and result backend),
`celery_worker_pool` and `celery_worker_parameters` (`-Q queries -P threads -c 2`), and
`celery_app`, which here is our real `tasks` app rather than the plugin's fresh `TestApp`: our
tasks are bound to `tasks.app`, whose worker signals build the runtime (workers/bootstrap.py).
Nothing is eager or faked: every task goes through the broker and the result backend of a real
redis-server, and the leases are committed by the placement path (`bootstrap.build(...,
PLACEMENT)`: parse, decide, the Lua commit) in this process, without a placement worker.

Both send `worker_init`, where tasks takes its role from the queues the worker consumes and
builds the runtime. `celery worker` (celery.apps.worker) sends two signals the embedded worker
does not: `celeryd_after_setup` (the placement side restores the ledger) and `worker_ready`.
`CommandLineSignals` sends them at the same points. That the command itself starts and serves
as documented is workers/test_start_commands.py's business; here it is what the tasks
answer, fast (no subprocess).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from celery import Celery, signals
from celery.contrib.testing.worker import TestWorkController

import tasks
from tasks import results
from tests.support.helpers import call, failure, reset_ledger
from tests.support.procs import RedisServer, env_for, wait_for
from workers.bootstrap import build
from workers.contract import PLACEMENT, QUERIES
from workers.core.models import Pool
from workers.core.pools import parse_pools
from workers.service.capacity import Capacity
from workers.settings import Settings

VC_A, VC_B = "vc-a.example.com", "vc-b.example.com"
POOLS = f"""
pools:
  - name: alpha
    vcenter: {VC_A}
    datacenter: dc-a
    cluster: c-a
    datastore: ds-a
    vcpus: 12
    memory: 64
    storage: 1000
    labels: {{region: east}}
    networks:
      - {{port-group: a-1, vlan: 11}}
      - {{port-group: a-2, vlan: 12}}
      - {{port-group: a-3, vlan: 13}}
      - {{port-group: a-4, vlan: 14}}
      - {{port-group: a-5, vlan: 15}}
  - name: beta
    vcenter: {VC_B}
    datacenter: dc-b
    cluster: c-b
    datastore: ds-b
    vcpus: 8
    vcpu-overcommit: 2.0
    memory: 16
    storage: 500
    labels: {{region: west}}
    networks:
      - {{port-group: b-1, vlan: 21}}
      - {{port-group: b-2, vlan: 22}}
      - {{port-group: b-3, vlan: 23}}
      - {{port-group: b-4, vlan: 24}}
"""
# one of these fits 3 times in alpha (12 vCPUs) and 2 times in beta (16 GiB of memory)
REQUEST = {"vcpus": 4, "memory": 8, "storage": 100}


class CommandLineSignals(TestWorkController):
    """The embedded worker, sending what `celery worker` sends and it does not
    (`celeryd_after_setup`, `worker_ready`)."""

    def on_start(self) -> None:
        super().on_start()
        signals.celeryd_after_setup.send(sender=self.hostname, instance=self,
                                         conf=self.app.conf)

    def on_consumer_ready(self, consumer: Any) -> None:
        signals.worker_ready.send(sender=consumer)
        super().on_consumer_ready(consumer)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pools_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("inprocess") / "pools.yaml"
    path.write_text(POOLS)
    return path


@pytest.fixture(scope="module")
def celery_config(server) -> dict[str, Any]:
    """What `celery_app` is configured with: this module's redis-server."""
    return {"broker_url": server.url, "result_backend": server.url}


@pytest.fixture(scope="module")
def celery_worker_pool() -> str:
    return "threads"


@pytest.fixture(scope="module")
def celery_worker_parameters() -> dict[str, Any]:
    """`-Q queries -c 2`, and the signals of the command line (no ping: `tasks` has no
    `celery.ping` task)."""
    return {"concurrency": 2, "queues": ["queries"],
            "hostname": f"inprocess-{uuid.uuid4().hex[:8]}@test",
            "WorkController": CommandLineSignals, "perform_ping_check": False}


@pytest.fixture(scope="module")
def celery_app(celery_config, server, pools_path) -> Iterator[Celery]:
    """`celery -A tasks`: our app, configured with `celery_config`, in the environment
    `celery worker` would have here. Its broker and backend, its queue selection, the
    process's runtime (one per process, tasks.runtime) and the logging the worker sets up are
    put back afterwards."""
    env = env_for(server.url, pools_path, VCM_MIRROR_FILE="off")
    app = tasks.app
    saved_conf = {k: app.conf[k] for k in celery_config}
    saved_queues = list(app.amqp.queues.consume_from)
    saved_runtime, saved_role = dict(tasks._runtime), dict(tasks._role)
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    tasks._runtime.clear()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        app.conf.update(celery_config)
        try:
            yield app
        finally:
            for handler in [h for h in root.handlers if h not in saved_handlers]:
                root.removeHandler(handler)
            root.setLevel(saved_level)
            app.conf.update(saved_conf)
            if saved_queues:
                app.amqp.queues.select(saved_queues)
            tasks._runtime.clear()
            tasks._runtime.update(saved_runtime)
            tasks._role.update(saved_role)


@pytest.fixture()
def worker(celery_worker: TestWorkController) -> Iterator[TestWorkController]:
    """The plugin's embedded worker, told of its warm shutdown as `celery worker` tells it."""
    yield celery_worker
    signals.worker_shutting_down.send(sender=celery_worker.hostname, sig="SIGTERM",
                                      how="Warm", exitcode=0)


@pytest.fixture()
def client(server, worker) -> Iterator[Celery]:
    """A job step's client: its own app, configured from celeryconfig, sending by name."""
    app = Celery("vcm-inprocess-client", broker=server.url, backend=server.url,
                 set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=server.url, result_backend=server.url)
    yield app
    app.close()


@pytest.fixture()
def placement(server, pools_path, worker) -> Capacity:
    """The placement side as the placement worker builds it, on an empty ledger."""
    redis = server.client()
    reset_ledger(redis, None)
    redis.close()
    settings = Settings.from_env(env_for(server.url, pools_path, VCM_MIRROR_FILE="off"))
    svc = build(tasks.app, PLACEMENT, settings).service
    svc.ensure_ready(check_mirror=True)
    return svc


@pytest.fixture(scope="module")
def pools(pools_path) -> dict[str, Pool]:
    return {p.name: p for p in parse_pools(yaml.safe_load(pools_path.read_text()))}


def acquire(placement: Capacity, **request: Any) -> dict[str, Any]:
    leases = placement.acquire({**REQUEST, **request}, f"inprocess-{uuid.uuid4()}")
    assert isinstance(leases, list) and len(leases) == 1, leases
    return leases[0]


# -- the worker -------------------------------------------------------------------------------
def test_the_worker_in_this_process_took_the_queries_role(client, placement):
    assert tasks.runtime().role == QUERIES
    # a queries worker runs the inventory sync (a placement worker refuses it); no vCenter has
    # credentials here, so each is skipped by name, with the reason
    why = "not contacted: no credentials for it (VCM_VCENTER_CREDENTIALS has none)"
    assert call(client, "vcm.sync_inventory") == {"synced": {}, "errors": {},
                                                  "skipped": {VC_A: why, VC_B: why}}


def test_a_query_result_is_kept_minutes_not_a_day(client, server, placement):
    """The worker stores the result (the client is answered at once), then shortens its
    lifetime in task_postrun: the client may read the TTL in between, so it waits for it."""
    res = client.send_task("vcm.waiting", queue="queries")
    assert res.get(timeout=10) == []
    key = results.result_key(client.backend, res.id)
    wait_for(lambda: 0 < server.client().ttl(key) <= results.QUERY_RESULT_TTL, timeout=10,
             what="the query result's lifetime to be shortened")
    assert results.QUERY_RESULT_TTL < results.RESULT_TTL


# -- list_leases ------------------------------------------------------------------------------
def test_a_committed_lease_is_listed_exactly_as_it_was_granted(client, placement):
    lease = acquire(placement, owner="job-1", **{"required-pool": "alpha"})
    other = acquire(placement, owner="job-2", **{"required-pool": "beta"})
    assert (lease["status"]["owner"], lease["status"]["pool"]) == ("job-1", "alpha")
    assert call(client, "vcm.list_leases", owner="job-1") == [lease]
    assert call(client, "vcm.list_leases", pool="beta") == [other]
    assert call(client, "vcm.list_leases", owner="job-1", pool="beta") == []
    everything = call(client, "vcm.list_leases")
    assert sorted(x["metadata"]["name"] for x in everything) == sorted(
        x["metadata"]["name"] for x in (lease, other))
    # pages in (leased-at, name) order
    first = call(client, "vcm.list_leases", limit=1)
    rest = call(client, "vcm.list_leases",
                after=[first[0]["status"]["leased-at"], first[0]["metadata"]["name"]])
    assert first + rest == everything


def test_a_released_lease_is_no_longer_listed(client, placement):
    lease = acquire(placement, owner="job-3")
    assert placement.release([lease["metadata"]["name"]], "job-3") == [lease["metadata"]["name"]]
    assert call(client, "vcm.list_leases", owner="job-3") == []


def test_a_bad_page_is_refused_naming_its_field(client, placement):
    exc = failure(client, "vcm.list_leases", limit=0)
    assert type(exc).__name__ == "InvalidRequest" and "limit" in str(exc)
    exc = failure(client, "vcm.list_leases", owner="job", surprise=1)
    assert type(exc).__name__ == "InvalidRequest" and "surprise" in str(exc)


# -- show_pools -------------------------------------------------------------------------------
def test_show_pools_counts_what_the_ledger_holds(client, placement, pools):
    lease = acquire(placement, owner="job-4", **{"required-pool": "alpha"})
    shown = {p["spec"]["name"]: p for p in call(client, "vcm.show_pools")}
    assert list(shown) == ["alpha", "beta"]
    for name, pool in pools.items():
        assert shown[name]["spec"] == pool.spec()
    alpha, beta = shown["alpha"]["status"], shown["beta"]["status"]
    assert alpha["leases"] == [lease]
    assert {k: alpha[k] for k in ("vcpus-used", "memory-used", "storage-used", "networks-used",
                                  "lease-count", "vcpus-capacity")} == {
        "vcpus-used": 4, "memory-used": 8, "storage-used": 100, "networks-used": 1,
        "lease-count": 1, "vcpus-capacity": 12}
    assert (alpha["vcpus-usage"], alpha["memory-usage"], alpha["datastore-usage"],
            alpha["network-usage"]) == (0.3333, 0.125, 0.1, 0.2)
    assert beta["leases"] == [] and beta["lease-count"] == 0
    assert beta["vcpus-capacity"] == 16  # 8 vCPUs, overcommit 2.0
    assert (beta["vcpus-usage"], beta["memory-usage"], beta["network-usage"]) == (0, 0, 0)


# -- estimate ---------------------------------------------------------------------------------
def test_estimate_counts_what_still_fits_in_each_pool(client, placement):
    empty = call(client, "vcm.estimate", request=REQUEST)
    assert {n: p["fits"] for n, p in empty["pools"].items()} == {"alpha": 3, "beta": 2}
    assert empty["per-vcenter"] == {VC_A: 3, VC_B: 2}
    assert empty["fits"] == 5
    acquire(placement, owner="job-5", **{"required-pool": "alpha"})
    after = call(client, "vcm.estimate", request=REQUEST)
    assert {n: p["fits"] for n, p in after["pools"].items()} == {"alpha": 2, "beta": 2}
    assert after["fits"] == 4
    # what stops the next one: alpha runs out of vCPUs, beta (16 vCPUs) of memory first
    assert "insufficient vcpus (need 4, free 0)" in after["pools"]["alpha"]["next-blocked-by"]
    assert "insufficient memory (need 8, free 0)" in after["pools"]["beta"]["next-blocked-by"]
    # one lease on each of two vCenters at a time: two more such pairs
    assert call(client, "vcm.estimate", request={**REQUEST, "vcenters": 2})["fits"] == 2


def test_estimate_refuses_a_bad_request_naming_its_field(client, placement):
    exc = failure(client, "vcm.estimate", request={**REQUEST, "vcpus": "many"})
    assert type(exc).__name__ == "InvalidRequest" and "vcpus" in str(exc)


# -- usage ------------------------------------------------------------------------------------
def test_the_usage_rollup_is_what_show_pools_says_and_is_kept_in_the_history(client, placement):
    acquire(placement, owner="job-6", **{"required-pool": "alpha"})
    acquire(placement, owner="job-7", **{"required-pool": "beta"})
    snap = call(client, "vcm.rollup_usage")
    assert snap["pools"] == {
        "alpha": {"vcenter": VC_A, "vcpus": 0.3333, "memory": 0.125, "storage": 0.1,
                  "networks": 0.2, "leases": 1},
        "beta": {"vcenter": VC_B, "vcpus": 0.25, "memory": 0.5, "storage": 0.2,
                 "networks": 0.25, "leases": 1},
    }
    assert snap["vcenters"][VC_A] == {"vcpus": round(4 / 12, 4), "memory": 0.125,
                                      "storage": 0.1, "networks": 0.2, "leases": 1}
    assert snap["waiting"] == 0
    history = call(client, "vcm.usage_history", since="1h")
    assert history[-1] == snap
    only_beta = call(client, "vcm.usage_history", pool="beta", since="1h")
    assert only_beta[-1] == {"at": snap["at"], "ts": snap["ts"], "waiting": 0,
                             "pools": {"beta": snap["pools"]["beta"]}}
