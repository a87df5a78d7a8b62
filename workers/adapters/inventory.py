"""Live vCenter inventory (pyvmomi) for pool health and discovery.

`Session` is one logged-in session to one vCenter, kept for the life of the worker process
(`SESSIONS`) and checked before each use with `SessionManager.currentSession` (one round
trip): when the vCenter has dropped it (restart, idle timeout, an administrator terminated it),
it logs in again. Every call has a timeout (the socket timeout of pyvmomi's connection).

`read_inventory` reads a whole vCenter with one `RetrievePropertiesEx` (and its continuation
pages) over a ContainerView of the root folder that the session keeps between reads:
datacenters and folders (to place each object under its datacenter, by inventory path, as
check-pools finds them: a name anywhere below the datacenter), clusters (effective CPU and
memory), hosts (connection state, maintenance mode, overall status, configuration issues, quick
stats), datastores (capacity, free space, accessible) and networks (standard and distributed
port groups, with VLANs). `discover=True` also reads what a pools file skeleton needs (the
clusters' hardware, which datastores and networks their hosts reach, standard port groups'
VLANs from the hosts).

`sync` reads every vCenter that has credentials, in parallel, computes each pool's health
(core/health.py) and stores it in Redis through the ledger; a vCenter that cannot be read
records its error and keeps its last known health. `skeleton` builds `vcm pools discover`'s
pools file.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyVim.connect import Disconnect
from pyVmomi import vim, vmodl

from ..core import health
from ..core.health import GIB, Cluster, Datacenter, Datastore, Host, Inventory, PortGroup
from ..core.models import Pool
from ..settings import Settings
from .vcenter import VCenterUnavailable, address, retrieve
from .vcenter import login as vcenter_login

log = logging.getLogger(__name__)
TRUNK_VLAN = 4095  # a standard port group's "all VLANs"


# settings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class InventorySettings:
    interval: float  # seconds between syncs; 0: no sync
    stale: float  # health older than this counts as unknown
    timeout: float  # each vCenter call

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InventorySettings:
        """VCM_INVENTORY_INTERVAL (5m; 0 or off: never), VCM_INVENTORY_STALE (30m),
        VCM_INVENTORY_TIMEOUT (30s, at least 1s), from the environment (or `env`). A bad value
        stops start-up naming the variable (workers.settings)."""
        return cls.from_settings(Settings.from_env(env))

    @classmethod
    def from_settings(cls, settings: Settings) -> InventorySettings:
        return cls(settings.inventory_interval, settings.inventory_stale,
                   settings.inventory_timeout)


# sessions ---------------------------------------------------------------------------------
class Session:
    """One vCenter session, logged in on first use and again whenever the vCenter dropped it.
    Thread-safe: one read at a time (`lock`)."""

    def __init__(self, vcenter: str, user: str, password: str, *, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.vcenter, self.user, self._password = vcenter, user, password
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.lock = threading.Lock()
        self.logins = 0  # how many times this session logged in
        self.login_at: float | None = None  # the vCenter's loginTime of the current session
        self._si: vim.ServiceInstance | None = None
        self._content: Any = None
        self._view: Any = None

    def matches(self, user: str, password: str, timeout: float) -> bool:
        return (user, password, timeout) == (self.user, self._password, self.timeout)

    def content(self) -> Any:
        """The service content of a live session: checked (currentSession), else logged in."""
        if self._content is not None:
            try:
                current = self._content.sessionManager.currentSession
            except vim.fault.NotAuthenticated:
                current = None
            except Exception as exc:  # noqa: BLE001 - a broken connection: log in again
                log.info("vcenter %s: session check failed (%s: %s); logging in again",
                         self.vcenter, type(exc).__name__, exc)
                current = None
            if current is not None:
                return self._content
            log.info("vcenter %s: session gone; logging in again", self.vcenter)
            self._drop()
        self._login()
        return self._content

    def _login(self) -> None:
        host, port = address(self.vcenter)
        # pooled connections idle longer than the timeout are dropped rather than reused
        # (vCenter closes idle connections between syncs)
        si = vcenter_login(host, port, self.user, self._password, self.ssl_context,
                           self.timeout, connectionPoolTimeout=self.timeout)
        self._si = si
        self._content = si.RetrieveContent()
        self.logins += 1
        current = self._content.sessionManager.currentSession
        login = getattr(current, "loginTime", None)
        self.login_at = login.timestamp() if login is not None else time.time()

    def view(self) -> tuple[Any, Any]:
        """The checked service content and the ContainerView of the whole inventory, kept
        between reads (it lives as long as the session)."""
        content = self.content()
        if self._view is None:
            self._view = content.viewManager.CreateContainerView(
                content.rootFolder, list(VIEW_TYPES), True)
        return content, self._view

    def forget_view(self) -> None:
        self._view = None

    def _drop(self) -> None:
        self._si = self._content = self._view = None

    def close(self) -> None:
        """Log out (best effort) and forget the session."""
        if self._si is not None:
            Disconnect(self._si)
        self._drop()


class Sessions:
    """The sessions of this process, one per vCenter, reused across syncs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_vcenter: dict[str, Session] = {}

    def get(self, vcenter: str, user: str, password: str, timeout: float) -> Session:
        with self._lock:
            session = self._by_vcenter.get(vcenter)
            if session is None or not session.matches(user, password, timeout):
                if session is not None:
                    session.close()
                session = Session(vcenter, user, password, timeout=timeout)
                self._by_vcenter[vcenter] = session
            return session

    def close(self) -> None:
        with self._lock:
            for session in self._by_vcenter.values():
                session.close()
            self._by_vcenter.clear()


