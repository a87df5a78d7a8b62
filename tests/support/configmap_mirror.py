"""The ConfigMap mirror as the test apiserver stores it (workers/adapters/mirror/configmap.py
describes the layout)."""

from __future__ import annotations

import base64
import json

from tests.support.kube_apiserver import KubeApiServer


def chunk_sizes(kube: KubeApiServer, namespace: str, name: str) -> list[int]:
    """Bytes of the payload in the head `name` and in each shard it names, in order."""
    head = kube.get(namespace, name)
    assert head is not None, f"no ConfigMap {namespace}/{name}"
    shards = [kube.get(namespace, x)
              for x in json.loads(head["data"]["mirror.json"])["shards"]]
    parts = [head["binaryData"]["part-0"], *(x["binaryData"]["part"] for x in shards)]
    return [len(base64.b64decode(x)) for x in parts]
