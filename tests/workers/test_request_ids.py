"""A request-id granted before the pools file changed, sent again (a new task, as a job step
run again sends it; through send_task and the `vcm` CLI as a process) against real workers:
its leases, as granted, whatever the pools file says now. A request shape the new pools
cannot hold is refused only when it is new."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.support.helpers import call, failure
from tests.support.procs import ROOT, Stack


def pool(i: int) -> dict[str, Any]:
    return {"name": f"p{i}", "vcenter": f"vc{i}.example.com", "datacenter": "dc",
            "cluster": "c", "datastore": "ds", "vcpus": 16, "memory": 64, "storage": 100,
            "networks": [{"port-group": f"pg-{i}{j}", "vlan": 10 * i + j} for j in range(2)]}


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path, yaml.safe_dump({"pools": [pool(1), pool(2), pool(3)]}))
    yield s
    s.stop()


def test_a_request_id_granted_before_its_pools_were_removed_is_answered_its_leases(stack):
    """A pool taken out of the pools file while it still holds leases (being drained): the
    requests those leases were granted for were refused when sent again, naming `pools`
    ("2 is more than the 1 pools configured") or `required-pool` ("not configured"), instead
    of being answered their leases."""
    two = {"vcpus": 2, "memory": 2, "pools": 2, "owner": "job", "request-id": "two"}
    pinned = {"vcpus": 2, "memory": 2, "required-pool": "p3", "owner": "job",
              "request-id": "pinned"}
    leases = {rid: call(stack.app, "vcm.acquire", request=req)
              for rid, req in (("two", two), ("pinned", pinned))}
    stack.pools.write_text(yaml.safe_dump({"pools": [pool(1)]}))  # p2 and p3 drained
    assert call(stack.app, "vcm.acquire", request=two) == leases["two"]
    assert call(stack.app, "vcm.acquire", request=pinned) == leases["pinned"]
    (again,) = call(stack.app, "vcm.acquire_batch", requests=[pinned])
    assert again == leases["pinned"]
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "acquire", "--vcpus", "2", "--memory", "2",
         "--required-pool", "p3", "--owner", "job", "--request-id", "pinned", "-o", "json",
         "--redis-url", stack.redis.url],
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == leases["pinned"]
    # a new request-id of a shape the pools no longer hold is refused, naming the field
    refused = failure(stack.app, "vcm.acquire", request={**pinned, "request-id": "new"})
    assert type(refused).__name__ == "InvalidRequest" and "required-pool" in str(refused)
    refused = failure(stack.app, "vcm.acquire", request={**two, "request-id": "new-two"})
    assert type(refused).__name__ == "InvalidRequest" and "pools" in str(refused)
