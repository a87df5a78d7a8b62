"""Commands on pools: pools (with usage), usage history, check-pools, pools discover."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..core.errors import InvalidRequest
from .client import call
from .exits import EXIT_INPUT, EXIT_OK, CliError
from .output import emit, pools_table, table, usage_table

if TYPE_CHECKING:
    from ..settings import Settings


def cmd_pools(args: argparse.Namespace) -> int:
    emit(args, call(args, "vcm.show_pools"), pools_table)
    return EXIT_OK


def cmd_usage(args: argparse.Namespace) -> int:
    emit(args, call(args, "vcm.usage_history", pool=args.pool, since=args.since), usage_table)
    return EXIT_OK


def vcenter_credentials(pools: Iterable[Any],
                        settings: Settings | None = None) -> dict[str, tuple[str, str]]:
    """VCM_VCENTER_CREDENTIALS="vc1=user:pass,vc2=user:pass", else VCM_VCENTER_USERNAME/PASSWORD
    for every vCenter (from `settings`, else the environment's)."""
    from ..settings import Settings

    settings = settings or Settings.from_env()
    creds: dict[str, tuple[str, str]] = {}
    user, password = settings.vcenter_username, settings.vcenter_password
    if user:
        creds = {p.vcenter: (user, password) for p in pools}
    for item in filter(None, settings.vcenter_credentials.split(",")):
        vc, sep, pair = item.strip().partition("=")
        name, sep2, secret = pair.partition(":")
        if not sep or not sep2:
            raise InvalidRequest.of("VCM_VCENTER_CREDENTIALS", "use vcenter=user:password,…")
        creds[vc] = (name, secret)
    return creds


def cmd_check_pools(args: argparse.Namespace) -> int:
    """Compare the pools file with what each vCenter really has (pyvmomi)."""
    from ..adapters.pools_file import load_pools
    from ..adapters.vcenter import check_pools, connector
    from ..settings import Settings

    path = args.file or Settings.from_env().pools_file
    pools = load_pools(path)
    findings = check_pools(pools, connector(vcenter_credentials(pools)))
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
    import types

    import yaml

    from ..adapters.inventory import discover, skeleton
    from ..adapters.vcenter import VCenterUnavailable
    from ..settings import Settings

    settings = Settings.from_env()
    creds = vcenter_credentials([types.SimpleNamespace(vcenter=args.vcenter)], settings)
    if args.vcenter not in creds:
        raise CliError(f"no credentials for {args.vcenter}: set VCM_VCENTER_USERNAME and "
                       "VCM_VCENTER_PASSWORD, or VCM_VCENTER_CREDENTIALS", EXIT_INPUT)
    user, password = creds[args.vcenter]
    try:
        inventory = discover(args.vcenter, user, password,
                             timeout=settings.inventory_timeout)
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
