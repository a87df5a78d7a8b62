"""The pools file, re-read when it changes on disk (reload without restart)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import yaml

from ..core.errors import ConfigError
from ..core.models import Pool
from ..core.pools import label_warnings, parse_pools
from .yaml_files import DuplicateKey, load_yaml

log = logging.getLogger(__name__)


def load_pools(path: str) -> tuple[Pool, ...]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError.of(path, None, None, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError.of(path, None, None, f"not UTF-8 text: {exc.reason} at byte "
                             f"{exc.start}") from None
    return pools_from_text(text, path)


def read_pools_yaml(text: str, source: str) -> Any:
    """The pools file's YAML as data, read as the workers read it; ConfigError when it is not
    YAML they can read (`source` names it in the message)."""
    try:
        return load_yaml(text)
    except DuplicateKey as exc:
        raise ConfigError.of(source, None, exc.key, exc.problem or "given twice") from None
    except yaml.YAMLError as exc:
        raise ConfigError.of(source, None, None, f"not valid YAML: {exc}") from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number, nesting too deep
        raise ConfigError.of(source, None, None,
                             f"cannot be read: {ascii(str(exc))[1:-1][:200]}") from None


def pools_from_text(text: str, source: str) -> tuple[Pool, ...]:
    """The pools of a pools file's text, validated (ConfigError naming `source`, the pool and
    the field)."""
    data = read_pools_yaml(text, source)
    try:
        return parse_pools(data, source)
    except RecursionError:
        raise ConfigError.of(source, None, None, "nested too deeply") from None


class PoolsFile:
    """Current pools. A changed file is re-read; an invalid change is logged and ignored. The
    pool labels that are not Kubernetes labels are logged as warnings at each load that
    changes the pools (label_warnings).

    The file's stamp and the pools read after taking it are kept as one pair, replaced
    together once the new pools are parsed: a caller that finds the file's stamp unchanged
    gets the pools read for that stamp, and a caller that finds it changed waits for the
    thread reading the file (the publisher's check runs beside the tasks), never answering
    with the pools of before a change it has seen."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        stamp = self._stat()
        pools = {p.name: p for p in load_pools(path)}  # invalid at start: raise
        self._read: tuple[tuple[int, int, int], dict[str, Pool]] = (stamp, pools)
        self._warn(pools)
        self.generation = 1
        self.error: str | None = None

    def _warn(self, pools: dict[str, Pool]) -> None:
        for line in label_warnings(pools.values(), self.path):
            log.warning("%s", line)

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (0, 0, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> dict[str, Pool]:
        stamp, pools = self._read
        if self._stat() == stamp:
            return pools
        with self._lock:
            stamp, old = self._read
            now = self._stat()  # taken before the read: a later change is seen next time
            if now == stamp:  # read by another thread meanwhile
                return old
            try:
                pools = {p.name: p for p in load_pools(self.path)}
            except ConfigError as exc:
                self.error = str(exc)
                log.error("pools file change ignored, keeping the previous pools: %s", exc)
                pools = old
            except Exception as exc:  # noqa: BLE001 - a running worker keeps its pools
                self.error = f"{self.path}: cannot be read: {type(exc).__name__}: {exc}"
                log.exception("pools file change ignored, keeping the previous pools")
                pools = old
            else:
                self.error = None
                if pools == old:
                    pools = old  # the same pools: what was derived from them stays valid
                else:
                    log.info("pools reloaded from %s: %s", self.path, ", ".join(pools))
                    self._warn(pools)
                    self.generation += 1
            self._read = (now, pools)
            return pools
