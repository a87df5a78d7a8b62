"""`vcm`: the command line. Talks to the workers through Celery: send, then poll.

Exit codes: 0 ok, 2 bad input, 3 no capacity or the wait ran out, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any

from .core.errors import ERRORS, InvalidRequest, VcmError
from .core.models import parse_duration
from .core.topology import env_values, platform_vsphere

if TYPE_CHECKING:
    from .settings import Settings

EXIT_OK, EXIT_OTHER, EXIT_INPUT, EXIT_CAPACITY = 0, 1, 2, 3
QUERIES = {"vcm.show_pools", "vcm.list_leases", "vcm.estimate", "vcm.rollup_usage", "vcm.waiting",
           "vcm.usage_history"}


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_OTHER) -> None:
        super().__init__(message)
        self.code = code


# talking to the workers --------------------------------------------------------------------
_clients: dict[str, Any] = {}


def celery_app(redis_url: str | None):
    """A client-only Celery app (send and read results): the workers' settings, none of
    their code."""
    from celery import Celery

    from .settings import Settings

    url = redis_url or Settings.from_env().redis_url
    if url not in _clients:
        app = Celery("vcm-cli", set_as_current=False)
        app.config_from_object("celeryconfig")
        app.conf.broker_url = app.conf.result_backend = url
        _clients[url] = app
    return _clients[url]


def call(args: argparse.Namespace, name: str, timeout: float = 60.0, **kwargs: Any) -> Any:
    """Send a task and poll its result; show progress while it waits in line."""
    app = celery_app(args.redis_url)
    queue = "queries" if name in QUERIES else "placement"
    try:
        result = app.send_task(name, kwargs=kwargs, queue=queue, retry=True, retry_policy={
            "max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1})
    except Exception as exc:  # kombu raises several kinds when Redis is unreachable
        raise CliError(f"cannot reach Redis at {app.conf.broker_url}: {exc}") from None
    deadline = time.monotonic() + timeout
    hinted, last_line = False, ""
    started = time.monotonic()
    try:
        while not result.ready():
            now = time.monotonic()
            if now > deadline:
                raise CliError(f"no answer within {timeout:g}s (task {result.id}); "
                               f"is a {queue} worker running?")
            state = result.state
            if state == "WAITING" and isinstance(result.info, dict):
                info = result.info
                line = f"waiting in line: position {info.get('position')}"
                if info.get("reasons"):
                    line += " (" + "; ".join(f"{k}: {v}" for k, v in
                                             sorted(info["reasons"].items())) + ")"
                if line != last_line and not args.quiet:
                    print(line, file=sys.stderr)
                    last_line = line
            elif state == "PENDING" and now - started > 5 and not hinted and not args.quiet:
                print(f"still queued after 5s: is a {queue} worker running? "
                      f"(celery -A tasks worker -Q {queue})", file=sys.stderr)
                hinted = True
            time.sleep(0.05 if now - started < 2 else 0.25)
        return result.get(timeout=5, propagate=True)
    except VcmError:
        raise
    except CliError:
        raise
    except Exception as exc:
        name_ = type(exc).__name__
        if name_ in ERRORS:  # rebuilt by Celery without our module: map by name
            raise ERRORS[name_](*exc.args) from None
        raise CliError(f"{name_}: {exc}") from None


# output ------------------------------------------------------------------------------------
def bar(fraction: float, width: int = 20) -> str:
    fraction = max(0.0, min(1.0, fraction))
    full = round(fraction * width)
    return "[" + "#" * full + "." * (width - full) + f"] {fraction * 100:5.1f}%"


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


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


def pools_table(pools: list[dict[str, Any]]) -> str:
    out = []
    by_vc: dict[str, list[float]] = {}
    rows = []
    for p in pools:
        spec, st = p["spec"], p["status"]
        if st.get("removed"):
            rows.append([spec["name"], spec.get("vcenter", ""), "removed", "", "", "",
                         len(st.get("leases", []))])
            continue
        taints = [f"{t['key']}={t['value']}:{t['effect']}" if t.get("value") else
                  f"{t['key']}:{t['effect']}" for t in spec.get("taints") or []]
        health = st.get("health") or {}
        flags = ",".join([f for f, on in (("excluded", spec.get("exclude")),
                                          ("cordoned", spec.get("no-schedule"))) if on]
                         + [f"tainted {t}" for t in taints]
                         + ([f"degraded: {health.get('reason', '')}"]
                            if health.get("state") == "degraded" else []))
        rows.append([spec["name"] + (f" ({flags})" if flags else ""), spec["vcenter"],
                     bar(st["vcpus-usage"], 10), bar(st["memory-usage"], 10),
                     bar(st["datastore-usage"], 10), bar(st["network-usage"], 10),
                     st.get("lease-count", len(st.get("leases", [])))])
        cap = st.get("vcpus-capacity", spec["vcpus"])  # placeable vCPUs, as placement counts
        v = by_vc.setdefault(spec["vcenter"], [0, 0, 0, 0, 0, 0])
        v[0] += st.get("vcpus-used", 0)
        v[1] += cap
        v[2] += st.get("memory-used", 0)
        v[3] += spec["memory"]
        v[4] += st.get("storage-used", 0)
        v[5] += spec["storage"]
    out.append(table(rows, ["POOL", "VCENTER", "VCPUS", "MEMORY", "STORAGE", "NETWORKS",
                            "LEASES"]))
    out.append("")
    out.append(table([[vc, bar(v[0] / v[1], 10), bar(v[2] / v[3], 10), bar(v[4] / v[5], 10)]
                      for vc, v in sorted(by_vc.items())],
                     ["VCENTER", "VCPUS", "MEMORY", "STORAGE"]))
    return "\n".join(out)


def estimate_table(est: dict[str, Any]) -> str:
    rows = [[name, p["vcenter"], p["fits"], p["next-blocked-by"]]
            for name, p in est["pools"].items()]
    return (table(rows, ["POOL", "VCENTER", "FITS", "NEXT ONE BLOCKED BY"])
            + f"\n\n{est['fits']} more such request(s) fit now; then: {est['next-blocked-by']}")


def emit(args: argparse.Namespace, value: Any, render=None) -> None:
    fmt = getattr(args, "output", "json")
    if fmt == "json" or render is None:
        print(json.dumps(value, indent=2, sort_keys=False))
    else:
        print(render(value))


# commands ----------------------------------------------------------------------------------
def request_from(args: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {"vcpus": args.vcpus, "memory": args.memory}
    for key in ("storage", "vcenters", "pools", "networks", "network_type", "owner",
                "boskos_lease_id", "request_id", "ttl", "required_pool", "wait", "job_link"):
        value = getattr(args, key, None)
        if value is not None:
            req[key.replace("_", "-")] = value
    if args.selector:
        sel = {}
        for pair in args.selector:
            if "=" not in pair:
                raise InvalidRequest.of("pool-selector", f"{pair!r} is not key=value")
            k, v = pair.split("=", 1)
            sel[k] = v
        req["pool-selector"] = sel
    for pair in getattr(args, "label", None) or []:
        if "=" not in pair:
            raise InvalidRequest.of("labels", f"{pair!r} is not key=value")
        k, v = pair.split("=", 1)
        req.setdefault("labels", {})[k] = v
    return req


def wait_seconds(value: Any) -> float:
    return parse_duration(value or 0, "wait", maximum=7 * 86400)


def cmd_acquire(args: argparse.Namespace) -> int:
    req = request_from(args)
    timeout = args.timeout or wait_seconds(req.get("wait")) + 60
    show_leases(args, call(args, "vcm.acquire", timeout=timeout, request=req))
    return EXIT_OK


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


def cmd_release(args: argparse.Namespace) -> int:
    if not args.lease_ids and not args.owner and args.selector is None:
        raise InvalidRequest.of("lease_ids", "give lease ids, --owner or -l SELECTOR")
    ids = call(args, "vcm.release", lease_ids=args.lease_ids or None, owner=args.owner,
               selector=args.selector)
    emit(args, ids, lambda v: "\n".join(v) if v else "(nothing to release)")
    return EXIT_OK


def cmd_renew(args: argparse.Namespace) -> int:
    lease = call(args, "vcm.renew", lease_id=args.lease_id, owner=args.owner, ttl=args.ttl)
    emit(args, lease, lambda v: leases_table([v]))
    return EXIT_OK


def cmd_pools(args: argparse.Namespace) -> int:
    emit(args, call(args, "vcm.show_pools"), pools_table)
    return EXIT_OK


def cmd_leases(args: argparse.Namespace) -> int:
    show_leases(args, call(args, "vcm.list_leases", owner=args.owner, pool=args.pool,
                           selector=args.selector))
    return EXIT_OK


def cmd_estimate(args: argparse.Namespace) -> int:
    emit(args, call(args, "vcm.estimate", request=request_from(args)), estimate_table)
    return EXIT_OK


def cmd_reserve(args: argparse.Namespace) -> int:
    import yaml

    try:
        with open(args.file, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise InvalidRequest.of("file", f"{args.file}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidRequest.of("file", f"{args.file}: not valid YAML: {exc}") from None
    requests = data.get("requests") if isinstance(data, dict) else data
    if not isinstance(requests, list):
        raise InvalidRequest.of("requests", f"{args.file}: expected a list of requests, or a "
                                "map with 'requests'")
    groups = call(args, "vcm.acquire_batch", timeout=args.timeout or 120, requests=requests)
    show_leases(args, [x for g in groups for x in g], as_json=groups)
    return EXIT_OK


def usage_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no usage snapshots yet: beat takes one every VCM_ROLLUP_INTERVAL)"
    out = []
    for r in rows:
        for name, p in sorted(r["pools"].items()):
            out.append([r["at"], name, bar(p["vcpus"], 10), bar(p["memory"], 10),
                        bar(p["storage"], 10), p["leases"], r["waiting"]])
    return table(out, ["AT", "POOL", "VCPUS", "MEMORY", "STORAGE", "LEASES", "WAITING"])


def cmd_usage(args: argparse.Namespace) -> int:
    emit(args, call(args, "vcm.usage_history", pool=args.pool, since=args.since), usage_table)
    return EXIT_OK


def vcenter_credentials(pools, settings: Settings | None = None) -> dict[str, tuple[str, str]]:
    """VCM_VCENTER_CREDENTIALS="vc1=user:pass,vc2=user:pass", else VCM_VCENTER_USERNAME/PASSWORD
    for every vCenter (from `settings`, else the environment's)."""
    from .settings import Settings

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
    from .adapters.pools_file import load_pools
    from .adapters.vcenter import check_pools, connector
    from .settings import Settings

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

    from .adapters.inventory import discover, skeleton
    from .adapters.vcenter import VCenterUnavailable
    from .settings import Settings

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


def cmd_run(args: argparse.Namespace) -> int:
    from .stack import run_stack

    return run_stack(args)


def cmd_api(args: argparse.Namespace) -> int:
    from api_shim.app import serve
    from api_shim.settings import ApiSettings

    from .settings import Settings

    settings = (ApiSettings.from_env(Settings.from_env(redis_url=args.redis_url))
                if args.redis_url else None)  # None: create_app reads the environment
    serve(host=args.host, port=args.port, settings=settings)
    return EXIT_OK


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
                        choices=["json", "table", "failure-domains", "subnets"],
                        default="table")

    def request_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--vcpus", type=int, required=True)
        p.add_argument("--memory", type=int, required=True, help="GB")
        p.add_argument("--storage", type=int, help="GB")
        p.add_argument("--vcenters", type=int)
        p.add_argument("--pools", type=int, help="P pools (over at most --vcenters vCenters)")
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
    p.set_defaults(func=cmd_acquire)
    p = sub.add_parser("release", parents=[common, out], help="release leases")
    p.add_argument("lease_ids", nargs="*")
    p.add_argument("--owner")
    p.add_argument("-l", "--selector", help="every lease whose labels match, e.g. "
                   "boskos-lease-id=X (of --owner when given)")
    p.set_defaults(func=cmd_release)
    p = sub.add_parser("renew", parents=[common, out], help="extend a lease")
    p.add_argument("lease_id")
    p.add_argument("--owner")
    p.add_argument("--ttl")
    p.set_defaults(func=cmd_renew)
    p = sub.add_parser("pools", parents=[common, out], help="pools and their usage")
    p.set_defaults(func=cmd_pools)
    pools_sub = p.add_subparsers(dest="pools_command")
    d = pools_sub.add_parser("discover", help="print a pools file skeleton from a vCenter")
    d.add_argument("--vcenter", required=True, help="as pools name it: host, host:port or URL")
    d.add_argument("--datacenter", help="only this datacenter")
    d.set_defaults(func=cmd_pools_discover)
    p = sub.add_parser("leases", parents=[common, out_fd], help="active leases")
    p.add_argument("--owner")
    p.add_argument("--pool")
    p.add_argument("-l", "--selector", help="only leases whose labels match, e.g. k=v,k2=v2")
    p.set_defaults(func=cmd_leases)
    p = sub.add_parser("estimate", parents=[common, out], help="how many more would fit")
    request_flags(p)
    p.set_defaults(func=cmd_estimate)
    p = sub.add_parser("reserve", parents=[common, out_env], help="all-or-nothing batch")
    p.add_argument("-f", "--file", required=True, help="YAML: a list of requests")
    p.add_argument("--timeout", type=float)
    p.set_defaults(func=cmd_reserve)
    p = sub.add_parser("usage", parents=[common, out], help="usage history (rollups)")
    p.add_argument("--pool")
    p.add_argument("--since", default="6h", help="e.g. 6h, 7d")
    p.set_defaults(func=cmd_usage)
    p = sub.add_parser("check-pools", parents=[common, out],
                       help="check the pools file against the real vCenters")
    p.add_argument("-f", "--file", help="pools file (default $VCM_POOLS_FILE)")
    p.set_defaults(func=cmd_check_pools)
    p = sub.add_parser("api", parents=[common], help="serve the HTTP shim")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_api)
    p = sub.add_parser("run", parents=[common], help="the whole local stack, in the foreground")
    p.add_argument("--api-port", type=int, default=8080)
    p.add_argument("--flower-port", type=int, default=5555)
    p.add_argument("--no-flower", action="store_true")
    p.add_argument("--no-api", action="store_true")
    p.set_defaults(func=cmd_run)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.redis_url = getattr(args, "redis_url", None)
    args.quiet = getattr(args, "quiet", False)
    try:
        return args.func(args)
    except VcmError as exc:
        print(f"vcm: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except CliError as exc:
        print(f"vcm: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vcm ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
