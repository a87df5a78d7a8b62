"""Live vCenter health: core/health.py's rules, the inventory read and the sync against govmomi's
vCenter simulator (tests/vcsim), `vcm.sync_inventory` through a real queries worker on a real
redis-server, and `vcm pools discover` checked by `vcm check-pools`."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import yaml
from celery import Celery
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from tests.support.celery_conf import celeryconfig_under
from tests.support.helpers import call
from tests.support.procs import ROOT, Beat, RedisServer, Worker, env_for, wait_for
from tests.support.tls import CertificateAuthority, TlsProxy, process_ca
from tests.vcsim import Simulator, Unavailable
from workers.adapters.ledger import Ledger
from workers.adapters.vcenter.access import Access, AccessPlan, Trust
from workers.adapters.vcenter.inventory import InventorySettings, sync
from workers.adapters.vcenter.inventory_read import read_inventory
from workers.adapters.vcenter.sessions import Session, Sessions
from workers.core import health
from workers.core.health import (
    DEGRADED,
    GIB,
    OK,
    UNKNOWN,
    Cluster,
    Datacenter,
    Datastore,
    Host,
    Inventory,
    PoolHealth,
    PortGroup,
)
from workers.core.models import Network, Pool

pytestmark = pytest.mark.timeout(600)  # the first test may wait for a cold simulator build

USER, PASSWORD = "vcm", "vcm-secret"
HOST = {"cores": 16, "threads": 32, "mhz": 2400, "memory_gb": 256}
SMALL = {"vcpus": 1, "memory": 1, "networks": 0}  # an acquire that fits any pool here


def inventory_json(dc: str = "datacenter1") -> dict[str, Any]:
    return {"datacenters": [
        {"name": dc, "clusters": [{"name": "cluster1", "hosts": [HOST, HOST]}],
         "datastores": [{"name": "datastore1", "capacity_gb": 4096, "free_gb": 3000}],
         "portgroups": ["ci-vlan-1001", "ci-vlan-1002"],
         "vlans": {"ci-vlan-1001": 1001, "ci-vlan-1002": 1002}},
        {"name": "datacenter2", "clusters": [{"name": "cluster2", "hosts": [HOST]}],
         "datastores": [{"name": "datastore2", "capacity_gb": 1000}],
         "portgroups": ["ci-vlan-2001"], "vlans": {"ci-vlan-2001": 2001}},
    ]}


def start_sim() -> Simulator:
    try:
        return Simulator(inventory_json(), user=USER, password=PASSWORD).start()
    except Unavailable as exc:
        from tests.support.tools import missing

        missing(f"vCenter simulator: {exc}")
        raise


def access(vcenter: str, password: str = PASSWORD) -> Access:
    """The simulator's credential, its certificate checked against the test CA."""
    return Access(vcenter, USER, password, Trust(ca_pem=process_ca().path.read_text()))


def pools_on(vcenter: str, prefix: str = "pool") -> list[Pool]:
    return [
        Pool(f"{prefix}1", vcenter, "datacenter1", "cluster1", "datastore1", vcpus=60,
             memory=400, storage=2000,
             networks=(Network("ci-vlan-1001", 1001), Network("ci-vlan-1002", 1002))),
        Pool(f"{prefix}2", vcenter, "datacenter2", "cluster2", "datastore2", vcpus=16,
             memory=200, storage=500, networks=(Network("ci-vlan-2001", 2001),)),
    ]


def pool_yaml(p: Pool) -> dict[str, Any]:
    return {"name": p.name, "vcenter": p.vcenter, "datacenter": p.datacenter,
            "cluster": p.cluster, "datastore": p.datastore, "vcpus": p.vcpus,
            "memory": p.memory, "storage": p.storage,
            "networks": [{"port-group": n.port_group, "vlan": n.vlan} for n in p.networks]}


class Admin:
    """The test's own pyvmomi session on a simulator: changes state through the vSphere API."""

    def __init__(self, sim: Simulator) -> None:
        self.si = SmartConnect(host=sim.host, port=sim.port, user=USER, pwd=PASSWORD,
                               disableSslCertValidation=True)
        self.content = self.si.RetrieveContent()

    def find(self, kind: type, name: str) -> Any:
        view = self.content.viewManager.CreateContainerView(self.content.rootFolder, [kind],
                                                            True)
        try:
            return next(o for o in view.view if o.name == name)
        finally:
            view.Destroy()

    def hosts(self, cluster: str) -> list[vim.HostSystem]:
        return list(self.find(vim.ClusterComputeResource, cluster).host)

    def maintenance(self, cluster: str, on: bool) -> None:
        for host in self.hosts(cluster):
            task = (host.EnterMaintenanceMode_Task(timeout=0) if on
                    else host.ExitMaintenanceMode_Task(timeout=0))
            WaitForTask(task)

    def connect(self, cluster: str, on: bool) -> None:
        """Every host of `cluster` disconnected (DisconnectHost_Task) or reconnected."""
        for host in self.hosts(cluster):
            WaitForTask(host.ReconnectHost_Task() if on else host.DisconnectHost_Task())

    def remove_datastore(self, name: str) -> list[vim.HostSystem]:
        """Destroy datastore `name`; the hosts that mounted it."""
        ds = self.find(vim.Datastore, name)
        hosts = [mount.key for mount in ds.host]
        WaitForTask(ds.Destroy_Task())
        return hosts

    def other_sessions(self) -> set[str]:
        """Keys of every session on the simulator but this one."""
        sm = self.content.sessionManager
        own = sm.currentSession.key
        return {s.key for s in sm.sessionList if s.key != own}

    def calls(self) -> dict[str, int]:
        """Session key -> calls made in it, for every session on the simulator but this one."""
        sm = self.content.sessionManager
        own = sm.currentSession.key
        return {s.key: s.callCount for s in sm.sessionList if s.key != own}

    def terminate_others(self) -> None:
        self.content.sessionManager.TerminateSession(sorted(self.other_sessions()))

    def close(self) -> None:
        Disconnect(self.si)


