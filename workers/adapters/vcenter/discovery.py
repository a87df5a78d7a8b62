"""`vcm pools discover`: a vCenter read once, and the pools file skeleton built from it."""

from __future__ import annotations

import re
from typing import Any

from ...core.health import GIB, Cluster, Datastore, Inventory
from .access import Access
from .inventory_read import read_inventory
from .sessions import Session


def discover(access: Access, *, timeout: float = 30.0) -> Inventory:
    """Read a vCenter once for `skeleton` (a session of its own, logged out afterwards)."""
    session = Session(access, timeout=timeout)
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
