"""The arguments of the operator commands: `vcm pools cordon | uncordon | exclude | include |
set-capacity` and `vcm networks add | drop | split` (what they change, and where: changes.py),
and of `vcm status`, `vcm jobs` and `vcm networks list` (status.py). Each command is named
here as "module:function" and imported only when it runs (workers/cli/__init__.py)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..core.pools import NETWORK_KEYS

# the commands that set a pool's flag: command -> (key, value, what the pool is then)
FLAGS = {
    "cordon": ("no-schedule", True, "cordoned"),
    "uncordon": ("no-schedule", False, "uncordoned"),
    "exclude": ("exclude", True, "excluded"),
    "include": ("exclude", False, "included"),
}
# network fields given as a list: repeat the flag, or separate with commas
LIST_FIELDS = ("ip-addresses", "nameservers", "dns")
INT_FIELDS = ("vlan", "slices")


def add_commands(sub: Any, pools_sub: Any, common: argparse.ArgumentParser,
                 out: argparse.ArgumentParser) -> None:
    """`vcm pools cordon ...`, `vcm networks ...`, `vcm status` and `vcm jobs`."""
    for command, (_, _, done) in FLAGS.items():
        p = pools_sub.add_parser(command, help=f"mark pools {done} in the pools configuration")
        p.add_argument("names", nargs="+", metavar="POOL")
        _target_flags(p)
        p.set_defaults(func="changes:cmd_pool_flag", flag_command=command)
    p = pools_sub.add_parser("set-capacity", help="set a pool's vCPUs, memory, storage or "
                             "vCPU overcommit in the pools configuration")
    p.add_argument("name", metavar="POOL")
    p.add_argument("--vcpus", type=int)
    p.add_argument("--memory", type=int, help="GB")
    p.add_argument("--storage", type=int, help="GB")
    p.add_argument("--vcpu-overcommit", type=finite, help="placeable vCPUs = vcpus x this")
    _target_flags(p)
    p.set_defaults(func="changes:cmd_set_capacity")

    nets = sub.add_parser("networks", help="the pools' networks: list, add, drop, split")
    nets_sub = nets.add_subparsers(dest="networks_command", required=True)
    p = nets_sub.add_parser("list", parents=[common, out], help="networks, free and leased")
    p.add_argument("--pool", help="only the networks this pool lists")
    p.add_argument("--type", help="only networks of this type")
    p.add_argument("--vcenter")
    p.set_defaults(func="status:cmd_networks_list")
    p = nets_sub.add_parser("add", help="add a network (a port group and its details) to "
                            "pools")
    p.add_argument("port_group", metavar="PORT-GROUP")
    p.add_argument("--pool", action="append", required=True, help="a pool to add it to "
                   "(repeat for more)")
    for key in sorted(NETWORK_KEYS - {"port-group"}):
        if key in LIST_FIELDS:
            p.add_argument(f"--{key}", action="append", metavar="ADDRESS",
                           help="repeat, or separate with commas")
        elif key in INT_FIELDS:
            p.add_argument(f"--{key}", type=int)
        else:
            p.add_argument(f"--{key}")
    _target_flags(p)
    p.set_defaults(func="changes:cmd_networks_add")
    p = nets_sub.add_parser("drop", help="drop a network from pools (every pool that lists "
                            "it, unless --pool)")
    p.add_argument("port_group", metavar="PORT-GROUP")
    p.add_argument("--pool", action="append", help="only from this pool (repeat for more)")
    p.add_argument("--vcenter", help="only the port group of this vCenter")
    _target_flags(p)
    p.set_defaults(func="changes:cmd_networks_drop")
    p = nets_sub.add_parser("split", help="split a multi-tenant network into slices, each "
                            "leased on its own")
    p.add_argument("port_group", metavar="PORT-GROUP")
    p.add_argument("--slices", type=int, required=True, help="how many slices")
    p.add_argument("--pool", action="append", help="the network these pools list (repeat)")
    p.add_argument("--vcenter", help="the port group of this vCenter")
    _target_flags(p)
    p.set_defaults(func="changes:cmd_networks_split")

    p = sub.add_parser("status", parents=[common, out],
                       help="pools, networks by type (free and leased), leases and jobs")
    p.set_defaults(func="status:cmd_status")
    p = sub.add_parser("jobs", parents=[common, out],
                       help="leases grouped by install (boskos-lease-id), with job link and age")
    p.set_defaults(func="status:cmd_jobs")


def finite(text: str) -> float:
    """A number that YAML writes and reads back as itself (not nan or inf)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _target_flags(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("-f", "--file", help="the pools file (default $VCM_POOLS_FILE)")
    where.add_argument("--configmap", metavar="NAMESPACE/NAME",
                       help="the ConfigMap the pools file is mounted from (default "
                       "$VCM_POOLS_CONFIGMAP)")
    p.add_argument("--key", default="pools.yaml",
                   help="the ConfigMap's key that holds the pools file (default pools.yaml)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the change as a diff and write nothing")