# core/health.py: the rules, without I/O ---------------------------------------------------
def inv(**dc_changes: Any) -> Inventory:
    hosts = (Host("esx0", cpu_usage_mhz=100, memory_usage_mb=1000), Host("esx1"))
    dc = Datacenter(
        "datacenter1",
        {"cluster1": Cluster("cluster1", hosts)},
        {"datastore1": Datastore("datastore1", 4096 * GIB, 3000 * GIB)},
        {n: PortGroup(n, 1000 + i, True) for i, n in enumerate(["ci-vlan-1001", "ci-vlan-1002"])},
    )
    return Inventory("vc1", {"datacenter1": replace(dc, **dc_changes)})


POOL = pools_on("vc1")[0]


def test_a_healthy_pool_is_ok():
    assert health.assess([POOL, replace(POOL, name="elsewhere", vcenter="vc2")], inv(), {}) == \
        {"pool1": PoolHealth(OK)}


@pytest.mark.parametrize(("hosts", "expected"), [
    ((Host("esx0", maintenance=True), Host("esx1", maintenance=True)),
     "no usable host in cluster 'cluster1' (esx0 in maintenance mode, esx1 in maintenance mode)"),
    ((Host("esx0", connection="disconnected"), Host("esx1", connection="notResponding")),
     "no usable host in cluster 'cluster1' (esx0 disconnected, esx1 notResponding)"),
    ((Host("esx0", status="red", config_issues=("HA agent unreachable",)),
      Host("esx1", maintenance=True)),
     "no usable host in cluster 'cluster1' (esx0 red: HA agent unreachable, "
     "esx1 in maintenance mode)"),
    ((), "cluster 'cluster1' has no hosts"),
], ids=["maintenance", "disconnected", "red-config-issue", "no-hosts"])
def test_a_cluster_without_a_usable_host_degrades_the_pool(hosts, expected):
    clusters = {"cluster1": Cluster("cluster1", hosts)}
    assert health.assess_pool(POOL, inv(clusters=clusters), 0) == PoolHealth(DEGRADED, expected)


@pytest.mark.parametrize("hosts", [
    (Host("esx0", maintenance=True), Host("esx1")),
    (Host("esx0", status="red"), Host("esx1", status="yellow", config_issues=("x",))),
], ids=["one-usable-host", "red-without-config-issue"])
def test_one_usable_host_is_enough(hosts):
    clusters = {"cluster1": Cluster("cluster1", hosts)}
    assert health.assess_pool(POOL, inv(clusters=clusters), 0).state == OK


def test_missing_quick_stats_are_unknown_not_idle():
    cluster = Cluster("c", (Host("a", cpu_usage_mhz=10, memory_usage_mb=5), Host("b")))
    assert (cluster.cpu_usage_mhz, cluster.memory_usage_mb) == (None, None)
    cluster = Cluster("c", (Host("a", cpu_usage_mhz=10, memory_usage_mb=5),
                            Host("b", cpu_usage_mhz=0, memory_usage_mb=0)))
    assert (cluster.cpu_usage_mhz, cluster.memory_usage_mb) == (10, 5)


@pytest.mark.parametrize(("change", "expected"), [
    ({"clusters": {}}, "cluster 'cluster1' is gone"),
    ({"datastores": {}}, "datastore 'datastore1' is gone"),
    ({"datastores": {"datastore1": Datastore("datastore1", 4096 * GIB, 3000 * GIB, False)}},
     "datastore 'datastore1' is inaccessible"),
    ({"port_groups": {"ci-vlan-1001": PortGroup("ci-vlan-1001")}},
     "port group 'ci-vlan-1002' gone"),
    ({"port_groups": {}}, "port groups 'ci-vlan-1001', 'ci-vlan-1002' gone"),
], ids=["cluster", "datastore", "inaccessible", "port-group", "port-groups"])
def test_a_missing_object_degrades_the_pool(change, expected):
    assert health.assess_pool(POOL, inv(**change), 0) == PoolHealth(DEGRADED, expected)


def test_every_problem_is_in_the_reason_and_a_gone_datacenter_says_so():
    h = health.assess_pool(POOL, inv(clusters={}, port_groups={}), 0)
    assert h.reason == ("cluster 'cluster1' is gone; port groups 'ci-vlan-1001', "
                        "'ci-vlan-1002' gone")
    assert health.assess_pool(replace(POOL, datacenter="dc9"), inv(), 0) == \
        PoolHealth(DEGRADED, "datacenter 'dc9' is gone")


def test_free_space_is_compared_with_the_unleased_storage_budget():
    pool = replace(POOL, storage=3500)  # the datastore has 3000 GB free
    assert health.assess_pool(pool, inv(), 0) == PoolHealth(
        DEGRADED, "datastore 'datastore1' has 3000 GB free, less than the 3500 GB of storage "
                  "budget not leased")
    assert health.assess_pool(pool, inv(), 499).state == DEGRADED
    assert health.assess_pool(pool, inv(), 500).state == OK  # 3000 GB unleased, 3000 GB free
    assert health.assess_pool(pool, inv(), 9999).state == OK  # over-leased: nothing unleased
    assert health.assess_pool(pool, inv(), None).state == OK  # ledger unknown: not checked
    assert health.assess([pool], inv(), {"pool1": 600})["pool1"].state == OK
    assert health.assess([pool], inv(), {"other": 600})["pool1"].state == DEGRADED


def test_effective_health_fresh_stale_never_read_and_unreadable():
    now = 10_000.0
    stored = {
        "vc1": {"at": now - 60, "error": None,
                "pools": {"p1": {"state": "degraded", "reason": "r"}, "p2": {"state": "ok"}}},
        "vc2": {"at": now - 1801, "error": "unreachable: refused",
                "pools": {"p3": {"state": "degraded", "reason": "old"}}},
        "vc3": {"at": None, "error": "login as 'x' failed (bad credentials)",
                "pools": {"p4": {"state": "unknown", "reason": "login as 'x' failed"}}},
        "vc4": {"at": now, "pools": {"p5": {"state": "bogus"}}},
        "vc5": "not a record",
    }
    eff = health.effective(stored, now, 1800)
    assert eff["p1"] == PoolHealth(DEGRADED, "r")
    assert eff["p2"] == PoolHealth(OK)
    assert eff["p3"] == PoolHealth(UNKNOWN, "last read of vc2 30m ago; unreachable: refused")
    assert eff["p4"] == PoolHealth(UNKNOWN, "vc3 never read; login as 'x' failed (bad "
                                            "credentials)")
    assert eff["p5"].state == UNKNOWN
    assert health.pool_health(eff, "nowhere") == health.UNKNOWN_HEALTH
    assert health.degraded(eff) == {"p1": "r"}  # unknown never degrades
    assert health.effective(stored, now + 1800, 1800)["p1"].state == UNKNOWN


