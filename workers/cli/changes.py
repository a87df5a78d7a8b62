"""What the operator commands change in the pools configuration, and where: `vcm pools cordon |
uncordon | exclude | include | set-capacity` and `vcm networks add | drop | split` (their
arguments: operate.py).

Where the change is made: `--configmap NAMESPACE/NAME` (or $VCM_POOLS_CONFIGMAP), the
ConfigMap the pools file is mounted from, by compare-and-swap; else `-f FILE` (or
$VCM_POOLS_FILE). Only the lines that change are touched (adapters/pools_edit.py). The result
is checked as the workers check the pools file: a change that would make it invalid is
refused naming the pool and the field (exit 2), and nothing is written. Running workers pick
the change up without a restart."""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Callable
from typing import Any

from ..adapters.pools_changes import (
    CAPACITY,
    Change,
    PoolsConfig,
    add_network,
    drop_network,
    set_capacity,
    set_flag,
    split_network,
)
from ..adapters.pools_edit import NETWORK_KEY_ORDER, EditRefused
from ..adapters.pools_file import pools_from_text
from ..adapters.pools_store import PoolsConfigMapStore, PoolsFileStore, StoreError
from ..core.errors import ConfigError, InvalidRequest
from ..core.pools import NETWORK_KEYS
from ..core.text import text_problem
from .exits import EXIT_INPUT, EXIT_OK, EXIT_OTHER, CliError
from .operate import FLAGS, LIST_FIELDS

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _text(value: str, field: str) -> str:
    problem = text_problem(value)
    if problem or not value.strip():
        raise InvalidRequest.of(field, problem or "must not be empty")
    return value.strip()


def store_of(args: argparse.Namespace) -> PoolsFileStore | PoolsConfigMapStore:
    from ..settings import Settings

    settings = Settings.from_env()
    if args.file:
        return PoolsFileStore(_text(args.file, "--file"))
    ref = args.configmap or settings.pools_configmap
    if not ref:
        return PoolsFileStore(settings.pools_file)
    field = "--configmap" if args.configmap else "VCM_POOLS_CONFIGMAP"
    namespace, sep, name = _text(ref, field).partition("/")
    if not sep or not _DNS_LABEL.match(namespace) or len(namespace) > 63 \
            or not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        raise InvalidRequest.of(field, f"{ref!r} is not NAMESPACE/NAME of a ConfigMap")
    key = _text(args.key, "--key")
    if not _CONFIGMAP_KEY.match(key) or len(key) > 253:
        raise InvalidRequest.of("--key", f"{key!r} is not a ConfigMap key")
    return PoolsConfigMapStore(namespace, name, key)


def run_change(args: argparse.Namespace, make: Callable[[PoolsConfig], Change]) -> int:
    """Make the change where the configuration lives, or refuse it with the reason."""
    store = store_of(args)
    said: list[str] = []

    def change(text: str, source: str) -> str:
        config = PoolsConfig(text, source)
        made = make(config)
        said[:] = made.said  # made again on a fresh read after a conflict: the last one counts
        new = config.apply(made)
        if new != text:
            pools_from_text(new, source)  # as the workers will read it
        return new

    try:
        written = store.update(change, dry_run=args.dry_run)
    except EditRefused as exc:
        raise CliError(f"refused, nothing changed: {exc}",
                       EXIT_INPUT if exc.bad_input else EXIT_OTHER) from None
    except ConfigError as exc:
        raise CliError(f"refused, nothing changed: {exc.message}", EXIT_INPUT) from None
    except StoreError as exc:
        raise CliError(str(exc), EXIT_INPUT if exc.bad_input else EXIT_OTHER) from None
    for line in said:
        print(line)
    if args.dry_run:
        diff = difflib.unified_diff(written.before.splitlines(True),
                                    written.after.splitlines(True), written.where,
                                    written.where + " (changed)")
        print("".join(diff).rstrip("\n"))
        print(f"{written.where}: dry run, nothing written")
    elif written.written:
        version = f" (resourceVersion {written.version})" if written.version else ""
        print(f"{written.where}: written{version}; running workers pick it up without a "
              "restart")
    else:
        print(f"{written.where}: nothing to change")
    return EXIT_OK


def cmd_pool_flag(args: argparse.Namespace) -> int:
    names = [_text(n, "pool") for n in args.names]
    key, value, done = FLAGS[args.flag_command]
    return run_change(args, lambda config: set_flag(config, key, value, done, names))


def cmd_set_capacity(args: argparse.Namespace) -> int:
    name = _text(args.name, "pool")
    values = {key: getattr(args, key.replace("-", "_")) for key in CAPACITY}
    values = {k: v for k, v in values.items() if v is not None}
    return run_change(args, lambda config: set_capacity(config, name, values))


def network_from(args: argparse.Namespace) -> dict[str, Any]:
    """The network the flags describe, its fields in the usual order."""
    out: dict[str, Any] = {"port-group": _text(args.port_group, "port-group")}
    given = {}
    for key in NETWORK_KEYS - {"port-group"}:
        value = getattr(args, key.replace("-", "_"), None)
        if value is None:
            continue
        if key in LIST_FIELDS:
            items = [_text(v, key) for raw in value for v in raw.split(",") if v.strip()]
            value = items[0] if key == "dns" and len(items) == 1 else items
        elif isinstance(value, str):
            value = _text(value, key)
        given[key] = value
    order = {k: i for i, k in enumerate(NETWORK_KEY_ORDER)}
    out.update(sorted(given.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return out


def cmd_networks_add(args: argparse.Namespace) -> int:
    network = network_from(args)
    pools = [_text(p, "pool") for p in args.pool]
    return run_change(args, lambda config: add_network(config, pools, network))


def _where(args: argparse.Namespace) -> tuple[str, list[str] | None, str | None]:
    pools = [_text(p, "pool") for p in args.pool] if args.pool else None
    vcenter = _text(args.vcenter, "vcenter") if args.vcenter is not None else None
    return _text(args.port_group, "port-group"), pools, vcenter


def cmd_networks_drop(args: argparse.Namespace) -> int:
    port_group, pools, vcenter = _where(args)
    return run_change(args, lambda config: drop_network(config, port_group, pools, vcenter))


def cmd_networks_split(args: argparse.Namespace) -> int:
    port_group, pools, vcenter = _where(args)
    return run_change(args, lambda config: split_network(config, port_group, args.slices,
                                                         pools, vcenter))
