"""The live inventory read (pyvmomi): a whole vCenter in one property collection.

`read_inventory` reads a whole vCenter with one `RetrievePropertiesEx` (and its continuation
pages) over a ContainerView of the root folder that the session keeps between reads:
datacenters and folders (to place each object under its datacenter, by inventory path, as
check-pools finds them: a name anywhere below the datacenter), clusters (effective CPU and
memory), hosts (connection state, maintenance mode, overall status, configuration issues, quick
stats), datastores (capacity, free space, accessible) and networks (standard and distributed
port groups, with VLANs). `discover=True` also reads what a pools file skeleton needs (the
clusters' hardware, which datastores and networks their hosts reach, standard port groups'
VLANs from the hosts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyVmomi import vim, vmodl

from ...core.health import Cluster, Datacenter, Datastore, Host, Inventory, PortGroup
from .client import retrieve
from .sessions import Session

TRUNK_VLAN = 4095  # a standard port group's "all VLANs"
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