def test_a_pool_that_moved_takes_the_newer_read():
    stored = {"old": {"at": 100.0, "pools": {"p": {"state": "degraded", "reason": "x"}}},
              "new": {"at": 200.0, "pools": {"p": {"state": "ok", "reason": ""}}}}
    assert health.effective(stored, 250.0, 1800) == {"p": PoolHealth(OK)}


def test_settings_defaults_and_off():
    s = InventorySettings.from_env({})
    assert (s.interval, s.stale, s.timeout) == (300, 1800, 30)
    assert InventorySettings.from_env({"VCM_INVENTORY_INTERVAL": "off"}).interval == 0
    assert InventorySettings.from_env({"VCM_INVENTORY_INTERVAL": "0",
                                       "VCM_INVENTORY_STALE": "1h"}).stale == 3600


INTERVALS = [(None, 300.0), ("2m", 120.0), ("0", None), ("off", None)]


@pytest.fixture(scope="module")
def sync_entries() -> dict[str | None, Any]:
    """celeryconfig's sync-inventory entry for each VCM_INVENTORY_INTERVAL of INTERVALS (None:
    unset), read in one process (tests/support/celery_conf.py)."""
    base = {k: v for k, v in os.environ.items() if k != "VCM_INVENTORY_INTERVAL"}
    envs = [base if value is None else {**base, "VCM_INVENTORY_INTERVAL": value}
            for value, _ in INTERVALS]
    confs = celeryconfig_under(envs, names=("beat_schedule",))
    return {value: conf["beat_schedule"].get("sync-inventory")
            for (value, _), conf in zip(INTERVALS, confs, strict=True)}


@pytest.mark.parametrize(("value", "scheduled"), INTERVALS)
def test_beat_runs_the_sync_on_the_queries_queue_unless_off(value, scheduled, sync_entries):
    entry = sync_entries[value]
    if scheduled is None:
        assert entry is None
    else:
        assert entry == {"task": "vcm.sync_inventory", "schedule": scheduled,
                         "options": {"queue": "queries", "expires": 60}}


# the inventory read and the session, in this process ---------------------------------------
@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    simulator = start_sim()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_the_inventory_read_sees_what_health_needs(sim):
    session = Session(access(sim.address), timeout=10)
    try:
        inventory = read_inventory(session)
    finally:
        session.close()
    assert sorted(inventory.datacenters) == ["datacenter1", "datacenter2"]
    dc = inventory.datacenters["datacenter1"]
    cluster = dc.clusters["cluster1"]
    assert (cluster.effective_cpu_mhz, cluster.effective_memory_mb) == (2 * 16 * 2400,
                                                                        512 * 1024)
    assert [(h.connection, h.maintenance) for h in cluster.hosts] == [("connected", False)] * 2
    assert all(h.cpu_usage_mhz is not None for h in cluster.hosts)  # the simulator reports them
    assert dc.datastores["datastore1"] == Datastore("datastore1", 4096 * GIB, 3000 * GIB, True)
    assert dc.port_groups["ci-vlan-1001"] == PortGroup("ci-vlan-1001", 1001, True)
    assert dc.port_groups["VM Network"].distributed is False  # a standard port group
    assert "ci-vlan-2001" not in dc.port_groups  # in datacenter2
    assert health.assess(pools_on(sim.address), inventory, {}) == {
        "pool1": PoolHealth(OK), "pool2": PoolHealth(OK)}


def test_the_session_is_reused_and_logged_in_again_once_terminated(sim):
    admin = Admin(sim)
    session = Session(access(sim.address), timeout=10)
    try:
        before = admin.other_sessions()
        read_inventory(session)
        key = session.content().sessionManager.currentSession.key
        read_inventory(session)
        assert session.logins == 1
        assert session.content().sessionManager.currentSession.key == key
        assert admin.other_sessions() - before == {key}  # one session of ours on the vCenter

        admin.content.sessionManager.TerminateSession([key])
        inventory = read_inventory(session)  # the kept view died with the session: made again
        assert session.logins == 2
        assert session.content().sessionManager.currentSession.key != key
        assert "datacenter1" in inventory.datacenters
    finally:
        session.close()
        admin.close()


