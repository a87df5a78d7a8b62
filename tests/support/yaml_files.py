"""YAML files the tests read again and again (deploy/'s manifests and CRDs: every test
apiserver with RBAC reads them all), parsed once per process. Each call returns a copy of its
own; a file that changed is parsed again."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import yaml


@functools.lru_cache(maxsize=256)
def _parsed(path: str, mtime_ns: int, size: int, inode: int) -> tuple[Any, ...]:
    return tuple(yaml.safe_load_all(Path(path).read_text()))


def yaml_documents(path: str | os.PathLike[str]) -> list[Any]:
    """The documents of a YAML file (empty ones as None), as yaml.safe_load_all reads them."""
    st = os.stat(path)
    return copy.deepcopy(list(_parsed(os.fspath(path), st.st_mtime_ns, st.st_size, st.st_ino)))
