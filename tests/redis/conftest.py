"""The mirror a restore reads, for the tests of this directory that take `mirror_kind`: a file
(None) or a ConfigMap on the test apiserver (its KubeApiServer)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["file", "configmap"])
def mirror_kind(request):
    if request.param == "file":
        yield None
        return
    from tests.support.kube_apiserver import KubeApiServer

    with KubeApiServer() as kube:
        yield kube