class BlackHole:
    """A port that accepts connections and never answers: a vCenter that hangs. It keeps
    what it accepted open, and counts it."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.server.accept()[0])
            except OSError:  # closed
                return

    def close(self) -> None:
        # shutdown wakes the accept() of the other thread (close alone leaves it blocked)
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self._thread.join(5)
        assert not self._thread.is_alive()
        for conn in self.accepted:
            conn.close()


def test_a_hanging_vcenter_or_bad_login_is_recorded_and_the_others_still_sync(sim, redis_srv):
    ledger = Ledger(redis_srv.client(), prefix="vcm-inproc:")
    hole = BlackHole()
    hung, refused = f"127.0.0.1:{hole.port}", f"localhost:{sim.port}"
    pools = (pools_on(sim.address) + pools_on(hung, "hung")
             + [replace(pools_on(refused, "refused")[0], networks=())])
    plan = AccessPlan({sim.address: access(sim.address), hung: access(hung),
                       refused: access(refused, "wrong")})
    try:
        result = sync(pools, plan, ledger, {}, timeout=2, sessions=Sessions())
    finally:
        hole.close()
    assert hole.accepted, "the hanging vCenter was never asked"  # asked, and given up on:
    assert result.synced == {sim.address: 2}
    assert set(result.errors) == {hung, refused}
    assert "timed out" in result.errors[hung] or "no answer" in result.errors[hung]
    assert result.errors[refused] == f"login as {USER!r} failed (bad credentials)"
    stored = ledger.health()
    assert stored[hung]["at"] is None and stored[hung]["pools"]["hung1"]["state"] == UNKNOWN
    eff = health.effective(stored, time.time(), 1800)
    assert eff["pool1"] == PoolHealth(OK) and eff["hung2"].state == UNKNOWN
    assert "bad credentials" in eff["refused1"].reason


# vcm.sync_inventory through a real queries worker -----------------------------------------
class WorkerStack:
    """A private redis-server and a queries worker (threads pool) with these pools."""

    def __init__(self, tmp, pools: list[Pool], **env: str) -> None:
        self.pools_file = tmp / "pools.yaml"
        self.pools_file.write_text(yaml.safe_dump({"pools": [pool_yaml(p) for p in pools]}))
        self.redis = RedisServer().start()
        self.redis.client().set("vcm:ready", "1")  # an empty ledger, as the placement side makes
        # the simulators' certificates come from the test CA: trusted unless a test says not
        env = {"VCM_VCENTER_CA_CERTS": str(process_ca().path), **env}
        self.env = env_for(self.redis.url, self.pools_file, VCM_MIRROR_FILE="off",
                           VCM_INVENTORY_TIMEOUT="3s", **env)
        for name in ("VCM_VCENTER_USERNAME", "VCM_VCENTER_PASSWORD", "VCM_VCENTER_CREDENTIALS"):
            if name not in env:
                self.env.pop(name, None)
        self.worker = Worker(self.env, "queries", pool="threads", concurrency=2).start()
        self.placement: Worker | None = None
        self.app = Celery("client", broker=self.redis.url, backend=self.redis.url)
        self.app.config_from_object("celeryconfig")
        self.app.conf.broker_url = self.app.conf.result_backend = self.redis.url
        self.ledger = Ledger(self.redis.client())

    def sync(self) -> dict[str, Any]:
        result = self.app.send_task("vcm.sync_inventory", queue="queries")
        return result.get(timeout=60)

    def health(self) -> dict[str, PoolHealth]:
        return health.effective(self.ledger.health(), time.time(), 1800)

    def start_placement(self) -> Worker:
        """A placement worker on this stack (the ledger is ready: see above)."""
        self.placement = Worker(self.env, "placement").start()
        return self.placement

    def acquire(self, **request: Any) -> dict[str, Any]:
        """One small lease (no port group) through vcm.acquire; the lease."""
        lease, = call(self.app, "vcm.acquire", request={**SMALL, **request}, timeout=30)
        return lease

    def refusal(self, pool: str) -> BaseException | None:
        """Why an acquire that requires `pool` is refused; None (and the lease released) when
        it is granted."""
        try:
            lease = self.acquire(**{"required-pool": pool})
        except Exception as exc:  # noqa: BLE001 - the refusal is the answer
            return exc
        self.release(lease)
        return None

    def release(self, *leases: dict[str, Any]) -> None:
        ids = [x["metadata"]["name"] for x in leases]
        if ids:
            assert sorted(call(self.app, "vcm.release", lease_ids=ids)) == sorted(ids)

    def leases_on(self, pool: str) -> list[str]:
        shown = next(p for p in call(self.app, "vcm.show_pools") if p["spec"]["name"] == pool)
        return [x["metadata"]["name"] for x in shown["status"]["leases"]]

    def stop(self) -> None:
        """Thrown away: the workers are SIGKILLed (no test here looks at their shutdown)."""
        if self.placement is not None:
            self.placement.kill()
        self.worker.kill()
        self.app.close()
        self.redis.stop()


@pytest.fixture(scope="module")
def sim_b() -> Iterator[Simulator]:
    simulator = start_sim()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def stack(sim, sim_b, tmp_path_factory) -> Iterator[WorkerStack]:
    creds = f"{sim.address}={USER}:{PASSWORD},{sim_b.address}={USER}:{PASSWORD}"
    s = WorkerStack(tmp_path_factory.mktemp("inventory"),
                    pools_on(sim.address) + pools_on(sim_b.address, "b"),
                    VCM_VCENTER_CREDENTIALS=creds)
    yield s
    s.stop()


def test_worker_sync_healthy_pools_are_ok(stack, sim, sim_b):
    result = stack.sync()
    assert result == {"synced": {sim.address: 2, sim_b.address: 2}, "errors": {},
                      "skipped": {}}
    assert stack.health() == {n: PoolHealth(OK) for n in ("b1", "b2", "pool1", "pool2")}
    record = stack.ledger.health()[sim.address]
    assert record["error"] is None and abs(record["at"] - time.time()) < 30


def test_worker_sync_reuses_its_session_and_logs_in_again_when_terminated(stack, sim):
    admin = Admin(sim)
    try:
        admin.terminate_others()  # only the worker's session from now on
        stack.sync()
        first = admin.other_sessions()
        login_at = stack.ledger.health()[sim.address]["login-at"]
        (key, calls), = admin.calls().items()
        stack.sync()
        assert admin.other_sessions() == first and len(first) == 1  # no new login
        # two round trips a sync: the session check and one RetrievePropertiesEx (kept view)
        assert admin.calls() == {key: calls + 2}
        assert stack.ledger.health()[sim.address]["login-at"] == login_at

        admin.terminate_others()
        assert admin.other_sessions() == set()
        stack.sync()
        again = admin.other_sessions()
        assert len(again) == 1 and again != first  # a new session, and it read fine
        record = stack.ledger.health()[sim.address]
        assert record["error"] is None and record["login-at"] >= login_at
        assert stack.health()["pool1"] == PoolHealth(OK)
    finally:
        admin.close()


def test_worker_sync_maintenance_on_every_host_degrades_the_pool(stack, sim):
    admin = Admin(sim)
    try:
        admin.maintenance("cluster1", True)
        stack.sync()
        eff = stack.health()
        assert eff["pool1"] == PoolHealth(
            DEGRADED, "no usable host in cluster 'cluster1' (cluster1-esx0 in maintenance "
                      "mode, cluster1-esx1 in maintenance mode)")
        assert eff["pool2"] == PoolHealth(OK) and eff["b1"] == PoolHealth(OK)
        # `vcm pools`, as an operator runs it: the state in its column, the reason under it
        shown = subprocess.run([sys.executable, "-m", "workers.cli", "pools", "--redis-url",
                                stack.redis.url], env=stack.env, cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines() if line}
        assert rows["pool1"][2] == "degraded" and rows["pool2"][2] == "ok", shown.stdout
        assert ("pool1: degraded: no usable host in cluster 'cluster1' (cluster1-esx0 in "
                "maintenance mode, cluster1-esx1 in maintenance mode)") in shown.stdout

        WaitForTask(admin.hosts("cluster1")[0].ExitMaintenanceMode_Task(timeout=0))
        stack.sync()
        assert stack.health()["pool1"] == PoolHealth(OK)  # one usable host is enough
    finally:
        admin.maintenance("cluster1", False)
        admin.close()


def test_worker_sync_a_deleted_port_group_degrades_the_pool(stack, sim):
    admin = Admin(sim)
    try:
        pg = admin.find(vim.dvs.DistributedVirtualPortgroup, "ci-vlan-1002")
        dvs = pg.config.distributedVirtualSwitch
        WaitForTask(pg.Destroy_Task())
        stack.sync()
        assert stack.health()["pool1"] == PoolHealth(DEGRADED, "port group 'ci-vlan-1002' gone")

        vlan = vim.dvs.VmwareDistributedVirtualSwitch.VlanIdSpec(vlanId=1002, inherited=False)
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name="ci-vlan-1002", numPorts=8,
            defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch.VmwarePortConfigPolicy(
                vlan=vlan))
        WaitForTask(dvs.AddDVPortgroup_Task([spec]))
        stack.sync()
        assert stack.health()["pool1"] == PoolHealth(OK)
    finally:
        admin.close()


def placement_refuses(stack: WorkerStack, pool: str, reason: str) -> None:
    """Until the placement worker has read the health: an acquire requiring `pool` is refused
    as degraded, with `reason`."""
    exc = wait_for(lambda: stack.refusal(pool), timeout=30,
                   what=f"placement to read that {pool} is degraded")
    assert type(exc).__name__ == "NoCapacity", exc
    reasons = exc.args[1]["reasons"]
    assert reasons.pop(pool) == f"degraded: {reason}"
    assert set(reasons.values()) == {f"not the required pool {pool!r}"}


@pytest.fixture(scope="module")
def placing(stack) -> WorkerStack:
    """The module's stack with a placement worker too."""
    stack.start_placement()
    return stack