SESSIONS = Sessions()


# reading ----------------------------------------------------------------------------------
VIEW_TYPES = (vim.Datacenter, vim.Folder, vim.ClusterComputeResource, vim.HostSystem,
              vim.Datastore, vim.Network)
PATHS: dict[Any, list[str]] = {
    vim.Datacenter: ["name", "parent"],
    vim.Folder: ["name", "parent"],
    vim.ClusterComputeResource: ["name", "parent", "summary.effectiveCpu",
                                 "summary.effectiveMemory"],
    vim.HostSystem: ["name", "parent", "runtime.connectionState", "runtime.inMaintenanceMode",
                     "overallStatus", "configIssue", "summary.quickStats"],
    vim.Datastore: ["name", "parent", "summary.capacity", "summary.freeSpace",
                    "summary.accessible"],
    vim.Network: ["name", "parent"],
    vim.dvs.DistributedVirtualPortgroup: ["config.defaultPortConfig", "config.uplink"],
}
DISCOVER_PATHS: dict[Any, list[str]] = {
    vim.ClusterComputeResource: ["summary.numCpuThreads", "summary.totalMemory", "datastore",
                                 "network"],
    vim.HostSystem: ["config.network.portgroup"],
}


def read_inventory(session: Session, *, discover: bool = False) -> Inventory:
    """The whole vCenter, in one property collection (see the module docstring)."""
    with session.lock:
        try:
            rows = _collect(session, discover)
        except vmodl.fault.ManagedObjectNotFound:  # the kept view is gone: make a new one
            session.forget_view()
            rows = _collect(session, discover)
    return _build(session.vcenter, rows)


def _collect(session: Session, discover: bool) -> list[tuple[Any, dict[str, Any]]]:
    content, view = session.view()
    paths = {t: list(p) for t, p in PATHS.items()}
    if discover:
        for t, extra in DISCOVER_PATHS.items():
            paths[t] = paths[t] + extra
    return retrieve(content, view, paths)


def _key(obj: Any) -> str:
    return str(obj._moId) if obj is not None else ""


