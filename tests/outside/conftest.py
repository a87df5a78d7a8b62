"""Fixtures shared by the tests of the test apiserver (a module may define its own `kube`)."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.support.kube import KubeApiServer


@pytest.fixture
def kube():
    """A fresh test apiserver per test."""
    with KubeApiServer() as server:
        yield server


@pytest.fixture
def custom(kube):
    """The unmodified client's CustomObjectsApi against `kube`."""
    api_client = kube.api_client()
    yield client.CustomObjectsApi(api_client)
    api_client.close()