def test_worker_sync_every_host_disconnected_degrades_the_pool_and_placement_goes_elsewhere(
        placing, sim):
    stack = placing
    admin = Admin(sim)
    taken: list[dict[str, Any]] = []
    try:
        stack.sync()
        held = stack.acquire(**{"required-pool": "pool1", "storage": 100})
        taken.append(held)

        admin.connect("cluster1", False)
        stack.sync()
        reason = ("no usable host in cluster 'cluster1' (cluster1-esx0 disconnected, "
                  "cluster1-esx1 disconnected)")
        eff = stack.health()
        assert eff["pool1"] == PoolHealth(DEGRADED, reason)
        assert {n: h for n, h in eff.items() if n != "pool1"} == {
            n: PoolHealth(OK) for n in ("b1", "b2", "pool2")}

        placement_refuses(stack, "pool1", reason)
        for _ in range(6):  # pool1 has one of the two largest budgets, yet nothing lands there
            lease = stack.acquire(storage=100)
            taken.append(lease)
            assert lease["status"]["pool"] in {"pool2", "b1", "b2"}, lease["status"]
        assert stack.leases_on("pool1") == [held["metadata"]["name"]]  # its lease stays

        admin.connect("cluster1", True)
        stack.sync()
        assert stack.health()["pool1"] == PoolHealth(OK)
        wait_for(lambda: stack.refusal("pool1") is None, timeout=30,
                 what="placement to take pool1 again")
        healthy = [stack.acquire(storage=100) for _ in range(6)]
        taken += healthy
        assert "pool1" in {x["status"]["pool"] for x in healthy}  # as it was not, degraded
    finally:
        admin.connect("cluster1", True)
        admin.close()
        stack.release(*taken)


def test_worker_sync_a_removed_datastore_degrades_the_pool(stack, sim, tmp_path):
    admin = Admin(sim)
    try:
        removed = admin.remove_datastore("datastore1")
        assert sorted(h.name for h in removed) == ["cluster1-esx0", "cluster1-esx1"]
        stack.sync()
        eff = stack.health()
        assert eff["pool1"] == PoolHealth(DEGRADED, "datastore 'datastore1' is gone")
        assert eff["pool2"] == PoolHealth(OK) and eff["b1"] == PoolHealth(OK)
    finally:
        # restored for the tests after this one: the same name on the same hosts, with the
        # figures it had (the simulator sizes a new local datastore by its directory's file
        # system)
        for host in admin.hosts("cluster1"):
            host.configManager.datastoreSystem.CreateLocalDatastore("datastore1", str(tmp_path))
        sim.set_datastore("datastore1", free_gb=3000, capacity_gb=4096)
        admin.close()
    stack.sync()
    assert stack.health()["pool1"] == PoolHealth(OK)
    session = Session(access(sim.address), timeout=10)
    try:
        assert read_inventory(session).datacenters["datacenter1"].datastores["datastore1"] == \
            Datastore("datastore1", 4096 * GIB, 3000 * GIB, True)
    finally:
        session.close()


