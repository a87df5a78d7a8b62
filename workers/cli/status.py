"""What operators look at: `vcm status` (pools, networks by type, free and leased), `vcm jobs`
(leases grouped by the install they belong to, their boskos-lease-id) and `vcm networks list`.
All read the workers' view (vcm.show_pools, vcm.list_leases): the pools as the workers have
them loaded, with the ledger's leases.

A port group is one network of its vCenter and pod, whichever pools list it: networks are
counted once across the fleet. A network split into slices counts one per slice; a lease of
the whole network holds all of them."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..contract import Task
from ..core.health import ago
from ..core.lease import parse_rfc3339
from .client import call
from .exits import EXIT_OK
from .output import table

BOSKOS = "boskos-lease-id"
NetKey = tuple[str, str, str]  # (vCenter, pod, port group)


@dataclass
class NetworkView:
    """One network of the fleet: its configuration, the pools that list it, what is leased."""

    vcenter: str
    pod: str
    spec: dict[str, Any]
    pools: list[str] = field(default_factory=list)
    held: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # slice ("": whole)

    @property
    def type(self) -> str:
        return str(self.spec.get("type") or "single-tenant")

    @property
    def pieces(self) -> int:
        slices = self.spec.get("slices")
        return slices if isinstance(slices, int) and slices > 1 else 1

    @property
    def leased(self) -> int:
        if "" in self.held:
            return self.pieces
        return min(len(self.held), self.pieces)

    def leases(self) -> list[dict[str, Any]]:
        return [x for held in self.held.values() for x in held]

    def to_dict(self) -> dict[str, Any]:
        return {"vcenter": self.vcenter, **({"pod": self.pod} if self.pod else {}),
                **self.spec, "pools": self.pools, "pieces": self.pieces,
                "leased": self.leased, "free": self.pieces - self.leased,
                "leases": sorted({x["metadata"]["name"] for x in self.leases()}),
                "held-by": sorted({holder(x) for x in self.leases()})}


def holder(lease: dict[str, Any]) -> str:
    """Who holds a lease: its install (boskos-lease-id), else its owner."""
    st = lease.get("status") or {}
    return job_of(lease) or f"owner {st.get('owner') or '?'}"


def job_of(lease: dict[str, Any]) -> str:
    st = lease.get("status") or {}
    labels = st.get("labels") if isinstance(st.get("labels"), dict) else {}
    return str(st.get(BOSKOS) or labels.get(BOSKOS) or "")


def all_leases(pools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for p in pools for x in (p.get("status") or {}).get("leases") or []]


def networks_of(pools: list[dict[str, Any]]) -> dict[NetKey, NetworkView]:
    """Every network of the fleet once, with the pools that list it and its leases."""
    nets: dict[NetKey, NetworkView] = {}
    for p in pools:
        spec = p["spec"]
        if (p.get("status") or {}).get("removed"):
            continue
        for n in spec.get("networks") or []:
            pod = str(n.get("pod") or spec.get("pod") or "")
            key = (spec["vcenter"], pod, n["port-group"])
            view = nets.setdefault(key, NetworkView(spec["vcenter"], pod, dict(n)))
            view.pools.append(spec["name"])
    for lease in all_leases(pools):
        st = lease["status"]
        for n in st.get("networks") or []:
            key = (st.get("vcenter", ""), str(n.get("pod") or ""), n.get("port-group", ""))
            view = nets.get(key)
            if view is None and not n.get("pod"):  # a lease written before its pool had a pod
                view = next((v for k, v in nets.items() if k[0] == key[0] and k[2] == key[2]),
                            None)
            if view is not None:
                view.held.setdefault(str(n.get("slice") or ""), []).append(lease)
    return nets


def by_type(nets: Iterable[NetworkView]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for n in nets:
        t = out.setdefault(n.type, {"total": 0, "leased": 0, "free": 0})
        t["total"] += n.pieces
        t["leased"] += n.leased
        t["free"] += n.pieces - n.leased
    return dict(sorted(out.items()))


def status(pools: list[dict[str, Any]]) -> dict[str, Any]:
    """The fleet at a glance: each pool's state and use, networks by type, leases and jobs."""
    nets = networks_of(pools)
    rows = []
    for p in pools:
        spec, st = p["spec"], p.get("status") or {}
        leases = st.get("leases") or []
        if st.get("removed"):
            rows.append({"name": spec["name"], "vcenter": spec.get("vcenter", ""),
                         "state": ["removed"], "leases": len(leases)})
            continue
        mine = [nets[(spec["vcenter"], str(n.get("pod") or spec.get("pod") or ""),
                      n["port-group"])] for n in spec.get("networks") or []]
        total = sum(n.pieces for n in mine)
        leased = sum(n.leased for n in mine)
        state = [s for s, on in (("cordoned", spec.get("no-schedule")),
                                 ("excluded", spec.get("exclude"))) if on]
        rows.append({
            "name": spec["name"], "vcenter": spec["vcenter"], "state": state or ["schedulable"],
            "vcpus": {"used": st.get("vcpus-used", 0),
                      "capacity": st.get("vcpus-capacity", spec["vcpus"])},
            "memory": {"used": st.get("memory-used", 0), "capacity": spec["memory"]},
            "storage": {"used": st.get("storage-used", 0), "capacity": spec["storage"]},
            "networks": {"total": total, "leased": leased, "free": total - leased},
            "leases": st.get("lease-count", len(leases)),
        })
    leases = all_leases(pools)
    return {"pools": rows, "networks": by_type(nets.values()), "leases": len(leases),
            "jobs": len({job_of(x) or f"\0{holder(x)}" for x in leases})}


