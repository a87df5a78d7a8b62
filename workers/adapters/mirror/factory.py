"""Which mirror the settings ask for: a ConfigMap (VCM_CONFIGMAP), else the file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...settings import DEFAULT_MAX_SHARDS, DEFAULT_SHARD_BYTES, Settings
from .file import FileMirror
from .names import valid_name, valid_namespace

if TYPE_CHECKING:  # the Kubernetes client is loaded only for a ConfigMap mirror
    from kubernetes import client as k8s_client

    from .configmap import ConfigMapMirror


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
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> ConfigMapMirror | FileMirror:
    """VCM_CONFIGMAP ("namespace/name") → ConfigMapMirror; unset or empty → FileMirror(path)."""
    where = parse_configmap(configmap)
    if where is None:
        return FileMirror(path)
    from .configmap import ConfigMapMirror

    return ConfigMapMirror(*where, api_client=api_client, timeout=timeout, max_shards=max_shards,
                           shard_bytes=shard_bytes)


def build_mirror(settings: Settings) -> ConfigMapMirror | FileMirror:
    """The mirror the placement worker writes, from its settings (VCM_CONFIGMAP, else
    VCM_MIRROR_FILE; VCM_MIRROR_MAX_SHARDS, VCM_MIRROR_SHARD_BYTES and VCM_MIRROR_TIMEOUT for
    a ConfigMap mirror)."""
    return mirror_from_env(settings.configmap, settings.mirror_file,
                           timeout=settings.mirror_timeout,
                           max_shards=settings.mirror_max_shards,
                           shard_bytes=settings.mirror_shard_bytes)