def test_worker_sync_a_full_datastore_degrades_the_pool_by_its_unleased_budget(placing, sim):
    # pool1: 2000 GB of storage budget on datastore1 (4096 GB, 3000 GB free)
    stack = placing
    taken: list[dict[str, Any]] = []
    try:
        stack.sync()
        taken.append(stack.acquire(**{"required-pool": "pool1", "storage": 600}))

        sim.set_datastore("datastore1", free_gb=1400)  # exactly the 1400 GB not leased
        stack.sync()
        assert stack.health()["pool1"] == PoolHealth(OK)

        sim.set_datastore("datastore1", free_gb=1300)
        stack.sync()
        reason = ("datastore 'datastore1' has 1300 GB free, less than the 1400 GB of storage "
                  "budget not leased")
        assert stack.health()["pool1"] == PoolHealth(DEGRADED, reason)
        assert stack.health()["pool2"] == PoolHealth(OK)
        placement_refuses(stack, "pool1", reason)

        stack.release(*taken)  # 2000 GB not leased now
        taken.clear()
        stack.sync()
        assert stack.health()["pool1"].reason == (
            "datastore 'datastore1' has 1300 GB free, less than the 2000 GB of storage budget "
            "not leased")

        sim.set_datastore("datastore1", free_gb=3000)
        stack.sync()
        assert stack.health()["pool1"] == PoolHealth(OK)
    finally:
        sim.set_datastore("datastore1", free_gb=3000)
        stack.release(*taken)


def test_worker_sync_an_unreachable_vcenter_keeps_its_last_state_and_goes_stale(
        sim, tmp_path):
    """A vCenter of its own that goes away (the module's simulators stay up for the other
    tests, whatever their order)."""
    gone = start_sim()
    creds = f"{sim.address}={USER}:{PASSWORD},{gone.address}={USER}:{PASSWORD}"
    s = WorkerStack(tmp_path, pools_on(sim.address) + pools_on(gone.address, "b"),
                    VCM_VCENTER_CREDENTIALS=creds)
    try:
        assert s.sync()["synced"] == {sim.address: 2, gone.address: 2}
        before = s.ledger.health()
        gone.stop()  # returns once the simulator's process has exited
        result = s.sync()
        assert result["synced"] == {sim.address: 2}
        assert set(result["errors"]) == {gone.address}
        after = s.ledger.health()
        b = after[gone.address]
        assert b["error"] == result["errors"][gone.address]
        assert "unreachable" in b["error"] or "refused" in b["error"], b["error"]
        assert (b["at"], b["pools"]) == (before[gone.address]["at"],
                                         before[gone.address]["pools"])  # last state kept
        assert b["error-at"] > b["at"]
        assert after[sim.address]["at"] > before[sim.address]["at"]  # the other one synced

        eff = s.health()  # still fresh: the last known state counts
        assert eff["b1"] == PoolHealth(OK) and eff["pool1"] == PoolHealth(OK)
        later = health.effective(after, b["at"] + 1801, 1800)  # 30 minutes on: unknown
        assert later["b1"].state == UNKNOWN
        assert later["b1"].reason.startswith(f"last read of {gone.address} 30m ago; ")
        assert health.degraded(later) == {}
    finally:
        s.stop()
        gone.stop()


def test_worker_sync_without_credentials_syncs_nothing_and_is_no_error(sim, tmp_path):
    s = WorkerStack(tmp_path, pools_on(sim.address))
    try:
        assert s.sync() == {"synced": {}, "errors": {}, "skipped": {
            sim.address: "not contacted: no credentials for it (VCM_VCENTER_CREDENTIALS has "
                         "none)"}}
        assert s.ledger.health() == {}
        assert s.health() == {}
        assert health.pool_health(s.health(), "pool1").state == UNKNOWN
    finally:
        s.stop()


def test_beat_sends_the_sync_and_the_worker_stores_health(sim, tmp_path):
    s = WorkerStack(tmp_path, pools_on(sim.address), VCM_INVENTORY_INTERVAL="1s",
                    VCM_VCENTER_CREDENTIALS=f"{sim.address}={USER}:{PASSWORD}")
    beat = Beat(s.env, log=str(tmp_path / "beat.log"))
    try:
        beat.start()
        wait_for(lambda: s.health().get("pool1") == PoolHealth(OK), timeout=30,
                 what="health stored by a sync that beat sent")
        first = s.ledger.health()[sim.address]["at"]
        wait_for(lambda: s.ledger.health()[sim.address]["at"] > first, timeout=30,
                 what="the next sync")
    finally:
        beat.kill()
        s.stop()


