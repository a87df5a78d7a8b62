"""`vcm leases ... -o lease-files DIR`: the files an OpenShift CI step writes into its
SHARED_DIR (workers/core/step_files.py says which), written here: the vCenter accounts read,
then every file built before any is written, each written beside its final name and renamed
into place, so a step reading DIR sees each file whole, old or new."""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import secrets
import ssl
import stat
import tempfile
from collections.abc import Mapping

from ..core.shell import ShellSyntax, vcenter_accounts
from ..core.step_files import (
    AUTH_ANNOTATION,
    CI_RESOURCE_POOL,
    DVS,
    MAX_RESOURCE_POOL,
    Account,
    Install,
    StepFile,
    StepFilesError,
    resource_pool_problem,
    stale,
    step_files,
)
from .exits import EXIT_INPUT, EXIT_OTHER, CliError

MAX_ACCOUNTS_FILE = 1 << 20  # an accounts file is a few lines; more is not one


def check_options(args: argparse.Namespace) -> None:
    """The options of -o lease-files are given together, or not at all (before anything is
    sent to the workers)."""
    wanted = args.output == "lease-files"
    if wanted and not args.dir:
        raise CliError("DIR: -o lease-files writes into a directory: give it after the "
                       "options (vcm leases -l boskos-lease-id=X -o lease-files DIR)",
                       EXIT_INPUT)
    if not wanted:
        for option, value in (("DIR", args.dir), ("--credentials", args.credentials),
                              ("--ca-certs", args.ca_certs), ("--multi-nic", args.multi_nic),
                              ("--dvs", args.dvs),
                              ("--resource-pool", args.resource_pool),
                              ("--pool-resource-pool", args.pool_resource_pool)):
            if value:
                raise CliError(f"{option}: only with -o lease-files", EXIT_INPUT)
        return
    # govc.sh names both (UTF-8 text): a path of other bytes cannot be written there
    for option, path in (("DIR", args.dir), ("--ca-certs", args.ca_certs)):
        try:
            (path or "").encode("utf-8")
        except UnicodeEncodeError:
            raise CliError(f"{option}: {ascii(path)[:200]} is not UTF-8: govc.sh could not "
                           "name it", EXIT_INPUT) from None
    if args.resource_pool is not None and resource_pool_problem(args.resource_pool):
        raise CliError(f"--resource-pool: {args.resource_pool[:MAX_RESOURCE_POOL]!r} "
                       f"{resource_pool_problem(args.resource_pool)}", EXIT_INPUT)
    probe(target_dir(args.dir))  # say so now, before asking the workers for anything


def target_dir(path: str) -> str:
    """DIR as an absolute path, created when missing; refused when it is no directory or
    cannot be written into."""
    if "\0" in path:
        raise CliError("DIR: contains a NUL character", EXIT_INPUT)
    real = os.path.abspath(path)
    try:
        os.makedirs(real, exist_ok=True)
    except FileExistsError:
        raise CliError(f"DIR: {path} exists and is not a directory", EXIT_INPUT) from None
    except OSError as exc:
        raise CliError(f"DIR: cannot create {path}: {exc.strerror}", EXIT_INPUT) from None
    if not os.path.isdir(real):
        raise CliError(f"DIR: {path} is not a directory", EXIT_INPUT)
    return real


def probe(directory: str) -> None:
    """Refuse a directory this process cannot create files in."""
    try:
        fd, name = tempfile.mkstemp(prefix=".vcm-probe-", dir=directory)
    except OSError as exc:
        raise CliError(f"DIR: cannot write into {directory}: {exc.strerror}",
                       EXIT_INPUT if exc.errno in _INPUT_ERRNOS else EXIT_OTHER) from None
    os.close(fd)
    os.unlink(name)


def write_lease_files(args: argparse.Namespace, install: Install) -> list[str]:
    """Write the install's files into DIR; the names written, in order."""
    directory = target_dir(args.dir)
    try:
        accounts = _accounts(args, install, install.all_pools() if args.dvs else None)
        files = step_files(install, accounts, directory, multi_nic=bool(args.multi_nic),
                           ca_certs=args.ca_certs or "", child=child_pool(args))
        if args.dvs:
            files.append(StepFile(DVS, _json(_dvs(args, install, accounts))))
    except StepFilesError as exc:
        option = {"selector": "-l", "credentials": "--credentials",
                  "resource-pool": "--resource-pool"}.get(exc.option, "")
        if option:
            raise CliError(f"{option}: {exc}", EXIT_INPUT) from None
        raise CliError(f"-o lease-files: {exc}", EXIT_OTHER) from None
    _write_all(directory, files)
    return [f.name for f in files]


def child_pool(args: argparse.Namespace) -> str | None:
    """The resource pool below each cluster's root one; None: each pool's own."""
    if args.pool_resource_pool:
        return None
    return CI_RESOURCE_POOL if args.resource_pool is None else args.resource_pool