def _build(vcenter: str, rows: list[tuple[Any, dict[str, Any]]]) -> Inventory:
    """Place every object under its datacenter (by walking its parents) and build the
    inventory. Objects outside any datacenter are left out."""
    parent: dict[str, str] = {}
    datacenters: dict[str, str] = {}  # moid -> name
    for obj, props in rows:
        parent[_key(obj)] = _key(props.get("parent"))
        if isinstance(obj, vim.Datacenter):
            datacenters[_key(obj)] = props.get("name", "")

    def datacenter_of(moid: str) -> str | None:
        seen = 0
        while moid and seen < 64:
            if moid in datacenters:
                return datacenters[moid]
            moid, seen = parent.get(moid, ""), seen + 1
        return None

    names = {_key(obj): props.get("name", "") for obj, props in rows}
    hosts_of: dict[str, list[Host]] = {}
    host_pg_vlans: dict[str, dict[str, int | None]] = {}  # datacenter -> standard pg -> VLAN
    for obj, props in rows:
        if isinstance(obj, vim.HostSystem):
            hosts_of.setdefault(_key(props.get("parent")), []).append(_host(props))
            dc = datacenter_of(_key(obj))
            for pg in props.get("config.network.portgroup") or []:
                vlans = host_pg_vlans.setdefault(dc or "", {})
                vlan = pg.spec.vlanId if pg.spec is not None else None
                vlans.setdefault(pg.spec.name, None if vlan in (None, TRUNK_VLAN) else vlan)

    clusters: dict[str, dict[str, Cluster]] = {}
    datastores: dict[str, dict[str, Datastore]] = {}
    port_groups: dict[str, dict[str, PortGroup]] = {}
    for obj, props in rows:
        if isinstance(obj, vim.Datacenter | vim.Folder | vim.HostSystem):
            continue
        dc = datacenter_of(_key(obj))
        if dc is None:
            continue
        name = props.get("name", "")
        if isinstance(obj, vim.ClusterComputeResource):
            clusters.setdefault(dc, {})[name] = Cluster(
                name, tuple(hosts_of.get(_key(obj), ())),
                props.get("summary.effectiveCpu"), props.get("summary.effectiveMemory"),
                props.get("summary.numCpuThreads") or 0, props.get("summary.totalMemory") or 0,
                tuple(sorted(names.get(_key(d), "") for d in props.get("datastore") or [])),
                tuple(sorted(names.get(_key(n), "") for n in props.get("network") or [])),
            )
        elif isinstance(obj, vim.Datastore):
            accessible = props.get("summary.accessible")
            datastores.setdefault(dc, {})[name] = Datastore(
                name, props.get("summary.capacity") or 0, props.get("summary.freeSpace") or 0,
                accessible is not False)
        elif isinstance(obj, vim.Network):
            if isinstance(obj, vim.dvs.DistributedVirtualPortgroup):
                pg = PortGroup(name, _dv_vlan(props.get("config.defaultPortConfig")), True,
                               bool(props.get("config.uplink")))
            else:
                pg = PortGroup(name, host_pg_vlans.get(dc, {}).get(name))
            port_groups.setdefault(dc, {})[name] = pg
    return Inventory(vcenter, {
        name: Datacenter(name, clusters.get(name, {}), datastores.get(name, {}),
                         port_groups.get(name, {}))
        for name in sorted(datacenters.values())
    })


def _host(props: Mapping[str, Any]) -> Host:
    stats = props.get("summary.quickStats")
    cpu = getattr(stats, "overallCpuUsage", None) if stats is not None else None
    memory = getattr(stats, "overallMemoryUsage", None) if stats is not None else None
    issues = tuple(getattr(e, "fullFormattedMessage", None) or type(e).__name__
                   for e in props.get("configIssue") or [])
    return Host(
        props.get("name", ""), str(props.get("runtime.connectionState") or "unknown"),
        bool(props.get("runtime.inMaintenanceMode")), str(props.get("overallStatus") or "gray"),
        issues, cpu, memory,
    )


