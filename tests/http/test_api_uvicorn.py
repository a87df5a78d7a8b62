"""The HTTP shim is served as production FastAPI deployments serve it: uvicorn with its standard
extras (uvicorn[standard]), the uvloop event loop and the httptools HTTP parser, chosen by
uvicorn's "auto" when they are installed. The shim logs what it runs on once it listens."""

from __future__ import annotations

import re

from tests.support.api import ApiServer
from tests.support.procs import env_for, wait_for

RUNS_ON = re.compile(r"uvicorn \S+: event loop (?P<loop>\S+), HTTP protocol (?P<http>\S+)")


def test_the_shim_runs_on_uvloop_and_httptools(redis_server, pools_file):
    api = ApiServer(env_for(redis_server.url, pools_file))  # `python -m api_shim`, no options
    try:
        api.start(ready=False)
        line = wait_for(lambda: RUNS_ON.search(api.output()), timeout=20,
                        what="the shim's line naming its event loop and HTTP protocol")
        assert line["loop"] == "uvloop.Loop", line[0]
        assert line["http"] == "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", line[0]
    finally:
        api.stop()
