"""Which mirror the settings ask for: a ConfigMap (VCM_CONFIGMAP), else the file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kubernetes import client as k8s_client

from .configmap import DEFAULT_MAX_SHARDS, ConfigMapMirror
from .file import FileMirror
from .kube import valid_name, valid_namespace


def parse_configmap(configmap: str | None) -> tuple[str, str] | None:
    """VCM_CONFIGMAP ("namespace/name") as (namespace, name); None when unset or empty."""
    if configmap is None or not configmap.strip():
        return None
    namespace, sep, name = configmap.strip().partition("/")
    if not sep or "/" in name or not valid_namespace(namespace) or not valid_name(name):
        raise ValueError(
            f"VCM_CONFIGMAP must be 'namespace/name' (a DNS-1123 namespace and ConfigMap "
            f"name), got {configmap!r}"
        )
    return namespace, name


def mirror_from_env(
    configmap: str | None,
    path: str,
    *,
    api_client: k8s_client.ApiClient | None = None,
    timeout: float = 5.0,
    max_shards: int = DEFAULT_MAX_SHARDS,
) -> ConfigMapMirror | FileMirror:
    """VCM_CONFIGMAP ("namespace/name") → ConfigMapMirror; unset or empty → FileMirror(path)."""
    where = parse_configmap(configmap)
    if where is None:
        return FileMirror(path)
    return ConfigMapMirror(*where, api_client=api_client, timeout=timeout, max_shards=max_shards)


def max_shards_from(environ: Mapping[str, str]) -> int:
    """VCM_MIRROR_MAX_SHARDS: slot ConfigMaps ``name-0`` … the RBAC Role must list; one save
    uses at most half of them besides the head (default 16, 0: the head only)."""
    raw = environ.get("VCM_MIRROR_MAX_SHARDS", "").strip()
    if not raw:
        return DEFAULT_MAX_SHARDS
    try:
        shards = int(raw)
        if not 0 <= shards <= 999:
            raise ValueError
    except ValueError:
        raise SystemExit(f"invalid setting VCM_MIRROR_MAX_SHARDS={raw!r}: "
                         "a whole number within 0..999") from None
    return shards


def build_mirror(settings: Any, environ: Mapping[str, str] | None = None
                 ) -> ConfigMapMirror | FileMirror:
    """The mirror the placement worker writes, from its settings and VCM_MIRROR_MAX_SHARDS
    (read only for a ConfigMap mirror)."""
    environ = os.environ if environ is None else environ
    # a bad VCM_CONFIGMAP is reported before a bad VCM_MIRROR_MAX_SHARDS
    shards = (max_shards_from(environ) if parse_configmap(settings.configmap) is not None
              else DEFAULT_MAX_SHARDS)
    return mirror_from_env(settings.configmap, settings.mirror_file, max_shards=shards)
