"""The limit on `pools` in one request, against real workers on a fleet of 20 pools (so the
pools could hold more): refused naming `pools` and the limit through the task's kwargs, a
batch and the `vcm` CLI (exit 2); a request-id granted for more pools than that (before the
limit) is still answered its leases when sent again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
import yaml

from tests.support.helpers import call, failure
from tests.support.procs import ROOT, Stack
from workers.adapters.ledger import Ledger
from workers.core.grants import make_leases
from workers.core.parsing import MAX_INT, MAX_POOLS, parse_request
from workers.core.pools import parse_pools

FLEET = 20


def pool(i: int) -> dict[str, Any]:
    return {"name": f"p{i}", "vcenter": f"vc{i % 4}.example.com", "datacenter": "dc",
            "cluster": f"c{i}", "datastore": f"ds{i}", "vcpus": 16, "memory": 64,
            "storage": 100,
            "networks": [{"port-group": f"pg-{i}-{j}", "vlan": 100 * i + j} for j in range(2)]}


POOLS = {"pools": [pool(i) for i in range(FLEET)]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("limit"), yaml.safe_dump(POOLS))
    yield s
    s.stop()


def vcm(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args,
                           "--redis-url", stack.redis.url],
                          cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=120)


def test_more_pools_than_the_limit_are_refused_naming_pools_and_the_limit(stack):
    over = {"vcpus": 1, "memory": 1, "pools": MAX_POOLS + 1, "owner": "job"}
    err = failure(stack.app, "vcm.acquire", request={**over, "request-id": "over"})
    assert type(err).__name__ == "InvalidRequest"
    assert str(err).startswith("pools:") and f"at most {MAX_POOLS}" in str(err)
    err = failure(stack.app, "vcm.acquire_batch",
                  requests=[{"vcpus": 1, "memory": 1, "owner": "job", "request-id": "ok"},
                            {**over, "request-id": "over-2"}])
    assert type(err).__name__ == "InvalidRequest"
    assert str(err).startswith("requests[1].pools:") and f"at most {MAX_POOLS}" in str(err)
    out = vcm(stack, "acquire", "--vcpus", "1", "--memory", "1", "--pools",
              str(MAX_POOLS + 1), "--owner", "job", "--request-id", "over-3")
    assert out.returncode == 2, out.stderr
    assert "pools" in out.stderr and f"at most {MAX_POOLS}" in out.stderr
    assert "Traceback" not in out.stderr
    # nothing was granted; the largest request allowed is
    assert call(stack.app, "vcm.list_leases", owner="job") == []
    leases = call(stack.app, "vcm.acquire",
                  request={"vcpus": 1, "memory": 1, "pools": MAX_POOLS, "owner": "job",
                           "request-id": "most"})
    assert len(leases) == MAX_POOLS == len({x["status"]["pool"] for x in leases})
    call(stack.app, "vcm.release", owner="job")


def test_a_request_id_granted_for_more_pools_is_answered_its_leases(stack):
    """Leases granted for `pools: 20` before the limit (written into the ledger as the
    placement worker writes a grant): the same request sent again, as a task, in a batch and
    by the CLI, is answered those leases; a new request-id of that shape is refused."""
    raw = {"vcpus": 1, "memory": 1, "pools": FLEET, "owner": "old-job", "request-id": "wide"}
    req = parse_request(raw, default_ttl=3600, max_pools=MAX_INT)
    pools = parse_pools(POOLS)
    ids = [uuid.uuid4().hex[:20] for _ in pools]
    granted = make_leases(ids, req, [(p, [p.networks[0]]) for p in pools], time.time())
    ledger = Ledger(stack.redis.client())
    caps = {p.name: (p.vcpu_capacity, p.memory, p.storage) for p in pools}
    assert ledger.commit(ledger.usage().version, {req.key: granted}, caps).status == "ok"

    def names(leases: list[dict[str, Any]]) -> list[str]:
        return [x["metadata"]["name"] for x in leases]

    assert names(call(stack.app, "vcm.acquire", request=raw)) == ids
    (again,) = call(stack.app, "vcm.acquire_batch", requests=[raw])
    assert names(again) == ids
    out = vcm(stack, "acquire", "--vcpus", "1", "--memory", "1", "--pools", str(FLEET),
              "--owner", "old-job", "--request-id", "wide", "-o", "json")
    assert out.returncode == 0, out.stderr
    assert names(json.loads(out.stdout)) == ids
    err = failure(stack.app, "vcm.acquire", request={**raw, "request-id": "wide-2"})
    assert type(err).__name__ == "InvalidRequest" and f"at most {MAX_POOLS}" in str(err)
    call(stack.app, "vcm.release", owner="old-job")
