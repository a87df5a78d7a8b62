"""The kubelet's side of a ConfigMap volume, for tests: the ConfigMap's keys as files in a
directory, brought up to date the way the kubelet's atomic writer does it.

The directory holds a timestamped directory `..<time>` with the files, a symlink `..data` to
it, and for each key a symlink `<key>` -> `..data/<key>`. An update writes a new timestamped
directory, points `..data_tmp` at it and renames that over `..data` (one atomic swap: a
reader sees all old files or all new ones), then removes the old directory. A reader that
opens `<key>` follows both symlinks to the new file. `sync()` is one kubelet sync of the
volume: the test calls it where the kubelet's period would pass."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

DATA = "..data"


class ConfigMapVolume:
    def __init__(self, kube: Any, namespace: str, name: str, directory: Path) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.version: str | None = None
        self.swaps = 0

    def sync(self) -> bool:
        """Project the ConfigMap as it is now; False when it has not changed since."""
        cm = self.kube.get(self.namespace, self.name)
        if cm is None:
            raise LookupError(f"configmap {self.namespace}/{self.name} not found")
        version = cm["metadata"]["resourceVersion"]
        if version == self.version:
            return False
        stamp = self.dir / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{secrets.token_hex(4)}"
        stamp.mkdir()
        data: dict[str, str] = cm.get("data") or {}
        for key, value in data.items():
            path = stamp / key
            path.write_text(value, encoding="utf-8")
            path.chmod(0o644)
        old = os.readlink(self.dir / DATA) if (self.dir / DATA).is_symlink() else None
        tmp = self.dir / "..data_tmp"
        os.symlink(stamp.name, tmp)
        os.rename(tmp, self.dir / DATA)
        for key in data:
            if not (self.dir / key).is_symlink():
                os.symlink(f"{DATA}/{key}", self.dir / key)
        if old is not None:
            shutil.rmtree(self.dir / old)
        self.version = version
        self.swaps += 1
        return True
