"""Where the pools configuration lives, changed in one step: the pools file (VCM_POOLS_FILE), or
the ConfigMap it is mounted from. The running workers re-read the file when it changes
(pools_file.PoolsFile); the kubelet brings a changed ConfigMap to the pods' file.

- The file: the change is made under an exclusive lock on the file (a second `vcm` waits for
  the first), written to a temporary file in the same directory (same mode), flushed to disk,
  and renamed over it: a reader sees the old file or the new one, never a part. A symlink is
  followed: the file it names is replaced.
- The ConfigMap: read, changed, and written back with the resourceVersion it was read at
  (compare-and-swap): when someone changed it in between, the apiserver answers 409 Conflict
  and the change is made again on what is there now.

`update(change)` hands the text (and where it is from) to `change`, which returns the new text
or raises (pools_edit.EditRefused, ConfigError): then nothing is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3

from ..backoff import Backoff, jittered

Change = Callable[[str, str], str]  # (text, where it is from) -> the new text

REQUEST_TIMEOUT = 30.0  # seconds, per Kubernetes API call
CONFLICT_ATTEMPTS = 20  # writes refused with 409 Conflict before giving up


class StoreError(Exception):
    """The configuration could not be read or written. `bad_input`: the place given is wrong
    (no such file, ConfigMap or key)."""

    def __init__(self, message: str, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


@dataclass(frozen=True)
class Written:
    """The outcome of an update: the text before and after (the same when nothing changed),
    and for a ConfigMap its resourceVersion after and the writes it took (one more for each
    409 Conflict)."""

    where: str
    before: str
    after: str
    written: bool
    version: str = ""
    attempts: int = 1


class PoolsFileStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.where = path

    def update(self, change: Change, dry_run: bool = False) -> Written:
        with self._locked() as (fd, real):
            try:
                with open(fd, encoding="utf-8", newline="", closefd=False) as fh:
                    text = fh.read()
            except UnicodeDecodeError as exc:
                raise StoreError(f"{self.path}: not UTF-8 text: {exc.reason} at byte "
                                 f"{exc.start}") from None
            new = change(text, self.path)
            if new == text or dry_run:
                return Written(self.where, text, new, False)
            self._replace(real, os.fstat(fd), new)
            return Written(self.where, text, new, True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[tuple[int, str]]:
        """The file, open and locked; retried when another `vcm` replaced it while this one
        waited for the lock (the lock was on the file it replaced)."""
        while True:
            real = os.path.realpath(self.path)
            try:
                fd = os.open(real, os.O_RDONLY)
            except FileNotFoundError:
                raise StoreError(f"{self.path}: no such file", bad_input=True) from None
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot open: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                mine = os.fstat(fd)
                try:
                    now = os.stat(real)
                except FileNotFoundError:
                    continue
                if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino) \
                        or os.path.realpath(self.path) != real:
                    continue
                yield fd, real
                return
            finally:
                os.close(fd)  # closing releases the lock

    def _replace(self, real: str, st: os.stat_result, text: str) -> None:
        directory, name = os.path.split(real)
        tmp = os.path.join(directory, f".{name}.vcm-{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o7777)
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot write a new file beside it in {directory} "
                f"({exc.strerror}): a pools file mounted from a ConfigMap is changed through "
                "the ConfigMap (--configmap NAMESPACE/NAME)") from None
        try:
            try:
                with open(fd, "w", encoding="utf-8", newline="") as fh:
                    fh.write(text)
                    fh.flush()
                    with contextlib.suppress(PermissionError):  # keep the owner where allowed
                        os.fchown(fh.fileno(), st.st_uid, st.st_gid)
                    os.fchmod(fh.fileno(), st.st_mode & 0o7777)
                    os.fsync(fh.fileno())
                os.replace(tmp, real)
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot write: {exc.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # the rename itself on disk
        finally:
            os.close(dfd)


class PoolsConfigMapStore:
    def __init__(self, namespace: str, name: str, key: str, api_client: Any = None,
                 attempts: int = CONFLICT_ATTEMPTS) -> None:
        self.namespace = namespace
        self.name = name
        self.key = key
        self.where = f"configmap {namespace}/{name} key {key}"
        self._api_client = api_client
        self.attempts = attempts

    def _core(self) -> Any:
        from kubernetes import client as k8s_client

        from .kube_config import NoKubeConfig, kube_configuration

        if self._api_client is None:
            try:
                cfg = kube_configuration()
            except NoKubeConfig as exc:
                raise StoreError(f"{self.where}: no Kubernetes configuration: {exc}") from None
            cfg.retries = urllib3.Retry(total=2, connect=2, read=0, redirect=0, status=0)
            self._api_client = k8s_client.ApiClient(configuration=cfg)
        return k8s_client.CoreV1Api(self._api_client)

    def update(self, change: Change, dry_run: bool = False) -> Written:
        from kubernetes.client.exceptions import ApiException

        core = self._core()
        backoff = Backoff(jittered(0.05, 1.0))
        for attempt in range(1, self.attempts + 1):
            cm = self._call("get", core.read_namespaced_config_map,
                            self.name, self.namespace)
            data = cm.data or {}
            if self.key not in data:
                keys = ", ".join(sorted(data)) or "none"
                raise StoreError(f"{self.where}: the ConfigMap has no key {self.key!r} (keys: "
                                 f"{keys})", bad_input=True)
            text = data[self.key]
            new = change(text, self.where)
            if new == text or dry_run:
                return Written(self.where, text, new, False, cm.metadata.resource_version,
                               attempt)
            cm.data[self.key] = new  # cm.metadata.resourceVersion: as read (compare-and-swap)
            try:
                out = self._call("update", core.replace_namespaced_config_map,
                                 self.name, self.namespace, cm, conflict_ok=True)
            except ApiException:  # 409 Conflict: changed since it was read
                time.sleep(backoff.next())
                continue
            return Written(self.where, text, new, True, out.metadata.resource_version, attempt)
        raise StoreError(f"{self.where}: changed by someone else at each of {self.attempts} "
                         "attempts; nothing was written, try again")

    def _call(self, verb: str, fn: Callable[..., Any], *args: Any,
              conflict_ok: bool = False) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if conflict_ok and exc.status == 409:
                raise
            reason, message = _status_of(exc)
            text = f"{self.where}: {verb}: apiserver answered {exc.status} {reason}"
            text += f": {message}" if message else ""
            if exc.status == 403:
                text += (f" (changing the pools needs get and update on configmaps/{self.name} "
                         f"in {self.namespace}: deploy/examples/pool-operators-rbac.yaml)")
            raise StoreError(text, bad_input=exc.status == 404) from None
        except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as exc:
            raise StoreError(f"{self.where}: {verb}: Kubernetes API unreachable: {exc}"
                             ) from None


def _status_of(exc: Any) -> tuple[str, str]:
    """(reason, message) of an apiserver Status answer, as far as it parses."""
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return (str(body.get("reason") or getattr(exc, "reason", "") or ""),
            str(body.get("message") or ""))