# accounts ------------------------------------------------------------------------------------
def _dvs(args: argparse.Namespace, install: Install,
         accounts: Mapping[str, Account]) -> dict[str, object]:
    """dvs.json, read from the vCenters: each certificate checked against --ca-certs, else
    not checked (GOVC_INSECURE=1, as the CI step's govc)."""
    from ..adapters.vcenter.access import Trust
    from ..adapters.vcenter.dvs import DvsError, dvs_json

    if args.ca_certs:
        try:
            with open(args.ca_certs, encoding="utf-8") as fh:
                pem = fh.read(MAX_ACCOUNTS_FILE)
            # an empty bundle would load the system's trust store instead
            if not pem.strip():
                raise ssl.SSLError("empty")
            ssl.create_default_context(cadata=pem)
        except ssl.SSLError:
            raise CliError(f"--ca-certs: {args.ca_certs}: holds no usable PEM certificate",
                           EXIT_INPUT) from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CliError(f"--ca-certs: {args.ca_certs}: "
                           f"{getattr(exc, 'strerror', None) or exc}", EXIT_INPUT) from None
        trust = Trust(ca_pem=pem)
    else:
        trust = Trust(kind="insecure", insecure_because="no --ca-certs: as the CI step's "
                      "GOVC_INSECURE=1")
    try:
        return dvs_json(install.network_paths(), accounts, trust)
    except DvsError as exc:
        raise CliError(f"--dvs: {exc}", EXIT_OTHER) from None
    except ssl.SSLError as exc:  # a CA file that is no certificate bundle
        raise CliError(f"--ca-certs: {args.ca_certs}: {exc.reason or exc}", EXIT_INPUT) \
            from None


def _json(value: object) -> str:
    return json.dumps(value, indent=2) + "\n"


def _accounts(args: argparse.Namespace, install: Install,
              pools: list[Mapping[str, object]] | None = None) -> dict[str, Account]:
    """One account per vCenter of `pools` (default: the primary leases' pools): from
    --credentials, else from the file the pool's ci-auth-path annotation names. The account
    is chosen among the file's by the install and the vCenter, so that installs spread over
    the accounts and a step run again writes the same one."""
    single = install.single
    labels = (single.get("metadata") or {}).get("labels") or {}
    key = str(labels.get("boskos-lease-id") or (single.get("metadata") or {}).get("name"))
    read: dict[str, list[Account]] = {}
    out: dict[str, Account] = {}
    for pool in install.account_pools() if pools is None else pools:
        server = str((pool.get("spec") or {}).get("server", ""))
        if server in out:
            continue
        if args.credentials:
            path, where = args.credentials, "--credentials"
        else:
            annotations = (pool.get("metadata") or {}).get("annotations") or {}
            path = annotations.get(AUTH_ANNOTATION) if isinstance(annotations, Mapping) else None
            pool_name = (pool.get("metadata") or {}).get("name")
            if not isinstance(path, str) or not path:
                raise CliError(f"--credentials: pool {pool_name!r} ({server}) has no "
                               f"{AUTH_ANNOTATION} annotation: give the vCenter accounts file",
                               EXIT_INPUT)
            where = f"--credentials (pool {pool_name!r}'s {AUTH_ANNOTATION} annotation)"
        if path not in read:
            read[path] = _read_accounts(path, where)
        accounts = read[path]
        digest = hashlib.sha256(f"{key}|{server}".encode()).digest()
        out[server] = accounts[int.from_bytes(digest[:8], "big") % len(accounts)]
    return out


def _read_accounts(path: str, where: str) -> list[Account]:
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CliError(f"{where}: {path} is not a file", EXIT_INPUT)
            data = fh.read(MAX_ACCOUNTS_FILE + 1)
    except CliError:
        raise
    except (FileNotFoundError, NotADirectoryError):
        raise CliError(f"{where}: {path}: no such file", EXIT_INPUT) from None
    except IsADirectoryError:
        raise CliError(f"{where}: {path} is a directory, not an accounts file",
                       EXIT_INPUT) from None
    except OSError as exc:
        raise CliError(f"{where}: {path}: {exc.strerror}", EXIT_INPUT) from None
    except ValueError:  # a NUL in the path
        raise CliError(f"{where}: not a file name", EXIT_INPUT) from None
    if len(data) > MAX_ACCOUNTS_FILE:
        raise CliError(f"{where}: {path} is larger than {MAX_ACCOUNTS_FILE} bytes: not an "
                       "accounts file", EXIT_INPUT)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{where}: {path} is not UTF-8 text ({exc.reason} at byte "
                       f"{exc.start})", EXIT_INPUT) from None
    try:
        return vcenter_accounts(text)
    except ShellSyntax as exc:
        raise CliError(f"{where}: {path}: {exc} (expected vcenter_usernames=(...) and "
                       "vcenter_passwords=(...))", EXIT_INPUT) from None
    except ValueError as exc:
        raise CliError(f"{where}: {path}: {exc}", EXIT_INPUT) from None


# writing -------------------------------------------------------------------------------------
def _write_all(directory: str, files: list[StepFile]) -> None:
    """Each file to a temporary name beside it, then all renamed into place (a rename
    replaces a file whole), then the per-object files of an earlier run not written now are
    removed."""
    staged: list[tuple[str, str]] = []
    try:
        for f in files:
            staged.append((_stage(directory, f), os.path.join(directory, f.name)))
        for tmp, final in staged:
            os.replace(tmp, final)
    except OSError as exc:
        raise CliError(f"DIR: cannot write into {directory}: {exc.strerror}",
                       EXIT_INPUT if exc.errno in _INPUT_ERRNOS else EXIT_OTHER) from None
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    try:
        existing = os.listdir(directory)
    except OSError:
        existing = []
    for name in stale(existing, files):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(os.path.join(directory, name))
    _sync_dir(directory)


# DIR cannot be written by whoever runs vcm: the operator named the wrong place
_INPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def _stage(directory: str, f: StepFile) -> str:
    tmp = os.path.join(directory, f".{f.name}.vcm-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if f.secret else 0o644)
    try:
        with open(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(f.text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _sync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
