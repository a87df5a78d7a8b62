"""The test apiserver (tests/support/kube/): kept importable as
`from tests.support.kube_apiserver import KubeApiServer`."""

from tests.support.kube import MAX_CONFIGMAP_BYTES, SYSTEM_NAMESPACES, KubeApiServer

__all__ = ["KubeApiServer", "MAX_CONFIGMAP_BYTES", "SYSTEM_NAMESPACES"]
