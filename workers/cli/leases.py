"""Commands on leases: acquire, release, renew, leases, estimate, reserve."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..contract import Task
from ..core.errors import InvalidRequest
from ..core.parsing import parse_duration
from ..core.step_files import install_of
from .client import call
from .exits import EXIT_OK
from .lease_files import check_options, target_dir, write_lease_files
from .output import emit, estimate_table, leases_table, show_leases


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
    show_leases(args, call(args, Task.ACQUIRE, timeout=timeout, request=req))
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    if not args.lease_ids and not args.owner and args.selector is None:
        raise InvalidRequest.of("lease_ids", "give lease ids, --owner or -l SELECTOR")
    ids = call(args, Task.RELEASE, lease_ids=args.lease_ids or None, owner=args.owner,
               selector=args.selector)
    emit(args, ids, lambda v: "\n".join(v) if v else "(nothing to release)")
    return EXIT_OK


def cmd_renew(args: argparse.Namespace) -> int:
    lease = call(args, Task.RENEW, lease_id=args.lease_id, owner=args.owner, ttl=args.ttl)
    emit(args, lease, lambda v: leases_table([v]))
    return EXIT_OK


def cmd_leases(args: argparse.Namespace) -> int:
    if args.output == "lease-files" and not args.selector:
        raise InvalidRequest.of("selector", "-o lease-files writes the files of one install: "
                                "select its leases (-l boskos-lease-id=X)")
    check_options(args)
    leases = call(args, Task.LIST_LEASES, owner=args.owner, pool=args.pool,
                  selector=args.selector)
    if args.output != "lease-files":
        show_leases(args, leases)
        return EXIT_OK
    if not leases:
        raise InvalidRequest.of("selector", f"no active lease matches {args.selector!r}")
    install = install_of(leases, call(args, Task.SHOW_POOLS))
    directory = target_dir(args.dir)
    for name in write_lease_files(args, install):
        print(os.path.join(directory, name))
    return EXIT_OK


def cmd_estimate(args: argparse.Namespace) -> int:
    emit(args, call(args, Task.ESTIMATE, request=request_from(args)), estimate_table)
    return EXIT_OK


def cmd_reserve(args: argparse.Namespace) -> int:
    import yaml

    from ..adapters.yaml_files import DuplicateKey, load_yaml

    try:
        with open(args.file, encoding="utf-8") as fh:
            data = load_yaml(fh)
    except OSError as exc:
        raise InvalidRequest.of("file", f"{args.file}: {exc.strerror}") from None
    except DuplicateKey as exc:  # the request would run with whichever value came last
        raise InvalidRequest.of(exc.key, f"{args.file}: {exc.problem}") from None
    except UnicodeDecodeError as exc:
        raise InvalidRequest.of("file", f"{args.file}: not UTF-8 text: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise InvalidRequest.of("file", f"{args.file}: not valid YAML: {exc}") from None
    requests = data.get("requests") if isinstance(data, dict) else data
    if not isinstance(requests, list):
        raise InvalidRequest.of("requests", f"{args.file}: expected a list of requests, or a "
                                "map with 'requests'")
    groups = call(args, Task.ACQUIRE_BATCH, timeout=args.timeout or 120, requests=requests)
    show_leases(args, [x for g in groups for x in g], as_json=groups)
    return EXIT_OK
