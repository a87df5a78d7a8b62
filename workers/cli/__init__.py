"""`vcm`: the command line. Talks to the workers through Celery: send, then poll.

Exit codes: 0 ok, 2 bad input, 3 no capacity or the wait ran out, 1 anything else.

This module wires the arguments to the commands: `client` sends and waits, `output` prints,
`leases`, `pools`, `status`, `changes` and `serve` hold the commands (`operate` the operator
commands' arguments). A command is named "module:function" and its module imported only when
it runs: each command loads what it uses, not every other command's libraries (YAML, urllib3,
tenacity, the pools-editing code), a tenth of a second of CPU per `vcm` run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from importlib import import_module

from ..core.errors import VcmError
from .exits import EXIT_INPUT, EXIT_OK, CliError
from .operate import add_commands as add_operator_commands


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=argparse.SUPPRESS,
                        help="broker and result backend (default $VCM_REDIS_URL)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress on stderr")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("-o", "--output", choices=["json", "table"], default="table")
    out_env = argparse.ArgumentParser(add_help=False)
    out_env.add_argument("-o", "--output", choices=["json", "table", "env", "failure-domains"],
                         default="table")
    out_fd = argparse.ArgumentParser(add_help=False)
    out_fd.add_argument("-o", "--output",
                        choices=["json", "table", "failure-domains", "subnets", "lease-files"],
                        default="table", help="lease-files: write the files an OpenShift CI "
                        "step leaves in its SHARED_DIR into DIR")

    def request_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--vcpus", type=int, required=True)
        p.add_argument("--memory", type=int, required=True, help="GB")
        p.add_argument("--storage", type=int, help="GB")
        p.add_argument("--vcenters", type=int)
        p.add_argument("--pools", type=int, help="P pools, at most 16 (over at most --vcenters "
                       "vCenters)")
        p.add_argument("--networks", type=int)
        p.add_argument("--network-type")
        p.add_argument("--owner")
        p.add_argument("--boskos-lease-id")
        p.add_argument("--request-id")
        p.add_argument("--ttl", help="e.g. 24h, 90m or seconds")
        p.add_argument("--required-pool")
        p.add_argument("--selector", action="append", metavar="KEY=VALUE",
                       help="pool-selector: only pools with this label (repeat)")
        p.add_argument("--label", action="append", metavar="KEY=VALUE",
                       help="a label on every lease of the request (repeat)")
        p.add_argument("--job-link", help="a link to the job holding the leases")

    top = argparse.ArgumentParser(prog="vcm", parents=[common],
                                  description="Lease vCenter capacity to CI jobs.")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("acquire", parents=[common, out_env], help="lease capacity")
    request_flags(p)
    p.add_argument("--wait", help="wait in line this long (e.g. 1h) when nothing fits")
    p.add_argument("--timeout", type=float, help="give up polling after this many seconds")
    p.set_defaults(func="leases:cmd_acquire")
    p = sub.add_parser("release", parents=[common, out], help="release leases")
    p.add_argument("lease_ids", nargs="*")
    p.add_argument("--owner")
    p.add_argument("-l", "--selector", help="every lease whose labels match, e.g. "
                   "boskos-lease-id=X (of --owner when given)")
    p.set_defaults(func="leases:cmd_release")
    p = sub.add_parser("renew", parents=[common, out], help="extend a lease")
    p.add_argument("lease_id")
    p.add_argument("--owner")
    p.add_argument("--ttl")
    p.set_defaults(func="leases:cmd_renew")
    p = sub.add_parser("pools", parents=[common, out], help="pools and their usage")
    p.set_defaults(func="pools:cmd_pools")
    pools_sub = p.add_subparsers(dest="pools_command")
    d = pools_sub.add_parser("discover", help="print a pools file skeleton from a vCenter")
    d.add_argument("--vcenter", required=True, help="as pools name it: host, host:port or URL")
    d.add_argument("--datacenter", help="only this datacenter")
    d.set_defaults(func="pools:cmd_pools_discover")
    add_operator_commands(sub, pools_sub, common, out)
    p = sub.add_parser("leases", parents=[common, out_fd], help="active leases")
    p.add_argument("--owner")
    p.add_argument("--pool")
    p.add_argument("-l", "--selector", help="only leases whose labels match, e.g. k=v,k2=v2")
    p.add_argument("dir", nargs="?", metavar="DIR",
                   help="with -o lease-files: the directory to write into (created if missing)")
    p.add_argument("--credentials", metavar="FILE", help="with -o lease-files: the vCenter "
                   "accounts (vcenter_usernames=(...), vcenter_passwords=(...)); default: the "
                   "file each pool's ci-auth-path annotation names")
    p.add_argument("--ca-certs", metavar="FILE", help="with -o lease-files: govc.sh trusts "
                   "these certificates (default: GOVC_INSECURE=1, as the CI step writes)")
    p.add_argument("--multi-nic", action="store_true", help="with -o lease-files: the extra "
                   "NICs' port groups join every failure domain's networks")
    p.add_argument("--dvs", action="store_true", help="with -o lease-files: also write "
                   "dvs.json, each network's distributed switch per cluster, read from the "
                   "vCenters with the accounts (certificates checked against --ca-certs, "
                   "else not, as the CI step's govc)")
    rp = p.add_mutually_exclusive_group()
    rp.add_argument("--resource-pool", metavar="NAME", help="with -o lease-files: the "
                    "resource pool below each cluster's Resources (default: ipi-ci-clusters, "
                    "as the CI step sets it for IPI jobs; a UPI job gives its "
                    "$NAMESPACE-$UNIQUE_HASH)")
    rp.add_argument("--pool-resource-pool", action="store_true", help="with -o lease-files: "
                    "each pool's own configured resource pool instead")
    p.set_defaults(func="leases:cmd_leases")
    p = sub.add_parser("estimate", parents=[common, out], help="how many more would fit")
    request_flags(p)
    p.set_defaults(func="leases:cmd_estimate")
    p = sub.add_parser("reserve", parents=[common, out_env], help="all-or-nothing batch")
    p.add_argument("-f", "--file", required=True, help="YAML: a list of requests")
    p.add_argument("--timeout", type=float)
    p.set_defaults(func="leases:cmd_reserve")
    p = sub.add_parser("usage", parents=[common, out], help="usage history (rollups)")
    p.add_argument("--pool")
    p.add_argument("--since", default="6h", help="e.g. 6h, 7d")
    p.set_defaults(func="pools:cmd_usage")
    p = sub.add_parser("check-pools", parents=[common, out],
                       help="check the pools file against the real vCenters")
    p.add_argument("-f", "--file", help="pools file (default $VCM_POOLS_FILE)")
    p.set_defaults(func="pools:cmd_check_pools")
    p = sub.add_parser("api", parents=[common], help="serve the HTTP shim")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func="serve:cmd_api")
    p = sub.add_parser("controller", parents=[common],
                       help="answer Lease custom resources (VCM_CONTROLLER_NAMESPACES)")
    p.add_argument("--liveness", metavar="URL",
                   help="serve a liveness probe, e.g. http://0.0.0.0:8081/healthz")
    p.add_argument("-v", "--verbose", action="store_true", help="kopf's debug log")
    p.set_defaults(func="serve:cmd_controller")
    p = sub.add_parser("run", parents=[common], help="the whole local stack, in the foreground")
    p.add_argument("--api-port", type=int, default=8080)
    p.add_argument("--flower-port", type=int, default=5555)
    p.add_argument("--no-flower", action="store_true")
    p.add_argument("--no-api", action="store_true")
    p.add_argument("--no-controller", action="store_true",
                   help="not the Lease controller (started when $KUBECONFIG is set)")
    p.set_defaults(func="serve:cmd_run")
    return top


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function of a command named "module:function" (a module of this package)."""
    module, _, function = name.partition(":")
    return getattr(import_module(f"{__name__}.{module}"), function)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.redis_url = getattr(args, "redis_url", None)
    args.quiet = getattr(args, "quiet", False)
    try:
        return command(args.func)(args)
    except VcmError as exc:
        print(f"vcm: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except CliError as exc:
        print(f"vcm: {exc}", file=sys.stderr)
        return exc.code
    except SystemExit as exc:
        from ..settings import InvalidSetting  # here: most commands never load pydantic

        if not isinstance(exc, InvalidSetting):
            raise
        print(f"vcm: {exc.code}", file=sys.stderr)  # a VCM_* variable: bad input, as a flag
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vcm ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