def _dv_vlan(setting: Any) -> int | None:
    vlan = getattr(setting, "vlan", None)
    if isinstance(vlan, vim.dvs.VmwareDistributedVirtualSwitch.VlanIdSpec):
        return int(vlan.vlanId)
    return None  # trunk, private VLAN, or none set


# syncing ----------------------------------------------------------------------------------
class HealthStore(Protocol):
    """What sync needs from the ledger (adapters/ledger.py)."""

    def store_health(self, vcenter: str, pools: dict[str, dict[str, str]], at: float,
                     login_at: float | None = None) -> None: ...

    def store_health_error(self, vcenter: str, error: str, at: float,
                           pools: list[str] | tuple[str, ...] = ()) -> None: ...


@dataclass
class SyncResult:
    synced: dict[str, int] = field(default_factory=dict)  # vcenter -> pools assessed
    errors: dict[str, str] = field(default_factory=dict)  # vcenter -> why not
    skipped: list[str] = field(default_factory=list)  # vCenters without credentials

    def to_dict(self) -> dict[str, Any]:
        return {"synced": self.synced, "errors": self.errors, "skipped": self.skipped}


def sync(pools: Iterable[Pool], credentials: Mapping[str, tuple[str, str]], store: HealthStore,
         leased_storage: Mapping[str, int] | None, *, timeout: float = 30.0,
         sessions: Sessions = SESSIONS, clock: Callable[[], float] = time.time) -> SyncResult:
    """Read every vCenter of `pools` that has credentials (in parallel) and store its pools'
    health. A vCenter that fails, or answers nothing within 4 × timeout, records its error and
    keeps its last health; the others are stored as they finish."""
    by_vcenter: dict[str, list[Pool]] = {}
    for pool in pools:
        by_vcenter.setdefault(pool.vcenter, []).append(pool)
    result = SyncResult(skipped=sorted(vc for vc in by_vcenter if vc not in credentials))
    todo = {vc: members for vc, members in by_vcenter.items() if vc in credentials}
    if not todo:
        return result

    def one(vcenter: str) -> tuple[dict[str, dict[str, str]], float, float | None]:
        user, password = credentials[vcenter]
        session = sessions.get(vcenter, user, password, timeout)
        inventory = read_inventory(session)
        assessed = health.assess(todo[vcenter], inventory, leased_storage)
        return health.as_json(assessed), clock(), session.login_at

    pool_ = ThreadPoolExecutor(max_workers=min(8, len(todo)), thread_name_prefix="vcm-sync")
    try:
        futures = {vc: pool_.submit(one, vc) for vc in sorted(todo)}
        deadline = time.monotonic() + 4 * timeout
        for vcenter, future in futures.items():
            names = [p.name for p in todo[vcenter]]
            try:
                assessed, at, login_at = future.result(max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                error = f"no answer within {4 * timeout:g}s"
            except Exception as exc:  # noqa: BLE001 - recorded for the vCenter, never raised
                error = _problem(exc)
            else:
                store.store_health(vcenter, assessed, at, login_at)
                result.synced[vcenter] = len(assessed)
                continue
            log.warning("vcenter %s: health not read: %s", vcenter, error)
            store.store_health_error(vcenter, error, clock(), names)
            result.errors[vcenter] = error
    finally:
        pool_.shutdown(wait=False, cancel_futures=True)
    return result


def _problem(exc: BaseException) -> str:
    if isinstance(exc, VCenterUnavailable):
        return str(exc)
    if isinstance(exc, OSError):
        return f"unreachable: {exc}"
    detail = exc.msg if isinstance(exc, vmodl.MethodFault) else str(exc)
    return f"cannot read the inventory: {type(exc).__name__}: {detail}"


# discovery --------------------------------------------------------------------------------
def discover(vcenter: str, user: str, password: str, *, timeout: float = 30.0) -> Inventory:
    """Read a vCenter once for `skeleton` (a session of its own, logged out afterwards)."""
    session = Session(vcenter, user, password, timeout=timeout)
    try:
        return read_inventory(session, discover=True)
    finally:
        session.close()


def skeleton(inventory: Inventory, datacenter: str | None = None) -> tuple[list[dict[str, Any]],
                                                                           list[str]]:
    """Pools for a pools file: one per cluster (with hosts) and datastore its hosts mount, and
    notes on what was left out. Budgets are the hardware divided among the pools that share
    it: a cluster's logical CPUs and memory among its pools, a datastore's capacity among the
    clusters that mount it. Each port group the cluster's hosts reach (not an uplink) goes to
    exactly one pool, in turn, as a port group can be leased from one pool only."""
    pools: list[dict[str, Any]] = []
    notes: list[str] = []
    taken: set[str] = set()  # port groups are unique per vCenter
    used_names: set[str] = set()
    dcs = [inventory.datacenters[datacenter]] if datacenter else list(
        inventory.datacenters.values())
    for dc in dcs:
        pairs: list[tuple[Cluster, Datastore]] = []
        for cluster in sorted(dc.clusters.values(), key=lambda c: c.name):
            if not cluster.hosts or cluster.cpu_threads <= 0 or cluster.memory_bytes < GIB:
                notes.append(f"{dc.name}/{cluster.name}: left out (no hosts or no capacity)")
                continue
            mounted = [dc.datastores[d] for d in cluster.datastores if d in dc.datastores
                       and dc.datastores[d].capacity_bytes >= GIB]
            if not mounted:
                notes.append(f"{dc.name}/{cluster.name}: left out (no datastore)")
            pairs += [(cluster, ds) for ds in mounted]
        per_cluster: dict[str, int] = {}
        per_datastore: dict[str, int] = {}
        for cluster, ds in pairs:
            per_cluster[cluster.name] = per_cluster.get(cluster.name, 0) + 1
            per_datastore[ds.name] = per_datastore.get(ds.name, 0) + 1
        entries: list[tuple[Cluster, dict[str, Any]]] = []
        for cluster, ds in pairs:
            n, m = per_cluster[cluster.name], per_datastore[ds.name]
            name = _pool_name(
                f"{dc.name}-{cluster.name}-{ds.name}" if len(dcs) > 1
                else f"{cluster.name}-{ds.name}", used_names)
            entries.append((cluster, {
                "name": name, "vcenter": inventory.vcenter, "datacenter": dc.name,
                "cluster": cluster.name, "datastore": ds.name,
                "vcpus": max(1, cluster.cpu_threads // n),
                "memory": max(1, cluster.memory_bytes // GIB // n),
                "storage": max(1, ds.capacity_bytes // GIB // m),
                "networks": [],
            }))
        turn = 0
        for pg in sorted(dc.port_groups.values(), key=lambda p: p.name):
            if pg.uplink or not entries:
                continue
            if pg.distributed and pg.vlan is None:
                notes.append(f"{dc.name}: port group {pg.name!r} left out (a trunk or private "
                             "VLAN; add it by hand if machines should use it)")
                continue
            if pg.name in taken:
                notes.append(f"{dc.name}: port group {pg.name!r} left out (its name is taken "
                             "in another datacenter of this vCenter)")
                continue
            # the pools whose hosts reach it; a vCenter that does not say: any in the datacenter
            reach = [e for c, e in entries if pg.name in c.networks] or [e for _, e in entries]
            entry = reach[turn % len(reach)]
            turn += 1
            taken.add(pg.name)
            net: dict[str, Any] = {"port-group": pg.name}
            if pg.vlan is not None:
                net["vlan"] = pg.vlan
            entry["networks"].append(net)
        pools += [e for _, e in entries]
    return pools, notes


def _pool_name(raw: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9.-]+", "-", raw.lower()).strip("-.")[:240] or "pool"
    name, i = base, 2
    while name in used:
        name, i = f"{base}-{i}", i + 1
    used.add(name)
    return name