def status_text(view: dict[str, Any]) -> str:
    rows = []
    for p in view["pools"]:
        if "removed" in p["state"]:
            rows.append([p["name"], p["vcenter"], "removed", "", "", "", "", p["leases"]])
            continue
        rows.append([p["name"], p["vcenter"], ",".join(p["state"]),
                     f"{p['vcpus']['used']}/{p['vcpus']['capacity']}",
                     f"{p['memory']['used']}/{p['memory']['capacity']}",
                     f"{p['storage']['used']}/{p['storage']['capacity']}",
                     f"{p['networks']['free']} free of {p['networks']['total']}",
                     p["leases"]])
    out = [table(rows, ["POOL", "VCENTER", "STATE", "VCPUS", "MEMORY", "STORAGE", "NETWORKS",
                        "LEASES"]), ""]
    out.append(table([[t, n["total"], n["leased"], n["free"]]
                      for t, n in view["networks"].items()],
                     ["NETWORK TYPE", "TOTAL", "LEASED", "FREE"]))
    pools = [p for p in view["pools"] if "removed" not in p["state"]]
    cordoned = sum("cordoned" in p["state"] for p in pools)
    excluded = sum("excluded" in p["state"] for p in pools)
    out.append("")
    out.append(f"{len(pools)} pools ({cordoned} cordoned, {excluded} excluded), "
               f"{view['leases']} leases, {view['jobs']} jobs")
    return "\n".join(out)


def jobs(leases: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """Leases grouped by their install (boskos-lease-id; leases without one, by owner),
    oldest first."""
    now = time.time() if now is None else now
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for lease in leases:
        job = job_of(lease)
        owner = "" if job else str(lease["status"].get("owner") or "")
        groups.setdefault((job, owner), []).append(lease)
    out = []
    for (job, _), held in groups.items():
        sts = [x["status"] for x in held]
        leased = min(parse_rfc3339(st["leased-at"]) for st in sts)
        links = sorted({st.get("job-link") for st in sts if st.get("job-link")})
        out.append({
            BOSKOS: job,
            "owners": sorted({str(st.get("owner") or "") for st in sts}),
            "leases": [x["metadata"]["name"] for x in held],
            "pools": sorted({str(st.get("pool") or "") for st in sts}),
            "vcpus": sum(int(x["spec"].get("vcpus") or 0) for x in held),
            "memory": sum(int(x["spec"].get("memory") or 0) for x in held),
            "storage": sum(int(x["spec"].get("storage") or 0) for x in held),
            "networks": sorted({n["port-group"] for st in sts for n in st.get("networks") or []}),
            "job-link": links[0] if links else "",  # the job's; job-links when they differ
            "job-links": links,
            "leased-at": min((st["leased-at"] for st in sts), key=parse_rfc3339),
            "age-seconds": round(now - leased, 1),
        })
    out.sort(key=lambda j: (j["leased-at"], j[BOSKOS], j["owners"]))
    return out


def jobs_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no leases)"
    return table([[j[BOSKOS] or "-", ",".join(j["owners"]), len(j["leases"]),
                   ",".join(j["pools"]), j["vcpus"], j["memory"], ",".join(j["networks"]) or "-",
                   ago(j["age-seconds"]), " ".join(j["job-links"]) or "-"]
                  for j in rows],
                 ["JOB (BOSKOS-LEASE-ID)", "OWNER", "LEASES", "POOLS", "VCPUS", "MEMORY",
                  "NETWORKS", "AGE", "JOB LINK"])


def networks_list(pools: list[dict[str, Any]], pool: str | None = None,
                  net_type: str | None = None, vcenter: str | None = None
                  ) -> list[dict[str, Any]]:
    views = networks_of(pools).values()
    return [n.to_dict() for n in views
            if (pool is None or pool in n.pools) and (net_type is None or n.type == net_type)
            and (vcenter is None or n.vcenter == vcenter)]


def networks_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no networks)"
    return table([[n["vcenter"], n.get("pod") or "-", n["port-group"],
                   "-" if n.get("vlan") is None else n["vlan"], n.get("type") or "single-tenant",
                   n.get("cidr") or "-", n["pieces"] if n["pieces"] > 1 else "-",
                   f"{n['leased']}/{n['pieces']}", ",".join(n["held-by"]) or "-",
                   ",".join(n["pools"])]
                  for n in rows],
                 ["VCENTER", "POD", "PORT GROUP", "VLAN", "TYPE", "CIDR", "SLICES", "LEASED",
                  "HELD BY", "POOLS"])


def _emit(args: argparse.Namespace, value: Any, text: str) -> None:
    print(json.dumps(value, indent=2) if args.output == "json" else text)


def cmd_status(args: argparse.Namespace) -> int:
    view = status(call(args, Task.SHOW_POOLS))
    _emit(args, view, status_text(view))
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    rows = jobs(call(args, Task.LIST_LEASES))
    _emit(args, rows, jobs_text(rows))
    return EXIT_OK


def cmd_networks_list(args: argparse.Namespace) -> int:
    rows = networks_list(call(args, Task.SHOW_POOLS), args.pool, args.type, args.vcenter)
    _emit(args, rows, networks_text(rows))
    return EXIT_OK
