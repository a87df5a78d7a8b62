"""A VCM_REDIS_URL with query options (`?socket_timeout=3`), end to end: the workers and `vcm`,
each a real process on a real redis-server, serve with the options every client of Redis
honours, and `vcm` refuses any other option as bad input (exit 2) naming the variable and the
option, before it talks to Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.procs import ROOT, RedisServer, Worker, env_for

VCM = str(Path(sys.executable).with_name("vcm"))
OPTIONS = "socket_timeout=3&socket_connect_timeout=2&health_check_interval=10&socket_keepalive=true"


def vcm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([VCM, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=90)


def test_workers_and_vcm_serve_with_the_url_s_options_and_vcm_refuses_others(tmp_path):
    server = RedisServer().start()
    pools = tmp_path / "pools.yaml"
    pools.write_text((ROOT / "examples" / "pools.yaml").read_text())
    env = env_for(f"{server.url}?{OPTIONS}", pools, VCM_MIRROR_FILE=str(tmp_path / "ledger.json"))
    workers = [Worker(env, "placement", log=str(tmp_path / "placement.log")),
               Worker(env, "queries", pool="threads", concurrency=2,
                      log=str(tmp_path / "queries.log"))]
    try:
        for worker in workers:
            worker.start(wait=False)
        for worker in workers:
            worker.wait_ready()
        acquired = vcm(env, "acquire", "--vcpus", "2", "--memory", "4", "--owner", "url-opts",
                       "-o", "json")
        assert acquired.returncode == 0, acquired.stderr
        (lease,) = json.loads(acquired.stdout)
        name = lease["metadata"]["name"]
        listed = vcm(env, "leases", "--owner", "url-opts", "-o", "json")  # a queries task
        assert listed.returncode == 0, listed.stderr
        assert [x["metadata"]["name"] for x in json.loads(listed.stdout)] == [name]
        released = vcm(env, "release", name, "--owner", "url-opts", "-o", "json")
        assert released.returncode == 0 and json.loads(released.stdout) == [name], \
            released.stderr
        for worker in workers:
            assert "Traceback" not in worker.output(), worker.output()[-3000:]

        # an option no client can honour, a value not of its type: bad input, named
        password = "pw-not-shown"
        secret = server.url.replace("redis://", f"redis://:{password}@")
        for query, says in [("socket_timeout=abc", "query option socket_timeout: 'abc' is not "
                                                   "seconds"),
                            ("decode_responses=true", "query option 'decode_responses' is not "
                                                      "one vcm takes")]:
            refused = vcm({**env, "VCM_REDIS_URL": f"{secret}?{query}"}, "leases")
            assert refused.returncode == 2, (refused.returncode, refused.stderr)
            assert refused.stderr.startswith(f"vcm: invalid setting VCM_REDIS_URL: {says}"), \
                refused.stderr
            assert password not in refused.stderr and "Traceback" not in refused.stderr
        flag = vcm(env, "leases", "--redis-url", f"{secret}?socket_timeout=3&socket_timeout=4")
        assert flag.returncode == 2, flag.stderr
        assert flag.stderr.startswith("vcm: --redis-url: query option 'socket_timeout' is "
                                      "given more than once"), flag.stderr
        assert password not in flag.stderr
    finally:
        for worker in workers:
            worker.kill()
        server.stop()