# vcm pools discover -> vcm check-pools ----------------------------------------------------
def test_discover_prints_a_pools_file_that_check_pools_accepts(sim, tmp_path):
    env = dict(os.environ, VCM_VCENTER_CREDENTIALS=f"{sim.address}={USER}:{PASSWORD}",
               VCM_VCENTER_CA_CERTS=str(sim.ca_file), PYTHONPATH=str(ROOT))

    def vcm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "workers.cli", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    p = vcm("pools", "discover", "--vcenter", sim.address)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"# Pools discovered on {sim.address}")
    pools = yaml.safe_load(p.stdout)["pools"]
    by_name = {x["name"]: x for x in pools}
    assert set(by_name) == {"datacenter1-cluster1-datastore1", "datacenter2-cluster2-datastore2"}
    one = by_name["datacenter1-cluster1-datastore1"]
    assert (one["vcenter"], one["datacenter"], one["cluster"], one["datastore"]) == \
        (sim.address, "datacenter1", "cluster1", "datastore1")
    assert (one["vcpus"], one["memory"], one["storage"]) == (64, 512, 4096)
    nets = {n["port-group"]: n.get("vlan") for x in pools for n in x["networks"]}
    assert {"ci-vlan-1001": 1001, "ci-vlan-1002": 1002, "ci-vlan-2001": 2001}.items() <= \
        nets.items()
    assert not any("DVUplinks" in n for n in nets)  # trunks are left out, with a note
    assert "a trunk or private VLAN" in p.stdout

    path = tmp_path / "pools.yaml"
    path.write_text(p.stdout)
    checked = vcm("check-pools", "-f", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "every pool matches" in checked.stdout

    p = vcm("pools", "discover", "--vcenter", sim.address, "--datacenter", "datacenter2")
    assert p.returncode == 0, p.stderr
    assert [x["name"] for x in yaml.safe_load(p.stdout)["pools"]] == ["cluster2-datastore2"]
    p = vcm("pools", "discover", "--vcenter", sim.address, "--datacenter", "nowhere")
    assert p.returncode == 2 and "datacenter 'nowhere' not found" in p.stderr
    env.pop("VCM_VCENTER_CREDENTIALS")
    env.pop("VCM_VCENTER_USERNAME", None)
    p = vcm("pools", "discover", "--vcenter", sim.address)
    assert p.returncode == 2 and "no credentials" in p.stderr


def test_sessions_are_kept_per_vcenter_and_replaced_when_access_changes():
    sessions = Sessions()
    a = sessions.get(Access("vc1", "u", "p"), 5)
    assert sessions.get(Access("vc1", "u", "p"), 5) is a
    b = sessions.get(Access("vc1", "u", "other"), 5)
    assert b is not a
    pinned = Access("vc1", "u", "other", Trust("pinned", thumbprints=frozenset({"ab" * 32})))
    assert sessions.get(pinned, 5) is not b  # a new certificate check: a new login


def test_a_vcenter_killed_while_syncs_run_keeps_its_last_state_and_placement_goes_on(
        sim, tmp_path):
    doomed = start_sim()  # its own simulator: the module's survive this test
    creds = f"{sim.address}={USER}:{PASSWORD},{doomed.address}={USER}:{PASSWORD}"
    s = WorkerStack(tmp_path, pools_on(sim.address) + pools_on(doomed.address, "d"),
                    VCM_VCENTER_CREDENTIALS=creds)
    stop = threading.Event()
    results: list[dict[str, Any]] = []
    failed: list[BaseException] = []

    def syncing() -> None:  # back to back, as a short interval would send them
        try:
            while not stop.is_set():
                results.append(s.sync())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)

    thread = threading.Thread(target=syncing, daemon=True)
    taken: list[dict[str, Any]] = []
    try:
        s.start_placement()
        admin = Admin(doomed)
        try:  # its last known state: d1 degraded
            admin.maintenance("cluster1", True)
        finally:
            admin.close()
        reason = ("no usable host in cluster 'cluster1' (cluster1-esx0 in maintenance mode, "
                  "cluster1-esx1 in maintenance mode)")
        thread.start()
        wait_for(lambda: s.health().get("d1") == PoolHealth(DEGRADED, reason), timeout=60,
                 what="a sync of the doomed vCenter")

        doomed.kill()
        killed_at = time.time()

        def record(vcenter: str) -> dict[str, Any]:
            return s.ledger.health()[vcenter]

        wait_for(lambda: (record(doomed.address)["error-at"] or 0) > killed_at, timeout=60,
                 what="a sync to find the vCenter gone")
        last = record(doomed.address)
        assert last["at"] < last["error-at"]  # the last read, done before the kill
        assert last["pools"] == {"d1": {"state": DEGRADED, "reason": reason},
                                 "d2": {"state": OK, "reason": ""}}

        # meanwhile placement goes on, never onto the degraded pool of the killed vCenter
        placement_refuses(s, "d1", reason)
        for _ in range(5):
            lease = s.acquire()
            taken.append(lease)
            assert lease["status"]["pool"] in {"pool1", "pool2", "d2"}, lease["status"]
        # ... the other vCenter keeps syncing ...
        other = record(sim.address)["at"]
        wait_for(lambda: record(sim.address)["at"] > other, timeout=60,
                 what="the live vCenter's next sync")
        assert record(sim.address)["error"] is None
        # ... and the killed one fails again, keeping its last state and time
        wait_for(lambda: record(doomed.address)["error-at"] > last["error-at"], timeout=60,
                 what="another failed sync")
        now = record(doomed.address)
        assert (now["at"], now["pools"]) == (last["at"], last["pools"])
        assert now["error"] == f"unreachable: [Errno {errno.ECONNREFUSED}] " \
            f"{os.strerror(errno.ECONNREFUSED)}"
        assert s.health()["d1"] == PoolHealth(DEGRADED, reason)  # still fresh: it counts
        assert not failed, failed
        after_kill = [r for r in results if doomed.address in r["errors"]]
        assert after_kill and all(r["synced"] == {sim.address: 2} for r in after_kill)

        stale = InventorySettings.from_env(s.env).stale
        later = health.effective(s.ledger.health(), now["at"] + stale + 1, stale)
        assert later["d1"] == PoolHealth(
            UNKNOWN, f"last read of {doomed.address} {health.ago(stale + 1)}; {now['error']}")
        assert health.degraded(later) == {}  # unknown never degrades
    finally:
        stop.set()
        thread.join(timeout=120)
        s.release(*taken)
        s.stop()
        doomed.stop()


# TLS and credentials: what a man in the middle sees ----------------------------------------
class Mitm:
    """One queries worker syncing a vCenter (the simulator) reached through TLS proxies, each a
    vCenter of its own to the worker:

    - untrusted: a certificate from a CA nobody trusts (a man in the middle's);
    - trusted: a certificate from the CA in VCM_VCENTER_CA_CERTS;
    - pinned / wrong_pin: untrusted certificates, with a VCM_VCENTER_KNOWN_HOSTS line giving
      their own thumbprint / the thumbprint of another certificate;
    - insecure: an untrusted certificate, listed in VCM_VCENTER_INSECURE;
    - unshared / shared: trusted, with no credential of their own; VCM_VCENTER_USERNAME is
      shared with `shared` alone (VCM_VCENTER_SHARED_CREDENTIAL_FOR);
    - late: pinned like `pinned`, for a test that swaps its certificate after the login.
    """

    def __init__(self, sim: Simulator, tmp) -> None:
        mitm_ca = CertificateAuthority(tmp / "mitm-ca", "a man in the middle")
        upstream = (sim.host, sim.port)
        self.untrusted = TlsProxy(upstream, mitm_ca.issue())
        self.trusted = TlsProxy(upstream, process_ca().issue())
        self.mitm_ca = mitm_ca
        pinned_cert, other_cert, late_cert = mitm_ca.issue(), mitm_ca.issue(), mitm_ca.issue()
        self.pinned = TlsProxy(upstream, pinned_cert)
        self.late = TlsProxy(upstream, late_cert)
        self.wrong_pin = TlsProxy(upstream, mitm_ca.issue())
        self.insecure = TlsProxy(upstream, mitm_ca.issue())
        self.unshared = TlsProxy(upstream, process_ca().issue())
        self.shared = TlsProxy(upstream, process_ca().issue())
        self.proxies = {name: getattr(self, name) for name in (
            "untrusted", "trusted", "pinned", "wrong_pin", "insecure", "unshared", "shared",
            "late")}
        known_hosts = tmp / "known_hosts"
        known_hosts.write_text(
            "# vcenter thumbprint, as `govc about.cert -k -thumbprint` prints them\n"
            f"{self.pinned.address} {pinned_cert.thumbprint()}\n"
            f"{self.wrong_pin.address} {other_cert.thumbprint()}\n"
            f"{self.late.address} {late_cert.thumbprint()}\n")
        own = ("untrusted", "trusted", "pinned", "wrong_pin", "insecure", "late")
        pools = [replace(pools_on(proxy.address, name)[0], name=name)
                 for name, proxy in self.proxies.items()]
        self.stack = WorkerStack(
            tmp, pools,
            VCM_VCENTER_CREDENTIALS=",".join(
                f"{self.proxies[n].address}={USER}:{PASSWORD}" for n in own),
            VCM_VCENTER_USERNAME=USER, VCM_VCENTER_PASSWORD=PASSWORD,
            VCM_VCENTER_SHARED_CREDENTIAL_FOR=self.shared.address,
            VCM_VCENTER_CA_CERTS=str(process_ca().path),
            VCM_VCENTER_KNOWN_HOSTS=str(known_hosts),
            VCM_VCENTER_INSECURE=self.insecure.address)

    def close(self) -> None:
        self.stack.stop()
        for proxy in self.proxies.values():
            proxy.close()


