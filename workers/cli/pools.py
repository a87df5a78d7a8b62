"""Commands on pools: pools (with usage), usage history, check-pools, pools discover."""

from __future__ import annotations

import argparse
import json

from ..contract import Task
from .client import call
from .exits import EXIT_INPUT, EXIT_OK, CliError
from .output import emit, pools_table, table, usage_table


def cmd_pools(args: argparse.Namespace) -> int:
    emit(args, call(args, Task.SHOW_POOLS), pools_table)
    return EXIT_OK


def cmd_usage(args: argparse.Namespace) -> int:
    emit(args, call(args, Task.USAGE_HISTORY, pool=args.pool, since=args.since), usage_table)
    return EXIT_OK


def cmd_check_pools(args: argparse.Namespace) -> int:
    """Compare the pools file with what each vCenter really has (pyvmomi), contacting only the
    vCenters the settings give access to (adapters/vcenter/access.py)."""
    from ..adapters.pools_file import load_pools
    from ..adapters.vcenter.access import plan
    from ..adapters.vcenter.client import check_pools, connector
    from ..settings import Settings

    settings = Settings.from_env()
    path = args.file or settings.pools_file
    pools = load_pools(path)
    access = plan((p.vcenter for p in pools), settings)
    findings = check_pools(pools, connector(access, timeout=settings.inventory_timeout))
    rows = [[f.severity, f.pool, f.field, f.message] for f in findings]
    if args.output == "json":
        print(json.dumps([f.__dict__ for f in findings], indent=2))
    elif rows:
        print(table(rows, ["SEVERITY", "POOL", "FIELD", "MESSAGE"]))
    else:
        print(f"{path}: every pool matches its vCenter")
    return EXIT_INPUT if any(f.severity == "error" for f in findings) else EXIT_OK


def cmd_pools_discover(args: argparse.Namespace) -> int:
    """Print a pools file skeleton from what a vCenter has, for an operator to edit."""
    import yaml

    from ..adapters.vcenter.access import plan
    from ..adapters.vcenter.client import VCenterUnavailable
    from ..adapters.vcenter.discovery import discover, skeleton
    from ..settings import Settings

    settings = Settings.from_env()
    access = plan([args.vcenter], settings)
    if args.vcenter not in access.access:
        raise CliError(f"vcenter {args.vcenter}: {access.refused[args.vcenter]}", EXIT_INPUT)
    try:
        inventory = discover(access.access[args.vcenter], timeout=settings.inventory_timeout)
    except VCenterUnavailable as exc:
        raise CliError(f"vcenter {args.vcenter}: {exc}") from None
    if args.datacenter and args.datacenter not in inventory.datacenters:
        raise CliError(f"datacenter {args.datacenter!r} not found on {args.vcenter} (have: "
                       f"{', '.join(inventory.datacenters) or 'none'})", EXIT_INPUT)
    pools, notes = skeleton(inventory, args.datacenter)
    if not pools:
        raise CliError(f"{args.vcenter}: no cluster with hosts and a datastore to make a pool "
                       "of" + "".join(f"\n  {n}" for n in notes))
    print(f"# Pools discovered on {args.vcenter} by `vcm pools discover`: edit before use.\n"
          "# Budgets split the hardware among the pools sharing it (a cluster's logical CPUs\n"
          "# and memory, a datastore's capacity); each port group is in one pool. Add cidr and\n"
          "# gateway to the networks, labels, and check with `vcm check-pools -f FILE`.")
    for note in notes:
        print(f"# {note}")
    print(yaml.safe_dump({"pools": pools}, sort_keys=False, default_flow_style=None,
                         width=100).rstrip())
    return EXIT_OK
