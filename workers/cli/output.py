"""What the CLI prints: tables, JSON, and a lease's env lines, failure domains or subnets."""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable
from typing import Any

from ..core.health import ago
from ..core.topology import env_values, platform_vsphere


def bar(fraction: float, width: int = 20) -> str:
    fraction = max(0.0, min(1.0, fraction))
    full = round(fraction * width)
    return "[" + "#" * full + "." * (width - full) + f"] {fraction * 100:5.1f}%"


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def emit(args: argparse.Namespace, value: Any,
         render: Callable[[Any], str] | None = None) -> None:
    fmt = getattr(args, "output", "json")
    if fmt == "json" or render is None:
        print(json.dumps(value, indent=2, sort_keys=False))
    else:
        print(render(value))


# leases ------------------------------------------------------------------------------------
def leases_table(leases: list[dict[str, Any]]) -> str:
    rows = []
    for x in leases:
        st, sp = x["status"], x["spec"]
        nets = ",".join(n["port-group"] for n in st.get("networks") or []) or "-"
        rows.append([x["metadata"]["name"], st.get("pool"), st.get("vcenter"), sp.get("vcpus"),
                     sp.get("memory"), sp.get("storage"), nets, st.get("owner"),
                     st.get("expires-at"), st.get("state")])
    return table(rows, ["LEASE", "POOL", "VCENTER", "VCPUS", "MEMORY", "STORAGE", "NETWORKS",
                        "OWNER", "EXPIRES", "STATE"])


def lease_env(leases: list[dict[str, Any]]) -> str:
    """`export` lines for every lease: the first unnumbered, each also with its index."""
    lines = []
    for i, x in enumerate(leases):
        for key, value in env_values(x).items():
            if i == 0:
                lines.append(f"export VCM_{key}={shlex.quote(value)}")
            lines.append(f"export VCM_{key}_{i}={shlex.quote(value)}")
    ids = " ".join(x["metadata"]["name"] for x in leases)
    lines.append(f"export VCM_LEASE_IDS={shlex.quote(ids)}")
    lines.append(f"export VCM_LEASE_COUNT={len(leases)}")
    return "\n".join(lines)


def subnets(leases: list[dict[str, Any]]) -> str:
    """The subnets of these leases' port groups as JSON, keyed by router, then VLAN."""
    out: dict[str, dict[str, Any]] = {}
    for lease in leases:
        st = lease["status"]
        for net in st.get("networks") or []:
            entry = {k: v for k, v in net.items() if k not in ("router", "vlan")}
            entry["vcenter"] = st.get("vcenter")
            out.setdefault(net.get("router") or "", {})[str(net.get("vlan"))] = entry
    return json.dumps(out, indent=2, sort_keys=True)


def failure_domains(leases: list[dict[str, Any]]) -> str:
    """install-config's platform.vsphere (vcenters and failureDomains) for these leases."""
    import yaml

    return yaml.safe_dump(platform_vsphere(leases), sort_keys=False).rstrip()


LEASE_OUTPUTS = {"env": lease_env, "failure-domains": failure_domains, "subnets": subnets}


def show_leases(args: argparse.Namespace, leases: list[dict[str, Any]],
                as_json: Any = None) -> None:
    """Leases in the chosen output: env lines, failure domains, subnets, JSON or a table."""
    render = LEASE_OUTPUTS.get(args.output)
    if render is not None:
        print(render(leases))
    elif args.output == "json":
        emit(args, leases if as_json is None else as_json)
    else:
        print(leases_table(leases))


# pools, estimates, usage -------------------------------------------------------------------
def pools_table(pools: list[dict[str, Any]]) -> str:
    out = []
    by_vc: dict[str, list[float]] = {}
    rows = []
    notes = []  # why a pool is not ok, under the table: a reason is too long for a column
    for p in pools:
        spec, st = p["spec"], p["status"]
        if st.get("removed"):
            rows.append([spec["name"], spec.get("vcenter", ""), "", "removed", "", "", "",
                         len(st.get("leases", []))])
            continue
        taints = [f"{t['key']}={t['value']}:{t['effect']}" if t.get("value") else
                  f"{t['key']}:{t['effect']}" for t in spec.get("taints") or []]
        flags = ",".join([f for f, on in (("excluded", spec.get("exclude")),
                                          ("cordoned", spec.get("no-schedule"))) if on]
                         + [f"tainted {t}" for t in taints])
        rows.append([spec["name"] + (f" ({flags})" if flags else ""), spec["vcenter"],
                     health_cell(st.get("health") or {}),
                     bar(st["vcpus-usage"], 10), bar(st["memory-usage"], 10),
                     bar(st["datastore-usage"], 10), bar(st["network-usage"], 10),
                     st.get("lease-count", len(st.get("leases", [])))])
        health = st.get("health") or {}
        if health.get("state") in ("degraded", "unknown") and health.get("reason"):
            notes.append(f"{spec['name']}: {health['state']}: {health['reason']}")
        cap = st.get("vcpus-capacity", spec["vcpus"])  # placeable vCPUs, as placement counts
        v = by_vc.setdefault(spec["vcenter"], [0, 0, 0, 0, 0, 0])
        v[0] += st.get("vcpus-used", 0)
        v[1] += cap
        v[2] += st.get("memory-used", 0)
        v[3] += spec["memory"]
        v[4] += st.get("storage-used", 0)
        v[5] += spec["storage"]
    out.append(table(rows, ["POOL", "VCENTER", "HEALTH", "VCPUS", "MEMORY", "STORAGE",
                            "NETWORKS", "LEASES"]))
    out.extend(["", *notes] if notes else [])
    out.append("")
    out.append(table([[vc, bar(v[0] / v[1], 10), bar(v[2] / v[3], 10), bar(v[4] / v[5], 10)]
                      for vc, v in sorted(by_vc.items())],
                     ["VCENTER", "VCPUS", "MEMORY", "STORAGE"]))
    return "\n".join(out)


def health_cell(health: dict[str, Any]) -> str:
    """ok / degraded / unknown, with the age of the last good read of its vCenter."""
    state = str(health.get("state") or "unknown")
    age = health.get("age-seconds")
    return f"{state} ({ago(age)})" if isinstance(age, int | float) else state


def estimate_table(est: dict[str, Any]) -> str:
    rows = [[name, p["vcenter"], p["fits"], p["next-blocked-by"]]
            for name, p in est["pools"].items()]
    return (table(rows, ["POOL", "VCENTER", "FITS", "NEXT ONE BLOCKED BY"])
            + f"\n\n{est['fits']} more such request(s) fit now; then: {est['next-blocked-by']}")


def usage_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no usage snapshots yet: beat takes one every VCM_ROLLUP_INTERVAL)"
    out = []
    for r in rows:
        for name, p in sorted(r["pools"].items()):
            out.append([r["at"], name, bar(p["vcpus"], 10), bar(p["memory"], 10),
                        bar(p["storage"], 10), p["leases"], r["waiting"]])
    return table(out, ["AT", "POOL", "VCPUS", "MEMORY", "STORAGE", "LEASES", "WAITING"])