@pytest.fixture(scope="module")
def mitm(sim, tmp_path_factory) -> Iterator[Mitm]:
    m = Mitm(sim, tmp_path_factory.mktemp("mitm"))
    yield m
    m.close()


def assert_nothing_sent(proxy: TlsProxy) -> None:
    """Once every connection to the proxy is over: not a byte got past its handshake."""
    proxy.wait_for("every connection over", lambda p: p.connections and
                   p.finished == p.connections)
    assert proxy.received == b""
    assert PASSWORD.encode() not in proxy.received


def test_tls_an_untrusted_certificate_is_refused_before_the_login(mitm):
    result = mitm.stack.sync()
    vc = mitm.untrusted.address
    assert vc not in result["synced"]
    error = result["errors"][vc]
    assert error.startswith("TLS: certificate not trusted: "), error
    assert "certificate verify failed" in error and "not logged in" in error
    assert_nothing_sent(mitm.untrusted)
    assert mitm.untrusted.refused >= 1 and mitm.untrusted.handshakes == 0
    untrusted = mitm.stack.health()["untrusted"]
    assert untrusted.state == UNKNOWN
    assert untrusted.reason == f"{vc} never read; {error}"


def test_tls_a_certificate_from_the_trusted_ca_is_accepted(mitm):
    result = mitm.stack.sync()
    assert result["synced"][mitm.trusted.address] == 1
    assert mitm.stack.health()["trusted"] == PoolHealth(OK)
    # the proxy reads what a client sends it once the client trusts it: the login with its
    # password (what the refused vCenters above never got)
    login = mitm.trusted.received.split(b"<Login ", 1)[1].split(b"</Login>", 1)[0]
    assert f">{PASSWORD}</password>".encode() in login


def test_tls_a_pinned_thumbprint_is_accepted_and_another_refused(mitm):
    result = mitm.stack.sync()
    assert result["synced"][mitm.pinned.address] == 1
    assert mitm.stack.health()["pinned"] == PoolHealth(OK)
    error = result["errors"][mitm.wrong_pin.address]
    assert error.startswith("TLS: certificate not trusted: its SHA-256 thumbprint "), error
    assert "not the one VCM_VCENTER_KNOWN_HOSTS pins" in error and "not logged in" in error
    assert_nothing_sent(mitm.wrong_pin)
    assert mitm.stack.health()["wrong_pin"].state == UNKNOWN


def test_tls_a_pin_is_checked_on_every_connection_not_only_the_first(mitm):
    """A man in the middle who takes over after the login: the kept session needs a new
    connection, whose certificate is not the pinned one, so nothing more is sent."""
    vc = mitm.late.address
    assert mitm.stack.sync()["synced"][vc] == 1
    mitm.late.swap(mitm.mitm_ca.issue())
    before = mitm.late.received
    connections = mitm.late.connections
    error = mitm.stack.sync()["errors"][vc]
    assert error.startswith("TLS: certificate not trusted: its SHA-256 thumbprint "), error
    mitm.late.wait_for("every connection over", lambda p: p.connections > connections and
                       p.finished == p.connections)
    assert mitm.late.received == before  # not a byte after the swap
    record = mitm.stack.ledger.health()[vc]
    assert record["error"] == error and record["pools"]["late"]["state"] == OK  # last known


def test_tls_insecure_opt_in_syncs_and_warns_naming_the_vcenter(mitm):
    result = mitm.stack.sync()
    vc = mitm.insecure.address
    assert result["synced"][vc] == 1
    assert mitm.stack.health()["insecure"] == PoolHealth(OK)
    warnings = [line for line in mitm.stack.worker.output_of_this_run().splitlines()
                if "WARNING" in line and "certificate NOT verified" in line]
    assert warnings and all(vc in line for line in warnings), warnings
    assert "VCM_VCENTER_INSECURE" in warnings[0]


def test_the_shared_credential_goes_only_to_the_vcenters_it_is_shared_with(mitm):
    result = mitm.stack.sync()
    assert result["synced"][mitm.shared.address] == 1
    assert mitm.stack.health()["shared"] == PoolHealth(OK)
    vc = mitm.unshared.address
    assert vc not in result["synced"] and vc not in result["errors"]
    reason = result["skipped"][vc]
    assert reason.startswith("not contacted: no credentials for it"), reason
    assert "VCM_VCENTER_SHARED_CREDENTIAL_FOR" in reason
    assert mitm.unshared.connections == 0  # not even a TCP connection
    unshared = mitm.stack.health()["unshared"]
    assert unshared == PoolHealth(UNKNOWN, f"{vc} never read; {reason}")
