"""The mirror a restore reads, for the tests of this directory that take `mirror_kind`: a file
(None) or a ConfigMap on the test apiserver (its KubeApiServer); and the `vcm` command lines the
restore tests run in one process (`cli`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cli_session import CliSession
from tests.support.procs import env_for


@pytest.fixture(params=["file", "configmap"])
def mirror_kind(request):
    if request.param == "file":
        yield None
        return
    from tests.support.kube_apiserver import KubeApiServer

    with KubeApiServer() as kube:
        yield kube


@pytest.fixture(scope="session")
def cli() -> Iterator[CliSession]:
    """`vcm` command lines run one after another in one process, each with the environment
    given to its run (tests/support/cli_session.py): the restore tests drop set-aside records
    with `vcm release` without an interpreter start each (one such drop per file still runs as
    a real process). Session-scoped: the restore tests are handed out one by one to the xdist
    workers (SPREAD in tests/conftest.py), and a module's fixture would start again each time
    a worker comes back to the file."""
    with CliSession(env_for("redis://127.0.0.1:1/0")) as session:
        yield session
