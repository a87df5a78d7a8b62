"""A pools file whose pool labels are not all Kubernetes labels (`zone: "us east"`, as files
written before pools were published as Kubernetes objects may have): the workers start as
documented, a pool-selector still matches those labels, and each such label is named once in
a WARNING (file, pool, `labels.<key>`) when the file is loaded; a file that changes is
loaded, and warned of, again."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.support.helpers import call, failure
from tests.support.procs import Stack, wait_for


def pool(name: str, vcenter: str, labels: dict[str, str]) -> dict:
    return {"name": name, "vcenter": vcenter, "datacenter": "dc", "cluster": "c",
            "datastore": "ds", "vcpus": 16, "memory": 64, "storage": 100, "labels": labels,
            "networks": [{"port-group": f"pg-{name}", "vlan": 10}]}


POOLS = {"pools": [pool("east", "vc1.example.com", {"zone": "us east", "a/b/c": "x",
                                                    "region": "east"}),
                   pool("west", "vc2.example.com", {"zone": "us-west", "region": "west"})]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("labels"), yaml.safe_dump(POOLS))
    yield s
    s.stop()


def warnings(stack: Stack, key: str) -> list[str]:
    placement = stack.procs[0]
    pattern = (rf"{re.escape(str(stack.pools))}: pool 'east': field "
               rf"'labels\.{re.escape(key)}': left off the Pool object")
    return [line for line in placement.output().splitlines() if re.search(pattern, line)]


def test_the_workers_start_and_a_selector_matches_a_label_kubernetes_does_not_take(stack):
    one = {"vcpus": 1, "memory": 1, "networks": 0, "owner": "job"}
    leases = call(stack.app, "vcm.acquire", request={**one, "pool-selector": {"zone": "us east"}})
    assert [x["status"]["pool"] for x in leases] == ["east"]
    leases = call(stack.app, "vcm.acquire", request={**one, "pool-selector": {"a/b/c": "x"}})
    assert [x["status"]["pool"] for x in leases] == ["east"]
    err = failure(stack.app, "vcm.acquire", request={**one, "pool-selector": {"zone": "us  east"}})
    assert type(err).__name__ == "InvalidRequest" and "pool-selector" in str(err)
    views = {v["spec"]["name"]: v["spec"] for v in call(stack.app, "vcm.show_pools")}
    assert views["east"]["labels"] == {"zone": "us east", "a/b/c": "x", "region": "east"}
    wait_for(lambda: warnings(stack, "zone") and warnings(stack, "a/b/c"),
             what="the warnings")
    assert len(warnings(stack, "zone")) == 1 and len(warnings(stack, "a/b/c")) == 1
    assert not [line for line in stack.procs[0].output().splitlines()
                if "labels.region" in line or "pool 'west'" in line]
    call(stack.app, "vcm.release", owner="job")


def test_a_changed_file_is_warned_of_at_its_load(stack):
    changed = {"pools": [pool("east", "vc1.example.com", {"zone": "us east", "rack": "r 7"}),
                         POOLS["pools"][1]]}
    stack.pools.write_text(yaml.safe_dump(changed))
    leases = call(stack.app, "vcm.acquire", request={
        "vcpus": 1, "memory": 1, "networks": 0, "owner": "job", "pool-selector": {"rack": "r 7"}})
    assert [x["status"]["pool"] for x in leases] == ["east"]
    wait_for(lambda: warnings(stack, "rack"), what="the warning of the new label")
    assert len(warnings(stack, "rack")) == 1 and len(warnings(stack, "zone")) == 2
    call(stack.app, "vcm.release", owner="job")
